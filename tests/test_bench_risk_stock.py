"""bench/risk_throughput.py's stock KServe row (bench/stock_kserve_risk.py): the stock server answers P(fraud) from
the model file alone, and the receiver patched to speak to it queues the assessment storeflow's path makes of the
same score (level and facts from the model's cut points), so the two rows differ only in the serving code."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from storeflow.components.risk.assess import Levels, assessment
from storeflow.components.risk.features import ORDER_FEATURES
from storeflow.components.tracking import skops_trusted_types

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def stock():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("stock_kserve_risk")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A risk estimator as the risk stage logs it: scikit-learn on the 31 named features, an MLflow model."""
    import mlflow.sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((400, len(ORDER_FEATURES))), columns=list(ORDER_FEATURES))
    label = (frame["country_mismatch"] + frame["total_price"] > 1.2).astype(int)
    estimator = HistGradientBoostingClassifier(max_iter=20).fit(frame, label)
    path = tmp_path_factory.mktemp("risk-model") / "model"
    mlflow.sklearn.save_model(estimator, str(path), serialization_format="skops",
                              skops_trusted_types=skops_trusted_types(estimator))
    return path, estimator, frame


def test_the_stock_server_scores_from_the_model_file_alone(stock, model_dir, tmp_path):
    path, estimator, frame = model_dir
    columns = stock.export(path, tmp_path / "stock")
    assert columns == list(ORDER_FEATURES) and sorted(p.name for p in (tmp_path / "stock").iterdir()) == ["model.joblib"]
    model = stock.SklearnProba("storeflow-order-risk", str(tmp_path / "stock"))
    assert model.load() and model.ready
    answer = model.predict({"instances": frame[columns].head(50).to_numpy().tolist()})
    np.testing.assert_allclose(answer["predictions"], estimator.predict_proba(frame.head(50))[:, 1])


def test_the_patched_receiver_queues_the_assessment_of_the_stock_servers_score(stock, model_dir, tmp_path,
                                                                              monkeypatch):
    from storeflow.components.risk import realtime

    path, estimator, frame = model_dir
    columns = stock.export(path, tmp_path / "stock")
    model = stock.SklearnProba("storeflow-order-risk", str(tmp_path / "stock"))
    model.load()
    sent = []

    def serve(request: httpx.Request) -> httpx.Response:
        body = httpx.Response(200, content=request.content).json()
        sent.append(body)
        return httpx.Response(200, json=asyncio.run(_predict(model, body)))

    levels = Levels(high=0.8, medium=0.4)
    monkeypatch.setattr(realtime.RiskScorer, "_prepare", realtime.RiskScorer._prepare)  # put back afterwards
    monkeypatch.setattr(realtime.RiskScorer, "_ask", realtime.RiskScorer._ask)
    stock.patch_receiver(columns, levels.high, levels.medium, "7")
    rows = frame.head(300).to_dict("records")  # more than one request's worth (protocol.MAX_INSTANCES)

    class History:
        def features_many(self, payloads):
            return [rows[p["id"]] for p in payloads]

    scorer = object.__new__(realtime.RiskScorer)
    scorer.history, scorer.url = History(), "http://stock.test/v1/models/storeflow-order-risk:predict"
    scorer.http = httpx.Client(transport=httpx.MockTransport(serve))
    got = scorer._score_many([{"id": i} for i in range(len(rows))])
    assert [len(b["instances"]) for b in sent] == [256, 44]
    assert all(isinstance(i, list) and len(i) == len(columns) for b in sent for i in b["instances"])
    scores = estimator.predict_proba(frame.head(300))[:, 1]
    want = [(i, *assessment(row, float(s), levels), "7") for i, (row, s) in enumerate(zip(rows, scores))]
    assert got == want
    assert {level for _, level, _, _ in got} >= {"HIGH", "LOW"}


async def _predict(model, body):
    answer = model.predict(body)
    return await answer if asyncio.iscoroutine(answer) else answer
