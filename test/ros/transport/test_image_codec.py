"""image_codec: every encoding against known pixels, row padding, endianness, and garbage in."""

from __future__ import annotations

import array
import struct
import zlib

import cv2
import numpy as np
import pytest
from helpers_ros import image_in_encoding, make_header, random_rgb
from sensor_msgs.msg import CompressedImage, Image

from msseg_ros.transport.image_codec import (
    COMPRESSED_TYPE,
    DECODABLE_ENCODINGS,
    IMAGE_TYPE,
    ImageDecodeError,
    decode,
    decode_compressed,
    decode_image,
    decode_serialized,
    encode_compressed,
    encode_image,
)

pytestmark = pytest.mark.ros

SIZES = [(1, 1), (2, 3), (5, 7), (16, 16), (31, 17)]
PADDINGS = [0, 1, 3, 64]


def raw(data: bytes, width: int, height: int, encoding: str, step: int, big_endian: bool = False) -> Image:
    msg = Image(header=make_header(), width=width, height=height, encoding=encoding, step=step,
                is_bigendian=int(big_endian))
    msg.data = array.array("B", data)
    return msg


# -- exact colour encodings ----------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_colour_round_trip_exact(encoding: str, size: tuple[int, int], padding: int) -> None:
    rgb = np.random.default_rng(size[0] * 31 + padding).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = decode_image(image_in_encoding(rgb, encoding, padding=padding))
    assert out.dtype == np.uint8 and out.shape == (*size, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_channel_order_of_known_pixel() -> None:
    """One red pixel in each layout: catches a swapped R/B that a round trip through cv2 would hide."""
    for encoding, pixel in [("rgb8", [255, 0, 0]), ("bgr8", [0, 0, 255]), ("rgba8", [255, 0, 0, 9]),
                            ("bgra8", [0, 0, 255, 9])]:
        out = decode_image(raw(bytes(pixel), 1, 1, encoding, len(pixel)))
        assert out.tolist() == [[[255, 0, 0]]], encoding


def test_decoded_array_is_independent_of_the_message() -> None:
    msg = image_in_encoding(np.full((2, 2, 3), 7, np.uint8), "rgb8")
    out = decode_image(msg)
    msg.data[0] = 99
    assert out[0, 0, 0] == 7


@pytest.mark.parametrize("padding", [0, 5])
def test_rgb8_without_a_copy_is_a_view_only_where_rows_are_unpadded(padding: int) -> None:
    """The node's hot path (copy=False): no 2 MB copy per frame; padded rows still come back compact."""
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    msg = image_in_encoding(rgb, "rgb8", padding=padding)
    out = decode_image(msg, copy=False)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous and np.shares_memory(out, np.frombuffer(msg.data, np.uint8)) == (padding == 0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("padding", [0, 5])
def test_mono8_replicated(size: tuple[int, int], padding: int) -> None:
    gray = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
    msg = raw(np.pad(gray, ((0, 0), (0, padding))).tobytes(), size[1], size[0], "mono8", size[1] + padding)
    np.testing.assert_array_equal(decode_image(msg), np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("padding", [0, 2, 3])
def test_mono16_scaled_to_8_bit_with_endianness(big_endian: bool, padding: int) -> None:
    values = np.array([[0, 128, 129, 257], [32896, 65407, 65535, 1000]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 1], [128, 255, 255, 4]], dtype=np.uint8)  # round(v / 257)
    body = values.astype(">u2" if big_endian else "<u2").view(np.uint8).reshape(2, 8)
    data = np.pad(body, ((0, 0), (0, padding))).tobytes()
    out = decode_image(raw(data, 4, 2, "mono16", 8 + padding, big_endian))
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


# -- Bayer ---------------------------------------------------------------------------------------
BAYER = ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"]


@pytest.mark.parametrize("encoding", BAYER)
@pytest.mark.parametrize("padding", [0, 3])
def test_bayer_known_colour(encoding: str, padding: int) -> None:
    """A uniform colour through each filter pattern must come back as that colour (exactly, inside
    the border): a wrong OpenCV code swaps red and blue or mixes in green."""
    colour = (200, 90, 30)
    rgb = np.empty((8, 10, 3), np.uint8)
    rgb[:] = colour
    out = decode_image(image_in_encoding(rgb, encoding, padding=padding))
    assert out.shape == (8, 10, 3)
    assert (out[2:-2, 2:-2] == colour).all(), out[2:-2, 2:-2].reshape(-1, 3)[:4]


@pytest.mark.parametrize("encoding", BAYER)
def test_bayer_smooth_image_close(encoding: str) -> None:
    rgb = random_rgb(48, 64, seed=3)
    out = decode_image(image_in_encoding(rgb, encoding))
    err = np.abs(out[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2]).mean()
    assert err < 6, err


# -- YUV 4:2:2 -----------------------------------------------------------------------------------
def test_yuv422_byte_orders() -> None:
    """yuv422 is UYVY (U Y0 V Y1), yuv422_yuy2 is YUYV (Y0 U Y1 V): grey pixels dark then bright."""
    y0, y1 = 60, 200
    uyvy = raw(bytes([128, y0, 128, y1]), 2, 1, "yuv422", 4)
    yuyv = raw(bytes([y0, 128, y1, 128]), 2, 1, "yuv422_yuy2", 4)
    for msg in (uyvy, yuyv):
        out = decode_image(msg).astype(int)
        assert (out[0, 0] == out[0, 0, 0]).all() and (out[0, 1] == out[0, 1, 0]).all(), out  # grey
        assert abs(out[0, 0, 0] - y0) < 12 and abs(out[0, 1, 0] - y1) < 30, out
    swapped = raw(bytes([128, y0, 128, y1]), 2, 1, "yuv422_yuy2", 4)  # UYVY bytes read as YUYV
    assert not np.array_equal(decode_image(swapped), decode_image(uyvy))


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
@pytest.mark.parametrize("padding", [0, 4, 6])
def test_yuv422_smooth_image_close(encoding: str, padding: int) -> None:
    rgb = random_rgb(20, 32, seed=5)
    out = decode_image(image_in_encoding(rgb, encoding, padding=padding))
    assert out.shape == (20, 32, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 6


# -- every encoding --------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", DECODABLE_ENCODINGS)
@pytest.mark.parametrize("size", [(2, 2), (6, 8), (33, 50)])
@pytest.mark.parametrize("padding", [0, 7])
def test_every_encoding_decodes_to_rgb(encoding: str, size: tuple[int, int], padding: int) -> None:
    rgb = random_rgb(*size, seed=size[0])
    out = decode(image_in_encoding(rgb, encoding, padding=padding))
    assert out.dtype == np.uint8 and out.shape == (*size, 3) and out.flags.c_contiguous


def test_data_as_bytes_or_list() -> None:
    msg = image_in_encoding(np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "rgb8")
    for data in (bytes(msg.data), list(msg.data), np.frombuffer(bytes(msg.data), np.uint8)):
        fake = type("Msg", (), {"encoding": "rgb8", "width": 2, "height": 2, "step": 6, "is_bigendian": 0,
                                "data": data})()
        np.testing.assert_array_equal(decode_image(fake), np.arange(12).reshape(2, 2, 3))


# -- malformed -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"encoding": "32FC1"}, "unsupported encoding"),
    ({"encoding": ""}, "unsupported encoding"),
    ({"step": 11}, "step 11 is smaller"),
    ({"data": bytes(47)}, "48"),
    ({"width": 0, "height": 0, "step": 0, "data": b""}, "empty image"),
    ({"width": 4, "height": 0}, "empty image"),
    ({"width": 5000, "height": 5000, "step": 15000}, "over the limit"),
])
def test_malformed_raises_clear_error(kwargs: dict, message: str) -> None:
    fields = {"data": bytes(48), "width": 4, "height": 4, "step": 12, "encoding": "rgb8"} | kwargs
    data = fields.pop("data")
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(raw(data, fields["width"], fields["height"], fields["encoding"], fields["step"]))


def test_max_pixels_limit_is_configurable() -> None:
    msg = image_in_encoding(np.zeros((10, 10, 3), np.uint8), "rgb8")
    assert decode_image(msg, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageDecodeError, match="100 pixels, over the limit of 99"):
        decode_image(msg, max_pixels=99)


def test_odd_width_yuv_rejected() -> None:
    with pytest.raises(ImageDecodeError, match="even width"):
        decode_image(raw(bytes(6), 3, 1, "yuv422", 6))


def test_garbage_never_crashes() -> None:
    """Random headers and data: either a correct-shape RGB image or ImageDecodeError, nothing else."""
    rng = np.random.default_rng(0)
    encodings = [*DECODABLE_ENCODINGS, "RGB8", "bayer_rggb16", "nv12", "8UC3"]
    for _ in range(400):
        w, h = (int(v) for v in rng.integers(0, 12, 2))
        step = int(rng.integers(0, 50))
        data = rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
        msg = raw(data, w, h, str(rng.choice(encodings)), step, bool(rng.integers(0, 2)))
        try:
            out = decode_image(msg)
        except ImageDecodeError:
            continue
        assert out.shape == (h, w, 3) and out.dtype == np.uint8


# -- compressed ----------------------------------------------------------------------------------
def test_png_exact_and_jpeg_close() -> None:
    rgb = random_rgb(24, 40, seed=9)
    header = make_header()
    np.testing.assert_array_equal(decode(encode_compressed(rgb, header, "png")), rgb)
    jpeg = encode_compressed(rgb, header, "jpeg", quality=95)
    assert jpeg.header.stamp == header.stamp and jpeg.format == "jpeg"
    out = decode_compressed(jpeg)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 4


def test_grey_png_decodes_to_rgb() -> None:
    ok, buf = cv2.imencode(".png", np.full((3, 5), 77, np.uint8))
    msg = CompressedImage(format="png")
    msg.data = array.array("B", buf.tobytes())
    assert decode(msg).shape == (3, 5, 3) and (decode(msg) == 77).all()


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0" + bytes(100),
                                  b"\x89PNG\r\n\x1a\n" + bytes(30)])
