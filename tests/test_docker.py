"""The Dockerfile installs the project with the Makefile target CI runs, nothing else.

The image cannot be built on these machines (no registry for base images), so this checks
what can be checked without Docker: the install commands (``make -n`` dry runs, expanded the
way ``make`` runs them) and the files the build copies.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()

if shutil.which("make") is None:
    pytest.skip("make is not installed", allow_module_level=True)


def run_commands() -> list[str]:
    """The Dockerfile's RUN instructions, continuation lines joined."""
    text = DOCKERFILE.replace("\\\n", " ")
    return [line.strip()[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


def dry_run(*args: str) -> list[str]:
    """What ``make`` would run (``-B``: as on a fresh machine), one command per line.

    Run as a top-level make: under ``make test`` (CI) the inherited MAKELEVEL/MAKEFLAGS would
    add "Entering directory" lines and jobserver flags.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_ci_runs_make_test_and_make_test_installs_through_make_setup():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert re.search(r"^test: setup\b", (REPO / "Makefile").read_text(), re.M)


def test_docker_installs_with_exactly_the_commands_ci_runs():
    (install,) = [cmd for cmd in run_commands() if cmd.startswith("make ")]
    words = shlex.split(install)
    assert words[:2] == ["make", "setup"]
    overrides = words[2:]
    assert all(re.fullmatch(r"(VENV|EXTRAS)=\S+", w) for w in overrides), overrides
    setup = dry_run("setup", *overrides)
    # `make test` with the same variables runs the same install commands first, then the tests
    ci = dry_run("test", *overrides)
    assert setup and ci[: len(setup)] == setup
    assert any("pip install" in line and "-c constraints.txt" in line for line in setup)
    # nothing else installs Python packages
    assert not any(re.search(r"\bpip\b", cmd) for cmd in run_commands() if cmd != install)


def test_docker_copies_every_file_the_install_reads():
    copied = {
        name.rstrip("/").removeprefix("./")
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY ")
        for name in line.split()[1:-1]
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    stamp_deps = re.search(r"^\$\(STAMP\):(.*)$", (REPO / "Makefile").read_text(), re.M)
    needed = {"Makefile", project["project"]["readme"], *stamp_deps.group(1).split(), *packages}
    assert needed <= copied, needed - copied
