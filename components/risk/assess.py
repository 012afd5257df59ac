"""From a model score to the assessment a merchant sees on the order page (``orderRiskAssessmentCreate``): a
risk level and the facts that drove it, in the shape ``shopify.assessments.enqueue`` queues for write-back.

Levels come from the genuine orders' scores, not from a fixed probability: HIGH holds the orders a genuine order
outscores only ``high_fpr`` (1 %) of the time, MEDIUM ``medium_fpr`` (5 %); the rest are LOW. So the share of
genuine orders a merchant is asked to look at is what was chosen, whatever the model's calibration. Facts are
the order's own risk signals (NEGATIVE) and reassurances (POSITIVE), in words, from its order-time features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storeflow.components.shopify.assessments import Fact


@dataclass(frozen=True)
class Levels:
    high: float  # a score at or above it is HIGH
    medium: float  # at or above it (and below high) MEDIUM

    def level(self, score: float) -> str:
        return "HIGH" if score >= self.high else "MEDIUM" if score >= self.medium else "LOW"


def levels_from(genuine_scores: np.ndarray, high_fpr: float = 0.01, medium_fpr: float = 0.05) -> Levels:
    """Cut points holding ``high_fpr`` / ``medium_fpr`` of the genuine orders above them."""
    scores = np.asarray(genuine_scores, dtype=float)
    if scores.size == 0:
        raise ValueError("no genuine orders' scores to set the risk levels from")
    if not 0 < high_fpr < medium_fpr < 1:
        raise ValueError(f"need 0 < high_fpr < medium_fpr < 1, got {high_fpr} and {medium_fpr}")
    high, medium = (float(np.nextafter(np.quantile(scores, 1 - rate), np.inf)) for rate in (high_fpr, medium_fpr))
    return Levels(high=high, medium=min(medium, high))


def facts(row: Mapping | pd.Series) -> list[Fact]:
    """The order's risk signals and reassurances in words (``row``: one row of risk.features)."""
    out: list[Fact] = []
    first = row["prior_orders"] == 0

    def says(when: bool, text: str, sentiment: str = "NEGATIVE") -> None:
        if when:
            out.append(Fact(text, sentiment))

    says(bool(row["country_mismatch"]), "Shipping country differs from the billing country")
    says(row["account_age_hours"] < 24, f"Account created {row['account_age_hours']:.1f} hours before the order")
    says(row["address_orders_24h"] >= 1,
         f"{int(row['address_orders_24h'])} other order(s) to this shipping address in the previous 24 hours"
         + (f", from {int(row['address_customers_7d'])} customer(s) this week" if row["address_customers_7d"] > 1 else ""))
    says(row["customer_orders_1h"] >= 1, f"{int(row['customer_orders_1h'])} other order(s) by this customer in the "
         "previous hour")
    says(row["email_orders_1h"] >= 1 and row["customer_orders_1h"] == 0,
         f"{int(row['email_orders_1h'])} other order(s) with this email in the previous hour")
    says(first and row["discount_share"] >= 0.3, f"First order with a {row['discount_share']:.0%} discount")
    says(not first and row["value_over_prior_avg"] >= 3,
         f"Order worth {row['value_over_prior_avg']:.1f}x the customer's average")
    says(row["prior_fraud_cancels"] >= 1, f"{int(row['prior_fraud_cancels'])} earlier order(s) cancelled as fraud")
    says(row["hour_of_day"] < 6, f"Placed at {int(row['hour_of_day']):02d}:00 UTC")
    says(row["prior_orders"] >= 3 and row["prior_fraud_cancels"] == 0,
         f"{int(row['prior_orders'])} earlier orders, none cancelled as fraud", "POSITIVE")
    says(not row["country_mismatch"] and not row["ship_country_missing"], "Ships to the billing country", "POSITIVE")
    return out


def assessment(row: Mapping | pd.Series, score: float, levels: Levels) -> tuple[str, list[Fact]]:
    """The risk level for ``score`` and the facts, the score first, for ``shopify.assessments.enqueue``."""
    level = levels.level(float(score))
    return level, [Fact(f"Risk score {float(score):.3f} ({level}: at or above {levels.high:.3f} is HIGH, "
                        f"{levels.medium:.3f} MEDIUM)", "NEUTRAL"), *facts(row)]
