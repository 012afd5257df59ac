"""The one shape of every error answer of storeflow's servers (the webhook receiver answers it too):
``{"error": "<what is wrong, for a person>", "code": "<stable machine code>"}``.

``code`` is what a client branches on; ``error`` may change wording. Codes by status when nothing more
precise is known are :data:`STATUS_CODES`; the more precise ones (``forbidden_customer``,
``other_shop``, ``version_not_served``, shopifyapp's ``invalid_id_token``...) are listed in the README.
The serving errors of storeflow's own below are raised by the transformer and answered by
:mod:`storeflow.serving.http` with their status and code.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.responses import Response

STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_request",
    499: "client_closed_request",  # nginx's: the caller hung up before an answer; logged, never sent
    500: "internal",
    501: "not_implemented", 503: "unavailable",
}


class UnknownVersion(LookupError):
    """A request pinned a model version this server does not serve (404 ``version_not_served``)."""


class ForbiddenCustomer(PermissionError):
    """A storefront caller asked for a customer other than its logged-in one (403 ``forbidden_customer``)."""


class PredictorUnavailable(RuntimeError):
    """The predictor container could not be reached (503 with Retry-After: worth retrying)."""


# the attribute an exception carries once the request's answering version was chosen (:func:`answered_by`)
_VERSION_ATTRIBUTE = "storeflow_model_version"


def answered_by(exc: BaseException, version: str | None) -> BaseException:
    """``exc`` marked as raised for a request ``version`` answers (``"2"``, or ``"1,2"`` for one split between
    two): its error answer then carries the version header, so the request observer counts the error against
    that version. Unmarked, every error counted as ``model_version="none"``, and a canary's failures never
    reached its error-rate check, which selects by version. The first mark stays (the innermost knows best)."""
    if version and getattr(exc, _VERSION_ATTRIBUTE, None) is None:
        try:
            setattr(exc, _VERSION_ATTRIBUTE, version)
        except AttributeError:  # an exception type without a __dict__: counted as none, as before
            pass
    return exc


def version_of(exc: BaseException | None) -> str | None:
    """The version :func:`answered_by` marked ``exc`` (or an exception it was raised from) with, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        version = getattr(exc, _VERSION_ATTRIBUTE, None)
        if version:
            return version
        exc = exc.__cause__ or exc.__context__
    return None


class AnswersOneVersion:
    """A KServe ``Model`` that serves one version (``self.version``): whatever it raises while answering carries
    that version (:func:`answered_by`), so its error answers count against it, as its 200s do."""

    async def __call__(self, *args, **kwargs):
        try:
            return await super().__call__(*args, **kwargs)
        except Exception as exc:
            raise answered_by(exc, getattr(self, "version", None))


def status_code(status: int) -> str:
    return STATUS_CODES.get(status, "client_error" if status < 500 else "server_error")


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": message, "code": code})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


async def send_error(send, status: int, code: str, message: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer an ASGI request with the error shape, from a middleware (no Request/Response objects)."""
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
