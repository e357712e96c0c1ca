"""msseg-demo: the whole pipeline on real ROS 2 in one command, with nothing but the package.

    msseg-demo                          # built-in synthetic street, packaged model
    msseg-demo --input ~/CamVid/test    # a folder of images (labels from testannot/), a video, a rosbag
    msseg-demo --checkpoint runs/camvid/best.safetensors --frames 60 --device cuda

Starts the real `segmentation_node` (namespace /msseg, image remapped to /camera/image_raw) and the
`synthetic_camera` (which also replays the --input) as subprocesses, both with the packaged Fast DDS
large-image profile unless FASTRTPS_DEFAULT_PROFILES_FILE / FASTDDS_DEFAULT_PROFILES_FILE is set,
subscribes to every output, and collects them by input stamp until --frames frames are answered.
Then it writes to --out:

* ``montage.png``: input | ground truth | colour mask | overlay | confidence | road mask for a few
  frames, with the class legend and the run's numbers;
* ``bag/``: a rosbag2 (mcap) with the camera's image, camera_info and ground truth and all node outputs,
  as the raw CDR the node sent (``msseg-bag info out/demo/bag``, ``ros2 bag play`` open it);
* ``summary.json`` and the two processes' logs (``node.log``, ``camera.log``);

and prints frames processed, output rate, end-to-end latency (camera stamp to output received:
mean, p50, p99) and, where ground truth exists, mIoU. Exit 0 on success; 1 with the node's log tail
when the node dies or nothing arrives in time; 2 on bad arguments. Children are stopped on every
exit path (Ctrl-C included) and die with the demo if it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msseg_core.io import save_figure, write_text_atomic
from msseg_ros.transport import topics
from msseg_ros.transport.cdr import cdr_stamp

if TYPE_CHECKING:
    from msseg_ros.transport.graph import NodeProcess

OUTPUTS = topics.OUTPUTS
CAMERA_HISTORY = 30  # frames the camera keeps for a reader that matches late: 6 s at the default 5 Hz
EXIT_FAILED, EXIT_USAGE = 1, 2


class DemoError(RuntimeError):
    """A failure to report in one paragraph (with log tails), exit status 1."""


# -- checkpoint metadata without importing torch ------------------------------------------------
def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The msseg metadata of a .safetensors file, read from its JSON header (no torch import: the
    demo process stays light while the node loads the model)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        meta = json.loads(header["__metadata__"]["meta"])
        if not isinstance(meta.get("class_names"), list) or not isinstance(meta.get("palette"), list):
            raise ValueError("no class names / palette")
        return meta
    except FileNotFoundError:
        raise DemoError(f"checkpoint not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DemoError(f"{path} is not an msseg checkpoint ({exc})") from None


def resolve_checkpoint(given: str | None) -> Path:
    """--checkpoint, else the packaged default model (with a clear message while none is shipped)."""
    from msseg_core.zoo import resolve_checkpoint as zoo_or_path

    try:
        path = zoo_or_path(given or "").expanduser()
    except (ValueError, FileNotFoundError) as exc:
        raise DemoError(f"{exc}; pass --checkpoint FILE.safetensors" if not given else str(exc)) from None
    if not path.is_file():
        raise DemoError(f"checkpoint not found: {path}")
    return path.resolve()


def child_env(base: dict[str, str] | None = None) -> tuple[dict[str, str], str | None, str]:
    """Environment of the nodes: the Fast DDS profile (unless the user chose one), unbuffered output,
    and this package importable however it was installed."""
    from msseg_ros.transport.graph import SOURCE_ROOT
    from msseg_ros.transport.qos import apply_fastdds_profile

    env = dict(os.environ if base is None else base)
    profile, how = apply_fastdds_profile(env)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(SOURCE_ROOT)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env, profile, how


# -- collection ----------------------------------------------------------------------------------
@dataclass
class Collector:
    """Everything the demo receives: raw messages for the bag, and per input stamp what arrived when.
    Messages arrive on the executor's thread; the demo reads and waits on its own."""

    t0: int = field(default_factory=time.time_ns)
    messages: list[tuple[str, int, bytes]] = field(default_factory=list)  # (topic, receive ns, raw CDR)
    frames: dict[int, dict[str, bytes]] = field(default_factory=dict)  # stamp -> output/input name -> raw
    done_at: dict[int, int] = field(default_factory=dict)  # stamp -> receive ns of its last output
    grids: dict[int, bytes] = field(default_factory=dict)  # stamp -> road_grid (raw CDR)
    inputs: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def on_message(self, topic: str, name: str, raw: bytes) -> None:
        now = time.time_ns()
        raw = bytes(raw)
        with self._cond:
            self.messages.append((topic, now, raw))
            self._cond.notify_all()
            stamp = cdr_stamp(raw)
            if name == "road_grid":
                self.grids[stamp] = raw
                return
            entry = self.frames.setdefault(stamp, {})
            entry[name] = raw
            if name == "image":
                self.inputs += 1
            if name in OUTPUTS and stamp not in self.done_at and all(o in entry for o in OUTPUTS):
                self.done_at[stamp] = now

    def complete(self) -> list[int]:
        """Stamps answered on every output (and whose input we saw), in order."""
        with self._cond:
            return sorted(s for s in self.done_at if "image" in self.frames.get(s, {}))

    def inputs_whole(self, names: Sequence[str]) -> bool:
        """Whether every frame whose image came also has a message of each of these names."""
        with self._cond:
            return all(n in entry for entry in self.frames.values() if "image" in entry for n in names)

    def wait(self, timeout: float) -> None:
        """Until the next message arrives, at most `timeout` seconds."""
        with self._cond:
            self._cond.wait(timeout)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


