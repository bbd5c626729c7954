"""`dvc repro` end to end in a temporary git repository: stages, caching, metrics, plots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.dvc, pytest.mark.slow]

if shutil.which("dvc", path=str(BIN)) is None:
    pytest.skip("dvc is not installed (pip install -e '.[dvc]')", allow_module_level=True)


def _run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repo with this project's pipeline and tiny, fast parameters."""
    root = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipeline", "stages", ".dvc"):
        shutil.copytree(
            REPO / folder,
            root / folder,
            ignore=shutil.ignore_patterns("tmp", "cache", "__pycache__"),
        )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sample_data"].update(classes=4, per_class=9)
    params["extract"].update(input_size=32)
    params["train"].update(epochs=2, seq_len=4, units=8, dense_units=8)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=root, check=True)
    return root


def test_repro_runs_every_stage_then_caches(repo: Path) -> None:
    first = _run(repo, "repro")
    assert _ran(first.stdout) == {"sample_data", "index", "extract", "train", "evaluate"}
    assert (repo / "data/features/features.h5").is_file()
    assert (repo / "models/head.keras").is_file()
    assert _ran(_run(repo, "repro").stdout) == set()


def test_changing_a_train_param_reruns_only_train_and_evaluate(repo: Path) -> None:
    _run(repo, "repro")
    features = (repo / "data/features/features.h5").stat().st_mtime_ns
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["units"] = 12
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = _run(repo, "status").stdout
    assert "train" in status and "extract" not in status
    assert _ran(_run(repo, "repro").stdout) == {"train", "evaluate"}
    assert (repo / "data/features/features.h5").stat().st_mtime_ns == features


def test_metrics_and_plots_render(repo: Path) -> None:
    _run(repo, "repro")
    metrics = _run(repo, "metrics", "show").stdout
    assert "metrics/eval.json" in metrics and "top1" in metrics.replace("_", "")
    # the extract report is a tracked output, out of the default metrics view
    assert "extract_report" not in metrics and "weights" not in metrics
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["extract"]
    assert "metrics/extract_report.json" in {out["path"] for out in lock["outs"]}
    assert (repo / "metrics/extract_report.json").is_file()
    _run(repo, "plots", "show", "-o", str(repo / "plots_out"))
    assert (repo / "plots_out/index.html").is_file()


def test_bad_param_fails_in_the_stage_with_one_line(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["head"] = "transformer"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    failed = _run(repo, "repro", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "error:" in output and "transformer" in output
    assert "Traceback" not in output


def _exp_metrics(repo: Path) -> dict[str, dict]:
    """``dvc exp show --json``: each experiment's name → its metrics/eval.json values."""
    shown = json.loads(_run(repo, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                files = data.get("metrics") or {}
                found[rev.get("name") or rev["rev"]] = (
                    files.get("metrics/eval.json", {}).get("data") or {}
                )
    return found


def test_experiments_carry_their_metrics(repo: Path) -> None:
    for key, value in (("user.name", "ci"), ("user.email", "ci@example.invalid")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
    _run(repo, "repro")
    _run(repo, "exp", "run", "-n", "seed1", "-S", "train.seed=1")
    _run(repo, "exp", "run", "-n", "meanpool", "-S", "train.head=meanpool")
    found = _exp_metrics(repo)
    assert {"seed1", "meanpool"} <= set(found), found
    for name in ("seed1", "meanpool"):
        assert {"top1", "macro_f1"} <= set(found[name]), (name, found[name])
    diff = _run(repo, "exp", "diff", "seed1", "meanpool").stdout
    assert "top1" in diff and "macro_f1" in diff, diff
