"""Product recommendations over KServe (issue 15): the registered recommender (MLflow alias ``champion`` of
``recommendations.model_name``) as a KServe ``Model`` on a server of its own, behind what every storeflow
server has (Shopify auth, body limit, only the served routes, one error shape, request metrics:
:func:`storeflow.serving.app.install`).

A request is a basket: the products of a cart or a product page (``gid://shopify/Product/…`` or numbers);
the answer is up to ``k`` product gids, best first, never one already in the basket nor one the store
has unpublished or sold out (:mod:`storeflow.components.recommend.availability`, kept current by webhooks).
Where the similarities run out (a rarely bought product, much sold out) the rest are the best sellers of the
basket's categories and price bands, the model's product features from Feast; a basket product the model never
saw (created after training) gets its category and band from the Feast online store (view ``product_catalog``,
:mod:`storeflow.components.recommend.catalog`), so a new product's page still gets its category's best sellers.

* V1 ``POST /v1/models/<name>:predict``: ``{"instances": [{"products": ["gid://shopify/Product/1"], "k": 5}]}``
  → ``{"predictions": [{"products": ["gid://shopify/Product/7", …], "items": [{"id": "gid://shopify/Product/7",
  "title": "Sencha 100g", "handle": "sencha-100g"}, …]}]}`` (one answer per instance; title and handle are
  null for a product no products webhook described yet).
* V2 ``POST /v2/models/<name>/infer``: input ``products`` BYTES or INT64 ``[m]`` (one basket), optional
  parameter ``k`` → output ``products`` BYTES ``[≤ k]``.
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from storeflow.components.heap import freeze_startup_objects
from storeflow.components.recommend.availability import LiveCatalog, ProductState, ensure_view
from storeflow.components.recommend.model import ItemItem, Neighbours
from storeflow.serving.errors import AnswersOneVersion
from storeflow.serving.predlog import PredictionLog, now_iso
from storeflow.serving.http import FlatRoute
from storeflow.serving.protocol import VERSION_HEADER
from storeflow.serving.v1 import v1_request
from storeflow.serving.v2 import check_json_data, check_outputs

if TYPE_CHECKING:
    from storeflow.components.config import Settings

PRODUCT_GID = "gid://shopify/Product/"
MAX_BASKET = 250  # a Shopify cart holds at most 250 lines
MAX_INSTANCES = 64
MAX_K = 50


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


class RecommenderModel(AnswersOneVersion, Model):
    """KServe's contract: ``load`` the item-item model, ``preprocess`` a request into baskets, ``predict``
    the recommendations, ``postprocess`` them into the protocol the request came in."""

    def __init__(self, name: str, model_dir: Path, version: str, k: int,
                 catalog: Callable[[list[int]], LiveCatalog] | None = None, log: PredictionLog | None = None,
                 describe: Callable[[list[int]], dict[int, tuple[str, int]]] | None = None):
        super().__init__(name, return_response_headers=True)  # the answering version goes back as a header
        self.model_dir, self.version, self.k = Path(model_dir), version, k
        self.model: ItemItem | None = None
        self.neighbours: Neighbours | None = None
        # What the store says of the model's products (Feast online store): which are hidden, their titles
        # and handles; built on load for the model's products (availability_catalog).
        self._catalog_for = catalog
        self.catalog: LiveCatalog | None = None
        self.log = log  # each answer, with the request id feedback events name (serving.recommend_feedback)
        # (category, price band) of products the model never saw, from the online store (catalog.lookup_online)
        self.describe = describe

    def load(self) -> bool:
        found = sorted(self.model_dir.rglob("similarity.npz"))
        if not found:
            raise FileNotFoundError(f"{self.model_dir} holds no recommender (similarity.npz)")
        self.model = ItemItem.load(found[0].parent)
        self.neighbours = Neighbours(self.model)
        if self._catalog_for is not None:
            self.catalog = self._catalog_for(self.neighbours.products.tolist())
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
        check_outputs(request, ["products"])
        inputs = {tensor.name: tensor for tensor in request.inputs}
        if set(inputs) != {"products"}:
            raise InvalidInput("one input named 'products' (BYTES or INT64 [m]: the basket's product ids)")
        tensor = inputs["products"]
        if tensor.datatype not in ("BYTES", "INT64"):
            raise InvalidInput(f"input 'products' must be BYTES or INT64, got {tensor.datatype}")
        check_json_data(tensor)
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
        # The registered model's ranking without the basket's and the hidden (unpublished, sold out) products:
        # one in-memory mask, kept current in the background (LiveCatalog); nothing here waits on I/O.
        catalog = self.catalog
        hidden, known = (catalog.hidden, catalog.cards) if catalog is not None else (None, {})
        neighbours = self.neighbours
        shown = []
        for basket, k in baskets:
            described = None
            if self.describe is not None and neighbours.model.categories is not None:
                new = neighbours.unknown(basket)  # only a basket with a product created since training asks Feast
                described = self.describe(new) if new else None
            shown.append(neighbours.recommend(basket, k, hidden, described))
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


_V1_PREDICT = re.compile(r"^/v1/models/([^/]+):predict$")
_BINARY_CE = b"ce-specversion"  # a binary CloudEvent: KServe's decode reads its headers


class FlatV1(FlatRoute):
    """Outermost: a well-formed, authorized V1 ``:predict`` of the recommender straight to the model, as
    :class:`storeflow.serving.http.FlatV2` does for V2 (read its docstring): the same steps as the stack in
    one function, calling the same code: Shopify auth (:meth:`ShopifyAuthMiddleware.authorize`, the same
    verifier and token cache), KServe's DataPlane (readiness, ``decode``, ``infer``: the model's preprocess,
    predict and postprocess, ``encode``), KServe's ``ORJSONResponse`` for the body V1Endpoints answers with,
    and the request metrics (:class:`storeflow.serving.http.RequestMeter`).

    A storefront's recommendation request is V1 JSON (the theme block and the checkout extension send it),
    and the ~10 ASGI layers and FastAPI routing it crossed were half of a worker's time per answer once
    the model itself took 50 us. Anything else goes down the stack untouched (another path or method, an
    ``Origin``, a body without a declared length or over the limit, a CloudEvent), and so does any request
    whose answer would not be a 200 (failed auth, a bad body, a model error): its body is replayed to the
    stack, which answers it as it always did.
    """

    route = _V1_PREDICT
    passthrough = (*FlatRoute.passthrough, _BINARY_CE)

    def is_json(self, content_type: bytes) -> bool:
        return content_type.split(b";", 1)[0].strip().lower() == b"application/json"

    async def _answer(self, scope, model_name: str, body: bytes):
        """(the 200 response, answering version) as V1Endpoints.predict builds it, or None: the stack answers."""
        from fastapi.responses import ORJSONResponse

        raw = self.auth.authorize(scope) if self.auth is not None else scope["headers"]
        headers: dict[str, str] = {}
        for key, value in raw:  # Starlette's dict(request.headers.items()): lower-case keys, the last value wins
            headers[key.decode("latin-1")] = value.decode("latin-1")
        dataplane = self.dataplane
        if not await dataplane.model_ready(model_name, True):
            return None
        request, attributes = dataplane.decode(body=body, headers=headers)
        response, response_headers = await dataplane.infer(model_name=model_name, request=request, headers=headers)
        response, encoded = dataplane.encode(model_name=model_name, response=response, headers=headers,
                                             req_attributes=attributes)
        if not isinstance(response, dict):  # bytes, a stream: what this model never answers; the stack does
            return None
        response_headers.update(encoded)
        response_headers.pop("content-length", None)
        answer = ORJSONResponse(content=response, headers=response_headers)
        return answer.raw_headers, answer.body, response_headers.get(VERSION_HEADER, "none")


def install_flat_v1(app, server, settings: Settings) -> None:
    """Add :class:`FlatV1` outermost, with the Shopify check :func:`storeflow.serving.app.install` gave the flat
    V2 route (same verifier, same token cache). Not with ``serving.request_log`` on: every request must pass
    the observer then, as :func:`storeflow.serving.app.install` does for V2."""
    from storeflow.serving.http import FlatV2

    flat_v2 = [m for m in app.user_middleware if m.cls is FlatV2]
    if settings.serving.request_log or not flat_v2:
        return
    app.add_middleware(FlatV1, dataplane=server.dataplane, max_bytes=settings.serving.max_body_bytes,
                       auth=flat_v2[0].kwargs.get("auth"))


def _lean(app, settings: Settings) -> None:
    """What ``storeflow serve`` drops and freezes (:func:`storeflow.serving.server.build_app`): KServe's
    TimingMiddleware (a log line per request) when quiet, and the loaded objects out of the collector's view
    (a full GC pass over Feast's, KServe's and the model's objects stalls a worker under load)."""
    if settings.serving.quiet:
        app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ != "TimingMiddleware"]
    freeze_startup_objects()


