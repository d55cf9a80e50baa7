"""Reason codes and metrics through Flask's test client: the served explanation is the offline one, bad
``explain`` values are refused by name, and /metrics counts what was sent (one process here; across the
gunicorn workers in test_serving_procfile.py)."""

from __future__ import annotations

import json
from http import HTTPStatus

import numpy as np
import pandas as pd
import pytest
from jsonschema import Draft202012Validator
from model_fixtures import FOREST, forest_model_dir, logreg_model_dir, train_small_model  # noqa: F401 (fixtures)
from prometheus_client.parser import text_string_to_metric_families

from ccfraud import artifacts, explain, modeling, schema, synthetic
from ccfraud.serving import create_app
from ccfraud.serving import metrics as serving_metrics

MODELS = ["logreg_model_dir", "forest_model_dir"]


@pytest.fixture(autouse=True)
def single_process_metrics(monkeypatch):
    """An app built here counts in its own registry, whatever the environment says."""
    monkeypatch.delenv(serving_metrics.MULTIPROC_ENV, raising=False)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    data = synthetic.generate(rows=1000, frauds=60, seed=21)
    return pd.concat([data[data[schema.TARGET] == 1].head(4), data[data[schema.TARGET] == 0].head(4)],
                     ignore_index=True)


def as_object(row: pd.Series) -> dict:
    return {name: float(row[name]) for name in schema.FEATURES}


def post(client, body, content_type="application/json", query=""):
    data = json.dumps(body) if content_type == "application/json" else body
    return client.post(f"/predict{query}", data=data, content_type=content_type)


def explained_requests(rows: pd.DataFrame) -> dict[str, tuple]:
    """Every way to ask for reason codes, and the rows each one scores."""
    first = as_object(rows.iloc[0])
    instances = [as_object(r) for _, r in rows.iterrows()]
    return {
        "query, one transaction": ({**first}, "application/json", "?explain=true", rows.iloc[:1]),
        "body, one transaction": ({**first, "explain": True}, "application/json", "", rows.iloc[:1]),
        "body, a batch": ({"instances": instances, "explain": True}, "application/json", "", rows),
        "query false, body true": ({"instances": instances, "explain": True}, "application/json", "?explain=false",
                                   rows),
        "query, CSV": (rows.to_csv(index=False), "text/csv", "?explain=true", rows),
    }


@pytest.mark.parametrize("model_fixture", MODELS)
def test_served_reasons_are_the_offline_explanation(model_fixture, request, rows):
    model_dir = request.getfixturevalue(model_fixture)
    client = create_app(str(model_dir)).test_client()
    loaded = artifacts.load_model(model_dir)
    explainer = explain.Explainer(loaded.model)  # the offline side: the module called directly
    document = client.get("/openapi.json").get_json()
    response_schema = Draft202012Validator({"$ref": "#/components/schemas/PredictionResponse",
                                            "components": document["components"]})
    for how, (body, content_type, query, frame) in explained_requests(rows).items():
        response = post(client, body, content_type, query)
        assert response.status_code == HTTPStatus.OK, (how, response.get_data(as_text=True))
        answer = response.get_json()
        response_schema.validate(answer)
        offline = explainer.explain_frame(frame)
        assert answer["explanation"] == {"method": offline.method, "scale": offline.scale,
                                         "base_value": offline.base, "top": explain.TOP_REASONS}, how
        assert [p["reasons"] for p in answer["predictions"]] == [offline.reasons(i) for i in range(len(frame))], how
        probabilities = np.array([p["fraud_probability"] for p in answer["predictions"]])
        np.testing.assert_allclose(probabilities, modeling.fraud_probability(loaded.model, frame), rtol=0, atol=1e-12)
        np.testing.assert_allclose(explainer.probabilities(offline.scores), probabilities, rtol=0, atol=1e-9)


