"""The kustomize overlays render, every object passes its schema, and every container is pinned and confined.

Rendering runs the installed ``kubectl kustomize``; core kinds are validated with kubernetes-validate
(strict: unknown fields fail), KServe kinds against the CRD openAPIV3Schema in tests/data/crds. This
checks the manifests, not a cluster: nothing is applied anywhere.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_deploy import assert_valid

from storeflow.components.config import load_settings
from storeflow.components.deploy.inference_service import ModelVersionRef, predictor_spec, transformer_spec

KUSTOMIZE = Path(__file__).parents[1] / "kustomize"
OVERLAYS = ["dev", "staging", "production"]
KUBERNETES_VERSION = "1.32.0"  # the kubectl installed here; the schemas kubernetes-validate checks against

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: cannot render kustomize overlays")


@lru_cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container storeflow declares in an object, wherever its kind keeps them."""
    spec = obj.get("spec", {})
    if obj["kind"] == "Deployment":
        pod = spec["template"]["spec"]
        return pod.get("containers", []) + pod.get("initContainers", [])
    if obj["kind"] == "ServingRuntime":
        return spec.get("containers", [])
    if obj["kind"] == "InferenceService":
        found = [spec["predictor"]["model"]] if "model" in spec["predictor"] else []
        return found + spec["predictor"].get("containers", []) + spec.get("transformer", {}).get("containers", [])
    return []


def container_problems(obj: dict[str, Any]) -> list[str]:
    problems = []
    for c in containers(obj):
        where = f"{obj['kind']}/{obj['metadata']['name']} container {c.get('name', '<model>')}"
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})):
                problems.append(f"{where}: no cpu/memory {kind}")
        sc = c.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True or sc.get("runAsUser", 0) == 0:
            problems.append(f"{where}: may run as root")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allows privilege escalation")
        image = c.get("image", "")
        if image or obj["kind"] != "InferenceService":  # the ISVC model container takes the runtime's image
            name, _, tag = image.rpartition(":")
            if "@sha256:" not in image and (not name or "/" in tag or tag in ("", "latest")):
                problems.append(f"{where}: image {image!r} is not pinned to a version")
    return problems


def test_container_check_catches_root_floating_and_unbounded_containers():
    bad = {"kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "redis:latest"},
                                                          {"name": "d", "image": "registry:5000/redis"}]}}}}
    problems = container_problems(bad)
    assert "Deployment/x container c: no cpu/memory requests" in problems
    assert "Deployment/x container c: may run as root" in problems
    assert "Deployment/x container c: image 'redis:latest' is not pinned to a version" in problems
    assert "Deployment/x container d: image 'registry:5000/redis' is not pinned to a version" in problems


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay):
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"InferenceService", "ServingRuntime", "Deployment", "Service", "Role", "RoleBinding", "NetworkPolicy",
            "ConfigMap", "ServiceAccount"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            assert_valid(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_is_unbounded_root_or_floating(overlay):
    objects = render(overlay)
    assert sum(len(containers(o)) for o in objects) >= 5
    assert [p for o in objects for p in container_problems(o)] == []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_are_shipped(overlay):
    assert [o["metadata"]["name"] for o in render(overlay) if o["kind"] == "Secret"] == []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_runner_may_only_get_and_patch_its_inference_service(overlay):
    objects = render(overlay)
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "storeflow-pipeline-runner")
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "resourceNames": ["storeflow-repeat-purchase"], "verbs": ["get", "patch"]}]
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    namespace = role["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "storeflow-pipeline-runner", "namespace": namespace}]


@needs_kubectl
@pytest.mark.parametrize(("overlay", "namespace", "steps"), [
    ("dev", "storeflow-dev", [50, 100]), ("staging", "storeflow-staging", [10, 50, 100]),
    ("production", "storeflow", [5, 25, 50, 100]),
])
def test_overlay_config_drives_the_same_predictor_the_pipeline_deploys(overlay, namespace, steps, monkeypatch, tmp_path):
    """The storeflow ConfigMap of an overlay loads as Settings, and the deploy code then builds the
    replicas and resources that overlay's InferenceService declares: kustomize and pipeline agree."""
    objects = render(overlay)
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "storeflow-config")
    monkeypatch.chdir(tmp_path)
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert (settings.deploy.namespace, settings.deploy.canary_steps) == (namespace, steps)

    isvc = next(o for o in objects if o["kind"] == "InferenceService" and o["metadata"]["name"] == "storeflow-repeat-purchase")
    assert isvc["metadata"]["namespace"] == namespace
    built = predictor_spec(settings, ModelVersionRef("m", "1", "s3://b/m"))
    declared = isvc["spec"]["predictor"]
    assert (built["minReplicas"], built["maxReplicas"]) == (declared["minReplicas"], declared["maxReplicas"])
    assert built["model"]["resources"] == declared["model"]["resources"]
    assert built["model"]["securityContext"] == declared["model"]["securityContext"]
    for key in ("securityContext", "scaleMetric", "scaleTarget"):  # a merge patch would null what it lacks
        assert built[key] == declared[key], key
        assert transformer_spec(settings)[key] == isvc["spec"]["transformer"][key], key
    transformer = transformer_spec(settings)["containers"][0]
    assert transformer["livenessProbe"] == isvc["spec"]["transformer"]["containers"][0]["livenessProbe"]
    assert transformer["args"] == isvc["spec"]["transformer"]["containers"][0]["args"]
    assert transformer["env"] == isvc["spec"]["transformer"]["containers"][0]["env"]
    assert transformer["volumeMounts"] == isvc["spec"]["transformer"]["containers"][0]["volumeMounts"]
    assert transformer_spec(settings)["volumes"] == isvc["spec"]["transformer"]["volumes"]


