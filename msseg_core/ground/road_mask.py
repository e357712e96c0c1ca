"""Road-mask post-processing for planners: which pixels count as drivable, and which of them matter.

A per-pixel argmax road mask has holes (shadows, lane paint), specks (a road-coloured wall) and road
that is not reachable (across a median, a car park seen through a gap). Planners want one clean
blob in front of the vehicle, so: threshold on confidence, close/open, keep the ego component.
Masks are H x W uint8 with 255 = road, 0 = not road (the node's `road_mask` convention); inputs may
be any array where non-zero means road.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

ROAD = 255


def _as_binary(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {m.shape}")
    return (m != 0).astype(np.uint8)


def clean_road_mask(mask: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """Close (fill holes and cracks narrower than the kernel) then open (drop specks and thin
    spurs smaller than it), with an elliptical kernel of `kernel_size` pixels; 0 or 1 = unchanged.

    Closing first keeps a road with lane markings in one piece before opening removes the noise.
    """
    k = int(kernel_size)
    if k < 0:
        raise ValueError(f"kernel_size must be >= 0, got {kernel_size}")
    binary = _as_binary(mask)
    if k > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        # OpenCV's default border value is neutral for both erosion and dilation, so road that
        # touches the image edge is neither eaten nor grown there.
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    return binary * np.uint8(ROAD)


def ego_region(mask: np.ndarray, band: float = 0.1) -> np.ndarray:
    """Keep only the road connected (8-neighbourhood) to the vehicle: the components that have a
    pixel in the seed region, the middle third of the columns within the bottom `band` fraction of
    the rows (at least one row). A band rather than the last row alone tolerates a visible bonnet
    or a few unlabelled rows at the bottom. Returns an all-zero mask when no road touches it.
    """
    if not 0.0 < band <= 1.0:
        raise ValueError(f"band must be in (0, 1], got {band}")
    binary = _as_binary(mask)
    h, w = binary.shape
    out = np.zeros((h, w), np.uint8)
    if h == 0 or w == 0 or not binary.any():
        return out
    rows = max(1, int(round(h * band)))
    c0, c1 = w // 3, max(w // 3 + 1, w - w // 3)
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    seeds = np.unique(labels[h - rows:, c0:c1])
    seeds = seeds[seeds != 0]
    if seeds.size == 0:
        return out
    keep = np.zeros(n, np.uint8)
    keep[seeds] = ROAD
    return keep[labels]


def road_mask_from_probs(probs: np.ndarray, road_ids: Sequence[int], min_confidence: float = 0.0,
                         logits: bool = False) -> np.ndarray:
    """C x H x W class probabilities (or logits, with logits=True) -> H x W uint8 road mask.

    A pixel is road when its most likely class is one of `road_ids` (the node's `road_mask`, so
    min_confidence = 0 reproduces it) and, if min_confidence > 0, the summed probability of all
    road classes reaches min_confidence: a planner can ask for road the network is sure of.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"expected C x H x W, got shape {p.shape}")
    ids = np.asarray(list(road_ids), dtype=np.int64)
    if ids.size == 0:
        return np.zeros(p.shape[1:], np.uint8)
    if ids.min() < 0 or ids.max() >= p.shape[0]:
        raise ValueError(f"road ids {ids.tolist()} outside 0..{p.shape[0] - 1}")
    road = np.isin(p.argmax(0), ids)
    if min_confidence > 0:
        if logits:
            e = np.exp(p - p.max(0, keepdims=True))
            p = e / e.sum(0, keepdims=True)
        road &= p[ids].sum(0) >= min_confidence
    return road.astype(np.uint8) * np.uint8(ROAD)


def road_mask_from_confidence(road_mask: np.ndarray, confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """Threshold the node's road_mask with its uint8 `confidence` image (max probability x 255).

    Where the argmax is a road class, the max probability is that class's probability: with one
    road class (CamVid, Cityscapes) this equals `road_mask_from_probs`; with several it is stricter.
    It needs no second forward pass, which is why the node uses it.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    road = _as_binary(road_mask)
    if min_confidence > 0:
        conf = np.asarray(confidence)
        if conf.shape != road.shape:
            raise ValueError(f"confidence {conf.shape} and road mask {road.shape} differ in size")
        # confidence_u8 rounds p * 255; compare in the same units so p == threshold passes.
        road &= (conf.astype(np.float32) >= np.float32(min_confidence * 255.0) - 0.5).astype(np.uint8)
    return road * np.uint8(ROAD)


def refine_road_mask(road_mask: np.ndarray, kernel_size: int = 0, ego_only: bool = False,
                     confidence: np.ndarray | None = None, min_confidence: float = 0.0) -> np.ndarray:
    """The whole chain in its fixed order: confidence threshold -> clean -> ego component."""
    mask = _as_binary(road_mask) * np.uint8(ROAD)
    if min_confidence > 0:
        if confidence is None:
            raise ValueError("min_confidence > 0 needs the confidence image")
        mask = road_mask_from_confidence(mask, confidence, min_confidence)
    if kernel_size and kernel_size > 1:
        mask = clean_road_mask(mask, kernel_size)
    if ego_only:
        mask = ego_region(mask)
    return mask
