"""A path over a road grid: the consumer example of `road_grid`, not a navigation stack.

A* on the cells of an OccupancyGrid-like array (0 free, 100 occupied, -1 unknown), 8-connected, with
the vehicle's half-width as a clearance: a cell is passable when no occupied cell lies within `clearance`
(the obstacles are inflated, as a costmap's inflation layer does with a lethal radius). Unknown cells are
impassable unless `unknown_passable`. Diagonal steps cost sqrt(2) and may not cut a blocked
corner. The heuristic is the octile distance, admissible on this grid, so the path is a shortest one.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import cv2
import numpy as np

FREE, OCCUPIED, UNKNOWN = 0, 100, -1
_STEPS = ((0, 1, 1.0), (1, 0, 1.0), (0, -1, 1.0), (-1, 0, 1.0),
          (1, 1, math.sqrt(2)), (1, -1, math.sqrt(2)), (-1, 1, math.sqrt(2)), (-1, -1, math.sqrt(2)))


@dataclass(frozen=True)
class PlannedPath:
    """Cells (row, col) from start to goal; `found` False (and no cells) when none exists."""

    cells: list[tuple[int, int]]
    cost_cells: float  # length in cells (diagonals count sqrt(2))

    @property
    def found(self) -> bool:
        return bool(self.cells)


def passable(cells: np.ndarray, clearance_cells: int = 0, unknown_passable: bool = False) -> np.ndarray:
    """rows x cols bool: free cells (unknown too, when allowed) with no occupied cell within the clearance
    (only obstacles are inflated, as Nav2's inflation layer inflates lethal cells; unknown cells are not
    entered, but a path may pass next to them)."""
    occupied = (cells == OCCUPIED).astype(np.uint8)
    if clearance_cells > 0:
        k = 2 * clearance_cells + 1
        occupied = cv2.dilate(occupied, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    blocked = occupied > 0
    if not unknown_passable:
        blocked |= cells == UNKNOWN
    return ~blocked


def plan_path(cells: np.ndarray, start: tuple[int, int], goal: tuple[int, int], clearance_cells: int = 0,
              unknown_passable: bool = False) -> PlannedPath:
    """Shortest 8-connected path from `start` to `goal` (row, col) through passable cells; the start cell
    itself is allowed to be blocked (the vehicle stands there, possibly on an unknown cell)."""
    grid = np.asarray(cells)
    ok = passable(grid, clearance_cells, unknown_passable)
    rows, cols = ok.shape
    for name, (r, c) in (("start", start), ("goal", goal)):
        if not (0 <= r < rows and 0 <= c < cols):
            raise ValueError(f"{name} {(r, c)} is outside the {rows} x {cols} grid")
    ok[start] = True
    if not ok[goal]:
        return PlannedPath([], math.inf)

    def h(r: int, c: int) -> float:
        dr, dc = abs(r - goal[0]), abs(c - goal[1])
        return max(dr, dc) + (math.sqrt(2) - 1) * min(dr, dc)

    best = np.full(ok.shape, np.inf)
    came = np.full(ok.shape + (2,), -1, dtype=np.int32)
    best[start] = 0.0
    frontier = [(h(*start), 0.0, start)]
    while frontier:
        _, g, (r, c) = heapq.heappop(frontier)
        if (r, c) == goal:
            return PlannedPath(_walk_back(came, start, goal), g)
        if g > best[r, c]:
            continue
        for dr, dc, step in _STEPS:
            nr, nc = r + dr, c + dc
            if not (0 <= nr < rows and 0 <= nc < cols) or not ok[nr, nc]:
                continue
            if dr and dc and not (ok[r + dr, c] and ok[r, c + dc]):
                continue  # no cutting a blocked corner
            ng = g + step
            if ng < best[nr, nc]:
                best[nr, nc] = ng
                came[nr, nc] = (r, c)
                heapq.heappush(frontier, (ng + h(nr, nc), ng, (nr, nc)))
    return PlannedPath([], math.inf)


def _walk_back(came: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    path = [goal]
    while path[-1] != start:
        r, c = came[path[-1]]
        path.append((int(r), int(c)))
    return path[::-1]


def cell_of(x: float, y: float, origin: tuple[float, float], resolution: float) -> tuple[int, int]:
    """(row, col) of the cell holding base-frame point (x, y) (OccupancyGrid: col along +x, row along +y)."""
    return int(math.floor((y - origin[1]) / resolution)), int(math.floor((x - origin[0]) / resolution))


def farthest_free_goal(cells: np.ndarray, start: tuple[int, int], lane_rows: int, clearance_cells: int = 0
                       ) -> tuple[int, int] | None:
    """A goal ahead: the passable cell farthest along +x (largest column) within `lane_rows` rows of the
    start's row, nearest to that row; None if there is none beyond the start."""
    ok = passable(np.asarray(cells), clearance_cells)
    r0, c0 = start
    lo, hi = max(0, r0 - lane_rows), min(ok.shape[0], r0 + lane_rows + 1)
    for c in range(ok.shape[1] - 1, c0, -1):
        rows = [r for r in range(lo, hi) if ok[r, c]]
        if rows:
            return min(rows, key=lambda r: abs(r - r0)), c
    return None


@dataclass(frozen=True)
class AheadPlan:
    """A path from where the vehicle first sees free road ahead of it to the farthest free cell of its lane."""

    start: tuple[int, int] | None
    goal: tuple[int, int] | None
    path: PlannedPath
    resolution: float

    @property
    def length_m(self) -> float:
        return self.path.cost_cells * self.resolution if self.path.found else math.nan

    def describe(self) -> str:
        if self.start is None:
            return "no free road ahead of the vehicle"
        if self.goal is None:
            return "no goal ahead: the lane is blocked right in front"
        return f"path of {self.length_m:.1f} m" if self.path.found else "no path: the lane ahead is blocked"


def plan_ahead(cells: np.ndarray, resolution: float, origin: tuple[float, float], lane_half_width: float = 1.5,
               clearance: float = 0.8) -> AheadPlan:
    """Plan over a road grid in the vehicle's frame (x forward from `origin`): start at the nearest free cell
    ahead of x = 0, y = 0 within the lane (the ground right below the camera is out of its view, so unknown),
    goal at the farthest passable cell within `lane_half_width` of y = 0; `clearance` (the vehicle's
    half-width) keeps the path that far from anything that is not road."""
    grid = np.asarray(cells)
    rows, cols = grid.shape
    r0, c0 = cell_of(0.0, 0.0, origin, resolution)
    r0, c0 = min(max(r0, 0), rows - 1), min(max(c0, 0), cols - 1)
    lane = max(1, int(round(lane_half_width / resolution)))
    clearance_cells = int(round(clearance / resolution))
    free = grid == FREE
    start = None
    for c in range(c0, cols):
        candidates = [r for r in range(max(0, r0 - lane), min(rows, r0 + lane + 1)) if free[r, c]]
        if candidates:
            start = (min(candidates, key=lambda r: abs(r - r0)), c)
            break
    if start is None:
        return AheadPlan(None, None, PlannedPath([], math.inf), resolution)
    goal = farthest_free_goal(grid, start, lane, clearance_cells)
    if goal is None:
        return AheadPlan(start, None, PlannedPath([], math.inf), resolution)
    return AheadPlan(start, goal, plan_path(grid, start, goal, clearance_cells), resolution)


__all__ = ["AheadPlan", "PlannedPath", "cell_of", "farthest_free_goal", "passable", "plan_ahead", "plan_path"]
