"""Read Shopify Admin GraphQL bulk-operation JSONL (the result of ``bulk_query.graphql``) into frames.

One JSON object per line. The resource type of a line comes from its gid; connection children
(line items) are separate lines pointing at their order through ``__parentId``; lists and objects
(refunds, risk assessments, money sets, customer) are inline. The parse itself is pyarrow's
multithreaded JSON reader against one explicit schema, so a 10x store reads in seconds; only when a
file is bad do we walk it line by line (orjson) to name the exact line and problem.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from storeflow.components.ingest.encoding import decode_line, numbered_lines
from storeflow.components.ingest.errors import IngestError
from storeflow.components.ingest.gids import split_gids
from storeflow.components.tables import MAX_AMOUNT, SCHEMAS, TS, empty_frame

log = logging.getLogger(__name__)

# Part of every snapshot's name: bump it when a change here changes what a snapshot holds, so inputs
# ingested before are parsed again instead of reused.
READER_VERSION = 3  # 2: rejects non-UTF-8, absent required fields, NaN/inf amounts; manifest counts duplicates; 3: amounts past MAX_AMOUNT

_str = pa.string()


def _money(*currency: str) -> pa.DataType:
    fields = [("amount", _str), *((name, _str) for name in currency)]
    return pa.struct([("shopMoney", pa.struct(fields)), ("presentmentMoney", pa.struct(fields))])


# Every field any line of the bulk queries can carry; unknown fields are ignored.
BULK_SCHEMA = pa.schema(
    [
        ("id", _str),
        ("__parentId", _str),
        # Order
        ("name", _str),
        ("email", _str),  # Order.email; also Customer.email in files from API versions before 2025-04
        ("createdAt", _str),
        ("updatedAt", _str),
        ("cancelledAt", _str),
        ("currencyCode", _str),
        ("displayFinancialStatus", _str),
        ("totalPriceSet", _money("currencyCode")),
        ("subtotalPriceSet", _money("currencyCode")),
        ("totalDiscountsSet", _money("currencyCode")),
        ("customer", pa.struct([("id", _str)])),
        ("risk", pa.struct([("assessments", pa.list_(pa.struct([("riskLevel", _str)])))])),
        ("riskLevel", _str),  # deprecated Order.riskLevel, read only when assessments are absent
        (
            "refunds",
            pa.list_(
                pa.struct([("id", _str), ("createdAt", _str), ("totalRefundedSet", _money("currencyCode"))])
            ),
        ),
        # LineItem
        ("quantity", pa.int64()),
        ("sku", _str),
        ("title", _str),
        ("originalUnitPriceSet", _money("currencyCode")),
        ("product", pa.struct([("id", _str)])),
        # Customer
        ("defaultEmailAddress", pa.struct([("emailAddress", _str)])),
        # Product
        ("productType", _str),
        ("vendor", _str),
    ]
)

RECORD_TYPES = {"Order": "orders", "LineItem": "line_items", "Customer": "customers", "Product": "products"}

# Highest wins; PENDING is "not assessed yet", so it never outranks a result and alone means unknown.
RISK_RANK = {"NONE": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3}

# Fields Shopify never leaves null on these records (non-null in the Admin API) and that the stages need.
# Null on every record of a file, the file is not an export of bulk_query.graphql (a renamed field?).
REQUIRED_FIELDS = {
    "Order": ("createdAt", "currencyCode", "totalPriceSet.shopMoney.amount"),
    "LineItem": ("quantity", "originalUnitPriceSet.shopMoney.amount"),
}
# Nullable, but null on every record of a file means it was not exported: a warning (validate decides).
EXPECTED_FIELDS = {"Order": ("customer.id",)}
ALWAYS = "every record of a bulk export of bulk_query.graphql has it: a renamed field?"

BATCH_BYTES = 32 << 20  # JSON parsed at a time (pyarrow block size): bounds the reader's memory

_PARSE = pajson.ParseOptions(explicit_schema=BULK_SCHEMA, unexpected_field_behavior="ignore")


class _BadRow(Exception):
    def __init__(self, row: int, problem: str):
        self.row, self.problem = row, problem


def read_bulk_jsonl(paths: Sequence[Path]) -> dict[str, pd.DataFrame]:
    """Parse bulk JSONL files into one frame per table (columns as in ``tables.SCHEMAS``), all in memory;
    ingest streams the same frames with :func:`stream_bulk_jsonl` instead."""
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SCHEMAS}
    for frames in stream_bulk_jsonl(paths):
        for name, frame in frames.items():
            if name in parts:  # not the snapshot's order_risk batches (risk.orders)
                parts[name].append(frame)
    return {
        name: pd.concat(frames, ignore_index=True) if frames else empty_frame(name)
        for name, frames in parts.items()
    }


def stream_bulk_jsonl(paths: Sequence[Path]) -> Iterator[dict[str, pd.DataFrame]]:
    """The tables of bulk JSONL files, ``BATCH_BYTES`` of JSON at a time: memory stays that of one batch
    whatever the size of the export (a 5M-order store is 6 GB of JSONL). A bad file raises
    :class:`IngestError` naming its line; checks over a whole file (a field no record has) run at its end."""
    for path in paths:
        yield from _stream_file(Path(path))


class _Tally:
    """Per record type of one file: its rows, its first row, and how many rows have each checked field."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.first_row: dict[str, int] = {}
        self.present: dict[str, dict[str, int]] = {}

    def add(self, resource: str, rows: pa.Table, first_row: int) -> None:
        self.first_row.setdefault(resource, first_row)
        self.rows[resource] = self.rows.get(resource, 0) + rows.num_rows
        present = self.present.setdefault(resource, {})
        for name in (*REQUIRED_FIELDS.get(resource, ()), *EXPECTED_FIELDS.get(resource, ())):
            present[name] = present.get(name, 0) + rows.num_rows - rows[name].null_count

    def check(self, path: Path) -> None:
        """Fail on REQUIRED_FIELDS and warn on EXPECTED_FIELDS that no record of a type has in the file."""
        for resource, rows in self.rows.items():
            def absent(fields: Sequence[str]) -> list[str]:
                return [name for name in fields if self.present[resource][name] == 0]

            first = self.first_row[resource]
            if missing := absent(REQUIRED_FIELDS.get(resource, ())):
                raise _absent(path, rows, resource, missing, first, ALWAYS)
            if missing := absent(EXPECTED_FIELDS.get(resource, ())):
                log.warning("%s", _absent(path, rows, resource, missing, first,
                                          "only guest orders, or a renamed field?"))


