"""msseg-bench runs end to end on tiny configurations and writes the documented JSON and Markdown.

No timing is asserted: these machines are shared. The figures come from the commands in BENCHMARKS.md.
"""

import json

import numpy as np
import pytest

from msseg_core.bench import options, timing
from msseg_core.bench import report as bench_report
from msseg_core.bench import segmenter as bench_segmenter
from msseg_core.checkpoint import load_checkpoint
from msseg_core.cli import bench
from msseg_core.runtime.engines.torch_ort import cpu_flags
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter

LATENCY_KEYS = {"p50", "p99", "mean", "min"}


def test_model_bench_writes_valid_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "model.json", tmp_path / "model.md"
    status = bench.main(["model", "--models", "mssanet", "--model-args", '{"width": 0.0625}', "--sizes", "48x64",
                         "--precision", "fp32,fp16", "--modes", "naive,eager,onnxruntime", "--batch", "1,2",
                         "--iters", "2", "--warmup", "1", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
                         "--json", str(out_json), "--md", str(out_md)])
    assert status == 0
    report = json.loads(out_json.read_text())
    env_keys = {"torch", "device", "threads", "cpu", "cpu_flags", "time"}
    assert report["kind"] == "model" and env_keys <= set(report["env"])
    assert report["env"]["cpu_flags"] == cpu_flags()
    rows = report["results"]
    assert len(rows) == 2 * 3 * 2  # precisions x modes x batches
    for r in rows:
        assert {"model", "params", "gflops_360x480", "size", "precision", "mode", "batch"} <= set(r)
        assert r["model"] == "mssanet" and r["size"] == [48, 64] and r["params"] > 0 and r["gflops_360x480"] > 0
        if r["precision"] == "fp16" and report["env"]["device"] == "cpu":
            assert r["error"].startswith("skipped")
            continue
        assert "error" not in r, r
        assert r["iters"] == 2 and set(r["latency_ms"]) == LATENCY_KEYS
        assert r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
        assert ("fps" in r) == (r["batch"] == 1) and ("throughput_ips" in r) == (r["batch"] > 1)
    md = out_md.read_text().splitlines()
    table = [line for line in md if line.startswith("| mssanet")]
    assert len(table) == len(rows) and md[3].startswith("| model | params")


