"""Under a steady stream of orders the receiver's risk loop writes each batch's assessments back as soon as the
batch is scored, not once the whole backlog is: an order's mutation never waits for orders that arrived after it."""

from __future__ import annotations

from storeflow.components.config import load_settings
from storeflow.components.risk.realtime import BATCH, RiskScorer
from test_risk_realtime import _answering, _journal, new_order
from tests.conftest import quick_overrides


def test_assessments_go_out_batch_by_batch_while_a_backlog_is_scored(tmp_path):
    settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"}))
    seen: list = []
    scorer = RiskScorer(settings, http=_answering(seen))
    queued_at_each_drain: list[int] = []

    def drain():
        queued_at_each_drain.append(scorer.db.execute("SELECT count(*) FROM risk_outbox").fetchone()[0])

    scorer.drain = drain
    try:
        orders = 2 * BATCH + 50
        _journal(settings, *((f"w{i}", "orders/create", new_order(9300000000 + i, i, f"c{i}@example.com"))
                             for i in range(orders)))
        assert scorer.step() == orders
        assert queued_at_each_drain == [BATCH, 2 * BATCH, orders]  # before: [250], once the backlog was scored
        assert scorer.step() == 0 and queued_at_each_drain[-1] == orders  # idle: what a failed drain left goes out
    finally:
        scorer.stop()
