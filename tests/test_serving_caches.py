"""Serving caches that pay for themselves (serving/caching.py): bounded, off by themselves while their
hit rate is too low to help, on again when traffic repeats, hit rates on /metrics, and the same
answers as the model with and without them."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from conftest import switch_on
from storeflow.serving import metrics
from storeflow.serving.batching import MicroBatcher, ScoreMemo
from storeflow.serving.caching import DRAIN, MIN_HIT_RATE, MIX, ON_HIT_RATE, SAMPLE, WINDOW, Bounded, CacheUse


def model(rows: np.ndarray) -> np.ndarray:
    model.calls += 1
    return 1 / (1 + np.exp(-rows.sum(axis=1)))


model.calls = 0


def _score_one_at_a_time(memo: ScoreMemo, rows: np.ndarray) -> np.ndarray:
    async def run():
        return np.concatenate([await memo(row[None, :]) for row in rows])

    return asyncio.run(run())


def test_a_full_cache_evicts_one_entry_per_insert_the_least_recently_used():
    cache = Bounded(10)
    for key in range(10):
        cache.put(key, key)
    for key in range(10, 100):
        assert cache.get(0) == 0  # key 0 is used all the time
        cache.put(key, key)
        # Exactly one entry out per insert past the bound: never half the cache freed at once (two
        # generations dropped five of these ten entries in one insert, 100,000 rows in production).
        assert len(cache) == 10
    assert cache.get(0) == 0
    assert cache.get(90) is None and cache.get(91) == 91  # the least recently used went first


def test_emptying_a_cache_forgets_at_once_and_frees_its_entries_a_few_at_a_time():
    cache = Bounded(100_000)
    for key in range(1000):
        cache.put(key, (key, np.zeros(3)))
    cache.clear()
    assert len(cache) == 0 and cache.get(5) is None  # nothing answered from a forgotten entry
    assert cache.retired() == 1000 - DRAIN  # that get freed a few, not all 1,000 at once
    for _ in range(1000 // DRAIN):
        cache.drain()
    assert cache.retired() == 0
    cache.put(1, "new")
    assert cache.get(1) == "new" and len(cache) == 1


def test_a_memo_whose_rows_never_repeat_switches_itself_off_and_still_answers_like_the_model():
    memo = ScoreMemo(MicroBatcher(model), max_rows=100_000)
    rows = np.random.default_rng(1).normal(size=(3 * WINDOW * SAMPLE, 3))  # every row new
    try:
        scores = _score_one_at_a_time(memo, rows)
    finally:
        memo.close()
    np.testing.assert_array_equal(scores, model(rows))
    assert not memo.use.enabled and memo.use.estimate == 0.0
    assert len(memo._scores) == 0  # off: empty, not consulted, not filled
    assert memo._scores.retired() == 0  # and what it held is freed, a few entries a call


def test_a_new_cache_stays_off_until_its_first_window_says_traffic_repeats():
    """Started on, a worker whose traffic never repeats (a large store drawn uniformly) filled and consulted
    its caches for a whole window before they switched off; a new cache consults nothing, holds nothing and
    says so on /metrics until a window of its lookups says it would hit."""
    memo = ScoreMemo(MicroBatcher(model), max_rows=100_000)
    rows = np.random.default_rng(4).normal(size=(8, 3))
    again = np.vstack([rows] * 20)  # the same eight rows, 160 lookups: well under a window
    try:
        assert not memo.use.enabled
        body, _ = metrics.exposition_body(None)
        assert re.search(r'^storeflow_cache_enabled\{cache="scores"[^}]*\} 0\.0$', body.decode(), re.M)
        model.calls = 0
        scores = _score_one_at_a_time(memo, again)
    finally:
        memo.close()
    np.testing.assert_array_equal(scores, model(again))
    assert model.calls - 1 == len(again)  # every lookup went to the model
    assert memo.hits == 0 and len(memo._scores) == 0 and not memo.use.enabled


def _window(use: CacheUse, hit_rate: float, fresh: list[int]) -> None:
    """One window of sampled lookups of which ``hit_rate`` would hit: keys seen before, the rest new."""
    hits = round(WINDOW * hit_rate)
    for _ in range(WINDOW - hits):
        use.observe([fresh.pop()], now=1.0)
    use.observe([fresh[-1]] * hits, now=1.0)  # seen just before: would hit


def test_a_cache_near_the_line_does_not_flap_on_the_estimates_noise():
    """Off, a cache switches on at ON_HIT_RATE; on, it switches off below MIN_HIT_RATE. With one line, caches
    whose true hit rate was near it switched on whenever a window's estimate came out high, and those rounds
    had the cached server's worst p99."""
    sampled = [k for k in range(10 ** 6) if not ((hash(k) * MIX) >> 32) % SAMPLE]  # keys the estimate sees
    between = (MIN_HIT_RATE + ON_HIT_RATE) / 2
    use = CacheUse("features", max_keys=10 ** 6, horizon_s=60)
    _window(use, between, sampled)
    assert not use.enabled and MIN_HIT_RATE <= use.estimate < ON_HIT_RATE  # off: not high enough to go on
    _window(use, ON_HIT_RATE + 0.02, sampled)
    assert use.enabled
    _window(use, between, sampled)
    assert use.enabled  # on: not low enough to go off
    _window(use, MIN_HIT_RATE / 2, sampled)
    assert not use.enabled


