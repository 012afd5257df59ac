"""What storeflow adds to KServe's FastAPI app in every server that answers callers: ``storeflow serve``
(:mod:`storeflow.serving.server`) and the cluster's transformer and predictor containers (their
``main``): routes, error handlers and middlewares, installed before the server starts.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from storeflow.serving.protocol import VERSION_HEADER
from storeflow.serving.routes import is_inference

if TYPE_CHECKING:
    from storeflow.components.config import Settings


def install(server, settings: Settings, served_versions: list[str] | None) -> None:
    """Add storeflow's routes, error handlers and middlewares to KServe's app (before it starts); outermost,
    :class:`storeflow.serving.http.FlatV2` answers plain V2 infer requests without the stack."""
    from kserve.model_server import app
    from starlette.middleware.cors import CORSMiddleware

    from storeflow.components.shopify.verify import shop_domain
    from storeflow.serving.http import (
        FlatV2,
        VersionPathMiddleware,
        metrics_route,
        v2_infer_route,
    )

    cfg = settings.serving
    auth = None
    # Registered before KServe's own /metrics, so ours (multiprocess-aware) answers.
    app.add_api_route("/metrics", metrics_route, methods=["GET"], include_in_schema=False)
    # Ahead of KServe's own V2 infer route (same handler, see storeflow.serving.http): first match wins.
    app.add_route("/v2/models/{model_name}/infer", v2_infer_route(server.dataplane, server.model_repository_extension),
                  methods=["POST"], include_in_schema=False)
    # Added innermost first: the request passes CORS → observer → size limit → auth → version pin.
    app.add_middleware(VersionPathMiddleware, served_versions=served_versions)
    if cfg.auth == "shopify":
        from storeflow.components.shopify.verify import ShopifyVerifier
        from storeflow.serving.auth import ShopifyAuthMiddleware

        verifier = ShopifyVerifier.from_settings(settings)
        data_shop = shop_domain(settings.project.shop_domain)
        if data_shop not in verifier.allowed_shops:
            print(f"storeflow: serving.allowed_shops does not include project.shop_domain {data_shop}, the shop "
                  "whose data is served: every caller will be refused (403 other_shop)", file=sys.stderr, flush=True)
        app.add_middleware(ShopifyAuthMiddleware, verifier=verifier, protect=is_inference, data_shop=data_shop,
                           customer_scope=cfg.customer_scope)
        auth = ShopifyAuthMiddleware(None, verifier=verifier, protect=is_inference, data_shop=data_shop,
                                     customer_scope=cfg.customer_scope)  # FlatV2's check: the same verifier
    install_common(app, settings, meter=is_inference, max_body_bytes=cfg.max_body_bytes)
    app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
                       expose_headers=[VERSION_HEADER], max_age=7200)
    if not cfg.request_log:  # a log line for every request is the observer's: every request passes it then
        app.add_middleware(FlatV2, dataplane=server.dataplane, max_bytes=cfg.max_body_bytes, auth=auth)


def install_common(app, settings: Settings, meter=None, max_body_bytes: int | None = None) -> None:
    """What every storeflow server has, the cluster predictor too: only the served routes, the one error
    shape, request metrics (for the paths ``meter`` selects) and JSON request logs; with ``max_body_bytes``, 413
    for a larger inference body before anything parses it (inside the observer, which counts and logs the 413)."""
    from storeflow.serving.http import BodyLimitMiddleware, RequestObserver, install_error_handlers

    install_error_handlers(app)
    if max_body_bytes is not None:
        app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, protect=is_inference)
    app.add_middleware(RequestObserver, meter=meter, request_log=settings.serving.request_log)
