"""One road grid for the whole vehicle from the latest grids of all its cameras.

Each camera projects its refined road mask onto the same grid (the node's top-level grid_* parameters,
in grid_frame: the vehicle's), so fusing is cell by cell. The rule, safety first:
- occupied (not road) where ANY camera whose grid is recent sees it so: an obstacle seen by one camera
  is never cleared by another that looks at the same cell from farther away;
- free (road) where some recent camera sees road and none sees an obstacle;
- unknown where no recent camera sees the cell.
"Recent": a camera's grid counts only while its image is at most `max_age` seconds older than the
newest image in the fusion, so a camera that stopped never keeps stale free space alive. The fused grid
carries the newest image's stamp. No rclpy here: the node wraps the result in an OccupancyGrid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from msseg_core.ground.projection import FREE, OCCUPIED, UNKNOWN


@dataclass(frozen=True)
class Fused:
    """A fused grid: the cells, the newest stamp (ns) and the cameras it holds (the others were stale)."""

    cells: np.ndarray
    stamp_ns: int
    cameras: tuple[str, ...]
    stale: tuple[str, ...]


def fuse(grids: list[np.ndarray]) -> np.ndarray:
    """Cell-wise: occupied if any grid says occupied, else free if any says free, else unknown."""
    stack = np.stack(grids)
    out = np.full(stack.shape[1:], UNKNOWN, dtype=np.int8)
    out[(stack == FREE).any(axis=0)] = FREE
    out[(stack == OCCUPIED).any(axis=0)] = OCCUPIED
    return out


class FusedGrid:
    """The latest grid of every camera (thread-safe: each camera's publisher thread updates its own)."""

    def __init__(self, cameras: list[str], shape: tuple[int, int], max_age_s: float):
        if max_age_s <= 0:
            raise ValueError(f"max_age must be > 0 s, got {max_age_s}")
        self.cameras = list(cameras)
        self.shape = tuple(shape)
        self.max_age_ns = int(max_age_s * 1e9)
        self._latest: dict[str, tuple[int, np.ndarray]] = {}
        self._lock = threading.Lock()

    def update(self, camera: str, stamp_ns: int, cells: np.ndarray) -> Fused:
        """Take one camera's newest grid; return the fusion of every camera's recent one."""
        if camera not in self.cameras:
            raise ValueError(f"unknown camera {camera!r}; cameras: {', '.join(self.cameras)}")
        if cells.shape != self.shape:
            raise ValueError(f"camera {camera}: grid {cells.shape} is not the fused grid's {self.shape}")
        with self._lock:
            previous = self._latest.get(camera)
            if previous is None or stamp_ns >= previous[0]:  # an older frame never replaces a newer one
                self._latest[camera] = (int(stamp_ns), cells)
            newest = max(stamp for stamp, _ in self._latest.values())
            fresh = {name: grid for name, (stamp, grid) in self._latest.items()
                     if newest - stamp <= self.max_age_ns}
            stale = tuple(name for name in self.cameras if name in self._latest and name not in fresh)
        names = tuple(name for name in self.cameras if name in fresh)
        return Fused(fuse([fresh[name] for name in names]), newest, names, stale)


__all__ = ["Fused", "FusedGrid", "fuse"]