def test_a_cache_that_would_hit_a_fifth_of_the_time_stays_off():
    """A long-lived worker at 500,000 customers drawn uniformly estimates 16-20 % would-be hits (the feature cache's
    horizon, the memo's rows); caches that hit that often did not pay on this path, and the 10 % line
    switched them on."""
    sampled = [k for k in range(10 ** 6) if not ((hash(k) * MIX) >> 32) % SAMPLE]
    use = CacheUse("scores", max_keys=10 ** 6)
    for _ in range(20):
        _window(use, 0.22, sampled)
        assert not use.enabled
    _window(use, ON_HIT_RATE + 0.05, sampled)
    assert use.enabled  # traffic that repeats more does switch it on


def test_a_memo_turns_itself_on_again_when_traffic_repeats():
    memo = ScoreMemo(MicroBatcher(model), max_rows=100_000)
    rng = np.random.default_rng(2)
    fresh = rng.normal(size=(2 * WINDOW * SAMPLE, 3))
    # Customers who come back again and again: enough of them that the 1-in-SAMPLE hash sample (salted
    # per process) always holds dozens, and enough visits that several windows close on them. With 256
    # customers and half the visits, an unlucky salt sampled four of them, one window closed, mostly on
    # leftover misses of the fresh traffic, and the memo stayed off (CI, 1 run in a few hundred).
    returning = rng.normal(size=(1024, 3))
    repeats = returning[rng.integers(0, len(returning), size=8 * WINDOW * SAMPLE)]
    try:
        _score_one_at_a_time(memo, fresh)
        assert not memo.use.enabled
        model.calls = 0
        scores = _score_one_at_a_time(memo, repeats)
    finally:
        memo.close()
    np.testing.assert_array_equal(scores, model(repeats))
    assert memo.use.enabled and memo.use.estimate > 0.9
    assert memo.hits > len(repeats) // 2


def test_the_memo_stays_within_its_bound():
    memo = ScoreMemo(MicroBatcher(model), max_rows=50)
    switch_on(memo.use)
    rows = np.arange(600, dtype=np.float64).reshape(300, 2)
    try:
        _score_one_at_a_time(memo, np.vstack([rows, rows[:10], rows[:10]]))
    finally:
        memo.close()
    assert len(memo._scores) <= 50


def test_inline_batching_scores_concurrent_requests_together_and_like_the_model():
    batcher = MicroBatcher(model, max_rows=8, inline=True)
    rows = np.random.default_rng(3).normal(size=(20, 3))

    async def run():
        return await asyncio.gather(*(batcher(row[None, :]) for row in rows))

    model.calls = 0
    try:
        scores = np.concatenate(asyncio.run(run()))
    finally:
        batcher.close()
    np.testing.assert_array_equal(scores, model(rows))
    assert model.calls - 1 == 3  # 20 rows in calls of at most 8 (the check above is one call more)


