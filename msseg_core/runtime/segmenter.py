"""Segmenter: the one inference path (preprocess -> network -> postprocess) that the ROS node and
every CLI use, so their numbers agree by construction.

Hot path, per frame (`segment`):
- upload: the uint8 frame goes to the device once (CUDA: through a pinned host buffer reused while
  the frame size is unchanged, non-blocking copy); on the CPU it is wrapped without a copy;
- preprocess on the device: HWC uint8 -> resize to the network size (bilinear, antialiased when
  shrinking) -> normalise into a reused float buffer in the layout the backend wants;
- network: a backend from `backends.py` (PyTorch or ONNX Runtime, see `backend`);
- postprocess on the device: with `upsample='boundary'` (the default) labels and confidence come from
  the network's resolution and are refined at the frame's only in the cells where the labels change
  (postprocess.py), so the work follows the frame's pixels, not pixels x classes; with 'exact' every
  class's logits are upsampled to the frame (reused buffer) and one max-reduction gives labels and the
  confidence's denominator. Palette / road masks by table lookup, overlay blend. On the CPU the steps
  run as OpenCV kernels (several times faster than the tensor ops there, same numbers; see
  postprocess.py), elsewhere as tensor operations;
- download: only the requested uint8 outputs (CUDA: packed into one copy through a reused pinned
  buffer). Returned arrays are never views of reused buffers: callers may keep them.

Two stages, for pipelines: `run_network` (upload, preprocess, network) returns a `NetworkOutput` that
owns its tensors, and `postprocess` turns it into the outputs. A caller with two threads runs the
network on frame N+1 while frame N is post-processed (the ROS node does); `segment` is the two stages
back to back. Each stage has its own buffers and lock, so the two may run at the same time.
`run_network_batch` is the first stage for several frames at once (e.g. one per camera, any sizes):
one forward pass, one `NetworkOutput` per frame for `postprocess`.

Threads: `threads` (default: the usable cores) sizes the CPU engines' own pools (ONNX Runtime,
OpenVINO). PyTorch has one intra-op pool per process, which a library must not change under its
program: the console scripts and the node set it (`msseg_core.cli.common.configure_process`), a script
with `torch.set_num_threads`; `describe()` says what the PyTorch engine runs with. On a CPU shared
with other busy processes fewer threads can be much faster (OpenMP barriers stall when a worker thread
is descheduled); measure with `msseg-bench segmenter --threads`.

Engines (`backend`): torch, onnxruntime, openvino, tensorrt; `precision` int8 runs the calibrated QDQ
file from msseg-quantize (found beside the checkpoint). `backend='auto'` (the default) times the
installed engines that can run the device and precision once at start-up and keeps the fastest that
agrees with PyTorch (cached; `engines.py` has the rule, BENCHMARKS.md the measurements behind it).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msseg_core.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint
from msseg_core.runtime.engines.factory import (
    BACKENDS as BACKENDS,  # re-exported: the CLIs and the node validate with it
)
from msseg_core.runtime.engines.factory import EngineFactory, EngineRequest, check_supported
from msseg_core.runtime.engines.torch_ort import OrtEngine, TorchEngine, default_threads
from msseg_core.runtime.postprocess import (
    BOUNDARY_MIN_WORK,
    UPSAMPLE_MODES,
    ConfidenceCode,
    argmax_planes,
    blend,
    boundary_ok,
    cell_grid,
    confidence_codes,
    confidence_from_max,
    confidence_planes,
    cv2_postprocess_ok,
    lookup,
    mask_lookup,
    mask_lut,
    nearest_image,
    network_labels,
    network_labels_planes,
    palette_lookup,
    refine_boundaries,
    upsample_codes,
    upsample_nearest,
    upsample_planes,
)
from msseg_core.zoo import resolve_checkpoint

log = logging.getLogger(__name__)

OUTPUTS = ("labels", "color_mask", "overlay", "confidence", "road_mask")
TTA_MODES = ("none", "flip")
POST_KERNELS = ("auto", "opencv", "torch")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": None}


def resolve_device(spec: str) -> torch.device:
    """'auto' picks CUDA when usable, else the CPU; 'cuda[:N]' must exist (clear error if not)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available (use 'auto' or 'cpu')")
        dev = torch.device(spec)
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def check_image(rgb: np.ndarray) -> None:
    """Reject anything that is not an H x W x 3 uint8 image with a message that says what it got."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"empty image {rgb.shape}")


def resize_u8(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x 3 x H x W uint8 -> N x 3 x h x w: bilinear (half-pixel centres), antialiased when shrinking.

    CPU: PyTorch's uint8 kernel (vectorised on channels_last, PIL-exact), no float copy of the frame;
    other devices resize in float. Returns float32 on CUDA, uint8 on the CPU; both normalise the same.
    """
    h, w = frames.shape[-2:]
    if (h, w) == tuple(size):
        return frames
    antialias = h > size[0] or w > size[1]
    x = frames if frames.device.type == "cpu" else frames.float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


