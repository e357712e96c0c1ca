"""The node as a managed (lifecycle) node, driven from this test process through the real
lifecycle_msgs services (ChangeState, GetState, GetAvailableTransitions) the way Nav2's or Autoware's
lifecycle manager drives it: every transition, outputs only while active, a failed configure that
leaves the node alive and fixable, transitions asked in the wrong state refused, shutdown from each
state. The nodes are processes started with `autostart:=false`, three at once (each costs a start-up)."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator

import pytest
from helpers_ros import InProcessNode, SegmentationClient, namespace, node_args, random_rgb, rgb_image
from rclpy.lifecycle import TransitionCallbackReturn

from msseg_ros.node.pipeline import all_accounted
from msseg_ros.transport.graph import NodeProcess

pytestmark = pytest.mark.ros
FIRST_CALL_TIMEOUT = 180.0  # the node process imports torch and rclpy before its services exist


@pytest.fixture(scope="module")
def nodes(tiny_checkpoint, tmp_path_factory) -> Iterator[dict[str, tuple[NodeProcess, str]]]:  # noqa: F811
    """name -> (process, namespace): 'cycle' and 'active' with the tiny model, 'broken' with a
    checkpoint that does not exist."""
    missing = tmp_path_factory.mktemp("lifecycle") / "missing.safetensors"
    settings = {"cycle": tiny_checkpoint, "active": tiny_checkpoint, "broken": missing}
    procs = {}
    try:
        for name, checkpoint in settings.items():
            ns = namespace(f"lifecycle_{name}")
            procs[name] = (NodeProcess("segmentation_node", node_args(checkpoint, ns, autostart=False)), ns)
        yield procs
    finally:
        for proc, _ in procs.values():
            proc.close()


def ignored_until(client: SegmentationClient, fqn: str, count: int) -> list:
    """Publish frames until the node's diagnostics count `count` more of them as ignored (it is inactive);
    their stamps."""
    start = int(client.wait_for_status(fqn, timeout=30)["ignored"])
    stamps = []
    deadline = time.monotonic() + 60
    while True:
        stamps.append(client.publish(rgb_image(random_rgb(16, 24))))
        try:
            client.wait_for_status(fqn, lambda s: int(s["ignored"]) >= start + count, timeout=0.3)
            return stamps
        except AssertionError:
            assert time.monotonic() < deadline, f"frames not seen as ignored: {client.status_message(fqn)}"


def test_every_transition_and_outputs_only_while_active(nodes) -> None:
    proc, ns = nodes["cycle"]
    fqn = f"{ns}/msseg_node"
    with SegmentationClient(ns, outputs=("labels",), name="lifecycle_cycle") as c:
        assert c.lifecycle_state(fqn, timeout=FIRST_CALL_TIMEOUT) == "unconfigured"
        assert c.available_transitions(fqn) == {"configure", "shutdown"}
        assert c.image_pub.get_subscription_count() == 0  # nothing subscribes before configure

        assert c.change_state(fqn, "configure") and c.lifecycle_state(fqn) == "inactive"
        assert c.available_transitions(fqn) == {"activate", "cleanup", "shutdown"}
        # Inactive: the camera is subscribed, frames arrive and are ignored; nothing is published.
        ignored = ignored_until(c, fqn, 3)
        status = c.wait_for_status(fqn)
        assert status["received"] == status["processed"] == "0"
        assert "inactive" in c.status_message(fqn).message

        assert c.change_state(fqn, "activate") and c.lifecycle_state(fqn) == "active"
        assert c.available_transitions(fqn) == {"deactivate", "shutdown"}
        c.wait_until_served()
        assert not set(ignored) & set(c.received)

        assert c.change_state(fqn, "deactivate") and c.lifecycle_state(fqn) == "inactive"
        status = c.wait_for_status(fqn)
        assert all_accounted(status), status  # frames in flight at the deactivation too
        processed = int(status["processed"])
        ignored = ignored_until(c, fqn, 3)
        assert int(c.wait_for_status(fqn)["processed"]) == processed
        assert not set(ignored) & set(c.received)

        assert c.change_state(fqn, "cleanup") and c.lifecycle_state(fqn) == "unconfigured"
        deadline = time.monotonic() + 30
        while c.image_pub.get_subscription_count() > 0:  # the subscription is gone from the graph
            assert time.monotonic() < deadline, "the image subscription outlived cleanup"
            time.sleep(0.05)
        publishers = {name for name, _ in c.node.get_publisher_names_and_types_by_node("msseg_node", ns)}
        assert f"{ns}/labels" not in publishers, publishers

        # Configured again from scratch, it serves again; then shut down from inactive.
        assert c.change_state(fqn, "configure") and c.change_state(fqn, "activate")
        c.wait_until_served()
        assert c.change_state(fqn, "deactivate")
        assert c.change_state(fqn, "shutdown") and c.lifecycle_state(fqn) == "finalized"
        assert c.available_transitions(fqn) == set()
    assert proc.alive, proc.tail()
    assert proc.stop() == 0, proc.tail()


def test_wrong_state_transitions_and_start_up_parameters_are_refused(nodes) -> None:
    proc, ns = nodes["active"]
    fqn = f"{ns}/msseg_node"
    with SegmentationClient(ns, outputs=("labels",), name="lifecycle_active") as c:
        assert c.lifecycle_state(fqn, timeout=FIRST_CALL_TIMEOUT) == "unconfigured"
        assert not c.change_state(fqn, "activate")  # not from unconfigured
        assert c.change_state(fqn, "configure") and c.change_state(fqn, "activate")
        c.wait_until_served()
        for transition in ("configure", "cleanup", "activate", "no_such_transition"):
            assert not c.change_state(fqn, transition), transition
            assert c.lifecycle_state(fqn) == "active", transition
        result = c.set_parameters(fqn, {"checkpoint": "other.safetensors"})[0]
        assert not result.successful and "unconfigured" in result.reason, result.reason
        c.wait_until_served()  # still serving after every refusal
        assert c.change_state(fqn, "shutdown") and c.lifecycle_state(fqn) == "finalized"
    assert proc.alive, proc.tail()
    log = proc.output()
    assert "cannot 'activate' in state 'unconfigured'" in log and "cannot 'cleanup' in state 'active'" in log, log
    assert "Traceback" not in log, log


def test_failed_configure_leaves_the_node_alive_and_fixable(nodes, tiny_checkpoint) -> None:  # noqa: F811
    """A checkpoint that does not exist: configure answers FAILURE with one error line, the node stays
    unconfigured and alive, nothing half-made is left; the manager sets a good checkpoint (start-up
    parameters may change while unconfigured) and configures again."""
    proc, ns = nodes["broken"]
    fqn = f"{ns}/msseg_node"
    with SegmentationClient(ns, outputs=("labels",), name="lifecycle_broken") as c:
        assert c.lifecycle_state(fqn, timeout=FIRST_CALL_TIMEOUT) == "unconfigured"
        assert not c.change_state(fqn, "configure")
        assert c.lifecycle_state(fqn) == "unconfigured" and proc.alive
        errors = [line for line in proc.output().splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "configure failed: parameter checkpoint: checkpoint not found" in errors[0], errors
        subscribed = c.subscribed_topics("msseg_node", ns)
        assert f"{ns}/image" not in subscribed, subscribed
        assert all(r.successful for r in c.set_parameters(fqn, {"checkpoint": str(tiny_checkpoint)}))
        assert c.change_state(fqn, "configure") and c.lifecycle_state(fqn) == "inactive"
        assert c.change_state(fqn, "cleanup")
        assert c.change_state(fqn, "shutdown") and c.lifecycle_state(fqn) == "finalized"
    assert proc.alive and "Traceback" not in proc.output(), proc.tail()


def test_cleanup_frees_the_model(tiny_checkpoint) -> None:  # noqa: F811
    """After cleanup nothing holds the Segmenter (its network, its buffers) any more."""
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "autostart": False}, namespace("lifecycle_free")) as node:
        seg = node.node
        assert seg.segmenter is None and not seg.has_parameter("road_classes")
        assert seg.trigger_configure() == TransitionCallbackReturn.SUCCESS
        model = weakref.ref(seg.segmenter)
        assert seg.has_parameter("road_classes")
        assert seg.trigger_activate() == TransitionCallbackReturn.SUCCESS and seg.threads_alive()
        assert seg.trigger_deactivate() == TransitionCallbackReturn.SUCCESS and not seg.threads_alive()
        assert seg.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert seg.segmenter is None and model() is None
        assert not seg.has_parameter("road_classes") and seg.get_parameter("class_names").value
