"""Serving ranks a basket with :class:`Neighbours` (the similarity rows held as arrays, only the scored
products ranked), not the registered model's sparse product and full sort: its answers must be the registered
model's, product for product and in the same order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import sparse

from storeflow.components.recommend.model import ItemItem, Neighbours
from storeflow.components.recommend.pyfunc import ItemItemPyfunc


def _model(seed: int = 0, products: int = 400, customers: int = 3000) -> ItemItem:
    rng = np.random.default_rng(seed)
    # Customers buy within one of 20 categories mostly: neighbourhoods with many near-equal scores.
    rows, cols = [], []
    for customer in range(customers):
        home = rng.integers(0, 20)
        picks = np.concatenate([rng.integers(home * 20, home * 20 + 20, rng.integers(1, 6)),
                                rng.integers(0, products, rng.integers(0, 2))])
        rows += [customer] * len(picks)
        cols += picks.tolist()
    bought = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(customers, products))
    bought.data[:] = 1
    ids = np.sort(rng.choice(np.arange(8_000_000_000, 8_000_100_000), products, replace=False))
    return ItemItem.fit(bought, ids, neighbours=30)


def _baskets(model: ItemItem, n: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    ids = model.products
    baskets = [[int(p)] for p in ids[:50]]  # product pages
    baskets += [[int(p) for p in rng.choice(ids, rng.integers(2, 12))] for _ in range(n)]  # carts
    baskets += [[int(ids[3]), int(ids[3]), int(ids[9])], [int(ids[5]), int(ids[5])]]  # two lines, one product
    baskets += [[int(ids[7]), 42], [42], [int(ids[1]), int(ids[2]), 7, int(ids[1])]]  # unknown products
    return baskets


def test_serving_answers_what_the_registered_model_answers(tmp_path):
    model = _model()
    fast = Neighbours(model)
    registered = ItemItemPyfunc()
    registered.load_context(SimpleNamespace(artifacts={"model": str(model.save(tmp_path / "model"))}))
    baskets = _baskets(model, 600)
    for k in (1, 5, 10, 50, 400):
        expected = registered.predict(None, pd.DataFrame({"products": baskets}), params={"k": k})
        assert [fast.recommend(b, k) for b in baskets] == expected, f"k={k}"
    assert fast.recommend([42], 10) == [] and fast.recommend([], 10) == []


def test_hidden_products_leave_the_ranking_and_the_next_ones_move_up():
    model = _model(seed=3)
    fast = Neighbours(model)
    rng = np.random.default_rng(4)
    hidden = rng.random(len(model.products)) < 0.2
    hidden_ids = set(model.products[hidden].tolist())
    for basket in _baskets(model, 200, seed=5):
        everything = model.recommend(basket, len(model.products))
        assert fast.recommend(basket, 10, hidden) == [p for p in everything if p not in hidden_ids][:10]

