"""The predictor: a registered MLflow model behind KServe's Model contract.

In the cluster it is its own container, ``python -m storeflow.serving.predictor --model_name <name>``,
reading the MLflow model directory that KServe's storage initializer put at ``/mnt/models``
(``--model_dir`` to change). It answers V2 requests whose input ``features`` is FP64 ``[n, k]``
(columns in the model's training order, see the model metadata) with output ``score`` FP64 ``[n]``,
and V1 ``{"instances": [[...k floats], ...]}`` with ``{"predictions": [score, ...]}``. A version that
carries a spend model (train.spend) adds ``expected_spend`` FP64 ``[n]`` and ``spend_tier`` BYTES ``[n]``
(V1: the same keys, lists beside ``predictions``), which the cluster's transformer passes on.
Locally the transformer calls :meth:`StoreflowPredictor.score` in process, through a micro-batcher.

Loading needs no ``import mlflow`` for the models storeflow logs (sklearn flavor, skops format): the
``MLmodel`` file names the skops file and the types to trust. Other flavors fall back to MLflow.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import yaml
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from storeflow.serving.errors import AnswersOneVersion
from storeflow.serving.protocol import FEATURES_INPUT, SCORE_OUTPUT, SPEND_OUTPUT, SPEND_TIER_OUTPUT, VERSION_HEADER
from storeflow.serving.runtime import Scorer, build_regressor, build_scorer

DEFAULT_MODEL_DIR = "/mnt/models"

# We pass float arrays in training column order on purpose; the check only costs time per call.
warnings.filterwarnings("ignore", message="X does not have valid feature names")


def read_mlmodel(model_dir: Path) -> dict:
    path = Path(model_dir) / "MLmodel"
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} is not an MLflow model directory (no MLmodel file)")
    return yaml.safe_load(path.read_text()) or {}


def load_estimator(model_dir: Path):
    """The scikit-learn estimator of an MLflow model directory."""
    model_dir = Path(model_dir)
    flavor = read_mlmodel(model_dir).get("flavors", {}).get("sklearn", {})
    if flavor.get("serialization_format") == "skops":
        import skops.io

        return skops.io.load(model_dir / flavor["pickled_model"], trusted=flavor.get("skops_trusted_types") or [])
    import mlflow.sklearn  # slow import, startup only

    return mlflow.sklearn.load_model(str(model_dir))


def input_example(model_dir: Path, columns: list[str]) -> np.ndarray | None:
    """The rows MLflow logged beside the model (``input_example.json``, split orient), in ``columns`` order."""
    path = Path(model_dir) / "input_example.json"
    try:
        data = json.loads(path.read_text())
        index = [data["columns"].index(c) for c in columns] if columns else list(range(len(data["columns"])))
        return np.asarray([[row[i] for i in index] for row in data["data"]], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # no example, or not a plain table: the threshold probes still check the runtime


def load_spend(model_dir: Path):
    """The spend model trained beside the propensity model (``spend/`` in its directory, train.spend) and
    its tier cut points; None for a model trained without one."""
    from storeflow.components.train.spend import SPEND_DIR

    folder = Path(model_dir) / SPEND_DIR
    if not (folder / "MLmodel").exists():
        return None
    return load_estimator(folder), list(read_mlmodel(folder).get("metadata", {})["spend_tier_cuts"])


def registered_version(model_dir: Path) -> tuple[str | None, str | None]:
    """(registered model name, version) recorded beside a downloaded model, when MLflow wrote it."""
    meta = Path(model_dir) / "registered_model_meta"
    if not meta.exists():
        return None, None
    data = yaml.safe_load(meta.read_text()) or {}
    version = data.get("model_version")
    return data.get("model_name"), None if version is None else str(version)


class StoreflowPredictor(AnswersOneVersion, Model):
    """Propensity scores from one registered model version."""

    def __init__(self, name: str, model_dir: Path | str, version: str | None = None,
                 registered_name: str | None = None, runtime: str = "auto"):
        super().__init__(name, return_response_headers=True)
        self.model_dir = Path(model_dir)
        self.version = version
        self.registered_name = registered_name
        self.runtime = runtime
        self.estimator = None
        self.scorer: Scorer | None = None
        self.columns: list[str] = []
        self.spend = None  # (spend model, tier cut points), when the version has one
        self.spend_scorer: Scorer | None = None  # the spend model's predict (Treelite when it agrees, see runtime)

    def load(self) -> bool:
        self.estimator = load_estimator(self.model_dir)
        self.spend = load_spend(self.model_dir)
        names = getattr(self.estimator, "feature_names_in_", None)
        self.columns = [str(n) for n in names] if names is not None else []
        examples = input_example(self.model_dir, self.columns)
        self.scorer = build_scorer(self.estimator, self.runtime, examples)
        if self.spend is not None:
            self.spend_scorer = build_regressor(self.spend[0], self.runtime, examples)
        meta_name, meta_version = registered_version(self.model_dir)
        self.version = self.version or meta_version or "unknown"
        self.registered_name = self.registered_name or meta_name or self.name
        self.ready = True
        return self.ready

    def score(self, rows: np.ndarray) -> np.ndarray:
        """P(repeat purchase) per row; synchronous, called on the batcher's thread."""
        return self.scorer.score(rows)

    def expected_spend(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Expected spend in the label horizon per row and its tier (LOW/MEDIUM/HIGH), or None."""
        if self.spend is None:
            return None
        from storeflow.components.train.spend import spend_tiers

        spend = self.spend_scorer.score(rows)
        return spend, spend_tiers(spend, self.spend[1])

    def _matrix(self, payload) -> np.ndarray:
        try:
            if isinstance(payload, InferRequest):
                tensor = payload.get_input_by_name(FEATURES_INPUT)
                if tensor is None:
                    raise InvalidInput(f"input '{FEATURES_INPUT}' (FP64 [n, {len(self.columns)}]) is required")
                rows = np.asarray(tensor.as_numpy(), dtype=np.float64)
            elif isinstance(payload, dict) and isinstance(payload.get("instances"), list):
                rows = np.asarray(payload["instances"], dtype=np.float64)
            else:
                raise InvalidInput('expected V1 {"instances": [[...], ...]} or a V2 request')
        except InvalidInput:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"features must be numbers: {exc}") from exc
        width = len(self.columns) or rows.shape[-1]
        if rows.ndim != 2 or rows.shape[1] != width or rows.shape[0] == 0:
            raise InvalidInput(f"features must have shape [n, {width}], got {list(rows.shape)}")
        if not np.isfinite(rows).all():
            raise InvalidInput("features must be finite (no NaN or inf)")
        return rows

    async def predict(self, payload, headers=None, response_headers=None):
        rows = self._matrix(payload)
        scores = self.score(rows)
        spend = self.expected_spend(rows)
        if response_headers is not None:
            response_headers[VERSION_HEADER] = self.version
        if isinstance(payload, InferRequest):
            output = InferOutput(SCORE_OUTPUT, list(scores.shape), "FP64")
            output.set_data_from_numpy(scores, binary_data=False)
            outputs = [output]
            if spend is not None:
                amount, tier = InferOutput(SPEND_OUTPUT, [len(rows)], "FP64"), InferOutput(SPEND_TIER_OUTPUT,
                                                                                          [len(rows)], "BYTES")
                amount.set_data_from_numpy(spend[0], binary_data=False)
                tier.set_data_from_numpy(np.array([t.encode() for t in spend[1]], dtype=np.object_), binary_data=False)
                outputs += [amount, tier]
            return InferResponse(payload.id or "", self.name, outputs, model_version=self.version)
        answer = {"predictions": scores.tolist(), "model_name": self.registered_name, "model_version": self.version}
        if spend is not None:
            answer |= {SPEND_OUTPUT: spend[0].tolist(), SPEND_TIER_OUTPUT: spend[1].tolist()}
        return answer

    def get_input_types(self) -> list[dict]:
        return [{"name": FEATURES_INPUT, "datatype": "FP64", "shape": [-1, len(self.columns)],
                 "parameters": {"columns": ",".join(self.columns)}}]

    def get_output_types(self) -> list[dict]:
        spend = [] if self.spend is None else [{"name": SPEND_OUTPUT, "datatype": "FP64", "shape": [-1]},
                                               {"name": SPEND_TIER_OUTPUT, "datatype": "BYTES", "shape": [-1]}]
        return [{"name": SCORE_OUTPUT, "datatype": "FP64", "shape": [-1]}, *spend]


def main(argv: list[str] | None = None) -> None:
    import argparse

    from kserve import ModelServer, model_server
    from kserve.model_server import app

    from storeflow.components.config import load_settings
    from storeflow.serving.logs import quiet_logging
    from storeflow.serving.app import install_common

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", default=os.environ.get("STOREFLOW_MODEL_DIR", DEFAULT_MODEL_DIR))
    parser.add_argument("--model_version", default=os.environ.get("STOREFLOW_MODEL_VERSION"))
    parser.add_argument("--model_runtime", default=os.environ.get("STOREFLOW_MODEL_RUNTIME", "auto"),
                        choices=["auto", "treelite", "sklearn"])
    args, _ = parser.parse_known_args(argv)
    quiet_logging()
    model = StoreflowPredictor(args.model_name, args.model_dir, version=args.model_version,
                               runtime=args.model_runtime)
    model.load()
    print(f"storeflow predictor: {model.registered_name} v{model.version} scored by {model.scorer.runtime} "
          f"({model.scorer.reason})", flush=True)
    server = ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False,
                         enable_latency_logging=False)
    quiet_logging()  # ModelServer() re-applied KServe's logging config
    # No Shopify auth here (only the transformer calls it, inside the pod), but only the served routes,
    # the one error shape and the request logs; its requests are counted by the transformer.
    install_common(app, load_settings())
    server.start([model])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from storeflow.serving.predictor import main as _main  # the imported module, not this __main__ copy

    _main()
