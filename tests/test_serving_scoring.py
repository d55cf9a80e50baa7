"""The random-forest kernel of the scoring fast path: same numbers as the training code path, or not used.

The kernel walks all trees at once instead of calling the forest's ``predict_proba``;
these tests hold it to ``modeling.fraud_probability`` on single rows, small and big
batches and values sitting exactly on split thresholds (where the float32 cast
scikit-learn applies decides the branch), and check that a kernel built wrong is
caught at load time by the parity check and never serves.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from ccfraud import modeling, schema, synthetic
from ccfraud.serving import scoring

#: Within this of the training code path, the same contract the load-time parity check enforces.
ATOL = scoring.PARITY_TOLERANCE


@pytest.fixture(scope="module")
def training() -> pd.DataFrame:
    return synthetic.generate(rows=5000, frauds=100, seed=0)


@pytest.fixture(scope="module")
def unseen() -> pd.DataFrame:
    """Rows the forests were not trained on, frauds first so that probabilities are not all zero."""
    data = synthetic.generate(rows=3000, frauds=60, seed=1)
    return data.sort_values(schema.TARGET, ascending=False, kind="stable", ignore_index=True)


@pytest.fixture(scope="module", params=["undersample", "none"])
def forest_model(request, training) -> modeling.PriorCorrected:
    """A random forest as the train stage builds it: undersampled (prior-corrected) or not."""
    model = modeling.make_pipeline("random_forest", request.param, sampling_ratio=0.1, n_estimators=50)
    return model.fit(training[schema.FEATURES], training[schema.TARGET])


@pytest.fixture(scope="module")
def scorer(forest_model) -> scoring.Scorer:
    return scoring.Scorer(forest_model)


def expected(model, matrix: np.ndarray) -> np.ndarray:
    """The training code path on the same rows."""
    return modeling.fraud_probability(model, pd.DataFrame(matrix, columns=schema.FEATURES))


def test_forest_is_scored_by_the_flat_forest_kernel(forest_model, scorer):
    assert scorer.path == scoring.FAST, scorer.fallback_reason
    assert scorer.classifier_path == "flat_forest"
    assert scorer.fallback_reason is None


def test_undersampled_forest_is_prior_corrected(forest_model, unseen, scorer):
    """beta < 1 after undersampling: the kernel's output goes through the same correction as training's."""
    matrix = unseen[schema.FEATURES].to_numpy()[:64]
    raw = forest_model.estimator_.predict_proba(unseen[schema.FEATURES].iloc[:64])[:, 1]
    if forest_model.estimator_.named_steps["sample"] == "passthrough":
        assert forest_model.beta_ == 1.0
        np.testing.assert_allclose(scorer.probabilities(matrix), raw, rtol=0, atol=ATOL)
    else:
        assert forest_model.beta_ < 1.0
        assert np.any(raw > 0)  # the correction changes something
        np.testing.assert_allclose(scorer.probabilities(matrix),
                                   modeling.correct_probability(raw, forest_model.beta_), rtol=0, atol=ATOL)


def test_single_rows_equal_the_pipeline(forest_model, scorer, unseen):
    matrix = unseen[schema.FEATURES].to_numpy()[:40]
    found = np.concatenate([scorer.probabilities(matrix[i : i + 1]) for i in range(len(matrix))])
    reference = expected(forest_model, matrix)
    np.testing.assert_allclose(found, reference, rtol=0, atol=ATOL)
    assert np.count_nonzero(reference) >= 10  # frauds among the rows: leaves with fraud fractions are reached


@pytest.mark.parametrize("size", [2, 7, 16, scoring.FOREST_BATCH_ROWS, scoring.FOREST_BATCH_ROWS + 1, 1000])
def test_batches_equal_the_pipeline(forest_model, scorer, unseen, size):
    matrix = unseen[schema.FEATURES].to_numpy()[:size]
    np.testing.assert_allclose(scorer.probabilities(matrix), expected(forest_model, matrix), rtol=0, atol=ATOL)


def test_small_batches_are_walked_big_ones_use_the_forest(scorer, unseen, monkeypatch):
    """Up to FOREST_BATCH_ROWS rows the forest's own predict_proba is never called; above, it is."""
    def refuse(self, X):
        raise AssertionError(f"predict_proba called with {len(X)} rows")

    monkeypatch.setattr(RandomForestClassifier, "predict_proba", refuse)
    matrix = unseen[schema.FEATURES].to_numpy()
    assert scorer.probabilities(matrix[:1]).shape == (1,)
    assert scorer.probabilities(matrix[: scoring.FOREST_BATCH_ROWS]).shape == (scoring.FOREST_BATCH_ROWS,)
    with pytest.raises(AssertionError, match=f"called with {scoring.FOREST_BATCH_ROWS + 1} rows"):
        scorer.probabilities(matrix[: scoring.FOREST_BATCH_ROWS + 1])


