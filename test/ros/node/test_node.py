"""The segmentation node over real DDS: a subprocess started like a user starts it, or in-process where
the test needs to reach inside (counters, injected failures). Tiny network, small frames, CPU."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from helpers_ros import (
    FAST_PARAMS,
    InProcessNode,
    SegmentationClient,
    image_array,
    image_in_encoding,
    make_header,
    namespace,
    node_args,
    random_rgb,
    rgb_image,
    stamp_key,
)
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from msseg_core.classes import CAMVID
from msseg_core.ground.road_mask import refine_road_mask
from msseg_core.runtime.segmenter import OUTPUTS, Segmenter
from msseg_ros.node.pipeline import COUNTERS, all_accounted
from msseg_ros.node.road_grid import ROAD_GRID_DEFAULTS
from msseg_ros.node.segmentation_node import OUTPUT_ENCODINGS, ConfigError
from msseg_ros.transport import topics
from msseg_ros.transport.graph import NodeProcess, PrivateContext
from msseg_ros.transport.image_codec import DECODABLE_ENCODINGS, decode, decode_image, encode_compressed

pytestmark = pytest.mark.ros
NS = namespace("seg_test")
FQN = f"{NS}/msseg_node"


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the reference on one thread like the node, so floating-point sums add up in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def node(tiny_checkpoint) -> Iterator[NodeProcess]:  # noqa: F811
    with NodeProcess("segmentation_node", node_args(tiny_checkpoint, NS)) as proc:
        proc.wait_for_output("subscribed to", timeout=90)
        yield proc
        assert proc.alive, f"the node died:\n{proc.output()}"


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> Iterator[SegmentationClient]:
    with SegmentationClient(NS) as c:
        c.wait_until_served()
        yield c


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> Segmenter:  # noqa: F811
    return Segmenter.from_checkpoint(tiny_checkpoint, **FAST_PARAMS)


def counters(status: dict[str, str]) -> dict[str, int]:
    return {k: int(status[k]) for k in COUNTERS}


def settled(status: dict[str, str]) -> bool:
    """Every received frame is accounted for (nothing pending in the worker)."""
    return all_accounted(counters(status))


def expected_road_mask(labels: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """Union of the road classes, cleaned with the node's default kernel (test_node_road.py varies it)."""
    raw = np.where(np.isin(labels, class_ids), 255, 0).astype(np.uint8)
    return refine_road_mask(raw, kernel_size=ROAD_GRID_DEFAULTS["road_cleanup_kernel"])


def check_outputs(outputs: dict[str, Image], sent: Image, reference: Segmenter, rgb: np.ndarray) -> None:
    """Same header, input resolution, declared encodings, and content consistent with `reference`."""
    for name, msg in outputs.items():
        assert msg.header.stamp == sent.header.stamp and msg.header.frame_id == sent.header.frame_id, name
        assert (msg.height, msg.width) == (sent.height, sent.width), name
        assert msg.encoding == OUTPUT_ENCODINGS[name], name
        channels = 3 if msg.encoding == "rgb8" else 1
        assert msg.step == msg.width * channels and len(msg.data) == msg.step * msg.height, name
    arrays = {name: image_array(m) for name, m in outputs.items()}
    with single_thread():
        expected = reference.predict(rgb)
    np.testing.assert_array_equal(arrays["labels"], expected)
    np.testing.assert_array_equal(arrays["color_mask"], reference.palette[expected])
    np.testing.assert_array_equal(arrays["road_mask"], expected_road_mask(expected, [CAMVID.names.index("Road")]))


# -- subprocess node -------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", DECODABLE_ENCODINGS)
def test_every_encoding_answered_on_every_output(client: SegmentationClient, reference: Segmenter,
                                                 encoding: str) -> None:
    rgb = random_rgb(30, 44, seed=len(encoding))
    sent = image_in_encoding(rgb, encoding, make_header(f"cam_{encoding}"), padding=4)
    outputs = client.request(sent)
    assert set(outputs) == set(OUTPUTS)
    check_outputs(outputs, sent, reference, decode_image(sent))


