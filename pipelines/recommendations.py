"""The recommendations pipeline on the same components and cluster wiring as training:
ingest → validate → product_features → train_recommender → evaluate_recommender → register → deploy.

ingest, validate, register and deploy are training's own components; product_features writes the products'
category and price band to Feast (view product_catalog, materialized online for the server) and hands on what
Feast's point-in-time join returns as a Dataset; the recommender's own stages hand each other typed artifacts
(the snapshot and product features Datasets, the fitted item-item Model, the evaluation's Metrics and Markdown
report, the registered Model) and the evaluation and registration as JSON. evaluate_recommender decides (it
must beat the best baseline and not be worse than the champion's settings), register moves the champion alias
on that decision, never a pipeline branch, and deploy rolls out only a version register made champion: the
Model's kind and the registered name tell the shared tasks it is the recommender, so it goes to the
recommender's InferenceService, its canary judged on click-through rate too.
"""

from kfp import dsl

from storeflow.components.config import Settings
from storeflow.components.deploy.component import deploy
from storeflow.components.recommend.evaluate_component import evaluate_recommender
from storeflow.components.recommend.product_features_component import product_features
from storeflow.components.recommend.train_component import train_recommender
from storeflow.components.register.component import register
from storeflow.pipelines.training import (
    DEFAULTS,
    feast_credentials,
    ingested_and_validated,
    mlflow_credentials,
    object_store_credentials,
    on_cluster,
)

PIPELINE_NAME = "storeflow-recommendations"
# kfp.local's task names (the components' names): the progress bar's rows
STAGES = ("ingest", "validate", "product-features", "train-recommender", "evaluate-recommender", "register", "deploy")


def build_recommendations_pipeline(settings: Settings = DEFAULTS):
    """The recommendations pipeline wired for the cluster ``settings`` describe (see ``training.on_cluster``)."""

    def cluster(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        return on_cluster(task, name, settings)

    @dsl.pipeline(name=PIPELINE_NAME, description="Store orders to a registered item-item product recommender, "
                  "judged against popularity and frequently-bought-together.")
    def recommendations_pipeline(ingest_source: str = "", ingest_path: str = "", k: int = -1, horizon_days: int = -1,
                                 config_json: str = "{}") -> str:
        """Ingest, validate, fit, judge, register and roll out the product recommender.

        Every input left at its default ('' or -1) keeps the cluster's configured value.

        Args:
            ingest_source: Where the orders come from: shopify, jsonl, csv or synthetic.
            ingest_path: The export file or directory for jsonl/csv, as the tasks see it.
            k: Products recommended per customer, cart or product page.
            horizon_days: The holdout: what customers newly bought in this many days after the cutoff.
            config_json: Advanced: any storeflow settings as a JSON object, over the ConfigMap; the inputs
                above win over it.
        """
        judged_as = {"k": k, "horizon_days": horizon_days}
        ingested, validated = ingested_and_validated(config_json, ingest_source, ingest_path, settings)
        snapshot = ingested.outputs["snapshot"]
        described = feast_credentials(cluster(
            product_features(config_json=config_json, snapshot=snapshot, horizon_days=horizon_days),
            "product_features"), settings)
        described.after(validated)  # the gate: nothing is built from a snapshot validate has not passed
        catalog = described.outputs["product_features"]
        trained = cluster(train_recommender(config_json=config_json, snapshot=snapshot, product_features=catalog),
                          "train_recommender")
        model = trained.outputs["model"]
        # evaluate reads the shipped feedback logs (the bucket) and the champion's settings (MLflow)
        evaluated = mlflow_credentials(object_store_credentials(cluster(
            evaluate_recommender(config_json=config_json, snapshot=snapshot, model=model, product_features=catalog,
                                 **judged_as), "evaluate_recommender"), settings), settings)
        registered = mlflow_credentials(cluster(
            register(config_json=config_json, model=model, evaluation=evaluated.outputs["Output"]), "register"),
            settings)
        registration = registered.outputs["Output"]
        # kserve: KServe's API, Prometheus, MLflow and the feedback logs shipped to the object store
        object_store_credentials(mlflow_credentials(cluster(
            deploy(config_json=config_json, registration=registration), "deploy"), settings), settings)
        return registration

    return recommendations_pipeline


recommendations_pipeline = build_recommendations_pipeline()