def resolve(settings: Settings, alias: str = "champion", version: str | None = None) -> tuple[str, Path]:
    """The registered version at ``alias`` (or ``version`` itself) and its files, downloaded under the state
    dir once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking

    name = settings.recommendations.model_name
    client = tracking.connect(settings)
    try:
        version = str(client.get_model_version(name, version).version if version is not None
                      else client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        which = f"version {version}" if version is not None else f"a version with alias '{alias}'"
        raise ValueError(f"{name} has no {which} in {settings.tracking_uri}; run "
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


def availability_catalog(settings: Settings) -> Callable[[list[int]], LiveCatalog]:
    """For a model's products, their availability, titles and handles from the Feast online store (view
    ``product_availability``, written by the products and inventory webhooks), held in memory and kept
    current every ``recommendations.availability_refresh_seconds``."""
    from storeflow.components.features.repo import feature_store

    store = feature_store(settings)
    ensure_view(store, settings)  # registered before the first products webhook: no stale registry cache here
    refresh = settings.recommendations.availability_refresh_seconds
    return lambda products: LiveCatalog(store, products, refresh).start()


def product_catalog(settings: Settings) -> Callable[[list[int]], dict[int, tuple[str, int]]]:
    """(category, price band) of products from the Feast online store's ``product_catalog`` view (the
    recommendations pipeline's product_features task materializes it); none known before the view exists."""
    from feast.errors import FeatureViewNotFoundException

    from storeflow.components.features.repo import feature_store
    from storeflow.components.recommend.catalog import lookup_online

    store = feature_store(settings)

    def describe(product_ids: list[int]) -> dict[int, tuple[str, int]]:
        try:
            return lookup_online(store, product_ids)
        except FeatureViewNotFoundException:  # no recommendations pipeline has run here: no category known
            return {}

    return describe


