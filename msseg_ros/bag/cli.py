"""The `msseg-bag` command line: arguments of every subcommand, and the dispatch to its module."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msseg_core.io import write_json_atomic
from msseg_ros import bag
from msseg_ros.bag.info import bag_info
from msseg_ros.bag.make import CAMVID_HFOV_DEG, DEFAULT_START_S
from msseg_ros.bag.play import LABELS_TOPIC
from msseg_ros.transport import topics


def _report(report: dict, path: str | None) -> None:
    """Print the report; also write it (atomically) where --json says."""
    if path:
        write_json_atomic(path, report)
    print(json.dumps(report, indent=2))


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, so a recorder closes its bag and a player stops between messages."""
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="msseg-bag", description=bag.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("make", help="write a labelled dataset split as a rosbag2")
    m.add_argument("--dataset", default="camvid")
    m.add_argument("--data-root", required=True)
    m.add_argument("--split", default="test")
    m.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    m.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    m.add_argument("--rate", type=float, default=1.0,
                   help="frames per second of the header stamps (CamVid's labelled frames are 1 Hz)")
    m.add_argument("--start", type=float, default=DEFAULT_START_S, help="first stamp, seconds since the epoch")
    m.add_argument("--image-format", choices=("raw", "jpeg", "png"), default="raw",
                   help=f"raw: rgb8 Image on {topics.CAMERA_IMAGE}; jpeg/png: CompressedImage on "
                        f"{topics.CAMERA_COMPRESSED_IMAGE}")
    m.add_argument("--jpeg-quality", type=int, default=95)
    m.add_argument("--hfov", type=float, default=CAMVID_HFOV_DEG,
                   help="horizontal field of view for CameraInfo's K [deg] (CamVid has no calibration)")
    m.add_argument("--limit", type=int, default=None, help="only the first N frames")

    e = sub.add_parser("eval", help="score a segmentation checkpoint on a bag's images and labels, offline")
    e.add_argument("--bag", required=True)
    e.add_argument("--checkpoint", default="", help="default: the packaged CamVid model")
    e.add_argument("--image-topic", default=None,
                   help=f"default: {topics.CAMERA_IMAGE} or {topics.CAMERA_COMPRESSED_IMAGE}")
    e.add_argument("--gt-topic", default=topics.GROUND_TRUTH_LABELS)
    e.add_argument("--json", default=None, help="also write the report here")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    e.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="inference backend (as msseg-eval's and the node's)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: the usable cores)")
    e.add_argument("--tta", default="none", choices=("none", "flip"),
                   help="flip: also run the mirrored image and average the logits (as msseg-eval's and the node's)")

    pl = sub.add_parser("play", help="publish a bag into the ROS graph")
    pl.add_argument("bag")
    pl.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    pl.add_argument("--loop", action="store_true")
    pl.add_argument("--lockstep", action="store_true",
                    help="after each image wait for the node's labels with its stamp (or --timeout)")
    pl.add_argument("--labels-topic", default=LABELS_TOPIC)
    pl.add_argument("--image-topic", default=None)
    pl.add_argument("--timeout", type=float, default=10.0, help="lock-step wait per frame [s]; then it counts as lost")
    pl.add_argument("--restamp", action="store_true", help="header stamps = publication time (for live latency)")
    pl.add_argument("--topics", nargs="+", default=None, help="only these topics")
    pl.add_argument("--wait-subscribers", type=float, default=10.0,
                    help="wait up to this long for subscribers before starting [s]")
    pl.add_argument("--wait-for", action="append", default=None, metavar="TOPIC",
                    help="topics that need a subscriber before playing (repeatable; default: the image topic)")

    r = sub.add_parser("record", help="record topics to a rosbag2")
    r.add_argument("bag")
    r.add_argument("topics", nargs="+",
                   help="topic names; TOPIC:=TYPE (e.g. /x:=sensor_msgs/msg/Image) skips discovery")
    r.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    r.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    r.add_argument("--discovery-timeout", type=float, default=10.0)

    re_ = sub.add_parser("replay-eval", help="node + player + live evaluator from one command")
    re_.add_argument("--bag", required=True)
    re_.add_argument("--checkpoint", default="")
    re_.add_argument("--device", default="cpu")
    re_.add_argument("--lockstep", action="store_true", help="one frame at a time (exact, no frame dropped)")
    re_.add_argument("--rate", type=float, default=1.0)
    re_.add_argument("--timeout", type=float, default=10.0)
    re_.add_argument("--backend", default="", help="node parameter backend ('' = the node's default)")
    re_.add_argument("--threads", type=int, default=0, help="node parameter threads (0 = the node's default)")
    re_.add_argument("--tta", default="", choices=("", "none", "flip"), help="node parameter tta ('' = the node's)")
    re_.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                     help="any other node parameter, e.g. --param precision:=bf16 (repeatable)")
    re_.add_argument("--json", default=None)

    f = sub.add_parser("frames", help="frames to label from a bag: images (+ pre-labels) in the folder-dataset layout",
                       description="One bag per process; a folder of bags: "
                                   "for b in bags/*; do msseg-bag frames $b --out data/$(basename $b) & done")
    f.add_argument("bag")
    f.add_argument("--out", required=True, help="dataset folder to write (images/, labels/, manifest.csv)")
    f.add_argument("--image-topic", default=None,
                   help=f"default: {topics.CAMERA_IMAGE}, {topics.CAMERA_COMPRESSED_IMAGE} or the bag's only "
                        "image topic")
    spacing = f.add_mutually_exclusive_group()
    spacing.add_argument("--every", type=float, default=None, metavar="SECONDS",
                         help="a frame every SECONDS of header stamp (default 1.0)")
    spacing.add_argument("--every-frames", type=int, default=None, metavar="N", help="every N-th message instead")
    f.add_argument("--min-change", type=float, default=3.0, metavar="GREY_LEVELS",
                   help="skip a frame whose 32x24 grey thumbnail differs from the last written one by less than "
                        "this mean absolute difference (0..255; 0 = keep all)")
    f.add_argument("--prelabel", default=None, metavar="CHECKPOINT",
                   help="also write this model's masks as labels/ (class ids) and its classes.yaml, to correct")
    f.add_argument("--image-format", choices=("png", "jpg"), default="png")
    f.add_argument("--limit", type=int, default=None, help="stop after N frames written")
    f.add_argument("--device", default="auto", help="for --prelabel")
    f.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"), help="for --prelabel")
    f.add_argument("--threads", type=int, default=None, help="for --prelabel (default: the usable cores)")

    i = sub.add_parser("info", help="topics, types, counts and time range of a bag")
    i.add_argument("bag")
    return p.parse_args(argv)


