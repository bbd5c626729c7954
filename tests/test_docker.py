"""The Dockerfile installs the project with the Makefile target CI runs, nothing else.

Building and running the image is ``make docker-smoke`` (docs/docker.md), which needs a Docker
daemon; ``make test`` builds no image. This checks what can be checked without Docker: the
install commands (``make -n`` dry runs, expanded the way ``make`` runs them), the files the
build copies, the base image argument and where the offline build's wheels go.
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


def stages() -> list[list[str]]:
    """The Dockerfile's build stages, each its lines from its FROM on."""
    found: list[list[str]] = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_every_stage_starts_from_the_base_argument_defaulting_to_python_slim():
    before_from = DOCKERFILE.split("\nFROM ", 1)[0]
    assert re.search(r"^ARG BASE=python:3\.11-slim$", before_from, re.M)
    names = set()
    for stage in stages():
        words = stage[0].split()
        assert words[1] in names or words[1] == "${BASE}", stage[0]
        if len(words) == 4 and words[2] == "AS":
            names.add(words[3])
    assert names, "the install runs in its own stage"


def test_the_wheelhouse_reaches_only_the_install_stage_and_the_index_stays_the_default():
    *earlier, image = stages()
    (install,) = [s for s in earlier if any(line.startswith("RUN make setup") for line in s)]
    assert "ARG PIP_NO_INDEX=0" in install  # online unless the build asks otherwise
    assert any(re.fullmatch(r"COPY wheelhouse (\S+)", line) for line in install)
    install_name = install[0].split()[-1]
    for line in image:
        assert "wheelhouse" not in line, line
        words = line.split()
        if words[:1] == ["COPY"]:
            # the image takes the venv and the project from the install stage, nothing else
            assert words[1] == f"--from={install_name}" and words[2] in (
                "/opt/venv",
                "/opt/video-rnn",
            )
    # an online build on a fresh clone needs the folder: it is in git, the wheels are not
    tracked = subprocess.run(
        ["git", "ls-files", "wheelhouse"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert tracked.stdout.split() == ["wheelhouse/README.md"]
    assert "base.tar" in (REPO / ".dockerignore").read_text().split()


def test_the_offline_build_has_no_network_and_pip_no_index():
    (build,) = [
        line for line in dry_run("docker-offline", "BASE=local:tag") if "docker build" in line
    ]
    words = shlex.split(build)
    assert words[words.index("--network") + 1] == "none"
    args = {words[i + 1] for i, w in enumerate(words) if w == "--build-arg"}
    assert {"BASE=local:tag", "PIP_NO_INDEX=1"} <= args
    download = [line for line in dry_run("wheelhouse") if "pip download" in line]
    assert len(download) == 1 and "-r constraints.txt" in download[0]
    # `make docker-smoke` builds offline first, then runs the smoke script on that image
    smoke = dry_run("docker-smoke", "BASE=local:tag", "IMAGE=smoke:1")
    assert "docker build" in smoke[0] and smoke[-1] == "sh tools/docker_smoke.sh smoke:1"
