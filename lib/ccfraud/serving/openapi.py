"""The OpenAPI 3.1 description of the API, generated from the feature spec so it cannot drift from it.

Schemas use JSON Schema 2020-12 (what OpenAPI 3.1 embeds), so the tests validate
real responses against this very document.
"""

from __future__ import annotations

import math
from typing import Any

from ccfraud import explain, schema
from ccfraud.serving.payload import EXPLAIN, INSTANCES

_REF = "#/components/schemas/"
#: A JSON number the API accepts as a feature value: the schema's range rule, stated as JSON Schema bounds.
_FEATURE_VALUE = {"type": "number", "minimum": -schema.MAX_ABS_VALUE, "maximum": schema.MAX_ABS_VALUE}
#: Digits before the point that keep any CSV number below 10**digits <= MAX_ABS_VALUE (38 for float32).
_CSV_INTEGER_DIGITS = math.floor(math.log10(schema.MAX_ABS_VALUE))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def csv_pattern() -> str:
    """The CSV bodies the document promises to score, as a regular expression (JSON Schema ``pattern``).

    creditcard.csv as the Kaggle file and ``pandas.DataFrame.to_csv`` write it: a header
    naming the features in file order, each name quoted or not, with or without
    ``Class`` last; then one or more rows with as many cells, lines ending in LF or
    CRLF, a byte-order mark allowed first. A feature cell is a plain number with at most
    ``_CSV_INTEGER_DIGITS`` digits before the point and no positive exponent, which keeps
    it within +/-``schema.MAX_ABS_VALUE`` without the numeric comparison a pattern cannot
    make. The label cell is ignored by the server, so any cell the CSV reader reads on
    one line is valid there.

    Limits are not rules, so the pattern leaves out the row and byte limits (413, as
    for JSON). It also leaves out what the server reads but a pattern cannot say
    compactly: columns in any order, quoted numbers, ``1E+5``, ``+1``, ``.5``; the
    description says so. (The narrower the spelling, the cheaper the pattern is to
    generate from: a fuzzer draws every character of every cell.)
    """
    number = rf"-?[0-9]{{1,{_CSV_INTEGER_DIGITS}}}(?:\.[0-9]+)?(?:e-[0-9]+)?"

    def name(column: str) -> str:
        return f'(?:{column}|"{column}")'

    header = ",".join(name(column) for column in schema.FEATURES)
    row = f"{number}(?:,{number}){{{len(schema.FEATURES) - 1}}}"
    without_label = rf"{header}(?:\r?\n{row})+"
    # A label cell is read as text and ignored: "0" as Kaggle quotes it, or anything without a quote, comma or
    # line end; after a quoted part the reader keeps reading to the comma, so text may follow it.
    label = r'(?:"[^"\r\n]*"[^",\r\n]*|[^,"\r\n]*)'
    with_label = rf"{header},{name(schema.TARGET)}(?:\r?\n{row},{label})+"
    return rf"^\ufeff?(?:{without_label}|{with_label})(?:\r?\n)?$"


#: What ``explain`` asks for, said once for the body field and the query parameter.
_EXPLAIN_DESCRIPTION = ("true: each prediction also gets its reason codes (``reasons``) and the answer an "
                        "``explanation`` saying their method and scale. Extra work only when asked.")


