"""Bad input, fuzzed: hypothesis-generated sensor_msgs/Image and CompressedImage messages (valid and
invalid encodings, 0x0 up to 4-gigapixel claims, step smaller or larger than a row, truncated and
oversized data, corrupt JPEG / PNG, decompression bombs, path-like strings in every text field).

1. The decoder alone, thousands of examples: a message becomes an H x W x 3 uint8 image of the size it
   declares and within max_pixels, or an ImageDecodeError; never another exception; a compressed image
   whose header claims too many pixels is refused before OpenCV is asked to decode it; well-formed
   messages always decode (exactly for rgb8 and PNG).
2. The real node over real DDS (in-process, so every message can be followed): batches of generated
   messages, published one at a time; each is counted invalid exactly when the decoder refuses it and
   processed otherwise; after every batch a valid frame is answered with the labels Segmenter.predict
   gives; received = processed + dropped + invalid + errors + skipped; the worker thread lives, no
   thread or memory leaks, and /diagnostics reports the same counters.

Derandomized (the same examples on every run), deadline-free, sized to run in about a minute on a
2-core shared machine.
"""

from __future__ import annotations

import array
import struct
import threading
import time
import zlib
from collections import deque

import cv2
import numpy as np
import psutil
import pytest
from helpers_ros import (
    FAST_PARAMS,
    InProcessNode,
    SegmentationClient,
    frame_counters,
    image_array,
    make_header,
    namespace,
    random_rgb,
    rgb_image,
    stamp_key,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

import msseg_ros.transport.image_codec as codec
from msseg_core.runtime.segmenter import Segmenter
from msseg_ros.node.pipeline import COUNTERS, all_accounted
from msseg_ros.transport.image_codec import DECODABLE_ENCODINGS, ImageDecodeError, decode, encode_compressed

pytestmark = pytest.mark.ros
# Bytes per pixel of each supported encoding, written out here (not imported) so the test is an oracle.
BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2, "bayer_rggb8": 1,
                   "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1, "yuv422": 2, "yuv422_yuy2": 2}
assert set(BYTES_PER_PIXEL) == set(DECODABLE_ENCODINGS)
PATH_LIKE = ["../../../../etc/passwd", "/dev/zero", "/tmp/msseg_fuzz/../../x", "~/.ssh/id_rsa", "C:\\Windows\\x",
             "file:///etc/shadow", "rgb8/../../../x", "%s%s%n", "${HOME}", "$(touch /tmp/pwned)"]
INVALID_ENCODINGS = ["", "32FC1", "16UC1", "8UC3", "bayer_rggb16", "nv12", "yuv420", "jpeg", "rgb16", "bgr16",
                     "rgba16", " RGB8 ", "Mono8", "ｒｇｂ８", *PATH_LIKE]
FORMATS = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed", "16UC1; compressedDepth png",
           "", "JPEG", "tiff", *PATH_LIKE]
# Text as ROS carries it: any Unicode but lone surrogates (not UTF-8) and NUL (ends a C string).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=16)
HUGE = [2**15, 65535, 65536, 100_000, 2**31 - 1, 2**32 - 1]
UINT32 = 2**32 - 1
DATA_CAP = 2**18  # bytes of pixel data per generated message (256 KB): over the limit with real data
NODE_MAX_PIXELS = 64 * 64  # the node's max_input_pixels in these tests
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


# -- generated messages ------------------------------------------------------------------------------
def _noise(n: int, seed: int) -> array.array:
    data = array.array("B")
    data.frombytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return data


def _clip(value: int, high: int = UINT32) -> int:
    return min(max(int(value), 0), high)


@st.composite
def well_formed_raw_images(draw: st.DrawFn) -> Image:
    """A valid Image of any supported encoding, with or without row padding and trailing bytes."""
    encoding = draw(st.sampled_from(DECODABLE_ENCODINGS))
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    if encoding.startswith("yuv422"):
        width += width % 2
    step = width * BYTES_PER_PIXEL[encoding] + draw(st.sampled_from([0, 0, 1, 3, 8]))
    msg = Image(header=make_header(draw(st.one_of(st.just("camera"), st.sampled_from(PATH_LIKE), TEXT))),
                height=height, width=width, encoding=encoding, is_bigendian=draw(st.sampled_from([0, 1])),
                step=step)
    msg.data = _noise(step * height + draw(st.sampled_from([0, 0, 5, 100])), draw(st.integers(0, 2**32 - 1)))
    return msg


