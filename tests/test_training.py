"""The train and evaluate stages' logic: every choice made without the test split, and what each stage writes."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from ccfraud import (
    artifacts,
    assessment,
    baseline,
    comparison,
    evaluation,
    modeling,
    preprocess,
    schema,
    synthetic,
    training,
)

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
    again = training.select_model(splits.train, splits.valid, **SETTINGS, compare=False)
    assert again.threshold == selection.threshold
    np.testing.assert_array_equal(modeling.fraud_probability(again.model, splits.test),
                                  modeling.fraud_probability(selection.model, splits.test))
    shuffled = splits.valid.assign(Class=np.random.default_rng(0).permutation(splits.valid[schema.TARGET]))
    assert training.select_model(splits.train, shuffled, **SETTINGS, compare=False).threshold != selection.threshold


def test_final_model_is_refitted_on_train_and_valid(splits, selection):
    assert selection.refit_rows == len(splits.train) + len(splits.valid)
    assert selection.refit_frauds == int(splits.train[schema.TARGET].sum() + splits.valid[schema.TARGET].sum())
    assert 0.0 < selection.threshold < 1.0


def test_the_yardstick_is_a_candidate_and_never_beats_the_choice_on_validation(splits):
    """On data where the untuned reference is the best configuration on offer (the other candidates are
    crippled), the search still picks a model at least as good on the validation split: the reference."""
    crippled = {**SETTINGS, "candidates": {"hist_gb": {"max_iter": [3], "learning_rate": [0.01]},
                                           "logreg": {"sampler": ["none"], "C": [1e-4]}}}
    selection = training.select_model(splits.train, splits.valid, **crippled, compare=False)
    by_name = {result.name: result for result in selection.results}
    assert set(by_name) == {"hist_gb", "logreg", modeling.REFERENCE}
    reference = by_name[modeling.REFERENCE]
    # The reference really is scikit-learn's defaults, fitted on train and scored on the whole validation split.
    untuned = modeling.make_pipeline("hist_gb", seed=SETTINGS["seed"]).fit(splits.train, splits.train[schema.TARGET])
    assert reference.valid_auprc == pytest.approx(average_precision_score(
        splits.valid[schema.TARGET], modeling.fraud_probability(untuned, splits.valid)))
    assert selection.best.valid_auprc >= reference.valid_auprc
    assert all(selection.best.valid_auprc >= result.valid_auprc for result in selection.results)
    assert selection.best.name == modeling.REFERENCE


def test_the_reference_name_is_reserved_for_the_reference():
    assert modeling.with_reference({})[modeling.REFERENCE] == modeling.REFERENCE_SPEC
    assert modeling.with_reference({modeling.REFERENCE: dict(modeling.REFERENCE_SPEC)}) == {
        modeling.REFERENCE: modeling.REFERENCE_SPEC}
    with pytest.raises(ValueError, match="reserved for the untuned reference"):
        modeling.with_reference({modeling.REFERENCE: {"model": "hist_gb", "learning_rate": [0.05]}})


def test_the_search_reports_configuration_fold_and_elapsed_while_it_runs(splits):
    lines = []
    spec = {"sampler": ["class_weight", "none"]}
    [result] = modeling.search_all({"logreg": spec}, splits.train, splits.train[schema.TARGET], folds=2,
                                     progress=lines.append, every=0.0)
    lines = [line for line in lines if not line.startswith("  still ")]  # heartbeats: only if slow
    fits = [line for line in lines if line.startswith("  logreg: configuration ")]
    assert result.n_configs == 2 and len(fits) == 4  # one line per fit: 2 configurations x 2 folds
    assert {line.split(", fold")[0] for line in fits} == {"  logreg: configuration 1 of 2",
                                                          "  logreg: configuration 2 of 2"}
    assert all(" of 2 (AUPRC " in line and line.endswith(" s") for line in fits)
    assert "4 of 4 fits" in fits[-1]
    done = lines.index(fits[-1]) + 1  # the candidate's line, naming its refit, follows its last fit and ends them
    assert lines[done].startswith(f"candidate 1 of 1: logreg searched, CV AUPRC {result.cv_auprc_mean:.4f} ")
    assert lines[done].endswith(f"; refitting its best on all {len(splits.train):,} search rows")
    assert done == len(lines) - 1


@pytest.fixture(scope="module")
def saved(splits, selection, tmp_path_factory):
    """The train stage's outputs for the module's selection (processed splits on disk, model saved)."""
    root = tmp_path_factory.mktemp("saved")
    processed = root / "processed"
    preprocess.write_splits(splits, processed, partition_rows=10_000)
    preprocess.write_manifest(processed, preprocess.split_facts(splits), strategy="time")
    params = {"seed": SETTINGS["seed"], "sample_rows": None, "refit_on": "train_valid", "review_cost": 5.0}
    meta = training.save_model(selection, threshold_rule="max_f1", refit_on="train_valid",
                               manifest={"split": "time"}, params=params, model_dir=root / "models",
                               processed_dir=processed)
    training.write_threshold_plot(root / "reports", selection)
    return root, meta


def test_the_train_stage_saves_the_model_and_its_choices_without_the_test_split(splits, selection, saved):
    root, meta = saved
    loaded = artifacts.load_model(root / "models")
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, splits.test),
                                  modeling.fraud_probability(selection.model, splits.test))
    assert meta["candidate"] == selection.best.name
    assert meta["threshold"] == pytest.approx(selection.threshold)
    assert set(meta["training_data_sha256"]) == {"train", "valid"}  # the test split was not even opened
    assert list(meta["candidates"]) == [r.name for r in selection.results]
    assert meta["metrics"]["valid"]["auprc"] == pytest.approx(selection.best.valid_auprc, abs=1e-6)
    assert "test" not in meta["metrics"]
    threshold = pd.read_csv(root / "reports" / training.THRESHOLD_PLOT)
    assert list(threshold.columns) == ["threshold", "precision", "recall"]


def test_a_selection_without_comparison_models_is_not_saved(splits, tmp_path):
    choice_only = training.select_model(splits.train, splits.valid, **SETTINGS, compare=False)
    assert choice_only.compared is None
    with pytest.raises(ValueError, match=r"no comparison models \(select_model\(\.\.\., compare=False\)\)"):
        training.save_model(choice_only, threshold_rule="max_f1", refit_on="train_valid", manifest={},
                            params={}, model_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_the_evaluate_stage_writes_what_it_was_given(splits, saved):
    root, _ = saved
    loaded, warnings = assessment.load_model(root / "models")
    assert all("unsigned" in warning or "signed" in warning for warning in warnings)
    y = splits.test[schema.TARGET]
    scores = modeling.fraud_probability(loaded.model, splits.test)
    metrics_test = evaluation.evaluate(y, scores, loaded.threshold, amount=splits.test[schema.AMOUNT], bootstrap=20)
    compared = comparison.load(root / "models", loaded.metadata)
    metrics_seed = evaluation.evaluate(y, modeling.fraud_probability(compared.seed_method, splits.test), 0.5,
                                       bootstrap=0)
    metrics_reference = {**metrics_test, "auprc": 0.123, "roc_auc": 0.456, "precision": 0.5, "recall": 0.25,
                         "alerts": 7}
    margin = {"auprc_margin": 0.1, "auprc_margin_ci95": [-0.01, 0.2], "reference_at_least_as_good": 0.07,
              "verdict": "no difference"}
    metrics = assessment.write_metrics(loaded, metrics_test=metrics_test, metrics_seed=metrics_seed,
                                       metrics_reference=metrics_reference, reports_dir=root / "reports",
                                       margin=margin)
    assessment.write_plots(root / "reports", evaluation.curves(y, scores), y, scores, loaded.threshold)
    assert json.loads((root / "reports" / "metrics.json").read_text()) == metrics
    assert metrics["model"] == loaded.metadata["candidate"] and metrics["model_version"] == loaded.version
    assert metrics["threshold"] == pytest.approx(loaded.threshold, abs=1e-6)
    assert metrics["test"]["auprc"] == pytest.approx(metrics_test["auprc"], abs=1e-6)
    assert metrics["seed_baseline"]["auprc"] == pytest.approx(metrics_seed["auprc"], abs=1e-6)
    assert metrics["reference_untuned_hgb"] == {"auprc": 0.123, "roc_auc": 0.456, "precision": 0.5, "recall": 0.25,
                                                "alerts": 7, "auprc_margin": round(metrics_test["auprc"] - 0.123, 6),
                                                "auprc_margin_ci95": [-0.01, 0.2], "reference_at_least_as_good": 0.07,
                                                "verdict": "no difference"}
    assert not any("accuracy" in key for key in metrics["seed_baseline"])
    confusion = pd.read_csv(root / "reports" / "plots" / "confusion.csv")
    assert confusion["actual"].tolist() == y.tolist()
    assert confusion["predicted"].tolist() == (scores >= loaded.threshold).astype(int).tolist()


def test_the_comparison_models_are_fitted_on_the_models_own_rows_and_saved_with_it(splits, selection, saved,
                                                                                    tmp_path):
    """The yardstick is the reference configuration refitted on train + valid, as the model was; the seed recipe
    is fitted on the search's rows; the evaluate stage gets both back from the model directory as they were."""
    root, _ = saved
    loaded, _ = assessment.load_model(root / "models")
    compared = comparison.load(root / "models", loaded.metadata)
    # Here the search chose the yardstick itself: its row is the model's, nothing else was fitted.
    assert loaded.metadata["candidate"] == modeling.REFERENCE and compared.reference_is_model
    scored = training.score_models(comparison.scorers(loaded.model, compared), splits.test)
    assert list(scored.columns) == [schema.TARGET, schema.AMOUNT, modeling.SCORE, comparison.SEED_SCORE]
    np.testing.assert_array_equal(comparison.reference_scores(scored), scored[modeling.SCORE])
    # Had another candidate won, the yardstick is the reference configuration refitted on the model's rows.
    with ThreadPoolExecutor(max_workers=2) as beside:
        fitted = comparison.start(beside, selection.fit_sample.frame, selection.refit_sample.frame,
                                  model_legit_fraction=1.0, seed=SETTINGS["seed"]).result(chosen="logreg")
    payload, record = comparison.dump(fitted)
    (tmp_path / comparison.FILE).write_bytes(payload)
    other = comparison.load(tmp_path, {comparison.METADATA_KEY: record})
    assert record["versions"]["reference"] == artifacts.behaviour_fingerprint(other.reference)[:12]
    both = pd.concat([splits.train, splits.valid], ignore_index=True)
    expected = modeling.make_pipeline("hist_gb", seed=SETTINGS["seed"]).fit(both, both[schema.TARGET])
    # The chosen yardstick's model is that same fit (made for the comparison, not repeated).
    np.testing.assert_array_equal(modeling.fraud_probability(loaded.model, splits.test),
                                  modeling.fraud_probability(expected, splits.test))
    np.testing.assert_array_equal(modeling.fraud_probability(other.reference, splits.test),
                                  modeling.fraud_probability(expected, splits.test))
    np.testing.assert_array_equal(comparison.reference_scores(training.score_models(
        comparison.scorers(loaded.model, other), splits.test)), modeling.fraud_probability(expected, splits.test))
    seed_method = baseline.fit_seed_baseline(splits.train, SETTINGS["seed"])
    np.testing.assert_array_equal(modeling.fraud_probability(compared.seed_method, splits.test),
                                  modeling.fraud_probability(seed_method.model, splits.test))
    assert compared.seed_accuracy_claim == round(seed_method.balanced_accuracy_claim, 6)


