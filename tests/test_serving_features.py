"""The serving feature reader returns exactly what Feast's get_online_features returns, on SQLite and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from conftest import switch_on, write_snapshot
from redis_server import redis_server
from storeflow.components.config import load_settings
from storeflow.components.features import build_features, feature_store
from storeflow.components.features.repo import CUSTOMER_KEY, feature_refs
from storeflow.serving.features import FALLBACK, OnlineFeatures

UNKNOWN = 987_654_321


def _settings(tmp_path: Path, **feast) -> object:
    return load_settings({
        "project": {"state_dir": str(tmp_path / "state")},
        "features": {"feast": feast, "label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
        "serving": {"feature_cache_seconds": 0},
    })


def _feast_rows(settings, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    columns = list(settings.features.customer_features)
    data = feature_store(settings).get_online_features(
        features=feature_refs(settings), entity_rows=[{CUSTOMER_KEY: i} for i in ids]).to_dict()
    rows = np.array([[FALLBACK[c] if data[c][n] is None else float(data[c][n]) for c in columns]
                     for n in range(len(ids))])
    missing = np.array([any(data[c][n] is None for c in columns) for n in range(len(ids))])
    return rows, missing


def _check_same_as_feast(settings, store_tables) -> None:
    ids = [int(i) for i in store_tables["customers"]["customer_id"]] + [UNKNOWN]
    reader = OnlineFeatures(settings)
    try:
        asyncio.run(reader.rows(ids[:5]))  # a first read must leave the reader as it was (Feast's Redis store
        rows, fallback = asyncio.run(reader.rows(ids))  # appends to the feature list it is given)
    finally:
        reader.close()
    expected_rows, expected_missing = _feast_rows(settings, ids)
    assert np.array_equal(rows, expected_rows)
    assert np.array_equal(fallback, expected_missing), (np.flatnonzero(fallback != expected_missing), fallback[-3:], expected_missing[-3:])
    assert fallback[-1] and not fallback[:-1].all()  # the unknown customer, and real ones found
    assert rows[-1].tolist() == [FALLBACK[c] for c in settings.features.customer_features]


def test_reader_equals_feast_on_the_sqlite_online_store(tmp_path: Path, store_tables) -> None:
    settings = _settings(tmp_path)
    build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    _check_same_as_feast(settings, store_tables)


def test_reader_equals_feast_on_the_redis_online_store(tmp_path: Path, store_tables) -> None:
    with redis_server(tmp_path) as address:
        settings = _settings(tmp_path, online_store="redis", redis_connection_string=address)
        build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
        _check_same_as_feast(settings, store_tables)


def test_a_store_without_the_feature_view_fails_the_lookup_with_feasts_reason(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    reader = OnlineFeatures(settings)
    try:
        with pytest.raises(Exception, match="customer"):
            asyncio.run(reader.rows([1]))
    finally:
        reader.close()


def test_the_feature_cache_stays_within_its_row_bound(tmp_path: Path, store_tables) -> None:
    settings = _settings(tmp_path)
    settings.serving.feature_cache_seconds, settings.serving.feature_cache_rows = 60, 40
    build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    ids = [int(i) for i in store_tables["customers"]["customer_id"]]
    reader = OnlineFeatures(settings)
    switch_on(reader.use)
    try:
        for start in range(0, len(ids), 25):  # 150 customers in batches of 25
            asyncio.run(reader.rows(ids[start:start + 25]))
            assert len(reader._cache) <= 40
        rows, _ = asyncio.run(reader.rows(ids))
    finally:
        reader.close()
    assert np.array_equal(rows, _feast_rows(settings, ids)[0])  # evictions lose nothing but time


def _objects_left_by_a_first_read(reader: OnlineFeatures, ids: list[int]) -> int:
    """Objects the garbage collector tracks that a read of ``ids`` leaves behind."""
    import gc

    asyncio.run(reader.rows(ids[:5]))  # the store opened, the view read
    asyncio.run(reader.rows(ids[5:7]))
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        asyncio.run(reader.rows(ids[7:]))
        return gc.get_count()[0] - before
    finally:
        gc.enable()


def test_cached_rows_answer_like_feast_and_leave_nothing_for_the_garbage_collector(tmp_path: Path, store_tables) -> None:
    settings = _settings(tmp_path)
    build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    ids = [int(i) for i in store_tables["customers"]["customer_id"]] + [UNKNOWN]
    uncached = OnlineFeatures(settings)
    settings.serving.feature_cache_seconds = 600
    cached = OnlineFeatures(settings)
    switch_on(cached.use)
    try:
        baseline = _objects_left_by_a_first_read(uncached, ids)
        left = _objects_left_by_a_first_read(cached, ids)
        rows, fallback = asyncio.run(cached.rows(ids))  # every customer from the cache
    finally:
        uncached.close()
        cached.close()
    assert len(cached._cache) == len(ids) and cached.use.hits >= len(ids)
    expected_rows, expected_missing = _feast_rows(settings, ids)
    assert np.array_equal(rows, expected_rows) and np.array_equal(fallback, expected_missing)
    # A cached row is one float64 array, no object the collector tracks: a cache filling up does not
    # bring the next collection nearer (a (expires, row, fallback) tuple per row left one each behind).
    assert left - baseline < len(ids) // 2, (left, baseline)


def test_a_customer_erased_while_cached_gets_the_fallback_on_the_next_lookup(tmp_path: Path, store_tables) -> None:
    from storeflow.components.shopify import journal, layout, privacy

    settings = _settings(tmp_path)
    settings.serving.feature_cache_seconds, settings.serving.feature_refresh_seconds = 600, 600  # cache, never poll
    build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    erased, kept = (int(i) for i in store_tables["customers"]["customer_id"][:2])
    reader = OnlineFeatures(settings)
    switch_on(reader.use)
    conn = journal.connect(layout.journal_path(settings))
    try:
        rows, fallback = asyncio.run(reader.rows([erased, kept]))
        assert not fallback.any()
        privacy.redact_customer(settings, conn, feature_store(settings), privacy.Subject(erased))
        after, fallback = asyncio.run(reader.rows([erased, kept]))
    finally:
        conn.close()
        reader.close()
    assert fallback.tolist() == [True, False]
    assert after[0].tolist() == reader.fallback.tolist()
    assert np.array_equal(after[1], rows[1])


def test_one_customer_lookups_answer_like_feast_without_a_gather_and_never_hand_out_the_cached_row(
        tmp_path: Path, store_tables, monkeypatch) -> None:
    """A storefront request asks for one customer: its read is awaited alone (asyncio.gather around one
    future was ~6 % of a worker's samples at 50,000 customers, py-spy), from the store and from the cache
    alike, with Feast's row; and the answer is a copy, so nothing done to it reaches the next answer."""
    import storeflow.serving.features as features

    settings = _settings(tmp_path)
    build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    ids = [int(i) for i in store_tables["customers"]["customer_id"]][:5] + [UNKNOWN]
    settings.serving.feature_cache_seconds = 600
    reader = OnlineFeatures(settings)
    switch_on(reader.use)

    async def no_gather(*_, **__):
        raise AssertionError("gather around one customer's read")

    monkeypatch.setattr(features.asyncio, "gather", no_gather)
    expected_rows, expected_missing = _feast_rows(settings, ids)
    try:
        for attempt in ("store", "cache"):
            for n, cid in enumerate(ids):
                rows, fallback = asyncio.run(reader.rows([cid]))
                assert rows.shape == (1, len(settings.features.customer_features)), attempt
                assert np.array_equal(rows[0], expected_rows[n]) and fallback[0] == expected_missing[n], attempt
                rows[0, :] = -1.0  # the caller's copy
        assert reader.use.hits >= len(ids)
    finally:
        reader.close()


def test_a_cached_customer_is_answered_with_the_customers_read_beside_it_not_before(tmp_path: Path,
                                                                                    store_tables) -> None:
    """A lookup the cache answers whole waits for the online store read of the customers that missed in the
    same loop iteration (serving/features.py, _ride): answered at once, it overtook them, and the loop
    iterations a miss spans held the complete work of every hit answered meanwhile (the caches' p99 was
    worse than none). Its row is still the cached one, equal to Feast's."""
    settings = _settings(tmp_path)
    settings.serving.feature_cache_seconds = 600
    build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    cached_id, new_id = (int(i) for i in store_tables["customers"]["customer_id"][:2])
    reader = OnlineFeatures(settings)
    switch_on(reader.use)
    finished, answers = [], {}

    async def run():
        await reader.rows([cached_id])  # now in the cache

        async def ask(name, cid):
            answers[name] = await reader.rows([cid])
            finished.append(name)

        await asyncio.gather(ask("miss", new_id), ask("hit", cached_id))

    try:
        asyncio.run(run())
    finally:
        reader.close()
    assert finished == ["miss", "hit"]  # asked second, answered no earlier than the read it rode with
    expected_rows, _ = _feast_rows(settings, [cached_id, new_id])
    assert np.array_equal(answers["hit"][0][0], expected_rows[0]) and np.array_equal(answers["miss"][0][0],
                                                                                      expected_rows[1])
