"""The production overlay's pods, started in containers as Kubernetes would start them (tests/containers.py):
image, command, args, env with the Secret and ConfigMap references resolved from test Secrets, volume mounts
with their readOnly, UID 1000, a read-only root filesystem, no capabilities.

What runs: PostgreSQL (Debian's server, started here on loopback) holding MLflow's backend store and the
Feast SQL registry; Redis (Feast's online store); the ``mlflow`` Deployment's container from the rendered
manifest (the project image since it needs psycopg and boto3), on that Postgres; the pipeline's features,
train, evaluate and register stages in a task container (the storeflow-config values as its environment, the
Feast Secrets as env, the state volume at its mount path, MLflow by its Service name) that materializes the
features into Redis with the registry in Postgres and registers a champion and a canary version; the
InferenceService's predictor as KServe makes it from the ServingRuntime and the spec the deploy stage patches
in (``first_deploy_patch`` for the champion, ``start_canary_patch`` for the canary), the model in /mnt/models
as the storage initializer leaves it; its transformer; the ``storeflow-webhooks`` and
``feast-feature-server`` Deployments.

What a cluster does and one host cannot: every pod shares the host network (each its own port; Service
names map to 127.0.0.1 with --add-host), and Knative's route, which splits traffic between the champion's and
the canary's revision by ``canaryTrafficPercent``, is a small proxy here that the transformer's
``--predictor_host`` names (the Service name, with the proxy's port). The MLflow artifact store is the pod's
/tmp (an emptyDir) instead of S3, and the storage initializer's download is done by this process; nothing
here stands in for S3.

Needs a Docker engine; skips loudly only where none can run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest

import containers
from conftest import free_port, quick_overrides, small_store, write_snapshot
from postgres_server import postgres_server
from redis_server import redis_server

pytestmark = pytest.mark.slow

NO_CONTAINERS = containers.unavailable()
if NO_CONTAINERS:
    pytest.skip(f"!!! CONTAINER TESTS NOT RUN: {NO_CONTAINERS} !!!", allow_module_level=True)
if shutil.which("kubectl") is None:
    pytest.skip("!!! POD TESTS NOT RUN: kubectl is not installed, so the overlay cannot be rendered !!!",
                allow_module_level=True)

OVERLAY = "production"
MODEL = "storeflow-repeat-purchase"
PREDICTOR_SERVICE = f"{MODEL}-predictor"
SHOP = "demo-store.myshopify.com"  # project.shop_domain: the overlay sets no other
CLIENT_ID = "storeflow-pods-test"
API_SECRET = "shpss_pods_0123456789abcdef0123456789abcdef"
PASSWORDS = {"redis": "redis-pods-pw", "feast": "feast-pods-pw", "mlflow": "mlflow-pods-pw"}
KNOWN = [3, 17, 42]
NEW_CUSTOMER = 9002  # first seen in a webhook (deliveries name customers the scores above do not use)


def admin_token(shop: str = SHOP) -> str:
    """An admin UI extension's session token, as Shopify signs it (tests/test_serving.py)."""
    now = int(time.time())
    return jwt.encode({"iss": f"https://{shop}/admin", "dest": f"https://{shop}", "aud": CLIENT_ID, "sub": "7001",
                       "exp": now + 300, "nbf": now, "iat": now}, API_SECRET, algorithm="HS256")


