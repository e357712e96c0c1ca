"""Turn class ids and probabilities into the images users see: colours, overlay, confidence, masks.

All functions take torch tensors and run on whatever device they live on, so the GPU path never
copies full-size intermediates back to the host. Lookups go through `index_select` on a table
(palette, road LUT), which is one gather per pixel on every device; on the CPU it is several times
faster than advanced indexing with `table[ids]`.
"""

from __future__ import annotations

import numpy as np
import torch


def lookup(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Table lookup per pixel: ids (any shape, integer) -> ids.shape + table.shape[1:], table's dtype."""
    flat = ids.reshape(-1)
    if flat.dtype not in (torch.int32, torch.int64):
        flat = flat.long()
    return torch.index_select(table, 0, flat).view(*ids.shape, *table.shape[1:])


def blend(rgb: torch.Tensor, color: torch.Tensor, alpha: float) -> torch.Tensor:
    """Alpha-blend colours over the image: (1 - alpha) * rgb + alpha * color, uint8 (any leading dims)."""
    alpha = float(alpha)
    if rgb.device.type == "cpu" and rgb.is_contiguous() and color.is_contiguous():
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
