"""Manifest fuzzing: any file content gives a valid manifest or one ManifestError, nothing else."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contracts import SPLITS
from pipeline.errors import ManifestError
from pipeline.manifest import MANIFEST_COLUMNS, read_manifest

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Values that mean something to the reader, mixed with anything at all.
_field = st.one_of(
    st.sampled_from(["", " ", "train", "VAL", " test ", "dev", "a.mp4", "../x.avi", "/abs/y.mkv"]),
    st.text(max_size=12),
    st.text(alphabet=",\"'\n\r\t\x00 \ufeff;|", max_size=6),
)
_column = st.one_of(
    st.sampled_from([*MANIFEST_COLUMNS, " Path ", "LABEL", "Split", "extra", ""]),
    st.text(max_size=8),
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def _read(scratch: Path, content: bytes) -> None:
    path = scratch / "manifest.csv"
    path.write_bytes(content)
    try:
        records = read_manifest(path)
    except ManifestError as e:
        assert str(path) in str(e)  # the message names the file
        return
    assert records
    for record in records:
        assert record.path.is_absolute()
        assert record.label and record.group
        assert record.split in SPLITS
    assert len({r.path for r in records}) == len(records)


@FUZZ
@given(content=st.binary(max_size=400))
def test_arbitrary_bytes(scratch: Path, content: bytes) -> None:
    _read(scratch, content)


@FUZZ
@given(
    header=st.lists(_column, min_size=0, max_size=6),
    rows=st.lists(st.lists(_field, max_size=6), max_size=6),
    bom=st.booleans(),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_csv_shaped_text(
    scratch: Path, header: list[str], rows: list[list[str]], bom: bool, encoding: str
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    text = ("\ufeff" if bom else "") + buffer.getvalue()
    _read(scratch, text.encode(encoding, errors="replace"))


@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a.mp4", "b.mp4", "sub/c.avi", "/abs/d.mkv", "", "a.mp4 "]),
            st.sampled_from(["walk", "run", "", " "]),
            st.sampled_from(["g1", "", "v_X_g01_c01"]),
            st.sampled_from(["train", "val", "test", "", "TRAIN", "other"]),
        ),
        max_size=8,
    )
)
def test_well_formed_manifests_with_bad_values(scratch: Path, rows: list[tuple]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows(rows)
    _read(scratch, buffer.getvalue().encode())
