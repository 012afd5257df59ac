"""The cluster transformer's side of the predictor call, without servers: what it makes of the answer."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from kserve import Model
from kserve.errors import InferenceError
from kserve.protocol.infer_type import InferOutput, InferResponse

from storeflow.serving.predlog import PredictionLog
from storeflow.serving.transformer import Scoring, StoreflowTransformer


class V2Config:
    protocol = "v2"
    predictor_host = "storeflow-repeat-purchase-predictor"


def _transformer(monkeypatch, scores: list[float], version_header: str | None):
    async def predictor(self, payload, headers=None, response_headers=None):
        if version_header is not None:
            response_headers["x-storeflow-model-version"] = version_header
        response_headers["date"] = "Tue, 01 Dec 2026 00:00:00 GMT"  # the predictor's own headers
        out = InferOutput("score", [len(scores)], "FP64")
        out.set_data_from_numpy(np.array(scores), binary_data=False)
        return InferResponse("", "m", [out])  # KServe's V2 client parses no model_version

    monkeypatch.setattr(Model, "predict", predictor)
    monkeypatch.setattr(StoreflowTransformer, "predictor_config", property(lambda self: V2Config()))
    transformer = StoreflowTransformer.__new__(StoreflowTransformer)  # no Feast: only the predictor call runs
    transformer.name = "storeflow-repeat-purchase"
    return transformer


def _scoring(n: int) -> Scoring:
    return Scoring(None, [str(i) for i in range(n)], list(range(1, n + 1)), [None] * n, None, None,
                   rows=np.zeros((n, 3)), fallback=np.zeros(n, dtype=bool))


def test_the_version_comes_from_the_predictors_header_and_nothing_else_of_its_headers(monkeypatch):
    transformer = _transformer(monkeypatch, [0.1, 0.2], "7")
    scoring, ours = _scoring(2), {}
    asyncio.run(transformer._predict_remote(scoring, {}, ours))
    assert scoring.versions == ["7", "7"] and scoring.scores.tolist() == [0.1, 0.2]
    assert ours == {}  # postprocess sets our own version header; the predictor's date stays out


def test_a_predictor_answering_too_few_scores_is_an_error_not_a_shorter_answer(monkeypatch):
    transformer = _transformer(monkeypatch, [0.1], "7")
    with pytest.raises(InferenceError, match="1 scores for 2 customers"):
        asyncio.run(transformer._predict_remote(_scoring(2), {}, {}))


def test_log_files_carry_the_host_name(tmp_path, monkeypatch):
    """Transformer replicas share one volume on a cluster and each is pid 1: the host tells them apart."""
    monkeypatch.setattr("socket.gethostname", lambda: "transformer-7d9f-abcde")
    log = PredictionLog(tmp_path)
    log.append([{"customer_id": 1, "score": 0.5}])
    log.close()
    [path] = tmp_path.glob("predictions-*.jsonl")  # the pattern monitoring reads
    assert "-transformer-7d9f-abcde-" in path.name
    assert json.loads(path.read_text()) == {"customer_id": 1, "score": 0.5}
