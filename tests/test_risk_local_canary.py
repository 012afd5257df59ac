"""The order risk model's local canary end to end: two real `storeflow serve-risk` processes on 127.0.0.1 (the
champion's and the challenger's registered versions), the store's own orders split between them at each canary
step, their /metrics (requests, latency and storeflow_risk_assessments_total) judged by the same `decide()` the
KServe path uses, and the outcome on the risk model's champion alias, its version tags and the local record
`storeflow status --model risk` shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_risk_metrics import NAME, trained  # noqa: F401 - the module-scoped fixture: a store and risk v1
from typer.testing import CliRunner

from storeflow.components.config import load_settings
from storeflow.components.deploy.local import rollouts
from storeflow.components.risk.deploy import deploy_risk_local, risk_deploy_settings
from storeflow.components.risk.local_canary import assessments
from storeflow.components.risk.protocol import LEVELS_METADATA
from storeflow.pipelines.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local(trained):  # noqa: F811
    root, config, rows = trained
    config = {**config, "deploy": {"target": "local", "canary_steps": [25, 100], "min_requests": 50,
                                   "local_requests_per_step": 300, "local_step_timeout_seconds": 60,
                                   "max_p99_latency_ratio": 2.0},
              "risk": {"canary_min_orders": 300}}
    path = root / "local-canary.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(config), path, rows


def register_copy(settings, rows, flag_share: float | None = None) -> str:
    """Register risk v1's model again as a new champion (the pipeline's stage would have made it champion);
    ``flag_share``: with its HIGH cut moved so it flags that share of the store's orders (levels set wrongly)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient()
    import tempfile

    # a copy (without dst_path MLflow hands back the local artifact store's own files)
    target = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=tempfile.mkdtemp()))
    (target / "registered_model_meta").unlink(missing_ok=True)
    if flag_share is not None:
        model = mlflow.sklearn.load_model(str(target))
        scores = model.predict_proba(rows[list(model.feature_names_in_)])[:, 1]
        mlmodel = yaml.safe_load((target / "MLmodel").read_text())
        levels = mlmodel["metadata"][LEVELS_METADATA]
        high = float(np.quantile(scores, 1 - flag_share))
        mlmodel["metadata"][LEVELS_METADATA] = {"high": high, "medium": min(float(levels["medium"]), high)}
        (target / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(target), "model")
    version = str(mlflow.register_model(f"runs:/{run.info.run_id}/model", NAME).version)
    client.set_registered_model_alias(NAME, "champion", version)
    return version


def champion(settings) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_a_challenger_flagging_far_more_orders_is_rolled_back(local):
    settings, path, rows = local
    bad = register_copy(settings, rows, flag_share=0.2)
    entry = deploy_risk_local(settings, bad, "run-bad", "1")
    assert entry["outcome"] == "rolled-back", json.dumps(entry["steps"], indent=1)
    [step] = entry["steps"]
    assert step["percent"] == 25 and step["canary_orders"] >= 300 and step["champion_orders"] >= 300
    assert step["canary_alerts"] / step["canary_orders"] > 2 * step["champion_alerts"] / step["champion_orders"]
    assert "alert rate" in entry["reasons"][0] and "scored HIGH) against champion's" in entry["reasons"][0]
    assert champion(settings) == "1"  # serve-risk serves the old champion from its next start
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=settings.tracking_uri).get_model_version(NAME, bad).tags
    assert (tags["storeflow.deploy.state"], tags["storeflow.deploy.target"]) == ("rolled-back", "local")
    shown = CliRunner().invoke(app, ["status", "--model", "risk", "--config", str(path)])
    assert shown.exit_code == 0, shown.output
    last = json.loads(shown.stdout)["last_rollout"]
    assert (last["model_version"], last["outcome"], last["previous_champion"]) == (bad, "rolled-back", "1")


def test_a_healthy_challenger_goes_through_the_steps_and_is_promoted(local):
    settings, _, rows = local
    same = register_copy(settings, rows)
    entry = deploy_risk_local(settings, same, "run-same", "1")
    assert entry["outcome"] == "promoted", entry
    assert [(s["percent"], s["action"]) for s in entry["steps"] if s["action"] != "hold"] == [(25, "promote")]
    judged = entry["steps"][-1]
    assert judged["canary_error_rate"] == 0 and judged["canary_orders"] >= 300
    assert champion(settings) == same
    assert rollouts(risk_deploy_settings(settings))[-1]["model_version"] == same
    assert not list((settings.project.state_dir / "risk" / "predictions").glob("*"))  # canary traffic is not logged


def test_assessments_are_read_per_version_from_the_exposition():
    text = "\n".join([
        "# TYPE storeflow_risk_assessments counter",
        'storeflow_risk_assessments_total{level="HIGH",model_version="2"} 30.0',
        'storeflow_risk_assessments_total{level="LOW",model_version="2"} 900.0',
        'storeflow_risk_assessments_total{level="MEDIUM",model_version="2"} 70.0',
        'storeflow_risk_assessments_total{level="LOW",model_version="3"} 5.0',
        'storeflow_risk_assessments_created{level="LOW",model_version="3"} 1.7e9', ""])
    assert assessments(text) == {"2": (1000.0, 30.0), "3": (5.0, 0.0)}
