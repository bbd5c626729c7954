"""Stable video ids from file contents: a renamed or copied file keeps its id."""

from __future__ import annotations

import hashlib
from pathlib import Path

VIDEO_ID_HEX = 20
"""Hex digits of the content sha256 used as the video id (80 bits)."""


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks (memory stays flat)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def video_id_from_sha256(sha256: str) -> str:
    """The store key for a content hash: ``v`` + the first 20 hex digits."""
    return "v" + sha256[:VIDEO_ID_HEX]
