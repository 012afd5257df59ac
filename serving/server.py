"""``storeflow serve``: a KServe ModelServer app for the registered model, on 127.0.0.1 unless told.

KServe's ``ModelServer.start`` always binds 0.0.0.0, so we let KServe build its FastAPI app (its
DataPlane, V1/V2 routes, error handlers) and run uvicorn on it ourselves, on ``serving.host``.
Around KServe's routes: only the routes serving needs (KServe's model repository control routes are
404), CORS for Shopify's extension CDN, Shopify auth scoped to the project's shop, a body-size limit,
version pinning (``/v2/models/<name>/versions/<v>/...``), our Prometheus metrics, JSON request logs and
one error shape (:mod:`storeflow.serving.errors`), 4xx for malformed input that KServe's decoders would
otherwise turn into 500s: :mod:`storeflow.serving.app` installs them, here and in the cluster's containers.

The parent resolves the MLflow alias/version and downloads the model (``import mlflow`` happens only
here); each uvicorn worker builds its app from that plan (env ``STOREFLOW_SERVING_PLAN``) without MLflow.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storeflow.components.config import Settings

from storeflow.components.heap import freeze_startup_objects
from storeflow.serving.logs import quiet_logging
from storeflow.serving.routes import HOT_ROUTES

PLAN_ENV = "STOREFLOW_SERVING_PLAN"


@dataclass
class ServedModel:
    version: str
    model_dir: str


@dataclass
class Plan:
    """What a worker serves; JSON in the environment so spawned workers need no MLflow."""

    settings_json: str
    model_name: str
    registered_name: str
    main_version: str
    models: list[ServedModel] = field(default_factory=list)
    canary_version: str | None = None
    canary_percent: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(**{**data, "models": [ServedModel(**m) for m in data["models"]]})


# -- plan (parent process) ------------------------------------------------------------------------------
def resolve(settings: Settings, version: str | None = None, alias: str | None = None,
            canary_version: str | None = None, canary_percent: int | None = None) -> Plan:
    """Find the served versions in the MLflow registry and download them under the state dir."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking

    cfg = settings.serving
    client = tracking.connect(settings)
    name = settings.registry.model_name
    version = version or cfg.model_version
    alias = alias or cfg.model_alias
    try:
        main = str(version) if version else str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise ValueError(f"no version of {name} has alias '{alias}' in {settings.tracking_uri}; "
                         "register a model first, or pass a version") from exc
    canary_version = canary_version if canary_version is not None else cfg.canary_version
    canary_percent = cfg.canary_percent if canary_percent is None else canary_percent
    served = []
    for v in dict.fromkeys([main, *([str(canary_version)] if canary_version else [])]):
        try:
            client.get_model_version(name, v)
        except MlflowException as exc:
            raise ValueError(f"{name} has no version {v} in {settings.tracking_uri}") from exc
        target = settings.project.state_dir / "serving" / "models" / name / v
        if not (target / "MLmodel").exists():
            target.mkdir(parents=True, exist_ok=True)
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{v}", dst_path=str(target))
                missing = "" if (target / "MLmodel").exists() else "no MLmodel file there"
            except (MlflowException, OSError) as exc:
                missing = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if missing:  # its files deleted or unreachable: a line naming where, not the server's traceback
                raise ValueError(f"{name} v{v}'s model could not be fetched from "
                                 f"{client.get_model_version_download_uri(name, v)}: {missing}")
        served.append(ServedModel(v, str(target)))
    return Plan(settings.to_json(), name, name, main, served,
                str(canary_version) if canary_version else None, canary_percent if canary_version else 0)


