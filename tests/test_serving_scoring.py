"""The random-forest kernel of the scoring fast path: same numbers as the training code path, or not used.

The kernel scores the forest's own trees without its ``predict_proba`` (a node table for
a few rows, parallel chunks of trees for many); these tests hold it to
``modeling.fraud_probability`` on single rows, small and big batches and values sitting
exactly on split thresholds (where the float32 cast scikit-learn applies decides the
branch), and check that a kernel built wrong is caught at load time and never serves.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from ccfraud import modeling, schema, synthetic
from ccfraud.serving import forest, scoring

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


def test_single_rows_equal_the_pipeline(forest_model, scorer, unseen):
    matrix = unseen[schema.FEATURES].to_numpy()[:40]
    found = np.concatenate([scorer.probabilities(matrix[i : i + 1]) for i in range(len(matrix))])
    reference = expected(forest_model, matrix)
    np.testing.assert_allclose(found, reference, rtol=0, atol=ATOL)
    assert np.count_nonzero(reference) >= 10  # frauds among the rows: leaves with fraud fractions are reached


BATCH_SIZES = [2, 7, forest.NODE_TABLE_ROWS, forest.NODE_TABLE_ROWS + 1, 1000]


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_batches_equal_the_pipeline(forest_model, scorer, unseen, size):
    matrix = unseen[schema.FEATURES].to_numpy()[:size]
    np.testing.assert_allclose(scorer.probabilities(matrix), expected(forest_model, matrix), rtol=0, atol=ATOL)


def classifier_input(model, frame: pd.DataFrame) -> np.ndarray:
    """What the forest itself receives: the pipeline's transformed features, as float32."""
    transformed = model.estimator_.named_steps["preprocess"].transform(frame[schema.FEATURES])
    return np.ascontiguousarray(transformed, dtype=np.float32)


def own_predict_proba(model, values: np.ndarray) -> np.ndarray:
    return model.predict_proba(pd.DataFrame(values, columns=model.feature_names_in_))[:, 1]


@pytest.mark.parametrize("rows", [1, 5, forest.NODE_TABLE_SLICE, 3 * forest.NODE_TABLE_SLICE + 5])
def test_node_table_equals_predict_proba(forest_model, unseen, rows):
    """Also across the slices a big input is cut into."""
    model = forest_model.estimator_.named_steps["model"]
    values = classifier_input(forest_model, unseen.iloc[:rows])
    reference = own_predict_proba(model, values)
    np.testing.assert_allclose(forest.NodeTable.from_forest(model).probabilities(values), reference,
                               rtol=0, atol=ATOL)


def test_node_table_scores_concurrent_requests_in_threads_independently(forest_model, unseen):
    """Each thread walks its own scratch table: concurrent requests (gthread, tests) never see each other's rows."""
    model = forest_model.estimator_.named_steps["model"]
    table = forest.NodeTable.from_forest(model)
    values = classifier_input(forest_model, unseen.iloc[:64])
    reference = own_predict_proba(model, values)
    start = threading.Barrier(4)

    def score(offset: int) -> list[float]:
        start.wait()
        return [float(table.probabilities(values[i : i + 1 + i % 3])[0]) for i in range(offset, 60, 4)]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between NumPy calls, so a shared table would be overwritten
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(score, range(4)))
    finally:
        sys.setswitchinterval(interval)
    for offset, found in enumerate(results):
        np.testing.assert_allclose(found, reference[offset:60:4], rtol=0, atol=ATOL)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tree_chunks_equal_predict_proba_to_the_bit_with_any_thread_count(forest_model, unseen, threads):
    """Fractions are added tree after tree, as predict_proba adds them, whatever thread scored which tree."""
    model = forest_model.estimator_.named_steps["model"]
    values = classifier_input(forest_model, unseen.iloc[:500])
    found = forest.TreeChunks.from_forest(model, threads).probabilities(values)
    np.testing.assert_array_equal(found, own_predict_proba(model, values))


def test_tree_chunks_score_big_inputs_in_blocks_with_the_same_result(forest_model, unseen, monkeypatch):
    model = forest_model.estimator_.named_steps["model"]
    values = classifier_input(forest_model, unseen.iloc[:500])
    whole = forest.TreeChunks.from_forest(model, 2).probabilities(values)
    monkeypatch.setattr(forest, "SCRATCH_ENTRIES", 37 * len(model.estimators_))  # blocks of 37 rows
    np.testing.assert_array_equal(forest.TreeChunks.from_forest(model, 2).probabilities(values), whole)


