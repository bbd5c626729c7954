"""The seeded training loop of every head: the model's own compiled steps, early stopping.

:func:`fit_head` runs what Keras's ``model.fit`` runs per step (forward, loss, gradients,
optimizer, metric updates) without its per-step machinery, with ``EarlyStopping``'s
restore-best-weights rule on val_loss; :func:`set_seed` makes a run repeatable on one machine.
Builders, prediction and save/load are in :mod:`pipeline.heads`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import keras
import numpy as np

from pipeline.heads import FEATURES_INPUT, MASK_INPUT
from pipeline.sequences import TrainingSampler

EpochCallback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with the 0-based epoch index and its logs (loss, accuracy, …)."""


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend, and ask TensorFlow for deterministic ops.

    Call before :func:`pipeline.heads.build_head`: the initial weights depend on it. Op
    determinism is a process-wide TensorFlow setting (ops without a deterministic kernel
    then raise).
    """
    keras.utils.set_random_seed(seed)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(features [B, T, D], mask [B, T] bool, labels [B] int)``."""

VALIDATION_BATCH = 32
"""Sequences per step when validation data are given as arrays (Keras's default)."""


class _CompiledSteps:
    """The model's own ``train_step`` / ``test_step`` as ``tf.function``s fed NumPy batches.

    Exactly what ``model.fit`` runs per step (forward, loss, gradients, optimizer, metric
    updates), without its per-step machinery: no ``tf.data`` generator wrapper around the
    batches, no callbacks. Each function is traced once, on its first batch, with a
    batch-size-agnostic signature (the last, smaller batch reuses it).
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self._train: Callable | None = None
        self._test: Callable | None = None

    def _compile(self, step: Callable, batch: Batch) -> Callable:
        import tensorflow as tf

        def run(features: object, mask: object, labels: object) -> dict:
            return step(({FEATURES_INPUT: features, MASK_INPUT: mask}, labels))

        signature = [tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in batch]
        return tf.function(
            run, input_signature=signature, jit_compile=self.model.jit_compile, autograph=False
        )

    def train(self, batch: Batch) -> None:
        """One optimizer step on ``batch`` (metrics accumulate until reset)."""
        if self._train is None:
            self._train = self._compile(self.model.train_step, batch)
        self._train(*batch)

    def test(self, batch: Batch) -> None:
        """Accumulate loss and metrics of ``batch`` in inference mode."""
        if self._test is None:
            self._test = self._compile(self.model.test_step, batch)
        self._test(*batch)

    def results(self, prefix: str = "") -> dict[str, float]:
        """The accumulated ``loss``, ``accuracy``, … as floats (names prefixed)."""
        return {f"{prefix}{k}": float(v) for k, v in self.model.get_metrics_result().items()}


def _validation_batches(
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | keras.utils.PyDataset,
) -> Iterator[Batch]:
    if isinstance(validation, keras.utils.PyDataset):  # batches read as needed
        for i in range(validation.num_batches):
            inputs, labels = validation[i]
            yield inputs[FEATURES_INPUT], inputs[MASK_INPUT], labels
        return
    features, mask, labels = validation
    for start in range(0, len(labels), VALIDATION_BATCH):
        chosen = slice(start, start + VALIDATION_BATCH)
        yield features[chosen], mask[chosen], labels[chosen]


def fit_head(
    model: keras.Model,
    sampler: TrainingSampler,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray] | keras.utils.PyDataset | None,
    *,
    epochs: int,
    patience: int,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on re-drawn sequences; with validation data, stop early on val_loss.

    The same steps, history and early stopping as ``model.fit`` with
    ``EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)``, in
    a leaner loop: each step is the model's compiled ``train_step`` called on the sampler's
    NumPy batch (assembling one costs ~1 ms against a ~35 ms step; assembling the next in a
    background thread measured slower, its GIL hand-offs costing more than it hid). The best
    epoch's weights (lowest validation loss) are restored at the end. Without validation
    data the model trains for all ``epochs``.

    Args:
        model: a compiled head from :func:`pipeline.heads.build_head`.
        sampler: training batches (shuffled and re-cropped each epoch).
        validation: ``(features [N, T, D], mask [N, T] bool, labels [N] int)`` (scored
            :data:`VALIDATION_BATCH` at a time), a ``keras.utils.PyDataset`` of such batches
            (as ``({"features", "mask"}, labels)``), or None.
        epochs: maximum epochs (>= 1).
        patience: epochs without val_loss improvement before stopping (>= 0).
        on_epoch: progress callback, called after every epoch.

    Returns:
        One dict per epoch run: ``loss``, ``accuracy`` and, with validation,
        ``val_loss``, ``val_accuracy``.
    """
    steps = _CompiledSteps(model)
    history: list[dict[str, float]] = []
    best, best_weights, wait = np.inf, None, 0
    # Keras fit, which this loop replaced, drew the sampler's first epoch only to peek at the
    # batch shapes and trained from the next one; so does this loop, which keeps every seeded
    # result (README numbers, DVC metrics) of earlier versions.
    sampler.next_epoch()
    for epoch in range(epochs):
        model.reset_metrics()
        for index in range(sampler.num_batches):
            steps.train(sampler.batch(index))
        logs = steps.results()
        sampler.next_epoch()
        stop = False
        if validation is not None:
            model.reset_metrics()
            for batch in _validation_batches(validation):
                steps.test(batch)
            logs.update(steps.results("val_"))
            # EarlyStopping(restore_best_weights=True)'s rule, step for step.
            if best_weights is None:
                best_weights = model.get_weights()
            wait += 1
            if logs["val_loss"] < best:
                best, best_weights, wait = logs["val_loss"], model.get_weights(), 0
            else:
                stop = wait >= patience and epoch > 0
        logs = dict(sorted(logs.items()))  # Keras's History order: accuracy, loss, val_…
        history.append(logs)
        if on_epoch is not None:
            on_epoch(epoch, logs)
        if stop:
            break
    model.optimizer.finalize_variable_values(model.trainable_weights)
    if best_weights is not None:
        model.set_weights(best_weights)
    return history