def test_metrics_show_each_caches_hit_rate():
    use = CacheUse("scores", max_keys=1000)
    use.count(hits=3, lookups=4, entries=2)
    for key in range(WINDOW * SAMPLE * 2):
        use.observe([key % 10], now=0.0)  # ten keys again and again: nearly all would hit
    body, _ = metrics.exposition_body(None)
    text = body.decode()
    assert 'storeflow_cache_hits_total{cache="scores"}' in text
    assert 'storeflow_cache_lookups_total{cache="scores"}' in text
    ratio = next(line for line in text.splitlines() if line.startswith('storeflow_cache_hit_ratio{cache="scores"'))
    assert float(ratio.rsplit(" ", 1)[1]) > 0.9
    assert re.search(r'^storeflow_cache_enabled\{cache="scores"[^}]*\} 1\.0$', text, re.M)


def test_the_estimate_samples_customer_ids_that_share_a_stride():
    use = CacheUse("features", max_keys=100_000, horizon_s=60)
    ids = [7_200_000_000_001 + 16 * n for n in range(400)]  # every id the same modulo 16
    for _ in range(20):
        use.observe(ids, now=1.0)
    assert use.estimate is not None and use.estimate > 0.9 and use.enabled


def test_a_returning_customers_expected_spend_is_memoized_like_the_score():
    """Spend beside the score: the same feature row again is answered from the memo, with the spend model's
    value, not another walk of the spend model's trees (before: every request walked them)."""
    from types import SimpleNamespace

    from storeflow.serving.transformer import Scoring, StoreflowTransformer

    calls = []

    def expected_spend(rows):
        calls.append(len(rows))
        return rows[:, 0] * 10.0, None

    predictor = SimpleNamespace(score=model, expected_spend=expected_spend, spend=(object(), [5.0, 20.0]),
                                scorer=SimpleNamespace(runtime="sklearn"), spend_scorer=SimpleNamespace(runtime="treelite"))
    transformer = StoreflowTransformer("m", features=None, predictors={"1": predictor}, main_version="1")
    for memo in [*transformer.batchers.values(), *transformer.spend_batchers.values()]:
        switch_on(memo.use)
    rows = np.array([[0.3, 1.0], [2.5, 0.0]])

    async def ask(twice: int):
        answers = []
        for _ in range(twice):
            scoring = Scoring(None, ["1", "2"], [1, 2], [None, None], None, None, rows=rows)
            await transformer._predict_local(scoring)
            answers.append((scoring.scores.tolist(), scoring.spend.tolist(), list(scoring.spend_tiers)))
        return answers

    try:
        answers = asyncio.run(ask(3))
    finally:
        for batcher in [*transformer.batchers.values(), *transformer.spend_batchers.values()]:
            batcher.close()
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][1] == [3.0, 25.0] and answers[0][2] == ["LOW", "HIGH"]
    assert calls == [2]  # the spend model ran once, for both rows; the repeats came from the memo


