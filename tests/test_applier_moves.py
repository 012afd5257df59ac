"""An order an orders/updated gives to another customer (or to a guest) leaves the features of the customer it was
taken from: only the new owner's were recomputed, and the old one went on counting the order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from test_privacy import ADA, ADA_EMAIL, ADA_ORDERS, GRACE, GRACE_EMAIL, online, shop  # noqa: F401 - the fixture
from test_webhook_signing import delivery, order


def _moved(payload: dict, customer: int | None, email: str | None) -> dict:
    later = (datetime.now(timezone.utc) + timedelta(seconds=1)).replace(microsecond=0).isoformat()
    return payload | {"customer": {"id": customer, "email": email} if customer else None, "email": email,
                      "updated_at": later}


@pytest.mark.parametrize("to", ["another customer", "a guest"])
def test_an_order_moved_away_from_a_customer_no_longer_counts_for_them(shop, to):  # noqa: F811
    hooks, client = shop
    assert online(hooks, ADA) == [3] and online(hooks, GRACE) == [2]  # ADA: two pulled orders and 9001, live
    customer, email = (GRACE, GRACE_EMAIL) if to == "another customer" else (None, None)

    client.post("/webhooks", **delivery("orders/updated", _moved(order(9001, ADA, ADA_EMAIL, 30.0), customer, email),
                                        "wh-moved-live"))
    client.app.state.applier.drain()
    assert online(hooks, ADA) == [2]
    assert online(hooks, GRACE) == [3 if customer else 2]

    # one the snapshot holds, received live for the first time
    pulled = order(ADA_ORDERS[0], ADA, ADA_EMAIL, 30.0, hours_ago=24 * 30)
    client.post("/webhooks", **delivery("orders/updated", _moved(pulled, customer, email), "wh-moved-pulled"))
    client.app.state.applier.drain()
    assert online(hooks, ADA) == [1]
    assert online(hooks, GRACE) == [4 if customer else 2]


def test_a_customer_whose_last_order_moved_away_has_no_features_left_online(shop):  # noqa: F811
    """Their features were recomputed from no orders, which gave no row, so nothing was written and the online
    store went on saying they had ordered: predictions for them used the orders they no longer had."""
    hooks, client = shop
    assert online(hooks, ADA) == [3]
    for webhook_id, payload in (("wh-live", order(9001, ADA, ADA_EMAIL, 30.0)),
                                *((f"wh-pulled-{o}", order(o, ADA, ADA_EMAIL, 30.0, hours_ago=24 * 30))
                                  for o in ADA_ORDERS)):
        client.post("/webhooks", **delivery("orders/updated", _moved(payload, GRACE, GRACE_EMAIL), webhook_id))
    client.app.state.applier.drain()

    assert online(hooks, ADA) == [None]
    assert online(hooks, GRACE) == [5]
