"""Shopify request verification, shared by the prediction server (:mod:`storeflow.serving.auth`) and the
webhook receiver (:mod:`storeflow.components.shopify.webhooks`).

Signatures are checked by ``shopifyapp``, Shopify's own package, and PyJWT, never by hand:

* checkout UI extensions send ``Authorization: Bearer <session token>``, an HS256 JWT signed with the
  app secret. PyJWT checks the signature and ``exp``/``nbf`` with 10 s leeway, then ``aud`` == client id,
  with the options and in the order shopifyapp's checkout verifier uses (called directly: see
  :meth:`ShopifyVerifier._checkout_claims`);
  on top we require ``exp`` at all, ``iss`` and ``dest`` on the same shop, and that shop in the allow-list.
  Its ``sub`` is the logged-in customer (``gid://shopify/Customer/N``), absent for a guest. Admin UI
  extensions send the same kind of token with ``iss`` ``https://<shop>/admin`` and a staff member's id
  as ``sub``; those go through shopifyapp's admin verifier.
* app proxy requests carry ``signature`` = HMAC-SHA256 over the sorted query parameters; shopifyapp
  also rejects a ``timestamp`` more than 90 s away from now (replays).
* webhooks: ``X-Shopify-Hmac-Sha256`` over the raw body. The receiver decides with
  :meth:`ShopifyVerifier.verify_webhook_body`: shopifyapp's webhook decision (same headers, secrets, compare
  and shop) on the raw bytes, without the ``json.loads``/``dumps`` of the body shopifyapp does first to redact
  its log (~70 us of a ~6 us check for a small order, more for a large one; a test holds the two decisions
  equal). :meth:`ShopifyVerifier.verify_webhook` is shopifyapp's own.

A verified session token is remembered (keyed by the whole token string, at most
:data:`TOKEN_CACHE_SIZE` of them, the oldest forgotten first in O(1)) until its ``exp``: a checkout
extension sends the same token with every request of its ~1 minute life, and re-checking an HMAC we
already checked costs ~100 us a request. (A full cache used to be scanned for expired tokens and, none
being expired, emptied: a 50,000-entry pass on the request path, and every recent token lost with it.)
Rejections are never cached; app proxy signatures (timestamped per request) are always checked.

A failure raises :class:`AuthError` carrying shopifyapp's log code (``invalid_id_token``,
``expired_id_token``, ``invalid_aud``, ``invalid_signature``, ``timestamp_too_old``...) or ours
(``missing_credentials``, ``shop_not_allowed``, ``missing_exp``).

Input that is not even well-formed credentials (a non-ASCII app proxy signature, a Host header that
is no host...) is an :class:`AuthError` too (``malformed_credentials``), never an exception escaping.

Who a verified caller is (:class:`Principal`) is decided here; what it may read is the server's
(:func:`storeflow.serving.auth.may_read_shop`, :func:`storeflow.serving.auth.allowed_customer`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qs, urlparse

if TYPE_CHECKING:
    from storeflow.components.config import Settings

SHOP_SUFFIX = ".myshopify.com"
TOKEN_CACHE_SIZE = 50_000


class AuthError(Exception):
    """The request is not from Shopify (or not from an allowed shop); answer 401."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Principal(NamedTuple):
    """Who is calling: the kind of Shopify surface, the shop domain and, when known, the customer."""

    kind: str
    shop: str
    customer_id: str | None = None


def shop_domain(value: str | None) -> str:
    """``https://x.myshopify.com/``, ``x.myshopify.com`` or ``x`` → ``x.myshopify.com``."""
    if not value:
        return ""
    host = urlparse(value).hostname if "://" in value else value.split("/")[0]
    host = (host or "").strip().lower()
    return host if host.endswith(SHOP_SUFFIX) or not host else host + SHOP_SUFFIX


