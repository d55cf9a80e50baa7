"""Pre-train checks: duplicates, splits without leakage, a scaler fitted on train only."""

import numpy as np
import pandas as pd
import pytest

from ccfraud import lake, preprocess, schema, synthetic


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


def test_time_split_tests_on_the_latest_transactions_and_no_second_is_in_two_parts(data):
    splits = preprocess.split(data, "time")
    assert splits.train[schema.TIME].max() < splits.valid[schema.TIME].min()
    assert splits.valid[schema.TIME].max() < splits.test[schema.TIME].min()


def test_a_time_split_cut_inside_one_second_moves_back_to_that_seconds_first_row():
    """Ten rows: the train/valid cut falls inside second 4 and the valid/test cut inside second 5; each second goes
    whole to the later part."""
    frame = synthetic.generate(rows=10, frauds=4, seed=2).assign(**{schema.TIME: [0, 1, 2, 3, 4, 4, 5, 5, 5, 6]})
    frame[schema.TARGET] = [0, 1, 0, 1, 0, 1, 0, 0, 1, 0]
    splits = preprocess.split(frame, "time", valid_size=0.3, test_size=0.2)
    assert [part[schema.TIME].tolist() for _, part in splits.items()] == [[0, 1, 2, 3], [4, 4], [5, 5, 5, 6]]
    assert preprocess.first_of_its_time(np.array([1, 1, 2, 2, 2]), 3) == 2
    assert [preprocess.first_of_its_time(np.array([1, 1, 2]), cut) for cut in (0, 1, 2, 3)] == [0, 0, 2, 3]


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
    paths = preprocess.write_splits(splits, tmp_path / "processed", partition_rows=1000)
    assert sorted(p.name for p in paths.values()) == ["test", "train", "valid"]
    # 3600 train rows in parts of at most 1000 rows: a lake dataset of four parts, committed by its manifest.
    assert [part["rows"] for part in lake.read_manifest(str(paths["train"]))["parts"]] == [1000, 1000, 1000, 600]
    again = preprocess.read_splits(tmp_path / "processed")
    for name, part in splits.items():
        pd.testing.assert_frame_equal(getattr(again, name), part)
    digests = preprocess.split_digests(tmp_path / "processed")
    preprocess.write_splits(splits, tmp_path / "processed", partition_rows=1000)
    assert preprocess.split_digests(tmp_path / "processed") == digests


def test_read_splits_says_which_split_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no committed 'train' split; run the eda_preprocess stage"):
        preprocess.read_splits(tmp_path)


def test_prepare_in_memory_is_drop_duplicates_then_split(data):
    doubled = pd.concat([data, data.iloc[[3, 4000]]], ignore_index=True)
    prepared = preprocess.prepare(doubled, "time", seed=1)
    expected = preprocess.split(preprocess.drop_duplicates(doubled)[0], "time", seed=1)
    for name, part in expected.items():
        pd.testing.assert_frame_equal(getattr(prepared.splits, name), part)
    assert (prepared.rows_in, prepared.duplicates) == (len(doubled), 2)
    facts = prepared.facts["test"]
    assert facts["rows"] == len(expected.test) and facts["frauds"] == int(expected.test[schema.TARGET].sum())
    assert facts["first_time"] == expected.test[schema.TIME].iloc[0] == expected.test[schema.TIME].min()


@pytest.fixture(scope="module")
def shuffled_with_duplicates(data) -> pd.DataFrame:
    """Rows out of Time order, exact duplicates far apart and many tied Times (Time is in whole seconds)."""
    doubled = pd.concat([data, data.iloc[[5, 100, 3000, 5999]]], ignore_index=True)
    return doubled.sample(frac=1.0, random_state=0).reset_index(drop=True)


def dask_frame(frame: pd.DataFrame, tmp_path, rows: int = 700):
    """``frame`` as a lake dataset of ``rows``-row parts, read back as a dask frame (as the stage reads raw data)."""
    target = str(tmp_path / "raw")
    lake.write_frames((frame.iloc[i:i + rows] for i in range(0, len(frame), rows)), target)
    return lake.read_dask(target)


def test_dask_time_split_equals_the_pandas_split(shuffled_with_duplicates, tmp_path, dask_client):
    frame = shuffled_with_duplicates
    assert frame[schema.TIME].duplicated().sum() > 100  # ties exist, and straddle partition edges
    on_dask = preprocess.prepare(dask_frame(frame, tmp_path), "time", valid_size=0.2, test_size=0.25, seed=1)
    in_memory = preprocess.prepare(frame, "time", valid_size=0.2, test_size=0.25, seed=1)
    assert (on_dask.rows_in, on_dask.duplicates) == (in_memory.rows_in, in_memory.duplicates) == (len(frame), 4)
    assert on_dask.facts == in_memory.facts
    for name, part in in_memory.splits.items():
        pd.testing.assert_frame_equal(getattr(on_dask.splits, name).compute().reset_index(drop=True), part)
    # The cluster writes the same data the pandas engine writes.
    preprocess.write_splits(on_dask.splits, tmp_path / "dask", partition_rows=1000, client=dask_client)
    preprocess.write_splits(in_memory.splits, tmp_path / "pandas", partition_rows=1000)
    for name, part in preprocess.read_splits(tmp_path / "dask").items():
        pd.testing.assert_frame_equal(part, getattr(preprocess.read_splits(tmp_path / "pandas"), name))


