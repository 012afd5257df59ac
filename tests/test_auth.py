"""Shopify request verification (components/shopify/verify.py), with Shopify's public app proxy vector, and
who may read what (serving/auth.py)."""

from __future__ import annotations

import time
from unittest import mock
from urllib.parse import urlencode

import jwt
import pytest

from storeflow.components.config import load_settings
from storeflow.components.shopify.verify import AuthError, ShopifyVerifier, shop_domain

CLIENT_ID = "test-client-id"
SECRET = "shpss_0123456789abcdef0123456789abcdef"
SHOP = "demo-store.myshopify.com"


@pytest.fixture
def verifier() -> ShopifyVerifier:
    return ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])


def session_token(secret: str = SECRET, **claims) -> str:
    now = int(time.time())
    payload = {"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID,
               "sub": "gid://shopify/Customer/42", "exp": now + 300, "nbf": now, "iat": now, "jti": "x"}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


URL = "https://serve.example/v1/models/m:predict"


def test_valid_checkout_session_token_names_shop_and_customer(verifier):
    principal = verifier.verify("POST", URL, bearer(session_token()))
    assert (principal.kind, principal.shop, principal.customer_id) == (
        "checkout_ui_extension", SHOP, "gid://shopify/Customer/42")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (lambda: session_token(secret="wrong"), "invalid_id_token"),
        (lambda: session_token(aud="another-app"), "invalid_aud"),
        (lambda: session_token(exp=int(time.time()) - 30), "expired_id_token"),
        (lambda: session_token(nbf=int(time.time()) + 60), "invalid_id_token"),
        (lambda: session_token(exp=None), "missing_exp"),
        (lambda: session_token(iss="https://other.myshopify.com", dest="https://other.myshopify.com"),
         "shop_not_allowed"),
        (lambda: session_token(iss="https://other.myshopify.com"), "shop_mismatch"),
        (lambda: "not-a-jwt", "invalid_id_token"),
    ],
    ids=["bad-signature", "wrong-audience", "expired", "not-yet-valid", "no-exp", "other-shop", "iss-dest-differ",
         "garbage"],
)
def test_bad_session_tokens_are_rejected_with_a_reason(verifier, token, code):
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", URL, bearer(token()))
    assert info.value.code == code


def test_clock_skew_within_ten_seconds_is_tolerated(verifier):
    now = int(time.time())
    verifier.verify("POST", URL, bearer(session_token(exp=now - 5, nbf=now + 5)))


def test_tokens_signed_with_the_previous_secret_pass_during_rotation():
    rotated = ShopifyVerifier(CLIENT_ID, "shpss_new_0123456789abcdef0123456789ab", [SHOP], old_client_secret=SECRET)
    assert rotated.verify("POST", URL, bearer(session_token())).shop == SHOP
    with pytest.raises(AuthError):
        ShopifyVerifier(CLIENT_ID, "shpss_new_0123456789abcdef0123456789ab", [SHOP]).verify("POST", URL, bearer(session_token()))


def test_no_credentials_at_all(verifier):
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", URL, {})
    assert info.value.code == "missing_credentials"


# Shopify's documented app proxy example.
PROXY_PARAMS = [("extra", "1"), ("extra", "2"), ("shop", "shop-name.myshopify.com"),
                ("logged_in_customer_id", "1"), ("path_prefix", "/apps/awesome_reviews"), ("timestamp", "1317327555")]
PROXY_SIGNATURE = "4c68c8624d737112c91818c11017d24d334b524cb5c2b8ba08daa056f7395ddb"


def proxy_url(params, signature) -> str:
    return "https://serve.example/apps/storeflow?" + urlencode([*params, ("signature", signature)])


def test_app_proxy_public_vector_verifies_at_its_timestamp():
    proxy = ShopifyVerifier(CLIENT_ID, "hush", ["shop-name.myshopify.com"])
    with mock.patch("time.time", return_value=1317327555 + 30):
        principal = proxy.verify("GET", proxy_url(PROXY_PARAMS, PROXY_SIGNATURE), {})
    assert (principal.kind, principal.shop, principal.customer_id) == ("app_proxy", "shop-name.myshopify.com", "1")


