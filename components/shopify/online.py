"""Feast online store rows of the customer entity: write through Feast, erase per backend.

Feast has no API to delete an entity's online rows, so erasure goes to the backend Feast configured:
SQLite rows by their serialized entity key (then VACUUM, so nothing stays in free pages), Redis keys
by Feast's own key function.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from storeflow.components.features.repo import CUSTOMER_KEY, CUSTOMER_VIEW


def _entity_key(customer_id: int):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[CUSTOMER_KEY], entity_values=[Value(int64_val=int(customer_id))])


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
    from feast.infra.key_encoding_utils import serialize_entity_key

    ids = [int(c) for c in customer_ids]
    if not ids:
        return 0
    version = store.config.entity_key_serialization_version
    if store.config.online_store.type == "redis":
        from feast.infra.online_stores.helpers import _redis_key

        provider = store._get_provider()
        client = provider.online_store._get_client(store.config.online_store)
        return int(client.delete(*[_redis_key(store.project, _entity_key(c), version) for c in ids]))
    keys = [serialize_entity_key(_entity_key(c), version) for c in ids]
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
        prefix = serialize_entity_key_prefix([CUSTOMER_KEY])
        keys = list(client.scan_iter(prefix + b"*"))
        return int(client.delete(*keys)) if keys else 0
    conn = _sqlite(store)
    try:
        with conn:
            deleted = sum(conn.execute(f'DELETE FROM "{table}"').rowcount for table in _tables(store, conn))
        conn.execute("VACUUM")
        return deleted
    finally:
        conn.close()


def write(store, frame) -> None:
    """Customer feature rows (as ``compute.customer_features`` makes them) into the online store."""
    if len(frame):
        store.write_to_online_store(CUSTOMER_VIEW, frame)
