"""CLI commands that compile, run, submit and schedule pipelines, and the demo."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from storeflow.components.cli_options import ConfigOption, SetOption, console, fail, refusing, settings_from
from storeflow.pipelines.pipeline_runs import run_pipeline

HostOption = Annotated[Optional[str], typer.Option("--host", help="Kubeflow Pipelines API URL (default kfp.host).")]
TokenOption = Annotated[Optional[str], typer.Option("--token", envvar="STOREFLOW_KFP_TOKEN",
                                                    help="Bearer token (default: in-cluster token file if present).")]
PipelineOption = Annotated[str, typer.Option("--pipeline", help="training, monitoring or recommendations.")]


def compile_(
    config: ConfigOption = None,
    set_: SetOption = None,
    check: Annotated[bool, typer.Option("--check", help="Fail if the checked-in YAML is stale; write nothing.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output dir (default: the repo's manifests/).")] = None,
) -> None:
    """Compile the pipelines and components to manifests/ (pipeline and component YAML).

    The image, volume, Secret names, resources, retries and timeouts come from the settings --config/--set
    give (read as every command reads them: file, environment, then --set). With neither, the config model's
    defaults, which the checked-in manifests hold: never a config file or environment that happens to be around.
    """
    from storeflow.pipelines.compile import MANIFESTS, check as check_stale, compile_to

    settings = settings_from(config, set_) if config or set_ else None
    if check:
        result = check_stale(out or MANIFESTS, settings)
        if result.stale:
            console.print(Text.assemble((f"stale compiled YAML: {', '.join(result.stale)}", "red"),
                                        " (run `storeflow compile`)"))
            console.print(result.diff, highlight=False)
            raise typer.Exit(1)
        console.print("compiled YAML is up to date")
        return
    try:
        written = compile_to(out or MANIFESTS, settings)
    except OSError as exc:  # --out a file, a directory without write permission
        fail(f"cannot write the compiled YAML under {out or MANIFESTS}: {exc.strerror or exc} ({exc.filename})")
    for path in written:
        console.print(f"wrote {path}")


def run(config: ConfigOption = None, set_: SetOption = None,
        pipeline: Annotated[str, typer.Option("--pipeline", help="training, recommendations or risk.")] = "training",
        ) -> None:
    """Run a pipeline (training by default) on this machine with kfp.local (the same pipeline a cluster runs)."""
    settings = settings_from(config, set_)
    if pipeline == "recommendations":
        _run_recommendations(settings)
    elif pipeline == "risk":
        _run_risk(settings)
    elif pipeline == "training":
        _run_training(settings)
    else:
        raise typer.BadParameter(f"unknown pipeline {pipeline!r}: training, recommendations or risk",
                                 param_hint="--pipeline")


def _run_with_report(name: str, pipeline, stages, settings, *tasks: str):
    """Run a pipeline whose tasks write a Markdown report (risk; the recommender's evaluate, register's model
    card) and print those reports, in the order of ``tasks`` (``<task>`` for its ``report``, or
    ``<task>/<output>``)."""
    result = run_pipeline(name, pipeline, settings, stages)
    artifacts = result.log.parent / "artifacts"
    for task in tasks:
        for report in artifacts.glob(f"*/{task if '/' in task else f'{task}/report'}"):
            console.print(report.read_text(), highlight=False)
    console.print(f"model and report: {artifacts} · pipeline log: {result.log} · {result.seconds:.1f} s")
    return result


def _run_risk(settings):
    from storeflow.pipelines.risk import STAGES, risk_pipeline

    return _run_with_report("risk", risk_pipeline, STAGES, settings, "risk")


def _run_recommendations(settings):
    from storeflow.pipelines.recommendations import STAGES, recommendations_pipeline

    return _run_with_report("recommendations", recommendations_pipeline, STAGES, settings, "evaluate-recommender",
                            "register/model_card")


def _run_training(settings):
    from storeflow.pipelines.training import STAGES, training_pipeline

    result = run_pipeline("training", training_pipeline, settings, STAGES)
    _print_summary(settings, result)
    return result


def _print_summary(settings, result) -> None:
    import json

    from rich.table import Table

    registration = json.loads(result.output)
    table = Table(title=f"model {registration['model_name']} v{registration['version']}")
    table.add_column("metric")
    table.add_column("challenger", justify="right")
    table.add_column("champion (same holdout)", justify="right")
    evaluation = _evaluation_of(settings, registration)
    champion_metrics = evaluation.get("champion_metrics") or {}
    for name, value in evaluation.get("challenger_metrics", {}).items():
        before = champion_metrics.get(name)
        table.add_row(name, f"{value:.4f}", "-" if before is None else f"{before:.4f}")
    console.print(table)
    verdict = ("promoted to champion", "green") if registration["promoted"] else ("champion kept", "yellow")
    console.print(Text.assemble(verdict, f": {evaluation.get('reason', '')}"))
    console.print(f"champion: v{registration['champion_version']} · challenger: v{registration['version']}")
    console.print(f"MLflow: {settings.tracking_uri}  (mlflow ui --backend-store-uri {settings.tracking_uri})")
    console.print(f"Feast repo: {settings.feature_repo_dir}")
    console.print(f"artifacts (snapshot, training set, model, model card, reports): {result.log.parent / 'artifacts'}")
    console.print(f"pipeline log: {result.log} · {result.seconds:.1f} s")


def _evaluation_of(settings, registration: dict) -> dict:
    """The evaluation recorded on the registered version (tags), for the summary table."""
    from storeflow.components import tracking

    client = tracking.connect(settings)
    name = registration["model_name"]
    version = client.get_model_version(name, registration["version"])

    def tagged(prefix: str) -> dict:
        return {k.removeprefix(prefix): float(v) for k, v in version.tags.items() if k.startswith(prefix)}

    challenger, champion = tagged("holdout."), tagged("champion_holdout.")
    return {"challenger_metrics": challenger, "champion_metrics": champion,
            "reason": version.tags.get("storeflow.reason", "")}


def submit(
    config: ConfigOption = None,
    set_: SetOption = None,
    host: HostOption = None,
    token: TokenOption = None,
    run_name: Annotated[Optional[str], typer.Option("--run-name")] = None,
    pipeline: PipelineOption = "training",
) -> None:
    """Submit a compiled pipeline (training by default) to a Kubeflow Pipelines API."""
    from storeflow.pipelines.submit import submit as do_submit

    settings = settings_from(config, set_)
    with refusing(ValueError, FileNotFoundError):
        submitted = do_submit(settings, host=host, token=token, run_name=run_name, pipeline=pipeline)
    console.print(f"submitted run {submitted.run_id}: {submitted.url}")


def schedule(
    cron: Annotated[str, typer.Argument(help="KFP cron, 6 fields with seconds first, e.g. '0 0 3 * * *'.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    host: HostOption = None,
    token: TokenOption = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Default storeflow-retraining / storeflow-monitoring.")] = None,
    pipeline: PipelineOption = "training",
) -> None:
    """Schedule a recurring run on the cluster: retraining (default) or monitoring (--pipeline monitoring)."""
    from storeflow.pipelines.submit import schedule as do_schedule

    settings = settings_from(config, set_)
    with refusing(ValueError, FileNotFoundError):
        job_id = do_schedule(settings, cron, host=host, token=token, name=name, pipeline=pipeline)
    console.print(f"recurring run {job_id} created: {cron}")


def demo(
    config: ConfigOption = None,
    set_: SetOption = None,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="Also run the monitoring loop after training.")] = True,
) -> None:
    """Train end to end on embedded defaults; then shift the store's traffic and let monitoring answer it."""
    from storeflow.pipelines import monitor_commands as monitoring

    settings = settings_from(config, set_)
    console.rule("1 · training pipeline: synthetic Shopify store → registered champion")
    _run_training(settings)
    if loop:
        _demo_needs_a_champion(settings)
        from storeflow.components.deploy.local import rollouts

        console.rule("2 · a holiday promotion shifts what the served model sees")
        monitoring.simulate_shift(config, set_)
        before = len(rollouts(settings))
        console.rule("3 · monitoring pipeline: Evidently drift report → retraining when critical")
        monitoring.monitor(config, set_)
        if settings.deploy.target == "local":
            console.rule("4 · canary on storeflow serve: the challenger at each traffic step, judged on /metrics")
            _demo_canary(settings, before)
    console.rule("5 · recommendations pipeline: the same snapshot → item-item recommender vs popularity and "
                 "bought-together")
    _demo_recommendations(settings)
    console.rule("6 · order risk: a store with fraud → risk model vs Shopify's level and rules → served over KServe")
    _demo_risk(settings)
    console.rule("where to look")
    console.print(f"state: {settings.project.state_dir}  (snapshots, Feast repo, mlflow.db, runs/, monitoring/)")
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {settings.tracking_uri}")
    console.print("serve the champion: storeflow serve --no-auth   ·   compiled pipelines: manifests/pipelines/")