def test_large_frames_arrive(node: NodeProcess, reference: Segmenter) -> None:
    """960x720 rgb8 (2 MB) from best-effort and reliable publishers: each frame is answered (both
    processes use the packaged Fast DDS profile; with Fast DDS defaults most frames are lost)."""
    rgb = random_rgb(720, 960, seed=7)
    for reliability in ("best_effort", "reliable"):
        with SegmentationClient(NS, reliability=reliability, name=f"large_{reliability}") as c:
            c.wait_until_served()
            for _ in range(3):
                sent = rgb_image(rgb)
                outputs = c.request(sent, timeout=30)
                assert (outputs["overlay"].width, outputs["overlay"].height) == (960, 720)
            check_outputs(outputs, sent, reference, rgb)


def test_burst_is_answered_without_a_queue(client: SegmentationClient) -> None:
    """50 frames at once: the node works on the newest, drops the rest, and all are accounted for."""
    before = counters(client.wait_for_status(FQN, settled))
    frames = [rgb_image(random_rgb(60, 80, seed=i)) for i in range(50)]
    for msg in frames:
        client.publish(msg)
    last = client.wait_for(stamp_key(frames[-1].header), timeout=30)  # the newest frame is never dropped
    assert set(last) == set(OUTPUTS)
    after = counters(client.wait_for_status(FQN, lambda s: settled(s) and int(s["received"]) > before["received"]))
    delta = {k: after[k] - before[k] for k in COUNTERS}
    assert 0 < delta["received"] <= 50, delta
    assert delta["received"] == delta["processed"] + delta["dropped"], delta
    assert delta["invalid"] == delta["errors"] == delta["skipped"] == 0, delta


def test_run_time_parameters(client: SegmentationClient, reference: Segmenter) -> None:
    rgb = random_rgb(20, 30, seed=12)

    def outputs() -> dict[str, np.ndarray]:
        got = client.request(rgb_image(rgb))
        return {k: image_array(m) for k, m in got.items()}

    try:
        assert all(r.successful for r in client.set_parameters(FQN, {"overlay_alpha": 0.0}))
        np.testing.assert_array_equal(outputs()["overlay"], rgb)
        assert all(r.successful for r in client.set_parameters(FQN, {"overlay_alpha": 1.0}))
        out = outputs()
        np.testing.assert_array_equal(out["overlay"], out["color_mask"])

        assert client.set_parameters(FQN, {"road_classes": ["Sky", "Building"]})[0].successful
        out = outputs()
        np.testing.assert_array_equal(out["road_mask"], expected_road_mask(out["labels"], [0, 1]))

        # Rejected: out of range, unknown class, wrong type, read-only; nothing changes.
        for bad in ({"overlay_alpha": 2.0}, {"road_classes": ["Nope"]}, {"road_classes": []},
                    {"overlay_alpha": "high"}, {"class_names": ["a"]}, {"device": "cpu"}, {"checkpoint": "x"}):
            results = client.set_parameters(FQN, bad)
            assert not results[0].successful and results[0].reason, bad
        params = client.get_parameters(FQN, ["overlay_alpha", "road_classes", "class_names", "class_colors"])
        assert params["overlay_alpha"] == 1.0 and params["road_classes"] == ["Sky", "Building"]
        assert params["class_names"] == list(CAMVID.names)
        assert params["class_colors"] == ["#{:02x}{:02x}{:02x}".format(*c) for c in CAMVID.palette]
        out = outputs()
        np.testing.assert_array_equal(out["overlay"], out["color_mask"])
        np.testing.assert_array_equal(out["road_mask"], expected_road_mask(out["labels"], [0, 1]))
    finally:
        client.set_parameters(FQN, {"overlay_alpha": 0.5, "road_classes": ["Road"]})


