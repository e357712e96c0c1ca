"""sensor_msgs Image / CompressedImage <-> numpy, without cv_bridge (not installable from PyPI).

Decoding always yields a C-contiguous H x W x 3 uint8 RGB array, the one input `Segmenter` takes.
Like cv_bridge, it trusts nothing in the message: `step` (row padding) and `is_bigendian` are
honoured, sizes are checked against the data before any pixel is touched, and every failure is an
`ImageDecodeError` (a ValueError) that says what was wrong, so a node can count the frame as invalid
and carry on instead of crashing on garbage from the wire.
"""

from __future__ import annotations

import array
import struct
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from msseg_ros.transport import cdr

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
DEFAULT_MAX_PIXELS = 4096 * 4096
"""Default limit on width x height; a corrupt header must not make us allocate gigabytes."""

# encoding -> (bytes per pixel, OpenCV conversion to RGB or None). Bayer codes: OpenCV names a
# pattern after the 2x2 block starting at (1, 1), not (0, 0), so ROS "rggb" is OpenCV "BG"
# (the test suite checks every pattern against a known mosaic).
_RAW: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "mono16": (2, None),
    "bayer_rggb8": (1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, cv2.COLOR_BayerGB2RGB),
    "yuv422": (2, cv2.COLOR_YUV2RGB_UYVY),  # ROS "yuv422" is UYVY byte order
    "yuv422_yuy2": (2, cv2.COLOR_YUV2RGB_YUY2),  # YUYV
}
DECODABLE_ENCODINGS: tuple[str, ...] = tuple(_RAW)
"""Every raw encoding `decode_image` accepts."""

# encoding -> (channels, dtype) for the encoder; enough for the node's outputs and for tests.
_ENCODABLE: dict[str, tuple[int, np.dtype]] = {
    "mono8": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
}
ENCODABLE_ENCODINGS: tuple[str, ...] = tuple(_ENCODABLE)


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an RGB image; the text says why."""


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image {width}x{height} has {width * height} pixels, over the limit of {max_pixels}")


def _as_bytes(data: Any) -> np.ndarray:
    """The message's data as a flat uint8 array, without a copy where the buffer allows."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else np.frombuffer(data.tobytes(), np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # array.array('B'), bytes, memoryview: zero copy
    except TypeError:
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)  # a plain list of ints
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageDecodeError(f"image data is not a byte buffer: {exc}") from None


