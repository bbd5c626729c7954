"""The layering rules, read from the source with ``ast`` (nothing is imported).

* ``pipeline/`` never imports ``stages/``, typer, rich or dvc;
* only ``pipeline/video.py`` and ``pipeline/encode.py`` (writing sample clips) import ``av``;
* only the store — modules under ``pipeline/store/`` or named ``pipeline/store*.py`` — imports
  ``h5py``, and nothing the store imports, directly or through other project modules, is
  TensorFlow or Keras;
* only ``pipeline/parallel.py`` imports ``dask``/``distributed``;
* TensorFlow and Keras are lazy: no module that ``vrnn`` imports at start-up (``stages.cli``
  and what its module-level imports reach) imports them at module level.

Each rule is also run on a small tree that breaks it, so the checks themselves can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
TENSORFLOW = ("tensorflow", "keras")


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a dotted module name."""

    module: str
    line: int
    module_level: bool
    """Runs when the importing module is imported (not inside a function or TYPE_CHECKING)."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, root: Path, *, module_level: bool = True) -> Iterator[Import]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (i for child in node.orelse for i in _imports(child, root))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, module_level)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield Import(node.module, node.lineno, module_level)
            for alias in node.names:  # `from pipeline import fsio` imports a module
                dotted = f"{node.module}.{alias.name}"
                if _module_file(dotted, root) is not None:
                    yield Import(dotted, node.lineno, module_level)
        lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _imports(node, root, module_level=module_level and not lazy)


def _module_file(module: str, root: Path) -> Path | None:
    path = root.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _modules(root: Path) -> dict[str, tuple[Path, list[Import]]]:
    """Every project module under ``root``: its file and its imports."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = (path, list(_imports(ast.parse(path.read_text()), root)))
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _is_store(name: str) -> bool:
    """A store module: under ``pipeline/store/``, or ``pipeline/store*.py``."""
    parts = name.split(".")
    return (
        parts[0] == "pipeline"
        and len(parts) > 1
        and (parts[1] == "store" or (parts[1].startswith("store") and len(parts) == 2))
    )


def _closure(start: str, modules: dict, *, module_level_only: bool) -> set[str]:
    """Project modules reachable from ``start`` through imports (optionally module-level)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo += [
            i.module
            for i in modules[name][1]
            if _top(i.module) in PACKAGES and (i.module_level or not module_level_only)
        ]
    return seen


def violations(root: Path) -> list[str]:
    """Every broken layering rule in the tree at ``root``, one line each."""
    modules = _modules(root)
    found = []

    def where(name: str, i: Import) -> str:
        return f"{modules[name][0].relative_to(root)}:{i.line} imports {i.module}"

    for name, (_, imports) in modules.items():
        for i in imports:
            top = _top(i.module)
            if name.startswith("pipeline") and top in ("stages", "typer", "rich", "dvc"):
                found.append(f"{where(name, i)}: pipeline/ never imports {top}")
            if top == "av" and name not in ("pipeline.video", "pipeline.encode"):
                found.append(f"{where(name, i)}: only pipeline/video.py imports av")
            if top == "h5py" and not _is_store(name):
                found.append(f"{where(name, i)}: only the store imports h5py")
            if top in ("dask", "distributed") and name != "pipeline.parallel":
                found.append(f"{where(name, i)}: only pipeline/parallel.py imports Dask")
    for store in filter(_is_store, modules):
        for name in sorted(_closure(store, modules, module_level_only=False)):
            for i in modules[name][1]:
                if _top(i.module) in TENSORFLOW:
                    found.append(f"{where(name, i)}: the store ({store}) knows no TensorFlow")
    for name in sorted(_closure("stages.cli", modules, module_level_only=True)):
        for i in modules[name][1]:
            if _top(i.module) in TENSORFLOW and i.module_level:
                found.append(f"{where(name, i)}: `vrnn` start-up imports TensorFlow")
    return sorted(set(found))


def test_the_project_keeps_its_layering_rules() -> None:
    assert violations(REPO) == []


def test_the_rules_cover_the_whole_project() -> None:
    modules = _modules(REPO)
    assert {"pipeline.video", "pipeline.backbone", "stages.cli", "stages.index"} <= set(modules)
    assert any(map(_is_store, modules)), "no store module found"
    start_up = _closure("stages.cli", modules, module_level_only=True)
    assert {"stages.index", "stages.extract", "pipeline.errors"} <= start_up


BROKEN = {
    "pipeline/__init__.py": "",
    "pipeline/video.py": "import av\n",
    "pipeline/sneaky.py": "import av\nimport h5py\nfrom stages import cli\nimport dask\n",
    "pipeline/store_read.py": "import h5py\nfrom pipeline import helper\n",
    "pipeline/store/__init__.py": "from pipeline.store import layout\n",
    "pipeline/store/layout.py": "import h5py\n\ndef f():\n    import keras\n",
    "pipeline/helper.py": "def g():\n    import tensorflow as tf\n",
    "stages/__init__.py": "",
    "stages/cli.py": "from stages import index\n",
    "stages/index.py": (
        "from typing import TYPE_CHECKING\nimport pipeline.heavy\n"
        "if TYPE_CHECKING:\n    import keras\n"
    ),
    "pipeline/heavy.py": "import keras\n",
    "pipeline/lazy.py": "def f():\n    import keras\n    import rich\n",
}


@pytest.fixture
def broken(tmp_path: Path) -> list[str]:
    for name, text in BROKEN.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return violations(tmp_path)


@pytest.mark.parametrize(
    "expected",
    [
        "pipeline/sneaky.py:1 imports av: only pipeline/video.py imports av",
        "pipeline/sneaky.py:2 imports h5py: only the store imports h5py",
        "pipeline/sneaky.py:3 imports stages: pipeline/ never imports stages",
        "pipeline/sneaky.py:4 imports dask: only pipeline/parallel.py imports Dask",
        "pipeline/lazy.py:3 imports rich: pipeline/ never imports rich",
        "pipeline/helper.py:2 imports tensorflow: the store (pipeline.store_read) knows no "
        "TensorFlow",
        "pipeline/store/layout.py:4 imports keras: the store (pipeline.store) knows no TensorFlow",
        "pipeline/heavy.py:1 imports keras: `vrnn` start-up imports TensorFlow",
    ],
)
def test_each_rule_reports_a_tree_that_breaks_it(broken: list[str], expected: str) -> None:
    assert expected in broken, broken


def test_allowed_imports_are_not_reported(broken: list[str]) -> None:
    """``video.py``'s av, the store's h5py, a lazy Keras, TYPE_CHECKING: all allowed."""
    allowed = ("pipeline/video.py", "stages/index.py", "pipeline/store_read.py:1 ")
    assert not [v for v in broken if v.startswith(allowed)], broken
    assert not [v for v in broken if v.startswith("pipeline/store/layout.py:1 ")], broken
    assert not [v for v in broken if v.startswith("pipeline/lazy.py") and "keras" in v], broken
