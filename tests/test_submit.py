"""`storeflow submit` / `schedule`: the exact requests kfp.Client sends to a Kubeflow Pipelines API.

The API is a recording stand-in on 127.0.0.1 (tests/kfp_api.py) answering in the real v2beta1 shapes;
no cluster was contacted.
"""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kfp_api import KfpApi
from storeflow.components.config import load_settings
from storeflow.pipelines.cli import app
from storeflow.pipelines.compile import MANIFESTS
from storeflow.pipelines.submit import schedule, submit


@pytest.fixture
def cluster_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    return load_settings({"project": {"state_dir": str(tmp_path / "laptop-state")},
                          "kfp": {"namespace": "shop-ml", "experiment": "storeflow-prod",
                                  "token_path": str(tmp_path / "no-token")},
                          "registry": {"tracking_uri": "http://mlflow.storeflow.svc:5000"}})


def test_submit_sends_the_compiled_pipeline_with_cluster_settings(cluster_settings) -> None:
    with KfpApi() as api:
        submitted = submit(cluster_settings, host=api.url, token="s3cret", run_name="nightly")
    assert submitted.run_id == "0b5c9a3e-0000-4000-8000-00000000abcd"
    assert submitted.url.endswith("/#/runs/details/0b5c9a3e-0000-4000-8000-00000000abcd")
    assert all(r.headers["authorization"] == "Bearer s3cret" for r in api.requests)
    calls = [r for r in api.requests if "healthz" not in r.path]
    assert len(calls) == 3
    lookup, make_experiment, create = calls
    assert lookup.method == "GET" and "namespace=shop-ml" in lookup.path and "storeflow-prod" in lookup.path
    assert (make_experiment.method, make_experiment.path) == ("POST", "/apis/v2beta1/experiments")
    assert make_experiment.body == {"display_name": "storeflow-prod", "namespace": "shop-ml"}
    assert (create.method, create.path) == ("POST", "/apis/v2beta1/runs")
    assert create.body["display_name"] == "nightly"
    assert create.body["service_account"] == "storeflow-pipeline-runner"
    assert create.body["experiment_id"] == "6f1e2c3a-0000-4000-8000-000000000001"  # the one just created
    pipeline_spec, platform_spec = yaml.safe_load_all((MANIFESTS / "pipelines" / "training.yaml").read_text())
    assert create.body["pipeline_spec"] == {"pipeline_spec": pipeline_spec, "platform_spec": platform_spec}
    mounts = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["pvcMount"][0]["mountPath"] == "/var/lib/storeflow" for e in mounts.values())
    sent = json.loads(create.body["runtime_config"]["parameters"]["config_json"])
    assert sent["project"]["state_dir"] == "/var/lib/storeflow"  # the task's mounted volume, not the laptop
    assert sent["registry"]["tracking_uri"] == "http://mlflow.storeflow.svc:5000"
    # Defaults the submitter never set are not sent: they would override the namespace's storeflow-config
    # ConfigMap, which every task mounts (deploy.target=local and monitor.retrain=local were sent).
    assert "deploy" not in sent and "monitor" not in sent and "ingest" not in sent