def root_threshold_rows(model, base: np.ndarray) -> tuple[np.ndarray, int]:
    """Copies of ``base`` with each tree's root feature set to the root threshold, and to its neighbours.

    Only roots split on a passthrough column (the scaled ones compare transformed values),
    and every row reaches its tree's root, so each crafted value is compared with that
    threshold. Also returns how many thresholds float32 rounds upwards: at those, sklearn
    sends ``x == threshold`` right, where a float64 (or all-float32) comparison goes left.
    """
    forest = model.estimator_.named_steps["model"]
    names = [str(name) for name in forest.feature_names_in_]
    rows, rounded_up = [], 0
    for estimator in forest.estimators_:
        tree = estimator.tree_
        name = names[tree.feature[0]]
        if name in schema.SCALED_FEATURES:
            continue
        threshold = float(tree.threshold[0])
        rounded_up += float(np.float32(threshold)) > threshold  # in float64: a bare np.float32 would compare in float32
        for value in (threshold, np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf),
                      float(np.float32(threshold)), float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))):
            row = base.copy()
            row[schema.FEATURES.index(name)] = value
            rows.append(row)
    return np.array(rows), rounded_up


def test_values_on_split_thresholds_branch_like_the_pipeline(forest_model, scorer, unseen):
    rows, rounded_up = root_threshold_rows(forest_model, unseen[schema.FEATURES].to_numpy()[0])
    assert len(rows) >= 50 and rounded_up >= 3, "too few thresholds to exercise the float32 cast"
    np.testing.assert_allclose(scorer.probabilities(rows), expected(forest_model, rows), rtol=0, atol=ATOL)
    found = np.concatenate([scorer.probabilities(row[None, :]) for row in rows])
    np.testing.assert_allclose(found, expected(forest_model, rows), rtol=0, atol=ATOL)


def test_load_time_threshold_rows_tell_the_comparison_precisions_apart(forest_model):
    """threshold_rows catch a walk that compares all in float32 (or all in float64), which random rows miss."""
    forest = forest_model.estimator_.named_steps["model"]
    flat = scoring.flatten_forest(forest)
    rows = scoring.threshold_rows(flat)
    assert len(rows) == 3 * len(forest.estimators_)
    reference = forest.predict_proba(pd.DataFrame(rows, columns=forest.feature_names_in_))[:, 1]
    np.testing.assert_allclose(flat.probabilities(rows), reference, rtol=0, atol=ATOL)
    in_float32 = dataclasses.replace(flat, threshold=flat.threshold.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(in_float32.probabilities(rows) - reference)) > 1e-3
    random_rows = np.random.default_rng(0).normal(0.0, 2.0, size=(1000, flat.n_features))
    np.testing.assert_array_equal(in_float32.probabilities(random_rows), flat.probabilities(random_rows))


BREAKAGES = {
    "children swapped": lambda flat: dataclasses.replace(flat, children=flat.children.reshape(-1, 2)[:, ::-1].ravel()),
    "last tree dropped": lambda flat: dataclasses.replace(flat, roots=flat.roots[:-1]),
    "thresholds in float32": lambda flat: dataclasses.replace(
        flat, threshold=flat.threshold.astype(np.float32).astype(np.float64)),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_flattening_is_caught_and_the_pipeline_serves(forest_model, unseen, monkeypatch, caplog, breakage):
    real = scoring.flatten_forest
    monkeypatch.setattr(scoring, "flatten_forest", lambda forest: BREAKAGES[breakage](real(forest)))
    with caplog.at_level(logging.WARNING, logger=scoring.__name__):
        scorer = scoring.Scorer(forest_model)
    assert scorer.path == scoring.PIPELINE
    assert scorer.classifier_path is None
    assert "differs from" in scorer.fallback_reason
    if breakage == "thresholds in float32":
        assert "on rows at split thresholds" in scorer.fallback_reason
    assert any(scorer.fallback_reason in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    matrix = unseen[schema.FEATURES].to_numpy()[:20]
    np.testing.assert_array_equal(scorer.probabilities(matrix), expected(forest_model, matrix))


def test_values_float32_cannot_hold_get_the_forests_own_error(forest_model, scorer, unseen):
    """Finite in float64, infinite in float32: refused exactly as the training code path refuses it."""
    row = unseen[schema.FEATURES].to_numpy()[:1].copy()
    row[0, schema.FEATURES.index("V5")] = 1e39
    with np.errstate(over="ignore"):  # scikit-learn's own cast to float32 overflows, as it should here
        with pytest.raises(ValueError, match="too large for dtype\\('float32'\\)"):
            expected(forest_model, row)
        with pytest.raises(ValueError, match="too large for dtype\\('float32'\\)"):
            scorer.probabilities(row)


def test_extra_trees_use_the_same_kernel(training, unseen):
    model = modeling.make_pipeline("random_forest", "undersample", sampling_ratio=0.1)
    model.set_params(estimator__model=ExtraTreesClassifier(n_estimators=30, min_samples_leaf=2, random_state=0))
    model.fit(training[schema.FEATURES], training[schema.TARGET])
    scorer = scoring.Scorer(model)
    assert scorer.path == scoring.FAST, scorer.fallback_reason
    assert scorer.classifier_path == "flat_forest"
    matrix = unseen[schema.FEATURES].to_numpy()[:50]
    np.testing.assert_allclose(scorer.probabilities(matrix), expected(model, matrix), rtol=0, atol=ATOL)
    np.testing.assert_allclose(scorer.probabilities(matrix[3:4]), expected(model, matrix[3:4]), rtol=0, atol=ATOL)
