"""Stage 2's memory rule: hold the selected splits in RAM when they fit a budget, else stream.

* **in memory** — the selected videos' features are read once into RAM (the fast path for
  small stores; anonymous memory grows with their size);
* **streaming** — they are memory-mapped from the store's frame cache
  (:mod:`pipeline.frame_cache`): batches gather only the sampled rows, the mapped pages are
  file-backed (the kernel drops them under pressure), so anonymous memory stays flat however
  large the store. Both paths hand the same ``[T, D]`` arrays to the same sampler, so the
  same seed gives the same batches, history and weights.

Evaluation and prediction read videos a chunk at a time when streaming, with the next chunk
read in a background thread while the current one is classified.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.sequences import EvalBatches
from pipeline.store import FeatureStore

DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""Selected splits up to this many feature bytes are held in RAM (``--memory-budget``)."""
EVAL_CHUNK = 512
"""Videos per chunk when evaluation streams (a multiple of the prediction batch, 256)."""

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory_budget(text: str | int) -> int:
    """``"2GiB"``, ``"512M"``, ``"1.5g"`` or a byte count → bytes (binary units).

    Raises:
        ConfigError: not a non-negative size.
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if m is None:
            raise ConfigError(
                f"--memory-budget must be a size such as 2GiB, 512MiB or 0 (always stream), "
                f"got {text!r}"
            )
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 0:
        raise ConfigError(f"--memory-budget must be >= 0, got {text!r}")
    return value


def format_bytes(n: int) -> str:
    """Bytes as ``"1.5 GiB"`` / ``"300.0 MiB"``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def stored_bytes(store: FeatureStore, video_ids: Sequence[str]) -> int:
    """Uncompressed feature bytes of ``video_ids`` (each counted once), from the store's
    catalog alone (no shard is opened). Unknown ids count 0 (the join reports them)."""
    row_bytes = store.config.feature_dim * np.dtype(store.config.dtype).itemsize
    catalog = store.catalog
    return sum(catalog[v].frames * row_bytes for v in set(video_ids) if v in catalog)


@dataclass(frozen=True)
class InputPlan:
    """Which path a run takes, and why (shown in the summary line)."""

    streaming: bool
    nbytes: int
    budget: int
    note: str | None = None
    """Why streaming fell back to reading the store into memory (one warning line)."""

    def describe(self) -> str:
        """E.g. ``"streaming (4.2 GiB of features > --memory-budget 2.0 GiB)"``."""
        if self.streaming:
            return (
                f"streaming ({format_bytes(self.nbytes)} of features > --memory-budget "
                f"{format_bytes(self.budget)})"
            )
        return f"in memory ({format_bytes(self.nbytes)} of features)"


def plan_input(store: FeatureStore, video_ids: Sequence[str], budget: int) -> InputPlan:
    """In memory when the videos' feature bytes fit ``budget``, else streaming."""
    nbytes = stored_bytes(store, video_ids)
    return InputPlan(streaming=nbytes > budget, nbytes=nbytes, budget=budget)


def prefetched(
    chunks: Sequence[Sequence[str]], read: Callable[[Sequence[str]], list[np.ndarray]]
) -> Iterator[list[np.ndarray]]:
    """Yield ``read(chunk)`` for each chunk, reading the next one in a background thread.

    At most two chunks are in memory. An exception in ``read`` is raised here, in order.
    """
    result: dict[str, object] = {}

    def work(chunk: Sequence[str]) -> None:
        try:
            result["value"] = read(chunk)
        except BaseException as e:  # re-raised in the consumer
            result["error"] = e

    thread: threading.Thread | None = None
    try:
        for i in range(len(chunks)):
            if thread is None:
                work(chunks[i])
            else:
                thread.join()
            value, error = result.pop("value", None), result.pop("error", None)
            thread = None
            if error is not None:
                raise error
            if i + 1 < len(chunks):
                thread = threading.Thread(target=work, args=(chunks[i + 1],), daemon=True)
                thread.start()
            yield value  # type: ignore[misc]
    finally:
        if thread is not None:  # the consumer stopped early: let the read finish first
            thread.join()


def validation_batches(
    videos: Sequence[np.ndarray], targets: np.ndarray, seq_len: int, batch_size: int
) -> object:
    """A ``keras.utils.PyDataset`` of evaluation-sampled batches (see :class:`EvalBatches`).

    Only one batch of sequences exists at a time, so validating costs no memory that grows
    with the split; both input paths use it, so their validation numbers are identical.
    """
    import keras

    from pipeline.heads import FEATURES_INPUT, MASK_INPUT

    class _Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.batches = EvalBatches(videos, seq_len, batch_size)

        @property
        def num_batches(self) -> int:
            return len(self.batches)

        def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
            features, mask = self.batches[index]
            chosen = slice(index * batch_size, (index + 1) * batch_size)
            return {FEATURES_INPUT: features, MASK_INPUT: mask}, targets[chosen]

    return _Batches()