@st.composite
def near_valid_raw_images(draw: st.DrawFn) -> Image:
    """An Image: mostly near-valid (so every check in the decoder is reached), sometimes anything."""
    encoding = draw(st.one_of(st.sampled_from(DECODABLE_ENCODINGS), st.sampled_from(INVALID_ENCODINGS), TEXT))
    bpp = BYTES_PER_PIXEL.get(encoding.strip().lower()) or draw(st.integers(1, 4))
    size = st.one_of(st.integers(0, 80), st.integers(0, 80), st.integers(0, 400), st.sampled_from(HUGE),
                     st.integers(0, UINT32))
    width, height = draw(size), draw(size)
    row = width * bpp
    step = _clip(draw(st.one_of(st.just(row), st.integers(-4, 24).map(lambda d: row + d), st.integers(0, UINT32))))
    need = step * height
    length = _clip(draw(st.one_of(st.just(need), st.integers(-64, 64).map(lambda d: need + d),
                                  st.integers(0, 4096), st.integers(0, DATA_CAP))), DATA_CAP)
    msg = Image(header=make_header(draw(st.one_of(st.just("camera"), st.sampled_from(PATH_LIKE), TEXT))),
                height=height, width=width, encoding=encoding, is_bigendian=draw(st.sampled_from([0, 1, 255])),
                step=step)
    msg.data = _noise(length, draw(st.integers(0, 2**32 - 1)))
    return msg


def raw_images() -> st.SearchStrategy[Image]:
    return st.one_of(near_valid_raw_images(), near_valid_raw_images(), well_formed_raw_images())


def _jpeg_with_metadata(jpeg: bytes, segments: int) -> bytes:
    """The same JPEG with `segments` 64 KB APP1 segments before its frame header."""
    app = b"\xff\xe1" + struct.pack(">H", 65535) + bytes(65533)
    return jpeg[:2] + app * segments + jpeg[2:]


def _claim_size(data: bytes, width: int, height: int) -> bytes:
    """Patch the size in a PNG IHDR (CRC fixed, so only the size lies) or in a JPEG's first SOF."""
    if data.startswith(codec.PNG_SIGNATURE):
        ihdr = struct.pack(">II", width & UINT32, height & UINT32) + data[24:29]
        return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]
    i = data.find(b"\xff\xc0")
    if i < 0:
        i = data.find(b"\xff\xc2")
    if i < 0:
        return data
    return data[:i + 5] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF) + data[i + 9:]


def _encoded(kind: str, rgb: np.ndarray) -> bytes:
    ext = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff"}[kind]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@st.composite
