"""Hypothesis over what an unauthenticated caller controls in serving/auth.py: Bearer tokens (garbage,
malformed JWTs, validly signed tokens with odd claims), app proxy query strings (any unicode or bytes in
keys, values and signatures), webhook headers. Verification either names a caller or raises
``AuthError``; through the middleware, the answer is the inner app's, or a 401/403 in the one error shape."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from urllib.parse import quote_from_bytes

import jwt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.datastructures import Headers

from storeflow.serving.auth import AuthError, Principal, ShopifyAuthMiddleware, ShopifyVerifier
from storeflow.serving.routes import is_inference

CLIENT_ID = "fuzz-client-id"
SECRET = "shpss_fuzz_0123456789abcdef0123456789abcdef"
OLD_SECRET = "shpss_old_fuzz_0123456789abcdef0123456789ab"  # the secret before a rotation, still accepted
SHOP = "demo-store.myshopify.com"
OTHER = "other-store.myshopify.com"
URL = "https://serve.example/v1/models/m:predict"
VERIFIER = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP, OTHER])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(max_size=60)
# JSON values a signed token's claims may hold: Shopify sends strings and numbers, an attacker anything.
claim = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                     max_leaves=6)
segment = st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())
malformed_jwt = st.lists(segment, min_size=1, max_size=4).map(".".join)


@st.composite
def signed_token(draw) -> str:
    """A token signed with the app secret (as a leaked-secret or a Shopify bug would give) whose claims
    are partly valid, partly anything."""
    now = int(time.time())
    base = {"iss": f"https://{draw(st.sampled_from([SHOP, OTHER]))}" + draw(st.sampled_from(["", "/admin"])),
            "dest": f"https://{SHOP}", "aud": CLIENT_ID, "sub": "gid://shopify/Customer/1", "exp": now + 60,
            "nbf": now}
    for key in draw(st.sets(st.sampled_from([*base, "iat", "jti"]), max_size=4)):
        base[key] = draw(claim)
    payload = draw(st.one_of(st.just(base), claim))  # PyJWS signs any bytes, as an attacker with the key would
    secret = draw(st.sampled_from([SECRET, SECRET, OLD_SECRET, "shpss_someone_else_0123456789abcdef0123"]))
    return jwt.PyJWS().encode(json.dumps(payload).encode(), secret, algorithm="HS256")


authorization = st.one_of(
    text,
    text.map(lambda t: f"Bearer {t}"),
    malformed_jwt.map(lambda t: f"Bearer {t}"),
    signed_token().map(lambda t: f"Bearer {t}"),
    st.binary(max_size=40).map(lambda b: "Bearer " + b.decode("latin-1")),  # what ASGI gives for any bytes
)
query_part = st.one_of(text.map(lambda t: quote_from_bytes(t.encode())), st.binary(max_size=20).map(quote_from_bytes),
                       text)
query = st.lists(st.tuples(st.one_of(st.sampled_from(["signature", "shop", "timestamp", "logged_in_customer_id",
                                                      "path_prefix"]), query_part), query_part),
                 max_size=6).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


def _verify_never_escapes(method: str, url: str, headers: dict[str, str]) -> None:
    try:
        principal = VERIFIER.verify(method, url, headers)
    except AuthError as exc:
        assert exc.code and isinstance(exc.code, str)
        return
    assert isinstance(principal, Principal) and principal.shop in (SHOP, OTHER)


@FUZZ
@given(value=authorization)
def test_any_authorization_header_is_a_principal_or_an_auth_error(value):
    _verify_never_escapes("POST", URL, {"Authorization": value})


@FUZZ
@given(qs=query, host=st.one_of(st.just("serve.example"), text))
def test_any_app_proxy_query_is_a_principal_or_an_auth_error(qs, host):
    _verify_never_escapes("GET", f"https://{host}/apps/storeflow?signature=x&{qs}", {"host": host})


@FUZZ
@given(hmac_value=st.one_of(text, st.binary(max_size=48).map(lambda b: b.decode("latin-1"))), shop=text,
       body=text)
def test_any_webhook_signature_header_is_a_principal_or_an_auth_error(hmac_value, shop, body):
    headers = {"X-Shopify-Hmac-Sha256": hmac_value, "X-Shopify-Shop-Domain": shop, "X-Shopify-Topic": "orders/create",
               "X-Shopify-Api-Version": "2026-01", "X-Shopify-Webhook-Id": "w1", "Content-Type": "application/json"}
    try:
        VERIFIER.verify_webhook("POST", "https://serve.example/webhooks", headers, body)
    except AuthError:
        pass


def _through_middleware(headers: list[tuple[bytes, bytes]], query_string: bytes) -> tuple[int, dict | None]:
    """One request through ShopifyAuthMiddleware in front of an app that answers 200 with what it was told."""
    seen = {}

    async def inner(scope, receive, send):
        seen.update({k.decode(): v.decode() for k, v in scope["headers"] if k.startswith(b"x-storeflow-")})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = ShopifyAuthMiddleware(inner, VERIFIER, protect=is_inference, data_shop=SHOP)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/models/m:predict", "scheme": "http",
             "query_string": query_string, "headers": headers}
    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    if status == 200:
        return status, seen
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    return status, json.loads(sent[1]["body"])


@FUZZ
@given(value=authorization, qs=query, host=st.binary(max_size=20))
def test_the_middleware_answers_401_or_403_in_the_one_shape_or_passes_its_own_shop_on(value, qs, host):
    headers = [(b"host", host), (b"authorization", value.encode("utf-8", "surrogatepass"))]
    for case in (headers, headers[:1]):  # with the Bearer token; app proxy only
        status, body = _through_middleware(case, f"signature=x&{qs}".encode("utf-8", "surrogatepass"))
        if status == 200:
            assert body["x-storeflow-shop"] == SHOP  # never another shop's data
            continue
        assert status in (401, 403)
        assert set(body) == {"error", "code"} and all(isinstance(v, str) for v in body.values())
        if status == 403:
            assert body["code"] == "other_shop" and OTHER in body["error"]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_token_nested_past_the_json_parsers_depth_is_401_not_500():
    """Claims nested ~3,000 deep made json.loads raise RecursionError, which nothing caught: a 500 with a traceback
    on every request (on /v1/feedback the connection was reset), from a token nobody signed; signed, PyJWT's parse
    raised it too."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    for claims in (b'{"iss":' + b"[" * 3000 + b"]" * 3000 + b"}", b"[" * 3000 + b"]" * 3000):
        unsigned = f"Bearer {header}.{_b64url(claims)}.sig"
        signed = "Bearer " + jwt.PyJWS().encode(claims, SECRET, algorithm="HS256")
        for value in (unsigned, signed):
            # an AuthError, whichever: where the parser's recursion limit is higher (pytest-xdist's workers), the
            # signed claims parse, and lack an audience
            with pytest.raises(AuthError):
                VERIFIER.verify("POST", URL, {"Authorization": value})
            status, body = _through_middleware([(b"authorization", value.encode())], b"")
            assert status == 401 and body["code"] in ("malformed_credentials", "invalid_id_token", "invalid_aud")


