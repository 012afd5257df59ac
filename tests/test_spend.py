"""Expected spend (train.spend): calibrated on the latest pre-holdout cutoff, cut into Shopify-like spend
tiers, logged inside the propensity model's directory and served beside its score."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pandas as pd
import pytest

from storeflow.components.train.spend import TIER_PERCENTILES, TIERS, fit_spend, spend_tiers, tier_spend


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"frequency": rng.poisson(2, n) + 1.0, "avg_order_value": rng.gamma(4, 20, n)})
    orders = rng.poisson(0.3 * x["frequency"])
    return x, orders * x["avg_order_value"].to_numpy() * rng.uniform(0.8, 1.2, n)


def test_spend_tiers_follow_the_cut_points_and_bad_cuts_are_named() -> None:
    assert spend_tiers(np.array([0.0, 5.0, 10.0, 50.0, 100.0, 101.0]), [5.0, 100.0]).tolist() == [
        "LOW", "LOW", "MEDIUM", "MEDIUM", "MEDIUM", "HIGH"]
    with pytest.raises(ValueError, match="cut points"):
        spend_tiers(np.array([1.0]), [10.0, 5.0])


def test_the_lowest_tier_is_not_empty_when_many_customers_tie_at_the_lowest_prediction() -> None:
    """Tree predictions tie: on CDNOW 11.5 % of the calibration cutoff share the lowest one, so the 10th
    percentile equals it and LOW used to hold nobody."""
    predicted = np.concatenate([np.full(115, 2.38), np.linspace(2.4, 40.0, 885)])
    cuts = [float(c) for c in np.percentile(predicted, TIER_PERCENTILES)]
    tiers = spend_tiers(predicted, cuts)
    assert (tiers == "LOW").sum() == 115 and set(tiers[predicted == 2.38]) == {"LOW"}
    assert 0.29 < (tiers == "HIGH").mean() < 0.31


def test_spend_totals_match_the_calibration_cutoff_and_tiers_rank_what_customers_spend() -> None:
    x, y = _rows(6_000, 0)
    cx, cy = _rows(3_000, 1)
    cy = cy * 0.7  # the latest cutoff's customers spend less: the totals follow it, not the older rows
    model, cuts = fit_spend({"max_iter": 50, "random_state": 0}, x, y, cx, cy)
    assert model.predict(cx).sum() == pytest.approx(cy.sum(), rel=1e-3)
    hx, hy = _rows(3_000, 2)
    tiers = spend_tiers(model.predict(hx), cuts)
    means = [hy[tiers == tier].mean() for tier in TIERS]
    assert means[0] < means[1] < means[2]
    assert 0.05 < (tiers == "LOW").mean() < 0.15 and 0.25 < (tiers == "HIGH").mean() < 0.35
    with pytest.raises(ValueError, match="label_spend must be non-negative"):
        fit_spend({}, x, -y, cx, cy)


def test_each_tier_says_what_its_customers_then_spent_and_the_report_says_it_in_words() -> None:
    from storeflow.components.evaluate import EvaluationResult
    from storeflow.components.evaluate.metrics import spend_metrics
    from storeflow.components.evaluate.report import markdown

    tiers = np.array(["HIGH", "LOW", "MEDIUM", "HIGH", "MEDIUM"], dtype=object)
    actual = np.array([300.0, 0.0, 20.0, 100.0, 40.0])
    summary = tier_spend(tiers, actual)
    assert summary == pytest.approx({"spend_tier_low_share": 0.2, "spend_tier_low_actual_mean": 0.0,
                                     "spend_tier_medium_share": 0.4, "spend_tier_medium_actual_mean": 30.0,
                                     "spend_tier_high_share": 0.4, "spend_tier_high_actual_mean": 200.0})
    no_low = tier_spend(tiers[tiers != "LOW"], actual[tiers != "LOW"])
    assert no_low["spend_tier_low_share"] == 0 and "spend_tier_low_actual_mean" not in no_low
    result = EvaluationResult(True, "first model", {"roc_auc": 0.8}, None, None, None,
                              spend_metrics={"challenger": spend_metrics(actual, actual) | summary})
    assert ("Spend tiers on the holdout (challenger): HIGH 40% of rows, spent 200.00 on average; "
            "MEDIUM 40% of rows, spent 30.00 on average; LOW 20% of rows, spent 0.00 on average") in markdown(result)


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """A version as train logs it (the spend model inside the propensity model's directory), downloaded as
    KServe's storage initializer does and loaded by the predictor."""
    import mlflow

    from storeflow.components.config import load_settings
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import train
    from storeflow.serving.predictor import StoreflowPredictor

    from test_propensity import _store

    tmp_path = tmp_path_factory.mktemp("spend")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        frame = _store(rows_per_cutoff=300)
        frame["label_spend"] = frame["label"] * np.random.default_rng(0).gamma(3, 30, len(frame))
        path = tmp_path / "training.parquet"
        frame.to_parquet(path)
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                                  "features": {"label": {"horizon_days": 56, "cutoff_every_days": 28,
                                                         "min_history_days": 0}},
                                  "train": {"params": {"max_iter": 30, "random_state": 0}}})
        features = FeatureResult(training_set=path, dataset_hash="test", feature_refs=[], rows=len(frame),
                                 positive_rate=float(frame["label"].mean()), cutoffs=[], served_as_of="")
        trained = train(settings, features)
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=trained.model_uri,
                                                             dst_path=str(tmp_path / "m")))
        predictor = StoreflowPredictor("m", model_dir, version="1")
        predictor.load()
        yield SimpleNamespace(settings=settings, features=features, trained=trained, frame=frame, predictor=predictor)


