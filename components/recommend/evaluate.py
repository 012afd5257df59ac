"""Judge the item-item model against popularity and frequently-bought-together on the same customers:
learn from purchases before the cutoff, rank every product each customer had not bought, and score the
ranking against what they newly bought in the window after it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from storeflow.components.config import RecommendationsConfig
from storeflow.components.recommend.baselines import bought_together, popularity
from storeflow.components.recommend.metrics import coverage, difference_ci, per_customer
from storeflow.components.recommend.model import ItemItem, fallback_scores, top_k
from storeflow.components.recommend.purchases import Interactions, purchase_matrix, purchases, time_split

MODEL = "item_item"
BASELINES = ("popularity", "bought_together")


@dataclass(frozen=True)
class RecommenderReport:
    cutoff: str
    customers: int  # evaluated: bought before the cutoff and something new to them after it
    catalog: int
    metrics: dict[str, dict[str, float]]  # recommender -> metric@k (means over customers) and coverage
    best_baseline: str
    metric: str
    difference: float  # model minus the best baseline on ``metric``, mean over customers
    ci_low: float
    ci_high: float
    # The same customers' latest order as products the model never saw (a new product's page): the
    # fallback from their Feast category and price band against popularity; None without product features.
    cold_start: dict[str, float] | None = None

    @property
    def beats_baselines(self) -> bool:
        return self.ci_low > 0

    def summary(self) -> str:
        verdict = "beats" if self.beats_baselines else "does not beat"
        return (f"{MODEL} {verdict} the best baseline ({self.best_baseline}) on {self.metric}: "
                f"{self.difference:+.4f}, {self.ci_low:+.4f} to {self.ci_high:+.4f} "
                f"({self.customers:,} customers, cutoff {self.cutoff})")

    def cold_start_summary(self) -> str:
        if self.cold_start is None:
            return "no product features: no cold-start fallback"
        c = self.cold_start
        return (f"cold start (latest order's products unknown to the model): category and price-band fallback "
                f"{self.metric} {c['catalog_fallback']:.4f} vs popularity {c['popularity']:.4f}, "
                f"{c['difference']:+.4f} ({c['ci_low']:+.4f} to {c['ci_high']:+.4f})")

    def to_dict(self) -> dict:
        return {**asdict(self), "beats_baselines": self.beats_baselines}

    @classmethod
    def from_dict(cls, values: dict) -> RecommenderReport:
        """The report :meth:`to_dict` wrote (the evaluate task's output, which adds the decision), read back by
        the register task."""
        fields = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in values.items() if key in fields})


def rankings(data: Interactions, cfg: RecommendationsConfig, catalog: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Each recommender's top-k products (columns) for the evaluated customers, never one they bought."""
    rows, history = _evaluated(data)
    ranked = {MODEL: item_item_ranking(data, cfg, catalog)}
    scores = {"popularity": popularity(data.history, len(rows)),
              "bought_together": bought_together(data.orders, data.last_order[rows])}
    buyers = popularity(data.history, 1)[0]
    return ranked | {name: top_k(values, history, cfg.k, tiebreak=buyers) for name, values in scores.items()}


def item_item_ranking(data: Interactions, cfg: RecommendationsConfig, catalog: pd.DataFrame | None = None) -> np.ndarray:
    """The item-item model's top-k for the evaluated customers, fit on purchases before the cutoff.

    Where it has nothing to say (no similar products) the served model's fallback fills in: with product
    features (``catalog``: the product_catalog rows as of the cutoff) the best sellers of the customer's
    categories and price bands, then for every one alike the products most customers bought."""
    _, history = _evaluated(data)
    model = _fitted(data, cfg, catalog)
    return top_k(model.scores(history), history, cfg.k, tiebreak=popularity(data.history, 1)[0],
                 fallback=fallback_scores(model, history) if catalog is not None else None)


def _fitted(data: Interactions, cfg: RecommendationsConfig, catalog: pd.DataFrame | None) -> ItemItem:
    model = ItemItem.fit(data.history, data.products, cfg.neighbours)
    return model.with_catalog(catalog) if catalog is not None else model


def cold_start(data: Interactions, cfg: RecommendationsConfig, catalog: pd.DataFrame) -> dict[str, float]:
    """What the product features are worth where the similarities say nothing: each evaluated customer's
    latest order before the cutoff taken as products the model never saw (a new product's page, a cart of
    new products), ranked by their categories' and price bands' best sellers (what serving falls back to)
    against popularity, on what the customer newly bought after the cutoff."""
    rows, history = _evaluated(data)
    model = _fitted(data, cfg, catalog)
    buyers = popularity(data.history, 1)[0]
    basket = data.last_order[rows]
    fallback = top_k(np.zeros(history.shape), history, cfg.k, tiebreak=buyers, fallback=fallback_scores(model, basket))
    popular = top_k(popularity(data.history, len(rows)), history, cfg.k, tiebreak=buyers)
    relevant = list(data.relevant.values())
    metric = f"{cfg.metric}@{cfg.k}"
    ours, theirs = (per_customer(ranked, relevant, cfg.k)[metric] for ranked in (fallback, popular))
    difference, low, high = difference_ci(ours, theirs, cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return {"customers": float(len(rows)), "catalog_fallback": float(ours.mean()), "popularity": float(theirs.mean()),
            "difference": difference, "ci_low": low, "ci_high": high}


def _evaluated(data: Interactions) -> tuple[np.ndarray, object]:
    rows = np.fromiter(data.relevant, dtype=np.int64)
    return rows, data.history[rows]


def evaluate_recommenders(tables: dict[str, pd.DataFrame], cfg: RecommendationsConfig,
                          catalog: pd.DataFrame | None = None) -> RecommenderReport:
    """The model against the baselines; ``catalog`` (the product_catalog view's rows as of the cutoff) adds
    the category and price-band fallback to the model's ranking and the cold-start comparison."""
    data = time_split(purchases(tables), cfg.horizon_days)
    relevant = list(data.relevant.values())
    ranked = rankings(data, cfg, catalog)
    per = {name: per_customer(recommended, relevant, cfg.k) for name, recommended in ranked.items()}
    metric = f"{cfg.metric}@{cfg.k}"
    metrics = {name: {**{m: float(v.mean()) for m, v in values.items()},
                      "coverage": coverage(ranked[name], len(data.products))} for name, values in per.items()}
    best = max(BASELINES, key=lambda name: metrics[name][metric])
    difference, low, high = difference_ci(per[MODEL][metric], per[best][metric], cfg.bootstrap_samples,
                                          cfg.confidence, cfg.seed)
    return RecommenderReport(f"{data.cutoff:%Y-%m-%d}", len(relevant), len(data.products), metrics, best, metric,
                             difference, low, high, cold_start(data, cfg, catalog) if catalog is not None else None)


def fit_recommender(tables: dict[str, pd.DataFrame], cfg: RecommendationsConfig,
                    catalog: pd.DataFrame | None = None) -> ItemItem:
    """The model to serve: item-item on every purchase (evaluation learned only from before its cutoff),
    with each product's category and price band from ``catalog`` (the product_catalog view's newest rows)."""
    _, products, history = purchase_matrix(purchases(tables))
    model = ItemItem.fit(history, products, cfg.neighbours)
    return model.with_catalog(catalog) if catalog is not None else model


def markdown(report: RecommenderReport, k: int) -> str:
    """The comparison in words and a table, for the KFP UI's report artifact."""
    names = list(report.metrics)
    shown = [f"recall@{k}", f"ndcg@{k}", f"map@{k}", "coverage"]
    lines = [f"## {'Serve' if report.beats_baselines else 'Do not serve'} the item-item model", "", report.summary(), "",
             report.cold_start_summary(), "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {m} | " + " | ".join(f"{report.metrics[n][m]:.4f}" for n in names) + " |" for m in shown]
    return "\n".join(lines) + "\n"
