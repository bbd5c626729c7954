"""Manifest files (``path,label,group,split`` CSV): the record model's checks, write and read.

Pure Python: no TensorFlow here.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline import fsio
from pipeline.contracts import SPLITS, VideoRecord
from pipeline.errors import ManifestError, excerpt
from pipeline.splits import parse_group

MANIFEST_COLUMNS = ("path", "label", "group", "split")
"""Columns of a manifest, in the order they are written."""

_SURROGATES = re.compile("[\udc80-\udcff]")
"""Bytes that are not UTF-8, as ``surrogateescape`` decodes them (in paths and groups, never
in labels: a label names a class in models and reports)."""


def abspath(path: Path) -> Path:
    """``path`` made absolute without resolving links (keeps symlinked dataset folders)."""
    return Path(os.path.abspath(path))


def _check_records(records: Iterable[VideoRecord], where: str) -> None:
    seen: dict[Path, int] = {}
    for n, record in enumerate(records, start=1):
        if record.split not in SPLITS:
            raise ManifestError(f"{where}, record {n}: unknown split {excerpt(record.split)}")
        if not record.label:
            raise ManifestError(f"{where}, record {n}: empty label")
        if _SURROGATES.search(record.label):
            raise ManifestError(
                f"{where}, record {n}: label {record.label!a} is not UTF-8 text "
                f"(from {str(record.path)!a})"
            )
        first = seen.setdefault(abspath(record.path), n)
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
    path = abspath(Path(path))
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
            video = abspath(record.path)
            shown = video.relative_to(base).as_posix() if video.is_relative_to(base) else video
            writer.writerow([shown, record.label, record.group, record.split])
    return path


def normalise_label(text: str) -> str:
    """A label or group in Unicode NFC, so that two spellings of ``café`` are one class."""
    return unicodedata.normalize("NFC", text)


def _check_header(path: Path, header: list[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        names = ", ".join(excerpt(name, quoted=False) for name in header[:8])
        found = names if any(header) else "none"
        found += f" and {len(header) - 8} more" if len(header) > 8 else ""
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise ManifestError(f"{path}: column(s) {', '.join(twice)} appear more than once")


def _refuse_binary(path: Path) -> None:
    """A CSV is text: a NUL byte in its first 4 KiB means a video, an image or an archive."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise ManifestError(f"{path}: cannot be read ({e.strerror})") from e
    if b"\0" in head:
        raise ManifestError(
            f"{path}: a binary file (a video?), not a manifest CSV; pass a folder of videos "
            "or a manifest written by `vrnn index`"
        )


def read_rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as (row number in the file, fields as written); checks the header.

    Fields keep their leading and trailing spaces (a folder may be named ``" x"``); only the
    column names are trimmed and compared case-insensitively.
    """
    if not path.is_file():
        reason = "is a folder, not a CSV file" if path.is_dir() else "no such file"
        raise ManifestError(f"{path}: {reason}")
    _refuse_binary(path)
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


def records_from_rows(
    path: Path, rows: list[tuple[int, dict[str, str]]], *, split_required: bool
) -> list[VideoRecord]:
    """Manifest records of ``rows`` (see :func:`read_rows`); paths relative to ``path``'s folder."""
    base = abspath(path).parent
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
            problem = f"unknown split {excerpt(values['split'])}" if split else "empty split"
            raise ManifestError(f"{where}: {problem} (expected train, val or test)")
        video = abspath(base / values["path"])
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
    return records_from_rows(path, read_rows(path, MANIFEST_COLUMNS), split_required=True)
