"""The MLflow side of a rollout: where a model version's files are, and why a canary was rolled back.

``mlflow`` is imported inside the functions: it costs seconds and the CLI's status/rollback must stay quick
(and must work when the tracking server is down).
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from storeflow.components.config import Settings
from storeflow.components.deploy.inference_service import DeployError, ModelVersionRef

log = logging.getLogger(__name__)

# Schemes KServe's storage initializer downloads from inside the cluster.
CLUSTER_SCHEMES = ("s3", "gs", "https", "http", "pvc", "hf", "oci", "azure", "abfs")


def cluster_storage_uri(uri: str, what: str, artifacts_destination: str | None = None) -> str:
    """``uri`` if a pod can download it; a local path would make the predictor start without a model.

    A proxied ``mlflow-artifacts:/<path>`` (a tracking server chose the location) is only resolved by that
    server: it is ``<artifacts_destination>/<path>`` in the store the server writes to, which KServe reads.
    """
    scheme = urlparse(uri).scheme
    if scheme == "mlflow-artifacts":
        if not artifacts_destination:
            raise DeployError(
                f"{what} is stored at {uri!r}, behind the MLflow server's artifact proxy, which KServe's storage "
                "initializer cannot download from: set registry.artifacts_destination to the server's "
                "--artifacts-destination (e.g. s3://mlflow)"
            )
        uri = f"{artifacts_destination.rstrip('/')}/{urlparse(uri).path.lstrip('/')}"
        scheme = urlparse(uri).scheme
    if scheme not in CLUSTER_SCHEMES:
        raise DeployError(
            f"{what} is stored at {uri!r}, which KServe's storage initializer cannot download "
            f"(scheme {scheme or 'none'!r}; use one of {', '.join(CLUSTER_SCHEMES)}): "
            "set registry.artifact_location to an object store"
        )
    return uri


def resolve_model_version(settings: Settings, version: str) -> ModelVersionRef:
    """Look ``version`` of the configured registered model up and resolve ``models:/`` to its artifact URI."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = settings.registry.model_name
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        client.get_model_version(name, version)
        uri = client.get_model_version_download_uri(name, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise DeployError(f"model version {name}/{version} is not registered at {settings.tracking_uri}") from exc
        raise DeployError(f"cannot read model version {name}/{version} from {settings.tracking_uri}: {exc}") from exc
    return ModelVersionRef(name=name, version=str(version), storage_uri=cluster_storage_uri(
        uri, f"{name}/{version}", settings.registry.artifacts_destination))


# Rollout states after which the version is what the InferenceService serves: the champion alias names it.
SERVING_STATES = frozenset({"promoted", "restored"})


def record_rollout(settings: Settings, version: str, tags: dict[str, str]) -> bool:
    """Tag the model version with the rollout outcome and, when it now serves (promoted, or restored by a
    rollback), point the ``champion`` alias at it: one truth for monitoring and the next evaluation.
    False (logged) when MLflow cannot be reached; the rollout itself never depends on this (its state lives
    on the InferenceService), and the next record that reaches MLflow sets the alias right again.
    """
    try:
        from mlflow import MlflowClient

        from storeflow.components.tracking import CHAMPION

        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        for key, value in tags.items():
            client.set_model_version_tag(settings.registry.model_name, version, key, value)
        if tags.get("storeflow.deploy.state") in SERVING_STATES:
            client.set_registered_model_alias(settings.registry.model_name, CHAMPION, version)
    except Exception as exc:  # noqa: BLE001 - any MLflow failure must not undo a finished rollback
        log.warning("could not tag %s/%s with %s: %s", settings.registry.model_name, version, tags, exc)
        return False
    return True
