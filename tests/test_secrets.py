"""Secrets reach code from the environment only: never a pipeline parameter, a generated file or a log.

A training pipeline runs locally (kfp.local) against a Redis that requires a password given by env, with
more planted credentials beside it (MLflow, S3, Shopify); the pipelines are compiled and a run is
submitted to the recording KFP API (tests/kfp_api.py). Then every file the run left, the compiled YAML
and every request the API received are searched for each planted value.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import redis
import yaml

from conftest import quick_overrides
from kfp_api import KfpApi
from redis_server import redis_server
from storeflow.components.config import load_settings
from storeflow.components.features.repo import feature_store, store_config
from storeflow.components.secrets import MissingSecret

REDIS_PASSWORD = "redis-pw-6b0f3c1e9d27"
PLANTED = {  # a user name is no secret: MLflow records it as the runs' mlflow.user, as it should
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-91c2d7a4e5",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0f5e2b8c71",
    "SHOPIFY_ACCESS_TOKEN": "shpat_planted_3a9d6e1f",
}
SECRETS = [REDIS_PASSWORD, *PLANTED.values()]
SMALL_STORE = {"customers": 600, "orders": 5000, "products": 60}
CONNECTION_VARIABLE = "STOREFLOW_FEATURES__FEAST__REDIS_CONNECTION_STRING"


def _hits(root: Path) -> list[str]:
    """Files under ``root`` that contain a planted secret, as 'path: secret'."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {secret}" for secret in SECRETS if secret.encode() in data]
    return found


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("STOREFLOW_")]:
        monkeypatch.delenv(key)
    return tmp_path


@pytest.mark.slow
def test_no_planted_secret_reaches_files_logs_parameters_or_the_run(clean_env: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from storeflow.pipelines.compile import compile_to
    from storeflow.pipelines.local import run_local
    from storeflow.pipelines.submit import submit
    from storeflow.pipelines.training import STAGES, training_pipeline

    root = clean_env / "work"
    (root / "redis").mkdir(parents=True)
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    with redis_server(root / "redis", password=REDIS_PASSWORD) as address:
        monkeypatch.setenv("STOREFLOW_FEATURES__FEAST__ONLINE_STORE", "redis")
        monkeypatch.setenv(CONNECTION_VARIABLE, f"{address},password={REDIS_PASSWORD}")
        settings = load_settings(quick_overrides(root, ingest={"synthetic": SMALL_STORE}))
        run = run_local(training_pipeline, settings, STAGES)
        # The password did its job: the pipeline materialized features into the password-protected Redis.
        host, port = address.split(":")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=host, port=int(port)).dbsize()
        assert redis.Redis(host=host, port=int(port), password=REDIS_PASSWORD).dbsize() > 0

    log = run.log.read_text()
    assert "Task 'register' finished with status SUCCESS" in log

    compile_to(root / "compiled")
    # On a cluster the connection string is the online-store Secret's, given to tasks as REDIS_CONNECTION_STRING.
    monkeypatch.setenv("REDIS_CONNECTION_STRING", f"redis:6379,password={REDIS_PASSWORD}")
    cluster = load_settings({**json.loads(settings.to_json()),
                             "features": {"feast": {"online_store": "redis",
                                                    "redis_connection_string": "${REDIS_CONNECTION_STRING}"}},
                             "kfp": {"token_path": str(root / "no-token")}})
    with KfpApi() as api:
        submit(cluster, host=api.url, token="kfp-token", run_name="secrets")
    created = next(r for r in api.requests if r.path == "/apis/v2beta1/runs")
    sent = json.loads(created.body["runtime_config"]["parameters"]["config_json"])
    assert sent["features"]["feast"]["redis_connection_string"] == "${REDIS_CONNECTION_STRING}"
    requests = json.dumps([[r.method, r.path, r.headers, r.body] for r in api.requests])

    assert _hits(clean_env) == []  # state dir (data, Feast repo, mlflow.db, artifacts), run logs, compiled YAML
    assert [s for s in SECRETS if s in requests] == []
    assert f"${{{CONNECTION_VARIABLE}}}" in log  # what the tasks saw in config_json: the variable's name
    assert stat.S_IMODE((settings.feature_repo_dir / "feature_store.yaml").stat().st_mode) == 0o600


def test_feature_store_yaml_keeps_the_reference_and_is_private(clean_env: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_VARIABLE, f"127.0.0.1:1,password={REDIS_PASSWORD}")
    settings = load_settings(quick_overrides(clean_env, features={"feast": {"online_store": "redis"}}))
    feature_store(settings)
    written = (settings.feature_repo_dir / "feature_store.yaml")
    assert yaml.safe_load(written.read_text())["online_store"]["connection_string"] == \
        f"socket_timeout=10.0,socket_connect_timeout=10.0,${{{CONNECTION_VARIABLE}}}"
    assert REDIS_PASSWORD not in written.read_text()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    written.chmod(0o644)  # a file an older version left readable to all becomes private
    feature_store(settings)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_a_referenced_variable_that_is_not_set_is_named(clean_env: Path) -> None:
    settings = load_settings(quick_overrides(clean_env, features={"feast": {
        "online_store": "redis", "redis_connection_string": "${REDIS_CONNECTION_STRING}",
        "registry": "postgresql+psycopg://feast:${FEAST_DB_PASSWORD}@127.0.0.1:9/feast"}}))
    with pytest.raises(MissingSecret) as missing:
        feature_store(settings)
    assert str(missing.value) == (
        "features.feast.registry needs the environment variable FEAST_DB_PASSWORD, which is not set; "
        "features.feast.redis_connection_string needs the environment variable REDIS_CONNECTION_STRING, "
        "which is not set")
    assert not (settings.feature_repo_dir / "feature_store.yaml").exists()  # nothing written half-configured


def test_a_sql_registry_url_keeps_its_password_reference(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://feast:${FEAST_DB_PASSWORD}@db:5432/feast"
    settings = load_settings(quick_overrides(clean_env, features={"feast": {"registry": url}}))
    assert store_config(settings)["registry"] == {"registry_type": "sql", "path": url,
                                                 "serve_features_while_materializing": True}
    monkeypatch.setenv("STOREFLOW_FEATURES__FEAST__REGISTRY", f"postgresql://feast:{REDIS_PASSWORD}@db/feast")
    from_env = load_settings(quick_overrides(clean_env))
    assert store_config(from_env)["registry"] == {"registry_type": "sql",
                                                  "path": "${STOREFLOW_FEATURES__FEAST__REGISTRY}",
                                                  "serve_features_while_materializing": True}
    assert REDIS_PASSWORD not in from_env.to_json()
