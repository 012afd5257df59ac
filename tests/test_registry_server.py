"""Production config, same code: train, evaluate and register against a real `mlflow server` process
on loopback (artifacts proxied through the server, as a cluster's tracking server does)."""

from pathlib import Path

import pytest

from conftest import write_snapshot
from mlflow_server import mlflow_server as tracking_server
from storeflow.components import tracking
from storeflow.components.evaluate import evaluate
from storeflow.components.features import build_features
from storeflow.components.register import register
from storeflow.components.train import train

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path):
    with tracking_server(tmp_path) as server:
        yield server


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
