"""The storeflow Feast repo: entities, sources, feature views and the feature service, from config.

The repo is a real Feast repo on disk (``feature_store.yaml`` beside the data), so the ``feast`` CLI and
a Feast feature server work against it too. Embedded defaults: DuckDB offline store, SQLite online
store, file registry. Production: set ``features.feast.online_store: redis`` (and ``registry`` to a SQL
URL or object-store path); nothing else changes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from storeflow.components.config import Settings

if TYPE_CHECKING:  # feast costs seconds to import; keep it out of module load
    from feast import FeatureService, FeatureStore, FeatureView

CUSTOMER = "customer"
CUSTOMER_KEY = "customer_id"
PRODUCT = "product"
PRODUCT_KEY = "product_id"
CUSTOMER_VIEW = "customer_features"
PRODUCT_VIEW = "product_sales"
SERVICE = "repeat_purchase"
PRODUCT_FEATURES = ("units_per_day_7d", "units_per_day_30d", "revenue_30d")
INTEGER_FEATURES = frozenset({"frequency", "orders_last_90d"})


def source_path(settings: Settings, view: str) -> Path:
    return settings.feature_repo_dir / "data" / f"{view}.parquet"


def store_config(settings: Settings) -> dict:
    """The feature_store.yaml content for these settings."""
    feast_cfg = settings.features.feast
    repo = settings.feature_repo_dir
    if feast_cfg.online_store == "redis":
        online = {"type": "redis", "connection_string": feast_cfg.redis_connection_string}
    else:
        online = {"type": "sqlite", "path": str(repo / "data" / "online.db")}
    return {
        "project": feast_cfg.project,
        "provider": "local",
        "registry": feast_cfg.registry or str(repo / "data" / "registry.db"),
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
    }


def definitions(settings: Settings) -> tuple[list, list[FeatureView], FeatureService]:
    """Entities, feature views and the model's feature service."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    ttl = timedelta(days=settings.features.feast.ttl_days)
    customer = Entity(name=CUSTOMER, join_keys=[CUSTOMER_KEY], value_type=ValueType.INT64,
                      description="A Shopify customer (numeric id of gid://shopify/Customer/N).")
    product = Entity(name=PRODUCT, join_keys=[PRODUCT_KEY], value_type=ValueType.INT64,
                     description="A Shopify product (numeric id of gid://shopify/Product/N).")
    customer_view = FeatureView(
        name=CUSTOMER_VIEW,
        entities=[customer],
        ttl=ttl,
        schema=[Field(name=CUSTOMER_KEY, dtype=Int64)]
        + [
            Field(name=name, dtype=Int64 if name in INTEGER_FEATURES else Float64)
            for name in settings.features.customer_features
        ],
        source=FileSource(name=f"{CUSTOMER_VIEW}_source", path=str(source_path(settings, CUSTOMER_VIEW)),
                          timestamp_field="event_timestamp"),
        online=True,
        description="Recency, frequency, monetary value and habits, as of each snapshot.",
    )
    product_view = FeatureView(
        name=PRODUCT_VIEW,
        entities=[product],
        ttl=ttl,
        schema=[Field(name=PRODUCT_KEY, dtype=Int64)] + [Field(name=n, dtype=Float64) for n in PRODUCT_FEATURES],
        source=FileSource(name=f"{PRODUCT_VIEW}_source", path=str(source_path(settings, PRODUCT_VIEW)),
                          timestamp_field="event_timestamp"),
        online=True,
        description="Sales velocity over the 7 and 30 days before each snapshot.",
    )
    service = FeatureService(name=SERVICE, features=[customer_view],
                             description="Inputs of the repeat-purchase propensity model.")
    return [customer, product], [customer_view, product_view], service


def feature_refs(settings: Settings) -> list[str]:
    return [f"{CUSTOMER_VIEW}:{name}" for name in settings.features.customer_features]


def feature_store(settings: Settings) -> FeatureStore:
    """Open the repo, writing feature_store.yaml when it is missing or differs from the settings."""
    from feast import FeatureStore

    repo = settings.feature_repo_dir
    (repo / "data").mkdir(parents=True, exist_ok=True)
    config_file = repo / "feature_store.yaml"
    wanted = yaml.safe_dump(store_config(settings), sort_keys=False)
    if not config_file.exists() or config_file.read_text() != wanted:
        config_file.write_text(wanted)
    return FeatureStore(repo_path=str(repo))


def apply(settings: Settings) -> FeatureStore:
    """Register entities, views and the service (idempotent, like ``feast apply``)."""
    store = feature_store(settings)
    entities, views, service = definitions(settings)
    store.apply([*entities, *views, service])
    return store
