"""ASGI pieces around KServe's routes: served routes only, request metrics and logs, body limit, version
pinning, and the one error shape (:mod:`storeflow.serving.errors`) for every error answer.

Also :func:`v2_infer_route`: KServe's own V2 infer handler (``V2Endpoints.infer``: DataPlane decode,
``Model.__call__``, encode) registered as a plain route. FastAPI's APIRoute would solve five
dependencies (path, query, header, cookie and body params) for it on every request; this route reads
the body and validates it against KServe's ``InferenceRequest`` model the way FastAPI does (same
``json`` parser, same 422 answers), and hands the rest to KServe unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import time
from typing import Union

import orjson
from fastapi import Request
from fastapi.responses import Response

from storeflow.serving import metrics
from storeflow.serving.errors import (
    ForbiddenCustomer,
    PredictorUnavailable,
    UnknownVersion,
    error_response,
    send_error,
    status_code,
    version_of,
)
from storeflow.serving.logs import request_logger
from storeflow.serving.protocol import PIN_HEADER, VERSION_HEADER
from storeflow.serving.routes import VERSION_PATH, is_served

_VERSION_HEADER = VERSION_HEADER.encode()
_REQUEST_ID = b"x-request-id"
# What KServe's decoders (and numpy under them) raise on a malformed body: the client's fault, 400.
MALFORMED_BODY = (ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error, UnicodeError)


async def metrics_route(request: Request) -> Response:
    body, content_type = metrics.exposition_body(request.headers.get("accept"))
    return Response(content=body, headers={"content-type": content_type})


def _error_table() -> dict[type, tuple[int, str]]:
    """Exception class → (status, code); a class's nearest listed ancestor decides (Starlette's lookup)."""
    from kserve.errors import (
        InferenceError,
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        ServerNotLive,
        ServerNotReady,
        UnsupportedProtocol,
    )

    return {
        InvalidInput: (400, "bad_request"),
        **{exc: (400, "malformed_request") for exc in MALFORMED_BODY},
        ForbiddenCustomer: (403, "forbidden_customer"),
        UnknownVersion: (404, "version_not_served"),
        ModelNotFound: (404, "model_not_found"),
        InferenceError: (500, "inference_failed"),
        NotImplementedError: (501, "not_implemented"),
        UnsupportedProtocol: (501, "not_implemented"),
        PredictorUnavailable: (503, "predictor_unavailable"),
        ModelNotReady: (503, "model_not_ready"),
        ServerNotReady: (503, "server_not_ready"),
        ServerNotLive: (503, "server_not_live"),
        Exception: (500, "internal"),
    }


def error_handlers() -> dict:
    """FastAPI exception handlers answering the one error shape, none of them logging (the request
    observer writes the request's one line); KServe's would log a traceback at ERROR for each 4xx."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    table = _error_table()

    async def known(_: Request, exc: Exception) -> Response:
        status, code = next(table[c] for c in type(exc).__mro__ if c in table)
        if code == "malformed_request":
            message = f"malformed request: {type(exc).__name__}: {exc}"
        elif code == "forbidden_customer":
            message = f"forbidden: {exc}"
        elif code == "internal":
            message = f"internal error: {type(exc).__name__}"  # the details go to the log, not the caller
        else:
            message = str(exc)
        headers = {"retry-after": "1"} if status == 503 else {}
        version = version_of(exc)
        if version is not None:  # the request observer counts the error against the version that failed it
            headers[VERSION_HEADER] = version
        return error_response(status, code, message, headers or None)

    async def http_error(_: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, status_code(exc.status_code), str(exc.detail), exc.headers)

    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()[:5])
        return error_response(422, "invalid_request", f"request does not match the protocol: {problems}")

    return {**dict.fromkeys(table, known), HTTPException: http_error, RequestValidationError: invalid}



def replayed(body: bytes, receive, more_body: bool = False):
    """An ASGI ``receive`` that gives the app ``body`` (already read from the client) first, then reads on."""
    delivered = False

    async def replay():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()

    return replay

class FinalHandlers(dict):
    """An app's ``exception_handlers`` in which storeflow's stay once set.

    KServe's RESTServer registers its own handlers (``{"error": str}``, a traceback at ERROR) when it
    builds the app; on the cluster entry points that happens inside ``ModelServer.start``, after
    storeflow's ``install``, so a plain dict would end up with KServe's.
    """

    def __init__(self, current: dict, final: dict):
        super().__init__({**current, **final})
        self.final = frozenset(final)

    def __setitem__(self, key, value) -> None:
        if key not in self.final:
            super().__setitem__(key, value)


def install_error_handlers(app) -> None:
    app.exception_handlers = FinalHandlers(app.exception_handlers, error_handlers())
    _refuse_undecodable_requests()


