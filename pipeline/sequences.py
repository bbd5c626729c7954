"""Cached per-frame features → fixed-length sequences: uniform to evaluate, jittered to train.

Pure NumPy. A video of ``T`` frames becomes ``seq_len`` frame indices; videos shorter than
``seq_len`` keep every frame and are right-padded with zeros plus a boolean mask (True = real
frame), so the RNN heads skip the padding. Training re-draws the indices every epoch (a random
temporal crop, then one random frame per equal segment of it), which augments the cached
features without re-extracting anything; evaluation takes the centre frame of each segment
of the whole video, which is deterministic and what ``predict`` reuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipeline.errors import ConfigError

MIN_CROP_FRACTION = 0.8
"""Shortest training crop, as a fraction of the video's frames (1.0 disables cropping)."""


def check_seq_len(seq_len: int) -> None:
    """Raise :class:`ConfigError` unless ``seq_len`` is a positive frame count."""
    if int(seq_len) != seq_len or seq_len < 1:
        raise ConfigError(f"--seq-len must be a whole number of frames >= 1, got {seq_len}")


def _segment_indices(start: int, span: int, seq_len: int, position: np.ndarray) -> np.ndarray:
    """One index per equal segment of ``[start, start + span)``; ``position`` in [0, 1) each."""
    width = span / seq_len
    edges = start + width * np.arange(seq_len)
    return np.minimum(np.floor(edges + position * width), start + span - 1).astype(np.int64)


def uniform_indices(num_frames: int, seq_len: int) -> np.ndarray:
    """Deterministic evaluation sampling: the centre frame of ``seq_len`` equal segments.

    Covers the whole video, so a long video is seen end to end at a coarser stride. E.g.
    100 frames, ``seq_len`` 4 → segments of 25 frames → indices ``[12, 37, 62, 87]``.

    Args:
        num_frames: frames stored for the video (``T`` >= 0).
        seq_len: frames per sample (>= 1).

    Returns:
        ``[min(T, seq_len)]`` int64 increasing frame indices; every frame (``arange(T)``)
        when the video is shorter than ``seq_len``.
    """
    check_seq_len(seq_len)
    if num_frames <= seq_len:
        return np.arange(num_frames, dtype=np.int64)
    # Exact integer arithmetic: floor((k + 1/2) * T / seq_len). In floating point the centre
    # of a segment that falls on a whole frame (12 frames, 7 samples: 6.0) can round down.
    segments = np.arange(seq_len, dtype=np.int64)
    return (2 * segments + 1) * num_frames // (2 * seq_len)


def random_indices(
    num_frames: int,
    seq_len: int,
    rng: np.random.Generator,
    min_crop_fraction: float = MIN_CROP_FRACTION,
) -> np.ndarray:
    """Training sampling: a random temporal crop, then a random frame per equal segment.

    The crop keeps between ``min_crop_fraction`` and all of the video (never fewer than
    ``seq_len`` frames) at a random start; the per-segment jitter varies the stride. The
    indices stay increasing, so the order of events is preserved.

    Args:
        num_frames: frames stored for the video (``T`` >= 0).
        seq_len: frames per sample (>= 1).
        rng: the source of randomness (seeded by the caller).
        min_crop_fraction: shortest crop as a fraction of ``T``, in (0, 1].

    Returns:
        ``[min(T, seq_len)]`` int64 non-decreasing frame indices; every frame when the video
        is shorter than ``seq_len``.
    """
    check_seq_len(seq_len)
    if num_frames <= seq_len:
        return np.arange(num_frames, dtype=np.int64)
    shortest = max(seq_len, int(np.ceil(min_crop_fraction * num_frames)))
    span = int(rng.integers(shortest, num_frames + 1))
    start = int(rng.integers(0, num_frames - span + 1))
    return _segment_indices(start, span, seq_len, rng.random(seq_len))


