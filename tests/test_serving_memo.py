"""Scores remembered by feature row (serving/batching.py ScoreMemo): same answers as the model, fresh on new features."""

from __future__ import annotations

import asyncio

import numpy as np

from conftest import switch_on
from storeflow.serving.batching import MicroBatcher, ScoreMemo


def model(rows: np.ndarray) -> np.ndarray:
    model.seen += len(rows)
    return 1 / (1 + np.exp(-rows.sum(axis=1)))


def test_memo_answers_like_the_model_and_only_scores_new_rows():
    model.seen = 0
    memo = ScoreMemo(MicroBatcher(model), max_rows=100)
    switch_on(memo.use)
    rows = np.random.default_rng(0).normal(size=(6, 4))

    async def run():
        first = await memo(rows[:3])
        mixed = await memo(rows)
        changed = rows.copy()
        changed[0, 0] += 1.0  # a customer's features moved: a new row, a new score
        return first, mixed, await memo(changed[:1])

    try:
        first, mixed, changed = asyncio.run(run())
    finally:
        memo.close()
    assert model.seen == 3 + 3 + 1  # the three known rows came from the memo
    np.testing.assert_array_equal(first, model(rows[:3]))
    np.testing.assert_array_equal(mixed, model(rows))
    np.testing.assert_array_equal(changed, model(rows[:1] + np.array([1.0, 0, 0, 0])))


def test_memo_stays_bounded_and_can_be_off():
    model.seen = 0
    memo = ScoreMemo(MicroBatcher(model), max_rows=5)
    switch_on(memo.use)
    off = ScoreMemo(MicroBatcher(model), max_rows=0)
    rows = np.arange(40, dtype=np.float64).reshape(20, 2)

    async def run():
        for row in rows:
            await memo(row[None, :])
        before = model.seen
        await off(rows[:2])
        await off(rows[:2])
        return before

    try:
        before = asyncio.run(run())
    finally:
        memo.close()
        off.close()
    assert len(memo._scores) <= 5
    assert model.seen - before == 4  # max_rows=0: every call goes to the model
