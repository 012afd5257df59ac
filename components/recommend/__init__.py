"""Product recommendations from purchases (issue 15): an item-item model learned from which customers
bought which products, beside the two baselines every recommender must beat (popularity, frequently
bought together), judged on a time-ordered holdout with ranking metrics and a customer-grouped CI.

Plain functions over the ingested tables; no KFP, MLflow or serving here (those wrap it, as for the
propensity model).
"""

from storeflow.components.recommend.evaluate import RecommenderReport, evaluate_recommenders, fit_recommender
from storeflow.components.recommend.model import ItemItem
from storeflow.components.recommend.purchases import Interactions, purchases, time_split

__all__ = ["Interactions", "ItemItem", "RecommenderReport", "evaluate_recommenders", "fit_recommender", "purchases",
           "time_split"]