class _Buffers:
    """Tensors reused across frames of one (batch, height, width); the last few sizes are kept."""

    def __init__(self, keep: int = 2):
        self._keep = keep
        self._sets: dict[tuple, dict[str, torch.Tensor]] = {}

    def get(self, key: tuple, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
            channels_last: bool = False, pin: bool = False) -> torch.Tensor:
        bufs = self._sets.pop(key, None)
        if bufs is None:
            bufs = {}
            while len(self._sets) >= self._keep:
                self._sets.pop(next(iter(self._sets)))
        self._sets[key] = bufs  # most recent last
        t = bufs.get(name)
        if t is None or t.shape != tuple(shape) or t.dtype != dtype:
            t = torch.empty(tuple(shape), dtype=dtype, device=device, pin_memory=pin)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            bufs[name] = t
        return t


@dataclass(frozen=True)
class NetworkOutput:
    """The network stage's result for N frames of one size, handed to `Segmenter.postprocess`.

    Both tensors belong to this object (never a reused buffer), so the next frame's network may run
    while this one is post-processed.
    """

    frames: torch.Tensor  # N x H x W x 3 uint8 on the device (the overlay blends it); CPU: the caller's array
    logits: torch.Tensor  # N x C x h x w float32 at the network's resolution

    @property
    def key(self) -> tuple[int, int, int]:
        n, h, w, _ = self.frames.shape
        return (n, h, w)


