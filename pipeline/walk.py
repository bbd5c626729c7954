"""The one folder walker behind ``index``, ``extract DIR`` and ``predict DIR``.

Symlinked folders are followed (a class folder may be a link to another disk), each real
folder is entered once (a link back to an ancestor, or two links to one folder, cannot loop or
list a video twice), and hidden entries (names starting with ``.``) are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ManifestError


def walk(root: Path) -> list[Path]:
    """Every non-hidden entry under ``root``, folders included, sorted by path.

    Entries are named through the links they were reached by (not resolved), and returned
    whatever they are (a FIFO, a broken link, a folder named ``x.mp4``), so that whoever reads
    them can report why one is not a video instead of dropping it.

    Raises:
        ManifestError: a folder in the tree cannot be listed (its videos would be lost).
    """
    root = Path(os.path.abspath(root))
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as listing:
                entries = [(entry.name, _is_dir(entry)) for entry in listing]
        except OSError as e:
            raise ManifestError(f"{folder}: cannot list this folder ({e.strerror})") from e
        subfolders = []
        for name, is_dir in sorted(entries):
            if name.startswith("."):
                continue
            path = folder / name
            found.append(path)
            if is_dir:
                subfolders.append(path)
        pending += reversed(subfolders)  # depth first, in name order: the first name wins
    return sorted(found)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False
