"""Cluster manners in the compiled YAML: per-task resources, retries with backoff, timeouts; the cluster
values come from the settings given to `storeflow compile --config/--set`; every input is described."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from storeflow.components.config import DEFAULT_TASK_RESOURCES, load_settings
from storeflow.pipelines.cli import app
from storeflow.pipelines.training import RETRIED

PIPELINE_TASKS = {"training": ("ingest", "validate", "features", "train", "evaluate", "register", "deploy"),
                  "monitoring": ("ingest", "validate", "monitor", "retrain"), "recommendations": ("ingest", "validate", "product-features", "train-recommender", "evaluate-recommender",
                                      "register", "deploy"),
                  "risk": ("ingest", "validate", "risk", "risk-deploy")}


def _compile(out: Path, *args: str) -> None:
    result = CliRunner().invoke(app, ["compile", "--out", str(out), *args])
    assert result.exit_code == 0, result.output


def _pipeline(out: Path, name: str) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all((out / "pipelines" / f"{name}.yaml").read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _container(spec: dict, task: str) -> dict:
    executor = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")
    return spec["deploymentSpec"]["executors"][executor]["container"]


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    _compile(out)
    return out


@pytest.mark.parametrize("pipeline", sorted(PIPELINE_TASKS))
def test_every_task_has_the_configured_resources_timeout_and_retry(defaults: Path, pipeline: str) -> None:
    spec, platform = _pipeline(defaults, pipeline)
    configured = load_settings({}).kfp
    for task in PIPELINE_TASKS[pipeline]:
        name = task.replace("-", "_")  # kfp names train_recommender's task train-recommender
        sized = configured.resources[name]
        resources = _container(spec, task)["resources"]
        assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"],
                resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == (
            sized.cpu_request, sized.cpu_limit, sized.memory_request, sized.memory_limit), task
        executor = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")
        assert platform[executor]["activeDeadlineSeconds"] == str(sized.timeout_seconds), task
        retry = spec["root"]["dag"]["tasks"][task].get("retryPolicy")
        if name in RETRIED:
            assert retry == {"maxRetryCount": configured.retry.num_retries, "backoffDuration": "30s",
                             "backoffFactor": 2.0, "backoffMaxDuration": "600s"}, task
        else:
            assert retry is None, task
        # caching on only where the input artifacts decide the output with no side effect
        expected = {"enableCache": True} if task == "validate" else {}
        assert spec["root"]["dag"]["tasks"][task]["cachingOptions"] == expected, task
    # features and train hold the training set in memory: they get more than the tasks that move records
    if pipeline == "training":
        register = _container(spec, "register")["resources"]
        for big in ("features", "train"):
            assert _container(spec, big)["resources"]["memoryLimit"] > register["memoryLimit"]
            assert _container(spec, big)["resources"]["cpuLimit"] > register["cpuLimit"]


def test_network_tasks_retry_and_data_tasks_do_not() -> None:
    assert {"ingest", "evaluate", "register", "deploy"} <= RETRIED
    assert not {"validate", "features"} & RETRIED


def test_compile_config_and_set_change_the_compiled_cluster_values(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "image": {"repository": "registry.example.com/shop/storeflow", "tag": "9.9.9"},
        "kfp": {"state_pvc": "shop-state", "resources": {"train": {"memory_limit": "32Gi", "timeout_seconds": 900}}},
        "shopify": {"credentials_secret": "shop-admin-token"},
    }))
    out = tmp_path / "out"
    _compile(out, "--config", str(config), "--set", "kfp.resources.features.cpu_limit=3",
             "--set", "kfp.retry.num_retries=5", "--set", "kfp.retry.backoff_duration=1m")
    spec, platform = _pipeline(out, "training")
    for task in PIPELINE_TASKS["training"]:
        assert _container(spec, task)["image"] == "registry.example.com/shop/storeflow:9.9.9", task
        executor = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")
        assert [m["constant"] for m in platform[executor]["pvcMount"]] == ["shop-state"], task
    train = _container(spec, "train")["resources"]
    assert train["resourceMemoryLimit"] == "32Gi"
    assert train["resourceCpuLimit"] == DEFAULT_TASK_RESOURCES["train"]["cpu_limit"]  # the other values keep theirs
    assert platform["exec-train"]["activeDeadlineSeconds"] == "900"
    assert _container(spec, "features")["resources"]["resourceCpuLimit"] == "3"
    ingest = spec["root"]["dag"]["tasks"]["ingest"]["retryPolicy"]
    assert (ingest["maxRetryCount"], ingest["backoffDuration"]) == (5, "60s")
    assert platform["exec-ingest"]["secretAsEnv"][0]["secretName"] == "shop-admin-token"
    component = yaml.safe_load((out / "components" / "train.yaml").read_text())
    assert component["deploymentSpec"]["executors"]["exec-train"]["container"]["image"] == (
        "registry.example.com/shop/storeflow:9.9.9")
    # and the checked-in defaults are not what this compile wrote
    default_spec, _ = _pipeline(Path(__file__).parents[1] / "manifests", "training")
    assert _container(default_spec, "train")["image"] != "registry.example.com/shop/storeflow:9.9.9"


def test_without_a_state_pvc_every_training_task_gets_private_scratch_and_artifacts_link_the_stages(
        tmp_path: Path) -> None:
    """kfp.state_pvc empty: no task mounts a shared volume (a cluster whose only StorageClass is
    ReadWriteOnce runs the pipeline); each gets an emptyDir at the state path, and the stages are joined by
    KFP artifacts (Dataset, Model), not by paths on a volume."""
    out = tmp_path / "out"
    _compile(out, "--set", "kfp.state_pvc=")
    spec, platform = _pipeline(out, "training")
    for task in PIPELINE_TASKS["training"]:
        executor = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")
        assert "pvcMount" not in platform[executor], task
        assert platform[executor]["emptyDirMounts"] == [
            {"volumeName": "storeflow-state", "mountPath": "/var/lib/storeflow"}], task
    tasks = spec["root"]["dag"]["tasks"]
    artifact_inputs = {task: {name: (ref["taskOutputArtifact"]["producerTask"], ref["taskOutputArtifact"]["outputArtifactKey"])
                              for name, ref in tasks[task]["inputs"].get("artifacts", {}).items()} for task in tasks}
    assert artifact_inputs["validate"] == {"snapshot": ("ingest", "snapshot")}
    assert artifact_inputs["features"] == {"snapshot": ("ingest", "snapshot")}
    assert "validate" in tasks["features"]["dependentTasks"]  # the gate, without copying the snapshot again
    # The BG/NBD the training rows were scored with goes with the model too (the webhook receiver's, via MLflow).
    assert artifact_inputs["train"] == {"training_set": ("features", "training_set"),
                                        "baseline_model": ("features", "baseline_model")}
    assert artifact_inputs["evaluate"] == {"training_set": ("features", "training_set"), "model": ("train", "model")}
    assert artifact_inputs["register"] == {"model": ("train", "model")}
    types = {name: output["artifactType"]["schemaTitle"]
             for component in spec["components"].values()
             for name, output in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
    assert {types["snapshot"], types["training_set"], types["model"], types["registered_model"],
            types["baseline_model"]} == {
        "system.Dataset", "system.Model"}
    assert types["model_card"] == "system.Markdown" and types["challenger_curves"] == "system.ClassificationMetrics"


def test_compile_ignores_a_config_lying_around(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config/--set the compiled cluster values are the config model's defaults, whatever the cwd
    or environment holds (they were read at import time before)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storeflow.yaml").write_text(yaml.safe_dump({"image": {"repository": "stray/image"}}))
    monkeypatch.setenv("STOREFLOW_KFP__STATE_PVC", "stray-pvc")
    _compile(tmp_path / "out")
    spec, platform = _pipeline(tmp_path / "out", "training")
    assert not _container(spec, "ingest")["image"].startswith("stray/")
    assert [m["constant"] for m in platform["exec-ingest"]["pvcMount"]] == ["storeflow-state"]


def test_unknown_task_in_resources_is_a_config_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", "--out", str(tmp_path), "--set", "kfp.resources.trian.cpu_limit=2"])
    assert result.exit_code == 2 and "trian" in result.output


def _inputs(component_spec: dict) -> dict:
    inputs = component_spec.get("inputDefinitions", {})
    return {**inputs.get("parameters", {}), **inputs.get("artifacts", {})}


def test_every_pipeline_and_component_input_has_a_description(defaults: Path) -> None:
    checked = 0
    for path in sorted((defaults / "pipelines").glob("*.yaml")):
        spec, _ = yaml.safe_load_all(path.read_text())
        for name, component_spec in [("root", spec["root"]), *spec["components"].items()]:
            for input_name, definition in _inputs(component_spec).items():
                assert definition.get("description", "").strip(), f"{path.name}: {name}.{input_name}"
                checked += 1
    for path in sorted((defaults / "components").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        for input_name, definition in _inputs(spec["root"]).items():
            assert definition.get("description", "").strip(), f"{path.name}: {input_name}"
            checked += 1
    assert checked > 20
    spec, _ = yaml.safe_load_all((defaults / "pipelines" / "monitoring.yaml").read_text())
    assert "ISO 8601" in spec["root"]["inputDefinitions"]["parameters"]["window_end"]["description"]


def test_the_knobs_a_user_changes_per_run_are_typed_pipeline_inputs(defaults: Path) -> None:
    """A run from the KFP UI had one input, a 4 KB config_json string. Now each knob is a typed input whose
    default keeps the cluster's configured value ('' / -1), so the UI-default run is the configured run."""
    wanted = {"training": {"ingest_source": ("STRING", ""), "ingest_path": ("STRING", ""), "estimator": ("STRING", ""),
                           "label_horizon_days": ("NUMBER_INTEGER", -1), "promotion_margin": ("NUMBER_DOUBLE", -1.0),
                           "config_json": ("STRING", "{}")},
              "monitoring": {"window_end": ("STRING", ""), "model_version": ("STRING", ""),
                             "window_hours": ("NUMBER_DOUBLE", -1.0), "ingest_source": ("STRING", ""),
                             "ingest_path": ("STRING", ""), "config_json": ("STRING", "{}")}}
    for pipeline, inputs in wanted.items():
        spec, _ = _pipeline(defaults, pipeline)
        found = spec["root"]["inputDefinitions"]["parameters"]
        assert {name: (d["parameterType"], d["defaultValue"]) for name, d in found.items()} == inputs
    spec, _ = _pipeline(defaults, "training")
    horizon = {task: spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]["label_horizon_days"]
               for task in ("features", "train", "evaluate")}
    assert all(h == {"componentInputParameter": "label_horizon_days"} for h in horizon.values()), horizon