def _schemas(max_rows: int) -> dict[str, Any]:
    transaction_properties: dict[str, Any] = {name: dict(_FEATURE_VALUE) for name in schema.FEATURES}
    transaction_properties[schema.TARGET] = {"description": "The label, if known: accepted and ignored."}
    transaction_description = ("One card transaction: every feature is required and must be a JSON number (not a "
                               f"string, boolean or null) within +/-{schema.MAX_ABS_VALUE!r}, the float32 range the "
                               "model compares features in.")
    explain_field = {"type": "boolean", "description": _EXPLAIN_DESCRIPTION}
    return {
        "Transaction": {
            "type": "object",
            "description": transaction_description,
            "properties": transaction_properties,
            "required": list(schema.FEATURES),
            "additionalProperties": False,
        },
        "TransactionRequest": {
            "type": "object",
            "description": f"{transaction_description} Optionally with \"{EXPLAIN}\" beside the features.",
            "properties": {**transaction_properties, EXPLAIN: explain_field},
            "required": list(schema.FEATURES),
            "additionalProperties": False,
        },
        "Instances": {
            "type": "object",
            "description": f"A batch of transactions, scored in order. This server scores at most {max_rows} "
                           "transactions per request and answers a larger batch with 413: a size limit, "
                           "like the body size, not a rule of the schema.",
            "properties": {INSTANCES: {"type": "array", "items": _ref("Transaction"), "minItems": 1},
                           EXPLAIN: explain_field},
            "required": [INSTANCES],
            "additionalProperties": False,
        },
        "Reason": {
            "type": "object",
            "description": "A feature that pushed the score up (positive contribution) or down (negative).",
            "properties": {
                "feature": {"type": "string", "enum": list(schema.FEATURES)},
                "value": {"type": "number", "description": "The feature's value in the request."},
                "contribution": {"type": "number", "description": "Its share of the score, on the explanation's "
                                 "scale: base_value plus every feature's contribution is the model's score."},
            },
            "required": ["feature", "value", "contribution"],
            "additionalProperties": False,
        },
        "Prediction": {
            "type": "object",
            "properties": {
                "fraud_probability": {"type": "number", "minimum": 0, "maximum": 1},
                "is_fraud": {"type": "boolean", "description": "fraud_probability >= threshold"},
                "reasons": {"type": "array", "items": _ref("Reason"), "maxItems": explain.TOP_REASONS,
                            "description": f"With explain only: the (at most {explain.TOP_REASONS}) features with "
                                           "the largest contributions either way, largest first; features that "
                                           "contributed nothing are left out."},
            },
            "required": ["fraud_probability", "is_fraud"],
            "additionalProperties": False,
        },
        "Explanation": {
            "type": "object",
            "description": "What the reasons' contributions are. linear: coefficient x scaled value (logistic "
                           "regression); tree_path: each tree's root-to-leaf path, every split crediting its "
                           "feature with the change in the expected output (forests, gradient boosting). scale "
                           "log_odds: of fraud_probability; probability: the forest's vote share before the prior "
                           "correction (a monotone map to fraud_probability, so signs hold).",
            "properties": {
                "method": {"type": "string", "enum": list(explain.METHODS)},
                "scale": {"type": "string", "enum": list(explain.SCALES)},
                "base_value": {"type": "number", "description": "The model's expected score on that scale."},
                "top": {"type": "integer", "minimum": 1, "description": "Reasons given per prediction, at most."},
            },
            "required": ["method", "scale", "base_value", "top"],
            "additionalProperties": False,
        },
        "PredictionResponse": {
            "type": "object",
            "properties": {
                "model_version": {"type": "string"},
                "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "predictions": {"type": "array", "items": _ref("Prediction"),
                                "description": "One per input row, in input order."},
                "explanation": _ref("Explanation"),
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
                "metrics": {"type": "object", "description": "The training run's cross-validated and validation "
                            "figures (the evaluate stage scores the test split; training never sees it)."},
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
                           "Error object naming the field and row when known. A request whose headers do not "
                           "arrive within CCFRAUD_READ_TIMEOUT seconds is answered 408 before any operation "
                           "sees it.",
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
            "/metrics": {"get": {"summary": "Service metrics in the Prometheus text format, every worker's added up: "
                                            "requests by route and status, latency, rows scored and flagged, "
                                            "the model version.", "responses": {
                "200": {"description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/predict": {"post": {
                "summary": "Fraud probability and decision for one transaction or a batch; reason codes on request.",
                "parameters": [{"name": EXPLAIN, "in": "query", "required": False, "schema": {"type": "boolean"},
                                "description": f"{_EXPLAIN_DESCRIPTION} For either content type; with JSON, "
                                               f"\"{EXPLAIN}\": true in the body does the same."}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"oneOf": [_ref("TransactionRequest"), _ref("Instances")]}},
                    "text/csv": {"schema": {"type": "string", "pattern": csv_pattern(), "description": (
                        f"creditcard.csv rows with a header line (quoted or not), e.g. {csv_header}; the Class "
                        f"column is optional and ignored. The pattern is the file's own shape. The server also "
                        "reads the columns in any order and any number a CSV reader parses (quoted, 1E+5, +1, "
                        f".5) if it is finite and within +/-{schema.MAX_ABS_VALUE!r}. At most {max_rows} data rows "
                        "(413 beyond: a size limit, not a rule of the pattern).")}},
                }},
                "responses": {
                    "200": {"description": "One prediction per input row, in order.",
                            "content": {"application/json": {"schema": _ref("PredictionResponse")}}},
                    "400": _error_response("A body the schema refuses: malformed JSON or CSV (a JSON object "
                                           "naming a field twice is malformed: I-JSON, RFC 7493), a missing or "
                                           "unknown field, a value that is not a number, not finite or beyond "
                                           "the float32 range, an empty batch; or a body shorter than its "
                                           "Content-Length; or explain (query or body) not true or false."),
                    "408": _error_response("The body did not all arrive within CCFRAUD_READ_TIMEOUT seconds "
                                           "(a stalled or trickling client)."),
                    "411": _error_response("A chunked body on a WSGI server that cannot tell where it ends "
                                           "(gunicorn can); send Content-Length."),
                    "413": _error_response(f"Body over {max_body_bytes} bytes or more than {max_rows} rows: "
                                           "size limits (CCFRAUD_MAX_BODY_BYTES, CCFRAUD_MAX_ROWS), not schema "
                                           "rules."),
                    "415": _error_response("Content type other than application/json or text/csv."),
                    "501": _error_response("Reason codes were asked for a model that cannot give them."),
                    "503": not_ready,
                },
            }},
        },
        "components": {"schemas": _schemas(max_rows)},
    }
