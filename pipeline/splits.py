"""The deterministic, group-aware split rule: whole groups go to train/val/test.

Related clips (UCF101's ``<Class>_g<NN>``, or a manifest's ``group`` column) never sit on both
sides of a split. Pure Python: no TensorFlow here.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.contracts import SPLITS, VideoRecord
from pipeline.errors import ConfigError, ManifestError

_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)$")
UNSPLIT = ""
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


def group_rule(pattern: str) -> Callable[[str], str | None]:
    """``--group-by``: a file's path under its class folder → the recording it was cut from.

    ``pattern`` is a regular expression searched in that path (posix separators); its first
    group, or the whole match when it has none, names the group: ``^(.+?)_cut`` groups
    ``rec7_cut3.mp4`` as ``rec7``, ``^([^/]+)/`` by the sub-folder. None: no match.

    Raises:
        ConfigError: ``pattern`` is not a regular expression.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"--group-by '{pattern}' is not a regular expression: {e}") from None

    def group(relative: str) -> str | None:
        found = compiled.search(relative)
        if found is None:
            return None
        return (found[1] if compiled.groups else found[0]) or None  # "" names nothing

    return group


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
        if record.split == UNSPLIT:
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
