"""The order risk pipeline (ingest → validate → risk) compiled and run locally with kfp.local, as a cluster
would run it: the rows, the model, the metrics of the model and both baselines, and the registry decision."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp import components
from mlflow import MlflowClient

from storeflow.components.config import load_settings
from storeflow.pipelines.packages import MANIFESTS
from tests.conftest import quick_overrides

STORE = {"customers": 2_000, "orders": 24_000, "products": 80, "seed": 31, "fraud_rate": 0.006}


def test_the_risk_component_yaml_loads_with_every_input_described():
    op = components.load_component_from_file(str(MANIFESTS / "components" / "risk.yaml"))
    assert op.name == "risk"
    spec = next(yaml.safe_load_all((MANIFESTS / "components" / "risk.yaml").read_text()))["components"]["comp-risk"]
    outputs = spec["outputDefinitions"]["artifacts"]
    assert outputs["model_curves"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert outputs["rows"]["artifactType"]["schemaTitle"] == "system.Dataset"
    for name, value in spec["inputDefinitions"]["parameters"].items():
        assert value.get("description"), name


@pytest.mark.slow
def test_storeflow_run_runs_the_risk_pipeline_and_registers_a_judged_model(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("STOREFLOW_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "storeflow.yaml"
    config.write_text(yaml.safe_dump(quick_overrides(tmp_path, ingest={"source": "synthetic", "synthetic": STORE})))
    done = CliRunner().invoke(app, ["run", "--pipeline", "risk", "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "Shopify's risk level" in done.output and "Decision:" in done.output
    settings = load_settings(path=config)
    # both URIs: without registry_uri the client reads the registry an earlier test of this process set globally
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version(settings.risk.model_name, "1")
    assert version.tags["storeflow.decision"] == "promote", done.output
    champion = client.get_model_version_by_alias(settings.risk.model_name, "champion")
    assert str(champion.version) == "1"
    metrics = client.get_run(champion.run_id).data.metrics
    assert {"model.pr_auc", "shopify.pr_auc", "rules.pr_auc", "model.recall_at_1pct_fpr"} <= set(metrics)
    artifacts = next((tmp_path / "state" / "runs").iterdir()) / "artifacts"
    rows = pd.read_parquet(next(artifacts.glob("*/risk/rows")))
    assert rows["order_id"].is_unique and rows["fraud"].sum() > 50
    assert (next(artifacts.glob("*/risk/model")) / "MLmodel").exists()
    # the risk-deploy step (deploy.target local): the champion serve-risk serves from its next start, recorded
    from storeflow.components.deploy.local import rollout_record

    [rolled] = [__import__("json").loads(line) for line in rollout_record(settings).read_text().splitlines()]
    assert (rolled["model_name"], rolled["model_version"], rolled["outcome"], rolled["previous_champion"]) == (
        settings.risk.model_name, "1", "promoted-locally", None)
    assert client.get_model_version(settings.risk.model_name, "1").tags["storeflow.deploy.target"] == "local"


def test_an_unknown_pipeline_names_risk_among_those_that_run():
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    done = CliRunner().invoke(app, ["run", "--pipeline", "nope"])
    text = re.sub(r"[│╭╮╰╯─\s]+", " ", done.output)  # rich's error box, unwrapped
    assert done.exit_code != 0 and "training, recommendations or risk" in text
