"""Simulated served traffic for demos and tests: a holiday promotion shifts the store, the champion
scores the shifted customers, and the predictions land in the prediction log as serving writes them.

The shift is made on orders, not on features: promoted customers place extra, larger, discounted orders
in the weeks before the snapshot, and the features stage's own SQL turns that into recency, frequency,
order value and discount share, so the drift monitoring finds is the drift a real promotion makes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.features.btyd import LiveScorer
from storeflow.components.features.compute import customer_features, serving_time
from storeflow.components.features.repo import btyd_model_path
from storeflow.components.ingest.snapshot import newest_snapshot
from storeflow.components.monitor.predictions import log_dir
from storeflow.components.tables import conform, read_tables


@dataclass(frozen=True)
class Simulated:
    path: Path
    records: int
    customers: int
    model_version: str
    shifted: bool


def holiday_promotion(tables: dict[str, pd.DataFrame], as_of: datetime, share: float, value_lift: float,
                      discount: float, days: int, seed: int) -> dict[str, pd.DataFrame]:
    """Extra orders (1-3 each) for ``share`` of customers in the ``days`` before ``as_of``: baskets
    ``value_lift`` times their usual value, ``discount`` off."""
    rng = np.random.default_rng(seed)
    orders, items = tables["orders"], tables["line_items"]
    buyers = orders.dropna(subset=["customer_id"])
    usual = buyers.groupby("customer_id")["total_price"].mean()
    chosen = usual.sample(frac=share, random_state=seed)
    counts = rng.integers(1, 4, len(chosen))
    customer_ids = np.repeat(chosen.index.to_numpy(), counts)
    n = len(customer_ids)
    totals = np.round(np.repeat(chosen.to_numpy(), counts) * value_lift * rng.lognormal(0, 0.2, n), 2)
    created = pd.Timestamp(as_of) - pd.to_timedelta(rng.uniform(1, days * 86400, n), unit="s")
    first_id = int(orders["order_id"].max()) + 1
    ids = np.arange(first_id, first_id + n)
    template = orders.iloc[0]
    promo = pd.DataFrame({
        "order_id": ids, "name": [f"#{i}" for i in ids], "customer_id": customer_ids, "email": None,
        "created_at": created, "updated_at": created, "cancelled_at": None, "currency": template["currency"],
        "total_price": totals, "subtotal_price": np.round(totals / (1 - discount), 2),
        "total_discounts": np.round(totals / (1 - discount) - totals, 2), "financial_status": "PAID",
        "risk_level": "LOW"})
    products = items["product_id"].dropna().unique()
    promo_items = pd.DataFrame({
        "line_item_id": ids * 10 + 1, "order_id": ids,
        "product_id": rng.choice(products, n) if len(products) else pd.NA, "sku": "PROMO", "title": "Holiday bundle",
        "quantity": rng.integers(1, 4, n), "price": totals})
    shifted = dict(tables)
    shifted["orders"] = pd.concat([orders, conform("orders", promo).to_pandas()], ignore_index=True)
    shifted["line_items"] = pd.concat([items, conform("line_items", promo_items).to_pandas()], ignore_index=True)
    return shifted


def simulate_shift(settings: Settings, *, requests: int = 2_000, shift: bool = True, share: float = 0.6,
                   value_lift: float = 1.8, discount: float = 0.3, promo_days: int = 21, hours: float = 2.0,
                   end: datetime | None = None, as_of: datetime | None = None, model_version: str | None = None,
                   snapshot: Path | None = None, seed: int = 0) -> Simulated:
    """Write ``requests`` predictions by the champion (or ``model_version``) for customers of the latest
    snapshot, after a holiday promotion when ``shift`` (else as the store is), logged over the ``hours``
    before ``end`` (default now) in ``serving.prediction_log_dir``. Features are those at ``as_of`` (default
    the snapshot's serving time; an earlier one makes traffic whose outcome the snapshot already knows)."""
    from storeflow.components import tracking
    from storeflow.components.train import load_model

    snapshot = snapshot or newest_snapshot(settings.data_dir / "snapshots")
    if snapshot is None:
        raise FileNotFoundError(f"no ingested snapshot under {settings.data_dir}: run the training pipeline first")
    tables = read_tables(snapshot)
    as_of = as_of or serving_time(tables["orders"])
    if shift:
        tables = holiday_promotion(tables, as_of, share, value_lift, discount, promo_days, seed)
    rows = customer_features(tables, [as_of])
    rows = rows.join(LiveScorer(btyd_model_path(settings)).features(rows, settings.features.label.horizon_days))

    client = tracking.connect(settings)
    name = settings.registry.model_name
    version = model_version or tracking.current_champion(client, name)
    if version is None:
        raise LookupError(f"model {name} has no champion to score with: run the training pipeline first")
    model = load_model(f"models:/{name}/{version}")
    names = getattr(model, "feature_names_in_", None)
    columns = [str(c) for c in names] if names is not None else list(settings.features.customer_features)

    rng = np.random.default_rng(seed + 1)
    picked = rows.iloc[rng.integers(0, len(rows), requests)].reset_index(drop=True)
    x = picked[columns].astype(float)
    scores = model.predict_proba(x)[:, 1]
    end = (end or datetime.now(timezone.utc)).astimezone(timezone.utc)
    offsets = np.sort(rng.uniform(0, hours * 3600, requests))[::-1]
    values = x.to_numpy()
    directory = log_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"predictions-{end:%Y%m%dT%H%M%S%f}-sim{seed}.jsonl"
    with path.open("wb") as out:
        for i in range(requests):
            out.write(orjson.dumps({
                "ts": (end - timedelta(seconds=float(offsets[i]))).isoformat(), "request_id": uuid.uuid4().hex,
                "model_name": name, "model_version": str(version), "customer_id": int(picked.at[i, "customer_id"]),
                "fallback": False, "score": float(scores[i]), "features": dict(zip(columns, values[i].tolist())),
                "cart": None, "shop": settings.project.shop_domain}) + b"\n")
    return Simulated(path, requests, int(picked["customer_id"].nunique()), str(version), shift)
