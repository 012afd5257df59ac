"""``storeflow serve``: the local KServe server for the registered model (see :mod:`storeflow.serving.server`)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from storeflow.components.cli_options import ConfigOption, SetOption, refusing, settings_from


def serve(
    config: ConfigOption = None,
    set_: SetOption = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Registered version to serve.")] = None,
    alias: Annotated[Optional[str], typer.Option(help="Registry alias to serve (default serving.model_alias).")] = None,
    canary_version: Annotated[Optional[str], typer.Option(help="Second version served beside the main one.")] = None,
    canary_percent: Annotated[Optional[int], typer.Option(min=0, max=100, help="Customers sent to the canary.")] = None,
    host: Annotated[Optional[str], typer.Option(help="Listen address (default serving.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port (default serving.port).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Local development only: skip Shopify auth.")] = False,
) -> None:
    """Serve predictions (KServe V1 + V2) for the registered model, with Feast features and Shopify auth."""
    overrides = list(set_ or []) + (["serving.auth=off"] if no_auth else [])
    settings = settings_from(config, overrides)
    # kserve parses sys.argv when imported, and argparse takes our --config for an abbreviation of its
    # --configure_logging. Typer has read our arguments already: kserve gets none.
    sys.argv = sys.argv[:1]
    from storeflow.serving.server import serve as run

    with refusing(ValueError):
        run(settings, version=version, alias=alias, canary_version=canary_version, canary_percent=canary_percent,
            host=host, port=port, workers=workers)


def serve_risk(
    config: ConfigOption = None,
    set_: SetOption = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Registered version to serve.")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias to serve.")] = "champion",
    host: Annotated[Optional[str], typer.Option(help="Listen address (default serving.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port (default risk.port).")] = None,
) -> None:
    """Serve the order risk model (KServe V1 + V2) for the webhook receiver's risk.endpoint: order features in,
    score, level and facts out, each prediction logged with its features."""
    import uvicorn

    settings = settings_from(config, list(set_ or []))
    if port is not None:
        settings = settings.model_copy(update={"risk": settings.risk.model_copy(update={"port": port})})
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported (see serve above)
    from storeflow.serving.risk import build_app, resolve

    with refusing(ValueError):
        served, model_dir = resolve(settings, alias, version)
        app = build_app(settings, served, model_dir)
    uvicorn.run(app, host=host or settings.serving.host, port=settings.risk.port, log_config=None, access_log=False)
