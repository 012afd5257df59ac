"""Find what is left of customers in a directory tree: the check that makes erasure prove itself.

Erasure knows the stores it was written for; this scan knows none of them. It reads every file under
the given roots and reports each one that still holds a customer's gid, email, or id: as text in any
file; as a little- or big-endian int64 in other binary files and in SQLite blobs (Feast's entity keys);
decoded, as a value of a column whose name says ``customer`` in Parquet and SQLite (where order ids and
the like are int64s too, and SQLite stores integers in fewer bytes). Zip archives
(e.g. skops models) are scanned member by member. A store added later is covered without being named
here, so an erasure that forgets it fails instead of succeeding quietly.
"""

from __future__ import annotations

import re
import sqlite3
import struct
import zipfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SQLITE_MAGIC = b"SQLite format 3\x00"
PARQUET_MAGIC = b"PAR1"
# Past this many needles of a kind, candidates are found by shape and looked up in a set (shop/redact
# checks every customer the shop had); below it each needle is searched for literally.
LITERAL_LIMIT = 64
EMAIL = re.compile(rb"[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}")
# A whole email: jo@example.com is not in mojo@example.com nor in jo@example.com.au (erasing one erased the other's
# journal bodies and failed the proof on the other's rows).
EMAIL_BEFORE = rb"(?<![a-z0-9._%+-])"
EMAIL_AFTER = rb"(?![a-z0-9-])(?!\.[a-z0-9])"
# A whole number: not the fraction digits of a decimal (1978.7200000000016 holds no customer 7200000000016;
# float reprs in a report's data made shop/redact's scan fail on chance matches).
NOT_A_FRACTION = rb"(?<![0-9])(?<![0-9]\.)"
NUMBER = re.compile(NOT_A_FRACTION + rb"[0-9]{1,19}(?![0-9])")
# A shorter id as a bare number in text is no evidence (any count or price may read so); it is looked
# for as a gid, as a JSON ``customer_id`` value, and decoded in customer columns. Shopify's ids are
# 13 digits, the ids ingest derives from emails longer still.
SEARCHABLE_ID = 10**6
# Files are read in windows of this size (plus the line or field that straddles the end), never whole.
CHUNK_BYTES = 1 << 20
PACKED_BYTES = 8
# Where a text window may end, newline first: a JSON/CSV/SQLite/Parquet delimiter or a control byte.
SEPARATORS = b"\n\x00\r\t,;{}[]()<>|\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x7f\xff"


@dataclass(frozen=True)
class Needles:
    """What identifies the erased: their customer ids and emails (compared case-insensitively)."""

    customer_ids: frozenset[int] = frozenset()
    emails: frozenset[str] = frozenset()
    _literal: re.Pattern | None = field(init=False, repr=False, compare=False)
    # What every match of _literal contains (an email, an id's digits): looked for first, with bytes' own search. The
    # pattern's look-behind stops re from skipping ahead to a literal, so it tried every byte of every window: 86 % of
    # a customers/redact's proving scan (~96 s at a 500,000-customer store), where most windows hold no needle.
    _plain: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "emails", frozenset(e.strip().lower() for e in self.emails if e and e.strip()))
        parts, plain = [], []
        if len(self.emails) <= LITERAL_LIMIT:
            parts += [EMAIL_BEFORE + re.escape(e.encode()) + EMAIL_AFTER for e in self.emails]
            plain += [e.encode() for e in self.emails]
        if len(self.customer_ids) <= LITERAL_LIMIT:
            plain += [str(c).encode() for c in self.customer_ids]
            for c in self.customer_ids:
                number = str(c).encode() + rb"(?![0-9])"
                parts += [NOT_A_FRACTION + number] if c >= SEARCHABLE_ID else [
                    rb"gid://shopify/customer/" + number, rb'"customer_id": ?"?' + number]
        object.__setattr__(self, "_literal", re.compile(b"|".join(parts)) if parts else None)
        object.__setattr__(self, "_plain", tuple(plain))

    def __bool__(self) -> bool:
        return bool(self.customer_ids or self.emails)

    def in_bytes(self, data: bytes, packed: bool = True) -> bool:
        """As text anywhere (the gid holds the number, so the number covers it), or (``packed``) as an int64."""
        if self.in_text(data):
            return True
        return packed and len(self.customer_ids) <= LITERAL_LIMIT and self.in_packed(data)

    def in_text(self, data: bytes) -> bool:
        """An email, or an id as text (a whole number, a gid, a JSON ``customer_id``)."""
        lowered = data.lower()
        if self._literal is not None and any(p in lowered for p in self._plain) and self._literal.search(lowered):
            return True
        if len(self.emails) > LITERAL_LIMIT and any(m.group().decode() in self.emails for m in EMAIL.finditer(lowered)):
            return True
        return len(self.customer_ids) > LITERAL_LIMIT and any(
            (n := int(m.group())) >= SEARCHABLE_ID and n in self.customer_ids for m in NUMBER.finditer(data))

    def in_packed(self, data: bytes) -> bool:
        """An id as a little- or big-endian int64."""
        return any(struct.pack(order, c) in data for c in self.customer_ids if c >= SEARCHABLE_ID
                   for order in ("<q", ">q"))

    def separators(self) -> bytes:
        """Bytes no text match can hold nor look around into as a digit or a dot (see :func:`in_stream`)."""
        inside = set(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._%+-@/:\"_ ")
        for email in self.emails:
            inside |= set(email.encode()) | set(email.upper().encode())
        return bytes(b for b in SEPARATORS if b not in inside)

    def in_stream(self, handle: BinaryIO, packed: bool = True, chunk: int = CHUNK_BYTES) -> bool:
        """:meth:`in_bytes` of everything ``handle`` reads, in windows of about ``chunk`` bytes: the same
        answer as over the whole content, with memory bounded by the window (a prediction log grows to
        tens of MB, and erasure runs in the long-lived webhook receiver).

        Text is searched in windows that end just after a separator byte (a newline first, else another
        byte no match can contain), so no match spans two windows and the look-arounds see the same
        digits and dots they would in the whole; int64s, any 8 bytes, are searched with the previous
        window's last 7 bytes in front. A run of ``chunk`` bytes without any separator is carried on
        whole until one comes (correct before bounded).
        """
        separators = self.separators()
        carry, tail = b"", b""
        while True:
            block = handle.read(chunk)
            data = carry + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if len(data) - cut >= chunk:  # no line ends near the end: binary, or one long line
                cut = max((data.rfind(bytes([b])) for b in separators), default=-1) + 1
            if cut:
                window, carry = data[:cut], data[cut:]
                if self.in_text(window) or (packed and len(self.customer_ids) <= LITERAL_LIMIT
                                            and self.in_packed(tail + window)):
                    return True
                tail = (tail + window)[-(PACKED_BYTES - 1):]
            else:
                carry = data
            if not block:
                return False

    def in_value(self, column: str, value: object) -> bool:
        if isinstance(value, (bytes, str)):
            return self.in_bytes(value.encode() if isinstance(value, str) else value)
        return "customer" in column.lower() and isinstance(value, int) and value in self.customer_ids


