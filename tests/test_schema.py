"""The one feature spec: column rules and the errors that name what is wrong."""

import io
import pickle
import re

import numpy as np
import pandas as pd
import pytest

from ccfraud import schema


def frame(rows: int = 4) -> pd.DataFrame:
    data = {c: np.arange(rows, dtype=float) for c in schema.FEATURES}
    data[schema.TARGET] = [0, 1] * (rows // 2)
    return pd.DataFrame(data)


def test_feature_order_is_time_pcas_amount():
    assert schema.FEATURES[0] == "Time" and schema.FEATURES[-1] == "Amount"
    assert schema.FEATURES[1:-1] == [f"V{i}" for i in range(1, 29)]
    assert schema.COLUMNS == [*schema.FEATURES, "Class"]


def test_valid_frame_is_returned_numeric_in_file_order():
    shuffled = frame()[list(reversed(schema.COLUMNS))]
    clean = schema.validate_dataset(shuffled)
    assert list(clean.columns) == schema.COLUMNS
    assert clean[schema.TARGET].dtype == np.int64


def test_quoted_numbers_as_strings_are_accepted():
    data = frame().astype(str)
    assert schema.validate_dataset(data)["V1"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "mutate, message, column, row",
    [
        (lambda f: f.drop(columns=["V7"]), r"missing column\(s\) \['V7'\]", "V7", None),
        (lambda f: f.assign(extra=1.0), r"unexpected column\(s\) \['extra'\]", "extra", None),
        (lambda f: f.drop(columns=["V9"]).assign(extra=1.0), r"missing column\(s\) \['V9'\]; unexpected column\(s\) "
                                                            r"\['extra'\]", "V9", None),
        (lambda f: f.assign(V3=["1.0", "x", "2", "y"]), r"column 'V3': 2 non-numeric value\(s\), first at row 1: 'x'",
         "V3", 1),
        (lambda f: f.assign(Amount=[1.0, np.nan, 2.0, 3.0]), r"column 'Amount': 1 missing or infinite value\(s\)",
         "Amount", 1),
        (lambda f: f.assign(V1=[1.0, 2.0, np.inf, 3.0]), r"column 'V1': .*first at row 2: inf", "V1", 2),
        (lambda f: f.assign(Class=[0, 1, 2, 0]), r"column 'Class': 1 value\(s\) outside \{0, 1\}, first at row 2",
         "Class", 2),
        (lambda f: f.assign(Class=0), r"no fraud \(Class 1\) rows", "Class", None),
        (lambda f: f.assign(Class=1), r"no legitimate \(Class 0\) rows", "Class", None),
        (lambda f: f.iloc[:0], r"no data rows", None, None),
    ],
)
def test_bad_datasets_name_the_problem(mutate, message, column, row):
    """The message says where for people; ``column`` and ``row`` say the same for programs (the API)."""
    with pytest.raises(schema.SchemaError, match=message) as raised:
        schema.validate_dataset(mutate(frame()), where="creditcard.csv")
    assert (raised.value.column, raised.value.row) == (column, row)


def test_where_an_error_is_survives_pickling():
    """A partition's error travels pickled from a Dask worker; its column and row must travel with it."""
    with pytest.raises(schema.SchemaError) as raised:
        schema.validate_dataset(frame().assign(V3=["1.0", "x", "2", "y"]), where="part 3", first_row=1000)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (type(copy), str(copy), copy.column, copy.row) == (schema.SchemaError, str(raised.value), "V3", 1001)


def test_error_says_where():
    with pytest.raises(schema.SchemaError, match=r"^s3://b/k: missing"):
        schema.validate_dataset(frame().drop(columns=["Time"]), where="s3://b/k")


def test_features_for_scoring_ignore_class_and_keep_model_order():
    data = frame().drop(columns=["Class"])[list(reversed(schema.FEATURES))]
    assert list(schema.validate_features(data).columns) == schema.FEATURES
    assert list(schema.validate_features(frame()).columns) == schema.FEATURES
    with pytest.raises(schema.SchemaError, match=r"missing column\(s\) \['V28'\]"):
        schema.validate_features(data.drop(columns=["V28"]))


def test_values_beyond_float32_are_refused():
    with pytest.raises(schema.SchemaError,
                       match=r"column 'Amount': 1 value\(s\) beyond \+/-3.4e\+38, first at row 3") as raised:
        schema.validate_dataset(frame().assign(Amount=[1.0, 2.0, 3.0, 1e39]))
    assert (raised.value.column, raised.value.row) == ("Amount", 3)


def read_csv_text(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


@pytest.mark.parametrize(
    "values, count, row, shown",
    [
        ([False, True, True, False], 4, 0, "False"),  # what read_csv makes of a True/False column: dtype bool
        (pd.Series([1.0, np.nan, True, None], dtype=object), 1, 2, "True"),  # True among empty cells
        (pd.array([None, False, True, None], dtype="boolean"), 2, 1, "False"),  # pandas' nullable booleans
        (pd.Series([np.True_, 1.0, 2.0, 3.0], dtype=object), 1, 0, "True"),
    ],
    ids=["bool dtype", "object with a bool", "nullable boolean", "numpy bool in object"],
)
def test_booleans_are_not_numbers(values, count, row, shown):
    with pytest.raises(schema.SchemaError, match=rf"^creditcard.csv: column 'V3': {count} boolean value\(s\), "
                                                 rf"expected numbers, first at row {row}: {shown}$") as raised:
        schema.validate_dataset(frame().assign(V3=values), where="creditcard.csv")
    assert (raised.value.column, raised.value.row) == ("V3", row)


@pytest.mark.parametrize("values", [pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:05", "2024-01-01 11:00",
                                                   "2024-01-02 09:00"]),
                                    pd.to_timedelta([0, 300, 3600, 82800], unit="s")], ids=["timestamps", "durations"])
