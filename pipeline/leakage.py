"""Same content under several manifest rows: relabelled copies and train/test leakage.

The store keys videos by content hash, so it knows when two paths hold the same video. A copy
with another label teaches the head two answers for one input (warned); a copy on both sides
of the train/test split scores the model on what it trained on (refused: the group-aware split
promises that no clip is on both sides).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.contracts import VideoRecord
from pipeline.errors import ManifestError

if TYPE_CHECKING:
    from pipeline.join import JoinedVideo
    from pipeline.store import FeatureStore

log = logging.getLogger(__name__)

SHOW = 3
"""Copies a message names before summarising the rest."""


def _pairs(groups: Sequence[Sequence[VideoRecord]]) -> str:
    shown = "; ".join(
        " = ".join(f"{r.path} ({r.label}, {r.split})" for r in group) for group in groups[:SHOW]
    )
    more = f"; and {len(groups) - SHOW} more" if len(groups) > SHOW else ""
    return shown + more


def check_duplicates(
    fit: Sequence[JoinedVideo], test: Sequence[VideoRecord], store: FeatureStore
) -> list[list[VideoRecord]]:
    """Warn about copies with different labels; refuse copies in train/val and in test.

    Args:
        fit: the train and val rows found in the store, with their content ids.
        test: the manifest's test rows (looked up in the store by content).
        store: the open feature store.

    Returns:
        The groups of rows sharing content but not a label (each group warned about).

    Raises:
        ManifestError: a video's content is both in train/val and in test (count and examples).
    """
    by_id: dict[str, list[VideoRecord]] = defaultdict(list)
    for video in fit:
        by_id[video.video_id].append(video.record)
    relabelled = [rows for rows in by_id.values() if len({r.label for r in rows}) > 1]
    if relabelled:
        log.warning(
            "%d videos are in the manifest more than once with different labels (same content): %s",
            len(relabelled),
            _pairs(relabelled),
        )
    leaked = []
    for record in test:
        video_id = store.video_id_for(record.path)
        if video_id in by_id:
            leaked.append([*by_id[video_id], record])
    if leaked:
        raise ManifestError(
            f"{len(leaked)} test videos have the same content as train/val videos (train/test "
            f"leakage): {_pairs(leaked)}; remove the copies or put them in one split"
        )
    return relabelled
