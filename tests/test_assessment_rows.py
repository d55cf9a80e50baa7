"""assessment.rows_at: the rows behind the top alerts' reason codes, the same from a pandas split and a Dask one."""

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from ccfraud import assessment, synthetic


@pytest.fixture(scope="module")
def split() -> pd.DataFrame:
    return synthetic.generate(rows=600, frauds=20, seed=4)


POSITIONS = np.array([599, 3, 250, 4, 0, 431, 430, 250])


def test_rows_come_back_in_the_order_asked_whatever_the_partitioning(split):
    expected = split.iloc[POSITIONS].reset_index(drop=True)
    pd.testing.assert_frame_equal(assessment.rows_at(split, POSITIONS).reset_index(drop=True), expected)
    for partitions in (1, 7):
        partitioned = dd.from_pandas(split, npartitions=partitions, sort=False)
        got = assessment.rows_at(partitioned, POSITIONS).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, obj=f"{partitions} partitions")


def test_a_position_outside_the_split_is_named(split):
    with pytest.raises(IndexError, match=r"0\.\.599; found 3\.\.600"):
        assessment.rows_at(dd.from_pandas(split, npartitions=3, sort=False), np.array([3, 600]))
