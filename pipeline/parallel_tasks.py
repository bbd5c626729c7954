"""What runs inside a Dask worker: extract a task's videos, hash new files (no Dask import).

Submitted by :class:`pipeline.parallel.DaskRunner`; each function checks first that the
worker sees the shared filesystem at the same paths as the driver.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from pipeline.errors import ClusterError
from pipeline.extract import FileHash, TaskSpec, hash_files, run_task
from pipeline.featurize import TaskResult, WorkItem
from pipeline.store import staged_video_ids

log = logging.getLogger(__name__)

_TF_THREADS_LOCK = threading.Lock()
_TF_THREADS_APPLIED = False


def _limit_tf_threads(threads: int) -> None:
    """Set TensorFlow's intra-op threads once per process, before any backbone exists."""
    global _TF_THREADS_APPLIED
    with _TF_THREADS_LOCK:
        if _TF_THREADS_APPLIED:
            return
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already ran something in this worker
            current = tf.config.threading.get_intra_op_parallelism_threads()
            if current != threads:
                log.warning(
                    "worker %s: TensorFlow already initialised with %s intra-op threads; "
                    "cannot switch to %d",
                    socket.gethostname(),
                    current or "default",
                    threads,
                )
        _TF_THREADS_APPLIED = True


def extract_task(spec: TaskSpec, items: list[WorkItem], tf_threads: int | None) -> TaskResult:
    """What a worker runs: check the shared filesystem, then :func:`run_task` on new videos.

    Videos already staged (by an earlier attempt of this task on a worker that died) are
    not extracted again.
    """
    parts_dir, weights = Path(spec.parts_dir), Path(spec.weights_file)
    if not (parts_dir.is_dir() and weights.is_file()):
        raise ClusterError(
            f"Dask worker on {socket.gethostname()} cannot see {parts_dir} and {weights}; "
            "workers need the store's directory on a shared filesystem at the same path"
        )
    if tf_threads:
        _limit_tf_threads(tf_threads)
    staged = staged_video_ids(parts_dir)
    todo = [item for item in items if item.video_id not in staged]
    result = run_task(spec, todo) if todo else TaskResult()
    result.ok.extend(item.video_id for item in items if item.video_id in staged)
    return result


def hash_task(paths: list[str]) -> list[FileHash]:
    """What a worker runs to hash new files (:meth:`pipeline.parallel.DaskRunner.hash_files`)."""
    unseen = [p for p in paths if not os.path.lexists(p)]
    if unseen:
        raise ClusterError(
            f"Dask worker on {socket.gethostname()} cannot see {unseen[0]}; workers need the "
            "videos on a shared filesystem at the same path"
        )
    return hash_files(paths)
