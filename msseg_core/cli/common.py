"""What every msseg program sets for its process, in one place: library code never changes process-wide state.

PyTorch has one intra-op thread pool per process, cuDNN one autotuning switch, Python one warnings
filter list: a library that set them would change them under the program that imported it. The console
scripts (and the ROS node, an application too) call `configure_process` once with their options.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from msseg_core.runtime.engines.torch_ort import default_threads
from msseg_core.runtime.segmenter import BACKENDS, PRECISIONS, resolve_device


def configure_process(threads: int | None = None, device: str | torch.device = "cpu") -> int:
    """PyTorch's intra-op threads (default: the usable cores), cuDNN autotuning on CUDA (our inputs have a
    fixed size per run, so the first call's search pays off), and silence for PyTorch's warning about
    wrapping read-only arrays (frames are read-only views of received messages; the network only reads
    them). Returns the thread count set."""
    n = int(threads) if threads else default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if resolve_device(str(device)).type == "cuda":
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    return n


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_segmenter_arguments(p: argparse.ArgumentParser) -> None:
    """How a program builds its Segmenter, with the node's parameter names: device, precision, backend,
    threads, tta."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend (as the node's)")
    p.add_argument("--threads", type=_positive, default=None, help="CPU threads (default: the usable cores)")
    p.add_argument("--tta", default="none", choices=("none", "flip"),
                   help="flip: also run the mirrored image and average the logits (as the node's tta)")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="HxW",
                   help="network input size (default: the checkpoint's; as the node's input_height/width)")


def parse_size(text: str) -> tuple[int, int]:
    """argparse type for HEIGHTxWIDTH."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 540x720, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return h, w


def segmenter_options(args: argparse.Namespace) -> dict:
    """Segmenter.from_checkpoint's keywords from `add_segmenter_arguments`' options."""
    return {"device": args.device, "precision": args.precision, "backend": args.backend, "threads": args.threads,
            "tta": args.tta, "input_size": args.input_size}
