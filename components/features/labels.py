"""The repeat-purchase label, defined once: a customer is positive at time ``t`` when they place an
order in ``[t, t + horizon)``. Training labels (``features.compute``) and monitoring's decay labels
(``monitor.labels``) both build their SQL from this predicate, so a served prediction is judged by the
very definition its model was trained on."""

from __future__ import annotations


def in_label_window(order_time: str, start: str, horizon_days: str = "$horizon") -> str:
    """DuckDB predicate: the order at ``order_time`` falls in ``[start, start + horizon_days days)``.

    Arguments are SQL expressions (column names or ``$parameters``)."""
    return f"({order_time} >= {start} AND {order_time} < {start} + to_days({horizon_days}))"
