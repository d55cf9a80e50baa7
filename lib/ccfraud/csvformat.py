"""How a creditcard-format CSV text is parsed, the same for the API's request bodies and ``ccfraud score``.

Feature columns are read as float64 by Arrow's parser: a cell that is not a number (a date,
``0x10``, ``True``) then fails the fast read instead of being inferred as another type and
converted later. After such a failure the text is read again with every column as text
(empty cells as missing), so that :func:`ccfraud.schema.validate_features` finds the bad
cell and names its column and row. Arrow's reader (in parallel blocks) parses a 10,000-row
body in half the time of pandas' and refuses rows whose field count differs from the
header's (pandas would silently turn an extra leading field into an index). Its parallel
blocks do not know their rows' numbers, so after such a refusal the text is scanned once
more, by the csv module, for the row Arrow refused: the error names its row, as it does
for a bad cell (a 16 MiB body: the rescan 0.13 s of the refusal's 0.17 s; only on that path).
"""

from __future__ import annotations

import csv
import io
import re

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
        message = str(error).strip()
        ragged = _RAGGED.search(message)
        row = _first_ragged_row(body, int(ragged["expected"]), int(ragged["got"])) if ragged else None
        if row is None:
            raise CsvFormatError(f"malformed CSV: {message}") from None
        fields = int(ragged["got"])
        raise CsvFormatError(f"malformed CSV: a row has {fields} field{'s' * (fields != 1)} where the header has "
                             f"{ragged['expected']}, first at row {row}", row=row) from None


#: Arrow's message for a row whose field count is not the header's (its parallel blocks do not know the row).
_RAGGED = re.compile(r"Expected (?P<expected>\d+) columns, got (?P<got>\d+)")


def _first_ragged_row(body: bytes, expected: int, got: int) -> int | None:
    """The data row (from 0 after the header, as in the schema's errors) of the first row with ``got`` fields
    where the header has ``expected``: the row Arrow refused. None if the csv module does not find that row
    where Arrow did (a quoted line break across Arrow's blocks, a field over the csv module's size limit):
    Arrow's own message is then kept. Empty lines and a byte-order mark are skipped, as Arrow skips them;
    the text is decoded as it is read, not copied whole.
    """
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8-sig", newline=""), strict=True)
    rows = (fields for fields in reader if fields)
    try:
        header = next(rows, None)
        if header is None or len(header) != expected:
            return None
        for row, fields in enumerate(rows):
            if len(fields) != expected:
                return row if len(fields) == got else None
    except csv.Error:
        return None
    return None
