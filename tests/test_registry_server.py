"""Production config, same code: train, evaluate and register against a real `mlflow server` process
on loopback (artifacts proxied through the server, as a cluster's tracking server does)."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import write_snapshot
from storeflow.components import tracking
from storeflow.components.evaluate import evaluate
from storeflow.components.features import build_features
from storeflow.components.register import register
from storeflow.components.train import train

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
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
        yield url, tmp_path / "server-artifacts"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_models_register_on_a_tracking_server(settings, store_tables, tmp_path: Path, mlflow_server) -> None:
    url, artifacts = mlflow_server
    settings = settings.model_copy(deep=True)
    settings.registry.tracking_uri = url
    settings.registry.artifact_location = None  # the server decides (proxied artifact store)
    features = build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
    trained = train(settings, features)
    registered = register(settings, trained, evaluate(settings, features, trained))
    assert registered.promoted and registered.version == "1"
    client = tracking.connect(settings)
    assert str(client.get_model_version_by_alias(settings.registry.model_name, "champion").version) == "1"
    assert any(artifacts.rglob("MLmodel"))  # the model files went through the server, not to local disk
    assert not (settings.project.state_dir / "mlflow.db").exists()