def merge_patch(target, patch):
    """RFC 7386, as the API server applies the deploy stage's patches."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def patched(objects: list[dict], patch: dict) -> list[dict]:
    return [merge_patch(o, patch) if o["kind"] == "InferenceService" else o for o in objects]


@contextlib.contextmanager
def environment(values: dict[str, str | None]):
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def wait_ready(name: str, url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if not containers.state(name).get("Running"):
            raise RuntimeError(f"container {name} exited:\n{containers.logs(name)[-6000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"container {name} not ready at {url}:\n{containers.logs(name)[-6000:]}")
        time.sleep(0.5)


class Route(ThreadingHTTPServer):
    """Knative's route for the predictor Service: each request to the champion's or the canary's revision,
    the canary with ``canary_percent`` chance (what ``canaryTrafficPercent`` asks of Knative)."""

    daemon_threads = True

    def __init__(self, champion: str):
        self.champion, self.canary, self.canary_percent = champion, None, 0

        class Forward(BaseHTTPRequestHandler):
            def _forward(handler):
                body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
                backend = self.canary if self.canary and random.uniform(0, 100) < self.canary_percent else self.champion
                headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(handler.command, f"http://{backend}{handler.path}", content=body,
                                       headers=headers, timeout=30)
                handler.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        handler.send_header(key, value)
                handler.send_header("content-length", str(len(answer.content)))
                handler.end_headers()
                handler.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture(scope="module")
def image() -> str:
    return containers.build_image()


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return containers.render(OVERLAY)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Postgres (databases mlflow and feast) and Redis on loopback, with passwords, as a cluster's are."""
    root = tmp_path_factory.mktemp("stores")
    from moto.server import ThreadedMotoServer

    # The object store the transformer ships its prediction log to: S3's REST API on loopback (moto), named
    # minio in the artifact-store Secret as a cluster's MinIO Service would be.
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    s3_port = s3.get_host_and_port()[1]
    boto3_client(s3_port).create_bucket(Bucket=PREDICTION_BUCKET)
    try:
        with postgres_server(root / "postgres", {"mlflow": PASSWORDS["mlflow"], "feast": PASSWORDS["feast"]}) as pg, \
                redis_server(root, password=PASSWORDS["redis"]) as redis:
            yield {"postgres": pg, "redis": redis, "s3_port": s3_port}
    finally:
        s3.stop()


PREDICTION_BUCKET = "storeflow-predictions"  # the bucket storeflow-config's STOREFLOW_SERVING__PREDICTION_LOG_STORE names


def boto3_client(port: int):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="pods-test",
                        aws_secret_access_key="pods-test-secret", region_name="us-east-1")


def secrets(stores: dict[str, str]) -> dict[str, dict[str, str]]:
    """The Secrets kustomize/README.md tells the operator to create, naming the in-cluster Services."""
    pg_port, redis_port = stores["postgres"].rsplit(":", 1)[1], stores["redis"].rsplit(":", 1)[1]
    return {
        "storeflow-online-store": {"connection-string": f"redis:{redis_port},password={PASSWORDS['redis']}"},
        "storeflow-feast-registry": {"url": f"postgresql+psycopg://feast:{PASSWORDS['feast']}@postgres:{pg_port}/feast"},
        "storeflow-shopify-app": {"client-id": CLIENT_ID, "api-secret": API_SECRET},
        "storeflow-mlflow": {
            "backend-store-uri": f"postgresql+psycopg://mlflow:{PASSWORDS['mlflow']}@postgres:{pg_port}/mlflow",
            "artifacts-destination": "/tmp/mlflow-artifacts",  # the pod's emptyDir: no S3 here
        },
        "storeflow-artifact-store": {"AWS_ACCESS_KEY_ID": "pods-test", "AWS_SECRET_ACCESS_KEY": "pods-test-secret",
                                     "MLFLOW_S3_ENDPOINT_URL": f"http://minio:{stores['s3_port']}"},
    }


