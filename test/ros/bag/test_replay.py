"""Live replay: a generated bag through the real segmentation node gives the offline numbers back."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from paths import REPO

from msseg_ros.bag.cli import parse_args
from msseg_ros.bag.evaluate import evaluate_bag
from msseg_ros.bag.make import make_bag
from msseg_ros.bag.replay import replay_eval
from msseg_ros.tools.evaluator import StampMatcher
from msseg_ros.transport.graph import NodeProcess

pytestmark = pytest.mark.ros

N_FRAMES = 4
# The node and the offline reference must run the same backend ('auto' picks by timing).
NODE_PARAMS = {"backend": "torch", "threads": 1}


@pytest.fixture(scope="module")
def replay_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(bag, checkpoint, offline report) for a small generated CamVid split."""
    from fake_datasets import write_fake_camvid
    from tiny_model import write_tiny_checkpoint

    from msseg_core.data import build_dataset
    from msseg_core.runtime.segmenter import Segmenter

    tmp = tmp_path_factory.mktemp("replay")
    root = write_fake_camvid(tmp / "camvid", "test", n=N_FRAMES, size=(48, 64), seed=5)
    out = tmp / "bag"
    make_bag(build_dataset("camvid", root, "test"), out, rate=2.0)
    ckpt = write_tiny_checkpoint(tmp / "tiny.safetensors", input_size=(32, 48))
    segmenter = Segmenter.from_checkpoint(ckpt, device="cpu", backend="torch", threads=1)
    return out, ckpt, evaluate_bag(out, segmenter)


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes use one OpenMP thread: on a shared 2-core machine that is far faster."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_lockstep_replay_through_the_node_matches_offline(replay_setup, one_thread) -> None:
    out, ckpt, offline = replay_setup
    report = replay_eval(str(out), checkpoint=str(ckpt), device="cpu", lockstep=True, node_params=NODE_PARAMS,
                             log=lambda m: None)
    assert report["player"]["frames"] == N_FRAMES and report["player"]["frames_lost"] == 0
    assert report["frames_lost"] == 0 and report["frames_matched"] == N_FRAMES
    assert report["labels_without_gt"] == 0 and report["size_mismatches"] == 0
    assert report["confusion_matrix"] == offline["confusion_matrix"]
    assert report["miou"] == offline["miou"] and report["num_images"] == offline["num_images"]
    lat = report["latency_ms"]
    assert lat["count"] == N_FRAMES and 0 < lat["p50"] <= lat["p90"] <= lat["max"] < 60_000
    assert report["stale_stamps"] == 0  # restamped: latency is publish-to-labels


def test_lockstep_replay_waits_for_a_slow_evaluator(replay_setup, one_thread, monkeypatch) -> None:
    """The player sees each frame's labels through its own subscription; the evaluator's callback for
    the same message may run later (a busy machine). The final report waits for it instead of
    counting the last frame lost."""
    import time

    from msseg_ros.tools.evaluator import EvaluatorNode

    out, ckpt, _ = replay_setup
    real = EvaluatorNode.labels_callback

    def slow(self, msg):
        time.sleep(0.4)
        real(self, msg)

    monkeypatch.setattr(EvaluatorNode, "labels_callback", slow)
    report = replay_eval(str(out), checkpoint=str(ckpt), device="cpu", lockstep=True, node_params=NODE_PARAMS,
                             log=lambda m: None)
    assert report["player"]["frames_answered"] == N_FRAMES
    assert report["frames_lost"] == 0 and report["frames_matched"] == N_FRAMES


