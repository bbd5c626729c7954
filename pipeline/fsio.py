"""Crash-safe file writes: the one place that does "write under a temp name, rename over".

Every file or directory the pipeline writes for others to read (store index, shards, staged
parts, sidecar weights, reports, manifests, sample clips, frame caches, model directories,
exports) is written under a hidden temporary sibling, then renamed over its real name, so a
reader or a killed run never sees a half-written file under the real name.

One temp-name scheme: ``.<name>.<32 hex>.tmp`` beside the target. Where the writer needs a
file-type suffix (Keras wants ``.weights.h5``, ``.keras``, ``.tflite``), the suffix moves to
the end: ``.<name without suffix>.<hex>.tmp<suffix>``. :func:`remove_leftovers` finds exactly
these names, so a lock holder can delete what a killed write left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import StoreError

ASIDE = ".old-"  # a previous directory moved aside by the two-rename fallback swap
TEMP_GLOB = ".*.tmp"
"""Every temporary of this module's scheme without a writer's suffix, as a glob pattern."""


def _base(path: Path, suffix: str) -> str:
    name = path.name
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


def temp_path_for(path: Path, suffix: str = "") -> Path:
    """A unique hidden temporary name beside ``path`` (``.<name>.<hex>.tmp<suffix>``)."""
    return path.with_name(f".{_base(path, suffix)}.{uuid.uuid4().hex}.tmp{suffix}")


def is_temporary(path: Path) -> bool:
    """True for a name of this module's scheme without a writer's suffix (``.<name>.<hex>.tmp``)."""
    return path.name.startswith(".") and path.suffix == ".tmp"


def probe_writable(directory: Path) -> None:
    """Create and remove one empty temporary file in ``directory``; OSError when it cannot."""
    probe = temp_path_for(directory / ".vrnn-write-probe")
    with open(probe, "x"):
        pass
    probe.unlink()


def remove(path: Path) -> None:
    """Remove a temporary file or directory if it is there (errors ignored: best effort)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # a read-only file system refuses even that
            path.unlink(missing_ok=True)


def remove_leftovers(path: Path, suffix: str = "") -> list[Path]:
    """Delete the temporaries killed writes of ``path`` left; the ones removed.

    Only a writer that holds the target's lock may call this (another writer's temp file
    has the same shape of name).
    """
    pattern = f".{glob.escape(_base(path, suffix))}.*.tmp{glob.escape(suffix)}"
    stale = sorted(path.parent.glob(pattern))
    for leftover in stale:
        remove(leftover)
    return stale


def fsync_dir(directory: Path) -> None:
    """Make renames/links inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(
    path: Path, *, suffix: str = "", directory: bool = False, durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``.

    Args:
        path: the file (or, with ``directory``, the directory) to write.
        suffix: a file-type suffix the writer needs at the end of the name (Keras).
        directory: create the temporary as an empty directory; an existing ``path`` is then
            swapped out atomically where the OS can (:func:`swap_in`).
        durable: fsync ``path``'s directory after the rename.

    The temporary is always removed, also when the body raises; :class:`OSError` from the
    rename propagates (callers turn it into their one-line error).
    """
    tmp = temp_path_for(path, suffix)
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        swap_in(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        remove(tmp)


def swap_in(new: Path, target: Path) -> None:
    """Move ``new`` over ``target``; a directory replaces a directory in one step on Linux.

    A file is renamed over ``target``. A directory cannot be renamed over another: it is
    swapped with ``renameat2(RENAME_EXCHANGE)`` (``new`` then holds the previous one, for the
    caller to delete), else the previous one is moved aside to ``.<name>.old-<hex>``, the
    new one renamed in, and the aside one deleted. A kill between those two renames leaves
    the aside copy, which :func:`restore_aside` puts back.
    """
    if not (new.is_dir() and target.exists()):
        os.replace(new, target)
        return
    if _exchange(new, target):
        return
    old = target.with_name(f".{target.name}{ASIDE}{uuid.uuid4().hex[:8]}")
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)  # put the previous one back
        raise
    remove(old)


def restore_aside(target: Path) -> Path | None:
    """Put back a previous directory a killed fallback :func:`swap_in` moved aside; from where."""
    if target.exists():
        return None
    aside = sorted(
        target.parent.glob(f".{glob.escape(target.name)}{ASIDE}*"), key=lambda p: p.stat().st_mtime
    )
    if not aside:
        return None
    aside[-1].rename(target)
    return aside[-1]


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(..., RENAME_EXCHANGE)``).

    Returns:
        False where the C library or the filesystem cannot, so the caller falls back.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h>
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(second))


def atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp name, fsync, rename); OSError on failure."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_text(path: Path, text: str) -> None:
    """:func:`atomic_bytes` of ``text`` (UTF-8)."""
    atomic_bytes(path, text.encode())


def atomic_json(path: Path, payload: object, *, indent: int | None = None) -> None:
    """:func:`atomic_bytes` of ``payload`` as JSON (a final newline when ``indent`` is set)."""
    text = json.dumps(payload, indent=indent)
    atomic_text(path, text + "\n" if indent is not None else text)


def os_reason(e: OSError) -> str:
    """The short reason of an OSError ("No space left on device"), also for h5py's."""
    return os.strerror(e.errno) if e.errno else str(e)


def require_free_space(directory: Path, nbytes: int, what: str, remedy: str = "") -> None:
    """Raise :class:`StoreError` unless ``directory``'s file system has ``nbytes`` free.

    HDF5 can crash the process (h5py issue #914) instead of raising when the disk fills up
    mid-write, so large HDF5 writes check first and fail with a readable message.
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return  # cannot tell: let the write itself report
    if st.f_flag & os.ST_RDONLY:
        raise StoreError(f"cannot write {what} in {directory}: {os.strerror(errno.EROFS)}")
    free = st.f_bavail * st.f_frsize
    if free < nbytes:
        raise StoreError(
            f"not enough free space in {directory} to write {what}: needs about "
            f"{nbytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free"
            + (f"; {remedy}" if remedy else "")
        )
