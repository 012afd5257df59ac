"""Train stage: fit the configured scikit-learn estimator on the training split and track it in MLflow
(params, dataset hash, Feast feature references, git commit, signature, input example)."""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.features import FeatureResult, load_training_set
from storeflow.components.features.btyd import P_ORDER
from storeflow.components.features.dataset import LABEL, SPEND_LABEL, Split, latest_cutoffs_sample, split_holdout

__all__ = ["TrainResult", "build_estimator", "calibrated", "fit_propensity", "train", "training_split"]

log = logging.getLogger(__name__)
# The monitoring reference, an artifact of the training run: reference/training_rows.parquet.
REFERENCE_DIR = "reference"
REFERENCE_FILE = "training_rows.parquet"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    features: list[str]
    train_rows: int
    metrics: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        return cls(**json.loads(text))


def build_estimator(path: str, params: dict[str, Any]):
    """Instantiate ``module.Class`` with params; errors name the bad path or parameter."""
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"train.estimator '{path}' cannot be imported: {exc}") from exc
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ValueError(f"train.params do not fit {path}: {exc}") from exc
    if not hasattr(estimator, "predict_proba"):
        raise ValueError(f"train.estimator '{path}' has no predict_proba; a propensity model needs one")
    return estimator


def calibrated(estimator, x: pd.DataFrame, y):
    """Platt-scale a fitted estimator on the latest pre-holdout cutoff. Older cutoffs can have another
    base rate (a growing store's, a season's); a logistic fit with an intercept makes the predicted
    number of repeat buyers equal the actual one on the calibration rows."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    return CalibratedClassifierCV(FrozenEstimator(estimator), method="sigmoid").fit(x, y)


def fit_propensity(settings: Settings, split: Split, columns: list[str]):
    """The propensity model: the configured estimator fitted on the training cutoffs, then stacked with
    BG/NBD's own probability (``train.stack``, see train.stack) or Platt-scaled alone, on the calibration
    cutoff. Both make the predicted number of repeat buyers there equal the actual."""
    from storeflow.components.train.stack import stack

    estimator = build_estimator(settings.train.estimator, settings.train.params)
    x, y = split.train[columns], split.train[LABEL].to_numpy()
    empty = [name for name in columns if x[name].isna().all()]
    if empty:  # gradient boosting cannot bin a column with no value (numpy's "window shape" error otherwise)
        raise ValueError(f"feature(s) {', '.join(empty)} have no value on any of the {len(x)} training rows (the "
                         "inter-purchase ones need customers with two or more orders before a training cutoff): "
                         "ingest more history, or drop them from features.customer_features")
    cx, cy = split.calibration[columns], split.calibration[LABEL].to_numpy()
    # An estimator without decision_function (a DummyClassifier baseline run) cannot be stacked: Platt-scaled alone.
    if settings.train.stack and hasattr(estimator, "decision_function"):
        return stack(estimator, P_ORDER, x, y, cx, cy)
    return calibrated(estimator.fit(x, y), cx, cy)


def training_split(settings: Settings, frame: pd.DataFrame) -> Split:
    """The time split of a training set, its training cutoffs' rows sampled down to ``train.max_rows``.

    Why a sample: the 100x store (500,000 customers) has 3.3M training rows; trees with 200-row leaves
    and a 25-input logistic regression learn as much from a million, in a third of the time and memory.
    The calibration cutoff and the holdout keep every row: they decide the probabilities and the verdict."""
    split = split_holdout(frame, settings.features.label)
    if len(split.train) <= settings.train.max_rows:
        return split
    sample = split.train.sample(n=settings.train.max_rows, random_state=0).sort_index().reset_index(drop=True)
    return replace(split, train=sample)


def train(settings: Settings, features: FeatureResult) -> TrainResult:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.metrics import roc_auc_score

    from storeflow.components import tracking

    columns = list(settings.features.customer_features)
    frame = load_training_set(features)
    split = training_split(settings, frame)
    monitor = settings.monitor
    reference = latest_cutoffs_sample(frame, monitor.reference_cutoffs, monitor.reference_rows, monitor.seed)
    del frame
    x, y = split.train[columns], split.train[LABEL].to_numpy()
    estimator = fit_propensity(settings, split, columns)
    scores = estimator.predict_proba(x)[:, 1]
    calibration_scores = estimator.predict_proba(split.calibration[columns])[:, 1]
    metrics = {"train_roc_auc": float(roc_auc_score(y, scores)), "train_rows": float(len(x)),
               "train_positive_rate": float(y.mean()), "calibration_rows": float(len(split.calibration)),
               "calibration_positives": float(split.calibration[LABEL].sum()),
               "calibration_predicted_positives": float(calibration_scores.sum())}

    client = tracking.connect(settings)
    experiment = tracking.experiment_id(settings, client)
    tags = {"storeflow.dataset_hash": features.dataset_hash, "storeflow.feature_refs": ",".join(features.feature_refs)}
    if commit := tracking.git_commit():
        tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(experiment_id=experiment, tags=tags) as run:
        mlflow.log_params({"estimator": settings.train.estimator, **settings.train.params, "stack": settings.train.stack,
                           "label_horizon_days": settings.features.label.horizon_days})
        mlflow.log_metrics(metrics)
        dataset = mlflow.data.from_pandas(split.train, source=str(features.training_set), targets=LABEL,
                                          name=f"training-{features.dataset_hash[:12]}")
        mlflow.log_input(dataset, context="training")
        example = x.head(5)
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(example, estimator.predict_proba(example)[:, 1]),
            input_example=example,
            pip_requirements=tracking.pip_requirements(),
            pyfunc_predict_fn="predict_proba",
            serialization_format="skops",
            skops_trusted_types=tracking.skops_trusted_types(estimator),
        )
        if SPEND_LABEL in split.train:
            metrics |= log_spend_model(settings, client, info.model_id, split, columns)
            mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith("spend_")})
        log_baseline_model(client, info.model_id, features.baseline_model)
        log_reference(reference)
    return TrainResult(run_id=run.info.run_id, model_uri=info.model_uri, features=columns,
                       train_rows=len(x), metrics=metrics)


def log_spend_model(settings: Settings, client, model_id: str, split: Split, columns: list[str]) -> dict[str, float]:
    """Fit the spend model (train.spend) and put it in the propensity model's own directory, under
    ``spend/`` (an MLflow sklearn model whose metadata holds the tier cut points), so a registered version
    serves both from the one directory KServe downloads."""
    import tempfile

    import mlflow.sklearn

    from storeflow.components import tracking
    from storeflow.components.train.spend import SPEND_DIR, TIER_PERCENTILES, TIERS, fit_spend

    model, cuts = fit_spend(settings.train.params, split.train[columns], split.train[SPEND_LABEL].to_numpy(),
                            split.calibration[columns], split.calibration[SPEND_LABEL].to_numpy())
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.sklearn.save_model(model, f"{tmp}/spend", serialization_format="skops",
                                  skops_trusted_types=tracking.skops_trusted_types(model),
                                  pip_requirements=tracking.pip_requirements(),
                                  metadata={"spend_tiers": list(TIERS), "spend_tier_cuts": cuts,
                                            "spend_tier_percentiles": list(TIER_PERCENTILES),
                                            "horizon_days": settings.features.label.horizon_days})
        client.log_model_artifacts(model_id, f"{tmp}/spend", artifact_path=SPEND_DIR)
    predicted = model.predict(split.calibration[columns])
    return {"spend_calibration_predicted": float(predicted.sum()),
            "spend_calibration_actual": float(split.calibration[SPEND_LABEL].sum()),
            "spend_tier_low_below": cuts[0], "spend_tier_high_above": cuts[1]}


def log_reference(rows: pd.DataFrame) -> None:
    """The monitoring reference (the latest cutoffs' training rows, sampled to monitor.reference_rows) as an
    artifact of the training run: the monitor task reads it from MLflow, on whatever pod it runs, instead of
    the training set file the train task saw."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REFERENCE_FILE
        rows.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)


