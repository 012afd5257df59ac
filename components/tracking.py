"""MLflow wiring shared by train, evaluate, register and serving: one place sets the tracking URI.

``import mlflow`` costs seconds, so callers import this module only where MLflow is really used.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from storeflow.components.config import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
# On a version made champion: the version it replaced. The local rollout record says the same once the deploy
# step has run; a pipeline stopped between register and the end of its canary leaves only this.
PREVIOUS_CHAMPION_TAG = "storeflow.previous_champion"


class RegistryUnavailable(RuntimeError):
    """The registry's database cannot be opened (a damaged or foreign SQLite file, a locked or unreachable
    database); the message names it and the database's own reason."""


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured server (or the embedded SQLite store) and return a client."""
    from sqlalchemy.exc import SQLAlchemyError

    if settings.tracking_uri.startswith("sqlite:///"):
        folder = Path(settings.tracking_uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a path through a file, no permission
            reason = "Not a directory" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
            raise RegistryUnavailable(f"the MLflow registry {settings.tracking_uri} (registry.tracking_uri) cannot be "
                                      f"created: {reason}: {exc.filename or folder}") from exc
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:  # a database store is opened (and its tables checked) here
        return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise RegistryUnavailable(f"the MLflow registry {settings.tracking_uri} (registry.tracking_uri) cannot be "
                                  f"read: {reason}") from exc


def experiment_id(settings: Settings, client: MlflowClient) -> str:
    name = settings.registry.experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=settings.artifact_location)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The source commit, from the image's build arg or the working tree; None when unknown."""
    import os

    if commit := os.environ.get("STOREFLOW_GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def pip_requirements() -> list[str]:
    """Explicit requirements for logged models: inferring them costs ~10 s per model."""
    import cloudpickle
    import numpy
    import pandas
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"numpy=={numpy.__version__}",
            f"pandas=={pandas.__version__}", f"cloudpickle=={cloudpickle.__version__}"]


def current_champion(client: MlflowClient, model_name: str) -> str | None:
    """The champion's version number, or None when there is no champion (or no model) yet."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def crown(client: MlflowClient, model_name: str, version: str, previous: str | None) -> None:
    """Make ``version`` the champion, tagging it first with the ``previous`` champion it replaces, so a rollback
    finds its way back even when the rollout that should follow never records one (killed mid-canary)."""
    if previous is not None and str(previous) != str(version):
        client.set_model_version_tag(model_name, str(version), PREVIOUS_CHAMPION_TAG, str(previous))
    client.set_registered_model_alias(model_name, CHAMPION, str(version))


def replaced_champion(client: MlflowClient, model_name: str, version: str) -> str | None:
    """The champion ``version`` replaced when it was made champion (:func:`crown`), or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(version)).tags.get(PREVIOUS_CHAMPION_TAG)
    except MlflowException:
        return None


def skops_trusted_types(estimator) -> list[str]:
    """Types to trust when loading a model this project trained itself (skops refuses unknown types)."""
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(estimator))