def _claims(obj: dict[str, Any]) -> dict[str, str]:
    """PVC claim name by volume name, for the pods an object declares."""
    spec = obj.get("spec", {})
    pods = {"Deployment": [spec.get("template", {}).get("spec", {})],
            "InferenceService": [spec.get("predictor", {}), spec.get("transformer", {})]}.get(obj["kind"], [])
    return {v["name"]: v["persistentVolumeClaim"]["claimName"]
            for pod in pods for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_state_volume_pods_and_pipeline_tasks_share_is_shipped(overlay):
    """Every claimed PVC exists (a missing one leaves pods Pending) and the pipeline's state volume is
    ReadWriteMany; the transformer claims none: it writes its prediction log in its own emptyDir and ships
    it to the object store the ConfigMap names, the one a cluster monitoring task reads (with the login both
    get from the MLflow bucket's Secret)."""
    from storeflow.components.deploy.inference_service import OBJECT_STORE_KEYS

    objects = render(overlay)
    pvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    claimed = {claim for o in objects for claim in _claims(o).values()}
    settings = load_settings()
    assert settings.kfp.state_pvc in claimed and claimed <= set(pvcs)
    assert pvcs[settings.kfp.state_pvc]["spec"]["accessModes"] == ["ReadWriteMany"]

    isvc = next(o for o in objects if o["kind"] == "InferenceService" and o["metadata"]["name"] == "storeflow-repeat-purchase")
    transformer = isvc["spec"]["transformer"]["containers"][0]
    assert _claims(isvc) == {}  # replicas on any node, no volume shared with them
    mounts = {m["name"]: m["mountPath"] for m in transformer["volumeMounts"]}
    volumes = {v["name"]: v for v in isvc["spec"]["transformer"]["volumes"]}
    env = {e["name"]: e for e in transformer["env"]}
    log_dir = Path(env["STOREFLOW_SERVING__PREDICTION_LOG_DIR"]["value"])
    assert log_dir.is_relative_to(mounts["tmp"]) and "emptyDir" in volumes["tmp"]
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "storeflow-config")
    assert config["data"]["STOREFLOW_SERVING__PREDICTION_LOG_STORE"].startswith("s3://")
    assert {"configMapRef": {"name": "storeflow-config"}} in transformer["envFrom"]
    for key in OBJECT_STORE_KEYS:
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == settings.serving.prediction_log_store_secret


@needs_kubectl
def test_production_pins_the_image_version_it_names():
    images = {c["image"] for o in render("production") for c in containers(o) if c.get("image")}
    assert images == {"ghcr.io/storeflow/storeflow:0.1.0"}  # MLflow's server too: it needs psycopg and boto3


@needs_kubectl
def test_the_base_alone_never_floats_and_names_this_release():
    """`kubectl apply -k kustomize/base` (no overlay) still runs pinned images: the release of this package."""
    from storeflow.components.config import ImageConfig

    objects = render("../base")
    assert [p for o in objects for p in container_problems(o)] == []
    storeflow = {c["image"] for o in objects for c in containers(o) if "storeflow/storeflow" in c.get("image", "")}
    assert storeflow == {ImageConfig().reference}


@needs_kubectl
def test_production_overlay_values_reach_every_task_of_the_compiled_pipeline(monkeypatch, tmp_path):
    """The overlay's storeflow-config ConfigMap (production: canary steps [5, 25, 50, 100], 2 replicas) was
    never given to pipeline tasks, so a run's deploy step used the defaults. Every task of the checked-in
    pipeline now mounts it where $STOREFLOW_CONFIG_DIR points; laid out as the kubelet lays out a ConfigMap
    volume, it loads under a UI-default run's config_json ('{}')."""
    config = next(o for o in render("production")
                  if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "storeflow-config")
    spec, platform = yaml.safe_load_all((Path(__file__).parents[1] / "manifests/pipelines/training.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for name, executor in spec["deploymentSpec"]["executors"].items():
        (mount,) = executors[name]["configMapAsVolume"]
        assert (mount["configMapName"], mount["optional"]) == ("storeflow-config", True), name
        env = {e["name"]: e["value"] for e in executor["container"]["env"]}
        assert env["STOREFLOW_CONFIG_DIR"] == mount["mountPath"], name

    volume = tmp_path / "etc-storeflow-config"
    data = volume / "..2026_12_04_00_00_00.000000000"  # the kubelet's layout: files behind ..data links
    data.mkdir(parents=True)
    for key, value in config["data"].items():
        (data / key).write_text(value)
        (volume / key).symlink_to(Path("..data") / key)
    (volume / "..data").symlink_to(data.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(volume))
    settings = load_settings("{}")
    assert settings.deploy.canary_steps == [5, 25, 50, 100]
    assert predictor_spec(settings, ModelVersionRef("m", "1", "s3://b/m"))["minReplicas"] == 2
    assert settings.registry.tracking_uri == "http://mlflow:5000"
    assert settings.features.feast.online_store == "redis"
    # A UI-default run does what the cluster is for: state on the mounted volume, a KServe rollout,
    # retraining through this cluster's KFP API, the store's own data.
    assert str(settings.project.state_dir) == mount["mountPath"].replace("/etc/storeflow/config", "/var/lib/storeflow")
    assert (settings.deploy.target, settings.monitor.retrain, settings.ingest.source) == ("kserve", "cluster", "shopify")
    assert settings.kfp.host.startswith("http://ml-pipeline.kubeflow")
    # A run's own config_json still wins over the namespace's values.
    assert load_settings('{"deploy": {"canary_steps": [50, 100]}}').deploy.canary_steps == [50, 100]
