"""Features stage: compute point-in-time snapshots, register them in Feast, build the training set
with Feast's point-in-time join, then materialize the newest snapshot to the online store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storeflow.components.artifacts import result_of
from storeflow.components.config import Settings
from storeflow.components.features import btyd, offline
from storeflow.components.features.compute import (
    cutoff_times,
    labelled_cutoffs,
    product_features,
    serving_time,
    write_customer_features,
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
from storeflow.components.tables import read_columns

__all__ = ["FeatureResult", "TrainingSetWriter", "build_features", "feature_store", "frame_hash", "load_training_set"]

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
    # The BG/NBD model the BTYD features were scored with, where the features task saved it; a task on
    # another pod gets it as the features task's baseline_model artifact instead.
    baseline_model: Path | None = None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "training_set": str(self.training_set),
                           "baseline_model": str(self.baseline_model) if self.baseline_model else None})

    @classmethod
    def from_artifact(cls, dataset) -> FeatureResult:
        """The result the features task recorded on its training set Dataset (a KFP artifact), with the
        training set where this task sees it."""
        return cls._parsed({**result_of(dataset.metadata, "training_set"), "training_set": dataset.path})

    @classmethod
    def from_json(cls, text: str) -> FeatureResult:
        return cls._parsed(json.loads(text))

    @classmethod
    def _parsed(cls, data: dict) -> FeatureResult:
        model = data.get("baseline_model")
        return cls(**{**data, "training_set": Path(data["training_set"]), "baseline_model": Path(model) if model else None})


def _row_hashes(frame: pd.DataFrame) -> bytes:
    return pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()


def frame_hash(frame: pd.DataFrame) -> str:
    """Content hash of a frame (row order included), recorded with every model trained on it."""
    digest = hashlib.sha256(_row_hashes(frame))
    digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()


class TrainingSetWriter:
    """Writes a training set a part at a time (parts in row order) to ``<directory>/<hash>.parquet``, with
    what :func:`frame_hash` and :func:`constant_features` would say of the whole frame: a large store's
    training set is never one frame in the features stage."""

    def __init__(self, directory: Path, feature_columns: list[str]):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.rows = 0
        self.positives = 0
        self.constant = list(feature_columns)  # constant so far: one value (missing counted as one) on every row
        self._tmp = directory / f".writing-{os.getpid()}.parquet"
        self._first: pd.DataFrame | None = None  # the first row: what a constant feature's value is
        self._writer: pq.ParquetWriter | None = None
        self._digest = hashlib.sha256()
        self._columns: list[str] = []

    def append(self, part: pd.DataFrame) -> None:
        if self._writer is None:
            self._columns = list(part.columns)
            table = pa.Table.from_pandas(part, preserve_index=False)
            self._writer = pq.ParquetWriter(self._tmp, table.schema, coerce_timestamps="us",
                                            allow_truncated_timestamps=False)
        elif list(part.columns) != self._columns:
            raise ValueError(f"training set part has columns {list(part.columns)}, not {self._columns}")
        else:
            table = pa.Table.from_pandas(part, schema=self._writer.schema, preserve_index=False)
        self._writer.write_table(table)
        self._digest.update(_row_hashes(part))
        # Constant over the whole set: constant within this part, with the first part's value.
        constant = constant_features(part, self.constant)
        if self._first is None:
            self._first = part.iloc[:1]
        else:
            constant = constant_features(pd.concat([self._first[constant], part[constant].iloc[:1]]), constant)
        self.constant = constant
        self.rows += len(part)
        self.positives += int(part["label"].sum())

    def close(self) -> tuple[Path, str]:
        """The written file, renamed to its content hash, and that hash."""
        if self._writer is None:
            raise FeatureError("the training set has no rows")
        self._writer.close()
        self._digest.update(",".join(self._columns).encode())
        digest = self._digest.hexdigest()
        out = self.directory / f"{digest[:16]}.parquet"
        self._tmp.replace(out)
        return out, digest


def _write_source(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)
    tmp.replace(path)


SCORE_BATCH_ROWS = 250_000  # feature rows scored by the BTYD models at a time


def _rows_at(path: Path, times: list) -> pd.DataFrame:
    """The feature rows of the given snapshot times (a sample of a large file, read by row-group filter)."""
    wanted = pa.array(pd.to_datetime(times, utc=True), type=pa.timestamp("us", tz="UTC"))
    return pq.read_table(path, filters=[("event_timestamp", "in", wanted)]).to_pandas()


def _write_with_btyd(raw: Path, out: Path, fitted: btyd.Fitted, horizon_days: int) -> None:
    """The customer feature source Feast reads: ``raw``'s rows with the BTYD features appended, scored a
    batch at a time, so a large store's rows never sit in memory at once."""
    source = pq.ParquetFile(raw)
    schema = source.schema_arrow
    for name in btyd.BTYD_FEATURES:
        schema = schema.append(pa.field(name, pa.float64()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # hidden and not *.parquet: readers of the directory skip it
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in source.iter_batches(batch_size=SCORE_BATCH_ROWS):
            inputs = batch.select(["days_since_first_order", "recency_days", "frequency"]).to_pandas()
            scores = btyd.btyd_features(fitted, inputs, horizon_days)
            columns = [*batch.columns, *(pa.array(scores[name].to_numpy(), pa.float64()) for name in btyd.BTYD_FEATURES)]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    tmp.replace(out)


def build_features(settings: Settings, snapshot: Path) -> FeatureResult:
    snapshot = Path(snapshot)
    orders = read_columns(snapshot, "orders", ["created_at"])
    label = settings.features.label
    cutoffs = cutoff_times(orders, label)
    try:  # before any work: a history too short for an honest holdout stops here, saying what is needed
        holdout_cutoffs = split_cutoffs(cutoffs, label).holdout
    except HistoryError as exc:
        raise FeatureError(str(exc)) from exc
    as_of = serving_time(orders)
    # DuckDB reads the snapshot's Parquet files and writes the feature rows straight to Parquet; past its
    # memory limit it spills under the state directory, so a large store costs disk, not memory.
    work = settings.data_dir / "tmp" / "features"
    raw = work / "customer_features.parquet"
    write_customer_features(snapshot, [*cutoffs, as_of], raw, settings.features.duckdb_memory_mb, work / "duckdb")
    # The baselines see only history before the holdout; their outputs are features at every snapshot.
    holdout_start = pd.Timestamp(holdout_cutoffs[0])
    fitted = btyd.fit(_rows_at(raw, [holdout_start]), holdout_start.to_pydatetime(),
                      max_customers=settings.features.btyd_fit_customers)
    btyd.save(fitted, baseline_model := btyd_model_path(settings))
    history = offline.dataset(source_path(settings, CUSTOMER_VIEW))  # the webhook applier appends its rows beside
    _write_with_btyd(raw, history / offline.SNAPSHOT_PART, fitted, label.horizon_days)
    raw.unlink()
    if dropped := offline.drop_superseded(history, as_of):
        log.info("offline history: %d live part(s) at or before %s superseded by this snapshot", len(dropped), as_of)
    memory = {"memory_limit_mb": settings.features.duckdb_memory_mb, "spill_dir": work / "duckdb"}
    _write_source(product_features(snapshot, [*cutoffs, as_of], **memory), source_path(settings, PRODUCT_VIEW))
    store = apply(settings)

    entities = labelled_cutoffs(snapshot, cutoffs, label.horizon_days, **memory)
    if entities["label"].nunique() < 2:
        raise FeatureError("every training row has the same label; the model would learn nothing")
    held = _rows_at(history / offline.SNAPSHOT_PART, holdout_cutoffs)
    baselines = pd.concat([held[[CUSTOMER_KEY, "event_timestamp"]],
                           btyd.baseline_scores(fitted, held, label.horizon_days)], axis=1)
    del held
    baselines_at = dict(tuple(baselines.groupby("event_timestamp")))  # holdout cutoffs only
    training = TrainingSetWriter(settings.data_dir / "training", list(settings.features.customer_features))
    # Feast's point-in-time join a cutoff at a time: the whole 100x store's join (4.67M entity rows) held
    # 13 GB at once, a cutoff's is a tenth of that; the rows come out in the order of one join.
    service = store.get_feature_service(SERVICE)
    for _, cutoff_entities in entities.groupby("event_timestamp", sort=True):
        rows = store.get_historical_features(entity_df=cutoff_entities, features=service).to_df()
        cutoff = cutoff_entities["event_timestamp"].iloc[0]
        rows = rows.merge(baselines_at.get(cutoff, baselines.iloc[:0]), on=[CUSTOMER_KEY, "event_timestamp"],
                          how="left", validate="one_to_one")
        training.append(rows.sort_values(CUSTOMER_KEY, kind="stable").reset_index(drop=True))
    del entities, baselines, baselines_at
    out, digest = training.close()
    if training.constant:
        log.warning("feature(s) %s hold one value on every training row and carry no signal; the input likely "
                    "lacks the fields they come from (refunds, product types, discounts?)", ", ".join(training.constant))

    # The online store gets the newest snapshot only: what a prediction made now should see. Only the views
    # this stage wrote: the repo also declares the recommender's, whose sources other tasks and webhooks write.
    store.materialize(start_date=as_of - timedelta(seconds=1), end_date=as_of + timedelta(seconds=1),
                      feature_views=[CUSTOMER_VIEW, PRODUCT_VIEW])
    return FeatureResult(
        training_set=out,
        dataset_hash=digest,
        feature_refs=feature_refs(settings),
        rows=training.rows,
        positive_rate=training.positives / training.rows,
        cutoffs=[c.isoformat() for c in cutoffs],
        served_as_of=as_of.isoformat(),
        baseline_parameters=fitted.parameters(),
        constant_features=training.constant,
        baseline_model=baseline_model,
    )


def load_training_set(result: FeatureResult) -> pd.DataFrame:
    return pd.read_parquet(result.training_set)
