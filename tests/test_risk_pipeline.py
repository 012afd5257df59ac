"""The order risk pipeline (ingest → validate → risk) compiled and run locally with kfp.local, as a cluster
would run it: the rows, the model, the metrics of the model and both baselines, and the registry decision."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp import components

from storeflow.components.config import load_settings
from storeflow.pipelines.local import run_local
from storeflow.pipelines.packages import MANIFESTS
from storeflow.pipelines.risk import STAGES, risk_pipeline
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
def test_the_pipeline_runs_locally_and_registers_a_judged_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("STOREFLOW_")]:
        monkeypatch.delenv(key)
    settings = load_settings(quick_overrides(tmp_path, ingest={"source": "synthetic", "synthetic": STORE}))
    run = run_local(risk_pipeline, settings, STAGES)
    result = json.loads(run.output)
    assert result["model_name"] == "storeflow-order-risk" and result["version"] == "1"
    assert result["promoted"], result["reason"]
    artifacts = run.log.parent / "artifacts"
    rows = pd.read_parquet(next(artifacts.glob("*/risk/rows")))
    assert rows["order_id"].is_unique and rows["fraud"].sum() > 50
    report = next(artifacts.glob("*/risk/report")).read_text()
    assert "Shopify's risk level" in report and "Decision:" in report
    assert (next(artifacts.glob("*/risk/model")) / "MLmodel").exists()
