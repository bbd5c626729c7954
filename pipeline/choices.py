"""Every closed set of option values, one ``StrEnum`` each: the single source of the choices.

The CLI declares its options with these types, so Typer lists the choices in ``--help`` and
refuses anything else as a usage error (one ``error:`` line, exit 1); library callers that pass
plain strings are checked with :func:`choose`, whose message names the same choices. Members
are ``str``: ``Resize.CROP == "crop"``, and JSON files store the plain value.

Pure Python (no NumPy, no TensorFlow), so the CLI can import it while parsing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from pipeline.errors import ConfigError


class Backbone(StrEnum):
    """``--backbone``: the Keras application computing the frame features (all 1280-d)."""

    MOBILENET_V2 = "mobilenet_v2"
    EFFICIENTNET_B0 = "efficientnet_b0"
    EFFICIENTNET_V2_B0 = "efficientnet_v2_b0"


class Resize(StrEnum):
    """``--resize``: ``crop`` centre-crops to a square keeping aspect; ``squash`` stretches."""

    CROP = "crop"
    SQUASH = "squash"


class FeatureDtype(StrEnum):
    """``--dtype``: the dtype features are stored in."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Split(StrEnum):
    """A manifest's ``split`` column and ``--split``."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Head(StrEnum):
    """``--head``: the stage-2 model (``pipeline.heads`` builds each)."""

    LSTM = "lstm"
    GRU = "gru"
    BIGRU = "bigru"
    MEANPOOL = "meanpool"
    TREND = "trend"
    DELTA = "delta"
    DELTA_GRU = "delta_gru"
    DELTA_LSTM = "delta_lstm"


LINEAR_HEADS = frozenset({Head.TREND, Head.DELTA})
"""Linear softmax heads on clip statistics: no projection, input dropout or hidden layer."""
DELTA_RNN_HEADS = frozenset({Head.DELTA_GRU, Head.DELTA_LSTM})
"""``delta``'s linear branch averaged with a recurrent branch over each frame's self-similarity."""
ALWAYS_STANDARDIZED = frozenset({Head.DELTA}) | DELTA_RNN_HEADS
"""Heads whose features are always standardized with train-split statistics (``normalize``
or not): their statistics are part of the head."""
RECURRENT_HEADS = frozenset(Head) - LINEAR_HEADS - {Head.MEANPOOL}
"""Heads with recurrent layers (``units``, ``layers``)."""


class ExportFormat(StrEnum):
    """``vrnn export --format``: a whole-model file for serving."""

    KERAS = "keras"
    SAVEDMODEL = "savedmodel"
    TFLITE = "tflite"


class ArrayFormat(StrEnum):
    """``vrnn store export --format``: one ``.npy`` pair per video, or one ``.npz``."""

    NPY = "npy"
    NPZ = "npz"


E = TypeVar("E", bound=StrEnum)


def choose(kind: type[E], value: str, option: str) -> E:
    """``value`` as a member of ``kind``; else one :class:`ConfigError` line naming the choices.

    Args:
        option: how the user spells the setting, e.g. ``"--resize"``.
    """
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"{option} {value!r}: choose one of {choices}") from None