# -- the run -------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="", help="image folder, video, rosbag, or '' / synthetic[:SEED] (default)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--frames", type=int, default=30, help="frames to collect (default: 30)")
    p.add_argument("--checkpoint", default="", help="model .safetensors (default: the packaged model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (default: fp32)")
    p.add_argument("--rate", type=float, default=5.0, help="camera frames per second (default: 5)")
    p.add_argument("--size", default="", help="WIDTHxHEIGHT of the frames (default: 480x360 synthetic, "
                                              "native for files)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic street (default: 0)")
    p.add_argument("--image-topic", default="", help="camera topic of an --input rosbag (default: the first)")
    p.add_argument("--montage-frames", type=int, default=4, help="rows of the montage (default: 4)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage (default: mcap)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the node to start, and for its first output (default: 120)")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error("--frames must be >= 1")
    if args.rate <= 0:
        p.error("--rate must be > 0")
    args.width = args.height = 0
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
            assert w >= 16 and h >= 16
        except (ValueError, AssertionError):
            p.error(f"--size must be WIDTHxHEIGHT, at least 16x16, got {args.size!r}")
        args.width, args.height = w, h
    return args


def _log(msg: str) -> None:
    print(f"[msseg-demo] {msg}", flush=True)


def _preload() -> None:
    """Import what the results need (torch via the metrics, matplotlib) while the node loads its model,
    instead of after the run."""
    import importlib

    for module in ("msseg_core.evaluation.metrics", "matplotlib.backends.backend_agg"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - only a head start: the import is retried where it is used
            _log(f"preloading {module} failed ({type(exc).__name__}: {exc}); it is imported when needed")


def _indented(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def check_input(args: argparse.Namespace) -> tuple[str, bool]:
    """The camera node's own checks, here, so a bad --input fails before anything starts:
    (description of the source, whether it has ground truth)."""
    from msseg_ros.tools.sources import open_source

    synthetic = not args.input or args.input.strip() == "synthetic" or args.input.startswith("synthetic:")
    if not synthetic and not Path(args.input).expanduser().exists():
        raise DemoError(f"input {args.input!r} does not exist")
    try:
        with open_source(args.input, seed=args.seed, width=args.width, height=args.height,
                         image_topic=args.image_topic or None) as src:
            return src.describe(), src.has_labels
    except (ValueError, OSError) as exc:
        raise DemoError(f"cannot read --input: {exc}") from None
    except Exception as exc:  # rosbags' own errors for a damaged recording
        raise DemoError(f"cannot read --input {args.input}: {type(exc).__name__}: {exc}") from None


def mounting(args: argparse.Namespace) -> dict[str, float]:
    """The camera's pose for the node's road grid: the synthetic street's own (its camera is pitched down
    3 degrees at 1.5 m), else the params file's (a folder, video or bag: say so in the docs)."""
    if args.input and not args.input.startswith("synthetic"):
        return {}
    from msseg_core.synthetic import scene_info

    seed = int(args.input.split(":", 1)[1]) if args.input.startswith("synthetic:") else args.seed
    pose = scene_info(seed).camera_pose()
    return {"camera_height": float(pose.height), "camera_pitch": float(pose.pitch)}


def subscribe_everything(node: Any, col: Collector) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The demo's subscriptions (raw, for the bag): every output, the camera's image, camera_info and
    ground truth, the road grid, and the node's diagnostics. (readers by name, types by topic, diagnostics)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import OccupancyGrid
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
    # the camera's topics and the grid keep a history for a reader that matches late (a loaded machine)
    kept = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
    subs = {topics.in_namespace(topics.NAMESPACE, o): (Image, o, qos) for o in OUTPUTS}
    subs.update({topics.CAMERA_IMAGE: (Image, "image", kept),
                 topics.CAMERA_CAMERA_INFO: (CameraInfo, "camera_info", kept),
                 topics.GROUND_TRUTH_LABELS: (Image, "ground_truth", kept),
                 topics.in_namespace(topics.NAMESPACE, topics.ROAD_GRID): (OccupancyGrid, "road_grid", kept)})
    types, readers = {}, {}
    for topic, (msg_type, name, profile) in subs.items():
        readers[name] = node.create_subscription(msg_type, topic, lambda raw, t=topic, n=name:
                                                 col.on_message(t, n, raw), profile, raw=True)
        types[topic] = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
    diag: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if "msseg" in status.name:
                diag.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diag, 10)
    return readers, types, diag


def start_nodes(args: argparse.Namespace, checkpoint: Path, env: dict[str, str], out: Path,
                children: list[NodeProcess]) -> tuple[NodeProcess, NodeProcess]:
    """segmentation_node and the camera, started together (the camera waits until the node and the demo
    subscribe, so no frame is lost and both start-ups overlap)."""
    from msseg_ros.transport.graph import NodeProcess, package_file, ros_arguments

    camera_remaps = [(topics.IMAGE, topics.CAMERA_IMAGE), (topics.CAMERA_INFO, topics.CAMERA_CAMERA_INFO)]
    node_args = ros_arguments(topics.NAMESPACE, camera_remaps,
                              {"checkpoint": checkpoint, "device": args.device, "precision": args.precision,
                               **mounting(args), **late_match_input()}, params_file=package_file("config/camvid.yaml"))
    process = {"env": env, "own_session": True, "die_with_parent": True}
    seg = NodeProcess("segmentation_node", node_args, log_path=out / "node.log", **process)
    children.append(seg)
    cam_params: dict[str, Any] = {"rate": args.rate, "seed": args.seed, "width": args.width,
                                  "height": args.height, "count": 0, "wait_for_subscribers": 2,
                                  "durability": "transient_local", "qos_depth": CAMERA_HISTORY}
    if args.input:
        cam_params["source"] = args.input
    if args.image_topic:
        cam_params["image_topic"] = args.image_topic
    cam_args = ros_arguments("/camera", [*camera_remaps, (topics.GROUND_TRUTH, topics.GROUND_TRUTH_LABELS)],
                             cam_params)
    cam = NodeProcess("synthetic_camera", cam_args, log_path=out / "camera.log", **process)
    children.append(cam)
    return seg, cam


def late_match_input() -> dict[str, str]:
    """QoS overrides for the node's input: reliable and transient_local, as the demo's camera publishes.

    The camera waits until the node's subscriptions have matched its publishers, but the node's side of
    that match can complete later on a loaded machine; a recording of a few frames could then go out
    entirely before the node reads (seen in the full suite beside two trainings: the replay test timed out
    waiting for its first frame).
    A transient_local reader is sent the camera's kept frames when it matches, however late."""
    return {f"qos_overrides.{topic}.subscription.{policy}": value
            for topic in (topics.CAMERA_IMAGE, topics.CAMERA_CAMERA_INFO)
            for policy, value in (("reliability", "reliable"), ("durability", "transient_local"))}


class Waiter:
    """Waits on the collector while watching the two processes, with one clear error for each way to fail."""

    def __init__(self, col: Collector, seg: NodeProcess, cam: NodeProcess):
        self.col, self.seg, self.cam = col, seg, cam

    def until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self.col.wait(0.05)
            for c in (self.seg, self.cam):
                if not c.alive and (c is self.seg or c.returncode not in (0, None)):
                    raise DemoError(f"{c.name} exited with status {c.returncode} while waiting for "
                                    f"{what}; last lines of {c.log_path}:\n{_indented(c.tail(25))}")
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; last lines of "
                                f"{self.seg.log_path}:\n{_indented(self.seg.tail(25))}")

    def frames(self, wanted: int, rate: float) -> None:
        """Until `wanted` frames are answered, the input ends, or the node stops answering."""
        col, seg, cam = self.col, self.seg, self.cam
        last_report, last_count, last_change = 0, 0, time.monotonic()
        while len(col.complete()) < wanted:
            col.wait(0.05)
            n = len(col.complete())
            if n != last_count:
                last_count, last_change = n, time.monotonic()
            if n >= last_report + 10:
                last_report = n - n % 10
                _log(f"{n}/{wanted} frames")
            if not seg.alive:
                raise DemoError(f"segmentation_node exited with status {seg.returncode} after {n} frames; last "
                                f"lines of {seg.log_path}:\n{_indented(seg.tail(25))}")
            idle = time.monotonic() - last_change
            if not cam.alive:
                if cam.returncode != 0:
                    raise DemoError(f"synthetic_camera exited with status {cam.returncode}; last lines of "
                                    f"{cam.log_path}:\n{_indented(cam.tail(25))}")
                if idle > 3.0:  # the input ended and the node has answered what it got
                    _log(f"input ended after {col.inputs} frames")
                    return
            elif idle > max(30.0, 10.0 / rate):
                raise DemoError(f"no output for {idle:.0f} s after {n} frames; last lines of "
                                f"{seg.log_path}:\n{_indented(seg.tail(25))}")


