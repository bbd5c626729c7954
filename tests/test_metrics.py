"""Metrics: top-k, confusion matrix, per-class P/R/F1, macro-F1, and the files DVC reads."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.metrics import (
    confusion_matrix,
    macro_f1,
    per_class_scores,
    summarize,
    top_k_accuracy,
    write_confusion,
    write_per_class,
    write_summary,
)

LABELS = ["cat", "dog", "eel"]


def test_top_k_accuracy():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4]])
    targets = np.array([0, 2, 1])
    assert top_k_accuracy(probs, targets, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(probs, targets, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(probs, targets, 10) == 1.0  # k clipped to the class count
    assert top_k_accuracy(np.zeros((0, 3)), np.zeros(0, int), 1) == 0.0


def test_top_k_breaks_ties_by_class_index():
    assert top_k_accuracy(np.array([[0.5, 0.5]]), np.array([0]), 1) == 1.0
    assert top_k_accuracy(np.array([[0.5, 0.5]]), np.array([1]), 1) == 0.0


def test_confusion_matrix_rows_are_actual():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    assert matrix.dtype == np.int64


def test_per_class_scores_by_hand():
    # cat: 1 TP, 1 FN; dog: 1 TP, 2 FP; eel: 1 FN, never predicted
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    cat, dog, eel = per_class_scores(matrix, LABELS)
    assert (cat.precision, cat.recall, cat.support) == (1.0, 0.5, 2)
    assert cat.f1 == pytest.approx(2 / 3)
    assert (dog.precision, dog.recall) == (pytest.approx(1 / 3), 1.0)
    assert dog.f1 == pytest.approx(0.5)
    assert (eel.precision, eel.recall, eel.f1, eel.support) == (0.0, 0.0, 0.0, 1)
    assert macro_f1(matrix, LABELS) == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)


def test_macro_f1_ignores_classes_absent_from_truth_and_predictions():
    matrix = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 3)
    assert macro_f1(matrix, LABELS) == 1.0
    assert macro_f1(np.zeros((3, 3), int), LABELS) == 0.0


def _ranked(targets: np.ndarray, rank_of_truth: np.ndarray, classes: int) -> np.ndarray:
    """Scores ``[N, classes]`` where row ``n``'s true class has rank ``rank_of_truth[n]``
    (0 = the highest score); the other classes fill the remaining ranks in index order."""
    probs = np.zeros((len(targets), classes))
    for row, (truth, rank) in enumerate(zip(targets, rank_of_truth, strict=True)):
        others = [c for c in range(classes) if c != truth]
        order = [*others[:rank], truth, *others[rank:]]  # highest score first
        probs[row, order] = np.linspace(1.0, 0.1, classes)
    return probs


@pytest.mark.parametrize("classes", [5, 6])
def test_summarize_reports_top5_only_above_five_classes(classes: int):
    """At 5 classes top-5 is always 1 and is left out; from 6 on it is reported, and counts a
    video whose true class ranks 6th as a miss."""
    labels = [f"c{i}" for i in range(classes)]
    targets = np.arange(8) % classes
    last = classes - 1
    rank_of_truth = np.array([0, 0, 1, 4, last, last, 2, 0])
    summary, _, _ = summarize(_ranked(targets, rank_of_truth, classes), targets, labels, "val")
    assert summary.top1 == pytest.approx(np.mean(rank_of_truth == 0))
    if classes <= 5:
        assert summary.top5 is None
    else:
        assert summary.top5 == pytest.approx(np.mean(rank_of_truth < 5))
        assert summary.top5 < 1.0


def test_summarize_perfect_scores_on_three_classes():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 20)
    summary, scores, matrix = summarize(np.eye(3)[targets], targets, LABELS, "test")
    assert (summary.split, summary.n, summary.top1, summary.top5) == ("test", 20, 1.0, None)
    assert summary.macro_f1 == 1.0 and len(scores) == 3 and matrix.trace() == 20


def test_files_have_the_documented_columns(tmp_path):
    targets, predicted = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    summary, scores, _ = summarize(np.eye(3)[predicted], targets, LABELS, "test")
    write_summary(tmp_path / "eval.json", summary)
    write_per_class(tmp_path / "per_class.csv", scores)
    write_confusion(tmp_path / "confusion.csv", targets, predicted, LABELS)
    payload = json.loads((tmp_path / "eval.json").read_text())
    assert set(payload) == {"split", "n", "top1", "macro_f1", "missing"}
    assert payload["n"] == 4 and payload["missing"] == 0
    with open(tmp_path / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["label", "precision", "recall", "f1", "support"]
    assert [r["label"] for r in rows] == LABELS and rows[0]["support"] == "2"
    with open(tmp_path / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [["actual", "predicted"], ["cat", "cat"], ["cat", "dog"], ["dog", "dog"],
                    ["eel", "dog"]]  # fmt: skip