def _demo_recommendations(settings) -> None:
    """Train and register the recommender, then serve the champion (`storeflow serve-recommendations`, a process
    of its own, auth off as with --no-auth) and ask it, as the theme block does, what to show beside the store's
    newest cart."""
    from storeflow.components import tracking

    result = _run_recommendations(settings)
    if tracking.current_champion(tracking.connect(settings), settings.recommendations.model_name) is None:
        console.print("no recommender champion (the gate kept the model out): nothing to serve")
        return
    local = settings.model_copy(update={"serving": settings.serving.model_copy(update={"auth": "off"})})
    url = f"http://{settings.serving.host}:{settings.recommendations.port}"
    with _served(local, _SERVE_RECOMMENDATIONS, f"{url}/v2/models/{settings.recommendations.model_name}/ready",
                 settings.project.state_dir / "serving" / "serve-recommendations.log") as up:
        if up:
            _recommend_for_newest_cart(settings, url)
    console.print(f"recommendations pipeline {result.seconds:.1f} s · live: storeflow serve-recommendations "
                  f"(V1 and V2 on {url}, Shopify auth unless --no-auth) · the theme block and checkout extension: "
                  "extensions/")


@contextmanager
def _served(settings, snippet: str, ready_url: str, log: Path, env: dict[str, str] | None = None):
    """A server of the demo's own settings in a process of its own (``env`` added to its environment); yields
    whether it came up (within 120 s)."""
    import os
    import subprocess
    import sys
    import time

    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-c", snippet, settings.to_json()], stdout=log.open("wb"),
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        deadline = time.monotonic() + 120
        while not _ready(ready_url):
            if server.poll() is not None or time.monotonic() > deadline:
                console.print(Text.assemble(("the server did not start", "red"), f"; its log: {log}"))
                yield False
                return
            time.sleep(0.5)
        yield True
    finally:
        server.terminate()
        server.wait(20)


