"""The feature repo storeflow writes is a Feast repo as Feast's users know it: `feast plan` in it sees the
definitions storeflow applied (it announced deleting every entity and feature view), `feast apply` keeps them."""

import subprocess
import sys
from pathlib import Path

from storeflow.components.config import load_settings
from storeflow.components.features.repo import apply, feature_refs

FEAST = str(Path(sys.executable).with_name("feast"))


def _feast(repo: Path, *args: str) -> str:
    done = subprocess.run([FEAST, *args], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_feast_plan_and_apply_in_the_repo_change_nothing_storeflow_applied(tmp_path: Path) -> None:
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                              "features": {"customer_features": ["recency_days", "frequency", "monetary"]}})
    store = apply(settings)
    repo = settings.feature_repo_dir
    plan = _feast(repo, "plan")
    assert "No changes to registry" in plan and "Deleted" not in plan, plan
    _feast(repo, "apply")
    store.refresh_registry()
    views = {v.name: [f.name for f in v.features] for v in store.list_feature_views()}
    assert views["customer_features"] == ["recency_days", "frequency", "monetary"]
    assert [f"customer_features:{name}" for name in views["customer_features"]] == feature_refs(settings)
    assert {e.name for e in store.list_entities()} == {"customer", "product"}
