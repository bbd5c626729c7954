"""Where a feature store's files live, their format markers, and its write errors.

A version-3 store is a small root file (``features.h5``) plus a directory
(``features.h5.d/``) of immutable shard files (``shard-<hex>.h5``), immutable index files
(``index-<hex>.h5``: a base and per-commit deltas) and links files (``links-<hex>.h5``); see
docs/FORMAT.md. Everything here is shared by the writer (:mod:`pipeline.store.write`), the
generations (:mod:`pipeline.store.generations`), the reader (:mod:`pipeline.store.read`) and
maintenance (:mod:`pipeline.store.maintenance`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__, fsio
from pipeline.contracts import ExtractorConfig
from pipeline.errors import StoreError
from pipeline.fsio import os_reason

FORMAT_NAME = "video-rnn-features"
SHARD_FORMAT_NAME = "video-rnn-shard"
FORMAT_VERSION = 3
"""Version of the root file's layout (index files and links files carry the same number)."""
SHARD_FORMAT_VERSION = 2
"""Version of the shard layout (unchanged since store format 2)."""
VIDEOS = "videos"
FEATURES = "features"
TIMESTAMPS = "timestamps"
FAILURES = "failures"
MIGRATABLE_VERSIONS = (1, 2)
"""Older store versions ``vrnn store migrate`` converts."""
CHUNK_ROWS = 256
"""Feature rows per HDF5 chunk: a short video is one chunk, long ones read in 320–640 KB pieces."""


def h5_text(text: str) -> str | np.bytes_:
    """``text`` as an HDF5 attribute: a file name that is not UTF-8 is stored as its bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return np.bytes_(text.encode("utf-8", "surrogateescape"))
    return text


def from_h5_text(value: object) -> str:
    """Inverse of :func:`h5_text` (bytes decode with ``surrogateescape``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def open_store_file(path: Path) -> h5py.File:
    """Open a store's HDF5 file read-only; a missing, unreadable or directory path is one
    :class:`StoreError` line (the format is the caller's to check)."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a feature store (.h5 file)")
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise StoreError(f"{path}: feature store not found") from None
    except OSError as e:
        raise StoreError(
            f"{path}: not a readable HDF5 feature store ({e}); if it is a damaged store's "
            "root file, restore it from a copy or re-extract"
        ) from e


def parts_dir_for(store_path: Path) -> Path:
    """Staging directory of finished-but-uncommitted videos for ``store_path``."""
    return store_path.with_name(store_path.name + ".parts")


def shards_dir_for(store_path: Path) -> Path:
    """Directory of the committed shard files of ``store_path`` (``<name>.d``)."""
    return store_path.with_name(store_path.name + ".d")


def new_shard_name() -> str:
    """A fresh, collision-free shard file name (``shard-<16 hex>.h5``)."""
    return f"shard-{uuid.uuid4().hex[:16]}.h5"


def write_error(path: Path, e: OSError) -> StoreError:
    """A one-line StoreError for a failed write (disk full, read-only, permissions)."""
    return StoreError(f"cannot write {path}: {os_reason(e)}")


def atomic_bytes(path: Path, data: bytes) -> None:
    """:func:`pipeline.fsio.atomic_bytes`, failing with a one-line :class:`StoreError`."""
    try:
        fsio.atomic_bytes(path, data)
    except OSError as e:
        raise write_error(path, e) from e


def atomic_json(path: Path, payload: dict) -> None:
    """:func:`atomic_bytes` of ``payload`` as JSON."""
    atomic_bytes(path, json.dumps(payload).encode())


def write_config_attrs(f: h5py.File, config: ExtractorConfig, *, shard: bool = False) -> None:
    """Root provenance attributes of an index (or, with ``shard``, a shard) file."""
    f.attrs["format"] = SHARD_FORMAT_NAME if shard else FORMAT_NAME
    f.attrs["format_version"] = SHARD_FORMAT_VERSION if shard else FORMAT_VERSION
    f.attrs["tool_version"] = __version__
    f.attrs["extractor"] = json.dumps(config.to_dict(), sort_keys=True)
    for key, value in config.to_dict().items():  # readable with h5dump / HDFView
        f.attrs[key] = "every frame" if key == "fps" and value is None else value


def check_format(path: Path, f: h5py.File, name: str = FORMAT_NAME) -> None:
    """Raise :class:`StoreError` unless ``f`` is a version-2 file of kind ``name``.

    A store of an older version (1 or 2) is refused with one line naming ``vrnn store migrate``.
    """
    if f.attrs.get("format") != name:
        raise StoreError(
            f"{path}: not a video-rnn {'shard' if name != FORMAT_NAME else 'feature store'}"
        )
    version = int(f.attrs.get("format_version", -1))
    if version in MIGRATABLE_VERSIONS and name == FORMAT_NAME:
        raise StoreError(
            f"{path} is a version {version} feature store; convert it once with "
            f"`vrnn store migrate {path}` (this vrnn reads version {FORMAT_VERSION})"
        )
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format version {f.attrs.get('format_version')} is not "
            f"supported (this vrnn reads version {FORMAT_VERSION}); re-extract it"
        )


def config_of(f: h5py.File) -> ExtractorConfig:
    """The extractor configuration recorded in a store or shard file's root attributes."""
    return ExtractorConfig.from_dict(json.loads(f.attrs["extractor"]))