def test_timestamps_are_not_numbers(values):
    """A Parquet Time column of timestamps is not seconds: pandas would make it nanoseconds since 1970."""
    with pytest.raises(schema.SchemaError, match=rf"^new.parquet: column 'Time': {re.escape(str(values.dtype))} "
                                                 rf"values, expected numbers, first at row 0: {values[0]}$") as raised:
        schema.validate_dataset(frame().assign(Time=values), where="new.parquet")
    assert (raised.value.column, raised.value.row) == ("Time", 0)


def test_a_csv_true_false_column_is_refused_not_read_as_one_and_zero():
    text = frame().assign(V3=[True, False, True, False]).to_csv(index=False)
    parsed = read_csv_text(text)
    assert parsed["V3"].dtype == bool, "the reason for the rule: pandas reads True/False as booleans"
    message = r"column 'V3': 4 boolean value\(s\), expected numbers, first at row 0: True$"
    with pytest.raises(schema.SchemaError, match=message):
        schema.validate_dataset(parsed)
    with pytest.raises(schema.SchemaError, match=message):
        schema.validate_features(parsed.drop(columns=[schema.TARGET]))


def test_the_word_true_among_numbers_is_a_non_numeric_value():
    parsed = read_csv_text(frame().assign(V3=["1.0", "True", "2", "3"]).to_csv(index=False))
    with pytest.raises(schema.SchemaError, match=r"column 'V3': 1 non-numeric value\(s\), first at row 1: 'True'"):
        schema.validate_dataset(parsed)


def test_an_integer_too_large_for_a_float_is_out_of_range_not_a_crash():
    parsed = read_csv_text(frame().assign(Time=[0, 1, 10**400, 3]).to_csv(index=False))
    assert isinstance(parsed["Time"].iloc[2], int), "pandas keeps a 400-digit integer as a Python int"
    with pytest.raises(schema.SchemaError, match=r"column 'Time': 1 integer\(s\) too large for a float \(beyond "
                                                 r"\+/-3.4e\+38\), first at row 2: a 1329-bit integer") as raised:
        schema.validate_dataset(parsed)
    assert (raised.value.column, raised.value.row) == ("Time", 2)


def test_clean_numeric_frames_take_the_whole_matrix_check_with_the_same_result(monkeypatch):
    """A clean all-numeric frame is checked in one block; the result equals the column-by-column one."""
    data = frame(6).assign(Time=np.arange(6, dtype=np.int64), V2=pd.array([1, 2, 3, 4, 5, 6], dtype="Int64"))
    block = schema.coerce_numeric(data, schema.FEATURES)
    monkeypatch.setattr(schema, "_valid_numeric_block", lambda frame, columns: None)
    by_column = schema.coerce_numeric(data, schema.FEATURES)
    pd.testing.assert_frame_equal(block, by_column)
    assert all(dtype == np.float64 for dtype in block.dtypes)


@pytest.mark.parametrize("values", [
    [1.0, 2.0, np.nan, 3.0, 4.0, 5.0],
    [1.0, 2.0, -np.inf, 3.0, 4.0, 5.0],
    [1.0, 2.0, 1e39, 3.0, 4.0, 5.0],
    pd.array([1, 2, None, 3, 4, 5], dtype="Int64"),
])
def test_a_bad_value_in_a_numeric_frame_is_still_named(values):
    with pytest.raises(schema.SchemaError, match=r"column 'V17': 1 .*first at row 2"):
        schema.coerce_numeric(frame(6).assign(V17=values), schema.FEATURES, where="batch")


@pytest.mark.parametrize(
    "mutate, message, column, row",
    [
        (lambda f: f.assign(V3=["1.0", "x", "2", "y"]), r"^part 3: column 'V3': .*first at row 1001: 'x'", "V3", 1001),
        (lambda f: f.assign(V1=[1.0, 2.0, np.inf, 3.0]), r"^part 3: column 'V1': .*first at row 1002: inf", "V1", 1002),
        (lambda f: f.assign(Class=[0, 1, 2, 0]), r"^part 3: column 'Class': .*first at row 1002: 2.0$", "Class", 1002),
        (lambda f: f.assign(V2=[True, False, True, False]), r"^part 3: column 'V2': .*first at row 1000: True",
         "V2", 1000),
    ],
)
def test_a_partition_names_rows_of_the_whole_dataset(mutate, message, column, row):
    with pytest.raises(schema.SchemaError, match=message) as raised:
        schema.validate_dataset(mutate(frame()), where="part 3", first_row=1000)
    assert (raised.value.column, raised.value.row) == (column, row)


def test_a_partition_may_hold_one_class_only():
    only_legit = frame().assign(Class=0)
    assert schema.validate_dataset(only_legit, require_both_classes=False)[schema.TARGET].sum() == 0
    with pytest.raises(schema.SchemaError, match="no data rows"):
        schema.validate_dataset(frame().iloc[:0], require_both_classes=False)
