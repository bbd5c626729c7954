"""The frozen feature extractor: backbone families, weights resolution, building, fingerprint.

Three Keras applications give 1280-d average-pooled features (``--backbone``, see
:data:`BACKBONES`): MobileNetV2 (default), EfficientNetB0 and EfficientNetV2B0. Each family's
own preprocessing is inside the built model, which always takes uint8 frames.

Weights come from one of three places, named by a *weights spec*:

* ``imagenet`` — Keras's own download into its cache (``$KERAS_HOME/models``), the same
  file ``keras.applications.<Family>(weights="imagenet")`` uses for that input size;
* a path to a local weights file (``.weights.h5`` or Keras's legacy ``.h5``);
* ``random`` / ``random:N`` — a seeded random backbone whose BatchNorm statistics are
  calibrated on seeded noise, for offline smoke runs and tests (not ImageNet features!).

Whatever the source, the weights' identity is their :func:`fingerprint`, a sha256 over
the weight values, so the same values from any file format compare equal.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.choices import Backbone, choose
from pipeline.contracts import FEATURE_DIM, ExtractorConfig
from pipeline.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

BACKBONE_NAME = "mobilenet_v2"
"""The default backbone."""
MIN_INPUT_SIZE = 32
IMAGENET_SIZES = (96, 128, 160, 192, 224)
"""Input sizes Keras publishes ImageNet MobileNetV2 weights for (others load the 224 ones)."""
IMAGENET_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    """One backbone family: its Keras application and the preprocessing folded into the model.

    Attributes:
        name: the ``--backbone`` value, recorded in stores and models.
        application: the ``keras.applications`` constructor.
        scale, offset: uint8 pixels → the application's input (``x * scale + offset``).
        imagenet_url: where Keras downloads the no-top ImageNet weights (``{size}`` for
            families with one file per input size), and its md5 (None: not checked).
        top1: ImageNet top-1 accuracy, %, from Keras' applications table.
    """

    name: str
    application: str
    scale: float
    offset: float
    imagenet_url: str
    imagenet_md5: str | None
    top1: float


BACKBONES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            Backbone.MOBILENET_V2, "MobileNetV2", 1 / 127.5, -1.0,
            IMAGENET_BASE_URL + "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}"
            "_no_top.h5",
            None, 71.3,
        ),
        Family(
            Backbone.EFFICIENTNET_B0, "EfficientNetB0", 1.0, 0.0,
            "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
            "50bc09e76180e00e4465e1a485ddc09d", 77.1,
        ),
        Family(
            Backbone.EFFICIENTNET_V2_B0, "EfficientNetV2B0", 1.0, 0.0,
            "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
            "efficientnetv2-b0_notop.h5",
            "893217f2bb855e2983157299931e43ff", 78.7,
        ),
    )
}  # fmt: skip
"""Every ``--backbone``: each gives 1280-d average-pooled features."""


def family(name: str) -> Family:
    """The :class:`Family` called ``name``; one :class:`ConfigError` line listing the choices."""
    return BACKBONES[choose(Backbone, name, "--backbone")]


CALIBRATION_IMAGES = 32
_RANDOM_SPEC = re.compile(r"^random(?::(?:seed=)?(\d+))?$")


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``--weights`` value.

    Attributes:
        kind: ``imagenet``, ``file`` or ``random``.
        identity: the name recorded in stores and models (``imagenet``, ``file:<name>``,
            ``random:seed=<N>``).
        path: the local file for ``file``.
        seed: the seed for ``random``.
    """

    kind: str
    identity: str
    path: Path | None = None
    seed: int = 0

    @property
    def is_random(self) -> bool:
        """True for the seeded random backbone (features carry no ImageNet meaning)."""
        return self.kind == "random"


def parse_weights(spec: str) -> WeightsSpec:
    """Parse ``imagenet``, ``random``, ``random:N`` or a file path into a :class:`WeightsSpec`."""
    if spec == "imagenet":
        return WeightsSpec("imagenet", "imagenet")
    if match := _RANDOM_SPEC.match(spec):
        seed = int(match.group(1) or 0)
        return WeightsSpec("random", f"random:seed={seed}", seed=seed)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"--weights {spec!r}: not 'imagenet', 'random[:SEED]' or an existing weights file"
        )
    return WeightsSpec("file", f"file:{path.name}", path=path)


def check_input_size(size: int) -> None:
    """Reject input sizes the backbones cannot run at (five stride-2 stages need ≥ 32 px)."""
    if size < MIN_INPUT_SIZE:
        raise ConfigError(f"--input-size {size} is too small; backbones need ≥ {MIN_INPUT_SIZE}")
    if size > 1024:
        raise ConfigError(f"--input-size {size} is too large (max 1024)")


