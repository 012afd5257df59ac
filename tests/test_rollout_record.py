"""The local rollout record (<state>/serving/rollouts.jsonl): a line cut short by a crash mid-append must not
take `storeflow status` and the emergency `storeflow rollback` down with it."""

from __future__ import annotations

import json
import logging
import sqlite3

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


def _registered(settings: Settings, promote: bool) -> str:
    """A version registered as the register stage registers one (a tiny model: only the registry is under test)."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from storeflow.components import tracking
    from storeflow.components.evaluate import EvaluationResult
    from storeflow.components.register import register
    from storeflow.components.train import TrainResult

    client = tracking.connect(settings)
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, client)) as run:
        info = mlflow.sklearn.log_model(model, name="model")
    trained = TrainResult(run.info.run_id, info.model_uri, ["x"], 4, {})
    evaluation = EvaluationResult(promote, "test", {"roc_auc": 1.0}, None, None, None)
    return register(settings, trained, evaluation).version


def test_rollback_after_a_rollout_killed_before_it_was_recorded_returns_to_the_previous_champion(
        settings: Settings) -> None:
    """register makes the new version champion before the deploy step canaries it; a pipeline killed in between
    (or mid-canary) left it champion with no line in the record, and rollback said 'nothing to roll back to'."""
    from typer.testing import CliRunner

    from storeflow.components import tracking
    from storeflow.pipelines.cli import app

    first = _registered(settings, promote=True)
    local.deploy_local(settings, first, "run-1", None)  # the first champion's deploy step: recorded
    second = _registered(settings, promote=True)  # ... and the pipeline is killed before its deploy step records
    assert local.status(settings)["champion_version"] == second
    result = CliRunner().invoke(app, ["rollback", "--set", f"project.state_dir={settings.project.state_dir}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    client = tracking.connect(settings)
    assert tracking.current_champion(client, settings.registry.model_name) == first
    assert local.rollouts(settings)[-1] | {"at": None} == {
        "model_name": settings.registry.model_name, "outcome": "rolled-back-manually", "model_version": second,
        "previous_champion": first, "reasons": ["manual rollback"], "recorded_in_mlflow": True, "at": None}


@pytest.mark.parametrize("command", ["status", "rollback", "promote"])
def test_a_damaged_registry_database_is_one_line_naming_it_and_is_left_as_it_was(settings: Settings,
                                                                                 command: str) -> None:
    """A truncated mlflow.db (a crash or a full disk mid-write) made status and the emergency rollback print
    SQLAlchemy's 300-line traceback."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    database = settings.project.state_dir / "mlflow.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as db:  # a database of many pages (as MLflow's is)...
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO runs (body) VALUES (?)", [("x" * 500,)] * 200)
        for n in range(30):
            db.execute(f"CREATE TABLE t{n} (id INTEGER PRIMARY KEY, body TEXT)")
            db.execute(f"INSERT INTO t{n} (body) VALUES (?)", ("x" * 3000,))
    damaged = database.read_bytes()[: database.stat().st_size // 2]  # ... cut short
    database.write_bytes(damaged)
    result = CliRunner().invoke(app, [command, "--set", f"project.state_dir={settings.project.state_dir}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert result.output == (f"the MLflow registry {settings.tracking_uri} (registry.tracking_uri) cannot be read: "
                             "database disk image is malformed\n")
    assert database.read_bytes() == damaged


@pytest.mark.parametrize(("command", "said"), [
    ("promote", "nothing to promote: storeflow-repeat-purchase has no challenger in the registry at "),
    ("rollback", "nothing to roll back to: storeflow-repeat-purchase has no champion in the registry at ")])
def test_promote_or_rollback_before_any_model_is_registered_says_so(settings: Settings, command: str,
                                                                    said: str) -> None:
    """They said 'champion vNone, challenger vNone' and 'champion vNone replaced no earlier version'."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    result = CliRunner().invoke(app, [command, "--set", f"project.state_dir={settings.project.state_dir}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    # (MLflow logs creating the empty registry's tables before it)
    assert result.output.splitlines()[-1] == f"{said}{settings.tracking_uri}; train and register one first (storeflow run)"


def test_promoting_the_champion_again_says_it_already_is(settings: Settings) -> None:
    """Promote twice: the second said 'no challenger to promote: champion v1, challenger v1'."""
    _registered(settings, promote=True)
    with pytest.raises(DeployError, match=r"^nothing to promote: the challenger, v1, is already champion$"):
        local.promote(settings)


def test_promote_while_another_process_writes_the_registry_changes_nothing_and_says_so(settings: Settings) -> None:
    """A registry whose database another writer held (a training run registering, MLflow's UI) made promote print
    MLflow's 510-line traceback of 'database is locked'."""
    from typer.testing import CliRunner

    from storeflow.components import tracking
    from storeflow.pipelines.cli import app

    first = _registered(settings, promote=True)
    second = _registered(settings, promote=False)
    record = local.rollout_record(settings)
    writer = sqlite3.connect(settings.project.state_dir / "mlflow.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's write transaction
    try:
        result = CliRunner().invoke(app, ["promote", "--set", f"project.state_dir={settings.project.state_dir}"],
                                    env={"COLUMNS": "1000"})
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.exit_code == 1, result.output
    assert result.output == (f"the champion of storeflow-repeat-purchase could not be moved to v{second} in the "
                             f"registry at {settings.tracking_uri}: (sqlite3.OperationalError) database is locked; "
                             "nothing was changed\n")
    assert tracking.current_champion(tracking.connect(settings), settings.registry.model_name) == first
    assert not record.exists()


@pytest.mark.parametrize("where", ["registry.tracking_uri=sqlite:///{file}/mlflow.db", "project.state_dir={file}/state"])
def test_a_registry_that_cannot_be_created_is_one_line_naming_it(settings: Settings, where: str) -> None:
    """A registry path through a file made status and rollback print pathlib's FileExistsError or
    NotADirectoryError traceback."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    file = settings.project.state_dir.parent / "a-file"
    file.write_text("not a folder")
    for command in ("status", "rollback"):
        result = CliRunner().invoke(app, [command, "--set", f"project.state_dir={settings.project.state_dir}",
                                          "--set", where.format(file=file)], env={"COLUMNS": "1000"})
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"the MLflow registry sqlite:///{file}/") and result.output.endswith(
            f"/mlflow.db (registry.tracking_uri) cannot be created: Not a directory: {file}"
            f"{'/state' if 'state_dir' in where else ''}\n"), result.output
        assert file.read_text() == "not a folder"