def _refuse_undecodable_requests() -> None:
    """KServe's ``DataPlane.decode`` raises ``InferenceError`` (our 500) for a request it cannot decode, e.g. a
    binary V2 BYTES element that is not UTF-8: the caller's fault, so it is ``InvalidInput`` (400) here. Wrapped
    once per process on the class, which every storeflow server's DataPlane is; a model's own InferenceError,
    raised later, stays a 500."""
    from kserve.errors import InferenceError, InvalidInput
    from kserve.protocol.dataplane import DataPlane

    decode = DataPlane.decode
    if getattr(decode, "refuses_undecodable", False):
        return

    def checked(self, *args, **kwargs):
        try:
            return decode(self, *args, **kwargs)
        except InferenceError as exc:
            raise InvalidInput(f"request body could not be decoded: {exc}") from exc

    checked.refuses_undecodable = True
    DataPlane.decode = checked


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
    from kserve.errors import InvalidInput
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
                payload = body_type.validate_python(data)
            except json.JSONDecodeError as exc:
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                               "msg": "JSON decode error", "input": {},
                                               "ctx": {"error": exc.msg}}], body=exc.doc) from exc
            except UnicodeDecodeError as exc:
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body",),
                                               "msg": "JSON decode error", "input": {},
                                               "ctx": {"error": str(exc)}}]) from exc
            except RecursionError as exc:  # json and pydantic recurse per nesting level
                raise InvalidInput("request body is JSON nested too deeply for a V2 request") from exc
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
        answer = ORJSONResponse(jsonable_encoder(result))
        # the headers KServe put on the sub-response (the answering version among them), as FastAPI merges them
        answer.headers.update({k: v for k, v in raw.headers.items() if k not in ("content-length", "content-type")})
        return answer

    return infer


class RequestMeter:
    """``storeflow_requests_total`` and ``storeflow_request_latency_seconds`` of answered requests."""

    def __init__(self):
        self._counters: dict = {}  # labelled children, looked up once (labels() costs ~5 us)
        self._latency: dict = {}

    def observe(self, version: str, status: int, seconds: float) -> None:
        """One request ``version`` answered (``"1,2"``: a request whose customers two versions answered counts
        for each, so each version's error rate sees it)."""
        if "," in version:
            for each in dict.fromkeys(version.split(",")):
                self.observe(each, status, seconds)
            return
        counter = self._counters.get((version, status))
        if counter is None:
            counter = self._counters[version, status] = metrics.REQUESTS.labels(model_version=version,
                                                                                status=str(status))
        histogram = self._latency.get(version)
        if histogram is None:
            histogram = self._latency[version] = metrics.LATENCY.labels(model_version=version)
        counter.inc()
        histogram.observe(seconds)


class RequestObserver:
    """Outermost of storeflow's middlewares, which every request passes:

    * 404 for a path storeflow does not serve (:func:`storeflow.serving.routes.is_served`): KServe's
      model repository control routes (``/v2/repository/models/<m>/unload``...) take no credentials;
    * ``storeflow_requests_total`` and ``storeflow_request_latency_seconds`` for the paths ``meter``
      selects (inference; none on the predictor, whose requests the transformer counts);
    * one JSON log line (:mod:`storeflow.serving.logs`) for every error answer, and for every request
      when ``request_log`` is on; nothing at all for a success otherwise;
    * the 500 for an exception nothing else handled (logged once, with its traceback);
    * 499 (logged and counted, never sent) for a caller that hung up before it was answered: a dropped
      connection is not a server error, and would count as one against a canary.
    """

    def __init__(self, app, meter=None, request_log: bool = False):
        self.app = app
        self.meter = meter
        self.request_log = request_log
        self.log = request_logger()
        self.observe = RequestMeter().observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        metered = self.meter is not None and scope["method"] != "OPTIONS" and self.meter(path)
        seen = [0, "none", b""]  # status (0: not answered yet), answering version, error body
        gone = False  # the caller hung up: an unanswered request is its 499, not the server's 500

        async def watched():
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        async def observe(message):
            if message["type"] == "http.response.start":
                seen[0] = message["status"]
                for key, value in message.get("headers", ()):
                    if key == _VERSION_HEADER:
                        seen[1] = value.decode("latin-1")
            elif seen[0] >= 400 and len(seen[2]) < 8192:
                seen[2] += message.get("body", b"")
            await send(message)

        failure = None
        try:
            if metered or is_served(path):  # inference paths are served: one regex on the hot path
                await self.app(scope, watched, observe)
            else:
                await send_error(observe, 404, "not_found", f"no route {scope['method']} {path[:200]} here")
        except Exception as exc:
            if seen[0]:  # answered already: nothing left to say to the caller
                raise
            failure = exc
            version = version_of(exc)
            await send_error(observe, 500, "internal", f"internal error: {type(exc).__name__}",
                             [] if version is None else [(_VERSION_HEADER, version.encode("latin-1"))])
        finally:
            status = seen[0] or (499 if gone and failure is None else 500)
            if metered:
                self.observe(seen[1], status, time.perf_counter() - started)
            if status >= 400 or self.request_log:
                self._write(scope, status, seen[1], seen[2], time.perf_counter() - started, failure)

    def _write(self, scope, status: int, version: str, body: bytes, seconds: float, failure) -> None:
        fields = {"method": scope["method"], "path": scope["path"], "status": status, "model_version": version,
                  "duration_ms": round(seconds * 1000, 3)}
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == _REQUEST_ID), None)
        if request_id is not None:
            fields["request_id"] = request_id
        if status >= 400:
            fields.update(_error_fields(status, body))
        level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        self.log.log(level, "%s %s %s", scope["method"], scope["path"], status, extra=fields,
                     exc_info=failure)


