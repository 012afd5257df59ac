"""A canary rollout from start to promotion or rollback: cluster writes driven by :func:`analysis.decide`.

Collaborators come in as arguments (InferenceServices, Prometheus, ``sleep``, ``record``) so tests drive
the whole loop against loopback servers without waiting and without MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy import inference_service as isvc_spec
from storeflow.components.deploy.analysis import decide
from storeflow.components.deploy.inference_service import DeployError, ModelVersionRef
from storeflow.components.deploy.kube import InferenceServices
from storeflow.components.deploy.prometheus import Prometheus, PrometheusError

log = logging.getLogger(__name__)

Record = Callable[[Settings, str, dict[str, str]], bool]


@dataclass
class RolloutResult:
    outcome: str  # created | unchanged | promoted | rolled-back
    model_version: str
    champion_version: str | None
    inference_service: str
    mode: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    recorded_in_mlflow: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rollback(
    isvcs: InferenceServices, settings: Settings, reason: str, record: Record
) -> tuple[dict[str, Any], bool]:
    """Restore the champion from the saved spec (no MLflow needed), then, if MLflow answers, tag the canary
    version and record the restored version as serving (which moves the ``champion`` alias back to it)."""
    name = settings.deploy.inference_service
    current = isvcs.require(name)
    mode = isvc_spec.deployment_mode(current, settings.deploy.mode)
    canary_version = isvc_spec.serving_version(current)
    restored = isvcs.update(name, lambda latest: isvc_spec.rollback_patch(latest, mode, reason), current)
    recorded = bool(canary_version) and record(
        settings, canary_version, {"storeflow.deploy.state": "rolled-back", "storeflow.deploy.reason": reason}
    )
    serving = isvc_spec.serving_version(restored)
    if serving and serving != canary_version:
        recorded = record(settings, serving, {"storeflow.deploy.state": "restored"}) and recorded
    return restored, recorded


def promote(isvcs: InferenceServices, settings: Settings, record: Record) -> tuple[dict[str, Any], bool]:
    """Give the canary all traffic; its version becomes the champion."""
    name = settings.deploy.inference_service
    current = isvcs.require(name)
    mode = isvc_spec.deployment_mode(current, settings.deploy.mode)
    version = isvc_spec.serving_version(current)

    def promotion(latest: dict[str, Any]) -> dict[str, Any]:
        if isvc_spec.rollout_state(latest) != "canary" or isvc_spec.serving_version(latest) != version:
            raise DeployError(
                f"InferenceService {name} has no canary to promote (state {isvc_spec.rollout_state(latest)})"
            )
        return isvc_spec.promote_patch(latest, mode)

    promoted = isvcs.update(name, promotion, current)
    recorded = bool(version) and record(settings, version, {"storeflow.deploy.state": "promoted"})
    return promoted, recorded


def run(
    isvcs: InferenceServices,
    prometheus: Prometheus,
    settings: Settings,
    model: ModelVersionRef,
    run_id: str,
    sleep: Callable[[float], None],
    record: Record,
) -> RolloutResult:
    """Deploy ``model``: create the service, or canary it against the champion step by step."""
    deploy = settings.deploy
    name = deploy.inference_service
    current = isvcs.get(name)
    if current is None:
        isvcs.create(isvc_spec.new_inference_service(settings, model, run_id))
        recorded = record(settings, model.version, {"storeflow.deploy.state": "promoted", "storeflow.deploy.run_id": run_id})
        return RolloutResult("created", model.version, None, name, deploy.mode, recorded_in_mlflow=recorded)

    mode = isvc_spec.deployment_mode(current, deploy.mode)
    champion = isvc_spec.serving_version(current)
    if isvc_spec.rollout_state(current) == "bootstrap":
        isvcs.update(name, lambda latest: isvc_spec.first_deploy_patch(latest, settings, model, run_id), current)
        recorded = record(settings, model.version, {"storeflow.deploy.state": "promoted", "storeflow.deploy.run_id": run_id})
        return RolloutResult("created", model.version, None, name, mode, recorded_in_mlflow=recorded)
    if champion is None:
        raise DeployError(
            f"InferenceService {deploy.namespace}/{name} has no {isvc_spec.MODEL_VERSION} annotation: "
            "storeflow cannot tell which version serves, so it cannot judge a canary against it"
        )
    result = RolloutResult("unchanged", model.version, champion, name, mode)
    if champion == model.version and isvc_spec.rollout_state(current) == "promoted":
        return result

    percent = deploy.canary_steps[0]
    def start(latest: dict[str, Any]) -> dict[str, Any]:
        if isvc_spec.serving_version(latest) != champion and latest is not current:
            raise DeployError(f"InferenceService {name} changed hands during the rollout of v{model.version}")
        return isvc_spec.start_canary_patch(latest, settings, model, run_id, percent)

    if percent == 100:  # a single step: no canary wanted
        isvcs.update(name, start, current)
        promoted, result.recorded_in_mlflow = promote(isvcs, settings, record)
        result.outcome = "promoted"
        return result

    isvcs.update(name, start, current)
    holds = 0
    while True:
        sleep(deploy.analysis_interval_seconds)
        try:
            decision = decide(
                settings,
                percent,
                holds,
                prometheus.version_metrics(settings, model.version),
                prometheus.version_metrics(settings, champion),
            )
        except (PrometheusError, ValueError) as exc:
            # Blind analysis is a failed analysis: the champion takes the traffic back.
            reason = f"canary analysis failed at {percent}%: {exc}"
            log.error(reason)
            result.steps.append({"percent": percent, "action": "rollback", "reasons": [reason]})
            _, result.recorded_in_mlflow = rollback(isvcs, settings, reason, record)
            result.outcome, result.reasons = "rolled-back", [reason]
            return result

        result.steps.append({"percent": percent, "action": decision.action, "reasons": list(decision.reasons)})
        log.info("canary %s at %d%%: %s %s", model.version, percent, decision.action, "; ".join(decision.reasons))
        if decision.action == "hold":
            holds += 1
        elif decision.action == "advance":
            isvcs.update(name, lambda latest: isvc_spec.set_percent_patch(latest, mode, decision.percent))
            percent, holds = decision.percent, 0
        elif decision.action == "promote":
            _, result.recorded_in_mlflow = promote(isvcs, settings, record)
            result.outcome, result.reasons = "promoted", list(decision.reasons)
            return result
        else:
            reason = "; ".join(decision.reasons)
            _, result.recorded_in_mlflow = rollback(isvcs, settings, reason, record)
            result.outcome, result.reasons = "rolled-back", list(decision.reasons)
            return result
