"""From a risk score to the assessment written back to Shopify: levels set on genuine orders' scores, facts in
words from the order-time features, queued in the write-back outbox."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storeflow.components.risk.assess import Levels, assessment, facts, levels_from
from storeflow.components.risk.features import ORDER_FEATURES
from storeflow.components.shopify import assessments

QUIET = {name: 0.0 for name in ORDER_FEATURES} | {"account_age_hours": 5_000.0, "prior_orders": 6,
                                                   "hour_of_day": 14, "value_over_prior_avg": 1.0}


def test_levels_hold_the_chosen_share_of_genuine_orders():
    genuine = np.arange(1000) / 1000
    levels = levels_from(genuine, high_fpr=0.01, medium_fpr=0.05)
    assert (genuine >= levels.high).mean() <= 0.01 and (genuine >= levels.medium).mean() <= 0.05
    assert (genuine >= levels.high).mean() > 0.005 and (genuine >= levels.medium).mean() > 0.04
    assert [levels.level(s) for s in (0.999, 0.97, 0.5)] == ["HIGH", "MEDIUM", "LOW"]
    with pytest.raises(ValueError, match="high_fpr < medium_fpr"):
        levels_from(genuine, high_fpr=0.1, medium_fpr=0.05)
    with pytest.raises(ValueError, match="no genuine orders"):
        levels_from(np.array([]))


def test_facts_name_the_orders_own_signals():
    risky = QUIET | {"country_mismatch": 1, "account_age_hours": 0.2, "prior_orders": 0, "address_orders_24h": 3,
                     "address_customers_7d": 4, "discount_share": 0.4, "hour_of_day": 3}
    said = {fact.description: fact.sentiment for fact in facts(risky)}
    assert said == {
        "Shipping country differs from the billing country": "NEGATIVE",
        "Account created 0.2 hours before the order": "NEGATIVE",
        "3 other order(s) to this shipping address in the previous 24 hours, from 4 customer(s) this week": "NEGATIVE",
        "First order with a 40% discount": "NEGATIVE",
        "Placed at 03:00 UTC": "NEGATIVE",
    }
    calm = {fact.description: fact.sentiment for fact in facts(QUIET)}
    assert calm == {"6 earlier orders, none cancelled as fraud": "POSITIVE", "Ships to the billing country": "POSITIVE"}


def test_an_assessment_is_queued_for_write_back_with_its_score_and_facts(tmp_path: Path):
    risky = QUIET | {"country_mismatch": 1, "customer_orders_1h": 2, "email_orders_1h": 2}
    level, said = assessment(risky, 0.91, Levels(high=0.8, medium=0.4))
    assert level == "HIGH"
    assert said[0].description.startswith("Risk score 0.910 (HIGH") and said[0].sentiment == "NEUTRAL"
    db = assessments.connect(tmp_path / "outbox.db")
    assert assessments.enqueue(db, 5100000000003, level, said, model_version="3")
    stored_level, stored = db.execute("SELECT risk_level, facts FROM risk_outbox").fetchone()
    written = [fact["description"] for fact in json.loads(stored)]
    assert stored_level == "HIGH" and written[0] == assessments.signature("3")
    assert "2 other order(s) by this customer in the previous hour" in written
    assert not any("with this email" in text for text in written)  # the same orders, said once
    assert assessment(QUIET, 0.1, Levels(high=0.8, medium=0.4))[0] == "LOW"
