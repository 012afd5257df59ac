"""Batches from a queue for writer threads (the prediction log, the webhook journal).

A writer blocks for the first item, takes whatever else is already queued (up to a limit) and writes
it at once: one disk write or one commit per burst instead of per item.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

STOP = object()  # put this on the queue to end :func:`batches` after what was queued before it


def batches(source: queue.Queue, limit: int, gather: float = 0.0) -> Iterator[list]:
    """Yield the queued items, at most ``limit`` at a time, until :data:`STOP` is taken; with ``gather`` (seconds),
    a batch waits that long after its first item for more (fewer, fuller writes when items come one by one).

    The writer sleeps through ``gather`` and then takes what came, rather than waiting on the queue for each next
    item: a wait on the queue wakes the writer (and takes the GIL from the thread that put) once per item.
    Nothing queued after STOP is taken: the writer is done once it reaches it.
    """
    while True:
        items, stopped = [], False
        item = source.get()
        if gather and item is not STOP:
            time.sleep(gather)
        while True:
            if item is STOP:
                stopped = True
                break
            items.append(item)
            if len(items) >= limit:
                break
            try:
                item = source.get_nowait()
            except queue.Empty:
                break
        if items:
            yield items
        if stopped:
            return
