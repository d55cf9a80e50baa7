"""The OpenAPI 3.1 description of the API, generated from the feature spec so it cannot drift from it.

Schemas use JSON Schema 2020-12 (what OpenAPI 3.1 embeds), so the tests validate
real responses against this very document.
"""

from __future__ import annotations

from typing import Any

from ccfraud import schema
from ccfraud.serving.payload import INSTANCES

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _schemas(max_rows: int) -> dict[str, Any]:
    transaction_properties: dict[str, Any] = {name: {"type": "number"} for name in schema.FEATURES}
    transaction_properties[schema.TARGET] = {"description": "The label, if known: accepted and ignored."}
    return {
        "Transaction": {
            "type": "object",
            "description": "One card transaction: every feature is required and must be a finite JSON number "
                           "(not a string, boolean or null).",
            "properties": transaction_properties,
            "required": list(schema.FEATURES),
            "additionalProperties": False,
        },
        "Instances": {
            "type": "object",
            "description": "A batch of transactions, scored in order.",
            "properties": {INSTANCES: {"type": "array", "items": _ref("Transaction"),
                                       "minItems": 1, "maxItems": max_rows}},
            "required": [INSTANCES],
            "additionalProperties": False,
        },
        "Prediction": {
            "type": "object",
            "properties": {
                "fraud_probability": {"type": "number", "minimum": 0, "maximum": 1},
                "is_fraud": {"type": "boolean", "description": "fraud_probability >= threshold"},
            },
            "required": ["fraud_probability", "is_fraud"],
            "additionalProperties": False,
        },
        "PredictionResponse": {
            "type": "object",
            "properties": {
                "model_version": {"type": "string"},
                "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "predictions": {"type": "array", "items": _ref("Prediction"),
                                "description": "One per input row, in input order."},
            },
            "required": ["model_version", "threshold", "predictions"],
            "additionalProperties": False,
        },
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "integer", "description": "The HTTP status code."},
                        "message": {"type": "string", "description": "What was expected, what was found, where."},
                        "field": {"type": "string", "description": "The offending field or column, when known."},
                        "row": {"type": "integer", "minimum": 0,
                                "description": "The offending row (0 = first transaction or first data row)."},
                    },
                    "required": ["status", "message"],
                    "additionalProperties": False,
                }
            },
            "required": ["error"],
            "additionalProperties": False,
        },
        "Status": {
            "type": "object",
            "properties": {"status": {"type": "string"}, "model_version": {"type": "string"}},
            "required": ["status"],
        },
        "ModelMetadata": {
            "type": "object",
            "properties": {
                "model_version": {"type": "string"},
                "sha256": {"type": "string"},
                "trained_at": {"type": "string"},
                "threshold": {"type": "number"},
                "features": {"type": "array", "items": {"type": "string"}},
                "metrics": {"type": "object", "description": "Test-split metrics of the training run."},
                "library_versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "git_revision": {"type": "string"},
                "candidate": {"type": ["string", "null"]},
                "location": {"type": "string"},
                "scoring_path": {"type": "string", "enum": ["numpy", "pipeline"]},
            },
            "required": ["model_version", "sha256", "trained_at", "threshold", "features", "library_versions",
                         "git_revision"],
        },
    }


def document(max_rows: int, max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI document for a server configured with these limits."""
    csv_header = ",".join(f'"{c}"' for c in schema.COLUMNS)
    not_ready = _error_response("The model is not loaded; the message says why.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ccfraud prediction API",
            "version": "1",
            "description": "Scores card transactions with the trained fraud model. Every error is a JSON "
                           "Error object naming the field and row when known.",
        },
        "paths": {
            "/health": {"get": {"summary": "The process is alive.", "responses": {
                "200": {"description": "Alive.", "content": {"application/json": {"schema": _ref("Status")}}}}}},
            "/ready": {"get": {"summary": "The model is loaded and requests can be scored.", "responses": {
                "200": {"description": "Ready.", "content": {"application/json": {"schema": _ref("Status")}}},
                "503": not_ready}}},
            "/model": {"get": {"summary": "Which model is served: version, threshold, metrics, provenance.",
                               "responses": {
                "200": {"description": "Metadata.",
                        "content": {"application/json": {"schema": _ref("ModelMetadata")}}},
                "503": not_ready}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {
                "200": {"description": "OpenAPI document.", "content": {"application/json": {"schema": {}}}}}}},
            "/predict": {"post": {
                "summary": "Fraud probability and decision for one transaction or a batch.",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"oneOf": [_ref("Transaction"), _ref("Instances")]}},
                    "text/csv": {"schema": {"type": "string", "description": (
                        f"creditcard.csv rows with a header line (quoted or not), e.g. {csv_header}; the Class "
                        f"column is optional and ignored; at most {max_rows} data rows.")}},
                }},
                "responses": {
                    "200": {"description": "One prediction per input row, in order.",
                            "content": {"application/json": {"schema": _ref("PredictionResponse")}}},
                    "400": _error_response("Malformed body, missing/unknown field, non-numeric or non-finite "
                                           "value, or empty batch."),
                    "413": _error_response(f"Body over {max_body_bytes} bytes or more than {max_rows} rows."),
                    "415": _error_response("Content type other than application/json or text/csv."),
                    "503": not_ready,
                },
            }},
        },
        "components": {"schemas": _schemas(max_rows)},
    }
