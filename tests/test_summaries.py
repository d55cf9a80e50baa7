"""Summaries of partitions, combined, equal the statistics of the whole frame."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from ccfraud import schema, summaries, synthetic

#: Uneven cuts, one of them empty: a combine must not care where the partitions end.
CUTS = (0, 1, 700, 700, 2500, 5999, 6000)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    frame = synthetic.generate(rows=6000, frauds=120, seed=21)
    # Shift Time far from zero so that naive sums of squares would lose the variance.
    return frame.assign(**{schema.TIME: frame[schema.TIME] + 1e9})


def partitions(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[a:b] for a, b in zip(CUTS[:-1], CUTS[1:], strict=True)]


def combined(make, frame: pd.DataFrame):
    return functools.reduce(lambda a, b: a.combine(b), [make(part) for part in partitions(frame)])


def test_moments_of_partitions_equal_the_whole(data):
    whole = combined(summaries.ClassMoments.of, data)
    assert (whole.legits, whole.frauds, whole.rows) == (5880, 120, 6000)
    overall = whole.overall()
    described = data[schema.COLUMNS].describe().T
    np.testing.assert_array_equal(overall.minimum, described["min"].to_numpy())
    np.testing.assert_array_equal(overall.maximum, described["max"].to_numpy())
    np.testing.assert_allclose(overall.mean, described["mean"].to_numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(overall.std().to_numpy(), described["std"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(overall.correlation().to_numpy(), data[schema.COLUMNS].corr().to_numpy(),
                               rtol=0, atol=1e-10)


def test_moments_of_a_large_partition_are_made_chunk_by_chunk(data, monkeypatch):
    """A partition is read in chunks of CHUNK_ROWS rows (bounded memory): the result is the whole's."""
    whole = summaries.ClassMoments.of(data)
    monkeypatch.setattr(summaries, "CHUNK_ROWS", 997)
    chunked = summaries.ClassMoments.of(data)
    assert (chunked.legits, chunked.frauds) == (whole.legits, whole.frauds)
    np.testing.assert_allclose(chunked.legit.comoment, whole.legit.comoment, rtol=1e-10)
    np.testing.assert_array_equal(chunked.fraud.maximum, whole.fraud.maximum)


def test_moments_by_class_equal_groupby_describe(data):
    table = combined(summaries.ClassMoments.of, data).by_class(schema.AMOUNT)
    expected = data.groupby(schema.TARGET)[schema.AMOUNT].describe()
    assert table["count"].tolist() == expected["count"].astype(int).tolist()
    assert table["min"].tolist() == expected["min"].tolist() and table["max"].tolist() == expected["max"].tolist()
    np.testing.assert_allclose(table[["mean", "std"]].to_numpy(), expected[["mean", "std"]].to_numpy(), rtol=1e-10)


def test_histogram_counts_of_partitions_equal_the_whole(data):
    for make in (functools.partial(summaries.Histogram.of, column=schema.AMOUNT, width=0.1, log=True),
                 functools.partial(summaries.Histogram.of, column=schema.TIME, width=3600.0)):
        whole, parts = make(data), combined(make, data)
        pd.testing.assert_series_equal(parts.counts, whole.counts.sort_index())
        table = parts.table()
        assert table.groupby(schema.TARGET)["rows"].sum().tolist() == [5880, 120]
        widths = np.log10(table["right"] / table["left"]) if parts.log else table["right"] - table["left"]
        np.testing.assert_allclose((table["density"] * widths).groupby(table[schema.TARGET]).sum(), 1.0)


def test_amount_bins_hold_the_values_they_say(data):
    table = summaries.Histogram.of(data, schema.AMOUNT, 0.1, log=True).table()
    amounts = np.maximum(data[schema.AMOUNT].to_numpy(), 0.01)
    for row in table[table["rows"] > 0].sample(10, random_state=0).itertuples():
        inside = (amounts >= row.left * (1 - 1e-12)) & (amounts < row.right)
        assert inside[(data[schema.TARGET] == row.Class).to_numpy()].sum() == row.rows


def test_a_sample_keeps_every_fraud_and_about_the_fraction_of_legitimate_rows(data):
    sample = summaries.class_sample(data, 0.25, 1.0, seed=3)
    assert int(sample[schema.TARGET].sum()) == 120
    legit = len(sample) - 120
    # Binomial(5880, 0.25): sd about 33 rows; 5 sd is far beyond chance for a correct draw.
    assert abs(legit - 0.25 * 5880) < 5 * 33
    assert sample.index.is_monotonic_increasing
    balanced = summaries.class_sample(data, 0.02, 0.5, seed=3)
    assert 0 < int(balanced[schema.TARGET].sum()) < 120


def test_a_sample_is_the_same_whatever_the_partitioning(data):
    whole = summaries.class_sample(data, 0.1, 0.5, seed=7)
    parts = combined(functools.partial(summaries.Rows.sample, legit_fraction=0.1, fraud_fraction=0.5, seed=7), data)
    pd.testing.assert_frame_equal(parts.frame, whole.reset_index(drop=True))
    shuffled = data.sample(frac=1.0, random_state=1)
    assert set(summaries.class_sample(shuffled, 0.1, 0.5, seed=7).index) == set(whole.index)


def test_samples_nest_and_depend_on_the_seed(data):
    small = summaries.class_sample(data, 0.1, seed=1)
    large = summaries.class_sample(data, 0.3, seed=1)
    assert set(small.index) < set(large.index)
    other = summaries.class_sample(data, 0.1, seed=2)
    assert set(other.index) != set(small.index)
    assert summaries.class_sample(data, 1.0, 1.0) is data


def test_row_uniforms_look_uniform(data):
    u = summaries.row_uniforms(data, seed=0)
    assert u.min() >= 0.0 and u.max() < 1.0
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    # 600 expected per decile, sd about 23: every decile within 5 sd.
    assert np.all(np.abs(counts - 600) < 5 * 23)


def test_fraction_for_and_bad_fractions():
    assert summaries.fraction_for(50, 200) == 0.25
    assert summaries.fraction_for(500, 200) == 1.0
    with pytest.raises(ValueError, match="legit_fraction must be between 0 and 1"):
        summaries.class_sample(pd.DataFrame(columns=schema.COLUMNS), 1.5)


def test_summaries_of_other_columns_do_not_combine(data):
    a = summaries.Moments.of(data, [schema.TIME])
    b = summaries.Moments.of(data, [schema.AMOUNT])
    with pytest.raises(ValueError, match="cannot combine moments"):
        a.combine(b)


def test_the_cluster_gives_the_pandas_statistics(data, dask_client):
    import dask.dataframe as dd

    wanted = {"moments": summaries.moments(), "time": summaries.histogram(schema.TIME, 3600.0),
              "sample": summaries.sample(0.2, 1.0, seed=5)}
    on_pandas = summaries.compute(data, wanted)
    on_dask = summaries.compute(dd.from_pandas(data, npartitions=4, sort=False), wanted)
    assert (on_dask["moments"].legits, on_dask["moments"].frauds) == (5880, 120)
    np.testing.assert_allclose(on_dask["moments"].overall().correlation(),
                               on_pandas["moments"].overall().correlation(), atol=1e-10)
    pd.testing.assert_series_equal(on_dask["time"].counts, on_pandas["time"].counts)
    pd.testing.assert_frame_equal(on_dask["sample"].frame, on_pandas["sample"].frame.reset_index(drop=True))
