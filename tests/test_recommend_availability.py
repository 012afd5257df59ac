"""Never recommend what the store does not sell right now: products/update and inventory_levels/update
webhooks (payloads in Shopify's documented shape, tests/data/shopify_webhooks) keep product availability in
the Feast online store, and the recommender drops unpublished and sold-out products (and the cart's own)."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse
from starlette.testclient import TestClient
from test_webhook_signing import SECRET, SHOP, delivery

from storeflow.components.features.repo import feature_store
from storeflow.components.recommend import availability
from storeflow.components.recommend.model import ItemItem
from storeflow.components.shopify import products
from storeflow.components.shopify.webhooks import create_app

DATA = Path(__file__).parent / "data" / "shopify_webhooks"
SENCHA = 8123412332715
TIN, REFILL = 46201938475001, 46201938475002


def payload(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.fixture
def conn():
    db = sqlite3.connect(":memory:")
    products.ensure_schema(db)
    return db


def _row(frame) -> dict:
    (row,) = frame.drop(columns="event_timestamp").to_dict("records")
    return row


def test_a_published_product_with_a_tin_in_stock_is_available(conn):
    assert _row(products.apply(conn, "products/update", payload("products_update"))) == {
        "product_id": SENCHA, "published": 1, "in_stock": 1, "inventory": 3, "title": "Sencha 100g",
        "handle": "sencha-100g"}


def test_inventory_levels_sum_over_locations_and_zero_everywhere_is_sold_out(conn):
    products.apply(conn, "products/update", payload("products_update"))
    level = payload("inventory_levels_update")  # the tin at one location: 0
    assert _row(products.apply(conn, "inventory_levels/update", level))["in_stock"] == 0
    elsewhere = level | {"location_id": 71029384757, "available": 2}
    assert _row(products.apply(conn, "inventory_levels/update", elsewhere))["inventory"] == 2
    older = elsewhere | {"available": 9, "updated_at": "2026-12-01T00:00:00Z"}  # delivered late: ignored
    assert _row(products.apply(conn, "inventory_levels/update", older))["inventory"] == 2


def test_draft_unpublished_and_sell_when_out_of_stock(conn):
    draft = payload("products_update") | {"status": "draft"}
    assert _row(products.apply(conn, "products/update", draft))["published"] == 0
    hidden = payload("products_update") | {"published_at": None, "updated_at": "2026-12-04T00:00:00Z"}
    assert _row(products.apply(conn, "products/update", hidden))["published"] == 0
    sells_on = copy.deepcopy(payload("products_update")) | {"updated_at": "2026-12-05T00:00:00Z"}
    for variant in sells_on["variants"]:
        variant.update(inventory_quantity=0, inventory_policy="continue")
    assert _row(products.apply(conn, "products/update", sells_on))["in_stock"] == 1


def test_a_level_of_an_item_no_product_named_changes_nothing(conn):
    assert products.apply(conn, "inventory_levels/update", payload("inventory_levels_update")).empty


def test_webhooks_keep_availability_current_in_the_online_store(hooks):
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        answer = client.post("/webhooks", **delivery("products/update", payload("products_update"), "wh-p1"))
        assert answer.status_code == 200, answer.text
        client.app.state.applier.drain()
        store = feature_store(hooks)
        assert availability.unavailable(store, [SENCHA, 42]) == set()  # in stock; 42 is unknown: recommendable
        client.post("/webhooks", **delivery("inventory_levels/update", payload("inventory_levels_update"), "wh-i1"))
        client.app.state.applier.drain()
        assert availability.unavailable(store, [SENCHA, 42]) == {SENCHA}  # the last tins sold

        bad = payload("inventory_levels_update") | {"available": "six"}
        answer = client.post("/webhooks", **delivery("inventory_levels/update", bad, "wh-i2"))
        assert answer.status_code == 400 and "available" in answer.json()["error"]


def _sold_out_rows(product_ids, conn=None):
    """Availability rows of products/update webhooks saying each of ``product_ids`` is sold out."""
    import pandas as pd

    if conn is None:
        conn = sqlite3.connect(":memory:")
        products.ensure_schema(conn)
    rows = []
    for product_id in product_ids:
        update = payload("products_update") | {"id": int(product_id)}
        update["variants"] = [v | {"product_id": int(product_id), "inventory_item_id": int(product_id) * 10,
                                   "inventory_quantity": 0} for v in update["variants"]]
        rows.append(products.apply(conn, "products/update", update))
    return pd.concat(rows)


def test_the_recommender_never_shows_unavailable_or_in_cart_products(hooks):
    """RecommenderModel with the availability serving uses: the basket's nearest neighbours minus what the
    online store says is sold out, still k products when enough others are available, once the catalog's
    refresh (the background thread's) has seen the webhook's write."""
    from storeflow.serving.recommender import RecommenderModel, availability_catalog

    ids = np.arange(1, 31, dtype=np.int64)
    bought = sparse.random(200, 30, density=0.2, random_state=1, format="csr")
    bought.data[:] = 1
    model = ItemItem.fit(bought, ids, neighbours=29)
    directory = model.save(hooks.project.state_dir / "model")
    served = RecommenderModel("storeflow-recommendations", directory, "1", 5, availability_catalog(hooks))
    served.load()
    served.catalog.stop()  # refreshed by hand below, as its thread does every refresh_seconds
    basket = [1, 2]
    before = model.recommend(basket, 29)
    sold_out = before[:3]

    async def ask():
        request = await served.preprocess({"instances": [{"products": basket, "k": 5}]})
        return await served.postprocess(await served.predict(request))

    (answer,) = asyncio.run(ask())["predictions"]
    assert [int(gid.rsplit("/", 1)[1]) for gid in answer["products"]] == before[:5]
    availability.write(feature_store(hooks), hooks, _sold_out_rows(sold_out))
    assert served.catalog.refresh_if_changed()
    (answer,) = asyncio.run(ask())["predictions"]
    shown = [int(gid.rsplit("/", 1)[1]) for gid in answer["products"]]
    assert len(shown) == 5
    assert not set(shown) & set(sold_out) and not set(shown) & set(basket)
    assert shown == [p for p in before if p not in sold_out][:5]
    assert [item["title"] for item in answer["items"]] == [None] * 5  # no products webhook named them yet


def test_the_servers_catalog_holds_what_feast_serves(hooks):
    """The recommender's in-memory catalog (hidden flags, titles and handles) says what Feast's
    get_online_features says: sold out, in stock with its title, unknown products recommendable; it knows
    nothing before any products webhook registered the view, and reads the store again only after a write."""
    store = feature_store(hooks)
    catalog = availability.LiveCatalog(store, [42, 77, SENCHA])
    catalog.refresh()
    assert not catalog.hidden.any() and catalog.cards == {}  # nothing registered yet: nothing hidden
    conn = sqlite3.connect(":memory:")
    products.ensure_schema(conn)
    tin = payload("products_update")
    sold = payload("products_update") | {"id": 77, "title": "Matcha", "handle": "matcha"}
    sold["variants"] = [v | {"product_id": 77, "inventory_item_id": 770, "inventory_quantity": 0}
                        for v in sold["variants"]]
    import pandas as pd

    availability.write(feature_store(hooks), hooks, pd.concat([products.apply(conn, "products/update", tin),
                                                               products.apply(conn, "products/update", sold)]))
    catalog = availability.LiveCatalog(feature_store(hooks), [42, 77, SENCHA])
    catalog.refresh()
    assert catalog.hidden.tolist() == [False, True, False]
    assert catalog.cards == availability.lookup(store, [SENCHA, 77, 42])
    assert catalog.cards == {SENCHA: availability.ProductState(True, "Sencha 100g", "sencha-100g"),
                             77: availability.ProductState(False, "Matcha", "matcha")}
    reads = catalog.refreshes
    assert not catalog.refresh_if_changed() and catalog.refreshes == reads  # nothing written: nothing read
    availability.write(feature_store(hooks), hooks, _sold_out_rows([SENCHA], conn))
    assert catalog.refresh_if_changed() and catalog.hidden.tolist() == [False, True, True]


def test_a_running_server_hides_what_the_webhooks_sell_out_without_being_asked(hooks):
    """The catalog's own thread picks up a webhook receiver's write (another connection's commit)."""
    import time

    catalog = availability.LiveCatalog(feature_store(hooks), [SENCHA, 77], refresh_seconds=0.05).start()
    try:
        assert not catalog.hidden.any()
        availability.write(feature_store(hooks), hooks, _sold_out_rows([77]))
        deadline = time.monotonic() + 30
        while not catalog.hidden[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert catalog.hidden.tolist() == [False, True] and catalog.error is None
    finally:
        catalog.stop()


def test_on_redis_the_catalog_reads_the_view_for_the_models_products(tmp_path):
    """Feast's Redis online store (the cluster's): no change counter, so each refresh reads the view again
    through the store's own online_read; it says what get_online_features says."""
    from redis_server import redis_server

    from storeflow.components.config import load_settings

    with redis_server(tmp_path) as address:
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
                                  "features": {"feast": {"online_store": "redis",
                                                         "redis_connection_string": address}}})
        store = feature_store(settings)
        availability.ensure_view(store, settings)
        catalog = availability.LiveCatalog(store, [SENCHA, 77, 42])
        catalog.refresh()
        assert not catalog.hidden.any() and catalog.cards == {}
        conn = sqlite3.connect(":memory:")
        products.ensure_schema(conn)
        availability.write(store, settings, products.apply(conn, "products/update", payload("products_update")))
        availability.write(store, settings, _sold_out_rows([77], conn))
        assert catalog.refresh_if_changed()  # always read again: Redis says nothing of changes
        assert catalog.hidden.tolist() == [False, True, False]
        assert catalog.cards == availability.lookup(store, [SENCHA, 77, 42])
