"""``vrnn evaluate``: score a model directory on one split → DVC metrics and plot files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.choices import Split
from stages import console

MAX_CLASS_ROWS = 30
"""Per-class rows shown on the terminal; per_class.csv always has all of them."""


def command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from vrnn train.")],
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (path,label,group,split).")],
    features: Annotated[Path, typer.Argument(help="Feature store (.h5), same extractor.")],
    split: Annotated[
        Split, typer.Option(case_sensitive=False, help="Split to score.")
    ] = Split.TEST,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory for eval.json and the CSVs.")
    ] = Path("metrics"),
    strict: Annotated[
        bool,
        typer.Option(help="Exit 1 if any video of the split is missing from the store."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace eval.json/per_class.csv/confusion.csv vrnn did not write.")
    ] = False,
    memory_budget: Annotated[
        str,
        typer.Option(
            help="Read the split into RAM up to this size (e.g. 2GiB, 0 = always stream); "
            "above it, read and score it in chunks."
        ),
    ] = "2GiB",
) -> None:
    """Score a trained head on one manifest split; write eval.json, per_class.csv, confusion.csv.

    Videos of the split that are not in the feature store are skipped, counted in eval.json
    (``missing``) and the summary line; with --strict they make the command exit 1.
    """
    from pipeline.join import describe_missing
    from pipeline.manifest import read_manifest
    from pipeline.metrics import worst_class
    from pipeline.outputs import EVAL_DIR, check_output
    from pipeline.streaming import parse_memory_budget
    from pipeline.training import evaluate

    check_output(output, EVAL_DIR, overwrite=overwrite)
    budget = parse_memory_budget(memory_budget)
    records = read_manifest(manifest)
    result = evaluate(model_dir, records, features, output, split=split, memory_budget=budget)
    if result.missing:
        console.warning(describe_missing(result.missing))
    for note in result.warnings:
        console.warning(note)
    s = result.summary
    split = s.split
    table = Table(title=console.plain(f"{split}: {s.n} videos, {len(result.labels)} classes"))
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in sorted(result.per_class, key=lambda r: r.f1)[:MAX_CLASS_ROWS]:
        table.add_row(
            console.plain(row.label),
            f"{row.precision:.3f}",
            f"{row.recall:.3f}",
            f"{row.f1:.3f}",
            str(row.support),
        )
    top5 = f", top-5 {s.top5:.3f}" if s.top5 is not None else ""
    worst = worst_class(result.per_class)
    worst_f1 = f", worst F1 {worst.f1:.3f} ({worst.label})" if worst is not None else ""
    table.caption = console.plain(
        f"classes sorted by F1, worst first (at most {MAX_CLASS_ROWS} shown)"
    )
    console.show(table)
    missing = f" ({s.missing} missing)" if s.missing else ""
    typer.echo(
        f"{split}: top-1 {s.top1:.3f}{top5}, macro-F1 {s.macro_f1:.3f}{worst_f1} on {s.n} "
        f"videos{missing}; input {result.input_plan.describe()} → "
        f"{', '.join(str(f) for f in result.files)}"
    )
    if strict and s.missing:
        console.error(f"{s.missing} {split} videos are missing from the store (--strict)")
        raise typer.Exit(1)
