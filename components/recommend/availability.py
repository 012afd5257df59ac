"""Which products may be recommended right now: published and in stock, as Feast features of the product
entity in the online store (view ``product_availability``), kept current by the products/update and
inventory_levels/update webhooks (:mod:`storeflow.components.shopify.products` computes the rows).

A product the store has never told us about is recommendable: the catalog comes from orders, and hiding
every product until its first webhook would empty the recommendations of a fresh install.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.features.repo import PRODUCT_KEY, definitions

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

VIEW = "product_availability"
FLAGS = ("published", "in_stock", "inventory")
CARD = ("title", "handle")  # what a storefront block shows and links (/products/<handle>)
COLUMNS = (PRODUCT_KEY, *FLAGS, *CARD, "event_timestamp")
TTL = timedelta(days=3650)  # a product stays what its last webhook said, however long ago that was


def view(settings: Settings) -> FeatureView:
    from feast import FeatureView, Field, FileSource
    from feast.types import Int64, String

    (_, product), _, _ = definitions(settings)
    return FeatureView(
        name=VIEW, entities=[product], ttl=TTL,
        schema=[Field(name=PRODUCT_KEY, dtype=Int64), *(Field(name=name, dtype=Int64) for name in FLAGS),
                *(Field(name=name, dtype=String) for name in CARD)],
        source=FileSource(name=f"{VIEW}_source", path=str(settings.feature_repo_dir / "data" / f"{VIEW}.parquet"),
                          timestamp_field="event_timestamp"),
        online=True, description="Published (status active) and in stock, from products and inventory webhooks.")


def ensure_view(store: FeatureStore, settings: Settings) -> None:
    """Register the view (with the product entity) unless the registry has it already."""
    if VIEW not in {v.name for v in store.list_feature_views()}:
        (_, product), _, _ = definitions(settings)
        store.apply([product, view(settings)])


def write(store: FeatureStore, settings: Settings, rows: pd.DataFrame) -> None:
    """Push availability rows (:data:`COLUMNS`) to the online store."""
    if rows.empty:
        return
    ensure_view(store, settings)
    frame = rows.loc[:, list(COLUMNS)].astype({PRODUCT_KEY: "int64", **dict.fromkeys(FLAGS, "int64"),
                                                **dict.fromkeys(CARD, "str")})
    store.write_to_online_store(VIEW, frame)


@dataclass(frozen=True)
class ProductState:
    available: bool
    title: str | None
    handle: str | None


def lookup(store: FeatureStore, product_ids: list[int]) -> dict[int, ProductState]:
    """What the online store knows of each of ``product_ids``: products without a row are left out."""
    if not product_ids or VIEW not in {v.name for v in store.list_feature_views()}:
        return {}  # no product webhook yet: nothing is known to be unavailable
    found = store.get_online_features(features=[f"{VIEW}:{name}" for name in ("published", "in_stock", *CARD)],
                                      entity_rows=[{PRODUCT_KEY: int(p)} for p in product_ids]).to_dict()
    return {int(p): ProductState(published != 0 and stocked != 0, title or None, handle or None)
            for p, published, stocked, title, handle in zip(found[PRODUCT_KEY], found["published"], found["in_stock"],
                                                            found["title"], found["handle"])
            if published is not None}


def unavailable(store: FeatureStore, product_ids: list[int]) -> set[int]:
    """The products among ``product_ids`` that are unpublished or out of stock per the online store."""
    return {p for p, state in lookup(store, product_ids).items() if not state.available}
