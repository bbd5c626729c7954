"""The synthetic dataset: real files in four codecs, order-only pairs, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.encode import FORMATS, write_video
from pipeline.errors import ConfigError
from pipeline.sample_data import CATALOGUE, clip_params, generate, render_clip
from pipeline.splits import parse_group
from pipeline.video import VideoReader

ORDER_PAIRS = [(c.reverse_of, c.label) for c in CATALOGUE if c.reverse_of]


def decode_rgb(path: Path) -> np.ndarray:
    """Every frame at full size, ``[T, H, W, 3]`` int16 (room for differences)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames).astype(np.int16)


def params_of(path: Path):
    """Clip parameters behind a file of the seed-0 dataset, from its name."""
    label = path.parent.name
    group, clip = (int(part[1:]) - 1 for part in path.stem.split("_")[-2:])
    return clip_params(label, group * 3 + clip, seed=0)


def test_default_classes_are_two_order_pairs_and_two_appearance_classes():
    first_six = CATALOGUE[:6]
    assert [c.label for c in first_six] == [
        "brightening",
        "darkening",
        "growing",
        "shrinking",
        "disc",
        "stripes",
    ]
    assert [c.reverse_of for c in first_six if c.reverse_of] == ["brightening", "growing"]
    assert ("clockwise", "counterclockwise") in ORDER_PAIRS


def test_every_file_decodes_with_the_frame_count_and_size_written(sample_dataset):
    assert len(sample_dataset.files) == 6 * 12
    seen_codecs = set()
    for path in sample_dataset.files:
        params = params_of(path)
        assert path.suffix == params.video_format.extension
        reader = VideoReader(path, size=32)
        frames = reader.read_all().frames
        assert frames.shape == (params.n_frames, 32, 32, 3)
        info = reader.info
        assert (info.width, info.height) == (params.width, params.height)
        assert info.frame_count == params.n_frames
        assert info.fps == pytest.approx(params.fps)
        seen_codecs.add(info.codec)
    assert seen_codecs == {"h264", "mpeg4", "vp9", "mjpeg"}


def test_clips_vary_in_rate_size_and_length(sample_dataset):
    params = [params_of(path) for path in sample_dataset.files]
    assert len({p.fps for p in params}) >= 4
    assert len({(p.width, p.height) for p in params}) == 3
    seconds = [p.n_frames / p.fps for p in params]
    assert min(seconds) >= 2.0 and max(seconds) <= 4.0 + 1 / 12
    assert all(p.width % 2 == 0 and p.height % 2 == 0 for p in params)


def test_decoded_frames_match_the_rendered_frames(sample_dataset):
    for path in sample_dataset.files[::7]:
        rendered = render_clip(params_of(path)).astype(np.int16)
        decoded = decode_rgb(path)
        assert decoded.shape == rendered.shape
        assert np.abs(decoded - rendered).mean() < 5, path.name


@pytest.mark.parametrize(("forward", "backward"), ORDER_PAIRS)
def test_order_pair_frames_are_exactly_reversed(forward, backward):
    for index in range(4):  # one clip per codec
        a, b = clip_params(forward, index), clip_params(backward, index)
        assert dataclasses.replace(b, label=a.label, reverse=False) == a
        frames_a, frames_b = render_clip(a), render_clip(b)
        np.testing.assert_array_equal(frames_b, frames_a[::-1])
        # Same frames, so no single frame or frame average tells the classes apart.
        np.testing.assert_array_equal(frames_a.mean(axis=0), frames_b.mean(axis=0))
        assert not np.array_equal(frames_a, frames_b)


def test_order_pair_files_decode_approximately_reversed(sample_dataset):
    for forward, backward in ORDER_PAIRS[:2]:  # the pairs of the default dataset
        for index in range(4):
            a, b = clip_params(forward, index), clip_params(backward, index)
            decoded_a = decode_rgb(sample_dataset.root / forward / a.file_name)
            decoded_b = decode_rgb(sample_dataset.root / backward / b.file_name)
            reversed_error = np.abs(decoded_b - decoded_a[::-1]).mean()
            assert reversed_error < 3, (forward, index, a.video_format.codec)
            assert reversed_error < 0.5 * np.abs(decoded_b - decoded_a).mean()


def test_appearance_classes_look_different():
    frames = {label: render_clip(clip_params(label, 0)) for label in ("disc", "stripes")}
    for label, video in frames.items():
        assert video.std() > 20, label  # an object on a background, not a flat field
    # Stripes fill about half the frame with foreground; a disc covers much less.
    bright = {label: (video.max(axis=-1) > 140).mean() for label, video in frames.items()}
    assert bright["stripes"] > 2 * bright["disc"]


def test_clips_within_a_class_differ_and_groups_share_colours():
    params = [clip_params("disc", index) for index in range(6)]
    assert len({p.center for p in params}) == 6
    assert params[0].background == params[2].background != params[3].background
    assert render_clip(params[0]).shape != render_clip(params[1]).shape or not np.array_equal(
        render_clip(params[0]), render_clip(params[1])
    )


def test_files_are_named_in_groups_like_ucf101(sample_dataset):
    names = [path.name for path in sample_dataset.files if path.parent.name == "disc"]
    assert names[:4] == [
        "v_disc_g01_c01.mp4",
        "v_disc_g01_c02.avi",
        "v_disc_g01_c03.webm",
        "v_disc_g02_c01.mkv",
    ]
    groups = {parse_group(path) for path in sample_dataset.files}
    assert len(groups) == 6 * 4
    assert "disc_g04" in groups


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path):
    first = generate(tmp_path / "a", classes=2, per_class=4, seed=7)
    again = generate(tmp_path / "b", classes=2, per_class=4, seed=7, workers=1)
    other = generate(tmp_path / "c", classes=2, per_class=4, seed=8)
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in again
    ]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(first, again, strict=True))
    assert all(x.read_bytes() != y.read_bytes() for x, y in zip(first, other, strict=True))


def test_progress_is_reported_per_file_and_no_partial_files_remain(tmp_path):
    calls = []
    files = generate(tmp_path, classes=3, per_class=1, on_progress=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert sorted(tmp_path.rglob("*")) == sorted([*files, *(f.parent for f in files)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": len(CATALOGUE) + 1}, f"classes must be between 1 and {len(CATALOGUE)}"),
        ({"classes": 0}, "classes must be between 1"),
        ({"per_class": 0}, "per_class must be at least 1"),
        ({"seed": -1}, "seed must be non-negative"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        generate(tmp_path / "out", **kwargs)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_an_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        generate(target, classes=1, per_class=1)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.codec)
def test_write_video_round_trips_each_format(make_video, fmt):
    path = make_video(f"clip{fmt.extension}", n_frames=7, width=48, height=32, fps=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == {"libx264": "h264", "libvpx-vp9": "vp9"}.get(
            fmt.codec, fmt.codec
        )
        frames = list(container.decode(stream))
    assert len(frames) == 7
    assert (frames[0].width, frames[0].height) == (48, 32)


def test_write_video_failure_leaves_no_file(tmp_path):
    odd = np.zeros((3, 33, 47, 3), dtype=np.uint8)  # 4:2:0 H.264 needs even sizes
    with pytest.raises(av.error.FFmpegError):
        write_video(tmp_path / "odd.mp4", odd, fps=10)
    assert list(tmp_path.iterdir()) == []


def test_write_video_rejects_unknown_containers(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot write \.gif files"):
        write_video(tmp_path / "x.gif", np.zeros((2, 16, 16, 3), np.uint8), fps=5)
