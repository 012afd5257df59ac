"""An `mlflow server` process on loopback for tests: a tracking server whose artifacts are proxied through
it (``--artifacts-destination``), as a cluster's tracking server serves them, so a client never needs the
server's disk."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


@contextmanager
def mlflow_server(directory: Path, backend_store_uri: str | None = None) -> Iterator[tuple[str, Path]]:
    """Yields (its URL, the host dir holding its artifacts); the backend is SQLite in ``directory`` unless given."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    artifacts = directory / "server-artifacts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend_store_uri or f"sqlite:///{directory / 'server.db'}",
         "--artifacts-destination", str(artifacts)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy within 90 s")
        yield url, artifacts
    finally:
        proc.terminate()
        proc.wait(timeout=20)
