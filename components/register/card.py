"""A model card for each registered version (Markdown): what a reviewer asks before trusting a model —
which version and URI, trained how and on what, how it did against the champion and the baselines on the
same holdout, and whether it serves. Written by the register task as a KFP Markdown artifact."""

from __future__ import annotations

from storeflow.components.evaluate import EvaluationResult
from storeflow.components.evaluate.report import markdown
from storeflow.components.register import RegistrationResult
from storeflow.components.train import TrainResult


def model_card(registered: RegistrationResult, trained: TrainResult, evaluation: EvaluationResult,
               dataset_hash: str, estimator: str) -> str:
    status = ("champion: serves after the canary rollout" if registered.promoted
              else f"challenger only: the champion stays v{registered.champion_version}" if registered.champion_version
              else "challenger only: no champion yet")
    lines = [
        f"# {registered.model_name} v{registered.version}", "",
        f"- **Status:** {status}",
        f"- **Model URI:** `models:/{registered.model_name}/{registered.version}` (source `{registered.source}`)",
        f"- **MLflow run:** `{trained.run_id}`",
        f"- **Estimator:** `{estimator}`, Platt-calibrated on the latest pre-holdout cutoff",
        f"- **Training set:** {trained.train_rows:,} rows, content hash `{dataset_hash[:16]}`",
        f"- **Features:** {', '.join(f'`{name}`' for name in trained.features)}",
        "", "## Evaluation on the holdout", "",
    ]
    return "\n".join(lines) + markdown(evaluation).replace("## ", "### ", 1)
