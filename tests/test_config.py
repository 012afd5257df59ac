"""The one config model: precedence, clear errors, and a lossless round trip through config_json."""

from pathlib import Path

import pytest

from storeflow.components.config import ConfigError, load_settings


def test_file_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "storeflow.yaml").write_text("features:\n  label:\n    horizon_days: 30\n    cutoff_every_days: 14\n")
    assert load_settings().features.label.horizon_days == 30
    monkeypatch.setenv("STOREFLOW_FEATURES__LABEL__HORIZON_DAYS", "45")
    settings = load_settings()
    assert settings.features.label.horizon_days == 45
    assert settings.features.label.cutoff_every_days == 14  # the file's sibling value survives
    assert load_settings({"features": {"label": {"horizon_days": 60}}}).features.label.horizon_days == 60


def test_unknown_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"train\.paramz"):
        load_settings({"train": {"paramz": {}}})


def test_bad_yaml_and_missing_file_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_settings(path=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(path=tmp_path / "nope.yaml")


def test_image_tag_must_be_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="image.tag"):
        load_settings({"image": {"tag": "latest"}})


def test_config_json_round_trip_and_absolute_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"project": {"state_dir": "rel/state"}, "train": {"params": {"max_iter": 3}}})
    assert settings.project.state_dir == tmp_path / "rel" / "state"
    assert load_settings(settings.to_json()) == settings
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'rel' / 'state' / 'mlflow.db'}"


def test_file_sources_need_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ingest.path is required"):
        load_settings({"ingest": {"source": "csv"}})


PASSWORD = "pw-7d1c0e9b2a"  # planted: it must appear in no message, no config_json


def test_a_password_in_its_own_variable_travels_as_the_variables_name(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's reproduction: config_json (a pipeline parameter) held the Redis password."""
    monkeypatch.chdir(tmp_path)
    variable = "STOREFLOW_FEATURES__FEAST__REDIS_CONNECTION_STRING"
    monkeypatch.setenv(variable, f"127.0.0.1:6379,password={PASSWORD}")
    settings = load_settings()
    assert settings.features.feast.redis_connection_string == f"${{{variable}}}"
    assert PASSWORD not in settings.to_json() and PASSWORD not in repr(settings)
    assert load_settings(settings.to_json()) == settings  # a task reads the reference back, and its env


@pytest.mark.parametrize("overrides, key", [
    ({"features": {"feast": {"redis_connection_string": f"redis:6379,password={PASSWORD}"}}},
     "features.feast.redis_connection_string"),
    ({"features": {"feast": {"registry": f"postgresql://feast:{PASSWORD}@db:5432/feast"}}}, "features.feast.registry"),
])
def test_a_written_out_password_is_refused_without_echoing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               overrides: dict, key: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"{key}: .*holds a password: write \$\{{VAR\}}") as refused:
        load_settings(overrides)
    assert PASSWORD not in str(refused.value) and PASSWORD not in str(refused.value.__cause__)
    (tmp_path / "storeflow.yaml").write_text(f"features:\n  feast:\n    redis_connection_string: h:1,password={PASSWORD}\n")
    with pytest.raises(ConfigError, match="features.feast.redis_connection_string: .*holds a password"):
        load_settings()


def test_passwords_by_reference_are_kept_as_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"features": {"feast": {"redis_connection_string": "redis:6379,password=${REDIS_PASSWORD}",
                                                     "registry": "postgresql://feast:${PGPASS}@db/feast"}}})
    assert settings.features.feast.redis_connection_string == "redis:6379,password=${REDIS_PASSWORD}"
    assert load_settings(settings.to_json()).features.feast.registry == "postgresql://feast:${PGPASS}@db/feast"


def test_urls_whose_clients_read_their_own_credentials_refuse_a_password(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOREFLOW_REGISTRY__TRACKING_URI", f"https://ci:{PASSWORD}@mlflow.example.com")
    with pytest.raises(ConfigError, match="registry.tracking_uri: .*MLFLOW_TRACKING_PASSWORD") as refused:
        load_settings()
    assert PASSWORD not in str(refused.value) and PASSWORD not in str(refused.value.__cause__)
    monkeypatch.delenv("STOREFLOW_REGISTRY__TRACKING_URI")
    with pytest.raises(ConfigError, match="kfp.host: .*STOREFLOW_KFP_TOKEN"):
        load_settings({"kfp": {"host": f"https://admin:{PASSWORD}@kubeflow.example.com/pipeline"}})
    assert load_settings({"registry": {"tracking_uri": "https://ci@mlflow.example.com"}})  # a user name is no secret


def test_a_config_dir_that_is_a_file_is_named(monkeypatch, tmp_path) -> None:
    """$STOREFLOW_CONFIG_DIR is where a task sees the storeflow-config ConfigMap; a file there is a mistake."""
    from storeflow.components.config import ConfigError, load_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cm").write_text("STOREFLOW_DEPLOY__MIN_REPLICAS=2")
    monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(tmp_path / "cm"))
    with pytest.raises(ConfigError, match="STOREFLOW_CONFIG_DIR names .*cm, which is not a directory"):
        load_settings()
    monkeypatch.setenv("STOREFLOW_CONFIG_DIR", str(tmp_path / "absent"))  # an optional ConfigMap: nothing
    deploy = load_settings().deploy
    assert deploy.min_replicas == type(deploy).model_fields["min_replicas"].default


def test_a_config_file_read_once_leaves_no_values_behind(monkeypatch, tmp_path) -> None:
    """The file's values lived on the Settings class (Settings._file_values) after a load, so any later
    construction saw a file it was never given."""
    from storeflow.components.config import Settings

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cluster.yaml"
    config.write_text("deploy:\n  min_replicas: 3\n")
    assert load_settings(path=config).deploy.min_replicas == 3
    assert Settings().deploy.min_replicas == load_settings().deploy.min_replicas != 3
