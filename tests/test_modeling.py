"""Post-train checks: leakage-free pipelines, corrected probabilities, beating a dummy."""

import numpy as np
import pandas as pd
import pytest
from imblearn.under_sampling import RandomUnderSampler
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.metrics import average_precision_score

from ccfraud import modeling, preprocess, schema, synthetic


@pytest.fixture(scope="module")
def splits() -> preprocess.Splits:
    return preprocess.split(synthetic.generate(rows=12000, frauds=200, seed=11), "time")


def test_resampling_lives_inside_the_pipeline_only(splits):
    model = modeling.make_pipeline("logreg", "undersample", sampling_ratio=0.5, seed=0)
    before = splits.train.copy()
    model.fit(splits.train, splits.train[schema.TARGET])
    pd.testing.assert_frame_equal(splits.train, before)
    sampler = model.estimator_.named_steps["sample"]
    assert isinstance(sampler, RandomUnderSampler)
    # Scoring does not resample: one probability per input row, in order.
    assert len(modeling.fraud_probability(model, splits.test)) == len(splits.test)


@pytest.mark.parametrize("sampler", ["none", "class_weight", "undersample", "smote", "nearmiss"])
def test_probabilities_are_valid_for_every_sampler(splits, sampler):
    model = modeling.make_pipeline("logreg", sampler, sampling_ratio=0.2, seed=0)
    model.fit(splits.train, splits.train[schema.TARGET])
    p = modeling.fraud_probability(model, splits.valid)
    assert np.all((p >= 0) & (p <= 1))
    assert model.beta_ == pytest.approx(1.0) if sampler == "none" else model.beta_ < 1.0


def test_prior_correction_brings_probabilities_back_to_the_fraud_rate(splits):
    train, y = splits.train, splits.train[schema.TARGET]
    corrected = modeling.make_pipeline("logreg", "undersample", sampling_ratio=1.0, seed=0).fit(train, y)
    raw = corrected.estimator_.predict_proba(splits.valid[schema.FEATURES])[:, 1]
    fixed = modeling.fraud_probability(corrected, splits.valid)
    rate = splits.valid[schema.TARGET].mean()
    # Trained on 50/50 data the raw mean probability is far above the real fraud rate.
    assert raw.mean() > 10 * rate
    assert abs(fixed.mean() - rate) < abs(raw.mean() - rate) / 5
    # Correction is monotone, so the ranking (AUPRC) is unchanged.
    assert average_precision_score(splits.valid[schema.TARGET], fixed) == pytest.approx(
        average_precision_score(splits.valid[schema.TARGET], raw))


def test_beta_matches_dal_pozzolo_for_random_undersampling(splits):
    y = splits.train[schema.TARGET]
    model = modeling.make_pipeline("logreg", "undersample", sampling_ratio=0.25, seed=0).fit(splits.train, y)
    n_fraud = int(y.sum())
    kept_legit = n_fraud / 0.25
    assert model.beta_ == pytest.approx(kept_legit / (len(y) - n_fraud))
    assert modeling.correct_probability(np.array([0.5]), 0.1)[0] == pytest.approx(0.05 / 0.55)


def test_a_forest_refitted_on_all_cores_is_the_forest_a_one_thread_fit_gives(splits):
    """The final refit builds a forest's trees on every core; the model (and what is saved of it) must not
    depend on that."""
    chosen = modeling.make_pipeline("random_forest", "undersample", sampling_ratio=0.2, seed=3, n_estimators=30)
    one = modeling.refit(chosen, splits.train, forest_jobs=1)
    every = modeling.refit(chosen, splits.train, forest_jobs=None)
    np.testing.assert_array_equal(modeling.fraud_probability(every, splits.test),
                                  modeling.fraud_probability(one, splits.test))
    assert every.beta_ == one.beta_
    # n_jobs is put back: the saved model is the one-thread fit's, parameters included.
    assert every.estimator_.named_steps["model"].get_params() == one.estimator_.named_steps["model"].get_params()


def test_a_model_beats_a_stratified_dummy_by_a_wide_margin(splits):
    y = splits.train[schema.TARGET]
    model = modeling.make_pipeline("hist_gb", "none", seed=0).fit(splits.train, y)
    dummy = DummyClassifier(strategy="stratified", random_state=0).fit(splits.train[schema.FEATURES], y)
    y_test = splits.test[schema.TARGET]
    ap_model = average_precision_score(y_test, modeling.fraud_probability(model, splits.test))
    ap_dummy = average_precision_score(y_test, dummy.predict_proba(splits.test[schema.FEATURES])[:, 1])
    assert ap_model > ap_dummy + 0.3


def test_search_scores_candidates_by_cv_auprc_and_sorts_them(splits):
    candidates = {
        "logreg": {"sampler": ["class_weight", "none"], "C": [0.1, 1.0]},
        "tiny_forest": {"model": "random_forest", "sampler": "undersample", "sampling_ratio": 0.2,
                        "n_estimators": 20},
    }
    results = modeling.search_all(candidates, splits.train, splits.train[schema.TARGET], folds=2, seed=0)
    assert [r.cv_auprc_mean for r in results] == sorted((r.cv_auprc_mean for r in results), reverse=True)
    by_name = {r.name: r for r in results}
    assert by_name["logreg"].n_configs == 4
    assert 0.0 < by_name["logreg"].cv_auprc_mean <= 1.0
    assert "RandomUnderSampler" in str(by_name["tiny_forest"].describe_params()["sample"])
    table = modeling.candidates_table(results)
    assert list(table["candidate"]) == [r.name for r in results]


