"""The report of one stage-1 run (``extract_report.json``, a DVC metric) and its Ctrl-C.

Counts what was extracted, skipped, duplicated and failed, and names every partially decoded
or timestamp-repaired video, so nothing dropped goes unreported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import __version__, fsio
from pipeline.contracts import ExtractionFailure, VideoInfo


@dataclass
class ExtractReport:
    """Summary of one run; written as ``extract_report.json`` (a DVC metric).

    ``skipped``: files whose content was already in the store (or staged by an interrupted
    run); ``duplicates``: files with the same content as another file of this run (stored
    once, both paths indexed); ``extracted``: videos added to the store;
    ``multi_stream_videos``: added videos whose file has several moving video streams (only
    ``stream_index``, FFmpeg's best stream, was extracted); ``foreign_parts``: staged parts
    the commit refused and left in ``<store>.parts/``; ``known_failures``: files not tried
    because they are unchanged since their content failed to extract (listed in
    ``known_failed_videos``; ``--retry-failed`` tries them).
    """

    store: str
    extractor: dict
    videos: int = 0
    extracted: int = 0
    skipped: int = 0
    duplicates: int = 0
    failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    frames_per_sec: float = 0.0
    interrupted: bool = False
    random_backbone: bool = False
    failures: list[dict] = field(default_factory=list)
    partial: int = 0
    partial_videos: list[dict] = field(default_factory=list)
    repaired_timestamps: int = 0
    repaired_videos: list[dict] = field(default_factory=list)
    multi_stream: int = 0
    multi_stream_videos: list[dict] = field(default_factory=list)
    foreign_parts: int = 0
    """Staged parts the commit refused (another extractor's, or unreadable): left staged."""
    known_failures: int = 0
    known_failed_videos: list[dict] = field(default_factory=list)
    paths_dropped: int = 0
    """Path-index rows of files that no longer exist, dropped when the commit wrote a base."""
    not_videos: list[str] = field(default_factory=list)
    """Files a folder walk passed over: not videos by extension (``extract DIR``)."""
    tool_version: str = __version__

    def note_known_failures(self, failures: Iterable[ExtractionFailure]) -> None:
        """Record the files this run did not try again (unchanged since they failed)."""
        for failure in failures:
            self.known_failed_videos.append({"path": failure.path, "reason": failure.reason})
        self.known_failures = len(self.known_failed_videos)

    def note_decodes(self, infos: Iterable[tuple[str, VideoInfo]]) -> None:
        """Record the added videos that decoded partially, had their timestamps repaired or
        have several moving video streams."""
        for video_id, info in infos:
            if info.partial:
                self.partial_videos.append(
                    {
                        "path": info.path,
                        "video_id": video_id,
                        "decoded_frames": info.decoded_frames,
                        "container_frames": info.container_frames,
                        "corrupt_packets": info.corrupt_packets,
                    }
                )
            if info.timestamps_repaired:
                self.repaired_videos.append(
                    {"path": info.path, "video_id": video_id, "frames": info.timestamps_repaired}
                )
            if info.video_streams > 1:
                self.multi_stream_videos.append(
                    {
                        "path": info.path,
                        "video_id": video_id,
                        "video_streams": info.video_streams,
                        "stream_index": info.stream_index,
                    }
                )
        self.partial = len(self.partial_videos)
        self.multi_stream = len(self.multi_stream_videos)
        self.repaired_timestamps = len(self.repaired_videos)

    def write(self, path: Path) -> None:
        """Write the report as JSON, atomically (creating its directory)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with fsio.replacing(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")


class ExtractInterrupted(KeyboardInterrupt):
    """Ctrl-C during extraction; ``report`` (``interrupted: true``) says what was committed."""

    def __init__(self, report: ExtractReport):
        super().__init__()
        self.report = report