def test_app_proxy_public_vector_is_a_replay_today():
    proxy = ShopifyVerifier(CLIENT_ID, "hush", ["shop-name.myshopify.com"])
    with pytest.raises(AuthError) as info:
        proxy.verify("GET", proxy_url(PROXY_PARAMS, PROXY_SIGNATURE), {})
    assert info.value.code == "timestamp_too_old"


def test_app_proxy_tampered_parameter_or_other_shop_is_rejected():
    proxy = ShopifyVerifier(CLIENT_ID, "hush", ["shop-name.myshopify.com"])
    tampered = [(k, "2" if k == "logged_in_customer_id" else v) for k, v in PROXY_PARAMS]
    with mock.patch("time.time", return_value=1317327555), pytest.raises(AuthError) as info:
        proxy.verify("GET", proxy_url(tampered, PROXY_SIGNATURE), {})
    assert info.value.code == "invalid_signature"
    elsewhere = ShopifyVerifier(CLIENT_ID, "hush", ["demo-store.myshopify.com"])
    with mock.patch("time.time", return_value=1317327555), pytest.raises(AuthError) as info:
        elsewhere.verify("GET", proxy_url(PROXY_PARAMS, PROXY_SIGNATURE), {})
    assert info.value.code == "shop_not_allowed"


def test_webhook_hmac_over_the_raw_body():
    import base64
    import hashlib
    import hmac

    body = '{"id": 1}'
    digest = base64.b64encode(hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()).decode()
    headers = {"X-Shopify-Hmac-Sha256": digest, "X-Shopify-Shop-Domain": SHOP, "X-Shopify-Topic": "orders/create",
               "X-Shopify-Api-Version": "2025-10", "X-Shopify-Webhook-Id": "w1", "Content-Type": "application/json"}
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    assert verifier.verify_webhook("POST", "https://serve.example/webhooks", headers, body).shop == SHOP
    with pytest.raises(AuthError):
        verifier.verify_webhook("POST", "https://serve.example/webhooks", headers, '{"id": 2}')


def test_auth_needs_the_secret_unless_explicitly_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"serving": {"shopify_client_id": CLIENT_ID}})
    with pytest.raises(ValueError, match="SHOPIFY_API_SECRET"):
        ShopifyVerifier.from_settings(settings, environ={})
    verifier = ShopifyVerifier.from_settings(settings, environ={"SHOPIFY_API_SECRET": SECRET})
    # The project's shop is the default allow-list.
    assert verifier.allowed_shops == {settings.project.shop_domain}
    assert load_settings().serving.auth == "shopify"


def test_shop_domain_normalisation():
    assert shop_domain("https://Demo-Store.myshopify.com/") == "demo-store.myshopify.com"
    assert shop_domain("demo-store") == "demo-store.myshopify.com"
    assert shop_domain(None) == ""


def test_admin_extension_tokens_are_staff_and_bound_to_no_customer(verifier):
    from storeflow.serving.auth import allowed_customer

    admin = verifier.verify_checkout("POST", "https://x/infer", {
        "authorization": f"Bearer {session_token(iss=f'https://{SHOP}/admin', sub='7001')}"})
    assert admin.kind == "admin_ui_extension" and admin.shop == SHOP and admin.customer_id is None
    checkout = verifier.verify_checkout("POST", "https://x/infer", {"authorization": f"Bearer {session_token()}"})
    guest = verifier.verify_checkout("POST", "https://x/infer", {"authorization": f"Bearer {session_token(sub=None)}"})
    assert allowed_customer(admin, "own") is None
    assert allowed_customer(checkout, "own") == "gid://shopify/Customer/42"
    assert allowed_customer(guest, "own") == ""
    assert allowed_customer(checkout, "shop") is None and allowed_customer(guest, "shop") is None
    with pytest.raises(AuthError, match="invalid_aud"):  # the admin verifier checks the audience too
        verifier.verify_checkout("POST", "https://x/infer", {
            "authorization": f"Bearer {session_token(iss=f'https://{SHOP}/admin', aud='other-app')}"})