def test_an_other_shops_valid_token_is_refused_with_other_shop():
    """Both shops may call (allowed_shops); the data here is SHOP's, so OTHER's staff get a 403 naming it."""
    now = int(time.time())
    token = jwt.encode({"iss": f"https://{OTHER}/admin", "dest": f"https://{OTHER}", "aud": CLIENT_ID, "sub": "7",
                        "exp": now + 60, "nbf": now}, SECRET, algorithm="HS256")
    status, body = _through_middleware([(b"authorization", f"Bearer {token}".encode())], b"")
    assert (status, body["code"]) == (403, "other_shop")
    assert body["error"] == (f"forbidden: this server holds the data of {SHOP}; a caller from {OTHER} may read "
                             "only its own shop's")


class _ShopifyAppDecides(ShopifyVerifier):
    """The verifier with shopifyapp's ``verify_checkout_ui_ext_req`` deciding a checkout token's claims, as it
    did before ShopifyVerifier called PyJWT directly (with shopifyapp's options) to save ~85 us a first-seen
    token."""

    def _checkout_claims(self, authorization):
        result = self.app.verify_checkout_ui_ext_req({"method": "POST", "headers": {"authorization": authorization},
                                                      "url": URL, "body": ""})
        if not result.ok or result.id_token is None:
            raise AuthError(result.log.code, "session token rejected")
        return result.id_token.claims


def _decision(decide, value: str):
    try:
        return "accepted", decide(value)
    except AuthError as exc:
        return "refused", exc.code


@FUZZ
@given(value=authorization)
def test_a_checkout_token_is_decided_as_shopifyapp_decides_it(value):
    """Same caller or same refusal code as shopifyapp's verifier, through verify() and the middleware's
    verify_bearer() alike, on garbage, malformed and validly signed tokens with odd claims, signed with the
    current secret, the one before a rotation, or another app's. One difference, both refusals: a signed
    ``dest`` that is not a string made shopifyapp raise (``malformed_credentials``), and is our
    ``invalid_id_token`` check now."""
    ours = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP, OTHER], OLD_SECRET)
    reference = _ShopifyAppDecides(CLIENT_ID, SECRET, [SHOP, OTHER], OLD_SECRET)
    expected = _decision(lambda v: reference.verify("POST", URL, {"Authorization": v}), value)
    found = [_decision(lambda v: ours.verify("POST", URL, {"Authorization": v}), value)]
    if value.startswith("Bearer "):
        found.append(_decision(ours.verify_bearer, value))
        if found[-1] == ("accepted", None):  # an admin extension's token: verify()'s to decide
            found.pop()
    for decision in found:
        if expected == ("refused", "malformed_credentials") and decision == ("refused", "invalid_id_token"):
            continue
        assert decision == expected


