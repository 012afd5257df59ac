"""Deploying a model version to KServe: the exact requests the kubernetes client sends, and what they leave.

A real ``kubernetes.client.ApiClient`` talks to a recording HTTP server on 127.0.0.1 that starts from
recorded-format InferenceService objects (tests/data/k8s) and applies merge patches as the API server
does; Prometheus answers come from the loopback stub of test_canary_prometheus. Every body and every
resulting object is checked against the KServe CRD schema (tests/data/crds). No cluster is involved.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_canary_prometheus import PrometheusStub, serving

from storeflow.components.deploy import DeployError, ModelVersionRef, commands, deploy_stage
from storeflow.components.deploy.kube import connect
from storeflow.components.deploy.prometheus import Prometheus
from storeflow.components.deploy.registry import cluster_storage_uri, record_rollout, resolve_model_version

DATA = Path(__file__).parent / "data"
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/storeflow/inferenceservices"
V4 = ModelVersionRef("storeflow-repeat-purchase", "4", "s3://mlflow/1/9d2f/artifacts/model")
V3_URI = "s3://mlflow/1/0c5e7d6f2a8b4c1e9f3a7b6d5c4e3f21/artifacts/model"
HEALTHY = {"requests": 1800, "errors": 9, "p99": 0.08, "scores": [0.2, 0.3, 0.3, 0.1, 0.1]}


# --- CRD schema checks, shared with test_kustomize ------------------------------------------------------

@lru_cache
def crd_schema(kind: str) -> dict[str, Any]:
    files = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes"}
    path = DATA / "crds" / f"serving.kserve.io_{files[kind]}.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["storage"])["schema"]["openAPIV3Schema"]


def pruned_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would silently drop (structural pruning): not in the schema's properties."""
    if isinstance(obj, dict) and schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if props is None and isinstance(extra, dict):
            return [p for k, v in obj.items() for p in pruned_fields(v, extra, f"{path}.{k}")]
        if props is None:
            return []
        found = []
        for key, value in obj.items():
            if key not in props:
                found.append(f"{path}.{key}")
            else:
                found += pruned_fields(value, props[key], f"{path}.{key}")
        return found
    if isinstance(obj, list) and "items" in schema:
        return [p for i, v in enumerate(obj) for p in pruned_fields(v, schema["items"], f"{path}[{i}]")]
    return []


def assert_valid(obj: dict[str, Any]) -> None:
    schema = crd_schema(obj["kind"])
    jsonschema.Draft7Validator(schema).validate(obj)
    assert pruned_fields({k: v for k, v in obj.items() if k != "metadata"}, schema) == []