def test_a_trained_version_serves_expected_spend_and_tier_beside_an_unchanged_score(version) -> None:
    """train logs the spend model inside the propensity model's directory; the predictor loads both and
    the V1 answer carries expected_spend and spend_tier, with the very score the model gives."""
    from storeflow.components.evaluate import challenger_spend
    from storeflow.components.train import holdout, load_model
    from storeflow.serving.transformer import StoreflowTransformer

    trained, frame, predictor = version.trained, version.frame, version.predictor
    assert trained.metrics["spend_calibration_predicted"] == pytest.approx(trained.metrics["spend_calibration_actual"],
                                                                           rel=1e-3)
    judged = challenger_spend(holdout(version.settings, version.features), trained)["challenger"]  # evaluate's figures
    assert judged["spend_actual"] > 0 and np.isfinite(judged["spend_aggregate_error"])
    assert sum(judged[f"spend_tier_{tier.lower()}_share"] for tier in TIERS) == pytest.approx(1)
    assert judged["spend_tier_high_actual_mean"] > judged["spend_tier_medium_actual_mean"] > judged[
        "spend_tier_low_actual_mean"]  # the tiers rank what holdout customers then spent
    rows = frame[trained.features].head(5).to_numpy(dtype=np.float64)
    expected = load_model(trained.model_uri).predict_proba(frame[trained.features].head(5))[:, 1]

    transformer = StoreflowTransformer("m", features=None, predictors={"1": predictor})
    answer = asyncio.run(_answer(transformer, _scoring(rows)))["predictions"]
    assert [a["score"] for a in answer] == pytest.approx(expected.tolist(), abs=1e-12)
    spend, tiers = predictor.expected_spend(rows)
    assert [a["expected_spend"] for a in answer] == pytest.approx(np.round(spend, 2).tolist())
    assert [a["spend_tier"] for a in answer] == tiers.tolist() and set(tiers) <= set(TIERS)


