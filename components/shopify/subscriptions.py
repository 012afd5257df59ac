"""storeflow's webhook subscriptions, each topic with the fields storeflow reads (``include_fields``), listed from
the pydantic models that validate them, so what Shopify is asked to send and what the code reads cannot drift.

Shopify sends the whole REST resource unless a subscription names ``include_fields`` (nested with a period, as
``line_items.price``); then it sends, and signs, only those. A whole ``orders/create`` is ~9.5 KB with two line
items, of which storeflow reads ~1.4 KB: every byte more is read, signed, parsed, journaled and kept by the receiver
and parsed again by the risk scorer. Kept bodies hold only what storeflow reads, too (personal data it never uses
is not stored). Paths go two names deep at most, as Shopify's own example does (``variants.price``): a money set
is kept whole below that (``total_price_set.shop_money``: amount and currency code).

The privacy topics are Shopify's compliance topics, a subscription of their own with no field list; a topic
whose model reads nothing of the body (``app/uninstalled``: the shop is the signed header) gets none either, since
an empty list means every field to Shopify.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from storeflow.components.shopify import payloads, products

MAX_DEPTH = 2  # names in a path: Shopify documents one level of nesting (``variants.price``)
COMPLIANCE_TOPICS = payloads.PRIVACY_TOPICS


def _models() -> dict[str, tuple[type[BaseModel], ...]]:
    """Topic -> the models its body is read through: the receiver's check and the applier's rows and, for orders,
    the risk scorer's fields (gateways, addresses, cancel reason, the customer's account age; its order model is
    the two together)."""
    from storeflow.components.risk.live import RiskFields

    models: dict[str, tuple[type[BaseModel], ...]] = {topic: (model,) for topic, model in payloads.MODELS.items()
                                                      if topic not in COMPLIANCE_TOPICS}
    for topic in payloads.ORDER_TOPICS:
        models[topic] += (RiskFields,)
    models.update(dict.fromkeys(products.PRODUCT_TOPICS, (products.Product,)))
    models.update(dict.fromkeys(products.INVENTORY_TOPICS, (products.InventoryLevel,)))
    return models


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, in a list, optional or annotated), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _nested_model(typing.get_args(annotation)[0])
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := _nested_model(arg)) is not None:
                return found
    return None


def field_paths(model: type[BaseModel], depth: int = MAX_DEPTH) -> list[str]:
    """The paths of every field ``model`` reads, at most ``depth`` names long (a deeper model is kept whole)."""
    paths = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        inner = _nested_model(info.annotation)
        if inner is None or depth == 1:
            paths.append(key)
        else:
            paths.extend(f"{key}.{sub}" for sub in field_paths(inner, depth - 1))
    return paths


def include_fields(topic: str) -> tuple[str, ...]:
    """What storeflow reads of ``topic``'s body, as ``include_fields``; () for a topic whose body it does not read
    (subscribe without a list)."""
    models = _models()
    if topic not in models:
        raise ValueError(f"storeflow does not subscribe to {topic!r}; it takes {sorted(models)}")
    return tuple(sorted({path for model in models[topic] for path in field_paths(model)}))


def subscriptions() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(topics, include_fields) of each subscription: topics that read the same fields share one."""
    grouped: dict[tuple[str, ...], list[str]] = {}
    for topic in sorted(_models()):
        grouped.setdefault(include_fields(topic), []).append(topic)
    return sorted(((tuple(topics), fields) for fields, topics in grouped.items()), key=lambda item: item[0])


def check_uri(uri: str) -> str:
    """``uri`` if Shopify can deliver to it (an https address; Google Pub/Sub or Amazon EventBridge as Shopify spells
    them) and it fits a TOML string as it is; ``ValueError`` naming what is wrong."""
    if not uri.startswith(("https://", "pubsub://", "arn:aws:events:")):
        raise ValueError(f"webhook uri {uri!r} must start with https:// (or pubsub://, arn:aws:events:), as Shopify "
                         "delivers only there")
    if any(c in uri for c in '"\\') or not uri.isprintable() or any(c.isspace() for c in uri):
        raise ValueError(f"webhook uri {uri!r} has a quote, backslash, space or control character")
    return uri


def app_toml(uri: str, api_version: str) -> str:
    """The ``[webhooks]`` part of ``shopify.app.toml`` for a receiver at ``uri``."""
    check_uri(uri)

    def strings(values: Iterable[str]) -> str:
        return "[" + ", ".join(f'"{value}"' for value in values) + "]"

    lines = ["[webhooks]", f'api_version = "{api_version}"']
    for topics, fields in subscriptions():
        lines += ["", "[[webhooks.subscriptions]]", f"topics = {strings(topics)}", f'uri = "{uri}"']
        if fields:
            lines.append(f"include_fields = {strings(fields)}")
    lines += ["", "[[webhooks.subscriptions]]  # mandatory for every app in the App Store",
              f"compliance_topics = {strings(sorted(COMPLIANCE_TOPICS))}", f'uri = "{uri}"']
    return "\n".join(lines) + "\n"


def filtered(payload: Any, fields: Iterable[str]) -> Any:
    """``payload`` as Shopify sends it under ``include_fields`` = ``fields``: only the named fields, the nested ones
    inside every element of a list; a field the resource does not have is left out. What tests and benchmarks
    deliver in its place (no network here to ask Shopify)."""
    tree: dict[str, dict] = {}
    for path in fields:
        node = tree
        for name in path.split("."):
            node = node.setdefault(name, {})
    return _keep(payload, tree)


def _keep(value: Any, tree: Mapping[str, dict]) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        return [_keep(item, tree) for item in value]
    if not isinstance(value, Mapping):
        return value
    return {name: _keep(value[name], below) for name, below in tree.items() if name in value}
