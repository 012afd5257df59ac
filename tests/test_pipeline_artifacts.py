"""The training pipeline with no volume shared between its tasks, as on a cluster whose only StorageClass is
ReadWriteOnce: kfp.local.DockerRunner runs each task in its own container of the project image (UID 1000,
host networking) with nothing mounted but the pipeline root, which stands in for the cluster's artifact
store. Each task's state dir is private scratch inside its container. The stages hand each other KFP
artifacts (snapshot and training set Datasets, the Model); what outlives the run is in the services a
cluster has: an `mlflow server` with proxied artifacts, the Feast registry in PostgreSQL and Redis.

Needs a Docker engine, PostgreSQL and redis-server (.ci/run installs and starts them); skips loudly where
containers cannot run at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

import containers
from mlflow_server import mlflow_server
from postgres_server import postgres_server
from redis_server import redis_server

pytestmark = pytest.mark.slow

NO_CONTAINERS = containers.unavailable()
if NO_CONTAINERS:
    pytest.skip(f"!!! CONTAINER TESTS NOT RUN: {NO_CONTAINERS} !!!", allow_module_level=True)

FEAST_PASSWORD = "artifacts-test-feast"
TASK_STATE = "/tmp/storeflow-task-state"  # inside each task's container: seen by no other task


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    from kfp import local

    from storeflow.components.config import load_settings
    from storeflow.pipelines.training import STAGES, training_pipeline

    image = containers.build_image()
    root = tmp_path_factory.mktemp("artifacts")
    with postgres_server(root / "postgres", {"feast": FEAST_PASSWORD}) as pg, redis_server(root) as redis, \
            mlflow_server(root / "mlflow") as (tracking, _):
        registry_url = f"postgresql+psycopg://feast:{FEAST_PASSWORD}@{pg}/feast"
        cluster = {
            "project": {"state_dir": TASK_STATE},
            "registry": {"tracking_uri": tracking},
            "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60},
                         "feast": {"online_store": "redis", "redis_connection_string": redis,
                                   "registry": "${FEAST_REGISTRY_URL}"}},
            "ingest": {"synthetic": {"customers": 600, "orders": 5000, "products": 60}},
            "train": {"params": {"max_iter": 60, "random_state": 0}},
            "evaluate": {"bootstrap_samples": 100, "baseline_gate": False},
        }
        settings = load_settings(cluster)
        assert image == settings.image.reference
        pipeline_root = root / "pipeline-root"  # the artifact store: the one thing every task sees
        printed = io.StringIO()
        # The registry's URL reaches the tasks as env, as a cluster's Secret does (never a parameter).
        runner = local.DockerRunner(network_mode="host", environment={"FEAST_REGISTRY_URL": registry_url,
                                                                      "HOME": "/tmp"})
        with containers.shared_with_image_user(pipeline_root), contextlib.redirect_stdout(printed):
            local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True)
            try:
                task = training_pipeline(config_json=settings.to_json())
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n--- task output ---\n{printed.getvalue()[-8000:]}") from exc
        log = re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())
        for stage in STAGES:
            assert f"Task '{stage}' finished with status SUCCESS" in log, stage
        os.environ["ARTIFACTS_TEST_FEAST_REGISTRY"] = registry_url
        host = load_settings({**cluster, "project": {"state_dir": str(root / "host-state")},
                              "features": {**cluster["features"], "feast": {
                                  **cluster["features"]["feast"], "registry": "${ARTIFACTS_TEST_FEAST_REGISTRY}"}}})
        try:
            yield json.loads(task.output), pipeline_root, host
        finally:
            os.environ.pop("ARTIFACTS_TEST_FEAST_REGISTRY", None)
            import mlflow

            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def _artifact(pipeline_root: Path, task: str, name: str) -> Path:
    (path,) = pipeline_root.glob(f"storeflow-training-*/{task}/{name}")
    return path


def test_the_run_registers_a_champion_with_no_shared_volume(run) -> None:
    registered, _, host = run
    assert registered["version"] == "1" and registered["promoted"]
    assert not Path(TASK_STATE).exists()  # every task's state stayed in its own container


def test_the_stages_hand_each_other_datasets_and_a_model(run) -> None:
    import mlflow.pyfunc

    from storeflow.components import tracking

    registered, pipeline_root, host = run
    snapshot = _artifact(pipeline_root, "ingest", "snapshot")
    assert (snapshot / "orders.parquet").exists() and (snapshot / "_manifest.json").exists()
    training_set = pd.read_parquet(_artifact(pipeline_root, "features", "training_set"))
    assert {"customer_id", "event_timestamp", "label"} <= set(training_set.columns) and len(training_set) > 500
    # The Model artifact is the model MLflow registered: the same scores from either.
    model_dir = _artifact(pipeline_root, "train", "model")
    assert (model_dir / "MLmodel").exists()
    tracking.connect(host)
    registry_model = mlflow.pyfunc.load_model(f"models:/{host.registry.model_name}/{registered['version']}")
    rows = training_set[list(host.features.customer_features)].head(50)
    assert (mlflow.pyfunc.load_model(str(model_dir)).predict(rows) == registry_model.predict(rows)).all()
    card = _artifact(pipeline_root, "register", "model_card").read_text()
    assert f"{host.registry.model_name} v1" in card and "champion" in card and "roc_auc" in card


def test_features_the_run_materialized_are_online_in_redis(run) -> None:
    from storeflow.components.features.repo import feature_refs, feature_store

    _, pipeline_root, host = run
    customers = pd.read_parquet(_artifact(pipeline_root, "ingest", "snapshot") / "customers.parquet")
    store = feature_store(host)  # the registry in PostgreSQL tells where the views are and Redis holds the rows
    online = store.get_online_features(features=feature_refs(host),
                                       entity_rows=[{"customer_id": int(c)} for c in customers["customer_id"].head(20)]).to_dict()
    values = online[host.features.customer_features[0]]
    assert len(values) == 20 and sum(v is not None for v in values) >= 10


def test_the_registered_version_carries_the_bgnbd_a_receiver_on_another_pod_scores_with(run, tmp_path: Path) -> None:
    """The features task's BG/NBD reaches the webhook receiver through MLflow, not a volume: the host here
    never ran features (no file of its own), and scores live customers' BTYD features as training did."""
    from storeflow.components.features.btyd import BTYD_FEATURES, LiveScorer
    from storeflow.components.shopify.baseline import ServedBaseline

    registered, pipeline_root, host = run
    served = ServedBaseline(host, tmp_path / "baselines")
    assert served() is None
    assert served.refresh() == registered["version"]
    assert served().read_bytes() == _artifact(pipeline_root, "features", "baseline_model").read_bytes()
    training_set = pd.read_parquet(_artifact(pipeline_root, "features", "training_set")).head(200)
    live = LiveScorer(served).features(training_set, host.features.label.horizon_days)
    for name in BTYD_FEATURES:
        assert live[name].to_numpy() == pytest.approx(training_set[name].to_numpy(), rel=1e-6), name


def test_a_monitor_on_another_pod_finds_the_champions_reference_in_mlflow(run) -> None:
    """The monitoring reference is an artifact of the training run, not the training set file the train task
    saw: a monitor task with none of the training tasks' files loads it (it used to report no reference)."""
    from storeflow.components.monitor.reference import load_reference

    registered, _, host = run
    cfg = host.monitor
    reference = load_reference(host, registered["version"], cfg.reference_rows, cfg.seed, cfg.reference_cutoffs)
    assert len(reference.frame) > 100 and reference.frame["score"].between(0, 1).all()
    assert set(host.features.customer_features) <= set(reference.frame.columns)
