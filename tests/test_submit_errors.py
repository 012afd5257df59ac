"""`storeflow submit` / `schedule` against an API that cannot be used: one line naming the host and what to
check, never kfp's traceback. The APIs are a closed port and loopback servers that refuse every request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import free_port
from storeflow.components.config import load_settings
from storeflow.pipelines.api_errors import HEALTHZ, KfpApiError
from storeflow.pipelines.cli import app
from storeflow.pipelines.submit import submit

COMMANDS = {"submit": ["submit"], "schedule": ["schedule", "0 0 3 * * *"]}


def _reply(handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str = "application/json") -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler], before_stop=None) -> Iterator[str]:
    """``handler`` on a loopback port for the block; yields its URL. ``before_stop`` runs first on the way out
    (releasing a handler that waits)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if before_stop is not None:
            before_stop()
        server.shutdown()
        server.server_close()


@contextmanager
def refusing_api(status: int, healthz_status: int | None = None) -> Iterator[str]:
    """Answers ``status`` to every request (healthz gets ``healthz_status`` when given); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code = healthz_status if healthz_status and self.path.startswith(HEALTHZ) else status
            _reply(self, code, b'{"multi_user": false}' if code == 200 else b'{"error": "no", "code": 16}')

        do_GET = do_POST = _answer

    with _serving(Handler) as url:
        yield url


def _cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, host: str, *settings: str
         ) -> tuple[int, list[str]]:
    monkeypatch.chdir(tmp_path)
    args = [*COMMANDS[command], "--host", host, "--token", "t0ken",
            "--set", f"kfp.token_path={tmp_path / 'no-token'}", "--set", f"project.state_dir={tmp_path / 'state'}",
            *(arg for setting in settings for arg in ("--set", setting))]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_the_line_is_whole_in_a_narrow_console_or_a_pipe(tmp_path) -> None:
    """Rich wraps at the console's width, 80 columns in a pipe or a CI log (or as COLUMNS says): a one-line
    error must not come out as three, nor a host or path printed broken across lines."""
    import os
    import subprocess
    import sys

    host = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([str(Path(sys.executable).parent / "storeflow"), "submit", "--host", host, "--token", "t0ken",
                           "--set", f"kfp.token_path={tmp_path / 'no-token'}",
                           "--set", f"project.state_dir={tmp_path / 'state'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "60"})
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert f"cannot reach the Kubeflow Pipelines API at {host}" in lines[0] and "port-forward" in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_closed_port_is_one_line_naming_the_host(tmp_path, monkeypatch, command) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    code, lines = _cli(tmp_path, monkeypatch, command, host)
    assert code == 2 and len(lines) == 1, lines
    assert f"cannot reach the Kubeflow Pipelines API at {host}" in lines[0]
    assert "refused" in lines[0].lower() and "check --host / kfp.host" in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("status", "check"), [(401, "check the token (--token / STOREFLOW_KFP_TOKEN"),
                                                (403, "service account or profile")])
def test_an_unauthorized_api_is_one_line_saying_what_to_check(tmp_path, monkeypatch, command, status, check) -> None:
    with refusing_api(status) as host:
        code, lines = _cli(tmp_path, monkeypatch, command, host)
    assert code == 2 and len(lines) == 1, lines
    assert f"the Kubeflow Pipelines API at {host} answered HTTP {status}" in lines[0] and check in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_refusal_past_an_open_healthz_is_one_line_too(tmp_path, monkeypatch, command) -> None:
    """Healthz needs no token on some installs; the run and experiment calls do."""
    with refusing_api(401, healthz_status=200) as host:
        code, lines = _cli(tmp_path, monkeypatch, command, host)
    assert code == 2 and len(lines) == 1, lines
    assert f"at {host} answered HTTP 401" in lines[0] and "--token" in lines[0]


def test_a_wrong_path_on_the_host_names_the_api_path(tmp_path) -> None:
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                              "kfp": {"token_path": str(tmp_path / "no-token")}})
    with refusing_api(404) as host, pytest.raises(KfpApiError) as refused:
        submit(settings, host=host, token="t")
    assert "\n" not in str(refused.value)
    assert f"{host} answered HTTP 404" in str(refused.value) and "is the pipelines API itself" in str(refused.value)


@contextmanager
def html_api(healthz_json: bool) -> Iterator[str]:
    """Answers 200 with a sign-in page (text/html) to every request; healthz answers the API's JSON when
    ``healthz_json`` (a proxy that lets only the health check through). Yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if healthz_json and self.path.startswith(HEALTHZ):
                body = b'{"multi_user": false}'
            elif self.path.startswith("/apis/v2beta1/experiments"):
                body = b'{"experiment_id": "e1", "display_name": "Default"}'
            else:
                body = b"<html><body>Sign in</body></html>"
            _reply(self, 200, body, "application/json" if body.startswith(b"{") else "text/html")

        do_GET = do_POST = _answer

    with _serving(Handler) as url:
        yield url


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("healthz_json", [False, True], ids=["sign-in-page", "past-healthz"])
def test_a_200_that_is_not_the_api_is_an_error_not_a_run(tmp_path, monkeypatch, command, healthz_json) -> None:
    """A sign-in page answering 200 was taken as success: 'submitted run None', exit 0."""
    with html_api(healthz_json) as host:
        code, lines = _cli(tmp_path, monkeypatch, command, host)
    assert code == 2, lines
    assert f"the answer of {host} to " in lines[-1] and "is not from the Kubeflow Pipelines API" in lines[-1]
    assert not any("None" in line for line in lines if "submitted" in line or "created" in line)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("status", [500, 400])
