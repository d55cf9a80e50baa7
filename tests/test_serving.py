"""The prediction API through Flask's test client: endpoints, parity with training, every bad input."""

from __future__ import annotations

import gc
import json
import logging
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData
from jsonschema import Draft202012Validator

from ccfraud import artifacts, modeling, s3, schema, synthetic
from ccfraud.serving import config as serving_config
from ccfraud.serving import create_app, openapi, payload, scoring
from ccfraud.serving import model_source as model_source_module
from ccfraud.serving.errors import ApiError

LAST_RESORT_LOGGER = "ccfraud.serving.errors"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small real model trained on synthetic data (independent of the DVC pipeline)."""
    data = synthetic.generate(rows=5000, frauds=100, seed=0)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data[schema.FEATURES], data[schema.TARGET])
    out = tmp_path_factory.mktemp("served-model")
    artifacts.save_model(model, out, threshold=0.5,
                         extra={"candidate": "logreg", "metrics": {"test": {"auprc": 0.61, "roc_auc": 0.93}}})
    return out


@pytest.fixture(scope="module")
def loaded(model_dir):
    return artifacts.load_model(model_dir)


@pytest.fixture(scope="module")
def app(model_dir):
    return create_app(str(model_dir), max_rows=50, max_body_bytes=200_000)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Labelled rows with frauds among them, so both decisions occur."""
    data = synthetic.generate(rows=2000, frauds=100, seed=7)
    frauds = data[data[schema.TARGET] == 1].head(10)
    legit = data[data[schema.TARGET] == 0].head(20)
    return pd.concat([legit.iloc[:10], frauds, legit.iloc[10:]], ignore_index=True)


def as_object(row: pd.Series) -> dict:
    return {name: float(row[name]) for name in schema.FEATURES}


def offline(loaded, frame: pd.DataFrame) -> np.ndarray:
    """What the notebook computes for these rows: the training code path."""
    return modeling.fraud_probability(loaded.model, frame)


def post_json(client, payload, **kwargs):
    return client.post("/predict", data=json.dumps(payload), content_type="application/json", **kwargs)


def served(response) -> tuple[np.ndarray, list[bool]]:
    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    return np.array([p["fraud_probability"] for p in predictions]), [p["is_fraud"] for p in predictions]


# --- endpoints ---------------------------------------------------------------------------------

def test_health_answers(client):
    response = client.get("/health")
    assert response.status_code == HTTPStatus.OK
    assert response.get_json() == {"status": "ok"}


def test_ready_names_the_model(client, loaded):
    response = client.get("/ready")
    assert response.status_code == HTTPStatus.OK
    assert response.get_json() == {"status": "ready", "model_version": loaded.version}


def test_model_metadata_says_which_run_produced_it(client, loaded):
    meta = client.get("/model").get_json()
    assert meta["model_version"] == loaded.version
    assert meta["sha256"] == loaded.metadata["sha256"]
    assert meta["trained_at"] == loaded.metadata["trained_at"]
    assert meta["threshold"] == 0.5
    assert meta["features"] == schema.FEATURES
    assert meta["metrics"] == {"test": {"auprc": 0.61, "roc_auc": 0.93}}
    assert meta["library_versions"]["scikit-learn"] == artifacts.library_versions()["scikit-learn"]
    assert meta["git_revision"] == loaded.metadata["git_revision"]
    assert meta["candidate"] == "logreg"
    assert meta["scoring_path"] == scoring.FAST


