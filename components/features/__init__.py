"""Features stage: compute point-in-time snapshots, register them in Feast, build the training set
with Feast's point-in-time join, then materialize the newest snapshot to the online store."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import pandas as pd

from storeflow.components.artifacts import result_of
from storeflow.components.config import Settings
from storeflow.components.features import btyd
from storeflow.components.features.compute import (
    customer_features,
    cutoff_times,
    labelled_cutoffs,
    product_features,
    serving_time,
)
from storeflow.components.features.dataset import HistoryError, constant_features, split_cutoffs
from storeflow.components.features.repo import (
    CUSTOMER_KEY,
    CUSTOMER_VIEW,
    PRODUCT_VIEW,
    SERVICE,
    apply,
    btyd_model_path,
    feature_refs,
    feature_store,
    source_path,
)
from storeflow.components.tables import read_tables

__all__ = ["FeatureResult", "build_features", "feature_store", "frame_hash", "load_training_set"]

log = logging.getLogger(__name__)


class FeatureError(ValueError):
    """The snapshot cannot yield a training set (too little history, a single class, ...)."""


@dataclass(frozen=True)
class FeatureResult:
    training_set: Path
    dataset_hash: str
    feature_refs: list[str]
    rows: int
    positive_rate: float
    cutoffs: list[str]
    served_as_of: str
    baseline_parameters: dict[str, float] = field(default_factory=dict)  # BTYD fits, before the holdout
    constant_features: list[str] = field(default_factory=list)  # one value on every training row: no signal

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "training_set": str(self.training_set)})

    @classmethod
    def from_artifact(cls, dataset) -> FeatureResult:
        """The result the features task recorded on its training set Dataset (a KFP artifact), with the
        training set where this task sees it."""
        return cls(**{**result_of(dataset.metadata, "training_set"), "training_set": Path(dataset.path)})

    @classmethod
    def from_json(cls, text: str) -> FeatureResult:
        data = json.loads(text)
        return cls(**{**data, "training_set": Path(data["training_set"])})


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a frame (row order included), recorded with every model trained on it."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()


def _write_source(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)
    tmp.replace(path)


def build_features(settings: Settings, snapshot: Path) -> FeatureResult:
    tables = read_tables(Path(snapshot))
    label = settings.features.label
    cutoffs = cutoff_times(tables["orders"], label)
    try:  # before any work: a history too short for an honest holdout stops here, saying what is needed
        holdout_cutoffs = split_cutoffs(cutoffs, label).holdout
    except HistoryError as exc:
        raise FeatureError(str(exc)) from exc
    as_of = serving_time(tables["orders"])
    snapshots = customer_features(tables, [*cutoffs, as_of])
    # The baselines see only history before the holdout; their outputs are features at every snapshot.
    holdout_start = pd.Timestamp(holdout_cutoffs[0])
    fitted = btyd.fit(snapshots[snapshots["event_timestamp"] == holdout_start], holdout_start.to_pydatetime(),
                      max_customers=settings.features.btyd_fit_customers)
    snapshots = pd.concat([snapshots, btyd.btyd_features(fitted, snapshots, label.horizon_days)], axis=1)
    btyd.save(fitted, btyd_model_path(settings))
    _write_source(snapshots, source_path(settings, CUSTOMER_VIEW))
    _write_source(product_features(tables, [*cutoffs, as_of]), source_path(settings, PRODUCT_VIEW))
    store = apply(settings)

    entities = labelled_cutoffs(tables, cutoffs, label.horizon_days)
    if entities["label"].nunique() < 2:
        raise FeatureError("every training row has the same label; the model would learn nothing")
    training = store.get_historical_features(
        entity_df=entities, features=store.get_feature_service(SERVICE)
    ).to_df()
    held = snapshots[snapshots["event_timestamp"].isin(pd.to_datetime(holdout_cutoffs, utc=True))]
    baselines = pd.concat([held[[CUSTOMER_KEY, "event_timestamp"]],
                           btyd.baseline_scores(fitted, held, label.horizon_days)], axis=1)
    training = training.merge(baselines, on=[CUSTOMER_KEY, "event_timestamp"], how="left", validate="one_to_one")
    training = training.sort_values(["event_timestamp", CUSTOMER_KEY], kind="stable").reset_index(drop=True)
    constant = constant_features(training, list(settings.features.customer_features))
    if constant:
        log.warning("feature(s) %s hold one value on every training row and carry no signal; the input "
                    "likely lacks the fields they come from (refunds, product types, discounts?)", ", ".join(constant))
    digest = frame_hash(training)
    out = settings.data_dir / "training" / f"{digest[:16]}.parquet"
    _write_source(training, out)

    # The online store gets the newest snapshot only: what a prediction made now should see.
    store.materialize(start_date=as_of - timedelta(seconds=1), end_date=as_of + timedelta(seconds=1))
    return FeatureResult(
        training_set=out,
        dataset_hash=digest,
        feature_refs=feature_refs(settings),
        rows=len(training),
        positive_rate=float(training["label"].mean()),
        cutoffs=[c.isoformat() for c in cutoffs],
        served_as_of=as_of.isoformat(),
        baseline_parameters=fitted.parameters(),
        constant_features=constant,
    )


def load_training_set(result: FeatureResult) -> pd.DataFrame:
    return pd.read_parquet(result.training_set)
