"""The order risk path through stock KServe, for bench/risk_throughput.py's comparison row (issue 16: "in one run
beside the same path through stock KServe").

The server: KServe's ``ModelServer`` with a plain ``kserve.Model`` that loads the model file (``model.joblib``,
the registered estimator as a user would hand it to KServe's sklearn runtime) and answers V1
``{"instances": [[30 numbers], ...]}`` with ``{"predictions": [P(fraud), ...]}`` (``predict_proba``'s fraud column),
as KServe's sklearn server does. No storeflow serving code: no prediction log, no metrics of ours, no assessment.
KServe's own sklearnserver is shipped as a container image, not on PyPI, so this is its behaviour on the same
``ModelServer``, not its code.

    python bench/stock_kserve_risk.py --model_dir DIR --model_name NAME --http_port PORT

The receiver side (:func:`patch_receiver`): the same journal, live features, outbox and write-back as
``storeflow webhooks``; only the request to the risk server and the reading of its answer differ. The features go
as lists in the model's column order, and the level and facts the merchant sees are made from the returned score
in the receiver (``risk.assess.assessment`` with the model's cut points) instead of on the server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import kserve
import numpy as np

MODEL_FILE = "model.joblib"


class SklearnProba(kserve.Model):
    """P(class 1) of every instance, from a scikit-learn estimator in ``model_dir``/model.joblib."""

    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.model = None

    def load(self) -> bool:
        self.model = joblib.load(self.model_dir / MODEL_FILE)
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        instances = np.asarray(payload["instances"], dtype=np.float64)
        return {"predictions": self.model.predict_proba(instances)[:, 1].tolist()}


def export(model_dir: Path, out: Path) -> list[str]:
    """The registered risk estimator (an MLflow model directory) as the plain model file a stock server loads;
    returns its column order."""
    from storeflow.serving.predictor import load_estimator

    estimator = load_estimator(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, out / MODEL_FILE)
    return [str(c) for c in estimator.feature_names_in_]


def patch_receiver(columns: list[str], high: float, medium: float, version: str) -> None:
    """Make the receiver's risk scorer speak to the stock server: features as lists in ``columns`` order, the
    answer's scores turned into the assessment here."""
    from storeflow.components.risk.assess import Levels, assessment
    from storeflow.components.risk.live import order_id
    from storeflow.components.risk.protocol import MAX_INSTANCES
    from storeflow.components.risk.realtime import RiskScorer, ScoringUnavailable

    import httpx

    levels = Levels(high=high, medium=medium)

    def prepare(self, payloads):
        return self.history.features_many(payloads)  # by name: the assessment's facts name them

    def ask(self, payloads, rows):
        scores: list[float] = []
        for start in range(0, len(rows), MAX_INSTANCES):
            chunk = rows[start:start + MAX_INSTANCES]
            try:
                answer = self.http.post(self.url, json={"instances": [[row[c] for c in columns] for row in chunk]})
            except httpx.HTTPError as exc:
                raise ScoringUnavailable(f"stock risk server {self.url}: {exc}") from exc
            if answer.status_code != 200:
                raise ScoringUnavailable(f"stock risk server answered {answer.status_code}: {answer.text[:300]}")
            scores.extend(answer.json()["predictions"])
        out = []
        for payload, row, score in zip(payloads, rows, scores):
            level, facts = assessment(row, float(score), levels)
            out.append((int(order_id(payload)), level, facts, version))
        return out

    RiskScorer._prepare, RiskScorer._ask = prepare, ask  # _score_many and the scoring loop's passes both use them


def run_scorer(columns: list[str], high: float, medium: float, version: str, settings_json: str,
               receiver_pid: int | None = None, wake=None, writer_wake=None) -> None:
    """The receiver's scorer process (risk.scorer: process) speaking to the stock server (what
    ``functools.partial(run_scorer, columns, high, medium, version)`` gives the receiver's supervisor)."""
    from storeflow.components.risk import realtime

    patch_receiver(columns, high, medium, version)
    realtime.run_scorer(settings_json, receiver_pid, wake, writer_wake)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True)
    args, _ = parser.parse_known_args()
    model = SklearnProba(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(http_port=args.http_port, workers=1, enable_grpc=False).start([model])


if __name__ == "__main__":
    main()
