"""`make bench`: every benchmark under bench/, one after another, results in bench/results/.

Each benchmark is its own script so it can also run alone (python bench/<name>.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ["pipeline", "recommendations", "risk", "risk_throughput", "risk_full_body", "risk_applier", "risk_stream",
         "risk_stream_refunds", "risk_pod", "serving",
         "recommend_serving", "monitoring", "webhooks", "soak"]  # soak: 10 minutes of mixed traffic, last
# runs of a script with arguments of their own: the issue's creates with the applier running as under storeflow
# webhooks, and a store's stream through order risk (each order's orders/paid and orders/updated between later
# orders' creates, the applier on)
VARIANTS = {# the same path for a subscription without include_fields: Shopify's whole orders/create, ~9.5 KB
            "risk_full_body": ("risk_throughput", ["--body", "full", "--paths", "storeflow,storeflow:1500,storeflow:3000",
                                                   "--out", str(BENCH / "results" / "risk_full_body.json")]),
            "risk_applier": ("risk_throughput", ["--applier", "--paths",
                                                 "storeflow,storeflow:1000,storeflow:2000,storeflow:3000",
                                                 "--out", str(BENCH / "results" / "risk_applier.json")]),
            "risk_stream": ("risk_throughput", ["--follow-ups", "2", "--applier", "--paths",
                                                "storeflow,storeflow:1500,storeflow:3000,stock_kserve:3000",
                                                "--deliveries", "90000",
                                                "--out", str(BENCH / "results" / "risk_stream.json")]),
            # ... and each order refunded and cancelled after (one in 50 for fraud): five deliveries an order
            "risk_stream_refunds": ("risk_throughput", ["--follow-ups", "4", "--applier", "--paths",
                                                        "storeflow,storeflow:2500,storeflow:5000", "--deliveries",
                                                        "150000", "--out",
                                                        str(BENCH / "results" / "risk_stream_refunds.json")]),
            # the webhooks pod at a 500,000-customer store exported with its risk fields: the scorer seeds 5M orders'
            # ledgers and the applier indexes them before the first delivery; its processes' memory, summed
            "risk_pod": ("risk_throughput", ["--applier", "--snapshot-customers", "500000", "--paths",
                                             "storeflow:1000", "--out", str(BENCH / "results" / "risk_pod.json")])}


def main() -> int:
    failed = []
    for name in ORDER:
        base, arguments = VARIANTS.get(name, (name, []))
        script = BENCH / f"{base}.py"
        if not script.exists():
            continue
        print(f"== bench/{base}.py {' '.join(arguments)}".rstrip(), flush=True)
        if subprocess.run([sys.executable, str(script), *arguments], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
