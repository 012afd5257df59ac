"""The storeflow Feast repo: entities, sources, feature views and the feature service, from config.

The repo is a real Feast repo on disk (``feature_store.yaml`` and a static definitions module beside the
data), so the ``feast`` CLI (``feast plan`` says nothing would change) and a Feast feature server work
against it too. Embedded defaults: DuckDB offline store, SQLite online
store, file registry. Production: set ``features.feast.online_store: redis`` (and ``registry`` to a SQL
URL or object-store path); nothing else changes.

Passwords stay ``${VAR}`` references in feature_store.yaml (Feast expands them from the environment when
it loads the file), and the file is private to its owner all the same.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

from storeflow.components.config import Settings
from storeflow.components.secrets import require

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
# The recommender's views of the product (recommend.catalog, recommend.availability): declared here with the
# others, so the repo's definitions module (what `feast plan` / `feast apply` read) lists every view.
CATALOG_VIEW = "product_catalog"
CATALOG_FEATURES = ("category", "price", "price_band")
AVAILABILITY_VIEW = "product_availability"
AVAILABILITY_FLAGS = ("published", "in_stock", "inventory")
AVAILABILITY_CARD = ("title", "handle")  # what a storefront block shows and links (/products/<handle>)
PRODUCT_TTL = timedelta(days=3650)  # a product keeps what it was last said to be until told otherwise
INTEGER_FEATURES = frozenset({"frequency", "orders_last_90d"})
FILE_REGISTRY_SCHEMES = frozenset({"", "file", "s3", "gs", "hdfs"})  # Feast's file registry stores
# Order velocity (risk.velocity): per email digest and shipping address, the orders of the last week as lists, pushed
# by the webhook receiver's risk thread (a PushSource per view; its batch source is never written: the snapshot is the
# offline history, folded by the same function). The customer's view holds what scorers before 2026-12-06 wrote (a
# customer's velocity is now counted from their history ledger); it stays registered for them and for erasure.
VELOCITY_VIEWS = {"order_velocity_customer": CUSTOMER_KEY, "order_velocity_email": "email_digest",
                  "order_velocity_address": "address_key"}
VELOCITY_STATE = "orders"  # one Array(Int64): (order id, created µs, customer id or 0) per order, flattened
VELOCITY_TTL = timedelta(days=8)  # a list holds one week: a row not written for longer counts nothing
# A customer's order history (risk.history): every order, refund, fraud cancellation and the account's creation, as
# (kind, id, time in µs, amount in millionths) flattened, pushed by the risk thread as webhooks arrive, seeded from the
# snapshot. An order's prior orders, spend, refunds and fraud cancels are counted from it strictly before the order.
HISTORY_VIEW = "customer_order_history"
HISTORY_STATE = "events"
RISK_VIEWS = {**VELOCITY_VIEWS, HISTORY_VIEW: CUSTOMER_KEY}  # what the risk thread reads and pushes


def source_path(settings: Settings, view: str) -> Path:
    return settings.feature_repo_dir / "data" / f"{view}.parquet"


def btyd_model_path(settings: Settings) -> Path:
    """The BG/NBD model the features stage fitted (features.btyd.save), beside the sources it fed."""
    return settings.feature_repo_dir / "data" / "btyd_bgnbd.nc"


def store_config(settings: Settings) -> dict:
    """The feature_store.yaml content for these settings: passwords as the ``${VAR}`` the settings hold."""
    feast_cfg = settings.features.feast
    repo = settings.feature_repo_dir
    if feast_cfg.online_store == "redis":
        # the timeouts first: Feast takes a key's last value, so one the connection string gives wins
        timeout = feast_cfg.redis_timeout_seconds
        online = {"type": "redis", "connection_string": f"socket_timeout={timeout},socket_connect_timeout={timeout},"
                                                        f"{feast_cfg.redis_connection_string}"}
    else:
        online = {"type": "sqlite", "path": str(repo / "data" / "online.db")}
    return {
        "project": feast_cfg.project,
        "provider": "local",
        "registry": registry_config(feast_cfg.registry or str(repo / "data" / "registry.db")),
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "entity_key_serialization_version": 3,
        # Feast otherwise turns every row of the view into value protos at once: 500,000 customers x 23
        # features peaked at 9.2 GB in the 100x store's materialization.
        "materialization": {"online_write_batch_size": feast_cfg.online_write_batch_size},
    }


def registry_config(registry: str) -> dict:
    """A path or object-store URL is a file registry; a database URL (``postgresql://…``) a SQL registry.

    The scheme is read through the environment, as Feast will (``${FEAST_REGISTRY_URL}`` on a cluster); the
    value written keeps its references.

    ``serve_features_while_materializing``: Feast 0.67 marks a view MATERIALIZING in the registry for the
    length of a materialization and refuses to serve it meanwhile, historical retrieval included. A
    features task killed mid-materialization (out of memory, a preempted node) then left the view
    unservable for every later run, and its retry failed with "cannot serve features"; a live store's
    readers would stop for the minutes a large store's materialization takes (feast-dev/feast#6780). The
    rows already in the stores are the last good ones: they keep serving.
    """
    scheme = urlsplit(os.path.expandvars(registry)).scheme
    kind = "file" if scheme in FILE_REGISTRY_SCHEMES or len(scheme) == 1 else "sql"  # one letter: a Windows drive
    return {"registry_type": kind, "path": registry, "serve_features_while_materializing": True}


def connection_settings(settings: Settings) -> list[tuple[str, str]]:
    """The connection settings feature_store.yaml uses, as (dotted key, value)."""
    feast_cfg = settings.features.feast
    used = [("features.feast.registry", feast_cfg.registry)]
    if feast_cfg.online_store == "redis":
        used.append(("features.feast.redis_connection_string", feast_cfg.redis_connection_string))
    return [(key, value) for key, value in used if value]


def definitions(settings: Settings) -> tuple[list, list[FeatureView], FeatureService]:
    """Entities, feature views and the model's feature service."""
    return definitions_of(settings.feature_repo_dir, list(settings.features.customer_features),
                          settings.features.feast.ttl_days)


def definitions_of(repo: Path, customer_features: list[str], ttl_days: int) -> tuple[list, list[FeatureView], FeatureService]:
    """The definitions of the repo at ``repo``: what :func:`apply` registers and what the repo's own
    definitions module (:data:`DEFINITIONS_MODULE`) gives ``feast plan`` / ``feast apply``."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Array, Float64, Int64, String

    ttl = timedelta(days=ttl_days)
    customer = Entity(name=CUSTOMER, join_keys=[CUSTOMER_KEY], value_type=ValueType.INT64,
                      description="A Shopify customer (numeric id of gid://shopify/Customer/N).")
    product = Entity(name=PRODUCT, join_keys=[PRODUCT_KEY], value_type=ValueType.INT64,
                     description="A Shopify product (numeric id of gid://shopify/Product/N).")
    customer_view = FeatureView(
        name=CUSTOMER_VIEW,
        entities=[customer],
        ttl=ttl,
        schema=[Field(name=CUSTOMER_KEY, dtype=Int64)]
        + [Field(name=name, dtype=Int64 if name in INTEGER_FEATURES else Float64) for name in customer_features],
        source=FileSource(name=f"{CUSTOMER_VIEW}_source", path=str(repo / "data" / f"{CUSTOMER_VIEW}.parquet"),
                          timestamp_field="event_timestamp"),
        online=True,
        description="Recency, frequency, monetary value and habits, as of each snapshot.",
    )
    product_view = FeatureView(
        name=PRODUCT_VIEW,
        entities=[product],
        ttl=ttl,
        schema=[Field(name=PRODUCT_KEY, dtype=Int64)] + [Field(name=n, dtype=Float64) for n in PRODUCT_FEATURES],
        source=FileSource(name=f"{PRODUCT_VIEW}_source", path=str(repo / "data" / f"{PRODUCT_VIEW}.parquet"),
                          timestamp_field="event_timestamp"),
        online=True,
        description="Sales velocity over the 7 and 30 days before each snapshot.",
    )
    catalog_view = FeatureView(
        name=CATALOG_VIEW, entities=[product], ttl=PRODUCT_TTL,
        schema=[Field(name=PRODUCT_KEY, dtype=Int64), Field(name="category", dtype=String),
                Field(name="price", dtype=Float64), Field(name="price_band", dtype=Int64)],
        source=FileSource(name=f"{CATALOG_VIEW}_source", path=str(repo / "data" / f"{CATALOG_VIEW}.parquet"),
                          timestamp_field="event_timestamp"),
        online=True, description="Category (product type, else vendor), median price paid and its tercile "
                                 "within the category, as of each snapshot.")
    availability_view = FeatureView(
        name=AVAILABILITY_VIEW, entities=[product], ttl=PRODUCT_TTL,
        schema=[Field(name=PRODUCT_KEY, dtype=Int64), *(Field(name=name, dtype=Int64) for name in AVAILABILITY_FLAGS),
                *(Field(name=name, dtype=String) for name in AVAILABILITY_CARD)],
        source=FileSource(name=f"{AVAILABILITY_VIEW}_source",
                          path=str(repo / "data" / f"{AVAILABILITY_VIEW}.parquet"), timestamp_field="event_timestamp"),
        online=True, description="Published (status active) and in stock, from products and inventory webhooks.")
    email = Entity(name="email_digest", join_keys=["email_digest"], value_type=ValueType.STRING,
                   description="An order's email, trimmed and lower case, as a SHA-256 digest (risk.velocity).")
    address = Entity(name="shipping_address", join_keys=["address_key"], value_type=ValueType.STRING,
                     description="A shipping address: digest of address1, zip and country (risk.orders.address_key).")
    velocity_entities = {CUSTOMER_KEY: customer, "email_digest": email, "address_key": address}
    velocity_views = [FeatureView(
        name=name, entities=[velocity_entities[key]], ttl=VELOCITY_TTL,
        schema=[Field(name=key, dtype=Int64 if key == CUSTOMER_KEY else String),
                Field(name=VELOCITY_STATE, dtype=Array(Int64))],
        source=PushSource(name=f"{name}_push", batch_source=FileSource(
            name=f"{name}_source", path=str(repo / "data" / f"{name}.parquet"), timestamp_field="event_timestamp")),
        online=True, description="The week's orders of one key, flattened (order id, creation time in microseconds, "
                                 "customer id or 0 for a guest) per order, pushed as orders/create webhooks arrive "
                                 "(risk.velocity).")
        for name, key in VELOCITY_VIEWS.items()]
    history_view = FeatureView(
        name=HISTORY_VIEW, entities=[customer], ttl=timedelta(0),  # never expires: an account's whole history counts
        schema=[Field(name=CUSTOMER_KEY, dtype=Int64), Field(name=HISTORY_STATE, dtype=Array(Int64))],
        source=PushSource(name=f"{HISTORY_VIEW}_push", batch_source=FileSource(
            name=f"{HISTORY_VIEW}_source", path=str(repo / "data" / f"{HISTORY_VIEW}.parquet"),
            timestamp_field="event_timestamp")),
        online=True, description="A customer's orders, refunds, fraud cancellations and account creation, flattened "
                                 "(kind, id, time in microseconds, amount in millionths) per event, seeded from the "
                                 "snapshot and pushed as order and refund webhooks arrive (risk.history).")
    service = FeatureService(name=SERVICE, features=[customer_view],
                             description="Inputs of the repeat-purchase propensity model.")
    return ([customer, product, email, address],
            [customer_view, product_view, catalog_view, availability_view, *velocity_views, history_view], service)


def view_of(settings: Settings, name: str) -> FeatureView:
    """The feature view ``name`` as :func:`definitions` declares it."""
    _, views, _ = definitions(settings)
    return next(view for view in views if view.name == name)


DEFINITIONS_FILE = "storeflow_definitions.py"
DEFINITIONS_SPEC = "storeflow_definitions.json"
# The repo's static definitions module, as in Feast's own templates: `feast plan` / `feast apply` in the
# repo import it and see exactly what storeflow applies (without it `feast plan` would delete them all).
DEFINITIONS_MODULE = '''"""Feast definitions of this storeflow feature repo, for `feast plan` and `feast apply` here.

Written by storeflow beside feature_store.yaml; the feature list and TTL it was built with are in
storeflow_definitions.json. The same function builds what the features stage applies.
"""

import json
from pathlib import Path

from storeflow.components.features.repo import definitions_of

_repo = Path(__file__).resolve().parent
_spec = json.loads((_repo / "storeflow_definitions.json").read_text())
_entities, _views, repeat_purchase = definitions_of(_repo, _spec["customer_features"], _spec["ttl_days"])
# every entity and view a module attribute: where feast looks
globals().update({entity.name: entity for entity in _entities} | {view.name: view for view in _views})
'''


def feature_refs(settings: Settings) -> list[str]:
    return [f"{CUSTOMER_VIEW}:{name}" for name in settings.features.customer_features]


def feature_store(settings: Settings) -> FeatureStore:
    """Open the repo, writing feature_store.yaml when it is missing or differs from the settings.

    A variable the settings refer to must be set here: Feast would keep an unset ``${VAR}`` as text.
    """
    from feast import FeatureStore

    _forget_feasts_import_stack()
    require(connection_settings(settings))
    repo = settings.feature_repo_dir
    config_file = repo / "feature_store.yaml"
    if config_file.exists() and not writable(repo):
        # A mounted repo (the transformer's storeflow-feast ConfigMap) is the operator's: read, never rewritten.
        return FeatureStore(repo_path=str(repo))
    (repo / "data").mkdir(parents=True, exist_ok=True)
    wanted = yaml.safe_dump(store_config(settings), sort_keys=False)
    if not config_file.exists() or config_file.read_text() != wanted or config_file.stat().st_mode & 0o077:
        _write_private(config_file, wanted)
    spec = json.dumps({"customer_features": list(settings.features.customer_features),
                       "ttl_days": settings.features.feast.ttl_days}, indent=2) + "\n"
    for name, text in ((DEFINITIONS_SPEC, spec), (DEFINITIONS_FILE, DEFINITIONS_MODULE)):
        if not (repo / name).exists() or (repo / name).read_text() != text:
            _write_private(repo / name, text)
    return FeatureStore(repo_path=str(repo))


def _forget_feasts_import_stack() -> None:
    """Feast keeps the error of its attempt to import torch (``feast.torch_wrapper``; torch is not installed here)
    for a message, and with the error's traceback every frame that was on the stack when feast was first imported,
    each holding its locals for the life of the process. The risk scorer imports feast first while it builds its
    history, so a history it rebuilt from a newer snapshot stayed alive beside the new one (~770 MB at 500,000
    customers, in a 2 GiB pod). The message stays; the frames go."""
    from feast import torch_wrapper

    error, seen = getattr(torch_wrapper, "_torch_import_error", None), set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def writable(directory: Path) -> bool:
    """False on a read-only mount (a ConfigMap volume) or a directory this user may not write."""
    try:
        return os.access(directory, os.W_OK) and not os.statvfs(directory).f_flag & os.ST_RDONLY
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` at once (readers never see half a file) with an owner-only (0600) file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply(settings: Settings) -> FeatureStore:
    """Register entities, views and the service (idempotent, like ``feast apply``)."""
    store = feature_store(settings)
    entities, views, service = definitions(settings)
    store.apply([*entities, *views, service])
    return store