def run(args: argparse.Namespace, children: list[NodeProcess], env: dict[str, str], profile: str | None
        ) -> dict[str, Any]:
    """Start the nodes (appended to `children`), collect --frames answered frames, ask the nodes to
    stop (the caller waits for them, so results are written while they shut down); the collected data."""
    threading.Thread(target=_preload, name="preload", daemon=True).start()
    checkpoint = resolve_checkpoint(args.checkpoint)
    meta = read_checkpoint_meta(checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(f"model {meta.get('model')} ({len(meta['class_names'])} classes) from {checkpoint}")
    source_desc, has_gt = check_input(args)

    from msseg_ros.transport.graph import PrivateContext

    ros = PrivateContext("msseg_demo")
    col = Collector()
    try:
        readers, types, diag = subscribe_everything(ros.node, col)
        _log(f"starting segmentation_node (loading the model) and the camera: {source_desc}")
        t_start = time.monotonic()
        seg, cam = start_nodes(args, checkpoint, env, out, children)
        wait = Waiter(col, seg, cam)
        # Up when our subscription to every output has matched the node's publisher (the node skips
        # outputs nobody listens to; frames it answers before that are not counted).
        wait.until(lambda: all(readers[o].get_publisher_count() > 0 for o in OUTPUTS), args.timeout,
                   "the segmentation node to come up")
        _log(f"node up after {time.monotonic() - t_start:.1f} s")
        wait.until(lambda: bool(col.complete()), args.timeout, "the first segmented frame")
        t_first = time.monotonic()
        _log(f"first frame answered after {t_first - t_start:.1f} s")
        wait.frames(args.frames, args.rate)
        t_end = time.monotonic()
        cam.interrupt()
        # A frame counts once its outputs are in, but the executor may hand over its camera_info and ground
        # truth after them (a loaded machine): wait, a few seconds at most, until every image that came has
        # them, so the summary and the bag hold whole frames.
        inputs = ("camera_info", "ground_truth") if has_gt else ("camera_info",)
        deadline = time.monotonic() + 5.0
        while not col.inputs_whole(inputs) and time.monotonic() < deadline:
            col.wait(0.05)
        return {"collector": col, "meta": meta, "checkpoint": checkpoint, "has_gt": has_gt, "types": types,
                "source": source_desc, "diagnostics": dict(diag), "wall": t_end - t_first, "profile": profile}
    finally:
        for c in reversed(children):
            c.interrupt()
        ros.close()


# -- results -------------------------------------------------------------------------------------
def _decode(raw: bytes) -> np.ndarray:
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from msseg_ros.transport.image_codec import decode_image
    from msseg_ros.transport.messages import mono8_array

    msg = deserialize_message(raw, Image)
    return mono8_array(msg) if msg.encoding == "mono8" else decode_image(msg)


def summarize(result: dict[str, Any], frames: int) -> dict[str, Any]:
    """Rate, latency and (with ground truth) mIoU of the answered frames."""
    col: Collector = result["collector"]
    stamps = col.complete()[:frames]
    meta = result["meta"]
    lat_ms = [(col.done_at[s] - s) / 1e6 for s in stamps]
    times = sorted(col.done_at[s] for s in stamps)
    span_s = (times[-1] - times[0]) / 1e9 if times else 0.0
    rate = (len(times) - 1) / span_s if span_s > 0 else float("nan")
    summary: dict[str, Any] = {
        "source": result["source"], "checkpoint": str(result["checkpoint"]), "model": meta.get("model"),
        "frames_published": col.inputs, "frames_processed": len(stamps),
        "rate_hz": rate, "latency_ms": {"mean": float(np.mean(lat_ms)) if lat_ms else float("nan"),
                                        "p50": percentile(lat_ms, 50), "p99": percentile(lat_ms, 99),
                                        "max": max(lat_ms) if lat_ms else float("nan")},
        "node_diagnostics": result["diagnostics"],
        "planner": plan_summary(col, stamps),
    }
    gt_stamps = [s for s in stamps if "ground_truth" in col.frames[s]]
    from msseg_core.classes import CAMVID

    if gt_stamps and list(meta["class_names"]) == list(CAMVID.names):
        from msseg_core.evaluation.metrics import ConfusionMatrix

        cm = ConfusionMatrix(len(meta["class_names"]))
        for s in gt_stamps:
            cm.update(_decode(col.frames[s]["labels"]), _decode(col.frames[s]["ground_truth"]))
        report = cm.to_dict(meta["class_names"])
        summary["metrics"] = {k: report[k] for k in ("miou", "mean_acc", "pixel_acc", "per_class_iou", "num_images")}
    elif gt_stamps:
        summary["metrics_note"] = (f"ground truth is in CamVid ids; the model has other classes "
                                   f"({meta.get('dataset') or len(meta['class_names'])}), so no mIoU")
    else:
        summary["metrics_note"] = "the input has no ground truth, so no mIoU"
    return summary


def write_bag(result: dict[str, Any], path: Path, storage: str) -> dict[str, int]:
    """Every received message as the raw CDR it arrived in, stamped with its receive time."""
    from rosbags.rosbag2 import Writer

    from msseg_ros.bag.info import BAG_VERSION, storage_plugin
    from msseg_ros.transport.cdr import typestore

    col: Collector = result["collector"]
    if path.exists():
        if not (path / "metadata.yaml").is_file():
            raise DemoError(f"{path} exists and is not a rosbag2 from an earlier demo; choose another --out")
        shutil.rmtree(path)
    counts: dict[str, int] = {}
    with Writer(path, version=BAG_VERSION, storage_plugin=storage_plugin(storage)) as writer:
        conns = {}
        for topic, t_ns, raw in sorted(col.messages, key=lambda m: m[1]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, result["types"][topic], typestore=typestore())
            writer.write(conns[topic], t_ns, raw)
            counts[topic] = counts.get(topic, 0) + 1
    return counts


def shorten_source(source: str, keep: int = 48) -> str:
    """A long input path as its last components ('.../drive_0017/images'), so the title fits the figure."""
    if len(source) <= keep:
        return source
    parts = Path(source).parts
    tail = ""
    for part in reversed(parts):
        candidate = f"{part}/{tail}" if tail else part
        if len(candidate) + 4 > keep:
            break
        tail = candidate
    return ".../" + (tail or source[-(keep - 4):])


def grid_and_path(raw: bytes) -> tuple[np.ndarray, Any]:
    """A road_grid message as a bird's-eye picture with the ego vehicle and an A* path to the farthest free
    cell of its lane (msseg_core.ground.planner: the consumer example), and that plan."""
    from nav_msgs.msg import OccupancyGrid
    from rclpy.serialization import deserialize_message

    from msseg_core.ground.birdseye import draw_path, draw_vehicle, grid_to_image
    from msseg_core.ground.planner import cell_of, plan_ahead

    msg = deserialize_message(raw, OccupancyGrid)
    cells = np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width)
    origin = (msg.info.origin.position.x, msg.info.origin.position.y)
    plan = plan_ahead(cells, msg.info.resolution, origin)
    scale = 3
    image = np.ascontiguousarray(grid_to_image(cells, scale))
    ego = cell_of(0.0, 0.0, origin, msg.info.resolution)
    ego = (min(max(ego[0], 0), cells.shape[0] - 1), min(max(ego[1], 0), cells.shape[1] - 1))
    draw_vehicle(image, ego, cells.shape, scale)
    draw_path(image, plan.path.cells, cells.shape, scale)
    return image, plan


