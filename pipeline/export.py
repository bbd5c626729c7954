"""End-to-end export: the frozen backbone and a trained head in one Keras graph.

Signature of the exported model (``S`` = the extractor's input size, ``T`` = the head's
``seq_len``, ``C`` = the number of classes)::

    frames  uint8   [B, T, S, S, 3]   RGB, decoded and resized as ``extract`` does
        → probabilities  float32 [B, C]  in the order of <name>.labels.json (rows sum to 1)

There is no mask input: all ``T`` frames are real. A video with at least ``T`` sampled frames,
reduced to ``T`` with :func:`pipeline.sequences.uniform_indices`, gets the probabilities
``vrnn predict`` gives it; ``predict`` pads shorter videos and masks the padding, which
this graph cannot express. MobileNetV2's preprocessing is inside the graph, and the features
are rounded to float16 as the store keeps them, so the head sees what it was trained on.

The ``.keras`` export is built from Keras's own layers only (``TimeDistributed`` backbone, the
head re-applied without its mask), so ``keras.saving.load_model(path)`` loads it in a plain
Keras install. SavedModel and TFLite exports are graphs and need no Python code at all; they
fold time into the batch (:class:`PerFrame`), one backbone call on ``B·T`` images.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from pipeline import fsio
from pipeline.backbone import load_checked_backbone
from pipeline.choices import ExportFormat, choose
from pipeline.errors import ConfigError, ModelError
from pipeline.file_names import SAVED_MODEL_FILE
from pipeline.heads import (
    FEATURES_INPUT,
    MASK_INPUT,
    MaskedDelta,
    MaskedMean,
    MaskedTrend,
    SelfSimilarity,
    ToFloat32,
    load_head,
    self_similarity,
)
from pipeline.model_dir import TrainedModel, load_model_dir, model_weights_file

log = logging.getLogger(__name__)

"""``keras``: one ``.keras`` file; ``savedmodel``: a TF SavedModel directory (Keras
``ExportArchive``, endpoint ``serve``); ``tflite``: one ``.tflite`` file with batch size 1."""
FRAMES_INPUT = "frames"
TFLITE_BATCH = 1
"""The TFLite converter lowers the RNN's loop to builtin ops only with a static batch size."""
LABELS_SUFFIX = ".labels.json"
"""``export/classifier.keras`` → ``export/classifier.labels.json``: one labels file per export."""


@keras.saving.register_keras_serializable(package="vrnn")
class PerFrame(keras.layers.Wrapper):
    """Applies a per-image model to every frame: ``[B, T, ...]`` → ``[B, T, D]``.

    Time is folded into the batch (one backbone call on ``B·T`` images) rather than looped
    over as ``TimeDistributed`` does with a static ``T``.
    """

    def build(self, input_shape: tuple) -> None:
        """Builds the wrapped model for single images, if it is not built yet."""
        if not self.layer.built:
            self.layer.build((None, *input_shape[2:]))
        self.built = True

    def call(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        """``[B, T, ...]`` → the wrapped model's ``[B·T, D]`` output → ``[B, T, D]``."""
        shape = keras.ops.shape(inputs)
        images = keras.ops.reshape(inputs, (-1, *inputs.shape[2:]))
        outputs = self.layer(images, training=False)
        return keras.ops.reshape(outputs, (shape[0], shape[1], outputs.shape[-1]))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        """``(batch, time, features)``."""
        inner = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], inner[-1])


