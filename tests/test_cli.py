"""Command-line config handling: --set values, and config mistakes as one clear line with exit code 2."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from storeflow.components.cli_options import settings_from
from storeflow.pipelines.cli import app


def test_set_values_are_json_or_plain_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = settings_from(None, ["serving.auth=off", "ingest.synthetic.customers=600",
                                    "validate.currencies=[\"USD\", \"EUR\"]", "project.state_dir=state"])
    assert settings.serving.auth == "off"  # not YAML's boolean False
    assert settings.ingest.synthetic.customers == 600
    assert settings.validate_.currencies == ["USD", "EUR"]
    assert settings.project.state_dir == tmp_path / "state"


def test_config_mistakes_exit_2_naming_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(typer.Exit) as bad_set:
        settings_from(None, ["no-equals-sign"])
    assert bad_set.value.exit_code == 2
    result = CliRunner().invoke(app, ["submit", "--set", "train.estimatr=x"])
    assert result.exit_code == 2 and "train.estimatr" in result.output
    (tmp_path / "broken.yaml").write_text("ingest: [\n")
    result = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "broken.yaml")])
    assert result.exit_code == 2 and "not valid YAML" in " ".join(result.output.split())


@pytest.mark.parametrize("given", [["--set", "[bold]"], ["--set", "x[/red]"],
                                   ["--config", "{dir}/[bold]stores/c.yaml"], ["--config", "{dir}/a[/x]/c.yaml"],
                                   ["--set", "train.[red]estimatr=1"]])
def test_a_mistake_is_named_as_given_whatever_brackets_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 given: list[str]) -> None:
    """Errors were printed through rich's markup: a path or value with brackets lost them ("--config
    /tmp/[bold]stores/c.yaml" was said not to exist as /tmp/stores/c.yaml, "--set [bold]" as ''), and one holding
    a closing tag ("[/x]") ended the command in a MarkupError traceback instead of the one line and exit code 2."""
    monkeypatch.chdir(tmp_path)
    option, value = given[0], given[1].format(dir=tmp_path)
    result = CliRunner().invoke(app, ["compile", option, value])
    assert result.exit_code == 2, result.output
    named = value.partition("=")[0] if option == "--set" and "=" in value else value
    assert named in " ".join(result.output.split()), result.output


def _orders_csv(tmp_path: Path, broken: str) -> Path:
    """The test store's orders export, its first order with no Currency, or saved as latin-1 with a name in é."""
    source = Path(__file__).parent / "data" / "shopify" / "orders_export.csv"
    header, first, *rest = source.read_text().splitlines()
    columns, cells = header.split(","), first.split(",")
    if broken == "no-currency":
        cells[columns.index("Currency")], encoding = "", "utf-8"
    else:
        cells[columns.index("Billing Name")], encoding = "José Núñez", "latin-1"
    csv = tmp_path / "orders_export.csv"
    csv.write_bytes(("\n".join([header, ",".join(cells), *rest]) + "\n").encode(encoding))
    return csv


@pytest.mark.slow
@pytest.mark.parametrize(("broken", "task", "said"), [
    ("no-currency", "validate", ["Validation FAILED for snapshot", "have no currency: order_id"]),
    ("latin-1", "ingest", ["orders_export.csv: line 2: not UTF-8", "save or export the file as UTF-8"])])
def test_a_failed_run_says_the_stages_error_first_and_whole_not_its_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str, task: str, said: list[str]) -> None:
    """The last 40 lines of the task's log were printed: ~30 lines of traceback before the message, and a long
    validation report could be pushed out of them."""
    monkeypatch.chdir(tmp_path)
    csv = _orders_csv(tmp_path, broken)
    result = CliRunner().invoke(app, ["run", "--set", f"project.state_dir={tmp_path / 'state'}",
                                      "--set", "ingest.source=csv", "--set", f"ingest.path={csv}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    after = result.output[result.output.index(f"pipeline failed at task {task}: "):]
    assert "Traceback" not in result.output and 'File "' not in result.output
    assert all(part in after for part in said), after
    log = after.splitlines()[-1].split("full log (with the traceback): ")[1]
    assert "Traceback (most recent call last):" in Path(log).read_text()


def test_a_state_dir_that_cannot_be_written_is_one_line_before_any_task(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """storeflow run printed a rich traceback of pathlib's mkdir (exit 1) when project.state_dir could not hold
    the run's log and pipeline root. Found by testing from outside."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(app, ["run", "--set", f"project.state_dir={tmp_path / 'a-file' / 'state'}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "mkdir" not in result.output
    assert f"cannot write the run's log and artifacts under {tmp_path / 'a-file' / 'state' / 'runs'} " \
           "(project.state_dir): Not a directory" in result.output


def test_runs_started_in_the_same_second_keep_their_own_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run dirs were named by the second a run started: a second run started in it wrote the first's pipeline.log
    over. Found by testing from outside."""
    import time

    from storeflow.components.config import load_settings
    from storeflow.pipelines import local

    monkeypatch.setattr(time, "strftime", lambda *_: "20261208-000000")
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")}})

    from kfp import dsl

    @dsl.component
    def say(text: str):
        print(text)

    @dsl.pipeline
    def pipeline(config_json: str, said: str):
        say(text=said)

    first = local.run_local(pipeline, settings, [], said="first run")
    second = local.run_local(pipeline, settings, [], said="second run")
    assert first.log != second.log
    assert "first run" in first.log.read_text() and "second run" not in first.log.read_text()
    assert "second run" in second.log.read_text()


def test_compile_to_a_place_it_cannot_write_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """storeflow compile --out <a file> printed a rich traceback of pathlib's mkdir, exit 1. Found by testing from
    outside."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").write_text("")
    result = CliRunner().invoke(app, ["compile", "--out", str(tmp_path / "build")], env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "mkdir" not in result.output
    assert result.output.strip() == (f"cannot write the compiled YAML under {tmp_path / 'build'}: Not a directory "
                                     f"({tmp_path / 'build' / 'pipelines'})")
