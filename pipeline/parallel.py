"""Running extraction tasks on Dask: a local cluster of worker processes, or a remote scheduler.

The only module that imports ``dask``/``distributed``. :class:`DaskRunner` is a
:data:`~pipeline.extract.TaskRunner`: each task (a few videos) runs
:func:`~pipeline.extract.run_task` in a persistent worker process, which builds its
backbone once and writes part files straight into the store's staging directory, so workers
need that directory (and the backbone weights beside the store) on a shared filesystem.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import dask
from distributed import Client, Future, LocalCluster, WorkerPlugin, as_completed
from distributed.client import CancelledError
from distributed.scheduler import KilledWorker
from distributed.security import Security

from pipeline.errors import ClusterError, ConfigError
from pipeline.extract import FileHash, TaskSpec
from pipeline.featurize import TaskResult, WorkItem
from pipeline.parallel_tasks import extract_task, hash_task
from pipeline.store import staged_video_ids, write_failure

log = logging.getLogger(__name__)

TASK_RETRIES = 1
"""Extra attempts for a task that *raised* (e.g. a transient shared-filesystem error).

A task whose worker *died* is rescheduled by Dask itself, up to the scheduler's
``distributed.scheduler.allowed-failures`` (default 3) times, before it ends as KilledWorker.
"""
HASH_FILES_PER_TASK = 16
"""At most this many files per hashing task (about four tasks per worker below that)."""
KILLED_REASON = "worker died repeatedly while extracting (KilledWorker)"


VIDEOS_PER_TASK = 4
"""Default videos per Dask task: small enough that stragglers don't dominate, large enough
that a UCF101-sized run still makes a few thousand tasks (docs/cluster.md)."""


def split_tasks(items: list[WorkItem], videos_per_task: int) -> list[list[WorkItem]]:
    """Cut the work into Dask tasks of ``videos_per_task`` videos, in order."""
    return [items[i : i + videos_per_task] for i in range(0, len(items), videos_per_task)]


@dataclass(frozen=True)
class ClusterOptions:
    """Where extraction tasks run (see ``vrnn extract --workers/--scheduler``).

    Attributes:
        workers: worker processes of a local cluster started for this run.
        scheduler: address of a running ``dask scheduler`` (``tcp://HOST:PORT`` or
            ``tls://HOST:PORT``).
        threads_per_worker: TensorFlow intra-op threads per worker process; default for a
            local cluster: cores // workers; for a remote one: whatever the workers have.
        connect_timeout_sec: how long to try reaching ``scheduler``.
        videos_per_task: videos per Dask task (:func:`split_tasks`).
        tls_ca_file: CA certificate(s) a ``tls://`` scheduler's certificate must chain to.
        tls_cert: this client's certificate (PEM; may hold the key too).
        tls_key: this client's private key, when not inside ``tls_cert``.
            Unset TLS fields come from Dask's config (``distributed.comm.tls.*``).
    """

    workers: int | None = None
    scheduler: str | None = None
    threads_per_worker: int | None = None
    connect_timeout_sec: float = 10.0
    videos_per_task: int = VIDEOS_PER_TASK
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings no cluster can use."""
        if self.workers is not None and self.scheduler is not None:
            raise ConfigError("use either --workers or --scheduler, not both")
        if self.workers is None and self.scheduler is None:
            what = "--threads-per-worker needs" if self.threads_per_worker else "give"
            raise ConfigError(f"{what} --workers N or --scheduler ADDRESS")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be ≥ 1, got {self.workers}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ConfigError(f"--threads-per-worker must be ≥ 1, got {self.threads_per_worker}")
        if self.videos_per_task < 1:
            raise ConfigError(f"--videos-per-task must be ≥ 1, got {self.videos_per_task}")
        if not self.connect_timeout_sec > 0:
            raise ConfigError(f"--connect-timeout must be > 0, got {self.connect_timeout_sec}")
        tls_given = any((self.tls_ca_file, self.tls_cert, self.tls_key))
        if tls_given and not (self.scheduler or "").startswith("tls://"):
            raise ConfigError("--tls-ca-file/--tls-cert/--tls-key need --scheduler tls://HOST:PORT")
        for name, path in (
            ("--tls-ca-file", self.tls_ca_file),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
        ):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} {path}: no such file")
        if self.scheduler:
            self.security()

    def security(self) -> Security:
        """Dask ``Security`` for the client: the options given, else Dask's TLS config.

        Raises :class:`ConfigError` for a ``tls://`` scheduler without a CA and a client
        certificate (the scheduler would refuse the connection anyway, after the timeout).
        """
        fields = {
            "tls_ca_file": self.tls_ca_file,
            "tls_client_cert": self.tls_cert,
            "tls_client_key": self.tls_key,
        }
        security = Security(**{k: v for k, v in fields.items() if v})
        if (self.scheduler or "").startswith("tls://") and not (
            security.tls_ca_file and security.tls_client_cert
        ):
            raise ConfigError(
                f"--scheduler {self.scheduler} needs TLS certificates: --tls-ca-file and "
                "--tls-cert (and --tls-key), or distributed.comm.tls.ca-file and "
                "distributed.comm.tls.client.cert in Dask's config (see docs/cluster.md)"
            )
        return security


