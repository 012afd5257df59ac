"""The recommender in MLflow, as the propensity model is: a run with its settings and holdout metrics, the
model as a pyfunc, a new registered version every time with alias ``challenger``, and ``champion`` only on a
win: it beats the best baseline (customer-grouped CI above zero) and is not worse than the champion's
configuration refit on the same split (so a changed setting must earn its place, and fresh data alone
refreshes the served model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.recommend.evaluate import MODEL, RecommenderReport, item_item_ranking
from storeflow.components.recommend.metrics import difference_ci, per_customer
from storeflow.components.recommend.purchases import purchases, time_split


@dataclass(frozen=True)
class RecommenderRegistration:
    model_name: str
    version: str
    promoted: bool
    reason: str
    run_id: str = ""
    previous_champion: str | None = None  # the champion when this version was registered (a rollback's target)


def register_recommender(settings: Settings, model_dir: Path, report: RecommenderReport,
                         tables: dict[str, pd.DataFrame]) -> RecommenderRegistration:
    import mlflow

    from storeflow.components import tracking
    from storeflow.components.recommend.pyfunc import ItemItemPyfunc

    cfg = settings.recommendations
    client = tracking.connect(settings)
    name = cfg.model_name
    promoted, reason = report.beats_baselines, report.summary()
    champion = tracking.current_champion(client, name)
    if promoted and champion is not None:
        promoted, reason = _versus_champion(settings, client, champion, tables)
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, client), run_name="recommendations") as run:
        mlflow.log_params({"model": MODEL, "k": cfg.k, "horizon_days": cfg.horizon_days, "neighbours": cfg.neighbours})
        mlflow.log_metrics({f"{recommender}.{metric.replace('@', '_at_')}": value
                            for recommender, values in report.metrics.items() for metric, value in values.items()})
        info = mlflow.pyfunc.log_model(name="model", python_model=ItemItemPyfunc(),
                                       artifacts={"model": str(model_dir)},
                                       pip_requirements=tracking.pip_requirements())
    version = mlflow.register_model(info.model_uri, name, tags={
        "storeflow.decision": "promote" if promoted else "keep-champion", "storeflow.reason": reason[:5000],
        "storeflow.run_id": run.info.run_id}).version
    client.set_registered_model_alias(name, tracking.CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, tracking.CHAMPION, version)
    return RecommenderRegistration(name, str(version), promoted, reason, run.info.run_id, champion)


def _versus_champion(settings: Settings, client, champion: str, tables) -> tuple[bool, str]:
    """The challenger's settings against the champion's, both fit on the same purchases before the cutoff."""
    cfg = settings.recommendations
    version = client.get_model_version(cfg.model_name, champion)
    params = client.get_run(version.run_id).data.params
    theirs = cfg.model_copy(update={"neighbours": int(params.get("neighbours", cfg.neighbours))})
    data = time_split(purchases(tables), cfg.horizon_days)
    relevant = list(data.relevant.values())
    metric = f"{cfg.metric}@{cfg.k}"
    ours = per_customer(item_item_ranking(data, cfg), relevant, cfg.k)[metric]
    their = per_customer(item_item_ranking(data, theirs), relevant, cfg.k)[metric]
    difference, low, high = difference_ci(ours, their, cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    verdict = f"{metric} against champion v{champion}'s settings refit on the same split: {difference:+.4f} " \
              f"({low:+.4f} to {high:+.4f})"
    if high < 0:
        return False, f"worse than the champion: {verdict}"
    return True, f"beats the baselines and is not worse than the champion: {verdict}"


def training_popularity(settings: Settings, version: str) -> tuple[pd.Series | None, str]:
    """(buyers per product id in the training purchases of registered ``version``, or None; where it came from
    or why there is none). Read from the version's ``popularity.npy``, downloaded under the state dir once
    (where serving keeps the versions it serves); a version registered before it was kept has none."""
    import numpy as np

    name = settings.recommendations.model_name
    target = settings.project.state_dir / "serving" / "models" / name / str(version)
    if not any(target.rglob("similarity.npz")):
        import mlflow

        from storeflow.components import tracking

        try:
            tracking.connect(settings)
            target.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(target))
        except Exception as exc:  # noqa: BLE001 - MLflow's errors are many; monitoring says why and goes on
            return None, f"{name} v{version} could not be read from {settings.tracking_uri}: {exc}"[:500]
    found = sorted(target.rglob("popularity.npy"))
    if not found:
        return None, f"{name} v{version} keeps no training popularity (registered before it was kept)"
    products = np.load(found[0].parent / "products.npy")
    return pd.Series(np.load(found[0]), index=products), f"{name} v{version}'s training purchases"