def test_dask_stratified_split_partitions_the_rows_and_keeps_the_fraud_rate(data, tmp_path, dask_client):
    prepared = preprocess.prepare(dask_frame(data, tmp_path), "stratified", valid_size=0.2, test_size=0.25, seed=3)
    parts = {name: part.compute() for name, part in prepared.splits.items()}
    keys = [set(map(tuple, part[schema.FEATURES].to_numpy())) for part in parts.values()]
    assert sum(map(len, keys)) == len(data) and len(set.union(*keys)) == len(data)
    assert len(parts["test"]) == pytest.approx(0.25 * len(data), rel=0.1)
    rate = data[schema.TARGET].mean()
    for part in parts.values():
        assert part[schema.TARGET].mean() == pytest.approx(rate, rel=0.5)
    # The assignment depends on the rows only: another partitioning gives the same parts.
    again = preprocess.prepare(dask_frame(data, tmp_path, rows=2500), "stratified", valid_size=0.2,
                               test_size=0.25, seed=3)
    pd.testing.assert_frame_equal(again.splits.test.compute().reset_index(drop=True),
                                  parts["test"].reset_index(drop=True))


def coarse(frame: pd.DataFrame, seconds: int) -> pd.DataFrame:
    """``frame`` with Time rounded down to ``seconds``: many rows share each Time, so the cuts fall inside one."""
    return frame.assign(**{schema.TIME: (frame[schema.TIME] // seconds) * seconds})


def test_dask_time_split_cuts_between_seconds_as_pandas_does(data, tmp_path, dask_client):
    frame = coarse(data, 600)
    n_train, n_valid, _ = preprocess.split_sizes(len(frame), 0.2, 0.25)
    in_memory = preprocess.prepare(frame, "time", valid_size=0.2, test_size=0.25, seed=1)
    assert (len(in_memory.splits.train), len(in_memory.splits.valid)) != (n_train, n_valid)  # the cuts moved
    on_dask = preprocess.prepare(dask_frame(frame, tmp_path, rows=500), "time", valid_size=0.2, test_size=0.25,
                                 seed=1)
    for name, part in in_memory.splits.items():
        pd.testing.assert_frame_equal(getattr(on_dask.splits, name).compute().reset_index(drop=True), part)


def test_the_partitioned_cut_is_the_in_memory_cut_at_every_position():
    """Partitions as the sort leaves them (one Time in one partition; empty ones too): every cut from the first row
    to past the last moves where :func:`first_of_its_time` moves it on the whole column."""
    import dask
    import dask.dataframe as dd

    times = [[0, 1, 2], [], [3, 3, 3], [4, 5], [], [6, 6]]
    ordered = dd.concat([dd.from_pandas(pd.DataFrame({schema.TIME: np.array(part, dtype=float)}), npartitions=1)
                         for part in times])
    offsets = np.concatenate([[0], np.cumsum([len(part) for part in times])])
    every = np.concatenate([np.array(part, dtype=float) for part in times])
    with dask.config.set(scheduler="synchronous"):
        moved = [preprocess._first_of_its_time_partitioned(ordered, offsets, cut) for cut in range(len(every) + 1)]
    assert moved == [preprocess.first_of_its_time(every, cut) for cut in range(len(every) + 1)]
    assert moved[4] == 3 and moved[9] == 8  # inside second 3 and second 6


def test_one_time_covering_a_whole_part_is_refused_on_both_engines(tmp_path, dask_client):
    frame = synthetic.generate(rows=100, frauds=10, seed=0)
    frame[schema.TIME] = np.r_[np.arange(50), np.full(40, 1000), np.arange(2000, 2010)].astype(float)
    with pytest.raises(ValueError, match="the valid part has 0 rows once the cuts are moved"):
        preprocess.split(frame, "time")
    with pytest.raises(ValueError, match="the valid part has 0 rows once the cuts are moved"):
        preprocess.prepare(dask_frame(frame, tmp_path, rows=30), "time")


def test_dask_split_refuses_a_part_without_frauds(tmp_path, dask_client):
    data = synthetic.generate(rows=400, frauds=2, seed=0)
    with pytest.raises(ValueError, match="needs both classes"):
        preprocess.prepare(dask_frame(data, tmp_path, rows=100), "time")


def test_scaler_rows_are_all_of_train_up_to_the_limit(data):
    train = preprocess.split(data, "time").train
    rows, fraction = preprocess.scaler_rows(train, len(train), seed=0)
    assert rows is train and fraction == 1.0
    rows, fraction = preprocess.scaler_rows(train, len(train), seed=0, limit=900)
    assert fraction == pytest.approx(900 / len(train))
    assert abs(len(rows) - 900) < 5 * 27  # binomial sd about 27 rows