@dataclass(frozen=True)
class Trace:
    path: Path
    where: str  # "bytes", a Parquet column, a SQLite table.column, or a zip member

    def __str__(self) -> str:
        return f"{self.path} ({self.where})"


def files_under(roots: Iterable[Path]) -> list[Path]:
    """Every regular file under the roots, each once (roots may nest); symlinks are not followed."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.is_file():
            found.add(root.resolve())
        elif root.is_dir():
            found.update(p.resolve() for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    return sorted(found)


@dataclass(frozen=True)
class Held:
    """A request being carried out: its own row of a SQLite database (``table`` where ``key`` is ``value``) names
    the erased until it is done, and must stay so that a failed try is tried again. That database (compacted by
    the erasure: no free pages, the WAL truncated) is scanned by its rows, without that one; its WAL and
    shared-memory index are pages of the same rows."""

    path: Path
    table: str
    key: str
    value: object

    def files(self) -> set[Path]:
        path = Path(self.path).resolve()
        return {path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")}


def find_traces(roots: Iterable[Path], needles: Needles, held: Held | None = None) -> list[Trace]:
    """Every file under ``roots`` that still holds one of ``needles``, with where in it."""
    traces = []
    skipped = held.files() if held is not None else set()
    for path in files_under(roots):
        if path in skipped:
            if path == Path(held.path).resolve():
                traces += [Trace(path, f"column {c}") for c in _sqlite_columns(path, needles, held)]
            continue
        try:
            traces += list(_file_traces(path, needles))
        except FileNotFoundError:  # removed while scanning (a rotated log, a finished temp file)
            continue
    return traces


def _file_traces(path: Path, needles: Needles) -> Iterator[Trace]:
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
        size = handle.seek(0, 2)
        handle.seek(max(0, size - len(PARQUET_MAGIC)))
        parquet = head.startswith(PARQUET_MAGIC) and size >= 2 * len(PARQUET_MAGIC) and handle.read() == PARQUET_MAGIC
        sqlite = head.startswith(SQLITE_MAGIC)
        handle.seek(0)
        # Parquet and SQLite hold other ids (orders...) as plain int64 too: their columns are decoded below.
        if needles.in_stream(handle, packed=not (parquet or sqlite)):
            yield Trace(path, "bytes")
    if parquet:
        yield from (Trace(path, f"column {c}") for c in _parquet_columns(path, needles))
    elif sqlite:
        yield from (Trace(path, f"column {c}") for c in _sqlite_columns(path, needles))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as content:
                    if needles.in_stream(content):
                        yield Trace(path, f"member {member}")


def _parquet_columns(path: Path, needles: Needles) -> Iterator[str]:
    """Column by column, row group by row group: a feature history is read a piece at a time."""
    parquet = pq.ParquetFile(path)
    for name in parquet.schema_arrow.names:
        if any(_column_holds(parquet.read_row_group(g, columns=[name]).column(0), name, needles)
               for g in range(parquet.num_row_groups)):
            yield name


def _column_holds(column: pa.ChunkedArray, name: str, needles: Needles) -> bool:
    if pa.types.is_integer(column.type) and "customer" in name.lower() and needles.customer_ids:
        return pc.any(pc.is_in(column, pa.array(sorted(needles.customer_ids), column.type))).as_py() or False
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_binary(column.type):
        values = column.drop_null().to_pylist()
        return bool(values) and needles.in_bytes("\n".join(v if isinstance(v, str) else v.decode("latin-1")
                                                              for v in values).encode())
    return False


def _sqlite_columns(path: Path, needles: Needles, held: Held | None = None) -> Iterator[str]:
    """Decoded rows, read-only (without ``held``'s); the WAL and free pages are files/bytes the byte scan already
    saw."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if held is not None and table == held.table:
                cursor = conn.execute(f'SELECT * FROM "{table}" WHERE "{held.key}" IS NOT ?', (held.value,))
            else:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            hits = {c for row in cursor for c, v in zip(columns, row) if v is not None and needles.in_value(c, v)}
            yield from (f"{table}.{c}" for c in sorted(hits))
    except sqlite3.DatabaseError as exc:  # a journal file or a locked db: say so rather than pass it
        yield f"unreadable ({exc})"
    finally:
        conn.close()