def _error_fields(status: int, body: bytes) -> dict[str, str]:
    """``code`` and ``error`` of an error answer's body (the one shape), for its log line."""
    try:
        answer = orjson.loads(body)
        return {"code": str(answer["code"]), "error": str(answer["error"])}
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return {"code": status_code(status), "error": body[:500].decode("utf-8", "replace")}


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes`` (declared or actual), before anything parses them."""

    def __init__(self, app, max_bytes: int, protect):
        self.app = app
        self.max_bytes = max_bytes
        self.protect = protect

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not self.protect(scope["path"]):
            return await self.app(scope, receive, send)
        too_big = f"request body is larger than {self.max_bytes} bytes"
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_error(send, 400, "bad_request", "content-length is not a number")
                if declared > self.max_bytes:
                    return await send_error(send, 413, "body_too_large", too_big)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await send_error(send, 413, "body_too_large", too_big)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return await self.app(scope, replayed(b"".join(chunks), receive), send)


class VersionPathMiddleware:
    """``/v2/models/<m>/versions/<v>/infer|ready`` and metadata: served versions route, others get 404.

    KServe answers any version path with 501; here a served version is pinned (request header
    ``x-storeflow-pin-version``) and the path rewritten to the unversioned route.
    """

    def __init__(self, app, served_versions: list[str] | None):
        self.app = app
        self.served = served_versions

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        match = VERSION_PATH.match(scope["path"])
        if not match:
            return await self.app(scope, receive, send)
        base, version, suffix = match.group(1), match.group(2), match.group(3) or ""
        if self.served is None:
            return await send_error(send, 404, "version_not_served",
                                    f"versions are routed by the InferenceService here; use {base}{suffix}")
        if version not in self.served:
            return await send_error(send, 404, "version_not_served", f"model version {version[:80]} is not served "
                                                                     f"here (serving {', '.join(self.served)})")
        headers = [(k, v) for k, v in scope["headers"] if k != PIN_HEADER.encode()]
        headers.append((PIN_HEADER.encode(), version.encode()))
        path = base + suffix
        return await self.app({**scope, "path": path, "raw_path": path.encode(), "headers": headers}, receive, send)


_V2_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")
_CONTENT_TYPE, _CONTENT_LENGTH, _ORIGIN = b"content-type", b"content-length", b"origin"
_BINARY = b"inference-header-content-length"


class FlatRoute:
    """Outermost: one route's well-formed, authorized request straight to the model, skipping the ~10 ASGI
    layers of the middleware stack (see :class:`FlatV2`, the first of them, for what is and is not taken).

    A subclass names its ``route`` (the path pattern, the model name its group 1), the headers whose
    presence sends a request to the stack (``passthrough``; content-type and content-length are among
    them, so one said twice goes there too), which bodies count as JSON (``is_json``), and builds the
    200 answer in ``_answer`` (headers, body, answering version), or returns None to let the stack
    answer. Everything around it (the body read up to the limit, the replay to the stack, the request
    metrics) is here once.
    """

    route: re.Pattern
    passthrough: tuple[bytes, ...] = (_ORIGIN, _CONTENT_LENGTH, _CONTENT_TYPE)

    def __init__(self, app, dataplane, max_bytes: int, auth=None):
        self.app = app
        self.dataplane = dataplane
        self.max_bytes = max_bytes
        self.auth = auth  # a ShopifyAuthMiddleware (only its authorize is used), or None: auth off
        self.meter = RequestMeter()

    def is_json(self, content_type: bytes) -> bool:
        return _is_json(content_type.decode("latin-1"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = self.route.match(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        declared, json_body = None, None
        for key, value in scope["headers"]:
            if key == _CONTENT_LENGTH and declared is None:
                declared = value
            elif key == _CONTENT_TYPE and json_body is None:
                json_body = self.is_json(value)
            elif key in self.passthrough:  # CORS, a binary body, or a header said twice
                return await self.app(scope, receive, send)
        if not json_body:  # the route hands any other body to KServe as bytes
            return await self.app(scope, receive, send)
        try:
            declared = int(declared)
        except (TypeError, ValueError):
            return await self.app(scope, receive, send)
        if not 0 < declared <= self.max_bytes:
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False) and size <= self.max_bytes
        body = b"".join(chunks)
        answered = None
        if not more:
            try:
                answered = await self._answer(scope, match.group(1), body)
            except Exception:  # noqa: BLE001 - the stack answers it, as it always did
                answered = None
        if answered is None:
            return await self.app(scope, replayed(body, receive, more), send)
        status_headers, content, version = answered
        await send({"type": "http.response.start", "status": 200, "headers": status_headers})
        await send({"type": "http.response.body", "body": content})
        self.meter.observe(version, 200, time.perf_counter() - started)

    async def _answer(self, scope, model_name: str, body: bytes):
        """(headers, body, answering version) of the 200 answer, or None: let the stack answer."""
        raise NotImplementedError


class FlatV2(FlatRoute):
    """Outermost: a well-formed, authorized, single-answer V2 infer request straight to the model.

    What the middleware stack and FastAPI's routing do for ``POST /v2/models/<m>/infer`` (CORS, the
    request observer, the body limit, Shopify auth, version pinning, the route's body validation, then
    KServe's ``V2Endpoints.infer``: model readiness, decode, ``Model.__call__``, encode) costs ~10 layers of
    ASGI calls per request. For the request that needs none of their answers, this does the same steps
    in one function, calling the same code: :meth:`ShopifyAuthMiddleware.authorize` (same token cache),
    the route's pydantic validation of KServe's ``InferenceRequest``, KServe's DataPlane for the model and
    ``Model.__call__`` (preprocess, predict, postprocess and KServe's own latency histograms), and the
    request observer's metrics (:class:`RequestMeter`).

    Anything else goes down the stack untouched: another path or method, an ``Origin`` (CORS answers it),
    a binary body, a body without a declared length or over the limit. And so does any request whose
    answer would not be a 200: a failed auth, a body that does not parse or validate, a model that is
    not ready, an exception from the model; its body is replayed to the stack, which answers it as it
    always did (its error shape, status and log line). Such a request does its work up to the failure
    twice; no answered request does.
    """

    route = _V2_INFER
    passthrough = (_ORIGIN, _BINARY, _CONTENT_LENGTH, _CONTENT_TYPE)

    def __init__(self, app, dataplane, max_bytes: int, auth=None):
        from kserve.protocol.rest.v2_datamodels import InferenceRequest
        from pydantic import TypeAdapter

        super().__init__(app, dataplane, max_bytes, auth)
        self._body = TypeAdapter(Union[InferenceRequest, bytes])  # what v2_infer_route validates with
        self._request_type = InferenceRequest

    async def _answer(self, scope, model_name: str, body: bytes):
        """(headers, body, answering version) of the 200 answer, or None: let the stack answer."""
        from kserve.protocol.infer_type import InferRequest

        if self.auth is not None:
            raw = self.auth.authorize(scope)  # AuthError, OtherShop: the stack answers 401/403
        else:
            raw = scope["headers"]
        headers: dict[str, str] = {}
        for key, value in raw:  # Starlette's dict(request.headers): lower-case keys, the first value wins
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        payload = self._body.validate_python(orjson.loads(body))
        if not isinstance(payload, self._request_type):
            return None
        dataplane = self.dataplane
        if not await dataplane.model_ready(model_name, True):
            return None
        request = InferRequest.from_inference_request(payload, model_name)
        model = await dataplane.get_model(model_name)
        response, response_headers = await model(request, headers=headers)
        response, encoded = dataplane.encode(model_name=model_name, response=response, headers=headers,
                                             req_attributes={})
        response_headers.update(encoded)
        response_headers.pop("content-length", None)
        response_headers.pop("content-type", None)
        if not isinstance(response, bytes):
            # What V2Endpoints.infer and the route answer for a JSON InferResponse: KServe's pydantic
            # model, encoded by FastAPI, with the model's response headers (the answering version).
            from fastapi.encoders import jsonable_encoder
            from fastapi.responses import ORJSONResponse
            from kserve.protocol.rest.v2_datamodels import InferenceResponse

            content = ORJSONResponse(jsonable_encoder(InferenceResponse.model_validate(response))).body
            out = [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
            out += [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response_headers.items()]
            return out, content, response_headers.get(VERSION_HEADER, "none")
        binary = "inference-header-content-length" in response_headers
        out = [(b"content-length", str(len(response)).encode()),
               (b"content-type", b"application/octet-stream" if binary else b"application/json")]
        out += [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response_headers.items()]
        return out, response, response_headers.get(VERSION_HEADER, "none")