class Segmenter:
    """A trained network plus its metadata, ready to segment RGB frames.

    Options (keyword-only, all with sensible defaults):
      backend: 'auto' | 'torch' | 'onnxruntime' | 'openvino' | 'tensorrt' (see engines.py).
      threads: CPU intra-op threads for ONNX Runtime and OpenVINO (default: the usable cores); PyTorch's
        process-wide pool is the program's to set (see above).
      channels_last: NHWC memory for the PyTorch network (default on: faster with cuDNN and oneDNN).
      fuse: fold BatchNorm into convolutions for the PyTorch backend (checked numerically).
      compile: torch.compile the PyTorch network (slow first frames; worth it on GPUs).
      cuda_graphs: capture the network in a CUDA graph per input shape (CUDA only; falls back with a
        warning if capture fails).
      onnx_path: an existing .onnx file (an export, or the INT8 QDQ file) for the ONNX-based engines
        instead of exporting one.
      cache_dir: where ONNX exports, compiled engines and the 'auto' decision are cached.
      openvino_device: the OpenVINO device ('CPU', or 'GPU' for an Intel GPU).
      streams: how many frames may run through the network at the same time, each in its own thread
        through its own `replica()` (e.g. one per camera); OpenVINO compiles that many streams of
        `threads` threads each. Other engines run concurrent calls on the calling threads.
      upsample: how outputs reach the frame's size when it is larger than the network's. 'boundary'
        (default): labels and confidence at the network's scale, refined per pixel only in the cells
        where the labels change, so the cost follows the frame's pixels, not pixels x classes; the labels
        are the exact path's up to float rounding, the confidence within about two levels of it
        (postprocess.py; frames too small for it to pay take the exact path). 'exact':
        every class's logits upsampled to the frame, argmax and softmax there. `logits_from_tensor`
        and `probabilities` always return the exact upsampled logits.
      tta: 'none' (default) or 'flip': the network also sees the horizontal mirror of each frame and
        the two logits (the mirror's mirrored back) are averaged before softmax and temperature; twice
        the network's work, in one batch.
      post_kernels: 'auto' (default: OpenCV on the CPU, tensor operations elsewhere), 'opencv' (CPU
        only), or 'torch': the tensor operations the GPU runs, selectable on the CPU (tests).
    """

    def __init__(self, model: nn.Module | None, meta: CheckpointMeta, device: str = "auto",
                 precision: str = "fp32", input_size: Sequence[int] | None = None, *, backend: str = "auto",
                 threads: int | None = None, channels_last: bool | None = None, fuse: bool = True,
                 compile: bool = False, cuda_graphs: bool = False, onnx_path: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, openvino_device: str = "CPU", streams: int = 1,
                 upsample: str = "boundary", tta: str = "none", post_kernels: str = "auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        for name, value, allowed in (("upsample", upsample, UPSAMPLE_MODES), ("tta", tta, TTA_MODES),
                                     ("post_kernels", post_kernels, POST_KERNELS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.device = resolve_device(device)
        if post_kernels == "opencv" and self.device.type != "cpu":
            raise ValueError(f"post_kernels 'opencv' runs on the CPU only, the device is {self.device}")
        self.upsample = upsample
        self.tta = tta
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
        if model is None and onnx_path is None:
            raise ValueError("Segmenter needs a model or an onnx_path")
        self.meta = meta
        self.temperature = float(meta.temperature)  # calibration (msseg-calibrate); labels do not depend on it
        self.precision = precision
        self._autocast_dtype = PRECISIONS[precision]
        size = tuple(int(v) for v in (input_size or ())) or tuple(meta.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input size must be (height, width) > 0, got {size}")
        self.input_size: tuple[int, int] = size  # type: ignore[assignment]
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads) if threads else default_threads()
        if int(streams) < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.streams = int(streams)
        self._options = dict(channels_last=channels_last, fuse=fuse, compile=compile, cuda_graphs=cuda_graphs)
        self.model = model.eval() if model is not None else None
        std = torch.tensor(meta.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(meta.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # x_norm = (u8 / 255 - mean) / std = u8 * scale + shift
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        from msseg_core.runtime.artifacts import cache_dir as default_cache_dir

        self.engines = EngineFactory(EngineRequest(
            model=self.model, meta=meta, device=self.device, precision=precision, input_size=self.input_size,
            threads=self.threads, torch_options=self._options,
            cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
            onnx_path=Path(onnx_path) if onnx_path else None, openvino_device=openvino_device,
            probe=self._probe_input, streams=self.streams))
        self.net = self.engines.create(backend)
        self.onnx_path = self.engines.onnx_path
        self.backend_timings: dict[str, float] = self.engines.timings
        if isinstance(self.net, TorchEngine):
            self.model = self.net.model  # the module that runs: hooks registered on it fire
        self.backend = self.net.name
        self._palette = torch.tensor(meta.palette, dtype=torch.uint8, device=self.device)
        self._palette256 = np.zeros((1, 256, 3), np.uint8)  # cv2.LUT table; ids >= num_classes never occur
        self._palette256[0, :min(256, self.num_classes)] = self.palette[:256]
        self._palette_items = self._palette256[0].view(np.dtype((np.void, 3)))[:, 0]  # a colour per item
        # CPU: full-resolution post-processing with OpenCV on class planes (see postprocess.py).
        self._cv2_post = post_kernels == "opencv" or (post_kernels == "auto" and self.device.type == "cpu")
        self._boundary_min_work = BOUNDARY_MIN_WORK  # below it, the exact path is the cheaper (postprocess.py)
        self._conf_code = ConfidenceCode(self.num_classes)
        self._conf_table = torch.from_numpy(self._conf_code.table).to(self.device)
        self._bufs = _Buffers()  # network stage (upload, preprocess)
        self._lock = threading.Lock()  # the network stage: one frame at a time
        self._post_bufs = _Buffers()  # postprocess stage (upsample, argmax, download)
        self._post_lock = threading.Lock()  # the postprocess stage, and the road classes it reads
        self._h2d_done: torch.cuda.Event | None = None
        self.set_road_classes(meta.road_classes)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str = "auto",
                        precision: str = "fp32", input_size: Sequence[int] | None = None,
                        **options) -> Segmenter:
        """Load a checkpoint: a zoo name ('camvid', 'camvid_fast'; '' or None: the default), a .safetensors
        path, or a bare .onnx from msseg-export."""
        try:
            path = resolve_checkpoint(path)
        except (ValueError, FileNotFoundError) as exc:
            raise CheckpointError(str(exc)) from None
        if path.suffix.lower() == ".onnx":
            return cls.from_onnx(path, device=device, precision=precision, input_size=input_size, **options)
        model, meta = load_checkpoint(path, device="cpu")
        if precision == "int8" and not options.get("onnx_path"):  # the calibrated file beside the checkpoint
            from msseg_core.runtime.artifacts import find_int8_model

            dev = resolve_device(device)
            check_supported(options.get("backend", "auto"), dev, precision)  # a wrong engine says so first
            target = "tensorrt" if dev.type == "cuda" else "cpu"  # TensorRT has its own file (quantize.py)
            options["onnx_path"] = find_int8_model(path, model, meta, input_size, target)
        return cls(model, meta, device=device, precision=precision, input_size=input_size, **options)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, device: str = "auto", precision: str = "fp32",
                  input_size: Sequence[int] | None = None, **options) -> Segmenter:
        """An ONNX file written by msseg-export or msseg-quantize: metadata from its metadata_props, no
        checkpoint needed. Any ONNX engine may run it (`backend`, default auto); an INT8 file runs at int8."""
        from msseg_core.checkpoint import load_onnx_meta

        meta = load_onnx_meta(path)
        if input_size is not None and tuple(int(v) for v in input_size) != tuple(meta.input_size):
            dynamic = json.loads(_onnx_prop(path, "dynamic") or "false")
            if not dynamic:
                raise ValueError(f"{path} was exported at {tuple(meta.input_size)}; it cannot run at "
                                 f"{tuple(input_size)} (export again with --height/--width or --dynamic)")
        if json.loads(_onnx_prop(path, "precision") or '"fp32"') == "int8":
            if precision not in ("fp32", "int8"):
                raise ValueError(f"{path} is an INT8 model; it runs at precision int8, not {precision}")
            precision = "int8"
        return cls(None, meta, device=device, precision=precision, input_size=input_size, onnx_path=path, **options)

    # -- what the ids mean -------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def palette(self) -> np.ndarray:
        """C x 3 uint8 colours, row i for class id i."""
        return np.asarray(self.meta.palette, dtype=np.uint8)

    def set_road_classes(self, names: Iterable[str]) -> None:
        """Choose which classes form the road mask; unknown names are an error, nothing changes."""
        names = list(names)
        unknown = [n for n in names if n not in self.meta.class_names]
        if unknown:
            raise ValueError(f"unknown road classes {unknown}; classes are {self.meta.class_names}")
        ids = torch.tensor([self.meta.class_names.index(n) for n in names], dtype=torch.long, device=self.device)
        lut = mask_lut(ids, self.num_classes)
        with self._post_lock:  # a frame being post-processed sees the old classes or the new, never a mix
            self.road_classes = names
            self._road_ids = ids
            self._road_lut = lut
            self._road_lut_np = lut[:256].cpu().numpy()

    def replica(self) -> Segmenter:
        """Another handle on the same model for one more concurrent stream (see `streams`): it shares
        the weights, the engine's compiled model or session and every setting, and has its own buffers,
        locks and engine request, so one thread per replica can run frames at the same time. Road
        classes are per handle: set them on each."""
        twin = copy.copy(self)
        twin.net = self.net.replica()
        twin._bufs, twin._post_bufs = _Buffers(), _Buffers()
        twin._lock, twin._post_lock = threading.Lock(), threading.Lock()
        twin._h2d_done = None
        return twin

    def describe(self) -> dict:
        """What runs: backend, providers, precision, threads, options and, with backend 'auto', the
        decision (`auto`: choice, median forward ms per engine, label agreement, skipped engines)."""
        info = {"model": self.meta.model, "backend": self.backend, "device": str(self.device),
                "precision": self.precision, "input_size": list(self.input_size), "threads": self.threads,
                "streams": self.streams, "upsample": self.upsample, "tta": self.tta,
                "post_kernels": "opencv" if self._cv2_post else "torch"}
        if isinstance(self.net, TorchEngine):
            info.update(self._options, channels_last=self.net.channels_last, bn_folded=self.net.folded)
            if self.device.type == "cpu":
                info["threads"] = torch.get_num_threads()  # the process's pool, whatever `threads` asked
        elif isinstance(self.net, OrtEngine):
            info["providers"] = self.net.active_providers
        else:  # OpenVINO / TensorRT: a compiled engine, loaded from the cache or built now
            info["engine_cache"] = "built" if self.net.built else "loaded"
            if hasattr(self.net, "cuda_graphs"):
                info["cuda_graphs"] = self.net.cuda_graphs  # TensorRT: False = the graph-free fallback
        if self.onnx_path is not None and not isinstance(self.net, TorchEngine):
            info["onnx"] = str(self.onnx_path)
        if self.engines.report:
            info["auto"] = self.engines.report
        if self.backend_timings:
            info["auto_timings_ms"] = self.backend_timings
        return info

    # -- device-side stages ------------------------------------------------------------------
    def _upload(self, images: np.ndarray, key: tuple, owned: bool = False) -> torch.Tensor:
        """N x H x W x 3 uint8 host -> the same on the device; CPU: a view, no copy.

        owned: a fresh device tensor instead of the reused one (a pipelined postprocess still reads it).
        """
        images = np.ascontiguousarray(images)
        if self.device.type == "cpu":
            return torch.from_numpy(images)  # may be read-only (a received message's bytes): never written
        pinned = self._bufs.get(key, "pinned_in", images.shape, torch.uint8, torch.device("cpu"), pin=True)
        if self._h2d_done is not None:
            self._h2d_done.synchronize()  # the previous frame's copy has left the pinned buffer
        pinned.numpy()[...] = images
        if owned:
            dev = torch.empty(images.shape, dtype=torch.uint8, device=self.device)
        else:
            dev = self._bufs.get(key, "frame", images.shape, torch.uint8, self.device)
        dev.copy_(pinned, non_blocking=True)
        self._h2d_done = torch.cuda.Event()
        self._h2d_done.record()
        return dev

    def _preprocess(self, frames: torch.Tensor, key: tuple | None, channels_last: bool | None = None) -> torch.Tensor:
        """N x H x W x 3 uint8 on the device -> N x 3 x h x w normalised float32 network input."""
        x = resize_u8(frames.permute(0, 3, 1, 2), self.input_size)  # permute: a channels_last view
        shape = (x.shape[0], 3, *self.input_size)
        want_cl = self.net.channels_last if channels_last is None else channels_last
        if key is None:
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            if want_cl:
                out = out.contiguous(memory_format=torch.channels_last)
        else:
            out = self._bufs.get(key, "net_in", shape, torch.float32, self.device, channels_last=want_cl)
        return torch.mul(x, self._scale, out=out).add_(self._shift)

    @torch.inference_mode()
    def network_input(self, rgb: np.ndarray) -> torch.Tensor:
        """1 x 3 x h x w float32 NCHW: a frame exactly as every engine receives it (INT8 calibration uses it)."""
        check_image(rgb)
        return self._preprocess(torch.from_numpy(np.ascontiguousarray(rgb[None])).to(self.device), None,
                                channels_last=False).contiguous()

    def _probe_input(self) -> torch.Tensor:
        """A synthetic street frame as the network sees it: what 'auto' checks every engine's labels on."""
        from msseg_core.synthetic import render_scene

        h, w = self.input_size
        shrink = min(1.0, (360 * 480 / (h * w)) ** 0.5)  # rendering costs ~1 s per 360x480 frame
        rgb, _ = render_scene(0, max(8, round(w * shrink)), max(8, round(h * shrink)))
        return self._preprocess(torch.from_numpy(rgb[None]).to(self.device), None, channels_last=False)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.tta == "flip":  # one batch: the frames, then their mirrors
            x = torch.cat([x, x.flip(3)])
        out = self.net(x)
        if out.shape[1] != self.num_classes:
            raise RuntimeError(f"the network returned {out.shape[1]} classes, the metadata lists {self.num_classes}")
        out = out if out.dtype == torch.float32 else out.float()
        if self.tta == "flip":  # mean logits, the mirrors' mirrored back (a new tensor, not the engine's buffer)
            out = (out[:n] + out[n:].flip(3)).mul_(0.5)
        if self.temperature != 1.0:  # at the network's resolution: the cheapest place (a new tensor, never
            out = out * (1.0 / self.temperature)  # the backend's reused output buffer)
        return out

    def _upsample(self, logits: torch.Tensor, size: tuple[int, int], key: tuple | None) -> torch.Tensor:
        """Logits to the frame's size (bilinear); into a reused buffer on the hot path."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        if key is None:
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out = self._post_bufs.get(key, "logits_up", (logits.shape[0], logits.shape[1], *size), torch.float32,
                             self.device)
        return torch.ops.aten.upsample_bilinear2d.out(logits, list(size), False, None, None, out=out)

    @torch.inference_mode()
    def logits_from_tensor(self, batch: torch.Tensor, at_frame_size: bool = True) -> torch.Tensor:
        """N x H x W x 3 uint8 on the device -> N x C x H x W float32 logits at the same H, W (or, with
        `at_frame_size=False`, at the network's own resolution: a distillation teacher's sharpest targets)."""
        h, w = batch.shape[1:3]
        with self._lock:
            logits = self._network(self._preprocess(batch.to(self.device), None))
            out = self._upsample(logits, (h, w), None) if at_frame_size else logits
            return out.clone() if out is logits else out  # never hand out a backend's reused buffer

    def _network_stage(self, images: np.ndarray, owned: bool) -> NetworkOutput:
        """N frames of one size -> their logits at the network's resolution (caller holds `_lock`).

        owned: the result may outlive the next call (pipelines); otherwise the logits may be a
        backend's reused buffer, valid until the next network call.
        """
        key = images.shape[:3]
        frames = self._upload(images, key, owned=owned)
        logits = self._network(self._preprocess(frames, key))
        if owned:
            logits = logits.clone(memory_format=torch.contiguous_format)
        return NetworkOutput(frames, logits)

    def _post_stage(self, net: NetworkOutput, wanted: set[str], overlay_alpha: float) -> dict[str, np.ndarray]:
        """Logits -> the requested outputs as fresh N x ... uint8 host arrays (caller holds `_post_lock`)."""
        key = net.key
        n, h, w = key
        if self.upsample == "boundary" and boundary_ok(self.num_classes, net.logits.shape[-2:], (h, w),
                                                       self._boundary_min_work):
            return self._download(self._post_boundary(net, wanted, overlay_alpha), key)
        if self._cv2_post and cv2_postprocess_ok(self.num_classes, h, w):
            return self._download(self._postprocess_cv2(net.frames, net.logits, wanted, overlay_alpha, key), key)
        frames = net.frames
        up = self._upsample(net.logits, (h, w), key)
        result: dict[str, torch.Tensor] = {}
        values = self._post_bufs.get(key, "max", (n, h, w), torch.float32, self.device)
        idx = self._post_bufs.get(key, "argmax", (n, h, w), torch.long, self.device)
        torch.max(up, 1, out=(values, idx))  # one pass: labels and, for confidence, the max logit
        if "confidence" in wanted:
            # consumes `up` in place: never the caller's logits (a frame at the network size has up == logits)
            result["confidence"] = confidence_from_max(up if up is not net.logits else up.clone(), values)
        if wanted - {"confidence"}:
            result.update(self._label_outputs(idx, frames, wanted, overlay_alpha, cv=False))
        return self._download(result, key)

    def _post_boundary(self, net: NetworkOutput, wanted: set[str], overlay_alpha: float) -> dict[str, torch.Tensor]:
        """upsample='boundary' (postprocess.py): labels and confidence from the network's scale, refined where
        the labels change; OpenCV on the CPU or tensor operations, the same numbers."""
        n, hh, ww = net.key
        logits = net.logits.contiguous()
        grid = cell_grid(tuple(logits.shape[-2:]), (hh, ww))
        want_conf = "confidence" in wanted
        cv = self._cv2_post and cv2_postprocess_ok(self.num_classes, hh, ww)
        if cv:
            per_frame = [network_labels_planes(planes) for planes in logits.numpy()]
            top = torch.from_numpy(np.stack([p[0] for p in per_frame]))
            low = torch.from_numpy(np.stack([p[1] for p in per_frame]))
        else:
            top, low = network_labels(logits)
        edges = refine_boundaries(logits, low, grid, want_conf)
        result: dict[str, torch.Tensor] = {}
        if want_conf:
            codes = confidence_codes(logits, top, self._conf_code)
            if cv:
                import cv2

                conf = np.empty((n, hh, ww), np.uint8)
                for i in range(n):
                    up = cv2.resize(codes[i].numpy(), (ww, hh), interpolation=cv2.INTER_LINEAR_EXACT)
                    cv2.LUT(up, self._conf_code.table, dst=conf[i])
                result["confidence"] = torch.from_numpy(conf)
            else:
                result["confidence"] = lookup(upsample_codes(codes, grid), self._conf_table)
            edges.paint(result["confidence"], edges.confidence)
        if not wanted - {"confidence"}:
            return result
        if not cv:
            ids = upsample_nearest(low, grid)
            edges.paint(ids, edges.labels)
            return {**result, **self._label_outputs(ids, net.frames, wanted, overlay_alpha, cv)}
        ids = color = None
        if wanted & {"labels", "road_mask"}:
            ids = torch.from_numpy(_stack([nearest_image(low[i].numpy(), grid) for i in range(n)]))
            edges.paint(ids, edges.labels)
        if wanted & {"color_mask", "overlay"}:  # the network-scale colours, enlarged as the labels are
            color = torch.from_numpy(_stack([nearest_image(palette_lookup(low[i].numpy(), self._palette256), grid)
                                             for i in range(n)]))
            rgb = self._palette_items[edges.labels.numpy()].view(np.uint8)  # M x by x bx x 3
            edges.paint(color, torch.from_numpy(rgb.reshape(*edges.labels.shape, 3)))
        return {**result, **self._label_outputs(ids, net.frames, wanted, overlay_alpha, cv, color)}

    def _label_outputs(self, ids: torch.Tensor | None, frames: torch.Tensor, wanted: set[str], overlay_alpha: float,
                       cv: bool, color: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """N x H x W ids (uint8 for OpenCV) -> the requested labels, color_mask, overlay and road_mask;
        `color`: their colours when the caller has them (then ids may be None unless labels or road_mask
        are wanted)."""
        result: dict[str, torch.Tensor] = {}
        if "labels" in wanted:
            result["labels"] = ids if ids.dtype == torch.uint8 else ids.to(torch.uint8)
        if not cv:
            if wanted & {"color_mask", "overlay"}:
                color = lookup(ids, self._palette)
                if "color_mask" in wanted:
                    result["color_mask"] = color
                if "overlay" in wanted:
                    result["overlay"] = blend(frames, color, overlay_alpha, opencv=self._cv2_post)
            if "road_mask" in wanted:
                result["road_mask"] = lookup(ids, self._road_lut)
            return result
        import cv2

        n, a = frames.shape[0], float(overlay_alpha)
        if wanted & {"color_mask", "overlay"} and color is None:
            color = torch.from_numpy(_stack([palette_lookup(ids[i].numpy(), self._palette256) for i in range(n)]))
        if "color_mask" in wanted:
            result["color_mask"] = color
        if "overlay" in wanted:
            result["overlay"] = torch.from_numpy(_stack([cv2.addWeighted(frames[i].numpy(), 1.0 - a, color[i].numpy(),
                                                                         a, 0.0) for i in range(n)]))
        if "road_mask" in wanted:
            result["road_mask"] = torch.from_numpy(_stack([mask_lookup(ids[i].numpy(), self._road_lut_np)
                                                           for i in range(n)]))
        return result

    def _postprocess_cv2(self, frames: torch.Tensor, logits: torch.Tensor, wanted: set[str], overlay_alpha: float,
                         key: tuple) -> dict[str, torch.Tensor]:
        """The CPU twin of `_post_stage`'s tensor path: same outputs, OpenCV kernels on contiguous class planes."""
        n, h, w, _ = frames.shape
        lg = logits.contiguous().numpy()  # N x C x h x w (channels_last network outputs: a small copy)
        same_size = lg.shape[-2:] == (h, w)
        planes_buf = None if same_size else self._post_bufs.get(key, "planes", (self.num_classes, h, w),
                                                                torch.float32, self.device).numpy()
        best, acc, tmp = (self._post_bufs.get(key, name, (h, w), torch.float32, self.device).numpy()
                          for name in ("best", "acc", "tmp"))
        labels, confidence = [], []
        for i in range(n):
            planes = lg[i] if same_size else upsample_planes(lg[i], planes_buf)
            labels.append(argmax_planes(planes, best))  # a fresh array: it may be returned
            if "confidence" in wanted:
                confidence.append(confidence_planes(planes, best, acc, tmp))
        result = {"confidence": torch.from_numpy(_stack(confidence))} if confidence else {}
        if wanted - {"confidence"}:
            result.update(self._label_outputs(torch.from_numpy(_stack(labels)), frames, wanted, overlay_alpha, cv=True))
        return result

    def _download(self, result: dict[str, torch.Tensor], key: tuple) -> dict[str, np.ndarray]:
        """Device outputs -> fresh host arrays; CUDA: one packed copy through a reused pinned buffer."""
        if self.device.type == "cpu" or not result:
            return {k: v.numpy() for k, v in result.items()}
        total = sum(v.numel() for v in result.values())
        staging = self._post_bufs.get(key, "pinned_out", (total,), torch.uint8, torch.device("cpu"), pin=True)
        return download_packed(result, staging)

    def _check_outputs(self, outputs: Iterable[str]) -> set[str]:
        wanted = set(outputs)
        unknown = wanted - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; known: {OUTPUTS}")
        return wanted

    # -- public per-frame API ----------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """C x H x W float32 class probabilities at the image's resolution."""
        check_image(rgb)
        frames = torch.from_numpy(np.ascontiguousarray(rgb[None]))
        logits = self.logits_from_tensor(frames)
        return torch.softmax(logits[0], dim=0).cpu().numpy()

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> H x W uint8 class ids."""
        return self.segment(rgb, ("labels",))["labels"]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several frames at once; frames of equal size share one forward pass."""
        return [r["labels"] for r in self.segment_batch(images, ("labels",))]

    @torch.inference_mode()
    def segment(self, rgb: np.ndarray, outputs: Iterable[str] = OUTPUTS,
                overlay_alpha: float = 0.5) -> dict[str, np.ndarray]:
        """Compute only the requested outputs (see OUTPUTS), all at the image's resolution.

        labels: H x W uint8 ids; color_mask / overlay: H x W x 3 uint8; confidence: H x W uint8
        (max probability x 255); road_mask: H x W uint8, 255 = road.
        """
        check_image(rgb)
        host = self._both_stages(rgb[None], self._check_outputs(outputs), overlay_alpha)
        return {k: v[0] for k, v in host.items()}

    def _both_stages(self, images: np.ndarray, wanted: set[str], overlay_alpha: float) -> dict[str, np.ndarray]:
        """N frames of one size through both stages; `_lock` is held through the postprocess, since
        the logits may be the backend's reused buffer (no copy on this path)."""
        with self._lock:
            net = self._network_stage(images, owned=False)
            with self._post_lock:
                return self._post_stage(net, wanted, overlay_alpha)

    @torch.inference_mode()
    def run_network(self, rgb: np.ndarray) -> NetworkOutput:
        """The first half of `segment`, for pipelines: H x W x 3 uint8 RGB -> logits it owns.

        On the CPU the result keeps a reference to `rgb` (the overlay reads it): do not overwrite it
        before `postprocess`.
        """
        check_image(rgb)
        with self._lock:
            return self._network_stage(rgb[None], owned=True)

    @torch.inference_mode()
    def run_network_batch(self, frames: Sequence[np.ndarray]) -> list[NetworkOutput]:
        """`run_network` for several frames in one forward pass (batching amortises the network's fixed
        costs, e.g. one frame from each of several cameras): one `NetworkOutput` per frame, in order.

        Frames may differ in size: each is resized to the network size on its own, then the network
        sees one N x 3 x h x w batch. As with `run_network`, keep the frames unchanged until post-processed.
        """
        for rgb in frames:
            check_image(rgb)
        if not frames:
            return []
        with self._lock:
            uploaded = [self._upload(rgb[None], rgb[None].shape[:3], owned=True) for rgb in frames]
            x = torch.cat([self._preprocess(f, None) for f in uploaded])
            if self.net.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = self._network(x).clone(memory_format=torch.contiguous_format)  # owned, NCHW
        return [NetworkOutput(f, logits[i:i + 1]) for i, f in enumerate(uploaded)]

    @torch.inference_mode()
    def postprocess(self, net: NetworkOutput, outputs: Iterable[str] = OUTPUTS,
                    overlay_alpha: float = 0.5) -> dict[str, np.ndarray]:
        """The second half of `segment`: a `run_network` result -> the requested outputs of its one frame.

        May run in another thread while `run_network` works on the next frame.
        """
        if net.frames.shape[0] != 1:
            raise ValueError(f"postprocess takes the result of run_network (one frame), got {net.frames.shape[0]}")
        wanted = self._check_outputs(outputs)
        with self._post_lock:
            host = self._post_stage(net, wanted, overlay_alpha)
        return {k: v[0] for k, v in host.items()}

    @torch.inference_mode()
    def segment_batch(self, images: Sequence[np.ndarray], outputs: Iterable[str] = OUTPUTS,
                      overlay_alpha: float = 0.5) -> list[dict[str, np.ndarray]]:
        """`segment` for several frames; frames of equal size share one forward pass."""
        for im in images:
            check_image(im)
        wanted = self._check_outputs(outputs)
        out: list[dict[str, np.ndarray] | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape[:2], []).append(i)
        for idx in by_size.values():
            host = self._both_stages(np.stack([images[i] for i in idx]), wanted, overlay_alpha)
            for j, i in enumerate(idx):
                out[i] = {k: v[j] for k, v in host.items()}
        return out  # type: ignore[return-value]


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-frame arrays -> one N x ... array (no copy for one frame)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def download_packed(result: dict[str, torch.Tensor], staging: torch.Tensor) -> dict[str, np.ndarray]:
    """uint8 device tensors -> fresh host arrays with one device-to-host copy: packed on the device,
    copied (non-blocking) into the host `staging` buffer (pinned on CUDA, reused), then split."""
    names = list(result)
    flat = torch.cat([result[k].reshape(-1) for k in names])
    staging.copy_(flat, non_blocking=True)
    if flat.device.type == "cuda":
        torch.cuda.current_stream(flat.device).synchronize()
    host = staging.numpy()
    out, start = {}, 0
    for k in names:
        size = result[k].numel()
        out[k] = host[start:start + size].reshape(result[k].shape).copy()  # the staging buffer is reused
        start += size
    return out


def _onnx_prop(path: str | os.PathLike, key: str) -> str | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in proto.metadata_props if p.key == key), None)
