"""``vrnn export``: a model directory → one end-to-end model (frames in, probabilities out)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.choices import ExportFormat


def command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from vrnn train.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="A .keras file, a SavedModel directory or a .tflite file."
        ),
    ],
    export_format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="keras (Keras built-in layers only: keras.saving.load_model loads it without "
            "this package), savedmodel (TF SavedModel, endpoint serve) or tflite (batch size 1).",
        ),
    ] = ExportFormat.KERAS,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Backbone weights file, instead of MODEL_DIR/backbone.weights.h5; must match "
            "the model's sha256."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an -o (or labels.json beside it) vrnn did not write.")
    ] = False,
) -> None:
    """Export backbone + head as one model: uint8 frames in, class probabilities out.

    Signature: input `frames` uint8 [B, T, S, S, 3] → output float32 [B, C] probabilities,
    in the order of NAME.labels.json written next to the export (refused if one of that
    name lists other classes). T is the head's seq_len, S
    the extractor's input size (both printed below); B is any batch size (1 for tflite).
    Frames are RGB, decoded and resized exactly as `vrnn extract` does (crop or squash to
    S×S, sampled at the extractor's fps) and T of them chosen evenly over the video
    (the centre frame of T equal segments); preprocessing is inside the model. There is no
    mask: all T frames are real, so a video needs at least T sampled frames to get the
    same probabilities as `vrnn predict`.
    """
    from pipeline.export import export_model
    from pipeline.outputs import EXPORT_FILES, LABELS_JSON, check_output

    check_output(output, EXPORT_FILES[export_format], overwrite=overwrite)
    check_output(output.parent / "labels.json", LABELS_JSON, overwrite=overwrite)
    result = export_model(model_dir, output, fmt=export_format, weights=weights)
    typer.echo(
        f"exported {result.format}: {result.signature()} → {result.path} "
        f"(labels: {result.labels_path})"
    )
