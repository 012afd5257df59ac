"""Time-ordered train/holdout split of a training set built by the features stage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pandas as pd

from storeflow.components.config import LabelConfig

LABEL = "label"
TIME = "event_timestamp"


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    holdout: pd.DataFrame


def split_holdout(frame: pd.DataFrame, label: LabelConfig) -> Split:
    """Hold out the latest cutoffs; train only on cutoffs whose label window closed before the
    holdout begins, so no training label peeks into the holdout period."""
    cutoffs = sorted(frame[TIME].unique())
    if len(cutoffs) <= label.holdout_cutoffs:
        raise ValueError(
            f"training set has {len(cutoffs)} cutoff(s); need more than holdout_cutoffs={label.holdout_cutoffs}"
        )
    holdout_start = pd.Timestamp(cutoffs[-label.holdout_cutoffs])
    train_end = holdout_start - timedelta(days=label.horizon_days)
    train = frame[frame[TIME] <= train_end]
    if train.empty:  # short history: fall back to every earlier cutoff rather than train on nothing
        train = frame[frame[TIME] < holdout_start]
    holdout = frame[frame[TIME] >= holdout_start]
    for name, part in (("train", train), ("holdout", holdout)):
        if part[LABEL].nunique() < 2:
            raise ValueError(f"the {name} split has a single label class; the store's history is too short")
    return Split(train=train.reset_index(drop=True), holdout=holdout.reset_index(drop=True))
