"""The reference a window is compared with: the training set of the model version that served it.

The train stage records it twice on the model's MLflow run: an MLflow dataset input whose source is the
training-set parquet, and the tag ``storeflow.dataset_hash`` (the features stage names the file after it).
Reference scores come from the same model, so prediction drift compares like with like.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.features.dataset import latest_cutoffs_sample


class NoReference(LookupError):
    """The model version, its run or its training set cannot be found; the message says which."""


class UnknownVersion(NoReference):
    """The registry answered that the model has no such version (or that it is not a version number)."""


@dataclass
class Reference:
    model_name: str
    model_version: str
    run_id: str
    training_set: Path
    dataset_hash: str | None
    columns: list[str]
    frame: pd.DataFrame
    model_uri: str
    holdout: dict[str, float]


def _logged_reference(run_id: str, settings: Settings) -> Path | None:
    """The reference rows the training run logged (train.log_reference), downloaded under the state dir; None
    for a run from before they were logged (then the training set file is looked for)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from storeflow.components.train import REFERENCE_DIR, REFERENCE_FILE

    target = settings.data_dir / "tmp" / "monitor-reference" / run_id
    if not (target / REFERENCE_FILE).exists():
        partial = target.with_name(f".{run_id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{REFERENCE_DIR}/{REFERENCE_FILE}", dst_path=str(partial)))
        except (MlflowException, OSError):
            shutil.rmtree(partial, ignore_errors=True)
            return None
        target.mkdir(parents=True, exist_ok=True)
        local.replace(target / REFERENCE_FILE)  # whole or not at all
        shutil.rmtree(partial, ignore_errors=True)
    return target / REFERENCE_FILE


def _training_set_path(client, run, settings: Settings) -> Path | None:
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        try:
            source = json.loads(item.dataset.source)
        except (TypeError, ValueError):
            continue
        for key in ("uri", "path", "url"):
            value = source.get(key) if isinstance(source, dict) else None
            if value and Path(str(value).removeprefix("file://")).exists():
                return Path(str(value).removeprefix("file://"))
    digest = run.data.tags.get("storeflow.dataset_hash")
    if digest:
        candidate = settings.data_dir / "training" / f"{digest[:16]}.parquet"
        if candidate.exists():
            return candidate
    return None


def champion_version(settings: Settings) -> str | None:
    from storeflow.components import tracking

    return tracking.current_champion(tracking.connect(settings), settings.registry.model_name)


def load_reference(settings: Settings, model_version: str, max_rows: int, seed: int = 0,
                   cutoffs: int | None = None) -> Reference:
    """Training rows of ``model_version`` (its ``cutoffs`` latest cutoffs when given, uniformly sampled to
    ``max_rows``) with the model's own scores."""
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking
    from storeflow.components.train import load_model

    client = tracking.connect(settings)
    name = settings.registry.model_name
    try:
        version = client.get_model_version(name, str(model_version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UnknownVersion(f"{name} has no version {model_version!r} in the registry at "
                                 f"{settings.tracking_uri}") from exc
        raise NoReference(f"{name} v{model_version} could not be read from the registry: {exc}") from exc
    run_id = version.run_id or version.tags.get("storeflow.run_id")
    if not run_id:
        raise NoReference(f"{name} v{model_version} has no MLflow run, so no recorded training set")
    run = client.get_run(run_id)
    path = _logged_reference(run_id, settings) or _training_set_path(client, run, settings)
    if path is None:
        raise NoReference(f"{name} v{model_version}: training set of run {run_id} not found (its "
                          f"reference/ artifact, dataset input or "
                          f"storeflow.dataset_hash={run.data.tags.get('storeflow.dataset_hash')!r})")
    frame = latest_cutoffs_sample(pd.read_parquet(path), cutoffs, max_rows, seed)
    model_uri = f"models:/{name}/{model_version}"
    try:
        model = load_model(model_uri)
    except (MlflowException, OSError) as exc:  # its artifacts deleted, unreachable or unreadable
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        try:
            where = client.get_model_version_download_uri(name, str(model_version))
        except MlflowException:
            where = version.source
        raise NoReference(f"{name} v{model_version}: its model could not be loaded from {where}: {reason}") from exc
    names = getattr(model, "feature_names_in_", None)
    columns = [str(c) for c in names] if names is not None else list(settings.features.customer_features)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise NoReference(f"training set {path} lacks the model's columns {missing}")
    frame = frame[columns + [c for c in ("label",) if c in frame.columns]].copy()
    frame["score"] = model.predict_proba(frame[columns])[:, 1]
    holdout = {k.removeprefix("holdout."): float(v) for k, v in version.tags.items() if k.startswith("holdout.")}
    return Reference(name, str(model_version), run_id, path, run.data.tags.get("storeflow.dataset_hash"), columns,
                     frame, model_uri, holdout)