def test_v1_and_v2_answers_carry_the_registered_spend_model_locally_and_through_the_cluster_path(
        version, monkeypatch) -> None:
    """The same expected spend and tier in V1 and V2 answers, served in process (storeflow serve) and
    behind a --predictor_host (the cluster's transformer and predictor containers, their HTTP bodies
    serialized and parsed as KServe's REST client and server do), over V2 and V1 between the two; and
    the same as the spend model registered with the version (train.load_spend_model)."""
    from kserve import Model
    from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

    from storeflow.components.train import load_spend_model
    from storeflow.serving.transformer import StoreflowTransformer

    trained, frame, predictor = version.trained, version.frame, version.predictor
    n = 7
    model, cuts = load_spend_model(trained.model_uri)
    registered = model.predict(frame[trained.features].head(n))
    want_spend = [round(float(v), 2) for v in registered]
    want_tiers = spend_tiers(registered, cuts).tolist()
    assert len(set(want_tiers)) > 1  # the rows are not all one tier: the tiers are checked, not a constant
    rows = frame[trained.features].head(n).to_numpy(dtype=np.float64)
    scores = predictor.score(rows)

    def v2_request(**parameters) -> InferRequest:
        ids = InferInput("customer_id", [n], "INT64")
        ids.set_data_from_numpy(np.arange(1, n + 1, dtype=np.int64), binary_data=False)
        return InferRequest("m", [ids], parameters=parameters)

    def check(transformer) -> None:
        v1 = asyncio.run(_answer(transformer, _scoring(rows)))["predictions"]
        assert [a["expected_spend"] for a in v1] == want_spend
        assert [a["spend_tier"] for a in v1] == want_tiers
        assert [a["score"] for a in v1] == pytest.approx(scores.tolist(), abs=1e-12)
        body = asyncio.run(_answer(transformer, _scoring(rows, v2_request())))
        outputs = {o["name"]: o for o in orjson.loads(body)["outputs"]}
        assert outputs["expected_spend"]["datatype"] == "FP64" and outputs["expected_spend"]["data"] == want_spend
        assert outputs["spend_tier"]["datatype"] == "BYTES" and outputs["spend_tier"]["data"] == want_tiers
        assert outputs["score"]["data"] == pytest.approx(scores.tolist(), abs=1e-12)
        # Binary outputs: the InferResponse path of postprocess.
        headers = {}
        raw = asyncio.run(_answer(transformer, _scoring(rows, v2_request(binary_data_output=True)), headers))
        parsed = InferResponse.from_bytes(raw, int(headers["inference-header-content-length"]))
        assert parsed.get_output_by_name("expected_spend").as_numpy().tolist() == want_spend
        assert [t.decode() if isinstance(t, bytes) else t
                for t in parsed.get_output_by_name("spend_tier").as_numpy().tolist()] == want_tiers

    check(StoreflowTransformer("m", features=None, predictors={"1": predictor}))  # storeflow serve

    async def over_http(self, payload, headers=None, response_headers=None):
        """The predictor container's answer to the transformer's call, through the bytes KServe sends."""
        if isinstance(payload, InferRequest):
            body, json_length = payload.to_rest()
            body = body if isinstance(body, bytes) else orjson.dumps(body)
            request = InferRequest.from_bytes(body, json_length or len(body), "m")
            answer, json_length = (await predictor.predict(request, {}, response_headers)).to_rest()
            answer = answer if isinstance(answer, bytes) else orjson.dumps(answer)
            return InferResponse.from_bytes(answer, json_length or len(answer))
        answer = await predictor.predict(orjson.loads(orjson.dumps(payload)), {}, response_headers)
        return orjson.loads(orjson.dumps(answer))

    monkeypatch.setattr(Model, "predict", over_http)
    for protocol in ("v2", "v1"):
        config = SimpleNamespace(protocol=protocol, predictor_host="storeflow-repeat-purchase-predictor")
        monkeypatch.setattr(StoreflowTransformer, "predictor_config", property(lambda self, c=config: c))
        check(StoreflowTransformer("m", features=None))  # the cluster's transformer: no predictors in process


def _scoring(rows: np.ndarray, v2_request=None):
    from storeflow.serving.transformer import Scoring

    n = len(rows)
    return Scoring(v2_request=v2_request, refs=[str(i) for i in range(1, n + 1)], ids=list(range(1, n + 1)),
                   carts=[None] * n, pinned=None, shop=None, rows=rows, fallback=np.zeros(n, dtype=bool))


async def _answer(transformer, scoring, response_headers=None):
    return await transformer.postprocess(await transformer.predict(scoring), None, response_headers)
