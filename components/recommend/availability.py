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


class OnlineLookup:
    """:func:`lookup` for a server, one call per request: the online store's own ``online_read`` of the view
    (the read ``get_online_features`` makes), without the feature-view listing, request planning and
    response building around it, which cost ~9 ms per request of 40 products on SQLite (5,000-product
    catalog), against the read's own fraction of that. A store without the view (no products webhook yet,
    nothing registered) knows nothing, as :func:`lookup` says."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self._online = None
        self._view = None

    def _view_or_none(self):
        if self._view is None:
            try:
                self._view = self.store.get_feature_view(VIEW)
            except Exception:  # noqa: BLE001 - Feast raises its own not-found errors: nothing registered yet
                return None
        return self._view

    def __call__(self, product_ids: list[int]) -> dict[int, ProductState]:
        view = self._view_or_none() if product_ids else None
        if view is None:
            return {}
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        if self._online is None:
            from feast.infra.online_stores.helpers import get_online_store_from_config

            self._online = get_online_store_from_config(self.store.config.online_store)
        keys = [EntityKey(join_keys=[PRODUCT_KEY], entity_values=[Value(int64_val=int(p))]) for p in product_ids]
        found = {}
        for product, values in zip(product_ids, self._read(view, keys)):
            if not values or _value(values.get("published")) is None:
                continue
            title, handle = _value(values.get("title")), _value(values.get("handle"))
            found[int(product)] = ProductState(_value(values["published"]) != 0 and _value(values.get("in_stock")) != 0,
                                               title or None, handle or None)
        return found

    def _read(self, view, keys) -> list[dict | None]:
        """Feature name -> value proto per key. On Feast's SQLite store its own query without the ``event_ts``
        column (sqlite3 parses each of a product's five rows' timestamp into a datetime, and nothing here
        reads it); any other store through its ``online_read``."""
        from feast.infra.online_stores import sqlite

        wanted = ["published", "in_stock", *CARD]
        if type(self._online) is not sqlite.SqliteOnlineStore:
            return [values for _, values in self._online.online_read(self.store.config, view, keys, wanted)]
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.Value_pb2 import Value

        config = self.store.config
        table = sqlite._quote_id(sqlite._table_id(config.project, view,
                                                  config.registry.enable_online_feature_view_versioning))
        serialized = [serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)
                      for key in keys]
        rows: dict[bytes, dict] = {}
        query = (f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN "
                 f"({','.join('?' * len(serialized))}) AND feature_name IN ({','.join('?' * len(wanted))})")
        for key, name, blob in self._online._get_conn(config).execute(query, [*serialized, *wanted]):
            value = Value()
            value.ParseFromString(blob)
            rows.setdefault(key, {})[name] = value
        return [rows.get(key) for key in serialized]


def _value(proto):
    kind = proto.WhichOneof("val") if proto is not None else None
    return None if kind in (None, "null_val") else getattr(proto, kind)


def unavailable(store: FeatureStore, product_ids: list[int]) -> set[int]:
    """The products among ``product_ids`` that are unpublished or out of stock per the online store."""
    return {p for p, state in lookup(store, product_ids).items() if not state.available}
