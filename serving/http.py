"""ASGI pieces around KServe's routes: request metrics, body limit, version pinning, 4xx handlers.

Also :func:`v2_infer_route`: KServe's own V2 infer handler (``V2Endpoints.infer``: DataPlane decode,
``Model.__call__``, encode) registered as a plain route. FastAPI's APIRoute would solve five
dependencies (path, query, header, cookie and body params) for it on every request; this route reads
the body and validates it against KServe's ``InferenceRequest`` model the way FastAPI does (same
``json`` parser, same 422 answers), and hands the rest to KServe unchanged.
"""

from __future__ import annotations

import json
import time
from typing import Union

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from storeflow.serving import metrics
from storeflow.serving.auth import send_json
from storeflow.serving.transformer import PIN_HEADER, VERSION_HEADER

_VERSION_HEADER = VERSION_HEADER.encode()


async def metrics_route(request: Request) -> Response:
    body, content_type = metrics.exposition_body(request.headers.get("accept"))
    return Response(content=body, headers={"content-type": content_type})


async def unknown_version_handler(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": str(exc)})


async def forbidden_customer_handler(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=403, content={"error": f"forbidden: {exc}"})


async def predictor_unavailable_handler(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"retry-after": "1"})


async def bad_request_handler(_: Request, exc: Exception) -> JSONResponse:
    # Raised while KServe decodes a malformed body (bad binary header, shape/data mismatch...).
    return JSONResponse(status_code=400, content={"error": f"malformed request: {type(exc).__name__}: {exc}"})


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("application/") and (kind.endswith("/json") or kind.endswith("+json"))


def v2_infer_route(dataplane, model_repository_extension=None):
    """An endpoint for ``/v2/models/{model_name}/infer`` calling KServe's V2 handler without FastAPI's DI."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import ORJSONResponse
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from kserve.protocol.rest.v2_endpoints import V2Endpoints
    from pydantic import TypeAdapter, ValidationError

    endpoints = V2Endpoints(dataplane, model_repository_extension)
    body_type = TypeAdapter(Union[InferenceRequest, bytes])  # KServe's declared body type

    async def infer(request: Request) -> Response:
        body = await request.body()
        payload = body
        if body and _is_json(request.headers.get("content-type")):
            try:
                data = json.loads(body)
            except json.JSONDecodeError as exc:
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                               "msg": "JSON decode error", "input": {},
                                               "ctx": {"error": exc.msg}}], body=exc.doc) from exc
            except UnicodeDecodeError as exc:
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body",),
                                               "msg": "JSON decode error", "input": {},
                                               "ctx": {"error": str(exc)}}]) from exc
            try:
                payload = body_type.validate_python(data)
            except ValidationError as exc:
                errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
                raise RequestValidationError(errors, body=data) from exc
        raw = Response()  # KServe fills in body and headers, as on FastAPI's sub-response
        result = await endpoints.infer(request, raw, request.path_params["model_name"], payload)
        if isinstance(result, Response):
            result.headers["content-length"] = str(len(result.body))
            if "content-type" not in result.headers:  # KServe drops it from bytes answers
                binary = "inference-header-content-length" in result.headers
                result.headers["content-type"] = "application/octet-stream" if binary else "application/json"
            return result
        return ORJSONResponse(jsonable_encoder(result))

    return infer


class RequestMetricsMiddleware:
    """``storeflow_requests_total`` and ``storeflow_request_latency_seconds`` for inference paths."""

    def __init__(self, app, protect):
        self.app = app
        self.protect = protect
        self._counters: dict = {}  # labelled children, looked up once (labels() costs ~5 us)
        self._latency: dict = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self.protect(scope["path"]):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        seen = {"status": 500, "version": "none"}

        async def observe(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", ()):
                    if key == _VERSION_HEADER:
                        seen["version"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            version, status = seen["version"], seen["status"]
            counter = self._counters.get((version, status))
            if counter is None:
                counter = self._counters[version, status] = metrics.REQUESTS.labels(model_version=version,
                                                                                    status=str(status))
            histogram = self._latency.get(version)
            if histogram is None:
                histogram = self._latency[version] = metrics.LATENCY.labels(model_version=version)
            counter.inc()
            histogram.observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes`` (declared or actual), before anything parses them."""

    def __init__(self, app, max_bytes: int, protect):
        self.app = app
        self.max_bytes = max_bytes
        self.protect = protect

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not self.protect(scope["path"]):
            return await self.app(scope, receive, send)
        too_big = {"error": f"request body is larger than {self.max_bytes} bytes"}
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_json(send, 400, {"error": "content-length is not a number"})
                if declared > self.max_bytes:
                    return await send_json(send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await send_json(send, 413, too_big)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class VersionPathMiddleware:
    """``/v2/models/<m>/versions/<v>/infer|ready`` and metadata: served versions route, others get 404.

    KServe answers any version path with 501; here a served version is pinned (request header
    ``x-storeflow-pin-version``) and the path rewritten to the unversioned route.
    """

    def __init__(self, app, served_versions: list[str] | None):
        self.app = app
        self.served = served_versions

    async def __call__(self, scope, receive, send):
        from storeflow.serving.server import VERSION_PATH

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        match = VERSION_PATH.match(scope["path"])
        if not match:
            return await self.app(scope, receive, send)
        base, version, suffix = match.group(1), match.group(2), match.group(3) or ""
        if self.served is None:
            return await send_json(send, 404, {"error": "versions are routed by the InferenceService here; "
                                                        f"use {base}{suffix}"})
        if version not in self.served:
            return await send_json(send, 404, {"error": f"model version {version} is not served here "
                                                        f"(serving {', '.join(self.served)})"})
        headers = [(k, v) for k, v in scope["headers"] if k != PIN_HEADER.encode()]
        headers.append((PIN_HEADER.encode(), version.encode()))
        path = base + suffix
        return await self.app({**scope, "path": path, "raw_path": path.encode(), "headers": headers}, receive, send)
