"""The reporters' sender thread (edgekit.integrations.sender): put() never waits on the handler, items are handled
in order, a full queue drops its oldest, flush() waits for the rest, and a failing handler is counted, not raised."""

from __future__ import annotations

import threading
import time

import pytest

from edgekit.integrations.sender import SendQueue


def test_a_stalled_handler_never_blocks_put_and_the_oldest_items_go() -> None:
    started, gate, handled = threading.Event(), threading.Event(), []

    def handle(item: int) -> None:
        started.set()
        gate.wait(5)
        handled.append(item)

    queue: SendQueue[int] = SendQueue(handle, "test-sender", size=4)
    queue.put(0)
    assert started.wait(5)  # the thread holds item 0; the queue is empty again
    begin = time.perf_counter()
    for i in range(1, 10):
        queue.put(i)
    assert time.perf_counter() - begin < 0.05  # nine puts while the handler is stuck
    assert not queue.flush(0.05)  # still stuck
    gate.set()
    assert queue.flush(5)
    assert handled == [0, 6, 7, 8, 9]  # items 1-5 dropped, oldest first, the rest in order
    assert queue.counts() == {"queued": 10, "handled": 5, "dropped": 5, "failed": 0}
    queue.close()


def test_every_item_is_handled_in_order_and_a_failure_is_kept() -> None:
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 3:
            raise ValueError("item three")
        handled.append(item)

    queue: SendQueue[int] = SendQueue(handle, "test-sender", size=1000)
    for i in range(500):
        queue.put(i)
    queue.close(flush_s=5)
    assert handled == [i for i in range(500) if i != 3]
    assert queue.counts() == {"queued": 500, "handled": 499, "dropped": 0, "failed": 1}
    assert queue.last_error == "ValueError: item three"
    with pytest.raises(ValueError, match="queue size must be >= 1"):
        SendQueue(handle, "test-sender", size=0)