def feedback_logs(settings: Settings) -> tuple[PredictionLog | None, PredictionLog | None]:
    """(answers, feedback events) logs under the state dir; none when ``serving.prediction_log`` is off. With
    ``serving.prediction_log_store`` set, each closed file is shipped to its ``recommendations/predictions`` or
    ``recommendations/feedback`` folder there (and deleted here), as the propensity prediction log is: the
    replicas and the monitoring pipeline share the object store, not a volume."""
    from storeflow.components.recommend.feedback import log_store, local_log_dir

    if not settings.serving.prediction_log:
        return None, None
    cfg = settings.serving
    return tuple(PredictionLog(local_log_dir(settings.project.state_dir, kind), cfg.prediction_log_queue,
                               cfg.prediction_log_rotate_bytes, cfg.prediction_log_keep_files,
                               log_store(settings, kind), cfg.prediction_log_ship_seconds)
                 for kind in ("predictions", "feedback"))


def _assemble(settings: Settings, model: RecommenderModel, server, version: str, port: int,
              feedback: PredictionLog | None):
    """KServe's FastAPI app for a loaded recommender on ``server`` (a ``ModelServer``), with storeflow's routes
    and middlewares, the feedback route, the flat V1 path, and without KServe's per-request timing log."""
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from storeflow.serving.app import install
    from storeflow.serving.recommend_feedback import install_feedback

    server.register_model(model)
    install(server, settings, served_versions=[version])
    install_feedback(app, settings, [version], feedback)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port)
    rest.create_application()
    install_flat_v1(app, server, settings)
    _lean(app, settings)
    return app, rest


def build_app(settings: Settings, version: str, model_dir: Path):
    """KServe's FastAPI app serving the recommender, with storeflow's middlewares."""
    from kserve import ModelServer

    cfg = settings.serving
    answers, feedback = feedback_logs(settings)
    model = RecommenderModel(settings.recommendations.model_name, model_dir, version, settings.recommendations.k,
                             availability_catalog(settings), answers, product_catalog(settings))
    model.load()
    server = ModelServer(http_port=cfg.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    app, _ = _assemble(settings, model, server, version, cfg.port, feedback)
    print(f"storeflow serve-recommendations: {model.name} v{version}, {len(model.model.products):,} products",
          file=sys.stderr, flush=True)
    return app


def main(argv: list[str] | None = None) -> None:
    """The InferenceService's one container (``python -m storeflow.serving.recommender --model_name <isvc>``):
    the model version KServe's storage initializer put in ``/mnt/models``, behind the same Shopify auth,
    routes and metrics as ``storeflow serve-recommendations`` (no transformer: a basket needs no features).

    One worker (the default) runs the app :func:`_assemble` builds on KServe's uvicorn configuration (its port,
    keep-alive, grace period and event loop; no TLS, which the ingress gateway terminates); with
    ``--workers`` > 1, KServe's ``ModelServer.start`` builds the app in each worker, without the flat path."""
    import argparse
    import os

    import uvicorn
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
                             availability_catalog(settings), answers, product_catalog(settings))
    model.load()
    print(f"storeflow recommender: {model.name} v{version}, {len(model.model.products):,} products", flush=True)
    server = ModelServer(http_port=args.http_port, workers=args.workers, enable_grpc=False,
                         enable_latency_logging=False)
    quiet_logging()  # ModelServer() re-applied KServe's logging config
    if args.workers > 1:
        install(server, settings, served_versions=[version])
        install_feedback(app, settings, [version], feedback)
        server.start([model])
        return
    _, rest = _assemble(settings, model, server, version, args.http_port, feedback)
    uvicorn.Server(rest.config).run()


if __name__ == "__main__":
    from storeflow.serving.recommender import main as _main  # the imported module, not this __main__ copy

    _main()
