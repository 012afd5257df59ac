"""Order risk when the online store loses what the scorer keeps there: a Redis restarted without persistence (the
production online store), found empty by the next pass."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from redis_server import redis_server
from test_risk_realtime import _answering, _journal, new_order

from storeflow.components.config import load_settings
from tests.conftest import quick_overrides

STORE = {"customers": 200, "orders": 2000, "products": 20, "seed": 3}


def test_a_redis_restarted_empty_is_seeded_again_before_the_next_order_is_counted(tmp_path: Path) -> None:
    """Redis emptied under a running scorer: the customers' ledgers were gone, and until the next snapshot or a
    restart of the scorer every returning customer was scored as a first-time one (198 prior orders became 0). The
    next pass finds the seed marker gone and seeds the ledgers from the snapshot again before counting."""
    import redis

    from storeflow.components.ingest import ingest
    from storeflow.components.risk.realtime import RiskScorer

    with redis_server(tmp_path) as address:
        settings = load_settings(quick_overrides(
            tmp_path, risk={"endpoint": "http://risk.test"}, ingest={"source": "synthetic", "synthetic": STORE},
            features={"feast": {"online_store": "redis", "redis_connection_string": address}}))
        snapshot = ingest(settings).snapshot
        orders = pd.read_parquet(Path(snapshot) / "orders.parquet", columns=["customer_id"])
        customer, known = orders["customer_id"].value_counts().index[0], orders["customer_id"].value_counts().iloc[0]
        seen: list = []
        scorer = RiskScorer(settings, http=_answering(seen))
        try:
            _journal(settings, ("first", "orders/create", new_order(9400000001, int(customer), "c@example.com")))
            assert scorer.score_pending() == 1 and seen[-1]["prior_orders"] == known

            host, port = address.split(":")
            redis.Redis(host=host, port=int(port)).flushall()  # restarted without persistence
            later = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
            _journal(settings, ("second", "orders/create", new_order(9400000002, int(customer), "c@example.com",
                                                                     created_at=later, updated_at=later)))
            assert scorer.score_pending() == 1
        finally:
            scorer.stop()
    # the snapshot's orders again (the live one before it is not: the scorer keeps its keys, not its price)
    assert seen[-1]["order_id"] == "9400000002" and seen[-1]["prior_orders"] == known