def test_diagnostics(client: SegmentationClient) -> None:
    """1 Hz DiagnosticArray on /diagnostics with counters, latency, output rate, device and model."""
    values = None
    deadline = time.monotonic() + 20
    while values is None and time.monotonic() < deadline:  # stream at 5 Hz until a status shows the rate
        client.publish(rgb_image(random_rgb(16, 16)))
        with contextlib.suppress(AssertionError):
            values = client.wait_for_status(FQN, lambda s: float(s["output rate hz"]) > 0, timeout=0.2)
    assert values is not None, client.status_message(FQN)
    for key in (*COUNTERS, "latency mean ms", "latency p99 ms", "output rate hz", "device", "model",
                *(f"published {o}" for o in OUTPUTS)):
        assert key in values, key
    assert int(values["processed"]) > 0 and float(values["latency p99 ms"]) >= float(values["latency mean ms"]) > 0
    assert values["device"] == "cpu" and values["model"] == "mssanet"
    assert values["camera"] == "segmentation" and values["input topic"] == f"{NS}/image"
    assert values["backend"] == "torch" and values["precision"] == "fp32"
    status = client.status_message(FQN)
    # <node>: <camera> (the one camera of a node without `cameras`: segmentation); hardware_id names both.
    assert status.name == f"{FQN}: segmentation" and status.hardware_id == f"{FQN}:{NS}/image"


INVALID = [
    ({"device": "tpu"}, "device"),
    ({"device": "cuda:7"}, "device"),
    ({"precision": "fp64"}, "precision"),
    ({"backend": "tensorrt"}, "backend"),
    ({"overlay_alpha": 2.0}, "overlay_alpha"),
    ({"overlay_alpha": "abc"}, "overlay_alpha"),
    ({"road_classes": ["Road", "Nope"]}, "Nope"),
    ({"road_classes": []}, "road_classes"),
    ({"checkpoint": "/nonexistent/model.safetensors"}, "checkpoint not found"),
    ({"input_transport": "udp"}, "input_transport"),
    ({"max_input_pixels": 0}, "max_input_pixels"),
    ({"input_width": -5}, "input_width"),
]


@pytest.mark.parametrize(("params", "expected"), INVALID)
def test_invalid_parameter_is_a_clear_config_error(tiny_checkpoint, params: dict, expected: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError) as info:
        InProcessNode({"checkpoint": str(tiny_checkpoint), **params}, namespace("seg_invalid")).close()
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_invalid_parameters_stop_the_node_process(tiny_checkpoint) -> None:  # noqa: F811
    """The command line path: non-zero exit, exactly one error line naming the problem, no traceback.
    (Both started at once: each costs an interpreter start.)"""
    cases = [(["-p", "device:=tpu"], "parameter device"), (["-p", "overlay_alpha:=2.0"], "parameter overlay_alpha")]
    procs = [NodeProcess("segmentation_node", node_args(tiny_checkpoint) + args) for args, _ in cases]
    try:
        for proc, (args, expected) in zip(procs, cases, strict=True):
            rc = proc.wait(timeout=90)
            out = proc.output()
            errors = [line for line in out.splitlines() if "ERROR" in line]
            assert rc != 0, (args, out)
            assert len(errors) == 1 and expected in errors[0] and "Traceback" not in out, (args, out)
    finally:
        for proc in procs:
            proc.close()


# -- in-process node -----------------------------------------------------------------------------
def test_compressed_input_and_oversized_frames(tiny_checkpoint, reference: Segmenter) -> None:  # noqa: F811
    ns = namespace("seg_compressed")
    params = {"checkpoint": str(tiny_checkpoint), "input_transport": "compressed",
              "max_input_pixels": 5000}
    with InProcessNode(params, ns) as node, SegmentationClient(ns, compressed=True) as c:
        c.wait_until_served(lambda: encode_compressed(random_rgb(24, 32), make_header(), "png"))
        for fmt in ("jpeg", "png"):
            rgb = random_rgb(40, 60, seed=3)
            sent = encode_compressed(rgb, make_header("cam_jpeg"), fmt)
            outputs = c.request(sent)
            for msg in outputs.values():
                assert msg.header.stamp == sent.header.stamp and msg.header.frame_id == "cam_jpeg"
                assert (msg.height, msg.width) == (40, 60)
            labels = image_array(outputs["labels"])
            with single_thread():
                np.testing.assert_array_equal(labels, reference.predict(decode(sent)))
        invalid = node.node.counters.invalid

        def wait_invalid(count: int) -> None:
            deadline = time.monotonic() + 10
            while node.node.counters.invalid < count and time.monotonic() < deadline:
                time.sleep(0.05)
            assert node.node.counters.invalid == count

        c.publish(encode_compressed(random_rgb(80, 80), make_header(), "jpeg"))  # 6400 > 5000 pixels
        wait_invalid(invalid + 1)  # taken and refused: the next frame cannot replace it in the mailbox
        corrupt = encode_compressed(random_rgb(8, 8), make_header(), "jpeg")
        corrupt.data = corrupt.data[:20]
        c.publish(corrupt)
        wait_invalid(invalid + 2)
        c.request(encode_compressed(random_rgb(8, 8), make_header(), "png"))  # still answering


