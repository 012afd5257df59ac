"""How monitoring starts the training pipeline (``monitor.retrain``): ``local`` runs it here with
kfp.local, ``cluster`` submits the compiled pipeline to the Kubeflow Pipelines API. The recommender's
(a CTR drop, item-popularity drift) start the recommendations pipeline the same two ways.

Whether to start one (a critical level, once per model version and window) is the monitor stage's
decision, :func:`storeflow.components.monitor.retrain_if_needed`; these are the launchers it is handed
by the monitoring pipeline's ``retrain`` task and by ``storeflow monitor --in-process``.

Nothing here imports kfp at module level: inside a KFP task the SDK is importable in runtime mode only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone

from storeflow.components.config import Settings

SUBMIT_TIMEOUT = 600  # seconds for a child process that compiles and submits a pipeline (cluster retrain)


def _in_kfp_task() -> bool:
    return os.environ.get("_KFP_RUNTIME") == "true"


def _in_full_sdk(mode: str, settings: Settings) -> dict:
    """Run the ``mode`` launcher in a child process that sees the whole kfp SDK: inside a KFP task the SDK
    is importable in runtime mode only (no pipelines, compiler or client: ``cannot import name
    'PipelineTask' from 'kfp.dsl'``)."""
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    code = "import sys; from storeflow.pipelines.retraining import _launch_here; _launch_here(sys.argv[1], sys.stdin.read())"
    what = "recommendations" if mode.startswith("recommendations") else "risk" if mode.startswith("risk") else "training"
    # A submit is bounded (each API call has its timeout) but a child stuck anyway would hold the monitoring
    # task to its own timeout; a local run is the whole pipeline, bounded by the retrain task's timeout.
    timeout = SUBMIT_TIMEOUT if mode.endswith("cluster") else None
    try:
        done = subprocess.run([sys.executable, "-c", code, mode], input=settings.to_json(), env=env, text=True,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ConnectionError(f"submitting the {what} pipeline did not finish within {timeout} s; a run may have "
                              f"been created: look in the KFP UI") from exc
    if done.returncode != 0:
        if mode.endswith("cluster"):  # no run was created: the window stays open for the next monitoring run
            raise ConnectionError(f"submitting the {what} pipeline failed: {done.stderr.strip()[-4000:]}")
        raise RuntimeError(f"local {what} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _launch_here(mode: str, config_json: str) -> None:
    from storeflow.components.config import load_settings

    try:
        print(json.dumps(_LAUNCH[mode](load_settings(config_json))))
    except (ValueError, FileNotFoundError, OSError) as exc:  # nothing started, said in one line (KfpApiError)
        sys.exit(str(exc))


def _start_local(settings: Settings) -> dict:
    if _in_kfp_task():
        return _in_full_sdk("local", settings)
    return _train_local(settings)


def _train_local(settings: Settings) -> dict:
    from storeflow.pipelines.local import run_local
    from storeflow.pipelines.training import STAGES, training_pipeline

    result = run_local(training_pipeline, settings, STAGES)
    return {"registration": json.loads(result.output), "log": str(result.log), "seconds": result.seconds}


def _start_cluster(settings: Settings) -> dict:
    if _in_kfp_task():
        return _in_full_sdk("cluster", settings)
    return _submit(settings)


def _submit(settings: Settings) -> dict:
    """The training pipeline compiled now for the settings this task has: its image, volume and resources as
    the cluster configured them (the checked-in YAML holds the defaults)."""
    from storeflow.pipelines.kfp_api import start_run
    from storeflow.pipelines.packages import compiled_now
    from storeflow.pipelines.training import build_training_pipeline

    # compiled here, not through compile.package_for: compile imports monitoring, which imports this module
    with compiled_now("pipelines/training.yaml", lambda: build_training_pipeline(settings)) as package:
        submitted = start_run(settings, package, run_name=f"retrain-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    return {"run_id": submitted.run_id, "url": submitted.url}


def _recommend_local(settings: Settings) -> dict:
    from storeflow.pipelines.local import run_local
    from storeflow.pipelines.recommendations import STAGES, recommendations_pipeline

    result = run_local(recommendations_pipeline, settings, STAGES)
    return {"registration": json.loads(result.output), "log": str(result.log), "seconds": result.seconds}


def _submit_recommendations(settings: Settings) -> dict:
    """The recommendations pipeline compiled now, as :func:`_submit` does for training."""
    from storeflow.pipelines.kfp_api import start_run
    from storeflow.pipelines.packages import compiled_now
    from storeflow.pipelines.recommendations import build_recommendations_pipeline

    with compiled_now("pipelines/recommendations.yaml", lambda: build_recommendations_pipeline(settings)) as package:
        submitted = start_run(settings, package,
                              run_name=f"retrain-recommendations-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    return {"run_id": submitted.run_id, "url": submitted.url}


def _risk_local(settings: Settings) -> dict:
    from storeflow.pipelines.local import run_local
    from storeflow.pipelines.risk import STAGES, risk_pipeline

    result = run_local(risk_pipeline, settings, STAGES)
    return {"registration": json.loads(result.output), "log": str(result.log), "seconds": result.seconds}


def _submit_risk(settings: Settings) -> dict:
    """The order risk pipeline compiled now, as :func:`_submit` does for training."""
    from storeflow.pipelines.kfp_api import start_run
    from storeflow.pipelines.packages import compiled_now
    from storeflow.pipelines.risk import build_risk_pipeline

    with compiled_now("pipelines/risk.yaml", lambda: build_risk_pipeline(settings)) as package:
        submitted = start_run(settings, package,
                              run_name=f"retrain-order-risk-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    return {"run_id": submitted.run_id, "url": submitted.url}


def _here_or_full_sdk(mode: str) -> Callable[[Settings], dict]:
    return lambda settings: _in_full_sdk(mode, settings) if _in_kfp_task() else _LAUNCH[mode](settings)


_LAUNCH: dict[str, Callable[[Settings], dict]] = {
    "local": _train_local, "cluster": _submit,
    "recommendations-local": _recommend_local, "recommendations-cluster": _submit_recommendations,
    "risk-local": _risk_local, "risk-cluster": _submit_risk}
LAUNCHERS: dict[str, Callable[[Settings], dict]] = {"local": _start_local, "cluster": _start_cluster}
# A CTR drop or item-popularity drift of the recommender (monitor.retrain_recommender_if_needed) starts these.
RECOMMENDER_LAUNCHERS: dict[str, Callable[[Settings], dict]] = {
    "local": _here_or_full_sdk("recommendations-local"), "cluster": _here_or_full_sdk("recommendations-cluster")}
# Score or feature drift, the alert rate or decay of the order risk model (monitor.retrain_risk_if_needed) start these.
RISK_LAUNCHERS: dict[str, Callable[[Settings], dict]] = {
    "local": _here_or_full_sdk("risk-local"), "cluster": _here_or_full_sdk("risk-cluster")}
