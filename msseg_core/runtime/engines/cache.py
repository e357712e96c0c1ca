"""On-disk cache of compiled engines (OpenVINO blobs, TensorRT plans) that is never trusted blindly.

An engine compiled for other weights, another input size, another engine version or another device is
wrong or unloadable, and a truncated or flipped file can crash a deserialiser instead of raising. So
each cached blob has a JSON sidecar holding the full key it was built for and the SHA-256 of its
bytes. A blob is handed to the engine only when the sidecar's key equals the wanted key and the
bytes hash to the recorded value; anything else (stale, corrupt, half written, unloadable) is rebuilt
and replaced. The file name carries a digest of the key, so configurations never overwrite each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from msseg_core.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")


def key_digest(key: dict) -> str:
    """A short stable digest of a JSON-able key (file names, choice caches)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks (ONNX files and engines are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def blob_path(directory: str | os.PathLike, name: str, key: dict) -> Path:
    """Where the engine for `key` lives: <directory>/<name>.<key digest>.blob (sidecar: .json)."""
    return Path(directory) / f"{name}.{key_digest(key)}.blob"


def read_verified(path: Path, key: dict) -> bytes | None:
    """The cached bytes if the sidecar's key and checksum match them, else None (with the reason logged)."""
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        log.warning("engine cache %s unreadable (%s); rebuilding", path, exc)
        return None
    if record.get("key") != json.loads(json.dumps(key, default=str)):
        log.info("engine cache %s was built for another configuration; rebuilding", path)
        return None
    if record.get("sha256") != hashlib.sha256(data).hexdigest():
        log.warning("engine cache %s is corrupt (checksum mismatch); rebuilding", path)
        return None
    return data


def load_or_build(directory: str | os.PathLike, name: str, key: dict, build: Callable[[], bytes],
                  load: Callable[[bytes], T]) -> tuple[T, bool]:
    """The engine for `key`: loaded from the cache when verified, else built, loaded, then cached.

    build() returns the serialised engine; load(bytes) deserialises it. Returns (engine, built).
    A cache that cannot be written (read-only folder) costs a rebuild next time, never a failure.
    """
    path = blob_path(directory, name, key)
    data = read_verified(path, key)
    if data is not None:
        try:
            return load(data), False
        except Exception as exc:  # noqa: BLE001 - a verified file the engine refuses: rebuild it
            log.warning("engine cache %s failed to load (%s); rebuilding", path, exc)
    data = bytes(build())
    engine = load(data)  # a fresh engine that does not load is an error, not something to cache
    with contextlib.suppress(OSError):
        path.with_suffix(".json").unlink(missing_ok=True)  # never a sidecar describing other bytes
        write_bytes_atomic(path, data)
        write_json_atomic(path.with_suffix(".json"), {"key": key, "sha256": hashlib.sha256(data).hexdigest(),
                                                      "bytes": len(data)})
    return engine, True