def compressed_images(draw: st.DrawFn) -> tuple[CompressedImage, dict]:
    """A CompressedImage and what it is: {'kind', 'mutation', 'rgb' (the encoded image), 'claimed'}."""
    kind = draw(st.sampled_from(["png", "jpeg", "png", "jpeg", "webp", "bmp", "tiff", "random", "empty"]))
    h, w = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    seed = draw(st.integers(0, 2**32 - 1))
    rgb = random_rgb(h, w, seed=seed % 1000)
    if kind == "random":
        data = bytes(_noise(draw(st.integers(1, 4096)), seed))
        if draw(st.booleans()):  # random bytes behind a real signature
            data = draw(st.sampled_from([codec.PNG_SIGNATURE, b"\xff\xd8\xff\xe0", b"\xff\xd8"])) + data
    elif kind == "empty":
        data = b""
    else:
        data = _encoded(kind, rgb)
    mutation = draw(st.sampled_from(["none", "none", "truncate", "flip", "append", "claim", "metadata"]))
    claimed = None
    if mutation == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif mutation == "flip" and data:
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(buf)
    elif mutation == "append":
        data += bytes(_noise(draw(st.integers(1, 2048)), seed + 1))
    elif mutation == "claim" and kind in ("png", "jpeg"):
        claimed = (draw(st.one_of(st.integers(0, 200), st.sampled_from(HUGE))),
                   draw(st.one_of(st.integers(0, 200), st.sampled_from(HUGE))))
        data = _claim_size(data, *claimed)
        if kind == "jpeg":
            claimed = (claimed[0] & 0xFFFF, claimed[1] & 0xFFFF)
            if draw(st.booleans()):  # and its frame header far from the start
                data = _jpeg_with_metadata(data, draw(st.integers(1, 3)))
    elif mutation == "metadata" and kind == "jpeg":  # frame header beyond the first 64 KB
        data = _jpeg_with_metadata(data, draw(st.integers(1, 3)))
    msg = CompressedImage(header=make_header(draw(st.one_of(st.just("camera"), st.sampled_from(PATH_LIKE), TEXT))),
                          format=draw(st.one_of(st.sampled_from(FORMATS), TEXT)))
    msg.data = array.array("B", data)
    return msg, {"kind": kind, "mutation": mutation, "rgb": rgb, "claimed": claimed}


# -- 1. the decoder alone ----------------------------------------------------------------------------
def _well_formed(msg: Image, max_pixels: int) -> bool:
    enc = msg.encoding.strip().lower()
    if enc not in BYTES_PER_PIXEL or not 0 < msg.width * msg.height <= max_pixels:
        return False
    if enc.startswith("yuv422") and msg.width % 2:
        return False
    return msg.step >= msg.width * BYTES_PER_PIXEL[enc] and len(msg.data) >= msg.step * msg.height


@settings(max_examples=2000, **FUZZ_SETTINGS)
@given(msg=raw_images(), max_pixels=st.sampled_from([NODE_MAX_PIXELS, 100_000, codec.DEFAULT_MAX_PIXELS]))
def test_decode_fuzzed_raw_images(msg: Image, max_pixels: int) -> None:
    try:
        out = decode(msg, max_pixels)
    except ImageDecodeError as exc:
        event("rejected")
        assert str(exc), "an empty error message"
        assert not _well_formed(msg, max_pixels), f"well-formed message refused: {exc}"
        return
    event("decoded")
    assert _well_formed(msg, max_pixels), "a malformed message was decoded"
    assert out.dtype == np.uint8 and out.shape == (msg.height, msg.width, 3) and out.flags.c_contiguous
    if msg.encoding.strip().lower() == "rgb8":
        rows = np.frombuffer(msg.data, np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)
        np.testing.assert_array_equal(out, rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3))


