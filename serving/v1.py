"""KServe V1 request bodies, read one way by every storeflow model (propensity and recommendations)."""

from __future__ import annotations

import orjson
from kserve.errors import InvalidInput


def v1_request(payload, example: str) -> dict:
    """The body as a JSON object holding an ``instances`` list, else a 400 showing ``example``.

    KServe passes bodies with a non-JSON content type through raw (bytes or text)."""
    if isinstance(payload, (bytes, str)):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"request body is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput(f"expected {example}")
    return payload