def test_a_row_scores_the_same_bits_alone_and_in_a_big_batch(forest_model, scorer, unseen):
    """The node table (one row) and the tree chunks (a batch) agree exactly, not just to a tolerance."""
    matrix = unseen[schema.FEATURES].to_numpy()[:100]
    batch = scorer.probabilities(matrix)
    alone = np.concatenate([scorer.probabilities(matrix[i : i + 1]) for i in range(len(matrix))])
    np.testing.assert_array_equal(alone, batch)


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_tree_chunks_give_the_same_bits_for_any_thread_count_off_the_calling_thread(forest_model, unseen, threads,
                                                                                   monkeypatch):
    """Chunks of trees run on pool threads, never the caller's, and the result does not depend on how many.

    Which pool thread takes which chunk is the scheduler's business, so that is not asserted.
    """
    model = forest_model.estimator_.named_steps["model"]
    values = classifier_input(forest_model, unseen.iloc[:100])
    single = forest.TreeChunks.from_forest(model, threads=1).probabilities(values)
    filled_by: list[str] = []
    real = forest.TreeChunks._fill

    def recording(self, values, per_tree, first, stop):
        filled_by.append(threading.current_thread().name)
        return real(self, values, per_tree, first, stop)

    monkeypatch.setattr(forest.TreeChunks, "_fill", recording)
    chunks = forest.TreeChunks.from_forest(model, threads=threads)
    np.testing.assert_array_equal(chunks.probabilities(values), single)
    assert len(filled_by) == threads, "one chunk of trees per thread"
    assert threading.current_thread().name not in filled_by and all(n.startswith("forest") for n in filled_by)


def test_a_big_forest_gets_fewer_rows_per_node_table_pass(forest_model, unseen, monkeypatch):
    """The scratch table stays within SCRATCH_ENTRIES; results do not change."""
    model = forest_model.estimator_.named_steps["model"]
    values = classifier_input(forest_model, unseen.iloc[:20])
    table = forest.NodeTable.from_forest(model)
    expected_values = table.probabilities(values)
    monkeypatch.setattr(forest, "SCRATCH_ENTRIES", 3 * len(table.fraud_fraction))
    small = forest.NodeTable.from_forest(model)
    assert small.rows_per_pass == 3
    np.testing.assert_array_equal(small.probabilities(values), expected_values)
    assert small._following().size <= forest.SCRATCH_ENTRIES


def test_forest_of_single_leaf_trees_is_scored_exactly(training, unseen):
    """Trees that never split (min_samples_split above the rows): probes still exist, and the table is exact."""
    model = modeling.make_pipeline("random_forest", "none", n_estimators=5)
    model.set_params(estimator__model__min_samples_split=100_000)
    model.fit(training[schema.FEATURES], training[schema.TARGET])
    assert all(tree.tree_.node_count == 1 for tree in model.estimator_.named_steps["model"].estimators_)
    scorer = scoring.Scorer(model)
    assert scorer.path == scoring.FAST, scorer.fallback_reason
    matrix = unseen[schema.FEATURES].to_numpy()[:50]
    np.testing.assert_array_equal(scorer.probabilities(matrix), expected(model, matrix))
    np.testing.assert_array_equal(scorer.probabilities(matrix[:1]), expected(model, matrix[:1]))


def test_few_rows_use_the_table_many_the_chunks_never_predict_proba(scorer, unseen, monkeypatch):
    """Up to NODE_TABLE_ROWS rows the node table scores, above it the tree chunks; the forest's method never."""
    assert scorer.path == scoring.FAST, scorer.fallback_reason
    assert scorer.classifier_path == "binary_forest"
    calls: list[tuple[str, int]] = []

    def refuse(self, X):
        raise AssertionError(f"predict_proba called with {len(X)} rows")

    def recorder(name, method):
        def record(self, values):
            calls.append((name, len(values)))
            return method(self, values)
        return record

    monkeypatch.setattr(RandomForestClassifier, "predict_proba", refuse)
    monkeypatch.setattr(forest.NodeTable, "probabilities", recorder("table", forest.NodeTable.probabilities))
    monkeypatch.setattr(forest.TreeChunks, "probabilities", recorder("chunks", forest.TreeChunks.probabilities))
    matrix = unseen[schema.FEATURES].to_numpy()
    for rows in (1, forest.NODE_TABLE_ROWS, forest.NODE_TABLE_ROWS + 1):
        assert scorer.probabilities(matrix[:rows]).shape == (rows,)
    assert calls == [("table", 1), ("table", forest.NODE_TABLE_ROWS), ("chunks", forest.NODE_TABLE_ROWS + 1)]


