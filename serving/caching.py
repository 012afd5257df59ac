"""Caches that pay for themselves: bounded with O(1) eviction, and off by themselves while they would not hit.

Two caches sit on the request path of ``storeflow serve``: customer feature rows
(:class:`storeflow.serving.features.OnlineFeatures`) and scores by exact feature row
(:class:`storeflow.serving.batching.ScoreMemo`). Both help a store whose customers come back within
the cache's horizon and only cost a store whose traffic does not repeat (a large store drawn uniformly):
memory, inserts that never pay back, and objects the garbage collector walks. So each one

* keeps at most ``max_keys`` entries, least recently used first out (:class:`Bounded`, an
  ``OrderedDict``): a hit moves its entry to the end, an insert past the bound evicts exactly one entry
  from the front. Every operation is O(1) and frees at most a few entries: nothing on the request path
  ever drops a large part of the cache at once. (Two generations, dropping the old one whole when the
  young one filled, freed 100,000 feature rows in one go: ~20 ms on the event loop on a quiet core, a
  p99 stall for every request waiting behind it.) Emptying it (off, an erasure, a new materialization)
  swaps in an empty map at once and frees the old entries :data:`DRAIN` at a time on later operations;
* decides from its hit rate whether it is worth consulting (:class:`CacheUse`). The decision uses an
  estimate that does not depend on the cache being on: a fixed 1-in-:data:`SAMPLE` sample of the keys
  (by hash) is remembered, with the time it was last seen, in a small shadow table, and a sampled
  lookup whose key was seen within the cache's horizon counts as a would-be hit. Every
  :data:`WINDOW` sampled lookups, a cache that is off switches on when that estimate is at least
  :data:`ON_HIT_RATE`, and one that is on switches off (emptied, not consulted, not filled) when it
  is below :data:`MIN_HIT_RATE`. The gap keeps a cache whose true hit rate is near a line from
  flapping on the estimate's noise (a window's estimate at a true 20 % has a standard deviation of
  ~2.5 %): with one line, caches near it switched on whenever a window's estimate came out high, and
  those rounds had the cached server's worst p99. The lines are high (30 % on, 20 % off) because a
  cache that hits a fifth of the time did not pay here (see :data:`MIN_HIT_RATE`). The
  shadow costs one modulo per lookup and a dict operation per sampled one.
  A new cache starts off: it is consulted and filled only once a window (~4,000 lookups a worker)
  estimates at least :data:`ON_HIT_RATE`. (Started on, a worker facing traffic that does not repeat, a large store
  drawn uniformly, filled and consulted it for that whole window before switching it off, as
  ``/metrics`` showed at 500,000 customers.)

``/metrics`` shows, per cache (label ``cache``: ``features`` or ``scores``):
``storeflow_cache_lookups_total`` and ``storeflow_cache_hits_total`` (what the cache really answered,
summed over workers: their ratio is the hit rate), and per worker ``storeflow_cache_hit_ratio`` (the
estimate of the last window, the one that decides), ``storeflow_cache_enabled`` (1 or 0) and
``storeflow_cache_entries``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable

from storeflow.serving import metrics

# The lines come from what the caches measured, not from per-operation costs (a miss's lookup and insert,
# ~1-2 us, against a read, ~40-100 us, or a model call saved per hit, would put break-even near 2-5 %):
# - a long-lived worker at 500,000 customers drawn uniformly estimates 16 % (feature cache: its 60 s horizon
#   spans ~90,000 of a worker's lookups at 1,500/s) and 20 % (memo: 100,000 rows), windows' sd ~2 % (this
#   estimator fed such a draw), so with the old 10 % line its caches switched on; the paired bench's 500,000-customer uniform rows had the cached server 5-18 %
#   slower than the uncached one (bench/results/serving.json at 3dbb479);
# - py-spy of both servers' workers in a paired 50,000-customer SQLite uniform run (29 % feature, 52 % score
#   hits): the caches saved 18 % of the reads' time and 25 % of the model calls', and the cached workers
#   were busy ~10 % longer for the same RPS (3,000 vs 2,986) and p99 (19.6 vs 19.3 ms).
# So a cache goes on only where traffic repeats a lot: skewed draws estimate 64-96 % and gained 2-54 % RPS.
MIN_HIT_RATE = 0.20  # on: a window's estimate below this switches it off
ON_HIT_RATE = 0.30  # off: an estimate this high switches it on (the gap: see the module docstring)
SAMPLE = 16  # one key in SAMPLE (by hash) feeds the hit-rate estimate
WINDOW = 256  # sampled lookups per decision (~4,000 lookups)
FLUSH_EVERY = 64  # lookups counted locally before they are added to the Prometheus counters
FLUSH_SECONDS = 0.5
DRAIN = 16  # forgotten entries freed per cache operation (~3 us), see Bounded.clear
MIX = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads structured keys (customer ids) over the sample


class Bounded:
    """A map of at most ``max_keys`` entries, least recently used evicted first, in O(1) per operation
    (see the module docstring)."""

    def __init__(self, max_keys: int):
        self.max_keys = max(1, int(max_keys))
        self._map: OrderedDict = OrderedDict()
        self._retired: list[OrderedDict] = []  # emptied maps whose entries are freed DRAIN at a time

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key):
        if self._retired:
            self.drain()
        value = self._map.get(key)
        if value is not None:
            self._map.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        if self._retired:
            self.drain()
        entries = self._map
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self.max_keys:
            entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry now (nothing is answered from them again); their memory is freed a few
        entries at a time by later operations, never all at once here."""
        if self._map:
            self._retired.append(self._map)
            self._map = OrderedDict()

    def retired(self) -> int:
        """Entries forgotten and not freed yet."""
        return sum(len(m) for m in self._retired)

    def drain(self) -> None:
        """Free up to :data:`DRAIN` forgotten entries (a cache that is off calls it per lookup)."""
        if not self._retired:
            return
        old = self._retired[0]
        for _ in range(min(DRAIN, len(old))):
            old.popitem(last=False)
        if not old:
            self._retired.pop(0)


