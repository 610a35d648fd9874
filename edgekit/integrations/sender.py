"""A reporter's sender thread: `report()` only queues the frame, this thread builds and sends its messages, so the
frame loop pays a deque append per frame whatever packing, the link or the disk costs.

The thread is not woken per frame (a wake-up and the GIL hand-off that follows cost more than packing a MAVLink
message): it drains the queue every `interval_s` (5 ms by default, the most a message waits), handling frames one
at a time, in the order queued. The queue is bounded and drops its oldest frame when full (a late detection is
worth less than the next frame's). `flush()` waits until everything queued is handled. An exception from the
handler is kept for `health()` (the thread goes on with the next frame), never raised into the frame loop.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
DEFAULT_QUEUE = 64  # frames: two seconds of a 30 frames/s camera
DRAIN_INTERVAL_S = 0.005


class SendQueue(Generic[Item]):
    """`put(item)` from the frame loop, `handle(item)` on a daemon thread named `name`; `close()` at the end."""

    def __init__(self, handle: Callable[[Item], object], name: str, size: int = DEFAULT_QUEUE,
                 interval_s: float = DRAIN_INTERVAL_S) -> None:
        if size < 1 or interval_s <= 0:
            raise ValueError(f"queue size must be >= 1 and the interval > 0, got {size} and {interval_s}")
        self._handle, self._interval = handle, interval_s
        self._items: collections.deque[Item] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.queued = self.handled = self.dropped = self.failed = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Item) -> None:
        """Queue one item (never blocks; the oldest queued one goes when the queue is full)."""
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            self.queued += 1

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self._interval)
            self._drain()
            if stopping:
                return

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    return
                item = self._items.popleft()
            try:
                self._handle(item)
                self.handled += 1
            except Exception as exc:  # a bug or an unexpected library error: kept for health(), the loop goes on
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued item is handled (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self.handled + self.failed + self.dropped < self.queued:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(self._interval / 2)
        return True

    def counts(self) -> dict[str, int]:
        """Frames queued, handled, dropped (the queue was full) and failed (the handler raised)."""
        return {"queued": self.queued, "handled": self.handled, "dropped": self.dropped, "failed": self.failed}

    def close(self, flush_s: float = 2.0) -> None:
        """Handle what is queued (for up to `flush_s`), then stop the thread; what is left is dropped."""
        self.flush(flush_s)
        with self._lock:
            self.dropped += len(self._items)
            self._items.clear()
        self._stop.set()
        self._thread.join(timeout=2.0)
