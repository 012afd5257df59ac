"""Product recommendations over KServe (issue 15): the registered recommender (MLflow alias ``champion`` of
``recommendations.model_name``) as a KServe ``Model`` on a server of its own, behind what every storeflow
server has (Shopify auth, body limit, only the served routes, one error shape, request metrics:
:func:`storeflow.serving.app.install`).

A request is a basket: the products of a cart or a product page (``gid://shopify/Product/…`` or numbers);
the answer is up to ``k`` product gids, best first, never one already in the basket nor one the store
has unpublished or sold out (:mod:`storeflow.components.recommend.availability`, kept current by webhooks).

* V1 ``POST /v1/models/<name>:predict``: ``{"instances": [{"products": ["gid://shopify/Product/1"], "k": 5}]}``
  → ``{"predictions": [{"products": ["gid://shopify/Product/7", …], "items": [{"id": "gid://shopify/Product/7",
  "title": "Sencha 100g", "handle": "sencha-100g"}, …]}]}`` (one answer per instance; title and handle are
  null for a product no products webhook described yet).
* V2 ``POST /v2/models/<name>/infer``: input ``products`` BYTES or INT64 ``[m]`` (one basket), optional
  parameter ``k`` → output ``products`` BYTES ``[≤ k]``.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from storeflow.components.recommend.availability import OnlineLookup, ProductState, ensure_view
from storeflow.components.recommend.model import ItemItem
from storeflow.serving.predlog import PredictionLog, now_iso
from storeflow.serving.protocol import VERSION_HEADER
from storeflow.serving.v1 import v1_request

if TYPE_CHECKING:
    from storeflow.components.config import Settings

PRODUCT_GID = "gid://shopify/Product/"
MAX_BASKET = 250  # a Shopify cart holds at most 250 lines
MAX_INSTANCES = 64
MAX_K = 50
CANDIDATES_PER_SLOT = 4  # candidates ranked per product asked for, before unavailable ones are dropped


def product_id(value) -> int:
    """A product gid or its number; anything else is the caller's error."""
    text = str(value.decode() if isinstance(value, bytes) else value)
    number = text.removeprefix(PRODUCT_GID)
    if not (number.isascii() and number.isdigit()) or len(number) > 19:
        raise InvalidInput(f"{text[:80]!r} is not a product id (gid://shopify/Product/<number> or the number)")
    return int(number)


