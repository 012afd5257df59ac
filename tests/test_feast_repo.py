"""The feature repo storeflow writes is a Feast repo as Feast's users know it: `feast plan` in it sees the
definitions storeflow applied (it announced deleting every entity and feature view, and later the
recommender's product_catalog and product_availability views, and order risk's velocity views with their push
sources), `feast apply` keeps them."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from storeflow.components.config import load_settings
from storeflow.components.features.repo import apply, feature_refs
from storeflow.components.recommend import availability, catalog

FEAST = str(Path(sys.executable).with_name("feast"))


def _feast(repo: Path, *args: str) -> str:
    done = subprocess.run([FEAST, *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_feast_plan_and_apply_in_the_repo_change_nothing_storeflow_applied(tmp_path: Path) -> None:
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                              "features": {"customer_features": ["recency_days", "frequency", "monetary"]}})
    store = apply(settings)
    # what else storeflow registers: the recommendations pipeline's product features, the products webhooks' view
    rows = pd.DataFrame({"product_id": [1, 2], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC"),
                         "category": ["Tea", "Mugs"], "price": [4.0, None], "price_band": [0, -1]})
    catalog.publish(settings, rows)
    availability.ensure_view(store, settings)
    repo = settings.feature_repo_dir
    plan = _feast(repo, "plan")
    assert "Deleted" not in plan and "Created feature view" not in plan and "Created entity" not in plan, plan
    # Feast reports a materialized view (product_catalog here) as updated: the registered one carries its
    # materialization intervals, and its source's registration timestamps differ. Nothing else may differ.
    assert set(re.findall(r"^\t(\w+): ", plan, re.MULTILINE)) <= {"batch_source"}, plan
    assert re.findall(r"^Updated feature view (\w+)", plan, re.MULTILINE) == ["product_catalog"], plan
    _feast(repo, "apply")
    store.refresh_registry()
    views = {v.name: [f.name for f in v.features] for v in store.list_feature_views()}
    assert views["customer_features"] == ["recency_days", "frequency", "monetary"]
    assert views["product_catalog"] == ["category", "price", "price_band"]
    assert views["product_availability"] == ["published", "in_stock", "inventory", "title", "handle"]
    assert [f"customer_features:{name}" for name in views["customer_features"]] == feature_refs(settings)
    for name in ("order_velocity_customer", "order_velocity_email", "order_velocity_address"):  # risk.velocity's
        assert views[name] == ["orders"]
        assert store.get_feature_view(name).stream_source.name == f"{name}_push"
    assert views["customer_order_history"] == ["events"]  # risk.history's ledgers
    assert store.get_feature_view("customer_order_history").stream_source.name == "customer_order_history_push"
    assert {e.name for e in store.list_entities()} == {"customer", "product", "email_digest", "shipping_address"}
