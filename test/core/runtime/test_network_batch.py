"""Segmenter.run_network_batch: several frames (any sizes) in one forward pass, one NetworkOutput per
frame for postprocess: what the node does with the frames of several cameras."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msseg_core.runtime.segmenter import OUTPUTS, Segmenter


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint) -> Segmenter:  # noqa: F811
    return Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", threads=1)


def frames(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_batch_agrees_with_one_frame_at_a_time(segmenter: Segmenter) -> None:
    """Mixed sizes in one batch: each frame's logits are its own (as run_network gives them, up to
    float rounding of a batched convolution) and post-process to the outputs `segment` gives."""
    batch = frames([(30, 44), (60, 80), (30, 44), (17, 23)])
    nets = segmenter.run_network_batch(batch)
    assert len(nets) == len(batch)
    for rgb, net in zip(batch, nets, strict=True):
        assert net.frames.shape[0] == net.logits.shape[0] == 1 and tuple(net.frames.shape[1:3]) == rgb.shape[:2]
        torch.testing.assert_close(net.logits, segmenter.run_network(rgb).logits, rtol=1e-4, atol=1e-4)
        out, expected = segmenter.postprocess(net, OUTPUTS), segmenter.segment(rgb, OUTPUTS)
        assert set(out) == set(OUTPUTS)
        for name in OUTPUTS:
            assert out[name].shape == expected[name].shape, name
        assert (out["labels"] == expected["labels"]).mean() >= 0.99


def test_batch_outputs_are_owned(segmenter: Segmenter) -> None:
    """A later batch (or frame) does not overwrite an earlier batch's logits: each frame may wait in
    another thread to be post-processed."""
    first = segmenter.run_network_batch(frames([(30, 44), (30, 44)], seed=1))
    kept = [net.logits.clone() for net in first]
    segmenter.run_network_batch(frames([(30, 44), (30, 44)], seed=2))
    segmenter.run_network(frames([(30, 44)], seed=3)[0])
    for net, logits in zip(first, kept, strict=True):
        assert torch.equal(net.logits, logits)


def test_empty_and_bad_batches(segmenter: Segmenter) -> None:
    assert segmenter.run_network_batch([]) == []
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        segmenter.run_network_batch([frames([(8, 8)])[0], np.zeros((8, 8), np.uint8)])


def _engines_here() -> list[str]:
    out = ["torch", "onnxruntime"]
    try:
        import openvino  # noqa: F401

        out.append("openvino")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", _engines_here())
def test_replicas_run_at_the_same_time_with_the_same_results(tiny_checkpoint, tmp_path, backend: str) -> None:  # noqa: F811
    """`streams`: replicas share the model (and the engine's session or compiled model) and each has its own
    buffers and engine request, so two threads segmenting through two replicas at once get exactly what
    one Segmenter gives frame by frame; road classes are per replica."""
    import threading

    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend=backend, threads=1, streams=2,
                                    cache_dir=tmp_path)
    twin = seg.replica()
    assert twin.net is not seg.net and twin.backend == seg.backend == backend and seg.describe()["streams"] == 2
    if backend != "torch":  # one thread per call: one model in memory
        assert getattr(twin.net, "session", None) is getattr(seg.net, "session", None)
        assert getattr(twin.net, "compiled", None) is getattr(seg.net, "compiled", None)
    batch = frames([(40, 56)] * 6, seed=3)
    expected = [seg.segment(rgb, OUTPUTS) for rgb in batch]
    results: dict[int, dict] = {}
    start = threading.Barrier(2, timeout=30)

    def run(handle: Segmenter, indices: range) -> None:
        start.wait()
        for _ in range(5):  # several rounds, so that the two threads' frames interleave
            for i in indices:
                net = handle.run_network(batch[i])
                results[i] = handle.postprocess(net, OUTPUTS)

    workers = [threading.Thread(target=run, args=(h, r)) for h, r in ((seg, range(0, 3)), (twin, range(3, 6)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sorted(results) == list(range(6))
    for i, want in enumerate(expected):
        for name in OUTPUTS:
            np.testing.assert_array_equal(results[i][name], want[name], err_msg=f"frame {i} {name}")
    twin.set_road_classes([seg.class_names[0]])
    assert twin.road_classes != seg.road_classes


def test_streams_must_be_positive(tiny_checkpoint) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="streams must be >= 1"):
        Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", streams=0)


def test_onnxruntime_replica_gets_its_own_pool_with_several_threads(tiny_checkpoint, tmp_path) -> None:  # noqa: F811
    """threads > 1: concurrent calls of one ORT session would share its one intra-op pool, so a replica
    has a session of its own (same file, same options) and gives the same labels."""
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="onnxruntime", threads=2, streams=2,
                                    cache_dir=tmp_path)
    twin = seg.replica()
    assert twin.net.session is not seg.net.session
    rgb = frames([(40, 56)], seed=5)[0]
    np.testing.assert_array_equal(twin.predict(rgb), seg.predict(rgb))
