"""The receiver's workers as processes of their own, each restarted when it dies.

Under ``storeflow webhooks`` the receiver only journals; a spawned process applies (Feast writes never
hold the receiver's GIL), and with order risk on (``risk.scorer: process``) another scores orders
(:func:`storeflow.components.risk.realtime.run_scorer`) and a third writes their assessments back
(:func:`storeflow.components.risk.writeback.run_writer`). If one dies (a crash, the OOM
killer, kill -9), the receiver starts a new one after ``shopify.applier_restart_seconds``, doubling per crash
in a row up to ``shopify.applier_restart_max_seconds``; the journal keeps every event meanwhile, and /healthz
says ``behind`` while one is down.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable

from storeflow.components.config import Settings
from storeflow.components.heap import freeze_startup_objects

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how soon stop() is noticed by the watcher


class PipeWake:
    """A wake-up the receiver sets (after each journal commit) and a worker process waits on, with
    ``threading.Event``'s ``set`` / ``wait`` / ``clear``. A pipe, not ``multiprocessing.Event``: that one's ``set``
    waits for every sleeping waiter to acknowledge, so a worker killed (-9) while it waited left the receiver's
    next ``set`` (and its intake) hanging for ever. A byte per ``set``; a full pipe (nobody reading: the worker is
    down) already holds a wake-up, so the byte is dropped."""

    def __init__(self):
        self._reader, self._writer = multiprocessing.Pipe(duplex=False)
        os.set_blocking(self._writer.fileno(), False)
        os.set_blocking(self._reader.fileno(), False)  # clear() reads until empty; wait() polls

    def set(self) -> None:
        try:
            os.write(self._writer.fileno(), b"\0")
        except OSError:  # full (a wake-up is pending), or closed at shutdown
            pass

    def wait(self, timeout: float | None = None) -> bool:
        return self._reader.poll(timeout)

    def clear(self) -> None:
        try:
            while os.read(self._reader.fileno(), 65536):
                pass
        except BlockingIOError:
            pass


def run_applier(settings_json: str, receiver_pid: int | None = None, wake: PipeWake | None = None) -> None:
    """The applier process's loop: apply what is committed, then wait for ``wake`` (the receiver sets it after each
    journal commit) and ``shopify.apply_gather_seconds`` more for the events that follow it, or at most
    ``shopify.apply_idle_seconds``. Applying as soon as each commit woke it, the applier ran batches of a few
    events back to back: a core's worth of CPU at any rate, and a journal transaction the receiver's commits waited
    on every few milliseconds (bench/risk_throughput --applier).

    It ends when the receiver has gone: uvicorn re-raises the SIGTERM it handled, so the receiver dies
    without running its ``finally`` and would leave this process applying on its own.
    """
    from storeflow.components.config import load_settings
    from storeflow.components.shopify.apply import Applier

    settings = load_settings(settings_json)
    applier = Applier(settings)
    applier.prepare()
    freeze_startup_objects()
    failures = 0
    while receiver_pid is None or os.getppid() == receiver_pid:
        try:
            applier.drain()  # what was committed before it: those committed meanwhile have set wake
            if wake is None:
                time.sleep(settings.shopify.apply_idle_seconds)
            else:  # at most POLL_SECONDS: the receiver's exit is noticed by this loop
                if wake.wait(min(settings.shopify.apply_idle_seconds, POLL_SECONDS)):
                    time.sleep(settings.shopify.apply_gather_seconds)  # one batch for what follows too
                wake.clear()  # before the next drain: a commit after this wakes the wait after it
            failures = 0
        except Exception:  # noqa: BLE001 - events stay journaled; retry
            failures += 1
            log.exception("applying webhook events failed; retrying")
            time.sleep(min(settings.shopify.applier_restart_max_seconds,
                           settings.shopify.applier_restart_seconds * 2 ** min(failures, 8)))


class ProcessSupervisor:
    """Starts ``target(settings_json, receiver_pid)`` (``wake``: ``target(settings_json, receiver_pid, event)``,
    then any ``extra`` arguments) as a process and restarts it, with backoff, whenever it exits. ``target`` must be
    importable (the process is spawned) and end once ``receiver_pid`` has gone."""

    def __init__(self, settings: Settings, target: Callable[..., None], name: str, wake: bool = False,
                 extra: tuple = ()):
        self.settings = settings
        self.target, self.name = target, name
        self.extra = extra  # passed to every process started (a PipeWake of another's, say)
        # wake: a PipeWake passed to target as a third argument, for the receiver to set (each journal commit) so
        # the process works at once instead of at its next poll
        self.wake = PipeWake() if wake else None
        self.restarts = 0
        self._process: multiprocessing.Process | None = None
        self._running = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the process is up (False while waiting to restart one)."""
        return self._running

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name=f"{self.name}-supervisor")
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher:
            self._watcher.join()
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
        self._running = False

    def _spawn(self) -> None:
        self._process = multiprocessing.get_context("spawn").Process(
            target=_worker,
            args=(self.target, self.settings.to_json(), os.getpid(), *((self.wake,) if self.wake else ()),
                  *self.extra),
            name=self.name, daemon=True)
        self._process.start()
        self._running = True

    def _watch(self) -> None:
        cfg = self.settings.shopify
        delay = cfg.applier_restart_seconds
        started = time.monotonic()
        while not self._stop.is_set():
            assert self._process is not None
            if not multiprocessing.connection.wait([self._process.sentinel], POLL_SECONDS):
                continue
            self._process.join()
            self._running = False
            if self._stop.is_set():
                return
            if time.monotonic() - started > cfg.applier_restart_max_seconds:
                delay = cfg.applier_restart_seconds  # it had been up a while: not a crash loop
            log.error("the %s (pid %s) exited with %s; restarting it in %.1f s", self.name, self._process.pid,
                      self._process.exitcode, delay)
            if self._stop.wait(delay):
                return
            self._spawn()
            self.restarts += 1
            started = time.monotonic()
            delay = min(delay * 2, cfg.applier_restart_max_seconds)


