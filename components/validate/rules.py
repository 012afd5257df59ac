"""The rules of the validation gate: each is a pure function over the snapshot tables.

A rule returns one finding per table it fails on (none when it passes). Rules catch what would
silently corrupt features and labels downstream: the same order twice, orders that belong to nobody,
values the stages need left empty (a field renamed or missing in the input), money or quantities below zero, events
from the future or from before any store (placeholder dates), currencies the store does not take, line items whose
order is gone, or nothing to learn from at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from storeflow.components.config import ValidateConfig
from storeflow.components.tables import SCHEMAS
from storeflow.components.validate.report import RuleFinding

Tables = dict[str, pd.DataFrame]

# The id column that names a row of each table in a report.
ID_COLUMNS = {"orders": "order_id", "line_items": "line_item_id", "customers": "customer_id",
              "products": "product_id", "refunds": "refund_id"}
MONEY_COLUMNS = ("total_price", "subtotal_price", "total_discounts")
# Values the stages cannot do without (ids and joins, label times, money, currency). A null one is a
# field missing or renamed in the input; customer_id may be null (a guest order, see no_customers).
REQUIRED = {
    "orders": ("order_id", "created_at", "total_price", "currency"),
    "line_items": ("line_item_id", "order_id", "quantity", "price"),
    "customers": ("customer_id",),
    "products": ("product_id",),
    "refunds": ("refund_id", "order_id", "amount"),
}
# Rules that report what ingest already repaired: always warnings, whatever validate.warn_only says.
NOTICES = frozenset({"duplicate_lines"})


@dataclass(frozen=True)
class Context:
    config: ValidateConfig
    now: datetime
    duplicates_dropped: Mapping[str, int] = field(default_factory=dict)  # per table, from the ingest manifest


def _finding(rule: str, table: str, rows: pd.DataFrame, message: str, config: ValidateConfig,
             count: int | None = None) -> RuleFinding:
    id_column = ID_COLUMNS[table]
    ids = rows[id_column].dropna().drop_duplicates().head(config.max_failures_listed)
    examples = [int(value) for value in ids]
    return RuleFinding(rule, table, len(rows) if count is None else count, message, id_column, examples)


def empty_input(tables: Tables, ctx: Context) -> list[RuleFinding]:
    if len(tables["orders"]):
        return []
    return [RuleFinding("empty_input", "orders", 0, "no orders: the input is empty or holds no orders")]


def duplicate_order_ids(tables: Tables, ctx: Context) -> list[RuleFinding]:
    orders = tables["orders"]
    repeated = orders[orders["order_id"].duplicated(keep=False)]
    if repeated.empty:
        return []
    ids = repeated["order_id"].nunique()
    return [_finding("duplicate_order_ids", "orders", repeated,
                     f"{ids} order id(s) on {len(repeated)} conflicting rows", ctx.config, count=ids)]


def duplicate_ids(tables: Tables, ctx: Context) -> list[RuleFinding]:
    """The other tables' ids must be unique too: a conflicting customer or product breaks joins."""
    findings = []
    for table in ("line_items", "customers", "products", "refunds"):
        frame, column = tables[table], ID_COLUMNS[table]
        repeated = frame[frame[column].notna() & frame[column].duplicated(keep=False)]
        if not repeated.empty:
            ids = repeated[column].nunique()
            findings.append(_finding("duplicate_ids", table, repeated,
                                     f"{ids} {column}(s) on {len(repeated)} conflicting rows", ctx.config, count=ids))
    return findings


def duplicate_lines(tables: Tables, ctx: Context) -> list[RuleFinding]:
    """Exact duplicates (the same record exported twice) that ingest dropped: the data is right, but say so."""
    counts = {table: ctx.duplicates_dropped.get(table, 0) for table in SCHEMAS}
    return [RuleFinding("duplicate_lines", table, count,
                        f"{count} exact duplicate row(s) in the input, dropped at ingest (one of each kept)")
            for table, count in counts.items() if count]


def required_values(tables: Tables, ctx: Context) -> list[RuleFinding]:
    findings = []
    for table, columns in REQUIRED.items():
        frame = tables[table]
        for column in columns:
            null = frame[column].isna()
            if null.any():
                findings.append(_finding("required_values", table, frame[null],
                                         f"{int(null.sum())} of {len(frame)} {table} row(s) have no {column}",
                                         ctx.config))
    return findings


