"""Open `dvc plots show`'s page in headless Chromium with no network; check the PNGs render.

Run after `make demo`, in the repository root (docs/plots.md):

    .venv/bin/python tools/check_plots_offline.py [--out DIR] [--chromium PATH]

Steps: `dvc plots show --out DIR` writes DIR/index.html; Chromium loads it from a file:// URL
with every host name unresolvable and an unreachable proxy (and, where the kernel allows
unprivileged namespaces, in a network namespace with no interfaces: `unshare -rn`), once to
dump the DOM after load and once to take a screenshot. It then checks that

* the DOM holds an <img> for each of the three images (training curves, confusion matrix,
  per-class F1) whose src is a PNG file that exists beside the page, and
* the screenshot is not blank: it contains the confusion colour bar's darkest blue and the
  curves' two line colours (matplotlib's first two cycle colours), which only the images draw.

It also counts the vega charts (the CSV plots) that rendered: they load vega from a CDN, so
offline they stay empty; that is expected and reported, not checked. Exit 1 on a failed check.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.file_names import CONFUSION_IMAGE, CURVES_IMAGE, F1_IMAGE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW = "1600,4000"
COLOURS = {
    "confusion colour bar (Blues, darkest)": (8, 48, 107),
    "curves, train line (tab:blue)": (31, 119, 180),
    "curves, val line (tab:orange)": (255, 127, 14),
}
MIN_PIXELS = 50
"""A colour counts as drawn when at least this many screenshot pixels are within TOLERANCE."""
TOLERANCE = 12
NO_NETWORK = [
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]


class _Tags(HTMLParser):
    """Collects the src of every <img> and counts the elements vega draws into."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.vega_drawn = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        elif tag in ("svg", "canvas"):
            self.vega_drawn += 1


def _chromium(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    isolate = ["unshare", "-rn"] if _can_unshare() else []
    command = [*isolate, chromium, "--headless", "--no-sandbox", "--disable-gpu", *NO_NETWORK]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=180, check=True
    )


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def _colour_pixels(screenshot: Path) -> dict[str, int]:
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    return {
        name: int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= TOLERANCE).sum())
        for name, rgb in COLOURS.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dvc_plots"))
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "plots", "show", "--out", str(args.out)], check=True)
    page = (args.out / "index.html").resolve()
    url = page.as_uri()
    print(f"page: {page}; network isolation: unshare -rn {_can_unshare()}, resolver off, proxy off")
    failures = []

    tags = _Tags()
    tags.feed(_chromium(args.chromium, "--dump-dom", url).stdout)
    for name in (CURVES_IMAGE, CONFUSION_IMAGE, F1_IMAGE):
        srcs = [src for src in tags.images if src.endswith(name)]
        files = [page.parent / src for src in srcs]
        good = [f for f in files if f.is_file() and f.read_bytes()[:8] == PNG_SIGNATURE]
        print(f"<img> for {name}: {srcs or 'none'}; existing PNG files: {len(good)}")
        if not good:
            failures.append(f"no <img> pointing at an existing PNG for {name}")

    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "page.png"
        _chromium(args.chromium, f"--screenshot={shot}", f"--window-size={WINDOW}", url)
        extrema = Image.open(shot).convert("L").getextrema()
        counts = _colour_pixels(shot)
    print(f"screenshot {WINDOW}: grey levels {extrema[0]}..{extrema[1]}")
    if extrema[0] == extrema[1]:
        failures.append("the screenshot is one uniform colour")
    for name, count in counts.items():
        print(f"  pixels of {name}: {count}")
        if count < MIN_PIXELS:
            failures.append(f"the screenshot shows no {name} ({count} pixels)")
    print(f"vega charts drawn (CSV plots, need the CDN): {tags.vega_drawn} svg/canvas elements")

    for failure in failures:
        print(f"FAIL: {failure}")
    print("plots offline check:", "FAILED" if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