def _worker(target: Callable[..., None], *args) -> None:
    """A worker process: ``target(*args)``, ended by SIGTERM (the supervisor's stop) as by an exit, so its
    ``finally`` blocks and atexit hooks run. Killed by the signal, each worker left behind the Prometheus folder
    Feast makes under the temp dir on import (192 KB a process, one more at every restart)."""
    signal.signal(signal.SIGTERM, _exit)
    target(*args)


def _exit(signum, frame) -> None:
    raise SystemExit(0)


class ApplierSupervisor(ProcessSupervisor):
    """The webhook applier (:func:`run_applier`) as a supervised process."""

    def __init__(self, settings: Settings):
        super().__init__(settings, run_applier, "webhook-applier", wake=True)


class RiskSupervisor:
    """Order risk's two processes (``risk.scorer: process``): the scorer (``scorer(settings_json, receiver_pid,
    wake, writer_wake)``), woken by each journal commit, and the write-back (``writer(settings_json, receiver_pid,
    writer_wake)``), woken by the scorer after each batch it queued. Each restarted on its own when it dies: the
    outbox between them keeps what one queued while the other was down."""

    def __init__(self, settings: Settings, scorer: Callable[..., None], writer: Callable[..., None]):
        self.writer = ProcessSupervisor(settings, writer, "order-risk-writer", wake=True)
        self.scorer = ProcessSupervisor(settings, scorer, "order-risk-scorer", wake=True, extra=(self.writer.wake,))
        self.wake = self.scorer.wake  # the receiver sets it after each journal commit

    def states(self) -> dict[str, str]:
        """``running`` or ``down``, of each, for /healthz."""
        return {"scorer": "running" if self.scorer.running else "down",
                "writer": "running" if self.writer.running else "down"}

    def start(self) -> None:
        self.writer.start()
        self.scorer.start()

    def stop(self) -> None:
        self.scorer.stop()
        self.writer.stop()
