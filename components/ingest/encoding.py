"""Say where a file stops being UTF-8: its line, the byte offset and the byte.

Shopify writes UTF-8; a file re-saved by a spreadsheet or an editor may not be. The fast readers
(pyarrow) only say "invalid UTF8" or fail deep inside a conversion, so when they reject a file the
slow paths walk it with :func:`numbered_lines` and decode each line here.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from storeflow.components.ingest.errors import IngestError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def numbered_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset of the line, raw line)`` for every line, blank ones included."""
    offset = 0
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, offset, line
            offset += len(line)


def decode_line(path: Path, number: int, offset: int, line: bytes) -> str:
    """``line`` as text (a UTF-8 byte-order mark on line 1 dropped), or an :class:`IngestError`
    naming the line, the byte offset in the file and the offending byte."""
    if number == 1:
        if line.startswith(_UTF16_BOMS):
            raise IngestError("not UTF-8: the file is UTF-16 (it starts with a UTF-16 byte-order mark); "
                              "save or export it as UTF-8", path, "line 1")
        if line.startswith(codecs.BOM_UTF8):
            line, offset = line[len(codecs.BOM_UTF8):], offset + len(codecs.BOM_UTF8)
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise IngestError(
            f"not UTF-8: byte 0x{line[err.start]:02x} at byte offset {offset + err.start} ({err.reason}); "
            "save or export the file as UTF-8", path, f"line {number}") from None


def check_utf8(path: Path) -> None:
    """Raise :class:`IngestError` at the first line of ``path`` that is not UTF-8."""
    for number, offset, line in numbered_lines(path):
        decode_line(path, number, offset, line)