class ShopifyVerifier:
    """Verifies checkout UI extension session tokens, app proxy signatures and webhooks for one app."""

    def __init__(self, client_id: str, client_secret: str, allowed_shops: Iterable[str],
                 old_client_secret: str | None = None):
        from shopify_app import ShopifyApp

        if not client_id or not client_secret:
            raise ValueError("Shopify auth needs serving.shopify_client_id and the app secret "
                             "(or serving.auth: off for local development)")
        self.app = ShopifyApp(client_id=client_id, client_secret=client_secret,
                              old_client_secret=old_client_secret or None)
        self.client_id = client_id
        self._secrets = [s for s in (old_client_secret, client_secret) if s]  # shopifyapp's order: old first
        self.allowed_shops = frozenset(shop_domain(s) for s in allowed_shops if s)
        if not self.allowed_shops:
            raise ValueError("Shopify auth needs at least one allowed shop")
        self._tokens: OrderedDict[str, tuple[float, str, str, str | None]] = OrderedDict()  # oldest first

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> ShopifyVerifier:
        env = os.environ if environ is None else environ
        cfg = settings.serving
        secret = env.get(cfg.shopify_secret_env, "")
        if not secret:
            raise ValueError(f"Shopify auth is on but ${cfg.shopify_secret_env} (the app secret) is not set; "
                             "set it, or serving.auth: off for local development only")
        return cls(cfg.shopify_client_id, secret, cfg.allowed_shops or [settings.project.shop_domain],
                   env.get(cfg.shopify_old_secret_env))

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: str = "") -> Principal:
        """Verify a storefront request: a Bearer session token, else an app proxy signature."""
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            if "authorization" in lower:
                return self.verify_checkout(method, url, lower, body)
            if "signature" in parse_qs(urlparse(url).query, keep_blank_values=True):
                return self.verify_app_proxy(method, url, lower, body)
        except MALFORMED as exc:
            raise _malformed(exc) from exc
        raise AuthError("missing_credentials", "send Authorization: Bearer <session token> "
                                               "or an app proxy signature")

    def cached_checkout(self, authorization: str) -> Principal | None:
        """The principal of an ``Authorization`` value verified before and not expired yet, else None."""
        hit = self._tokens.get(authorization)
        if hit is None:
            return None
        if time.time() < hit[0]:
            return Principal(hit[1], hit[2], hit[3])
        self._tokens.pop(authorization, None)
        return None

    def verify_checkout(self, method: str, url: str, headers: Mapping[str, str], body: str = "",
                        admin: bool | None = None) -> Principal:
        """``admin``: whether the token's ``iss`` is a shop's admin, when the caller has looked already."""
        authorization = headers.get("authorization")
        if isinstance(authorization, str):
            principal = self.cached_checkout(authorization)
            if principal is not None:
                return principal
        if admin is None:
            admin = _issued_by_admin(authorization)
        if admin:
            result = self.app.verify_admin_ui_ext_req({"method": method, "headers": dict(headers), "url": url,
                                                       "body": body})
            if not result.ok or result.id_token is None:
                raise AuthError(result.log.code, "session token rejected")
            claims = result.id_token.claims
        else:
            claims = self._checkout_claims(authorization)
        if "exp" not in claims:
            raise AuthError("missing_exp", "session token has no expiry")
        if not all(isinstance(claims.get(k), (str, type(None))) for k in ("dest", "iss", "sub")):
            raise AuthError("invalid_id_token", "session token claims dest, iss and sub must be strings")
        dest, iss = shop_domain(claims.get("dest")), shop_domain(claims.get("iss"))
        if iss and iss != dest:
            raise AuthError("shop_mismatch", "session token iss and dest name different shops")
        self._allowed(dest)
        principal = Principal("admin_ui_extension", dest) if admin else \
            Principal("checkout_ui_extension", dest, claims.get("sub"))
        if isinstance(authorization, str) and isinstance(claims["exp"], (int, float)):
            self._remember(authorization, float(claims["exp"]), principal)
        return principal

    def verify_bearer(self, authorization: str) -> Principal | None:
        """A checkout extension's ``Authorization: Bearer`` value alone, as :meth:`verify` judges it, without the
        request's other headers and URL, which only an admin token's and an app proxy's checks read: None for
        an admin extension's token (ask :meth:`verify` with the whole request)."""
        if _issued_by_admin(authorization):
            return None
        try:
            return self.verify_checkout("POST", "", {"authorization": authorization}, admin=False)
        except MALFORMED as exc:
            raise _malformed(exc) from exc

    def _checkout_claims(self, authorization) -> dict:
        """The claims of a checkout extension's session token, decided as shopifyapp's
        ``verify_checkout_ui_ext_req`` decides: PyJWT's ``jwt.decode`` with HS256 only, ``exp``/``nbf`` with
        10 s leeway, the old secret tried before the current one; then ``aud`` must be the client id. An
        expiry is ``expired_id_token``, any other refusal ``invalid_id_token``, a wrong audience ``invalid_aud``.

        Why not shopifyapp's call: around the same ``jwt.decode`` it copies and redacts the request, builds
        its log and response records and strips the shop name, 85 of the ~300 us a first-seen token cost on
        the request path (a storefront's session token is new every minute, so most tokens are first-seen).
        tests/test_fuzz_auth.py holds both to the same decision on fuzzed tokens."""
        import jwt

        if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
            raise AuthError("invalid_id_token", "session token rejected")
        token, error = authorization[7:], None
        for secret in self._secrets:
            try:
                claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=10, options={"verify_aud": False})
                break
            except jwt.PyJWTError as exc:
                error = exc
        else:
            expired = error is not None and "expired" in str(error).lower()  # shopifyapp's own test
            raise AuthError("expired_id_token" if expired else "invalid_id_token", "session token rejected")
        if claims.get("aud") != self.client_id:
            raise AuthError("invalid_aud", "session token rejected")
        return claims

    def _remember(self, authorization: str, exp: float, principal: Principal) -> None:
        # A flat tuple of a float and strings: nothing the garbage collector tracks once it has seen it
        # (an exact tuple of untracked values is untracked). Holding (exp, Principal), 50,000 remembered
        # tokens per worker were 100,000 objects every full collection walked (~11 ms each, measured),
        # and every new token brought the next full collection nearer: p99 grew with a worker's uptime.
        tokens = self._tokens
        tokens[authorization] = (exp, *principal)
        while len(tokens) > TOKEN_CACHE_SIZE:
            tokens.popitem(last=False)  # the oldest verified; an expired one is dropped when next looked up

    def verify_app_proxy(self, method: str, url: str, headers: Mapping[str, str], body: str = "") -> Principal:
        result = self.app.verify_app_proxy_req({"method": method, "headers": dict(headers), "url": url,
                                                "body": body})
        if not result.ok:
            raise AuthError(result.log.code, "app proxy signature rejected")
        shop = shop_domain(result.shop)
        self._allowed(shop)
        return Principal("app_proxy", shop, result.logged_in_customer_id or None)

    def verify_webhook_body(self, raw: bytes, headers: Mapping[str, str]) -> Principal:
        """A webhook delivery's sender, decided as shopifyapp's ``verify_webhook_req`` decides a POST with
        ``raw`` as its body: the HMAC header (``X-Shopify-Hmac-Sha256``, else ``Shopify-Hmac-Sha256``) equal,
        as base64 text and in constant time, to the HMAC-SHA256 of the bytes under the current or the old
        secret; the shop from ``X-Shopify-Shop-Domain`` (else ``Shopify-Shop-Domain``); then our allow-list.
        ``headers`` must look names up case-insensitively (Starlette's do)."""
        received = _first_present(headers, "x-shopify-hmac-sha256", "shopify-hmac-sha256")
        if not received:
            raise AuthError("missing_hmac_header", "webhook signature rejected")
        received_bytes = received.encode("utf-8", "surrogateescape")
        if not any(hmac.compare_digest(received_bytes, base64.b64encode(hmac.new(secret.encode(), raw,
                                                                                 hashlib.sha256).digest()))
                   for secret in self._secrets):
            raise AuthError("invalid_hmac", "webhook signature rejected")
        domain = _first_present(headers, "x-shopify-shop-domain", "shopify-shop-domain")
        shop = shop_domain(domain.replace(SHOP_SUFFIX, ""))  # what verify_webhook makes of shopifyapp's shop
        self._allowed(shop)
        return Principal("webhook", shop)

    def verify_webhook(self, method: str, url: str, headers: Mapping[str, str], body: str) -> Principal:
        try:
            result = self.app.verify_webhook_req({"method": method, "headers": dict(headers), "url": url,
                                                  "body": body})
        except MALFORMED as exc:
            raise _malformed(exc) from exc
        if not result.ok:
            raise AuthError(result.log.code, "webhook signature rejected")
        shop = shop_domain(result.shop)
        self._allowed(shop)
        return Principal("webhook", shop)

    def _allowed(self, shop: str) -> None:
        if shop not in self.allowed_shops:
            raise AuthError("shop_not_allowed", f"shop {shop or '<none>'} is not served here")