def test_in_cluster_token_file_is_used(cluster_settings, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("projected-token\n")
    cluster_settings.kfp.token_path = token
    with KfpApi() as api:
        submit(cluster_settings, host=api.url)
    assert api.requests[-1].headers["authorization"] == "Bearer projected-token"


def test_schedule_creates_a_recurring_run(cluster_settings) -> None:
    with KfpApi() as api:
        job = schedule(cluster_settings, "0 0 3 * * *", host=api.url, token="t")
    assert job == "9d8c7b6a-0000-4000-8000-00000000feed"
    body = api.requests[-1].body
    assert api.requests[-1].path == "/apis/v2beta1/recurringruns"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["display_name"] == "storeflow-retraining"


def test_monitoring_pipeline_is_submitted_and_scheduled_too(cluster_settings) -> None:
    with KfpApi() as api:
        submit(cluster_settings, host=api.url, token="t", pipeline="monitoring")
        schedule(cluster_settings, "0 0 * * * *", host=api.url, token="t", pipeline="monitoring")
    create = next(r for r in api.requests if r.path == "/apis/v2beta1/runs")
    spec = yaml.safe_load_all((MANIFESTS / "pipelines" / "monitoring.yaml").read_text())
    assert create.body["pipeline_spec"]["pipeline_spec"] == next(spec)
    recurring = api.requests[-1].body
    assert recurring["display_name"] == "storeflow-monitoring"
    assert recurring["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "storeflow-monitoring"
    with pytest.raises(ValueError, match="unknown pipeline 'scoring'"):
        submit(cluster_settings, host="http://127.0.0.1:9", token="t", pipeline="scoring")


def test_without_the_source_tree_the_pipeline_is_compiled_on_the_spot(tmp_path: Path) -> None:
    """In the project image there is no manifests/ (monitor.retrain: cluster submits from there)."""
    from storeflow.pipelines.compile import pipeline_package

    fresh = pipeline_package("training", manifests=tmp_path / "not-here")
    assert fresh.exists() and fresh != MANIFESTS / "pipelines" / "training.yaml"
    assert fresh.read_text() == (MANIFESTS / "pipelines" / "training.yaml").read_text()
    assert pipeline_package("training") == MANIFESTS / "pipelines" / "training.yaml"


def test_bad_cron_and_missing_host_are_named(cluster_settings) -> None:
    with pytest.raises(ValueError, match="6 fields"):
        schedule(cluster_settings, "0 3 * * *", host="http://127.0.0.1:9", token="t")
    result = CliRunner().invoke(app, ["submit"])
    assert result.exit_code == 2 and "no Kubeflow Pipelines host" in result.output


def test_compiled_yaml_is_current_and_pinned() -> None:
    from kfp import components

    from storeflow.pipelines.compile import check

    staleness = check()
    assert not staleness.stale, f"run `storeflow compile`; stale: {staleness.stale}\n{staleness.diff}"
    for path in (MANIFESTS / "components").glob("*.yaml"):
        assert components.load_component_from_file(str(path)).name
    text = (MANIFESTS / "pipelines" / "training.yaml").read_text()
    images = {line.split("image:")[1].strip() for line in text.splitlines() if "image:" in line}
    assert images and all(":" in i and not i.endswith(":latest") for i in images)
    assert components.load_component_from_file(str(MANIFESTS / "pipelines" / "training.yaml"))


def test_a_connection_setting_the_cluster_cannot_resolve_is_refused_before_sending(
        cluster_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in the submitter's own STOREFLOW_ variable is only a reference: the cluster's tasks get the
    online store's connection string from its Secret as ${REDIS_CONNECTION_STRING}, never from the laptop."""
    variable = "STOREFLOW_FEATURES__FEAST__REDIS_CONNECTION_STRING"
    monkeypatch.setenv(variable, "redis.storeflow.svc:6379,password=laptop-pw-5c1d")
    laptop = load_settings({**json.loads(cluster_settings.to_json()), "features": {"feast": {"online_store": "redis"}}})
    with KfpApi() as api:
        with pytest.raises(ValueError, match=rf"features.feast.redis_connection_string refers to {variable}, which "
                                             r"cluster tasks do not have; on a cluster refer to .*REDIS_CONNECTION_STRING"):
            submit(laptop, host=api.url, token="t")
        assert api.requests == []
        laptop.features.feast.redis_connection_string = "${REDIS_CONNECTION_STRING}"
        submit(laptop, host=api.url, token="t")
    sent = next(r for r in api.requests if r.path == "/apis/v2beta1/runs").body["runtime_config"]["parameters"]
    assert json.loads(sent["config_json"])["features"]["feast"]["redis_connection_string"] == "${REDIS_CONNECTION_STRING}"
    executors = yaml.safe_load_all((MANIFESTS / "pipelines" / "training.yaml").read_text())
    secrets = {name: [s["secretName"] for s in e.get("secretAsEnv", [])]
               for name, e in list(executors)[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items()}
    assert "storeflow-online-store" in secrets["exec-features"] and "storeflow-mlflow-client" in secrets["exec-train"]
    assert secrets["exec-validate"] == []  # a task gets only the Secrets it uses


def test_submit_and_schedule_send_the_pipeline_compiled_for_the_users_config(cluster_settings) -> None:
    """The image, resources, retries and timeouts are compiled into the tasks (config_json cannot change them):
    a cluster config's image and a bigger train task must reach the cluster, not the checked-in defaults."""
    settings = load_settings({**json.loads(cluster_settings.to_json()),
                              "image": {"repository": "registry.example.com/shop/storeflow", "tag": "9.9.9"},
                              "kfp": {**json.loads(cluster_settings.to_json())["kfp"],
                                      "resources": {"train": {"memory_limit": "16Gi"}}}})
    with KfpApi() as api:
        submit(settings, host=api.url, token="t")
        schedule(settings, "0 0 3 * * *", host=api.url, token="t")
    sent = [r.body["pipeline_spec"]["pipeline_spec"] for r in api.requests
            if r.path in ("/apis/v2beta1/runs", "/apis/v2beta1/recurringruns")]
    assert len(sent) == 2
    for spec in sent:
        executors = spec["deploymentSpec"]["executors"]
        assert {e["container"]["image"] for e in executors.values()} == {"registry.example.com/shop/storeflow:9.9.9"}
        assert executors["exec-train"]["container"]["resources"]["resourceMemoryLimit"] == "16Gi"


def test_submit_prints_the_run_and_no_warning(tmp_path: Path) -> None:
    """kfp.Client's FutureWarning about KFP versions came out on stderr on every submit, with a source path."""
    import os
    import subprocess
    import sys

    with KfpApi() as api:
        done = subprocess.run([str(Path(sys.executable).parent / "storeflow"), "submit", "--host", api.url,
                               "--token", "t", "--set", f"kfp.token_path={tmp_path / 'no-token'}",
                               "--set", f"project.state_dir={tmp_path / 'state'}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={k: v for k, v in os.environ.items() if not k.startswith("STOREFLOW_")})
    assert done.returncode == 0, done.stderr
    assert "submitted run 0b5c9a3e-0000-4000-8000-00000000abcd" in done.stdout
    assert "Warning" not in done.stderr, done.stderr
