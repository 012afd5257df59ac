"""The recommender's served window, beside the propensity model's: click-through rate per model version,
a CTR drop, and drift of which products shoppers look at (item popularity).

Read from the logs the recommender servers write, locally and shipped to ``serving.prediction_log_store`` (:mod:`storeflow.serving.recommend_feedback`: answers
with their request ids and baskets, impressions and clicks naming a request id), joined as the recommend
task's report joins them (:func:`storeflow.components.recommend.feedback.ctr_by_version`: only events of a
logged answer of their own version count, and a click only on a product that answer showed).

* CTR drop: the served version's CTR in the window against the CTR of the ``monitor.ctr_baseline_hours``
  before it (the same version's when it had ``monitor.ctr_min_impressions`` there, else every version's: a
  new version that earns fewer clicks than the one it replaced is a drop too), as a share of the baseline;
  judged by the drop the window shows at 95 % confidence (``ctr_drop_at_least``), not the point estimate.
* Item popularity: PSI (Evidently's) of the products in the window's baskets (product pages and carts asked
  about) against the served version's training purchases (buyers per product, kept with the model as
  ``popularity.npy``), over the reference's ``monitor.popularity_products`` most popular products and one
  bucket for the rest: shoppers turning to products the model learned little about. A version registered
  before that was kept is compared with the baseline period's baskets instead.

Either at ``critical`` starts the recommendations pipeline (:func:`storeflow.components.monitor.retrain.
retrain_recommender_if_needed`), once per recommender version and window. The verdict stands apart from the
propensity model's level: each retrains its own pipeline.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.monitor.drift import level as level_of
from storeflow.components.monitor.drift import worst
from storeflow.components.recommend.feedback import ANSWER_COLUMNS, EVENT_COLUMNS, ctr_by_version, read_logs
from storeflow.components.recommend.registry import training_popularity

OTHER = "other"


def log_root(settings: Settings) -> Path:
    return settings.project.state_dir / "recommendations"


def _between(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    stamps = pd.to_datetime(frame["ts"], utc=True, errors="coerce", format="ISO8601")
    return frame[(stamps >= start) & (stamps < end)]


REFERENCE_ROWS = 50_000  # the reference's rows for Evidently at most (its shares kept)


def popularity_psi(current: pd.Series, reference: pd.Series, top: int) -> float | None:
    """PSI of product shares between the products asked about now (``current``, one id per basket product)
    and a reference (``reference``: a count per product id, e.g. the training purchases' buyers), over the
    reference's ``top`` products and one bucket for the rest, computed by Evidently (``ValueDrift``, method
    psi, on the product as a categorical column); None when either side is empty."""
    reference = reference[reference > 0]
    if current.empty or reference.empty:
        return None
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    kept = reference.sort_values(ascending=False, kind="stable").index[:top]
    counts = reference.groupby(reference.index.where(reference.index.isin(kept), OTHER).astype(str)).sum()
    if counts.sum() > REFERENCE_ROWS:  # the same shares in fewer rows
        counts = (counts * REFERENCE_ROWS / counts.sum()).round().clip(lower=1).astype("int64")
    then = pd.DataFrame({"product": np.repeat(counts.index.to_numpy(dtype=object), counts.to_numpy())})
    now = pd.DataFrame({"product": current.where(current.isin(kept), OTHER).astype(str).to_numpy(dtype=object)})
    definition = DataDefinition(categorical_columns=["product"])
    snapshot = Report([ValueDrift(column="product", method="psi")]).run(
        Dataset.from_pandas(now, data_definition=definition), Dataset.from_pandas(then, data_definition=definition))
    return float(snapshot.dict()["metrics"][0]["value"])


def wilson_upper(successes: int, trials: int, z: float = 1.959964) -> float:
    """Upper end of Wilson's 95 % interval for a rate of ``successes`` in ``trials``."""
    rate = successes / trials
    centre = rate + z * z / (2 * trials)
    spread = z * np.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    return float((centre + spread) / (1 + z * z / trials))


def _basket_products(answers: pd.DataFrame) -> pd.Series:
    if answers.empty or "basket" not in answers:
        return pd.Series(dtype="int64")
    return answers["basket"].explode().dropna().astype("int64").reset_index(drop=True)


