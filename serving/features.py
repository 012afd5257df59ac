"""Customer feature rows from the Feast online store, for the transformer.

Lookups are coalesced: the misses of all requests waiting at the same moment go to the online store as
one read, never from a thread: at 50,000 customers a worker spent ~15 % of its time waking and switching
to the Feast and model threads (``ThreadPoolExecutor.submit`` and the GIL hand-off back), and a woken
thread waits up to the interpreter's 5 ms switch interval for the GIL while the loop is busy. A store
that reads asynchronously (Feast's Redis store, ``online_read_async``) is read without blocking the
event loop, one read in flight: the misses that arrive meanwhile go together in the next. A blocking
Redis read stalled the loop for the round trip (the ``send`` wakes Redis, which on a busy host takes
the CPU), ~20 % of a worker's time at 50,000 customers; and with the caches answering most requests the
few misses went one or two to a read, so the stalls multiplied, which is how the caches made p99 worse
than no cache. SQLite is read on the loop (local pages, nobody to wait for).

The read is the configured Feast online store's own ``online_read`` (or ``online_read_async``), the call ``get_online_features`` makes: its request planning and
response building around it cost more than the read itself (~55 vs ~30 us per customer on SQLite), and
for one feature view read by entity key they decide nothing (Feast 0.67 applies no TTL online either).
Rows are kept in memory for at most ``serving.feature_cache_seconds`` (``serving.feature_cache_rows``
of them at most, least recently used evicted first, one at a time) while the cache's hit rate says it helps (see
:mod:`storeflow.serving.caching`: it switches itself off when traffic does not repeat, e.g. a large
store drawn uniformly), and dropped as soon as Feast records a new
materialization of the customer view (checked every ``serving.feature_refresh_seconds``), so a
``feast materialize`` is visible within seconds whatever the online store (SQLite or Redis).

An erasure (customers/redact, shop/redact) bumps the erasure epoch (:mod:`storeflow.components.erasure`).
The reader maps the epoch file and compares it on every lookup, a memory read and no system call, so
the first lookup after an erasure on this host already misses the cache and reads the erased store;
on a volume shared across hosts, where a mapping may not see another host's write, the watcher also
reads the file every ``serving.feature_refresh_seconds``. A read that was under way when the epoch
moved answers its requests but caches nothing.

Unknown customers (never materialized, e.g. a first-time buyer) get :data:`FALLBACK` - the features
of a customer with no order history - and ``fallback: true`` in the response instead of an error.
A known customer with some features missing gets the fallback value for those and the flag too.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from storeflow.components.erasure import EpochView, read_epoch
from storeflow.components.features.compute import RECENT_WINDOW_DAYS
from storeflow.components.features.repo import CUSTOMER_KEY, CUSTOMER_VIEW, feature_store
from storeflow.components.shopify.layout import erasure_epoch
from storeflow.serving.caching import Bounded, CacheUse

if TYPE_CHECKING:
    from storeflow.components.config import Settings

MAX_CUSTOMER_ID = 2**63 - 1
READ_BATCH = 128  # customers per online store read at most (one read blocks the event loop)
_GID = re.compile(r"^(?:gid://shopify/Customer/)?([0-9]{1,19})$")

# A customer with no order history: nothing bought, nothing refunded, first seen now.
FALLBACK: dict[str, float] = {
    "recency_days": 0.0,
    "frequency": 0.0,
    "monetary": 0.0,
    "avg_order_value": 0.0,
    "refund_rate": 0.0,
    "days_since_first_order": 0.0,
    "category_affinity": 0.0,
    "orders_last_90d": 0.0,
    "discount_share": 0.0,
    **{f"orders_{d}d": 0.0 for d in RECENT_WINDOW_DAYS if d != 90},  # 90 days: orders_last_90d
    **{f"spend_{d}d": 0.0 for d in RECENT_WINDOW_DAYS},
    "order_trend": 0.0,
    "inter_purchase_days_mean": 0.0,
    "inter_purchase_days_std": 0.0,
    "recency_over_gap": 0.0,
    # BG/NBD: a customer with no repeat purchase is alive; nothing seen, nothing expected yet
    "btyd_p_alive": 1.0,
    "btyd_expected_purchases": 0.0,
    "btyd_p_order": 0.0,  # consistent with no expected purchases (the server's default for a column unnamed here)
}


def _settle(batch: dict[int, asyncio.Future], rows: dict | None = None, error: Exception | None = None) -> None:
    for cid, future in batch.items():
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(rows[cid])


def _settle_riders(riders: list[asyncio.Future]) -> None:
    for future in riders:
        if not future.done():
            future.set_result(None)


class BadCustomerId(ValueError):
    pass


def parse_customer_id(value: object) -> int:
    """``gid://shopify/Customer/123``, ``"123"`` or ``123`` → 123; anything else raises BadCustomerId."""
    if isinstance(value, bool):
        raise BadCustomerId(f"customer_id must be a Shopify customer gid or number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        match = _GID.match(text.strip())
        if not match:
            raise BadCustomerId(f"customer_id must look like gid://shopify/Customer/123 or 123, got {text[:80]!r}")
        number = int(match.group(1))
    else:
        raise BadCustomerId(f"customer_id must be a Shopify customer gid or number, got {type(value).__name__}")
    if not 0 < number <= MAX_CUSTOMER_ID:
        raise BadCustomerId(f"customer_id {number} is out of range")
    return number


class OnlineFeatures:
    """Cached, coalescing reader of the customer feature view."""

    def __init__(self, settings: Settings, store=None):
        self.columns = list(settings.features.customer_features)
        self.project = settings.features.feast.project
        self.ttl = settings.serving.feature_cache_seconds
        self.max_rows = settings.serving.feature_cache_rows
        self.refresh_every = settings.serving.feature_refresh_seconds
        self.fallback = np.array([FALLBACK.get(c, 0.0) for c in self.columns], dtype=np.float64)
        # Registry reads of the watcher (they parse the whole registry) stay off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast")
        self.store = store if store is not None else feature_store(settings)
        self._online = None  # the configured online store, opened on first read
        self._sqlite_query: str | None = None  # see _lean_sqlite_query; "" once known not to apply
        self._view = None  # the customer FeatureView, re-read when Feast records a new materialization
        # customer id -> one float64 array: the row, then 1.0 if the fallback filled it, then when it expires.
        # An ndarray is no object the garbage collector tracks (a tuple of them was: every cached row
        # counted towards the next collection, so a filling cache ran the collector every ~700 misses).
        self._cache = Bounded(self.max_rows)
        self.use = CacheUse("features", self.max_rows, horizon_s=self.ttl)
        self._waiting: dict[int, asyncio.Future] = {}
        self._flush_scheduled = False
        self._reading: asyncio.Task | None = None  # the online store read in flight (async stores)
        self._riders: list[asyncio.Future] = []  # lookups the cache answered whole, waiting for the next read
        self._online_async = None  # (event loop, online store object) for async reads
        self._marker = self._materialized_marker()
        self._epoch_path = erasure_epoch(settings)
        self._epoch_view = self._map_epoch()
        self._epoch = self._current_epoch()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="feast-watch")
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _map_epoch(self) -> EpochView | None:
        try:
            return EpochView(self._epoch_path)
        except OSError:  # a read-only state volume: the watcher's reads still see erasures
            return None

    def _current_epoch(self) -> int:
        return self._epoch_view.value() if self._epoch_view is not None else read_epoch(self._epoch_path)

    def _forget_if_erased(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch = epoch
            self._cache.clear()

    async def rows(self, customer_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix (rows in ``customer_ids`` order, columns as configured) and a fallback mask."""
        if self._epoch_view is not None:
            self._forget_if_erased(self._epoch_view.value())
        found: dict[int, tuple[np.ndarray, bool]] = {}
        missing = customer_ids
        if self.ttl:
            now = time.monotonic()
            if self.use.observe(customer_ids, now):
                cache, missing = self._cache, []
                for cid in customer_ids:
                    hit = cache.get(cid)
                    if hit is not None and now < hit[-1]:
                        found[cid] = hit[:-2], hit[-2] != 0.0
                    else:
                        missing.append(cid)
                self.use.count(len(customer_ids) - len(missing), len(customer_ids), len(cache))
            else:  # off: nothing stale kept for when it is on again, its memory back a few entries a lookup
                self._cache.clear()
                self._cache.drain()
        if not missing and self.ttl:  # answered by the cache: it waits for the next read's customers (_ride)
            await self._ride()
        elif len(missing) == 1:  # one customer (a storefront's request): its read awaited, no gather around it
            found[missing[0]] = await self._request(missing[0])
        elif missing:
            unique = list(dict.fromkeys(missing))
            for cid, result in zip(unique, await asyncio.gather(*[self._request(cid) for cid in unique])):
                found[cid] = result
        if len(customer_ids) == 1:
            row, fallback = found[customer_ids[0]]
            return row.reshape(1, -1).copy(), np.array([fallback], dtype=bool)  # a copy, never the cached array
        matrix = np.vstack([found[c][0] for c in customer_ids])
        return matrix, np.array([found[c][1] for c in customer_ids], dtype=bool)

    def _request(self, cid: int) -> asyncio.Future:
        future = self._waiting.get(cid)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._waiting[cid] = loop.create_future()
            self._schedule_flush(loop)
        return future

    def _ride(self) -> asyncio.Future:
        """For a lookup the cache answered whole: a future settled (None) when the customers that missed
        meanwhile have their rows, so it is answered with them, not before them.

        Why: answered at once, a hit overtakes the misses of its moment, and every loop iteration a miss
        spans (its read, its model call) holds the complete work of the hits answered meanwhile: the cache
        made the misses' wait, the p99, longer than with no cache (50,000 customers, Redis, skewed, c=32:
        p99 70 ms cached vs 27 ms uncached). Riding, every lookup waits the same number of iterations and
        the cache's saving shortens them all. With nothing to read, the next iteration settles it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._riders.append(future)
        self._schedule_flush(loop)
        return future

    def _schedule_flush(self, loop) -> None:
        if not self._flush_scheduled and not self._reading:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        # What missed meanwhile goes to the online store together, at most READ_BATCH customers a read; the
        # lookups the cache answered meanwhile are settled with that read (or now, when nothing missed).
        self._flush_scheduled = False
        waiting, riders = self._waiting, self._riders
        self._riders = []
        if not waiting:
            _settle_riders(riders)
            return
        if len(waiting) <= READ_BATCH:
            batch, self._waiting = waiting, {}
        else:
            batch = {cid: waiting.pop(cid) for cid in list(waiting)[:READ_BATCH]}
        loop = asyncio.get_running_loop()
        try:
            ids, view, epoch, keys = self._prepare(list(batch))
            if self._async_reads(loop):
                # Sent, not waited for: the loop answers other requests while Redis works, and what
                # misses meanwhile goes in the next read, sent when this one is back (one in flight).
                self._reading = loop.create_task(self._read_async(batch, ids, view, epoch, keys, riders))
                return
            rows = self._rows_from(ids, self._read_sync(view, keys), epoch)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            _settle(batch, error=exc)
        else:
            _settle(batch, rows)
        _settle_riders(riders)
        if self._waiting and not self._flush_scheduled:  # over READ_BATCH: the rest next iteration
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def _read_async(self, batch, ids, view, epoch, keys, riders) -> None:
        try:
            online = self._online_async[1]
            read = await online.online_read_async(self.store.config, view, keys, list(self.columns))
            rows = self._rows_from(ids, [values for _, values in read], epoch)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            _settle(batch, error=exc)
        else:
            _settle(batch, rows)
        finally:
            _settle_riders(riders)
            self._reading = None
            if self._waiting and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _async_reads(self, loop) -> bool:
        """Whether the configured online store reads without blocking (Feast's Redis store does; SQLite
        reads local pages, a blocking call with no one to wait for). Its async client belongs to one event
        loop: another loop (a test's ``asyncio.run``) gets its own store object."""
        if self._sqlite_query or not getattr(getattr(self._online, "async_supported", None), "read", False):
            return False
        if self._online_async is None or self._online_async[0] is not loop:
            from feast.infra.online_stores.helpers import get_online_store_from_config

            self._online_async = (loop, get_online_store_from_config(self.store.config.online_store))
        return True

    def _prepare(self, ids: list[int]):
        """The online store (opened on first use), the customer view, the erasure epoch the read starts
        in and Feast's entity keys for ``ids``."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        if self._online is None:
            from feast.infra.online_stores.helpers import get_online_store_from_config

            self._online = get_online_store_from_config(self.store.config.online_store)
        view = self._view  # the watcher thread may reset it meanwhile
        if view is None:
            view = self._view = self.store.get_feature_view(CUSTOMER_VIEW)
        if self._sqlite_query is None:
            self._sqlite_query = self._lean_sqlite_query(view) or ""
        keys = [EntityKey(join_keys=[CUSTOMER_KEY], entity_values=[Value(int64_val=cid)]) for cid in ids]
        return ids, view, self._epoch, keys

    def _read_sync(self, view, keys) -> list[dict | None]:
        if self._sqlite_query:
            return self._sqlite_read(keys)
        # A copy: Feast's Redis store appends its timestamp key to the list it is given.
        return [values for _, values in self._online.online_read(self.store.config, view, keys, list(self.columns))]

    def _rows_from(self, ids: list[int], read: list[dict | None], epoch: int) -> dict[int, tuple[np.ndarray, bool]]:
        now = time.monotonic()
        out = {}
        for cid, values in zip(ids, read):
            row, missing = self.fallback.copy(), False
            for j, column in enumerate(self.columns):
                value = values.get(column) if values else None
                kind = value.WhichOneof("val") if value is not None else None
                if kind is None or kind == "null_val":
                    missing = True
                else:
                    row[j] = float(getattr(value, kind))
            out[cid] = row, missing
        # Cached only while the cache is on, and when no erasure happened since the read began.
        if self.ttl and self.use.enabled and epoch == self._epoch == self._current_epoch():
            for cid, (row, missing) in out.items():
                # Each row lives 75-100 % of the TTL (by id): rows read together do not all expire
                # together, which would send every customer of a busy minute to the store at once.
                life = self.ttl * (0.75 + 0.25 * ((cid * 2654435761) % 1024) / 1024)
                entry = np.empty(len(row) + 2)
                entry[:-2], entry[-2], entry[-1] = row, 1.0 if missing else 0.0, now + life
                self._cache.put(cid, entry)
        return out

    def _lean_sqlite_query(self, view) -> str | None:
        """For Feast's SQLite online store: ``online_read``'s query on the same table, without the
        ``event_ts`` column (sqlite3 parses it into a datetime for each of a customer's ~27 rows, half
        the read's time at 50,000 customers, and nothing here uses it); None for any other store."""
        try:
            from feast.infra.online_stores import sqlite

            if type(self._online) is not sqlite.SqliteOnlineStore:
                return None
            config = self.store.config
            table = sqlite._table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
            return f"SELECT entity_key, feature_name, value FROM {sqlite._quote_id(table)} WHERE entity_key IN "
        except (ImportError, AttributeError):  # another Feast: its own online_read
            return None

    def _sqlite_read(self, keys) -> list[dict | None]:
        """What ``SqliteOnlineStore.online_read`` returns for ``keys``, without timestamps (see above)."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.Value_pb2 import Value

        config = self.store.config
        serialized = [serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)
                      for key in keys]
        conn = self._online._get_conn(config)
        found: dict[bytes, dict] = {}
        wanted = set(self.columns)
        for key, name, blob in conn.execute(self._sqlite_query + f"({','.join('?' * len(serialized))})", serialized):
            if name in wanted:
                value = Value()
                value.ParseFromString(blob)
                found.setdefault(key, {})[name] = value
        return [found.get(key) for key in serialized]

    def _materialized_marker(self):
        try:
            view = self.store.registry.get_feature_view(CUSTOMER_VIEW, self.project, allow_cache=False)
        except Exception:  # noqa: BLE001 - a missing view just means nothing is materialized yet
            return None
        intervals = view.materialization_intervals
        return (len(intervals), intervals[-1]) if intervals else None

    def _registry_stamp(self):
        """mtime of a file registry (cheap); None for SQL/remote registries, which are always re-read."""
        try:
            path = self.store.config.registry.path
        except AttributeError:
            return None
        if not isinstance(path, str) or "://" in path:
            return None
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    def _watch(self) -> None:
        # Re-reading the registry parses all of it (holding the GIL); skip that while the file is unchanged.
        stamp = self._registry_stamp()
        while not self._stop.wait(self.refresh_every):
            self._forget_if_erased(read_epoch(self._epoch_path))
            current = self._registry_stamp()
            if current is not None and current == stamp:
                continue
            stamp = current
            try:
                marker = self._executor.submit(self._materialized_marker).result()
            except Exception:  # noqa: BLE001 - executor shut down, or registry briefly unreadable
                continue
            if marker != self._marker:
                self._marker = marker
                self._view = self._sqlite_query = None  # a re-apply may have changed them
                self._cache.clear()