def _recommend_for_newest_cart(settings, url: str) -> None:
    """The newest order's products as a cart, sent over V1 as the theme block sends it; the answer by title."""
    import httpx

    from storeflow.components.ingest.snapshot import newest_snapshot
    from storeflow.components.tables import read_table

    snapshot = newest_snapshot(settings.data_dir / "snapshots")
    orders, items = read_table(snapshot, "orders"), read_table(snapshot, "line_items")
    titles = dict(zip(read_table(snapshot, "products")["product_id"], read_table(snapshot, "products")["title"]))
    newest = orders.sort_values("created_at").iloc[-1]
    cart = sorted(set(items.loc[items["order_id"] == newest["order_id"], "product_id"].astype(int)))
    answer = httpx.post(f"{url}/v1/models/{settings.recommendations.model_name}:predict", timeout=30,
                        json={"instances": [{"products": [f"gid://shopify/Product/{p}" for p in cart], "k": 5}]})
    answer.raise_for_status()
    shown = [int(gid.rsplit("/", 1)[1]) for gid in answer.json()["predictions"][0]["products"]]
    console.print(f"cart of order {newest['order_id']}: " + ", ".join(str(titles.get(p, p)) for p in cart),
                  highlight=False)
    console.print("recommended: " + ", ".join(str(titles.get(p, p)) for p in shown), highlight=False)
    console.print(f"answered by {settings.recommendations.model_name} v{answer.json()['model_version']} "
                  f"(KServe V1, {url})")