def test_a_comparison_file_that_is_not_the_models_is_refused(saved, tmp_path):
    root, meta = saved
    copy = tmp_path / "models"
    shutil.copytree(root / "models", copy)
    path = copy / comparison.FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped inside the archive
    path.write_bytes(bytes(data))
    with pytest.raises(comparison.ComparisonError, match=rf"{comparison.FILE}: checksum mismatch"):
        comparison.load(copy, meta)
    path.unlink()
    with pytest.raises(comparison.ComparisonError, match=rf"{comparison.FILE} not found"):
        comparison.load(copy, meta)
    with pytest.raises(comparison.ComparisonError, match="records no comparison models"):
        comparison.load(copy, {key: value for key, value in meta.items() if key != comparison.METADATA_KEY})


def test_the_report_says_plainly_when_the_yardstick_wins():
    assert "still wins" in assessment.margin_summary("random_forest", 0.70, 0.72)
    assert "-0.0200" in assessment.margin_summary("random_forest", 0.70, 0.72)
    assert "beats the untuned yardstick" in assessment.margin_summary("random_forest", 0.75, 0.72)
    assert "chose the untuned yardstick itself" in assessment.margin_summary(modeling.REFERENCE, 0.72, 0.72)


def interval_of(margin: float, low: float, high: float, share: float) -> dict:
    """A :func:`ccfraud.evaluation.paired_margin` result with these figures and the verdict their interval allows."""
    return {"auprc_margin": margin, "auprc_margin_ci95": [low, high], "reference_at_least_as_good": share,
            "verdict": evaluation.margin_verdict(low, high)}


