"""A loopback stand-in for the Kubeflow Pipelines REST API (v2beta1) that records every request.

Responses follow the real API's JSON shapes (recorded from the KFP v2beta1 OpenAPI definitions); there
is no cluster here, so tests assert the exact requests kfp.Client sends, not a cluster's behaviour.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: dict | None


EXPERIMENT = {"experiment_id": "6f1e2c3a-0000-4000-8000-000000000001", "display_name": "storeflow",
              "namespace": "kubeflow", "created_at": "2026-11-23T10:00:00Z", "storage_state": "AVAILABLE"}


def _run(body: dict) -> dict:
    return {**body, "run_id": "0b5c9a3e-0000-4000-8000-00000000abcd", "state": "PENDING",
            "created_at": "2026-11-23T10:00:01Z", "experiment_id": EXPERIMENT["experiment_id"]}


def _recurring(body: dict) -> dict:
    return {**body, "recurring_run_id": "9d8c7b6a-0000-4000-8000-00000000feed", "status": "ENABLED",
            "created_at": "2026-11-23T10:00:01Z"}


class KfpApi:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.experiments = [dict(EXPERIMENT)]
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _reply(self, payload: dict, status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> dict | None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                return body

            def do_GET(self) -> None:
                self._record()
                if self.path.startswith("/apis/v2beta1/experiments"):
                    query = parse_qs(urlsplit(self.path).query)
                    wanted = [p["stringValue"] for p in json.loads(query.get("filter", ["{}"])[0]).get(
                        "predicates", []) if p.get("key") == "display_name"]
                    found = [e for e in api.experiments if not wanted or e["display_name"] in wanted]
                    self._reply({"experiments": found, "total_size": len(found)} if found else {})
                elif self.path.startswith("/apis/v2beta1/healthz"):
                    self._reply({"multi_user": False})
                else:
                    self._reply({})

            def do_POST(self) -> None:
                body = self._record() or {}
                if self.path.startswith("/apis/v2beta1/runs"):
                    self._reply(_run(body))
                elif self.path.startswith("/apis/v2beta1/recurringruns"):
                    self._reply(_recurring(body))
                elif self.path.startswith("/apis/v2beta1/experiments"):
                    created = {**EXPERIMENT, **body, "experiment_id": f"6f1e2c3a-0000-4000-8000-{len(api.experiments):012d}"}
                    api.experiments.append(created)
                    self._reply(created)
                else:
                    self._reply({"error": "unexpected"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> KfpApi:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