def test_the_search_finds_the_same_models_on_one_thread_or_several(splits):
    """Fits and refits interleave differently with more threads; the scores and models are the same, and right."""
    candidates = {
        "logreg": {"sampler": ["class_weight", "none"]},
        "tiny_forest": {"model": "random_forest", "sampler": "undersample", "sampling_ratio": 0.2, "n_estimators": 10},
        "tiny_gb": {"model": "hist_gb", "max_iter": [20], "max_leaf_nodes": [7, 15]},
    }
    X, y = splits.train, splits.train[schema.TARGET].to_numpy()
    runs = [modeling.search_all(candidates, X, y, folds=3, seed=0, n_jobs=jobs) for jobs in (1, 3)]
    folds = list(modeling.cv_splitter("time", 3).split(X, y))
    for one, several in zip(*runs, strict=True):
        assert (one.name, one.describe_params()) == (several.name, several.describe_params())
        pd.testing.assert_frame_equal(one.table.drop(columns="fit_seconds"), several.table.drop(columns="fit_seconds"))
        np.testing.assert_array_equal(modeling.fraud_probability(one.best_estimator, splits.valid),
                                      modeling.fraud_probability(several.best_estimator, splits.valid))
        # The best configuration's CV AUPRC is its own, fold by fold, not another fit's.
        best = modeling.make_pipeline(one.model, seed=0).set_params(**one.best_params)
        own = [average_precision_score(y[test], modeling.fraud_probability(clone(best).fit(X.iloc[train], y[train]),
                                                                           X.iloc[test]))
               for train, test in folds]
        assert one.cv_auprc_mean == pytest.approx(np.mean(own), abs=1e-12)


def test_time_split_uses_forward_chaining_folds():
    folds = list(modeling.cv_splitter("time", 3).split(np.zeros((40, 1))))
    assert all(train.max() < test.min() for train, test in folds)
    with pytest.raises(ValueError, match="at least 2"):
        modeling.cv_splitter("time", 1)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: modeling.make_classifier("svm"), "unknown model 'svm'"),
        (lambda: modeling.make_pipeline("logreg", "oversample"), "unknown sampler 'oversample'"),
        (lambda: modeling.make_sampler("undersample", 0.0), r"sampling_ratio must be in \(0, 1\]"),
        (lambda: modeling.search_all({}, None, None), "train.candidates is empty"),
    ],
)
def test_bad_configuration_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_corrected_probabilities_stay_within_zero_and_one():
    p = np.array([0.0, 1e-12, 0.5, 1.0 - 1e-16, 1.0])
    for beta in (0.001, 0.0173, 0.5, 1.0):
        out = modeling.correct_probability(p, beta)
        assert np.all((out >= 0.0) & (out <= 1.0))
        assert np.all(np.diff(out) >= 0)


def test_a_sampled_training_set_multiplies_the_prior_correction(splits):
    """Drawing half the legitimate rows before a 1:4 undersampler shifts the odds by both factors."""
    train, y = splits.train, splits.train[schema.TARGET]
    plain = modeling.make_pipeline("logreg", "undersample", sampling_ratio=0.25, seed=0).fit(train, y)
    drawn = modeling.make_pipeline("logreg", "undersample", sampling_ratio=0.25, seed=0,
                                   legit_fraction=0.5).fit(train, y)
    assert drawn.beta_ == pytest.approx(plain.beta_ * 0.5)
    raw = drawn.estimator_.predict_proba(splits.valid[schema.FEATURES])[:, 1]
    corrected = modeling.fraud_probability(drawn, splits.valid)
    np.testing.assert_allclose(corrected / (1 - corrected), drawn.beta_ * raw / (1 - raw), rtol=1e-9)
    with pytest.raises(ValueError, match=r"legit_fraction must be in \(0, 1\]"):
        modeling.make_pipeline("logreg", legit_fraction=0.0).fit(train, y)


def test_a_sampling_ratio_the_rows_already_exceed_is_refused_before_any_fit(splits):
    """Every fraud and few legitimate rows (a small training sample at 100x the data): undersampling to 1:10
    cannot happen, and the search says so up front, naming the candidate, the ratio and the knobs."""
    train = splits.train
    frauds = train[train[schema.TARGET] == 1]
    sample = pd.concat([frauds, train[train[schema.TARGET] == 0].iloc[: 5 * len(frauds)]]).sort_values(schema.TIME)
    forest = {"random_forest": {"sampler": ["undersample"], "sampling_ratio": [0.5, 0.1], "n_estimators": [5]}}
    lines = []
    with pytest.raises(ValueError, match=r"candidate random_forest: sampling_ratio 0\.1 \(frauds per legitimate row "
                       r"after RandomUnderSampler\) is below the 0\.2 that the search's rows already have .*"
                       r"raise train\.sample_rows to at least about"):
        modeling.search_all(forest, sample, sample[schema.TARGET], folds=2, legit_fraction=0.05,
                            progress=lines.append)
    assert lines == []  # refused before the first fit
    with pytest.raises(ValueError, match=r"give it more legitimate rows$"):  # the whole split: no sample to enlarge
        modeling.search_all(forest, sample, sample[schema.TARGET], folds=2)
    ok = modeling.search_all({"random_forest": {**forest["random_forest"], "sampling_ratio": [0.5]}}, sample,
                             sample[schema.TARGET], folds=2)
    assert ok[0].n_configs == 1


def test_the_search_heartbeat_counts_fits_and_refits_alike():
    """Refits overlap the fits (a finished grid's refit runs before the next fold): the line names both counts."""
    line = modeling._search_status(3, 21, 1, 4, 12.4)
    assert "3 of 21 fits" in line and "1 of 4 refits" in line and line.endswith(", 12 s")