def schema_validator(document: dict, name: str) -> Draft202012Validator:
    """A validator for one component schema, resolving $refs inside the OpenAPI document."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def test_openapi_document_describes_the_api(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/health", "/ready", "/model", "/openapi.json", "/predict", "/metrics"}
    transaction = document["components"]["schemas"]["Transaction"]
    assert transaction["required"] == schema.FEATURES
    bounded = {"type": "number", "minimum": -schema.MAX_ABS_VALUE, "maximum": schema.MAX_ABS_VALUE}
    assert all(transaction["properties"][name] == bounded for name in schema.FEATURES)
    assert transaction["additionalProperties"] is False
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "text/csv"}
    assert body["text/csv"]["schema"]["pattern"] == openapi.csv_pattern()
    # The row limit is a size limit, answered with 413 like the byte limit: not a schema rule (no maxItems).
    assert document["components"]["schemas"]["Instances"]["properties"]["instances"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/Transaction"}, "minItems": 1}
    responses = document["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "408", "411", "413", "415", "503"} <= set(responses)
    assert "200000 bytes or more than 50 rows" in responses["413"]["description"]
    Draft202012Validator.check_schema(transaction)


def test_openapi_schemas_match_real_responses(client, rows):
    document = client.get("/openapi.json").get_json()
    single = as_object(rows.iloc[0])
    transaction = schema_validator(document, "Transaction")
    assert transaction.is_valid(single)
    assert not transaction.is_valid({**single, "V1": "1.0"})
    assert not transaction.is_valid({k: v for k, v in single.items() if k != "V3"})
    assert not transaction.is_valid({**single, "extra": 1})
    schema_validator(document, "PredictionResponse").validate(post_json(client, single).get_json())
    schema_validator(document, "Error").validate(post_json(client, {"V1": 1}).get_json())
    schema_validator(document, "ModelMetadata").validate(client.get("/model").get_json())
    schema_validator(document, "Status").validate(client.get("/ready").get_json())


# --- training/serving parity -------------------------------------------------------------------

def test_single_json_equals_offline_probability(client, loaded, rows):
    expected = offline(loaded, rows)
    for i in (0, 10, 15):
        probability, decision = served(post_json(client, as_object(rows.iloc[i])))
        np.testing.assert_allclose(probability, expected[i : i + 1], rtol=0, atol=1e-12)
        assert decision == [bool(expected[i] >= 0.5)]


def test_instances_equal_offline_probabilities_in_order(client, loaded, rows):
    expected = offline(loaded, rows)
    probabilities, decisions = served(post_json(client, {"instances": [as_object(r) for _, r in rows.iterrows()]}))
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)
    assert decisions == [bool(p >= loaded.threshold) for p in expected]
    assert True in decisions and False in decisions  # both outcomes are exercised


@pytest.mark.parametrize("variant", ["quoted header with Class", "plain header without Class", "shuffled columns",
                                     "byte-order mark and CRLF"])
def test_csv_batch_equals_offline_probabilities(client, loaded, rows, variant):
    expected = offline(loaded, rows)
    if variant == "quoted header with Class":
        text = rows.to_csv(index=False, quoting=1)  # csv.QUOTE_ALL: "Time","V1",...
        assert text.startswith('"Time","V1"')
    elif variant == "plain header without Class":
        text = rows[schema.FEATURES].to_csv(index=False)
    elif variant == "shuffled columns":
        text = rows[list(reversed(schema.COLUMNS))].to_csv(index=False)
    else:
        text = "\ufeff" + rows.to_csv(index=False, lineterminator="\r\n")
    probabilities, decisions = served(client.post("/predict", data=text.encode(), content_type="text/csv"))
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)
    assert decisions == [bool(p >= loaded.threshold) for p in expected]


def test_charset_parameter_is_accepted(client, loaded, rows):
    response = client.post("/predict", data=json.dumps(as_object(rows.iloc[3])),
                           content_type="application/json; charset=utf-8")
    np.testing.assert_allclose(served(response)[0], offline(loaded, rows.iloc[3:4]), rtol=0, atol=1e-12)


def test_class_field_is_ignored_like_the_schema_does(client, loaded, rows):
    with_label = {**as_object(rows.iloc[12]), schema.TARGET: 1}
    np.testing.assert_allclose(served(post_json(client, with_label))[0], offline(loaded, rows.iloc[12:13]),
                               rtol=0, atol=1e-12)


def test_integers_are_numbers(client, loaded):
    obj = {name: 1 for name in schema.FEATURES}
    expected = offline(loaded, pd.DataFrame([obj], dtype=float))
    np.testing.assert_allclose(served(post_json(client, obj))[0], expected, rtol=0, atol=1e-12)


# --- bad input: 4xx JSON errors that say where -------------------------------------------------

def valid_object() -> dict:
    return {name: 0.5 for name in schema.FEATURES}


def csv_text(frame: pd.DataFrame, **to_csv) -> str:
    return frame.to_csv(index=False, **to_csv)


def raw_json(obj: dict, replace: dict[str, str]) -> str:
    """JSON text with some values replaced by literal tokens (NaN, Infinity, huge numbers)."""
    text = json.dumps(obj)
    for name, token in replace.items():
        text = text.replace(f'"{name}": 0.5', f'"{name}": {token}')
    return text


def bad_csv_frame(column: str, row: int, value: str) -> str:
    frame = pd.DataFrame([valid_object()] * 5).astype(object)
    frame.loc[row, column] = value
    return csv_text(frame)


VALID_ROW_CSV = csv_text(pd.DataFrame([valid_object()] * 3))

BAD_REQUESTS = {
    # name: (content type, body, expected status, field, row)
    "missing field": ("application/json", json.dumps({k: v for k, v in valid_object().items() if k != "V3"}),
                      400, "V3", None),
    "unknown field": ("application/json", json.dumps({**valid_object(), "V29": 1.0}), 400, "V29", None),
    "string value": ("application/json", json.dumps({**valid_object(), "V5": "1.0"}), 400, "V5", None),
    "boolean value": ("application/json", json.dumps({**valid_object(), "Amount": True}), 400, "Amount", None),
    "null value": ("application/json", json.dumps({**valid_object(), "V1": None}), 400, "V1", None),
    "object value": ("application/json", json.dumps({**valid_object(), "V2": {"x": 1}}), 400, "V2", None),
    "array value": ("application/json", json.dumps({**valid_object(), "V2": [1.0]}), 400, "V2", None),
    "NaN literal": ("application/json", raw_json(valid_object(), {"V4": "NaN"}), 400, "V4", None),
    "Infinity literal": ("application/json", raw_json(valid_object(), {"V6": "Infinity"}), 400, "V6", None),
    "-Infinity literal": ("application/json", raw_json(valid_object(), {"Time": "-Infinity"}), 400, "Time", None),
    "overflowing float": ("application/json", raw_json(valid_object(), {"V7": "1e400"}), 400, "V7", None),
    "overflowing integer": ("application/json", raw_json(valid_object(), {"V8": "1" + "0" * 400}), 400, "V8", None),
    "beyond float32": ("application/json", raw_json(valid_object(), {"V9": "1e39"}), 400, "V9", None),
    "integer beyond float32": ("application/json", raw_json(valid_object(), {"V9": "1" + "0" * 40}), 400, "V9", None),
    "array at top level": ("application/json", json.dumps([valid_object()]), 400, None, None),
    "string at top level": ("application/json", json.dumps("hello"), 400, None, None),
    "instances not a list": ("application/json", json.dumps({"instances": valid_object()}), 400, "instances", None),
    "instance not an object": ("application/json", json.dumps({"instances": [valid_object(), [1, 2]]}), 400, None, 1),
    "bad field in instance 2": ("application/json",
                                json.dumps({"instances": [valid_object(), valid_object(),
                                                          {**valid_object(), "V7": "x"}]}), 400, "V7", 2),
    "missing field in instance 1": ("application/json", json.dumps(
        {"instances": [valid_object(), {k: v for k, v in valid_object().items() if k != "Amount"}]}),
        400, "Amount", 1),
    "extra top-level field": ("application/json", json.dumps({"instances": [valid_object()], "model": "x"}),
                              400, "model", None),
    "empty batch": ("application/json", json.dumps({"instances": []}), 400, None, None),
    "too many rows (JSON)": ("application/json", json.dumps({"instances": [valid_object()] * 51}), 413, None, None),
    "malformed JSON": ("application/json", '{"Time": 0, "V1": ', 400, None, None),
    "field given twice": ("application/json", json.dumps(valid_object())[:-1] + ', "Time": 5}', 400, "Time", None),
    "field given twice in instance 1": ("application/json", json.dumps(
        {"instances": [valid_object(), valid_object()]})[:-3] + ', "V3": 1}]}', 400, "V3", None),
    "instances given twice": ("application/json", '{"instances": [], "instances": [' + json.dumps(valid_object())
                              + "]}", 400, "instances", None),
    "empty JSON body": ("application/json", "", 400, None, None),
    "JSON not UTF-8": ("application/json", b'{"Time": "\xff\xfe"}', 400, None, None),
    "deeply nested JSON": ("application/json", "[" * 100_000 + "]" * 100_000, 400, None, None),
    "CSV missing column": ("text/csv", csv_text(pd.DataFrame([valid_object()]).drop(columns=["V9"])),
                           400, "V9", None),
    "CSV unknown column": ("text/csv", csv_text(pd.DataFrame([{**valid_object(), "V30": 1.0}])), 400, "V30", None),
    "CSV non-numeric value": ("text/csv", bad_csv_frame("V11", 3, "abc"), 400, "V11", 3),
    "CSV nan": ("text/csv", bad_csv_frame("V12", 2, "nan"), 400, "V12", 2),
    "CSV inf": ("text/csv", bad_csv_frame("Amount", 4, "inf"), 400, "Amount", 4),
    "CSV beyond float32": ("text/csv", bad_csv_frame("V3", 2, "-1e39"), 400, "V3", 2),
    "CSV empty cell": ("text/csv", bad_csv_frame("V13", 1, ""), 400, "V13", 1),
    "CSV timestamp": ("text/csv", bad_csv_frame("Time", 2, "2020-01-01 10:00:00"), 400, "Time", 2),
    "CSV date": ("text/csv", bad_csv_frame("V5", 3, "2020-01-01"), 400, "V5", 3),
    "CSV hexadecimal integer": ("text/csv", bad_csv_frame("Time", 1, "0x10"), 400, "Time", 1),
    "CSV true among ones": ("text/csv", csv_text(pd.DataFrame([valid_object()] * 3).assign(V2=["1", "true", "1"])),
                            400, "V2", 1),
    "CSV booleans": ("text/csv", csv_text(pd.DataFrame([{**valid_object(), "V14": True}] * 2)), 400, "V14", 0),
    "CSV booleans among empty cells": ("text/csv", csv_text(pd.DataFrame([valid_object()] * 3).assign(
        V14=[None, True, None])), 400, "V14", 1),
    "CSV integer too large for a float": ("text/csv", csv_text(pd.DataFrame([valid_object()] * 3).assign(
        Time=[0, 10**400, 2])), 400, "Time", 1),
    "CSV header only": ("text/csv", ",".join(schema.COLUMNS) + "\n", 400, None, None),
    "CSV without header": ("text/csv", VALID_ROW_CSV.split("\n", 1)[1], 400, "Time", None),
    "CSV ragged row": ("text/csv", VALID_ROW_CSV + "1,2,3," * 20 + "4\n", 400, None, 3),
    "CSV rows longer than header": ("text/csv", VALID_ROW_CSV.replace("\n0.5,", "\n7,0.5,"), 400, None, 0),
    "CSV not UTF-8": ("text/csv", b"Time,V1\n\xff\xfe,1\n", 400, None, None),
    "CSV empty body": ("text/csv", "", 400, None, None),
    "too many rows (CSV)": ("text/csv", csv_text(pd.DataFrame([valid_object()] * 51)), 413, None, None),
    "body over the size limit": ("text/csv", csv_text(pd.DataFrame([valid_object()] * 40)) + " " * 200_000,
                                 413, None, None),
    "text/plain": ("text/plain", json.dumps(valid_object()), 415, None, None),
    "form data": ("application/x-www-form-urlencoded", "Time=0", 415, None, None),
    "no content type": (None, json.dumps(valid_object()), 415, None, None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_is_a_json_error_that_says_where(client, caplog, name):
    content_type, body, status, field, row = BAD_REQUESTS[name]
    kwargs = {"content_type": content_type} if content_type else {}
    with caplog.at_level(logging.ERROR, logger=LAST_RESORT_LOGGER):
        response = client.post("/predict", data=body, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["status"] == status
    assert error.get("field") == field
    assert error.get("row") == row
    message = error["message"]
    if field is not None:
        assert field in message
    if row is not None:
        assert str(row) in message
    assert "Traceback" not in message
    assert not [r for r in caplog.records if r.name == LAST_RESORT_LOGGER], "a bad input reached the 500 handler"


# --- the document says what the server does -----------------------------------------------------

def refuse_repeated_names(pairs: list[tuple[str, object]]) -> dict:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"a name appears twice in {names}")
    return dict(pairs)


def document_accepts(document: dict, content_type: str, body: str | bytes) -> bool:
    """Whether the document's request schema for ``content_type`` accepts ``body``, as a client's validator would."""
    media_schema = document["paths"]["/predict"]["post"]["requestBody"]["content"][content_type]["schema"]
    validator = Draft202012Validator({**media_schema, "components": document["components"]})
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        if content_type == "text/csv":
            return validator.is_valid(text)
        # NaN and Infinity are not JSON; a JSON text too deeply nested for Python is an array, not an object;
        # the document's 400 says a field named twice is malformed (I-JSON), as a strict parser would refuse it.
        return validator.is_valid(json.loads(text, parse_constant=lambda token: 1 / 0,
                                             object_pairs_hook=refuse_repeated_names))
    except (UnicodeDecodeError, ValueError, ZeroDivisionError, RecursionError):
        return False  # not text, or not a JSON document: no schema accepts it


SCORED_BODIES = {
    # name: (content type, body, whether the document's schema says the body is valid)
    "one transaction": ("application/json", json.dumps(valid_object()), True),
    "a batch": ("application/json", json.dumps({"instances": [valid_object()] * 3}), True),
    "with Class": ("application/json", json.dumps({**valid_object(), "Class": "anything"}), True),
    "float32 bounds": ("application/json", json.dumps(
        {**valid_object(), "V1": float(np.finfo(np.float32).max), "V2": -float(np.finfo(np.float32).max)}), True),
    "integers": ("application/json", json.dumps({name: 7 for name in schema.FEATURES}), True),
    "CSV as pandas writes it": ("text/csv", csv_text(pd.DataFrame([{**valid_object(), "Class": 0}] * 3)
                                                     .assign(V4=1e-05, Time=172792)), True),
    "CSV quoted as the Kaggle file is": ("text/csv", "\n".join([",".join(f'"{c}"' for c in schema.COLUMNS),
                                                                *[",".join(["-1.35", "149.62"] * 15 + ['"0"'])] * 2]),
                                         True),
    "CSV without Class, CRLF, byte-order mark": ("text/csv", "\ufeff" + csv_text(pd.DataFrame([valid_object()] * 2),
                                                                               lineterminator="\r\n"), True),
    "CSV with odd labels": ("text/csv", csv_text(pd.DataFrame([valid_object()] * 4)
                                                 .assign(Class=["x, y", "", "é", "fraud?"])), True),
    # What the server reads beyond the pattern; the description says so, the pattern cannot.
    "CSV columns in another order": ("text/csv", csv_text(pd.DataFrame([valid_object()])[schema.FEATURES[::-1]]),
                                     False),
    "CSV numbers spelled otherwise": ("text/csv", csv_text(pd.DataFrame([valid_object()]).assign(V1="+1", V2=".5",
                                                                                                 V3="1E+5")), False),
    "CSV quoting everything": ("text/csv", csv_text(pd.DataFrame([{**valid_object(), "Class": 1}] * 2), quoting=1),
                               False),
    "CSV label with a quote inside": ("text/csv", csv_text(pd.DataFrame([valid_object()]).assign(Class='a"b')),
                                      False),
}


@pytest.mark.parametrize("name", list(SCORED_BODIES))
def test_the_document_accepts_what_the_server_scores(client, name):
    content_type, body, valid = SCORED_BODIES[name]
    response = client.post("/predict", data=body, content_type=content_type)
    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    assert document_accepts(client.get("/openapi.json").get_json(), content_type, body) is valid


@pytest.mark.parametrize("name", [name for name, (content_type, _, status, _, _) in BAD_REQUESTS.items()
                                  if content_type in ("application/json", "text/csv") and status == 400])
def test_the_document_refuses_every_body_the_server_refuses_as_invalid(client, name):
    """A 400 is the server saying "not what the document describes": the document must agree."""
    content_type, body, *_ = BAD_REQUESTS[name]
    assert not document_accepts(client.get("/openapi.json").get_json(), content_type, body)


@pytest.mark.parametrize("name", ["too many rows (JSON)", "too many rows (CSV)"])
def test_a_batch_over_the_row_limit_is_valid_by_the_document_and_answered_413(client, name):
    """Too many rows is a size limit (413, in the document's responses), not a schema violation (400)."""
    content_type, body, status, *_ = BAD_REQUESTS[name]
    assert status == 413
    assert document_accepts(client.get("/openapi.json").get_json(), content_type, body)


_F32_MAX = float(np.finfo(np.float32).max)
EDGE_VALUES = {
    "zero": 0, "negative int": -3, "float": 1.5, "tiny": -2.5e-300, "float32 max": _F32_MAX,
    "minus float32 max": -_F32_MAX, "just beyond float32": float(np.nextafter(_F32_MAX, np.inf)), "1e39": 1e39,
    "int 2**128": 2**128, "int 2**127": 2**127, "int beyond float": 10**400, "NaN": float("nan"),
    "inf": float("inf"), "-inf": float("-inf"), "true": True, "false": False, "null": None,
}


@pytest.mark.parametrize("name", list(EDGE_VALUES))
def test_json_fast_path_accepts_exactly_what_the_schema_accepts(name):
    """transaction_row checks values one by one for speed; its verdict must equal schema.validate_features'."""
    obj = {**valid_object(), "V7": EDGE_VALUES[name]}
    try:
        json_row = payload.transaction_row(obj)
    except ApiError as error:
        json_row = None
        assert error.field == "V7" and "V7" in error.message
    frame = pd.DataFrame({column: pd.Series([value], dtype=object) for column, value in obj.items()})
    try:
        schema_row = schema.validate_features(frame).to_numpy()[0].tolist()
    except schema.SchemaError as error:
        schema_row = None
        assert "column 'V7'" in str(error)
    assert json_row == schema_row


@pytest.mark.parametrize("variant", ["floats", "integer Time, Class last", "columns reordered"])
def test_clean_csv_block_check_equals_the_column_by_column_path(rows, monkeypatch, variant):
    """A clean CSV batch takes the schema's whole-matrix check; the matrix is the column-by-column one."""
    frame = rows.assign(Time=rows["Time"].round().astype("int64")) if variant.startswith("integer") else rows
    if variant == "columns reordered":
        frame = frame[list(reversed(schema.COLUMNS))]
    body = frame.to_csv(index=False).encode()
    calls = []
    real_block = schema._valid_numeric_block
    monkeypatch.setattr(schema, "_valid_numeric_block", lambda *a: calls.append(1) or real_block(*a))
    fast = payload.parse_csv(body, 1000)
    assert calls == [1]
    monkeypatch.setattr(schema, "_valid_numeric_block", lambda frame, columns: None)
    np.testing.assert_array_equal(fast, payload.parse_csv(body, 1000))


def test_json_alone_refuses_numeric_strings():
    """The one rule JSON adds: a string is not a number in a JSON document, though a CSV cell may be text."""
    obj = {**valid_object(), "V7": "1.5"}
    with pytest.raises(ApiError, match=r"field 'V7': expected a number, found string \"1.5\""):
        payload.transaction_row(obj)
    frame = pd.DataFrame({column: pd.Series([value], dtype=object) for column, value in obj.items()})
    assert schema.validate_features(frame)["V7"].tolist() == [1.5]


def test_a_lone_surrogate_in_a_field_name_is_quoted_back_in_a_400(client):
    """The error names the unexpected field, even one JSON spells with an unpaired \\ud800 escape."""
    body = b'{"instances": [], "\\ud800": 1}'
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == HTTPStatus.BAD_REQUEST, response.get_data(as_text=True)
    assert response.get_json()["error"]["field"] == "\ud800"


def test_size_limit_message_names_the_limit(client):
    response = client.post("/predict", data="x" * 200_001, content_type="text/csv")
    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "200000" in response.get_json()["error"]["message"]


def test_body_shorter_than_its_content_length_is_a_400_saying_so(client):
    """A client that goes away mid-body: the bytes that came are not scored as if they were the request."""
    body = json.dumps(valid_object()).encode()
    response = client.post("/predict", data=body, content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": str(len(body) + 100)})
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert f"ended after {len(body)} of the {len(body) + 100} bytes" in response.get_json()["error"]["message"]


def test_chunked_body_without_content_length_is_read_and_limited(client):
    body = json.dumps(valid_object()).encode()
    chunked = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    response = client.post("/predict", data=body, content_type="application/json", environ_overrides=chunked)
    assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
    too_big = client.post("/predict", data=b" " * 200_001, content_type="text/csv", environ_overrides=chunked)
    assert too_big.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_big.get_data(as_text=True)


def test_chunked_body_on_a_server_that_cannot_end_it_is_a_411(client):
    body = json.dumps(valid_object()).encode()
    chunked = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": False}
    response = client.post("/predict", data=body, content_type="application/json", environ_overrides=chunked)
    assert response.status_code == HTTPStatus.LENGTH_REQUIRED
    assert "Content-Length" in response.get_json()["error"]["message"]


class _BrokenChunks:
    """gunicorn's request body as the app reads it when the chunked framing is wrong or the client hangs up."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error


@pytest.mark.parametrize("error", [InvalidChunkSize(b"zz"), ChunkMissingTerminator(b"ab"), NoMoreData(b"")],
                         ids=["bad chunk size", "chunk without its CRLF", "client gone mid-chunk"])
def test_a_malformed_chunked_body_is_a_400_not_a_500(client, error):
    chunked = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True,
               "wsgi.input": _BrokenChunks(error)}
    response = client.post("/predict", data=b"", content_type="application/json", environ_overrides=chunked)
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.get_json()["error"]["message"] == f"malformed chunked request body: {error}"


def test_row_limit_message_names_the_limit(client):
    response = post_json(client, {"instances": [valid_object()] * 51})
    assert "51 rows" in response.get_json()["error"]["message"]
    assert "maximum is 50" in response.get_json()["error"]["message"]


def test_wrong_content_type_message_says_what_is_accepted(client):
    message = client.post("/predict", data="x", content_type="text/plain").get_json()["error"]["message"]
    assert "application/json" in message and "text/csv" in message and "text/plain" in message


def test_unknown_path_is_json_404(client):
    response = client.get("/predict/now")
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.get_json()["error"] == {"status": 404, "message": "no endpoint /predict/now; see /openapi.json "
                                                                      "for the API"}


def test_wrong_method_is_json_405_with_allow_header(client):
    response = client.get("/predict")
    assert response.status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert "POST" in response.headers["Allow"]
    assert response.get_json()["error"]["status"] == 405
    assert "GET" in response.get_json()["error"]["message"]


def test_a_bug_becomes_a_generic_500_and_is_logged(model_dir, caplog):
    app = create_app(str(model_dir))

    @app.get("/boom")
    def boom():
        raise RuntimeError("internal detail: password=hunter2")

    with caplog.at_level(logging.ERROR, logger=LAST_RESORT_LOGGER):
        response = app.test_client().get("/boom")
    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    assert response.get_json() == {"error": {"status": 500, "message": "internal server error; the error was logged"}}
    assert "hunter2" not in response.get_data(as_text=True)
    assert [r for r in caplog.records if r.name == LAST_RESORT_LOGGER and r.exc_info]


# --- start-up: load once, degrade to "alive but not ready" -------------------------------------

def test_model_is_loaded_once_per_app_not_per_request(model_dir, monkeypatch, rows):
    calls = []
    real = artifacts.load_model

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(model_source_module.artifacts, "load_model", counting)
    client = create_app(str(model_dir)).test_client()
    for i in range(3):
        served(post_json(client, as_object(rows.iloc[i])))
    assert len(calls) == 1


def test_missing_model_still_starts_and_says_why(tmp_path, caplog):
    location = tmp_path / "no-model-here"
    with caplog.at_level(logging.ERROR):
        client = create_app(str(location)).test_client()
    assert client.get("/health").status_code == HTTPStatus.OK
    for method, path in (("GET", "/ready"), ("GET", "/model"), ("POST", "/predict")):
        response = client.open(path, method=method, data=json.dumps(valid_object()), content_type="application/json")
        assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
        error = response.get_json()["error"]
        assert error["status"] == 503
        assert str(location) in error["message"] and "not found" in error["message"]
    assert any(str(location) in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_tampered_model_is_not_served(model_dir, tmp_path):
    copy = tmp_path / "tampered"
    copy.mkdir()
    for name in (artifacts.MODEL_FILE, artifacts.METADATA_FILE):
        (copy / name).write_bytes((model_dir / name).read_bytes())
    blob = bytearray((copy / artifacts.MODEL_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / artifacts.MODEL_FILE).write_bytes(bytes(blob))
    response = create_app(str(copy)).test_client().get("/ready")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert "checksum mismatch" in response.get_json()["error"]["message"]


def test_settings_come_from_the_environment(model_dir, monkeypatch, loaded):
    monkeypatch.setenv("CCFRAUD_MODEL", str(model_dir))
    monkeypatch.setenv("CCFRAUD_MAX_ROWS", "2")
    monkeypatch.setenv("CCFRAUD_MAX_BODY_BYTES", "5000")
    client = create_app().test_client()
    assert client.get("/ready").get_json()["model_version"] == loaded.version
    assert post_json(client, {"instances": [valid_object()] * 2}).status_code == HTTPStatus.OK
    assert post_json(client, {"instances": [valid_object()] * 3}).status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert client.post("/predict", data="x" * 5001, content_type="text/csv").status_code == 413


def test_default_body_limit_fits_a_10000_row_batch(model_dir, monkeypatch):
    monkeypatch.delenv("CCFRAUD_MAX_ROWS", raising=False)
    monkeypatch.delenv("CCFRAUD_MAX_BODY_BYTES", raising=False)
    data = synthetic.generate(rows=10_000, frauds=20, seed=1)
    app = create_app(str(model_dir))
    csv_body = data.to_csv(index=False).encode()
    json_body = json.dumps({"instances": data[schema.FEATURES].to_dict("records")}).encode()
    assert max(len(csv_body), len(json_body)) < app.config["MAX_CONTENT_LENGTH"]
    response = app.test_client().post("/predict", data=csv_body, content_type="text/csv")
    assert len(served(response)[0]) == 10_000


@pytest.mark.parametrize("name, value", [("CCFRAUD_MAX_ROWS", "many"), ("CCFRAUD_MAX_BODY_BYTES", "0")])
def test_malformed_setting_stops_start_up_naming_the_variable(model_dir, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, found '{value}'"):
        create_app(str(model_dir))


def test_building_an_app_changes_nothing_process_wide(model_dir, monkeypatch):
    """Freezing the heap and sizing Arrow's pool are the server's hooks (serving.gunicorn_conf), not the factory's:
    a test or a REPL that builds an app keeps its garbage collector and Arrow's thread pool as they were."""
    import pyarrow

    before = pyarrow.cpu_count()
    pyarrow.set_cpu_count(1)  # what OMP_NUM_THREADS=1 (Procfile) does to Arrow at import
    monkeypatch.setattr(serving_config, "available_cpus", lambda: 7)  # what the hook would size it to
    frozen = gc.get_freeze_count()
    try:
        create_app(str(model_dir))
        assert pyarrow.cpu_count() == 1
        assert gc.get_freeze_count() == frozen
    finally:
        pyarrow.set_cpu_count(before)


# --- the scoring fast path ---------------------------------------------------------------------

@pytest.mark.parametrize("model_name, sampler, classifier_path", [
    ("logreg", "smote", "binary_logistic"),
    ("hist_gb", "none", scoring.OWN_PREDICT_PROBA),
    ("random_forest", "undersample", "binary_forest"),
])
def test_fast_path_equals_the_pipeline_for_every_candidate(model_name, sampler, classifier_path):
    data = synthetic.generate(rows=3000, frauds=60, seed=2)
    params = {"n_estimators": 20} if model_name == "random_forest" else {}
    model = modeling.make_pipeline(model_name, sampler, sampling_ratio=0.2, **params)
    model.fit(data[schema.FEATURES], data[schema.TARGET])
    scorer = scoring.Scorer(model)
    assert scorer.path == scoring.FAST, scorer.fallback_reason
    assert scorer.classifier_path == classifier_path
    matrix = data[schema.FEATURES].to_numpy()
    np.testing.assert_allclose(scorer.probabilities(matrix), modeling.fraud_probability(model, data),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(scorer.probabilities(matrix[5:6]), modeling.fraud_probability(model, data.iloc[5:6]),
                               rtol=0, atol=1e-12)


def test_fast_path_that_disagrees_is_not_used(loaded, monkeypatch, rows):
    def off_by_a_little(step):
        real = scoring._binary_logistic(step)
        return lambda matrix: real(matrix) * (1 + 1e-9)

    monkeypatch.setitem(scoring.KERNELS, type(loaded.model.estimator_.named_steps["model"]), off_by_a_little)
    scorer = scoring.Scorer(loaded.model)
    assert scorer.path == scoring.PIPELINE
    assert "differs from the pipeline" in scorer.fallback_reason
    np.testing.assert_array_equal(scorer.probabilities(rows[schema.FEATURES].to_numpy()), offline(loaded, rows))


def test_unknown_model_shape_uses_the_pipeline(rows):
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier(strategy="prior").fit(rows[schema.FEATURES], rows[schema.TARGET])
    scorer = scoring.Scorer(model)
    assert scorer.path == scoring.PIPELINE
    assert "not a fitted PriorCorrected" in scorer.fallback_reason
    np.testing.assert_array_equal(scorer.probabilities(rows[schema.FEATURES].to_numpy()),
                                  model.predict_proba(rows[schema.FEATURES])[:, 1])


# --- the model from S3 -------------------------------------------------------------------------

@pytest.mark.s3
def test_model_is_served_from_s3(s3_env, model_dir, loaded, rows):
    prefix = f"s3://{s3_env.bucket}/serving-test/{loaded.version}/"
    s3.upload_directory(model_dir, prefix, progress=False)
    client = create_app(prefix).test_client()
    assert client.get("/ready").get_json() == {"status": "ready", "model_version": loaded.version}
    assert client.get("/model").get_json()["location"] == prefix
    probabilities, _ = served(post_json(client, {"instances": [as_object(r) for _, r in rows.iterrows()]}))
    np.testing.assert_allclose(probabilities, offline(loaded, rows), rtol=0, atol=1e-12)


@pytest.mark.parametrize("location", ["s3://AKIAEXAMPLE:hunter2@bucket/models/v1/",
                                      "https://analyst:hunter2@example.invalid/models/v1/",
                                      "https://example.invalid/models/v1/?token=hunter2"])
def test_a_model_location_carrying_credentials_is_refused_and_never_shown(location, caplog):
    """The location reaches /model, the 503 answers and the log: one with credentials is refused, shown without."""
    with caplog.at_level(logging.INFO, logger="ccfraud"):
        client = create_app(location).test_client()
    response = client.get("/ready")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    message = response.get_json()["error"]["message"]
    assert message.startswith(f"model not loaded: cannot load the model from {location.split('://')[0]}://")
    assert "the location carries credentials" in message
    seen = message + client.get("/model").get_data(as_text=True) + client.post("/predict", json={}).get_data(
        as_text=True) + caplog.text
    assert "hunter2" not in seen and "AKIAEXAMPLE" not in seen and "analyst" not in seen


def test_a_malformed_model_location_is_named_malformed_without_being_repeated():
    client = create_app("https://user:hunter2@[::1/models/").test_client()
    message = client.get("/ready").get_json()["error"]["message"]
    assert message == "model not loaded: cannot load the model from (a malformed URI): malformed URI (Invalid IPv6 URL)"


@pytest.mark.s3
def test_missing_s3_model_is_not_ready_and_leaks_no_secret(s3_env):
    location = f"s3://{s3_env.bucket}/no-such-model/"
    client = create_app(location).test_client()
    assert client.get("/health").status_code == HTTPStatus.OK
    response = client.get("/ready")
    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    message = response.get_json()["error"]["message"]
    assert f"{location}model.json" in message
    assert s3_env.secret_key not in message and s3_env.access_key not in message
