"""Bird's-eye pictures of a road grid (and a path over it) for the docs and the demo.

Grid layout (nav_msgs/OccupancyGrid): rows along +y (left), columns along +x (forward). The picture
puts forward up and left left, so it reads like the road seen from above behind the vehicle.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from msseg_core.ground.projection import FREE, OCCUPIED, UNKNOWN

COLOURS = {FREE: (200, 235, 200), OCCUPIED: (60, 60, 60), UNKNOWN: (150, 150, 150)}
"""Free = pale green, not road = dark grey, unknown = mid grey."""


def grid_to_image(grid: np.ndarray, scale: int = 1) -> np.ndarray:
    """RGB bird's-eye view of an int8 grid, `scale` pixels per cell."""
    bev = np.asarray(grid).T[::-1, ::-1]
    out = np.zeros((*bev.shape, 3), np.uint8)
    for value, colour in COLOURS.items():
        out[bev == value] = colour
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1) if scale > 1 else out


def cell_to_pixel(cell: tuple[int, int], shape: tuple[int, int], scale: int = 1) -> tuple[int, int]:
    """(x, y) pixel of a grid cell's centre in `grid_to_image`'s picture of a grid of `shape`."""
    rows, cols = shape
    r, c = cell
    return int((rows - 1 - r) * scale + scale // 2), int((cols - 1 - c) * scale + scale // 2)


def draw_path(image: np.ndarray, cells: Sequence[tuple[int, int]], shape: tuple[int, int], scale: int = 1,
              colour: tuple[int, int, int] = (220, 40, 40), thickness: int = 2) -> np.ndarray:
    """The path as a polyline, its start a triangle and its end a circle (in place; returns `image`)."""
    if not cells:
        return image
    pts = np.array([cell_to_pixel(c, shape, scale) for c in cells], np.int32)
    cv2.polylines(image, [pts.reshape(-1, 1, 2)], False, colour, thickness, cv2.LINE_AA)
    cv2.circle(image, tuple(int(v) for v in pts[-1]), max(3, 2 * thickness), colour, -1, cv2.LINE_AA)
    return image


def draw_vehicle(image: np.ndarray, cell: tuple[int, int], shape: tuple[int, int], scale: int = 1,
                 colour: tuple[int, int, int] = (40, 90, 220)) -> np.ndarray:
    """The ego vehicle as a triangle pointing forward (up) at `cell` (in place; returns `image`)."""
    cv2.drawMarker(image, cell_to_pixel(cell, shape, scale), colour, cv2.MARKER_TRIANGLE_UP,
                   max(8, 4 * scale), 2)
    return image


__all__ = ["COLOURS", "cell_to_pixel", "draw_path", "draw_vehicle", "grid_to_image"]
