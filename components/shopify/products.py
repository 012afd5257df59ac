"""Product availability from Shopify webhooks: ``products/create``, ``products/update`` (status, publication,
variants and their inventory items) and ``inventory_levels/update`` (units available of one inventory item at
one location). The applier keeps what they say in the journal database and turns each event into the
availability rows of the products it touches (:data:`storeflow.components.recommend.availability.COLUMNS`),
with the title and handle a storefront block shows and links, and a product payload into its category
(product type, else vendor: :func:`category_rows`) for the recommender's ``product_catalog`` view.

A product is published when its status is ``active`` and it has a ``published_at``; it is in stock when a
variant does not track inventory, sells on when out of stock (``inventory_policy: continue``), or its
tracked items have units available summed over locations (the inventory levels received, else the
variant's ``inventory_quantity`` from the product payload).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Annotated, Literal

import pandas as pd
from pydantic import Field, ValidationError

from storeflow.components.recommend.availability import COLUMNS
from storeflow.components.recommend.catalog import categories

from storeflow.components.shopify.payloads import Count, Id, PayloadError, Timestamp, _Shape, describe

PRODUCT_TOPICS = frozenset({"products/create", "products/update"})
INVENTORY_TOPICS = frozenset({"inventory_levels/update"})
AVAILABILITY_TOPICS = PRODUCT_TOPICS | INVENTORY_TOPICS
MAX_UNITS = 2**63 - 1  # the inventory column is an int64

SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog_products (product_id INTEGER PRIMARY KEY, published INTEGER NOT NULL,
                                             updated_at TEXT NOT NULL, title TEXT, handle TEXT);
CREATE TABLE IF NOT EXISTS catalog_items (inventory_item_id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL,
                                          always_in_stock INTEGER NOT NULL, quantity INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS catalog_items_product ON catalog_items (product_id);
CREATE TABLE IF NOT EXISTS inventory_levels (inventory_item_id INTEGER NOT NULL, location_id INTEGER NOT NULL,
                                             available INTEGER NOT NULL, updated_at TEXT NOT NULL,
                                             PRIMARY KEY (inventory_item_id, location_id));
"""


class Variant(_Shape):
    id: Id
    inventory_item_id: Id | None = None
    inventory_quantity: Count | None = None
    inventory_policy: Literal["deny", "continue"] = "deny"
    inventory_management: str | None = None  # "shopify" (or a fulfillment service) tracks it; None does not


class Product(_Shape):
    id: Id
    title: Annotated[str, Field(max_length=255)] | None = None
    product_type: Annotated[str, Field(max_length=255)] | None = None  # '' when none; the category, else vendor
    vendor: Annotated[str, Field(max_length=255)] | None = None
    handle: Annotated[str, Field(max_length=255, pattern=r"^[^\s/?#%]+$")] | None = None  # a URL path segment
    status: Literal["active", "archived", "draft", "unlisted"]
    published_at: Timestamp | None = None
    updated_at: Timestamp
    variants: list[Variant] = []


class InventoryLevel(_Shape):
    inventory_item_id: Id
    location_id: Id
    available: Count | None = None  # null when the item is not stocked at that location
    updated_at: Timestamp


