"""Keras heads trained on cached features: named builders, prediction, safe save/load.

Every head reads ``features`` ``[B, T, D]`` (float16 is cast to float32 inside) and a boolean
``mask`` ``[B, T]`` (True = real frame, False = right padding) that is passed explicitly to
the recurrent layers, so padding never changes a prediction. ``meanpool`` averages the real
frames and is blind to their order: the baseline an RNN must beat on order-dependent actions;
``trend`` is a linear softmax on the standardized [mean, late third − early third], the
baseline a head must beat on few clips; ``delta`` adds the mean absolute frame-to-frame
difference of L2-normalized frames, which tells *what kind* of change a clip holds whichever
its direction; ``delta_lstm`` (the default) and ``delta_gru`` average ``delta``'s softmax with a
recurrent layer's over each frame's :class:`SelfSimilarity` (what changes *when*, whatever the
clip shows). With training sequences given, features are
standardized by a Keras ``Normalization`` layer fitted on the train split's real frames and
saved in the model, so predict and export apply the same statistics. Custom layers are
registered, so a saved ``.keras`` file loads with ``safe_mode=True``. The training loop is
:mod:`pipeline.fit`.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np

from pipeline.choices import DELTA_RNN_HEADS, LINEAR_HEADS, Head
from pipeline.contracts import FEATURE_DIM
from pipeline.errors import ConfigError, ModelError
from pipeline.train_config import TrainConfig

log = logging.getLogger(__name__)

HEAD_NAMES = tuple(Head)
"""Builders known to :func:`build_head`; ``delta`` is the default."""
FEATURES_INPUT = "features"
MASK_INPUT = "mask"


@keras.saving.register_keras_serializable(package="vrnn")
class MaskedMean(keras.layers.Layer):
    """Mean over time of the real frames: ``[B, T, D]`` + mask ``[B, T]`` → ``[B, D]`` float32.

    An all-padding sequence averages to zeros rather than dividing by zero.
    """

    def call(self, inputs: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
        """Masked mean; ``mask`` True marks real frames."""
        x = keras.ops.cast(inputs, "float32")
        weights = keras.ops.cast(mask, "float32")[:, :, None]
        total = keras.ops.sum(x * weights, axis=1)
        count = keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)
        return total / count

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """``(batch, features)``."""
        return (input_shape[0], input_shape[2])

    def compute_mask(self, inputs: object, mask: object = None) -> None:
        """The time axis is gone, so is the mask."""
        return None


@keras.saving.register_keras_serializable(package="vrnn")
class MaskedTrend(keras.layers.Layer):
    """[mean of the real frames, mean of their last third − mean of their first third].

    ``[B, T, D]`` + mask ``[B, T]`` (right padding) → ``[B, 2D]`` float32: the linear
    order cue of the ``trend`` baseline. A third is ``max(1, n // 3)`` of the ``n`` real frames.
    """

    def call(self, inputs: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
        """Mean and late − early trend; ``mask`` True marks real frames."""
        x = keras.ops.cast(inputs, "float32")
        real = keras.ops.cast(mask, "float32")
        count = keras.ops.sum(real, axis=1, keepdims=True)  # [B, 1]
        third = keras.ops.maximum(keras.ops.floor(count / 3.0), 1.0)
        position = keras.ops.cast(keras.ops.arange(keras.ops.shape(x)[1]), "float32")[None, :]
        early = keras.ops.cast(position < third, "float32") * real
        late = keras.ops.cast(position >= count - third, "float32") * real

        def average(weights: keras.KerasTensor) -> keras.KerasTensor:
            total = keras.ops.sum(x * weights[:, :, None], axis=1)
            return total / keras.ops.maximum(keras.ops.sum(weights, axis=1)[:, None], 1.0)

        return keras.ops.concatenate([average(real), average(late) - average(early)], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """``(batch, 2 * features)``."""
        return (input_shape[0], 2 * input_shape[2])

    def compute_mask(self, inputs: object, mask: object = None) -> None:
        """The time axis is gone, so is the mask."""
        return None


@keras.saving.register_keras_serializable(package="vrnn")
class MaskedDelta(keras.layers.Layer):
    """Mean absolute difference between consecutive real frames: ``[B, T, D]`` → ``[B, D]``.

    How much each feature changes from frame to frame, whatever the direction: a fade, a
    zoom and a focus pull change different features, forwards or backwards alike. Pairs
    that touch padding do not count; a single real frame gives zeros.
    """

    def call(self, inputs: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
        """Masked mean of ``|x[t + 1] - x[t]|``; ``mask`` True marks real frames."""
        x = keras.ops.cast(inputs, "float32")
        real = keras.ops.cast(mask, "float32")
        pairs = (real[:, 1:] * real[:, :-1])[:, :, None]
        total = keras.ops.sum(keras.ops.abs(x[:, 1:] - x[:, :-1]) * pairs, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(pairs, axis=1), 1.0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """``(batch, features)``."""
        return (input_shape[0], input_shape[2])

    def compute_mask(self, inputs: object, mask: object = None) -> None:
        """The time axis is gone, so is the mask."""
        return None


SELF_SIMILARITY_SIGNALS = 4
"""Per-frame signals :class:`SelfSimilarity` gives each frame."""


def self_similarity(x: keras.KerasTensor, real: keras.KerasTensor) -> keras.KerasTensor:
    """:class:`SelfSimilarity`'s arithmetic on ``x`` ``[B, T, D]`` float32 and ``real``
    ``[B, T]`` float32 (1 = real frame, right padding); also what export runs, ``real`` all 1."""
    ops = keras.ops
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1) + 1e-12)  # [B, T]
    unit = x / norm[:, :, None]
    count = ops.maximum(ops.sum(real, axis=1, keepdims=True), 1.0)  # [B, 1]
    log_norm = ops.log(norm + 1e-6)
    mean_log_norm = ops.sum(log_norm * real, axis=1, keepdims=True) / count
    previous = ops.concatenate([unit[:, :1], unit[:, :-1]], axis=1)  # frame 0 is its own
    last_index = ops.cast(count[:, 0] - 1.0, "int32")
    last = ops.take_along_axis(unit, last_index[:, None, None], axis=1)  # [B, 1, D]
    signals = ops.stack(
        [
            log_norm - mean_log_norm,
            1.0 - ops.sum(unit * previous, axis=-1),
            1.0 - ops.sum(unit * unit[:, :1], axis=-1),
            1.0 - ops.sum(unit * last, axis=-1),
        ],
        axis=-1,
    )
    return signals * real[:, :, None]


@keras.saving.register_keras_serializable(package="vrnn")
class SelfSimilarity(keras.layers.Layer):
    """How each frame relates to the rest of its clip: ``[B, T, D]`` → ``[B, T, 4]`` float32.

    Per real frame: its log feature norm minus the clip's mean (how strongly the backbone
    responds: light, contrast, detail), and its cosine distance to the previous, the first
    and the last real frame (how fast and how far the clip moves on, and in which order).
    The four numbers do not depend on *what* the clip shows, which is why a recurrent layer
    can learn their time course from a few clips; padded frames get zeros.
    """

    def call(self, inputs: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
        """The four signals per frame; ``mask`` True marks real frames."""
        return self_similarity(keras.ops.cast(inputs, "float32"), keras.ops.cast(mask, "float32"))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """``(batch, time, 4)``."""
        return (*input_shape[:2], SELF_SIMILARITY_SIGNALS)

    def compute_mask(self, inputs: object, mask: object = None) -> object:
        """The time axis stays, so does the mask."""
        return mask


@keras.saving.register_keras_serializable(package="vrnn")
class ToFloat32(keras.layers.Layer):
    """Casts stored features (float16) to float32 before any arithmetic."""

    def call(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        """``[B, T, D]`` any float dtype → float32."""
        return keras.ops.cast(inputs, "float32")


def _recurrent(name: str, units: int, return_sequences: bool, index: int) -> keras.layers.Layer:
    if name in DELTA_RNN_HEADS:
        name = name.removeprefix("delta_")
    if name == "lstm":
        return keras.layers.LSTM(units, return_sequences=return_sequences, name=f"lstm_{index}")
    gru = keras.layers.GRU(units, return_sequences=return_sequences, name=f"gru_{index}")
    if name == "bigru":
        return keras.layers.Bidirectional(gru, name=f"bigru_{index}")
    return gru


def _check_options(config: TrainConfig, num_classes: int) -> None:
    config.validate()
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if (config.head == "delta" or config.head in DELTA_RNN_HEADS) and config.seq_len < 2:
        raise ConfigError(
            f"--head {config.head} compares frames: --seq-len must be >= 2, got {config.seq_len}"
        )


def _adapt(
    model: keras.Model,
    layer_name: str,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    frames: bool,
) -> None:
    """Fit the Normalization layer ``layer_name`` on what reaches it from ``batches``.

    One batch at a time (Keras combines the batches' means and variances exactly), so
    fitting costs memory for one batch, not for the whole training split.
    ``frames``: the layer sees ``[B, T, D]`` frames; only real ones (the mask) count.
    """
    layer = model.get_layer(layer_name)
    probe = keras.Model(model.inputs, layer.input)

    def values() -> Iterator[np.ndarray]:
        for features, mask in batches:
            inputs = {FEATURES_INPUT: features.astype(np.float16, copy=False), MASK_INPUT: mask}
            out = np.asarray(probe.predict_on_batch(inputs), dtype=np.float32)
            out = out[mask][:, None, :] if frames else out
            if len(out):  # a batch of only padding has no frames to count
                yield out

    layer.adapt(values())


def _delta_statistics(
    frames: keras.KerasTensor, mask: keras.KerasTensor, standardized: bool
) -> keras.KerasTensor:
    """``delta``'s clip statistics: [mean, late − early third, mean |frame change|]."""
    trend = MaskedTrend(name="masked_trend")(frames, mask=mask)
    delta = MaskedDelta(name="masked_delta")(frames, mask=mask)
    x = keras.layers.Concatenate(name="clip_statistics")([trend, delta])
    if standardized:
        x = keras.layers.Normalization(axis=-1, name="trend_norm")(x)
    return x


def build_head(
    config: TrainConfig,
    *,
    num_classes: int,
    feature_dim: int = FEATURE_DIM,
    normalize_on: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> keras.Model:
    """Build and compile the head ``config`` describes (Adam/AdamW, sparse categorical
    cross-entropy, accuracy).

    Per frame: [Normalization] → [Dense(``projection``), linear] → [Dropout(``input_dropout``)].
    Then ``lstm``/``gru``: ``layers`` stacked recurrent layers of ``units``; ``bigru`` the
    same with bidirectional GRUs; ``meanpool`` a masked mean over time; ``trend`` the masked
    [mean, late third − early third] (:class:`MaskedTrend`), standardized: a linear
    baseline (projection, input dropout and the hidden layer are left out); ``delta`` the
    same on L2-normalized frames (``UnitNormalization`` first) plus their mean absolute
    frame-to-frame difference (:class:`MaskedDelta`), also linear. Then (not for ``trend`` and
    ``delta``) Dense(``dense_units``, relu) → Dropout(``dropout``) → softmax. ``delta_gru`` /
    ``delta_lstm`` (the default) average two softmax branches: ``delta``'s and one after the
    recurrent layers over the standardized :class:`SelfSimilarity` signals
    (:func:`_delta_rnn_outputs`).

    Args:
        config: the run's options; the head reads ``head`` (one of :data:`HEAD_NAMES`),
            ``seq_len`` (``T``), ``units`` (per direction for ``bigru``), ``layers``,
            ``dropout`` (before the softmax layer), ``dense_units`` (0 leaves the hidden
            layer out), ``learning_rate``, ``projection`` (per-frame linear projection width,
            0 leaves it out), ``input_dropout`` (on the temporal layers' per-frame inputs)
            and ``weight_decay`` (AdamW when > 0); the rest is the training loop's.
        num_classes: output classes (>= 2).
        feature_dim: width of one frame's features (``D``).
        normalize_on: batches of ``(features [B, T, D], mask [B, T])`` training sequences
            (e.g. :class:`~pipeline.sequences.EvalBatches`; a one-item list of arrays also
            works): standardize each feature with the mean/variance of their real frames,
            inside the model (so predict and export apply the same); None: no normalization.

    Returns:
        A compiled ``keras.Model`` named ``<head>_head`` with inputs ``{"features": [B, T, D]
        float16, "mask": [B, T] bool}`` and output ``[B, num_classes]`` float32 probabilities.

    Raises:
        ConfigError: unknown head or invalid sizes.
    """
    _check_options(config, num_classes)
    features = keras.Input((config.seq_len, feature_dim), dtype="float16", name=FEATURES_INPUT)
    mask = keras.Input((config.seq_len,), dtype="bool", name=MASK_INPUT)  # True = real frame
    x = ToFloat32(name="to_float32")(features)
    branches = _delta_rnn_outputs if config.head in DELTA_RNN_HEADS else _one_branch_outputs
    outputs = branches(config, x, mask, num_classes, normalize_on is not None)
    model = keras.Model(
        {FEATURES_INPUT: features, MASK_INPUT: mask}, outputs, name=f"{config.head}_head"
    )
    if normalize_on is not None:
        # In layer order, so each layer is fitted on what the already fitted ones put out.
        for layer in model.layers:
            if isinstance(layer, keras.layers.Normalization):
                _adapt(model, layer.name, normalize_on, frames=len(layer.input.shape) == 3)
    return _compiled(model, config)


def _one_branch_outputs(
    config: TrainConfig,
    x: keras.KerasTensor,
    mask: keras.KerasTensor,
    num_classes: int,
    standardized: bool,
) -> keras.KerasTensor:
    """Every head but ``delta_gru`` / ``delta_lstm``: one path to one softmax."""
    name, projection = config.head, config.projection
    if name == "delta":
        x = keras.layers.UnitNormalization(axis=-1, name="frame_l2")(x)
    if standardized:
        x = keras.layers.Normalization(axis=-1, name="frame_norm")(x)
    linear = name in LINEAR_HEADS  # no projection, no hidden layer
    if projection > 0 and not linear:
        x = keras.layers.Dense(projection, name="projection")(x)
    if config.input_dropout > 0 and not linear:
        x = keras.layers.Dropout(config.input_dropout, name="input_dropout")(x)
    if name == "meanpool":
        x = MaskedMean(name="masked_mean")(x, mask=mask)
    elif name == "trend":
        x = MaskedTrend(name="masked_trend")(x, mask=mask)
        if standardized:
            x = keras.layers.Normalization(axis=-1, name="trend_norm")(x)
    elif name == "delta":
        x = _delta_statistics(x, mask, standardized)
    else:
        for i in range(config.layers):
            last = i == config.layers - 1
            x = _recurrent(name, config.units, return_sequences=not last, index=i)(x, mask=mask)
    if config.dense_units > 0 and not linear:
        x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    if config.dropout > 0:
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)


def _delta_rnn_outputs(
    config: TrainConfig,
    x: keras.KerasTensor,
    mask: keras.KerasTensor,
    num_classes: int,
    standardized: bool,
) -> keras.KerasTensor:
    """``delta_gru`` / ``delta_lstm``: the mean of two softmax branches trained as one.

    ``delta``'s linear softmax on the clip statistics, and a recurrent layer over the
    clip's :class:`SelfSimilarity` signals (standardized), then [Dense(``dense_units``)]
    and a softmax. Averaging probabilities (not adding logits) keeps the high-dimensional
    linear branch from fitting the few training clips alone and starving the recurrent one
    (a prototype on bench_heads' features: adding logits scored no better than ``delta``).
    """
    frames = keras.layers.UnitNormalization(axis=-1, name="frame_l2")(x)
    if standardized:
        frames = keras.layers.Normalization(axis=-1, name="frame_norm")(frames)
    statistics = _delta_statistics(frames, mask, standardized)
    signals = SelfSimilarity(name="self_similarity")(x, mask=mask)
    if standardized:
        signals = keras.layers.Normalization(axis=-1, name="similarity_norm")(signals)
    for i in range(config.layers):
        last = i == config.layers - 1
        signals = _recurrent(config.head, config.units, not last, index=i)(signals, mask=mask)
    if config.dense_units > 0:
        signals = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(signals)
    branches = []
    for branch, tensor in (("statistics", statistics), ("rnn", signals)):
        if config.dropout > 0:
            tensor = keras.layers.Dropout(config.dropout, name=f"{branch}_dropout")(tensor)
        branches.append(
            keras.layers.Dense(num_classes, activation="softmax", name=f"{branch}_softmax")(tensor)
        )
    return keras.layers.Average(name="probabilities")(branches)


def _compiled(model: keras.Model, config: TrainConfig) -> keras.Model:
    optimizer = (
        keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
        if config.weight_decay > 0
        else keras.optimizers.Adam(config.learning_rate)
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def predict_proba(
    model: keras.Model, features: np.ndarray, mask: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities for padded sequences.

    Args:
        model: a head from :func:`build_head` or :func:`load_head`.
        features: ``[N, T, D]`` float16/float32 (``T`` = the model's seq_len).
        mask: ``[N, T]`` bool, True = real frame.
        batch_size: sequences per forward pass.

    Returns:
        ``[N, num_classes]`` float32 probabilities (rows sum to 1).
    """
    num_classes = model.output_shape[-1]
    if len(features) == 0:
        return np.zeros((0, num_classes), dtype=np.float32)
    inputs = {FEATURES_INPUT: features.astype(np.float16, copy=False), MASK_INPUT: mask}
    probs = model.predict(inputs, batch_size=batch_size, verbose=0)
    return np.asarray(probs, dtype=np.float32)


def save_head(model: keras.Model, path: Path) -> None:
    """Write the model (architecture, weights, optimizer) as one ``.keras`` file."""
    model.save(path)


def load_head(path: Path) -> keras.Model:
    """Load a head saved by :func:`save_head` for inference; ``safe_mode`` refuses code.

    Raises:
        ModelError: the file is missing or not a loadable head.
    """
    if not Path(path).is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        # compile=False: inference needs no optimizer state or loss.
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (
        ValueError,
        OSError,
        TypeError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
    ) as e:
        raise ModelError(f"{path}: cannot load the model ({e}); retrain or restore it") from e
