"""The risk stage: a snapshot (and the export it was ingested from) -> order risk rows -> a model judged on a
time-split holdout beside Shopify's risk level and the rules -> an MLflow run and a registered version.

As for the propensity model (evaluate.metrics.decide): a new version is registered every time with alias
``challenger``; it becomes ``champion`` only when it beats the better baseline on PR-AUC (unless
``evaluate.baseline_gate`` is off) and is the first model or beats the champion, scored on the same holdout,
by ``evaluate.margin`` with a customer-grouped CI above zero.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storeflow.components.config import RiskConfig, Settings
from storeflow.components.evaluate.metrics import Comparison, decide, paired_bootstrap
from storeflow.components.ingest.snapshot import MANIFEST, read_manifest
from storeflow.components.risk import model as risk_model
from storeflow.components.risk.features import LABEL, ORDER_FEATURES, TIME, order_risk_features
from storeflow.components.risk.orders import read_risk_fields, snapshot_risk_fields
from storeflow.components.risk.protocol import LEVELS_METADATA
from storeflow.components.tables import read_tables



def snapshot_inputs(snapshot: Path) -> list[Path]:
    """The export files a snapshot was ingested from (its manifest's ``inputs``): the risk fields are read
    from them, as ingest does not keep them in the snapshot's tables."""
    manifest_path = Path(snapshot) / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: {snapshot} is not a snapshot written by ingest")
    inputs = [Path(path) for path in read_manifest(snapshot).get("inputs", [])]
    missing = [str(path) for path in inputs if not path.exists()]
    if not inputs or missing:
        raise FileNotFoundError(
            f"the export snapshot {snapshot} was ingested from is not readable here ({', '.join(missing) or 'none'}"
            "): the risk stage reads the orders' risk fields from it (components/risk/query.graphql)")
    return inputs


def risk_rows(snapshot: Path, inputs: list[Path] | None = None) -> pd.DataFrame:
    """One row per order of the snapshot: features as of its creation, Shopify's level and the fraud label. The
    risk fields come from ``inputs`` when given, else from the snapshot, else from the export it was ingested from."""
    risk = read_risk_fields(inputs) if inputs else snapshot_risk_fields(snapshot)
    if risk is None:
        risk = read_risk_fields(snapshot_inputs(snapshot))
    return order_risk_features(read_tables(Path(snapshot)), risk)


@dataclass(frozen=True)
class RiskResult:
    run_id: str
    model_uri: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    evaluation: dict
    previous_champion: str | None = None  # the champion when this version was judged (a rollback returns to it)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def train_and_register(settings: Settings, rows: pd.DataFrame,
                       risk: RiskConfig | None = None) -> RiskResult:
    """Fit, judge, log and register the risk model (see the module docstring); ``risk`` replaces
    ``settings.risk``."""
    import mlflow
    from mlflow.models import infer_signature

    from storeflow.components import tracking

    risk = risk or settings.risk
    split = risk_model.time_split(rows, risk)
    fitted = risk_model.fit(split.train, risk)
    evaluation = risk_model.evaluate(fitted, split, risk)
    best = max(("shopify", "rules"), key=lambda name: evaluation.metrics[name]["pr_auc"])
    baseline = Comparison(**evaluation.comparisons[best])

    client = tracking.connect(settings)
    found = client.get_experiment_by_name(risk.experiment)
    experiment = found.experiment_id if found else client.create_experiment(
        risk.experiment, artifact_location=settings.artifact_location)
    champion = tracking.current_champion(client, risk.model_name)
    versus = None
    if champion is not None:
        theirs = mlflow.sklearn.load_model(f"models:/{risk.model_name}/{champion}")
        versus = _versus(split.holdout, fitted, theirs, risk)
    cfg = settings.evaluate
    decision = decide(versus, cfg.margin, baseline=baseline, baseline_name=_NAMES[best],
                      baseline_gate=cfg.baseline_gate)
    text = risk_model.report(evaluation, risk.fpr) + f"\nDecision: {decision.reason}\n"

    tags = {"storeflow.rows": str(len(rows))}
    if commit := tracking.git_commit():
        tags["mlflow.source.git.commit"] = commit
    with mlflow.start_run(experiment_id=experiment, run_name="order-risk", tags=tags) as run:
        mlflow.log_params({"estimator": risk.estimator, **risk.params, "maturity_days": risk.maturity_days,
                           "holdout_days": risk.holdout_days, "fpr": risk.fpr,
                           "shopify_level_as_input": risk.shopify_level_as_input})
        mlflow.log_metrics({f"{scorer}.{name}": value for scorer, values in evaluation.metrics.items()
                            for name, value in values.items()})
        # the score cut points of the assessment's levels (risk.assess.Levels), set on this holdout's genuine orders
        mlflow.log_params({f"level_{name}": value for name, value in evaluation.levels.items()})
        mlflow.log_text(text, "evaluation.md")
        mlflow.log_dict(evaluation.to_dict(), "evaluation.json")
        _log_reference(split.holdout, fitted, risk)
        example = risk_model.inputs(split.train.head(5), risk)
        info = mlflow.sklearn.log_model(
            fitted, name="model", signature=infer_signature(example, fitted.predict_proba(example)[:, 1]),
            input_example=example, pip_requirements=tracking.pip_requirements(), pyfunc_predict_fn="predict_proba",
            # the assessment's cut points travel with the model: the risk server reads them from MLmodel
            metadata={LEVELS_METADATA: evaluation.levels},
            serialization_format="skops", skops_trusted_types=tracking.skops_trusted_types(fitted))
    version = str(mlflow.register_model(info.model_uri, risk.model_name, tags={
        "storeflow.decision": "promote" if decision.promote else "keep-champion",
        "storeflow.reason": decision.reason[:5000], "storeflow.run_id": run.info.run_id}).version)
    client.set_registered_model_alias(risk.model_name, tracking.CHALLENGER, version)
    if decision.promote:
        tracking.crown(client, risk.model_name, version, champion)
    return RiskResult(run.info.run_id, info.model_uri, risk.model_name, version, decision.promote, decision.reason,
                      {**evaluation.to_dict(), "report": text,
                       "champion": None if versus is None else asdict(versus)},
                      None if champion is None else str(champion))


