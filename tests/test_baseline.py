"""The seed method is reproduced and scored, not hard-coded."""

import numpy as np
import pytest

from ccfraud import baseline, eda, preprocess, schema, synthetic


@pytest.fixture(scope="module")
def train():
    return preprocess.split(synthetic.generate(rows=20000, frauds=300, seed=2), "time").train


def test_balanced_undersample_is_fifty_fifty_and_keeps_every_fraud(train):
    balanced = baseline.balanced_undersample(train, seed=0)
    frauds = int(train[schema.TARGET].sum())
    assert int(balanced[schema.TARGET].sum()) == frauds
    assert len(balanced) == 2 * frauds


def test_outlier_removal_only_drops_frauds_outside_the_fences(train):
    balanced = baseline.balanced_undersample(train, seed=0)
    cleaned = baseline.remove_fraud_outliers(balanced)
    assert int((cleaned[schema.TARGET] == 0).sum()) == int((balanced[schema.TARGET] == 0).sum())
    assert len(cleaned) < len(balanced)
    frauds = balanced[balanced[schema.TARGET] == 1]
    for feature in eda.OUTLIER_FEATURES:
        q1, q3 = frauds[feature].quantile([0.25, 0.75])
        kept = cleaned.loc[cleaned[schema.TARGET] == 1, feature]
        assert kept.min() >= q1 - 1.5 * (q3 - q1) - 1e-9


def test_seed_baseline_is_computed_from_the_data(train):
    fitted = baseline.fit_seed_baseline(train, seed=0)
    other = baseline.fit_seed_baseline(train.assign(V14=train["V14"] * 0), seed=0)
    assert 0.5 < fitted.balanced_accuracy_claim <= 1.0
    assert fitted.balanced_accuracy_claim != other.balanced_accuracy_claim
    p = fitted.model.predict_proba(train[schema.FEATURES])[:, 1]
    # Trained on 50/50 data, it flags far more rows than there are frauds.
    assert (p >= 0.5).mean() > 3 * train[schema.TARGET].mean()
    assert np.all((p >= 0) & (p <= 1))


def test_seed_baseline_is_reproducible(train):
    first = baseline.fit_seed_baseline(train, seed=3)
    second = baseline.fit_seed_baseline(train, seed=3)
    X = train[schema.FEATURES]
    np.testing.assert_array_equal(first.model.predict_proba(X), second.model.predict_proba(X))