def test_rotation_expiry_and_audience_keep_shopifyapps_codes():
    now = int(time.time())
    claims = {"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID, "sub": "gid://shopify/Customer/5",
              "exp": now + 60, "nbf": now}
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP], OLD_SECRET)
    for secret in (SECRET, OLD_SECRET):
        principal = verifier.verify_bearer(f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}")
        assert principal == Principal("checkout_ui_extension", SHOP, "gid://shopify/Customer/5")
    cases = {"expired_id_token": ({**claims, "exp": now - 30}, SECRET),
             "invalid_id_token": (claims, "shpss_someone_else_0123456789abcdef0123"),
             "invalid_aud": ({**claims, "aud": "another-app"}, SECRET)}
    for code, (payload, secret) in cases.items():
        try:
            verifier.verify_bearer(f"Bearer {jwt.encode(payload, secret, algorithm='HS256')}")
        except AuthError as exc:
            assert exc.code == code
        else:
            raise AssertionError(f"{code}: accepted")


def _webhook_decision(decide):
    try:
        return "accepted", decide()
    except AuthError as exc:
        return "refused", exc.code


def _signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@st.composite
def webhook_delivery(draw) -> tuple[list[tuple[bytes, bytes]], str]:
    """Raw header list and body: signed with the current secret, the old one, another app's or nothing;
    either header spelling, present but empty, duplicated; shops allowed, not allowed, or garbage."""
    body = draw(st.one_of(text, st.just('{"id": 1, "email": "a@example.com"}')))
    signature = draw(st.one_of(st.sampled_from([SECRET, OLD_SECRET, "shpss_someone_else_0123456789abcdef"])
                               .map(lambda s: _signature(body.encode(), s)), st.just(""), text))
    shop = draw(st.one_of(st.sampled_from([SHOP, OTHER, "demo-store", "x.myshopify.com", "",
                                           SHOP + ".myshopify.com", SHOP.upper()]), text))
    headers = []
    for names, value in ((("x-shopify-hmac-sha256", "X-Shopify-Hmac-Sha256", "shopify-hmac-sha256"), signature),
                         (("x-shopify-shop-domain", "X-Shopify-Shop-Domain", "shopify-shop-domain"), shop)):
        for name in draw(st.lists(st.sampled_from(names), max_size=2)):
            headers.append((name.lower().encode(), draw(st.one_of(st.just(value), text)).encode("utf-8", "replace")))
    return headers, body


@FUZZ
@given(delivery=webhook_delivery())
def test_a_webhook_is_decided_as_shopifyapp_decides_it(delivery):
    """The receiver's check on the raw bytes (verify_webhook_body) names the same shop or refuses with the
    same code as shopifyapp's verify_webhook_req (through verify_webhook), for every header spelling,
    duplicate and empty value. One difference, both refusals: a non-ASCII signature made shopifyapp raise
    (``malformed_credentials``); it is simply not the signature (``invalid_hmac``) here."""
    raw_headers, body = delivery
    headers = Headers(raw=raw_headers)
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP, OTHER], OLD_SECRET)
    expected = _webhook_decision(lambda: verifier.verify_webhook("POST", "https://serve.example/webhooks",
                                                                 dict(headers), body))
    found = _webhook_decision(lambda: verifier.verify_webhook_body(body.encode(), headers))
    if expected == ("refused", "malformed_credentials"):
        assert found == ("refused", "invalid_hmac")
    else:
        assert found == expected


def test_a_webhook_signed_with_either_secret_names_its_shop():
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP], OLD_SECRET)
    body = b'{"id": 820982911946154508}'
    for secret in (SECRET, OLD_SECRET):
        headers = Headers({"X-Shopify-Hmac-Sha256": _signature(body, secret), "X-Shopify-Shop-Domain": SHOP})
        assert verifier.verify_webhook_body(body, headers) == Principal("webhook", SHOP)
    for headers, code in (({"X-Shopify-Hmac-Sha256": _signature(body + b" ", SECRET), "X-Shopify-Shop-Domain": SHOP},
                           "invalid_hmac"),
                          ({"X-Shopify-Shop-Domain": SHOP}, "missing_hmac_header"),
                          ({"X-Shopify-Hmac-Sha256": _signature(body, SECRET), "X-Shopify-Shop-Domain": OTHER},
                           "shop_not_allowed")):
        assert _webhook_decision(lambda: verifier.verify_webhook_body(body, Headers(headers))) == ("refused", code)
