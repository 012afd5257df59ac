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


def test_a_predictor_error_counts_against_the_version_that_answered_it(monkeypatch):
    """On a cluster the answering version comes from the predictor's header. A predictor's error answer now
    carries it (a model serving one version marks what it raises), and the transformer's 500 passes it on: the
    canary revision's failures count against its version, where every one counted as ``none`` before."""
    import httpx
    from kserve import Model as KServeModel

    from storeflow.serving.errors import version_of
    from storeflow.serving.http import error_handlers
    from storeflow.serving.predictor import StoreflowPredictor

    class Failing(StoreflowPredictor):  # the predictor pod's model, its scoring broken
        def _matrix(self, payload):
            raise RuntimeError("a broken challenger")

    predictor = Failing.__new__(Failing)
    KServeModel.__init__(predictor, "storeflow-repeat-purchase")
    predictor.version, predictor.ready = "7", True
    with pytest.raises(RuntimeError) as failed:
        asyncio.run(predictor({"instances": [[0.0, 0.0, 0.0]]}))
    assert version_of(failed.value) == "7"
    said = asyncio.run(error_handlers()[Exception](None, failed.value))
    assert said.status_code == 500 and said.headers["x-storeflow-model-version"] == "7"

    request = httpx.Request("POST", "http://predictor/v2/models/m/infer")
    answer = httpx.Response(500, headers=dict(said.headers), content=said.body, request=request)

    async def predictor_call(self, payload, headers=None, response_headers=None):
        raise httpx.HTTPStatusError("500 Internal Server Error", request=request, response=answer)

    transformer = _transformer(monkeypatch, [0.1, 0.2], "7")
    monkeypatch.setattr(Model, "predict", predictor_call)
    transformer.predictors = {}  # scored elsewhere: the cluster's transformer
    with pytest.raises(InferenceError) as caught:
        asyncio.run(transformer.predict(_scoring(2), {}, {}))
    ours = asyncio.run(error_handlers()[InferenceError](None, caught.value))
    assert ours.status_code == 500 and ours.headers["x-storeflow-model-version"] == "7"
