"""``dvc.yaml`` declares the code each stage runs: its deps equal the import closure of the
stage's command (``tools/dvc_deps.py``), so ``dvc repro`` re-runs a stage when code it imports
changes."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dvc_deps", REPO / "tools" / "dvc_deps.py")
dvc_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dvc_deps)


def test_every_stage_depends_on_every_module_its_command_imports():
    stale = dvc_deps.drift(REPO / "dvc.yaml")
    assert not stale, f"dvc.yaml code deps drifted, run `python tools/dvc_deps.py --write`: {stale}"


def test_closure_follows_lazy_and_transitive_imports():
    train = dvc_deps.code_deps("vrnn train data/manifest.csv data/features -o models")
    # stages/train.py imports pipeline.training inside its command; training imports
    # `from pipeline import heads, metrics`; manifest imports splits at module level.
    for module in ("stages/train.py", "pipeline/training.py", "pipeline/heads.py",
                   "pipeline/metrics.py", "pipeline/splits.py", "stages/cli.py",
                   "pipeline/__init__.py"):  # fmt: skip
        assert module in train
    assert dvc_deps.command_module("TF_NUM_INTRAOP_THREADS=1 vrnn sample-data x") == (
        "stages.sample_data"
    )
    assert "stages/tf_import.py" in train  # a helper of the entry point is followed
    # The entry point registers every command; their own code is not train's.
    assert "stages/extract.py" not in train and "pipeline/extract.py" not in train


@pytest.fixture
def copy_repo(tmp_path: Path) -> Path:
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    for folder in dvc_deps.PACKAGES:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__py*"))
    return tmp_path


def test_a_new_import_is_drift_until_written(copy_repo: Path):
    index = copy_repo / "stages" / "index.py"
    index.write_text(index.read_text() + "\n\ndef _late() -> None:\n    import pipeline.metrics\n")
    stale = dvc_deps.drift(copy_repo / "dvc.yaml")
    assert set(stale) == {"index"}
    missing, extra = stale["index"]
    assert "pipeline/metrics.py" in missing and not extra

    (copy_repo / "dvc.yaml").write_text(dvc_deps.rewrite(copy_repo / "dvc.yaml"))
    assert dvc_deps.drift(copy_repo / "dvc.yaml") == {}
    deps = yaml.safe_load((copy_repo / "dvc.yaml").read_text())["stages"]["index"]["deps"]
    assert deps[0] == "data/videos" and "pipeline/metrics.py" in deps  # data deps kept first


def test_a_dep_no_longer_imported_is_drift(copy_repo: Path):
    text = (copy_repo / "dvc.yaml").read_text()
    line = "      - stages/index.py\n"
    text = text.replace(line, line + "      - pipeline/heads.py\n", 1)
    (copy_repo / "dvc.yaml").write_text(text)
    assert dvc_deps.drift(copy_repo / "dvc.yaml") == {"index": ([], ["pipeline/heads.py"])}
