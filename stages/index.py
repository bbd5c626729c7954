"""``vrnn index``: folder tree, UCF101 lists or CSV → manifest CSV (path,label,group,split)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.index_sources import index_source
from pipeline.manifest import write_manifest
from pipeline.outputs import MANIFEST, check_output
from pipeline.splits import SplitFractions
from stages import console

MAX_NAMED = 5
"""Labels named in one warning line; the rest are counted."""


def command(
    source: Annotated[
        Path,
        typer.Argument(
            help="Class-per-folder tree (SOURCE/<label>/<videos>), the UCF101 video root "
            "(with --ucf101-lists), or a CSV with columns path,label[,group,split]."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest CSV to write.")],
    ucf101_lists: Annotated[
        Path | None,
        typer.Option(help="Folder with classInd.txt, trainlist0N.txt and testlist0N.txt."),
    ] = None,
    split_id: Annotated[
        int | None, typer.Option(help="UCF101 official split: 1, 2 or 3 (default 1).")
    ] = None,
    val_frac: Annotated[
        float, typer.Option(help="Share of groups for val, where the source gives no split.")
    ] = 0.15,
    test_frac: Annotated[
        float,
        typer.Option(
            help="Share of groups for test, where the source gives no split "
            "(ignored with --ucf101-lists: the test list is the test split).",
        ),
    ] = 0.15,
    group_by: Annotated[
        str | None,
        typer.Option(
            metavar="REGEX",
            help="Folder trees: the recording a file was cut from, so its clips share a split. "
            "A regular expression searched in the file's path under its class folder; its "
            "first group (or the whole match) is the group: '^(.+?)_cut' or '^([^/]+)/' (the "
            "sub-folder). Default: each file is its own group, UCF101 names by <Class>_g<NN>.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an -o file that is not a manifest vrnn wrote.")
    ] = False,
) -> None:
    """Index a video collection into a manifest, with a deterministic group-aware split."""
    check_output(output, MANIFEST, overwrite=overwrite)
    fractions = SplitFractions.from_holdout(val=val_frac, test=test_frac)
    result = index_source(
        source,
        ucf101_lists=ucf101_lists,
        split_id=split_id,
        fractions=fractions,
        group_by=group_by,
    )
    output.parent.mkdir(parents=True, exist_ok=True)  # as every other command does
    write_manifest(result.records, output)
    splits = ", ".join(f"{name} {count}" for name, count in result.split_counts().items())
    skipped = console.passed_over(result.passed_over)
    if result.outside:
        skipped += (
            f"; skipped {result.outside} videos outside any class folder "
            f"(directly in {source}; move them into SOURCE/<label>/)"
        )
    chosen = {"val": fractions.val, "test": fractions.test}
    for split, share in chosen.items():
        if share and (absent := result.labels_missing(split)):
            named = console.first_few(list(map(repr, absent)), MAX_NAMED)
            console.warning(
                f"the {split} split has no group of label(s) {named}: its scores will "
                "not cover them; index more recordings (groups) of them"
            )
    typer.echo(
        f"indexed {len(result.records)} videos in {len(result.labels)} labels "
        f"({splits}){skipped} → {output}"
    )