def _make(args: argparse.Namespace) -> int:
    from msseg_core.data import build_dataset
    from msseg_ros.bag.make import make_bag

    if Path(args.out).exists():
        raise ValueError(f"{args.out} exists already; a bag is never overwritten")
    dataset = build_dataset(args.dataset, args.data_root, args.split)
    summary = make_bag(dataset, args.out, storage=args.storage, rate=args.rate, start_s=args.start,
                       image_format=args.image_format, jpeg_quality=args.jpeg_quality, hfov_deg=args.hfov,
                       limit=args.limit, custom={"msseg.dataset": args.dataset, "msseg.split": args.split})
    print(json.dumps(summary, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from msseg_core.runtime.segmenter import Segmenter
    from msseg_core.zoo import resolve_checkpoint
    from msseg_ros.bag.evaluate import evaluate_bag

    bag_info(args.bag)  # a bad bag path fails before the model loads
    ckpt = str(resolve_checkpoint(args.checkpoint))
    segmenter = Segmenter.from_checkpoint(ckpt, device=args.device, precision=args.precision,
                                          backend=args.backend, threads=args.threads, tta=args.tta)
    _report(evaluate_bag(args.bag, segmenter, args.image_topic, args.gt_topic, checkpoint=ckpt), args.json)
    return 0


def _play(args: argparse.Namespace) -> int:
    from msseg_ros.bag.play import play_bag

    stats = play_bag(args.bag, rate=args.rate, loop=args.loop, lockstep=args.lockstep,
                     labels_topic=args.labels_topic, timeout=args.timeout, restamp=args.restamp,
                     topics=args.topics, wait_subscribers=args.wait_subscribers,
                     image_topic=args.image_topic, wait_for=args.wait_for, stop=_stop_on_signals())
    print(json.dumps(stats, indent=2))
    return 1 if stats["frames_lost"] else 0


def _record(args: argparse.Namespace) -> int:
    from msseg_ros.bag.record import record_bag

    names, types = [], {}
    for spec in args.topics:
        topic, _, msgtype = spec.partition(":=")
        names.append(topic)
        if msgtype:
            types[topic] = msgtype
    counts = record_bag(args.bag, names, duration=args.duration, storage=args.storage, types=types,
                        discovery_timeout=args.discovery_timeout, stop=_stop_on_signals())
    print(json.dumps({"bag": args.bag, "counts": counts}, indent=2))
    return 0


def _replay_eval(args: argparse.Namespace) -> int:
    from msseg_ros.bag.replay import replay_eval

    params: dict[str, Any] = {}
    if args.backend:
        params["backend"] = args.backend
    if args.tta:
        params["tta"] = args.tta
    if args.threads:
        params["threads"] = args.threads
    for spec in args.param:
        name, sep, value = spec.partition(":=")
        if not sep:
            raise ValueError(f"--param wants NAME:=VALUE, got {spec!r}")
        params[name] = value
    report = replay_eval(args.bag, checkpoint=args.checkpoint, device=args.device, lockstep=args.lockstep,
                         rate=args.rate, timeout=args.timeout, node_params=params,
                         log=lambda m: print(m, file=sys.stderr), stop=_stop_on_signals())
    _report(report, args.json)
    return 1 if report.get("frames_lost") else 0


def _frames(args: argparse.Namespace) -> int:
    from msseg_ros.bag.frames import extract_frames

    bag_info(args.bag)  # a bad bag path fails before the model loads
    segmenter = None
    if args.prelabel:
        from msseg_core.runtime.segmenter import Segmenter

        segmenter = Segmenter.from_checkpoint(args.prelabel, device=args.device, backend=args.backend,
                                              threads=args.threads)
    summary = extract_frames(args.bag, args.out, image_topic=args.image_topic, every_s=args.every,
                             every_frames=args.every_frames, min_change=args.min_change, segmenter=segmenter,
                             image_format=args.image_format, limit=args.limit,
                             log=lambda m: print(f"msseg-bag frames: warning: {m}", file=sys.stderr))
    print(json.dumps(summary, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(bag_info(args.bag).to_dict(), indent=2))
    return 0


COMMANDS = {"make": _make, "eval": _eval, "play": _play, "record": _record, "replay-eval": _replay_eval,
            "frames": _frames, "info": _info}


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `msseg-bag`; exit status 2 with one error line on bad input."""
    from rosbags.rosbag2 import ReaderError, WriterError

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ros-args" in argv:  # started by a launch file as if it were a node: ROS arguments are not ours
        argv = argv[:argv.index("--ros-args")]
    args = parse_args(argv)
    if args.command in ("eval", "make", "frames"):
        from msseg_core.cli.common import configure_process

        configure_process(getattr(args, "threads", None), getattr(args, "device", "cpu"))
    try:
        return COMMANDS[args.command](args)
    except (ValueError, RuntimeError, OSError, ReaderError, WriterError) as exc:
        print(f"msseg-bag {args.command}: error: {exc}", file=sys.stderr)
        return 2
