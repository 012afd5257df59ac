"""``storeflow serve-recommendations``: the registered product recommender over KServe V1 + V2 on its own
port (see :mod:`storeflow.serving.recommender`), with the same Shopify auth as ``storeflow serve``."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from storeflow.components.cli_options import ConfigOption, SetOption, refusing, settings_from


def serve_recommendations(
    config: ConfigOption = None,
    set_: SetOption = None,
    alias: Annotated[str, typer.Option(help="Registry alias to serve.")] = "champion",
    version: Annotated[Optional[str], typer.Option(help="Registered version to serve instead of an alias's "
                                                   "(the local canary serves the champion and the challenger side "
                                                   "by side).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Listen address (default serving.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port (default recommendations.port).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Local development only: skip Shopify auth.")] = False,
) -> None:
    """Serve product recommendations (KServe V1 + V2) for a cart or product page, with Shopify auth."""
    import uvicorn

    settings = settings_from(config, list(set_ or []) + (["serving.auth=off"] if no_auth else []))
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported (see storeflow.serving.commands)
    from storeflow.serving.recommender import build_app, resolve

    with refusing(ValueError):
        served, model_dir = resolve(settings, alias, version)
        app = build_app(settings, served, model_dir)
    uvicorn.run(app, host=host or settings.serving.host, port=port or settings.recommendations.port,
                log_config=None, access_log=False)