def _stream_file(path: Path) -> Iterator[dict[str, pd.DataFrame]]:
    if path.stat().st_size == 0:
        return
    tally = _Tally()
    try:
        for offset, table in _tables(path):
            table = _flatten(table)
            if offset == 0 and table["id"].null_count == table.num_rows:
                raise _absent(path, table.num_rows, "", ["id"], 0, ALWAYS)
            yield _normalize(table, offset, tally)
        tally.check(path)
        yield from _order_risk(path)
    except _BadRow as bad:
        raise IngestError(bad.problem, path, f"line {_line_of_row(path, bad.row)[0]}") from None
    except pa.ArrowException as exc:
        # The reader does not check UTF-8: bytes that are not fail later, converting a column
        # ("Unknown error: Wrapping ... failed"), so conversion errors are located line by line too.
        raise _locate_parse_error(path, exc) from None


def _order_risk(path: Path) -> Iterator[dict[str, pa.Table]]:
    """The orders' risk fields (components/risk/query.graphql), when the file carries them, as the snapshot's
    ``order_risk`` table: the risk stage reads them from the snapshot, not from an export another pod may not
    reach. A value that is not Shopify's is a warning here (the risk stage names it), never a failed ingest, and
    the snapshot keeps no risk table at all (None: what was written of it is dropped), never part of one."""
    from storeflow.components.risk.orders import SNAPSHOT_TABLE, snapshot_batches

    try:
        tables = list(snapshot_batches(path))
    except IngestError as exc:
        log.warning("order risk fields not kept in the snapshot: %s", exc)
        yield {SNAPSHOT_TABLE: None}
        return
    for table in tables:
        yield {SNAPSHOT_TABLE: table}