@pytest.mark.parametrize(("low", "high", "verdict"), [(0.002, 0.01, "win"), (-0.01, -0.001, "loss"),
                                                       (-0.001, 0.01, "no difference"), (0.0, 0.0, "no difference"),
                                                       (0.0, 0.01, "no difference"), (-0.01, 0.0, "no difference")])
def test_a_margin_is_a_win_or_a_loss_only_when_its_interval_excludes_zero(low, high, verdict):
    assert evaluation.margin_verdict(low, high) == verdict


@pytest.mark.parametrize(("low", "verdict"), [(0.002, "beats the untuned yardstick"), (-0.001, "cannot be told apart"),
                                              (0.0, "cannot be told apart")])
def test_a_positive_margin_is_a_win_only_when_its_paired_interval_excludes_no_difference(low, verdict):
    margin = interval_of(0.0045, low, 0.014, share=0.12)
    summary = assessment.margin_summary("hist_gb", 0.7662, 0.7617, margin)
    assert verdict in summary
    assert f"95% paired bootstrap interval {low:+.4f} to +0.0140" in summary
    assert ("12% of the bootstrap resamples" in summary) is (verdict == "cannot be told apart")
    losing = assessment.margin_summary("hist_gb", 0.70, 0.72, interval_of(-0.02, -0.05, -0.01, share=0.99))
    assert "still wins" in losing and "-0.0500 to -0.0100" in losing