# `storeflow serve-recommendations` with the demo's own settings (given as JSON; kserve parses sys.argv on import)
_SERVE_RECOMMENDATIONS = ("import sys, uvicorn; from storeflow.components.config import load_settings; "
                          "s = load_settings(sys.argv.pop(1)); "
                          "from storeflow.serving.recommender import build_app, resolve; v, d = resolve(s); "
                          "uvicorn.run(build_app(s, v, d), host=s.serving.host, port=s.recommendations.port, "
                          "log_config=None, access_log=False)")


DEMO_FRAUD_RATE = 0.003  # the default store has no fraud: the risk step generates it with this share of fraud


def _demo_risk(settings) -> None:
    """Train the risk model on the store with fraud, then serve the champion (`storeflow serve-risk`, a process
    of its own) and score the store's newest orders through it as the webhook receiver would."""
    from storeflow.components import tracking

    if not settings.ingest.synthetic.fraud_rate and settings.ingest.source == "synthetic":
        synthetic = settings.ingest.synthetic.model_copy(update={"fraud_rate": DEMO_FRAUD_RATE})
        settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"synthetic": synthetic})})
        console.print(f"the same store with synthetic.fraud_rate {DEMO_FRAUD_RATE} (the default store has no fraud)")
    result = _run_risk(settings)
    if tracking.current_champion(tracking.connect(settings), settings.risk.model_name) is None:
        console.print("no risk champion (the gate kept the model out): nothing to serve")
        return
    url = f"http://{settings.serving.host}:{settings.risk.port}"
    with _served(settings, _SERVE_RISK, f"{url}/v2/models/{settings.risk.inference_service}/ready",
                 settings.project.state_dir / "risk" / "serve-risk.log") as up:
        if not up:
            return
        _score_newest_orders(settings, url)
        _webhook_to_assessment(settings, url)
    console.print(f"risk pipeline {result.seconds:.1f} s · live: storeflow serve-risk, then storeflow webhooks "
                  f"--set risk.endpoint={url}: every orders/create is scored and its assessment written back "
                  "(orderRiskAssessmentCreate) · predictions with their features: "
                  f"{settings.project.state_dir / 'risk' / 'predictions'}")


# `storeflow serve-risk` with the demo's own settings (given as JSON, not a config file)
_SERVE_RISK = ("import sys, uvicorn; from storeflow.components.config import load_settings; "
               "from storeflow.serving.risk import build_app, resolve; s = load_settings(sys.argv[1]); "
               "v, d = resolve(s); uvicorn.run(build_app(s, v, d), host=s.serving.host, port=s.risk.port, "
               "log_config=None, access_log=False)")


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _score_newest_orders(settings, url: str) -> None:
    """The newest fraud order and the two newest others, their features as of their creation, scored over V1."""
    import httpx
    import pandas as pd

    from storeflow.components.ingest.snapshot import newest_snapshot
    from storeflow.components.risk.features import LABEL, ORDER_FEATURES
    from storeflow.components.risk.stage import risk_rows

    rows = risk_rows(newest_snapshot(settings.data_dir / "snapshots"))
    chosen = pd.concat([rows[rows[LABEL] == 1].tail(1), rows[rows[LABEL] == 0].tail(2)])
    instances = [{"order_id": str(r.order_id), **{n: float(getattr(r, n)) for n in ORDER_FEATURES}}
                 for r in chosen.itertuples()]
    answer = httpx.post(f"{url}/v1/models/{settings.risk.inference_service}:predict",
                        json={"instances": instances}, timeout=30).json()
    for prediction, fraud in zip(answer["predictions"], chosen[LABEL]):
        facts = "; ".join(f["description"] for f in prediction["facts"][1:]) or "no signal either way"
        console.print(f"order {prediction['order_id']} ({'fraud' if fraud else 'genuine'}): {prediction['level']} "
                      f"{prediction['score']:.3f} · {facts}", highlight=False)
    console.print(f"answered by {answer['model_name']} v{answer['model_version']} (KServe V1, {url})")


