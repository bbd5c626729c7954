"""``vrnn train``: stage 2, manifest + feature store → a trained head in a model directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pipeline.choices import Head
from pipeline.train_config import TrainConfig
from stages import console
from stages.options import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_LAYERS,
    MAX_SEED,
    MAX_SEQ_LEN,
    MAX_UNITS,
    bounded,
)

DEFAULTS = TrainConfig()
"""The one source of ``vrnn train``'s defaults."""


def _epoch_line(epochs: int) -> Callable[[int, dict[str, float]], None]:
    def show(epoch: int, logs: dict[str, float]) -> None:
        val = ""
        if "val_loss" in logs:
            val = f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.3f}"
        console.line(
            f"epoch {epoch + 1:>3}/{epochs}  loss {logs['loss']:.4f}  "
            f"acc {logs['accuracy']:.3f}{val}"
        )

    return show


def command(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (path,label,group,split).")],
    features: Annotated[Path, typer.Argument(help="Feature store (.h5) from vrnn extract.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Model directory (replaced atomically; refused if it holds other files; "
            "a symlink's target is replaced).",
        ),
    ] = Path("models"),
    head: Annotated[
        Head,
        typer.Option(
            help="delta_lstm (the default), delta_gru: delta averaged with an RNN over each "
            "frame's self-similarity; delta: linear on (mean, trend, mean |frame-to-frame "
            "change|); lstm, gru, bigru; baselines meanpool and trend."
        ),
    ] = DEFAULTS.head,
    seq_len: Annotated[
        int, typer.Option(callback=bounded(1, MAX_SEQ_LEN), help="Frames per sample.")
    ] = DEFAULTS.seq_len,
    units: Annotated[
        int, typer.Option(callback=bounded(1, MAX_UNITS), help="Recurrent units per layer.")
    ] = DEFAULTS.units,
    layers: Annotated[
        int, typer.Option(callback=bounded(1, MAX_LAYERS), help="Stacked recurrent layers.")
    ] = DEFAULTS.layers,
    dropout: Annotated[
        float, typer.Option(callback=bounded(0, 0.99), help="Dropout before the softmax layer.")
    ] = DEFAULTS.dropout,
    dense_units: Annotated[
        int, typer.Option(callback=bounded(0, MAX_UNITS), help="Hidden dense width (0: none).")
    ] = DEFAULTS.dense_units,
    epochs: Annotated[
        int, typer.Option(callback=bounded(1, MAX_EPOCHS), help="Maximum epochs.")
    ] = DEFAULTS.epochs,
    min_epoch_sequences: Annotated[
        int,
        typer.Option(
            callback=bounded(0, MAX_COUNT),
            help="Pass a smaller train split several times an epoch (each pass re-shuffled "
            "and re-cropped), so an epoch is at least this many sequences (0: one pass).",
        ),
    ] = DEFAULTS.min_epoch_sequences,
    batch_size: Annotated[
        int, typer.Option(callback=bounded(1, MAX_BATCH), help="Sequences per step.")
    ] = DEFAULTS.batch_size,
    lr: Annotated[
        float,
        typer.Option("--lr", callback=bounded(0, 10, low_open=True), help="Adam learning rate."),
    ] = DEFAULTS.learning_rate,
    patience: Annotated[
        int,
        typer.Option(callback=bounded(0, MAX_EPOCHS), help="Early-stopping patience (epochs)."),
    ] = DEFAULTS.patience,
    seed: Annotated[
        int, typer.Option(callback=bounded(0, MAX_SEED), help="Seeds init, shuffling and crops.")
    ] = DEFAULTS.seed,
    memory_budget: Annotated[
        str,
        typer.Option(
            help="Hold train+val features in RAM up to this size (e.g. 2GiB, 0 = always "
            "stream); above it, stream them from a memory-mapped frame cache (~/.cache/vrnn)."
        ),
    ] = "2GiB",
    normalize: Annotated[
        bool,
        typer.Option(
            help="Standardize features with train-split statistics (in the model); "
            "the delta heads always do."
        ),
    ] = DEFAULTS.normalize,
    projection: Annotated[
        int,
        typer.Option(
            callback=bounded(0, MAX_UNITS),
            help="Per-frame linear projection width before the RNN (0: none).",
        ),
    ] = DEFAULTS.projection,
    input_dropout: Annotated[
        float, typer.Option(callback=bounded(0, 0.99), help="Dropout on the RNN's inputs.")
    ] = DEFAULTS.input_dropout,
    weight_decay: Annotated[
        float, typer.Option(callback=bounded(0, 1), help="AdamW weight decay (0: Adam).")
    ] = DEFAULTS.weight_decay,
) -> None:
    """Train a head (`delta_lstm` by default) on cached features (labels and splits from the
    manifest)."""
    from pipeline.manifest import read_manifest
    from pipeline.outputs import MODEL_DIR, check_output
    from pipeline.streaming import parse_memory_budget
    from pipeline.training import train

    config = TrainConfig(
        head=head,
        seq_len=seq_len,
        units=units,
        layers=layers,
        dropout=dropout,
        dense_units=dense_units,
        epochs=epochs,
        min_epoch_sequences=min_epoch_sequences,
        batch_size=batch_size,
        learning_rate=lr,
        patience=patience,
        seed=seed,
        normalize=normalize,
        projection=projection,
        input_dropout=input_dropout,
        weight_decay=weight_decay,
    )
    config.validate()  # before reading anything
    if ignored := config.ignored_options():
        console.warning(
            f"{', '.join(ignored)} ha{'ve' if len(ignored) > 1 else 's'} no effect "
            f"with --head {head}"
        )
    check_output(output, MODEL_DIR)  # before training: a refused output wastes no epochs
    budget = parse_memory_budget(memory_budget)
    records = read_manifest(manifest)
    result = train(
        records,
        features,
        output,
        config,
        on_epoch=_epoch_line(epochs),
        on_warning=console.warning,
        memory_budget=budget,
    )
    last = result.history[result.best_epoch - 1]
    val = f", val_accuracy {last['val_accuracy']:.3f}" if "val_accuracy" in last else ""
    passes = config.passes(result.counts["train"])
    per_epoch = f"; {passes} passes an epoch" if passes > 1 else ""
    typer.echo(
        f"trained {head} on {result.counts['train']} videos ({len(result.labels)} classes, "
        f"val {result.counts['val']}{per_epoch}); kept epoch {result.best_epoch} of "
        f"{len(result.history)}{val}; input {result.input_plan.describe()} → {result.model_dir}"
    )
