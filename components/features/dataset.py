"""Time-ordered train/holdout split of a training set built by the features stage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from storeflow.components.config import LabelConfig

LABEL = "label"
TIME = "event_timestamp"
CUSTOMER = "customer_id"


class HistoryError(ValueError):
    """The order history is too short for a holdout that no training label overlaps."""


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    holdout: pd.DataFrame


def required_history_days(label: LabelConfig) -> int:
    """Days of order history an honest holdout needs: the first cutoff's lead-in, one training label
    window that closes before the holdout starts, the holdout's cutoffs and its own label window."""
    return (label.min_history_days + 2 * label.horizon_days
            + (label.holdout_cutoffs - 1) * label.cutoff_every_days)


def split_cutoffs(cutoffs: list[datetime], label: LabelConfig) -> tuple[list[datetime], list[datetime]]:
    """(training cutoffs, holdout cutoffs): the latest ``holdout_cutoffs`` are held out; a cutoff trains
    only when its label window ``[t, t + horizon)`` closes by the first holdout cutoff."""
    cutoffs = sorted(pd.Timestamp(c) for c in cutoffs)
    if len(cutoffs) > label.holdout_cutoffs:
        holdout = cutoffs[-label.holdout_cutoffs:]
        train = [c for c in cutoffs if c + timedelta(days=label.horizon_days) <= holdout[0]]
        if train:
            return train, holdout
    covered = (cutoffs[-1] - cutoffs[0]).days + label.min_history_days + label.horizon_days if cutoffs else 0
    raise HistoryError(
        f"the order history holds {len(cutoffs)} cutoff(s) (about {covered} days usable); a holdout "
        f"whose labels no training label overlaps needs at least {required_history_days(label)} days "
        f"(features.label.min_history_days {label.min_history_days} + 2 x horizon_days {label.horizon_days} "
        f"+ (holdout_cutoffs {label.holdout_cutoffs} - 1) x cutoff_every_days {label.cutoff_every_days}). "
        "Ingest more history, or lower features.label.horizon_days, holdout_cutoffs or min_history_days"
    )


def split_holdout(frame: pd.DataFrame, label: LabelConfig) -> Split:
    """Hold out the latest cutoffs; train only on cutoffs whose label window closed before the
    holdout begins, so no training label peeks into the holdout period (never a fallback)."""
    train_cutoffs, holdout_cutoffs = split_cutoffs(list(frame[TIME].unique()), label)
    train = frame[frame[TIME].isin(train_cutoffs)]
    holdout = frame[frame[TIME] >= holdout_cutoffs[0]]
    for name, part in (("train", train), ("holdout", holdout)):
        if part[LABEL].nunique() < 2:
            raise HistoryError(f"the {name} split has a single label class; the store's history is too short")
    return Split(train=train.reset_index(drop=True), holdout=holdout.reset_index(drop=True))
