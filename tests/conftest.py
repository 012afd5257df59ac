"""Shared fixtures: small stores built in memory, and settings isolated in a temporary state dir."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storeflow.components.config import Settings, load_settings
from storeflow.components.tables import SCHEMAS, TABLES, conform, table_path

END = datetime(2026, 6, 1, tzinfo=timezone.utc)


def small_store(customers: int = 150, days: int = 400, seed: int = 3) -> dict[str, pd.DataFrame]:
    """A tiny store whose loyal customers reorder more often, so the label is learnable."""
    rng = np.random.default_rng(seed)
    start = END - timedelta(days=days)
    rows, items, refunds = [], [], []
    order_id = 1000
    for customer in range(1, customers + 1):
        rate = rng.choice([1 / 120, 1 / 45, 1 / 15])  # orders per day
        t = start + timedelta(days=float(rng.uniform(0, days / 2)))
        quit_at = start + timedelta(days=float(rng.uniform(days * 0.3, days * 1.5)))
        while t < min(END, quit_at):
            order_id += 1
            total = float(np.round(rng.gamma(2.0, 30.0), 2))
            rows.append(dict(order_id=order_id, name=f"#{order_id}", customer_id=customer,
                             email=f"c{customer}@example.com", created_at=t, updated_at=t, cancelled_at=None,
                             currency="USD", total_price=total, subtotal_price=total, total_discounts=0.0,
                             financial_status="PAID", risk_level="LOW"))
            items.append(dict(line_item_id=order_id * 10, order_id=order_id, product_id=int(rng.integers(1, 6)),
                              sku="SKU", title="Thing", quantity=int(rng.integers(1, 3)), price=total))
            if rng.random() < 0.05:
                refunds.append(dict(refund_id=order_id, order_id=order_id, created_at=t + timedelta(days=3),
                                    amount=total))
            t += timedelta(days=float(rng.exponential(1 / rate)))
    products = [dict(product_id=i, title=f"P{i}", product_type=["Tea", "Mugs", "Gifts"][i % 3], vendor="V",
                     created_at=start) for i in range(1, 6)]
    customers_rows = [dict(customer_id=c, email=f"c{c}@example.com", created_at=start, updated_at=start)
                      for c in range(1, customers + 1)]
    frames = dict(orders=rows, line_items=items, customers=customers_rows, products=products, refunds=refunds)
    return {name: conform(name, pd.DataFrame(frames[name], columns=SCHEMAS[name].names)).to_pandas()
            for name in TABLES}


def large_snapshot(directory: Path, orders: int, customers: int) -> Path:
    """A store of ``orders`` orders (a line item each, customer ids 1..``customers``, emails customer<id>@example.com)
    written as an ingested snapshot, manifest and all: for what must not hold a store's tables in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storeflow.components.ingest.snapshot import MANIFEST

    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    order_ids = np.arange(orders, dtype=np.int64) + 10**9
    owner = rng.integers(1, customers + 1, orders)
    at = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 300 * 86400, orders), unit="s")
    tables = {
        "orders": pa.table({"order_id": order_ids, "name": [f"#{i}" for i in range(orders)], "customer_id": owner,
                            "email": [f"customer{c}@example.com" for c in owner], "created_at": at, "updated_at": at,
                            "cancelled_at": pa.nulls(orders, SCHEMAS["orders"].field("cancelled_at").type),
                            "currency": ["USD"] * orders, "total_price": rng.uniform(5, 200, orders),
                            "subtotal_price": rng.uniform(5, 200, orders), "total_discounts": np.zeros(orders),
                            "financial_status": ["paid"] * orders, "risk_level": ["LOW"] * orders}),
        "line_items": pa.table({"line_item_id": order_ids * 2, "order_id": order_ids, "product_id": np.full(orders, 7),
                                "sku": [f"SKU-{i % 5000}" for i in range(orders)],
                                "title": [f"A product with a long enough title {i % 5000}" for i in range(orders)],
                                "quantity": np.ones(orders, np.int64), "price": rng.uniform(5, 200, orders)}),
        "customers": pa.table({"customer_id": np.arange(1, customers + 1, dtype=np.int64),
                               "email": [f"customer{c}@example.com" for c in range(1, customers + 1)],
                               "created_at": pa.array([at[0]] * customers), "updated_at": pa.array([at[0]] * customers)}),
        "products": pa.table({"product_id": [7], "title": ["Tea"], "product_type": ["tea"], "vendor": ["v"],
                              "created_at": [at[0]]}),
        "refunds": pa.table({"refund_id": np.arange(1000, dtype=np.int64), "order_id": order_ids[:1000],
                             "created_at": at[:1000], "amount": np.ones(1000)}),
    }
    for name, table in tables.items():
        pq.write_table(table.cast(SCHEMAS[name]), table_path(directory, name))
    (directory / MANIFEST).write_text(json.dumps({"ingested_at": "2026-12-01T00:00:00+00:00"}))
    return directory


def write_snapshot(tables: dict[str, pd.DataFrame], directory: Path) -> Path:
    """The tables as a snapshot, with a manifest saying when it was ingested (what finds the newest snapshot reads;
    a folder without one is a snapshot still being written)."""
    from storeflow.components.ingest.snapshot import MANIFEST

    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        conform(name, frame).to_pandas().to_parquet(table_path(directory, name), index=False)
    if not (directory / MANIFEST).exists():
        stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        (directory / MANIFEST).write_text(json.dumps({"ingested_at": stamp}))
    return directory


def quick_overrides(root: Path, **sections) -> dict:
    """Config of a quick test run: state under ``root``, label windows that fit a small store, a small
    model; ``sections`` add or replace whole config sections."""
    return {
        "project": {"state_dir": str(root / "state")},
        "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
        # Platt-scaled trees, not the stack (tests/test_propensity.py): what serving's Treelite tests compile.
        "train": {"params": {"max_iter": 40, "random_state": 0}, "stack": False},
        # Stores this small cannot judge the model against the baselines; tests of the gate turn it on.
        "evaluate": {"bootstrap_samples": 100, "baseline_gate": False},
        **sections,
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def switch_on(use) -> None:
    """A serving cache (its ``CacheUse``) switched on as traffic that repeats would switch it: a new cache
    starts off and is consulted only once a window of lookups says it would hit."""
    keys = range(1024)
    while not use.enabled:
        use.observe(keys, now=0.0)


def stop_process(proc, log) -> None:
    """Stop a server a test started (SIGTERM, then SIGKILL after 20 s) and close its log."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with all state under a temporary directory and a quick model."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("STOREFLOW_")]:
        monkeypatch.delenv(key)
    return load_settings(quick_overrides(tmp_path))


@pytest.fixture(scope="session")
def store_tables() -> dict[str, pd.DataFrame]:
    return small_store()


@pytest.fixture
def hooks(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of a webhook receiver for the test shop, with its app secret and Admin API token."""
    from test_webhook_signing import SECRET, SHOP

    monkeypatch.setenv("SHOPIFY_API_SECRET", SECRET)
    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", "shpat_test")
    return load_settings({**json.loads(settings.to_json()), "project": {
        "state_dir": str(settings.project.state_dir), "shop_domain": SHOP},
        "serving": {"shopify_client_id": "storeflow-test-app"}})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with end-to-end (``slow``) tests first, each file's tests kept together and in order.

    `make test` hands whole files to two workers (pytest-xdist ``--dist loadfile --no-loadscope-reorder``)
    in this order: the long pipeline, container and canary files start at once on both, and the many short
    files fill in behind them, so neither worker is left running one long file alone at the end.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: collection order within each group
