"""Classification metrics in pure NumPy, and the DVC-readable files that report them.

``eval.json`` holds the summary (top-1, top-5, macro-F1, n, split), ``per_class.csv`` one
row per class, and ``confusion.csv`` one ``actual,predicted`` row per video: the long format
DVC's ``confusion`` plot template counts itself.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline import fsio

TOP5_MIN_CLASSES = 6
"""Top-5 accuracy is only reported when there are more than 5 classes (else it is always 1)."""
MIN_SCORED_PER_CLASS = 5
"""Below this many clips of some class in the scored split, each clip moves its recall by more
than 0.2: the scores are flagged."""


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class (0.0 where undefined), and its true count."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class EvalSummary:
    """Headline numbers of one evaluation; ``top5`` is None with 5 classes or fewer.

    ``n`` videos were scored; ``missing`` videos of the split were not (not in the store).
    """

    split: str
    n: int
    top1: float
    top5: float | None
    macro_f1: float
    missing: int = 0


def top_k_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the ``k`` highest scores.

    Args:
        probs: ``[N, C]`` scores (any float dtype).
        targets: ``[N]`` int true class indices.
        k: how many top classes count (clipped to ``C``).

    Returns:
        Accuracy in [0, 1]; 0.0 when ``N`` is 0. Ties are broken by class index.
    """
    if len(targets) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(targets)[:, None], axis=1)))


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (actual, predicted) pairs.

    Returns:
        ``[C, C]`` int64 matrix, rows = actual class, columns = predicted class.
    """
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, int), np.asarray(predicted, int)), 1)
    return matrix


def per_class_scores(matrix: np.ndarray, labels: Sequence[str]) -> list[ClassScores]:
    """Precision, recall and F1 per class from a confusion matrix (0.0 where a ratio is 0/0).

    Args:
        matrix: ``[C, C]`` counts from :func:`confusion_matrix`.
        labels: ``C`` class names, in index order.
    """
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    return [
        ClassScores(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    ]


def macro_f1(matrix: np.ndarray, labels: Sequence[str]) -> float:
    """Unweighted mean F1 over the classes that occur as actual or predicted (as scikit-learn).

    Classes absent from both are left out, so a test split without some class is not
    penalised for it; 0.0 for an empty matrix.
    """
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    scores = np.array([s.f1 for s in per_class_scores(matrix, labels)])
    return float(scores[present].mean())


def summarize(
    probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], split: str
) -> tuple[EvalSummary, list[ClassScores], np.ndarray]:
    """All metrics of one evaluation.

    Args:
        probs: ``[N, C]`` class probabilities.
        targets: ``[N]`` int true class indices.
        labels: ``C`` class names.
        split: the split evaluated, recorded in the summary.

    Returns:
        ``(summary, per-class scores, [C, C] confusion matrix)``.
    """
    predicted = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, int)
    matrix = confusion_matrix(targets, predicted, len(labels))
    summary = EvalSummary(
        split=split,
        n=len(targets),
        top1=top_k_accuracy(probs, targets, 1),
        top5=top_k_accuracy(probs, targets, 5) if len(labels) >= TOP5_MIN_CLASSES else None,
        macro_f1=macro_f1(matrix, labels),
    )
    return summary, per_class_scores(matrix, labels), matrix


def worst_class(scores: Sequence[ClassScores]) -> ClassScores | None:
    """The class with the lowest F1 among those the split holds (support > 0), or None."""
    return min((s for s in scores if s.support), key=lambda s: s.f1, default=None)


def split_warnings(scores: Sequence[ClassScores], split: str) -> list[str]:
    """One line per reason the scores of ``split`` are weaker than they look: classes with
    no clip in it (unscored, left out of the worst F1), and fewer than
    :data:`MIN_SCORED_PER_CLASS` clips in some class."""
    notes = []
    absent = [s.label for s in scores if not s.support]
    if absent:
        notes.append(
            f"class(es) {', '.join(map(repr, absent))} have no {split} clip: left out of "
            "worst F1 and unscored; give the split groups of every class (vrnn index)"
        )
    present = [s for s in scores if s.support]
    fewest = min(present, key=lambda s: s.support, default=None)
    if fewest is not None and fewest.support < MIN_SCORED_PER_CLASS:
        notes.append(
            f"the {split} split has fewer than {MIN_SCORED_PER_CLASS} clips in some class "
            f"({fewest.label!r}: {fewest.support}); its scores move by whole clips"
        )
    return notes


def write_summary(path: Path, summary: EvalSummary) -> None:
    """Write ``eval.json``: ``split``, ``n``, ``top1``, ``top5`` (when not None), ``macro_f1``,
    ``missing``."""
    payload = {k: v for k, v in asdict(summary).items() if v is not None}
    fsio.atomic_json(Path(path), payload, indent=2)


def write_per_class(path: Path, scores: Sequence[ClassScores]) -> None:
    """Write ``per_class.csv`` with columns ``label,precision,recall,f1,support``."""
    rows = [
        [s.label, f"{s.precision:.6f}", f"{s.recall:.6f}", f"{s.f1:.6f}", s.support] for s in scores
    ]
    _write_csv(path, ["label", "precision", "recall", "f1", "support"], rows)


def write_confusion(
    path: Path, targets: np.ndarray, predicted: np.ndarray, labels: Sequence[str]
) -> None:
    """Write ``confusion.csv``: header ``actual,predicted``, one row of label names per video."""
    rows = [
        [labels[int(actual)], labels[int(guess)]]
        for actual, guess in zip(targets, predicted, strict=True)
    ]
    _write_csv(path, ["actual", "predicted"], rows)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """One CSV file, written atomically (whole or not at all)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    fsio.atomic_text(Path(path), text.getvalue())