def check(topic: str, payload) -> None:
    """Raise :class:`PayloadError` naming what is wrong unless ``payload`` has the topic's shape."""
    model = Product if topic in PRODUCT_TOPICS else InventoryLevel
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(f"{topic}: {describe(exc)}") from exc


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def apply(conn: sqlite3.Connection, topic: str, payload: dict) -> pd.DataFrame:
    """Store one event (inside the caller's transaction) and return the availability of its products.

    Out-of-order deliveries are harmless: a product or level older than the one stored is ignored."""
    check(topic, payload)
    if topic in PRODUCT_TOPICS:
        product = Product.model_validate(payload)
        stamp = product.updated_at.isoformat()
        stored = conn.execute("SELECT updated_at FROM catalog_products WHERE product_id = ?", (product.id,)).fetchone()
        if stored is None or stored[0] <= stamp:
            published = int(product.status == "active" and product.published_at is not None)
            conn.execute("INSERT INTO catalog_products VALUES (?, ?, ?, ?, ?) ON CONFLICT(product_id) DO UPDATE SET "
                         "published = excluded.published, updated_at = excluded.updated_at, title = excluded.title, "
                         "handle = excluded.handle", (product.id, published, stamp, product.title, product.handle))
            conn.execute("DELETE FROM catalog_items WHERE product_id = ?", (product.id,))
            conn.executemany("INSERT OR REPLACE INTO catalog_items VALUES (?, ?, ?, ?)", [
                (v.inventory_item_id if v.inventory_item_id is not None else -v.id, product.id,
                 int(v.inventory_policy == "continue" or v.inventory_management is None), v.inventory_quantity or 0)
                for v in product.variants])
        products = [product.id]
    else:
        level = InventoryLevel.model_validate(payload)
        stamp = level.updated_at.isoformat()
        conn.execute("INSERT INTO inventory_levels VALUES (?, ?, ?, ?) ON CONFLICT(inventory_item_id, location_id) "
                     "DO UPDATE SET available = excluded.available, updated_at = excluded.updated_at "
                     "WHERE excluded.updated_at >= inventory_levels.updated_at",
                     (level.inventory_item_id, level.location_id, level.available or 0, stamp))
        products = [row[0] for row in conn.execute(
            "SELECT product_id FROM catalog_items WHERE inventory_item_id = ?", (level.inventory_item_id,))]
    return availability(conn, products)


def category_rows(conn: sqlite3.Connection, topic: str, payload: dict) -> pd.DataFrame:
    """The product's category (product type, else vendor, as recommend.catalog names it) as of its
    ``updated_at``, for :func:`storeflow.components.recommend.catalog.describe_online`; nothing for an
    inventory level, or for a product payload older than the one :func:`apply` stored (delivered late)."""
    columns = ["product_id", "category", "event_timestamp"]
    if topic not in PRODUCT_TOPICS:
        return pd.DataFrame(columns=columns)
    product = Product.model_validate(payload)
    stored = conn.execute("SELECT updated_at FROM catalog_products WHERE product_id = ?", (product.id,)).fetchone()
    if stored is None or stored[0] != product.updated_at.isoformat():
        return pd.DataFrame(columns=columns)
    named = categories(pd.Series([product.product_type], dtype=object), pd.Series([product.vendor], dtype=object))
    return pd.DataFrame({"product_id": [product.id], "category": named.to_numpy(),
                         "event_timestamp": [_utc(product.updated_at)]})


def _utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def availability(conn: sqlite3.Connection, products: list[int]) -> pd.DataFrame:
    """Published, in stock and units available of ``products`` (only those whose product payload arrived:
    an inventory level of an item no product named yet changes nothing until it does)."""
    rows = []
    stamp = pd.Timestamp(datetime.now(timezone.utc))
    for product_id in products:
        found = conn.execute("SELECT published, title, handle FROM catalog_products WHERE product_id = ?",
                             (product_id,)).fetchone()
        if found is None:
            continue
        # total(), not sum(): sum() overflowed on two levels of 2**63-1 (each a valid count) and the event was
        # retried for ever; total() is a float, and a total past int64 is as good as endless stock
        items = conn.execute(
            "SELECT i.always_in_stock, i.quantity, total(l.available), count(l.location_id) FROM catalog_items i "
            "LEFT JOIN inventory_levels l USING (inventory_item_id) WHERE i.product_id = ? "
            "GROUP BY i.inventory_item_id", (product_id,)).fetchall()
        units = int(min(sum(max(levels if counted else quantity, 0) for _, quantity, levels, counted in items),
                        MAX_UNITS))
        in_stock = any(always for always, *_ in items) or units > 0
        rows.append({"product_id": product_id, "published": found[0], "in_stock": int(in_stock),
                     "inventory": units, "title": found[1] or "", "handle": found[2] or "", "event_timestamp": stamp})
    return pd.DataFrame(rows, columns=list(COLUMNS))
