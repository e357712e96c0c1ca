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


def grid_to_image(grid: np.ndarray, scale: int = 1) -> np.ndarray:
    """Bird's-eye RGB view of an OccupancyGrid-layout int8 grid (rows +y, columns +x): forward is up,
    left is left. Free = pale green, not road = dark grey, unknown = mid grey."""
    colours = {0: (200, 235, 200), 100: (60, 60, 60), -1: (150, 150, 150)}
    bev = np.asarray(grid).T[::-1, ::-1]
    out = np.zeros((*bev.shape, 3), np.uint8)
    for value, colour in colours.items():
        out[bev == value] = colour
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1) if scale > 1 else out


def road_grid_figure(path: str, seed: int = 2, size: tuple[int, int] = (360, 480), resolution: float = 0.2,
                     length: float = 30.0, width: float = 20.0) -> np.ndarray:
    """docs/road_grid.png: a synthetic scene (no dataset image) | its road mask | the road grid, with
    the scene's true road edges drawn on the grid. Returns the picture (RGB) and writes it to `path`."""
    import math

    from msseg_core import synthetic
    from msseg_core.geometry import CameraPose, GroundGridLookup

    h, w = size
    rgb, labels = synthetic.render_scene(seed, w, h)
    info = synthetic.scene_info(seed)
    pose = CameraPose(height=info.camera_height, pitch=math.radians(info.pitch_deg))
    lookup = GroundGridLookup(synthetic.intrinsics(w, h), (h, w), pose, resolution=resolution, length=length,
                              width=width, max_range=length)
    mask = refine_road_mask((labels == synthetic.ROAD).astype(np.uint8), kernel_size=5, ego_only=True)
    grid = lookup.apply(mask)
    scale = max(1, int(round(h / lookup.cols)))
    bev = np.ascontiguousarray(grid_to_image(grid, scale))
    # True road edges (y = const lines): column of y in the flipped view.
    for y_edge in (info.road_left, info.road_right):
        col = int(round((width / 2.0 - y_edge) / resolution * scale))
        if 0 <= col < bev.shape[1]:
            cv2.line(bev, (col, 0), (col, bev.shape[0] - 1), (220, 60, 60), 1)
    cam_col = int(round(width / 2.0 / resolution * scale))
    cv2.drawMarker(bev, (cam_col, bev.shape[0] - 3), (40, 90, 220), cv2.MARKER_TRIANGLE_UP, 12, 2)
    mask_rgb = rgb.copy()
    mask_rgb[mask > 0] = (0.45 * mask_rgb[mask > 0] + 0.55 * np.array([255, 0, 255])).astype(np.uint8)
    bev_panel = np.full((h, bev.shape[1], 3), 255, np.uint8)
    bev_panel[: min(h, bev.shape[0])] = bev[:h]
    gap = np.full((h, 8, 3), 255, np.uint8)
    figure = np.concatenate([rgb, gap, mask_rgb, gap, bev_panel], axis=1)
    header = np.full((28, figure.shape[1], 3), 255, np.uint8)
    for x, text in ((4, "synthetic camera image"), (w + 12, "road_mask (cleaned, ego)"),
                    (2 * w + 20, f"road_grid {length:.0f} x {width:.0f} m, {resolution} m")):
        cv2.putText(header, text, (x, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    figure = np.concatenate([header, figure], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return figure


if __name__ == "__main__":  # python -m msseg_core.road docs/road_grid.png
    import sys

    road_grid_figure(sys.argv[1] if len(sys.argv) > 1 else "road_grid.png")