def test_customer_check_names_the_customers_a_session_may_not_score():
    from storeflow.serving.transformer import ForbiddenCustomer, check_customers

    check_customers([42, 42], "gid://shopify/Customer/42")
    check_customers([1, 2], None)
    with pytest.raises(ForbiddenCustomer, match="only its logged-in customer 42, not 7, 9"):
        check_customers([42, 9, 7], "gid://shopify/Customer/42")
    with pytest.raises(ForbiddenCustomer, match="no logged-in customer"):
        check_customers([42], "")


@pytest.mark.parametrize("url", [
    f"https://serve.example/apps/storeflow?shop={SHOP}&timestamp={{now}}&signature=%C3%A9",  # non-ASCII
    f"https://serve.example/apps/storeflow?shop={SHOP}&timestamp={{now}}&signature=%FF",
    "https://[serve.example/apps/storeflow?signature=ab",  # a Host header that is no host
], ids=["non-ascii-signature", "latin1-signature", "bad-host"])
def test_malformed_app_proxy_requests_are_auth_errors_not_crashes(verifier, url):
    with pytest.raises(AuthError) as info:
        verifier.verify("GET", url.format(now=int(time.time())), {})
    assert info.value.code == "malformed_credentials"


@pytest.mark.parametrize("claims", [{"dest": 123}, {"iss": 7}, {"sub": ["gid://shopify/Customer/1"]}],
                         ids=["dest-number", "iss-number", "sub-list"])
def test_signed_tokens_with_non_string_shop_or_customer_claims_are_rejected(verifier, claims):
    """Only the secret's holder can sign these; still an AuthError, never an exception escaping."""
    import json

    now = int(time.time())
    payload = {"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID, "sub": "gid://shopify/Customer/1",
               "exp": now + 60, "nbf": now, **claims}
    token = jwt.PyJWS().encode(json.dumps(payload).encode(), SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        verifier.verify("POST", URL, bearer(token))
    assert info.value.code in ("invalid_id_token", "malformed_credentials")


def test_a_caller_reads_only_its_own_shops_data():
    from storeflow.serving.auth import Principal, may_read_shop

    for kind in ("admin_ui_extension", "checkout_ui_extension", "app_proxy"):
        assert may_read_shop(Principal(kind, SHOP), SHOP)
        assert not may_read_shop(Principal(kind, "other-store.myshopify.com"), SHOP)


def _who(principal) -> tuple:
    return principal.kind, principal.shop, principal.customer_id  # a plain tuple of strings: untracked


def test_remembered_tokens_answer_again_and_leave_nothing_for_the_garbage_collector(verifier):
    """Each checkout's session token is verified once, then answered from memory until it expires: with as
    many distinct customers as a large store's traffic brings, what is remembered must hold nothing the
    collector tracks. Holding a Principal object per token, 50,000 remembered tokens per worker were 100,000
    objects every full collection walked (~11 ms each), and every new token brought the next one nearer."""
    import gc

    tokens = [session_token(sub=f"gid://shopify/Customer/{n}", jti=str(n)) for n in range(2000)]
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        first = [_who(verifier.verify("POST", URL, bearer(t))) for t in tokens]
        gc.collect()
        left = len(gc.get_objects()) - before
    finally:
        gc.enable()
    with mock.patch("jwt.decode", side_effect=AssertionError("verified twice")):
        again = [_who(verifier.verify("POST", URL, bearer(t))) for t in tokens]
    assert again == first and first[7] == ("checkout_ui_extension", SHOP, "gid://shopify/Customer/7")
    assert left < 100, left