def test_outputs_without_subscribers_are_not_computed(tiny_checkpoint) -> None:  # noqa: F811
    ns = namespace("seg_lazy")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node:
        counters_ = node.node.counters
        with SegmentationClient(ns, outputs=(), name="no_outputs") as c:  # nobody listens
            deadline = time.monotonic() + 20
            while counters_.skipped < 3 and time.monotonic() < deadline:
                c.publish(rgb_image(random_rgb(8, 8)))
                time.sleep(0.2)
            assert counters_.skipped >= 3 and counters_.processed == 0
        with SegmentationClient(ns, outputs=("labels", "road_mask"), name="two_outputs") as c:
            c.wait_until_served()
            for _ in range(3):
                c.request(rgb_image(random_rgb(8, 8)))
            published = dict(counters_.published)
        assert published["labels"] == published["road_mask"] == counters_.processed >= 4, published
        assert published["color_mask"] == published["overlay"] == published["confidence"] == 0, published


@pytest.mark.parametrize("pipelined", [True, False])
def test_pipelined_and_single_thread_nodes_answer_alike(tiny_checkpoint, reference: Segmenter,  # noqa: F811
                                                        pipelined: bool) -> None:
    """`pipelined` (default) publishes from its own thread while the worker segments the next frame;
    either way every frame is answered correctly and a burst is fully accounted for."""
    ns = namespace(f"seg_pipelined_{str(pipelined).lower()}")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "pipelined": pipelined}, ns) as node:
        seg_node, publishing_threads = node.node, set()
        publish = seg_node.publish_frame

        def spy(frame):
            publishing_threads.add(threading.current_thread().name)
            publish(frame)

        seg_node.publish_frame = spy
        with SegmentationClient(ns, name=f"pipelined_{str(pipelined).lower()}") as c:
            c.wait_until_served()
            for i in range(3):
                rgb = random_rgb(30, 44, seed=100 + i)
                sent = rgb_image(rgb)
                check_outputs(c.request(sent), sent, reference, rgb)
            frames = [rgb_image(random_rgb(60, 80, seed=i)) for i in range(30)]
            for msg in frames:
                c.publish(msg)
            assert set(c.wait_for(stamp_key(frames[-1].header), timeout=30)) == set(OUTPUTS)
        counts = seg_node.counters
        assert wait_until(lambda: counts.received == counts.processed + counts.dropped), counts
        assert counts.processed >= 4 and counts.errors == counts.invalid == 0, counts
        assert publishing_threads == {"msseg_publisher" if pipelined else "msseg_worker"}


def test_frames_are_taken_by_their_own_thread_not_the_executor(tiny_checkpoint) -> None:  # noqa: F811
    """The image subscription is never in the executor's wait set; the msseg_input thread takes its frames
    (direct_take.py says why), and it is gone once the subscriptions are (cleanup)."""
    from rclpy.lifecycle import TransitionCallbackReturn

    ns = namespace("direct_take")
    with InProcessNode({"checkpoint": str(tiny_checkpoint)}, ns) as node:
        seg, taken_by = node.node, set()
        sub = seg.cameras[0].image_sub
        assert not sub.callback_group.can_execute(sub)  # the executor leaves it alone
        callback = seg.image_callback

        def spy(msg, camera):
            taken_by.add(threading.current_thread().name)
            callback(msg, camera)

        seg.image_callback = spy
        with SegmentationClient(ns, outputs=("labels",), name="direct_take_client") as c:
            c.wait_until_served()
            c.request(rgb_image(random_rgb(30, 44)))
        assert taken_by == {"msseg_input"}
        assert seg.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert seg.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert "msseg_input" not in {t.name for t in threading.enumerate()}


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


