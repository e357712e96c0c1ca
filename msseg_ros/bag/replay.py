"""`msseg-bag replay-eval`: the segmentation node (a subprocess), a player and the live evaluator from
one command; the report is the evaluator's plus the player's statistics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from msseg_ros.bag.info import bag_info, pick_image_topic
from msseg_ros.bag.play import BagPlayer
from msseg_ros.transport import topics


def replay_eval(bag: str, checkpoint: str = "", device: str = "cpu", lockstep: bool = True, rate: float = 1.0,
                timeout: float = 10.0, first_timeout: float = 120.0, startup_timeout: float = 120.0,
                namespace: str = topics.NAMESPACE, node_params: dict[str, Any] | None = None,
                match_timeout: float = 5.0, log: Callable[[str], None] = print,
                stop: threading.Event | None = None) -> dict:
    """Start the node as a subprocess, play the bag (restamped), score its labels live; the report
    is the evaluator's (mIoU schema + latency + frames lost) plus the player's statistics."""
    from msseg_ros.tools.evaluator import EvaluatorNode
    from msseg_ros.transport.graph import NodeProcess, PrivateContext, ros_arguments
    from msseg_ros.transport.qos import apply_fastdds_profile

    stop = stop or threading.Event()
    info = bag_info(bag)
    image_topic = pick_image_topic(info.topics, None)
    if info.topics[image_topic][0] != "sensor_msgs/msg/Image":
        raise ValueError(f"replay-eval feeds the node sensor_msgs/Image; {image_topic} is "
                         f"{info.topics[image_topic][0]}")
    if topics.GROUND_TRUTH_LABELS not in info.topics:
        raise ValueError(f"the bag has no ground truth on {topics.GROUND_TRUTH_LABELS}")
    apply_fastdds_profile()  # this process and the node's: large frames need the shared-memory profile
    ros = PrivateContext("msseg_bag_replay", args=None, threads=2)
    proc = None
    evaluator = None
    try:
        labels_topic = topics.in_namespace(namespace, topics.LABELS)
        evaluator = EvaluatorNode(context=ros.context, checkpoint=checkpoint, match_timeout=match_timeout,
                                  cli_args=ros_arguments(remaps=[(topics.LABELS, labels_topic),
                                                                 (topics.GROUND_TRUTH, topics.GROUND_TRUTH_LABELS)]))
        ros.add_node(evaluator)
        player = BagPlayer(ros.node, bag, rate=rate, lockstep=lockstep, labels_topic=labels_topic, timeout=timeout,
                           first_timeout=first_timeout, restamp=True, image_topic=image_topic,
                           log=lambda m: ros.node.get_logger().warning(m))
        params = {"device": device, **({"checkpoint": checkpoint} if checkpoint else {}), **(node_params or {})}
        args = ros_arguments(namespace, [(topics.IMAGE, image_topic), (topics.CAMERA_INFO, topics.CAMERA_CAMERA_INFO)],
                             params)
        proc = NodeProcess("segmentation_node", args, inherit_output=True)
        log("starting: " + " ".join(proc.cmd))
        deadline = time.monotonic() + startup_timeout
        ready = False
        while not ready and time.monotonic() < deadline and not stop.is_set():
            if not proc.alive:
                raise RuntimeError(f"segmentation_node exited with code {proc.returncode} before it was ready")
            ready = player.wait_for_subscribers(1.0, topics=[image_topic], stop=stop, settle=0.0)
        if not ready:
            raise RuntimeError(f"segmentation_node did not subscribe to {image_topic} in {startup_timeout:.0f} s")
        # The evaluator's subscriptions are in this process; let both ends of every match settle.
        player.wait_for_subscribers(10.0, topics=[topics.GROUND_TRUTH_LABELS], stop=stop, settle=1.0)
        stats = player.run(stop)
        if lockstep:
            # The player saw each frame's labels through its own subscription; the evaluator's callback
            # for the same message (and the last ground truth) may still be queued on a busy machine.
            deadline = time.monotonic() + min(match_timeout, 10.0)
            while evaluator.matcher.frames_done() < stats.frames_answered and time.monotonic() < deadline:
                time.sleep(0.02)
        else:  # let the last frames through the node
            time.sleep(min(match_timeout, 10.0))
        report = evaluator.finish()
        report["player"] = stats.to_dict()
        report["bag"] = str(bag)
        return report
    finally:
        if proc is not None:
            proc.stop(timeout=10.0)
        if evaluator is not None:
            ros.remove_node(evaluator)
            evaluator.destroy_node()
        ros.close()
