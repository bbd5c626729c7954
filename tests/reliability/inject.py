"""Run the ``vrnn`` CLI with one fault injected at an exact point of a real run.

Usage: ``python inject.py POINT ARGS...`` runs ``vrnn ARGS...`` (real files, real process) and
SIGKILLs (or Ctrl-Cs) itself at POINT. External kills from the tests hit moments at random;
these hit the few moments where a crash could do the most damage, every time.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from collections.abc import Callable

Paths = Callable[[pathlib.Path, pathlib.Path], bool]


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt at the next bytecode


def _is_part(src: pathlib.Path, dst: pathlib.Path) -> bool:
    return dst.parent.name.endswith(".parts") and dst.suffix == ".h5"


def _is_store(src: pathlib.Path, dst: pathlib.Path) -> bool:
    staging_or_shards = dst.parent.name.endswith((".parts", ".d"))
    return src.name.startswith(f".{dst.name}.") and not staging_or_shards


def _is_sidecar(src: pathlib.Path, dst: pathlib.Path) -> bool:
    return dst.name.endswith(".backbone.weights.h5")


def _on_os_replace(matches: Paths, *, after: bool = False, action=_kill) -> None:
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        hit = matches(pathlib.Path(src), pathlib.Path(dst))
        if hit and not after:
            action()
        real(src, dst, *args, **kwargs)
        if hit and after:
            action()

    os.replace = replace


def _is_shard(src: pathlib.Path, dst: pathlib.Path) -> bool:
    return dst.parent.name.endswith(".d") and dst.name.startswith("shard-")


def _on_shard_link(nth: int, action=_kill) -> None:
    """Act once the ``nth`` staged part has been linked into the shard directory (commit)."""
    real = os.link
    calls = [0]

    def link(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            action()

    os.link = link


def _is_index_file(src: pathlib.Path, dst: pathlib.Path) -> bool:
    return dst.parent.name.endswith(".d") and dst.name.startswith("index-")


def _is_links_file(src: pathlib.Path, dst: pathlib.Path) -> bool:
    return dst.parent.name.endswith(".d") and dst.name.startswith("links-")


def _on_link_added(nth: int, action=_kill) -> None:
    """Act once the ``nth`` link has been added to the links file a commit is updating (the
    spare, already under its temporary name)."""
    from pipeline.store import links as store_links

    real = store_links._link
    calls = [0]

    def link(*args, **kwargs):
        real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            action()

    store_links._link = link


def _on_model_swap(*, exchange: bool) -> None:
    """Kill ``vrnn train`` once its new model is complete, just before it takes the target.

    With ``exchange``, before the atomic swap (``renameat2``, Linux); without, the platform
    fallback is forced (no atomic swap) and the kill lands between its two renames.
    """
    from pipeline import fsio

    real_exchange = fsio._exchange

    def swap(first, second):
        _kill()
        return real_exchange(first, second)

    if exchange:
        fsio._exchange = swap
        return
    fsio._exchange = lambda first, second: False
    real_rename = pathlib.Path.rename

    def rename(self, target):
        result = real_rename(self, target)
        if ".old-" in pathlib.Path(target).name:  # the previous model moved aside
            _kill()
        return result

    pathlib.Path.rename = rename


POINTS: dict[str, Callable[[], None]] = {
    # extract
    "sidecar-before-rename": lambda: _on_os_replace(_is_sidecar),
    "part-before-rename": lambda: _on_os_replace(_is_part),
    "commit-half-written": lambda: _on_shard_link(2),  # 2 of the new shards linked
    "index-file-before-rename": lambda: _on_os_replace(_is_index_file),  # delta (or base)
    "links-half-written": lambda: _on_link_added(2),  # spare links file taken, 2 links added
    "links-before-rename": lambda: _on_os_replace(_is_links_file),  # updated, temp name
    "store-before-rename": lambda: _on_os_replace(_is_store),
    "store-after-rename": lambda: _on_os_replace(_is_store, after=True),
    "interrupt-after-first-part": lambda: _on_os_replace(_is_part, after=True, action=_interrupt),
    "interrupt-in-commit": lambda: _on_shard_link(1, action=_interrupt),
    # store compact (store-before/after-rename and index-file-before-rename also apply)
    "compact-shard-before-rename": lambda: _on_os_replace(_is_shard),
    # train
    "model-before-swap": lambda: _on_model_swap(exchange=True),
    "model-between-fallback-renames": lambda: _on_model_swap(exchange=False),
}


def _deliverable_sigint() -> None:
    """Let SIGINT reach this process as it reaches a vrnn started from a terminal.

    A child inherits an ignored or blocked SIGINT from the process that starts it. Under
    pytest-xdist, a worker that earlier ran other test files was seen starting children with
    SIGHUP, SIGINT and SIGQUIT ignored (/proc/self/status SigIgn 0x1001007), and the injected
    Ctrl-C then never arrived.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    _deliverable_sigint()
    POINTS[point]()
    from stages.cli import app

    app(prog_name="vrnn", args=args)


if __name__ == "__main__":
    main()