@pytest.mark.parametrize("memo_rows", [100_000, 0], ids=["memo on", "memo off"])
def test_a_misses_score_and_spend_come_from_the_same_model_pass(memo_rows):
    """A request whose row is not remembered needs both models: both are asked in the same loop iteration
    and answer in the same next one, so the request waits one model pass, not two (the spend was asked
    only once the score was back: two loop iterations more, each as long as every cache hit the loop
    answers meanwhile, which is how the caches made a miss's p99 worse). Values stay the models' own."""
    from types import SimpleNamespace

    from storeflow.serving.transformer import Scoring, StoreflowTransformer

    passes, iteration = [], [0]

    def score(rows):
        passes.append(("score", iteration[0]))
        return model(rows)

    def expected_spend(rows):
        passes.append(("spend", iteration[0]))
        return rows[:, 0] * 10.0, None

    inline = SimpleNamespace(runtime="treelite")
    predictor = SimpleNamespace(score=score, expected_spend=expected_spend, spend=(object(), [5.0, 20.0]),
                                scorer=inline, spend_scorer=inline)
    transformer = StoreflowTransformer("m", features=None, predictors={"1": predictor}, main_version="1",
                                       score_memo_rows=memo_rows)
    if memo_rows:
        for memo in [*transformer.batchers.values(), *transformer.spend_batchers.values()]:
            switch_on(memo.use)
    rows = np.array([[0.3, 1.0], [2.5, 0.0]])

    async def ticker():
        while True:  # counts loop iterations
            iteration[0] += 1
            await asyncio.sleep(0)

    async def ask():
        tick = asyncio.get_running_loop().create_task(ticker())
        scoring = Scoring(None, ["1", "2"], [1, 2], [None, None], None, None, rows=rows)
        await transformer._predict_local(scoring)
        tick.cancel()
        return scoring

    try:
        scoring = asyncio.run(ask())
    finally:
        for batcher in [*transformer.batchers.values(), *transformer.spend_batchers.values()]:
            batcher.close()
    assert [kind for kind, _ in passes] == ["score", "spend"]
    assert passes[0][1] == passes[1][1]  # the same loop iteration
    np.testing.assert_array_equal(scoring.scores, model(rows))
    assert scoring.spend.tolist() == [3.0, 25.0] and list(scoring.spend_tiers) == ["LOW", "HIGH"]


def _finish_order(*requests) -> list[tuple[str, int]]:
    """Run named coroutine factories as concurrent requests started in the same loop iteration; the loop
    iteration each finished in, in finishing order."""
    iteration, finished = [0], []

    async def ticker():
        while True:
            iteration[0] += 1
            await asyncio.sleep(0)

    async def run():
        tick = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)

        async def one(name, make):
            await make()
            finished.append((name, iteration[0]))

        await asyncio.gather(*(one(name, make) for name, make in requests))
        tick.cancel()

    asyncio.run(run())
    return finished


def test_a_memo_hit_is_answered_with_the_misses_that_asked_with_it_not_before():
    """A row the memo knows is answered in the loop iteration the model scores the rows that missed with it,
    not at once: a hit that overtakes the misses of its moment makes every iteration a miss spans as long as
    the hits answered meanwhile, which is how the caches made p99 worse than none (50,000 customers, Redis,
    skewed, c=32: 70 ms vs 27 ms). The hit's value is still the memo's: the model scores only the miss."""
    memo = ScoreMemo(MicroBatcher(model, inline=True), max_rows=1000)
    switch_on(memo.use)
    known, new = np.array([[0.5, 0.5]]), np.array([[1.5, -0.5]])
    try:
        asyncio.run(memo(known))
        calls = model.calls
        answers = {}

        def ask(name, rows):
            async def make():
                answers[name] = await memo(rows)
            return name, make

        order = _finish_order(ask("miss", new), ask("hit", known))
    finally:
        memo.batcher.close()
    assert order[0][1] == order[1][1]  # the same iteration: the hit waited for the miss's model call
    assert model.calls == calls + 1  # one call, for the miss only
    np.testing.assert_array_equal(answers["hit"], model(known))
    np.testing.assert_array_equal(answers["miss"], model(new))


def test_a_memo_hit_with_nothing_else_asking_waits_no_longer_than_a_miss_would():
    memo = ScoreMemo(MicroBatcher(model, inline=True), max_rows=1000)
    switch_on(memo.use)
    row, other = np.array([[0.1, 0.2]]), np.array([[0.3, 0.4]])
    try:
        asyncio.run(memo(row))
        hit = _finish_order(("hit", lambda: memo(row)))
        miss = _finish_order(("miss", lambda: memo(other)))
    finally:
        memo.batcher.close()
    assert hit[0][1] <= miss[0][1]  # riding an empty call: the next iteration, never a wait for company
