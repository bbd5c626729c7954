"""How ``vrnn`` imports TensorFlow (stages/tf_import.py): its start-up lines (cudart_stub,
cuInit, oneDNN, absl) stay off a command's output (``--json`` stdout is JSON lines only, stderr
only what ``vrnn`` itself says), and what the import created is frozen out of the garbage
collector's way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

TF_NOISE = re.compile(r"cudart_stub|cuInit|cuda_|oneDNN|absl|^[IWEF]\d{4} |tensorflow/", re.M)


def vrnn(*args: object) -> subprocess.CompletedProcess:
    """``vrnn`` in a fresh process, TF's log settings left to the command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    return subprocess.run(
        [sys.executable, "-m", "stages", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_predict_json_output_carries_no_tensorflow_start_up_lines(trained_dir):
    done = vrnn("predict", trained_dir.model_dir, trained_dir.stored[0], "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(trained_dir.stored[0])]
    assert not TF_NOISE.search(done.stderr), done.stderr
    assert "classified 1 videos, 0 failed" in done.stderr


@pytest.mark.slow
def test_verbose_keeps_tensorflow_logging(trained_dir):
    """``--verbose`` hides nothing: TensorFlow's own settings apply (its default shows its
    start-up lines), while stdout stays the JSON line."""
    done = vrnn("--verbose", "predict", trained_dir.model_dir, trained_dir.stored[0], "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert not TF_NOISE.search(done.stdout), done.stdout
    assert TF_NOISE.search(done.stderr), done.stderr


FREEZE_PROBE = """
import gc, sys
from stages.tf_import import prepare_tensorflow_import
prepare_tensorflow_import(verbose={verbose})
before = gc.get_freeze_count()
import keras  # imports TensorFlow
print(before, gc.get_freeze_count(), len(gc.get_objects()))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_import_is_frozen_out_of_the_collectors_way(verbose):
    run = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE.format(verbose=verbose)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    before, frozen, still_tracked = map(int, run.stdout.split())
    assert before == 0
    # TensorFlow's import alone creates hundreds of thousands of objects; they are frozen,
    # and the collector tracks only what Keras made after it.
    assert frozen > 100_000
    assert still_tracked < frozen