MALFORMED = [{"step": 10}, {"data": bytes(100)}, {"encoding": "32FC1"},
             {"width": 0, "height": 0, "step": 0, "data": b""},
             {"width": 100, "height": 100, "step": 300}]  # over max_input_pixels (5000), data too short too


def test_bad_frames_and_failures_are_counted_and_survived(tiny_checkpoint, reference: Segmenter) -> None:  # noqa: F811
    """Malformed frames (step too small, truncated data, unknown encoding, 0x0, oversized) count as
    invalid; an exception in inference (e.g. CUDA out of memory) loses that frame only. The node
    answers the next good frame every time."""
    ns = namespace("seg_bad")
    with InProcessNode({"checkpoint": str(tiny_checkpoint), "max_input_pixels": 5000}, ns) as node, \
            SegmentationClient(ns) as c:
        c.wait_until_served()
        counters_ = node.node.counters
        for fields in MALFORMED:
            msg = image_in_encoding(random_rgb(8, 8), "rgb8")
            for key, value in fields.items():
                setattr(msg, key, value)
            invalid = counters_.invalid
            c.publish(msg)
            assert wait_until(lambda invalid=invalid: counters_.invalid == invalid + 1), fields
            rgb = random_rgb(16, 24, seed=11)
            sent = rgb_image(rgb)
            check_outputs(c.request(sent), sent, reference, rgb)
        # Bytes that are not a serialized Image at all (the node deserializes frames itself).
        serialized = serialize_message(image_in_encoding(random_rgb(8, 8), "rgb8"))
        for garbage in (serialized[: len(serialized) // 2], b"\x00\x01\x00\x00" + bytes(range(200))):
            invalid = counters_.invalid
            c.image_pub.publish(garbage)
            assert wait_until(lambda invalid=invalid: counters_.invalid == invalid + 1), garbage[:16]
            rgb = random_rgb(16, 24, seed=12)
            sent = rgb_image(rgb)
            check_outputs(c.request(sent), sent, reference, rgb)

        real = node.node.segmenter.run_network
        calls = []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(*args, **kwargs)

        node.node.segmenter.run_network = failing
        lost = c.publish(rgb_image(random_rgb(8, 8)))
        assert wait_until(lambda: counters_.errors == 1)
        c.request(rgb_image(random_rgb(8, 8)))
        assert lost not in c.received
        # every frame has one end; `skipped`: a probe of wait_until_served that came before the node saw our
        # subscriptions (a loaded machine's slow discovery)
        assert counters_.received == (counters_.processed + counters_.dropped + counters_.invalid + counters_.errors
                                      + counters_.skipped), counters_



def test_input_durability_override_gets_frames_sent_before_the_node_matched(tiny_checkpoint):
    """A replay of a few frames must not be lost to a node whose side of the match completes late
    (msseg-demo's bag replay on a loaded machine): with `qos_overrides.<image>.subscription.durability:
    transient_local` (and reliable) the node is sent what a transient_local camera published before the match."""
    ns = namespace("late")
    topic = topics.in_namespace(ns, topics.IMAGE)
    overrides = {f"qos_overrides.{topic}.subscription.reliability": "reliable",
                 f"qos_overrides.{topic}.subscription.durability": "transient_local"}
    with InProcessNode({"checkpoint": str(tiny_checkpoint), **overrides}, ns) as node, PrivateContext() as ros:
        sub = node.node.cameras[0].image_sub
        assert (sub.qos_profile.durability, sub.qos_profile.reliability) == (
            DurabilityPolicy.TRANSIENT_LOCAL, ReliabilityPolicy.RELIABLE)
        camera = ros.create_node("late_camera")
        pub = camera.create_publisher(Image, topic, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                                                durability=DurabilityPolicy.TRANSIENT_LOCAL))
        for i in range(3):  # at once: discovery has not matched the node's reader yet (a volatile one loses them)
            pub.publish(rgb_image(random_rgb(24, 32, seed=i), make_header()))
        deadline = time.monotonic() + 20.0
        while node.node.stats.snapshot()["received"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # and nothing more comes
        counts = node.node.stats.snapshot()
        assert (counts["received"], counts["ignored"]) == (3, 0), counts
