"""The exploratory analysis helpers behind the eda_preprocess report."""

import pytest

from ccfraud import eda, schema, synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(rows=4000, frauds=80, seed=9)


def test_class_balance_counts_and_shares(data):
    balance = eda.class_balance(data)
    assert balance["rows"].tolist() == [3920, 80]
    assert balance["share"].sum() == pytest.approx(1.0)


def test_samples_keep_every_fraud(data):
    sample = eda.plot_sample(data, 500, seed=1)
    assert int(sample[schema.TARGET].sum()) == 80 and len(sample) == 580
    balanced = eda.balanced_subsample(data, 50, seed=1)
    assert balanced[schema.TARGET].value_counts().to_dict() == {0: 50, 1: 50}


def test_class_correlations_are_sorted_by_strength(data):
    corr = eda.class_correlations(eda.balanced_subsample(data, 80))
    assert list(corr.abs()) == sorted(corr.abs(), reverse=True)
    assert set(corr.index) == set(schema.FEATURES)


def test_iqr_outliers_counts_frauds_outside_the_fences(data):
    table = eda.iqr_outliers(data, ["V14"]).iloc[0]
    frauds = data.loc[data[schema.TARGET] == 1, "V14"]
    outside = ((frauds < table["lower_fence"]) | (frauds > table["upper_fence"])).sum()
    assert table["fraud_outliers"] == outside and table["frauds"] == 80


def test_projections_are_two_dimensional(data):
    subsample = eda.balanced_subsample(data, 40)
    for name, points in eda.projections(subsample).items():
        assert points.shape == (80, 2), name
