"""Product features for the recommender (issue 15): each product's category and price band as Feast features
(view product_catalog), read back through Feast for training and evaluation and from the online store by the
server, and what they change: where the similarities run out (a product the model never saw, a rarely bought
one, much sold out) the answer is the basket's category and price band's best sellers, not nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.recommend import evaluate_recommenders, purchases
from storeflow.components.recommend.catalog import CatalogError, as_of, lookup_online, product_catalog, publish
from storeflow.components.recommend.model import ItemItem, Neighbours
from storeflow.components.recommend.purchases import evaluation_cutoff

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _tables() -> dict[str, pd.DataFrame]:
    """Tea 1-4 (prices 4, 6, 10, 30), mugs 5-6, product 7 with no type (vendor Kettle & Co), 8 never sold."""
    products = pd.DataFrame({"product_id": [1, 2, 3, 4, 5, 6, 7, 8],
                             "product_type": ["Tea", "Tea", "Tea", "Tea", "Mugs", "Mugs", "", "Tea"],
                             "vendor": ["A", "A", "B", "B", "C", "C", "Kettle & Co", "A"]})
    price = {1: 4.0, 2: 6.0, 3: 10.0, 4: 30.0, 5: 12.0, 6: 20.0, 7: 50.0}
    items = [(o, p) for o, p in enumerate([1, 2, 3, 4, 5, 6, 7], start=1)] + [(8, 4)]
    orders = pd.DataFrame({"order_id": [o for o, _ in items], "customer_id": 1,
                           "created_at": [T0 + timedelta(days=o) for o, _ in items],
                           "cancelled_at": [pd.NaT] * 7 + [T0]})  # order 8 cancelled: its price never counts
    line_items = pd.DataFrame({"order_id": [o for o, _ in items], "product_id": [p for _, p in items],
                               "price": [price[p] if o < 8 else 999.0 for o, p in items]})
    return {"products": products, "orders": orders, "line_items": line_items}


def test_category_is_the_product_type_else_the_vendor_and_bands_are_the_categorys_terciles() -> None:
    rows = product_catalog(_tables(), [pd.Timestamp(T0 + timedelta(days=30))]).set_index("product_id")
    assert rows.loc[7, "category"] == "Kettle & Co" and rows.loc[1, "category"] == "Tea"
    # within tea (4, 6, 10, 30): the cheapest third budget, the dearest premium; a mug is judged among mugs
    assert rows.loc[[1, 2, 3, 4], "price_band"].tolist() == [0, 1, 2, 2]
    assert rows.loc[[5, 6], "price_band"].tolist() == [0, 2]
    assert rows.loc[8, "price_band"] == -1 and np.isnan(rows.loc[8, "price"])  # never sold: no price, no band
    # point in time: only orders before it count (product 4 sold on day 4)
    early = product_catalog(_tables(), [pd.Timestamp(T0 + timedelta(days=3, hours=12))]).set_index("product_id")
    assert early.loc[4, "price_band"] == -1 and early.loc[1, "price"] == 4.0


def test_a_snapshot_without_product_types_is_named() -> None:
    tables = _tables()
    tables["products"] = tables["products"].drop(columns="product_type")
    with pytest.raises(CatalogError, match="'products' lacks column\\(s\\) product_type"):
        product_catalog(tables, [pd.Timestamp(T0)])


def _bought() -> sparse.csr_matrix:
    """Products 10-19 (tea: 10-14, mugs: 15-19); customers buy pairs inside a category, 14 and 19 alone."""
    rng = np.random.default_rng(0)
    rows, cols = [], []
    for customer in range(300):
        home = rng.integers(0, 2) * 5
        picks = rng.choice(np.arange(home, home + 4), 2, replace=False)
        rows += [customer] * 2
        cols += picks.tolist()
    rows += [300, 301, 302]
    cols += [4, 9, 9]  # 14 and 19: bought, never with anything else
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(303, 10))


def _model() -> ItemItem:
    catalog = pd.DataFrame({"product_id": np.arange(10, 20), "category": ["Tea"] * 5 + ["Mugs"] * 5,
                            "price_band": [0, 0, 1, 2, 2, 0, 1, 1, 2, 2]})
    return ItemItem.fit(_bought(), np.arange(10, 20), neighbours=10).with_catalog(catalog)


def test_where_similarities_run_out_the_baskets_category_and_band_fill_in(tmp_path) -> None:
    model = _model()
    plain = ItemItem.fit(_bought(), np.arange(10, 20), neighbours=10)
    # 14 was never bought with anything: no neighbours. Without product features: nothing to say.
    assert plain.recommend([14], k=3) == []
    # With them: tea's best sellers, its own price band (premium: 13) first
    shown = model.recommend([14], k=3)
    assert shown[0] == 13 and set(shown) <= {10, 11, 12, 13} and len(shown) == 3
    # A product created after training: its category and band come from the online store (``described``)
    assert model.recommend([99], k=2, described={99: ("Mugs", 1)})[0] in (16, 17)
    assert model.recommend([99], k=2, described={99: ("Candles", 0)}) == []  # a category it never saw
    # Sold out neighbours make room for the category's other products, never a hidden one nor another category
    hidden = np.isin(model.products, [11, 12, 13])
    assert model.recommend([10], k=3, hidden=hidden) == [14]
    # Saved and loaded (the registered artifact), and served by Neighbours: the same answers
    loaded = ItemItem.load(model.save(tmp_path / "model"))
    fast = Neighbours(loaded)
    for basket, kw in (([14], {}), ([10], {"hidden": hidden}), ([99], {"described": {99: ("Mugs", 1)}}),
                       ([10, 15], {}), ([19, 14], {}), ([15, 99], {"described": {99: ("Tea", 2)}})):
        for k in (1, 3, 8):
            assert fast.recommend(basket, k, **kw) == loaded.recommend(basket, k, **kw) == model.recommend(basket, k, **kw)


def test_feast_serves_the_rows_training_and_evaluation_read_and_the_server_asks_for_new_products(settings) -> None:
    """publish: the view's source, registered and materialized; the point-in-time join gives each time its
    own rows; the online store answers for the newest; the server's model, given a product it never saw,
    answers with that product's category's best sellers from the online store's row."""
    from storeflow.serving.recommender import RecommenderModel, product_catalog as online_catalog

    tables = _tables()
    early, late = pd.Timestamp(T0 + timedelta(days=3, hours=12)), pd.Timestamp(T0 + timedelta(days=30))
    computed = product_catalog(tables, [early, late])
    store, rows = publish(settings, computed)
    assert as_of(rows, early).set_index("product_id").loc[4, "price_band"] == -1  # what was known then
    assert as_of(rows).set_index("product_id").loc[4, "price_band"] == 2
    with pytest.raises(CatalogError, match="no rows at 2026-01-09.*horizon_days"):
        as_of(rows, pd.Timestamp(T0 + timedelta(days=8)))
    assert lookup_online(store, [3, 8, 12345]) == {3: ("Tea", 2), 8: ("Tea", -1)}  # 8: never sold

    # a model trained on tea products 1-3 only; product 4 (premium tea) is new to it
    bought = sparse.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32))
    model = ItemItem.fit(bought, np.array([1, 2, 3]), neighbours=2).with_catalog(as_of(rows))
    served = RecommenderModel("storeflow-recommendations", model.save(settings.project.state_dir / "m"), "1", 2,
                              describe=online_catalog(settings))
    served.load()

    async def ask(basket):
        request = await served.preprocess({"instances": [{"products": basket, "k": 2}]})
        return (await served.postprocess(await served.predict(request)))["predictions"][0]["products"]

    # premium tea first (3), then tea's best seller (2); without the online row it would be nothing
    assert asyncio.run(ask([4])) == ["gid://shopify/Product/3", "gid://shopify/Product/2"]
    assert asyncio.run(ask([12345])) == []  # the online store does not know it either: nothing to say


