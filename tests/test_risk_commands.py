"""`storeflow status|promote|rollback --model risk` drive the order risk service, as the plain commands drive the
propensity model's: on deploy.target kserve the risk InferenceService (the loopback KServe API of test_deploy,
reached through a kubeconfig as an operator's would be), on local the risk model's MLflow aliases and the local
record its pipeline's risk-deploy step appends to. The propensity service is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_deploy import KubeStub, merge_patch
from test_risk_canary import bootstrap, roll
from typer.testing import CliRunner

from storeflow.components.config import load_settings
from storeflow.components.deploy.inference_service import ModelVersionRef, start_canary_patch
from storeflow.components.risk.deploy import deploy_risk_local, risk_deploy_settings
from storeflow.pipelines.cli import app
from tests.conftest import quick_overrides

NAME = "storeflow-order-risk"


def storeflow(config: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 else result.output


def write_config(tmp_path: Path, **deploy) -> tuple[Path, object]:
    config = quick_overrides(tmp_path, deploy={"namespace": "storeflow", **deploy})
    path = tmp_path / "storeflow.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, load_settings(config)


def kubeconfig(tmp_path: Path, kube: KubeStub) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stub",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{kube.server.server_port}"}}],
        "users": [{"name": "stub", "user": {"token": "operator"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": "storeflow"}}]}))
    return path


def test_kserve_status_promote_and_rollback_of_the_risk_service(tmp_path, settings, monkeypatch):
    config, ours = write_config(tmp_path, target="kserve", canary_steps=[10, 100])
    kube = KubeStub(bootstrap())
    try:
        roll(ours, kube, "3", {})  # the pipeline's first risk rollout: v3 serves
        path = str(kubeconfig(tmp_path, kube))
        monkeypatch.setenv("KUBECONFIG", path)
        # kubernetes reads $KUBECONFIG once, when first imported (this process imported it already)
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", path)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        risk = risk_deploy_settings(ours)

        def canary_of_v4():
            kube.obj = merge_patch(kube.obj, start_canary_patch(
                kube.obj, risk, ModelVersionRef(NAME, "4", "s3://mlflow/7/4/artifacts/model"), "run-4", 10))

        canary_of_v4()
        shown = storeflow(config, "status", "--model", "risk")
        assert (shown["inference_service"], shown["state"], shown["model_version"], shown["champion_version"],
                shown["canary_percent"]) == (f"storeflow/{NAME}", "canary", "4", "3", 10)
        # the plain command is the propensity model's, whose service this cluster does not run
        assert "storeflow/storeflow-repeat-purchase does not exist" in storeflow(config, "status", code=1)

        back = storeflow(config, "rollback", "--model", "risk", "--reason", "alerts doubled")
        assert (back["state"], back["model_version"], back["rollback_reason"]) == ("rolled-back", "3", "alerts doubled")
        assert kube.obj["spec"]["predictor"]["model"]["storageUri"] == "s3://mlflow/7/3/artifacts/model"

        canary_of_v4()
        promoted = storeflow(config, "promote", "--model", "risk")
        assert (promoted["state"], promoted["model_version"], promoted["canary_percent"]) == ("promoted", "4", None)
        assert kube.obj["spec"]["predictor"]["model"]["storageUri"] == "s3://mlflow/7/4/artifacts/model"
        assert {path for _, path, _, _ in kube.writes()} == {
            f"/apis/serving.kserve.io/v1beta1/namespaces/storeflow/inferenceservices/{NAME}"}
    finally:
        kube.server.shutdown()


@pytest.fixture
def registered(tmp_path):
    """Two registered risk versions (v1 champion, v2 challenger), v1 rolled out by the risk pipeline's local step."""
    from mlflow import MlflowClient

    config, ours = write_config(tmp_path, target="local")
    client = MlflowClient(tracking_uri=ours.tracking_uri, registry_uri=ours.tracking_uri)
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source=str(tmp_path))
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    deploy_risk_local(ours, "1", "run-1")
    return config, client


def test_local_status_promote_and_rollback_of_the_risk_model(registered):
    config, client = registered
    shown = storeflow(config, "status", "--model", "risk")
    assert (shown["model_name"], shown["champion_version"], shown["challenger_version"]) == (NAME, "1", "2")
    assert (shown["last_rollout"]["model_version"], shown["last_rollout"]["outcome"]) == ("1", "promoted-locally")
    propensity = storeflow(config, "status")  # the risk rollout is not the propensity model's
    assert (propensity["model_name"], propensity["champion_version"], propensity["last_rollout"]) == (
        "storeflow-repeat-purchase", None, None)

    assert storeflow(config, "promote", "--model", "risk")["champion_version"] == "2"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    back = storeflow(config, "rollback", "--model", "risk", "--reason", "alerts doubled")
    assert back["champion_version"] == "1" and back["last_rollout"]["outcome"] == "rolled-back-manually"
    assert client.get_model_version(NAME, "2").tags["storeflow.deploy.reason"] == "alerts doubled"
    assert "nothing to roll back to" in storeflow(config, "rollback", code=1)  # propensity: no rollout of its own


def test_model_recommendations_is_the_recommenders_service(tmp_path, monkeypatch):
    """`--model recommendations` reads recommendations.inference_service (before it, only `--set` overrides did)."""
    config, ours = write_config(tmp_path, target="kserve")
    served = bootstrap()
    served["metadata"]["name"] = ours.recommendations.inference_service
    kube = KubeStub(served)
    try:
        path = str(kubeconfig(tmp_path, kube))
        monkeypatch.setenv("KUBECONFIG", path)
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", path)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        shown = storeflow(config, "status", "--model", "recommendations")
        assert shown["inference_service"] == f"storeflow/{ours.recommendations.inference_service}"
        assert f"storeflow/{NAME} does not exist" in storeflow(config, "status", "--model", "risk", code=1)
    finally:
        kube.server.shutdown()
