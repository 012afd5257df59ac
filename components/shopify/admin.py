"""Admin GraphQL calls through Shopify's ``shopifyapp`` package, with cost-based throttling.

shopifyapp sends the request (access token header, 429/5xx retries) and redacts the token from its
logs. On top we honour the GraphQL cost model: a ``THROTTLED`` error (HTTP 200) waits until the bucket
has refilled enough for the query (``extensions.cost.throttleStatus``), and a nearly empty bucket
slows the next call down before Shopify has to refuse it. Network errors back off exponentially.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from storeflow.components.config import Settings
from storeflow.components.shopify.verify import shop_domain

log = logging.getLogger(__name__)

SHOP_SUFFIX = ".myshopify.com"


class ShopifyError(RuntimeError):
    """The Admin API refused or failed a call; the message says which and why (never the token)."""


class PartialErrors(ShopifyError):
    """Shopify ran the document and some fields failed (``errors`` with a ``path``, those fields null in ``data``):
    the others' answers are in ``data``; ``problems`` maps each failed top-level field (an alias) to why. Also a
    document of one field that failed at its path (all of several failing is an outage, not this)."""

    def __init__(self, message: str, data: dict, problems: dict[str, str]):
        super().__init__(message)
        self.data, self.problems = data, problems


class CostExceeded(ShopifyError):
    """Shopify refused the document before running any of it: its requested cost is above the single-query limit
    (``MAX_COST_EXCEEDED``, ``extensions.maxCost``: 1,000 points whatever the plan). Smaller documents go through."""


@dataclass(frozen=True)
class Credentials:
    shop: str  # x.myshopify.com
    access_token: str

    def __repr__(self) -> str:  # never print the token, not even in a traceback
        return f"Credentials(shop={self.shop!r}, access_token=<redacted>)"


def credentials(settings: Settings, environ: Mapping[str, str] | None = None) -> Credentials:
    """Shop and token from the environment (a mounted Secret on a cluster), never from config."""
    env = os.environ if environ is None else environ
    cfg = settings.shopify
    token = env.get(cfg.access_token_env, "")
    if not token:
        raise ShopifyError(f"${cfg.access_token_env} (the Admin API access token) is not set; on a cluster it "
                           f"comes from Secret {cfg.credentials_secret!r}, key access-token")
    return Credentials(shop_domain(env.get(cfg.shop_domain_env) or settings.project.shop_domain), token)


class _OriginTransport(httpx.HTTPTransport):
    """Sends every request to another origin (a proxy or a recording server), path unchanged."""

    def __init__(self, origin: str):
        super().__init__()
        self.origin = httpx.URL(origin)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self.origin.scheme, host=self.origin.host, port=self.origin.port)
        return super().handle_request(request)


def _cost(body: dict) -> dict:
    return (body.get("extensions") or {}).get("cost") or {}


def _reserve(cost: dict) -> float:
    """Points to keep for the next call of the same size: twice this one's requested cost, but never more than the
    bucket holds (a document costing over half the bucket would otherwise wait for points that never come)."""
    requested = 2 * float(cost.get("requestedQueryCost") or 0)
    maximum = (cost.get("throttleStatus") or {}).get("maximumAvailable")
    return requested if maximum is None else min(requested, float(maximum))


def _refill_seconds(cost: dict, needed: float | None = None) -> float:
    """Seconds until the bucket holds ``needed`` points (default: this query's requested cost)."""
    status = cost.get("throttleStatus") or {}
    available, rate = status.get("currentlyAvailable"), status.get("restoreRate")
    needed = cost.get("requestedQueryCost") if needed is None else needed
    if available is None or not rate or needed is None:
        return 0.0
    return max(0.0, (float(needed) - float(available)) / float(rate))


class AdminClient:
    """One shop's Admin GraphQL API at the pinned ``shopify.api_version``."""

    def __init__(self, settings: Settings, creds: Credentials, sleep: Callable[[float], None] = time.sleep):
        self.cfg = settings.shopify
        self.creds = creds
        self.sleep = sleep
        transport = _OriginTransport(self.cfg.admin_origin) if self.cfg.admin_origin else None
        self.http = httpx.Client(transport=transport, timeout=httpx.Timeout(60.0, connect=10.0))
        self.last_cost: dict = {}

    def close(self) -> None:
        self.http.close()

    def execute(self, query: str, variables: dict[str, Any] | None = None, repeat: bool = True) -> dict:
        """Run a query or mutation; returns ``data``. Raises :class:`ShopifyError` once retries are used up.

        ``repeat`` False: a document that must not run twice (one creating something). Its answer lost (the
        connection failed, a 5xx, no GraphQL answer) it may have run, so it is not sent again: ShopifyError, and the
        caller asks Shopify what ran. Only answers saying it did not run (THROTTLED, 429) are retried. Every retry
        is made here: shopifyapp's own (a 502, 503 or 504 sent again twice) is turned off."""
        from shopify_app import admin_graphql_request

        problem = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                log.info("Admin API retry %d/%d after: %s", attempt, self.cfg.max_retries, problem)
            result = admin_graphql_request(
                query, shop=self.creds.shop.removesuffix(SHOP_SUFFIX), access_token=self.creds.access_token,
                api_version=self.cfg.api_version, variables=variables, http_client=self.http, max_retries=0,
            )
            body = _json(result.response.body)
            cost = _cost(body)
            if result.ok and not isinstance(body.get("data"), dict):
                # HTTP 200 and no GraphQL answer (a proxy's page, a body cut short): shopifyapp calls it a success
                # with no data, which read as an answer holding nothing, and the orders sent waited without a word
                problem = f"HTTP 200 that is not a GraphQL answer: {result.response.body[:200]!r}"
                if not repeat:
                    raise ShopifyError(f"Admin API call for {self.creds.shop} answered {problem}; it may have run, "
                                       f"so it is not sent again")
                self._wait(min(2.0 ** attempt, self.cfg.max_backoff_seconds))
                continue
            if result.ok:
                self.last_cost = cost
                # Keep a reserve for the next call of the same size rather than run into THROTTLED.
                self._wait(_refill_seconds(cost, _reserve(cost)))
                return result.data or {}
            codes = [(e.get("extensions") or {}).get("code") for e in body.get("errors") or [] if isinstance(e, dict)]
            status = result.response.status
            data = body.get("data")
            located = [e for e in body.get("errors") or [] if isinstance(e, dict) and e.get("path")]
            # Ran, some fields failed at their paths: the others answered, or the one field of the document failed
            # alone (an order Shopify fails on, whatever the others do); every field failing is no one field's fault.
            if isinstance(data, dict) and (any(v is not None for v in data.values()) or len(data) == 1) and \
                    located and len(located) == len(body.get("errors") or []):
                self.last_cost = cost
                raise PartialErrors(f"Admin API call for {self.creds.shop}: {_messages(body)}", data,
                                    {str(e["path"][0]): str(e.get("message")) for e in located})
            if "MAX_COST_EXCEEDED" in codes:
                raise CostExceeded(f"Admin API refused a document for {self.creds.shop}: {_messages(body)}")
            if "THROTTLED" in codes:
                problem = "THROTTLED"
                self._wait(max(_refill_seconds(cost), 1.0))
            elif result.log.code == "rate_limited" or (repeat and (result.log.code == "network_error" or status >= 500)):
                problem = f"{result.log.code} (HTTP {status})"
                asked = retry_after(result) if result.log.code == "rate_limited" else None
                self._wait(min(2.0 ** attempt, self.cfg.max_backoff_seconds) if asked is None else asked)
            elif result.log.code == "network_error" or status >= 500:
                raise ShopifyError(f"Admin API call for {self.creds.shop} unanswered ({result.log.code}, HTTP {status}): "
                                   f"it may have run, so it is not sent again")
            else:
                raise ShopifyError(f"Admin API {self.cfg.api_version} call failed for {self.creds.shop}: "
                                   f"{result.log.code}, HTTP {status}: {_messages(body) or result.log.detail}")
        raise ShopifyError(f"Admin API call for {self.creds.shop} still failing after {self.cfg.max_retries} "
                           f"retries: {problem}")

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep(min(seconds, self.cfg.max_backoff_seconds))


def retry_after(result) -> float | None:
    """The seconds a 429's ``Retry-After`` asks for (a number, or an HTTP date), None when it has none or it cannot
    be read; waits are held to ``shopify.max_backoff_seconds``. shopifyapp looks the header up by a name its
    lower-cased headers never have, so a 429 was retried on the client's own schedule (1, 2, 4 s...), not Shopify's."""
    from email.utils import parsedate_to_datetime

    value = next((log.res.headers.get("retry-after") for log in reversed(result.http_logs or [])
                  if log.res is not None and log.res.status == 429), None)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _json(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _messages(body: dict) -> str:
    return "; ".join(str(e.get("message", e)) for e in body.get("errors") or [] if isinstance(e, dict))