def test_run_inputs_left_at_their_defaults_keep_the_configured_values() -> None:
    from storeflow.components.config import ConfigError, load_run_settings, run_overrides

    config = '{"ingest": {"source": "csv", "path": "/data/orders.csv"}, "evaluate": {"margin": 0.01}}'
    kept = run_overrides(config, {"ingest.source": "", "evaluate.margin": -1, "features.label.horizon_days": -1})
    assert kept == {"ingest": {"source": "csv", "path": "/data/orders.csv"}, "evaluate": {"margin": 0.01}}
    given = load_run_settings(config, {"ingest.source": "synthetic", "evaluate.margin": 0.0,
                                       "features.label.horizon_days": 90})
    assert (given.ingest.source, given.evaluate.margin, given.features.label.horizon_days) == ("synthetic", 0.0, 90)
    with pytest.raises(ConfigError, match="ingest.path is required when ingest.source is 'jsonl'"):
        load_run_settings("{}", {"ingest.source": "jsonl"})
    with pytest.raises(ConfigError, match="config JSON is not valid"):
        load_run_settings("{nope", {})


def test_the_monitor_task_reads_the_shipped_prediction_log_with_the_buckets_login(defaults: Path) -> None:
    """The monitoring pipeline's monitor task shares no volume with the transformer: it reads the prediction log
    from the object store, so it gets the bucket's Secret (optional: workload identity needs none)."""
    from storeflow.components.deploy.inference_service import OBJECT_STORE_KEYS

    _, platform = _pipeline(defaults, "monitoring")
    (ref,) = [s for s in platform["exec-monitor"]["secretAsEnv"] if s["secretName"] == "storeflow-artifact-store"]
    assert ref["optional"] and {k["envVar"] for k in ref["keyToEnv"]} == set(OBJECT_STORE_KEYS)


def test_the_monitor_task_labels_decay_from_the_snapshot_its_own_run_ingested(defaults: Path) -> None:
    """Decay needs the orders placed after the predictions: the monitoring pipeline ingests and validates the
    store and hands the monitor task the snapshot as a Dataset, instead of reading the newest snapshot a
    training run left on a shared volume (which an RWO-only cluster does not have)."""
    spec, _ = _pipeline(defaults, "monitoring")
    tasks = spec["root"]["dag"]["tasks"]
    ref = tasks["monitor"]["inputs"]["artifacts"]["snapshot"]["taskOutputArtifact"]
    assert (ref["producerTask"], ref["outputArtifactKey"]) == ("ingest", "snapshot")
    assert "validate" in tasks["monitor"]["dependentTasks"]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["ingest_source"]["defaultValue"] == "" and inputs["ingest_path"]["defaultValue"] == ""
