"""Order risk over KServe (issue 16): the registered risk model (MLflow ``risk.model_name``) as a KServe ``Model``
on a ModelServer of its own. The webhook receiver sends it each new order's 31 order-time features
(:mod:`storeflow.components.risk.live`) and queues the answer for ``orderRiskAssessmentCreate``.

KServe's contract: ``load`` the estimator and the assessment's cut points (MLmodel metadata ``risk_levels``, set by
the risk stage on the holdout's genuine orders), ``preprocess`` a V1 or V2 request into a matrix in the model's
column order, ``predict`` P(fraud) per order, ``postprocess`` each score into the level and facts the merchant
sees (:func:`storeflow.components.risk.assess.assessment`) in the protocol the request came in
(:mod:`storeflow.components.risk.protocol`). Every prediction is logged with the features it saw
(``<state_dir>/risk/predictions``, the prediction log's format with ``order_id``, ``level`` and ``facts``) and
counted on ``/metrics`` by version and level (``storeflow_risk_assessments_total{model_version,level}``, the series
the risk canary's alert rate reads: :func:`storeflow.components.risk.deploy.alert_queries`).

No Shopify auth here, as for the cluster predictor: only the receiver calls it (loopback locally, the namespace's
NetworkPolicy on a cluster); the served routes, the one error shape and the request metrics are storeflow's, and a
body over ``risk.max_body_bytes`` is 413 before anything parses it. Each order id is logged with its prediction:
one that is not a short string or integer (``protocol.MAX_ORDER_ID_CHARS``) is refused, not written to the log.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from storeflow.components.heap import freeze_startup_objects
from storeflow.components.risk.assess import Levels, assessment
from storeflow.components.risk.features import ORDER_FEATURES
from storeflow.components.risk.protocol import (FACTS_OUTPUT, FEATURES_INPUT, LEVEL_OUTPUT, LEVELS_METADATA,
                                                MAX_INSTANCES, MAX_ORDER_ID_CHARS, ORDER_ID, SCORE_OUTPUT)
from storeflow.serving.metrics import RISK_ASSESSMENTS
from storeflow.serving.predictor import input_example, load_estimator, read_mlmodel, registered_version
from storeflow.serving.errors import AnswersOneVersion
from storeflow.serving.predlog import PredictionLog, now_iso
from storeflow.serving.protocol import VERSION_HEADER
from storeflow.serving.runtime import Scorer, build_scorer
from storeflow.serving.v1 import v1_request
from storeflow.serving.v2 import check_json_data, check_outputs

if TYPE_CHECKING:
    from storeflow.components.config import Settings

V1_EXAMPLE = ('{"instances": [{"order_id": "gid://shopify/Order/1", "total_price": 42.5, '
              f'...the {len(ORDER_FEATURES)} features}}]}}')


class RiskPredictor(AnswersOneVersion, Model):
    """P(fraud) of orders, with the assessment (level and facts) of each."""

    def __init__(self, name: str, model_dir: Path | str, version: str | None = None,
                 log: PredictionLog | None = None, runtime: str = "auto"):
        super().__init__(name, return_response_headers=True)
        self.model_dir, self.version, self.log, self.runtime = Path(model_dir), version, log, runtime
        self.columns: list[str] = []
        self.levels: Levels | None = None
        self.scorer: Scorer | None = None
        self.registered_name = name

    def load(self) -> bool:
        estimator = load_estimator(self.model_dir)
        self.columns = [str(c) for c in getattr(estimator, "feature_names_in_", [])]
        if set(self.columns) != set(ORDER_FEATURES):
            extra, missing = sorted(set(self.columns) - set(ORDER_FEATURES)), sorted(set(ORDER_FEATURES) - set(self.columns))
            raise ValueError(f"{self.model_dir}: the risk model reads {', '.join(extra) or 'nothing else'} beside the "
                             f"order-time features (missing: {', '.join(missing) or 'none'}); orders/create carries only "
                             "those (a model trained with risk.shopify_level_as_input cannot score an order as it arrives)")
        cuts = (read_mlmodel(self.model_dir).get("metadata") or {}).get(LEVELS_METADATA)
        if not cuts:
            raise ValueError(f"{self.model_dir} has no {LEVELS_METADATA} in its MLmodel metadata: a risk model "
                             "registered before real-time scoring; run the risk pipeline again")
        self.levels = Levels(high=float(cuts["high"]), medium=float(cuts["medium"]))
        self.scorer = build_scorer(estimator, self.runtime, input_example(self.model_dir, self.columns))
        name, version = registered_version(self.model_dir)
        self.version = self.version or version or "unknown"
        self.registered_name = name or self.name
        self.ready = True
        return True

    async def preprocess(self, payload, headers=None) -> tuple[bool, list[str | None], np.ndarray]:
        if isinstance(payload, InferRequest):
            return (True, *self._v2(payload))
        instances = v1_request(payload, V1_EXAMPLE)["instances"]
        if not 1 <= len(instances) <= MAX_INSTANCES:
            raise InvalidInput(f"send 1 to {MAX_INSTANCES} orders per request, got {len(instances)}")
        ids, rows = [], []
        for i, item in enumerate(instances):
            if not isinstance(item, dict):
                raise InvalidInput(f"instances[{i}] must be an object: {V1_EXAMPLE}")
            if missing := [c for c in self.columns if c not in item]:
                raise InvalidInput(f"instances[{i}] lacks feature(s) {', '.join(missing)}")
            if extra := set(item) - set(self.columns) - {ORDER_ID}:
                raise InvalidInput(f"instances[{i}] has unknown field(s): {', '.join(sorted(map(str, extra)))}")
            ids.append(_order_id(item.get(ORDER_ID), f"instances[{i}].{ORDER_ID}"))
            row = [item[c] for c in self.columns]
            if not all(type(v) in NUMBERS for v in row):  # "12" and true were read as 12.0 and 1.0
                bad = next(c for c, v in zip(self.columns, row) if type(v) not in NUMBERS)
                raise InvalidInput(f"instances[{i}].{bad}: features must be numbers, got {item[bad]!r}"[:200])
            rows.append(row)
        return False, ids, _matrix(rows, len(self.columns))

    def _v2(self, request: InferRequest) -> tuple[list[str | None], np.ndarray]:
        check_outputs(request, [SCORE_OUTPUT, LEVEL_OUTPUT, FACTS_OUTPUT])
        inputs = {tensor.name: tensor for tensor in request.inputs}
        if FEATURES_INPUT not in inputs or set(inputs) - {FEATURES_INPUT, ORDER_ID}:
            raise InvalidInput(f"inputs '{FEATURES_INPUT}' (FP64 [n, {len(self.columns)}]) and optionally "
                               f"'{ORDER_ID}' (BYTES [n]), got {sorted(inputs)}")
        if inputs[FEATURES_INPUT].datatype not in ("FP64", "FP32"):
            raise InvalidInput(f"input '{FEATURES_INPUT}' must be FP64 or FP32, got {inputs[FEATURES_INPUT].datatype}")
        check_json_data(inputs[FEATURES_INPUT])
        try:
            rows = _matrix(inputs[FEATURES_INPUT].as_numpy(), len(self.columns))
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - numpy says many things about bad data
            raise InvalidInput(f"input '{FEATURES_INPUT}' does not match its datatype and shape: {exc}") from exc
        if len(rows) > MAX_INSTANCES:
            raise InvalidInput(f"send 1 to {MAX_INSTANCES} orders per request, got {len(rows)}")
        ids: list[str | None] = [None] * len(rows)
        if ORDER_ID in inputs:
            values = inputs[ORDER_ID].data
            if len(values) != len(rows):
                raise InvalidInput(f"'{ORDER_ID}' has {len(values)} values for {len(rows)} rows of features")
            ids = [_order_id(v, f"{ORDER_ID}[{i}]") for i, v in enumerate(values)]
        return ids, rows

    async def predict(self, request, headers=None, response_headers=None):
        v2, ids, rows = request
        if response_headers is not None:  # KServe hands response headers to predict
            response_headers[VERSION_HEADER] = self.version
        return v2, ids, rows, self.scorer.score(rows)

    async def postprocess(self, result, headers=None, response_headers=None):
        v2, ids, rows, scores = result
        said = []
        for row, score in zip(rows, scores):
            level, facts = assessment(dict(zip(self.columns, row.tolist())), float(score), self.levels)
            said.append((level, [{"description": f.description, "sentiment": f.sentiment} for f in facts]))
        for level in set(lv for lv, _ in said):
            RISK_ASSESSMENTS.labels(self.version, level).inc(sum(lv == level for lv, _ in said))
        if self.log is not None:
            stamp, request_id = now_iso(), uuid.uuid4().hex
            self.log.append([{"ts": stamp, "request_id": request_id, "model_name": self.registered_name,
                              "model_version": self.version, ORDER_ID: order, "score": float(score), "level": level,
                              "facts": facts, "features": dict(zip(self.columns, row.tolist()))}
                             for order, row, score, (level, facts) in zip(ids, rows, scores, said)])
        if v2:
            score = InferOutput(SCORE_OUTPUT, [len(rows)], "FP64")
            score.set_data_from_numpy(np.asarray(scores, dtype=np.float64), binary_data=False)
            level = InferOutput(LEVEL_OUTPUT, [len(rows)], "BYTES", [lv for lv, _ in said])
            facts = InferOutput(FACTS_OUTPUT, [len(rows)], "BYTES", [json.dumps(f) for _, f in said])
            return InferResponse(response_id=uuid.uuid4().hex, model_name=self.name, model_version=self.version,
                                 infer_outputs=[score, level, facts])
        return {"predictions": [{ORDER_ID: order, "score": float(score), "level": level, "facts": facts}
                                for order, score, (level, facts) in zip(ids, scores, said)],
                "model_name": self.registered_name, "model_version": self.version}

    def get_input_types(self) -> list[dict]:
        return [{"name": FEATURES_INPUT, "datatype": "FP64", "shape": [-1, len(self.columns)],
                 "parameters": {"columns": ",".join(self.columns)}},
                {"name": ORDER_ID, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": SCORE_OUTPUT, "datatype": "FP64", "shape": [-1]},
                {"name": LEVEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": FACTS_OUTPUT, "datatype": "BYTES", "shape": [-1]}]


def _order_id(value, where: str) -> str | None:
    """An order id as logged and answered: a string (V2: UTF-8 bytes) or an integer, at most MAX_ORDER_ID_CHARS."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"{where} is not UTF-8") from None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{where} must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_ORDER_ID_CHARS:
        raise InvalidInput(f"{where} is {len(text)} characters long; an order id is at most {MAX_ORDER_ID_CHARS}")
    return text


