"""The exploratory analysis helpers behind the eda_preprocess report."""

import pandas as pd
import pytest

from ccfraud import eda, schema, summaries, synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(rows=4000, frauds=80, seed=9)


def test_class_balance_counts_and_shares(data):
    balance = eda.class_balance(summaries.ClassMoments.of(data))
    assert balance["rows"].tolist() == [3920, 80]
    assert balance["share"].sum() == pytest.approx(1.0)


def test_balanced_subsample_has_as_many_rows_of_each_class(data):
    balanced = eda.balanced_subsample(data, 50, seed=1)
    assert balanced[schema.TARGET].value_counts().to_dict() == {0: 50, 1: 50}


def test_class_correlations_are_the_correlations_with_class_sorted_by_strength(data):
    balanced = eda.balanced_subsample(data, 80)
    corr = eda.class_correlations(summaries.ClassMoments.of(balanced).overall().correlation())
    assert list(corr.abs()) == sorted(corr.abs(), reverse=True)
    expected = balanced[schema.FEATURES].corrwith(balanced[schema.TARGET])
    pd.testing.assert_series_equal(corr.sort_index(), expected.sort_index(), check_names=False, atol=1e-12)


def test_fraud_outliers_are_the_same_on_a_sample_that_keeps_every_fraud(data):
    sample = summaries.class_sample(data, 0.1, 1.0, seed=2)
    pd.testing.assert_frame_equal(eda.iqr_outliers(sample, ["V14", "V12"]), eda.iqr_outliers(data, ["V14", "V12"]))


def test_iqr_outliers_counts_frauds_outside_the_fences(data):
    table = eda.iqr_outliers(data, ["V14"]).iloc[0]
    frauds = data.loc[data[schema.TARGET] == 1, "V14"]
    outside = ((frauds < table["lower_fence"]) | (frauds > table["upper_fence"])).sum()
    assert table["fraud_outliers"] == outside and table["frauds"] == 80


def test_projections_are_two_dimensional(data):
    subsample = eda.balanced_subsample(data, 40)
    for name, points in eda.projections(subsample).items():
        assert points.shape == (80, 2), name