@settings(max_examples=1500, **FUZZ_SETTINGS)
@given(case=compressed_images(), max_pixels=st.sampled_from([NODE_MAX_PIXELS, 1000, codec.DEFAULT_MAX_PIXELS]))
def test_decode_fuzzed_compressed_images(case: tuple[CompressedImage, dict], max_pixels: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    msg, what = case
    decoded: list[tuple | None] = []  # every call of cv2.imdecode: the shape it returned
    real_imdecode = cv2.imdecode

    def imdecode(buf, flags):
        out = real_imdecode(buf, flags)
        decoded.append(None if out is None else out.shape)
        return out

    with monkeypatch.context() as m:
        m.setattr(codec.cv2, "imdecode", imdecode)
        try:
            out = decode(msg, max_pixels)
        except ImageDecodeError as exc:
            out, error = None, str(exc)
    # No decompression bombs: OpenCV never decodes an image over the limit, nor anything but PNG / JPEG.
    for shape in decoded:
        assert shape is None or shape[0] * shape[1] <= max_pixels, shape
    if what["kind"] in ("webp", "bmp", "tiff", "empty"):
        assert not decoded, what["kind"]
    h, w = what["rgb"].shape[:2]
    intact = what["mutation"] == "none" and what["kind"] in ("png", "jpeg") and "compresseddepth" not in \
        msg.format.lower()
    if intact and h * w <= max_pixels:
        assert out is not None, f"a valid {what['kind']} was refused: {error}"
        assert out.shape == (h, w, 3)
        if what["kind"] == "png":
            np.testing.assert_array_equal(out, what["rgb"])
    if what["kind"] in ("webp", "bmp", "tiff") or "compresseddepth" in msg.format.lower():
        assert out is None, what["kind"]
    if what["claimed"] is not None and what["claimed"][0] * what["claimed"][1] > max_pixels:
        assert out is None and not decoded, f"claimed {what['claimed']} > {max_pixels} px was decoded"
    event("decoded" if out is not None else "rejected")
    if out is not None:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
        assert 0 < out.shape[0] * out.shape[1] <= max_pixels
    else:
        assert error


# -- 1b. the serialized bytes the node's raw subscription delivers -----------------------------------
MUTATIONS = ("none", "truncate", "flip", "big_word", "random")


@st.composite
def serialized_frames(draw: st.DrawFn) -> tuple[bytes, Image | CompressedImage, str, str]:
    """A generated Image or CompressedImage, serialized by rclpy, then possibly damaged."""
    from rclpy.serialization import serialize_message

    msg = draw(raw_images()) if draw(st.booleans()) else draw(compressed_images())[0]
    msgtype = codec.COMPRESSED_TYPE if isinstance(msg, CompressedImage) else codec.IMAGE_TYPE
    data = bytearray(serialize_message(msg))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif mutation == "big_word":  # e.g. a string or sequence length claiming gigabytes
        i = draw(st.integers(0, max(0, len(data) - 4) // 4)) * 4
        data[i:i + 4] = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, len(data) + 1])).to_bytes(4, "little")
    elif mutation == "random":
        data = bytearray(draw(st.binary(max_size=4096)))
    return bytes(data), msg, msgtype, mutation


@settings(max_examples=1500, **FUZZ_SETTINGS)
@given(case=serialized_frames())
def test_decode_fuzzed_serialized_frames(case: tuple[bytes, Image | CompressedImage, str, str]) -> None:
    """Whatever bytes arrive: an RGB image within the limit, or ImageDecodeError; intact bytes decode
    exactly as the message itself does."""
    data, msg, msgtype, mutation = case
    try:
        header, out = codec.decode_serialized(data, msgtype, NODE_MAX_PIXELS)
    except ImageDecodeError as exc:
        event(f"{mutation}: rejected")
        assert str(exc)
        if mutation == "none":
            with pytest.raises(ImageDecodeError):
                decode(msg, NODE_MAX_PIXELS)
        return
    event(f"{mutation}: decoded")
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    assert 0 < out.shape[0] * out.shape[1] <= NODE_MAX_PIXELS
    if mutation == "none":
        np.testing.assert_array_equal(out, decode(msg, NODE_MAX_PIXELS))
        assert header == msg.header


# -- 2. the node -------------------------------------------------------------------------------------
BATCHES = {"raw": 80, "compressed": 60}
BATCH_SIZE = 25
REPLAY, REPLAY_ROUNDS = 250, 4


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> Segmenter:  # noqa: F811
    return Segmenter.from_checkpoint(tiny_checkpoint, **FAST_PARAMS)




def wait_settled(node, received: int, timeout: float = 15.0) -> dict[str, int]:
    """Counters once the node has received `received` frames in all and finished with every one."""
    deadline = time.monotonic() + timeout
    while True:
        c = frame_counters(node)
        if c["received"] == received and all_accounted(c):
            return c
        assert c["received"] <= received, f"more frames received than published: {c}"
        assert time.monotonic() < deadline, f"frame {received} not received and finished in {timeout} s: {c}"
        time.sleep(0.001)