@keras.saving.register_keras_serializable(package="vrnn")
class AllFrames(keras.layers.Layer):
    """The head's mask for a sequence without padding: ``[B, T, ...]`` → ``[B, T]`` all True."""

    def call(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        """A boolean ``[B, T]`` tensor of True."""
        shape = keras.ops.shape(inputs)
        return keras.ops.ones((shape[0], shape[1]), dtype="bool")

    def compute_output_spec(self, inputs: keras.KerasTensor) -> keras.KerasTensor:
        """``(batch, time)`` bool."""
        return keras.KerasTensor(inputs.shape[:2], dtype="bool")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the exported model (file or SavedModel directory).
        labels_path: ``<name>.labels.json`` beside it (class names, in output order).
        format: one of :class:`~pipeline.choices.ExportFormat`.
        batch: the fixed batch size (tflite), or None for any.
        seq_len: frames per input sequence (``T``).
        input_size: frame side in pixels (``S``).
        labels: class names (``C`` of them).
    """

    path: Path
    labels_path: Path
    format: str
    batch: int | None
    seq_len: int
    input_size: int
    labels: list[str]

    def signature(self) -> str:
        """One line: input name, dtype and shape → output dtype and shape."""
        b, s = self.batch or "B", self.input_size
        return (
            f"{FRAMES_INPUT} uint8 [{b}, {self.seq_len}, {s}, {s}, 3] → probabilities "
            f"float32 [{b}, {len(self.labels)}]"
        )


def _builtin_equivalent(layer: keras.layers.Layer) -> Callable[..., keras.KerasTensor]:
    """The head's own layer, or Keras built-ins that compute the same on all-real frames."""
    if isinstance(layer, ToFloat32):
        return keras.layers.Activation("linear", dtype="float32", name=layer.name)
    if isinstance(layer, MaskedMean):  # every frame is real: the masked mean is the mean
        return keras.layers.GlobalAveragePooling1D(name=layer.name)
    if isinstance(layer, MaskedTrend):
        return functools.partial(_builtin_trend, name=layer.name)
    if isinstance(layer, MaskedDelta):
        return functools.partial(_builtin_delta, name=layer.name)
    if isinstance(layer, SelfSimilarity):
        return _builtin_self_similarity
    return layer


def _builtin_trend(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    """:class:`~pipeline.heads.MaskedTrend` on ``T`` real frames from built-in layers:
    [mean, mean of the last third − mean of the first third], a third = ``max(1, T // 3)``."""
    layers = keras.layers
    steps = x.shape[1]
    cut = steps - max(1, steps // 3)
    x = layers.Activation("linear", dtype="float32", name=f"{name}_float32")(x)
    mean = layers.GlobalAveragePooling1D(name=f"{name}_mean")(x)
    early = layers.GlobalAveragePooling1D(name=f"{name}_early")(
        layers.Cropping1D((0, cut), name=f"{name}_first_third")(x)
    )
    late = layers.GlobalAveragePooling1D(name=f"{name}_late")(
        layers.Cropping1D((cut, 0), name=f"{name}_last_third")(x)
    )
    trend = layers.Subtract(name=f"{name}_late_minus_early")([late, early])
    return layers.Concatenate(name=name)([mean, trend])


def _builtin_self_similarity(x: keras.KerasTensor) -> keras.KerasTensor:
    """:class:`~pipeline.heads.SelfSimilarity` on all-real frames, as Keras ops (which a
    ``.keras`` file stores as built-in operations)."""
    x = keras.ops.cast(x, "float32")
    return self_similarity(x, keras.ops.ones_like(x[:, :, 0]))


def _builtin_delta(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    """:class:`~pipeline.heads.MaskedDelta` on ``T >= 2`` real frames from built-in layers:
    the mean over ``t`` of ``|x[t + 1] - x[t]| = relu(x[t + 1] - x[t]) + relu(x[t] - x[t + 1])``."""
    layers = keras.layers
    x = layers.Activation("linear", dtype="float32", name=f"{name}_float32")(x)
    later = layers.Cropping1D((1, 0), name=f"{name}_later")(x)
    earlier = layers.Cropping1D((0, 1), name=f"{name}_earlier")(x)
    up = layers.ReLU(name=f"{name}_up")(layers.Subtract(name=f"{name}_rise")([later, earlier]))
    down = layers.ReLU(name=f"{name}_down")(layers.Subtract(name=f"{name}_fall")([earlier, later]))
    return layers.GlobalAveragePooling1D(name=name)(layers.Add(name=f"{name}_abs")([up, down]))


def head_without_mask(head: keras.Model, features: keras.KerasTensor) -> keras.KerasTensor:
    """Re-apply a head's layers (sharing their weights) to ``features``, all frames real.

    The ``mask`` input is dropped (an all-True mask changes nothing) and the head's custom
    layers are replaced by Keras built-ins (:func:`_builtin_equivalent`), so the graph loads
    without this package.

    Raises:
        ModelError: the head uses its mask other than as a layer's ``mask=`` argument.
    """
    mask = head.get_layer(MASK_INPUT).output
    tensors = {id(head.get_layer(FEATURES_INPUT).output): features}

    def mapped(value: object) -> object:
        if isinstance(value, list | tuple):  # a merge layer's inputs
            return type(value)(mapped(v) for v in value)
        if isinstance(value, keras.KerasTensor):
            if id(value) not in tensors:
                raise ModelError(f"head {head.name}: cannot export a graph that reads its mask")
            return tensors[id(value)]
        return value

    for layer in head.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node = layer._inbound_nodes[0]  # the head's own call (reuse adds later nodes)
        kwargs = {k: v for k, v in node.arguments.kwargs.items() if v is not mask}
        args = [mapped(a) for a in node.arguments.args]
        output = _builtin_equivalent(layer)(*args, **{k: mapped(v) for k, v in kwargs.items()})
        tensors[id(node.output_tensors[0])] = output
    return tensors[id(head.outputs[0])]


def build_end_to_end(
    backbone: keras.Model, trained: TrainedModel, *, builtin_only: bool = False
) -> keras.Model:
    """Frames → backbone → float16 features → head, as one frozen ``keras.Model``.

    Args:
        backbone: uint8 ``[N, S, S, 3]`` → float32 ``[N, D]`` (see ``build_backbone``).
        trained: the loaded model directory (head, labels, extractor, seq_len).
        builtin_only: use Keras built-in layers only (for a ``.keras`` file that loads
            without this package): ``TimeDistributed`` instead of :class:`PerFrame`, and the
            head without its mask input (:func:`head_without_mask`).

    Returns:
        ``vrnn_classifier``: uint8 ``[B, T, S, S, 3]`` → float32 ``[B, C]``.
    """
    size, seq_len = trained.extractor.input_size, trained.train_config.seq_len
    frames = keras.Input((seq_len, size, size, 3), dtype="uint8", name=FRAMES_INPUT)
    per_frame = keras.layers.TimeDistributed if builtin_only else PerFrame
    features = per_frame(backbone, name="backbone")(frames)
    # The head learned from stored float16 features (predict feeds it float16 too).
    features = keras.layers.Activation("linear", dtype="float16", name="to_float16")(features)
    if builtin_only:
        probabilities = head_without_mask(trained.model, features)
    else:
        mask = AllFrames(name="all_frames")(frames)
        probabilities = trained.model({FEATURES_INPUT: features, MASK_INPUT: mask})
    model = keras.Model(frames, probabilities, name="vrnn_classifier")
    model.trainable = False
    return model


def _check_output(out: Path, fmt: str) -> None:
    choose(ExportFormat, fmt, "--format")
    suffix = {"keras": ".keras", "tflite": ".tflite"}.get(fmt)
    if suffix and out.suffix != suffix:
        raise ConfigError(f"-o {out}: a {fmt} export must end with {suffix}")
    if suffix and out.is_dir():
        raise ConfigError(f"-o {out} is a directory; give a {suffix} file name")
    if fmt == "savedmodel" and out.exists() and not (out / SAVED_MODEL_FILE).is_file():
        raise ConfigError(f"-o {out} exists and is not a SavedModel; refusing to replace it")


def labels_file(out: Path) -> Path:
    """The labels file of an export: ``<dir>/<stem>.labels.json`` beside it."""
    return out.with_name(out.stem + LABELS_SUFFIX)


def _check_labels(labels_path: Path, labels: list[str]) -> None:
    """Refuse to replace a labels file that lists other classes (another model's export)."""
    try:
        existing = json.loads(labels_path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise ConfigError(f"{labels_path} exists and is not a labels file ({e}); remove it") from e
    if existing != labels:
        raise ConfigError(
            f"{labels_path} lists other classes ({', '.join(map(str, existing))}) than this "
            f"model ({', '.join(labels)}); remove it or export under another name"
        )


def _write(model: keras.Model, out: Path, fmt: str) -> None:
    """Write into a temporary sibling, then swap it in for ``out`` (:func:`fsio.replacing`)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with fsio.replacing(out, suffix=out.suffix) as tmp:
            if fmt == "keras":
                model.save(tmp)
            elif fmt == "savedmodel":
                model.export(str(tmp), format="tf_saved_model", verbose=False)
            else:
                size, seq_len = model.input_shape[2], model.input_shape[1]
                spec = keras.InputSpec(
                    shape=(TFLITE_BATCH, seq_len, size, size, 3), dtype="uint8", name=FRAMES_INPUT
                )
                model.export(str(tmp), format="litert", input_signature=[spec], verbose=False)
    except OSError as e:
        raise ModelError(f"cannot write {out}: {e.strerror or e}") from e


def export_model(
    model_dir: Path, out: Path, *, fmt: str = "keras", weights: Path | None = None
) -> ExportResult:
    """Export a model directory as one end-to-end model plus ``<name>.labels.json`` beside it.

    Args:
        model_dir: a directory written by ``vrnn train``.
        out: ``.keras`` file, SavedModel directory or ``.tflite`` file (replaced).
        fmt: one of :class:`~pipeline.choices.ExportFormat`.
        weights: backbone weights overriding the model directory's copy (sha256-checked).

    Raises:
        ConfigError: unknown format, an output path that does not fit it, or a labels file
            of that name listing other classes (nothing is written).
        ModelError: unusable model directory, or the output cannot be written.
        WeightsError: backbone weights missing or not the model's.
    """
    out = Path(out)
    _check_output(out, fmt)
    trained = load_model_dir(model_dir)
    labels_path = labels_file(out)
    _check_labels(labels_path, trained.labels)
    backbone = load_checked_backbone(
        trained.extractor, model_weights_file(model_dir, trained.extractor, weights)
    )
    model = build_end_to_end(backbone, trained, builtin_only=fmt == "keras")
    _write(model, out, fmt)
    try:
        labels_path.write_text(json.dumps(trained.labels, indent=2) + "\n")
    except OSError as e:
        raise ModelError(f"cannot write {labels_path}: {e.strerror or e}") from e
    return ExportResult(
        path=out,
        labels_path=labels_path,
        format=fmt,
        batch=TFLITE_BATCH if fmt == "tflite" else None,
        seq_len=trained.train_config.seq_len,
        input_size=trained.extractor.input_size,
        labels=trained.labels,
    )


def load_exported(path: Path) -> keras.Model:
    """Load an exported ``.keras`` model in safe mode (plain ``keras.saving.load_model`` works too).

    Raises:
        ModelError: missing or not loadable.
    """
    return load_head(path)  # the same safe-mode loader as a head; the layers are registered
