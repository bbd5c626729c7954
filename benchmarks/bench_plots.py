"""What the PNG plots add to a demo run: matplotlib's first import plus each image drawn.

Run:  python benchmarks/bench_plots.py [--epochs 60] [--classes 6] [--repeats 3]
      python benchmarks/bench_plots.py --demo DIR [--repeats 3]


``vrnn train`` and ``vrnn evaluate`` are separate processes, so each pays the import once:
train draws the curves, evaluate the confusion matrix and the F1 bars. Each repeat runs in a
fresh interpreter (``python -c``), so the import is cold in the process (warm in the page
cache, as on a second demo run). Defaults are the demo's sizes (params.yaml: 60 epochs at
most, 6 classes). Medians over the repeats, wall and CPU seconds (on a busy machine CPU
seconds are the honest cost); the budget is the issue's 2 s.

``--demo DIR`` measures the whole cost end to end. Keras 3 imports ``matplotlib.pyplot``
when matplotlib is installed, unless :mod:`pipeline.keras_imports` hides it, so the bare
``import pipeline; import keras`` that every TensorFlow command makes is timed too. In DIR,
a checkout after ``make demo``, it runs the demo's own train and evaluate
commands (dvc.yaml's, with params.yaml's values) into a temporary folder, alternately as they
are and as before the plots (matplotlib hidden from the import system, drawing replaced by
no-ops), and times ``import pipeline; import keras`` both ways: what extract also pays.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


BEFORE_PLOTS = """
import sys
sys.modules["matplotlib"] = None  # as if not installed: its import raises ImportError
from pipeline import plots
plots.save_png = lambda figure, path: None
plots.curves_figure = plots.confusion_figure = plots.f1_figure = lambda *a, **k: None
"""
LAUNCH = """
{before}
from stages.cli import app
app(prog_name="vrnn")
"""


def demo_commands(repo: Path, out: Path) -> list[tuple[dict[str, str], list[str]]]:
    """dvc.yaml's train and evaluate commands with params.yaml's values, writing under out."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    commands = []
    for stage in ("train", "evaluate"):
        cmd = re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(params[m[1]][m[2]]), stages[stage]["cmd"])
        words = shlex.split(cmd)
        env = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
        args = words[words.index("vrnn") + 1 :]
        args = [str(out / a) if a in ("models", "metrics") else a for a in args]
        commands.append((env, args))
    return commands


def timed(commands: list[tuple[dict[str, str], list[str]]], repo: Path) -> tuple[float, float]:
    """Wall and CPU seconds (children's user + system) of running ``commands`` in turn."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    for env, argv in commands:
        subprocess.run(argv, cwd=repo, env={**os.environ, **env}, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu


def time_demo(repo: Path, repeats: int) -> None:
    """Medians of the demo's train + evaluate and of ``import keras``, now and before plots."""
    runs: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for now in (True, False):
            before = "" if now else BEFORE_PLOTS
            with tempfile.TemporaryDirectory() as tmp:
                stages = [
                    (env, [sys.executable, "-c", LAUNCH.format(before=before), *args])
                    for env, args in demo_commands(repo, Path(tmp))
                ]
                runs.setdefault(("train + evaluate", now), []).append(timed(stages, repo))
            probe = [({}, [sys.executable, "-c", f"{before}\nimport pipeline\nimport keras"])]
            runs.setdefault(("import keras (extract pays it)", now), []).append(timed(probe, repo))
    median = {
        key: [sorted(run[i] for run in values)[len(values) // 2] for i in (0, 1)]
        for key, values in runs.items()
    }
    print(f"demo in {repo}, median of {repeats} alternating runs")
    print(f"{'run':<34}{'now wall':>9}{'CPU':>7}{'before':>9}{'CPU':>7}{'added CPU s':>13}")
    added = 0.0
    for step in ("train + evaluate", "import keras (extract pays it)"):
        (wall, cpu), (wall0, cpu0) = median[step, True], median[step, False]
        added += cpu - cpu0
        print(f"{step:<34}{wall:>9.2f}{cpu:>7.2f}{wall0:>9.2f}{cpu0:>7.2f}{cpu - cpu0:>13.2f}")
    print(f"{'added to the demo (CPU s)':<34}{added:>45.2f}   (budget {BUDGET_S} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", type=Path, help="a checkout after `make demo`: time its "
                        "train + evaluate with and without drawing")  # fmt: skip
    args = parser.parse_args()
    if args.demo:
        time_demo(args.demo.resolve(), args.repeats)
        return
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
