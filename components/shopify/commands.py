"""``storeflow webhooks`` (the receiver) and ``storeflow sync`` (one incremental bulk pull)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from storeflow.pipelines.cli import ConfigOption, SetOption, console, settings_from


def register(app: typer.Typer) -> None:
    app.command()(webhooks)
    app.command()(sync)


def webhooks(
    config: ConfigOption = None,
    set_: SetOption = None,
    host: Annotated[Optional[str], typer.Option(help="Listen address (default shopify.webhook_host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port (default shopify.webhook_port).")] = None,
) -> None:
    """Receive Shopify webhooks: orders and refunds update online features; privacy requests erase or export."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify.webhooks import serve

    try:
        serve(settings, host=host, port=port)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def sync(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Pull what changed in the shop since the last sync (bulk export) into the raw store JSONL."""
    settings = settings_from(config, set_)
    from storeflow.components.shopify.admin import ShopifyError
    from storeflow.components.shopify.sync import pull

    try:
        result = pull(settings)
    except ShopifyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    since = result.since.isoformat() if result.since else "the beginning"
    console.print(f"pulled {result.records} records updated since {since} into {result.store}; "
                  f"next pull from {result.watermark.isoformat()}")