def test_with_product_features_the_model_still_beats_both_baselines_and_the_fallback_beats_popularity(tmp_path):
    """The evaluation the pipeline runs, on the rows as of the cutoff: the item-item model with its category
    fallback against popularity and frequently-bought-together, and, where the model knows none of the
    basket's products, the category and price-band fallback against popularity."""
    path = generate_store(SyntheticStoreConfig(customers=2000, orders=20000, products=200), tmp_path / "store.jsonl")
    tables = read_bulk_jsonl([path])
    cfg = load_settings({}).recommendations
    catalog = product_catalog(tables, [evaluation_cutoff(purchases(tables), cfg.horizon_days)])
    report = evaluate_recommenders(tables, cfg, catalog)
    assert report.beats_baselines, report.summary()
    cold = report.cold_start
    assert cold["ci_low"] > 0 and cold["catalog_fallback"] > cold["popularity"], report.cold_start_summary()
    assert "cold start" in report.cold_start_summary()
    assert evaluate_recommenders(tables, cfg).cold_start is None  # no product features: nothing claimed


def test_a_product_created_since_the_last_run_gets_its_category_from_the_products_webhook(hooks) -> None:
    """products/create (the recorded payload, tests/data/shopify_webhooks) through the receiver puts the new
    product's category in the online store with no band (it has no prices paid yet), so the server answers
    its page with its category's best sellers instead of nothing; a products/update that keeps the category
    leaves the pipeline's band alone, one that clears the type moves it to the vendor, a late older delivery
    changes nothing, and a malformed one is refused naming the field with the stored row kept."""
    import json
    from pathlib import Path

    from starlette.testclient import TestClient
    from test_webhook_signing import delivery

    from storeflow.components.shopify.webhooks import create_app
    from storeflow.serving.recommender import RecommenderModel, product_catalog as online_catalog

    data = Path(__file__).parent / "data" / "shopify_webhooks"
    created = json.loads((data / "products_create.json").read_text())
    sencha_update = json.loads((data / "products_update.json").read_text())
    gyokuro, sencha = created["id"], sencha_update["id"]
    # the last product_features run: Sencha and product 2 green tea (premium, budget), 3 and 4 mugs
    store, rows = publish(hooks, pd.DataFrame({
        "product_id": [sencha, 2, 3, 4], "event_timestamp": pd.Timestamp("2026-12-01", tz="UTC"),
        "category": ["Green tea", "Green tea", "Mugs", "Mugs"], "price": [14.5, 6.0, 12.0, 20.0],
        "price_band": [2, 0, 0, 2]}))
    bought = sparse.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    model = ItemItem.fit(bought, np.array([sencha, 2, 3, 4]), neighbours=3)
    served = RecommenderModel("storeflow-recommendations",
                              model.with_catalog(as_of(rows)).save(hooks.project.state_dir / "m"), "1", 3,
                              describe=online_catalog(hooks))
    served.load()

    async def ask(basket):
        request = await served.preprocess({"instances": [{"products": basket, "k": 3}]})
        return (await served.postprocess(await served.predict(request)))["predictions"][0]["products"]

    assert asyncio.run(ask([gyokuro])) == []  # created after the run: nothing known of it yet

    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        applier = client.app.state.applier

        def send(topic, payload, webhook_id):
            answer = client.post("/webhooks", **delivery(topic, payload, webhook_id))
            applier.drain()
            return answer

        assert send("products/create", created, "wh-create").status_code == 200
        assert lookup_online(store, [gyokuro, sencha]) == {gyokuro: ("Green tea", -1), sencha: ("Green tea", 2)}
        # its page: green tea's best sellers (Sencha bought by 3, product 2 by 2), never a mug
        assert asyncio.run(ask([gyokuro])) == [f"gid://shopify/Product/{sencha}", "gid://shopify/Product/2"]
        assert applier.conn.execute("SELECT outcome FROM events WHERE webhook_id = 'wh-create'").fetchone() == (
            "availability of 1 product(s), category of 1",)

        assert send("products/update", sencha_update, "wh-sencha").status_code == 200  # same type: band kept
        assert lookup_online(store, [sencha]) == {sencha: ("Green tea", 2)}
        untyped = created | {"product_type": "", "updated_at": "2026-12-05T08:00:00-05:00"}
        assert send("products/update", untyped, "wh-untyped").status_code == 200
        assert lookup_online(store, [gyokuro]) == {gyokuro: ("Kettle & Leaf", -1)}  # no type: the vendor
        late = created | {"product_type": "Oolong", "updated_at": "2026-12-04T12:00:00-05:00"}
        assert send("products/update", late, "wh-late").status_code == 200
        assert lookup_online(store, [gyokuro]) == {gyokuro: ("Kettle & Leaf", -1)}  # older than what we have

        bad = created | {"product_type": ["Green tea"], "updated_at": "2026-12-06T08:00:00-05:00"}
        answer = send("products/update", bad, "wh-bad")
        assert answer.status_code == 400 and "product_type" in answer.json()["error"], answer.text
        assert lookup_online(store, [gyokuro]) == {gyokuro: ("Kettle & Leaf", -1)}


