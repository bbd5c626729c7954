"""How a ``vrnn`` process imports TensorFlow: quietly, and out of the garbage collector's way.

Nothing is imported early: a finder on ``sys.meta_path`` (:class:`_TensorFlowImport`) wraps
TensorFlow's loader the first time a command imports it.

**Quiet.**
TensorFlow prints C++ log lines when it loads (``cudart_stub.cc … Could not find cuda
drivers``, written by absl before its logging is initialised, so no setting reaches them)
and when it first looks for a GPU (``failed call to cuInit`` on machines without one). They
go to file descriptor 2, never to stdout, so ``--json`` output stays clean either way; this
module keeps them off stderr too:

* ``TF_CPP_MIN_LOG_LEVEL=3`` (C++ errors that are not fatal; real failures still raise
  Python exceptions) and Python's ``absl`` logger at ERROR;
* the import of ``tensorflow`` itself runs with file descriptor 2 pointed at ``/dev/null``.

oneDNN is left on (``TF_ENABLE_ONEDNN_OPTS`` changes numerics); its notice is an INFO line,
already hidden by the log level. An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment
wins, and ``vrnn --verbose`` shows everything.

**Frozen.** Importing TensorFlow and Keras creates millions of objects that live until the
process exits. Right after the import they are moved out of the cyclic collector's sight
(``gc.freeze()``), so each later collection (matplotlib's import and drawing, an epoch's
Python objects, the collection at exit) no longer rescans them: 0.4–0.9 CPU s less per
``vrnn evaluate`` (docs/plots.md). Reference counting still frees them as usual; only a
garbage cycle that exists at that moment is never collected. This is a CLI process's choice,
made here and not in the library.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from types import ModuleType

QUIET_LOG_LEVEL = "3"


class _TensorFlowLoader(importlib.abc.Loader):
    """Runs the real loader (with file descriptor 2 redirected to ``/dev/null`` when
    ``quiet``), then freezes what the import created."""

    def __init__(self, loader: importlib.abc.Loader, quiet: bool):
        self.loader = loader
        self.quiet = quiet

    def __getattr__(self, name: str) -> object:  # get_filename, get_resource_reader, …
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if self.quiet:
            self._exec_quietly(module)
        else:
            self.loader.exec_module(module)
        gc.freeze()

    def _exec_quietly(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
            self.loader.exec_module(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _TensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual and wraps its loader in :class:`_TensorFlowLoader`, once."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def find_spec(
        self, name: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _TensorFlowLoader(spec.loader, self.quiet)
        return spec


def prepare_tensorflow_import(verbose: bool = False) -> None:
    """Make this process's first TensorFlow import frozen and (unless ``verbose``) silent."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
        logging.getLogger("absl").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _TensorFlowImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _TensorFlowImport(quiet=not verbose))
