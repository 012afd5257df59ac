"""Product recommendations (issue 15, the offline part): the item-item model, the baselines it must beat on
the same customers, the time-ordered holdout and the ranking metrics."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.recommend import ItemItem, evaluate_recommenders, purchases, time_split
from storeflow.components.recommend.evaluate import rankings
from storeflow.components.recommend.metrics import coverage, per_customer
from storeflow.components.recommend.purchases import RecommendError

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _tables(rows: list[tuple[int, int, int, int]]) -> dict[str, pd.DataFrame]:
    """(order id, customer id, day, product id) rows -> the orders and line_items tables purchases reads."""
    frame = pd.DataFrame(rows, columns=["order_id", "customer_id", "day", "product_id"])
    orders = frame.drop_duplicates("order_id").assign(
        created_at=lambda f: [T0 + timedelta(days=int(d)) for d in f["day"]], cancelled_at=pd.NaT)
    return {"orders": orders[["order_id", "customer_id", "created_at", "cancelled_at"]],
            "line_items": frame[["order_id", "product_id"]]}


def test_ranking_metrics_match_a_hand_computed_case() -> None:
    # Recommended products 3, 1, 2; the customer then bought 1 and 4: one hit, at rank 2.
    values = per_customer(np.array([[3, 1, 2]]), [np.array([1, 4])], k=3)
    assert values["recall@3"][0] == pytest.approx(0.5)
    assert values["ndcg@3"][0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert values["map@3"][0] == pytest.approx((1 / 2) / 2)
    assert coverage(np.array([[3, 1, -1], [3, 2, -1]]), catalog=10) == pytest.approx(0.3)


def test_products_the_same_customers_buy_are_neighbours() -> None:
    # Customers 0-2 buy products 0 and 1 together; customers 3-4 buy product 2 and 3.
    history = sparse.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1]]))
    model = ItemItem.fit(history, np.array([10, 11, 12, 13]), neighbours=2)
    scores = model.scores(sparse.csr_matrix(np.array([[1, 0, 0, 0]])))  # a product page for product 10
    assert int(np.argmax(scores)) == 1 and scores[0, 0] == 0  # its co-bought product first, never itself
    assert model.similarity.getnnz(axis=1).max() <= 2  # the neighbourhood is bounded
    # A cart with a product the model never saw: that one carries no signal, the rest still does.
    assert model.recommend([999, 10], k=3)[0] == 11 and 999 not in model.recommend([999, 10], k=3)
    assert model.recommend([999], k=3) == []  # nothing known: nothing to say, never a random guess


def test_the_holdout_judges_only_what_a_customer_newly_bought_after_the_cutoff() -> None:
    rows = [(1, 7, 0, 100), (1, 7, 0, 101), (2, 8, 5, 100),  # before the cutoff
            (3, 7, 95, 100), (3, 7, 95, 102),  # 7: 100 again (not new), 102 (no one bought it before)
            (4, 8, 96, 101),  # 8: 101, new to them: the one thing to judge
            (5, 9, 97, 101),  # 9 has no history: not evaluated
            (6, 8, 200, 100)]  # after the window: not judged
    data = time_split(purchases(_tables(rows)), horizon_days=30, cutoff=pd.Timestamp(T0 + timedelta(days=90)))
    assert {int(data.customers[row]): list(data.products[cols]) for row, cols in data.relevant.items()} == {8: [101]}
    assert list(data.products) == [100, 101]  # the catalog a ranking can draw from: what sold before the cutoff


def test_a_history_too_short_to_split_says_which_setting_to_change() -> None:
    rows = [(1, 7, 0, 100), (2, 8, 1, 101)]
    with pytest.raises(RecommendError, match="recommendations.horizon_days=90"):
        time_split(purchases(_tables(rows)), horizon_days=90)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, pd.DataFrame]:
    path = generate_store(SyntheticStoreConfig(customers=2000, orders=20000, products=200),
                          tmp_path_factory.mktemp("store") / "store.jsonl")
    return read_bulk_jsonl([path])


def test_item_item_beats_both_baselines_on_the_synthetic_store(store) -> None:
    """Baskets lean to each customer's favourite category: what the same customers buy carries that,
    what sells most overall does not."""
    report = evaluate_recommenders(store, load_settings({}).recommendations)
    assert report.customers > 200
    assert report.beats_baselines and report.ci_low > 0, report.summary()
    for baseline in ("popularity", "bought_together"):
        assert report.metrics["item_item"]["ndcg@10"] > report.metrics[baseline]["ndcg@10"], baseline
    assert report.metrics["item_item"]["coverage"] > report.metrics["popularity"]["coverage"]


def test_no_recommender_shows_a_customer_what_they_already_bought(store) -> None:
    data = time_split(purchases(store), horizon_days=90)
    rows = np.fromiter(data.relevant, dtype=np.int64)
    for name, ranked in rankings(data, load_settings({}).recommendations).items():
        for row, products in zip(rows, ranked):
            assert not set(products[products >= 0]) & set(data.history[row].indices), name


def test_the_recommendations_pipeline_runs_from_the_cli_and_leaves_a_servable_model(tmp_path) -> None:
    """`storeflow run --pipeline recommendations` (kfp.local, the compiled pipeline's components): the
    report says the model beats the baselines, and the Model artifact recommends for a cart on its own."""
    import yaml
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    config = tmp_path / "storeflow.yaml"
    settings = {"project": {"state_dir": str(tmp_path / "state")},
                "ingest": {"synthetic": {"customers": 2000, "orders": 20000, "products": 200}}}
    config.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(app, ["run", "--pipeline", "recommendations", "--config", str(config)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Serve the item-item model" in text and "item_item beats the best baseline" in text
    # train, evaluate and register are tasks of their own, joined by typed artifacts: the fitted Model, the
    # evaluation's report, the registered Model
    artifacts = next((tmp_path / "state" / "runs").glob("*/artifacts/storeflow-recommendations-*"))
    (model_dir,) = artifacts.glob("train-recommender/model")
    assert "Serve the item-item model" in (artifacts / "evaluate-recommender" / "report").read_text()
    assert ItemItem.load(artifacts / "register" / "registered_model").products.tolist() == \
        ItemItem.load(model_dir).products.tolist()
    model = ItemItem.load(model_dir)
    # product features came through Feast (the product_features task): the model knows every product's
    # category, the evaluation judged the cold-start fallback, the online store serves the newest rows
    assert model.categories is not None and (model.category >= 0).all()
    assert "cold start" in (artifacts / "evaluate-recommender" / "report").read_text()
    from storeflow.components.features.repo import feature_store
    from storeflow.components.recommend.catalog import lookup_online

    online = lookup_online(feature_store(load_settings(settings)), [int(model.products[0])])
    assert online[int(model.products[0])][0] == model.categories[model.category[0]]
    cart = [int(model.products[0]), int(model.products[5])]
    shown = model.recommend(cart, k=10)
    assert len(shown) == 10 and not set(shown) & set(cart) and set(shown) <= set(model.products.tolist())
    # Registered in MLflow as the first champion; the registry's pyfunc answers as the artifact does.
    assert "Registered storeflow-recommendations v1: champion" in text
    import mlflow.pyfunc

    from storeflow.components import tracking

    tracking.connect(load_settings(settings))
    served = mlflow.pyfunc.load_model("models:/storeflow-recommendations@champion")
    assert served.predict(pd.DataFrame({"products": [cart]}), params={"k": 10}) == [shown]
    # The pipeline's last task rolled the champion out (target local: recorded for serve-recommendations)
    from storeflow.components.deploy.local import rollouts

    ours = load_settings(settings | {"registry": {"model_name": "storeflow-recommendations"}})
    assert [(r["outcome"], r["model_version"]) for r in rollouts(ours)] == [("promoted-locally", "1")]


def test_a_challenger_worse_than_the_champions_settings_is_registered_but_not_promoted(store, tmp_path) -> None:
    from storeflow.components.recommend import fit_recommender
    from storeflow.components.recommend.registry import register_recommender

    def register(neighbours: int):
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                                  "recommendations": {"neighbours": neighbours, "bootstrap_samples": 200}})
        cfg = settings.recommendations
        report = evaluate_recommenders(store, cfg)
        model_dir = fit_recommender(store, cfg).save(tmp_path / f"model-{neighbours}")
        return report, register_recommender(settings, model_dir, report, store)

    _, first = register(50)
    assert (first.version, first.promoted) == ("1", True)
    _, second = register(8)  # 8 neighbours per product: beats the baselines, loses to the champion's 50
    assert second.version == "2" and not second.promoted, second.reason
    assert "worse than the champion" in second.reason
    _, third = register(50)  # the champion's settings on the same data: fresh, not worse
    assert third.promoted and third.version == "3"


def test_an_unknown_pipeline_name_is_a_usage_error(tmp_path) -> None:
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    result = CliRunner().invoke(app, ["run", "--pipeline", "recomendations"])
    assert result.exit_code == 2 and "recomendations" in result.output


def test_the_shared_register_task_refuses_a_recommender_model_with_another_models_evaluation(tmp_path) -> None:
    """register serves both model families; a recommender Model wired to the propensity evaluate's JSON is
    named as the mistake it is, before anything is written to MLflow."""
    from storeflow.components.recommend.registry import register_evaluated

    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")}})
    propensity_evaluation = {"promote": True, "reason": "beats the champion", "challenger_metrics": {"auc": 0.7}}
    with pytest.raises(ValueError, match="not an evaluate_recommender result"):
        register_evaluated(settings, tmp_path / "model", propensity_evaluation)
    assert not (tmp_path / "state" / "mlflow.db").exists()
