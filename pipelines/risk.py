"""The order risk pipeline: ingest → validate → risk, on the same ingest and validate components (and cluster
wiring) as training; the order rows, the model, its comparison with Shopify's risk level and the rules, and its
ROC curves are artifacts, and the model is registered in MLflow beside the propensity model (issue 16)."""

from kfp import dsl

from storeflow.components.config import Settings
from storeflow.components.risk.component import risk
from storeflow.pipelines.training import DEFAULTS, ingested_and_validated, mlflow_credentials, on_cluster

PIPELINE_NAME = "storeflow-order-risk"
STAGES = ("ingest", "validate", "risk")


def build_risk_pipeline(settings: Settings = DEFAULTS):
    """The risk pipeline wired for the cluster ``settings`` describe (see ``training.on_cluster``)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Store orders to a registered order risk model, judged "
                  "against Shopify's own risk level and rules on a time-split holdout.")
    def risk_pipeline(ingest_source: str = "", ingest_path: str = "", export_path: str = "",
                      holdout_days: int = -1, maturity_days: int = -1, config_json: str = "{}") -> str:
        """Ingest, validate, then build order risk rows and fit, judge and register the risk model.

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
        return scored.outputs["Output"]

    return risk_pipeline


risk_pipeline = build_risk_pipeline()
