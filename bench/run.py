"""`make bench`: every benchmark under bench/, one after another, results in bench/results/.

Each benchmark is its own script so it can also run alone (python bench/<name>.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ["pipeline", "recommendations", "risk", "risk_throughput", "serving", "recommend_serving", "monitoring", "webhooks", "soak"]  # soak: 10 minutes of mixed traffic, last


def main() -> int:
    failed = []
    for name in ORDER:
        script = BENCH / f"{name}.py"
        if not script.exists():
            continue
        print(f"== bench/{name}.py", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