# What shopifyapp and urllib raise on input that is not well-formed credentials at all: hmac.compare_digest
# refuses a non-ASCII signature (TypeError), urlparse a Host header like "[x" (ValueError), shopifyapp a
# signed token whose dest is not a string (AttributeError).
# RecursionError: a token whose JSON nests deeper than the parser recurses (json.loads, in PyJWT too)
MALFORMED = (TypeError, ValueError, UnicodeError, AttributeError, RecursionError)


def _first_present(headers: Mapping[str, str], *names: str) -> str:
    """The value of the first of ``names`` present, empty or not (shopifyapp's lookup), else ''."""
    for name in names:
        if name in headers:
            return headers[name]
    return ""


def _malformed(exc: Exception) -> AuthError:
    return AuthError("malformed_credentials", f"credentials are not well-formed ({type(exc).__name__}: {exc})")


def _issued_by_admin(authorization) -> bool:
    """Whether a Bearer token's (not yet verified) ``iss`` is a shop's admin; the verifier then checks it.

    A peek at the payload segment (base64url JSON), not PyJWT's unverified decode, which parses and
    checks the header too (~38 vs ~6 us, on every first-seen token); anything unreadable is not admin, and
    the checkout verifier rejects it."""
    if not isinstance(authorization, str) or not authorization.startswith("Bearer "):
        return False
    segments = authorization[7:].split(".")
    if len(segments) != 3:
        return False
    try:
        claims = json.loads(base64.urlsafe_b64decode(segments[1] + "=" * (-len(segments[1]) % 4)))
    except (ValueError, TypeError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        return False
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return isinstance(iss, str) and urlparse(iss).path.rstrip("/") == "/admin"
