"""Metrics, threshold rules and intervals, checked against hand-computable cases."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score

from ccfraud import evaluation

Y = np.array([0, 0, 0, 0, 0, 0, 1, 0, 1, 1])
P = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9])
AMOUNT = np.array([10, 10, 10, 10, 10, 10, 100, 10, 50, 200.0])


def test_counts_and_money_at_a_threshold():
    out = evaluation.at_threshold(Y, P, 0.5, amount=AMOUNT, review_cost=5.0)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["fraud_amount_caught"] == 250.0
    assert out["fraud_amount_missed"] == 100.0
    assert out["net_saving"] == pytest.approx(250.0 - 5.0 * 3)


def test_precision_at_k():
    assert evaluation.precision_at_k(Y, P, 2) == 1.0
    assert evaluation.precision_at_k(Y, P, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be positive"):
        evaluation.precision_at_k(Y, P, 0)


def test_max_f1_threshold_beats_every_other_cut():
    chosen = evaluation.choose_threshold(Y, P, "max_f1")
    best = evaluation.at_threshold(Y, P, chosen)["f1"]
    assert all(evaluation.at_threshold(Y, P, t)["f1"] <= best + 1e-12 for t in P)


def test_precision_and_recall_targets():
    t = evaluation.choose_threshold(Y, P, "precision", target_precision=1.0)
    assert t == pytest.approx(0.7)
    t = evaluation.choose_threshold(Y, P, "recall", target_recall=1.0)
    assert t == pytest.approx(0.4)


def test_min_cost_prefers_alerting_when_reviews_are_cheap_and_nothing_when_expensive():
    cheap = evaluation.choose_threshold(Y, P, "min_cost", amount=AMOUNT, review_cost=1.0)
    assert evaluation.at_threshold(Y, P, cheap)["recall"] == 1.0
    dear = evaluation.choose_threshold(Y, P, "min_cost", amount=AMOUNT, review_cost=1000.0)
    assert evaluation.at_threshold(Y, P, dear)["alerts"] == 0


def test_bad_threshold_rule():
    with pytest.raises(ValueError, match="threshold rule must be one of"):
        evaluation.choose_threshold(Y, P, "accuracy")
    with pytest.raises(ValueError, match="needs transaction amounts"):
        evaluation.choose_threshold(Y, P, "min_cost")


def test_evaluate_reports_auprc_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.05).astype(int)
    p = np.clip(0.3 * y + rng.random(3000) * 0.7, 0, 1)
    metrics = evaluation.evaluate(y, p, 0.5, bootstrap=100, seed=1)
    assert metrics["auprc"] == pytest.approx(average_precision_score(y, p))
    low, high = metrics["auprc_ci95"]
    assert low < metrics["auprc"] < high
    assert "accuracy" not in metrics


def test_curves_have_the_plot_columns():
    curves = evaluation.curves(Y, P, n_bins=2)
    assert list(curves["pr_curve"].columns) == ["recall", "precision"]
    assert list(curves["roc_curve"].columns) == ["fpr", "tpr"]
    assert list(curves["threshold"].columns) == ["threshold", "precision", "recall"]
    assert len(evaluation.thin_curve(curves["roc_curve"], max_points=3)) <= 3


def test_label_validation():
    with pytest.raises(ValueError, match="equal length"):
        evaluation.evaluate(Y[:-1], P, 0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_score_that_is_not_a_finite_number_is_refused_before_any_resampling(bad):
    scores = np.array(P, dtype=float)
    scores[2] = bad
    with pytest.raises(ValueError, match=f"scores must be finite numbers: row 2 is {bad}"):
        evaluation.bootstrap_intervals(Y, scores, 0.5)
    with pytest.raises(ValueError, match="row 2"):
        evaluation.paired_margin(Y, P, scores)


def test_category_resamples_are_distributed_as_row_resamples():
    """Drawing category counts is drawing rows: the margin's quantiles over 4,000 resamples each way agree (a KS
    test cannot tell them apart), on a small split with ties. The row draws are scored through their category
    counts, which the test above shows to be exact."""
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.06).astype(int)
    p = (rng.random(400) * 0.5 + y * rng.random(400) * 0.5).round(1)
    q = (rng.random(400) * 0.6 + y * rng.random(400) * 0.4).round(1)
    resampler = evaluation._Resampler(y, p, q)
    categories = len(resampler.keys)
    counts = np.concatenate(list(resampler.draws(np.random.default_rng(1), 4000)))
    by_categories = resampler.auprc(counts, 0) - resampler.auprc(counts, 1)
    drawn = resampler.category[rng.integers(0, len(y), (4000, len(y)))] + np.arange(4000)[:, None] * categories
    row_counts = np.bincount(drawn.ravel(), minlength=4000 * categories).reshape(4000, categories)
    by_rows = resampler.auprc(row_counts, 0) - resampler.auprc(row_counts, 1)
    by_categories, by_rows = by_categories[~np.isnan(by_categories)], by_rows[~np.isnan(by_rows)]
    assert stats.ks_2samp(by_categories, by_rows).pvalue > 0.01
    np.testing.assert_allclose(np.quantile(by_categories, [0.025, 0.5, 0.975]),
                               np.quantile(by_rows, [0.025, 0.5, 0.975]), atol=0.02)


def test_pr_curve_keeps_the_best_precision_of_each_recall_level():
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    pr = evaluation.curves(y, p, n_bins=2)["pr_curve"]
    assert pr["recall"].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert pr["precision"].tolist() == pytest.approx([0.75, 1.0, 1.0, 1.0])


def test_a_resample_drawn_as_category_counts_scores_as_sklearn_does_on_its_rows():
    """Counting rows by class and step loses nothing: for rows drawn with replacement, the AUPRC and recall of each
    model from the category counts equal sklearn's on the drawn rows, ties included (scores rounded to 0.01)."""
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.02).astype(int)
    p = np.clip(rng.random(3000) * 0.4 + y * rng.random(3000) * 0.6, 0, 1).round(2)  # many ties
    q = np.clip(rng.random(3000) * 0.5 + y * rng.random(3000) * 0.5, 0, 1).round(2)
    resampler = evaluation._Resampler(y, p, q)
    assert len(resampler.keys) < len(y) / 5
    for _ in range(10):
        rows = rng.integers(0, len(y), len(y))
        counts = resampler.counts_of(np.bincount(rows, minlength=len(y)))
        for model, scores in enumerate((p, q)):
            assert resampler.auprc(counts, model)[0] == pytest.approx(
                average_precision_score(y[rows], scores[rows]), abs=1e-12)
            assert resampler.recall(counts, 0.5, model)[0] == pytest.approx(
                (scores[rows][y[rows] == 1] >= 0.5).mean(), abs=1e-12)
    chunks = list(resampler.draws(rng, 7, max_counts=3 * len(resampler.keys)))
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]
    assert np.concatenate(chunks).sum(axis=1).tolist() == [len(y)] * 7
    low, high = evaluation.bootstrap_intervals(y, p, 0.5, n=500)["auprc"]
    assert low <= average_precision_score(y, p) <= high