NUMBERS = (int, float)  # a feature's JSON types (bool and str are not numbers here, whatever numpy makes of them)


def _matrix(rows, width: int) -> np.ndarray:
    try:
        matrix = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"features must be numbers: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[1] != width or matrix.shape[0] == 0:
        raise InvalidInput(f"features must have shape [n, {width}], got {list(matrix.shape)}")
    if not np.isfinite(matrix).all():
        raise InvalidInput("features must be finite (no NaN or inf)")
    return matrix


def prediction_log(settings: Settings) -> PredictionLog | None:
    """Where each risk prediction is logged (:mod:`storeflow.components.risk.logs`: ``<state_dir>/risk/predictions``,
    shipped to ``<serving.prediction_log_store>/risk/`` when a store is set, where monitoring reads it); none when
    ``serving.prediction_log`` is off."""
    from storeflow.components.risk.logs import local_dir, log_store

    cfg = settings.serving
    if not cfg.prediction_log:
        return None
    return PredictionLog(local_dir(settings), cfg.prediction_log_queue, cfg.prediction_log_rotate_bytes,
                         cfg.prediction_log_keep_files, store=log_store(settings),
                         ship_seconds=cfg.prediction_log_ship_seconds)


def resolve(settings: Settings, alias: str = "champion", version: str | None = None) -> tuple[str, Path]:
    """The registered risk version at ``alias`` (or ``version``) and its files, downloaded under the state dir."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking

    name = settings.risk.model_name
    client = tracking.connect(settings)
    try:
        version = str(version or client.get_model_version_by_alias(name, alias).version)
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"no version of {name} {'v' + version if version else 'at alias ' + alias} in "
                         f"{settings.tracking_uri}; run `storeflow run --pipeline risk` first") from exc
    target = settings.project.state_dir / "serving" / "models" / name / version
    if not (target / "MLmodel").exists():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(target))
    return version, target


def _server(settings: Settings, model: RiskPredictor, port: int):
    from kserve import ModelServer

    from storeflow.serving.logs import quiet_logging

    server = ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False)
    quiet_logging()  # ModelServer() re-applied KServe's logging config
    return server


def build_app(settings: Settings, version: str, model_dir: Path):
    """KServe's FastAPI app serving the risk model (``storeflow serve-risk``)."""
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from storeflow.serving.app import install_common
    from storeflow.serving.routes import is_inference

    model = RiskPredictor(settings.risk.inference_service, model_dir, version, prediction_log(settings),
                          settings.serving.model_runtime)
    model.load()
    server = _server(settings, model, settings.risk.port)
    server.register_model(model)
    install_common(app, settings, meter=is_inference, max_body_bytes=settings.risk.max_body_bytes)
    RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
               settings.risk.port).create_application()
    if settings.serving.quiet:  # KServe's TimingMiddleware reads the process's CPU time and logs a line per request
        app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ != "TimingMiddleware"]
    print(f"storeflow serve-risk: {model.name} = {model.registered_name} v{model.version} scored by "
          f"{model.scorer.runtime}", file=sys.stderr, flush=True)
    freeze_startup_objects()
    return app


