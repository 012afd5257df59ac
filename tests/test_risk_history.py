"""A customer's ledger (risk.history): what folding, replacing and taking out events does to the counts an order
sees. The equality with training's query over a whole replayed store is in tests/test_risk_live.py."""

from __future__ import annotations

from storeflow.components.risk.history import (ACCOUNT, FRAUD_CANCEL, NO_AMOUNT, ORDER, REFUND, Event, Ledger, amount,
                                               counts, fold, unfold)

H = 3_600_000_000  # an hour in µs


def test_counts_see_only_events_strictly_before_the_order():
    ledger = Ledger()
    for event in (Event(ACCOUNT, 7, 0), Event(ORDER, 1, 10 * H, amount(40.0)), Event(REFUND, 50, 11 * H),
                  Event(ORDER, 2, 20 * H, amount(60.0)), Event(FRAUD_CANCEL, 2, 21 * H), Event(ORDER, 3, 30 * H, 1)):
        assert fold(ledger, event)
    seen = counts(ledger, 30 * H, 150.0)  # the order at 30 h itself, and anything at its microsecond, unseen
    assert (seen["prior_orders"], seen["prior_spend"], seen["prior_refunds"], seen["prior_fraud_cancels"]) == \
        (2, 100.0, 1, 1)
    assert seen["prior_avg_order_value"] == 50.0 and seen["value_over_prior_avg"] == 3.0
    assert seen["days_since_prior_order"] == 10 / 24 and seen["account_age_hours"] == 30.0
    assert counts(ledger, 10 * H, 5.0)["prior_orders"] == 0


def test_an_event_folded_again_is_replaced_and_one_taken_out_is_gone():
    ledger = Ledger()
    fold(ledger, Event(ORDER, 1, H, amount(10.0)))
    assert not fold(ledger, Event(ORDER, 1, H, amount(10.0)))  # a second delivery changes nothing
    assert not fold(ledger, Event(ORDER, 1, H, amount(99.0)), replace=False)  # seeding keeps what is held
    assert fold(ledger, Event(ORDER, 1, H, amount(99.0)))  # an update replaces it
    assert counts(ledger, 2 * H, 1.0)["prior_spend"] == 99.0
    assert unfold(ledger, ORDER, [1]) and not unfold(ledger, ORDER, [1])
    assert counts(ledger, 2 * H, 1.0)["prior_orders"] == 0


def test_an_order_without_a_price_counts_but_adds_no_spend_and_a_guest_has_no_history():
    ledger = Ledger([Event(ORDER, 1, H, NO_AMOUNT), Event(ORDER, 2, 2 * H, amount(30.0))])
    assert Ledger.of(ledger.flat()).events == ledger.events  # what the online store holds, and back
    seen = counts(ledger, 3 * H, None)
    assert (seen["prior_orders"], seen["prior_spend"], seen["value_over_prior_avg"]) == (2, 30.0, 0.0)
    guest = counts(None, 3 * H, 10.0)
    assert (guest["prior_orders"], guest["account_age_hours"], guest["days_since_prior_order"]) == (0, 0.0, -1.0)