@dataclass(frozen=True)
class ClusterInfo:
    """What a runner is connected to, for the user."""

    address: str
    local: bool
    workers: int
    tf_threads: int | None
    dashboard_link: str | None
    gpus: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: cluster kind, address, workers, threads and the dashboard link."""
        kind = "local Dask cluster" if self.local else "Dask cluster"
        threads = f"{self.tf_threads} TF threads each" if self.tf_threads else "TF threads as set"
        board = (
            f"dashboard {self.dashboard_link}"
            if self.dashboard_link
            else "no dashboard (install bokeh>=3.1 where the scheduler runs)"
        )
        workers = f"{self.workers} worker{'' if self.workers == 1 else 's'}"
        if self.gpus:
            workers += f" on GPUs {','.join(self.gpus)} (one GPU per worker, round robin)"
        return f"{kind} {self.address}: {workers}, {threads}; {board}"


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``.

    Read without importing TensorFlow (the driver may not need it). Empty without GPUs.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
        return list(itertools.takewhile(lambda gpu: gpu != "-1", ids))  # CUDA stops at -1
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class PinGPU(WorkerPlugin):
    """Gives each worker of a local cluster one GPU: ``CUDA_VISIBLE_DEVICES`` by worker name.

    Worker ``i`` sees only ``gpus[i % len(gpus)]``. Set before the worker first imports
    TensorFlow (its first task), so TensorFlow never sees, or allocates on, another GPU; a
    worker the nanny restarts keeps its name, hence its GPU.
    """

    name = "vrnn-pin-gpu"

    def __init__(self, gpus: list[str]):
        self.gpus = gpus

    def setup(self, worker) -> None:
        index = worker.name if isinstance(worker.name, int) else int(str(worker.name))
        os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]


def default_tf_threads(workers: int, cores: int | None = None) -> int:
    """TF threads per worker so that workers × threads ≈ cores (at least 1)."""
    return max(1, (cores or available_cores()) // workers)


class DaskRunner:
    """Runs extraction tasks on Dask; a context manager owning the client (and local cluster).

    Entering it starts the local cluster or connects to the scheduler — *before* the caller
    writes anything, so an unreachable scheduler leaves no trace. Each worker runs one task
    at a time (decoding already overlaps inference inside a task) with ``tf_threads``
    TensorFlow intra-op threads.

    Args:
        options: local cluster size or scheduler address, threads, connect timeout.
    """

    def __init__(self, options: ClusterOptions):
        options.validate()
        self.options = options
        self.tf_threads = options.threads_per_worker
        if options.workers is not None and self.tf_threads is None:
            self.tf_threads = default_tf_threads(options.workers)
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.info: ClusterInfo | None = None
        self.gpus: list[str] = []

    def __enter__(self) -> DaskRunner:
        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            # Dask logs every connection at INFO; keep that for --verbose runs only.
            logging.getLogger("distributed").setLevel(logging.WARNING)
        try:
            self.info = self._start_local() if self.options.workers else self._connect()
        except BaseException:
            self.close()
            raise
        log.info("extraction runs on %s", self.info.describe())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; a local cluster is shut down with its workers."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            # A worker that has loaded TensorFlow can take more than the nanny's 4 s grace to
            # exit on a busy machine; the nanny then kills it, which is harmless at this point.
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(max(level, logging.ERROR))
            try:
                self.cluster.close()
            finally:
                nanny.setLevel(level)
            self.cluster = None

    def _start_local(self) -> ClusterInfo:
        threads = str(self.tf_threads)
        # Read by TensorFlow (and OpenMP/BLAS) when a worker first initialises it; Dask's
        # own default of OMP_NUM_THREADS=1 would otherwise apply. Memory growth: a worker's
        # TensorFlow takes GPU memory as it needs it, not all of it (see backbone.py).
        env = {
            "TF_NUM_INTRAOP_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        }
        # Saturation 1.0: a worker holds only the task it runs, so when a video crashes its
        # worker no queued innocent task is blamed (and counted towards KilledWorker) too.
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            self.cluster = LocalCluster(
                n_workers=self.options.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                env=env,
            )
        self.client = Client(self.cluster, set_as_default=False)
        self.gpus = visible_gpus()
        if self.gpus:
            self.client.register_plugin(PinGPU(self.gpus))
        return self._describe(local=True)

    def _connect(self) -> ClusterInfo:
        address, timeout = self.options.scheduler, self.options.connect_timeout_sec
        security = self.options.security()
        try:
            self.client = Client(address, timeout=timeout, set_as_default=False, security=security)
        except (OSError, ValueError, TypeError) as e:  # OSError covers timeouts and refusals
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                f"({_first_line(e)}); is `dask scheduler` running there?"
            ) from None
        return self._describe(local=False)

    def _describe(self, *, local: bool) -> ClusterInfo:
        assert self.client is not None
        info = self.client.scheduler_info()
        # Without bokeh a scheduler still serves a page, one that only says to install it.
        has_board = "dashboard" in info.get("services", {}) and not (
            local and importlib.util.find_spec("bokeh") is None
        )
        return ClusterInfo(
            address=self.client.scheduler.address,
            local=local,
            workers=len(info.get("workers", {})),
            tf_threads=self.tf_threads,
            dashboard_link=self.client.dashboard_link if has_board else None,
            gpus=tuple(self.gpus),
        )

    def __call__(
        self,
        spec: TaskSpec,
        items: list[WorkItem],
        on_task: Callable[[TaskResult], None],
    ) -> None:
        """Run ``items`` as tasks of the options' ``videos_per_task`` videos and call
        ``on_task`` with each result in completion order.

        A task that keeps killing its worker (e.g. a decoder crash) is split into one task
        per video it had not finished, so only the culprit is recorded as a failure.
        Raises the first task exception (other tasks are cancelled) or
        :class:`ClusterError` when the scheduler is lost.
        """
        if self.client is None:
            raise RuntimeError("DaskRunner used outside its `with` block")
        client = self.client
        tasks = split_tasks([_absolute_item(i) for i in items], self.options.videos_per_task)
        spec = _absolute(spec)
        if self.options.workers and spec.decoders is None:  # share the cores, as TF threads do
            spec = replace(spec, decoders=max(1, available_cores() // self.options.workers))
        pending: dict[Future, list[WorkItem]] = {}

        def submit(items: list[WorkItem]) -> Future:
            future = client.submit(
                extract_task,
                spec,
                items,
                self.tf_threads,
                key=f"vrnn-extract-{uuid.uuid4().hex}",
                pure=False,
                retries=TASK_RETRIES,
            )
            pending[future] = items
            return future

        finished = as_completed([submit(items) for items in tasks], loop=client.loop)
        try:
            for future in finished:
                items = pending.pop(future)
                try:
                    result = future.result()
                except KilledWorker:
                    result = self._after_killed(spec, items, lambda i: finished.add(submit(i)))
                except CancelledError as e:
                    raise ClusterError(
                        f"lost the Dask scheduler at {self.options.scheduler or 'local'} with "
                        f"{len(pending) + 1} tasks unfinished ({_first_line(e)}); finished "
                        "videos are kept, rerun to resume"
                    ) from None
                on_task(result)
        finally:
            if pending:
                client.cancel(list(pending))

    def hash_files(self, paths: Sequence[str]) -> list[FileHash]:
        """Content-hash ``paths`` in the workers, in parallel (a :data:`FileHasher`).

        Only hashes travel back to the driver. Raises :class:`ClusterError` when a worker
        cannot see a file the driver sees (no shared filesystem) or the scheduler is lost.
        """
        if self.client is None:
            raise RuntimeError("DaskRunner used outside its `with` block")
        if not paths:
            return []
        workers = max(1, self.info.workers if self.info else 1)
        per_task = max(1, min(HASH_FILES_PER_TASK, math.ceil(len(paths) / (4 * workers))))
        batches = [list(paths[i : i + per_task]) for i in range(0, len(paths), per_task)]
        futures = [
            self.client.submit(
                hash_task, batch, key=f"vrnn-hash-{uuid.uuid4().hex}", pure=False,
                retries=TASK_RETRIES,
            )
            for batch in batches
        ]  # fmt: skip
        try:
            results = self.client.gather(futures)
        except CancelledError as e:
            raise ClusterError(
                f"lost the Dask scheduler at {self.options.scheduler or 'local'} while "
                f"hashing new files ({_first_line(e)}); nothing was extracted, rerun"
            ) from None
        return [hashed for batch in results for hashed in batch]

    @staticmethod
    def _after_killed(
        spec: TaskSpec, items: list[WorkItem], resubmit: Callable[[list[WorkItem]], None]
    ) -> TaskResult:
        parts_dir = Path(spec.parts_dir)
        staged = staged_video_ids(parts_dir)
        result = TaskResult(ok=[item.video_id for item in items if item.video_id in staged])
        left = [item for item in items if item.video_id not in staged]
        if len(left) > 1:
            log.warning(
                "a task of %d videos kept killing workers; retrying them one by one", len(left)
            )
            for item in left:
                resubmit([item])
            return result
        for item in left:
            failure = item.failure(KILLED_REASON, transient=True)
            write_failure(parts_dir, failure)
            result.failed.append(failure)
        return result


def _absolute(spec: TaskSpec) -> TaskSpec:
    """``spec`` with absolute paths: workers may run in any directory (or on other hosts)."""
    return replace(
        spec,
        weights_file=os.path.abspath(spec.weights_file),
        parts_dir=os.path.abspath(spec.parts_dir),
    )


def _absolute_item(item: WorkItem) -> WorkItem:
    return replace(item, path=os.path.abspath(item.path))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