# -- app (each worker) ----------------------------------------------------------------------------------
def build_app(plan: Plan):
    """Load the models and return KServe's FastAPI app with storeflow's middlewares installed."""
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from storeflow.components.config import load_settings
    from storeflow.serving import metrics
    from storeflow.serving.app import install
    from storeflow.serving.features import OnlineFeatures
    from storeflow.serving.predictor import StoreflowPredictor
    from storeflow.serving.predlog import prediction_log
    from storeflow.serving.transformer import StoreflowTransformer

    _limit_threads()
    settings = load_settings(plan.settings_json)
    cfg = settings.serving
    quiet_logging(cfg.quiet)
    predictors = {}
    for served in plan.models:
        predictor = StoreflowPredictor(f"{plan.model_name}-v{served.version}", served.model_dir,
                                       version=served.version, registered_name=plan.registered_name,
                                       runtime=cfg.model_runtime)
        predictor.load()
        predictors[served.version] = predictor
        metrics.MODEL_INFO.labels(served.version, predictor.scorer.runtime).set(1)
        print(f"storeflow serve: {plan.registered_name} v{served.version} scored by {predictor.scorer.runtime}"
              f" ({predictor.scorer.reason})", file=sys.stderr, flush=True)
    transformer = StoreflowTransformer(
        plan.model_name, OnlineFeatures(settings), predictors, main_version=plan.main_version,
        canary_version=plan.canary_version, canary_percent=plan.canary_percent,
        registered_name=plan.registered_name, prediction_log=prediction_log(settings),
        max_instances=cfg.max_instances, batch_max_rows=cfg.batch_max_size,
        batch_max_wait_s=cfg.batch_max_wait_ms / 1000, score_memo_rows=cfg.score_memo_rows)
    server = ModelServer(http_port=cfg.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    # ModelServer() re-applies KServe's logging config (uvicorn.access at INFO with a handler): quiet it again.
    # In a ``--workers`` > 1 worker uvicorn has configured logging before this factory runs, so nothing
    # else would turn the access log back off (it cost ~10% of a worker's CPU).
    quiet_logging(cfg.quiet)
    server.register_model(transformer)
    transformer.enable_latency_logging = False
    install(server, settings, served_versions=transformer.versions)
    RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
               cfg.port).create_application()
    if cfg.quiet:
        # KServe's TimingMiddleware only writes a log line per request.
        app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ != "TimingMiddleware"]
    _hot_routes_first(app.router)
    import atexit

    atexit.register(transformer.stop)
    app.state.storeflow = transformer
    # Feast, KServe, pandas and the model leave millions of long-lived objects; a full GC pass over them
    # stalls a worker for hundreds of ms under load. Freeze them out of the collector's view.
    freeze_startup_objects()
    return app


def _hot_routes_first(router) -> None:
    """Same routes, inference first: FastAPI tries them in order and KServe registers ~40."""

    def rank(route) -> int:
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            _hot_routes_first(inner)
            return 0 if any(getattr(r, "path", "") in HOT_ROUTES for r in inner.routes) else 1
        return 0 if getattr(route, "path", "") in HOT_ROUTES else 1

    router.routes[:] = sorted(router.routes, key=rank)


def worker_app():
    """uvicorn factory for ``--workers`` > 1."""
    return build_app(Plan.from_json(os.environ[PLAN_ENV]))


def _limit_threads() -> None:
    # One OpenMP thread per worker: HistGradientBoosting's thread pool stalls for up to seconds under load.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _uvicorn_options(cfg) -> dict:
    import importlib.util

    # proxy_headers off: nothing here reads the client address, and the rewrite costs every request.
    return dict(host=cfg.host, port=cfg.port, log_config=None, access_log=not cfg.quiet, timeout_keep_alive=65,
                proxy_headers=False,
                loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                http="httptools" if importlib.util.find_spec("httptools") else "h11")


def serve(settings: Settings, *, version: str | None = None, alias: str | None = None,
          canary_version: str | None = None, canary_percent: int | None = None, host: str | None = None,
          port: int | None = None, workers: int | None = None, plan: Plan | None = None,
          ready_file: Path | None = None) -> None:
    """Serve until interrupted. ``canary_version``/``canary_percent`` add a sticky canary split."""
    import uvicorn

    updates = {k: v for k, v in dict(host=host, port=port, workers=workers).items() if v is not None}
    if updates:
        serving = type(settings.serving).model_validate({**settings.serving.model_dump(), **updates})
        settings = settings.model_copy(update={"serving": serving})
    cfg = settings.serving
    if cfg.auth == "shopify":
        from storeflow.components.shopify.verify import ShopifyVerifier

        ShopifyVerifier.from_settings(settings)  # fail here, once, with the reason
    _own_metrics_dir()
    plan = plan or resolve(settings, version, alias, canary_version, canary_percent)
    plan.settings_json = settings.to_json()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    options = _uvicorn_options(cfg)
    if cfg.workers == 1:
        config = uvicorn.Config(build_app(plan), **options)
        server = uvicorn.Server(config)
        _announce(config, server, ready_file)
        server.run()
        return
    os.environ[PLAN_ENV] = plan.to_json()
    uvicorn.run("storeflow.serving.server:worker_app", factory=True, workers=cfg.workers,
                timeout_worker_healthcheck=180, **options)  # workers import Feast and load models: slow to answer


def _own_metrics_dir() -> None:
    """A fresh Prometheus multiprocess directory for this server and its workers.

    ``/metrics`` sums every file in that directory. One inherited from the parent process (Feast sets
    one on import, so any Python that imported Feast hands it down) holds the files of servers that ran
    before, e.g. the previous step of a local canary, whose counts would then be read as this server's.
    """
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="storeflow-metrics-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = path


def _announce(config, server, ready_file: Path | None) -> None:
    if ready_file is None:
        return
    # Tests and scripts wait for this file instead of polling the port.
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        Path(ready_file).write_text(f"http://{config.host}:{config.port}")

    server.startup = startup
