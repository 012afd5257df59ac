"""The order risk pipeline: ingest → validate → risk → risk-deploy, on the same ingest and validate components (and
cluster wiring) as training; the order rows, the model, its comparison with Shopify's risk level and the rules, and
its ROC curves are artifacts, the model is registered in MLflow beside the propensity model (issue 16), and a new
champion is rolled out as the propensity model's is (components/risk/deploy.py)."""

from kfp import dsl

from storeflow.components.config import Settings
from storeflow.components.risk.component import risk, risk_deploy
from storeflow.pipelines.training import (DEFAULTS, ingested_and_validated, mlflow_credentials, object_store_credentials,
                                         on_cluster)

PIPELINE_NAME = "storeflow-order-risk"
STAGES = ("ingest", "validate", "risk", "risk-deploy")


def build_risk_pipeline(settings: Settings = DEFAULTS):
    """The risk pipeline wired for the cluster ``settings`` describe (see ``training.on_cluster``)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Store orders to a registered order risk model, judged "
                  "against Shopify's own risk level and rules on a time-split holdout.")
    def risk_pipeline(ingest_source: str = "", ingest_path: str = "", export_path: str = "",
                      holdout_days: int = -1, maturity_days: int = -1, config_json: str = "{}") -> str:
        """Ingest, validate, then build order risk rows and fit, judge and register the risk model, and roll a new
        champion out (a canary on the risk InferenceService, or recorded for `storeflow serve-risk`).

        Every input left at its default ('' or -1) keeps the cluster's configured value.

        Args:
            ingest_source: Where the orders come from: shopify, jsonl, csv or synthetic ('' keeps the cluster's).
            ingest_path: The export file or directory for jsonl/csv, as the tasks see it.
            export_path: The bulk JSONL with the orders' risk fields; '' reads the export ingest read.
            holdout_days: The holdout: orders of this many days before the labels' maturity line.
            maturity_days: Days after an order by which its fraud label is known.
            config_json: Advanced: any storeflow settings as a JSON object, over the ConfigMap; the inputs
                above win over it.
        """
        ingested, validated = ingested_and_validated(config_json, ingest_source, ingest_path, settings)
        snapshot = ingested.outputs["snapshot"]
        scored = mlflow_credentials(on_cluster(
            risk(config_json=config_json, snapshot=snapshot, export_path=export_path, holdout_days=holdout_days,
                 maturity_days=maturity_days), "risk", settings), settings)
        scored.after(validated)
        # a canary reads each version's alerts from the risk prediction log (the state volume or the object store)
        object_store_credentials(mlflow_credentials(on_cluster(
            risk_deploy(config_json=config_json, registration=scored.outputs["Output"]), "risk_deploy", settings),
            settings), settings)
        return scored.outputs["Output"]

    return risk_pipeline


risk_pipeline = build_risk_pipeline()