def _tables(path: Path) -> Iterator[tuple[int, pa.Table]]:
    """``(row offset, table)`` per batch of the file, rows being its non-blank lines."""
    offset = 0
    try:
        for batch in pajson.open_json(path, read_options=pajson.ReadOptions(block_size=BATCH_BYTES),
                                      parse_options=_PARSE):
            yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows
        return
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc):
            raise
    # A line longer than a batch (an order with very many refunds): read again in blocks that hold it,
    # from the first row not yet given.
    longest = max(len(line) for _, _, line in numbered_lines(path))
    seen = 0
    for batch in pajson.open_json(path, read_options=pajson.ReadOptions(block_size=longest + 1),
                                  parse_options=_PARSE):
        skip = min(max(offset - seen, 0), batch.num_rows)
        seen += batch.num_rows
        if skip < batch.num_rows:
            yield seen - batch.num_rows + skip, pa.Table.from_batches([batch.slice(skip)])


def _flatten(table: pa.Table) -> pa.Table:
    """Struct columns become dotted columns (``totalPriceSet.shopMoney.amount``); lists stay."""
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    return table


def _normalize(table: pa.Table, offset: int, tally: _Tally) -> dict[str, pd.DataFrame]:
    """The frames of one batch whose first row is row ``offset`` of its file."""
    kind, number = split_gids(table["id"])
    every = np.arange(offset, offset + table.num_rows)
    _check(pc.is_null(table["id"]), table["id"], "record has no id (expected gid://shopify/<Type>/<number>)", every)
    _check(pc.is_null(kind), table["id"], "malformed id {!r} (expected gid://shopify/<Type>/<number>)", every)
    known = pc.is_in(kind, pa.array(list(RECORD_TYPES)))
    _check(pc.invert(known), kind, "unsupported record type {!r} (expected one of " + ", ".join(RECORD_TYPES) + ")",
           every)
    frames = {}
    for resource, name in RECORD_TYPES.items():
        mask = pc.fill_null(pc.equal(kind, resource), False)
        if pc.any(mask).as_py():
            rownum = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) + offset
            rows = table.filter(mask)
            tally.add(resource, rows, int(rownum[0]))
            frames[name] = _BUILDERS[name](rows, number.filter(mask).to_pandas(), rownum)
    if "orders" in frames:
        frames["orders"], frames["refunds"] = frames["orders"]
    return frames


def _absent(path: Path, rows: int, resource: str, fields: list[str], first_row: int, why: str) -> IngestError:
    """No record of the file has ``fields``: name them, and the fields the first such record has instead."""
    number, text = _line_of_row(path, first_row)
    records = f"{resource} records" if resource else "records"
    return IngestError(f"none of its {rows} {records} has {', '.join(fields)} ({why}); the first one, "
                       f"line {number}, has {', '.join(orjson.loads(text))}", path)


def _col(rows: pa.Table, name: str) -> pd.Series:
    return rows[name].to_pandas()


def _check(bad: pa.ChunkedArray | pa.Array, values: pa.ChunkedArray | pa.Array, template: str,
           rownum: np.ndarray | None = None) -> None:
    """Raise for the first row where ``bad`` holds, naming its value."""
    bad = pc.fill_null(bad, False)
    if pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        row = int(rownum[first]) if rownum is not None else first
        raise _BadRow(row, template.format(values[first].as_py()))


def _parsed(rows: pa.Table, name: str, to: pa.DataType, what: str, rownum: np.ndarray) -> pd.Series:
    """Cast a string column in arrow; when that fails, name the first row that does not parse."""
    raw = rows[name]
    try:
        return pc.cast(raw, to).to_pandas()
    except pa.ArrowInvalid:
        pass
    text = raw.to_pandas()
    if pa.types.is_timestamp(to):
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    else:
        parsed = pd.to_numeric(text, errors="coerce")
    _check(pa.array(text.notna() & parsed.isna()), raw, f"{name} {{!r}} is not {what}", rownum)
    return parsed


