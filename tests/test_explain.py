"""Reason codes (ccfraud.explain): exact, in the right direction, and readable in a report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit

from ccfraud import explain, modeling, schema, synthetic

#: The candidates as the train stage builds them, small: each is explained by a different method or scale.
CANDIDATES = {
    "logreg": ("logreg", "class_weight", {}),
    "random_forest": ("random_forest", "undersample", {"sampling_ratio": 0.1, "n_estimators": 30}),
    "hist_gb": ("hist_gb", "none", {"max_iter": 30}),
}
EXPECTED = {"logreg": (explain.LINEAR, explain.LOG_ODDS), "random_forest": (explain.TREE_PATH, explain.PROBABILITY),
            "hist_gb": (explain.TREE_PATH, explain.LOG_ODDS)}


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return synthetic.generate(rows=5000, frauds=150, seed=0)


@pytest.fixture(scope="module")
def models(data) -> dict:
    return {name: modeling.make_pipeline(model, sampler, **options).fit(data[schema.FEATURES], data[schema.TARGET])
            for name, (model, sampler, options) in CANDIDATES.items()}


@pytest.fixture(scope="module")
def fresh() -> pd.DataFrame:
    return synthetic.generate(rows=600, frauds=40, seed=7)


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_contributions_add_up_to_the_models_own_probability(models, fresh, name):
    model = models[name]
    explainer = explain.Explainer(model)
    assert (explainer.method, explainer.scale) == EXPECTED[name]
    explanation = explainer.explain_frame(fresh)
    assert explanation.contributions.shape == (len(fresh), len(schema.FEATURES))
    expected = modeling.fraud_probability(model, fresh)
    np.testing.assert_allclose(explainer.probabilities(explanation.scores), expected, rtol=0, atol=1e-9)
    if explainer.scale == explain.LOG_ODDS:  # the score is the served probability's log-odds
        inside = (expected > 1e-12) & (expected < 1 - 1e-12)
        np.testing.assert_allclose(explanation.scores[inside], logit(expected[inside]), rtol=0, atol=1e-6)


def test_logistic_regression_contribution_is_coefficient_times_scaled_value(models, fresh):
    model = models["logreg"]
    pipeline = model.estimator_
    scaled = pipeline.named_steps["preprocess"].transform(fresh[schema.FEATURES])
    coefficients = pd.Series(pipeline.named_steps["model"].coef_[0], index=scaled.columns)
    explanation = explain.Explainer(model).explain_frame(fresh)
    expected = (scaled * coefficients)[schema.FEATURES].to_numpy()
    np.testing.assert_allclose(explanation.contributions, expected, rtol=1e-12, atol=1e-12)
    assert explanation.base == pytest.approx(pipeline.named_steps["model"].intercept_[0] + np.log(model.beta_))


def saabas_reference(forest, matrix: np.ndarray) -> np.ndarray:
    """Path attributions the slow way: each tree's decision_path, split by split, then the mean over trees."""
    out = np.zeros(matrix.shape)
    for estimator in forest.estimators_:
        tree = estimator.tree_
        paths = estimator.decision_path(matrix.astype(np.float32))
        for row in range(len(matrix)):
            nodes = paths.indices[paths.indptr[row] : paths.indptr[row + 1]]  # root to leaf, in order
            for parent, child in zip(nodes[:-1], nodes[1:], strict=True):
                out[row, tree.feature[parent]] += tree.value[child, 0, 1] - tree.value[parent, 0, 1]
    return out / len(forest.estimators_)


def test_forest_walk_equals_each_trees_decision_path(models, fresh):
    model = models["random_forest"]
    forest = model.estimator_.named_steps["model"]
    scaled = model.estimator_.named_steps["preprocess"].transform(fresh[schema.FEATURES].iloc[:25]).to_numpy()
    paths = explain.TreePaths.from_forest(forest)
    np.testing.assert_allclose(paths.contributions(scaled), saabas_reference(forest, scaled), rtol=0, atol=1e-12)


def test_the_walk_gives_the_same_rows_alone_or_in_blocks(models, fresh, monkeypatch):
    explainer = explain.Explainer(models["random_forest"])
    whole = explainer.explain_frame(fresh).contributions
    monkeypatch.setattr(explain, "WALK_ROWS", 7)
    np.testing.assert_allclose(explainer.explain_frame(fresh).contributions, whole, rtol=0, atol=1e-15)
    alone = explainer.explain(fresh[schema.FEATURES].to_numpy()[3:4]).contributions
    np.testing.assert_allclose(alone[0], whole[3], rtol=0, atol=1e-15)


#: The features synthetic frauds are shifted along the most (synthetic.FRAUD_SHIFT), and where a fraud puts them.
FRAUD_LOOK = ("V17", "V14", "V12", "V10", "V3")


