"""Camera frames taken by a thread of their own instead of the node's executor.

rclpy's executor runs in Python: each wake-up rebuilds a wait set of every subscription, service,
timer and QoS-event handler of the node (a lifecycle node with several cameras has dozens) and then
calls the callback, all under the interpreter lock, for every frame including those dropped later
(BENCHMARKS.md, "Several cameras": the executor thread's share of a core and the lock waits). With
several cameras in one process that cost lands on the one lock every worker needs.

`DirectTake` keeps the image subscriptions out of the executor (their callback group never lets it
run them) and waits on exactly those subscriptions in one thread, the way `rclpy.wait_for_message`
does: one small wait set, the raw message taken and handed to the same callback. Everything else
(camera_info, parameters, lifecycle services, diagnostics) stays with the executor. If this rclpy
lacks the wait-set API, `available()` says so and the node keeps its subscriptions on the executor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rclpy.callback_groups import CallbackGroup

from msseg_ros.node.pipeline import name_os_thread
from msseg_ros.node.rclpy_private import SubscriptionWaiter, wait_set_class

log = logging.getLogger(__name__)
WAIT_TIMEOUT_NS = 100_000_000  # how often the thread looks at its stop flag when no frame comes


def available() -> bool:
    """Whether this rclpy has the wait-set API that `rclpy.wait_for_message` uses."""
    return wait_set_class() is not None


class NotByExecutor(CallbackGroup):
    """A callback group the executor never runs nor waits on: its subscriptions are taken elsewhere."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False

    def ending_execution(self, entity: Any) -> None:
        pass


class DirectTake:
    """One thread that waits on `subscriptions` (created with a `NotByExecutor` group, raw or not) and
    hands each message taken to `deliver(index, message)`, index into `subscriptions`."""

    def __init__(self, context: Any, subscriptions: Sequence[Any], deliver: Callable[[int, Any], None]) -> None:
        self._context = context
        self._subs = list(subscriptions)
        self._deliver = deliver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="msseg_input", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking (before the subscriptions are destroyed); returns once the thread is out of rcl."""
        self._stop.set()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        name_os_thread()
        waiter = SubscriptionWaiter(self._subs, self._context)
        while not self._stop.is_set() and self._context.ok():
            try:
                ready = waiter.wait(WAIT_TIMEOUT_NS)  # releases the interpreter lock while waiting
            except Exception as exc:  # e.g. the context shut down under the wait: stop; anything else: retry
                if self._stop.is_set() or not self._context.ok():
                    return
                log.warning("waiting for frames failed, retrying: %s", exc)
                self._stop.wait(0.1)
                continue
            for index in ready:
                self._take(index, self._subs[index])

    def _take(self, index: int, sub: Any) -> None:
        """Take what this subscription holds (several frames may be queued) and deliver each."""
        while not self._stop.is_set():
            try:
                message = SubscriptionWaiter.take(sub)
            except Exception as exc:  # a destroyed handle or a failed take: skip, never kill the thread
                log.debug("take from %s failed: %s", getattr(sub, "topic_name", "?"), exc)
                return
            if message is None:
                return
            try:
                self._deliver(index, message)
            except Exception:  # the callback's own failure must not stop the frames of every camera
                log.exception("frame delivery failed")