DEMO_SECRET, DEMO_TOKEN = "storeflow-demo-secret", "shpat_storeflow_demo"  # the demo's own app secret and token


# `storeflow webhooks`' receiver with the demo's own settings, its risk scorer in threads (no applier)
_WEBHOOKS = ("import sys, uvicorn; from storeflow.components.config import load_settings; "
             "from storeflow.components.shopify.webhooks import create_app; s = load_settings(sys.argv[1]); "
             "uvicorn.run(create_app(s, apply=False), host='127.0.0.1', port=s.shopify.webhook_port, "
             "log_level='warning')")


def _webhook_to_assessment(settings, url: str) -> None:
    """One signed ``orders/create`` delivered over HTTP to the webhook receiver (a process of its own, its risk
    scorer in threads as ``storeflow webhooks --set risk.scorer=thread`` runs it), scored by the served model and
    written back as an ``orderRiskAssessmentCreate``. There is no network here: Shopify's Admin API is stood in for
    on 127.0.0.1 by a server answering in Shopify's format, which keeps the mutation
    (``<state>/risk/demo-assessment.json``). The receiver keeps its journal and state under
    ``<state>/demo-webhook`` (the demo's own journal stays as it was)."""
    import base64
    import hashlib
    import hmac
    import json
    import socket
    import threading
    import time
    from datetime import datetime, timedelta, timezone

    import httpx

    from storeflow.components.config import load_settings

    admin = _loopback_admin()
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    shop = "storeflow-demo.myshopify.com"
    with socket.socket() as probe:  # a free port for the receiver
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = json.loads(settings.to_json())
    receiver = load_settings({
        **base, "project": {**base["project"], "state_dir": str(settings.project.state_dir / "demo-webhook"),
                            "shop_domain": shop},
        "serving": {**base["serving"], "shopify_client_id": "storeflow-demo"},
        "risk": {**base["risk"], "endpoint": url, "scorer": "thread"},
        "shopify": {**base["shopify"], "webhook_port": port,
                    "admin_origin": f"http://127.0.0.1:{admin.server_address[1]}"}})
    env = {settings.serving.shopify_secret_env: DEMO_SECRET, settings.shopify.access_token_env: DEMO_TOKEN}
    try:
        with _served(receiver, _WEBHOOKS, f"http://127.0.0.1:{port}/livez",
                     settings.project.state_dir / "risk" / "demo-webhooks.log", env) as up:
            if not up:
                return
            now = datetime.now(timezone.utc).replace(microsecond=0)
            order_id = 5_199_000_000_000 + int(now.timestamp()) % 1_000_000
            body = json.dumps({
                "id": order_id, "name": "#DEMO", "email": "new.buyer@example.com", "created_at": now.isoformat(),
                "updated_at": now.isoformat(), "currency": "USD", "financial_status": "paid",
                "total_price": "640.00", "subtotal_price": "640.00", "total_discounts": "0.00",
                "payment_gateway_names": ["shopify_payments"],
                "customer": {"id": 8_199_000_000 + order_id % 1_000_000, "email": "new.buyer@example.com",
                             "created_at": (now - timedelta(minutes=10)).isoformat()},
                "shipping_address": {"address1": "9 Harbour Rd", "zip": "2000", "country_code": "AU"},
                "billing_address": {"country_code": "US"},
                "line_items": [{"id": order_id * 10, "product_id": 1, "title": "Gift card", "quantity": 4,
                                "price": "160.00"}]}).encode()
            signature = base64.b64encode(hmac.new(DEMO_SECRET.encode(), body, hashlib.sha256).digest()).decode()
            headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                       "X-Shopify-Hmac-Sha256": signature, "X-Shopify-Shop-Domain": shop,
                       "X-Shopify-Webhook-Id": f"demo-{order_id}", "X-Shopify-API-Version": "2026-01"}
            answer = httpx.post(f"http://127.0.0.1:{port}/webhooks", content=body, headers=headers, timeout=30)
            console.print(f"webhook orders/create for order {order_id} (a new account, $640 of gift cards, shipping "
                          f"to AU, billed in the US): {answer.status_code} {answer.json().get('status')}",
                          highlight=False)
            deadline = time.monotonic() + 120
            while not admin.mutations and time.monotonic() < deadline:
                time.sleep(0.2)
        if not admin.mutations:
            console.print(Text.assemble(("no assessment reached the Admin API within 120 s", "red"),
                                        f"; the receiver's log: {settings.project.state_dir / 'risk' / 'demo-webhooks.log'}"))
            return
        recorded = settings.project.state_dir / "risk" / "demo-assessment.json"
        recorded.write_text(json.dumps(admin.mutations[0], indent=2))
        written = next(iter(admin.mutations[0]["variables"].values()))
        facts = "; ".join(f["description"] for f in written["facts"])
        console.print(f"orderRiskAssessmentCreate for {written['orderId']}: {written['riskLevel']} · {facts} "
                      f"(sent to a stand-in for Shopify's Admin API on 127.0.0.1; the mutation: {recorded})",
                      highlight=False)
    finally:
        admin.shutdown()


