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
