"""``vrnn evaluate``: score a model directory on one split → DVC metrics and plot files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
MAX_CLASS_ROWS = 30
"""Per-class rows shown on the terminal; per_class.csv always has all of them."""


def command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from vrnn train.")],
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (path,label,group,split).")],
    features: Annotated[Path, typer.Argument(help="Feature store (.h5), same extractor.")],
    split: Annotated[str, typer.Option(help="Split to score: train, val or test.")] = "test",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for eval.json and the CSVs.")
    ] = Path("metrics"),
    memory_budget: Annotated[
        str,
        typer.Option(
            help="Read the split into RAM up to this size (e.g. 2GiB, 0 = always stream); "
            "above it, read and score it in chunks."
        ),
    ] = "2GiB",
) -> None:
    """Score a trained head on one manifest split; write eval.json, per_class.csv, confusion.csv."""
    from pipeline.dataset import read_manifest
    from pipeline.streaming import parse_memory_budget
    from pipeline.training import describe_missing, evaluate

    budget = parse_memory_budget(memory_budget)
    records = read_manifest(manifest)
    result = evaluate(model_dir, records, features, output, split=split, memory_budget=budget)
    if result.missing:
        console.print(
            f"[bold yellow]warning:[/] {describe_missing(result.missing)}", highlight=False
        )
    s = result.summary
    table = Table(title=f"{split}: {s.n} videos, {len(result.labels)} classes")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in sorted(result.per_class, key=lambda r: r.f1)[:MAX_CLASS_ROWS]:
        table.add_row(
            row.label,
            f"{row.precision:.3f}",
            f"{row.recall:.3f}",
            f"{row.f1:.3f}",
            str(row.support),
        )
    top5 = f", top-5 {s.top5:.3f}" if s.top5 is not None else ""
    table.caption = f"top-1 {s.top1:.3f}{top5}, macro-F1 {s.macro_f1:.3f}; worst F1 first"
    console.print(table)
    typer.echo(
        f"{split}: top-1 {s.top1:.3f}{top5}, macro-F1 {s.macro_f1:.3f} on {s.n} videos; "
        f"input {result.input_plan.describe()} → {', '.join(str(f) for f in result.files)}"
    )