def no_customers(tables: Tables, ctx: Context) -> list[RuleFinding]:
    """Guest orders are normal (missing_customer_ids), but with no customer at all there is nothing to learn."""
    orders = tables["orders"]
    if orders.empty or orders["customer_id"].notna().any():
        return []
    return [RuleFinding("no_customers", "orders", len(orders),
                        f"none of the {len(orders)} order(s) has a customer_id: no repeat purchases to learn "
                        "(the customer field missing or renamed in the input?)")]


def missing_customer_ids(tables: Tables, ctx: Context) -> list[RuleFinding]:
    orders = tables["orders"]
    missing = orders[orders["customer_id"].isna()]
    if missing.empty:
        return []
    return [_finding("missing_customer_ids", "orders", missing,
                     f"{len(missing)} order(s) without a customer (guest checkout or no email)", ctx.config)]


def negative_totals(tables: Tables, ctx: Context) -> list[RuleFinding]:
    orders = tables["orders"]
    negative = orders[(orders[list(MONEY_COLUMNS)] < 0).any(axis=1)]
    if negative.empty:
        return []
    return [_finding("negative_totals", "orders", negative,
                     f"{len(negative)} order(s) with a negative {'/'.join(MONEY_COLUMNS)}", ctx.config)]


def negative_quantities(tables: Tables, ctx: Context) -> list[RuleFinding]:
    items = tables["line_items"]
    negative = items[(items[["quantity", "price"]] < 0).any(axis=1)]
    if negative.empty:
        return []
    return [_finding("negative_quantities", "line_items", negative,
                     f"{len(negative)} line item(s) with a negative quantity/price", ctx.config)]


def future_timestamps(tables: Tables, ctx: Context) -> list[RuleFinding]:
    limit = pd.Timestamp(ctx.now) + pd.Timedelta(minutes=ctx.config.max_clock_skew_minutes)
    findings = []
    for table, schema in SCHEMAS.items():
        columns = [f.name for f in schema if f.name in tables[table] and str(f.type).startswith("timestamp")]
        if not columns:
            continue
        late = tables[table][columns].gt(limit).any(axis=1)
        if late.any():
            which = [column for column in columns if tables[table][column].gt(limit).any()]
            findings.append(_finding("future_timestamps", table, tables[table][late],
                                     f"{int(late.sum())} row(s) with {'/'.join(which)} after {limit.isoformat()}",
                                     ctx.config))
    return findings


def ancient_timestamps(tables: Tables, ctx: Context) -> list[RuleFinding]:
    """Times before ``validate.earliest``: placeholders (0001-01-01) that features cannot hold, or would count
    decades of empty cutoffs from."""
    floor = pd.Timestamp(ctx.config.earliest)
    floor = floor.tz_localize("UTC") if floor.tzinfo is None else floor.tz_convert("UTC")
    findings = []
    for table, schema in SCHEMAS.items():
        columns = [f.name for f in schema if f.name in tables[table] and str(f.type).startswith("timestamp")]
        early = {column: tables[table][column].lt(floor) for column in columns}
        rows = pd.concat(early.values(), axis=1).any(axis=1) if early else pd.Series(dtype=bool)
        if rows.any():
            which = [column for column, mask in early.items() if mask.any()]
            findings.append(_finding("ancient_timestamps", table, tables[table][rows],
                                     f"{int(rows.sum())} row(s) with {'/'.join(which)} before {floor.isoformat()} "
                                     "(a placeholder date? validate.earliest)", ctx.config))
    return findings


def unknown_currencies(tables: Tables, ctx: Context) -> list[RuleFinding]:
    orders = tables["orders"]
    unknown = orders[orders["currency"].notna() & ~orders["currency"].isin(ctx.config.currencies)]
    if unknown.empty:
        return []  # a missing currency is required_values'
    codes = ", ".join(map(repr, unknown["currency"].unique()))
    return [_finding("unknown_currencies", "orders", unknown,
                     f"{len(unknown)} order(s) in currencies outside validate.currencies ({codes})", ctx.config)]


def orphan_line_items(tables: Tables, ctx: Context) -> list[RuleFinding]:
    items = tables["line_items"]
    orphans = items[~items["order_id"].isin(tables["orders"]["order_id"])]
    if orphans.empty:
        return []
    return [_finding("orphan_line_items", "line_items", orphans,
                     f"{len(orphans)} line item(s) whose order is not in the input", ctx.config)]


RULES: dict[str, Callable[[Tables, Context], list[RuleFinding]]] = {
    rule.__name__: rule
    for rule in (empty_input, duplicate_lines, duplicate_order_ids, duplicate_ids, required_values, no_customers,
                 missing_customer_ids, negative_totals, negative_quantities, future_timestamps, ancient_timestamps, unknown_currencies,
                 orphan_line_items)
}
