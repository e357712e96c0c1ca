"""Turn class ids and probabilities into the images users see: colours, overlay, confidence, masks.

All functions take torch tensors and run on whatever device they live on, so the GPU path never
copies full-size intermediates back to the host. Lookups go through `index_select` on a table
(palette, road LUT), which is one gather per pixel on every device; on the CPU it is several times
faster than advanced indexing with `table[ids]`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def lookup(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Table lookup per pixel: ids (any shape, integer) -> ids.shape + table.shape[1:], table's dtype."""
    flat = ids.reshape(-1)
    if flat.dtype not in (torch.int32, torch.int64):
        flat = flat.long()
    return torch.index_select(table, 0, flat).view(*ids.shape, *table.shape[1:])


def blend(rgb: torch.Tensor, color: torch.Tensor, alpha: float, opencv: bool = True) -> torch.Tensor:
    """Alpha-blend colours over the image: (1 - alpha) * rgb + alpha * color, uint8 (any leading dims).
    opencv=False: the tensor operations every device runs, also on the CPU."""
    alpha = float(alpha)
    if opencv and rgb.device.type == "cpu" and rgb.is_contiguous() and color.is_contiguous():
        try:
            import cv2

            out = torch.empty_like(rgb)
            # Saturating, SIMD, no float temporaries: ~5x faster than lerp in float on the CPU.
            cv2.addWeighted(rgb.numpy().reshape(-1, 3), 1.0 - alpha, color.numpy().reshape(-1, 3), alpha, 0.0,
                            dst=out.numpy().reshape(-1, 3))
            return out
        except ImportError:
            pass
    out = torch.lerp(rgb.float(), color.float(), alpha)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def confidence_u8(max_prob: torch.Tensor) -> torch.Tensor:
    """Maximum class probability in 0..1 -> uint8 0..255."""
    return (max_prob.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def confidence_from_max(logits: torch.Tensor, max_logit: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """uint8 max softmax probability from logits and their max along `dim`, without a softmax tensor.

    max_c softmax(l)_c = 1 / sum_c exp(l_c - max l). Overwrites `logits` (a scratch buffer by then).
    """
    logits.sub_(max_logit.unsqueeze(dim)).exp_()
    return confidence_u8(logits.sum(dim).reciprocal_())


def mask_lut(class_ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A lookup table for `lookup`: 255 at `class_ids`, 0 elsewhere (at least 256 entries)."""
    lut = torch.zeros(max(256, int(num_classes)), dtype=torch.uint8, device=class_ids.device)
    lut[class_ids.long()] = 255
    return lut


# ----------------------------------------------------------------------------- CPU fast path
# On the CPU the full-resolution part of post-processing (logits upsampled C-fold, a per-pixel
# reduction over classes, a softmax denominator) costs more than a small network. OpenCV's SIMD
# kernels on contiguous class planes do it 2-6x faster than the equivalent PyTorch ops (measured at
# 720x960 with 11 classes: upsample 3.6 vs 21 ms, labels 8.9 vs 23 ms, confidence 9.4 vs 21 ms, one
# thread) and give the same numbers (bilinear with half-pixel centres, first maximum wins).

CV2_MAX_SIDE = 32767  # OpenCV's resize works in 16-bit coordinates in places


def cv2_postprocess_ok(num_classes: int, height: int, width: int) -> bool:
    """Whether the OpenCV path applies: cv2 importable, ids fit uint8, sizes within OpenCV's limits."""
    if num_classes > 256 or max(height, width) > CV2_MAX_SIDE:
        return False
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def upsample_planes(logits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """C x h x w float32 -> C x H x W (out's size), bilinear, half-pixel centres: F.interpolate's
    align_corners=False, one cv2.resize per class plane into `out`."""
    import cv2

    h_out, w_out = out.shape[-2:]
    for c in range(logits.shape[0]):
        cv2.resize(logits[c], (w_out, h_out), dst=out[c], interpolation=cv2.INTER_LINEAR)
    return out


def argmax_planes(planes: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Per-pixel class of the largest value (first one on ties, as torch.argmax) -> H x W uint8 ids;
    `best` (H x W float32) receives the maximum."""
    import cv2

    labels = np.zeros(planes.shape[1:], np.uint8)
    fill = np.empty_like(labels)
    np.copyto(best, planes[0])
    for c in range(1, planes.shape[0]):
        greater = cv2.compare(planes[c], best, cv2.CMP_GT)
        fill.fill(c)
        cv2.copyTo(fill, greater, labels)
        cv2.max(best, planes[c], dst=best)
    return labels


def confidence_planes(planes: np.ndarray, best: np.ndarray, acc: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """round(255 * max softmax probability) = round(255 / sum_c exp(l_c - max)), H x W uint8."""
    import cv2

    acc.fill(0.0)
    for c in range(planes.shape[0]):
        cv2.subtract(planes[c], best, dst=tmp)
        cv2.exp(tmp, dst=tmp)
        cv2.add(acc, tmp, dst=acc)
    np.divide(255.0, acc, out=tmp)
    return cv2.convertScaleAbs(tmp)  # round to nearest, saturate to 0..255


def palette_lookup(labels: np.ndarray, palette256: np.ndarray) -> np.ndarray:
    """H x W uint8 ids -> H x W x 3 uint8 colours; palette256: 1 x 256 x 3 uint8 (unused rows 0)."""
    import cv2

    return cv2.LUT(cv2.merge([labels, labels, labels]), palette256)


def mask_lookup(labels: np.ndarray, lut256: np.ndarray) -> np.ndarray:
    """H x W uint8 ids -> H x W uint8 through a 256-entry table (e.g. 255 for road classes)."""
    import cv2

    return cv2.LUT(labels, lut256)


# ------------------------------------------------------------------------ boundary upsampling
# An HD frame from a small network's logits: upsampling every class plane to the frame and reducing
# over classes per pixel costs many times the network. A cell between four neighbouring network samples
# whose labels agree is that label at every pixel inside it (bilinear weights are convex: a class that
# leads at all four corners leads everywhere between them), so only the cells where the labels change
# need work at the frame's resolution (`refine_boundaries`), and they are a few percent of the frame.
# Confidence comes from the network's scale too: in uniform cells its logit is interpolated (through a
# uint8 code, so the frame-size work is one uint8 resize and one table lookup); in boundary cells it is
# rebuilt from the competing pair's interpolated difference and the other classes' interpolated log-sum.
# Every frame-size kernel has an OpenCV form for the CPU and a tensor form for other devices that give
# the same numbers (nearest and linear-exact resizes, table lookups).

UPSAMPLE_MODES = ("boundary", "exact")


BOUNDARY_MIN_WORK = 100.0
"""The exact kernels cost about classes x frame pixels, the boundary ones a fixed part (on the CPU, about
100 network-size planes) plus a little per frame pixel: below this much class work (classes x frame
pixels / network pixels) the exact path is the cheaper, and its labels are the same. One rule for every
device, so that CPU and GPU give the same outputs."""


def boundary_ok(num_classes: int, net_size: Sequence[int], frame_size: Sequence[int],
                min_work: float = 0.0) -> bool:
    """Whether 'boundary' upsampling applies: the frame enlarges the logits (neither side shrinks, one
    grows), ids fit uint8, there is a choice of class (otherwise the exact path costs no more), and
    classes x frame pixels is at least `min_work` network-size planes."""
    (h, w), (hh, ww) = tuple(net_size), tuple(frame_size)
    return (2 <= num_classes <= 256 and hh >= h and ww >= w and (hh, ww) != (h, w)
            and num_classes * hh * ww >= min_work * h * w)


def _axis(n_src: int, n_dst: int):
    """One axis of `CellGrid`: each output's fraction inside its cell (cell k of the padded grid lies
    between padded samples k and k + 1) and one minus it, each cell's outputs (padded to the widest cell
    by repeating its last) and whether it has any."""
    src = (np.arange(n_dst, dtype=np.float64) + 0.5) * (n_src / n_dst) - 0.5  # F.interpolate's mapping
    base = np.floor(src)
    frac = (src - base).astype(np.float32)
    cell = np.clip(base.astype(np.int64) + 1, 0, n_src)  # padded grid: one replicated sample on each side
    counts = np.bincount(cell, minlength=n_src + 1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # `cell` never decreases
    span = max(1, int(counts.max()))
    last = np.maximum(start + counts - 1, start)
    members = np.minimum(start[:, None] + np.arange(span)[None], last[:, None])
    return frac, (1.0 - frac).astype(np.float32), np.minimum(members, n_dst - 1), counts > 0


def _nearest(n_src: int, n_dst: int) -> np.ndarray:
    """cv2.resize(INTER_NEAREST)'s source index per output index."""
    return np.minimum(np.floor(np.arange(n_dst) * (n_src / n_dst)).astype(np.int64), n_src - 1)


def _linear_exact(n_src: int, n_dst: int):
    """cv2.resize(INTER_LINEAR_EXACT)'s taps and 8-bit weights per output index (its getCoeffs: double
    arithmetic, weight rounded half to even; outside the source, the edge sample at full weight)."""
    scale = 1.0 / (float(n_dst) / float(n_src))
    pos = scale * (np.arange(n_dst, dtype=np.float64) + 0.5) - 0.5
    first = np.floor(pos).astype(np.int64)
    inside = (first >= 0) & (first < n_src - 1)
    w1 = np.where(inside, np.rint((pos - first) * 256.0), 0).astype(np.int32)
    tap0 = np.where(inside, first, np.where(first < 0, 0, n_src - 1))
    return tap0, np.minimum(tap0 + 1, n_src - 1), (256 - w1).astype(np.int32), w1


class CellGrid:
    """Where the frame's pixels fall between the network's samples (bilinear, half-pixel centres).

    The h x w samples, edge-padded to (h + 2) x (w + 2), bound (h + 1) x (w + 1) cells; cell (i, j) holds
    the pixels interpolated from padded samples i..i+1 x j..j+1. Per axis: the fraction of each output
    row (column) inside its cell and one minus it, every cell's rows (columns) and their fractions, and
    which cells have pixels; per cell, its corners' sample indices.
    """

    def __init__(self, net_size: Sequence[int], frame_size: Sequence[int]):
        (h, w), (hh, ww) = tuple(net_size), tuple(frame_size)
        self.net_size, self.frame_size = (h, w), (hh, ww)
        ty, uy, ry, rows_ok = _axis(h, hh)
        tx, ux, rx, cols_ok = _axis(w, ww)
        pad_y, pad_x = np.clip(np.arange(-1, h + 1), 0, h - 1), np.clip(np.arange(-1, w + 1), 0, w - 1)
        corners = [(pad_y[dy:dy + h + 1, None] * w + pad_x[None, dx:dx + w + 1]).reshape(-1)
                   for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
        self._np = dict(ty=ty[ry], uy=uy[ry], tx=tx[rx], ux=ux[rx], ry=ry, rx=rx,
                        cell_ok=rows_ok[:, None] & cols_ok[None, :], corners=np.stack(corners, 1),
                        near_y=_nearest(h, hh), near_x=_nearest(w, ww))
        y0, y1, cy0, cy1 = _linear_exact(h, hh)
        x0, x1, cx0, cx1 = _linear_exact(w, ww)
        self._np.update(lin_y0=y0, lin_y1=y1, lin_cy0=cy0, lin_cy1=cy1, lin_x0=x0, lin_x1=x1, lin_cx0=cx0, lin_cx1=cx1)
        self.near_y = self._np["near_y"]
        self._on: dict[torch.device, dict[str, torch.Tensor]] = {}

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The grid as tensors on `device` (made once per device)."""
        t = self._on.get(device)
        if t is None:
            t = {k: torch.from_numpy(v).to(device) for k, v in self._np.items()}
            self._on[device] = t
        return t


@functools.lru_cache(maxsize=8)
def cell_grid(net_size: tuple[int, int], frame_size: tuple[int, int]) -> CellGrid:
    return CellGrid(net_size, frame_size)


class ConfidenceCode:
    """Max softmax probability p as a uint8 code linear in its logit z = log(p / (1 - p)), so that a
    bilinear resize of the code interpolates z (close to the exact path, unlike interpolating p), and
    `table` turns a code into round(255 p)."""

    def __init__(self, num_classes: int):
        self.lo = -math.log(max(1, num_classes - 1))  # p >= 1 / C
        self.hi = math.log(254.5 / 0.5)  # above: p rounds to 255
        self.step = (self.hi - self.lo) / 255.0
        z = self.lo + self.step * np.arange(256)
        self.table = np.floor(255.0 / (1.0 + np.exp(-z)) + 0.5).astype(np.uint8)
        self.table[-1] = 255

    def encode(self, rest: torch.Tensor) -> torch.Tensor:
        """rest = sum over the other classes of exp(logit - max logit) -> uint8 codes (consumes `rest`)."""
        z = rest.clamp_min_(1e-30).log_().neg_()
        return z.sub_(self.lo).div_(self.step).round_().clamp_(0, 255).to(torch.uint8)


def network_labels(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x C x h x w logits -> (max logit N x h x w, labels N x h x w uint8, first maximum on ties)."""
    top, labels = logits.max(1)
    return top, labels.to(torch.uint8)


def network_labels_planes(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`network_labels` for one frame's C x h x w planes with OpenCV (a reduction over the class axis is
    slow in PyTorch on the CPU); the same numbers (maxima are exact)."""
    best = np.empty(planes.shape[1:], np.float32)
    return best, argmax_planes(planes, best)


def confidence_codes(logits: torch.Tensor, top: torch.Tensor, code: ConfidenceCode) -> torch.Tensor:
    """N x C x h x w logits and their max -> the confidence codes at the network's resolution (uint8)."""
    return code.encode(torch.exp(logits - top.unsqueeze(1)).sum(1).sub_(1.0))


def upsample_codes(codes: torch.Tensor, grid: CellGrid) -> torch.Tensor:
    """N x h x w uint8 -> N x H x W: cv2.resize(INTER_LINEAR_EXACT) bit for bit (8-bit fixed-point weights,
    rounded), in int32 tensor arithmetic on any device."""
    g = grid.on(codes.device)
    s = codes.to(torch.int32)
    rows = s[:, :, g["lin_x0"]] * g["lin_cx0"] + s[:, :, g["lin_x1"]] * g["lin_cx1"]  # N x h x W, 8 fraction bits
    out = rows[:, g["lin_y0"]] * g["lin_cy0"][:, None] + rows[:, g["lin_y1"]] * g["lin_cy1"][:, None]
    return out.add_(1 << 15).bitwise_right_shift_(16).to(torch.uint8)


def nearest_image(small: np.ndarray, grid: CellGrid, out: np.ndarray | None = None) -> np.ndarray:
    """h x w (x 3) uint8 -> H x W (x 3), nearest sample (a corner of each cell), with OpenCV: the width
    first at the network's height, then rows copied (about twice as fast as one resize)."""
    import cv2

    wide = cv2.resize(small, (grid.frame_size[1], small.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.take(wide, grid.near_y, axis=0, out=out, mode="clip")


def upsample_nearest(labels: torch.Tensor, grid: CellGrid) -> torch.Tensor:
    """N x h x w -> N x H x W, nearest sample as cv2.resize(INTER_NEAREST) takes it (a corner of each cell:
    all that matters, since only uniform cells keep it)."""
    g = grid.on(labels.device)
    return labels[:, g["near_y"]][:, :, g["near_x"]]


@dataclass
class Boundary:
    """The frame-size results inside the cells where the network's labels change, as blocks (one per
    cell, rows x columns padded by repetition) to paint over the uniform cells' upsampled maps."""

    pixels: torch.Tensor  # M x by x bx: flat index into N x H x W of each block's pixels
    labels: torch.Tensor  # M x by x bx uint8
    confidence: torch.Tensor | None  # M x by x bx uint8

    def paint(self, out: torch.Tensor, values: torch.Tensor) -> None:
        """Write blocks of values (M x by x bx, x K channels) into contiguous N x H x W (x K) `out`; the
        padding repeats a pixel with its own value."""
        extra = tuple(out.shape[3:])
        flat, at, vals = out.view(-1, *extra), self.pixels.view(-1), values.reshape(-1, *extra)
        if out.device.type == "cpu":  # NumPy's fancy assignment: several times faster than index_put_ here
            target, at, vals = flat.numpy(), at.numpy(), np.ascontiguousarray(vals.numpy())
            if extra:  # a pixel's channels as one opaque item
                item = np.dtype((np.void, target.itemsize * target.shape[1]))
                target, vals = target.view(item)[:, 0], vals.view(item)[:, 0]
            target[at] = vals
        else:
            flat.index_put_((at,), vals)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the true elements of a flattened mask (NumPy's is several times faster on the CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def _max4(t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of t[0..3] (faster than a reduction over a leading axis on the CPU)."""
    return torch.maximum(torch.maximum(t[0], t[1]), torch.maximum(t[2], t[3]))


def refine_boundaries(logits: torch.Tensor, labels: torch.Tensor, grid: CellGrid,
                      confidence: bool) -> Boundary:
    """Labels (and confidence, if asked) at the frame's size in the cells whose four corner labels differ.

    logits: N x C x h x w float32 (contiguous); labels: their argmax, N x h x w uint8. In most such cells
    two classes compete, a (lowest id) and b, and every other class is below one of them at all four
    corners, so it loses everywhere inside (bilinear weights are convex): the sign of the interpolated
    l_a - l_b is the label. The few other cells interpolate every class. Labels are thus those of the
    exact path up to float rounding; the same torch code serves every device and both post-processing
    paths, so they agree bit for bit.
    """
    n_frames, n_cls, h, w = logits.shape
    hh, ww = grid.frame_size
    g = grid.on(logits.device)
    p = torch.cat([labels[:, :1], labels, labels[:, -1:]], 1)  # edge-padded: N x (h + 2) x (w + 2)
    p = torch.cat([p[:, :, :1], p, p[:, :, -1:]], 2)
    low = torch.minimum(torch.minimum(p[:, :-1, :-1], p[:, :-1, 1:]), torch.minimum(p[:, 1:, :-1], p[:, 1:, 1:]))
    high = torch.maximum(torch.maximum(p[:, :-1, :-1], p[:, :-1, 1:]), torch.maximum(p[:, 1:, :-1], p[:, 1:, 1:]))
    found = _flat_nonzero((low != high).logical_and_(g["cell_ok"]))  # over N x (h + 1) x (w + 1)
    n_cells = (h + 1) * (w + 1)
    frame = torch.div(found, n_cells, rounding_mode="floor")
    cell = found - frame * n_cells
    i = torch.div(cell, w + 1, rounding_mode="floor")
    j = cell - i * (w + 1)
    m = found.numel()
    a = low.reshape(-1).index_select(0, found).long()  # a < b: ties go to a, as argmax's first maximum
    b = high.reshape(-1).index_select(0, found).long()
    samples = g["corners"].index_select(0, cell).add_((frame * (h * w))[:, None]).t()  # 4 x M
    planes = logits.transpose(0, 1).reshape(n_cls, -1)  # C x (N h w): a view for one frame
    v = planes.index_select(1, samples.reshape(-1)).view(n_cls, 4, m).permute(1, 2, 0).contiguous()  # 4 x M x C
    at_a, at_b = a.view(1, -1, 1).expand(4, -1, 1), b.view(1, -1, 1).expand(4, -1, 1)
    la, lb = v.gather(2, at_a), v.gather(2, at_b)  # 4 x M x 1
    loses = (_max4(v - lb) < 0).logical_or_(_max4(v - la) < 0)  # M x C: below b, or below a, at all corners
    loses.scatter_(1, a[:, None], True).scatter_(1, b[:, None], True)
    every = _flat_nonzero(~loses.all(1))  # cells where all classes are interpolated

    rows, cols = g["ry"].index_select(0, i), g["rx"].index_select(0, j)
    ty, uy = g["ty"].index_select(0, i)[:, :, None], g["uy"].index_select(0, i)[:, :, None]
    tx, ux = g["tx"].index_select(0, j)[:, None, :], g["ux"].index_select(0, j)[:, None, :]
    pixels = (frame * (hh * ww)).view(-1, 1, 1) + rows[:, :, None] * ww + cols[:, None, :]

    def bilinear(c, ty, uy, tx, ux):  # 4 x M x ... corner values -> M x ... x by x bx, one order of float ops
        c = c[..., None, None]
        return (c[0] * uy + c[2] * ty) * ux + (c[1] * uy + c[3] * ty) * tx

    d = bilinear((la - lb)[:, :, 0], ty, uy, tx, ux)
    block_labels = torch.where(d >= 0, a.to(torch.uint8).view(-1, 1, 1), b.to(torch.uint8).view(-1, 1, 1))
    block_conf = None
    if confidence:
        # 1 / p = sum_c exp(l_c - l_top) = 1 + exp(-|d|) + exp(rest + l_a - l_top), l_a - l_top = min(d, 0),
        # rest = log sum over the classes other than the pair of exp(l_c - l_a), interpolated in the log.
        e = torch.exp(v - la).scatter_(2, at_a, 0.0).scatter_(2, at_b, 0.0)
        others = bilinear(e.sum(2).clamp_min_(1e-30).log_(), ty, uy, tx, ux)
        inv = others.add_(torch.clamp(d, max=0.0)).exp_().add_(1.0).add_(d.abs().neg_().exp_())
        block_conf = inv.reciprocal_().mul_(255.0).round_().to(torch.uint8)
    if every.numel():
        full = bilinear(v[:, every], ty[every, None], uy[every, None], tx[every, None], ux[every, None])  # K x C x ..
        top, ids = full.max(1)
        block_labels[every] = ids.to(torch.uint8)
        if confidence:
            block_conf[every] = torch.exp(full - top[:, None]).sum(1).reciprocal_().mul_(255.0).round_().to(torch.uint8)
    return Boundary(pixels, block_labels, block_conf)
