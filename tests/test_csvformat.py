"""The CSV reader shared by the API and ``ccfraud score``: a row of the wrong length is named by its row."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccfraud import batch, csvformat, schema

HEADER = ",".join(schema.FEATURES)
ROW = ",".join(["0.5"] * len(schema.FEATURES))


def test_a_row_with_too_few_fields_is_named_by_its_data_row_whatever_the_empty_lines_before_it():
    body = "\n".join([HEADER, ROW, "", ROW, "1,2,3", ROW]).encode()
    with pytest.raises(csvformat.CsvFormatError, match="a row has 3 fields where the header has 30, first at row 2"
                       ) as caught:
        csvformat.read_table(body)
    assert caught.value.row == 2


def test_a_quoted_line_break_does_not_shift_the_row_named():
    quoted = '"0.5\n",' + ",".join(["0.5"] * (len(schema.FEATURES) - 1))
    body = "\n".join([HEADER, quoted, ROW, ROW + ",7"]).encode()
    with pytest.raises(csvformat.CsvFormatError, match="31 fields where the header has 30, first at row 2"):
        csvformat.read_table(body)


@pytest.mark.parametrize("before", ["\n", "\r\n\n", "\ufeff"], ids=["empty line", "empty lines", "BOM"])
def test_what_arrow_skips_before_the_header_does_not_shift_the_row_named(before: str):
    body = (before + "\n".join([HEADER, ROW, "1,2"]) + "\n").encode()
    with pytest.raises(csvformat.CsvFormatError, match="a row has 2 fields where the header has 30, first at row 1$"):
        csvformat.read_table(body)


def test_a_row_the_rescan_does_not_find_where_arrow_did_keeps_arrows_message():
    """Quoted line breaks across Arrow's 1 MiB blocks put its parser out of step: that is what it says, and the
    ragged row at the end is not blamed for it."""
    quoted = '"0.5\n",' + ",".join(["0.5"] * (len(schema.FEATURES) - 1))
    body = "\n".join([HEADER, *[quoted] * 40_000, "1,2"]).encode()
    with pytest.raises(csvformat.CsvFormatError) as caught:
        csvformat.read_table(body)
    assert caught.value.row is None
    assert "first at row" not in str(caught.value)


def test_a_malformed_file_without_a_ragged_row_keeps_arrows_message():
    body = (HEADER + "\n" + '"0.5' + ROW[3:] + "\n").encode()  # an unterminated quote
    with pytest.raises(csvformat.CsvFormatError, match="malformed CSV") as caught:
        csvformat.read_table(body)
    assert caught.value.row is None


def test_batch_names_a_ragged_row_by_its_row_in_the_file(tmp_path: Path):
    """A partition's block starts at file row 1000: its third row is the file's row 1002."""
    path = tmp_path / "part.csv"
    block = "\n".join([ROW, ROW, "1,2"]) + "\n"
    path.write_text(HEADER + "\n" + block)
    offset = len(HEADER)  # a block is read from the first line starting after its offset, as plan() cuts them
    partition = batch.Partition(str(path), batch.CSV, rows=3, first_row=1000, byte_range=(offset, len(block) + 1),
                                header=(HEADER + "\n").encode(), split=True)
    with pytest.raises(batch.BatchError, match=r"rows 1000-1002\): malformed CSV: a row has 2 fields where the "
                       r"header has 30, first at row 1002$"):
        batch.read_partition(partition)
