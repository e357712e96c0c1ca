"""Every use of rclpy's private machinery, in one place (rclpy has no public API for these).

- The lifecycle state machine: `LifecycleNode` publishes its state only through its services; a node
  that checks its own state (to refuse a start-up parameter while configured, or a transition its state
  does not have, with a clear line instead of an exception inside the executor) reads the machine.
- Parameter overrides: the values given on the command line or in a params file for parameters not
  declared yet (per-camera parameters of cameras that are not configured).
- Wait sets: `rclpy.wait_for_message` waits on one subscription with rclpy's C wait set; the node's
  input thread (direct_take.py) does the same for its image subscriptions.
test/test_rclpy_private.py fails loudly when an rclpy release changes any of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

WAIT_SET_API = "rclpy.impl.implementation_singleton.rclpy_implementation.WaitSet"


# -- lifecycle -----------------------------------------------------------------------------------
def current_state(node: Any) -> str:
    """The label of a LifecycleNode's current state ('unconfigured', 'inactive', 'active', ...)."""
    return str(node._state_machine.current_state[1])


def available_transitions(node: Any) -> dict[int, str]:
    """Transition id -> label of the transitions the current state has."""
    return {int(t[0]): str(t[1]) for t in node._state_machine.available_transitions}


def guard_change_state(node: Any, guard: Callable[[Callable, Any, Any], Any]) -> None:
    """Put `guard(handle, request, response)` in front of the node's ~/change_state service callback;
    `handle` is rclpy's own callback, for the requests the guard lets through."""
    service = node._service_change_state
    handle = service.callback
    service.callback = lambda request, response: guard(handle, request, response)


# -- parameters ----------------------------------------------------------------------------------
def parameter_overrides(node: Any) -> Mapping[str, Any]:
    """Name -> rclpy Parameter of every value given for the node at start-up (declared or not)."""
    return getattr(node, "_parameter_overrides", {})


# -- wait sets -----------------------------------------------------------------------------------
def wait_set_class() -> Any | None:
    """rclpy's C wait set type, or None where this rclpy lacks it (the node then uses its executor)."""
    try:
        from rclpy.impl.implementation_singleton import rclpy_implementation

        return rclpy_implementation.WaitSet
    except (ImportError, AttributeError):
        return None


class SubscriptionWaiter:
    """Waits on a fixed list of subscriptions and takes their messages (raw bytes for raw subscriptions)."""

    def __init__(self, subscriptions: Sequence[Any], context: Any):
        cls = wait_set_class()
        if cls is None:
            raise RuntimeError(f"this rclpy has no {WAIT_SET_API}")
        self._subs = list(subscriptions)
        self._wait_set = cls(len(self._subs), 0, 0, 0, 0, 0, context.handle)

    def wait(self, timeout_ns: int) -> list[int]:
        """Block (without the interpreter lock) until a message is ready or the timeout passes; the indices
        of the subscriptions with something to take."""
        ws = self._wait_set
        ws.clear_entities()
        for sub in self._subs:
            ws.add_subscription(sub.handle)
        ws.wait(timeout_ns)
        ready = ws.get_ready_entities("subscription")
        return [i for i, sub in enumerate(self._subs) if sub.handle.pointer in ready]

    @staticmethod
    def take(sub: Any) -> Any | None:
        """The subscription's next message (bytes when raw), or None when it holds none."""
        with sub.handle:
            taken = sub.handle.take_message(sub.msg_type, sub.raw)
        return None if taken is None else taken[0]


__all__ = ["SubscriptionWaiter", "available_transitions", "current_state", "guard_change_state",
           "parameter_overrides", "wait_set_class"]