@pytest.mark.parametrize(("test_auprc", "interval", "verdict"), [
    (0.7616, [-0.02, 0.02], "cannot be told apart"),  # a negative margin inside the noise is no loss either
    (0.7617, [-0.02, 0.02], "cannot be told apart"),  # a tie
    (0.7618, [-0.02, -0.001], "still wins"),  # the interval, not the point margin's sign, decides
])
def test_the_verdict_comes_from_the_interval_on_either_side_of_zero(test_auprc, interval, verdict):
    margin = interval_of(test_auprc - 0.7617, *interval, share=0.5)
    assert verdict in assessment.margin_summary("hist_gb", test_auprc, 0.7617, margin)


def test_the_paired_margin_is_the_margin_with_an_interval_around_it():
    rng = np.random.default_rng(3)
    y = (rng.random(20_000) < 0.01).astype(int)
    strong = y * 0.6 + rng.random(len(y)) * 0.5
    weak = y * 0.2 + rng.random(len(y)) * 0.5
    margin = evaluation.paired_margin(y, strong, weak, n=100, seed=1)
    assert margin["auprc_margin"] == pytest.approx(evaluation.auprc(y, strong) - evaluation.auprc(y, weak), abs=1e-6)
    low, high = margin["auprc_margin_ci95"]
    assert 0 < low < margin["auprc_margin"] < high
    assert margin["reference_at_least_as_good"] == 0
    swapped = evaluation.paired_margin(y, weak, strong, n=100, seed=1)
    assert swapped["auprc_margin"] == -margin["auprc_margin"]
    assert swapped["auprc_margin_ci95"][0] < swapped["auprc_margin"] < swapped["auprc_margin_ci95"][1] < 0
    assert swapped["reference_at_least_as_good"] == 1
    same = evaluation.paired_margin(y, strong, strong, n=20, seed=1)
    assert same["auprc_margin_ci95"] == [0.0, 0.0] and same["reference_at_least_as_good"] == 1
    assert (margin["verdict"], swapped["verdict"], same["verdict"]) == ("win", "loss", "no difference")


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
    settings = {**SETTINGS, "sample_rows": 4000, "compare": False}
    in_memory, manifest = training.load_processed(processed, "pandas")
    on_dask, _ = training.load_processed(processed, "dask")
    assert manifest["split"] == "time" and on_dask.train.npartitions > 1
    a = training.select_model(in_memory.train, in_memory.valid, **settings)
    b = training.select_model(on_dask.train, on_dask.valid, **settings)
    assert a.fit_sample.legit_fraction < 1.0 and a.samples() == b.samples()
    assert a.threshold == b.threshold
    np.testing.assert_array_equal(a.valid_scores, b.valid_scores)
    pd.testing.assert_frame_equal(training.score_models({modeling.SCORE: b.model}, on_dask.test),
                                  training.score_models({modeling.SCORE: a.model}, in_memory.test))


