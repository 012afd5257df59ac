"""Rows of one flattened Array(Int64) feature in Feast's online store, read and written through the configured
store's own ``online_read`` / ``online_write_batch`` (SQLite locally, Redis in production).

Order risk keeps its per-key state this way: velocity's week of orders per customer, email and address
(:mod:`storeflow.components.risk.velocity`) and each customer's history (:mod:`storeflow.components.risk.history`).
``get_online_features`` and ``push`` rebuild every feature view from the registry's protos and the rows through
pandas and Arrow on each call, ~0.5 ms per order of a 1,000-order batch, more than the rest of the risk thread's
work per order; the rows written here are what ``push`` to the views' PushSource writes (same entity keys, value
types and event times), with the views looked up in the registry once.

Each list has one writer, the risk scorer (the webhooks Deployment runs one replica, replaced with ``Recreate``), and
every write moves its row's event time on (:func:`next_write_us`). Feast's Redis store reads every row's stored event
time before writing it, to keep an older write from replacing a newer one; that read cannot catch anything here, and
was a quarter of a write's cost, so the lists are written with the store's own ``skip_dedup`` set (for these lists
only: the materialized customer views keep the check).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import TYPE_CHECKING

from storeflow.components.features.repo import CUSTOMER_KEY

if TYPE_CHECKING:
    from feast import FeatureStore

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def next_write_us(last_written_us: int, newest_us: int) -> int:
    """The event time (µs) of a row's next write: later than its last one's (Redis's online store keeps a row only
    when its event time is newer than the stored one's) and no earlier than the row's newest entry."""
    return max(last_written_us + 1, newest_us)


def _one_writer(config):
    """``config`` with Redis's timestamp read before each write off (``skip_dedup``); other stores as they are."""
    online = config.online_store
    if getattr(online, "type", None) != "redis":
        return config
    lists = config.model_copy()
    lists.online_config = online.model_copy(update={"skip_dedup": True})
    lists._online_store = None  # built again from online_config on first use
    return lists


class OnlineLists:
    """One Array(Int64) feature (``field``) of each of ``views`` (view name -> join key), by key."""

    def __init__(self, store: FeatureStore, views: dict[str, str], field: str):
        from feast.infra.online_stores.helpers import get_online_store_from_config

        self.store = store
        self.field = field
        self.join_keys = dict(views)
        self.config = _one_writer(store.config)
        self.online = get_online_store_from_config(self.config.online_store)
        self.views = {view: store.get_feature_view(view) for view in views}
        self._protos: dict[str, dict] = {}  # view -> its last read's entity keys, reused by the write that follows

    def read(self, view: str, keys: Sequence) -> dict:
        """key -> (its last write's event time in µs since the epoch, its flat list) for the keys that have a row."""
        protos = [self._entity_key(view, k) for k in keys]
        self._protos[view] = dict(zip(keys, protos))
        if not keys:
            return {}
        out = {}
        for key, (written, values) in zip(keys, self.online.online_read(self.config, self.views[view], protos,
                                                                          [self.field])):
            if values and self.field in values and values[self.field].HasField("int64_list_val"):
                written = written if written.tzinfo else written.replace(tzinfo=timezone.utc)
                out[key] = ((written - EPOCH) // timedelta(microseconds=1), values[self.field].int64_list_val.val)
        return out

    def write(self, view: str, rows: Iterable[tuple[object, list[int], int]]) -> None:
        """(key, flat list, event time in µs) rows of one view, in one batch. Redis keeps a row only when its event
        time is later than the stored one's: callers move it on with each write."""
        _, Value, Int64List = _protos()
        known = self._protos.get(view, {})
        batch = [(known.get(key) or self._entity_key(view, key),
                  {self.field: Value(int64_list_val=Int64List(val=flat))}, EPOCH + timedelta(microseconds=written),
                  None) for key, flat, written in rows]
        if batch:
            self.online.online_write_batch(self.config, self.views[view], batch, None)

    def _entity_key(self, view: str, key):
        EntityKey, Value, _ = _protos()
        join = self.join_keys[view]
        value = Value(int64_val=int(key)) if join == CUSTOMER_KEY else Value(string_val=str(key))
        return EntityKey(join_keys=[join], entity_values=[value])


@cache
def _protos():
    """Feast's EntityKey, Value and Int64List messages, imported on first use (an import statement in the
    per-key helper cost as much as building the key: 2.7 -> 1.3 us a key)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Int64List, Value

    return EntityKey, Value, Int64List
