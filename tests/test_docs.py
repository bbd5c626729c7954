"""The docs cannot rot silently: the site builds strictly, the CLI reference is the app's own
help, and every link in the README reaches a file of this repository."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cli_reference", REPO / "tools" / "cli_reference.py")
cli_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_reference)


def test_mkdocs_build_is_strict_and_clean(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link or anchor, or a page left out of nav, fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert (tmp_path / "cli" / "index.html").is_file()


def test_mkdocs_strict_fails_on_a_page_left_out_of_nav(tmp_path: Path) -> None:
    """The check above can fail: an orphan page (and a dead link) each break the build."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md)\n")
    (docs / "orphan.md").write_text("# Not in nav\n")
    config = (REPO / "mkdocs.yml").read_text().split("\nnav:\n", 1)[0]
    (tmp_path / "mkdocs.yml").write_text(config + "\nnav:\n  - Home: index.md\n")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "s")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "orphan.md" in done.stderr and "missing.md" in done.stderr, done.stderr


def test_cli_reference_is_generated_from_the_app() -> None:
    page = (REPO / "docs" / "cli.md").read_text()
    assert page == cli_reference.render(), "run: python tools/cli_reference.py --write"
    for command in ("sample-data", "index", "extract", "train", "evaluate", "predict", "export"):
        assert f"## `vrnn {command}`" in page
    assert "## `vrnn store verify`" in page and "--memory-budget" in page


def test_cli_reference_follows_a_new_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page is rendered from the app, so an option added to it shows up in the page."""
    import typer

    from stages.cli import app

    @app.command("probe-only-in-this-test")
    def _probe(depth: int = typer.Option(3, help="A help text no other command has.")) -> None:
        """A command that exists only inside this test."""

    try:
        page = cli_reference.render()
    finally:
        app.registered_commands.pop()
    assert "## `vrnn probe-only-in-this-test`" in page
    assert "A help text no other command has. [default: 3]" in page
    assert page != (REPO / "docs" / "cli.md").read_text()


def test_every_readme_link_reaches_a_file() -> None:
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [t.split("#", 1)[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert local, "the README links no docs page"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    docs = {p.name for p in (REPO / "docs").glob("*.md")}
    linked = {Path(t).name for t in local if t.startswith("docs/")}
    assert "index.md" in linked and {"architecture.md", "performance.md"} <= linked & docs


def test_params_yaml_states_where_it_differs_from_the_cli_defaults() -> None:
    """DVC trains as `vrnn train` does, except where params.yaml's header says otherwise."""
    import yaml

    from pipeline.train_config import TrainConfig

    text = (REPO / "params.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    defaults = TrainConfig().to_dict() | {"lr": TrainConfig().learning_rate}
    for key, value in yaml.safe_load(text)["train"].items():
        if value != defaults[key]:
            assert f"{key} {value} (CLI {defaults[key]})" in header, key
