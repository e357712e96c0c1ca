"""Regenerate the figures of the docs that need no trained model or dataset:

    .venv/bin/python docs/make_figures.py            # writes docs/road_grid.png and docs/zoo_tiers.png

docs/road_grid.png (docs/planners.md): a synthetic camera frame | its road mask | the road grid seen
from above, with the scene's true road edges drawn on the grid.
docs/zoo_tiers.png (docs/models.md): the same synthetic-street frames through both zoo models (CamVid
images stay out of the repository), with each model's mIoU on those frames. (docs/demo_montage.png is
`make demo`'s montage.png.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from msseg_core import synthetic
from msseg_core.ground.birdseye import grid_to_image
from msseg_core.ground.projection import GroundGridLookup
from msseg_core.ground.road_mask import refine_road_mask

DOCS = Path(__file__).resolve().parent


def road_grid_figure(path: str | Path, seed: int = 2, size: tuple[int, int] = (360, 480), resolution: float = 0.2,
                     length: float = 30.0, width: float = 20.0) -> np.ndarray:
    """The road_grid figure: returns the picture (RGB) and writes it to `path`."""
    h, w = size
    sequence = synthetic.SceneSequence(seed, w, h)
    frame = sequence.frame(0)
    rgb, labels, info = frame.rgb, frame.labels, frame.info
    lookup = GroundGridLookup(sequence.camera, resolution=resolution, length=length, width=width, max_range=length)
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


def label(panel: np.ndarray, text: str) -> np.ndarray:
    """A white strip with `text` above the panel."""
    header = np.full((24, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(header, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, panel], axis=0)


def zoo_tiers_figure(path: str | Path, models: tuple[str, ...] = ("camvid", "camvid_fast"),
                     seeds: tuple[int, ...] = (0, 3, 7), size: tuple[int, int] = (360, 480)) -> dict[str, float]:
    """Rows: synthetic frames; columns: the frame, its true labels, each zoo model's colour mask. Returns
    each model's mIoU over these frames (the synthetic street is never trained on: a domain-shift check)."""
    from msseg_core.evaluation.metrics import ConfusionMatrix
    from msseg_core.runtime.segmenter import Segmenter

    h, w = size
    segmenters = {name: Segmenter.from_checkpoint(name, device="cpu", backend="torch") for name in models}
    scores = {name: ConfusionMatrix(segmenters[name].num_classes) for name in models}
    shown = (w * 2 // 3, h * 2 // 3)  # panels drawn at 2/3 size: the figure stays a few hundred kB

    def small(img: np.ndarray, nearest: bool = True) -> np.ndarray:
        return cv2.resize(img, shown, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)

    palette = next(iter(segmenters.values())).palette  # the zoo shares CamVid's classes and colours
    gap = np.full((24 + shown[1], 6, 3), 255, np.uint8)
    rows = []
    for seed in seeds:
        rgb, labels = synthetic.render_scene(seed, w, h)
        truth = palette[np.minimum(labels, len(palette) - 1)]
        truth[labels >= len(palette)] = 0
        panels = [label(small(rgb, nearest=False), f"synthetic street, seed {seed}"),
                  label(small(truth), "true labels (void black)")]
        for name, seg in segmenters.items():
            pred = seg.predict(rgb)
            scores[name].update(pred, labels)
            panels.append(label(small(palette[pred]), f"{name} ({seg.input_size[0]}x{seg.input_size[1]} input)"))
        rows.append(np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1))
    figure = np.concatenate([x for r in rows for x in (r, np.full((6, r.shape[1], 3), 255, np.uint8))][:-1], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return {name: round(score.miou, 4) for name, score in scores.items()}


def main(argv: list[str] | None = None) -> int:
    out = Path((argv if argv is not None else sys.argv[1:] or [str(DOCS)])[0])
    road_grid_figure(out / "road_grid.png")
    print(out / "road_grid.png")
    miou = zoo_tiers_figure(out / "zoo_tiers.png")
    print(out / "zoo_tiers.png", "mIoU on the synthetic frames:", miou)
    return 0


if __name__ == "__main__":
    sys.exit(main())
