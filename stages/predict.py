"""``vrnn predict``: classify video files nobody indexed, with a trained model directory."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from stages import console
from stages.options import MAX_BATCH, MAX_COUNT, bounded

if TYPE_CHECKING:
    from pipeline.predict import Prediction, PredictionFailure


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


class _TableRows:
    """A rich table printed one row at a time, every row with the same column widths.

    The paths get their full width where the console allows it, the top-k column at least
    40% of it; a narrow console folds long paths and cuts the least likely classes ("…").
    """

    def __init__(self, labels: Sequence[str], top_k: int, paths: Sequence[str]):
        self.labels, self.top_k = labels, top_k
        longest = max(map(len, paths), default=5)
        widest = sum(sorted(map(len, labels))[-top_k:]) + 7 * top_k - 2  # "label 0.12  " pairs
        room = max(console.out.width - 10, 30)  # minus the frames column and the gaps
        self.top_k_width = min(widest, max(int(0.4 * room), room - longest))
        self.path_width = min(max(longest, 5), room - self.top_k_width)

    def _table(self, header: bool) -> Table:
        table = Table(show_header=header, header_style="bold", box=None, pad_edge=False)
        table.add_column("video", width=self.path_width, overflow="fold")
        table.add_column(
            f"top-{self.top_k}", width=self.top_k_width, no_wrap=True, overflow="ellipsis"
        )
        table.add_column("frames", width=6, justify="right")
        return table

    def header(self) -> None:
        console.show(self._table(header=True), to_stdout=True)

    def failure(self, failed: PredictionFailure) -> None:
        console.line(f"{failed.path}: {failed.reason}", tag="failed", style="red")

    def prediction(self, outcome: Prediction) -> None:
        ranked = outcome.top_k(self.labels, self.top_k)
        cells = [Text(f"{label} {prob:.2f}") for label, prob in ranked]
        cells[0].stylize("bold")
        table = self._table(header=False)
        table.add_row(
            console.plain(_shown(outcome.path)), Text("  ").join(cells), str(outcome.frames)
        )
        console.show(table, to_stdout=True)


class _JsonLines:
    """One JSON object per line on stdout: a prediction, or ``{"path", "error"}``."""

    def __init__(self, labels: Sequence[str], top_k: int):
        self.labels, self.top_k = labels, top_k
        self.started = time.perf_counter()

    def header(self) -> None:
        pass

    def failure(self, failed: PredictionFailure) -> None:
        typer.echo(json.dumps({"path": failed.path, "error": failed.reason}))

    def prediction(self, outcome: Prediction) -> None:
        record = {
            "path": outcome.path,
            "video_id": outcome.video_id,
            "top_k": [
                {"label": label, "prob": round(prob, 6)}
                for label, prob in outcome.top_k(self.labels, self.top_k)
            ],
            "probabilities": {
                label: round(float(p), 6)
                for label, p in zip(self.labels, outcome.probabilities, strict=True)
            },
            "frames": outcome.frames,
            "duration_sec": round(outcome.duration_sec, 3),
            "elapsed_sec": round(time.perf_counter() - self.started, 3),
            "cached": outcome.cached,
        }
        typer.echo(json.dumps(record, allow_nan=False))


def command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from vrnn train.")],
    videos: Annotated[
        list[Path], typer.Argument(help="Video files and/or folders (walked for video files).")
    ],
    top_k: Annotated[
        int, typer.Option(callback=bounded(1, MAX_COUNT), help="Classes shown per video.")
    ] = 5,
    json_lines: Annotated[
        bool,
        typer.Option(
            "--json",
            help="JSON lines on stdout: path, video_id, top_k [{label, prob}], probabilities "
            "{label: prob} (all classes), frames, duration_sec, elapsed_sec (since start), "
            "cached; a failed input "
            'is {"path", "error"}.',
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(callback=bounded(1, MAX_BATCH), help="Frames per backbone batch.")
    ] = 32,
    features: Annotated[
        Path | None,
        typer.Option(
            help="Feature store (.h5) built by the model's extractor: videos it holds (by "
            "content hash) are classified from it without decoding."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Backbone weights file, instead of MODEL_DIR/backbone.weights.h5 (needed for "
            "older model dirs without it); must match the model's sha256."
        ),
    ] = None,
) -> None:
    """Classify video files with a trained model: top-k classes per video, as each finishes.

    Videos are decoded and embedded by the extractor the model was trained on (rebuilt from
    MODEL_DIR) and sampled as `vrnn evaluate` samples them.

    Exit status: 0 when every input was classified; 1 when any failed (each failed input is
    reported: a line on stderr, or a JSON error record with --json; the others are still
    classified) or when the model directory, store or weights are unusable (one error line).
    """
    from pipeline.predict import Prediction, Predictor, collect_videos

    predictor = Predictor(model_dir, weights)
    if predictor.trained.extractor.weights.startswith("random"):
        console.warning(
            "this model was trained on a seeded RANDOM backbone "
            f"({predictor.trained.extractor.weights}), not ImageNet features"
        )
    paths, failures, passed_over = collect_videos(videos)
    k = min(top_k, len(predictor.labels))
    if json_lines:
        show: _JsonLines | _TableRows = _JsonLines(predictor.labels, k)
    else:
        show = _TableRows(predictor.labels, k, [_shown(str(p)) for p in paths])
    show.header()
    done = {"ok": 0, "failed": 0}
    try:
        for outcome in itertools.chain(
            failures, predictor.predict(paths, features=features, batch_size=batch_size)
        ):
            if isinstance(outcome, Prediction):
                show.prediction(outcome)
                done["ok"] += 1
            else:
                show.failure(outcome)
                done["failed"] += 1
    except KeyboardInterrupt:
        console.line("", tag="interrupted", style="bold red")
        raise typer.Exit(130) from None
    summary = f"classified {done['ok']} videos, {done['failed']} failed"
    console.line(summary + console.passed_over(passed_over))
    if done["failed"]:
        raise typer.Exit(1)
