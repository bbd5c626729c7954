"""Manifests (``path,label,group,split`` CSV), the index sources that build them, and splits.

Sources: a class-per-folder tree, the UCF101 official split lists, or a user CSV. Where no split
is given, a deterministic group-aware split assigns whole groups to train/val/test, so related
clips (UCF101's ``<Class>_g<NN>``) never sit on both sides. Pure Python: no TensorFlow here.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import fsio
from pipeline.contracts import SPLITS, VideoRecord
from pipeline.errors import ConfigError, ManifestError
from pipeline.video import is_video_path
from pipeline.walk import walk

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "label", "group", "split")
"""Columns of a manifest, in the order they are written."""

UCF101_SPLIT_IDS = (1, 2, 3)

_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
_SURROGATES = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, as ``surrogateescape`` decodes them (in paths and groups, never
in labels: a label names a class in models and reports)."""
_UNSPLIT = ""
"""``split`` of a record that the deterministic split has yet to assign."""


@dataclass(frozen=True)
class SplitFractions:
    """Shares of groups sent to train, val and test when no split is given.

    Raises:
        ConfigError: a share outside [0, 1], no share for train, or shares not summing to 1
            (within 1e-6).
    """

    train: float = 0.70
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        shares = {"train": self.train, "val": self.val, "test": self.test}
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:  # also rejects NaN
                raise ConfigError(f"{name} fraction must be between 0 and 1, got {share:g}")
        if self.train <= 0.0:
            raise ConfigError(
                f"train fraction must be positive (val {self.val:g} + test {self.test:g} "
                "leave nothing to train on)"
            )
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"split fractions must sum to 1, got {total:g}")

    @classmethod
    def from_holdout(cls, val: float = 0.15, test: float = 0.15) -> SplitFractions:
        """Fractions with ``train = 1 - val - test`` (the CLI's ``--val-frac/--test-frac``)."""
        return cls(train=max(0.0, 1.0 - val - test), val=val, test=test)

    def as_tuple(self) -> tuple[float, float, float]:
        """(train, val, test), in :data:`~pipeline.contracts.SPLITS` order."""
        return self.train, self.val, self.test


@dataclass(frozen=True)
class IndexResult:
    """What an index source found.

    Attributes:
        records: one record per video, sorted by label then path, every split assigned.
        skipped: files passed over because they are not videos (by extension).
        outside: video files directly under a class-folder tree's root, in no class folder.
    """

    records: list[VideoRecord]
    skipped: int = 0
    outside: int = 0

    def split_counts(self) -> dict[str, int]:
        """Videos per split, in :data:`~pipeline.contracts.SPLITS` order."""
        counts = Counter(r.split for r in self.records)
        return {split: counts.get(split, 0) for split in SPLITS}

    @property
    def labels(self) -> list[str]:
        """Distinct labels, sorted."""
        return sorted({r.label for r in self.records})


# --- groups and the deterministic split -------------------------------------------------------


def parse_group(path: Path | str) -> str:
    """Group of a video file: ``<Class>_g<NN>`` for UCF101 names ``v_<Class>_g<NN>_c<MM>``.

    Args:
        path: the video file (only its name is used).

    Returns:
        The UCF101 group when the name matches that pattern, otherwise the file stem.
    """
    stem = Path(path).stem
    match = _UCF_NAME.match(stem)
    return f"{match['cls']}_g{match['group']}" if match else stem


