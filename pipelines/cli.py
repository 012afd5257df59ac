"""The ``storeflow`` command line: the one app, and every command registered on it, in the order
``--help`` lists them.

The commands live next to what they drive (pipelines, serving, the Shopify receiver) as plain functions;
only this module builds the app, and nothing below it imports it. Their shared ``--config``/``--set``
options are :mod:`storeflow.components.cli_options`. Heavy libraries are imported inside commands, so
``--help`` is instant.
"""

from __future__ import annotations

import typer

from storeflow.components.shopify import commands as shopify
from storeflow.pipelines import commands as pipelines
from storeflow.pipelines import monitor_commands as monitoring
from storeflow.serving import commands as serving
from storeflow.serving import recommend_commands

app = typer.Typer(help="storeflow: Kubeflow Pipelines + KServe ML for Shopify stores.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)

app.command("compile")(pipelines.compile_)
app.command("run")(pipelines.run)
app.command("submit")(pipelines.submit)
app.command("schedule")(pipelines.schedule)
app.command("demo")(pipelines.demo)
app.command("promote")(pipelines.promote)
app.command("rollback")(pipelines.rollback)
app.command("status")(pipelines.status)
app.command("serve")(serving.serve)
app.command("serve-recommendations")(recommend_commands.serve_recommendations)
app.command("serve-risk")(serving.serve_risk)
app.command("webhooks")(shopify.webhooks)
app.command("webhook-subscriptions")(shopify.webhook_subscriptions)
app.command("dead-letters")(shopify.dead_letters)
app.command("sync")(shopify.sync)
app.command("write-segments")(shopify.write_segments)
app.command("monitor")(monitoring.monitor)
app.command("simulate-shift")(monitoring.simulate_shift)
