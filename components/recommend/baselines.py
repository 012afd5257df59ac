"""The baselines a recommender must beat on the same customers: what sells most (popularity), and what
was bought in the same orders as the customer's latest order (frequently bought together)."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def popularity(history: sparse.csr_matrix, rows: int) -> np.ndarray:
    """Every customer gets the products most customers bought."""
    buyers = np.asarray(history.sum(axis=0)).ravel()
    return np.tile(buyers, (rows, 1))


def bought_together(orders: sparse.csr_matrix, last_order: sparse.csr_matrix) -> np.ndarray:
    """How often each product shared an order with the products of the customer's latest order."""
    together = (orders.T @ orders).tocsr()
    together.setdiag(0)
    together.eliminate_zeros()
    return np.asarray((last_order @ together).todense())
