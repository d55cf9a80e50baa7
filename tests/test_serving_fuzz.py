"""Generated requests: whatever a client sends, the API answers with JSON and never with a 5xx.

Hypothesis builds JSON values of every type in every field, random field sets,
random CSV text and random content types; each response must be a 2xx with one
prediction per row or a 4xx JSON error, and nothing may reach the last-resort
500 handler.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccfraud import artifacts, modeling, schema, synthetic
from ccfraud.serving import create_app

MAX_ROWS = 20
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = synthetic.generate(rows=5000, frauds=100, seed=0)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data[schema.FEATURES], data[schema.TARGET])
    out = tmp_path_factory.mktemp("fuzz-model")
    artifacts.save_model(model, out, threshold=0.5)
    return create_app(str(out), max_rows=MAX_ROWS, max_body_bytes=64_000)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def last_resort_log():
    """ERROR records of the 500 handler during the module (Hypothesis forbids function-scoped fixtures)."""
    handler = Records()
    logger = logging.getLogger("ccfraud.serving.errors")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**30), max_value=10**30)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
field_names = st.sampled_from([*schema.COLUMNS, "V29", "time", "amount", "", "instances"]) | st.text(max_size=6)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def transactions(draw) -> dict:
    """Mostly well-formed transactions with a few fields dropped, added or given odd values."""
    obj = {name: draw(finite) for name in schema.FEATURES}
    for name in draw(st.lists(st.sampled_from(schema.FEATURES), max_size=2)):
        obj.pop(name, None)
    for name, value in draw(st.dictionaries(field_names, json_values, max_size=2)).items():
        obj[name] = value
    return obj


documents = (transactions()
             | st.builds(lambda rows: {"instances": rows}, st.lists(transactions(), max_size=MAX_ROWS + 2))
             | st.dictionaries(field_names, json_values, max_size=4)
             | json_values)


def json_text(document) -> str:
    return json.dumps(document, allow_nan=True)  # NaN/Infinity literals included on purpose


csv_cells = (st.sampled_from(["", "nan", "inf", "-inf", "NA", "True", "1e999", '"1.5"', "abc", "0x10", " 3 "])
             | finite.map(repr) | st.text(alphabet=st.characters(codec="utf-8"), max_size=6))


@st.composite
def csv_bodies(draw) -> str:
    columns = draw(st.permutations(schema.COLUMNS).map(list) | st.lists(field_names, min_size=1, max_size=33))
    if draw(st.booleans()):
        columns = columns[: draw(st.integers(1, len(columns)))]
    header = ",".join(f'"{c}"' if draw(st.booleans()) else c for c in columns)
    lines = [header]
    for _ in range(draw(st.integers(0, MAX_ROWS + 2))):
        width = draw(st.sampled_from([len(columns), len(columns) + 1, max(len(columns) - 1, 1)]))
        lines.append(",".join(draw(csv_cells) if draw(st.integers(0, 9)) == 0 else repr(draw(finite))
                              for _ in range(width)))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


content_types = st.sampled_from(["application/json", "text/csv", "application/json; charset=utf-8",
                                 "text/csv; charset=utf-8", "text/plain", "application/xml", "multipart/form-data",
                                 "application/x-www-form-urlencoded", "", "*/*", "application/JSON"])
bodies = (documents.map(json_text) | csv_bodies() | st.text(max_size=200) | st.binary(max_size=200))


def check_response(response, rows: int | None = None) -> dict:
    """No 5xx, always a JSON body, and either predictions or an error that matches the status."""
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())
    if response.status_code == 200:
        predictions = body["predictions"]
        assert predictions and (rows is None or len(predictions) == rows)
        assert all(0.0 <= p["fraud_probability"] <= 1.0 for p in predictions)
        assert all(p["is_fraud"] == (p["fraud_probability"] >= body["threshold"]) for p in predictions)
    else:
        assert 400 <= response.status_code < 500
        assert body["error"]["status"] == response.status_code
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


@FUZZ
@given(body=bodies, content_type=content_types)
def test_any_body_with_any_content_type_gets_a_json_answer(app, last_resort_log, body, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    check_response(app.test_client().post("/predict", data=body, **kwargs))
    assert not last_resort_log


@FUZZ
@given(document=documents)
def test_any_json_document_gets_a_json_answer(app, last_resort_log, document):
    check_response(app.test_client().post("/predict", data=json_text(document), content_type="application/json"))
    assert not last_resort_log


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(obj=transactions())
def test_json_acceptance_follows_the_feature_spec(app, obj):
    """A transaction is scored exactly when the schema's column rule and JSON-number rule accept it."""
    try:
        schema.check_columns(list(obj), require_target=False)
        columns_ok = True
    except schema.SchemaError:
        columns_ok = False
    values_ok = all(type(obj.get(name)) in (int, float) and math.isfinite(obj[name])
                    for name in schema.FEATURES if name in obj)
    response = app.test_client().post("/predict", data=json_text(obj), content_type="application/json")
    check_response(response, rows=1)
    assert (response.status_code == 200) == (columns_ok and values_ok), response.get_data(as_text=True)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(rows=st.lists(st.lists(finite, min_size=len(schema.FEATURES), max_size=len(schema.FEATURES)),
                     min_size=1, max_size=MAX_ROWS))
def test_valid_rows_score_like_the_pipeline(app, rows):
    scorer = app.extensions["ccfraud"].scorer
    matrix = np.array(rows, dtype=np.float64)
    response = app.test_client().post("/predict", content_type="application/json",
                                      data=json.dumps({"instances": [dict(zip(schema.FEATURES, r, strict=True))
                                                                     for r in rows]}))
    body = check_response(response, rows=len(rows))
    np.testing.assert_allclose([p["fraud_probability"] for p in body["predictions"]],
                               scorer.pipeline_probabilities(matrix), rtol=0, atol=1e-12)
