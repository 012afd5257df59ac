"""The recommendations pipeline: ingest → validate → recommend, on the same ingest and validate components
(and cluster wiring) as training; the item-item model and its comparison with the baselines are artifacts,
and the model is registered in MLflow beside the propensity model."""

from kfp import dsl

from storeflow.components.config import Settings
from storeflow.components.recommend.component import recommend
from storeflow.pipelines.training import DEFAULTS, ingested_and_validated, mlflow_credentials, on_cluster

PIPELINE_NAME = "storeflow-recommendations"
STAGES = ("ingest", "validate", "recommend")


def build_recommendations_pipeline(settings: Settings = DEFAULTS):
    """The recommendations pipeline wired for the cluster ``settings`` describe (see ``training.on_cluster``)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Store orders to a registered item-item product recommender, "
                  "judged against popularity and frequently-bought-together.")
    def recommendations_pipeline(ingest_source: str = "", ingest_path: str = "", k: int = -1, horizon_days: int = -1,
                                 config_json: str = "{}") -> str:
        """Ingest, validate, fit, judge and register the product recommender.

        Every input left at its default ('' or -1) keeps the cluster's configured value.

        Args:
            ingest_source: Where the orders come from: shopify, jsonl, csv or synthetic.
            ingest_path: The export file or directory for jsonl/csv, as the tasks see it.
            k: Products recommended per customer, cart or product page.
            horizon_days: The holdout: what customers newly bought in this many days after the cutoff.
            config_json: Advanced: any storeflow settings as a JSON object, over the ConfigMap; the inputs
                above win over it.
        """
        ingested, validated = ingested_and_validated(config_json, ingest_source, ingest_path, settings)
        snapshot = ingested.outputs["snapshot"]
        fitted = mlflow_credentials(on_cluster(
            recommend(config_json=config_json, snapshot=snapshot, k=k, horizon_days=horizon_days), "recommend",
            settings), settings)
        fitted.after(validated)
        return fitted.outputs["Output"]

    return recommendations_pipeline


recommendations_pipeline = build_recommendations_pipeline()
