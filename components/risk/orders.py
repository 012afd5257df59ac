"""Read the order fields of ``query.graphql`` (the risk bulk operation) from bulk JSONL into one frame.

Lines of other records (line items, customers, products) and fields of ingest's own query are skipped, so
the same file ingest reads (a synthetic store with ``synthetic.fraud_rate``) or the separate result file of
the ``OrderRisk`` operation both work, and so does a directory of bulk results: files whose orders carry none
of the fields (ingest's own ``Orders`` export) are passed over. One row per order:

``order_id``, ``cancel_reason`` (null when not cancelled), ``gateway`` (``paymentGatewayNames`` joined with
``+``), ``ship_country``, ``bill_country``, ``address_key`` (a digest of shipping address1, zip and country:
velocity by address without keeping the address), ``dispute_type`` (CHARGEBACK before INQUIRY), ``dispute_status``
(of that dispute), ``disputes`` (how many) and ``shopify_risk_level`` (Shopify's own assessment: the one
without a provider; null when Shopify has not assessed the order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from storeflow.components.ingest.encoding import numbered_lines
from storeflow.components.ingest.errors import IngestError
from storeflow.components.ingest.gids import split_gids

_str = pa.string()
RISK_SCHEMA = pa.schema([
    ("id", _str),
    ("cancelReason", _str),
    ("paymentGatewayNames", pa.list_(_str)),
    ("shippingAddress", pa.struct([("address1", _str), ("zip", _str), ("countryCodeV2", _str)])),
    ("billingAddress", pa.struct([("countryCodeV2", _str)])),
    ("disputes", pa.list_(pa.struct([("id", _str), ("initiatedAs", _str), ("status", _str)]))),
    ("risk", pa.struct([("assessments", pa.list_(pa.struct([
        ("riskLevel", _str), ("provider", pa.struct([("title", _str)]))])))])),
])
RISK_FIELDS = ("cancelReason", "paymentGatewayNames", "shippingAddress", "billingAddress", "disputes")
# Shopify's enums (Admin GraphQL): OrderCancelReason, DisputeType, DisputeStatus, RiskAssessmentResult.
CANCEL_REASONS = frozenset({"CUSTOMER", "DECLINED", "FRAUD", "INVENTORY", "OTHER", "STAFF"})
DISPUTE_TYPES = ("CHARGEBACK", "INQUIRY")
DISPUTE_STATUSES = frozenset({"ACCEPTED", "LOST", "NEEDS_RESPONSE", "PREVENTED", "UNDER_REVIEW", "WON",
                              "CHARGE_REFUNDED"})
RISK_LEVELS = {"NONE": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3}  # PENDING: not assessed yet (null)
COLUMNS = ("order_id", "cancel_reason", "gateway", "ship_country", "bill_country", "address_key", "dispute_type",
           "dispute_status", "disputes", "shopify_risk_level")
# JSON parsed at a time, one block after another: parsing a block takes ~40x its size (a 5,000,000-order export
# peaked at 1.3 GB with 32 MB blocks read ahead by threads, 0.33 GB with 4 MB blocks in turn, 13 % slower); the
# order risk scorer reads the export at its start in a pod limited to 2 GiB.
BATCH_BYTES = 4 << 20
# The frame's columns as arrow types (what features register in DuckDB, whatever pandas inferred).
TABLE_SCHEMA = pa.schema([("order_id", pa.int64()), *((name, _str) for name in COLUMNS[1:8]), ("disputes", pa.int64()),
                          ("shopify_risk_level", _str)])


def read_risk_fields(paths: Sequence[Path]) -> pd.DataFrame:
    """The risk fields of every order in the bulk JSONL ``paths`` (see the module docstring); an
    :class:`IngestError` names the file and the problem when a value is not Shopify's or no order has them."""
    frames: list[pd.DataFrame] = []
    plain: list[str] = []  # files whose orders carry none of the fields (ingest's own Orders export)
    for path in map(Path, paths):
        found, present, orders = _read(path)
        frames.extend(found)
        if orders and not present:
            plain.append(str(path))
    if plain and not frames:
        raise IngestError("no order has any of " + ", ".join(RISK_FIELDS) + ": not an export of the OrderRisk "
                          "query (components/risk/query.graphql), or a synthetic store without synthetic.fraud_rate",
                          ", ".join(plain))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    return frame.drop_duplicates("order_id", keep="last").reset_index(drop=True)


SNAPSHOT_TABLE = "order_risk"  # the snapshot file ingest keeps these columns in (ingest.bulk_jsonl)


def snapshot_risk_fields(snapshot: Path) -> pd.DataFrame | None:
    """The orders' risk fields ingest kept in the snapshot (``order_risk.parquet``), or None for a snapshot
    ingested without them (an older one, or a CSV export: the export is read instead)."""
    table = snapshot_risk_table(snapshot)
    return None if table is None else table.to_pandas()