def _k(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidInput(f"k must be an integer from 1 to {MAX_K}")
    return value


class RecommenderModel(Model):
    """KServe's contract: ``load`` the item-item model, ``preprocess`` a request into baskets, ``predict``
    the recommendations, ``postprocess`` them into the protocol the request came in."""

    def __init__(self, name: str, model_dir: Path, version: str, k: int,
                 catalog: Callable[[list[int]], dict[int, ProductState]] | None = None, log: PredictionLog | None = None):
        super().__init__(name, return_response_headers=True)  # the answering version goes back as a header
        self.model_dir, self.version, self.k = Path(model_dir), version, k
        self.model: ItemItem | None = None
        # What the store said of the products asked about (Feast online store): available, title, handle.
        self.catalog = catalog or (lambda products: {})
        self.log = log  # each answer, with the request id feedback events name (serving.recommend_feedback)

    def load(self) -> bool:
        found = sorted(self.model_dir.rglob("similarity.npz"))
        if not found:
            raise FileNotFoundError(f"{self.model_dir} holds no recommender (similarity.npz)")
        self.model = ItemItem.load(found[0].parent)
        self.ready = True
        return True

    async def preprocess(self, payload, headers=None) -> tuple[bool, list[tuple[list[int], int]]]:
        if isinstance(payload, InferRequest):
            return True, [self._parse_v2(payload)]
        return False, self._parse_v1(payload)

    def _parse_v1(self, payload) -> list[tuple[list[int], int]]:
        instances = v1_request(payload, '{"instances": [{"products": ["gid://shopify/Product/1"], "k": 10}]}')[
            "instances"]
        if not 1 <= len(instances) <= MAX_INSTANCES:
            raise InvalidInput(f"send 1 to {MAX_INSTANCES} instances per request, got {len(instances)}")
        baskets = []
        for i, item in enumerate(instances):
            if not isinstance(item, dict) or not isinstance(item.get("products"), list):
                raise InvalidInput(f"instances[{i}] must be an object with a products list")
            if extra := set(item) - {"products", "k"}:
                raise InvalidInput(f"instances[{i}] has unknown field(s): {', '.join(sorted(map(str, extra)))}")
            baskets.append((self._basket(item["products"], f"instances[{i}].products"), _k(item.get("k"), self.k)))
        return baskets

    def _parse_v2(self, request: InferRequest) -> tuple[list[int], int]:
        inputs = {tensor.name: tensor for tensor in request.inputs}
        if set(inputs) != {"products"}:
            raise InvalidInput("one input named 'products' (BYTES or INT64 [m]: the basket's product ids)")
        tensor = inputs["products"]
        if tensor.datatype not in ("BYTES", "INT64"):
            raise InvalidInput(f"input 'products' must be BYTES or INT64, got {tensor.datatype}")
        try:
            values = list(tensor.data) if tensor.datatype == "BYTES" else tensor.as_numpy().reshape(-1).tolist()
        except Exception as exc:  # noqa: BLE001 - numpy says many things about bad data
            raise InvalidInput(f"input 'products' does not match its datatype and shape: {exc}") from exc
        k = (request.parameters or {}).get("k")
        return self._basket(values, "products"), _k(getattr(k, "int64_param", k), self.k)

    @staticmethod
    def _basket(values: list, where: str) -> list[int]:
        if not 1 <= len(values) <= MAX_BASKET:
            raise InvalidInput(f"{where} must hold 1 to {MAX_BASKET} products, got {len(values)}")
        return [product_id(value) for value in values]

    async def predict(self, request, headers=None, response_headers=None):
        v2, baskets = request
        if response_headers is not None:  # KServe hands response headers to predict, not postprocess
            response_headers[VERSION_HEADER] = self.version
        # Ranked beyond k, so that dropping unpublished and out-of-stock products still leaves k; one
        # availability lookup for every candidate of the request.
        ranked = [self.model.recommend(basket, k * CANDIDATES_PER_SLOT) for basket, k in baskets]
        known = self.catalog(sorted({p for products in ranked for p in products}))
        shown = [[p for p in products if p not in known or known[p].available][:k]
                 for products, (_, k) in zip(ranked, baskets)]
        return v2, shown, known, baskets

    async def postprocess(self, result, headers=None, response_headers=None):
        v2, recommended, known, baskets = result
        request_id = uuid.uuid4().hex
        if self.log is not None:
            stamp = now_iso()
            self.log.append([{"ts": stamp, "request_id": request_id, "model_name": self.name,
                              "model_version": self.version, "basket": basket, "products": products}
                             for (basket, _), products in zip(baskets, recommended)])
        gids = [[f"{PRODUCT_GID}{p}" for p in products] for products in recommended]
        if v2:
            output = InferOutput("products", [len(gids[0])], "BYTES", gids[0])
            return InferResponse(response_id=request_id, model_name=self.name, model_version=self.version,
                                 infer_outputs=[output])
        return {"predictions": [{"products": products, "items": [_card(p, known.get(p)) for p in ids]}
                                for products, ids in zip(gids, recommended)], "model_version": self.version,
                "request_id": request_id}


def resolve(settings: Settings, alias: str = "champion") -> tuple[str, Path]:
    """The registered version at ``alias`` and its files, downloaded under the state dir once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking

    name = settings.recommendations.model_name
    client = tracking.connect(settings)
    try:
        version = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise ValueError(f"no version of {name} has alias '{alias}' in {settings.tracking_uri}; run "
                         "`storeflow run --pipeline recommendations` first") from exc
    target = settings.project.state_dir / "serving" / "models" / name / version
    if not any(target.rglob("similarity.npz")):
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(target))
    return version, target


def _card(product: int, state: ProductState | None) -> dict:
    """What a storefront block needs to show a product: its gid, and its title and handle when known."""
    return {"id": f"{PRODUCT_GID}{product}", "title": state.title if state else None,
            "handle": state.handle if state else None}


def availability_lookup(settings: Settings) -> Callable[[list[int]], dict[int, ProductState]]:
    """Availability, title and handle of some product ids, read from the Feast online store (view
    ``product_availability``, written by the products and inventory webhooks)."""
    from storeflow.components.features.repo import feature_store

    store = feature_store(settings)
    ensure_view(store, settings)  # registered before the first products webhook: no stale registry cache here
    return OnlineLookup(store)


def feedback_logs(settings: Settings) -> tuple[PredictionLog | None, PredictionLog | None]:
    """(answers, feedback events) logs under the state dir; none when ``serving.prediction_log`` is off."""
    from storeflow.serving.recommend_feedback import logs

    if not settings.serving.prediction_log:
        return None, None
    cfg = settings.serving
    return tuple(PredictionLog(directory, cfg.prediction_log_queue, cfg.prediction_log_rotate_bytes,
                               cfg.prediction_log_keep_files) for directory in logs(settings.project.state_dir))


def build_app(settings: Settings, version: str, model_dir: Path):
    """KServe's FastAPI app serving the recommender, with storeflow's middlewares."""
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from storeflow.serving.app import install
    from storeflow.serving.recommend_feedback import install_feedback

    cfg = settings.serving
    answers, feedback = feedback_logs(settings)
    model = RecommenderModel(settings.recommendations.model_name, model_dir, version, settings.recommendations.k,
                             availability_lookup(settings), answers)
    model.load()
    server = ModelServer(http_port=cfg.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    server.register_model(model)
    install(server, settings, served_versions=[version])
    install_feedback(app, settings, [version], feedback)
    RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
               cfg.port).create_application()
    print(f"storeflow serve-recommendations: {model.name} v{version}, {len(model.model.products):,} products",
          file=sys.stderr, flush=True)
    return app


def main(argv: list[str] | None = None) -> None:
    """The InferenceService's one container (``python -m storeflow.serving.recommender --model_name <isvc>``):
    the model version KServe's storage initializer put in ``/mnt/models``, behind the same Shopify auth,
    routes and metrics as ``storeflow serve-recommendations`` (no transformer: a basket needs no features)."""
    import argparse
    import os

    from kserve import ModelServer, model_server
    from kserve.model_server import app

    from storeflow.components.config import load_settings
    from storeflow.serving.app import install
    from storeflow.serving.recommend_feedback import install_feedback
    from storeflow.serving.logs import quiet_logging
    from storeflow.serving.predictor import DEFAULT_MODEL_DIR, registered_version

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", default=os.environ.get("STOREFLOW_MODEL_DIR", DEFAULT_MODEL_DIR))
    parser.add_argument("--model_version", default=os.environ.get("STOREFLOW_MODEL_VERSION"))
    args, _ = parser.parse_known_args(argv)
    quiet_logging()
    settings = load_settings()
    version = args.model_version or registered_version(Path(args.model_dir))[1]
    if not version:
        raise SystemExit(f"no model version: set STOREFLOW_MODEL_VERSION (the deploy step does) or --model_version; "
                         f"{args.model_dir} has no registered_model_meta")
    answers, feedback = feedback_logs(settings)
    model = RecommenderModel(args.model_name, Path(args.model_dir), version, settings.recommendations.k,
                             availability_lookup(settings), answers)
    model.load()
    print(f"storeflow recommender: {model.name} v{version}, {len(model.model.products):,} products", flush=True)
    server = ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False,
                         enable_latency_logging=False)
    quiet_logging()  # ModelServer() re-applied KServe's logging config
    install(server, settings, served_versions=[version])
    install_feedback(app, settings, [version], feedback)
    server.start([model])


if __name__ == "__main__":
    from storeflow.serving.recommender import main as _main  # the imported module, not this __main__ copy

    _main()