def main(argv: list[str] | None = None) -> None:
    """The risk InferenceService's container (``python -m storeflow.serving.risk --model_name <isvc>``): the
    version KServe's storage initializer put in ``/mnt/models``."""
    import argparse
    import os

    from kserve import model_server

    from storeflow.components.config import load_settings
    from storeflow.serving.app import install_common
    from storeflow.serving.predictor import DEFAULT_MODEL_DIR
    from storeflow.serving.routes import is_inference

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", default=os.environ.get("STOREFLOW_MODEL_DIR", DEFAULT_MODEL_DIR))
    parser.add_argument("--model_version", default=os.environ.get("STOREFLOW_MODEL_VERSION"))
    args, _ = parser.parse_known_args(argv)
    settings = load_settings()
    model = RiskPredictor(args.model_name, args.model_dir, args.model_version, prediction_log(settings),
                          settings.serving.model_runtime)
    model.load()
    print(f"storeflow risk: {model.name} = {model.registered_name} v{model.version} scored by {model.scorer.runtime}",
          flush=True)
    server = _server(settings, model, args.http_port)
    from kserve.model_server import app

    install_common(app, settings, meter=is_inference, max_body_bytes=settings.risk.max_body_bytes)
    freeze_startup_objects()
    server.start([model])


if __name__ == "__main__":
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from storeflow.serving.risk import main as _main  # the imported module, not this __main__ copy

    _main()