@pytest.mark.parametrize("online_store", ["redis", "sqlite"])
def test_a_later_pipeline_run_overrides_a_webhooks_category_and_an_earlier_one_does_not(tmp_path, online_store) -> None:
    """The webhook's row is written at the product's updated_at, so the next product_features run, whose
    rows are as of a later order, gives the recategorized product its band; a run as of before the change
    does not undo it. Feast's Redis online store keeps a key's newest event time by itself; on the embedded
    SQLite one (which writes whatever it is given) publish keeps the newer rows."""
    import json
    import sqlite3
    from pathlib import Path

    from redis_server import redis_server

    from storeflow.components.config import load_settings
    from storeflow.components.features.repo import feature_store
    from storeflow.components.recommend.catalog import describe_online
    from storeflow.components.shopify import products

    update = json.loads((Path(__file__).parent / "data" / "shopify_webhooks" / "products_update.json").read_text())
    sencha = update["id"]  # updated 2026-12-03T21:45:10Z
    with redis_server(tmp_path) as address:
        feast = {"online_store": "redis", "redis_connection_string": address} if online_store == "redis" else {}
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state")}, "features": {"feast": feast}})

        def run(day: str, band: int) -> None:  # a product_features run as of that day
            publish(settings, pd.DataFrame({"product_id": [sencha], "event_timestamp": pd.Timestamp(day, tz="UTC"),
                                            "category": ["Oolong"], "price": [14.5], "price_band": [band]}))

        store = feature_store(settings)
        run("2026-12-01", 2)  # before the change: premium oolong
        conn = sqlite3.connect(":memory:")
        products.ensure_schema(conn)
        products.apply(conn, "products/update", update)  # recategorized as green tea
        written = describe_online(store, settings, products.category_rows(conn, "products/update", update))
        assert written[["category", "price", "price_band"]].values.tolist() == [["Green tea", 14.5, -1]]
        assert lookup_online(store, [sencha]) == {sencha: ("Green tea", -1)}
        run("2026-12-02", 2)  # as of before the change: the webhook's row stays
        assert lookup_online(store, [sencha]) == {sencha: ("Green tea", -1)}
        publish(settings, pd.DataFrame({"product_id": [sencha], "event_timestamp": pd.Timestamp("2026-12-04", tz="UTC"),
                                        "category": ["Green tea"], "price": [14.5], "price_band": [1]}))
        assert lookup_online(store, [sencha]) == {sencha: ("Green tea", 1)}  # a later run: its band