def recommender_window(settings: Settings, start: datetime, end: datetime) -> dict:
    """The recommender's part of a monitoring summary for ``[start, end)``: status, level, reasons, CTR per
    version in the window and the baseline before it, the served version's CTR drop, item-popularity PSI."""
    cfg = settings.monitor
    root = log_root(settings)
    baseline_start = start - timedelta(hours=cfg.ctr_baseline_hours)
    # This machine's files and those the servers shipped to serving.prediction_log_store (the cluster's case).
    with tempfile.TemporaryDirectory(prefix="recommender-logs-") as scratch:
        answers = read_logs(settings, "predictions", {**ANSWER_COLUMNS, "basket": "BIGINT[]"}, Path(scratch),
                            baseline_start, end)
        events = read_logs(settings, "feedback", EVENT_COLUMNS, Path(scratch), baseline_start, end)
    now_answers, then_answers = _between(answers, start, end), _between(answers, baseline_start, start)
    now_events, then_events = _between(events, start, end), _between(events, baseline_start, start)
    out: dict = {"model_name": settings.recommendations.model_name, "model_version": None, "status": "no-data",
                 "level": "ok", "reasons": [], "notes": [],
                 "window": {"start": start.isoformat(), "end": end.isoformat(), "hours": cfg.window_hours},
                 "baseline": {"start": baseline_start.isoformat(), "hours": cfg.ctr_baseline_hours},
                 "answers": int(len(now_answers)), "ctr": [], "baseline_ctr": [], "ctr_now": None,
                 "ctr_baseline": None, "ctr_drop": None, "ctr_drop_at_least": None, "ctr_level": "ok",
                 "popularity_psi": None, "popularity_level": "ok", "popularity_baseline": None}
    if now_answers.empty:
        out["notes"].append(f"no recommendations answered between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} "
                            f"UTC in {root / 'predictions'}")
        return out
    # The window's events join answers of the baseline period too: a click a minute after an answer logged just
    # before the window opened is that answer's; the answers column still counts the window's own.
    table = ctr_by_version(pd.concat([then_answers, now_answers], ignore_index=True), now_events)
    table["answers"] = table["model_version"].map(now_answers.groupby("model_version")["request_id"].nunique()
                                                  ).fillna(0).astype("int64")
    table = table[table[["answers", "impressions", "clicks", "unjoined"]].sum(axis=1) > 0].reset_index(drop=True)
    before = ctr_by_version(then_answers, then_events) if not then_answers.empty else table.iloc[0:0]
    version = str(now_answers["model_version"].value_counts().index[0])  # the version answering most
    out.update(model_version=version, ctr=_records(table), baseline_ctr=_records(before))
    if len(now_answers) < cfg.min_rows:
        out["status"] = "insufficient-data"
        out["notes"].append(f"{len(now_answers)} recommendations answered in the window; monitor.min_rows is "
                            f"{cfg.min_rows}")
        return out
    out["status"] = "analysed"

    served = table.set_index("model_version").loc[version]
    if served["impressions"] >= cfg.ctr_min_impressions:
        out["ctr_now"] = float(served["ctr"])
        own = before.set_index("model_version")
        if version in own.index and own.loc[version, "impressions"] >= cfg.ctr_min_impressions:
            out["ctr_baseline"], whose = float(own.loc[version, "ctr"]), f"v{version}'s own"
        elif before["impressions"].sum() >= cfg.ctr_min_impressions:
            out["ctr_baseline"], whose = float(before["clicks"].sum() / before["impressions"].sum()), "every version's"
        if out["ctr_baseline"]:
            out["ctr_drop"] = 1.0 - out["ctr_now"] / out["ctr_baseline"]
            # Judged on the drop the window's clicks show at 95 % confidence (Wilson's upper bound of its CTR),
            # so that a quiet day's noise is not a drop: 1,500 impressions at a true 9.5 % read 8.1 % here.
            upper = wilson_upper(int(served["clicks"]), int(served["impressions"]))
            out["ctr_drop_at_least"] = max(0.0, 1.0 - upper / out["ctr_baseline"])
            out["ctr_level"] = level_of(out["ctr_drop_at_least"], cfg.ctr_drop_warning, cfg.ctr_drop_critical)
            if out["ctr_level"] != "ok":
                out["reasons"].append(f"{out['ctr_level']}: click-through rate of v{version} {out['ctr_now']:.2%} is "
                                      f"{out['ctr_drop']:.0%} (at least {out['ctr_drop_at_least']:.0%}, 95 %) below "
                                      f"the {cfg.ctr_baseline_hours:g} h before ({whose}, {out['ctr_baseline']:.2%})")
        elif out["ctr_baseline"] == 0.0:
            out["notes"].append(f"no clicks in the {cfg.ctr_baseline_hours:g} h before the window: no CTR to drop from")
        else:
            out["notes"].append(f"fewer than {cfg.ctr_min_impressions} impressions in the {cfg.ctr_baseline_hours:g} h "
                                "before the window: no CTR baseline to compare")
    else:
        out["notes"].append(f"v{version} had {int(served['impressions'])} impressions in the window; a CTR verdict "
                            f"needs monitor.ctr_min_impressions ({cfg.ctr_min_impressions})")

    # Item popularity against what the served version learned from: its training purchases' buyers per product;
    # a version without them is compared with the baseline period's baskets, as before they were kept.
    trained, source = training_popularity(settings, version)
    if trained is not None:
        reference, against = trained, source
    else:
        out["notes"].append(f"no training popularity ({source}): products asked about compared with the "
                            f"{cfg.ctr_baseline_hours:g} h before")
        reference, against = _basket_products(then_answers).value_counts(), f"the {cfg.ctr_baseline_hours:g} h before"
    out["popularity_baseline"] = against
    out["popularity_psi"] = popularity_psi(_basket_products(now_answers), reference, cfg.popularity_products)
    if out["popularity_psi"] is None:
        out["notes"].append(f"nothing to compare item popularity with ({against}): not compared")
    else:
        out["popularity_level"] = level_of(out["popularity_psi"], cfg.psi_warning, cfg.psi_critical)
        if out["popularity_level"] != "ok":
            out["reasons"].append(f"{out['popularity_level']}: products asked about drifted from {against} "
                                  f"(PSI {out['popularity_psi']:.3f}, Evidently)")
    out["level"] = worst(out["ctr_level"], out["popularity_level"])
    return out


def _records(table: pd.DataFrame) -> list[dict]:
    return [{"model_version": str(r.model_version), "answers": int(r.answers), "impressions": int(r.impressions),
             "clicks": int(r.clicks), "ctr": None if pd.isna(r.ctr) else float(r.ctr), "unjoined": int(r.unjoined)}
            for r in table.itertuples()]