def test_a_plain_prediction_does_no_explaining(logreg_model_dir, rows, monkeypatch):  # noqa: F811
    client = create_app(str(logreg_model_dir)).test_client()

    def refuse(*args, **kwargs):
        raise AssertionError("explained without being asked")

    monkeypatch.setattr(explain.Explainer, "explain", refuse)
    first = as_object(rows.iloc[0])
    for body, query in ((first, ""), (first, "?explain=false"), ({**first, "explain": False}, ""),
                        ({"instances": [first], "explain": False}, "?other=1")):
        response = post(client, body, query=query)
        assert response.status_code == HTTPStatus.OK, response.get_data(as_text=True)
        answer = response.get_json()
        assert "explanation" not in answer
        assert set(answer["predictions"][0]) == {"fraud_probability", "is_fraud"}


@pytest.mark.parametrize(("query", "found"), [
    ("?explain=yes", "found 'yes'"), ("?explain=", "found an empty value"), ("?explain=TRUE", "found 'TRUE'"),
    ("?explain=1", "found '1'"), ("?explain=true&explain=true", "found 'true', 'true'"),
])
def test_a_bad_explain_query_parameter_is_a_400_naming_it(logreg_model_dir, rows, query, found):  # noqa: F811
    client = create_app(str(logreg_model_dir)).test_client()
    for body, content_type in ((as_object(rows.iloc[0]), "application/json"), (rows.to_csv(index=False), "text/csv")):
        response = post(client, body, content_type, query)
        assert response.status_code == HTTPStatus.BAD_REQUEST
        error = response.get_json()["error"]
        assert error["field"] == "explain"
        assert error["message"] == f"query parameter 'explain': expected true or false, once; {found}"


@pytest.mark.parametrize(("value", "found"), [("true", 'string "true"'), (1, "number 1"), (None, "null"),
                                              ([True], "array [true]")])
def test_a_bad_explain_field_is_a_400_naming_it(logreg_model_dir, rows, value, found):  # noqa: F811
    client = create_app(str(logreg_model_dir)).test_client()
    first = as_object(rows.iloc[0])
    for body in ({**first, "explain": value}, {"instances": [first], "explain": value}):
        response = post(client, body)
        assert response.status_code == HTTPStatus.BAD_REQUEST
        assert response.get_json()["error"] == {
            "status": 400, "field": "explain",
            "message": f"request body: 'explain' must be true or false, found {found}"}
    response = post(client, {"instances": [{**first, "explain": True}]})  # inside a transaction: an unknown field
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "explain" in response.get_json()["error"]["message"]


def test_reason_codes_for_a_model_that_has_none_are_a_501_and_predictions_go_on(logreg_model_dir, rows):  # noqa: F811
    app = create_app(str(logreg_model_dir))
    state = app.extensions["ccfraud"]
    state.explainer, state.explain_error = None, "no reason codes for a DummyClassifier classifier"
    client = app.test_client()
    response = post(client, as_object(rows.iloc[0]), query="?explain=true")
    assert response.status_code == HTTPStatus.NOT_IMPLEMENTED
    assert response.get_json()["error"] == {
        "status": 501, "field": "explain",
        "message": "no reason codes for this model: no reason codes for a DummyClassifier classifier"}
    assert post(client, as_object(rows.iloc[0])).status_code == HTTPStatus.OK


