"""``storeflow submit`` / ``schedule``: storeflow's pipelines by name (training, monitoring, recommendations) on a
Kubeflow Pipelines API, compiled for the submitter's settings (:func:`storeflow.pipelines.compile.package_for`):
the image, resources, retries and timeouts are compiled into the tasks, which ``config_json`` cannot change.

How a run is sent (the settings tasks see, Secrets, tokens) is :mod:`storeflow.pipelines.kfp_api`.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from storeflow.components.config import Settings
from storeflow.pipelines.api_errors import api_errors, not_the_api
from storeflow.pipelines.compile import package_for
from storeflow.pipelines.kfp_api import Submitted, client, cluster_config_json, start_run


def submit(settings: Settings, host: str | None = None, token: str | None = None, run_name: str | None = None,
           pipeline: str = "training", package: Path | None = None, parameters: dict | None = None) -> Submitted:
    """Start one run of ``pipeline`` (training, monitoring or recommendations); ``package`` overrides its YAML."""
    with _package(pipeline, settings, package) as path:
        return start_run(settings, path, host, token, run_name, parameters)


def schedule(settings: Settings, cron: str, host: str | None = None, token: str | None = None,
             name: str | None = None, pipeline: str = "training", package: Path | None = None) -> str:
    """Create a recurring run (KFP cron: six fields, seconds first) of ``pipeline`` (training or monitoring)."""
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"cron expression {cron!r} must have 6 fields (seconds minutes hours day month weekday)")
    name = name or {"training": "storeflow-retraining"}.get(pipeline, f"storeflow-{pipeline}")
    config_json = cluster_config_json(settings)
    with _package(pipeline, settings, package) as path:
        kfp_client = client(settings, host, token)
        with api_errors(str(host or settings.kfp.host)):
            experiment = kfp_client.create_experiment(settings.kfp.experiment, namespace=settings.kfp.namespace)
            job = kfp_client.create_recurring_run(
                experiment_id=experiment.experiment_id,
                job_name=name,
                cron_expression=cron,
                pipeline_package_path=str(path),
                params={"config_json": config_json},
                service_account=settings.kfp.service_account,
                enable_caching=settings.kfp.enable_caching,
                max_concurrency=1,
            )
    if not job.recurring_run_id:  # kfp reads any 2xx as a recurring run; the API always gives one an id
        raise not_the_api(str(host or settings.kfp.host), "POST /apis/v2beta1/recurringruns", "no recurring run id")
    return job.recurring_run_id


def _package(pipeline: str, settings: Settings, package: Path | None):
    return nullcontext(package) if package else package_for(pipeline, settings)