def _loopback_admin():
    """Shopify's GraphQL Admin API stood in for on 127.0.0.1 (the demo has no network): a server answering every
    ``orderRiskAssessmentCreate`` alias of a document as Shopify answers it (the assessment it created, no user
    errors, the cost extension), each document's query and variables kept in its ``mutations``."""
    import json
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    aliased = re.compile(r"(\w+): orderRiskAssessmentCreate\(orderRiskAssessmentInput: \$(\w+)\)")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            document = json.loads(self.rfile.read(int(self.headers["content-length"])))
            data = {}
            for alias, variable in aliased.findall(document.get("query", "")):
                given = document.get("variables", {}).get(variable, {})
                data[alias] = {"orderRiskAssessment": {"riskLevel": given.get("riskLevel"),
                                                       "facts": given.get("facts", [])}, "userErrors": []}
            if data:
                server.mutations.append(document)
            cost = 10 * len(data)
            status = {"maximumAvailable": 2000.0, "currentlyAvailable": 2000 - cost, "restoreRate": 100.0}
            body = json.dumps({"data": data, "extensions": {"cost": {
                "requestedQueryCost": cost, "actualQueryCost": cost, "throttleStatus": status}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.mutations = []
    return server


def _demo_needs_a_champion(settings) -> None:
    """The baseline gate may keep the first model out (it loses to BG/NBD or Pareto/NBD on this store): the
    loop below needs something served, so the demo makes it champion by hand, as an operator's
    `storeflow promote` would, and says so; the evaluation's reason stays in MLflow."""
    from storeflow.components import tracking

    client = tracking.connect(settings)
    name = settings.registry.model_name
    if tracking.current_champion(client, name) is not None:
        return
    newest = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), default=None)
    if newest is None:
        return
    reason = newest.tags.get("storeflow.reason", "see its evaluation in MLflow")
    console.print(Text.assemble((f"the gate kept v{newest.version} from serving", "yellow"),
                                f" ({reason}); the demo makes it champion by hand so the monitoring loop has a model "
                                "to watch"), highlight=False)
    client.set_registered_model_alias(name, tracking.CHAMPION, newest.version)


def _demo_canary(settings, rollouts_before: int) -> None:
    """Show a local canary: the retraining's own rollout if it promoted a version, else the challenger's,
    made champion by hand as an operator would (`storeflow promote`) and judged by the same canary."""
    from storeflow.components import tracking
    from storeflow.components.deploy.local import deploy_local, rollouts, status

    canaried = [r for r in rollouts(settings)[rollouts_before:] if r.get("steps")]
    if not canaried:
        now = status(settings)
        champion, challenger = now["champion_version"], now["challenger_version"]
        if not challenger or challenger == champion:
            console.print("no challenger beside the champion: nothing to canary")
            return
        console.print(f"the gate kept champion v{champion}; promoting challenger v{challenger} by hand, "
                      "and the canary decides whether it stays")
        tracking.connect(settings).set_registered_model_alias(settings.registry.model_name, tracking.CHAMPION,
                                                              challenger)
        canaried = [deploy_local(settings, challenger, "", champion)]
    for rollout in canaried:
        console.print(f"v{rollout['model_version']} against champion v{rollout['previous_champion']}:")
        for step in rollout["steps"]:
            counts = (f" canary {step['canary_requests']:g} / champion {step['champion_requests']:g} requests"
                      if "canary_requests" in step else "")
            console.print(f"  {step['percent']:>3}% → {step['action']:<8}{counts}: {'; '.join(step['reasons'])}",
                          highlight=False)
        colour = "green" if rollout["outcome"] == "promoted" else "yellow"
        console.print(Text.assemble((rollout["outcome"], colour), f" in {rollout.get('seconds', 0):.1f} s · "
                                    "`storeflow status` shows the record"))


def _show(result: dict) -> None:
    import json

    console.print_json(json.dumps(result, default=str))


def _deploy_command(action, settings, **kwargs) -> None:
    from storeflow.components.deploy import DeployError

    with refusing(DeployError, code=1):
        _show(action(settings, **kwargs))


class Model(str, Enum):
    propensity = "propensity"
    risk = "risk"
    recommendations = "recommendations"


ModelOption = Annotated[Model, typer.Option(
    "--model", help="Whose service: propensity (deploy.inference_service, registry.model_name), risk "
    "(risk.inference_service, risk.model_name) or recommendations (recommendations.*).")]


def deployed(settings, model: Model):
    """``settings`` pointed at ``model``'s InferenceService and registered name, as its pipeline's deploy step
    points them (so status, promote and rollback see what that step rolled out, on kserve and local alike)."""
    if model is Model.risk:
        from storeflow.components.risk.deploy import risk_deploy_settings

        return risk_deploy_settings(settings)
    if model is Model.recommendations:
        from storeflow.components.recommend.deploy import recommender_settings

        return recommender_settings(settings)
    return settings


def promote(config: ConfigOption = None, set_: SetOption = None, model: ModelOption = Model.propensity) -> None:
    """Promote the running canary to all traffic (deploy.target local: the challenger becomes champion)."""
    from storeflow.components.deploy import promote as do_promote

    _deploy_command(do_promote, deployed(settings_from(config, set_), model))


def rollback(
    config: ConfigOption = None,
    set_: SetOption = None,
    reason: Annotated[str, typer.Option("--reason", help="Recorded on the MLflow version.")] = "manual rollback",
    model: ModelOption = Model.propensity,
) -> None:
    """Roll back to the previous champion (InferenceService, works with MLflow down; or the local alias)."""
    from storeflow.components.deploy import rollback as do_rollback

    _deploy_command(do_rollback, deployed(settings_from(config, set_), model), reason=reason)


def status(config: ConfigOption = None, set_: SetOption = None, model: ModelOption = Model.propensity) -> None:
    """Show which versions serve and the rollout state (InferenceService, or the local record and aliases)."""
    from storeflow.components.deploy import status as do_status

    _deploy_command(do_status, deployed(settings_from(config, set_), model))
