"""Where the prediction log lives: a local directory per serving process, and an object store they share.

Each serving process appends JSON lines (``serving/predlog.py``) to files in a local directory
(``serving.prediction_log_dir``, default ``<state_dir>/predictions``). With ``serving.prediction_log_store``
set (``s3://bucket/prefix``, ``gs://…``, or a path), a process ships each file there once it is closed (past
``serving.prediction_log_rotate_bytes``, every ``serving.prediction_log_ship_seconds`` and at shutdown) and
deletes its own copy. So on a cluster the transformer's replicas and the monitoring pipeline share an
object store, not a ReadWriteMany volume: the monitor task, data requests and erasure read both places
through this module. pyarrow's filesystems do the I/O; S3 credentials and endpoint come from the standard
``AWS_*`` variables (``AWS_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL``, for MinIO and other
S3-compatible stores), so the Secret that gives MLflow its bucket serves here too.

A stored file is never appended to: erasure replaces the whole object (an S3 PUT is atomic) or deletes it.
"""

from __future__ import annotations

import os
import re
import uuid
from urllib.parse import urlencode, urlparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.fs as pafs

from storeflow.components.config import Settings
from storeflow.components.erasure import locked

PATTERN = "predictions-*.jsonl"
_NAME = re.compile(r"^predictions-(\d{8}T\d{12})-.+\.jsonl$")  # predictions-<UTC start>-<host>-<pid>.jsonl


def local_dir(settings: Settings) -> Path:
    """This process's (or this machine's) directory of prediction log files."""
    return settings.serving.prediction_log_dir or settings.project.state_dir / "predictions"


def local_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(PATTERN)) if Path(directory).is_dir() else []


def started_at(name: str) -> datetime | None:
    """When the process began writing the file, from its name (None for a name not written by storeflow)."""
    match = _NAME.match(name)
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc) if match else None


@dataclass(frozen=True)
class StoredLog:
    name: str
    modified: datetime
    size: int


class LogStore:
    """The object store folder the serving processes ship closed log files to."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(_with_endpoint(uri))
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"serving.prediction_log_store {uri!r} is not a filesystem URI pyarrow can open "
                             f"(s3://bucket/prefix, gs://bucket/prefix or a path): {exc}") from exc
        self.root = self.root.rstrip("/")
        self._atomic_put = self.fs.type_name in ("s3", "gcs")  # an object appears whole or not at all

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def logs(self) -> list[StoredLog]:
        selector = pafs.FileSelector(self.root, recursive=False, allow_not_found=True)
        found = [StoredLog(info.base_name, info.mtime or datetime.fromtimestamp(0, timezone.utc), info.size or 0)
                 for info in self.fs.get_file_info(selector)
                 if info.type == pafs.FileType.File and _NAME.match(info.base_name)]
        return sorted(found, key=lambda log: log.name)

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._path(name)) as stream:
            return stream.read()

    def write(self, name: str, data: bytes) -> None:
        """Put a whole file; readers never see part of it."""
        if self._atomic_put:
            with self.fs.open_output_stream(self._path(name)) as out:
                out.write(data)
            return
        self.fs.create_dir(self.root, recursive=True)
        partial = self._path(f".{name}.{uuid.uuid4().hex}.partial")
        with self.fs.open_output_stream(partial) as out:
            out.write(data)
        self.fs.move(partial, self._path(name))

    def delete(self, name: str) -> None:
        self.fs.delete_file(self._path(name))

    def fetch(self, name: str, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_bytes(self.read(name))
        return path

    def records(self) -> Iterator[tuple[str, bytes]]:
        """Every stored line, with the file it is in."""
        for log in self.logs():
            for line in self.read(log.name).splitlines(keepends=True):
                yield log.name, line

    def rewrite(self, keep: Callable[[bytes], bool]) -> int:
        """Drop the lines ``keep`` refuses from every stored file (a file left empty is deleted); the count."""
        dropped = 0
        for log in self.logs():
            lines = self.read(log.name).splitlines(keepends=True)
            kept = [line for line in lines if keep(line)]
            if len(kept) == len(lines):
                continue
            if kept:
                self.write(log.name, b"".join(kept))
            else:
                self.delete(log.name)
            dropped += len(lines) - len(kept)
        return dropped


def _with_endpoint(uri: str) -> str:
    """An s3:// URI with the endpoint MLflow's S3 client uses (MLFLOW_S3_ENDPOINT_URL, the variable the
    cluster's artifact-store Secret sets), unless AWS_ENDPOINT_URL, which pyarrow reads itself, is set."""
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if not uri.startswith("s3://") or "?" in uri or not endpoint or os.environ.get("AWS_ENDPOINT_URL"):
        return uri
    parsed = urlparse(endpoint)
    return f"{uri}?{urlencode({'endpoint_override': parsed.netloc or parsed.path, 'scheme': parsed.scheme or 'https'})}"


def log_store(settings: Settings) -> LogStore | None:
    uri = settings.serving.prediction_log_store
    return LogStore(uri) if uri else None


def window_files(settings: Settings, start: datetime, end: datetime, scratch: Path) -> list[Path]:
    """The log files that may hold predictions made in ``[start, end)``: this machine's, and the stored ones
    (fetched into ``scratch``) begun before ``end`` and written to at or after ``start``."""
    return files_in_window(local_dir(settings), log_store(settings), start, end, scratch)


def files_in_window(directory: Path, store: LogStore | None, start: datetime, end: datetime,
                    scratch: Path) -> list[Path]:
    """The log files of ``directory`` and of ``store`` (fetched into ``scratch``) that may hold records made in
    ``[start, end)``: a stored file counts when it was begun before ``end`` and written to at or after ``start``.
    Every log kind (propensity, risk, ...) is read this way, each from its own folders."""
    files = local_files(directory)
    if store is not None:
        for log in store.logs():
            begun = started_at(log.name)
            if begun is not None and begun < end and log.modified >= start:
                files.append(store.fetch(log.name, scratch))
    return files


def ship(store: LogStore, path: Path) -> None:
    """Upload a closed local file under its erasure lock, then delete it. Holding the lock across upload
    and unlink means an eraser sees the file either before it was shipped (and cleans it here) or gone
    (and cleans the stored copy)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with locked(fd):
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
            if data:
                store.write(path.name, data)
            path.unlink()
    finally:
        os.close(fd)