def test_float32_floor_makes_the_float32_comparison_exact():
    """For every float32 x: x <= threshold (in float64) exactly when x <= float32_floor(threshold)."""
    rng = np.random.default_rng(0)
    thresholds = np.concatenate([
        rng.normal(0.0, 3.0, 2000), rng.uniform(-1e6, 1e6, 500), np.float32(rng.normal(0.0, 3.0, 200)),
        [0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1e39, -1e39],
    ])
    floor = forest.float32_floor(thresholds)
    assert floor.dtype == np.float32
    assert np.all(floor.astype(np.float64) <= thresholds)
    with np.errstate(over="ignore"):  # the step above float32's largest value is inf, as it should be
        assert np.all(np.nextafter(floor, np.float32(np.inf)).astype(np.float64) > thresholds)
        nearest = thresholds.astype(np.float32)
    for x in (nearest, np.nextafter(nearest, np.float32(-np.inf)), np.nextafter(nearest, np.float32(np.inf))):
        np.testing.assert_array_equal(x.astype(np.float64) <= thresholds, x <= floor)


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
    """threshold_rows catch a table that compares all in float32 (rounding to nearest), which random rows miss."""
    model = forest_model.estimator_.named_steps["model"]
    table = forest.NodeTable.from_forest(model)
    rows = forest.threshold_rows(model)
    assert len(rows) == 3 * len(model.estimators_)
    assert np.array_equal(rows.astype(np.float32).astype(np.float64), rows)  # float32 values: no cast moves them
    reference = model.predict_proba(pd.DataFrame(rows, columns=model.feature_names_in_))[:, 1]
    as_float32 = rows.astype(np.float32)
    np.testing.assert_allclose(table.probabilities(as_float32), reference, rtol=0, atol=ATOL)
    nearest = dataclasses.replace(table, threshold=internal_thresholds(model).astype(np.float32))
    assert np.max(np.abs(nearest.probabilities(as_float32) - reference)) > 1e-3
    random_rows = np.random.default_rng(0).normal(0.0, 2.0, size=(1000, table.n_features)).astype(np.float32)
    np.testing.assert_array_equal(nearest.probabilities(random_rows), table.probabilities(random_rows))


def internal_thresholds(model) -> np.ndarray:
    """The fitted trees' float64 thresholds of internal nodes, in the node table's order."""
    trees = [estimator.tree_ for estimator in model.estimators_]
    return np.concatenate([tree.threshold[tree.children_left != -1] for tree in trees])


TABLE_BREAKAGES = {
    "children swapped": lambda table: dataclasses.replace(table, left=table.right, right=table.left),
    "last tree dropped": lambda table: dataclasses.replace(table, roots=table.roots[:-1]),
    "the other class's fractions": lambda table: dataclasses.replace(table, fraud_fraction=1 - table.fraud_fraction),
}


def a_broken_kernel_is_caught(forest_model, unseen, caplog) -> scoring.Scorer:
    with caplog.at_level(logging.WARNING, logger=scoring.__name__):
        scorer = scoring.Scorer(forest_model)
    assert scorer.path == scoring.PIPELINE
    assert scorer.classifier_path is None
    assert "differs from" in scorer.fallback_reason and "on rows at split thresholds" in scorer.fallback_reason
    assert any(scorer.fallback_reason in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    matrix = unseen[schema.FEATURES].to_numpy()[:20]
    np.testing.assert_array_equal(scorer.probabilities(matrix), expected(forest_model, matrix))
    return scorer


@pytest.mark.parametrize("breakage", list(TABLE_BREAKAGES))
def test_a_broken_node_table_is_caught_and_the_pipeline_serves(forest_model, unseen, monkeypatch, caplog, breakage):
    real = forest.NodeTable.from_forest
    monkeypatch.setattr(forest.NodeTable, "from_forest",
                        classmethod(lambda cls, model: TABLE_BREAKAGES[breakage](real(model))))
    scorer = a_broken_kernel_is_caught(forest_model, unseen, caplog)
    assert "node table" in scorer.fallback_reason


def test_thresholds_rounded_to_nearest_are_caught(forest_model, unseen, monkeypatch, caplog):
    real = forest.NodeTable.from_forest

    def nearest(cls, model):
        return dataclasses.replace(real(model), threshold=internal_thresholds(model).astype(np.float32))

    monkeypatch.setattr(forest.NodeTable, "from_forest", classmethod(nearest))
    assert "node table" in a_broken_kernel_is_caught(forest_model, unseen, caplog).fallback_reason


def test_tree_chunks_missing_a_tree_are_caught(forest_model, unseen, monkeypatch, caplog):
    real = forest.TreeChunks.from_forest

    def short(cls, model, threads=None):
        chunks = real(model, threads)
        return dataclasses.replace(chunks, estimators=chunks.estimators[:-1],
                                   fraud_fractions=chunks.fraud_fractions[:-1])

    monkeypatch.setattr(forest.TreeChunks, "from_forest", classmethod(short))
    assert "tree chunks" in a_broken_kernel_is_caught(forest_model, unseen, caplog).fallback_reason


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
    assert scorer.classifier_path == "binary_forest"
    matrix = unseen[schema.FEATURES].to_numpy()[:50]
    np.testing.assert_allclose(scorer.probabilities(matrix), expected(model, matrix), rtol=0, atol=ATOL)
    np.testing.assert_allclose(scorer.probabilities(matrix[3:4]), expected(model, matrix[3:4]), rtol=0, atol=ATOL)
