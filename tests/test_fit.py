"""``fit_head``'s own training loop against Keras's ``model.fit``, the loop it replaced.

Same seed, same sampler, same validation data: the history (values and key order) and the
final weights must be bit-identical to ``model.fit`` with ``EarlyStopping(monitor="val_loss",
restore_best_weights=True)`` fed the sampler as a ``PyDataset``, with validation given as
arrays or as a ``PyDataset``, with and without early stopping firing.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_heads import DIM, SEQ_LEN, appearance_videos

from pipeline import heads
from pipeline.fit import fit_head, set_seed
from pipeline.sequences import TrainingSampler, eval_sequences
from pipeline.streaming import validation_batches
from pipeline.train_config import TrainConfig


class _KerasSampler(keras.utils.PyDataset):
    def __init__(self, sampler: TrainingSampler):
        super().__init__(workers=1, use_multiprocessing=False)
        self.sampler = sampler

    @property
    def num_batches(self) -> int:
        return self.sampler.num_batches

    def __getitem__(self, index: int) -> tuple[dict, np.ndarray]:
        features, mask, labels = self.sampler.batch(index)
        return {heads.FEATURES_INPUT: features, heads.MASK_INPUT: mask}, labels

    def on_epoch_end(self) -> None:
        self.sampler.next_epoch()


def keras_fit(model, sampler, validation, *, epochs, patience):
    """The reference: ``model.fit`` with early stopping on val_loss, best weights restored."""
    if isinstance(validation, tuple):
        features, mask, labels = validation
        validation = ({heads.FEATURES_INPUT: features, heads.MASK_INPUT: mask}, labels)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(
        _KerasSampler(sampler), validation_data=validation, epochs=epochs, shuffle=False,
        callbacks=[stop], verbose=0,
    )  # fmt: skip
    keys = list(history.history)
    return [{k: float(history.history[k][i]) for k in keys} for i in range(len(history.epoch))]


def train(fit, name, validation_kind, *, epochs, patience, learning_rate):
    train_videos = appearance_videos(13, 3, seed=1)  # 39 videos: the last batch is short
    val_videos, val_labels = appearance_videos(5, 3, seed=2)
    set_seed(0)
    model = heads.build_head(
        TrainConfig(head=name, seq_len=SEQ_LEN, dropout=0.3, learning_rate=learning_rate),
        num_classes=3,
        feature_dim=DIM,
    )
    sampler = TrainingSampler(*train_videos, seq_len=SEQ_LEN, batch_size=8, seed=0)
    if validation_kind == "arrays":
        validation = (*eval_sequences(val_videos, SEQ_LEN), val_labels)
    else:
        validation = validation_batches(val_videos, val_labels, SEQ_LEN, 8)
    epoch_logs = []
    if fit is fit_head:
        history = fit(
            model, sampler, validation, epochs=epochs, patience=patience,
            on_epoch=lambda epoch, logs: epoch_logs.append((epoch, logs)),
        )  # fmt: skip
        assert epoch_logs == list(enumerate(history))
    else:
        history = fit(model, sampler, validation, epochs=epochs, patience=patience)
    return history, model.get_weights()


@pytest.mark.parametrize(
    ("name", "validation_kind", "epochs", "patience", "learning_rate"),
    [
        ("lstm", "arrays", 5, 2, 1e-3),  # runs all epochs
        ("gru", "batches", 12, 1, 0.05),  # stops early, restores an earlier epoch
    ],
)
def test_fit_head_matches_keras_fit_bit_for_bit(
    name, validation_kind, epochs, patience, learning_rate
):
    options = {"epochs": epochs, "patience": patience, "learning_rate": learning_rate}
    ours, our_weights = train(fit_head, name, validation_kind, **options)
    reference, reference_weights = train(keras_fit, name, validation_kind, **options)
    assert [list(logs) for logs in ours] == [list(logs) for logs in reference]
    assert ours == reference
    assert len(our_weights) == len(reference_weights)
    for ours_w, reference_w in zip(our_weights, reference_weights, strict=True):
        np.testing.assert_array_equal(ours_w, reference_w)
    if learning_rate > 1e-3:  # the case meant to exercise early stopping does
        best = int(np.argmin([logs["val_loss"] for logs in ours]))
        assert len(ours) < epochs and best < len(ours) - 1