HOSTS = {"postgres": "127.0.0.1", "redis": "127.0.0.1", "mlflow": "127.0.0.1", "minio": "127.0.0.1",
         PREDICTOR_SERVICE: "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster(image, rendered, stores, tmp_path_factory):
    """Starts the containers; yields their addresses. Every container is removed at the end."""
    root = tmp_path_factory.mktemp("pods")
    state = root / "state-volume"
    started: list[str] = []
    kubelet = containers.Kubelet(rendered, secrets(stores), root / "kubelet", claims={"storeflow-state": state})

    served: dict[str, tuple[dict, int]] = {}  # container name: (its spec, the port it listens on here)

    def run(kubelet: containers.Kubelet, pod: containers.Pod, container: dict, extra: list[str], port: int) -> str:
        name = f"{pod.name}-{container['name']}"
        containers.remove(name)
        containers.start(kubelet.docker_run(pod, container, hosts=HOSTS, extra_args=extra))
        started.append(name)
        served[name] = (container, port)
        return name

    # This process points MLflow (and its children, through MLFLOW_*_URI) at the container: undone at the end.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PODS_REDIS_CONNECTION",
                                            "PODS_FEAST_REGISTRY")}
    with containers.shared_with_image_user(state), environment(saved):
        try:
            # MLflow on Postgres.
            mlflow_pod = containers.workload_pod(rendered, "Deployment", "mlflow")
            mlflow_port = free_port()
            name = run(kubelet, mlflow_pod, mlflow_pod.containers[0], [f"--port={mlflow_port}"], mlflow_port)
            wait_ready(name, f"http://127.0.0.1:{mlflow_port}/health", seconds=240)
            tracking = f"http://127.0.0.1:{mlflow_port}"

            versions = register_two_versions(image, rendered, kubelet, state, mlflow_port)
            settings = host_settings(root, tracking, stores)
            model_dirs = download(settings, versions, root)

            # The predictors as the deploy stage patches the InferenceService: the champion first, then the canary.
            deploy_settings = settings_from_config_map(rendered)
            from storeflow.components.deploy.inference_service import (ModelVersionRef, first_deploy_patch,
                                                                       start_canary_patch)

            isvc = containers.find(rendered, "InferenceService", MODEL)
            ref = {v: ModelVersionRef(MODEL, v, f"s3://mlflow/models/{v}") for v in versions}
            champion_objects = patched(rendered, first_deploy_patch(isvc, deploy_settings, ref[versions[0]], "run-1"))
            champion_isvc = containers.find(champion_objects, "InferenceService", MODEL)
            percent = deploy_settings.deploy.canary_steps[0]
            canary_objects = patched(champion_objects, start_canary_patch(champion_isvc, deploy_settings,
                                                                          ref[versions[1]], "run-2", percent))
            predictors = {}
            for version, objects in zip(versions, (champion_objects, canary_objects)):
                pod = dataclasses.replace(containers.predictor_pod(objects, MODEL), name=f"{PREDICTOR_SERVICE}-v{version}")
                own = dataclasses.replace(kubelet, emptydirs={"kserve-provision-location": model_dirs[version]})
                port = free_port()
                name = run(own, pod, pod.containers[0], ["--http_port", str(port)], port)
                predictors[version] = (name, f"127.0.0.1:{port}", pod)
            for name, address, _ in predictors.values():
                wait_ready(name, f"http://{address}/v2/health/ready")
            route = Route(predictors[versions[0]][1])
            route.canary = predictors[versions[1]][1]
            route.canary_percent = 0
            canary_isvc = containers.find(canary_objects, "InferenceService", MODEL)

            # The transformer, its --predictor_host the predictor Service (Knative's route, here on its own port).
            pod = containers.transformer_pod(champion_objects, MODEL)
            container = json.loads(json.dumps(pod.containers[0]))
            args = container["args"]
            assert args[args.index("--predictor_host") + 1] == PREDICTOR_SERVICE
            args[args.index("--predictor_host") + 1] = f"{PREDICTOR_SERVICE}:{route.port}"
            transformer_port = free_port()
            name = run(kubelet, pod, container, ["--http_port", str(transformer_port)], transformer_port)
            wait_ready(name, f"http://127.0.0.1:{transformer_port}/v2/health/ready")

            # The webhook receiver.
            pod = containers.workload_pod(rendered, "Deployment", "storeflow-webhooks")
            webhooks_port = free_port()
            name = run(kubelet, pod, pod.containers[0], ["--port", str(webhooks_port)], webhooks_port)
            wait_ready(name, f"http://127.0.0.1:{webhooks_port}/livez")

            # The Feast feature server, on the storeflow-feast ConfigMap's feature_store.yaml.
            pod = containers.workload_pod(rendered, "Deployment", "feast-feature-server")
            feast_port = free_port()
            name = run(kubelet, pod, pod.containers[0], ["--port", str(feast_port)], feast_port)
            wait_ready(name, f"http://127.0.0.1:{feast_port}/health")

            yield {
                "feast": f"127.0.0.1:{feast_port}", "tracking": tracking, "secrets": kubelet.secrets, "mlflow_port": mlflow_port, "versions": versions, "settings": settings,
                "route": route, "canary_percent": canary_isvc["spec"]["predictor"]["canaryTrafficPercent"],
                "predictors": predictors, "transformer": f"127.0.0.1:{transformer_port}",
                "webhooks": f"127.0.0.1:{webhooks_port}", "state": state, "containers": started, "served": served,
            }
        finally:
            for name in started:
                containers.remove(name)
            import mlflow

            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def settings_from_config_map(rendered: list[dict]):
    """What a deploy task reads: the rendered storeflow-config as its environment."""
    from storeflow.components.config import load_settings

    data = containers.find(rendered, "ConfigMap", "storeflow-config")["data"]
    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("STOREFLOW_")]}
    try:
        with environment(data):
            return load_settings("{}")
    finally:
        os.environ.update(saved)