def test_any_other_error_answer_is_one_line_with_the_apis_message(tmp_path, monkeypatch, command, status) -> None:
    """A 500 from the run or experiment call, or a 400 (a cron the server rejects), printed kfp's traceback."""
    with refusing_api(status, healthz_status=200) as host:
        code, lines = _cli(tmp_path, monkeypatch, command, host)
    assert code == 2 and len(lines) == 1, lines
    assert f"the Kubeflow Pipelines API at {host} answered HTTP {status}" in lines[0] and lines[0].endswith(": no")


@contextmanager
def silent_api() -> Iterator[str]:
    """Answers healthz and the experiment lookup; takes every POST and never answers it. Yields its URL."""
    released = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith(HEALTHZ):
                body = b'{"multi_user": false}'
            else:
                body = b'{"experiments": [{"experiment_id": "e1", "display_name": "Default"}], "total_size": 1}'
            _reply(self, 200, body)

        def do_POST(self) -> None:
            released.wait()

    with _serving(Handler, before_stop=released.set) as url:
        yield url


@pytest.mark.parametrize("command", COMMANDS)
def test_an_api_that_never_answers_is_one_line_not_a_hang(tmp_path, monkeypatch, command) -> None:
    """kfp.Client sets no timeout: an API that accepted the connection and never answered held submit until
    killed. The wait for an answer is kfp.answer_timeout_seconds (60 by default; 2 here). The CLI runs in a thread
    here only so that the test ends either way."""
    outcome: list = []
    with silent_api() as host:
        cli = threading.Thread(target=lambda: outcome.append(_cli(tmp_path, monkeypatch, command, host,
                                                                  "kfp.answer_timeout_seconds=2")), daemon=True)
        cli.start()
        cli.join(60)
    assert outcome, f"storeflow {command} still waiting on an API that does not answer"
    code, lines = outcome[0]
    assert code == 2, lines
    assert f"the Kubeflow Pipelines API at {host} accepted the connection but did not answer" in lines[-1]
    assert "look in the KFP UI" in lines[-1]


def test_monitorings_cluster_retrain_gives_up_on_a_submit_that_does_not_finish(tmp_path, monkeypatch) -> None:
    """Inside a KFP task the retrain submits from a child process, which was waited on without a timeout."""
    from storeflow.pipelines import retraining

    monkeypatch.setattr(retraining, "SUBMIT_TIMEOUT", 1, raising=False)
    monkeypatch.setenv("_KFP_RUNTIME", "true")
    with silent_api() as host:
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                                  "kfp": {"host": host, "token_path": str(tmp_path / "no-token")}})
        with pytest.raises(ConnectionError, match=r"submitting the training pipeline did not finish within 1 s; "
                                                  r"a run may have been created"):
            retraining.LAUNCHERS["cluster"](settings)


def test_monitorings_cluster_retrain_says_why_a_submit_failed_in_one_line(tmp_path, monkeypatch) -> None:
    """The submitting child's whole traceback was the retrain error, the API's answer at its end."""
    from storeflow.pipelines import retraining

    monkeypatch.setenv("_KFP_RUNTIME", "true")
    with refusing_api(500, healthz_status=200) as host:
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                                  "kfp": {"host": host, "token_path": str(tmp_path / "no-token")}})
        with pytest.raises(ConnectionError) as failed:
            retraining.LAUNCHERS["cluster"](settings)
    assert str(failed.value) == (f"submitting the training pipeline failed: the Kubeflow Pipelines API at {host} "
                                 "answered HTTP 500 Internal Server Error: no")
