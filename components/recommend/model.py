"""The item-item recommender: products are similar when the same customers buy them (cosine over the
customer x product purchase matrix), and a customer's candidates are the neighbours of what they bought.

Why item-item and not a factorization model (``implicit``'s ALS): a store's catalog is thousands of
products, so the exact similarity matrix is small and needs no training loop or new native dependency;
it explains itself ("because you bought X"), and a product page or a cart is scored the same way as a
customer, from the products in it. scikit-learn's ``normalize`` and scipy's sparse products do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    @classmethod
    def fit(cls, history: sparse.csr_matrix, products: np.ndarray, neighbours: int = 50) -> ItemItem:
        unit = normalize(history.astype(np.float32), norm="l2", axis=0)  # each product a unit vector of buyers
        similarity = (unit.T @ unit).tocsr()
        similarity.setdiag(0)
        similarity.eliminate_zeros()
        buyers = np.asarray((history > 0).sum(axis=0)).ravel().astype(np.int64)
        return cls(np.asarray(products), _top_per_row(similarity, neighbours), buyers)

    def save(self, directory: Path | str) -> Path:
        """The model as files a server loads without storeflow's training code: the product ids and the
        neighbour matrix (scipy's npz), and the training purchases' popularity per product (monitoring's)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "products.npy", self.products)
        sparse.save_npz(directory / "similarity.npz", self.similarity)
        if self.popularity is not None:
            np.save(directory / "popularity.npy", self.popularity)
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> ItemItem:
        directory = Path(directory)
        popularity = directory / "popularity.npy"
        return cls(np.load(directory / "products.npy"), sparse.load_npz(directory / "similarity.npz").tocsr(),
                   np.load(popularity) if popularity.exists() else None)

    def basket(self, product_ids: list[int]) -> sparse.csr_matrix:
        """A cart, a product page or a customer's purchases as one row; unknown products carry no signal."""
        ids = np.asarray(product_ids, dtype=np.int64)
        index = np.searchsorted(self.products, ids[np.isin(ids, self.products)])
        return sparse.csr_matrix((np.ones(len(index), dtype=np.float32), (np.zeros(len(index), dtype=int), index)),
                                 shape=(1, len(self.products)))

    def recommend(self, product_ids: list[int], k: int) -> list[int]:
        """Product ids for a basket of product ids, never one already in it nor one with no similarity."""
        row = self.basket(product_ids)
        scores = self.scores(row)
        return [int(self.products[i]) for i in top_k(scores, row, k)[0] if i >= 0 and scores[0, i] > 0]

    def scores(self, baskets: sparse.csr_matrix) -> np.ndarray:
        """Rows of products (a customer's history, a cart, one product page) -> a score per product."""
        return np.asarray((baskets @ self.similarity).todense())


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


def top_k(scores: np.ndarray, exclude: sparse.csr_matrix, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best product columns per row, never one in ``exclude`` (bought already, in the cart,
    unavailable). Equal scores are ordered by ``tiebreak`` (one value per product, higher first), then by
    column, so a ranking is reproducible; -1 fills a row with fewer than ``k`` products left."""
    ranked = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = exclude.nonzero()
    ranked[rows, cols] = -np.inf
    k = min(k, ranked.shape[1])
    second = np.broadcast_to(-(np.zeros(ranked.shape[1]) if tiebreak is None else np.asarray(tiebreak, float)),
                             ranked.shape)
    order = np.lexsort((second, -ranked), axis=-1)[:, :k]
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

    def __len__(self) -> int:
        return len(self.products)

    def recommend(self, product_ids: list[int], k: int, hidden: np.ndarray | None = None) -> list[int]:
        """Up to ``k`` product ids, best first: never one of ``product_ids``, one with no similarity, nor one
        whose column ``hidden`` flags."""
        counts: dict[int, int] = {}
        for product in product_ids:
            column = self.column.get(product)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        if not counts:
            return []
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
        ids = self._ids
        return [ids[c] for c in candidates.tolist()]
