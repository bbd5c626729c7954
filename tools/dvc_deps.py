"""Derive each ``dvc.yaml`` stage's code deps from the imports of the command it runs.

A stage's ``cmd`` is ``vrnn <command> …``; the command lives in ``stages/<command>.py``. Its
code deps are every project module that running it can import: the import closure of the
command module (imports inside functions included, followed transitively through
``pipeline/`` and ``stages/``), plus the ``vrnn`` entry point ``stages/cli.py`` and what it
imports, except the other command modules (a top-level ``def command``) it only registers.
Package ``__init__.py`` files count: Python runs them on the way in.

    python tools/dvc_deps.py            # exit 1 and list the drift when dvc.yaml is stale
    python tools/dvc_deps.py --write    # rewrite the code deps in dvc.yaml (data deps kept)

``tests/test_dvc.py`` runs the check, so a new import without its dep fails CI.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
ENTRY = "stages.cli"
DEP_LINE = re.compile(r"^(\s+)- (\S+)\s*$")


def module_file(module: str, root: Path = REPO) -> Path | None:
    """``pipeline.store`` → ``pipeline/store.py`` (or a package's ``__init__.py``), if it exists."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules a file imports anywhere in it (functions and ``if`` blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pipeline import heads` imports the submodule pipeline.heads
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(roots: list[str], skip: set[str] = frozenset(), root: Path = REPO) -> set[str]:
    """Repository-relative files of ``roots`` and every project module they import, transitively.

    Modules in ``skip`` are neither listed nor followed.
    """
    files: set[str] = set()
    todo = list(roots)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module in skip:
            continue
        seen.add(module)
        path = module_file(module, root)
        if path is None:  # `from pipeline import __version__`: a name, not a module
            continue
        files.add(path.relative_to(root).as_posix())
        todo.extend(_with_parents(module)[:-1])
        todo.extend(imported_modules(path))
    return files


def command_module(cmd: str) -> str:
    """``[VAR=value …] vrnn train data/… -o models`` → ``stages.train``."""
    words = [w for w in cmd.split() if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]  # env
    if len(words) < 2 or words[0] != "vrnn":
        raise ValueError(f"stage command does not start with `vrnn <command>`: {cmd!r}")
    return f"stages.{words[1].replace('-', '_')}"


def defines_command(path: Path) -> bool:
    """A ``stages/`` module holding one ``vrnn`` command (a top-level ``def command``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(n, ast.FunctionDef) and n.name == "command" for n in tree.body)


def code_deps(cmd: str, root: Path = REPO) -> list[str]:
    """The sorted code files a stage running ``cmd`` depends on."""
    command = command_module(cmd)
    other_commands = {
        f"stages.{p.stem}" for p in (root / "stages").glob("*.py") if defines_command(p)
    } - {command}
    return sorted(import_closure([command, ENTRY], skip=other_commands, root=root))


def is_code(dep: str) -> bool:
    """A dep on this repository's Python code (as opposed to data)."""
    return dep.endswith(".py") and dep.split("/")[0] in PACKAGES


def drift(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, tuple[list[str], list[str]]]:
    """Stages whose declared code deps differ from the derived ones: name → (missing, extra)."""
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        declared = {d for d in stage.get("deps", []) if is_code(d)}
        derived = set(code_deps(stage["cmd"], dvc_yaml.parent))
        if declared != derived:
            found[name] = (sorted(derived - declared), sorted(declared - derived))
    return found


def rewrite(dvc_yaml: Path = REPO / "dvc.yaml") -> str:
    """``dvc.yaml``'s text with each stage's code deps replaced by the derived list.

    Data deps keep their place and order; code deps follow them, sorted. Comments and every
    other line are kept as they are.
    """
    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        name = re.match(r"^  (\w[\w-]*):\s*$", line)
        if name:
            stage = name.group(1)
        out.append(line)
        i += 1
        if stage in stages and line.strip() == "deps:":
            indent, kept = "      ", []
            while i < len(lines) and (match := DEP_LINE.match(lines[i])):
                indent = match.group(1)
                if not is_code(match.group(2)):
                    kept.append(lines[i])
                i += 1
            derived = code_deps(stages[stage]["cmd"], dvc_yaml.parent)
            code = [f"{indent}- {dep}\n" for dep in derived]
            out.extend(kept + code)
    return "".join(out)


def main() -> int:
    """Check (default) or ``--write`` the code deps of ``dvc.yaml``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml in place")
    args = parser.parse_args()
    dvc_yaml = REPO / "dvc.yaml"
    if args.write:
        dvc_yaml.write_text(rewrite(dvc_yaml))
    stale = drift(dvc_yaml)
    for name, (missing, extra) in stale.items():
        print(f"{name}: missing {missing or '-'}, not imported {extra or '-'}", file=sys.stderr)
    if stale:
        print("run `python tools/dvc_deps.py --write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
