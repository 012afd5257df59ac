"""bench/soak.py's own pure parts: each request kind builds what its name claims (checked with the
project's own verifiers where they decide), and the delivery accounting counts what its report says."""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from storeflow.components.shopify.payloads import check
from storeflow.serving.auth import AuthError, ShopifyVerifier

BENCH = Path(__file__).resolve().parents[1] / "bench"
WEBHOOK_LIMIT = 4096


@pytest.fixture(scope="module")
def bench():
    """bench/ modules import each other by name, as ``python bench/soak.py`` runs them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield {name: importlib.import_module(name) for name in ("common", "soak_traffic", "soak")}


@pytest.fixture
def build(bench):
    """Build one call of the named kind; every builder shares one traffic state, as in the soak."""
    traffic = bench["soak_traffic"].Traffic(customers=list(range(1, 40)), redactable=[500, 501],
                                            webhook_max_body=WEBHOOK_LIMIT, rng=random.Random(7))
    kinds = {kind.name: kind for kind in bench["soak_traffic"].KINDS}
    return lambda name: kinds[name].make(traffic)


@pytest.fixture
def verifier(bench):
    common = bench["common"]
    return ShopifyVerifier(common.CLIENT_ID, common.SECRET, [common.SHOP])


def requested(call) -> str:
    body = json.loads(call.body)
    return body["inputs"][0]["data"][0] if "inputs" in body else body["instances"][0]["customer_id"]


def depth(text: bytes) -> int:
    deepest = level = 0
    for byte in text:
        level += byte in b"[{"
        level -= byte in b"]}"
        deepest = max(deepest, level)
    return deepest


def test_each_credential_kind_is_accepted_or_rejected_as_named(build, verifier):
    rejected = {"no_token": "missing_credentials", "expired_token": "expired_id_token",
                "wrong_secret_token": "invalid_id_token", "alg_none_token": "invalid_id_token",
                "app_proxy_bad_signature": "invalid_signature"}
    for name, code in rejected.items():
        call = build(name)
        with pytest.raises(AuthError) as caught:
            verifier.verify("POST", f"http://127.0.0.1{call.path}", call.headers)
        assert caught.value.code == code, name
    for name in ("v2_valid", "v1_valid"):
        call = build(name)
        assert verifier.verify("POST", f"http://127.0.0.1{call.path}", call.headers).customer_id == requested(call)
    other = build("other_customer")
    assert verifier.verify("POST", "http://127.0.0.1/", other.headers).customer_id not in (None, requested(other))
    assert verifier.verify("POST", "http://127.0.0.1/", build("guest").headers).customer_id is None
    proxy = build("app_proxy_non_ascii_signature")
    assert parse_qs(urlparse(proxy.path).query)["signature"] == ["é"]
    assert "Authorization" not in proxy.headers


def test_body_attacks_carry_a_valid_token_and_the_body_they_are_named_after(bench, build, verifier):
    nested, huge, big, malformed = (build(n) for n in ("v2_nested_1000", "huge_content_length", "body_10mb",
                                                        "malformed_json"))
    for call in (nested, huge, big, malformed):
        verifier.verify("POST", f"http://127.0.0.1{call.path}", call.headers)  # gets past auth to the parser
    assert depth(nested.body) == 1000
    assert huge.content_length == 10**12 and len(huge.body) < 200 and huge.transport == "raw"
    assert len(big.body) == 10 * 1024 * 1024
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.body)
    unload = build("control_unload")
    assert unload.path.endswith("/unload") and "Authorization" not in unload.headers


def test_each_delivery_kind_is_signed_and_shaped_as_named(bench, build, verifier):
    def verify(call):
        verifier.verify_webhook("POST", "http://127.0.0.1/webhooks", call.headers, call.body.decode())
        return json.loads(call.body)

    for name, topic in (("orders_create", "orders/create"), ("refunds_create", "refunds/create"),
                        ("customers_redact", "customers/redact")):
        call = build(name)
        assert call.headers["X-Shopify-Topic"] == topic
        check(topic, verify(call))  # the receiver's own payload check passes
    assert verify(build("customers_redact"))["customer"]["id"] in (500, 501)
    update = build("orders_updated")
    assert update.headers["X-Shopify-Topic"] == "orders/updated" and verify(update)["id"] == update.entity
    assert verify(build("line_items_7"))["line_items"] == 7
    assert verify(build("created_at_yesterday"))["created_at"] == "yesterday"
    # shopifyapp parses a webhook body while verifying it: deep bodies are checked against the HMAC itself.
    signed = bench["common"].webhook_hmac
    deep, bogus = build("deep_body_signed"), build("deep_body_bad_hmac")
    assert depth(deep.body) == depth(bogus.body) == 5000
    assert deep.headers["X-Shopify-Hmac-Sha256"] == signed(deep.body, bench["common"].SECRET)
    assert bogus.headers["X-Shopify-Hmac-Sha256"] != signed(bogus.body, bench["common"].SECRET)
    with pytest.raises(AuthError):
        verify(build("bad_hmac"))
    assert not build("non_ascii_hmac").headers["X-Shopify-Hmac-Sha256"].isascii()
    assert len(build("oversized_body").body) > WEBHOOK_LIMIT
    slow = build("slow_body")
    assert slow.transport == "slow"
    verify(slow)  # signed: a receiver has to wait for the whole body
    first = build("orders_create")
    seen = set()
    while (again := build("redelivery")).webhook_id != first.webhook_id and len(seen) < 500:
        seen.add(again.webhook_id)
    assert (again.body, again.headers) == (first.body, first.headers)


def test_deliveries_report_counts_acknowledged_applied_duplicated(bench):
    report = bench["soak"].deliveries_report
    answers = {"a": ["accepted", "duplicate"], "b": ["accepted"], "c": ["accepted"], "d": ["accepted", "accepted"],
               "h": ["accepted"]}
    journal = {"a": ("t", "live"), "b": ("t", "live"), "c": (None, None), "d": ("t", "live"), "h": ("t", "dead")}
    answers["gone"] = ["accepted"]
    out = report(answers, {"a", "b", "c", "d", "gone"}, journal, {"h"}, journal_rows=5, store_excess=0)
    assert (out["acknowledged"], out["applied"], out["pending"], out["lost"], out["duplicated"]) == (5, 3, 1, 1, 1)
    assert (out["hostile_acknowledged"], out["hostile_dead_lettered"], out["redelivered_answered_duplicate"]) == (1, 1, 1)
    assert report({"a": ["accepted"]}, {"a"}, {"a": ("t", "live")}, set(), journal_rows=1, store_excess=2)["duplicated"] == 2
