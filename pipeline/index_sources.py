"""Index sources that build a manifest: a class-per-folder tree, UCF101's lists, a user CSV.

Where a source gives no split, :func:`pipeline.splits.assign_splits` assigns one. Pure Python:
no TensorFlow here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contracts import SPLITS, VideoRecord
from pipeline.errors import ConfigError, ManifestError
from pipeline.manifest import (
    abspath,
    normalise_label,
    read_manifest,
    read_rows,
    records_from_rows,
)
from pipeline.splits import UNSPLIT, SplitFractions, assign_splits, group_rule, parse_group
from pipeline.video import is_video_path
from pipeline.walk import walk

UCF101_SPLIT_IDS = (1, 2, 3)


@dataclass(frozen=True)
class IndexResult:
    """What an index source found.

    Attributes:
        records: one record per video, sorted by label then path, every split assigned.
        passed_over: files that are not videos by extension, sorted (named by ``index``).
        outside: video files directly under a class-folder tree's root, in no class folder.
    """

    records: list[VideoRecord]
    passed_over: list[Path] = field(default_factory=list)
    outside: int = 0

    def split_counts(self) -> dict[str, int]:
        """Videos per split, in :data:`~pipeline.contracts.SPLITS` order."""
        counts = Counter(r.split for r in self.records)
        return {split: counts.get(split, 0) for split in SPLITS}

    @property
    def labels(self) -> list[str]:
        """Distinct labels, sorted."""
        return sorted({r.label for r in self.records})

    def labels_missing(self, split: str) -> list[str]:
        """Labels with no video in ``split`` (too few groups to deal one out), sorted."""
        present = {r.label for r in self.records if r.split == split}
        return [label for label in self.labels if label not in present]


def _sorted(records: Iterable[VideoRecord]) -> list[VideoRecord]:
    return sorted(records, key=lambda r: (r.label, r.path.as_posix()))


@dataclass(frozen=True)
class FolderVideos:
    """What a folder walk found: the video files, and the files it passed over.

    Attributes:
        videos: entries with a video extension, sorted (a directory, FIFO or broken link
            named ``x.mp4`` included, so that whoever reads them can say why it is not a
            video instead of dropping it).
        passed_over: the other non-hidden entries that are not folders (``notes.txt``, a
            video named ``clip.bin``), sorted: counted and named by every command that walks.
    """

    videos: list[Path]
    passed_over: list[Path]


def split_entries(entries: Iterable[Path]) -> FolderVideos:
    """Sort walked entries into videos (by extension) and files passed over."""
    entries = list(entries)
    videos = [p for p in entries if is_video_path(p)]
    passed = [p for p in entries if not is_video_path(p) and not p.is_dir()]
    return FolderVideos(videos, passed)


def find_videos(root: Path) -> FolderVideos:
    """The video files under ``root`` and the files passed over, hidden entries skipped.

    Walked by :func:`pipeline.walk.walk` (symlinked folders followed, each folder once).
    """
    return split_entries(walk(root))


def source_videos(source: Path) -> FolderVideos:
    """Video paths named by a manifest CSV (nothing passed over), or found under a folder
    (duplicates removed).

    Raises:
        ManifestError: missing source, unreadable manifest, or a folder without videos.
    """
    source = Path(source)
    if source.is_dir():
        found = find_videos(source)
        if not found.videos:
            raise ManifestError(f"{source}: no video files in this folder")
        return found
    if not source.exists():
        raise ManifestError(f"{source}: no such manifest or folder")
    return FolderVideos(list(dict.fromkeys(record.path for record in read_manifest(source))), [])


def index_folder(
    root: Path, fractions: SplitFractions = SplitFractions(), group_by: str | None = None
) -> IndexResult:
    """Index a class-per-folder tree ``root/<label>/**/<video files>``.

    Class folders may be symlinks; the tree is walked by :func:`pipeline.walk.walk`. Hidden
    entries are skipped; files whose extension is not a video's are passed over and listed
    (``passed_over``), videos directly under ``root`` counted (``outside``). Labels are the class
    folders' names in Unicode NFC. Splits come from :func:`assign_splits`.

    Args:
        root: the dataset folder.
        fractions: shares of groups per split.
        group_by: a :func:`~pipeline.splits.group_rule` pattern naming each file's group from
            its path under the class folder; None: :func:`~pipeline.splits.parse_group`.

    Returns:
        The records and the files passed over.

    Raises:
        ManifestError: ``root`` missing or without class folders, a class folder without
            videos, or files ``group_by`` does not match.
        ConfigError: ``group_by`` is not a regular expression.
    """
    rule = group_rule(group_by) if group_by is not None else None
    root = abspath(Path(root))
    if not root.is_dir():
        reason = "is a file, not a folder" if root.exists() else "no such folder"
        raise ManifestError(f"{root}: {reason}")
    entries = walk(root)  # one walk: a link back into the tree is not walked again
    label_dirs = [p for p in entries if p.parent == root and p.is_dir()]
    loose = split_entries(p for p in entries if p.parent == root)
    outside, passed_over = len(loose.videos), list(loose.passed_over)
    if not label_dirs:
        raise ManifestError(f"{root}: no class folders (expected {root}/<label>/<video files>)")
    by_label: dict[Path, list[Path]] = defaultdict(list)
    for p in entries:
        if p.parent != root and not p.is_dir():
            by_label[root / p.relative_to(root).parts[0]].append(p)
    records, unmatched = [], []
    for label_dir in label_dirs:
        files = split_entries(by_label[label_dir])
        if not files.videos:
            raise ManifestError(
                f"{label_dir}: class folder {label_dir.name!r} has no video files "
                f"({len(files.passed_over)} other files)"
            )
        passed_over += files.passed_over
        label = normalise_label(label_dir.name)
        for p in files.videos:
            group = parse_group(p) if rule is None else rule(p.relative_to(label_dir).as_posix())
            if group is None:
                unmatched.append(p)
            else:
                records.append(VideoRecord(p, label, group, UNSPLIT))
    if unmatched:
        raise ManifestError(
            f"--group-by '{group_by}' matches no part of {len(unmatched)} file path(s) under "
            f"their class folder (first: {unmatched[0]}); every file needs a group"
        )
    records = _sorted(assign_splits(records, fractions))
    return IndexResult(records, sorted(passed_over), outside)


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
        The records (nothing is passed over).

    Raises:
        ConfigError: ``split_id`` not 1-3.
        ManifestError: a list file missing or malformed, a class not in ``classInd.txt``, a
            listed video missing, or a video in both lists.
    """
    if split_id not in UCF101_SPLIT_IDS:
        raise ConfigError(f"UCF101 split id must be 1, 2 or 3, got {split_id}")
    root, lists_dir = abspath(Path(root)), abspath(Path(lists_dir))
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
            split = "test" if kind == "test" else UNSPLIT
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
        The records (nothing is passed over).

    Raises:
        ManifestError: as :func:`read_manifest`, plus videos that do not exist and a group
            given two different splits.
    """
    path = abspath(Path(path))
    records = records_from_rows(path, read_rows(path, ("path", "label")), split_required=False)
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
    group_by: str | None = None,
) -> IndexResult:
    """Index whatever ``source`` is: a ``.csv`` file, a UCF101 video root, or a class tree.

    Args:
        source: a CSV file, or a folder.
        ucf101_lists: folder of the UCF101 lists; when given, ``source`` is the video root.
        split_id: UCF101 official split (1-3, default 1), only with ``ucf101_lists``.
        fractions: shares of groups per split, where the source gives none.
        group_by: a folder tree's group pattern (see :func:`index_folder`).

    Returns:
        The records and the files passed over.

    Raises:
        ConfigError: ``split_id`` without ``ucf101_lists``; ``group_by`` with another source.
    """
    source = Path(source)
    if group_by is not None and (ucf101_lists is not None or not source.is_dir()):
        raise ConfigError(
            "--group-by applies to a class-per-folder tree; a CSV names groups in its "
            "group column, UCF101 in its file names"
        )
    if ucf101_lists is not None:
        return index_ucf101(source, ucf101_lists, split_id or 1, fractions)
    if split_id is not None:
        raise ConfigError("--split-id needs --ucf101-lists (it picks an official UCF101 split)")
    if source.suffix.lower() == ".csv" and not source.is_dir():
        return index_csv(source, fractions)
    return index_folder(source, fractions, group_by)
