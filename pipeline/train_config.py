"""The options of one training run (``train_config.json``), with their defaults and checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pipeline.choices import (
    ALWAYS_STANDARDIZED,
    DELTA_RNN_HEADS,
    LINEAR_HEADS,
    RECURRENT_HEADS,
    Head,
    choose,
)
from pipeline.errors import ConfigError
from pipeline.sequences import MIN_CROP_FRACTION, check_seq_len

IGNORED_BY = {
    "units": frozenset(Head) - RECURRENT_HEADS,
    "layers": frozenset(Head) - RECURRENT_HEADS,
    "projection": LINEAR_HEADS | DELTA_RNN_HEADS,
    "input_dropout": LINEAR_HEADS | DELTA_RNN_HEADS,
    "dense_units": LINEAR_HEADS,
    "normalize": ALWAYS_STANDARDIZED,
}
"""Option → the heads whose model it does not change (``tests/test_heads.py`` builds each head
with each option changed to prove it): no recurrent layer reads ``units``/``layers``; the
linear heads leave out the projection, input dropout and hidden layer; the ``delta_*`` heads'
recurrent layers read four self-similarity signals per frame, never projected; the delta
heads always standardize."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (``train_config.json``).

    Attributes:
        head: builder name, one of :class:`~pipeline.choices.Head`.
        seq_len: frames per sample.
        units: recurrent units per layer.
        layers: stacked recurrent layers.
        dropout: dropout rate before the softmax layer.
        dense_units: hidden dense width (0 = none).
        epochs: maximum training epochs.
        min_epoch_sequences: a train split smaller than this is passed over several times an
            epoch, each pass re-shuffled and re-cropped, so that an epoch (and with it
            ``epochs`` and ``patience``) is at least this many sequences; 0: one pass.
        batch_size: sequences per gradient step.
        learning_rate: Adam's learning rate.
        patience: epochs without a val_loss improvement before early stopping.
        seed: seeds weight init, shuffling and temporal crops.
        min_crop_fraction: shortest random training crop, as a fraction of a video.
        normalize: standardize features with train-split statistics inside the model
            (always on for :data:`pipeline.choices.ALWAYS_STANDARDIZED` heads).
        projection: per-frame linear projection width before the temporal layers (0: none).
        input_dropout: dropout on the per-frame inputs of the temporal layers.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).
    """

    head: str = Head.DELTA_LSTM
    seq_len: int = 16
    units: int = 64
    layers: int = 1
    dropout: float = 0.0
    dense_units: int = 32
    epochs: int = 30
    min_epoch_sequences: int = 1024
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    min_crop_fraction: float = MIN_CROP_FRACTION
    normalize: bool = False
    projection: int = 0
    input_dropout: float = 0.0
    weight_decay: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for an unknown head or an out-of-range option."""
        choose(Head, self.head, "--head")
        check_seq_len(self.seq_len)
        for name in ("units", "layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("dense_units", "patience", "min_epoch_sequences"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.projection < 0 or self.weight_decay < 0:
            raise ConfigError("--projection and --weight-decay must be >= 0")
        if not self.learning_rate > 0:
            raise ConfigError(f"--lr must be > 0, got {self.learning_rate}")
        if not 0.0 < self.min_crop_fraction <= 1.0:
            raise ConfigError(f"min_crop_fraction must be in (0, 1], got {self.min_crop_fraction}")

    def passes(self, train_videos: int) -> int:
        """Passes over a train split of ``train_videos`` per epoch (see
        ``min_epoch_sequences``)."""
        return max(1, -(-self.min_epoch_sequences // max(train_videos, 1)))

    def ignored_options(self) -> list[str]:
        """The options set to a non-default value that have no effect on this head, as
        ``--flags`` (e.g. ``["--units"]`` for ``head="delta", units=128``)."""
        default = TrainConfig()
        return [
            f"--{name.replace('_', '-')}"
            for name, heads in IGNORED_BY.items()
            if self.head in heads and getattr(self, name) != getattr(default, name)
        ]

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
