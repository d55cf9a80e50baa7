"""The exploratory analysis helpers behind the eda_preprocess report."""

import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

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


def test_iqr_fences_come_from_the_fraud_rows_quartiles_only():
    # Frauds 1..8 and 100: Q1 = 3, Q3 = 7, fences 3 - 6 = -3 and 7 + 6 = 13; only 100 is outside.
    # The legitimate rows are far outside those fences and must change nothing.
    frame = pd.DataFrame({"V14": [*range(1, 9), 100, -1000, 1000, 5], schema.TARGET: [1] * 9 + [0] * 3})
    table = eda.iqr_outliers(frame, ["V14"]).iloc[0]
    assert (table["q1"], table["q3"]) == (3.0, 7.0)
    assert (table["lower_fence"], table["upper_fence"]) == (-3.0, 13.0)
    assert (table["fraud_outliers"], table["frauds"]) == (1, 9)
    wider = eda.iqr_outliers(frame, ["V14"], k=30.0).iloc[0]
    assert wider["fraud_outliers"] == 0


def test_projections_embed_every_row_and_keep_the_classes_apart(data):
    """Each 2-D map keeps the structure the plots are for: a row's neighbours on it are mostly of its class."""
    subsample = eda.balanced_subsample(data, 40)
    labels = subsample[schema.TARGET].to_numpy()
    maps = eda.projections(subsample)
    assert sorted(maps) == ["PCA", "TruncatedSVD", "t-SNE"]
    for name, points in maps.items():
        assert points.shape == (80, 2) and np.isfinite(points).all(), name
        accuracy = cross_val_score(KNeighborsClassifier(5), points, labels, cv=5).mean()
        assert accuracy > 0.65, f"{name}: nearest neighbours on the map agree with the class {accuracy:.0%} of the time"


def test_projections_beside_are_the_projections_computed_off_the_calling_thread(data, monkeypatch):
    subsample = eda.balanced_subsample(data, 40)
    expected = eda.projections(subsample, seed=3)
    threads = []
    real = eda.projections

    def recording(frame, seed):
        threads.append(threading.current_thread())
        return real(frame, seed)

    monkeypatch.setattr(eda, "projections", recording)
    maps = eda.projections_beside(subsample, seed=3).result()
    assert threads and threads[0] is not threading.current_thread()
    assert sorted(maps) == sorted(expected)
    for name, points in maps.items():
        np.testing.assert_array_equal(points, expected[name])