def snapshot_risk_table(snapshot: Path, columns: Sequence[str] = COLUMNS) -> pa.Table | None:
    """:func:`snapshot_risk_fields` as Arrow, only ``columns`` (``order_id`` among them), an order's last row kept.

    Why: the order risk scorer reads three of the columns at its start, in the webhooks pod (2 GiB for four
    processes). All ten as a pandas frame were 1,955 MB for a 500,000-customer store's 5,000,000 orders (a Python
    string per value), and reading them peaked at 2,486 MB."""
    path = Path(snapshot) / f"{SNAPSHOT_TABLE}.parquet"
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    return _last_of_each_order(pq.read_table(path, columns=list(columns), pre_buffer=False, use_threads=False))


def export_risk_table(paths: Sequence[Path], columns: Sequence[str] = COLUMNS) -> pa.Table | None:
    """:func:`snapshot_risk_table` of a snapshot ingested without its risk fields: the export's, read as ingest
    would have kept them (:func:`snapshot_batches`), batch by batch, only ``columns`` of each kept; None when no
    file carries them.

    Why: the order risk scorer read such a snapshot's export with :func:`read_risk_fields`, all ten columns of
    every order as one pandas frame (a Python string per value: ~2 GB at 5,000,000 orders), at its start in the
    webhooks pod (2 GiB for four processes)."""
    parts = [batch.select(list(columns)) for path in paths for batch in snapshot_batches(Path(path))]
    return _last_of_each_order(pa.concat_tables(parts)) if parts else None


def _last_of_each_order(table: pa.Table) -> pa.Table:
    """``table`` with one row an order id, its last."""
    ids = table.column("order_id").to_numpy()
    ordered = np.sort(ids)  # ingest wrote one row an order: a sorted copy shows it without an index of every id
    if not (ordered[1:] == ordered[:-1]).any():
        return table
    del ordered
    # the last row of each order id: the first of each in the reversed ids
    _, first_reversed = np.unique(ids[::-1], return_index=True)
    return table.take(pa.array(np.sort(len(ids) - 1 - first_reversed)))


def _order_batches(path: Path) -> Iterator[tuple[pa.Table, pa.Array]]:
    """``path`` read batch by batch with the risk fields, each batch kept to its orders (a bulk export's
    line items and other objects dropped), with the orders' numeric ids; batches without orders skipped. A line
    longer than a block (an order with very many refunds) has the file read on, from the first row not yet given,
    in blocks that hold it, as ingest does."""
    options = pajson.ParseOptions(explicit_schema=RISK_SCHEMA, unexpected_field_behavior="ignore")
    given, block, retried = 0, BATCH_BYTES, False  # rows already given (every record, orders or not)
    while True:
        seen = 0
        try:
            for batch in pajson.open_json(path, read_options=pajson.ReadOptions(block_size=block, use_threads=False),
                                          parse_options=options):
                start, seen = seen, seen + batch.num_rows
                if seen <= given:
                    continue
                table = pa.Table.from_batches([batch]).slice(max(given - start, 0))
                given = seen
                kind, number = split_gids(table["id"])
                orders = pc.fill_null(pc.equal(kind, "Order"), False)
                table, number = table.filter(orders), number.filter(orders)
                if table.num_rows:
                    yield table, number
            return
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or retried:
                raise
            block, retried = max(BATCH_BYTES, max(len(line) for _, _, line in numbered_lines(path)) + 1), True


def snapshot_batches(path: Path) -> Iterator[pa.Table]:
    """The risk fields of ``path``'s orders as tables of ``TABLE_SCHEMA``, batch by batch, for ingest to keep
    in the snapshot (``order_risk.parquet``). Nothing when the first batch's orders carry none of the fields
    (ingest's own Orders export, a synthetic store without fraud): that file is not read a second time."""
    seen_orders = False
    for table, number in _order_batches(path):
        if not seen_orders and not sum(table.num_rows - table[name].null_count for name in RISK_FIELDS):
            return
        seen_orders = True
        yield pa.Table.from_pandas(_frame(table, number, path), schema=TABLE_SCHEMA, preserve_index=False)


def _read(path: Path) -> tuple[list[pd.DataFrame], int, int]:
    """The order frames of one file, how many risk field values its orders carry, and how many orders it has.

    Batch by batch, and a batch whose orders carry none of the fields gives no frame (its rows would be all
    null, which the features' LEFT JOIN gives an order without a row too): an export without them (ingest's own
    Orders export, 5,000,000 orders) is read in one batch's memory. Listing every batch, then building every
    frame, took the order risk scorer's start to 1.8 GB for such a file, in a pod limited to 2 GiB."""
    frames, present, orders = [], 0, 0
    try:
        for table, number in _order_batches(path):
            carried = sum(table.num_rows - table[name].null_count for name in RISK_FIELDS)
            present, orders = present + carried, orders + table.num_rows
            if carried:
                frames.append(_frame(table, number, path))
            elif table["risk"].null_count < table.num_rows:
                _frame(table, number, path)  # Shopify's own levels are checked all the same, the frame not kept
    except pa.ArrowInvalid as exc:
        raise IngestError(f"cannot be read as bulk JSONL with the order risk fields: {exc}", path) from None
    return frames, present, orders


