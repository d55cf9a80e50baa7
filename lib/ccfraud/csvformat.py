"""How a creditcard-format CSV text is parsed, the same for the API's request bodies and ``ccfraud score``.

Feature columns are read as float64 by Arrow's parser: a cell that is not a number (a date,
``0x10``, ``True``) then fails the fast read instead of being inferred as another type and
converted later. After such a failure the text is read again with every column as text
(empty cells as missing), so that :func:`ccfraud.schema.validate_features` finds the bad
cell and names its column and row. Arrow's reader (in parallel blocks) parses a 10,000-row
body in half the time of pandas' and refuses rows whose field count differs from the
header's (pandas would silently turn an extra leading field into an index). Its parallel
blocks do not know their rows' numbers, so after such a refusal the text is scanned once
more, by the csv module, for the first row of the wrong length: the error names its row,
as it does for a bad cell.
"""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.csv as pa_csv

from ccfraud import schema

#: The fast read: every feature column as float64.
AS_NUMBERS = pa_csv.ConvertOptions(column_types={name: pa.float64() for name in schema.FEATURES})
#: The second read, after a cell failed the first: every column as text, empty cells as missing.
AS_TEXT = pa_csv.ConvertOptions(column_types={name: pa.string() for name in schema.COLUMNS}, strings_can_be_null=True)


class CsvFormatError(ValueError):
    """The text is not UTF-8 or not well-formed CSV; the message says what and where (byte, line).

    ``row`` is the 0-based data row when the problem is one row's (its number of fields).
    """

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def read_table(body: bytes) -> pa.Table:
    """``body`` as an Arrow table: features as float64 if every cell is a number, else every column as text."""
    if not body.isascii():  # Arrow would read invalid UTF-8 as binary cells; say what is wrong instead
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CsvFormatError(f"malformed CSV: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        return pa_csv.read_csv(pa.BufferReader(body), convert_options=AS_NUMBERS)  # reads the bytes in place
    except pa.ArrowInvalid:
        pass  # a cell that is not a number, or a malformed file: the text read tells which
    try:
        return pa_csv.read_csv(pa.BufferReader(body), convert_options=AS_TEXT)
    except pa.ArrowInvalid as error:
        ragged = _first_ragged_row(body)
        if ragged is None:
            raise CsvFormatError(f"malformed CSV: {str(error).strip()}") from None
        row, fields, expected = ragged
        raise CsvFormatError(f"malformed CSV: a row has {fields} field{'s' * (fields != 1)} where the header has "
                             f"{expected}, first at row {row}", row=row) from None


def _first_ragged_row(body: bytes) -> tuple[int, int, int] | None:
    """(data row, its fields, the header's) of the first row whose field count is not the header's.

    Rows count from 0 after the header, as in the schema's errors; empty lines are skipped, as Arrow skips them.
    """
    reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return None
        row = 0
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                return row, len(fields), len(header)
            row += 1
    except csv.Error:
        return None  # bad quoting, not a row's length: Arrow's message says what
    return None