@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_node_survives_fuzzed_frames(tiny_checkpoint, reference: Segmenter, transport: str) -> None:  # noqa: F811
    ns = namespace(f"fuzz_{transport}")
    compressed = transport == "compressed"
    params = {"checkpoint": str(tiny_checkpoint), "input_transport": transport, "max_input_pixels": NODE_MAX_PIXELS}
    valid_rgb = random_rgb(24, 32, seed=5)
    expected_labels = reference.predict(valid_rgb)  # one thread, like the node

    def valid_frame() -> Image | CompressedImage:
        return encode_compressed(valid_rgb, make_header(), "png") if compressed else rgb_image(valid_rgb)

    with InProcessNode(params, ns) as node, \
            SegmentationClient(ns, outputs=("labels",), compressed=compressed, reliability="reliable") as client:
        seg = node.node
        client.wait_until_served(valid_frame)
        base = wait_settled(seg, frame_counters(seg)["received"])
        process = psutil.Process()
        threads_before = threading.active_count()
        tally = {"published": 0, "invalid": 0, "processed": 0}  # generated messages, replays counted once
        rss: list[int] = []

        def publish_and_check(msg: Image | CompressedImage, expect_invalid: bool) -> None:
            before = frame_counters(seg)
            client.publish(msg)
            after = wait_settled(seg, before["received"] + 1)
            delta = {k: after[k] - before[k] for k in COUNTERS}
            want = {"received": 1, "processed": int(not expect_invalid), "dropped": 0, "invalid": int(expect_invalid),
                    "errors": 0, "skipped": 0}
            assert delta == want, (delta, msg.encoding if isinstance(msg, Image) else msg.format)
            tally["published"] += 1

        def check_valid_frame() -> None:
            sent = valid_frame()
            publish_and_check(sent, expect_invalid=False)
            labels = image_array(client.wait_for(stamp_key(sent.header), timeout=10)["labels"])
            np.testing.assert_array_equal(labels, expected_labels)
            client.received.clear()  # keep the client's memory flat too
            assert seg.threads_alive()
            rss.append(process.memory_info().rss)

        strategy = compressed_images().map(lambda case: case[0]) if compressed else raw_images()
        recent: deque[tuple[Image | CompressedImage, bool]] = deque(maxlen=REPLAY)

        @settings(max_examples=BATCHES[transport], **FUZZ_SETTINGS)
        @given(batch=st.lists(strategy, min_size=BATCH_SIZE, max_size=BATCH_SIZE))
        def run_batch(batch: list[Image | CompressedImage]) -> None:
            for msg in batch:
                try:
                    decode(msg, NODE_MAX_PIXELS)
                    expect_invalid = False
                except ImageDecodeError:
                    expect_invalid = True
                publish_and_check(msg, expect_invalid)
                tally["invalid" if expect_invalid else "processed"] += 1
                recent.append((msg, expect_invalid))
            check_valid_frame()

        run_batch()

        # Leaks: the last REPLAY generated messages again, several rounds, hypothesis out of the loop (it
        # keeps growing bookkeeping of its own); after the first round the process stays flat.
        rss.clear()
        for _ in range(REPLAY_ROUNDS):
            for msg, expect_invalid in recent:
                publish_and_check(msg, expect_invalid)
            check_valid_frame()
        assert rss[-1] - rss[0] < 8 * 2**20, f"RSS grew while replaying: {[r // 2**20 for r in rss]} MiB"

        final = wait_settled(seg, frame_counters(seg)["received"])
        delta = {k: final[k] - base[k] for k in COUNTERS}
        assert delta["received"] == tally["published"]
        assert tally["published"] >= (BATCHES[transport] + REPLAY_ROUNDS) * BATCH_SIZE
        assert delta["invalid"] > 0 and delta["errors"] == delta["skipped"] == delta["dropped"] == 0
        assert all_accounted(final)
        assert seg.threads_alive() and threading.active_count() <= threads_before
        # /diagnostics reports the same counters (the rejected frames included).
        status = client.wait_for_status(seg.get_fully_qualified_name(), timeout=10)
        assert {k: int(status[k]) for k in COUNTERS} == final
        print(f"\n{transport}: {tally['invalid'] + tally['processed']} generated messages ({tally['invalid']} "
              f"rejected as invalid, {tally['processed']} processed); {tally['published']} published with the "
              f"check frames and replays; node counters {final}; crashes 0; "
              f"RSS while replaying {[r // 2**20 for r in rss]} MiB")
