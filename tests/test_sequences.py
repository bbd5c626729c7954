"""Sequence sampling: uniform evaluation indices, jittered training crops, padding + mask."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.sequences import (
    EvalBatches,
    TrainingSampler,
    check_seq_len,
    eval_sequences,
    pad_sequence,
    random_indices,
    stack_sequences,
    uniform_indices,
)


def _video(frames: int, dim: int = 4, start: float = 0.0) -> np.ndarray:
    """``[frames, dim]`` float16 whose row ``t`` is all ``start + t`` (frame number readable)."""
    return np.repeat(np.arange(frames, dtype=np.float16)[:, None] + start, dim, axis=1)


def test_uniform_indices_take_segment_centres_over_the_whole_video():
    np.testing.assert_array_equal(uniform_indices(100, 4), [12, 37, 62, 87])
    idx = uniform_indices(1000, 16)
    assert len(idx) == 16 and np.all(np.diff(idx) > 0)
    assert idx[0] < 1000 / 16 and idx[-1] >= 1000 - 1000 / 16  # first and last segment


def test_uniform_indices_hit_the_exact_segment_centre_for_every_length():
    """Regression (#11 item 17): 12 frames, 7 samples took frame 5, not the centre frame 6."""
    np.testing.assert_array_equal(uniform_indices(12, 7), [0, 2, 4, 6, 7, 9, 11])
    for frames in range(2, 160):
        for seq_len in range(1, frames):
            centres = [Fraction(2 * k + 1, 2 * seq_len) * frames for k in range(seq_len)]
            expected = [math.floor(c) for c in centres]
            np.testing.assert_array_equal(uniform_indices(frames, seq_len), expected)


@pytest.mark.parametrize("frames", [0, 1, 5, 16])
def test_uniform_indices_keep_every_frame_of_short_videos(frames):
    np.testing.assert_array_equal(uniform_indices(frames, 16), np.arange(frames))


def test_uniform_indices_split_even_videos_into_equal_halves():
    """Mirrored videos sample the same number of frames from each half (order-blind symmetry)."""
    for frames in range(8, 80, 2):
        assert np.sum(uniform_indices(frames, 8) < frames // 2) == 4


@pytest.mark.parametrize("seq_len", [0, -3, 2.5])
def test_seq_len_below_one_is_a_config_error(seq_len):
    with pytest.raises(ConfigError, match="--seq-len"):
        check_seq_len(seq_len)
    with pytest.raises(ConfigError):
        eval_sequences([_video(4)], seq_len)


def test_random_indices_are_increasing_in_range_and_seeded():
    draws = []
    for seed in range(50):
        idx = random_indices(100, 8, np.random.default_rng(seed))
        assert len(idx) == 8 and np.all(np.diff(idx) >= 0)
        assert idx.min() >= 0 and idx.max() < 100
        # the crop keeps at least 80% of the video: indices span at least 80 - 2 segments
        assert idx[-1] - idx[0] >= 80 - 2 * 80 / 8
        draws.append(tuple(idx))
    assert len(set(draws)) > 40  # jitter: nearly every draw differs
    again = random_indices(100, 8, np.random.default_rng(3))
    np.testing.assert_array_equal(again, draws[3])


def test_random_indices_of_short_videos_are_every_frame():
    np.testing.assert_array_equal(random_indices(5, 8, np.random.default_rng(0)), np.arange(5))


def test_pad_sequence_right_pads_with_zeros_and_masks_the_padding():
    features, mask = pad_sequence(_video(3, start=1), 5)
    assert features.dtype == np.float16 and features.shape == (5, 4)
    np.testing.assert_array_equal(features[:, 0], [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(mask, [True, True, True, False, False])
    with pytest.raises(ValueError):
        pad_sequence(_video(6), 5)


def test_eval_sequences_stack_float16_with_mask():
    features, mask = eval_sequences([_video(100), _video(3), _video(0)], 4)
    assert features.shape == (3, 4, 4) and features.dtype == np.float16
    np.testing.assert_array_equal(features[0, :, 0], [12, 37, 62, 87])
    np.testing.assert_array_equal(mask.sum(axis=1), [4, 3, 0])
    assert not features[2].any()  # an empty video is all padding


def test_stack_sequences_of_nothing_is_empty():
    features, mask = stack_sequences([], [], 4)
    assert features.shape[:2] == (0, 4) and mask.shape == (0, 4)


def _sampler(seed: int = 0, batch_size: int = 4, **options) -> TrainingSampler:
    videos = [_video(20 + 3 * i, start=100 * i) for i in range(10)]
    return TrainingSampler(
        videos, np.arange(10), seq_len=6, batch_size=batch_size, seed=seed, **options
    )


def _epoch(sampler: TrainingSampler, order: list[int] | None = None) -> list[tuple]:
    order = order if order is not None else list(range(sampler.num_batches))
    return [sampler.batch(i) for i in order]


def test_sampler_epoch_visits_every_video_once_shuffled():
    sampler = _sampler()
    assert sampler.num_batches == 3
    batches = _epoch(sampler)
    assert [len(b[2]) for b in batches] == [4, 4, 2]  # the last batch is smaller
    labels = np.concatenate([b[2] for b in batches])
    assert sorted(labels) == list(range(10)) and list(labels) != list(range(10))
    for features, mask, batch_labels in batches:
        assert features.dtype == np.float16 and mask.all()
        # each sample's frames come from its own video (rows start at 100 * label)
        assert np.all(features[:, :, 0] // 100 == batch_labels[:, None])
    with pytest.raises(IndexError):
        sampler.batch(3)


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    a, b = _sampler(seed=7), _sampler(seed=7)
    first = _epoch(a)
    reordered = _epoch(b, [2, 0, 1])
    for x, y in zip(first, [reordered[1], reordered[2], reordered[0]], strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    a.next_epoch()
    second = _epoch(a)
    assert not np.array_equal(first[0][0], second[0][0])  # a fresh shuffle and crop
    assert not np.array_equal(_epoch(_sampler(seed=8))[0][0], first[0][0])


def test_sampler_passes_show_every_video_once_per_pass_with_fresh_crops():
    seen: list[tuple[int, tuple]] = []
    sampler = _sampler(batch_size=4, passes=3, prefetch=lambda v, i: seen.append((v, tuple(i))))
    assert sampler.num_batches == 8  # 30 sequences
    batches = _epoch(sampler)
    labels = np.concatenate([b[2] for b in batches])
    for p in range(3):  # each pass is a permutation of its own
        assert sorted(labels[10 * p : 10 * (p + 1)]) == list(range(10))
    features = np.concatenate([b[0] for b in batches])
    assert np.all(features[:, :, 0] // 100 == labels[:, None])
    crops = {}
    for label, sample in zip(labels, features[:, :, 0], strict=True):
        crops.setdefault(int(label), set()).add(tuple(sample))
    assert max(len(c) for c in crops.values()) > 1  # a video's passes are cropped afresh
    served = [(int(v), tuple(f - 100 * v)) for v, f in zip(labels, features[:, :, 0], strict=True)]
    assert seen == served[4:]  # batch 0 asks for batches 1-4 ahead, batch i for batch i + 4


def test_one_pass_is_the_first_pass_of_many():
    one, three = _sampler(seed=3, batch_size=5), _sampler(seed=3, batch_size=5, passes=3)
    assert (one.num_batches, three.num_batches) == (2, 6)
    for a, b in zip(_epoch(one), _epoch(three, [0, 1]), strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_sampler_rejects_bad_options():
    with pytest.raises(ConfigError):
        TrainingSampler([_video(3)], np.zeros(1), seq_len=4, batch_size=0, seed=0)
    with pytest.raises(ConfigError):
        TrainingSampler([], np.zeros(0), seq_len=4, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="passes"):
        TrainingSampler([_video(3)], np.zeros(1), seq_len=2, batch_size=2, seed=0, passes=0)


def test_eval_batches_are_eval_sequences_cut_into_batches():
    videos = [_video(n) for n in (100, 3, 0, 17, 40)]
    whole_features, whole_mask = eval_sequences(videos, 4)
    batches = EvalBatches(videos, 4, batch_size=2)
    assert len(batches) == 3
    features = np.concatenate([f for f, _ in batches])
    mask = np.concatenate([m for _, m in batches])
    np.testing.assert_array_equal(features, whole_features)
    np.testing.assert_array_equal(mask, whole_mask)
    with pytest.raises(IndexError):
        batches[3]
