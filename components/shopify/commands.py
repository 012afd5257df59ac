"""``storeflow webhooks`` (the receiver), ``storeflow webhook-subscriptions`` (what to subscribe it to),
``storeflow dead-letters`` (events the applier parked) and ``storeflow sync`` (one incremental bulk pull)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from storeflow.components.cli_options import ConfigOption, SetOption, console, refusing, settings_from


def webhooks(
    config: ConfigOption = None,
    set_: SetOption = None,
    host: Annotated[Optional[str], typer.Option(help="Listen address (default shopify.webhook_host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port (default shopify.webhook_port).")] = None,
) -> None:
    """Receive Shopify webhooks: orders and refunds update online features; privacy requests erase or export."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify.webhooks import serve

    with refusing(ValueError):
        serve(settings, host=host, port=port)


def webhook_subscriptions(
    uri: Annotated[str, typer.Option(help="Where Shopify delivers: the receiver's public https address and path.")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Print the webhooks table of shopify.app.toml: every topic the receiver takes, with the fields storeflow
    reads (include_fields) at shopify.api_version, and the compliance topics."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify.subscriptions import app_toml

    with refusing(ValueError):
        typer.echo(app_toml(uri, settings.shopify.api_version), nl=False)


def dead_letters(
    config: ConfigOption = None,
    set_: SetOption = None,
    requeue: Annotated[Optional[list[str]], typer.Option(help="Hand this parked webhook id back to the applier "
                                                                 "(repeatable).")] = None,
    requeue_all: Annotated[bool, typer.Option(help="Hand every parked event back to the applier.")] = False,
) -> None:
    """List webhook events the applier parked (one JSON line each: id, shop, topic, times, reason), or requeue them."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify import layout
    from storeflow.components.shopify.journal import connect, read_dead_letters, requeue as hand_back

    if not (requeue or requeue_all):
        for row in read_dead_letters(layout.journal_path(settings)):
            typer.echo(json.dumps(row))
        return
    conn = connect(layout.journal_path(settings))
    try:
        count = hand_back(conn, None if requeue_all else list(requeue or []))
    finally:
        conn.close()
    console.print(f"requeued {count} event(s); the running applier picks them up")


def sync(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Pull what changed in the shop since the last sync (bulk export) into the raw store JSONL."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify.admin import ShopifyError
    from storeflow.components.shopify.sync import pull

    with refusing(ShopifyError, code=1):
        result = pull(settings)
    since = result.since.isoformat() if result.since else "the beginning"
    console.print(f"pulled {result.records} records updated since {since} into {result.store}; "
                  f"next pull from {result.watermark.isoformat()}")


def write_segments(
    config: ConfigOption = None,
    set_: SetOption = None,
    version: Annotated[Optional[str], typer.Option(help="Model version to score with (default: the champion).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Score and queue, but send nothing to Shopify.")] = False,
) -> None:
    """Write every customer's spend tier and repeat probability to Shopify (customer metafields in namespace
    storeflow), for segments: score with the champion, queue what changed, define the metafields if Shopify
    has no definition yet (segments filter only on defined ones), send the values (metafieldsSet)."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify import metafields
    from storeflow.components.shopify.admin import AdminClient, ShopifyError, credentials

    with refusing(ValueError, ShopifyError, code=1):
        served, segments = metafields.champion_segments(settings, version)
        db = metafields.connect(metafields.outbox_path(settings))
        try:
            changed = metafields.enqueue(db, segments, served)
            console.print(f"model v{served}: {len(segments)} customers scored, {changed} new or changed queued")
            if dry_run:
                return
            client = AdminClient(settings, credentials(settings))
            try:
                created = metafields.ensure_definitions(client)
                if created:
                    console.print(f"created the customer metafield definition(s) {', '.join(created)} "
                                  f"(namespace {metafields.NAMESPACE}): segments can filter on them")
                result = metafields.drain(db, client)
            finally:
                client.close()
        finally:
            db.close()
    console.print(f"sent {result.sent} customers in {result.calls} metafieldsSet call(s); rejected {result.rejected} "
                  f"(Shopify's reasons in {metafields.outbox_path(settings)}); still pending {result.pending}")
    if result.pending:
        raise typer.Exit(1)
