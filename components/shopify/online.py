"""Feast online store rows of the customer entity: write through Feast, erase per backend.

Feast has no API to delete an entity's online rows, so erasure goes to the backend Feast configured:
SQLite rows by their serialized entity key (then VACUUM, so nothing stays in free pages), Redis keys
by Feast's own key function.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from storeflow.components.features.repo import CUSTOMER_KEY, CUSTOMER_VIEW, VELOCITY_VIEWS

# the join keys of rows about a customer: the customer, and order risk's velocity by email digest and address (whose
# lists hold the customer ids that ordered there)
PERSONAL_KEYS = (CUSTOMER_KEY, *sorted(set(VELOCITY_VIEWS.values()) - {CUSTOMER_KEY}))


def _entity_key(join_key: str, value):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value(int64_val=int(value)) if join_key == CUSTOMER_KEY else Value(string_val=str(value))
    return EntityKey(join_keys=[join_key], entity_values=[value])


def _sqlite(store) -> sqlite3.Connection:
    path = Path(store.config.online_store.path)
    if not path.is_absolute():
        path = Path(store.repo_path) / path
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _tables(store, conn: sqlite3.Connection) -> list[str]:
    prefix = f"{store.project}_"
    return [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if name.startswith(prefix)]


def erase_customers(store, customer_ids: Iterable[int]) -> int:
    """Delete the customers' rows from every feature view of the online store; returns rows deleted."""
    return erase_keys(store, [(CUSTOMER_KEY, int(c)) for c in customer_ids])


def erase_keys(store, entity_keys: Iterable[tuple[str, object]]) -> int:
    """Delete the rows of these entity keys (join key, value) from every feature view; returns rows deleted."""
    from feast.infra.key_encoding_utils import serialize_entity_key

    wanted = [_entity_key(join, value) for join, value in entity_keys]
    if not wanted:
        return 0
    version = store.config.entity_key_serialization_version
    if store.config.online_store.type == "redis":
        from feast.infra.online_stores.helpers import _redis_key

        provider = store._get_provider()
        client = provider.online_store._get_client(store.config.online_store)
        return int(client.delete(*[_redis_key(store.project, key, version) for key in wanted]))
    keys = [serialize_entity_key(key, version) for key in wanted]
    conn = _sqlite(store)
    try:
        deleted = 0
        with conn:
            for table in _tables(store, conn):
                deleted += sum(conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (key,)).rowcount
                               for key in keys)
        conn.execute("VACUUM")
        return deleted
    finally:
        conn.close()


def erase_all(store) -> int:
    """Empty every feature view table of this project (shop/redact)."""
    if store.config.online_store.type == "redis":
        from feast.infra.key_encoding_utils import serialize_entity_key_prefix

        provider = store._get_provider()
        client = provider.online_store._get_client(store.config.online_store)
        keys = [key for join in PERSONAL_KEYS for key in client.scan_iter(serialize_entity_key_prefix([join]) + b"*")]
        return int(client.delete(*keys)) if keys else 0
    conn = _sqlite(store)
    try:
        with conn:
            deleted = sum(conn.execute(f'DELETE FROM "{table}"').rowcount for table in _tables(store, conn))
        conn.execute("VACUUM")
        return deleted
    finally:
        conn.close()


def forget(store, customer_ids: Iterable[int]) -> int:
    """Drop the customer feature view's rows of these customers, and nothing else of theirs (in Redis order risk's
    history ledger sits in the same key); returns rows dropped. For customers with no features any more (their
    last order moved to another customer): nothing written left their old row, counting orders they no longer
    had, and Feast writes no row of nulls (it refuses an all-null frame) nor deletes one entity's row in one view,
    so this goes to the backend, by Feast's own table and field names."""
    keys = [_entity_key(CUSTOMER_KEY, c) for c in customer_ids]
    if not keys:
        return 0
    view = store.get_feature_view(CUSTOMER_VIEW)
    version = store.config.entity_key_serialization_version
    versioned = store.config.registry.enable_online_feature_view_versioning
    if store.config.online_store.type == "redis":
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.infra.online_stores.redis import _versioned_fv_name

        name = _versioned_fv_name(view, store.config)
        fields = [_mmh3(f"{name}:{feature.name}") for feature in view.features] + [f"_ts:{name}".encode()]
        client = store._get_provider().online_store._get_client(store.config.online_store)
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hdel(_redis_key(store.project, key, version), *fields)
            return sum(1 for removed in pipe.execute() if removed)
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.sqlite import _table_id

    table = _table_id(store.project, view, versioned)
    conn = _sqlite(store)
    try:
        with conn:
            return sum(conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ?',
                                    (serialize_entity_key(key, version),)).rowcount > 0 for key in keys)
    finally:
        conn.close()


def write(store, frame) -> None:
    """Customer feature rows (as ``compute.customer_features`` makes them) into the online store."""
    if len(frame):
        store.write_to_online_store(CUSTOMER_VIEW, frame)
