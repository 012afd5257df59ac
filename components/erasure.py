"""What erasure shares with the processes that keep customer data open: the lock under which an
append-only log is rewritten in place, and the erasure epoch that tells running servers to forget.

Append logs (the prediction log) are rewritten in place, never replaced: a writer holding the file open
keeps appending to the very file readers see. Writers append a whole batch of lines under an exclusive
``flock`` of the file; the eraser reads, filters and rewrites it under the same lock, so it never sees
half a batch and no line is appended between its read and its rewrite.

The epoch is an 8-byte counter in one file, bumped in place after every erasure. A server maps it into
memory (:class:`EpochView`), so comparing it on every lookup costs a memory read, not a system call,
and drops what it cached when it changes. It holds no identity: who was erased stays in no new file.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

EPOCH_BYTES = 8
REWRITE_CHUNK = 1 << 20  # bytes read, and kept lines written back, at a time


@contextmanager
def locked(fd: int):
    """Exclusive advisory lock of an open file, held for the block."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def append_locked(fd: int, data: bytes) -> None:
    """Append ``data`` (whole lines) to a file opened with O_APPEND, under its lock."""
    with locked(fd):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


def rewrite_in_place(path: Path, keep: Callable[[bytes], bool]) -> int:
    """Drop the lines ``keep`` refuses, rewriting the file in place under its lock; returns lines dropped.

    The same inode stays, so a writer's open descriptor keeps appending to the file everyone reads. The
    file is streamed, never held whole (a server's log reaches tens of MB, and the process erasing is a
    long-lived receiver): kept lines are written back over the ones already read, always at or before
    the read position, so what is still to be read is never overwritten; then the file is cut to the
    kept length. Until the first dropped line nothing is written at all.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        with locked(fd):
            dropped = written = 0
            pending: list[bytes] = []
            pending_bytes = 0
            with os.fdopen(os.dup(fd), "rb", buffering=REWRITE_CHUNK) as handle:  # pwrite leaves its offset alone
                for line in handle:
                    if not keep(line):
                        dropped += 1
                    elif dropped:
                        pending.append(line)
                        pending_bytes += len(line)
                        if pending_bytes >= REWRITE_CHUNK:
                            written += _pwrite_all(fd, b"".join(pending), written)
                            pending, pending_bytes = [], 0
                    else:
                        written += len(line)  # already in place
            if not dropped:
                return 0
            written += _pwrite_all(fd, b"".join(pending), written)
            os.ftruncate(fd, written)
            os.fsync(fd)
            return dropped
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
    return len(data)


def _open_epoch(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if os.fstat(fd).st_size < EPOCH_BYTES:
        with locked(fd):
            if os.fstat(fd).st_size < EPOCH_BYTES:
                os.pwrite(fd, bytes(EPOCH_BYTES), 0)
    return fd


def bump_epoch(path: Path) -> int:
    """Count one more erasure, in place (mapped readers see it at once); returns the new epoch."""
    fd = _open_epoch(path)
    try:
        with locked(fd):
            epoch = int.from_bytes(os.pread(fd, EPOCH_BYTES, 0), "big") + 1
            os.pwrite(fd, epoch.to_bytes(EPOCH_BYTES, "big"), 0)
            os.fsync(fd)
        return epoch
    finally:
        os.close(fd)


def read_epoch(path: Path) -> int:
    """The epoch by a read (for a volume shared across hosts, where a mapping may not see remote writes)."""
    try:
        with path.open("rb") as handle:
            return int.from_bytes(handle.read(EPOCH_BYTES), "big")
    except FileNotFoundError:
        return 0


class EpochView:
    """The epoch file mapped read-only: ``value()`` is a memory read."""

    def __init__(self, path: Path):
        fd = _open_epoch(path)
        try:
            self._map = mmap.mmap(fd, EPOCH_BYTES, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)

    def value(self) -> int:
        return int.from_bytes(self._map[:EPOCH_BYTES], "big")

    def close(self) -> None:
        self._map.close()