def _versus(holdout: pd.DataFrame, ours, theirs, risk: RiskConfig) -> Comparison:
    x = risk_model.inputs(holdout, risk)
    # the champion reads the inputs it was fitted on (with or without Shopify's level)
    every = holdout.assign(**{risk_model.SHOPIFY_INPUT: risk_model.shopify_score(holdout)})
    their_x = every[list(getattr(theirs, "feature_names_in_", x.columns))]
    groups = holdout["customer_id"].astype("string").fillna("guest-" + holdout["order_id"].astype(str)).to_numpy()
    return paired_bootstrap(holdout[LABEL].to_numpy(), ours.predict_proba(x)[:, 1],
                            np.asarray(theirs.predict_proba(their_x)[:, 1]), "pr_auc",
                            risk.bootstrap_samples, risk.confidence, risk.seed, groups=groups)


REFERENCE = "reference/holdout.parquet"  # what monitoring compares served orders with (monitor.risk)


def reference_frame(holdout: pd.DataFrame, fitted, risk: RiskConfig) -> pd.DataFrame:
    """The holdout as monitoring's reference: each order's time, features, the model's score and the label."""
    return holdout[[TIME, *ORDER_FEATURES, LABEL]].assign(
        score=fitted.predict_proba(risk_model.inputs(holdout, risk))[:, 1]).reset_index(drop=True)


def _log_reference(holdout: pd.DataFrame, fitted, risk: RiskConfig) -> None:
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE).name
        reference_frame(holdout, fitted, risk).to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE).parent))


_NAMES = {"shopify": "Shopify's risk level", "rules": "rules"}
