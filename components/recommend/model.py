"""The item-item recommender: products are similar when the same customers buy them (cosine over the
customer x product purchase matrix), and a customer's candidates are the neighbours of what they bought.

Why item-item and not a factorization model (``implicit``'s ALS): a store's catalog is thousands of
products, so the exact similarity matrix is small and needs no training loop or new native dependency;
it explains itself ("because you bought X"), and a product page or a cart is scored the same way as a
customer, from the products in it. scikit-learn's ``normalize`` and scipy's sparse products do the work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.preprocessing import normalize


@dataclass(frozen=True)
class ItemItem:
    products: np.ndarray  # column index -> product id
    similarity: sparse.csr_matrix  # products x products, each row its top neighbours, no self-similarity
    # Customers who bought each product in the training purchases: the item-popularity baseline monitoring
    # compares served traffic with (None for a model saved before it was kept).
    popularity: np.ndarray | None = None
    # From the Feast product features (recommend.catalog): each column's category (an index into
    # ``categories``, -1 unknown) and price band within it (-1 unknown); None for a model fit without them.
    category: np.ndarray | None = None
    band: np.ndarray | None = None
    categories: np.ndarray | None = None

    @classmethod
    def fit(cls, history: sparse.csr_matrix, products: np.ndarray, neighbours: int = 50) -> ItemItem:
        unit = normalize(history.astype(np.float32), norm="l2", axis=0)  # each product a unit vector of buyers
        similarity = (unit.T @ unit).tocsr()
        similarity.setdiag(0)
        similarity.eliminate_zeros()
        buyers = np.asarray((history > 0).sum(axis=0)).ravel().astype(np.int64)
        return cls(np.asarray(products), _top_per_row(similarity, neighbours), buyers)

    def with_catalog(self, catalog) -> ItemItem:
        """This model with each product's category and price band from ``catalog`` (one row per product:
        ``product_id``, ``category``, ``price_band``, as the product_catalog view serves them); a product it
        does not describe, or one without a category, has none."""
        rows = catalog.drop_duplicates("product_id", keep="last").set_index("product_id").reindex(self.products)
        named = rows["category"].fillna("").astype(str).to_numpy()
        categories = np.unique(named[named != ""]).astype(str)
        codes = np.where(named != "", np.searchsorted(categories, named), -1).astype(np.int64)
        bands = np.where(codes >= 0, rows["price_band"].fillna(-1).to_numpy(), -1).astype(np.int64)
        return replace(self, category=codes, band=bands, categories=categories)

    def cells(self, product_ids: list[int], described: dict[int, tuple[str, int]] | None = None,
              column: dict[int, int] | None = None) -> list[tuple[int, int]]:
        """(category, band) of each basket product the model or ``described`` (the online store's
        product_catalog rows of products the model never saw) knows a category of."""
        if self.category is None:
            return []
        column = column if column is not None else {int(p): i for i, p in enumerate(self.products.tolist())}
        found = []
        for product in product_ids:
            i = column.get(int(product))
            if i is not None:
                if self.category[i] >= 0:
                    found.append((int(self.category[i]), int(self.band[i])))
            elif described and int(product) in described:
                name, band = described[int(product)]
                code = int(np.searchsorted(self.categories, name))
                if code < len(self.categories) and self.categories[code] == name:
                    found.append((code, int(band)))
        return found

    def save(self, directory: Path | str) -> Path:
        """The model as files a server loads without storeflow's training code: the product ids and the
        neighbour matrix (scipy's npz), and the training purchases' popularity per product (monitoring's)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "products.npy", self.products)
        sparse.save_npz(directory / "similarity.npz", self.similarity)
        if self.popularity is not None:
            np.save(directory / "popularity.npy", self.popularity)
        if self.category is not None:
            np.save(directory / "category.npy", self.category)
            np.save(directory / "price_band.npy", self.band)
            np.save(directory / "categories.npy", self.categories.astype(str))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> ItemItem:
        directory = Path(directory)
        popularity = directory / "popularity.npy"
        described = (directory / "category.npy").exists()
        return cls(np.load(directory / "products.npy"), sparse.load_npz(directory / "similarity.npz").tocsr(),
                   np.load(popularity) if popularity.exists() else None,
                   np.load(directory / "category.npy") if described else None,
                   np.load(directory / "price_band.npy") if described else None,
                   np.load(directory / "categories.npy") if described else None)

    def basket(self, product_ids: list[int]) -> sparse.csr_matrix:
        """A cart, a product page or a customer's purchases as one row; unknown products carry no signal."""
        ids = np.asarray(product_ids, dtype=np.int64)
        index = np.searchsorted(self.products, ids[np.isin(ids, self.products)])
        return sparse.csr_matrix((np.ones(len(index), dtype=np.float32), (np.zeros(len(index), dtype=int), index)),
                                 shape=(1, len(self.products)))

    def recommend(self, product_ids: list[int], k: int, hidden: np.ndarray | None = None,
                  described: dict[int, tuple[str, int]] | None = None) -> list[int]:
        """Product ids for a basket of product ids, never one already in it nor one ``hidden`` flags: its
        neighbours by similarity, then, when fewer than ``k``, the best sellers of the basket's categories and
        price bands (:func:`fallback_order`; ``described`` gives the category and band of basket products the
        model never saw). Nothing known of the basket: nothing to say."""
        row = self.basket(product_ids)
        scores = self.scores(row)
        excluded = row if hidden is None else row + sparse.csr_matrix(hidden.reshape(1, -1).astype(np.float32))
        shown = [int(i) for i in top_k(scores, excluded, k)[0] if i >= 0 and scores[0, i] > 0]
        if len(shown) < k and self.category is not None:
            skip = np.zeros(len(self.products), dtype=bool)
            skip[row.indices] = True
            skip[shown] = True
            if hidden is not None:
                skip |= hidden
            candidates = np.flatnonzero(~skip)
            shown += fallback_order(self, self.cells(product_ids, described), candidates)[:k - len(shown)].tolist()
        return [int(self.products[i]) for i in shown]

    def scores(self, baskets: sparse.csr_matrix) -> np.ndarray:
        """Rows of products (a customer's history, a cart, one product page) -> a score per product."""
        return np.asarray((baskets @ self.similarity).todense())


def fallback_order(model: ItemItem, cells: list[tuple[int, int]], candidates: np.ndarray) -> np.ndarray:
    """``candidates`` (columns) in the basket's category and price band first: each basket product of
    category c and band b adds 1 to every product of c and 1 more to those of c in b; then by buyers, then
    column. Products of none of the basket's categories are left out (no category: no fallback)."""
    if not cells or len(candidates) == 0:
        return np.empty(0, dtype=np.int64)
    category, band = model.category[candidates], model.band[candidates]
    score = np.zeros(len(candidates), dtype=np.int64)
    for c, b in cells:
        same = category == c
        score += same
        if b >= 0:
            score += same & (band == b)
    buyers = model.popularity[candidates] if model.popularity is not None else np.zeros(len(candidates))
    keep = score > 0
    candidates, score, buyers = candidates[keep], score[keep], buyers[keep]
    return candidates[np.lexsort((candidates, -buyers, -score))]


def fallback_scores(model: ItemItem, baskets: sparse.csr_matrix) -> np.ndarray:
    """:func:`fallback_order`'s score for every product and every row of ``baskets`` at once (evaluation)."""
    n = len(model.products)
    if model.category is None:
        return np.zeros(baskets.shape)
    known = np.flatnonzero(model.category >= 0)
    in_category = sparse.csr_matrix((np.ones(len(known)), (known, model.category[known])),
                                    shape=(n, max(len(model.categories), 1)))
    banded = known[model.band[known] >= 0]
    cell = model.category[banded] * (int(model.band.max()) + 1) + model.band[banded]
    in_cell = sparse.csr_matrix((np.ones(len(banded)), (banded, cell)),
                                shape=(n, (max(len(model.categories), 1)) * (int(model.band.max()) + 1)))
    counts = baskets.astype(np.float64)
    return np.asarray(((counts @ in_category) @ in_category.T + (counts @ in_cell) @ in_cell.T).todense())


def _top_per_row(matrix: sparse.csr_matrix, keep: int) -> sparse.csr_matrix:
    """Only each row's ``keep`` largest entries: bounded memory and the usual neighbourhood cut."""
    rows, cols, values = [], [], []
    for r in range(matrix.shape[0]):
        start, end = matrix.indptr[r], matrix.indptr[r + 1]
        data, index = matrix.data[start:end], matrix.indices[start:end]
        if len(data) > keep:
            top = np.argpartition(-data, keep - 1)[:keep]
            data, index = data[top], index[top]
        rows.append(np.full(len(data), r))
        cols.append(index)
        values.append(data)
    return sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                             shape=matrix.shape)


def top_k(scores: np.ndarray, exclude: sparse.csr_matrix, k: int, tiebreak: np.ndarray | None = None,
          fallback: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best product columns per row, never one in ``exclude`` (bought already, in the cart,
    unavailable). Equal scores are ordered by ``fallback`` (a score per row and product, higher first:
    :func:`fallback_scores`), then by ``tiebreak`` (one value per product, higher first), then by column,
    so a ranking is reproducible; -1 fills a row with fewer than ``k`` products left."""
    ranked = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = exclude.nonzero()
    ranked[rows, cols] = -np.inf
    k = min(k, ranked.shape[1])
    second = np.broadcast_to(-(np.zeros(ranked.shape[1]) if tiebreak is None else np.asarray(tiebreak, float)),
                             ranked.shape)
    keys = (second, -ranked) if fallback is None else (second, -np.asarray(fallback, float), -ranked)
    order = np.lexsort(keys, axis=-1)[:, :k]
    best = np.take_along_axis(ranked, order, axis=1)
    return np.where(np.isfinite(best), order, -1)


class Neighbours:
    """:meth:`ItemItem.recommend` for one basket at request speed, with the same answer.

    The registered model ranks a basket through a sparse row times the whole similarity matrix, a dense
    score per catalog product and a lexsort of all of them (~0.25 ms a request at 5,000 products, most of it
    scipy building the basket's matrices). Here the basket's columns come from a dict, its score vector is
    the sum of its products' neighbour rows (each at most ``neighbours`` long) added in float32 in the order
    scipy's sparse product adds them (ascending column, a product twice in the basket weighing 2) into a
    scratch vector, so every score is bit for bit scipy's, and only the few hundred products that have a score
    are ranked, by score then column as :func:`top_k` does (~20 us a request in-process at 5,000 products). ``hidden`` (one flag per column: unpublished, sold out) removes products
    from the ranking, so the answer is the registered model's ranking without them, k long when enough are left.
    Fewer than ``k`` neighbours left (a product page of a rarely bought product, much sold out, a product the
    model never saw): the rest are the basket's categories' best sellers (:func:`fallback_order`) over only
    those categories' products, as :meth:`ItemItem.recommend` fills.
    """

    def __init__(self, model: ItemItem):
        similarity = model.similarity.tocsr()
        similarity.sum_duplicates()  # canonical: sorted columns, as scipy's product reads them
        self.products = np.asarray(model.products, dtype=np.int64)
        self.indptr = similarity.indptr
        self.indices = similarity.indices.astype(np.int64)
        self.data = similarity.data.astype(np.float32)
        self.column = {int(p): i for i, p in enumerate(self.products.tolist())}
        self._ids = self.products.tolist()
        self._scores = np.zeros(len(self.products), dtype=np.float32)  # scratch, cleared after each use
        self.model = model
        self._in_category = ([] if model.category is None else
                             [np.flatnonzero(model.category == c) for c in range(len(model.categories))])

    def __len__(self) -> int:
        return len(self.products)

    def unknown(self, product_ids: list[int]) -> list[int]:
        """The basket's products the model never saw (whose category serving asks the online store for)."""
        return [p for p in product_ids if p not in self.column]

    def recommend(self, product_ids: list[int], k: int, hidden: np.ndarray | None = None,
                  described: dict[int, tuple[str, int]] | None = None) -> list[int]:
        """Up to ``k`` product ids, best first: never one of ``product_ids`` nor one whose column ``hidden``
        flags; neighbours by similarity, then the basket's categories' best sellers (``described``: the
        category and band of basket products the model never saw)."""
        counts: dict[int, int] = {}
        for product in product_ids:
            column = self.column.get(product)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        if not counts:
            return self._filled([], product_ids, counts, k, hidden, described)
        indptr, indices, data = self.indptr, self.indices, self.data
        if len(counts) == 1:
            ((column, weight),) = counts.items()
            start, end = indptr[column], indptr[column + 1]
            candidates = indices[start:end]
            scores = data[start:end] if weight == 1 else np.float32(weight) * data[start:end]
            keep = (scores > 0) & (candidates != column)
        else:
            scratch = self._scores  # all zero between calls
            for column in sorted(counts):
                start, end = indptr[column], indptr[column + 1]
                weight = counts[column]
                scratch[indices[start:end]] += data[start:end] if weight == 1 else np.float32(weight) * data[start:end]
            scratch[list(counts)] = 0  # never the basket's own products
            candidates = np.flatnonzero(scratch)
            scores = scratch[candidates]
            scratch[candidates] = 0
            keep = scores > 0
        if hidden is not None:
            keep &= ~hidden[candidates]
        candidates, scores = candidates[keep], scores[keep]
        if len(candidates) > k:
            order = np.lexsort((candidates, -scores))[:k]
            candidates = candidates[order]
        else:
            candidates = candidates[np.lexsort((candidates, -scores))]
        shown = candidates.tolist()
        if len(shown) < k and self._in_category:
            return self._filled(shown, product_ids, counts, k, hidden, described)
        ids = self._ids
        return [ids[c] for c in shown]

    def _filled(self, shown: list[int], product_ids: list[int], counts: dict[int, int], k: int,
                hidden: np.ndarray | None, described: dict[int, tuple[str, int]] | None) -> list[int]:
        cells = self.model.cells(product_ids, described, self.column) if self._in_category else []
        if cells:
            pool = np.unique(np.concatenate([self._in_category[c] for c in {c for c, _ in cells}]))
            skip = np.isin(pool, [*counts, *shown])
            if hidden is not None:
                skip |= hidden[pool]
            shown = shown + fallback_order(self.model, cells, pool[~skip])[:k - len(shown)].tolist()
        ids = self._ids
        return [ids[c] for c in shown]
