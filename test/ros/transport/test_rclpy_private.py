"""The node's only uses of rclpy's private machinery (msseg_ros.node.rclpy_private), checked against the
installed rclpy: when a release changes any of them, this fails here, by name, instead of a node
failing in the field."""

from __future__ import annotations

import time

import pytest
from rclpy.lifecycle import LifecycleNode
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from std_msgs.msg import String

from msseg_ros.node import rclpy_private
from msseg_ros.transport.graph import PrivateContext

pytestmark = pytest.mark.ros


def test_lifecycle_state_transitions_and_the_change_state_guard() -> None:
    with PrivateContext() as ros:
        node = LifecycleNode("private_api_probe", context=ros.context)
        try:
            assert rclpy_private.current_state(node) == "unconfigured"
            assert "configure" in rclpy_private.available_transitions(node).values()
            seen = []
            rclpy_private.guard_change_state(node, lambda handle, req, resp: seen.append(req) or handle(req, resp))
            assert callable(node._service_change_state.callback)  # the attribute the guard replaces
            node.trigger_configure()
            assert rclpy_private.current_state(node) == "inactive"
            assert "activate" in rclpy_private.available_transitions(node).values()
        finally:
            node.destroy_node()


def test_parameter_overrides_hold_values_of_undeclared_parameters() -> None:
    with PrivateContext() as ros:
        node = ros.create_node("private_overrides_probe",
                               parameter_overrides=[Parameter("front.camera_height", value=1.2)],
                               allow_undeclared_parameters=False)
        overrides = rclpy_private.parameter_overrides(node)
        assert overrides["front.camera_height"].value == 1.2
        assert not node.has_parameter("front.camera_height")


def test_the_wait_set_takes_raw_messages_of_exactly_the_given_subscriptions() -> None:
    assert rclpy_private.wait_set_class() is not None
    with PrivateContext() as ros:
        node = ros.create_node("private_waitset_probe")
        from msseg_ros.node.direct_take import NotByExecutor

        sub = node.create_subscription(String, "private_probe", lambda m: None, QoSProfile(depth=5), raw=True,
                                       callback_group=NotByExecutor())
        pub = node.create_publisher(String, "private_probe", QoSProfile(depth=5))
        waiter = rclpy_private.SubscriptionWaiter([sub], ros.context)
        deadline = time.monotonic() + 10
        taken = None
        while taken is None and time.monotonic() < deadline:
            pub.publish(String(data="hello"))
            if waiter.wait(100_000_000) == [0]:
                taken = rclpy_private.SubscriptionWaiter.take(sub)
        assert isinstance(taken, bytes) and b"hello" in taken