def plan_summary(col: Collector, stamps: list[int]) -> dict[str, Any]:
    """How the planner fared on the answered frames' road grids."""
    plans = [grid_and_path(col.grids[s])[1] for s in stamps if s in col.grids]
    if not plans:
        return {"frames_with_road_grid": 0}
    return {"frames_with_road_grid": len(plans), "paths_found": sum(p.path.found for p in plans),
            "last": plans[-1].describe(), "mean_path_m": float(np.nanmean([p.length_m for p in plans]))
            if any(p.path.found for p in plans) else None}


def write_montage(result: dict[str, Any], summary: dict[str, Any], path: Path, rows: int) -> int:
    """A few answered frames side by side with what the node made of them, plus legend and numbers."""
    from matplotlib.patches import Patch

    from msseg_core.io import new_figure

    col: Collector = result["collector"]
    meta = result["meta"]
    stamps = col.complete()[: summary["frames_processed"]]
    if not stamps:
        return 0
    picks = sorted({stamps[int(round(i))] for i in np.linspace(0, len(stamps) - 1, min(rows, len(stamps)))})
    palette = np.asarray(meta["palette"], np.uint8)
    has_gt = any("ground_truth" in col.frames[s] for s in picks)
    has_grid = any(s in col.grids for s in picks)
    titles = ["Input"] + (["Ground truth"] if has_gt else []) + ["Colour mask", "Overlay",
                                                                   "Confidence (0 to 1)", "Road mask"]
    titles += ["Road grid, path (A*)"] if has_grid else []
    first = _decode(col.frames[picks[0]]["image"])
    aspect = first.shape[1] / first.shape[0]
    cell_w = 2.6
    fig = new_figure(figsize=(cell_w * len(titles), cell_w / aspect * len(picks) * 1.04 + 1.15), dpi=110)
    top = 1 - 0.62 / fig.get_figheight()
    bottom = 0.5 / fig.get_figheight()
    grid = fig.add_gridspec(len(picks), len(titles), left=0.03, right=0.995, top=top, bottom=bottom,
                            wspace=0.03, hspace=0.06)
    road_names = meta.get("road_classes", [])
    for r, s in enumerate(picks):
        f = col.frames[s]
        rgb = _decode(f["image"])
        panels = [rgb]
        if has_gt:
            gt = _decode(f["ground_truth"]) if "ground_truth" in f else None
            if gt is None:
                panels.append(np.zeros_like(rgb))
            else:
                vis = np.zeros_like(rgb)
                known = gt < len(palette)
                vis[known] = palette[gt[known]]
                panels.append(vis)
        panels += [_decode(f["color_mask"]), _decode(f["overlay"])]
        conf = _decode(f["confidence"])
        road = _decode(f["road_mask"]) > 0
        road_vis = (rgb * 0.45).astype(np.uint8)
        road_vis[road] = (0.35 * rgb[road] + 0.65 * np.array([40, 230, 90])).astype(np.uint8)
        panels += [conf, road_vis]
        plan = None
        if has_grid:
            bev, plan = grid_and_path(col.grids[s]) if s in col.grids else (np.full_like(rgb, 150), None)
            panels.append(bev)
        for c, img in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            if titles[c].startswith("Confidence"):
                ax.imshow(img, cmap="magma", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(titles[c] + (f" ({', '.join(road_names)})" if titles[c] == "Road mask" and road_names
                                          else ""), fontsize=10)
            if c == 0:
                lat = (col.done_at[s] - s) / 1e6
                ax.set_ylabel(f"frame {stamps.index(s)}\nlatency {lat:.0f} ms", fontsize=8)
            if titles[c].startswith("Road grid") and plan is not None:
                ax.text(0.5, 0.02, plan.describe(), transform=ax.transAxes, ha="center", va="bottom", fontsize=7,
                        bbox={"facecolor": "white", "alpha": 0.8, "pad": 1.5, "linewidth": 0})
    lat = summary["latency_ms"]
    line = (f"msseg-demo: {summary['model']} on {shorten_source(str(result['source']))}  |  "
            f"{summary['frames_processed']} frames, {summary['rate_hz']:.1f} Hz, latency mean {lat['mean']:.0f} / "
            f"p50 {lat['p50']:.0f} / p99 {lat['p99']:.0f} ms")
    if "metrics" in summary:
        line += f"  |  mIoU {summary['metrics']['miou']:.3f}, pixel acc {summary['metrics']['pixel_acc']:.3f}"
    # A centred title wider than the figure runs off both edges: wrap it to the figure's width in characters.
    width_chars = max(40, int(fig.get_figwidth() * 72 / 10 * 1.6))  # ~1.6 characters per 10-pt em
    title = "\n".join(textwrap.wrap(line, width_chars, break_on_hyphens=False))
    fig.text(0.5, 1 - 0.3 / fig.get_figheight(), title, ha="center", va="center", fontsize=10)
    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="0.3", label=n)
               for n, c in zip(meta["class_names"], meta["palette"], strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 11), fontsize=8, frameon=False,
               handlelength=1.2, columnspacing=1.0, bbox_to_anchor=(0.5, 0.02 / fig.get_figheight()))
    save_figure(fig, path, tight=False)
    return len(picks)