def test_segmenter_bench_compares_backends_on_the_same_frames(tiny_checkpoint, tmp_path):
    status = bench.main(["segmenter", "--checkpoint", str(tiny_checkpoint), "--sizes", "48x64,60x90",
                         "--backends", "naive,torch,onnxruntime", "--iters", "2", "--warmup", "1", "--frames", "2",
                         "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)])
    assert status == 0
    report = json.loads((tmp_path / "segmenter.json").read_text())
    rows = report["results"]
    assert [(r["backend"], r["frame_size"]) for r in rows] == [
        (b, s) for s in ([48, 64], [60, 90]) for b in ("naive", "torch", "onnxruntime")]
    for r in rows:
        assert "error" not in r, r
        assert set(r["latency_ms"]) == LATENCY_KEYS and r["fps"] > 0 and r["speedup_vs_naive"] > 0
        assert r["labels_agreement_vs_first"] >= 0.99 and r["outputs"] == list(OUTPUTS)
    assert rows[2]["describe"]["backend"] == "onnxruntime"
    assert (tmp_path / "segmenter.md").read_text().count("| onnxruntime |") == 2
    for r in rows:  # the two stages timed apart, for every Segmenter row (the naive path has no stages)
        assert ("network_ms" in r) == ("postprocess_ms" in r) == (r["backend"] != "naive")
        if r["backend"] != "naive":
            assert set(r["network_ms"]) == set(r["postprocess_ms"]) == LATENCY_KEYS
            assert r["network_ms"]["p50"] > 0 and r["postprocess_ms"]["p50"] > 0


def test_segmenter_bench_compares_upsampling_and_tta(tiny_checkpoint, tmp_path):
    status = bench.main(["segmenter", "--checkpoint", str(tiny_checkpoint), "--sizes", "64x96",
                         "--backends", "naive,torch", "--upsample", "boundary,exact", "--tta", "none,flip",
                         "--outputs", "labels", "--iters", "2", "--warmup", "1", "--frames", "2", "--threads", "1",
                         "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)])
    assert status == 0
    rows = json.loads((tmp_path / "segmenter.json").read_text())["results"]
    assert [(r["backend"], r["upsample"], r["tta"]) for r in rows] == [
        ("naive", "exact", "none"), ("torch", "boundary", "none"), ("torch", "boundary", "flip"),
        ("torch", "exact", "none"), ("torch", "exact", "flip")]
    for r in rows[1:]:
        assert "error" not in r, r
        assert r["describe"]["upsample"] == r["upsample"] and r["describe"]["tta"] == r["tta"]
        assert r["outputs"] == ["labels"] and set(r["network_ms"]) == LATENCY_KEYS
    assert rows[1]["labels_agreement_vs_first"] == rows[3]["labels_agreement_vs_first"]  # the same labels
    md = (tmp_path / "segmenter.md").read_text().splitlines()
    assert "| upsample | tta |" in md[3] and "| network p50 ms | post p50 ms |" in md[3]
    assert sum(line.startswith("| torch |") for line in md) == 4
    assert any(line.startswith("| naive |") and "| - | - |" in line for line in md)


@pytest.mark.parametrize("upsample", ["boundary", "exact"])
def test_naive_reference_agrees_with_the_segmenter(tiny_checkpoint, upsample):
    model, meta = load_checkpoint(tiny_checkpoint)
    naive = bench_segmenter.NaiveSegmenter(model, meta, device="cpu")
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", threads=1, upsample=upsample)
    seg._boundary_min_work = 0.0  # the boundary kernels even on these small frames
    for rgb in bench_segmenter.synthetic_frames(2, 70, 90):
        a, b = naive.segment(rgb), seg.segment(rgb)
        assert set(a) == set(b) == set(OUTPUTS)
        same = a["labels"] == b["labels"]
        assert same.mean() >= 0.99
        for key in OUTPUTS:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype == np.uint8, key
        assert np.abs(a["overlay"].astype(int) - b["overlay"])[same].max() <= 1
        err = np.abs(a["confidence"].astype(int) - b["confidence"])[same]
        assert err.max() <= 2 if upsample == "exact" else (err <= 2).mean() >= 0.99
        np.testing.assert_array_equal(a["road_mask"][same], b["road_mask"][same])


def test_cpu_flags_name_the_isa_extensions_that_change_speed():
    """Two machines with one model name can differ in VNNI/AMX, which decides INT8 speed: reports say which."""
    x86 = ("processor\t: 0\nmodel name\t: AMD EPYC\n"
           "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 sha_ni\n")
    assert cpu_flags(x86) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu_flags("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n") == ["avx2", "fma"]
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd asimddp crc32\n") == ["asimd", "asimddp"]
    assert cpu_flags("model name\t: something\n") == []
    env = {"time": "t", "device": "cpu", "cpu": "AMD EPYC", "cpu_flags": ["avx2", "avx512_vnni"], "threads": 1,
           "torch": "2"}
    assert "AMD EPYC; avx2 avx512_vnni" in bench_report.to_markdown({"kind": "model", "env": env, "results": []})


def test_timing_helpers_and_argument_errors():
    calls = []
    stats = timing.time_calls(lambda: calls.append(1), warmup=2, iters=5, max_seconds=60)
    assert len(calls) == 2 + 5 and stats["iters"] == 5 and set(stats["latency_ms"]) == LATENCY_KEYS
    assert options.parse_sizes("360x480, 720X960") == [(360, 480), (720, 960)]
    for bad in ("360", "0x10", ""):
        with pytest.raises(SystemExit):
            options.parse_sizes(bad)
    with pytest.raises(SystemExit, match="unknown models"):
        bench.main(["model", "--models", "resnet9000", "--iters", "1"])


@pytest.mark.ros
@pytest.mark.slow
def test_node_bench_measures_the_node_against_the_bare_segmenter(tiny_checkpoint, tmp_path):
    """`msseg-bench node` (msseg_ros.bench.node behind the msseg-bench console script): the documented
    rows, consistent with one another. How fast anything ran is not asserted."""
    from msseg_ros.bench import cli as bench_node

    status = bench_node.main(["node", "--checkpoint", str(tiny_checkpoint), "--sizes", "48x64", "--frames", "3",
                         "--warmup", "1", "--threads", "1", "--timeout", "30", "--startup-timeout", "120",
                         "--phase-seconds", "1", "--rounds", "1", "--cache-dir", str(tmp_path / "cache"),
                         "--json", str(tmp_path / "node.json"), "--md", str(tmp_path / "node.md")])
    report = json.loads((tmp_path / "node.json").read_text())
    lockstep, rate = report["results"][:2], report["results"][2:]
    assert status == 0 and not any("error" in r for r in lockstep), (lockstep, report.get("node_log"))
    # Latency with one frame in flight: labels alone (against predict), then all five outputs (against segment).
    assert [(r["mode"], r["outputs"], r["bare_call"]) for r in lockstep] == [("lockstep", "labels", "predict"),
                                                                             ("lockstep", "all", "segment")]
    for row in lockstep:
        assert row["frames"] == 3 and row["frame_size"] == [48, 64] and row["lost"] == 0
        assert set(row["node_latency_ms"]) == set(row["bare_latency_ms"]) == LATENCY_KEYS
        assert row["node_latency_ms"]["p50"] > 0 and isinstance(row["overhead_ratio"], float)
        # The transport floor (a round trip through transport_echo, per frame) and what the node adds beyond it.
        floor = row["transport_floor_ms"]
        assert set(floor) == LATENCY_KEYS and floor["p50"] > 0
        assert row["overhead_beyond_transport_ms"] == pytest.approx(
            row["node_latency_ms"]["p50"] - row["bare_latency_ms"]["p50"] - floor["p50"], abs=2e-3)
    # Throughput: the node fed faster than the bare Segmenter runs, for labels alone and for all outputs.
    assert [(r["mode"], r["outputs"], r["bare_call"]) for r in rate] == [("rate", "labels", "predict"),
                                                                         ("rate", "all", "segment")], rate
    for r in rate:
        assert r["node_frames"] > 0 and r["node_rate_hz"] > 0 and r["fed_rate_hz"] > 0, r
        assert r["overhead_ratio"] == pytest.approx(1 - r["node_rate_hz"] / r["bare_rate_hz"], abs=2e-3), r
        # The rate is the frames answered within the counting windows (the last 90% of each phase).
        window_s = r["rounds"] * 0.9 * r["phase_seconds"]
        assert r["node_rate_hz"] == pytest.approx(r["node_frames"] / window_s, rel=0.02), r
        assert r["bare_pipelined_rate_hz"] > 0, r
        cpu = r["node_cpu_ms_per_frame"]  # the node's threads are named at the OS level: their CPU is seen
        assert cpu["msseg_worker"] > 0 and cpu["msseg_publisher"] > 0 and r["feeder_cpu_ms_per_frame"] > 0, r
        assert cpu["msseg_input"] > 0, r  # frames are taken by their own thread, not the executor
        parts = ("msseg_input", "msseg_worker", "msseg_publisher", "other")
        assert cpu["total"] == pytest.approx(sum(cpu[k] for k in parts), abs=0.05)
        assert r["overhead_vs_pipelined"] == pytest.approx(1 - r["node_rate_hz"] / r["bare_pipelined_rate_hz"],
                                                           abs=2e-3), r
    md = (tmp_path / "node.md").read_text()
    assert "| labels | 48x64 | predict |" in md and "| labels (predict) | 48x64 | 3 |" in md


@pytest.mark.ros
def test_msseg_bench_hands_node_to_msseg_ros_and_the_rest_to_msseg_core(capsys, tmp_path):
    from msseg_ros.bench import cli as bench_node

    with pytest.raises(SystemExit) as info:
        bench_node.main(["node", "--modes", "rate", "--rate-outputs", "labels,depth"])
    assert info.value.code == 2 and "unknown" in capsys.readouterr().err
    assert bench_node.main(["model", "--models", "mssanet", "--model-args", '{"width": 0.0625}', "--sizes", "32x48",
                            "--precision", "fp32", "--modes", "naive", "--batch", "1", "--iters", "1", "--warmup",
                            "0", "--threads", "1", "--json", str(tmp_path / "model.json")]) == 0
    assert json.loads((tmp_path / "model.json").read_text())["kind"] == "model"
    with pytest.raises(SystemExit):  # msseg_core's own command line has no `node`: it never imports ROS
        bench.main(["node"])


@pytest.mark.ros
@pytest.mark.slow
def test_node_bench_cameras_compares_one_node_with_n_nodes(tiny_checkpoint, tmp_path):
    """`msseg-bench node --cameras 1,2`: for each N, one node with N cameras and N single-camera nodes
    fed the same frames; the documented rows, consistent with one another. No speed is asserted."""
    from msseg_ros.bench import cli as bench_node

    status = bench_node.main(["node", "--checkpoint", str(tiny_checkpoint), "--cameras", "1,2", "--sizes", "48x64",
                              "--phase-seconds", "1", "--rounds", "2", "--threads", "1", "--device", "cpu",
                              "--backend", "torch", "--startup-timeout", "180", "--json", str(tmp_path / "c.json"),
                              "--md", str(tmp_path / "c.md")])
    report = json.loads((tmp_path / "c.json").read_text())
    rows = report["results"]
    assert status == 0 and report["kind"] == "node_cameras" and [r.get("cameras") for r in rows] == [1, 2], rows
    for r in rows:
        assert "error" not in r, r
        one, separate = r["one_node"], r["separate_nodes"]
        assert one["processes"] == 1 and separate["processes"] == r["cameras"]
        for side in (one, separate):
            assert side["rate_hz"] > 0 and side["frames"] > 0 and side["rss_mb"] > 0 and side["peak_rss_mb"] > 0
            assert len(side["per_camera_hz"]) == r["cameras"]
            assert sum(side["per_camera_hz"]) == pytest.approx(side["rate_hz"], abs=0.05 * r["cameras"])
        assert r["rate_ratio"] == pytest.approx(one["rate_hz"] / separate["rate_hz"], rel=0.01)
        assert r["rss_ratio"] == pytest.approx(one["rss_mb"] / separate["rss_mb"], rel=0.01)
    table = [line for line in (tmp_path / "c.md").read_text().splitlines() if line.startswith("| 2 | 48x64 |")]
    assert len(table) == 1
    with pytest.raises(SystemExit, match="camera counts"):
        bench_node.main(["node", "--cameras", "0", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                         "--backend", "torch"])
