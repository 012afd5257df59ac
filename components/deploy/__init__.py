"""Deploy a registered model version to KServe with a canary, automated analysis and rollback."""

from storeflow.components.deploy.analysis import Decision, decide, score_psi
from storeflow.components.deploy.commands import promote, rollback, status
from storeflow.components.deploy.stage import deploy_stage
from storeflow.components.deploy.inference_service import DeployError, ModelVersionRef, new_inference_service
from storeflow.components.deploy.prometheus import Prometheus, PrometheusError, VersionMetrics

__all__ = [
    "Decision",
    "DeployError",
    "ModelVersionRef",
    "Prometheus",
    "PrometheusError",
    "VersionMetrics",
    "decide",
    "deploy_stage",
    "new_inference_service",
    "promote",
    "rollback",
    "score_psi",
    "status",
]
