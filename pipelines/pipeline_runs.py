"""One local (kfp.local) pipeline run as the CLI shows it: a progress bar, and a failure said in one place, the
failed task's own error. Its own module so that ``storeflow run``/``demo`` (:mod:`.commands`) and ``storeflow
monitor`` (:mod:`.monitor_commands`), which commands' demo calls, share it without importing each other."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from storeflow.components.cli_options import console, refusing


def run_pipeline(title: str, pipeline, settings, stages, **inputs):
    """One kfp.local run (with the pipeline's ``inputs``) with a progress bar; a failure names its task and says
    the task's own error, whole, the traceback left in the log it points to."""
    from storeflow.pipelines.local import PipelineFailed, RunDirError, run_local

    console.print(Text.assemble((f"storeflow {title} pipeline", "bold"),
                                f" (kfp.local) · state in {settings.project.state_dir}"))
    try:
        with refusing(RunDirError):
            return run_local(pipeline, settings, stages, console=console, **inputs)
    except PipelineFailed as failed:
        error = _task_error(failed.log)
        console.print(f"pipeline failed at task {failed.failed_task or '?'}" + (f": {error}" if error else ""),
                      style="red", highlight=False)
        if error is None:  # no Python error in the log (the task was killed, kfp failed): show how it ended
            _print_failure_tail(failed.log)
        console.print(f"full log (with the traceback): {failed.log}")
        raise typer.Exit(1) from failed


def _task_error(log: Path) -> str | None:
    """The error the failed task raised, as its last traceback in the log ends: the exception's message, whole
    (a validation report runs to many lines), under the exception's name unless it is one of storeflow's."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text()).splitlines()
    starts = [i for i, line in enumerate(text) if line.strip() == "Traceback (most recent call last):"]
    if not starts:
        return None
    indent = len(text[starts[-1]]) - len(text[starts[-1]].lstrip())
    rest = iter(text[starts[-1] + 1:])
    # Frames are indented past the "Traceback" line; the exception's first line is back at its indent.
    first = next((line for line in rest if line.strip() and len(line) - len(line.lstrip()) <= indent), None)
    if first is None:
        return None
    message = [first[indent:]]
    for line in rest:
        if not line.strip():
            break
        message.append(line[indent:] if line[:indent].isspace() else line)
    name, _, said = message[0].partition(": ")
    if re.fullmatch(r"[\w.]+", name) and said:
        message[0] = said if name.startswith("storeflow.") else f"{name.rsplit('.', 1)[-1]}: {said}"
    return "\n".join(message)


def _print_failure_tail(log: Path, lines: int = 40) -> None:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text()).splitlines()
    console.print("\n".join(text[-lines:]), highlight=False)
