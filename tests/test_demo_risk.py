"""`make demo`'s order risk step (storeflow demo, step 6): on a store without fraud it generates the same store with
fraud, runs the risk pipeline, serves the champion with `storeflow serve-risk` over real HTTP on 127.0.0.1 and
scores the store's newest orders through it, a fraud order among them; then one signed orders/create through the
webhook receiver ends as an orderRiskAssessmentCreate at a loopback stand-in for the Admin API."""

from __future__ import annotations

import json
import re

from storeflow.components.config import load_settings
from storeflow.pipelines.commands import _demo_risk
from tests.conftest import free_port, quick_overrides

STORE = {"customers": 1_000, "orders": 10_000, "products": 40, "seed": 3}  # no fraud_rate: the demo adds it


def test_the_demo_trains_and_serves_the_risk_model(tmp_path, capsys):
    settings = load_settings(quick_overrides(tmp_path, ingest={"source": "synthetic", "synthetic": STORE},
                                             risk={"params": {"max_iter": 60}, "bootstrap_samples": 50,
                                                   "port": free_port()}))
    _demo_risk(settings)
    said = " ".join(capsys.readouterr().out.split())
    assert "synthetic.fraud_rate 0.003" in said
    assert "| model |" in said and "Decision:" in said
    scored = re.findall(r"order \d+ \((fraud|genuine)\): (HIGH|MEDIUM|LOW) (0\.\d{3})", said)
    assert [kind for kind, _, _ in scored] == ["fraud", "genuine", "genuine"], said[-2000:]
    assert "answered by storeflow-order-risk v1 (KServe V1, http://127.0.0.1:" in said
    assert list((tmp_path / "state" / "risk" / "predictions").glob("*.jsonl"))  # logged with their features
    # a signed webhook delivery through the receiver ends as one orderRiskAssessmentCreate at the Admin API
    assert re.search(r"webhook orders/create for order (\d+) .*: 200 accepted", said)
    written = re.search(r"orderRiskAssessmentCreate for gid://shopify/Order/(\d+): (HIGH|MEDIUM|LOW) ", said)
    assert written, said[-2000:]
    mutation = json.loads((tmp_path / "state" / "risk" / "demo-assessment.json").read_text())
    assert "orderRiskAssessmentCreate" in mutation["query"]
    (given,) = mutation["variables"].values()
    assert given["orderId"] == f"gid://shopify/Order/{written.group(1)}" and given["riskLevel"] == written.group(2)
    assert given["facts"][0]["description"].startswith("storeflow")  # the model version that scored it
