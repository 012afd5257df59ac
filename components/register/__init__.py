"""Register stage: every trained model becomes a new, never-overwritten MLflow model version.

Aliases say which is which: ``challenger`` always points at the newest version, ``champion`` moves
only when evaluation says so (MLflow 3 deprecates stages; aliases replace them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from storeflow.components.config import Settings
from storeflow.components.evaluate import EvaluationResult
from storeflow.components.train import TrainResult

__all__ = ["RegistrationResult", "register"]


@dataclass(frozen=True)
class RegistrationResult:
    model_name: str
    version: str
    promoted: bool
    champion_version: str | None
    previous_champion: str | None
    source: str
    run_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RegistrationResult:
        return cls(**json.loads(text))


BASELINE_TAG = "storeflow.baseline"


def baseline_verdict(evaluation: EvaluationResult) -> str:
    """``loses-to-baseline:<name>``, ``beats-baselines:<best>`` or ``no-baseline`` (tag value)."""
    if evaluation.baseline_comparison is None:
        return "no-baseline"
    verdict = "loses-to-baseline" if evaluation.loses_to_baseline else "beats-baselines"
    return f"{verdict}:{evaluation.best_baseline}"


def register(settings: Settings, trained: TrainResult, evaluation: EvaluationResult) -> RegistrationResult:
    import mlflow

    from storeflow.components import tracking

    client = tracking.connect(settings)
    name = settings.registry.model_name
    previous = tracking.current_champion(client, name)
    promoted = evaluation.promote  # evaluate never promotes what a baseline beats (evaluate.baseline_gate)
    version = mlflow.register_model(trained.model_uri, name, tags={
        "storeflow.decision": "promote" if promoted else "keep-champion",
        "storeflow.reason": evaluation.reason[:5000],
        "storeflow.run_id": trained.run_id,
    })
    for key, value in evaluation.challenger_metrics.items():
        client.set_model_version_tag(name, version.version, f"holdout.{key}", f"{value:.6f}")
    # The champion scored on this very holdout, so the two can be compared later as the gate saw them.
    for key, value in (evaluation.champion_metrics or {}).items():
        client.set_model_version_tag(name, version.version, f"champion_holdout.{key}", f"{value:.6f}")
    # The baselines scored on the same rows, and a flag on a challenger that one of them beats.
    for baseline, values in evaluation.baseline_metrics.items():
        for key, value in values.items():
            client.set_model_version_tag(name, version.version, f"baseline_holdout.{baseline}.{key}", f"{value:.6f}")
    client.set_model_version_tag(name, version.version, BASELINE_TAG, baseline_verdict(evaluation))
    client.set_registered_model_alias(name, tracking.CHALLENGER, version.version)
    if promoted:
        tracking.crown(client, name, version.version, previous)
    champion = version.version if promoted else previous
    return RegistrationResult(name, str(version.version), promoted, champion and str(champion),
                              previous, version.source, trained.run_id)
