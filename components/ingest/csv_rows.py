"""Read a CSV file strictly into a frame of strings: UTF-8, every row with the header's fields.

pyarrow's multithreaded reader parses the file with every cell a string (empty cells null) and
rejects a row with more or fewer fields than the header: a file cut mid-row, or a quote that is never
closed, is an error instead of a row of empty cells. It says neither file nor line, so only when it
rejects a file do we walk the file with the standard library's ``csv`` module to name them.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from storeflow.components.ingest.encoding import check_utf8, decode_line
from storeflow.components.ingest.errors import IngestError


def read_csv_strings(path: Path) -> pd.DataFrame:
    """Every row of ``path`` under its header, each cell a string or None (empty)."""
    path = Path(path)
    header = read_header(path)
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),  # quoted notes and addresses span lines
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise _locate(path, len(header), exc) from None
    return table.to_pandas()


def read_header(path: Path) -> list[str]:
    """The header row's column names (an error naming line 1 when it is empty or repeats a name)."""
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise IngestError("no header row (the file is empty or starts with a blank line)", path, "line 1")
    header = next(csv.reader([decode_line(path, 1, 0, first)]))
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise IngestError(f"header repeats column(s) {', '.join(map(repr, repeated))}", path, "line 1")
    return header


def _locate(path: Path, fields: int, exc: Exception) -> IngestError:
    """The first line that is not UTF-8, or the first row whose field count differs from the header's."""
    check_utf8(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, strict=True)
        start = 1  # the line a row starts on; reader.line_num is the line it ends on
        try:
            for row in reader:
                if row and len(row) != fields:
                    return IngestError(f"row has {len(row)} field(s), the header has {fields} "
                                       "(a file cut short, or a value with a stray comma or quote?)",
                                       path, _where(start, reader.line_num))
                start = reader.line_num + 1
        except csv.Error as err:
            if "end of data" in str(err):
                problem = "a quoted value opened in this row is never closed (a file cut short?)"
            else:
                problem = f"malformed quoting ({err})"
            return IngestError(problem, path, _where(start, reader.line_num))
    return IngestError(f"not a readable CSV: {exc}", path)


def _where(start: int, end: int) -> str:
    return f"line {start}" if start == end else f"line {start} (to line {end})"
