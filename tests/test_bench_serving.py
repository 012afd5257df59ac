"""bench/serving.py's load: wrk sends the drawn requests in order, and a row goes on where the warm-up (or
the last round) stopped instead of sending the same customers again. Sending them again made a uniform
draw over 500,000 customers look like 11-15 % cache hits; and counting both wrk threads as one (their
mean) made the busier thread send thousands of its requests again. The first test fails on either."""

from __future__ import annotations

import importlib
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def serving():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("serving")


@pytest.fixture
def recorder():
    """A loopback HTTP server that records each request's body (a number) and Authorization header."""
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    class Record(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                seen.append((int(body), self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()


def test_a_second_run_of_a_script_sends_requests_the_first_did_not(serving, recorder, tmp_path):
    url, seen = recorder
    n = 200_000  # more than two 1-second runs send: nothing wraps around
    requests = serving.request_file(tmp_path / "r.requests", [str(i).encode() for i in range(n)],
                                    [f"Bearer t{i}" for i in range(n)])
    script = serving.lua(requests, {"Content-Type": "text/plain"}, tmp_path / "r.lua")
    sent: dict = {}
    serving.wrk(url, script, 2, 1, sent)
    first = {body for body, _ in seen}
    # what wrk counts as sent: what the server got, and at most one request a connection cut off by the clock
    assert first and len(seen) <= sum(sent[script]) <= len(seen) + 2
    seen.clear()
    serving.wrk(url, script, 2, 1, sent)
    second = {body for body, _ in seen}
    assert second, "the second run sent nothing"
    assert not first & second, f"{len(first & second)} requests of the first run were sent again"


def test_each_request_carries_its_own_authorization(serving, recorder, tmp_path):
    url, seen = recorder
    requests = serving.request_file(tmp_path / "r.requests", [str(i).encode() for i in range(50)],
                                    [f"Bearer token-{i}" for i in range(50)])
    serving.wrk(url, serving.lua(requests, {"Content-Type": "text/plain"}, tmp_path / "r.lua"), 1, 1)
    assert seen and all(auth == f"Bearer token-{body}" for body, auth in seen)


def test_a_variant_names_its_settings_and_a_malformed_one_is_refused(serving):
    assert serving.parse_variants(["storeflow-nomemo:serving.score_memo_rows=0, serving.workers=2"]) == {
        "storeflow-nomemo": {"serving.score_memo_rows": "0", "serving.workers": "2"}}
    for bad in ["nomemo:serving.score_memo_rows=0", "storeflow-x:serving.score_memo_rows", "storeflow-x",
                "storeflow-uncached:serving.score_memo_rows=0"]:
        with pytest.raises(SystemExit, match="--variant"):
            serving.parse_variants([bad])
