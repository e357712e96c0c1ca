"""msseg-bench pareto: every engine x precision scored and timed on a split, the node's default marked.

No timing or accuracy is asserted (a tiny random network on a shared machine); the report's shape,
the numerical check across engines and the chart are.
"""

import argparse
import json

import pytest

from msseg_core.bench import pareto
from msseg_core.cli import bench as bench_cli
from msseg_core.cli import quantize as quantize_cli


def test_pareto_front_keeps_the_points_nothing_beats():
    pts = [(10, 50), (20, 48), (5, 60), (15, 45), (20, 40), (1, 59)]
    assert pareto.pareto_front(pts) == [2, 0, 1]  # by speed; (15, 45), (20, 40), (1, 59) are beaten


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fake_datasets import write_fake_camvid
    from tiny_model import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("camvid")
    write_fake_camvid(root, "train", n=4, size=(48, 64))
    write_fake_camvid(root, "val", n=3, size=(48, 64))
    folder = tmp_path_factory.mktemp("pareto")
    ckpt = write_tiny_checkpoint(folder / "tiny.safetensors", input_size=(48, 64))
    assert quantize_cli.main(["--checkpoint", str(ckpt), "--data-root", str(root), "--frames", "4"]) == 0
    return ckpt, root, folder


@pytest.mark.slow
def test_pareto_scores_every_cpu_engine_and_marks_the_node_default(setup, tmp_path):
    ckpt, root, _ = setup
    args = argparse.Namespace(checkpoints=str(ckpt), data_root=str(root), split="val", configs="", chart=str(
        tmp_path / "chart.png"), title="", device="cpu", threads=1, iters=2, warmup=1, max_seconds=5.0,
                              cache_dir=str(tmp_path / "cache"), agreement_frames=3)
    report = pareto.run(args)
    rows = report["results"]
    from msseg_core.runtime.engines.factory import engine_versions

    expected = [c for c in pareto.CPU_CONFIGS if engine_versions()[c[0]]]
    assert [(r["backend"], r["precision"]) for r in rows] == expected
    for r in rows:
        assert "error" not in r, r
        assert 0 <= r["miou"] <= 1 and r["fps"] > 0 and r["threads"] == 1 and r["frame_size"] == [48, 64]
        assert r["describe"]["backend"] == r["backend"] and r["describe"]["precision"] == r["precision"]
        if r["precision"] == "fp32":  # msseg-export's check, on the split's own frames
            assert r["labels_agreement_vs_torch_fp32"] >= 0.99, r
    default = report["default"]
    assert default["checkpoint"] == str(ckpt) and default["precision"] == "fp32"
    assert default["backend"] in {r["backend"] for r in rows}
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pareto.to_markdown(report)
    assert sum("node default" in line for line in table) == 1
    saved = tmp_path / "pareto.json"
    saved.write_text(json.dumps(report))  # the report is plain JSON

    # Re-charting saved runs (e.g. made at different times) as one chart, checkpoints renamed; nothing measured.
    merged_json, merged_png = tmp_path / "merged.json", tmp_path / "merged.png"
    assert bench_cli.main(["pareto", "--from-json", f"{saved},{saved}", "--rename", f"{ckpt}=tiny model", "--chart",
                        str(merged_png), "--json", str(merged_json)]) == 0
    merged = json.loads(merged_json.read_text())
    assert len(merged["results"]) == 2 * len(rows) and merged["default"] is None
    assert {r["checkpoint"] for r in merged["results"]} == {"tiny model"}
    assert [r["miou"] for r in merged["results"]] == [r["miou"] for r in rows] * 2
    assert merged_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="--from-json"):
        bench_cli.main(["pareto", "--from-json", str(tmp_path / "missing.json")])
