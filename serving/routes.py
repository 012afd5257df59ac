"""Which HTTP paths storeflow's servers answer (shared by ``storeflow serve`` and both cluster containers).

KServe registers more than serving needs, among them the model repository's control routes
(``POST /v2/repository/models/<name>/load|unload``) which take no credentials: one unauthenticated call
unloads the served model. So the servers answer only :data:`SERVED_PATH` (health, readiness, metadata,
inference, ``/metrics``) and 404 anything else, whatever KServe (or a later KServe) adds.
"""

from __future__ import annotations

import re

# Inference paths: these need Shopify credentials, are size-limited and counted in the request metrics.
INFER_PATH = re.compile(r"^/v1/models/[^/]+:(predict|explain)$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
# Version-pinned V2 paths (``/v2/models/<m>/versions/<v>[/infer|/ready]``).
VERSION_PATH = re.compile(r"^(/v2/models/[^/]+)/versions/([^/]+)(/infer|/ready)?$")
# The routes FastAPI should try first: inference.
HOT_ROUTES = ("/v2/models/{model_name}/infer", "/v1/models/{model_name}:predict")
SERVED_PATH = re.compile(
    r"^/(?:metrics"
    r"|v1/models(?:/[^/]+)?"  # list, readiness, :predict/:explain
    r"|v2(?:/health/(?:live|ready))?"
    r"|v2/models(?:/[^/]+(?:/versions/[^/]+)?(?:/ready|/infer)?)?"
    r")?$")


def is_inference(path: str) -> bool:
    return INFER_PATH.match(path) is not None


def is_served(path: str) -> bool:
    """Whether ``path`` is one of the routes storeflow serves; control and docs routes are not."""
    return SERVED_PATH.match(path) is not None
