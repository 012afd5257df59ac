"""The local deploy target: no cluster, so the rollout is a record that `storeflow serve` and people read."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from storeflow.components.config import Settings


def rollout_record(settings: Settings) -> Path:
    return settings.project.state_dir / "serving" / "rollouts.jsonl"


def record_local_rollout(settings: Settings, model_version: str, run_id: str) -> dict[str, Any]:
    """Append the promoted version to the local rollout history; the local server serves the champion alias."""
    entry = {"outcome": "promoted-locally", "model_name": settings.registry.model_name,
             "model_version": str(model_version), "run_id": run_id,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = rollout_record(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(entry) + "\n")
    return entry
