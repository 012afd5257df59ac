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
