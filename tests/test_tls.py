"""``--scheduler tls://``: a TLS-only Dask cluster on 127.0.0.1 with temporary certificates.

A plain scheduler runs pickled code from anyone who reaches its port; with TLS (mutual: the
scheduler checks the client's certificate) only holders of a certificate signed by the
cluster's CA get in. Real ``dask scheduler``/``dask worker`` processes, real videos.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security
from typer.testing import CliRunner

from pipeline.encode import write_video
from pipeline.errors import ClusterError, ConfigError
from pipeline.extract import ExtractOptions, run_extraction
from pipeline.parallel import ClusterOptions, DaskRunner
from stages.cli import app
from tests.conftest import moving_square
from tests.reliability.helpers import assert_same_store, snapshot

DASK = Path(sys.executable).with_name("dask")
OPTIONS = ExtractOptions(weights="random", input_size=32, resize="squash", batch_size=8)
CLI_OPTIONS = ["--weights", "random", "--input-size", "32", "--resize", "squash"]
CLI_OPTIONS += ["--batch-size", "8"]
OPTION_FILES = [("ca-file", "ca"), ("cert", "cert"), ("key", "key")]


def _write_certificates(directory: Path) -> dict[str, Path]:
    """A fresh self-signed CA + key (``Security.temporary()``) as PEM files."""
    temporary = Security.temporary()
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    files["ca"].write_text(temporary.tls_ca_file)
    files["cert"].write_text(temporary.tls_client_cert)
    files["key"].write_text(temporary.tls_client_key)
    return files


def _tls_args(files: dict[str, Path]) -> list[str]:
    return [f"--tls-{flag}={files[name]}" for flag, name in OPTION_FILES]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _write_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_scheduler(
    certificates: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A TLS-only ``dask scheduler`` and one ``dask worker`` on 127.0.0.1 (random port)."""
    root = tmp_path_factory.mktemp("tls_cluster")
    info = root / "scheduler.json"
    common = {"cwd": root, "start_new_session": True, "stderr": subprocess.DEVNULL}
    scheduler = [DASK, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0"]
    scheduler += ["--no-dashboard", "--scheduler-file", str(info), *_tls_args(certificates)]
    processes = [subprocess.Popen(scheduler, **common)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        worker = [DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
        worker += ["--host", "127.0.0.1", *_tls_args(certificates)]
        processes.append(subprocess.Popen(worker, **common))
        security = Security(
            tls_ca_file=str(certificates["ca"]),
            tls_client_cert=str(certificates["cert"]),
            tls_client_key=str(certificates["key"]),
        )
        with Client(address, timeout=30, security=security, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("videos")
    return [
        write_video(root / f"clip{i}{suffix}", moving_square(6 + 3 * i, 64, 48), fps=10)
        for i, suffix in enumerate([".mp4", ".avi", ".mkv"])
    ]


def test_tls_scheduler_with_the_certificate_builds_the_in_process_store(
    tls_scheduler: str, certificates: dict[str, Path], videos: list[Path], tmp_path: Path
) -> None:
    reference = tmp_path / "in_process" / "features.h5"
    run_extraction(videos, reference, OPTIONS)
    store = tmp_path / "tls" / "features.h5"
    args = ["extract", str(videos[0].parent), "-o", str(store), *CLI_OPTIONS]
    args += ["--scheduler", tls_scheduler, *_tls_args(certificates)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Dask cluster {tls_scheduler}: 1 worker" in result.output
    assert_same_store(snapshot(store), snapshot(reference))


def test_a_client_with_another_certificate_is_refused(tls_scheduler: str, tmp_path: Path) -> None:
    stranger = _write_certificates(tmp_path / "stranger")  # valid TLS, not signed by our CA
    options = ClusterOptions(
        scheduler=tls_scheduler,
        connect_timeout_sec=3,
        tls_ca_file=str(stranger["ca"]),
        tls_cert=str(stranger["cert"]),
        tls_key=str(stranger["key"]),
    )
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {tls_scheduler}"):
        DaskRunner(options).__enter__()


def test_a_plain_tcp_client_is_refused(tls_scheduler: str) -> None:
    plain = tls_scheduler.replace("tls://", "tcp://")
    options = ClusterOptions(scheduler=plain, connect_timeout_sec=3)
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {plain}"):
        DaskRunner(options).__enter__()


def test_tls_without_certificates_is_one_error_line(
    tls_scheduler: str, videos: list[Path], tmp_path: Path
) -> None:
    store = tmp_path / "features.h5"
    args = ["extract", str(videos[0].parent), "-o", str(store), *CLI_OPTIONS]
    result = CliRunner().invoke(app, [*args, "--scheduler", tls_scheduler])
    assert result.exit_code == 1
    assert "needs TLS certificates: --tls-ca-file and --tls-cert" in result.output
    assert not store.parent.joinpath("features.h5").exists()


def test_tls_options_are_checked_before_connecting(certificates: dict[str, Path]) -> None:
    ca = str(certificates["ca"])
    with pytest.raises(ConfigError, match="need --scheduler tls://"):
        ClusterOptions(scheduler="tcp://127.0.0.1:1", tls_ca_file=ca).validate()
    with pytest.raises(ConfigError, match=r"--tls-cert /no/such\.pem: no such file"):
        ClusterOptions(scheduler="tls://127.0.0.1:1", tls_cert="/no/such.pem").validate()
