"""Manifests, index sources and the deterministic group-aware split."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.contracts import SPLITS, VideoRecord
from pipeline.errors import ConfigError, ManifestError
from pipeline.index_sources import index_csv, index_folder, index_source, index_ucf101
from pipeline.manifest import read_manifest, write_manifest
from pipeline.splits import SplitFractions, assign_splits, parse_group


def splits_by_group(records) -> dict[str, set[str]]:
    sides = defaultdict(set)
    for record in records:
        sides[record.group].add(record.split)
    return sides


def assert_group_aware(records) -> None:
    leaks = {group: sides for group, sides in splits_by_group(records).items() if len(sides) > 1}
    assert not leaks


def unsplit(label: str, group: str, name: str | None = None) -> VideoRecord:
    return VideoRecord(Path(f"/data/{label}/{name or group}.mp4"), label, group, "")


# --- groups and splits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup_g08"),
        ("UCF/Class/v_HandStandPushups_g21_c04.avi", "HandStandPushups_g21"),
        ("v_some_label_g2_c13.mkv", "some_label_g2"),
        ("clip 07.mp4", "clip 07"),
        ("v_Broken_g08.avi", "v_Broken_g08"),
    ],
)
def test_parse_group(name, group):
    assert parse_group(name) == group


def test_split_is_group_aware_deterministic_and_proportional():
    records = [
        unsplit(label, f"{label}_g{g:02d}", f"{label}_g{g:02d}_c{c}")
        for label in ("a", "b")
        for g in range(100)
        for c in range(3)
    ]
    first = assign_splits(records)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again = {r.path: r.split for r in assign_splits(shuffled)}
    assert {r.path: r.split for r in first} == again
    assert_group_aware(first)
    for label in ("a", "b"):
        groups = Counter(r.split for r in first if r.label == label and r.path.stem.endswith("c0"))
        assert groups == {"train": 70, "val": 15, "test": 15}


@pytest.mark.parametrize("n_groups", [3, 4, 5, 7, 10])
def test_small_labels_still_get_every_split(n_groups):
    records = [unsplit("x", f"g{g}") for g in range(n_groups)]
    counts = Counter(r.split for r in assign_splits(records))
    assert set(counts) == set(SPLITS)
    assert counts["train"] >= counts["val"]


def test_fewer_groups_than_splits_favour_train_then_test():
    assert [r.split for r in assign_splits([unsplit("x", "g0")])] == ["train"]
    two = assign_splits([unsplit("x", "g0"), unsplit("x", "g1")])
    assert sorted(r.split for r in two) == ["test", "train"]


def test_given_splits_are_kept_and_extend_to_their_group():
    records = [
        VideoRecord(Path("/d/a/1.mp4"), "a", "g1", "test"),
        VideoRecord(Path("/d/a/2.mp4"), "a", "g1", ""),
        *[unsplit("a", f"h{i}") for i in range(6)],
    ]
    out = assign_splits(records)
    assert [r.split for r in out[:2]] == ["test", "test"]
    assert all(r.split in SPLITS for r in out)


def test_a_group_given_two_splits_is_an_error():
    records = [
        VideoRecord(Path("/d/a/1.mp4"), "a", "g1", "train"),
        VideoRecord(Path("/d/a/2.mp4"), "a", "g1", "val"),
    ]
    with pytest.raises(ManifestError, match="group 'g1' is in both train and val"):
        assign_splits(records)


def test_a_group_shared_by_labels_stays_on_one_side():
    records = [unsplit(label, f"subject{s}", f"subject{s}") for label in "abc" for s in range(9)]
    out = assign_splits(records)
    assert_group_aware(out)
    assert {r.split for r in out} == set(SPLITS)


@given(
    groups=st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 30), st.integers(1, 4)),
        min_size=1,
        max_size=60,
    ),
    val=st.sampled_from([0.0, 0.1, 0.15, 0.3]),
    test=st.sampled_from([0.0, 0.15, 0.2]),
)
@settings(max_examples=150, deadline=None)
def test_split_properties(groups, val, test):
    records, seen = [], set()
    for label, g, clips in groups:
        if (label, g) in seen:
            continue
        seen.add((label, g))
        records += [unsplit(label, f"{label}{g}", f"{label}{g}_{c}") for c in range(clips)]
    fractions = SplitFractions.from_holdout(val=val, test=test)
    out = assign_splits(records, fractions)
    assert_group_aware(out)
    groups_per_label = Counter(label for label, _ in seen)
    for label, n in groups_per_label.items():
        sides = {r.split for r in out if r.label == label}
        wanted = {s for s, f in zip(SPLITS, fractions.as_tuple(), strict=True) if f > 0}
        if n >= 3:
            assert sides == wanted
        assert sides <= wanted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": 0.7, "val": 0.2, "test": 0.2}, "must sum to 1, got 1.1"),
        ({"train": 0.0, "val": 0.5, "test": 0.5}, "train fraction must be positive"),
        ({"train": 1.2, "val": -0.2, "test": 0.0}, "train fraction must be between 0 and 1"),
        ({"train": float("nan"), "val": 0.5, "test": 0.5}, "train fraction must be between"),
    ],
)
def test_bad_fractions(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SplitFractions(**kwargs)


def test_fractions_from_holdout():
    assert SplitFractions.from_holdout(0.1, 0.2).as_tuple() == pytest.approx((0.7, 0.1, 0.2))
    with pytest.raises(ConfigError, match="train fraction must be positive"):
        SplitFractions.from_holdout(0.6, 0.5)


# --- manifest files ---------------------------------------------------------------------------


def test_manifest_round_trip_relative_inside_absolute_outside(tmp_path):
    outside = tmp_path / "elsewhere" / "x.mkv"
    (tmp_path / "data").mkdir()
    records = [
        VideoRecord(tmp_path / "data" / "cat" / "a b.mp4", "cat", "a b", "train"),
        VideoRecord(tmp_path / "data" / "dog" / "c,d.avi", "dog, big", "g", "test"),
        VideoRecord(outside, "dog, big", "x", "val"),
    ]
    manifest = write_manifest(records, tmp_path / "data" / "manifest.csv")
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path,label,group,split"
    assert lines[1] == "cat/a b.mp4,cat,a b,train"
    assert lines[2] == '"dog/c,d.avi","dog, big",g,test'
    assert lines[3].startswith(f"{outside},")
    assert read_manifest(manifest) == records
    assert [p.name for p in manifest.parent.iterdir()] == ["manifest.csv"]


def test_manifest_moves_with_its_dataset(tmp_path):
    records = [VideoRecord(tmp_path / "a" / "v.mp4", "a", "v", "train")]
    write_manifest(records, tmp_path / "manifest.csv")
    moved = tmp_path.rename(tmp_path.with_name(tmp_path.name + "-moved"))
    assert read_manifest(moved / "manifest.csv")[0].path == moved / "a" / "v.mp4"


def test_write_manifest_needs_an_existing_folder(tmp_path):
    records = [VideoRecord(tmp_path / "v.mp4", "a", "v", "train")]
    with pytest.raises(ManifestError, match=r"output folder .*missing does not exist"):
        write_manifest(records, tmp_path / "missing" / "manifest.csv")
    with pytest.raises(ManifestError, match="is a folder"):
        write_manifest(records, tmp_path)
    with pytest.raises(ManifestError, match="no records"):
        write_manifest([], tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="unknown split ''"):
        write_manifest([VideoRecord(tmp_path / "v.mp4", "a", "v", "")], tmp_path / "m.csv")
    assert list(tmp_path.iterdir()) == []


def test_rewriting_a_manifest_replaces_it(tmp_path):
    path = tmp_path / "m.csv"
    write_manifest([VideoRecord(tmp_path / "1.mp4", "a", "1", "train")], path)
    write_manifest([VideoRecord(tmp_path / "2.mp4", "b", "2", "val")], path)
    assert [r.label for r in read_manifest(path)] == ["b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\nx.mp4,a\n", r"missing column\(s\) group, split \(found: path, label\)"),
        ("", r"missing column\(s\) path, label, group, split \(found: none\)"),
        ("path,label,group,split\n", "no rows"),
        ("path,label,group,split\nx.mp4,a,g,training\n", "row 2: unknown split 'training'"),
        ("path,label,group,split\nx.mp4,a,g,\n", "row 2: empty split"),
        ("path,label,group,split\nx.mp4,a,g,train\ny.mp4,,g,val\n", "row 3: empty label"),
        ("path,label,group,split\n,a,g,train\n", "row 2: empty path"),
        (
            "path,label,group,split\nx.mp4,a,g,train\n\nsub/../x.mp4,b,h,test\n",
            r"row 4: duplicate path sub/../x.mp4 \(first at row 2\)",
        ),
        ("path,label,group,split\nx.mp4,a,g,train,extra\n", "row 2: 5 fields, header has 4"),
    ],
)
def test_read_manifest_errors_name_file_and_row(tmp_path, text, message):
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message) as excinfo:
        read_manifest(path)
    assert str(excinfo.value).startswith(str(path))
    assert "\n" not in str(excinfo.value)


def test_read_manifest_tolerates_bom_case_blank_group_and_extra_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "\ufeffPath,Label,Group,Split,notes\nv_A_g03_c01.avi,A,,Train,hello\n", encoding="utf-8"
    )
    (record,) = read_manifest(path)
    assert record == VideoRecord(tmp_path / "v_A_g03_c01.avi", "A", "A_g03", "train")


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "nope.csv")


# --- index sources ----------------------------------------------------------------------------


@pytest.fixture
def tree(make_video) -> Path:
    """``videos/<label>/...``: 3 labels × 4 groups × 2 clips of real tiny videos, plus clutter."""
    for label, ext in (("cat", ".mp4"), ("dog", ".avi"), ("eel", ".mkv")):
        for g in range(1, 5):
            for c in range(1, 3):
                make_video(f"videos/{label}/v_{label}_g{g:02d}_c{c:02d}{ext}", n_frames=2)
    root = make_video("videos/cat/clip.mp4", n_frames=2).parents[1]
    (root / "cat" / "notes.txt").write_text("not a video")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("top-level file, no label")
    (root / ".cache").mkdir()
    return root


def test_index_folder(tree):
    result = index_folder(tree)
    # notes.txt and README.md are named; hidden entries are not listed
    assert result.passed_over == [tree / "README.md", tree / "cat" / "notes.txt"]
    assert result.outside == 0
    assert result.labels == ["cat", "dog", "eel"]
    assert len(result.records) == 3 * 8 + 1
    assert all(r.path.is_absolute() and r.path.is_file() for r in result.records)
    by_path = {r.path.name: r for r in result.records}
    assert by_path["v_dog_g03_c02.avi"].group == "dog_g03"
    assert by_path["clip.mp4"].group == "clip"
    assert_group_aware(result.records)
    for label in result.labels:
        assert {r.split for r in result.records if r.label == label} == set(SPLITS)
    assert index_folder(tree).records == result.records


def test_index_folder_over_the_sample_dataset(sample_dataset):
    result = index_source(sample_dataset.root)
    assert len(result.records) == len(sample_dataset.files)
    assert result.passed_over == []
    assert result.labels == sorted(sample_dataset.labels)
    assert_group_aware(result.records)
    assert len(splits_by_group(result.records)) == 6 * 4
    for label in sample_dataset.labels:
        assert {r.split for r in result.records if r.label == label} == set(SPLITS)


def test_index_folder_errors(tmp_path, tree):
    with pytest.raises(ManifestError, match="no such folder"):
        index_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no class folders"):
        index_folder(tmp_path / "empty")
    (tree / "fish").mkdir()
    (tree / "fish" / "readme.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"class folder 'fish' has no video files \(1 other"):
        index_folder(tree)


def write_ucf_lists(lists: Path, split_id: int, train: list[str], test: list[str]) -> None:
    lists.mkdir(exist_ok=True)
    (lists / "classInd.txt").write_text("1 ApplyLipstick\r\n2 HandstandPushups\r\n3 Knitting\r\n")
    classes = {"ApplyLipstick": 1, "HandstandPushups": 2, "Knitting": 3}
    (lists / f"trainlist0{split_id}.txt").write_text(
        "".join(f"{line} {classes.get(line.split('/')[0], 9)}\r\n" for line in train)
    )
    (lists / f"testlist0{split_id}.txt").write_text("".join(f"{line}\r\n" for line in test))


@pytest.fixture
def ucf(make_video) -> tuple[Path, Path, list[str], list[str]]:
    """A tiny UCF101 layout: 3 classes × 6 groups × 2 clips; groups 6 are the test list.

    HandstandPushups keeps UCF101's quirk: its files are spelled ``v_HandStandPushups_...``.
    """
    train, test = [], []
    for cls in ("ApplyLipstick", "HandstandPushups", "Knitting"):
        stem_cls = "HandStandPushups" if cls == "HandstandPushups" else cls
        for g in range(1, 7):
            for c in range(1, 3):
                name = f"{cls}/v_{stem_cls}_g{g:02d}_c{c:02d}.avi"
                (test if g == 6 else train).append(name)
                make_video(f"UCF-101/{name}", n_frames=2, width=32, height=32)
    root = make_video("UCF-101/ApplyLipstick/v_ApplyLipstick_g01_c01.avi", n_frames=2).parents[1]
    lists = root.parent / "ucfTrainTestlist"
    write_ucf_lists(lists, 2, train, test)
    return root, lists, train, test


def test_index_ucf101(ucf):
    root, lists, train, test = ucf
    result = index_ucf101(root, lists, split_id=2)
    assert len(result.records) == len(train) + len(test)
    by_name = {r.path.relative_to(root).as_posix(): r for r in result.records}
    assert {name for name, r in by_name.items() if r.split == "test"} == set(test)
    assert {by_name[name].split for name in train} == {"train", "val"}
    assert by_name[train[0]].group == "ApplyLipstick_g01"
    assert by_name["HandstandPushups/v_HandStandPushups_g03_c02.avi"].label == "HandstandPushups"
    assert_group_aware(result.records)
    # 5 train-list groups per class at train:val = 0.70:0.15 → 4 train, 1 val.
    for label in ("ApplyLipstick", "HandstandPushups", "Knitting"):
        groups = {(r.group, r.split) for r in result.records if r.label == label}
        assert Counter(split for _, split in groups) == {"train": 4, "val": 1, "test": 1}


def test_index_ucf101_errors(ucf, tmp_path):
    root, lists, train, test = ucf
    with pytest.raises(ConfigError, match="split id must be 1, 2 or 3, got 4"):
        index_ucf101(root, lists, split_id=4)
    with pytest.raises(ManifestError, match=r"trainlist01\.txt: no such file"):
        index_ucf101(root, lists, split_id=1)
    write_ucf_lists(lists, 3, [*train, "Surfing/v_Surfing_g01_c01.avi"], test)
    with pytest.raises(
        ManifestError, match=r"trainlist03\.txt, line 31: class 'Surfing' is not in classInd\.txt"
    ):
        index_ucf101(root, lists, split_id=3)
    write_ucf_lists(lists, 3, train, [*test, train[0]])
    with pytest.raises(ManifestError, match="is listed twice"):
        index_ucf101(root, lists, split_id=3)
    (root / train[5]).unlink()
    with pytest.raises(ManifestError, match=r"1 listed videos are missing \(first: .*g03_c02"):
        index_ucf101(root, lists, split_id=2)
    (lists / "trainlist02.txt").write_text("Knitting/v_Knitting_g01_c01.avi 1\n")
    with pytest.raises(ManifestError, match="class index 1 is not 'Knitting'"):
        index_ucf101(root, lists, split_id=2)


def test_index_source_dispatch(ucf, tree):
    root, lists, *_ = ucf
    assert (
        index_source(root, ucf101_lists=lists, split_id=2).records
        == index_ucf101(root, lists, 2).records
    )
    assert index_source(tree).records == index_folder(tree).records


def test_index_csv(tree, tmp_path):
    videos = sorted(tree.rglob("*.mp4"))  # cat: 9 clips in 5 groups
    absolute = sorted(tree.rglob("*.avi"))[0]
    source = tree / "list.csv"
    given = {"v_cat_g01_c01.mp4": "test"}  # its group (cat_g01) follows it
    rows = [f"{p.relative_to(tree).as_posix()},cat,,{given.get(p.name, '')}" for p in videos]
    rows.append(f"{absolute},dog,special,val")
    source.write_text("path,label,group,split\n" + "\n".join(rows) + "\n")
    result = index_csv(source)
    by_name = {r.path.name: r for r in result.records}
    assert by_name["v_cat_g01_c01.mp4"].split == by_name["v_cat_g01_c02.mp4"].split == "test"
    assert by_name[absolute.name] == VideoRecord(absolute, "dog", "special", "val")
    assert by_name["clip.mp4"].group == "clip"
    assert_group_aware(result.records)
    assert index_source(source).records == result.records


def test_index_csv_with_only_path_and_label(tree):
    source = tree / "list.csv"
    lines = [f"{p.relative_to(tree).as_posix()},{p.parent.name}" for p in tree.rglob("*.mkv")]
    source.write_text("path,label\n" + "\n".join(lines) + "\n")
    result = index_csv(source)
    assert {r.split for r in result.records} == set(SPLITS)
    assert_group_aware(result.records)


def test_index_csv_errors(tree):
    source = tree / "list.csv"
    source.write_text("file,label\nx.mp4,a\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) path"):
        index_csv(source)
    source.write_text("path,label\ncat/nope.mp4,cat\n")
    with pytest.raises(ManifestError, match=r"1 videos do not exist \(first: .*nope\.mp4\)"):
        index_csv(source)
    source.write_text(
        "path,label,group,split\ncat/clip.mp4,cat,g,train\ncat/v_cat_g01_c01.mp4,cat,g,test\n"
    )
    with pytest.raises(ManifestError, match=r"list\.csv: group 'g' is in both train and test"):
        index_csv(source)
