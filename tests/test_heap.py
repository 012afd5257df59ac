"""Long-lived processes freeze what they hold once started (components/heap.py): a full garbage collection
then walks only what requests and deliveries left, not every import (222,425 objects, a 73 ms pass, in a
process with the webhook receiver's and the risk scorer's imports)."""

from __future__ import annotations

import gc

import pytest

from storeflow.components.heap import freeze_startup_objects


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # the test process goes on creating and dropping state


def test_what_is_alive_at_startup_is_out_of_the_collectors_walk(unfrozen):
    held = [[n] for n in range(20_000)]  # state a process keeps: lists, which the collector tracks
    assert freeze_startup_objects() >= len(held)
    walked = {id(o) for o in gc.get_objects()}  # what a full collection walks
    assert not any(id(o) in walked for o in held)
    later = [[n] for n in range(10)]
    assert all(id(o) in {id(x) for x in gc.get_objects()} for o in later)  # what comes after is still walked


def test_the_webhook_receiver_freezes_its_startup_objects_before_taking_deliveries(settings, monkeypatch, unfrozen):
    import uvicorn

    from storeflow.components.shopify import webhooks

    monkeypatch.setenv("SHOPIFY_API_SECRET", "test-secret")
    settings.serving.shopify_client_id = "storeflow-test-app"
    frozen_when_run = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: frozen_when_run.append(gc.get_freeze_count()))
    gc.unfreeze()
    webhooks.serve(settings)
    assert frozen_when_run and frozen_when_run[0] > 10_000  # the imports: tens of thousands of objects
