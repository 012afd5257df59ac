"""Run a pipeline on this machine with ``kfp.local.SubprocessRunner``: the very pipeline a cluster runs.

kfp.local streams every task's output to stdout. Here that stream goes to a log file under the state
dir, and the task start/finish lines it contains drive a rich progress bar instead.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from storeflow.components.config import Settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '?([\w-]+)'?")
FINISHED = re.compile(r"Task '?([\w-]+)'? finished with status (\w+)")


class PipelineFailed(RuntimeError):
    """A task failed; ``log`` holds everything the tasks printed."""

    def __init__(self, message: str, log: Path, failed_task: str | None):
        super().__init__(message)
        self.log = log
        self.failed_task = failed_task


class RunDirError(RuntimeError):
    """The run's directory (its log and the pipeline root) cannot be made under the state dir."""


def new_run_dir(state_dir: Path) -> Path:
    """A directory of this run's own under ``<state_dir>/runs``, named by when it started: a second run started
    in the same second gets ``-2``, not the first one's log. A state dir that cannot be written is a
    :class:`RunDirError` naming it, before any task runs."""
    runs = Path(state_dir) / "runs"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        runs.mkdir(parents=True, exist_ok=True)
        for name in itertools.chain([stamp], (f"{stamp}-{n}" for n in itertools.count(2))):
            with contextlib.suppress(FileExistsError):
                (runs / name).mkdir()
                return runs / name
    except OSError as exc:
        raise RunDirError(f"cannot write the run's log and artifacts under {runs} (project.state_dir): "
                          f"{exc.strerror or exc}") from exc
    raise AssertionError("itertools.count never ends")


@dataclass
class LocalRun:
    output: object
    log: Path
    seconds: float
    tasks: list[str] = field(default_factory=list)
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # task: perf_counter start, end

    @property
    def task_seconds(self) -> dict[str, float]:
        return {task: end - start for task, (start, end) in self.windows.items()}


class _TaskStream(io.TextIOBase):
    """A stdout stand-in: writes to the log and reports task starts/finishes."""

    def __init__(self, log: io.TextIOBase, on_start: Callable[[str], None], on_finish: Callable[[str, str], None]):
        self._log, self._on_start, self._on_finish = log, on_start, on_finish
        self._pending = ""
        self.failed_task: str | None = None
        self._started: dict[str, float] = {}
        self.windows: dict[str, tuple[float, float]] = {}  # when each task ran (perf_counter), for benchmarks

    def write(self, text: str) -> int:
        self._log.write(ANSI.sub("", text))  # a plain log file, readable without a terminal
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            plain = ANSI.sub("", line)
            if match := FINISHED.search(plain):
                now = time.perf_counter()
                self.windows[match.group(1)] = (self._started.pop(match.group(1), now), now)
                if match.group(2) != "SUCCESS":
                    self.failed_task = match.group(1)
                self._on_finish(match.group(1), match.group(2))
            elif match := STARTED.search(plain):
                self._started[match.group(1)] = time.perf_counter()
                self._on_start(match.group(1))
        return len(text)

    def flush(self) -> None:
        self._log.flush()


@contextlib.contextmanager
def _captured(log_path: Path, stages: Sequence[str], console: Console | None) -> Iterator[_TaskStream]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    show = console is not None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(),
                        TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=console, disable=not show)
    ids = {name: progress.add_task(name, total=1, state="waiting", start=False) for name in stages}

    def start(name: str) -> None:
        if (key := _stage_of(name, ids)) is not None:
            progress.start_task(ids[key])
            progress.update(ids[key], state="running")

    def finish(name: str, status: str) -> None:
        if (key := _stage_of(name, ids)) is not None:
            progress.update(ids[key], completed=1, state="done" if status == "SUCCESS" else f"[red]{status}[/red]")
            progress.stop_task(ids[key])

    with log_path.open("w") as log, progress:
        stream = _TaskStream(log, start, finish)
        real_stdout = sys.stdout
        sys.stdout = stream
        try:
            yield stream
        finally:
            sys.stdout = real_stdout
            for task_id in ids.values():  # a branch not taken (e.g. deploy after a losing challenger)
                if not progress.tasks[task_id].started:
                    progress.update(task_id, state="[dim]skipped[/dim]")


def _stage_of(task: str, ids: dict[str, int]) -> str | None:
    # kfp.local names tasks after their component (e.g. "evaluate", or "evaluate-2" when repeated).
    base = re.sub(r"-\d+$", "", task)
    return base if base in ids else None


def without_retries(pipeline):
    """A copy of ``pipeline`` whose tasks are not retried. kfp.local honours a task's retry policy (kfp.retry,
    for a cluster's passing outages): a local run would repeat a config or data error after 30 s, 60 s and
    120 s of backoff, three and a half minutes before saying it. The pipeline itself (what compile writes)
    keeps its policy."""
    import copy

    local = copy.deepcopy(pipeline)
    spec = local.pipeline_spec
    for dag in [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    return local


def run_local(pipeline: Callable, settings: Settings, stages: Sequence[str], console: Console | None = None,
              **arguments) -> LocalRun:
    """Run ``pipeline`` with kfp.local; raise :class:`PipelineFailed` naming the failed task and log."""
    from kfp import local

    run_dir = new_run_dir(settings.project.state_dir)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "artifacts"),
               raise_on_error=True)
    log_path = run_dir / "pipeline.log"
    started = time.perf_counter()
    with _captured(log_path, stages, console) as stream, warnings.catch_warnings():
        # Tasks run in this environment on purpose (it has storeflow installed, as the image does).
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Resources and timeouts are for the cluster; kfp.local says so once per task, a dozen lines.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            output = without_retries(pipeline)(config_json=settings.to_json(), **arguments)
        except RuntimeError as exc:
            raise PipelineFailed(str(ANSI.sub("", str(exc))), log_path, stream.failed_task) from exc
    return LocalRun(output=getattr(output, "output", output), log=log_path,
                    seconds=time.perf_counter() - started, tasks=list(stages), windows=dict(stream.windows))
