"""Writer-thread batching shared by the prediction log and the webhook journal."""

import queue

from storeflow.components.queues import STOP, batches


def test_batches_take_what_is_queued_up_to_the_limit_and_end_at_stop() -> None:
    source: queue.Queue = queue.Queue()
    for item in range(7):
        source.put(item)
    source.put(STOP)
    source.put("after stop")  # never read: the writer is done
    assert list(batches(source, 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert source.get_nowait() == "after stop"


def test_a_lone_stop_yields_nothing() -> None:
    source: queue.Queue = queue.Queue()
    source.put(STOP)
    assert list(batches(source, 10)) == []
