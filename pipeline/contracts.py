"""Data contracts exchanged between modules: frozen records with shapes, dtypes and units."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.choices import Split

FEATURE_DIM = 1280
"""Width of MobileNetV2's global-average-pooled output."""

SPLITS = tuple(Split)
"""The splits in manifest order (train, val, test)."""


@dataclass(frozen=True)
class VideoRecord:
    """One manifest row: a video file, its class label, its group and its split.

    ``path`` is absolute once a manifest is loaded; ``group`` keeps related clips on one
    side of a split (e.g. UCF101's ``<Class>_g<NN>``).
    """

    path: Path
    label: str
    group: str
    split: str


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything that determines the features of a frame: stores and heads record it.

    Two extractions are compatible exactly when their configs are equal.

    Attributes:
        weights: identity of the backbone weights: ``imagenet``, ``random:seed=N`` or
            ``file:<name>``.
        weights_sha256: sha256 over the backbone's weight values (see ``backbone.fingerprint``).
        input_size: side of the square backbone input, pixels.
        resize: ``crop`` (centre-crop to square, then resize) or ``squash``.
        fps: frames sampled per second of presentation time; ``None`` keeps every frame.
        dtype: dtype of stored features.
        backbone: backbone name.
        feature_dim: width of one frame's feature vector.
        mixed_precision: the backbone computed in float16 (``--mixed-precision``); its
            features differ from float32 compute by ~1e-3, so the two never share a store.
            Stores written before this field existed read as float32 compute.
    """

    weights: str
    weights_sha256: str
    input_size: int = 224
    resize: str = "crop"
    fps: float | None = None
    dtype: str = "float16"
    backbone: str = "mobilenet_v2"
    feature_dim: int = FEATURE_DIM
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        # options arrive as StrEnum members (pipeline.choices); the record, its JSON and the
        # store's HDF5 attributes hold plain text
        for name in ("weights", "resize", "dtype", "backbone"):
            object.__setattr__(self, name, str(getattr(self, name)))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (``fps`` None stays None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExtractorConfig:
        """Inverse of :meth:`to_dict`; ignores unknown keys so newer files stay readable."""
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("fps") is not None:
            kwargs["fps"] = float(kwargs["fps"])
        if "mixed_precision" in kwargs:
            kwargs["mixed_precision"] = bool(kwargs["mixed_precision"])
        return cls(**kwargs)

    def same_features(self, other: ExtractorConfig) -> bool:
        """True when both configs compute the same features: equal in everything but the
        ``weights`` name (any copy of the same weight values, by sha256, is the same backbone).
        """
        return replace(self, weights=other.weights) == other

    def describe(self) -> str:
        """One-line human description, used in mismatch errors."""
        sampling = "every frame" if self.fps is None else f"{self.fps:g} fps"
        return (
            f"{self.backbone} weights={self.weights} (sha256 {self.weights_sha256[:12]}) "
            f"size={self.input_size} resize={self.resize} sampling={sampling} dtype={self.dtype} "
            f"compute={'float16' if self.mixed_precision else 'float32'}"
        )


@dataclass(frozen=True)
class VideoInfo:
    """What decoding learned about one video file.

    Attributes:
        path: the file as given.
        fps: the stream's average frame rate (frames per second; 0.0 when unknown).
        width, height: displayed size in pixels (after pixel aspect ratio and rotation).
        frame_count: frames actually decoded and kept.
        container_frames: frame count the container claims (0 when unknown).
        duration_sec: last decoded frame's timestamp minus the first's, plus one nominal
            frame period (the stream's duration, also when sampling keeps fewer frames).
        codec: decoder name.
        rotation: display rotation applied, degrees counter-clockwise.
        corrupt_packets: packets that failed to demux or decode and were skipped.
        decoded_frames: frames the decoder output intact (before ``fps`` sampling); every
            one is kept unless sampling skips it.
        video_packets: non-empty packets read from the stream, ``discarded_packets`` left
            out (one per frame in every codec/container pair the tests cover).
        timestamps_repaired: frames whose stored timestamp is not their own pts (missing,
            scrambled or not increasing; see ``video._Retimer``).
        discarded_packets: packets the container marks to be decoded but not shown (before
            an edit list's start); never counted as lost.
        stream_index: index of the decoded stream in the container (FFmpeg's best video
            stream); None in stores written before it was recorded.
        video_streams: video streams in the file with more than one picture (the decoded
            one included; cover pictures and one-picture tracks are not counted).
        start_time_sec: the decoded stream's start time (its first pts, seconds): stored
            timestamps are the stream's pts, so ``timestamps - start_time_sec`` is time since
            the start of playback (MPEG-TS/PS streams rarely start at 0). None when unknown.
    """

    path: str
    fps: float
    width: int
    height: int
    frame_count: int
    container_frames: int
    duration_sec: float
    codec: str
    rotation: int = 0
    corrupt_packets: int = 0
    decoded_frames: int = 0
    video_packets: int = 0
    timestamps_repaired: int = 0
    discarded_packets: int = 0
    stream_index: int | None = None
    video_streams: int = 1
    start_time_sec: float | None = None

    @property
    def partial(self) -> bool:
        """True when damage cost frames: corrupt packets, or fewer frames than the container
        claims or than packets were read (a decoder silently skipping to a keyframe).

        Frames an edit list hides (``discarded_packets``) are in the container's count but
        were never meant to be shown: they are no loss."""
        shown = self.container_frames - self.discarded_packets
        lost = self.decoded_frames < max(shown, self.video_packets)
        return self.corrupt_packets > 0 or (self.decoded_frames > 0 and lost)


@dataclass(frozen=True)
class VideoFeatures:
    """Per-frame features of one video, as stored.

    Attributes:
        video_id: stable id derived from the file's content hash.
        content_sha256: sha256 of the file's bytes.
        features: ``[T, feature_dim]`` array (float16 or float32).
        timestamps_sec: ``[T]`` float64 presentation times, seconds (pts × time_base).
        info: decode facts (source path, fps, size, counts).
    """

    video_id: str
    content_sha256: str
    features: np.ndarray
    timestamps_sec: np.ndarray
    info: VideoInfo


@dataclass(frozen=True)
class ExtractionFailure:
    """A video that could not be extracted, and why (never silently dropped).

    ``size``/``mtime_ns`` are the file's when it was hashed, recorded for failures of the
    file's content (it does not decode, its decoder hangs): a rerun skips the file while it
    still has them, unless asked to retry. -1: a failure of the run (the file was missing,
    unreadable or changing, a worker was killed), retried by every rerun.
    """

    path: str
    reason: str
    video_id: str | None = None
    size: int = -1
    mtime_ns: int = -1