def pad_sequence(frames: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``[t, D]`` frames (``t <= seq_len``) with zeros to ``[seq_len, D]``.

    Returns:
        ``(features [seq_len, D]`` in the input dtype, ``mask [seq_len]`` bool, True for the
        first ``t`` (real) frames).
    """
    t = frames.shape[0]
    if t > seq_len:
        raise ValueError(f"{t} frames do not fit in seq_len {seq_len}")
    out = np.zeros((seq_len, frames.shape[1]), dtype=frames.dtype)
    out[:t] = frames
    mask = np.zeros(seq_len, dtype=bool)
    mask[:t] = True
    return out, mask


def stack_sequences(
    videos: Sequence[np.ndarray], indices: Sequence[np.ndarray], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gather ``indices[i]`` from ``videos[i]`` and pad each to ``seq_len``.

    Args:
        videos: per-video ``[T_i, D]`` features (float16 stays float16).
        indices: per-video frame indices, each of length ``<= seq_len``.
        seq_len: frames per sample.

    Returns:
        ``(features [N, seq_len, D]``, ``mask [N, seq_len]`` bool).
    """
    dim = videos[0].shape[1] if len(videos) else 0
    dtype = videos[0].dtype if len(videos) else np.float16
    features = np.zeros((len(videos), seq_len, dim), dtype=dtype)
    mask = np.zeros((len(videos), seq_len), dtype=bool)
    for i, (video, idx) in enumerate(zip(videos, indices, strict=True)):
        if len(idx) > seq_len:
            raise ValueError(f"{len(idx)} frames do not fit in seq_len {seq_len}")
        # Gathered straight into the batch (one copy; a memory-mapped video reads only these
        # rows), rather than through pad_sequence's per-video temporaries.
        features[i, : len(idx)] = video[idx]
        mask[i, : len(idx)] = True
    return features, mask


def eval_sequences(videos: Sequence[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic model inputs for evaluation and prediction (see :func:`uniform_indices`).

    Args:
        videos: per-video ``[T_i, D]`` features.
        seq_len: frames per sample (the model's).

    Returns:
        ``(features [N, seq_len, D]`` in the videos' dtype, ``mask [N, seq_len]`` bool).
    """
    check_seq_len(seq_len)
    return stack_sequences(videos, [uniform_indices(len(v), seq_len) for v in videos], seq_len)


class EvalBatches(Sequence[tuple[np.ndarray, np.ndarray]]):
    """:func:`eval_sequences` of ``videos``, ``batch_size`` videos at a time, made on access.

    ``batches[i]`` is ``(features [B, seq_len, D], mask [B, seq_len])`` for videos
    ``i * batch_size`` onwards; only the batch asked for exists in memory, so a pass over a
    split (fitting the normalization, validating) costs memory that does not grow with it.
    """

    def __init__(self, videos: Sequence[np.ndarray], seq_len: int, batch_size: int = 256):
        check_seq_len(seq_len)
        self.videos = videos
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.indices = [uniform_indices(len(v), seq_len) for v in videos]

    def __len__(self) -> int:
        return -(-len(self.videos) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range ({len(self)} batches)")
        chosen = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return stack_sequences(self.videos[chosen], self.indices[chosen], self.seq_len)


class TrainingSampler:
    """Shuffled batches of freshly jittered sequences, re-drawn every epoch, seeded.

    Epoch ``e`` is a pure function of ``(seed, e)``: its shuffle order and every video's
    indices come from ``numpy.random.default_rng([seed, e])``, so a batch does not depend
    on how often or in which order batches were requested.

    Args:
        videos: per-video ``[T_i, D]`` features, read once and kept (float16 stays float16).
        labels: ``[N]`` int class indices.
        seq_len: frames per sample.
        batch_size: samples per batch (the last batch of an epoch may be smaller).
        seed: the randomness of every epoch.
        min_crop_fraction: see :func:`random_indices`.
        prefetch: optional ``(video index, frame indices)`` hint, called for the videos of
            batch ``i + PREFETCH_BATCHES`` when batch ``i`` is assembled (e.g. to have
            memory-mapped rows read ahead); it never changes what a batch holds.
        passes: passes over ``videos`` per epoch, each with its own shuffle and crops, so
            every video is seen ``passes`` times an epoch (see
            :attr:`~pipeline.train_config.TrainConfig.min_epoch_sequences`).
    """

    PREFETCH_BATCHES = 4

    def __init__(
        self,
        videos: Sequence[np.ndarray],
        labels: np.ndarray,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        min_crop_fraction: float = MIN_CROP_FRACTION,
        prefetch: Callable[[int, np.ndarray], None] | None = None,
        passes: int = 1,
    ):
        check_seq_len(seq_len)
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        if not len(videos):
            raise ConfigError("no training videos to sample from")
        self.videos = list(videos)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.min_crop_fraction = min_crop_fraction
        self.prefetch = prefetch
        self.passes = passes
        self.epoch = 0
        self._plan_epoch: int | None = None
        self._slots: list[tuple[int, np.ndarray]] = []

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        return -(-len(self.videos) * self.passes // self.batch_size)

    def _plan(self) -> None:
        if self._plan_epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self._slots = []
        for _ in range(self.passes):
            order = rng.permutation(len(self.videos))
            crops = [
                random_indices(len(v), self.seq_len, rng, self.min_crop_fraction)
                for v in self.videos
            ]
            self._slots += [(int(i), crops[i]) for i in order]
        self._plan_epoch = self.epoch

    def _batch_slots(self, index: int) -> list[tuple[int, np.ndarray]]:
        """``(video, frame indices)`` of each sequence of batch ``index`` this epoch."""
        return self._slots[index * self.batch_size : (index + 1) * self.batch_size]

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch.

        Returns:
            ``(features [B, seq_len, D]``, ``mask [B, seq_len]`` bool, ``labels [B]`` int64).
        """
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range (epoch has {self.num_batches})")
        self._plan()
        if self.prefetch is not None:
            ahead = range(index + 1, index + 1 + self.PREFETCH_BATCHES) if index == 0 else []
            for later in ahead or [index + self.PREFETCH_BATCHES]:
                for video, indices in self._batch_slots(later):
                    self.prefetch(video, indices)
        slots = self._batch_slots(index)
        videos = [video for video, _ in slots]
        features, mask = stack_sequences(
            [self.videos[v] for v in videos], [indices for _, indices in slots], self.seq_len
        )
        return features, mask, self.labels[videos]

    def next_epoch(self) -> None:
        """Move on to the next epoch's shuffle and crops."""
        self.epoch += 1
