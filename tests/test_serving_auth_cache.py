"""The serving path remembers verified session tokens (components/shopify/verify.py): same answers, until the
token expires."""

from __future__ import annotations

import time
from types import SimpleNamespace

import jwt
import pytest

from storeflow.components.shopify import verify
from storeflow.components.shopify.verify import AuthError, ShopifyVerifier

CLIENT_ID = "test-client-id"
SECRET = "shpss_0123456789abcdef0123456789abcdef"
SHOP = "demo-store.myshopify.com"
URL = "https://serve.example/v2/models/m/infer"


def bearer(**claims) -> dict[str, str]:
    now = int(time.time())
    payload = {"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID,
               "sub": "gid://shopify/Customer/42", "exp": now + 60, "nbf": now, "iat": now, **claims}
    return {"Authorization": f"Bearer {jwt.encode(payload, SECRET, algorithm='HS256')}"}


def test_a_remembered_token_still_names_its_shop_and_customer():
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    headers = bearer()
    first = verifier.verify("POST", URL, headers)
    again = verifier.verify("POST", URL, headers)
    assert first == again and again.shop == SHOP and again.customer_id == "gid://shopify/Customer/42"
    assert verifier.cached_checkout(headers["Authorization"]) == first


def test_a_remembered_token_is_checked_again_once_it_expires(monkeypatch):
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    headers = bearer()
    verifier.verify("POST", URL, headers)
    checks = []
    original = verifier._checkout_claims
    monkeypatch.setattr(verifier, "_checkout_claims", lambda value: checks.append(1) or original(value))
    verifier.verify("POST", URL, headers)
    assert checks == []  # remembered
    later = time.time() + 3600
    monkeypatch.setattr(verify, "time", SimpleNamespace(time=lambda: later))
    assert verifier.cached_checkout(headers["Authorization"]) is None
    verifier.verify("POST", URL, headers)  # not expired for PyJWT's clock, so valid again
    assert checks == [1]


def test_rejections_are_not_remembered_and_stay_rejected():
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    elsewhere = bearer(dest="https://intruder.myshopify.com", iss="https://intruder.myshopify.com")
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify("POST", URL, elsewhere)
    assert verifier.cached_checkout(elsewhere["Authorization"]) is None
    wrong_secret = {"Authorization": "Bearer " + jwt.encode(
        {"aud": CLIENT_ID, "dest": SHOP, "iss": SHOP, "exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256")}
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify("POST", URL, wrong_secret)


def test_the_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(verify, "TOKEN_CACHE_SIZE", 5)
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    for i in range(12):
        verifier.verify("POST", URL, bearer(sub=f"gid://shopify/Customer/{i}"))
    assert len(verifier._tokens) <= 5


def test_a_full_cache_forgets_its_oldest_tokens_and_keeps_the_recent_ones(monkeypatch):
    monkeypatch.setattr(verify, "TOKEN_CACHE_SIZE", 5)
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    tokens = [bearer(sub=f"gid://shopify/Customer/{i}")["Authorization"] for i in range(12)]
    for token in tokens:
        verifier.verify("POST", URL, {"Authorization": token})
    assert [verifier.cached_checkout(t) is not None for t in tokens] == [False] * 7 + [True] * 5
