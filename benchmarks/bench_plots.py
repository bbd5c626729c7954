"""What the PNG plots add to a demo run: matplotlib's first import plus each image drawn.

Run:  python benchmarks/bench_plots.py [--epochs 60] [--classes 6] [--repeats 3]

``vrnn train`` and ``vrnn evaluate`` are separate processes, so each pays the import once:
train draws the curves, evaluate the confusion matrix and the F1 bars. Each repeat runs in a
fresh interpreter (``python -c``), so the import is cold in the process (warm in the page
cache, as on a second demo run). Defaults are the demo's sizes (params.yaml: 60 epochs at
most, 6 classes). Medians over the repeats, wall and CPU seconds (on a busy machine CPU
seconds are the honest cost); the budget is the issue's 2 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

BUDGET_S = 2.0

PROBE = """
import json, tempfile, time
from pathlib import Path
import numpy as np
clock = lambda: (time.perf_counter(), time.process_time())
t0 = clock()
from pipeline import plots
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
t1 = clock()
from pipeline.metrics import ClassScores
epochs, classes = {epochs}, {classes}
rng = np.random.default_rng(0)
history = [dict(loss=1 / e, accuracy=1 - 1 / e, val_loss=1.2 / e, val_accuracy=0.9 - 1 / e)
           for e in range(1, epochs + 1)]
labels = [f"class_{{i}}" for i in range(classes)]
matrix = rng.integers(0, 5, (classes, classes)) + np.diag(np.full(classes, 20))
scores = [ClassScores(label, 0.5, 0.5, float(rng.random()), 3) for label in labels]
out = Path(tempfile.mkdtemp())
times = {{"import": [t1[0] - t0[0], t1[1] - t0[1]]}}
for name, build in (("curves", lambda: plots.curves_figure(history, epochs // 2)),
                    ("confusion", lambda: plots.confusion_figure(matrix, labels)),
                    ("f1 bars", lambda: plots.f1_figure(scores))):
    start = clock()
    plots.save_png(build(), out / f"{{name}}.png")
    end = clock()
    times[name] = [end[0] - start[0], end[1] - start[1]]
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    code = PROBE.format(epochs=args.epochs, classes=args.classes)
    runs = [
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, check=True).stdout)
        for _ in range(args.repeats)
    ]  # fmt: skip
    median = {
        key: [sorted(run[key][i] for run in runs)[len(runs) // 2] for i in (0, 1)]
        for key in runs[0]
    }
    print(f"{args.epochs} epochs, {args.classes} classes, median of {args.repeats} fresh processes")
    print(f"{'step':<34}{'wall s':>9}{'CPU s':>9}")
    rows = {
        "matplotlib import (train)": median["import"],
        "curves PNG (train)": median["curves"],
        "matplotlib import (evaluate)": median["import"],
        "confusion PNG (evaluate)": median["confusion"],
        "F1 bars PNG (evaluate)": median["f1 bars"],
    }
    for name, (wall, cpu) in rows.items():
        print(f"{name:<34}{wall:>9.3f}{cpu:>9.3f}")
    wall, cpu = (sum(seconds[i] for seconds in rows.values()) for i in (0, 1))
    share = f"(CPU: {cpu / BUDGET_S:.0%} of the {BUDGET_S} s budget)"
    print(f"{'added to the demo':<34}{wall:>9.3f}{cpu:>9.3f}   {share}")


if __name__ == "__main__":
    main()
