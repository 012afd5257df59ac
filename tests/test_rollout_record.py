"""The local rollout record (<state>/serving/rollouts.jsonl): a line cut short by a crash mid-append must not
take `storeflow status` and the emergency `storeflow rollback` down with it."""

from __future__ import annotations

import json
import logging

import pytest

from storeflow.components.config import Settings
from storeflow.components.deploy import DeployError, local


class _Aliases:
    """MLflow's aliases, as `rollback` moves them (no tracking server needed to read the record)."""

    def __init__(self, champion: str) -> None:
        self.champion = champion

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.champion = version


@pytest.fixture
def mlflow(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> _Aliases:
    aliases = _Aliases("2")
    monkeypatch.setattr(local, "_client", lambda _settings: aliases)
    monkeypatch.setattr(local, "_aliases", lambda _settings: {"champion": aliases.champion, "challenger": None})
    monkeypatch.setattr(local, "record_rollout", lambda *args, **kwargs: True)
    return aliases


def _entry(settings: Settings, version: str, previous: str | None) -> str:
    return json.dumps({"model_name": settings.registry.model_name, "outcome": "promoted", "model_version": version,
                       "previous_champion": previous, "at": "2026-12-07T10:00:00Z"})


def test_a_torn_last_line_is_skipped_and_rollback_still_works(settings: Settings, mlflow: _Aliases,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    record = local.rollout_record(settings)
    record.parent.mkdir(parents=True)
    torn = _entry(settings, "3", "2")[:40]
    record.write_text(_entry(settings, "1", None) + "\n" + _entry(settings, "2", "1") + "\n" + torn)
    with caplog.at_level(logging.WARNING):
        assert local.status(settings)["rollouts"] == 2
    assert f"{record}, line 3: skipped, cut short" in caplog.text
    assert local.rollback(settings)["champion_version"] == "1" == mlflow.champion
    # the rollback's own entry is whole and readable; the fragment is kept beside the record
    assert [entry["outcome"] for entry in local.rollouts(settings)] == ["promoted", "promoted", "rolled-back-manually"]
    assert record.with_name("rollouts.jsonl.torn").read_text() == torn + "\n"


def test_any_other_bad_line_is_named(settings: Settings, mlflow: _Aliases) -> None:
    record = local.rollout_record(settings)
    record.parent.mkdir(parents=True)
    record.write_text(_entry(settings, "1", None) + "\n{\"outcome\": \n" + _entry(settings, "2", "1") + "\n")
    with pytest.raises(DeployError, match=rf"{record}, line 2: not a rollout record"):
        local.rollback(settings)
    assert mlflow.champion == "2"
