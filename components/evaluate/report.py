"""The evaluation in words: the decision and every model's holdout metrics side by side (Markdown, for
the KFP UI's report artifact and anyone reading a run)."""

from __future__ import annotations

from storeflow.components.evaluate import EvaluationResult
from storeflow.components.train.spend import TIERS

SHOWN = ("roc_auc", "pr_auc", "log_loss", "brier", "calibration_error", "predicted_positives", "positives", "rows")


def markdown(result: EvaluationResult) -> str:
    columns = {"challenger": result.challenger_metrics}
    if result.champion_metrics:
        columns[f"champion v{result.champion_version}"] = result.champion_metrics
    columns |= {f"baseline: {name}": metrics for name, metrics in result.baseline_metrics.items()}
    lines = [f"## {'Promote' if result.promote else 'Keep the champion'}", "", result.reason, "",
             "| metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for metric in SHOWN:
        cells = [_cell(values.get(metric)) for values in columns.values()]
        if any(cell != "" for cell in cells):
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    for name, spend in result.spend_metrics.items():
        lines += ["", f"Expected spend in the horizon ({name}): {spend['spend_predicted']:,.0f} predicted vs "
                      f"{spend['spend_actual']:,.0f} actual ({spend['spend_aggregate_error']:+.1%}); the top decile "
                      f"of predicted spend spent {spend['spend_top_decile_lift']:.2f}x the average customer"]
        tiers = []
        for tier in reversed(TIERS):  # HIGH first; an empty tier has a share (0 %) and no mean
            share, mean = spend.get(f"spend_tier_{tier.lower()}_share"), spend.get(f"spend_tier_{tier.lower()}_actual_mean")
            if share is not None:
                tiers.append(f"{tier} {share:.0%} of rows" + ("" if mean is None else f", spent {mean:,.2f} on average"))
        if tiers:
            lines.append(f"Spend tiers on the holdout ({name}): " + "; ".join(tiers))
    if result.evaluation_run_id:
        lines += ["", f"MLflow evaluation run: `{result.evaluation_run_id}`"]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"