def print_summary(summary: dict[str, Any], files: dict[str, str]) -> None:
    lat = summary["latency_ms"]
    print("")
    print("msseg-demo summary")
    print(f"  source            {summary['source']}")
    print(f"  model             {summary['model']} ({summary['checkpoint']})")
    dropped = summary["frames_published"] - summary["frames_processed"]
    print(f"  frames processed  {summary['frames_processed']} of {summary['frames_published']} camera frames"
          + (" (a busy node segments only the newest frame)" if dropped > 0 else ""))
    print(f"  output rate       {summary['rate_hz']:.2f} Hz")
    print(f"  latency (ms)      mean {lat['mean']:.1f}  p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f}  "
          f"max {lat['max']:.1f}  (camera stamp -> output received)")
    d = summary.get("node_diagnostics") or {}
    if d:
        keys = [k for k in d if any(w in k.lower() for w in ("infer", "device", "backend", "latency", "dropped"))][:7]
        if keys:
            print("  node diagnostics  " + ", ".join(f"{k}: {d[k]}" for k in keys))
    if "metrics" in summary:
        m = summary["metrics"]
        print(f"  mIoU              {m['miou']:.4f}  (pixel accuracy {m['pixel_acc']:.4f}, mean class accuracy "
              f"{m['mean_acc']:.4f}, {m['num_images']} frames)")
        ious = ", ".join(f"{k} {v:.2f}" for k, v in m["per_class_iou"].items() if v is not None)
        print(f"  per-class IoU     {ious}")
    else:
        print(f"  mIoU              n/a ({summary.get('metrics_note', '')})")
    planner = summary.get("planner") or {}
    if planner.get("frames_with_road_grid"):
        print(f"  planner (A*)      paths on {planner['paths_found']} of {planner['frames_with_road_grid']} "
              f"road grids; last frame: {planner['last']}")
    for name, where in files.items():
        print(f"  {name:<17} {where}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `msseg-demo`."""
    args = parse_args(argv)

    def on_term(signum, frame):  # SIGTERM: leave through the same clean-up as Ctrl-C
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started with SIGINT ignored
    children: list[NodeProcess] = []
    env, profile, how = child_env()
    for var in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):  # this process's context too
        if env.get(var):
            os.environ[var] = env[var]
    _log(f"Fast DDS profile: {profile} ({how})" if profile else "Fast DDS profile: none found (large frames may "
                                                                "not arrive)")
    _log(f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0 (default)')}")
    try:
        t0 = time.monotonic()
        result = run(args, children, env, profile)
        summary = summarize(result, args.frames)
        if summary["frames_processed"] == 0:
            raise DemoError("no frame was answered on every output")
        out = Path(args.out)
        counts = write_bag(result, out / "bag", args.storage)
        summary["bag_topics"] = counts
        rows = write_montage(result, summary, out / "montage.png", args.montage_frames)
        summary["elapsed_s"] = time.monotonic() - t0
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
        recorded = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
        files = {"montage": f"{out / 'montage.png'} ({rows} frames)",
                 "rosbag2": f"{out / 'bag'} ({args.storage}; {recorded})",
                 "summary": str(out / "summary.json"), "logs": f"{out / 'node.log'}, {out / 'camera.log'}"}
        print_summary(summary, files)
        print(f"  elapsed           {summary['elapsed_s']:.1f} s")
        return 0
    except DemoError as exc:
        print(f"msseg-demo: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("msseg-demo: interrupted; stopping the nodes", file=sys.stderr, flush=True)
        return 130
    finally:
        for c in reversed(children):
            c.stop()


if __name__ == "__main__":
    sys.exit(main())
