"""The pipeline's deploy step as a plain function; the KFP wrapper in component.py calls :func:`deploy_stage`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy import registry, rollout
from storeflow.components.deploy.inference_service import ModelVersionRef
from storeflow.components.deploy.kube import InferenceServices, connect
from storeflow.components.deploy.prometheus import Prometheus


def deploy_stage(
    settings: Settings,
    model_version: str,
    run_id: str,
    *,
    isvcs: InferenceServices | None = None,
    prometheus: Prometheus | None = None,
    resolve: Callable[[Settings, str], ModelVersionRef] = registry.resolve_model_version,
    record: rollout.Record = registry.record_rollout,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Serve ``model_version`` of ``registry.model_name``: create the InferenceService, or canary it
    against the champion through ``deploy.canary_steps`` and promote or roll back on the metrics.

    Returns the outcome (created | unchanged | promoted | rolled-back), each analysis and its reasons.
    The keyword arguments exist for tests and local runs; the pipeline passes none.
    """
    model = resolve(settings, str(model_version))
    result = rollout.run(
        isvcs or connect(settings),
        prometheus or Prometheus(settings.deploy.prometheus_url),
        settings,
        model,
        run_id,
        sleep,
        record,
    )
    return result.to_dict()