def test_schema_check_catches_typos_and_wrong_types():
    obj = json.loads((DATA / "k8s" / "isvc-serverless-champion-v3.json").read_text())
    assert_valid(obj)
    typo = copy.deepcopy(obj)
    typo["spec"]["predictor"]["canaryTraficPercent"] = 10
    with pytest.raises(AssertionError):
        assert_valid(typo)
    wrong = copy.deepcopy(obj)
    wrong["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    with pytest.raises(jsonschema.ValidationError):
        assert_valid(wrong)


# --- a recording Kubernetes API server ------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeStub:
    """The API server's answers for one InferenceService. ``conflicts``: that many PATCHes find the
    object changed by someone else first (its resourceVersion moves on), as in a real race."""

    def __init__(self, obj: dict[str, Any] | None, deny: set[str] = frozenset()) -> None:
        self.obj, self.requests, self.conflicts = obj, [], 0
        if obj is not None:  # a stored object always has one (a rendered manifest does not)
            obj["metadata"].setdefault("resourceVersion", "1")
            obj["metadata"].setdefault("generation", 1)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stub.requests.append((self.command, self.path, self.headers.get("Content-Type"), body))
                if self.command in deny:
                    return self._answer(403, {"kind": "Status", "status": "Failure", "reason": "Forbidden",
                                              "message": "inferenceservices is forbidden", "code": 403})
                if self.command == "POST":
                    stub.obj = merge_patch(body, {"metadata": {"generation": 1, "resourceVersion": "1"}})
                    return self._answer(201, stub.obj)
                if stub.obj is None or not self.path.endswith(stub.obj["metadata"]["name"]):
                    return self._answer(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})
                if self.command == "PATCH":
                    assert self.headers["Content-Type"] == "application/merge-patch+json"
                    meta = stub.obj["metadata"]
                    if stub.conflicts:
                        stub.conflicts -= 1
                        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
                    precondition = (body.get("metadata") or {}).get("resourceVersion")
                    if precondition is not None and precondition != meta["resourceVersion"]:
                        return self._answer(409, {
                            "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409,
                            "message": "Operation cannot be fulfilled on inferenceservices.serving.kserve.io "
                                       f'"{meta["name"]}": the object has been modified; please apply your '
                                       "changes to the latest version and try again"})
                    stub.obj = merge_patch(stub.obj, body)
                    stub.obj["metadata"]["generation"] += 1
                    stub.obj["metadata"]["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
                return self._answer(200, stub.obj)

            do_GET = do_POST = do_PATCH = _handle  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api_client(self):
        from kubernetes import client

        config = client.Configuration()
        config.host = f"http://127.0.0.1:{self.server.server_port}"
        return client.ApiClient(config)

    def writes(self) -> list[tuple[str, str, str, Any]]:
        return [r for r in self.requests if r[0] != "GET"]


def recorded(mode: str) -> dict[str, Any]:
    return json.loads((DATA / "k8s" / f"isvc-{mode.lower()}-champion-v3.json").read_text())


@pytest.fixture
def cluster(settings) -> Iterator[callable]:
    made: list[Any] = []

    def make(obj, deny=frozenset(), versions=None):
        kube = KubeStub(copy.deepcopy(obj), set(deny))
        prom = PrometheusStub(serving(versions or {"3": HEALTHY, "4": HEALTHY}))
        made.extend([kube.server, prom])
        return kube, connect(settings, kube.api_client()), Prometheus(prom.url)

    yield make
    for item in made:
        item.shutdown() if hasattr(item, "shutdown") else item.close()


class Recorder:
    """Stands in for MLflow tagging; ``up`` False is a tracking server that cannot be reached."""

    def __init__(self, up: bool = True) -> None:
        self.up, self.tags = up, []

    def __call__(self, settings, version, tags) -> bool:
        self.tags.append((version, tags))
        return self.up


def run_stage(settings, isvcs, prom, record=None, version="4"):
    model = ModelVersionRef(V4.name, version, V4.storage_uri)
    return deploy_stage(settings, version, "run-42", isvcs=isvcs, prometheus=prom,
                        resolve=lambda s, v: model, record=record or Recorder(), sleep=lambda s: None)


# --- first deployment ------------------------------------------------------------------------------------

def test_first_deploy_creates_the_inference_service(settings, cluster):
    kube, isvcs, prom = cluster(None)
    record = Recorder()
    result = run_stage(settings, isvcs, prom, record)
    assert result["outcome"] == "created"
    [(method, path, content_type, body)] = kube.writes()
    assert (method, path, content_type) == ("POST", PATH, "application/json")
    assert_valid(body)
    assert body["metadata"] == {
        "name": "storeflow-repeat-purchase",
        "namespace": "storeflow",
        "labels": {"app.kubernetes.io/part-of": "storeflow", "storeflow.io/model-name": "storeflow-repeat-purchase",
                   "storeflow.io/model-version": "4", "storeflow.io/pipeline-run": "run-42"},
        "annotations": {"storeflow.io/model-name": "storeflow-repeat-purchase", "storeflow.io/model-version": "4",
                        "storeflow.io/model-uri": V4.storage_uri, "storeflow.io/pipeline-run-id": "run-42",
                        "serving.kserve.io/deploymentMode": "Serverless",
                        "serving.kserve.io/enable-prometheus-scraping": "true", "storeflow.io/rollout-state": "promoted"},
    }
    model = body["spec"]["predictor"]["model"]
    assert model["storageUri"] == V4.storage_uri and model["runtime"] == "storeflow-predictor"
    assert model["image"] == settings.image.reference and not model["image"].endswith(":latest")
    assert {"name": "STOREFLOW_MODEL_VERSION", "value": "4"} in model["env"]
    assert body["spec"]["predictor"]["serviceAccountName"] == "storeflow-serving"
    transformer = body["spec"]["transformer"]["containers"][0]
    assert transformer["args"] == ["--model_name", "storeflow-repeat-purchase", "--predictor_host", "storeflow-repeat-purchase-predictor"]
    assert "canaryTrafficPercent" not in body["spec"]["predictor"]
    assert record.tags == [("4", {"storeflow.deploy.state": "promoted", "storeflow.deploy.run_id": "run-42"})]


def test_bootstrap_object_from_kustomize_is_filled_and_started(settings, cluster):
    bootstrap = yaml.safe_load((Path(__file__).parents[1] / "kustomize/base/inference-service.yaml").read_text())
    bootstrap["metadata"] |= {"namespace": "storeflow", "generation": 1}
    kube, isvcs, prom = cluster(bootstrap)
    assert run_stage(settings, isvcs, prom)["outcome"] == "created"
    [(method, path, _, body)] = kube.writes()
    assert (method, path) == ("PATCH", f"{PATH}/storeflow-repeat-purchase")
    assert body["metadata"]["annotations"]["serving.kserve.io/stop"] is None
    assert body["spec"]["predictor"]["model"]["storageUri"] == V4.storage_uri
    assert "serving.kserve.io/stop" not in kube.obj["metadata"]["annotations"]
    assert_valid(kube.obj)


def test_forbidden_create_names_the_object_and_status(settings, cluster):
    _, isvcs, prom = cluster(None, deny={"POST"})
    with pytest.raises(DeployError, match="cannot create InferenceService storeflow/storeflow-repeat-purchase: HTTP 403"):
        run_stage(settings, isvcs, prom)


def test_same_version_again_changes_nothing(settings, cluster):
    kube, isvcs, prom = cluster(recorded("Serverless"))
    assert run_stage(settings, isvcs, prom, version="3")["outcome"] == "unchanged"
    assert kube.writes() == []


# --- Serverless canary -----------------------------------------------------------------------------------

def test_serverless_canary_advances_and_promotes(settings, cluster):
    kube, isvcs, prom = cluster(recorded("Serverless"))
    champion = recorded("Serverless")
    record = Recorder()
    result = run_stage(settings, isvcs, prom, record)

    assert result["outcome"] == "promoted" and result["champion_version"] == "3"
    assert [s["action"] for s in result["steps"]] == ["advance", "promote"]
    start, advance, promote = kube.writes()
    assert start[:3] == ("PATCH", f"{PATH}/storeflow-repeat-purchase", "application/merge-patch+json")
    saved = json.loads(start[3]["metadata"]["annotations"].pop("storeflow.io/previous-spec"))
    assert saved == {"modelVersion": "3", "predictor": champion["spec"]["predictor"],
                     "transformer": champion["spec"]["transformer"]}
    assert start[3]["metadata"] == {
        "labels": {"app.kubernetes.io/part-of": "storeflow", "storeflow.io/model-name": "storeflow-repeat-purchase",
                   "storeflow.io/model-version": "4", "storeflow.io/pipeline-run": "run-42"},
        "annotations": {"storeflow.io/model-name": "storeflow-repeat-purchase", "storeflow.io/model-version": "4",
                        "storeflow.io/model-uri": V4.storage_uri, "storeflow.io/pipeline-run-id": "run-42",
                        "storeflow.io/champion-version": "3", "storeflow.io/rollout-state": "canary",
                        "storeflow.io/rollback-reason": None},
        "resourceVersion": "48213377",  # the version it was made from: a change in between gets a 409
    }
    predictor = start[3]["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["labels"] == {"storeflow.io/model-version": "4"}
    assert predictor["model"]["storageUri"] == V4.storage_uri
    assert predictor["model"]["env"][1] == {"name": "STOREFLOW_MODEL_VERSION", "value": "4"}
    assert start[3]["spec"]["transformer"] == champion["spec"]["transformer"]  # model-agnostic: unchanged
    assert advance[3] == {"spec": {"predictor": {"canaryTrafficPercent": 50}}, "metadata": {"resourceVersion": "48213378"}}
    assert promote[3] == {
        "metadata": {"annotations": {"storeflow.io/rollout-state": "promoted", "storeflow.io/champion-version": "4"},
                     "resourceVersion": "48213379"},
        "spec": {"predictor": {"canaryTrafficPercent": None}},
    }
    assert "canaryTrafficPercent" not in kube.obj["spec"]["predictor"]
    assert kube.obj["spec"]["predictor"]["model"]["storageUri"] == V4.storage_uri
    assert_valid(kube.obj)
    assert record.tags == [("4", {"storeflow.deploy.state": "promoted"})]


def test_a_change_between_read_and_patch_is_never_overwritten(settings, cluster):
    """Someone else's write lands between storeflow's read and patch: the API server answers 409 to the
    stale patch, storeflow re-reads and patches again; a service that keeps changing is an error."""
    kube, isvcs, prom = cluster(recorded("Serverless"))
    kube.conflicts = 1
    result = run_stage(settings, isvcs, prom, Recorder())
    assert result["outcome"] == "promoted"
    patches = [r for r in kube.requests if r[0] == "PATCH"]
    assert [p[3]["metadata"]["resourceVersion"] for p in patches[:2]] == ["48213377", "48213378"]  # stale, then fresh
    assert len(patches) == 4  # start twice (one refused), advance, promote
    kube.conflicts = 99
    with pytest.raises(DeployError, match="kept changing while storeflow patched it \\(3 conflicts\\)"):
        isvcs.update("storeflow-repeat-purchase", lambda latest: {"metadata": {"labels": {"x": "y"}}})
    assert "x" not in kube.obj["metadata"].get("labels", {})


def test_serverless_rollback_restores_champion_without_mlflow(settings, cluster, monkeypatch):
    """A canary with 5 % errors is rolled back; MLflow is down (real client, closed port) and it still works."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    settings.registry.tracking_uri = "http://127.0.0.1:9"
    failing = HEALTHY | {"errors": 90}
    kube, isvcs, prom = cluster(recorded("Serverless"), versions={"3": HEALTHY, "4": failing})
    result = run_stage(settings, isvcs, prom, record_rollout)

    assert result["outcome"] == "rolled-back" and result["recorded_in_mlflow"] is False
    assert result["reasons"] == ["error rate 0.0500 exceeds champion's 0.0050 by 0.0450 > 0.01"]
    _, rollback = kube.writes()
    champion = recorded("Serverless")
    assert rollback[3]["metadata"] == {
        "labels": {"storeflow.io/model-version": "3"},
        "annotations": {"storeflow.io/rollout-state": "rolled-back", "storeflow.io/rollback-reason": result["reasons"][0],
                        "storeflow.io/model-version": "3", "storeflow.io/champion-version": "3",
                        "storeflow.io/model-uri": V3_URI},
        "resourceVersion": "48213378",
    }
    assert rollback[3]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    restored = kube.obj["spec"]["predictor"]
    assert restored == champion["spec"]["predictor"] | {"canaryTrafficPercent": 0}
    assert_valid(kube.obj)
    status = commands.status_of(kube.obj, settings)
    assert (status["state"], status["model_version"], status["canary_percent"]) == ("rolled-back", "3", 0)


def test_blind_analysis_rolls_back_with_the_prometheus_problem(settings, cluster):
    kube, isvcs, _ = cluster(recorded("Serverless"))
    result = run_stage(settings, isvcs, Prometheus("http://127.0.0.1:9"))
    assert result["outcome"] == "rolled-back"
    assert result["reasons"][0].startswith("canary analysis failed at 10%: cannot reach Prometheus at http://127.0.0.1:9")
    assert kube.obj["metadata"]["annotations"]["storeflow.io/rollout-state"] == "rolled-back"


def test_a_second_canary_while_one_runs_is_refused(settings, cluster):
    in_flight = recorded("Serverless")
    in_flight["metadata"]["annotations"]["storeflow.io/rollout-state"] = "canary"
    kube, isvcs, prom = cluster(in_flight)
    with pytest.raises(DeployError, match="already runs a canary of version 3: promote or roll it back first"):
        run_stage(settings, isvcs, prom)
    assert kube.writes() == []


# --- Standard (RawDeployment) canary -----------------------------------------------------------------------

def test_standard_canary_uses_spec_canary_and_promotes_by_retargeting(settings, cluster):
    settings.deploy.canary_steps = [25, 100]
    kube, isvcs, prom = cluster(recorded("Standard"))
    champion = recorded("Standard")["spec"]["predictor"]
    assert run_stage(settings, isvcs, prom)["outcome"] == "promoted"
    start, promote = kube.writes()

    [canary] = start[3]["spec"]["canary"]
    assert canary["trafficPercent"] == 25 and canary["predictor"]["name"] == "v4"
    assert "minReplicas" not in canary["predictor"] and "maxReplicas" not in canary["predictor"]
    assert canary["predictor"]["model"]["storageUri"] == V4.storage_uri
    assert "predictor" not in start[3]["spec"]  # the champion keeps serving untouched
    promoted = promote[3]["spec"]
    assert promoted["canary"] is None
    assert promoted["predictor"]["name"] == "v4" and promoted["predictor"]["model"]["storageUri"] == V4.storage_uri
    assert promoted["predictor"]["minReplicas"] == champion["minReplicas"]
    assert "canary" not in kube.obj["spec"] and kube.obj["spec"]["predictor"]["name"] == "v4"
    assert_valid(kube.obj)


def test_standard_rollback_drops_the_canary(settings, cluster):
    kube, isvcs, prom = cluster(recorded("Standard"), versions={"3": HEALTHY, "4": HEALTHY | {"p99": 0.5}})
    result = run_stage(settings, isvcs, prom)
    assert result["outcome"] == "rolled-back"
    assert result["reasons"] == ["p99 latency 0.5000s exceeds 1.25 x champion's 0.0800s (and it by more than 0.02s)"]
    start, rollback = kube.writes()
    assert_valid(merge_patch(recorded("Standard"), start[3]))
    assert rollback[3]["spec"]["canary"] is None
    assert kube.obj["spec"] == recorded("Standard")["spec"]
    assert_valid(kube.obj)


def test_insufficient_traffic_holds_then_rolls_back(settings, cluster):
    settings.deploy.max_holds_per_step = 2
    kube, isvcs, prom = cluster(recorded("Serverless"), versions={"3": HEALTHY, "4": HEALTHY | {"requests": 12}})
    result = run_stage(settings, isvcs, prom)
    assert [s["action"] for s in result["steps"]] == ["hold", "rollback"]
    assert result["reasons"][0].startswith("insufficient data after 2 analyses at 10%")
    assert len(kube.writes()) == 2


# --- operator commands -----------------------------------------------------------------------------------

def test_manual_promote_and_status(settings, cluster):
    kube, isvcs, prom = cluster(recorded("Serverless"))
    settings.deploy.canary_steps = [10, 100]
    settings.deploy.max_holds_per_step = 1
    state = recorded("Serverless")
    from storeflow.components.deploy.inference_service import start_canary_patch

    kube.obj = merge_patch(state, start_canary_patch(state, settings, V4, "run-42", 10))
    shown = commands.status(settings, isvcs=isvcs)
    assert (shown["state"], shown["model_version"], shown["champion_version"], shown["canary_percent"]) == ("canary", "4", "3", 10)
    assert shown["traffic"] == [{"revision": "storeflow-repeat-purchase-predictor-00001", "percent": 100, "tag": None, "latest": True}]
    assert shown["ready"] == "True"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("storeflow.components.deploy.registry.record_rollout", Recorder(up=False))
        promoted = commands.promote(settings, isvcs=isvcs)
    assert promoted["state"] == "promoted" and promoted["canary_percent"] is None
    with pytest.raises(DeployError, match="has no canary to promote"):
        commands.promote(settings, isvcs=isvcs)


def test_manual_rollback_needs_a_saved_champion(settings, cluster):
    _, isvcs, _ = cluster(recorded("Serverless"))
    with pytest.raises(DeployError, match="has no storeflow.io/previous-spec annotation: nothing to roll back to"):
        commands.rollback(settings, isvcs=isvcs)


def test_status_of_a_missing_service_says_so(settings, cluster):
    _, isvcs, _ = cluster(None)
    with pytest.raises(DeployError, match="storeflow/storeflow-repeat-purchase does not exist"):
        commands.status(settings, isvcs=isvcs)


def test_commands_do_not_import_kubernetes_or_mlflow_at_import_time():
    import subprocess
    import sys

    code = "import sys, storeflow.components.deploy.commands; print('kubernetes' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the registry side -----------------------------------------------------------------------------------

def test_local_artifact_location_is_refused_with_advice():
    with pytest.raises(DeployError, match="cannot download .*scheme 'file'.*set registry.artifact_location"):
        cluster_storage_uri("file:///home/me/.storeflow/mlartifacts/1/abc/artifacts/model", "m/4")
    assert cluster_storage_uri("s3://mlflow/1/abc/artifacts/model", "m/4") == "s3://mlflow/1/abc/artifacts/model"


def test_a_proxied_artifact_location_is_resolved_to_the_servers_destination():
    """With a tracking server (artifact_location unset) MLflow stores models under mlflow-artifacts:/, which
    only its own server resolves: KServe gets the object-store URI behind it (the server's
    --artifacts-destination, registry.artifacts_destination), and without that setting the error says so."""
    proxied = "mlflow-artifacts:/1/models/m-0a1b/artifacts"
    assert cluster_storage_uri(proxied, "m/4", "s3://mlflow") == "s3://mlflow/1/models/m-0a1b/artifacts"
    assert cluster_storage_uri(proxied, "m/4", "s3://bucket/mlflow/") == "s3://bucket/mlflow/1/models/m-0a1b/artifacts"
    with pytest.raises(DeployError, match="mlflow-artifacts.*set registry.artifacts_destination"):
        cluster_storage_uri(proxied, "m/4")


def test_unknown_model_version_is_named(settings):
    with pytest.raises(DeployError, match="model version storeflow-repeat-purchase/99 is not registered"):
        resolve_model_version(settings, "99")


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
def test_after_a_kserve_rollback_the_champion_alias_names_what_serves(settings, cluster, mode):
    """register moves the alias to the challenger before its canary; a rollback on KServe left it there, so
    monitoring and the next evaluation judged a version that was not serving. Real MLflow (SQLite)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    name = settings.registry.model_name
    client.create_registered_model(name)
    for _ in range(4):
        client.create_model_version(name, source="s3://models/m", run_id=None)
    client.set_registered_model_alias(name, "champion", "4")  # as register does for the challenger
    kube, isvcs, prom = cluster(recorded(mode), versions={"3": HEALTHY, "4": HEALTHY | {"errors": 90}})
    result = run_stage(settings, isvcs, prom, record_rollout)

    assert result["outcome"] == "rolled-back" and result["recorded_in_mlflow"] is True
    assert kube.obj["metadata"]["annotations"]["storeflow.io/model-version"] == "3"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert client.get_model_version(name, "4").tags["storeflow.deploy.state"] == "rolled-back"