def fraud_looking_transaction() -> np.ndarray:
    """An ordinary transaction (every component at the legitimate mean) with the strongest fraud signals
    pushed as far as a typical synthetic fraud's: V17, V14, V12, V10 and V3 far below their means."""
    row = dict.fromkeys(schema.FEATURES, 0.0)
    row[schema.TIME], row[schema.AMOUNT] = 40_000.0, 60.0
    stds = dict(zip(schema.PCA_FEATURES, synthetic.V_STD, strict=True))
    for name in FRAUD_LOOK:
        row[name] = synthetic.FRAUD_SHIFT[name] * stds[name]
    return np.array([[row[name] for name in schema.FEATURES]])


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_reason_codes_point_towards_fraud_on_a_fraud_looking_transaction(models, name):
    explainer = explain.Explainer(models[name])
    matrix = fraud_looking_transaction()
    ordinary = matrix.copy()
    for name_ in FRAUD_LOOK:
        ordinary[0, schema.FEATURES.index(name_)] = 0.0
    explanation = explainer.explain(matrix)
    assert explanation.scores[0] > explainer.explain(ordinary).scores[0]  # it does look more fraudulent
    contributions = dict(zip(schema.FEATURES, explanation.contributions[0], strict=True))
    assert sum(contributions[name_] for name_ in FRAUD_LOOK) > 0
    reasons = explanation.reasons(0, top=3)
    assert len(reasons) == 3
    for reason in reasons:  # the strongest reasons are the fraud signals, each pushing the score up
        assert reason["feature"] in FRAUD_LOOK, reasons
        assert reason["contribution"] > 0, reasons
        assert reason["value"] == matrix[0, schema.FEATURES.index(reason["feature"])]


def test_reasons_are_largest_first_either_way_and_skip_features_that_did_nothing():
    values = np.arange(len(schema.FEATURES), dtype=float)[np.newaxis, :]
    contributions = np.zeros_like(values)
    contributions[0, schema.FEATURES.index("V3")] = -0.5
    contributions[0, schema.FEATURES.index("V1")] = 0.2
    contributions[0, schema.FEATURES.index("Amount")] = 0.2
    explanation = explain.Explanation(values, contributions, 0.1, explain.LOG_ODDS, explain.LINEAR)
    assert explanation.reasons(0) == [
        {"feature": "V3", "value": 3.0, "contribution": -0.5},
        {"feature": "V1", "value": 1.0, "contribution": 0.2},  # a tie: feature order
        {"feature": "Amount", "value": 29.0, "contribution": 0.2},
    ]
    assert explanation.reasons(0, top=1) == explanation.reasons(0)[:1]
    assert explanation.scores[0] == pytest.approx(0.1 - 0.5 + 0.4)


def test_global_importance_is_the_mean_absolute_contribution_largest_first(models, fresh):
    explainer = explain.Explainer(models["random_forest"])
    table = explain.global_importance(explainer, fresh)
    assert list(table.columns) == ["feature", "mean_abs_contribution", "mean_contribution"]
    assert sorted(table["feature"]) == sorted(schema.FEATURES)
    assert table["mean_abs_contribution"].is_monotonic_decreasing
    contributions = explainer.explain_frame(fresh).contributions
    by_feature = table.set_index("feature")
    for index, name in enumerate(schema.FEATURES):
        assert by_feature.loc[name, "mean_abs_contribution"] == pytest.approx(np.abs(contributions[:, index]).mean())
        assert by_feature.loc[name, "mean_contribution"] == pytest.approx(contributions[:, index].mean())
    assert table.attrs == {"scale": explain.PROBABILITY, "method": explain.TREE_PATH, "rows": len(fresh)}
    # The synthetic frauds' signals (the interaction pair, the strongest linear shifts) lead.
    assert set(table["feature"].head(6)) & {"V13", "V15", "V17", "V14", "V12"}
    with pytest.raises(ValueError, match="the frame is empty"):
        explain.global_importance(explainer, fresh.iloc[:0])


def test_reason_table_lists_the_top_alerts_with_their_reasons_as_an_analyst_reads_them(models, fresh):
    model = models["random_forest"]
    scored = fresh.set_index(pd.RangeIndex(1000, 1000 + len(fresh)))  # the row labels are the frame's own
    scores = modeling.fraud_probability(model, scored)
    table = explain.reason_table(model, scored, scores, top=10)
    assert len(table) == 10
    assert list(table.columns[:5]) == ["rank", "row", "fraud_probability", schema.AMOUNT, schema.TARGET]
    assert list(table.columns[5:]) == [f"reason_{i}" for i in range(1, explain.TOP_REASONS + 1)]
    assert list(table["rank"]) == list(range(1, 11))
    assert table["fraud_probability"].is_monotonic_decreasing
    assert table["fraud_probability"].iloc[-1] >= np.sort(scores)[-10]
    first = table.iloc[0]
    assert first["fraud_probability"] == scores.max()
    assert first[schema.AMOUNT] == scored.loc[first["row"], schema.AMOUNT]
    # Each reason reads "feature = value (signed contribution)", as the explainer gives it for that row.
    reasons = explain.Explainer(model).explain_frame(scored.loc[[first["row"]]]).reasons(0)
    assert [first[f"reason_{i + 1}"] for i in range(len(reasons))] == [explain.describe_reason(r) for r in reasons]
    assert explain.describe_reason({"feature": "V14", "value": -8.2134, "contribution": 0.31234}) == \
        "V14 = -8.213 (+0.312)"
    assert table.attrs["scale"] == explain.PROBABILITY
    with pytest.raises(ValueError, match="one per row of the frame"):
        explain.reason_table(model, scored, scores[:-1])


def test_a_model_without_an_exact_explanation_is_refused(data):
    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import Pipeline

    from ccfraud.preprocess import make_preprocessor

    model = modeling.PriorCorrected(Pipeline([("preprocess", make_preprocessor()), ("model", DummyClassifier())]))
    model.fit(data[schema.FEATURES], data[schema.TARGET])
    with pytest.raises(explain.UnsupportedModel, match="no reason codes for a DummyClassifier classifier"):
        explain.Explainer(model)