class CacheUse:
    """Hit accounting of one cache, and whether it is worth consulting (see the module docstring).

    ``horizon_s``: how long an entry may answer (the cache's TTL; None: until evicted);
    ``max_keys``: the cache's bound, which the shadow sample keeps proportionally.
    """

    def __init__(self, name: str, max_keys: int, horizon_s: float | None = None, min_hit_rate: float = MIN_HIT_RATE,
                 on_hit_rate: float = ON_HIT_RATE, window: int = WINDOW, sample: int = SAMPLE):
        self.name = name
        self.horizon_s = horizon_s
        self.min_hit_rate = min_hit_rate
        self.on_hit_rate = max(on_hit_rate, min_hit_rate)
        self.window = window
        self.sample = sample
        self.enabled = False  # until the first window says it would hit
        self.estimate: float | None = None  # the last window's estimated hit rate
        self.hits = 0  # answered from the cache, since start
        self.lookups = 0
        self.entries = 0
        self._shadow = Bounded(max(64, max_keys // sample))
        self._sampled = 0
        self._sampled_hits = 0
        self._pending = [0, 0]  # hits, lookups not yet in the Prometheus counters
        self._flushed_at = time.monotonic()
        self._hits_metric = metrics.CACHE_HITS.labels(name)
        self._lookups_metric = metrics.CACHE_LOOKUPS.labels(name)
        metrics.CACHE_ENABLED.labels(name).set(0)
        metrics.REGISTERED_CACHES.add(self)

    def observe(self, keys: Iterable[Hashable], now: float) -> bool:
        """Feed the sampled ``keys`` of one lookup to the estimate; returns whether the cache is on
        (a window may just have ended and switched it)."""
        sample, shadow, horizon = self.sample, self._shadow, self.horizon_s
        for key in keys:
            # Mixed before the modulo: ids with a common stride (all even, all ...0001) sample evenly too.
            if ((hash(key) * MIX) >> 32) % sample:
                continue
            seen = shadow.get(key)
            self._sampled += 1
            if seen is not None and (horizon is None or now - seen < horizon):
                self._sampled_hits += 1
            shadow.put(key, now)
        if self._sampled >= self.window:
            self._decide()
        return self.enabled

    def _decide(self) -> None:
        self.estimate = self._sampled_hits / self._sampled
        self._sampled = self._sampled_hits = 0
        self.enabled = self.estimate >= (self.min_hit_rate if self.enabled else self.on_hit_rate)
        metrics.CACHE_HIT_RATIO.labels(self.name).set(self.estimate)
        metrics.CACHE_ENABLED.labels(self.name).set(1 if self.enabled else 0)

    def count(self, hits: int, lookups: int, entries: int) -> None:
        """What the cache answered in one lookup (only while it is on)."""
        self.hits += hits
        self.lookups += lookups
        self.entries = entries
        pending = self._pending
        pending[0] += hits
        pending[1] += lookups
        if pending[1] >= FLUSH_EVERY or time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Add the locally counted lookups to the Prometheus counters (``/metrics`` calls it too)."""
        hits, lookups = self._pending
        self._pending = [0, 0]
        self._flushed_at = time.monotonic()
        if lookups:
            self._hits_metric.inc(hits)
            self._lookups_metric.inc(lookups)
        metrics.CACHE_ENTRIES.labels(self.name).set(self.entries)
