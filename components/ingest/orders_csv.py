"""Read the Shopify admin "Export orders" CSV into the normalized tables.

The export has one row per line item; order-level fields (totals, status, ...) are filled only on the
first row of each order, and consecutive rows with the same ``Name`` belong to one order. It carries
the numeric order ``Id`` but no customer, line item, product or refund ids, so storeflow derives
stable ones (:func:`~storeflow.components.ingest.gids.stable_id`, the same on every run):

* ``customer_id`` from the normalized email (trimmed, lower-cased), null when there is no email;
* ``line_item_id`` from the order id and the line's position within the order;
* ``product_id`` from the line item SKU (or its name when there is no SKU); product rows carry the
  name and vendor, and no product type or creation time (the export has neither);
* one refund per order with a ``Refunded Amount``, with no refund time (the export has none).

Timestamps in the export carry the shop's UTC offset (``2024-03-05 14:22:10 -0500``) and become UTC.
Row numbers in errors count the header as row 1, as a spreadsheet does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from storeflow.components.ingest.csv_rows import read_csv_strings
from storeflow.components.ingest.errors import IngestError
from storeflow.components.ingest.gids import stable_id

# Part of every snapshot's name: bump it when a change here changes what a snapshot holds.
READER_VERSION = 2  # 2: rejects rows cut short, open quotes, non-UTF-8; manifest counts duplicates

REQUIRED = [
    "Name", "Email", "Financial Status", "Currency", "Subtotal", "Total", "Discount Amount", "Created at",
    "Lineitem quantity", "Lineitem name", "Lineitem price", "Id",
]
OPTIONAL = ["Lineitem sku", "Paid at", "Fulfilled at", "Cancelled at", "Refunded Amount", "Risk Level", "Vendor"]
SHOPIFY_TIME = "%Y-%m-%d %H:%M:%S %z"


def normalize_email(email: pd.Series) -> pd.Series:
    """The customer key of the export: emails differ only in case and whitespace for one person."""
    email = email.str.strip().str.lower()
    return email.where(email != "")


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
        parsed = pd.to_numeric(values.str.replace(",", "", regex=False), errors="coerce")
        bad = values.notna() & parsed.isna()
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"'{column}' value {values[row]!r} is not a number")
        return parsed.astype("float64")

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
        order_id = pd.to_numeric(first["Id"], errors="coerce")
        bad = order_id.isna() | (order_id % 1 != 0)
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"order {first.at[row, 'Name']} has no numeric 'Id' (got {first.at[row, 'Id']!r})")
        email = normalize_email(first["Email"])
        created = self.times("Created at", first)
        cancelled = self.times("Cancelled at", first)
        latest = pd.concat([created, self.times("Paid at", first), self.times("Fulfilled at", first), cancelled], axis=1)
        return pd.DataFrame(
            {
                "order_id": order_id.astype("int64"),
                "name": first["Name"],
                "customer_id": stable_id(email, "email"),
                "email": email,
                "created_at": created,
                "updated_at": latest.max(axis=1),
                "cancelled_at": cancelled,
                "currency": first["Currency"].str.strip().str.upper(),
                "total_price": self.numbers("Total", first),
                "subtotal_price": self.numbers("Subtotal", first),
                "total_discounts": self.numbers("Discount Amount", first).fillna(0.0),
                "financial_status": first["Financial Status"].str.strip().str.upper(),
                "risk_level": first["Risk Level"].str.strip().str.upper(),
            }
        )

    def line_items(self, raw: pd.DataFrame, order_id: np.ndarray, block: pd.Series) -> pd.DataFrame:
        quantity = self.numbers("Lineitem quantity")
        bad = quantity.isna() | (quantity % 1 != 0)
        if bad.any():
            row = int(bad[bad].index[0])
            raise self.fail(row, f"'Lineitem quantity' {raw.at[row, 'Lineitem quantity']!r} is not a whole number")
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
                "quantity": quantity.astype("int64"),
                "price": self.numbers("Lineitem price"),
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
        amount = self.numbers("Refunded Amount", first)
        refunded = (amount > 0).to_numpy()
        order_id = orders["order_id"][refunded].reset_index(drop=True)
        return pd.DataFrame(
            {
                "refund_id": stable_id(order_id.astype(str), "refund"),
                "order_id": order_id,
                "created_at": pd.NaT,  # the export has no refund time
                "amount": amount[refunded].to_numpy(),
            }
        )