def _times(rows: pa.Table, name: str, rownum: np.ndarray) -> pd.Series:
    return _parsed(rows, name, TS, "an ISO 8601 timestamp", rownum)


def _amount(rows: pa.Table, name: str, rownum: np.ndarray) -> pd.Series:
    amount = _parsed(rows, name, pa.float64(), "a number", rownum).astype("float64")
    given = pc.is_valid(rows[name]).to_numpy(zero_copy_only=False)
    _check(pa.array(given & ~np.isfinite(amount.to_numpy())), rows[name], f"{name} {{!r}} is not a finite number", rownum)
    _check(pa.array(given & (amount.abs() > MAX_AMOUNT).to_numpy()), rows[name],
           f"{name} {{!r}} is past the largest amount taken ({MAX_AMOUNT:.0e})", rownum)
    return amount


def _ref(rows: pa.Table, name: str, resource: str, rownum: np.ndarray) -> pd.Series:
    kind, number = split_gids(rows[name])
    wrong = pc.and_(pc.is_valid(rows[name]), pc.fill_null(pc.not_equal(kind, resource), True))
    _check(wrong, rows[name], name + " {!r} is not a " + resource + " gid", rownum)
    return number.to_pandas().astype("Int64")


def _orders(rows: pa.Table, ids: pd.Series, rownum: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    presentment = _col(rows, "totalPriceSet.presentmentMoney.currencyCode")
    orders = pd.DataFrame(
        {
            "order_id": ids,
            "name": _col(rows, "name"),
            "customer_id": _ref(rows, "customer.id", "Customer", rownum),
            "email": _col(rows, "email"),
            "created_at": _times(rows, "createdAt", rownum),
            "updated_at": _times(rows, "updatedAt", rownum),
            "cancelled_at": _times(rows, "cancelledAt", rownum),
            "currency": presentment.fillna(_col(rows, "currencyCode")),
            "total_price": _amount(rows, "totalPriceSet.shopMoney.amount", rownum),
            "subtotal_price": _amount(rows, "subtotalPriceSet.shopMoney.amount", rownum),
            "total_discounts": _amount(rows, "totalDiscountsSet.shopMoney.amount", rownum),
            "financial_status": _col(rows, "displayFinancialStatus"),
            "risk_level": _risk_levels(rows, rownum),
        }
    )
    return orders, _refunds(rows, ids, rownum)


def _risk_levels(rows: pa.Table, rownum: np.ndarray) -> pd.Series:
    """The highest assessment per order; the deprecated ``riskLevel`` only where there are none."""
    assessments = rows["risk.assessments"]
    levels = pc.struct_field(pc.list_flatten(assessments), "riskLevel").to_pandas()
    parent = pc.list_parent_indices(assessments).to_numpy()
    rank = levels.map(RISK_RANK)
    unknown = levels.notna() & (levels != "PENDING") & rank.isna()
    _check(pa.array(unknown), pa.array(levels), "risk level {!r} is not one of " + ", ".join([*RISK_RANK, "PENDING"]),
           rownum[parent])
    names = {rank: level for level, rank in RISK_RANK.items()}
    highest = rank.groupby(parent).max().map(names).reindex(range(rows.num_rows))
    return highest.fillna(_col(rows, "riskLevel").str.upper())


def _refunds(rows: pa.Table, ids: pd.Series, rownum: np.ndarray) -> pd.DataFrame:
    refunds = pc.list_flatten(rows["refunds"])
    if len(refunds) == 0:
        return empty_frame("refunds")
    parent = pc.list_parent_indices(rows["refunds"]).to_numpy()
    flat = _flatten(pa.Table.from_arrays([refunds], names=["r"]))
    refund_rows = rownum[parent]
    return pd.DataFrame(
        {
            "refund_id": _ref(flat, "r.id", "Refund", refund_rows),
            "order_id": ids.to_numpy()[parent],
            "created_at": _times(flat, "r.createdAt", refund_rows),
            "amount": _amount(flat, "r.totalRefundedSet.shopMoney.amount", refund_rows),
        }
    )


def _line_items(rows: pa.Table, ids: pd.Series, rownum: np.ndarray) -> pd.DataFrame:
    _check(pc.is_null(rows["__parentId"]), rows["id"], "line item {} has no __parentId (its order is unknown)", rownum)
    return pd.DataFrame(
        {
            "line_item_id": ids,
            "order_id": _ref(rows, "__parentId", "Order", rownum),
            "product_id": _ref(rows, "product.id", "Product", rownum),
            "sku": _col(rows, "sku"),
            "title": _col(rows, "title"),
            "quantity": _col(rows, "quantity").astype("Int64"),
            "price": _amount(rows, "originalUnitPriceSet.shopMoney.amount", rownum),
        }
    )


def _customers(rows: pa.Table, ids: pd.Series, rownum: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ids,
            "email": _col(rows, "defaultEmailAddress.emailAddress").fillna(_col(rows, "email")),
            "created_at": _times(rows, "createdAt", rownum),
            "updated_at": _times(rows, "updatedAt", rownum),
        }
    )


