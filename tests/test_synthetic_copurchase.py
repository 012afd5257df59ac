"""Co-purchase structure in the synthetic store (synthetic.co_purchase, synthetic.seasonal): off, the store
and its cache key are what they were; on, products have partners bought with them and seasonal products sell
in their season only, while customers, orders and their times stay those of the same seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from storeflow.components.config import SyntheticStoreConfig
from storeflow.components.ingest import generate_store, read_bulk_jsonl
from storeflow.components.ingest.stage import synthetic_store

PLAIN = SyntheticStoreConfig(customers=2_000, orders=20_000, products=150, seed=4)
STRUCTURED = PLAIN.model_copy(update={"co_purchase": 0.5, "seasonal": 0.15})


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, pd.DataFrame]]:
    folder = tmp_path_factory.mktemp("copurchase")
    return {name: read_bulk_jsonl([generate_store(config, folder / f"{name}.jsonl")])
            for name, config in (("plain", PLAIN), ("structured", STRUCTURED))}


def test_off_by_default_and_named_in_the_cache_key_when_on(tmp_path):
    assert SyntheticStoreConfig().co_purchase == SyntheticStoreConfig().seasonal == 0.0
    assert "co_purchase" not in PLAIN.model_dump_json() and "seasonal" not in PLAIN.model_dump_json()
    assert '"co_purchase":0.5' in STRUCTURED.model_dump_json() and '"seasonal":0.15' in STRUCTURED.model_dump_json()
    assert SyntheticStoreConfig.model_validate_json(STRUCTURED.model_dump_json()) == STRUCTURED
    assert synthetic_store(PLAIN, tmp_path).name != synthetic_store(STRUCTURED, tmp_path).name  # no stale cache
    with pytest.raises(ValueError, match="co_purchase"):
        SyntheticStoreConfig(co_purchase=1.5)


def test_only_the_products_change(stores):
    plain, structured = stores["plain"], stores["structured"]
    columns = ["customer_id", "created_at"]
    pd.testing.assert_frame_equal(plain["orders"][columns], structured["orders"][columns])
    assert len(plain["line_items"]) == len(structured["line_items"])
    assert (plain["line_items"]["product_id"] != structured["line_items"]["product_id"]).mean() > 0.2


def _strong_pairs(tables: dict[str, pd.DataFrame]) -> int:
    """Product pairs bought together in 10+ orders at 5+ times the rate their own sales would give (lift)."""
    items = tables["line_items"][["order_id", "product_id"]].drop_duplicates()
    pairs = items.merge(items, on="order_id")
    pairs = pairs[pairs["product_id_x"] < pairs["product_id_y"]]
    both = pairs.groupby(["product_id_x", "product_id_y"]).size().rename("both").reset_index()
    both = both[both["both"] >= 10]
    sold = items.groupby("product_id").size()
    lift = both["both"] * items["order_id"].nunique() / (sold[both["product_id_x"]].to_numpy()
                                                         * sold[both["product_id_y"]].to_numpy())
    return int((lift > 5).sum())


def test_complements_are_bought_together(stores):
    plain, structured = _strong_pairs(stores["plain"]), _strong_pairs(stores["structured"])
    assert structured > 4 * plain, (plain, structured)


def _in_season(tables: dict[str, pd.DataFrame]) -> pd.Series:
    """Per product sold 20+ times: the share of its sales in November-December or June-August, whichever is larger."""
    items = tables["line_items"][["order_id", "product_id"]].merge(tables["orders"][["order_id", "created_at"]])
    month = items["created_at"].dt.month
    season = pd.Series(np.select([month.isin([11, 12]), month.isin([6, 7, 8])], ["winter", "summer"], "other"),
                       index=items.index)
    shares = pd.crosstab(items["product_id"], season, normalize="index")
    counts = items.groupby("product_id").size()
    return shares.loc[counts[counts >= 20].index, ["winter", "summer"]].max(axis=1)


def test_seasonal_products_sell_in_their_season_only(stores):
    plain, structured = _in_season(stores["plain"]), _in_season(stores["structured"])
    assert (plain > 0.95).sum() == 0  # without seasons every product sells all year
    assert (structured > 0.95).sum() >= 8  # a tenth of each category, both seasons
