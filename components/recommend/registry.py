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


@dataclass(frozen=True)
class RecommenderDecision:
    """Whether a trained recommender should become champion, and why (the evaluate task decides it, as the
    propensity model's evaluate does; register acts on it)."""

    promote: bool
    reason: str
    champion: str | None = None  # the champion it was judged against


def judge(settings: Settings, report: RecommenderReport, tables: dict[str, pd.DataFrame]) -> RecommenderDecision:
    """Champion only when it beats the best baseline and is not worse than the champion's settings refit on
    the same split (no champion yet: the baselines alone)."""
    from storeflow.components import tracking

    client = tracking.connect(settings)
    champion = tracking.current_champion(client, settings.recommendations.model_name)
    promoted, reason = report.beats_baselines, report.summary()
    if promoted and champion is not None:
        promoted, reason = _versus_champion(settings, client, champion, tables)
    return RecommenderDecision(promoted, reason, champion)


def register_recommender(settings: Settings, model_dir: Path, report: RecommenderReport,
                         tables: dict[str, pd.DataFrame]) -> RecommenderRegistration:
    """Judge and register (:func:`judge`, then :func:`register_judged`): the library's one call."""
    return register_judged(settings, model_dir, report, judge(settings, report, tables))


def register_judged(settings: Settings, model_dir: Path, report: RecommenderReport,
                    decision: RecommenderDecision) -> RecommenderRegistration:
    """A new version of ``recommendations.model_name`` (alias challenger) from the fitted model in
    ``model_dir``; champion when ``decision`` says so."""
    import mlflow

    from storeflow.components import tracking
    from storeflow.components.recommend.pyfunc import ItemItemPyfunc

    cfg = settings.recommendations
    client = tracking.connect(settings)
    name = cfg.model_name
    promoted, reason = decision.promote, decision.reason
    champion = tracking.current_champion(client, name)
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, client), run_name="recommendations") as run:
        mlflow.log_params({"model": MODEL, "k": cfg.k, "horizon_days": cfg.horizon_days, "neighbours": cfg.neighbours})
        mlflow.log_metrics({f"{recommender}.{metric.replace('@', '_at_')}": value
                            for recommender, values in report.metrics.items() for metric, value in values.items()})
        if report.cold_start is not None:
            mlflow.log_metrics({f"cold_start.{key}": value for key, value in report.cold_start.items()})
        info = mlflow.pyfunc.log_model(name="model", python_model=ItemItemPyfunc(),
                                       artifacts={"model": str(model_dir)},
                                       pip_requirements=tracking.pip_requirements())
    version = mlflow.register_model(info.model_uri, name, tags={
        "storeflow.decision": "promote" if promoted else "keep-champion", "storeflow.reason": reason[:5000],
        "storeflow.run_id": run.info.run_id}).version
    client.set_registered_model_alias(name, tracking.CHALLENGER, version)
    if promoted:
        tracking.crown(client, name, version, champion)
    return RecommenderRegistration(name, str(version), promoted, reason, run.info.run_id, champion)


def register_evaluated(settings: Settings, model_dir: Path, evaluation: dict) -> tuple[RecommenderRegistration, str]:
    """The shared register task's recommender case: ``evaluation`` is the evaluate_recommender task's JSON (its
    report and decision). Returns the registration and the version's card (Markdown)."""
    if "decision" not in evaluation or "best_baseline" not in evaluation:
        raise ValueError("the evaluation is not an evaluate_recommender result (no report and decision): a "
                         "recommender Model is registered on its own evaluation")
    report = RecommenderReport.from_dict(evaluation)
    registered = register_judged(settings, model_dir, report, RecommenderDecision(**evaluation["decision"]))
    line = (f"Registered {registered.model_name} v{registered.version}: "
            f"{'champion' if registered.promoted else 'challenger only'} ({registered.reason})")
    card = f"## {registered.model_name} v{registered.version}\n\n{line}\n\n{report.summary()}\n\n" \
           f"{report.cold_start_summary()}\n"
    return registered, card


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