def test_scoring_on_the_cluster_keeps_rows_in_order(processed, dask_client):
    in_memory, _ = training.load_processed(processed, "pandas")
    on_dask, _ = training.load_processed(processed, "dask")
    model = modeling.make_pipeline("logreg", seed=0).fit(in_memory.train, in_memory.train[schema.TARGET])
    scored = training.score_models({modeling.SCORE: model}, on_dask.test)
    assert list(scored.columns) == list(modeling.SCORED_COLUMNS)
    np.testing.assert_array_equal(scored[modeling.SCORE], modeling.fraud_probability(model, in_memory.test))
    # Several models in one pass over the split: each column is that model's scores, on either engine.
    other = modeling.make_pipeline("hist_gb", seed=0).fit(in_memory.train, in_memory.train[schema.TARGET])
    both = training.score_models({"a": model, "b": other}, on_dask.test)
    pd.testing.assert_frame_equal(both, training.score_models({"a": model, "b": other}, in_memory.test))
    np.testing.assert_array_equal(both["a"], scored[modeling.SCORE])
    np.testing.assert_array_equal(both["b"], modeling.fraud_probability(other, in_memory.test))
    with pytest.raises(ValueError, match=r"cannot be named \['Class'\]"):
        training.score_models({schema.TARGET: model}, in_memory.test)
    np.testing.assert_array_equal(scored[schema.TARGET], in_memory.test[schema.TARGET])


def test_a_sample_too_small_for_a_sampling_ratio_is_refused_before_the_search(splits):
    """The final model's rows hold more frauds than the search's (train + valid): a ratio only they exceed
    would fail at the refit, after the whole search; it is refused before the search starts."""
    refit_frauds = int(splits.train[schema.TARGET].sum() + splits.valid[schema.TARGET].sum())
    forest = {"random_forest": {"sampler": ["undersample"], "sampling_ratio": [0.1], "n_estimators": [5]}}
    lines = []
    settings = {**SETTINGS, "candidates": forest, "sample_rows": 9 * refit_frauds, "say": lines.append}
    with pytest.raises(ValueError, match=r"candidate random_forest: sampling_ratio 0\.1 .* the final model's rows "
                       r"\(train_valid\) already have .* raise train\.sample_rows to at least about"):
        training.select_model(splits.train, splits.valid, **settings)
    assert not any("configuration" in line for line in lines)