@pytest.fixture(scope="module")
def flagging_forest_dir(tmp_path_factory):
    """The 30-tree forest with a threshold that flags some of ``rows`` and not others."""
    return train_small_model(tmp_path_factory.mktemp("flagging-forest"), *FOREST, threshold=0.1)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_requests_rows_flagged_rows_and_the_model(flagging_forest_dir, rows):
    client = create_app(str(flagging_forest_dir)).test_client()
    loaded = artifacts.load_model(flagging_forest_dir)
    flagged = int(np.count_nonzero(modeling.fraud_probability(loaded.model, rows) >= loaded.threshold))
    assert 0 < flagged < len(rows)
    instances = [as_object(r) for _, r in rows.iterrows()]
    assert post(client, {"instances": instances}).status_code == 200
    assert post(client, rows.to_csv(index=False), "text/csv", "?explain=true").status_code == 200
    assert post(client, {"V1": 1.0}).status_code == 400
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/ready").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    found = samples(response.get_data(as_text=True))

    def requests(route, method, status):
        return found.get(("ccfraud_http_requests_total", (("method", method), ("route", route),
                                                           ("status", status))))

    assert requests("/predict", "POST", "200") == 2
    assert requests("/predict", "POST", "400") == 1
    assert requests("unmatched", "GET", "404") == 1
    assert requests("/ready", "GET", "200") == 1
    assert requests("/metrics", "GET", "200") is None  # counted once it has answered
    assert found[("ccfraud_http_request_duration_seconds_count", (("route", "/predict"),))] == 3
    assert found[("ccfraud_rows_scored_total", ())] == 2 * len(rows)
    assert found[("ccfraud_rows_flagged_total", ())] == 2 * flagged
    assert found[("ccfraud_rows_explained_total", ())] == len(rows)
    info = {labels: value for (name, labels), value in found.items() if name == "ccfraud_model_info"}
    assert info == {(("candidate", "random_forest"), ("model_version", loaded.version),
                     ("threshold", repr(loaded.threshold))): 1.0}
    again = samples(client.get("/metrics").get_data(as_text=True))
    assert again[("ccfraud_http_requests_total", (("method", "GET"), ("route", "/metrics"), ("status", "200")))] == 1


def test_the_benchmarks_app_without_metrics_serves_the_same_and_counts_nothing(logreg_model_dir, rows,  # noqa: F811
                                                                               monkeypatch):
    """The metrics A/B of benchmarks/serving.py compares the Procfile's app with this one: only the counting differs."""
    from test_benchmarks import load_benchmark

    from ccfraud.serving.app import METRICS_EXTENSION

    bench = load_benchmark("serving")
    assert bench.procfile_command(0, app=bench.APP_WITHOUT_METRICS) == \
        bench.procfile_command(0).replace(bench.PROCFILE_APP, bench.APP_WITHOUT_METRICS)
    monkeypatch.setenv("CCFRAUD_MODEL", str(logreg_model_dir))
    plain, counted = bench.app_without_metrics().test_client(), create_app().test_client()
    body = {"instances": [as_object(r) for _, r in rows.iterrows()]}
    assert post(plain, body).get_json() == post(counted, body).get_json()
    found = samples(plain.get("/metrics").get_data(as_text=True))
    assert found[("ccfraud_rows_scored_total", ())] == 0
    assert not [name for name, _ in found if name == "ccfraud_http_requests_total"]
    assert plain.application.extensions[METRICS_EXTENSION] is not counted.application.extensions[METRICS_EXTENSION]
    assert samples(counted.get("/metrics").get_data(as_text=True))[("ccfraud_rows_scored_total", ())] == len(rows)


def test_metrics_follow_the_environment_even_if_prometheus_client_was_imported_before_it_changed(
        logreg_model_dir, rows, tmp_path, monkeypatch):  # noqa: F811
    """Imported in one mode, then the environment changes (a library imported it before the master made the
    directory; a test ran the hooks): an app counts in the mode the environment says when it first counts."""
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored after the test
    monkeypatch.setenv(serving_metrics.MULTIPROC_ENV, str(tmp_path))
    values.ValueClass = values.get_value_class()  # as if imported with the variable set
    monkeypatch.delenv(serving_metrics.MULTIPROC_ENV)
    client = create_app(str(logreg_model_dir)).test_client()
    assert post(client, as_object(rows.iloc[0])).status_code == 200
    assert samples(client.get("/metrics").get_data(as_text=True))[("ccfraud_rows_scored_total", ())] == 1
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setenv(serving_metrics.MULTIPROC_ENV, str(tmp_path))  # and the other way round
    client = create_app(str(logreg_model_dir)).test_client()
    try:
        assert post(client, as_object(rows.iloc[0])).status_code == 200
        assert samples(client.get("/metrics").get_data(as_text=True))[("ccfraud_rows_scored_total", ())] == 1
        assert sorted(path.name.split("_")[0] for path in tmp_path.iterdir()) == ["counter", "gauge", "histogram"]
    finally:
        values.close_all_multiprocess_files()  # this process's value files
