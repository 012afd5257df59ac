"""The training and monitoring pipelines end to end in the project image: kfp.local.DockerRunner runs every
task in its own container, as UID 1000, with host networking and the state dir mounted at its own path,
as a cluster runs each task in a pod with the state volume. The monitoring run is critical, so its retrain
task runs a whole training pipeline inside its container, as a cluster's monitoring would start one.

Needs a Docker engine (.ci/run installs and starts one, then `make image`); skips loudly only where none
can run. The image is (re)built by `make image`'s script first: a cache hit when nothing changed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

import containers
from storeflow.components import tracking
from storeflow.components.config import load_settings
from storeflow.components.monitor import simulate_shift

pytestmark = pytest.mark.slow

NO_CONTAINERS = containers.unavailable()
if NO_CONTAINERS:
    pytest.skip(f"!!! CONTAINER TESTS NOT RUN: {NO_CONTAINERS} !!!", allow_module_level=True)

SMALL_STORE = {"customers": 600, "orders": 5000, "products": 60}


def _run_in_containers(pipeline, state: Path, **arguments) -> tuple[str, str]:
    """One pipeline run with DockerRunner; returns (its output, everything the tasks printed)."""
    from kfp import local

    printed = io.StringIO()
    root = state / "runs" / "containers"  # made here: Docker would make a missing bind source root-only
    with containers.shared_with_image_user(state), contextlib.redirect_stdout(printed):
        root.mkdir(parents=True, exist_ok=True)
        local.init(runner=containers.docker_runner(state), pipeline_root=str(root), raise_on_error=True)
        try:
            task = pipeline(**arguments)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n--- task output ---\n{printed.getvalue()[-8000:]}") from exc
    return task.output, re.sub(r"\x1b\[[0-9;]*m", "", printed.getvalue())  # kfp.local colours names


@pytest.fixture(scope="module")
def image() -> str:
    return containers.build_image()


@pytest.fixture(scope="module")
def trained(image: str, tmp_path_factory: pytest.TempPathFactory):
    from storeflow.pipelines.training import training_pipeline

    state = tmp_path_factory.mktemp("containers") / "state"
    settings = load_settings({
        "project": {"state_dir": str(state)},
        "ingest": {"synthetic": SMALL_STORE},
        "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
        "train": {"params": {"max_iter": 60, "random_state": 0}},
        "evaluate": {"bootstrap_samples": 100, "baseline_gate": False},  # as quick_overrides: small store
    })
    assert image == settings.image.reference  # the tasks' base_image is the one just built
    output, printed = _run_in_containers(training_pipeline, state, config_json=settings.to_json())
    return settings, json.loads(output), printed


def test_training_runs_every_task_in_the_image_as_uid_1000(trained, image: str) -> None:
    from storeflow.pipelines.training import STAGES

    settings, registered, printed = trained
    assert registered["version"] == "1" and registered["promoted"]
    for stage in STAGES:
        assert f"Task '{stage}' finished with status SUCCESS" in printed
    assert printed.count(f"Found image '{image}'") == len(STAGES)
    # Written inside the containers, by the image's user: what a cluster's pods would own on the volume.
    state = settings.project.state_dir
    assert (state / "mlflow.db").stat().st_uid == containers.IMAGE_UID
    assert all(p.stat().st_uid == containers.IMAGE_UID for p in (state / "feature_repo").iterdir())
    client = tracking.connect(settings)
    assert str(client.get_model_version_by_alias(settings.registry.model_name, "champion").version) == "1"


def test_critical_monitoring_retrains_inside_its_container(trained) -> None:
    from storeflow.pipelines.monitoring import STAGES, monitoring_pipeline

    settings, _, _ = trained
    state = settings.project.state_dir
    with containers.shared_with_image_user(state):
        simulate_shift(settings, requests=600, share=0.7, seed=1)  # a holiday promotion's traffic, logged
    output, printed = _run_in_containers(monitoring_pipeline, state, config_json=settings.to_json(),
                                         window_end="", model_version="")
    for stage in STAGES:
        assert f"Task '{stage}' finished with status SUCCESS" in printed
    decision = json.loads(output)
    assert decision["started"], decision
    challenger = decision["run"]["registration"]
    assert challenger["version"] == "2"
    version = tracking.connect(settings).get_model_version(settings.registry.model_name, "2")
    assert version.tags["storeflow.decision"] in ("promote", "keep-champion")
    reports = list((state / "monitoring" / "reports").glob("*/report.html"))
    assert reports and all(r.stat().st_uid == containers.IMAGE_UID for r in reports)