def _split_counts(n_groups: int, fractions: SplitFractions) -> list[int]:
    """Groups per split for ``n_groups`` groups: largest remainders, then one for each split.

    With at least as many groups as splits of positive share, every such split gets a group
    (taken from the biggest one); with fewer, train is served first, then test, then val.
    """
    shares = fractions.as_tuple()
    exact = [n_groups * share for share in shares]
    counts = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n_groups - sum(counts)]:
        counts[i] += 1
    for i in (0, 2, 1):  # train, test, val
        if shares[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _group_order(group: str) -> str:
    # A stable hash (unlike hash(), not salted per process) shuffles groups reproducibly.
    data = group.encode("utf-8", "surrogateescape")  # a group from a non-UTF-8 file name
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def assign_splits(
    records: Sequence[VideoRecord], fractions: SplitFractions = SplitFractions()
) -> list[VideoRecord]:
    """Give every record with an empty ``split`` one, keeping each group on one side.

    A group that already has a split somewhere keeps it for all its records. The other groups
    are dealt out per label (a group shared by labels belongs to its most frequent label): sorted
    by the sha1 of the group name, the first share goes to train, the next to val, the rest to
    test, in counts proportional to ``fractions`` (see :func:`_split_counts`).

    Args:
        records: records, some with ``split == ""``.
        fractions: shares of groups per split.

    Returns:
        The records in the same order, all with a split.

    Raises:
        ManifestError: a group with records in two different splits.
    """
    given: dict[str, str] = {}
    for record in records:
        if record.split == _UNSPLIT:
            continue
        other = given.setdefault(record.group, record.split)
        if other != record.split:
            raise ManifestError(
                f"group {record.group!r} is in both {other} and {record.split}; "
                "a group must stay on one side of the split"
            )
    labels_of: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        if record.group not in given:
            labels_of[record.group][record.label] += 1
    groups_by_label: dict[str, list[str]] = defaultdict(list)
    for group, labels in labels_of.items():
        home = min(labels, key=lambda label: (-labels[label], label))
        groups_by_label[home].append(group)
    assigned = dict(given)
    for groups in groups_by_label.values():
        groups.sort(key=lambda g: (_group_order(g), g))
        start = 0
        for split, count in zip(SPLITS, _split_counts(len(groups), fractions), strict=True):
            assigned.update(dict.fromkeys(groups[start : start + count], split))
            start += count
    return [replace(r, split=assigned[r.group]) if not r.split else r for r in records]


# --- manifest files ---------------------------------------------------------------------------


def _abspath(path: Path) -> Path:
    # abspath, not resolve(): keep symlinked dataset folders as the user named them.
    return Path(os.path.abspath(path))


def _check_records(records: Iterable[VideoRecord], where: str) -> None:
    seen: dict[Path, int] = {}
    for n, record in enumerate(records, start=1):
        if record.split not in SPLITS:
            raise ManifestError(f"{where}, record {n}: unknown split {record.split!r}")
        if not record.label:
            raise ManifestError(f"{where}, record {n}: empty label")
        if _SURROGATES.search(record.label):
            raise ManifestError(
                f"{where}, record {n}: label {record.label!a} is not UTF-8 text "
                f"(from {str(record.path)!a})"
            )
        first = seen.setdefault(_abspath(record.path), n)
        if first != n:
            raise ManifestError(f"{where}, record {n}: duplicate path {record.path}")


def write_manifest(records: Sequence[VideoRecord], path: Path) -> Path:
    """Write a manifest CSV atomically (temporary file in the same folder, then renamed).

    Paths under the manifest's folder are stored relative to it (posix separators), so the
    dataset and its manifest can move together; others are stored absolute. A file name that
    is not valid UTF-8 is written as its bytes (``surrogateescape``), so it reads back exactly.

    Args:
        records: the rows, written in this order.
        path: the manifest file; its folder must exist.

    Returns:
        ``path``.

    Raises:
        ManifestError: the folder is missing, ``path`` is a folder, or a record is invalid.
    """
    path = _abspath(Path(path))
    if not path.parent.is_dir():
        raise ManifestError(f"{path}: output folder {path.parent} does not exist")
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not a manifest file")
    if not records:
        raise ManifestError(f"{path}: no records to write")
    _check_records(records, str(path))
    base = path.parent
    with (
        fsio.replacing(path) as partial,
        partial.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f,
    ):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for record in records:
            video = _abspath(record.path)
            shown = video.relative_to(base).as_posix() if video.is_relative_to(base) else video
            writer.writerow([shown, record.label, record.group, record.split])
    return path


def normalise_label(text: str) -> str:
    """A label or group in Unicode NFC, so that two spellings of ``café`` are one class."""
    return unicodedata.normalize("NFC", text)


def _check_header(path: Path, header: list[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        found = ", ".join(header) if any(header) else "none"
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise ManifestError(f"{path}: column(s) {', '.join(twice)} appear more than once")


def _read_rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (row number in the file, fields as written); checks the header.

    Fields keep their leading and trailing spaces (a folder may be named ``" x"``); only the
    column names are trimmed and compared case-insensitively.
    """
    if not path.is_file():
        reason = "is a folder, not a CSV file" if path.is_dir() else "no such file"
        raise ManifestError(f"{path}: {reason}")
    try:
        # -sig: tolerate Excel's BOM; surrogateescape: paths keep non-UTF-8 file names' bytes
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f, strict=True)
            header = [name.strip().lower() for name in next(reader, [])]
            _check_header(path, header, required)
            rows = []
            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue  # blank line
                if len(fields) > len(header):
                    raise ManifestError(
                        f"{path}, row {reader.line_num}: {len(fields)} fields, "
                        f"header has {len(header)}"
                    )
                values = dict(zip(header, fields, strict=False))
                rows.append((reader.line_num, values))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise ManifestError(
                f"{path}: malformed CSV (a quoted field is never closed: unterminated quote "
                f"before the end of the file, line {reader.line_num})"
            ) from e
        raise ManifestError(f"{path}: malformed CSV, line {reader.line_num} ({e})") from e
    if not rows:
        raise ManifestError(f"{path}: no rows")
    return rows


def _records_from_rows(
    path: Path, rows: list[tuple[int, dict[str, str]]], *, split_required: bool
) -> list[VideoRecord]:
    base = _abspath(path).parent
    seen: dict[Path, int] = {}
    records = []
    for row, values in rows:
        where = f"{path}, row {row}"
        if not values.get("path", "").strip():
            raise ManifestError(f"{where}: empty path")
        if not values.get("label", "").strip():
            raise ManifestError(f"{where}: empty label")
        if _SURROGATES.search(values["label"]):
            raise ManifestError(f"{where}: label is not UTF-8 text")
        split = (values.get("split") or "").strip().lower()
        if split not in SPLITS and (split or split_required):
            problem = f"unknown split {values['split']!r}" if split else "empty split"
            raise ManifestError(f"{where}: {problem} (expected train, val or test)")
        video = _abspath(base / values["path"])
        first = seen.setdefault(video, row)
        if first != row:
            raise ManifestError(f"{where}: duplicate path {values['path']} (first at row {first})")
        group = values.get("group", "")
        group = normalise_label(group if group.strip() else parse_group(video))
        label = normalise_label(values["label"])
        records.append(VideoRecord(path=video, label=label, group=group, split=split))
    return records


def read_manifest(path: Path) -> list[VideoRecord]:
    """Read and validate a manifest written by :func:`write_manifest` (or by hand).

    Args:
        path: the CSV, with columns ``path,label,group,split`` (extra columns are ignored).

    Returns:
        One record per row, in file order, paths absolute (relative ones are taken from the
        manifest's folder). An empty ``group`` falls back to :func:`parse_group`.

    Raises:
        ManifestError: missing file or columns, no rows, an empty path or label, an unknown
            split, or a path listed twice (the message names the file and row).
    """
    path = Path(path)
    return _records_from_rows(path, _read_rows(path, MANIFEST_COLUMNS), split_required=True)


# --- index sources ----------------------------------------------------------------------------


def _sorted(records: Iterable[VideoRecord]) -> list[VideoRecord]:
    return sorted(records, key=lambda r: (r.label, r.path.as_posix()))


def find_videos(root: Path) -> list[Path]:
    """Every entry under ``root`` with a video extension, sorted, hidden entries skipped.

    Walked by :func:`pipeline.walk.walk` (symlinked folders followed, each folder once).
    Entries are returned as found (a directory, FIFO or broken link named ``x.mp4``
    included), so that whoever reads them can report why they are not videos instead of
    dropping them.
    """
    return [p for p in walk(root) if is_video_path(p)]


def source_videos(source: Path) -> list[Path]:
    """Video paths named by a manifest CSV, or found under a folder (duplicates removed).

    Raises:
        ManifestError: missing source, unreadable manifest, or a folder without videos.
    """
    source = Path(source)
    if source.is_dir():
        paths = find_videos(source)
        if not paths:
            raise ManifestError(f"{source}: no video files in this folder")
        return paths
    if not source.exists():
        raise ManifestError(f"{source}: no such manifest or folder")
    return list(dict.fromkeys(record.path for record in read_manifest(source)))


def index_folder(root: Path, fractions: SplitFractions = SplitFractions()) -> IndexResult:
    """Index a class-per-folder tree ``root/<label>/**/<video files>``.

    Class folders may be symlinks; the tree is walked by :func:`pipeline.walk.walk`. Hidden
    entries are skipped; files whose extension is not a video's are skipped and counted
    (``skipped``), as are videos directly under ``root`` (``outside``). Labels are the class
    folders' names in Unicode NFC. Splits come from :func:`assign_splits`.

    Args:
        root: the dataset folder.
        fractions: shares of groups per split.

    Returns:
        The records and the number of skipped files.

    Raises:
        ManifestError: ``root`` missing or without class folders, or a class folder without
            videos.
    """
    root = _abspath(Path(root))
    if not root.is_dir():
        reason = "is a file, not a folder" if root.exists() else "no such folder"
        raise ManifestError(f"{root}: {reason}")
    entries = walk(root)  # one walk: a link back into the tree is not walked again
    label_dirs = [p for p in entries if p.parent == root and p.is_dir()]
    loose = [p for p in entries if p.parent == root and not p.is_dir()]
    outside = sum(1 for p in loose if is_video_path(p))
    skipped = len(loose) - outside
    if not label_dirs:
        raise ManifestError(f"{root}: no class folders (expected {root}/<label>/<video files>)")
    by_label: dict[Path, list[Path]] = defaultdict(list)
    for p in entries:
        if p.parent != root and not p.is_dir():
            by_label[root / p.relative_to(root).parts[0]].append(p)
    records = []
    for label_dir in label_dirs:
        files = by_label[label_dir]
        videos = [p for p in files if is_video_path(p)]
        if not videos:
            raise ManifestError(
                f"{label_dir}: class folder {label_dir.name!r} has no video files "
                f"({len(files)} other files)"
            )
        skipped += len(files) - len(videos)
        label = normalise_label(label_dir.name)
        records += [VideoRecord(p, label, parse_group(p), _UNSPLIT) for p in videos]
    if skipped or outside:
        log.info("%s: skipped %d non-video files, %d videos outside", root, skipped, outside)
    return IndexResult(_sorted(assign_splits(records, fractions)), skipped, outside)


def _read_list(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]


def _read_class_index(path: Path) -> dict[int, str]:
    classes = {}
    for n, fields in _read_list(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise ManifestError(f"{path}, line {n}: expected '<index> <class>'")
        classes[int(fields[0])] = normalise_label(fields[1])
    return classes


def index_ucf101(
    root: Path,
    lists_dir: Path,
    split_id: int = 1,
    fractions: SplitFractions = SplitFractions(),
) -> IndexResult:
    """Index UCF101 from its official lists (``classInd.txt``, ``trainlist0N/testlist0N.txt``).

    The test list is the test split. The lists have no val: val is carved out of the train
    list's groups by :func:`assign_splits` with shares ``train : val`` of ``fractions``.

    Args:
        root: folder holding the videos where the lists place them
            (``<Class>/v_<Class>_g<NN>_c<MM>.avi``).
        lists_dir: folder holding the list files.
        split_id: official split, 1, 2 or 3.
        fractions: only ``train`` and ``val`` are used.

    Returns:
        The records (``skipped`` is always 0).

    Raises:
        ConfigError: ``split_id`` not 1-3.
        ManifestError: a list file missing or malformed, a class not in ``classInd.txt``, a
            listed video missing, or a video in both lists.
    """
    if split_id not in UCF101_SPLIT_IDS:
        raise ConfigError(f"UCF101 split id must be 1, 2 or 3, got {split_id}")
    root, lists_dir = _abspath(Path(root)), _abspath(Path(lists_dir))
    if not root.is_dir():
        raise ManifestError(f"{root}: no such folder")
    classes = _read_class_index(lists_dir / "classInd.txt")
    by_name = {name.lower(): name for name in classes.values()}
    records: dict[Path, VideoRecord] = {}
    missing: list[Path] = []
    for kind in ("train", "test"):
        list_path = lists_dir / f"{kind}list0{split_id}.txt"
        for n, fields in _read_list(list_path):
            where = f"{list_path}, line {n}"
            if len(fields) > 2 or "/" not in fields[0]:
                raise ManifestError(f"{where}: expected '<Class>/<file> [<index>]'")
            folder = fields[0].split("/", 1)[0]
            # Compare case-insensitively: UCF101 spells HandstandPushups two ways.
            label = by_name.get(normalise_label(folder).lower())
            if label is None:
                raise ManifestError(f"{where}: class {folder!r} is not in classInd.txt")
            index = int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else None
            if len(fields) == 2 and classes.get(index) != label:
                raise ManifestError(f"{where}: class index {fields[1]} is not {label!r}")
            video = root / fields[0]
            if video in records:
                raise ManifestError(f"{where}: {fields[0]} is listed twice")
            if not video.is_file():
                missing.append(video)
            split = "test" if kind == "test" else _UNSPLIT
            records[video] = VideoRecord(video, label, parse_group(video), split)
    if not records:
        raise ManifestError(f"{lists_dir}: the split {split_id} lists name no videos")
    if missing:
        raise ManifestError(
            f"{root}: {len(missing)} listed videos are missing (first: {missing[0]})"
        )
    train_val = SplitFractions(
        train=fractions.train / (fractions.train + fractions.val),
        val=fractions.val / (fractions.train + fractions.val),
        test=0.0,
    )
    return IndexResult(_sorted(assign_splits(list(records.values()), train_val)))


def index_csv(path: Path, fractions: SplitFractions = SplitFractions()) -> IndexResult:
    """Index a user CSV with columns ``path,label`` and optionally ``group`` and ``split``.

    Relative paths are taken from the CSV's folder. Rows without a group get
    :func:`parse_group`; rows without a split get one from :func:`assign_splits`.

    Args:
        path: the CSV file.
        fractions: shares of groups per split, for rows without one.

    Returns:
        The records (``skipped`` is always 0).

    Raises:
        ManifestError: as :func:`read_manifest`, plus videos that do not exist and a group
            given two different splits.
    """
    path = _abspath(Path(path))
    records = _records_from_rows(path, _read_rows(path, ("path", "label")), split_required=False)
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise ManifestError(f"{path}: {len(missing)} videos do not exist (first: {missing[0]})")
    try:
        records = assign_splits(records, fractions)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from e
    return IndexResult(_sorted(records))


def index_source(
    source: Path,
    *,
    ucf101_lists: Path | None = None,
    split_id: int | None = None,
    fractions: SplitFractions = SplitFractions(),
) -> IndexResult:
    """Index whatever ``source`` is: a ``.csv`` file, a UCF101 video root, or a class tree.

    Args:
        source: a CSV file, or a folder.
        ucf101_lists: folder of the UCF101 lists; when given, ``source`` is the video root.
        split_id: UCF101 official split (1-3, default 1), only with ``ucf101_lists``.
        fractions: shares of groups per split, where the source gives none.

    Returns:
        The records and the number of skipped files.

    Raises:
        ConfigError: ``split_id`` without ``ucf101_lists``.
    """
    source = Path(source)
    if ucf101_lists is not None:
        return index_ucf101(source, ucf101_lists, split_id or 1, fractions)
    if split_id is not None:
        raise ConfigError("--split-id needs --ucf101-lists (it picks an official UCF101 split)")
    if source.suffix.lower() == ".csv" and not source.is_dir():
        return index_csv(source, fractions)
    return index_folder(source, fractions)
