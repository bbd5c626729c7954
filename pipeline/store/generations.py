"""Generations of a version-3 store: the root file, and publishing a commit as a new one.

The root file (``features.h5``) is small and atomically replaced by every commit. It names the
index files (one base, then the deltas of later commits, oldest first) and the current links
file, and its ``/videos`` is an external link to that links file's ``/videos`` group. A commit
writes only its own delta and brings the spare links file up to date (see
:mod:`pipeline.store.links`), so it costs O(new videos) whatever the store's size.

Deltas are folded like a binary counter: while the second-to-last index file has at most
``FOLD_RATIO`` times the rows of the last, the two are merged (into a new base when the
second-to-last is the base). Files therefore shrink at least geometrically from the base, a
reader opens O(log videos) index files, and each row is rewritten O(log videos) times over the
store's life (amortized O(new rows × log videos) per commit; the occasional fold into the base
costs O(videos) and happens after the deltas have grown to about the base's size).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline import fsio
from pipeline.contracts import ExtractorConfig
from pipeline.errors import StoreError
from pipeline.store.index import (
    BASE,
    DELTA,
    IndexDelta,
    StoreIndex,
    apply,
    as_base,
    combine,
    drop_missing_files,
    read_index_file,
    stamp,
    write_index_file,
)
from pipeline.store.layout import (
    VIDEOS,
    config_of,
    shards_dir_for,
    write_config_attrs,
)
from pipeline.store.links import LINKS_GLOB, advance_links, find_spare, write_links

INDEX_FILES = "index_files"
INDEX_ROWS = "index_rows"
FOLD_RATIO = 2


@dataclass(frozen=True)
class Root:
    """What a root file says besides its provenance attributes (an empty store: defaults)."""

    generation: int = 0
    index_files: tuple[str, ...] = ()
    index_rows: tuple[int, ...] = ()
    links_file: str = ""
    links_since: int = 0
    """First generation of the current link targets (a compaction moves videos)."""

    def spare_range(self) -> range:
        """Generations a spare links file may have to be brought up to date from."""
        return range(self.links_since, self.generation + 1)


def read_root(f: h5py.File) -> Root:
    """The generation fields of an open root file (its format already checked)."""
    return Root(
        generation=int(f.attrs["generation"]),
        index_files=tuple(name.decode("ascii") for name in f[INDEX_FILES][()].tolist()),
        index_rows=tuple(f[INDEX_ROWS][()].tolist()),
        links_file=str(f.attrs["links_file"]),
        links_since=int(f.attrs["links_since"]),
    )


def load_index(shards_dir: Path, root: Root) -> StoreIndex:
    """The store's tables: the base, then each delta (``FileNotFoundError`` if one is gone)."""
    index = StoreIndex()
    for name in root.index_files:
        try:
            apply(index, read_index_file(shards_dir / name))
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no index file", name) from None
    return index


def read_generation(store_path: Path) -> tuple[Root, StoreIndex]:
    """The root and tables of a committed store, for its writer (empty when there is none)."""
    if not store_path.exists():
        return Root(), StoreIndex()
    with h5py.File(store_path, "r") as f:
        root = read_root(f)
    try:
        return root, load_index(shards_dir_for(store_path), root)
    except FileNotFoundError as e:
        raise StoreError(
            f"{store_path}: index file {e.filename} is missing; restore the store's "
            f"{shards_dir_for(store_path).name} directory"
        ) from None


def referenced_files(shards_dir: Path, root: Root, index: StoreIndex) -> set[str]:
    """Every file of the shard directory the store needs (shards, index files, links files,
    and the spare links file a commit may bring up to date)."""
    spare = find_spare(shards_dir, root.links_file, root.spare_range())
    names = {entry.shard for entry in index.videos.values()} | set(root.index_files)
    return names | {root.links_file} | ({spare[0]} if spare else set())


def _write_root(target: Path, root: Root, config: ExtractorConfig, shards: str) -> None:
    with h5py.File(target, "w") as f:
        write_config_attrs(f, config)
        f.attrs["generation"] = root.generation
        f.attrs["links_file"] = root.links_file
        f.attrs["links_since"] = root.links_since
        f.create_dataset(INDEX_FILES, data=np.array(root.index_files, dtype="S64"))
        f.create_dataset(INDEX_ROWS, data=np.array(root.index_rows, dtype=np.int64))
        f[VIDEOS] = h5py.ExternalLink(f"{shards}/{root.links_file}", f"/{VIDEOS}")
        f.flush()
        os.fsync(f.id.get_vfd_handle())


def _replace_root(store_path: Path, root: Root, config: ExtractorConfig) -> None:
    with fsio.replacing(store_path, durable=True) as tmp:
        _write_root(tmp, root, config, shards_dir_for(store_path).name)


