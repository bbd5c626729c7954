"""Stable video ids from file contents: a renamed or copied file keeps its id."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

VIDEO_ID_HEX = 20
"""Hex digits of the content sha256 used as the video id (80 bits)."""


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class NotRegularFileError(OSError):
    """A path that is not a regular file (a FIFO, a device, a socket): never a video.

    ``strerror`` reads ``not a regular file: a FIFO`` (etc.).
    """

    def __init__(self, path: Path, mode: int):
        kind = _KINDS.get(stat.S_IFMT(mode), "a special file")
        super().__init__(errno.EINVAL, f"not a regular file: {kind}", str(path))


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes (:func:`hashlib.file_digest`: memory stays flat).

    The file is opened without blocking and checked before reading, so a FIFO or a device
    named like a video is refused at once instead of hanging the caller.

    Raises:
        NotRegularFileError: not a regular file.
        IsADirectoryError: a directory.
        OSError: the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, mode)
        return hashlib.file_digest(f, "sha256").hexdigest()


def video_id_from_sha256(sha256: str) -> str:
    """The store key for a content hash: ``v`` + the first 20 hex digits."""
    return "v" + sha256[:VIDEO_ID_HEX]
