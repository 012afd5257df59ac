"""The item-item model as an MLflow pyfunc: what a registry user loads (``mlflow.pyfunc.load_model``) and
what serving fetches by alias. Input: a DataFrame whose ``products`` column holds each basket's product ids
(a cart, a product page, a customer's purchases); output: each basket's recommended product ids, best
first, never one already in the basket. Imports MLflow, so only the registering path imports this module."""

from __future__ import annotations

import mlflow.pyfunc

from storeflow.components.recommend.model import ItemItem


class ItemItemPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model = ItemItem.load(context.artifacts["model"])

    def predict(self, context, model_input, params=None) -> list[list[int]]:
        k = int((params or {}).get("k", 10))
        return [self.model.recommend([int(p) for p in basket], k) for basket in model_input["products"]]