def load_launch_module():
    spec = importlib.util.spec_from_file_location("replay_eval_launch", REPO / "launch" / "replay_eval.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_parses_without_launch() -> None:
    launch = load_launch_module()
    cmds = launch.commands({"bag": "/data/b", "checkpoint": "/m.safetensors", "lockstep": "true"}, "/share")
    assert cmds["node"][:4] == ["segmentation_node", "--ros-args", "--params-file", "/share/config/camvid.yaml"]
    assert "__ns:=/msseg" in cmds["node"] and "image:=/camera/image_raw" in cmds["node"]
    assert "checkpoint:=/m.safetensors" in cmds["node"]
    assert "labels:=/msseg/labels" in cmds["evaluator"]
    assert "ground_truth/labels:=/ground_truth/labels" in cmds["evaluator"]
    assert cmds["player"][:3] == ["msseg-bag", "play", "/data/b"] and "--lockstep" in cmds["player"]
    assert "--lockstep" not in launch.commands({"bag": "/b", "lockstep": "false"}, "/share")["player"]
    with pytest.raises(ValueError, match="bag"):
        launch.commands({}, "/share")
    # The player's arguments are ones msseg-bag accepts.
    args = parse_args(cmds["player"][1:])
    assert args.lockstep and args.restamp and args.labels_topic == "/msseg/labels"


def test_generate_launch_description_with_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate_launch_description() against recording stand-ins for `launch` / `launch_ros`."""
    import types

    import ament_index_python.packages

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    modules = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "EmitEvent", "ExecuteProcess", "OpaqueFunction",
                           "RegisterEventHandler", "SetEnvironmentVariable", "TimerAction"],
        "launch.event_handlers": ["OnProcessExit"],
        "launch.events": ["Shutdown"],
        "launch_ros.actions": ["Node"],
        "launch_ros": [],
    }
    for module_name, names in modules.items():
        module = types.ModuleType(module_name)
        for name in names:
            setattr(module, name, type(name, (Recorder,), {}))
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(ament_index_python.packages, "get_package_share_directory", lambda package: str(REPO))
    monkeypatch.setattr(ament_index_python.packages, "get_package_prefix", lambda package: "/opt/msseg")
    m = load_launch_module()
    actions = m.generate_launch_description().args[0]
    assert [a.args[0] for a in actions if type(a).__name__ == "DeclareLaunchArgument"] == list(m.ARGUMENTS)
    opaque = next(a for a in actions if type(a).__name__ == "OpaqueFunction")
    context = type("Context", (), {"launch_configurations": {
        **{k: v[0] for k, v in m.ARGUMENTS.items()}, "bag": "/data/b", "device": "cpu"}})()
    node, evaluator, player, done = opaque.kwargs["function"](context)
    assert node.kwargs["executable"] == "segmentation_node" and node.kwargs["namespace"] == "/msseg"
    assert node.kwargs["parameters"][1] == {"device": "cpu"}
    assert ("image", "/camera/image_raw") in node.kwargs["remappings"]
    assert evaluator.kwargs["executable"] == "evaluator_node"
    assert ("labels", "/msseg/labels") in evaluator.kwargs["remappings"]
    assert player.kwargs["cmd"][:3] == ["/opt/msseg/lib/msseg_ros/msseg-bag", "play", "/data/b"]
    handler = done.args[0]
    assert handler.kwargs["target_action"] is player  # shutdown (final report) when the bag ends


def test_launch_wiring_as_three_processes(replay_setup, one_thread, tmp_path: Path) -> None:
    """What the launch file starts, started by hand: player, node and evaluator as separate processes."""
    out, ckpt, offline = replay_setup
    report_path = tmp_path / "live.json"
    cmds = load_launch_module().commands({"bag": str(out), "checkpoint": str(ckpt), "device": "cpu",
                                          "report_path": str(report_path)}, str(REPO))
    cmds["node"] += [a for k, v in NODE_PARAMS.items() for a in ("-p", f"{k}:={v}")]
    procs: dict[str, NodeProcess] = {}
    try:
        for name in ("node", "evaluator", "player"):
            procs[name] = NodeProcess(cmds[name][0], cmds[name][1:], cwd=tmp_path, log_path=tmp_path / f"{name}.log")
        assert procs["player"].wait(timeout=180) == 0, procs["player"].output()
        for name in ("evaluator", "node"):
            assert procs[name].stop(timeout=30) == 0, procs[name].output()
    finally:
        for proc in procs.values():
            proc.close()
    played = json.loads((tmp_path / "player.log").read_text()[(tmp_path / "player.log").read_text().index("{"):])
    assert played["frames"] == N_FRAMES and played["frames_lost"] == 0
    report = json.loads(report_path.read_text())
    assert report["frames_lost"] == 0 and report["frames_matched"] == N_FRAMES
    assert report["confusion_matrix"] == offline["confusion_matrix"] and report["miou"] == offline["miou"]


def test_stamp_matcher_pairs_expires_and_reports() -> None:
    m = StampMatcher(["a", "b"], match_timeout=1.0)
    gt = np.array([[0, 1], [1, 255]], np.uint8)
    m.add_gt(10, gt, now=0.0)
    m.add_labels(10, np.array([[0, 1], [0, 1]], np.uint8), now=0.1, latency_s=0.05)  # gt first
    m.add_labels(20, np.array([[1, 1], [1, 1]], np.uint8), now=0.2, latency_s=0.07)
    m.add_gt(20, gt, now=0.3)  # labels first
    m.add_labels(20, gt, now=0.3)  # a second answer for the same frame is ignored
    m.add_gt(30, gt, now=0.5)  # never answered: lost after the timeout
    m.add_labels(40, gt, now=0.5, latency_s=7200.0)  # no ground truth, and a stamp from another day
    m.expire(now=1.0)
    assert m.frames_lost == 0 and m.labels_without_gt == 0
    m.expire(now=2.0)
    r = m.report("ckpt")
    assert r["frames_matched"] == r["num_images"] == 2 and r["frames_lost"] == 1 and r["labels_without_gt"] == 1
    assert m.frames_done() == 3  # what replay-eval waits for before its final report
    assert r["duplicates"] == 1 and r["stale_stamps"] == 1 and r["checkpoint"] == "ckpt"
    assert r["confusion_matrix"] == [[1, 1], [1, 3]]  # rows: truth; void never counts
    assert r["latency_ms"]["count"] == 2 and r["latency_ms"]["p50"] == pytest.approx(60.0)
    m.add_gt(50, gt, now=3.0)
    m.add_labels(50, np.zeros((3, 3), np.uint8), now=3.0)
    m.finish()
    assert m.report()["size_mismatches"] == 1 and m.frames_done() == 4
    assert json.dumps(m.report())  # valid JSON (no NaN)


def test_evaluator_subscribes_ground_truth_only_once_labels_can_arrive() -> None:
    """A player waits for a ground-truth subscriber before its first frame; the evaluator shows one only
    when its labels subscription is matched, so no frame's labels can go out before node and
    evaluator have matched (a launch-file race seen once on a loaded CI machine)."""
    import time

    from helpers_ros import namespace
    from sensor_msgs.msg import Image

    from msseg_ros.tools.evaluator import EvaluatorNode
    from msseg_ros.transport.graph import PrivateContext, ros_arguments

    ns = namespace("eval_wait")
    checks = threading.Semaphore(0)

    class CountingEvaluator(EvaluatorNode):
        def gt_subscribe_callback(self) -> None:
            super().gt_subscribe_callback()
            checks.release()

    with PrivateContext("eval_wait_probe") as ros:
        evaluator = CountingEvaluator(context=ros.context, cli_args=ros_arguments(
            remaps=[("labels", f"{ns}/labels"), ("ground_truth/labels", f"{ns}/gt")]))
        ros.add_node(evaluator)
        try:
            for _ in range(5):  # it has looked for a labels publisher five times: none, so no ground truth
                assert checks.acquire(timeout=20)
            assert evaluator.gt_sub is None and ros.node.count_subscribers(f"{ns}/gt") == 0
            ros.node.create_publisher(Image, f"{ns}/labels", 10)
            deadline = time.monotonic() + 20
            while ros.node.count_subscribers(f"{ns}/gt") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ros.node.count_subscribers(f"{ns}/gt") == 1 and evaluator.gt_sub is not None
        finally:
            ros.remove_node(evaluator)
            evaluator.destroy_node()


@pytest.mark.parametrize("spec", ["camvid_fast", "camvid", ""])
def test_evaluator_takes_a_checkpoint_as_the_node_does(spec: str) -> None:
    """`msseg-bag replay-eval --checkpoint camvid_fast` hands the evaluator the zoo name the node takes:
    both resolve it in one place (msseg_core.checkpoint.read_meta), so the evaluator scores with the
    model's classes instead of failing on the name as a path."""
    from msseg_core import zoo
    from msseg_core.checkpoint import read_meta
    from msseg_ros.tools.evaluator import EvaluatorNode
    from msseg_ros.transport.graph import PrivateContext

    path, meta = read_meta(spec)
    assert path == zoo.resolve_checkpoint(spec or None)
    with PrivateContext("eval_zoo_probe") as ros:
        evaluator = EvaluatorNode(checkpoint=spec, context=ros.context)
        try:
            assert evaluator.checkpoint == str(path)
            assert evaluator.matcher.class_names == list(meta.class_names)
        finally:
            evaluator.destroy_node()