def relink(store_path: Path) -> bool:
    """Re-point the root's ``/videos`` link at this root's own directory; True if it had to.

    The one reference that cannot be relative to the root's name is the HDF5 external link
    plain h5py readers follow: it embeds the directory name the root had when it was
    written. After a store is renamed or copied (or was written by an older vrnn under
    another name), the writer rewrites the root once, atomically, under the lock; vrnn's
    own reader never follows the link, so it needs no fixing to read.
    """
    if not store_path.exists():
        return False
    with h5py.File(store_path, "r") as f:
        link = f.get(VIDEOS, getlink=True)
        root, config = read_root(f), config_of(f)
        legacy = "shards" in f.attrs  # written before the directory was implied by the name
    expected = f"{shards_dir_for(store_path).name}/{root.links_file}"
    if isinstance(link, h5py.ExternalLink) and link.filename == expected and not legacy:
        return False
    _replace_root(store_path, root, config)
    return True


def _new_index_file(shards_dir: Path, rows: IndexDelta, kind: str, generation: int) -> str:
    name = f"index-{os.urandom(8).hex()}.h5"
    write_index_file(shards_dir / name, rows, kind=kind, generation=generation)
    return name


def _new_base(shards_dir: Path, index: StoreIndex, generation: int) -> tuple[tuple[str, int], int]:
    """Write ``index`` as a base, dropping (in place) the paths of files gone; its
    ``(name, rows)`` and the number of path rows dropped."""
    dropped = drop_missing_files(index)
    rows = as_base(index)
    return (_new_index_file(shards_dir, rows, BASE, generation), rows.rows), dropped


def _fold(
    shards_dir: Path, files: list[tuple[str, int]], index: StoreIndex, generation: int
) -> tuple[list[tuple[str, int]], int]:
    """Merge trailing index files while the second-to-last is under ``FOLD_RATIO`` × the last;
    the files, and the path rows a fold into the base dropped (see :func:`_new_base`)."""
    dropped = 0
    while len(files) >= 2 and files[-2][1] <= FOLD_RATIO * files[-1][1]:
        if len(files) == 2:
            base, dropped = _new_base(shards_dir, index, generation)
            files = [base]
        else:
            first, then = (read_index_file(shards_dir / name) for name, _ in files[-2:])
            rows = combine(first, then)
            files[-2:] = [(_new_index_file(shards_dir, rows, DELTA, generation), rows.rows)]
    return files, dropped


def _copy_links(shards_dir: Path, name: str) -> str:
    """A durable copy of a links file under a new name (the spare of a rebuilt store)."""
    copy = f"links-{os.urandom(8).hex()}.h5"
    with fsio.replacing(shards_dir / copy) as tmp:
        shutil.copyfile(shards_dir / name, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return copy


def publish(
    store_path: Path,
    config: ExtractorConfig,
    root: Root,
    index: StoreIndex,
    delta: IndexDelta | None = None,
) -> tuple[Root, int]:
    """Publish ``index`` changed by ``delta`` as the store's next generation; the new root and
    the number of path rows dropped because their file is gone.

    ``index`` (the committed tables) is updated in place to the published ones: ``delta``
    applied, new videos stamped with the generation. A commit writes only its delta, folds
    deltas, and adds the links of its new videos to a spare links file: O(delta rows),
    whatever the store's size (amortized: an occasional fold rewrites the base). ``delta``
    None, or a store without index files, writes a new base and fresh links files from the
    whole ``index`` (a new store, compaction, migration). Every base written drops the path
    rows of files that no longer exist. Then the root is atomically replaced; only after that
    rename are the index and links files it superseded deleted. An empty ``delta`` publishes
    nothing (``root`` is returned as it is).

    The caller holds the writer's lock and has already put any new shard in place. Raises
    :class:`OSError` on failure; the previous root and every file it names are then intact,
    but ``index`` may hold part of the change: the caller must read it again.
    """
    if delta is not None and root.index_files and not delta.rows:
        return root, 0  # e.g. staged parts of videos a killed run already committed
    shards_dir = shards_dir_for(store_path)
    shards_dir.mkdir(exist_ok=True)
    generation = root.generation + 1
    if delta is not None:
        stamp(delta.videos, generation)
        apply(index, delta)
    if delta is None or not root.index_files:
        stamp(index.videos, generation)
        base, dropped = _new_base(shards_dir, index, generation)
        files = [base]
        links = write_links(shards_dir, index.videos, generation)
        keep_links, since = {links, _copy_links(shards_dir, links)}, generation
    else:
        files = [*zip(root.index_files, root.index_rows, strict=True)]
        files.append((_new_index_file(shards_dir, delta, DELTA, generation), delta.rows))
        files, dropped = _fold(shards_dir, files, index, generation)
        spare = find_spare(shards_dir, root.links_file, root.spare_range())
        added = list(delta.videos)
        links = advance_links(shards_dir, root.links_file, spare, index.videos, added, generation)
        keep_links, since = {links, root.links_file}, root.links_since
    names, counts = zip(*files, strict=True)
    published = Root(generation, names, counts, links, since)
    fsio.fsync_dir(shards_dir)  # the files the new root names are durable before it is
    _replace_root(store_path, published, config)
    for name in set(root.index_files) - set(names):
        fsio.remove(shards_dir / name)
    for path in shards_dir.glob(LINKS_GLOB):
        if path.name not in keep_links:
            fsio.remove(path)
    return published, dropped