def test_corrupt_compressed_raises(data: bytes) -> None:
    msg = CompressedImage(format="jpeg")
    msg.data = array.array("B", data)
    with pytest.raises(ImageDecodeError):
        decode_compressed(msg)


def test_truncated_png_raises() -> None:
    png = encode_compressed(random_rgb(16, 16), make_header(), "png")
    msg = CompressedImage(format="png")
    msg.data = png.data[: len(png.data) // 2]
    with pytest.raises(ImageDecodeError):
        decode_compressed(msg)


def test_compressed_size_checked_before_decoding() -> None:
    """A tiny PNG whose header claims 100000 x 100000 pixels is rejected without decoding it."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    msg = CompressedImage(format="png")
    msg.data = array.array("B", b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_compressed(msg)
    jpeg = encode_compressed(random_rgb(30, 40), make_header(), "jpeg")
    with pytest.raises(ImageDecodeError, match="40x30 has 1200 pixels"):
        decode_compressed(jpeg, max_pixels=1000)
    assert decode_compressed(jpeg, max_pixels=1200).shape == (30, 40, 3)


def test_compressed_depth_rejected() -> None:
    msg = CompressedImage(format="16UC1; compressedDepth png")
    msg.data = array.array("B", bytes(20))
    with pytest.raises(ImageDecodeError, match="compressedDepth"):
        decode(msg)


# -- serialized input (the node's raw subscription) -------------------------------------------------
@pytest.mark.parametrize("encoding", DECODABLE_ENCODINGS)
@pytest.mark.parametrize("padding", [0, 5])
def test_serialized_frames_decode_as_the_message_does(encoding: str, padding: int) -> None:
    from rclpy.serialization import serialize_message

    msg = image_in_encoding(random_rgb(6, 10, seed=padding), encoding, padding=padding)
    msg.header.frame_id = "camera_optical_frame"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_001, 999_999_999
    header, rgb = decode_serialized(serialize_message(msg), IMAGE_TYPE)
    np.testing.assert_array_equal(rgb, decode(msg))
    assert header == msg.header and type(header) is type(msg.header)


def test_serialized_rgb8_is_a_read_only_view_and_compressed_works() -> None:
    from rclpy.serialization import serialize_message

    rgb = random_rgb(12, 16, seed=4)
    data = serialize_message(image_in_encoding(rgb, "rgb8"))
    _, view = decode_serialized(data, IMAGE_TYPE, copy=False)
    np.testing.assert_array_equal(view, rgb)
    assert np.shares_memory(view, np.frombuffer(data, np.uint8)) and not view.flags.writeable
    _, copied = decode_serialized(data, IMAGE_TYPE)
    assert not np.shares_memory(copied, np.frombuffer(data, np.uint8))
    png = encode_compressed(rgb, make_header(), "png")
    header, out = decode_serialized(serialize_message(png), COMPRESSED_TYPE)
    np.testing.assert_array_equal(out, rgb)
    assert header == png.header


def test_malformed_serialized_frames_raise_clear_errors() -> None:
    from rclpy.serialization import serialize_message

    data = serialize_message(image_in_encoding(random_rgb(8, 8), "rgb8"))
    for bad in (data[: len(data) // 2], data[:3], b"", bytes(range(256)) * 3):
        with pytest.raises(ImageDecodeError, match="malformed sensor_msgs/msg/Image|image data has|empty image|"
                                                   "unsupported encoding|step"):
            decode_serialized(bad, IMAGE_TYPE)
    with pytest.raises(ValueError, match="msgtype must be"):
        decode_serialized(data, "sensor_msgs/msg/CameraInfo")


def test_decode_rejects_other_types() -> None:
    with pytest.raises(ImageDecodeError, match="not an image message"):
        decode("hello")  # type: ignore[arg-type]


# -- encoding --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("encoding", "shape", "dtype"), [
    ("mono8", (5, 7), np.uint8), ("rgb8", (5, 7, 3), np.uint8), ("bgr8", (1, 1, 3), np.uint8),
    ("rgba8", (4, 3, 4), np.uint8), ("mono16", (3, 2), np.uint16),
])
def test_encode_fields_and_header(encoding: str, shape: tuple[int, ...], dtype: type) -> None:
    header = make_header("cam_front")
    arr = np.random.default_rng(2).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    msg = encode_image(arr, encoding, header)
    assert msg.header is not header
    assert msg.header.stamp.sec == header.stamp.sec and msg.header.stamp.nanosec == header.stamp.nanosec
    assert msg.header.frame_id == "cam_front"
    assert (msg.height, msg.width, msg.encoding) == (shape[0], shape[1], encoding)
    assert msg.step == shape[1] * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    assert len(msg.data) == msg.step * msg.height and msg.is_bigendian == 0
    back = np.frombuffer(bytes(msg.data), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    np.testing.assert_array_equal(back, arr)


def test_encode_then_decode_mono8_and_rgb8() -> None:
    rgb = random_rgb(9, 13)
    np.testing.assert_array_equal(decode_image(encode_image(rgb, "rgb8", make_header())), rgb)
    gray = rgb[..., 0].copy()
    np.testing.assert_array_equal(decode_image(encode_image(gray, "mono8", make_header()))[..., 1], gray)


@pytest.mark.parametrize(("array_", "encoding"), [
    (np.zeros((2, 2, 3), np.uint8), "mono8"),
    (np.zeros((2, 2), np.uint8), "rgb8"),
    (np.zeros((2, 2, 3), np.float32), "rgb8"),
    (np.zeros((0, 2), np.uint8), "mono8"),
    (np.zeros((2, 2), np.uint8), "yuv422"),
])
def test_encode_rejects_mismatched_arrays(array_: np.ndarray, encoding: str) -> None:
    with pytest.raises(ValueError):
        encode_image(array_, encoding, make_header())