def log_baseline_model(client, model_id: str, path: Path | None) -> None:
    """Keep the BG/NBD model the training rows' BTYD features were scored with in the model's own
    directory (``btyd/bgnbd.nc``): the version carries it to every pod, and the webhook receiver scores
    live customers with the champion's, so their BTYD features mean what they meant in training."""
    import shutil
    import tempfile

    from storeflow.components.features.btyd import LOGGED_DIR, LOGGED_FILE

    if path is None or not path.exists():
        log.warning("no BG/NBD model reached the train task (%s; pass the features task's baseline_model): this "
                    "version's live BTYD features will be missing in the webhook receiver", path or "none given")
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / LOGGED_FILE)
        client.log_model_artifacts(model_id, tmp, artifact_path=LOGGED_DIR)


def load_spend_model(model_uri: str):
    """The spend model logged inside a propensity model's directory (log_spend_model) and its tier cut
    points, or None for a model trained without one."""
    import tempfile
    from pathlib import Path

    import mlflow
    import mlflow.sklearn
    from mlflow.models import Model

    from storeflow.components.train.spend import SPEND_DIR

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)) / SPEND_DIR
        if not (folder / "MLmodel").exists():
            return None
        return mlflow.sklearn.load_model(str(folder)), list(Model.load(str(folder)).metadata["spend_tier_cuts"])


def load_model(model_uri: str):
    """The scikit-learn estimator behind a logged model URI (runs:/, models:/ or a path)."""
    import mlflow.sklearn

    return mlflow.sklearn.load_model(model_uri)


def holdout(settings: Settings, features: FeatureResult) -> pd.DataFrame:
    return split_holdout(load_training_set(features), settings.features.label).holdout
