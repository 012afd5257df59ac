"""Read the Shopify admin "Export orders" CSV (and the "Export customers" CSV beside it) into the
normalized tables.

The orders export has one row per line item; order-level fields (totals, status, ...) are filled only
on the first row of each order, and consecutive rows with the same ``Name`` belong to one order. It
carries the numeric order ``Id`` but no customer, line item, product or refund ids, so storeflow takes
or derives them (:func:`~storeflow.components.ingest.gids.stable_id`, the same on every run):

* ``customer_id``: the Shopify ``Customer ID`` of the customers export row with the same normalized
  email (trimmed, lower-cased) when a customers export is ingested alongside, so features are keyed as
  storefront requests are; otherwise derived from the email (a warning says serving will not match);
  null when there is no email;
* ``line_item_id`` from the order id and the line's position within the order;
* ``product_id`` from the line item SKU (or its name when there is no SKU); product rows carry the
  name and the line's ``Vendor`` (features use the vendor as the category where, as here, no product
  type is known), and no creation time (the export has neither);
* one refund per order with a ``Refunded Amount``, at the export's ``Refunded at`` where it has such a
  column (the admin export does not), else at the order's latest known time (``updated_at``: paid,
  fulfilled or cancelled), never before the order itself.

Timestamps in the export carry the shop's UTC offset (``2024-03-05 14:22:10 -0500``) and become UTC.
Row numbers in errors count the header as row 1, as a spreadsheet does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from storeflow.components.ingest.csv_rows import read_csv_strings, read_header
from storeflow.components.ingest.errors import IngestError
from storeflow.components.ingest.gids import stable_id
from storeflow.components.tables import MAX_AMOUNT

# Part of every snapshot's name: bump it when a change here changes what a snapshot holds.
READER_VERSION = 5  # 4: refuses decimal commas, inf, ids and quantities past int64 (a snapshot read before held
# them); 5: amounts past tables.MAX_AMOUNT
# 3: refund times, vendors, Shopify customer ids from the customers export
# 2: rejects rows cut short, open quotes, non-UTF-8; manifest counts duplicates

log = logging.getLogger(__name__)

REQUIRED = [
    "Name", "Email", "Financial Status", "Currency", "Subtotal", "Total", "Discount Amount", "Created at",
    "Lineitem quantity", "Lineitem name", "Lineitem price", "Id",
]
OPTIONAL = ["Lineitem sku", "Paid at", "Fulfilled at", "Cancelled at", "Refunded Amount", "Refunded at",
            "Risk Level", "Vendor"]
CUSTOMERS_EXPORT = ["Customer ID", "Email"]  # the "Export customers" CSV: what keys orders by Shopify ids
SHOPIFY_TIME = "%Y-%m-%d %H:%M:%S %z"
THOUSANDS = r"[-+]?[0-9]{1,3}(,[0-9]{3})+\.[0-9]*|[-+]?[0-9]{1,3}(,[0-9]{3}){2,}"  # 1,234.50 or 1,234,567
MAX_EXACT = 2 ** 53  # the largest whole number a float64 (what pandas parses numbers into) holds exactly


def normalize_email(email: pd.Series) -> pd.Series:
    """The customer key of the export: emails differ only in case and whitespace for one person."""
    email = email.str.strip().str.lower()
    return email.where(email != "")


def is_customers_export(path: Path) -> bool:
    """The "Export customers" CSV (``Customer ID`` and ``Email``, no line items), not an orders export."""
    header = [name.strip() for name in read_header(Path(path))]
    return all(name in header for name in CUSTOMERS_EXPORT) and "Lineitem name" not in header


def read_csv_exports(files: list[Path]) -> dict[str, pd.DataFrame]:
    """Orders exports, keyed by the Shopify customer ids of the customers export among ``files`` (one
    or more); without one, customer ids are derived from emails and a warning says serving will not
    match them."""
    customer_exports = [Path(path) for path in files if is_customers_export(path)]
    parts = [read_orders_csv(path) for path in files if Path(path) not in customer_exports]
    if not parts:
        raise IngestError("no orders export among the CSV files (only customers exports)", Path(files[0]).parent)
    tables = {name: pd.concat([part[name] for part in parts], ignore_index=True) for name in parts[0]}
    known = pd.concat([read_customers_csv(path) for path in customer_exports]) if customer_exports else None
    if known is None:
        log.warning("no customers export (the admin's 'Export customers' CSV, with Customer ID and Email) among "
                    "%s: customer ids are derived from emails and will not match the Shopify customer ids "
                    "storefront requests carry, so serving falls back for every customer; ingest the customers "
                    "export alongside (ingest.path a directory holding both CSVs)", ", ".join(map(str, files)))
        return tables
    return key_by_customer_ids(tables, known)


def read_customers_csv(path: Path) -> pd.Series:
    """The customers export as normalized email -> Shopify customer id (rows without an email skipped;
    Shopify quotes the id with a leading ``'`` so spreadsheets keep its digits)."""
    path = Path(path)
    raw = read_csv_strings(path)
    raw.columns = [str(column).strip() for column in raw.columns]
    raw.index = pd.RangeIndex(2, len(raw) + 2)  # spreadsheet row numbers
    digits = raw["Customer ID"].str.strip().str.lstrip("'")
    bad = digits.isna() | ~digits.fillna("").str.fullmatch(r"[0-9]{1,18}")
    if bad.any():
        row = int(bad[bad].index[0])
        raise IngestError(f"'Customer ID' {raw.at[row, 'Customer ID']!r} is not a Shopify customer id", path, f"row {row}")
    email = normalize_email(raw["Email"])
    ids = pd.Series(digits.astype("int64").to_numpy(), index=email.to_numpy()).loc[email.notna().to_numpy()]
    repeated = ids.index.duplicated()
    if repeated.any():
        log.warning("%s: %d email(s) belong to more than one customer; the first row of each is kept", path,
                    int(pd.Series(ids.index[repeated]).nunique()))
    return ids[~repeated]


def key_by_customer_ids(tables: dict[str, pd.DataFrame], known: pd.Series) -> dict[str, pd.DataFrame]:
    """Orders (and customers) keyed by the Shopify customer id of their email where the customers export
    has it; the rest keep the email-derived id, and a warning counts them."""
    known = known[~known.index.duplicated()]
    orders = tables["orders"].copy()
    shopify = orders["email"].map(known)
    unmatched = orders["email"].notna() & shopify.isna()
    if unmatched.any():
        log.warning("%d of %d customer email(s) of the orders export are not in the customers export: their ids "
                    "are derived from the email, and serving will not match them",
                    orders.loc[unmatched, "email"].nunique(), orders["email"].nunique())
    orders["customer_id"] = shopify.astype("Int64").fillna(orders["customer_id"])
    return {**tables, "orders": orders, "customers": _Parser.customers(orders)}


def read_orders_csv(path: Path) -> dict[str, pd.DataFrame]:
    path = Path(path)
    raw = read_csv_strings(path)  # UTF-8, no row cut short: else an error naming the line
    raw.columns = [str(column).strip() for column in raw.columns]
    missing = [column for column in REQUIRED if column not in raw.columns]
    if missing:
        raise IngestError(f"missing column(s) of the Shopify orders export: {', '.join(missing)}", path)
    for column in OPTIONAL:
        if column not in raw.columns:
            raw[column] = None
    raw.index = pd.RangeIndex(2, len(raw) + 2)  # spreadsheet row numbers
    return _Parser(path, raw).tables()


class _Parser:
    def __init__(self, path: Path, raw: pd.DataFrame):
        self.path, self.raw = path, raw

    def fail(self, row: int, problem: str) -> IngestError:
        return IngestError(problem, self.path, f"row {row}")

    def numbers(self, column: str, frame: pd.DataFrame | None = None) -> pd.Series:
        values = (self.raw if frame is None else frame)[column]
        # A comma is taken for thousands grouping only where it cannot be a decimal comma (1,234.50 or
        # 1,234,567): "67,97" read as 6797 would be a hundred times the price, silently.
        comma = values.str.contains(",", regex=False, na=False)
        grouped = values.str.strip().str.fullmatch(THOUSANDS, na=False)
        if (comma & ~grouped).any():
            row = int((comma & ~grouped).idxmax())
            raise self.fail(row, f"'{column}' value {values[row]!r} has a comma that is not thousands grouping "
                                 "like 1,234.50 (a decimal comma? export with a decimal point)")
        parsed = pd.to_numeric(values.str.replace(",", "", regex=False), errors="coerce").astype("float64")
        bad = values.notna() & parsed.isna()
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"'{column}' value {values[row]!r} is not a number")
        infinite = np.isinf(parsed)
        if infinite.any():
            row = int(infinite[infinite].index[0])
            raise self.fail(row, f"'{column}' value {values[row]!r} is not a finite number")
        return parsed

    def amounts(self, column: str, frame: pd.DataFrame | None = None) -> pd.Series:
        """Money: numbers within :data:`~storeflow.components.tables.MAX_AMOUNT` either way."""
        values = (self.raw if frame is None else frame)[column]
        parsed = self.numbers(column, frame)
        past = parsed.abs() > MAX_AMOUNT
        if past.any():
            row = int(past[past].index[0])
            raise self.fail(row, f"'{column}' value {values[row]!r} is past the largest amount taken "
                                 f"({MAX_AMOUNT:.0e})")
        return parsed

    def whole_numbers(self, column: str, frame: pd.DataFrame | None = None) -> pd.Series:
        """Whole numbers that an int64 holds exactly: past 2**53 a float is no longer exact, and past int64
        the cast gave -9223372036854775808 without a word."""
        values = (self.raw if frame is None else frame)[column]
        parsed = self.numbers(column, frame)
        bad = parsed.isna() | (parsed % 1 != 0) | (parsed.abs() > MAX_EXACT)
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"'{column}' {values[row]!r} is not a whole number")
        return parsed.astype("int64")

    def times(self, column: str, frame: pd.DataFrame | None = None) -> pd.Series:
        values = (self.raw if frame is None else frame)[column]
        parsed = pd.to_datetime(values, format=SHOPIFY_TIME, utc=True, errors="coerce")
        retry = values.notna() & parsed.isna()
        if retry.any():
            parsed[retry] = pd.to_datetime(values[retry], format="ISO8601", utc=True, errors="coerce")
        bad = values.notna() & parsed.isna()
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"'{column}' value {values[row]!r} is not a timestamp like 2024-03-05 14:22:10 -0500")
        return parsed

    def tables(self) -> dict[str, pd.DataFrame]:
        raw = self.raw
        if raw["Name"].isna().any():
            raise self.fail(int(raw.index[raw["Name"].isna()][0]), "row has no order 'Name'")
        block = (raw["Name"] != raw["Name"].shift()).cumsum()
        first = raw.groupby(block, sort=False).first()  # first non-empty value of each order-level field
        first.index = raw.index[~block.duplicated()]  # an order's spreadsheet row is its first row
        orders = self.orders(first)
        line_items = self.line_items(raw, orders["order_id"].to_numpy()[block.to_numpy() - 1], block)
        return {
            "orders": orders,
            "line_items": line_items.drop(columns="vendor"),
            "customers": self.customers(orders),
            "products": self.products(line_items),
            "refunds": self.refunds(first, orders),
        }

    def orders(self, first: pd.DataFrame) -> pd.DataFrame:
        digits = first["Id"].str.strip()
        bad = ~digits.str.fullmatch(r"[0-9]{1,18}(\.0*)?", na=False)  # 18 digits: always within int64
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"order {first.at[row, 'Name']} has no numeric 'Id' (got {first.at[row, 'Id']!r})")
        order_id = digits.str.split(".").str[0].astype("int64")
        email = normalize_email(first["Email"])
        created = self.times("Created at", first)
        cancelled = self.times("Cancelled at", first)
        latest = pd.concat([created, self.times("Paid at", first), self.times("Fulfilled at", first), cancelled], axis=1)
        return pd.DataFrame(
            {
                "order_id": order_id,
                "name": first["Name"],
                "customer_id": stable_id(email, "email"),
                "email": email,
                "created_at": created,
                "updated_at": latest.max(axis=1),
                "cancelled_at": cancelled,
                "currency": first["Currency"].str.strip().str.upper(),
                "total_price": self.amounts("Total", first),
                "subtotal_price": self.amounts("Subtotal", first),
                "total_discounts": self.amounts("Discount Amount", first).fillna(0.0),
                "financial_status": first["Financial Status"].str.strip().str.upper(),
                "risk_level": first["Risk Level"].str.strip().str.upper(),
            }
        )

    def line_items(self, raw: pd.DataFrame, order_id: np.ndarray, block: pd.Series) -> pd.DataFrame:
        quantity = self.whole_numbers("Lineitem quantity")
        order_id = pd.Series(order_id, index=raw.index)
        position = block.groupby(block).cumcount()  # per order block: a repeated block repeats its ids
        product_key = ("sku:" + raw["Lineitem sku"].str.strip()).fillna("name:" + raw["Lineitem name"].str.strip())
        return pd.DataFrame(
            {
                "line_item_id": stable_id(order_id.astype(str) + ":" + position.astype(str), "line_item"),
                "order_id": order_id,
                "product_id": stable_id(product_key, "product"),
                "sku": raw["Lineitem sku"],
                "title": raw["Lineitem name"],
                "quantity": quantity,
                "price": self.amounts("Lineitem price"),
                "vendor": raw["Vendor"],
            }
        ).reset_index(drop=True)

    @staticmethod
    def customers(orders: pd.DataFrame) -> pd.DataFrame:
        known = orders.dropna(subset=["customer_id"])
        grouped = known.groupby("customer_id", sort=True)
        return pd.DataFrame(
            {
                "email": grouped["email"].first(),
                "created_at": grouped["created_at"].min(),  # the export has no signup time: first order
                "updated_at": grouped["created_at"].max(),
            }
        ).reset_index()

    @staticmethod
    def products(line_items: pd.DataFrame) -> pd.DataFrame:
        first = line_items.groupby("product_id", sort=True).first()
        return pd.DataFrame(
            {"title": first["title"], "product_type": None, "vendor": first["vendor"], "created_at": pd.NaT}
        ).reset_index()

    def refunds(self, first: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
        amount = self.amounts("Refunded Amount", first)
        refunded = (amount > 0).to_numpy()
        order_id = orders["order_id"][refunded].reset_index(drop=True)
        # The admin export has no refund time: the order's latest known time stands in (a refund follows
        # payment and fulfilment), so features count the refund from then on instead of never.
        when = self.times("Refunded at", first).fillna(orders["updated_at"]).clip(lower=orders["created_at"])
        return pd.DataFrame(
            {
                "refund_id": stable_id(order_id.astype(str), "refund"),
                "order_id": order_id,
                "created_at": when[refunded].reset_index(drop=True),
                "amount": amount[refunded].to_numpy(),
            }
        )