# The pipeline's features, train, evaluate and register tasks, in one container of the project image as a
# cluster runs each task: the storeflow-config values as its environment, the Feast Secrets as env
# (secretAsEnv), the state volume at its mount path, MLflow by its Service name.
TASKS = """
import json
from storeflow.components.config import load_settings
from storeflow.components.evaluate import evaluate
from storeflow.components.features import build_features
from storeflow.components.register import register
from storeflow.components.train import train

label = {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}
features, versions = None, []
for seed, max_iter in ((0, 40), (1, 15)):  # the champion, then a canary that scores differently
    settings = load_settings({"features": {"label": label}, "evaluate": {"bootstrap_samples": 100, "baseline_gate": False},
                              "train": {"params": {"max_iter": max_iter, "random_state": seed}}})
    if features is None:
        features = build_features(settings, settings.project.state_dir / "snapshot")
    trained = train(settings, features)
    versions.append(str(register(settings, trained, evaluate(settings, features, trained)).version))
print(json.dumps(versions))
"""


def register_two_versions(image: str, rendered: list[dict], kubelet: containers.Kubelet, state: Path,
                          mlflow_port: int) -> list[str]:
    """Champion and canary trained by the project's stages in a pipeline-task container, registered into
    the MLflow container, features materialized into Redis with the Feast registry in Postgres."""
    write_snapshot(small_store(), state / "snapshot")
    mount = settings_from_config_map(rendered).kfp.state_mount_path
    env = {**containers.find(rendered, "ConfigMap", "storeflow-config")["data"], "HOME": "/tmp",
           "STOREFLOW_REGISTRY__TRACKING_URI": f"http://mlflow:{mlflow_port}",  # the Service's port is 5000
           "REDIS_CONNECTION_STRING": kubelet.secrets["storeflow-online-store"]["connection-string"],
           "FEAST_REGISTRY_URL": kubelet.secrets["storeflow-feast-registry"]["url"]}
    cmd = ["docker", "run", "--rm", "--network", "host", "--user", f"{containers.IMAGE_UID}:{containers.IMAGE_UID}",
           "--mount", f"type=bind,source={state},target={mount}", "--tmpfs", "/tmp:exec,mode=1777"]
    for name, address in HOSTS.items():
        cmd += ["--add-host", f"{name}:{address}"]
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    done = subprocess.run([*cmd, image, "python", "-c", TASKS], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the pipeline tasks failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def host_settings(root: Path, tracking: str, stores: dict[str, str]):
    """This process's view of the same stores (loopback addresses), to compute what the pods should answer."""
    from storeflow.components.config import load_settings

    os.environ["PODS_REDIS_CONNECTION"] = f"{stores['redis']},password={PASSWORDS['redis']}"
    os.environ["PODS_FEAST_REGISTRY"] = f"postgresql+psycopg://feast:{PASSWORDS['feast']}@{stores['postgres']}/feast"
    return load_settings(quick_overrides(root, registry={"tracking_uri": tracking}, features={
        "feast": {"online_store": "redis", "redis_connection_string": "${PODS_REDIS_CONNECTION}",
                  "registry": "${PODS_FEAST_REGISTRY}"}}))


def download(settings, versions: list[str], root: Path) -> dict[str, Path]:
    """What KServe's storage initializer leaves in /mnt/models for each version."""
    import mlflow

    from storeflow.components import tracking

    tracking.connect(settings)
    dirs = {v: root / f"mnt-models-v{v}" for v in versions}
    for version, path in dirs.items():
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/{version}", dst_path=str(path))
    return dirs


@pytest.fixture(scope="module")
def expected(cluster):
    """Each version's scores straight from the registered model on the online store's features."""
    import mlflow.sklearn
    import pandas as pd

    from storeflow.components import tracking
    from storeflow.components.features.repo import feature_refs, feature_store
    from storeflow.serving.features import FALLBACK

    settings = cluster["settings"]
    tracking.connect(settings)
    columns = settings.features.customer_features
    data = feature_store(settings).get_online_features(
        features=feature_refs(settings), entity_rows=[{"customer_id": i} for i in KNOWN]).to_dict()
    rows = pd.DataFrame([[FALLBACK.get(c, 0.0) if data[c][n] is None else data[c][n] for c in columns]
                         for n in range(len(KNOWN))], columns=columns)
    return {v: dict(zip(KNOWN, mlflow.sklearn.load_model(f"models:/{MODEL}/{v}").predict_proba(rows)[:, 1].tolist()))
            for v in cluster["versions"]}


def _predict(cluster, customer: int) -> httpx.Response:
    return httpx.post(f"http://{cluster['transformer']}/v1/models/{MODEL}:predict",
                      json={"instances": [{"customer_id": f"gid://shopify/Customer/{customer}"}]},
                      headers={"Authorization": f"Bearer {admin_token()}"}, timeout=30)


def test_a_session_token_request_gets_the_champions_score(cluster, expected):
    champion = cluster["versions"][0]
    for customer in KNOWN:
        response = _predict(cluster, customer)
        assert response.status_code == 200, response.text
        answer = response.json()["predictions"][0]
        assert answer["model_version"] == champion == response.headers["x-storeflow-model-version"]
        assert answer["fallback"] is False
        assert answer["score"] == pytest.approx(expected[champion][customer], abs=1e-6)


def test_the_canary_split_answers_from_both_versions(cluster, expected):
    route, (champion, canary) = cluster["route"], cluster["versions"]
    assert expected[champion] != expected[canary]  # the two versions are told apart by their scores too
    route.canary_percent = cluster["canary_percent"]
    try:
        seen: dict[str, int] = {}
        for n in range(400):
            response = _predict(cluster, KNOWN[n % len(KNOWN)])
            assert response.status_code == 200, response.text
            answer = response.json()["predictions"][0]
            version = response.headers["x-storeflow-model-version"]
            assert answer["model_version"] == version
            assert answer["score"] == pytest.approx(expected[version][KNOWN[n % len(KNOWN)]], abs=1e-6)
            seen[version] = seen.get(version, 0) + 1
            if len(seen) == 2 and n >= 40:
                break
    finally:
        route.canary_percent = 0
    assert set(seen) == {champion, canary}, seen


def test_the_webhook_receiver_accepts_a_signed_delivery(cluster):
    from test_webhook_signing import delivery, order

    signed = delivery("orders/create", order(990001, 9001, "c9001@example.com", 42.0), "pods-1",
                      secret=API_SECRET, shop=SHOP)
    accepted = httpx.post(f"http://{cluster['webhooks']}/webhooks", timeout=30, **signed)
    assert accepted.status_code == 200, accepted.text
    forged = delivery("orders/create", order(990002, 9001, "c9001@example.com", 1.0), "pods-2",
                      secret="not-the-app-secret", shop=SHOP)
    assert httpx.post(f"http://{cluster['webhooks']}/webhooks", timeout=30, **forged).status_code == 401


def test_the_webhook_receivers_applier_takes_the_delivery_in(cluster):
    """The receiver journals the delivery; its applier (a process the receiver supervises) applies it."""
    from test_webhook_signing import delivery, order

    signed = delivery("orders/create", order(990003, NEW_CUSTOMER, "c9002@example.com", 12.5), "pods-3",
                      secret=API_SECRET, shop=SHOP)
    assert httpx.post(f"http://{cluster['webhooks']}/webhooks", timeout=30, **signed).status_code == 200
    deadline = time.monotonic() + 120
    while True:
        health = httpx.get(f"http://{cluster['webhooks']}/healthz", timeout=10).json()
        if health["pending"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert (health["status"], health["applier"], health["pending"], health["dead_letters"]) == ("ok", "running", 0, 0), \
        f"{health}\n{containers.logs('storeflow-webhooks-webhooks')[-6000:]}"
    # ... into the online store the transformer reads: the new customer now has features, not the fallback.
    response = _predict(cluster, NEW_CUSTOMER)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["fallback"] is False


def test_the_webhook_receiver_uses_the_namespaces_feast_registry(cluster):
    """The applier writes through the registry in Postgres that the pipeline applied and the transformer reads,
    never a file registry of its own on the state volume (nor a feature_store.yaml saying so there, where
    the pipeline's features task keeps its repo)."""
    from test_webhook_signing import delivery, order

    signed = delivery("orders/create", order(990004, 9003, "c9003@example.com", 30.0), "pods-4",
                      secret=API_SECRET, shop=SHOP)
    assert httpx.post(f"http://{cluster['webhooks']}/webhooks", timeout=30, **signed).status_code == 200
    deadline = time.monotonic() + 120
    while httpx.get(f"http://{cluster['webhooks']}/healthz", timeout=10).json()["pending"] and time.monotonic() < deadline:
        time.sleep(1)
    repo = cluster["state"] / "feature_repo"
    assert not (repo / "data" / "registry.db").exists()
    if (repo / "feature_store.yaml").exists():
        import yaml

        written = yaml.safe_load((repo / "feature_store.yaml").read_text())
        assert written["registry"] == {"registry_type": "sql", "path": "${FEAST_REGISTRY_URL}",
                                       "serve_features_while_materializing": True}
        assert written["online_store"]["connection_string"] == \
            "socket_timeout=10.0,socket_connect_timeout=10.0,${REDIS_CONNECTION_STRING}"  # the Secret's value last


def test_the_feast_feature_server_serves_the_materialized_features(cluster, expected):
    response = httpx.post(f"http://{cluster['feast']}/get-online-features", timeout=30, json={
        "features": ["customer_features:frequency"], "entities": {"customer_id": [KNOWN[0]]}})
    assert response.status_code == 200, response.text
    values = {name: column for name, column in zip(response.json()["metadata"]["feature_names"],
                                                    response.json()["results"])}
    assert values["frequency"]["values"][0] is not None and values["frequency"]["statuses"][0] == "PRESENT"


def test_the_deploy_step_hands_kserve_where_mlflow_stored_the_model(cluster, rendered):
    """The deploy task resolves a version as the ConfigMap configures it (a tracking server, so proxied
    mlflow-artifacts:/ locations); the URI it gives the storage initializer is where the MLflow server put the
    files, under its --artifacts-destination (the pod's /tmp here, s3://... on a cluster)."""
    from mlflow import MlflowClient

    from storeflow.components.deploy.registry import cluster_storage_uri

    settings = settings_from_config_map(rendered)
    assert settings.registry.artifacts_destination  # the overlay says where the server stores artifacts
    destination = cluster["secrets"]["storeflow-mlflow"]["artifacts-destination"]
    client = MlflowClient(tracking_uri=cluster["tracking"], registry_uri=cluster["tracking"])
    proxied = client.get_model_version_download_uri(MODEL, cluster["versions"][0])
    assert proxied.startswith("mlflow-artifacts:"), proxied
    located = cluster_storage_uri(proxied, MODEL, "s3://mlflow").replace("s3://mlflow", destination, 1)
    mlflow_container = cluster["containers"][0]
    found = subprocess.run(["docker", "exec", mlflow_container, "test", "-f", f"{located}/MLmodel"])
    assert found.returncode == 0, f"{located}/MLmodel is not in {mlflow_container}"


def test_the_transformer_ships_its_prediction_log_to_the_object_store_the_config_map_names(cluster, stores):
    """What the monitoring pipeline reads: not a volume (the transformer claims none), the bucket
    storeflow-config names, reached with the artifact-store Secret. A pod stopping (SIGTERM, as the kubelet
    sends) ships what it logged; the pod is started again for the tests after this one."""
    customer = KNOWN[2]
    assert _predict(cluster, customer).status_code == 200
    name = next(n for n in cluster["containers"] if n.endswith("-kserve-container") and "transformer" in n)
    subprocess.run(["docker", "restart", "--time", "30", name], check=True, capture_output=True)
    s3 = boto3_client(stores["s3_port"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=PREDICTION_BUCKET).get("Contents", [])]
    assert keys and all(k.startswith("repeat-purchase/predictions-") for k in keys), keys
    lines = [json.loads(line) for k in keys for line in s3.get_object(Bucket=PREDICTION_BUCKET, Key=k)["Body"].read().splitlines()]
    assert customer in {line["customer_id"] for line in lines}
    assert not list((cluster["state"] / "predictions").rglob("*.jsonl"))  # nothing on the state volume
    wait_ready(name, f"http://{cluster['transformer']}/v2/health/ready")


# -- order risk: the webhooks pod with risk.endpoint set, its scorer a process of its own inside the container ----
RISK = "storeflow-order-risk"
RISK_STORE = {"customers": 800, "orders": 8_000, "products": 40, "seed": 7, "fraud_rate": 0.02}


@pytest.fixture(scope="module")
def risk_pods(cluster, rendered, stores, tmp_path_factory):
    """A risk model registered in the cluster's MLflow (trained here on a synthetic store with fraud); the risk
    InferenceService's predictor as KServe makes it (kustomize/base/risk-*.yaml, the model where the storage
    initializer leaves it); and a second ``storeflow-webhooks`` pod, as kustomize/README.md turns order risk on:
    ``STOREFLOW_RISK__ENDPOINT`` added to storeflow-config, the ``storeflow-shopify`` Secret's Admin API token.
    Its own state volume (the first receiver's journal is not its), holding the snapshot the risk model learned from.
    The Admin API is tests/fake_admin.py's on loopback, answering Shopify's recorded payloads."""
    from fake_admin import running
    from test_risk_writeback import FakeAdmin

    from storeflow.components.config import RiskConfig, load_settings
    from storeflow.components.ingest import ingest
    from storeflow.components.risk.stage import risk_rows, train_and_register
    from storeflow.serving.risk import resolve

    root = tmp_path_factory.mktemp("risk-pods")
    settings = load_settings(quick_overrides(root, registry={"tracking_uri": cluster["tracking"]},
                                             ingest={"source": "synthetic", "synthetic": RISK_STORE}))
    result = train_and_register(settings, risk_rows(ingest(settings).snapshot),
                                RiskConfig(params={**RiskConfig().params, "max_iter": 60}, bootstrap_samples=50))
    assert result.promoted, result.reason
    version, model_dir = resolve(settings)

    state = root / "state-volume"
    shutil.copytree(settings.data_dir / "snapshots", state / "data" / "snapshots")  # the store the model learned
    with running(FakeAdmin()) as admin, containers.shared_with_image_user(state):
        objects = json.loads(json.dumps(rendered))
        risk_port, webhooks_port = free_port(), free_port()
        containers.find(objects, "ConfigMap", "storeflow-config")["data"].update(
            STOREFLOW_RISK__ENDPOINT=f"http://{RISK}-predictor:{risk_port}", STOREFLOW_SHOPIFY__ADMIN_ORIGIN=admin.origin)
        kubelet = containers.Kubelet(objects, {**cluster["secrets"], "storeflow-shopify": {"access-token": "shpat_pods"}},
                                     root / "kubelet", claims={"storeflow-state": state},
                                     emptydirs={"kserve-provision-location": model_dir})
        hosts = {**HOSTS, f"{RISK}-predictor": "127.0.0.1"}
        names = []
        predictor = containers.predictor_pod(objects, RISK)
        names.append(f"{predictor.name}-{predictor.containers[0]['name']}")
        containers.remove(names[-1])
        containers.start(kubelet.docker_run(predictor, predictor.containers[0], hosts=hosts,
                                            extra_args=["--http_port", str(risk_port)]))
        cluster["containers"].append(names[-1])
        wait_ready(names[-1], f"http://127.0.0.1:{risk_port}/v2/models/{RISK}/ready")
        pod = dataclasses.replace(containers.workload_pod(objects, "Deployment", "storeflow-webhooks"),
                                  name="storeflow-webhooks-risk")
        names.append(f"{pod.name}-{pod.containers[0]['name']}")
        containers.remove(names[-1])
        containers.start(kubelet.docker_run(pod, pod.containers[0], hosts=hosts,
                                            extra_args=["--port", str(webhooks_port)]))
        cluster["containers"].append(names[-1])
        cluster["served"][names[-1]] = (pod.containers[0], webhooks_port)
        wait_ready(names[-1], f"http://127.0.0.1:{webhooks_port}/livez")
        yield {"webhooks": f"127.0.0.1:{webhooks_port}", "admin": admin, "version": version, "container": names[-1]}


def test_the_webhooks_pod_scores_an_order_in_its_own_scorer_process_and_writes_the_assessment_back(cluster, risk_pods):
    """orders/create in -> the scorer process the receiver started inside the container (risk.scorer: process, the
    default) -> the risk predictor container -> orderRiskAssessmentCreate at the Admin API, once; the customer's
    history and velocity in the namespace's Redis through the registry in Postgres."""
    from test_webhook_signing import delivery, order

    from storeflow.components.features.repo import feature_store

    payload = order(990101, 9101, "c9101@example.com", 420.0) | {
        "payment_gateway_names": ["shopify_payments"], "cancel_reason": None,
        "shipping_address": {"address1": "9 Pod Street", "zip": "10001", "country_code": "US"},
        "billing_address": {"country_code": "CA"}}
    signed = delivery("orders/create", payload, "pods-risk-1", secret=API_SECRET, shop=SHOP)
    url = f"http://{risk_pods['webhooks']}"
    assert httpx.post(f"{url}/webhooks", timeout=30, **signed).status_code == 200
    admin = risk_pods["admin"]
    deadline = time.monotonic() + 180
    while not admin.created and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [c["orderId"] for c in admin.created] == ["gid://shopify/Order/990101"], \
        containers.logs(risk_pods["container"])[-6000:]
    assert admin.created[0]["riskLevel"] in ("HIGH", "MEDIUM", "LOW")
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert (health["risk"]["sent"], health["risk"]["unscored"], health["risk"]["last_error"]) == (1, 0, None), health
    assert (health["risk"]["scorer"], health["risk"]["writer"]) == ("running", "running"), health
    # the scorer and the write-back are processes of their own in the container, beside the receiver and its applier
    listing = ("import glob\nfor path in glob.glob('/proc/[0-9]*/cmdline'):\n    try:\n"
               "        print(open(path, 'rb').read().replace(bytes(1), b' ').decode())\n    except OSError:\n        pass")
    ps = subprocess.run(["docker", "exec", risk_pods["container"], "python", "-c", listing], capture_output=True,
                        text=True)
    assert ps.returncode == 0, ps.stderr
    assert sum("spawn_main" in line for line in ps.stdout.splitlines()) >= 3, ps.stdout  # applier, scorer, writer
    # what the scorer pushed went to the namespace's online store (Redis) through the registry in Postgres
    store = feature_store(cluster["settings"])
    events = store.get_online_features(features=["customer_order_history:events"],
                                       entity_rows=[{"customer_id": 9101}]).to_dict()["events"][0]
    assert events is not None and 990101 in events[1::4]
    # the same delivery again is one assessment
    assert httpx.post(f"{url}/webhooks", timeout=30, **signed).status_code == 200
    time.sleep(3)
    assert len(admin.created) == 1


def test_every_probe_the_manifests_declare_answers(cluster):
    """A liveness or readiness probe that fails restarts the pod or keeps it out of its Service."""
    checked = []
    for name, (container, port) in cluster["served"].items():
        for kind in ("livenessProbe", "readinessProbe"):
            if kind in container:
                path = container[kind]["httpGet"]["path"]
                response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
                assert response.status_code == 200, (name, kind, path, response.text)
                checked.append((name, kind))
    assert {n for n, _ in checked} == set(cluster["served"])  # every container has a probe


def test_no_pod_logged_an_error_or_outgrew_its_memory_limit(cluster):
    usage = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}",
                            *cluster["containers"]], capture_output=True, text=True).stdout
    print(usage)
    for name in cluster["containers"]:
        state = containers.state(name)
        assert state["Running"] and not state["OOMKilled"], (name, state)
        text = containers.logs(name)
        print(f"===== {name}\n{text[-3000:]}")
        assert "Traceback" not in text and '"level": "ERROR"' not in text, f"{name}:\n{text[-6000:]}"


@pytest.mark.parametrize("host", ["mlflow:5000", "mlflow.storeflow.svc:5000", "mlflow.storeflow.svc.cluster.local:5000",
                                  "10.244.1.7:5000"])
def test_mlflow_answers_the_pods_that_call_it_by_its_service_name(cluster, host):
    """Pipeline tasks and the deploy step reach MLflow as STOREFLOW_REGISTRY__TRACKING_URI says (http://mlflow:5000),
    the kubelet's probes by pod IP: MLflow's DNS-rebinding guard must accept those Hosts, or every registry call
    is a 403."""
    response = httpx.get(f"{cluster['tracking']}/api/2.0/mlflow/registered-models/search", timeout=30,
                         headers={"Host": host})
    assert response.status_code == 200, response.text
    assert MODEL in {m["name"] for m in response.json()["registered_models"]}


def test_mlflow_still_refuses_a_foreign_host(cluster):
    response = httpx.get(f"{cluster['tracking']}/api/2.0/mlflow/registered-models/search", timeout=30,
                         headers={"Host": "mlflow.attacker.example:5000"})
    assert response.status_code == 403
