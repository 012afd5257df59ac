"""Time-ordered train/holdout split of a training set built by the features stage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from storeflow.components.config import LabelConfig

LABEL = "label"
SPEND_LABEL = "label_spend"  # what the customer spends in the label window (features.compute)
TIME = "event_timestamp"
CUSTOMER = "customer_id"


class HistoryError(ValueError):
    """The order history is too short for a holdout that no training label overlaps."""


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame  # the estimator is fitted here
    calibration: pd.DataFrame  # the latest training cutoff: its probabilities are calibrated here
    holdout: pd.DataFrame


@dataclass(frozen=True)
class Cutoffs:
    train: list[pd.Timestamp]
    calibration: pd.Timestamp
    holdout: list[pd.Timestamp]


def required_history_days(label: LabelConfig) -> int:
    """Days of order history an honest holdout needs: the first cutoff's lead-in, a training label window
    that closes before the calibration cutoff, the calibration label window that closes before the
    holdout starts, the holdout's cutoffs and its own label window."""
    return (label.min_history_days + 3 * label.horizon_days
            + (label.holdout_cutoffs - 1) * label.cutoff_every_days)


def _closed_by(cutoffs: list[pd.Timestamp], end: pd.Timestamp, label: LabelConfig) -> list[pd.Timestamp]:
    """Cutoffs whose label window ``[t, t + horizon)`` closes by ``end``."""
    return [c for c in cutoffs if c + timedelta(days=label.horizon_days) <= end]


def split_cutoffs(cutoffs: list[datetime], label: LabelConfig) -> Cutoffs:
    """The latest ``holdout_cutoffs`` are held out; the latest cutoff whose labels close by the holdout
    calibrates; training takes the cutoffs whose labels close by the calibration cutoff. No label window
    of one part overlaps a later part."""
    cutoffs = sorted(pd.Timestamp(c) for c in cutoffs)
    if len(cutoffs) > label.holdout_cutoffs:
        holdout = cutoffs[-label.holdout_cutoffs:]
        before = _closed_by(cutoffs, holdout[0], label)
        train = _closed_by(before, before[-1], label) if before else []
        if train:
            return Cutoffs(train, before[-1], holdout)
    covered = (cutoffs[-1] - cutoffs[0]).days + label.min_history_days + label.horizon_days if cutoffs else 0
    raise HistoryError(
        f"the order history holds {len(cutoffs)} cutoff(s) (about {covered} days usable); training, "
        f"calibration and holdout label windows that never overlap need at least "
        f"{required_history_days(label)} days (features.label.min_history_days {label.min_history_days} "
        f"+ 3 x horizon_days {label.horizon_days} + (holdout_cutoffs {label.holdout_cutoffs} - 1) x "
        f"cutoff_every_days {label.cutoff_every_days}). Ingest more history, or lower "
        "features.label.horizon_days, holdout_cutoffs or min_history_days"
    )


def constant_features(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Feature columns holding a single value (missing counted as one) on every row: they carry no signal,
    and usually mean the source lacks a field (an export without refund times or product types)."""
    return [name for name in columns if name in frame and frame[name].nunique(dropna=False) <= 1]


def split_holdout(frame: pd.DataFrame, label: LabelConfig) -> Split:
    """Hold out the latest cutoffs; train and calibrate only on cutoffs whose label windows closed before
    the holdout begins, so no training label peeks into the holdout period (never a fallback)."""
    parts = split_cutoffs(list(frame[TIME].unique()), label)
    split = Split(train=frame[frame[TIME].isin(parts.train)].reset_index(drop=True),
                  calibration=frame[frame[TIME] == parts.calibration].reset_index(drop=True),
                  holdout=frame[frame[TIME] >= parts.holdout[0]].reset_index(drop=True))
    for name in ("train", "calibration", "holdout"):
        if getattr(split, name)[LABEL].nunique() < 2:
            raise HistoryError(f"the {name} split has a single label class; the store's history is too short")
    return split


def latest_cutoffs_sample(frame: pd.DataFrame, cutoffs: int | None, max_rows: int, seed: int) -> pd.DataFrame:
    """The rows of the ``cutoffs`` latest cutoffs (every row when None), uniformly sampled down to ``max_rows``:
    the monitoring reference. Cumulative features (tenure, lifetime orders) age with the store, so the latest
    cutoffs are the training population nearest to the one being served."""
    if cutoffs and "event_timestamp" in frame.columns:
        latest = sorted(frame["event_timestamp"].unique())[-cutoffs:]
        frame = frame[frame["event_timestamp"].isin(latest)]
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed)
    return frame.reset_index(drop=True)