def imagenet_weights_file(input_size: int, backbone: str = BACKBONE_NAME) -> Path:
    """Fetch (or find in Keras's cache) the no-top ImageNet weights of ``backbone`` for
    ``input_size`` (EfficientNets have one file for every size).

    Raises:
        WeightsError: the file is not cached and cannot be downloaded, with the alternatives.
    """
    import keras

    rows = input_size if input_size in IMAGENET_SIZES else 224
    url = family(backbone).imagenet_url.format(size=rows)
    name = url.rsplit("/", 1)[1]
    md5 = family(backbone).imagenet_md5
    try:
        return Path(keras.utils.get_file(name, url, cache_subdir="models", file_hash=md5))
    except Exception as e:  # Keras raises bare Exception subclasses for URL/HTTP errors
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(
            f"ImageNet weights {name} are not in the Keras cache and could not be downloaded "
            f"({cause}); use --weights PATH for a local weights file, or --weights random "
            "for an offline smoke run (random features)"
        ) from e


def _mobilenet(input_size: int):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), include_top=False, pooling="avg", weights=None
    )


def _core(fam: Family, input_size: int):
    """The family's Keras application: no top, average pooling, no weights yet."""
    import keras

    if fam.name == BACKBONE_NAME:
        return _mobilenet(input_size)
    return getattr(keras.applications, fam.application)(
        input_shape=(input_size, input_size, 3), include_top=False, pooling="avg", weights=None
    )


def _fix_normalization(core) -> None:
    """Give EfficientNetB0's input Normalization the ImageNet mean and variance (std²).

    Built without ``weights="imagenet"``, Keras leaves it at mean 0 / variance 1, and its
    ImageNet file stores the std as variance (keras issue tensorflow#49930, which Keras
    patches with an extra Rescaling only when it loads the file itself). Setting the values
    here after every load gives ``(x/255 − mean) / std`` whatever the weights' source, and the
    same graph for a weights file saved from this model.
    """
    import keras

    for layer in core._flatten_layers():
        if isinstance(layer, keras.layers.Normalization) and hasattr(layer, "adapt_mean"):
            layer.adapt_mean.assign(np.array(IMAGENET_MEAN_RGB, np.float32))
            layer.adapt_variance.assign(np.square(np.array(IMAGENET_STDDEV_RGB, np.float32)))
            layer.finalize_state()


def _wrap(core, fam: Family, input_size: int):
    """uint8 frames → the family's preprocessing → 1280-d, in one model."""
    import keras

    frames = keras.Input((input_size, input_size, 3), dtype="uint8", name="frames")
    x = keras.layers.Rescaling(fam.scale, offset=fam.offset, name="preprocess")(frames)
    features = core(x, training=False)
    features = keras.layers.Activation("linear", dtype="float32", name="features")(features)
    model = keras.Model(frames, features, name=f"{fam.name}_features")
    model.trainable = False
    return model


