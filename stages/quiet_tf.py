"""Keep TensorFlow's start-up chatter off the terminal, without importing TensorFlow early.

TensorFlow prints C++ log lines when it loads (``cudart_stub.cc … Could not find cuda
drivers``, written by absl before its logging is initialised, so no setting reaches them)
and when it first looks for a GPU (``failed call to cuInit`` on machines without one). They
go to file descriptor 2, never to stdout, so ``--json`` output stays clean either way; this
module keeps them off stderr too:

* ``TF_CPP_MIN_LOG_LEVEL=3`` (C++ errors that are not fatal; real failures still raise
  Python exceptions) and Python's ``absl`` logger at ERROR;
* the import of ``tensorflow`` itself runs with file descriptor 2 pointed at ``/dev/null``
  (:class:`_QuietImport`, installed on ``sys.meta_path``: nothing is imported until a command
  needs TensorFlow).

oneDNN is left on (``TF_ENABLE_ONEDNN_OPTS`` changes numerics); its notice is an INFO line,
already hidden by the log level. An explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment
wins, and ``vrnn --verbose`` shows everything.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
from types import ModuleType

QUIET_LOG_LEVEL = "3"


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader with file descriptor 2 redirected to ``/dev/null``."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def __getattr__(self, name: str) -> object:  # get_filename, get_resource_reader, …
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
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


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual and wraps its loader in :class:`_QuietLoader`, once."""

    def find_spec(
        self, name: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(verbose: bool = False) -> None:
    """Silence TensorFlow's start-up lines for this process (no-op with ``verbose``)."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())
