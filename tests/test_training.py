"""The train stage's logic: every choice made without the test split, and what the stage writes."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from ccfraud import artifacts, baseline, evaluation, modeling, preprocess, schema, synthetic, training

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
    preprocess.write_manifest(tmp_path, preprocess.split_facts(splits), strategy="time")
    assert preprocess.read_manifest(tmp_path)["splits"]["test"]["rows"] == len(splits.test)
    (tmp_path / preprocess.MANIFEST_FILE).write_text(json.dumps({"split": "random"}))
    with pytest.raises(ValueError, match=r"'split' must be one of \('time', 'stratified'\), found 'random'"):
        preprocess.read_manifest(tmp_path)


def test_a_sample_as_large_as_the_split_is_the_split(splits):
    sample = training.draw_training_sample(splits.train, 10 * len(splits.train), seed=0)
    assert sample.frame is splits.train and sample.legit_fraction == 1.0
    assert training.draw_training_sample(splits.train, None, seed=0).frame is splits.train


def test_a_sample_keeps_every_fraud_and_records_the_legitimate_share(splits):
    frauds = int(splits.train[schema.TARGET].sum())
    sample = training.draw_training_sample(splits.train, 3000, seed=0)
    kept = len(sample.frame) - frauds
    assert int(sample.frame[schema.TARGET].sum()) == frauds
    assert sample.legit_fraction == kept / (len(splits.train) - frauds)
    assert abs(len(sample.frame) - 3000) < 5 * 45  # binomial sd about 45 rows
    assert sample.frame[schema.TIME].is_monotonic_increasing  # forward-chaining folds need time order
    assert sample.describe()["split_rows"] == len(splits.train)
    with pytest.raises(ValueError, match=f"sample_rows={frauds} leaves no room for legitimate rows"):
        training.draw_training_sample(splits.train, frauds, seed=0)


def test_sampled_training_is_calibrated_like_the_whole_split():
    """Trained on every fraud and a tenth of the legitimate rows, the corrected probabilities still
    average the validation fraud rate, as the unsampled model's do; uncorrected they would not.

    A stratified split: train and valid then share one fraud rate (the synthetic data's rate drifts in time).
    """
    splits = preprocess.split(synthetic.generate(rows=20000, frauds=300, seed=4), "stratified", seed=0)
    rate = splits.valid[schema.TARGET].mean()
    whole = modeling.make_pipeline("logreg", seed=0).fit(splits.train, splits.train[schema.TARGET])
    sample = training.draw_training_sample(splits.train, 1500, seed=0)
    assert sample.legit_fraction < 0.15
    sampled = modeling.refit(modeling.make_pipeline("logreg", seed=0), sample.frame,
                             legit_fraction=sample.legit_fraction)
    assert sampled.beta_ == pytest.approx(sample.legit_fraction)
    whole_mean = modeling.fraud_probability(whole, splits.valid).mean()
    sampled_mean = modeling.fraud_probability(sampled, splits.valid).mean()
    raw_mean = sampled.estimator_.predict_proba(splits.valid[schema.FEATURES])[:, 1].mean()
    assert raw_mean > 4 * rate
    assert abs(sampled_mean - rate) < 0.3 * rate and abs(sampled_mean - whole_mean) < 0.3 * rate


def test_cv_scoring_of_a_sample_weights_legitimate_rows_back(splits):
    assert modeling.auprc_scoring(1.0) == "average_precision"
    model = modeling.make_pipeline("logreg", seed=0).fit(splits.train, splits.train[schema.TARGET])
    scorer = modeling.auprc_scoring(0.25)
    y = splits.valid[schema.TARGET].to_numpy()
    scores = modeling.fraud_probability(model, splits.valid)
    expected = average_precision_score(y, scores, sample_weight=np.where(y == 1, 1.0, 4.0))
    assert scorer(model, splits.valid[schema.FEATURES], y) == pytest.approx(expected)
    assert expected < average_precision_score(y, scores)


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return training.write_demo_processed(tmp_path_factory.mktemp("processed"), seed=1, partition_rows=2500)


def test_the_cluster_makes_the_same_choices_as_pandas(processed, dask_client):
    """Splits on the cluster and in memory, the same sample rule: the same model, threshold and test scores."""
    settings = {**SETTINGS, "sample_rows": 4000}
    in_memory, manifest = training.load_processed(processed, "pandas")
    on_dask, _ = training.load_processed(processed, "dask")
    assert manifest["split"] == "time" and on_dask.train.npartitions > 1
    a = training.select_model(in_memory.train, in_memory.valid, **settings)
    b = training.select_model(on_dask.train, on_dask.valid, **settings)
    assert a.fit_sample.legit_fraction < 1.0 and a.samples() == b.samples()
    assert a.threshold == b.threshold
    np.testing.assert_array_equal(a.valid_scores, b.valid_scores)
    pd.testing.assert_frame_equal(training.score(b.model, on_dask.test), training.score(a.model, in_memory.test))


def test_scoring_on_the_cluster_keeps_rows_in_order(processed, dask_client):
    in_memory, _ = training.load_processed(processed, "pandas")
    on_dask, _ = training.load_processed(processed, "dask")
    model = modeling.make_pipeline("logreg", seed=0).fit(in_memory.train, in_memory.train[schema.TARGET])
    scored = training.score(model, on_dask.test)
    assert list(scored.columns) == list(modeling.SCORED_COLUMNS)
    np.testing.assert_array_equal(scored[modeling.SCORE], modeling.fraud_probability(model, in_memory.test))
    np.testing.assert_array_equal(scored[schema.TARGET], in_memory.test[schema.TARGET])
