"""A store reader that loops while an extraction appends: ``python reader.py STORE STOP OUT``.

Until the file STOP exists, opens STORE afresh and reads every video through the checked
reader, verifying that each one is whole (rows = frame count = timestamps) and that the path
index only names stored videos. Writes ``{"passes", "sizes", "errors"}`` to OUT (JSON); OUT
appears once the first pass is done and is rewritten at the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline.store import open_store


def one_pass(store: Path) -> int:
    """Read everything once; the number of videos seen. Raises on anything incomplete."""
    with open_store(store) as fs:
        ids = fs.video_ids
        for video_id in ids:
            video = fs.read(video_id)
            rows = video.features.shape[0]
            if not rows == video.info.frame_count == len(video.timestamps_sec):
                raise AssertionError(f"{video_id}: {rows} rows, {video.info.frame_count} frames")
        stray = {entry[0] for entry in fs.path_index.values()} - set(ids)
        if stray:
            raise AssertionError(f"path index names videos not in the store: {sorted(stray)}")
        return len(ids)


def main() -> None:
    store, stop, out = map(Path, sys.argv[1:4])
    passes, sizes, errors = 0, set(), []
    while not stop.exists():
        try:
            sizes.add(one_pass(store))
        except Exception as e:  # every failure is the finding: record it, keep reading
            errors.append(f"{type(e).__name__}: {e}")
        passes += 1
        time.sleep(0.01)  # leave the extraction a core on a 2-core machine
        if passes == 1:
            out.write_text(json.dumps({"passes": 1, "sizes": sorted(sizes), "errors": errors}))
    out.write_text(json.dumps({"passes": passes, "sizes": sorted(sizes), "errors": errors}))


if __name__ == "__main__":
    main()
