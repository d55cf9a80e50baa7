"""The train stage's logic: every choice made without the test split, and what the stage writes."""

import json

import numpy as np
import pandas as pd
import pytest

from ccfraud import artifacts, baseline, evaluation, modeling, preprocess, schema, training

SETTINGS = {
    "candidates": {"logreg": {"sampler": ["class_weight", "none"]}},
    "split_strategy": "time",
    "cv_folds": 2,
    "seed": 0,
    "threshold_rule": "max_f1",
    "target_precision": 0.8,
    "target_recall": 0.8,
    "review_cost": 5.0,
    "refit_on": "train_valid",
    "n_jobs": 1,
}


@pytest.fixture(scope="module")
def splits():
    return training.demo_splits(seed=1)[0]


@pytest.fixture(scope="module")
def selection(splits):
    return training.select_model(splits.train, splits.valid, **SETTINGS)


def test_refit_rows_are_train_or_train_plus_valid(splits):
    assert len(training.refit_rows(splits.train, splits.valid, "train")) == len(splits.train)
    both = training.refit_rows(splits.train, splits.valid, "train_valid")
    assert len(both) == len(splits.train) + len(splits.valid)
    with pytest.raises(ValueError, match="refit_on must be one of"):
        training.refit_rows(splits.train, splits.valid, "all")


def test_selection_depends_on_train_and_valid_only(splits, selection):
    """Choices are a function of train and valid: the same inputs give the same model and threshold,
    and changing the validation labels changes the threshold (so valid is really what it is chosen on)."""
    again = training.select_model(splits.train, splits.valid, **SETTINGS)
    assert again.threshold == selection.threshold
    np.testing.assert_array_equal(modeling.fraud_probability(again.model, splits.test),
                                  modeling.fraud_probability(selection.model, splits.test))
    shuffled = splits.valid.assign(Class=np.random.default_rng(0).permutation(splits.valid[schema.TARGET]))
    assert training.select_model(splits.train, shuffled, **SETTINGS).threshold != selection.threshold


def test_final_model_is_refitted_on_train_and_valid(splits, selection):
    assert selection.refit_rows == len(splits.train) + len(splits.valid)
    assert selection.refit_frauds == int(splits.train[schema.TARGET].sum() + splits.valid[schema.TARGET].sum())
    assert 0.0 < selection.threshold < 1.0


def test_finish_run_writes_what_it_was_given(splits, selection, tmp_path):
    y = splits.test[schema.TARGET]
    scores = modeling.fraud_probability(selection.model, splits.test)
    metrics_test = evaluation.evaluate(y, scores, selection.threshold, amount=splits.test[schema.AMOUNT], bootstrap=20)
    seed_model = baseline.fit_seed_baseline(splits.train)
    metrics_seed = evaluation.evaluate(y, modeling.fraud_probability(seed_model.model, splits.test), 0.5,
                                       bootstrap=0)
    metrics_reference = {**metrics_test, "auprc": 0.123, "roc_auc": 0.456}
    meta = training.finish_run(
        selection, threshold_rule="max_f1", refit_on="train_valid", metrics_test=metrics_test,
        metrics_seed=metrics_seed, metrics_reference=metrics_reference, test_curves=evaluation.curves(y, scores),
        test_labels=y, test_scores=scores, manifest={"split": "time"}, params={"seed": 0},
        model_dir=tmp_path / "models", reports_dir=tmp_path,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"] == selection.best.name and metrics["model_version"] == meta["model_version"]
    assert metrics["threshold"] == pytest.approx(selection.threshold, abs=1e-6)
    assert metrics["test"]["auprc"] == pytest.approx(metrics_test["auprc"], abs=1e-6)
    assert metrics["seed_baseline"]["auprc"] == pytest.approx(metrics_seed["auprc"], abs=1e-6)
    assert metrics["reference_untuned_hgb"] == {"auprc": 0.123, "roc_auc": 0.456}
    assert not any("accuracy" in key for key in metrics["seed_baseline"])
    loaded = artifacts.load_model(tmp_path / "models")
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, splits.test), scores)
    confusion = pd.read_csv(tmp_path / "plots" / "confusion.csv")
    assert confusion["actual"].tolist() == y.tolist()
    assert confusion["predicted"].tolist() == (scores >= selection.threshold).astype(int).tolist()


def test_manifest_roundtrip_and_bad_strategy(splits, tmp_path):
    preprocess.write_manifest(tmp_path, preprocess.Splits(splits.train, splits.valid, splits.test), strategy="time")
    assert preprocess.read_manifest(tmp_path)["splits"]["test"]["rows"] == len(splits.test)
    (tmp_path / preprocess.MANIFEST_FILE).write_text(json.dumps({"split": "random"}))
    with pytest.raises(ValueError, match=r"'split' must be one of \('time', 'stratified'\), found 'random'"):
        preprocess.read_manifest(tmp_path)