def decode_image(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS, copy: bool = True) -> np.ndarray:
    """sensor_msgs/Image -> H x W x 3 uint8 RGB, a new array; with copy=False an unpadded rgb8 frame
    comes back as a view of the message's buffer (the node's hot path, where a 2 MB copy costs more
    than a millisecond); it keeps the buffer alive, and nothing may write to it."""
    encoding = str(msg.encoding).strip().lower()
    if encoding not in _RAW:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r}; supported: {', '.join(DECODABLE_ENCODINGS)}")
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, max_pixels)
    bpp, code = _RAW[encoding]
    row_bytes = width * bpp
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than width x bytes per pixel = {width} x {bpp} = {row_bytes}"
                               f" ({encoding})")
    data = _as_bytes(msg.data)
    if data.size < step * height:
        raise ImageDecodeError(f"image data has {data.size} bytes, step x height needs {step * height}")
    if encoding.startswith("yuv422") and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width (two pixels share U and V), got {width}")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]  # drops row padding
    try:
        if encoding == "mono16":
            mono = rows.reshape(height, width, 2).view(">u2" if msg.is_bigendian else "<u2")[..., 0]
            # Round to nearest: 65535 -> 255, 257 * k -> k.
            mono8 = ((mono.astype(np.uint32) + 128) // 257).astype(np.uint8)
            return cv2.cvtColor(mono8, cv2.COLOR_GRAY2RGB)
        pixels = rows.reshape(height, width) if bpp == 1 else rows.reshape(height, width, bpp)
        if code is None:  # rgb8
            if not copy and pixels.flags.c_contiguous:
                return pixels
            return pixels.copy()  # C-contiguous, and independent of the message's buffer
        return cv2.cvtColor(np.ascontiguousarray(pixels), code)
    except cv2.error as exc:  # e.g. an image too small for the demosaic kernel
        raise ImageDecodeError(f"cannot convert {width}x{height} {encoding}: {exc.msg.strip() or exc}") from None


# -- compressed --------------------------------------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
_JPEG_MAX_MARKERS = 1024  # segments before the frame header; real files have a few dozen at most


def _compressed_size(buf: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, read before decoding (a small file can claim a huge
    image); None when the header holds no size we can read. The whole JPEG is searched for its frame
    header (metadata segments before it can be several times 64 KB), at most _JPEG_MAX_MARKERS markers."""
    if buf[:8] == PNG_SIGNATURE and len(buf) >= 24 and buf[12:16] == b"IHDR":
        w, h = struct.unpack(">II", buf[16:24])
        return w, h
    if buf[:2] == JPEG_SOI:
        i = 2
        for _ in range(_JPEG_MAX_MARKERS):
            if i + 4 > len(buf):
                return None
            if buf[i] != 0xFF:  # stray bytes between segments: libjpeg skips to the next marker, so do we
                i = buf.find(b"\xff", i)
                if i < 0:
                    return None
                continue
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            if marker in (0xDA, 0xD9):  # scan data or the end before any frame header: not a usable JPEG
                return None
            (length,) = struct.unpack(">H", buf[i + 2:i + 4])
            # Start-of-frame markers (baseline, progressive, ...; not DHT/JPG/DAC) carry the size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > len(buf):
                    return None
                h, w = struct.unpack(">HH", buf[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def decode_compressed(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG, what compressed_image_transport sends) -> H x W x 3 uint8
    RGB. The size in the header is checked against max_pixels before anything is decoded; other formats
    (WebP, TIFF, BMP, ...) are refused, as their decoders would allocate whatever size a header claims."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise ImageDecodeError(f"compressedDepth images are not camera frames (format {msg.format!r})")
    buf = _as_bytes(msg.data)
    if buf.size == 0:
        raise ImageDecodeError("compressed image has no data")
    head = buf[:8].tobytes()
    if not (head.startswith(PNG_SIGNATURE) or head.startswith(JPEG_SOI)):
        raise ImageDecodeError(f"compressed image is neither PNG nor JPEG (format {msg.format!r}, starts with "
                               f"{head.hex()})")
    size = _compressed_size(buf.tobytes())
    if size is None:
        raise ImageDecodeError(f"cannot decode compressed image (format {msg.format!r}): no image size in its "
                               f"{'PNG' if head.startswith(PNG_SIGNATURE) else 'JPEG'} header")
    _check_size(size[0], size[1], max_pixels)
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"cannot decode compressed image (format {msg.format!r}): {exc.msg.strip()}") from None
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageDecodeError(f"cannot decode compressed image (format {msg.format!r}, {buf.size} bytes)")
    _check_size(bgr.shape[1], bgr.shape[0], max_pixels)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode(msg: Image | CompressedImage | Any, max_pixels: int = DEFAULT_MAX_PIXELS, copy: bool = True) -> np.ndarray:
    """Either message type, from rclpy or from `rosbags` -> H x W x 3 uint8 RGB (copy: see decode_image)."""
    msgtype = getattr(msg, "__msgtype__", None)  # rosbags messages: bags, serialized input
    if isinstance(msg, CompressedImage) or msgtype == COMPRESSED_TYPE:
        return decode_compressed(msg, max_pixels)
    if isinstance(msg, Image) or msgtype == IMAGE_TYPE:
        return decode_image(msg, max_pixels, copy)
    raise ImageDecodeError(f"not an image message: {msgtype or type(msg).__name__}")


def decode_serialized(raw: bytes, msgtype: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                      copy: bool = True) -> tuple[Header, np.ndarray]:
    """A serialized Image or CompressedImage (what a raw subscription delivers) -> (its header, RGB).

    The node subscribes raw so that a frame it drops costs no deserialization (see cdr.py); only the
    frame it processes is deserialized, here. Malformed bytes are an ImageDecodeError like any bad frame.
    """
    if msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
        raise ValueError(f"msgtype must be {IMAGE_TYPE} or {COMPRESSED_TYPE}, got {msgtype!r}")
    try:
        msg = cdr.deserialize(memoryview(raw), msgtype)  # pixel data: a read-only view of `raw`, no copy
    except Exception as exc:  # the deserializer raises struct, index, unicode or value errors on garbage
        raise ImageDecodeError(f"malformed {msgtype} message ({len(raw)} bytes): {type(exc).__name__}: "
                               f"{exc}") from None
    return copy_header(msg.header), decode(msg, max_pixels, copy)


# -- encoding ----------------------------------------------------------------------------------
def copy_header(header: Header | Any) -> Header:
    """A new (rclpy) Header with the same stamp and frame_id, from an rclpy or a rosbags header:
    outputs carry the input's header unchanged."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id)


def encode_image(image: np.ndarray, encoding: str, header: Header) -> Image:
    """numpy -> sensor_msgs/Image with the given header (copied); no colour conversion is done, the
    array must already be in `encoding`'s layout (H x W for mono, H x W x C otherwise)."""
    if encoding not in _ENCODABLE:
        raise ValueError(f"cannot encode {encoding!r}; supported: {', '.join(ENCODABLE_ENCODINGS)}")
    channels, dtype = _ENCODABLE[encoding]
    image = np.asarray(image)
    if image.ndim == 3 and channels == 1 and image.shape[2] == 1:
        image = image[..., 0]
    expected = image.ndim == 2 if channels == 1 else image.ndim == 3 and image.shape[2] == channels
    if not expected or image.dtype != dtype or image.shape[0] < 1 or image.shape[1] < 1:
        layout = "H x W" if channels == 1 else f"H x W x {channels}"
        raise ValueError(f"{encoding} needs a non-empty {layout} {dtype} array, got {image.dtype} {image.shape}")
    msg = Image()
    msg.header = copy_header(header)
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0  # numpy native order on every platform we run on (little-endian)
    if dtype.itemsize > 1:
        image = image.astype(dtype.newbyteorder("<"), copy=False)
    msg.step = msg.width * channels * dtype.itemsize
    # array.array('B') is what the generated setter stores as-is; anything else is checked per byte.
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(image).reshape(-1).view(np.uint8))  # one copy
    msg.data = data
    return msg


def encode_compressed(rgb: np.ndarray, header: Header, fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    """H x W x 3 uint8 RGB -> sensor_msgs/CompressedImage ('jpeg' or 'png'), header copied."""
    fmt = fmt.lower()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"compressed format must be jpeg or png, got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode {rgb.shape} as {fmt}")
    msg = CompressedImage()
    msg.header = copy_header(header)
    msg.format = fmt
    msg.data = array.array("B", buf.tobytes())
    return msg
