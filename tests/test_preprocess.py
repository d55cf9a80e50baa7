"""Pre-train checks: duplicates, splits without leakage, a scaler fitted on train only."""

import numpy as np
import pandas as pd
import pytest

from ccfraud import preprocess, schema, synthetic


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return synthetic.generate(rows=6000, frauds=120, seed=5)


def test_drop_duplicates_counts_exact_copies(data):
    doubled = pd.concat([data, data.iloc[:7]], ignore_index=True)
    deduplicated, removed = preprocess.drop_duplicates(doubled)
    assert removed == 7
    assert len(deduplicated) == len(data)
    assert not deduplicated.duplicated().any()


@pytest.mark.parametrize("strategy", ["time", "stratified"])
def test_splits_partition_the_rows_without_overlap(data, strategy):
    splits = preprocess.split(data, strategy, valid_size=0.2, test_size=0.25, seed=1)
    sizes = [len(part) for _, part in splits.items()]
    assert sum(sizes) == len(data)
    assert sizes[2] == pytest.approx(0.25 * len(data), abs=2)
    keys = [set(map(tuple, part[schema.FEATURES].to_numpy())) for _, part in splits.items()]
    assert not (keys[0] & keys[2]) and not (keys[1] & keys[2]) and not (keys[0] & keys[1])


def test_time_split_tests_on_the_latest_transactions(data):
    splits = preprocess.split(data, "time")
    assert splits.train[schema.TIME].max() <= splits.valid[schema.TIME].min()
    assert splits.valid[schema.TIME].max() <= splits.test[schema.TIME].min()


def test_stratified_split_keeps_the_fraud_rate(data):
    splits = preprocess.split(data, "stratified", seed=3)
    rate = data[schema.TARGET].mean()
    for _, part in splits.items():
        assert part[schema.TARGET].mean() == pytest.approx(rate, rel=0.1)


def test_test_split_keeps_the_raw_class_balance(data):
    """Nothing is resampled before or at the split: the test part is the data as it came."""
    splits = preprocess.split(data, "time")
    cut = splits.test[schema.TIME].min()
    later = data[data[schema.TIME] > cut]
    # Every raw row after the first test timestamp is in the test split, none added or dropped.
    merged = later.merge(splits.test, how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert not splits.test.duplicated().any()
    assert int(splits.test[schema.TARGET].sum()) >= int(later[schema.TARGET].sum())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "random"}, "split strategy must be one of"),
        ({"valid_size": 0.0}, "valid_size must be between 0 and 1"),
        ({"valid_size": 0.5, "test_size": 0.5}, "must leave rows for training"),
    ],
)
def test_bad_split_parameters(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        preprocess.split(data, **kwargs)


def test_split_refuses_a_part_without_frauds():
    data = synthetic.generate(rows=400, frauds=2, seed=0)
    with pytest.raises(ValueError, match="needs both classes"):
        preprocess.split(data, "time")


def test_scaler_is_fitted_on_train_only(data):
    splits = preprocess.split(data, "time")
    fitted = preprocess.fit_preprocessor(splits.train)
    scaler = fitted.named_transformers_["robust"]
    expected = splits.train[schema.SCALED_FEATURES].median().to_numpy()
    assert np.allclose(scaler.center_, expected)
    everything = data[schema.SCALED_FEATURES].median().to_numpy()
    assert not np.allclose(scaler.center_, everything)
    out = fitted.transform(splits.train[schema.FEATURES])
    assert set(out.columns) == set(schema.FEATURES)
    assert np.allclose(out["V5"], splits.train["V5"])


def test_write_and_read_splits_roundtrip(data, tmp_path):
    splits = preprocess.split(data, "time")
    paths = preprocess.write_splits(splits, tmp_path / "processed")
    assert sorted(p.name for p in paths.values()) == ["test.parquet", "train.parquet", "valid.parquet"]
    again = preprocess.read_splits(tmp_path / "processed")
    pd.testing.assert_frame_equal(again.test, splits.test)
    assert not list((tmp_path / "processed").glob(".*tmp"))


def test_read_splits_says_which_file_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.parquet not found"):
        preprocess.read_splits(tmp_path)