def _frame(table: pa.Table, number: pa.ChunkedArray, path: Path) -> pd.DataFrame:
    n = table.num_rows
    ids = number.to_numpy()
    reason = table["cancelReason"].to_pandas()
    _check(reason, CANCEL_REASONS, "cancelReason", ids, path)
    gateways = pc.binary_join(table["paymentGatewayNames"], "+").to_pandas()
    ship = table["shippingAddress"].combine_chunks()
    bill = table["billingAddress"].combine_chunks()
    ship_country = pc.struct_field(ship, "countryCodeV2").to_pandas()
    address = pd.Series(pc.binary_join_element_wise(
        pc.utf8_upper(pc.utf8_trim_whitespace(pc.fill_null(pc.struct_field(ship, "address1"), ""))),
        pc.utf8_upper(pc.utf8_trim_whitespace(pc.fill_null(pc.struct_field(ship, "zip"), ""))),
        pc.fill_null(pc.struct_field(ship, "countryCodeV2"), ""), "|").to_pylist())
    address_key = address.where(ship_country.notna()).map(_digest, na_action="ignore")

    disputes = table["disputes"].combine_chunks()
    flat = pc.list_flatten(disputes)
    parent = pc.list_parent_indices(disputes).to_numpy()
    kinds = pc.struct_field(flat, "initiatedAs").to_pandas()
    statuses = pc.struct_field(flat, "status").to_pandas()
    _check(kinds, frozenset(DISPUTE_TYPES), "disputes.initiatedAs", ids[parent], path)
    _check(statuses, DISPUTE_STATUSES, "disputes.status", ids[parent], path)
    listed = pd.DataFrame({"row": parent, "kind": kinds, "status": statuses,
                           "rank": kinds.map({kind: rank for rank, kind in enumerate(DISPUTE_TYPES)})})
    first = listed.sort_values(["row", "rank"], kind="stable").drop_duplicates("row").set_index("row")
    count = np.bincount(parent, minlength=n) if len(parent) else np.zeros(n, dtype=np.int64)

    assessments = pc.list_flatten(pc.struct_field(table["risk"].combine_chunks(), "assessments"))
    owner = pc.list_parent_indices(pc.struct_field(table["risk"].combine_chunks(), "assessments")).to_numpy()
    levels = pc.struct_field(assessments, "riskLevel").to_pandas()
    _check(levels, frozenset({*RISK_LEVELS, "PENDING"}), "risk.assessments.riskLevel", ids[owner], path)
    shopify = pd.DataFrame({"row": owner, "rank": levels.map(RISK_LEVELS)})[
        pc.is_null(pc.struct_field(assessments, "provider")).to_numpy(zero_copy_only=False)]
    highest = shopify.dropna().groupby("row")["rank"].max().map({rank: level for level, rank in RISK_LEVELS.items()})
    rows = pd.RangeIndex(n)
    return pd.DataFrame({
        "order_id": ids.astype(np.int64),
        "cancel_reason": reason,
        "gateway": gateways,
        "ship_country": ship_country,
        "bill_country": pc.struct_field(bill, "countryCodeV2").to_pandas(),
        "address_key": address_key,
        "dispute_type": first["kind"].reindex(rows).to_numpy(),
        "dispute_status": first["status"].reindex(rows).to_numpy(),
        "disputes": count.astype(np.int64),
        "shopify_risk_level": highest.reindex(rows).to_numpy(),
    }, columns=list(COLUMNS))


def address_key(address1: str | None, zip_code: str | None, country: str | None) -> str | None:
    """The ``address_key`` of one shipping address (what :func:`read_risk_fields` computes for a whole file):
    address1 and zip trimmed and upper-cased, with the country; None without a country, as in the export."""
    if country is None:
        return None
    return _digest("|".join(((address1 or "").strip().upper(), (zip_code or "").strip().upper(), country)))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check(values: pd.Series, allowed: frozenset, field: str, ids: np.ndarray, path: Path) -> None:
    bad = values.notna() & ~values.isin(allowed)
    if bad.any():
        where = int(np.flatnonzero(bad.to_numpy())[0])
        raise IngestError(f"{field} {values.iloc[where]!r} of order {int(ids[where])} is not one of "
                          + ", ".join(sorted(allowed)), path)