def _products(rows: pa.Table, ids: pd.Series, rownum: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": ids,
            "title": _col(rows, "title"),
            "product_type": _col(rows, "productType"),
            "vendor": _col(rows, "vendor"),
            "created_at": _times(rows, "createdAt", rownum),
        }
    )


_BUILDERS = {"orders": _orders, "line_items": _line_items, "customers": _customers, "products": _products}


# --- the slow path: only for files pyarrow rejected, to say which line is wrong and why ---


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The non-blank lines as text; an error naming line and byte offset at the first that is not UTF-8."""
    for number, offset, line in numbered_lines(path):
        if line.strip():
            yield number, decode_line(path, number, offset, line)


def _line_of_row(path: Path, row: int) -> tuple[int, str]:
    """pyarrow skips blank lines, so row k is the k-th non-blank line: its number and text."""
    for index, (number, text) in enumerate(_lines(path)):
        if index == row:
            return number, text
    raise AssertionError(f"row {row} beyond the end of {path}")


def _locate_parse_error(path: Path, exc: Exception) -> IngestError:
    for number, line in _lines(path):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            return IngestError(f"not valid JSON ({err.msg} at column {err.colno})", path, f"line {number}")
        if not isinstance(record, dict):
            return IngestError(f"expected a JSON object, got {type(record).__name__}", path, f"line {number}")
        problem = _type_problem(record, BULK_SCHEMA)
        if problem:
            return IngestError(problem, path, f"line {number}")
    for number, line in _lines(path):  # orjson keeps the last of repeated keys, pyarrow rejects them
        if repeated := _repeated_keys(line):
            return IngestError(f"key(s) {', '.join(map(repr, repeated))} given twice in one object", path,
                               f"line {number}")
    return IngestError(f"cannot be parsed as bulk JSONL: {exc}", path)


def _repeated_keys(line: str) -> list[str]:
    repeated: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in items]
        repeated.extend(key for key in dict.fromkeys(keys) if keys.count(key) > 1)
        return dict(items)

    try:
        json.loads(line, object_pairs_hook=pairs)
    except RecursionError:  # nested deeper than Python's json goes (orjson went deeper)
        return []
    return repeated


def _type_problem(value: object, expected: pa.Schema | pa.DataType, where: str = "") -> str | None:
    if value is None:
        return None
    if isinstance(expected, pa.Schema) or pa.types.is_struct(expected):
        if not isinstance(value, dict):
            return f"field {where!r} should be an object, got {value!r}"
        for field in expected:
            problem = _type_problem(value.get(field.name), field.type, f"{where}.{field.name}".lstrip("."))
            if problem:
                return problem
        return None
    if pa.types.is_list(expected):
        if not isinstance(value, list):
            return f"field {where!r} should be a list, got {value!r}"
        return next(filter(None, (_type_problem(item, expected.value_type, where) for item in value)), None)
    if pa.types.is_integer(expected) and (not isinstance(value, int) or isinstance(value, bool)):
        return f"field {where!r} should be an integer, got {value!r}"
    if pa.types.is_string(expected) and not isinstance(value, str):
        return f"field {where!r} should be a string, got {value!r}"
    return None
