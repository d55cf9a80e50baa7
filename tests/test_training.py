"""The train stage's edges: which rows the final model sees and what the stage writes."""

import json

import pytest

from ccfraud import baseline, evaluation, modeling, schema, training


@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory):
    splits, manifest = training.demo_splits(seed=1)
    results = modeling.search_all({"logreg": {"sampler": "class_weight"}}, splits.train,
                                  splits.train[schema.TARGET], folds=2)
    best = results[0]
    valid_scores = modeling.fraud_probability(best.best_estimator, splits.valid)
    threshold = evaluation.choose_threshold(splits.valid[schema.TARGET], valid_scores)
    model = modeling.refit(best.best_estimator, training.refit_rows(splits, "train_valid"))
    scores = modeling.fraud_probability(model, splits.test)
    y = splits.test[schema.TARGET]
    metrics = evaluation.evaluate(y, scores, threshold, amount=splits.test[schema.AMOUNT], bootstrap=20)
    seed_model = baseline.fit_seed_baseline(splits.train)
    seed_metrics = evaluation.evaluate(y, modeling.fraud_probability(seed_model.model, splits.test), 0.5, bootstrap=0)
    out = tmp_path_factory.mktemp("run")
    meta = training.finish_run(
        model=model, refit_on="train_valid", best=best, results=results, threshold=threshold,
        threshold_rule="max_f1", metrics_test=metrics, metrics_seed=seed_metrics, metrics_reference=metrics,
        seed_model=seed_model, seed_accuracy_on_test=0.9, test_curves=evaluation.curves(y, scores),
        valid_curves=evaluation.curves(splits.valid[schema.TARGET], valid_scores), test_labels=y,
        test_scores=scores, manifest=manifest, params={"seed": 0}, model_dir=out / "models", reports_dir=out,
    )
    return out, meta, splits


def test_refit_rows_never_include_the_test_split():
    splits, _ = training.demo_splits(seed=2)
    assert len(training.refit_rows(splits, "train")) == len(splits.train)
    both = training.refit_rows(splits, "train_valid")
    assert len(both) == len(splits.train) + len(splits.valid)
    assert both[schema.TIME].max() <= splits.test[schema.TIME].min()
    with pytest.raises(ValueError, match="refit_on must be one of"):
        training.refit_rows(splits, "all")


def test_finish_run_writes_metrics_plots_and_model(run_outputs):
    out, meta, splits = run_outputs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_version"] == meta["model_version"]
    assert metrics["refit_on"] == "train_valid" and meta["refit_on"] == "train_valid"
    assert set(metrics) >= {"test", "cv", "seed_baseline", "reference_untuned_hgb", "threshold", "model"}
    for name in ("pr_curve", "roc_curve", "confusion", "calibration", "threshold"):
        assert (out / "plots" / f"{name}.csv").stat().st_size > 0
    confusion = (out / "plots" / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == len(splits.test) + 1
    assert (out / "models" / "model.skops").exists()