def calibration_images(seed: int, size: int, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Seeded multi-scale noise images, uint8 ``[count, size, size, 3]``.

    Smooth blobs at several scales plus fine noise give BatchNorm layers activations with
    realistic spread at every depth.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 3), np.float64)
    for cells in (2, 4, 8, 16, size):
        coarse = rng.uniform(-1, 1, (count, cells, cells, 3))
        reps = -(-size // cells)
        images += np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    images = (images - images.min()) / (np.ptp(images) or 1.0)
    return (images * 255).round().astype(np.uint8)


def _calibrate_batchnorm(model, fam: Family, seed: int, input_size: int) -> None:
    """Set every BatchNorm's moving statistics to those of one seeded noise batch.

    Random kernels with the default moving mean 0 / variance 1 shrink activations block by
    block until every feature is ≈ 0; one training-mode pass with momentum 0 replaces the
    statistics with real ones, layer by layer.
    """
    import keras

    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    images = calibration_images(seed, input_size).astype("float32") * fam.scale + fam.offset
    model(images, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


def enable_gpu_memory_growth() -> list[str]:
    """Make TensorFlow take GPU memory as it needs it, not all of it, in this process.

    By default TensorFlow reserves nearly all memory of every visible GPU at its first GPU
    use, so a second process (a Dask worker, ``predict`` beside ``extract``) fails with out
    of memory. Must run before anything touches a GPU; called by :func:`build_backbone`.
    Returns the names of the GPUs configured (empty without GPUs, or on another Keras
    backend: JAX, for one, is told with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # this process already initialised the GPU: too late, say so
            if not tf.config.experimental.get_memory_growth(gpu):
                log.warning("%s already initialised without memory growth", gpu.name)
            continue
        names.append(gpu.name)
    return names


def build_backbone(
    spec: WeightsSpec,
    input_size: int,
    weights_file: Path | None = None,
    *,
    mixed_precision: bool = False,
    backbone: str = BACKBONE_NAME,
):
    """Build the frozen feature extractor: uint8 ``[B, S, S, 3]`` → float32 ``[B, 1280]``.

    Args:
        spec: where the weights come from.
        input_size: side ``S`` of the square input.
        weights_file: load these weights instead of resolving ``spec`` (e.g. the copy
            saved beside a store, which the fingerprint then checks).
        mixed_precision: compute in float16 (fast on GPUs with tensor cores; features
            still come out float32 and differ from float32 compute by ~1e-3).
        backbone: a :data:`BACKBONES` name.

    Returns:
        a non-trainable ``keras.Model`` with preprocessing folded in.
    """
    import keras

    fam = family(backbone)
    check_input_size(input_size)
    enable_gpu_memory_growth()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    if weights_file is None and spec.is_random:
        keras.utils.set_random_seed(spec.seed)
        core = _core(fam, input_size)
        _fix_normalization(core)
        _calibrate_batchnorm(core, fam, spec.seed, input_size)
        log.info("using a RANDOM backbone (%s): features are not ImageNet features", spec.identity)
        return _wrap(core, fam, input_size)
    if weights_file is None:
        weights_file = (
            imagenet_weights_file(input_size, fam.name) if spec.kind == "imagenet" else spec.path
        )
    core = _core(fam, input_size)
    try:
        core.load_weights(str(weights_file))
    except Exception as e:  # h5py/Keras raise assorted types for a wrong or broken file
        raise WeightsError(
            f"{weights_file}: not {fam.application} (no top) weights for --backbone "
            f"{fam.name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    _fix_normalization(core)
    return _wrap(core, fam, input_size)


def fingerprint(model) -> str:
    """sha256 over the backbone's weight values (name-independent, format-independent)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy(), dtype=np.float32))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_weights(model, path: Path) -> None:
    """Save the backbone's weights (Keras ``.weights.h5``) so another process can rebuild it."""
    import keras

    core = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    core.save_weights(str(path))


def make_inference_fn(model, *, jit: bool = False):
    """A compiled ``uint8 [B, S, S, 3] → float32 [B, 1280]`` function (any batch size).

    Wrapping the call in one ``tf.function`` with a dynamic batch dimension avoids Keras's
    per-call ``predict`` overhead and retracing for the last, short batch.
    """
    import tensorflow as tf

    size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], jit_compile=jit)
    def infer(frames):
        return model(frames, training=False)

    infer(np.zeros((1, size, size, 3), np.uint8))  # trace now, not inside the first batch

    def run(frames: np.ndarray) -> np.ndarray:
        out = infer(frames).numpy()
        if out.shape[1:] != (FEATURE_DIM,):
            raise WeightsError(f"backbone produced features of shape {out.shape[1:]}")
        return out

    return run


# --------------------------------------------------------------------------- checked load, cache


def load_checked_backbone(
    config: ExtractorConfig, weights_file: Path, *, mixed_precision: bool = False
):
    """Build ``config``'s backbone from ``weights_file`` and check its sha256.

    Raises:
        WeightsError: not backbone weights, or not the weights ``config`` records
            (``config.weights_sha256``): features would silently differ from the store's.
    """
    model = build_backbone(
        parse_weights(str(weights_file)),
        config.input_size,
        weights_file=weights_file,
        mixed_precision=mixed_precision,
        backbone=config.backbone,
    )
    actual = fingerprint(model)
    if actual != config.weights_sha256:
        raise WeightsError(
            f"{weights_file}: weights sha256 {actual[:12]} does not match the extractor's "
            f"{config.weights_sha256[:12]} ({config.weights})"
        )
    return model


_BACKBONES: dict[tuple[str, int, bool], Callable[[np.ndarray], np.ndarray]] = {}
_BACKBONES_LOCK = threading.Lock()


def register_backbone(
    weights_sha256: str, input_size: int, mixed_precision: bool, infer: Callable
) -> None:
    """Make an already built inference function reusable by :func:`backbone_for`."""
    with _BACKBONES_LOCK:
        _BACKBONES[(weights_sha256, input_size, mixed_precision)] = infer


def backbone_for(config: ExtractorConfig, weights_file: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The inference function for ``config``, built once per process and then reused.

    The weights are loaded from ``weights_file`` and must match ``config.weights_sha256``
    (:func:`load_checked_backbone`); the compute precision is ``config.mixed_precision``.
    """
    key = (config.weights_sha256, config.input_size, config.mixed_precision)
    with _BACKBONES_LOCK:
        if key not in _BACKBONES:
            model = load_checked_backbone(
                config, weights_file, mixed_precision=config.mixed_precision
            )
            _BACKBONES[key] = make_inference_fn(model)
        return _BACKBONES[key]
