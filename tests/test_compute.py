"""The engine switch and the one place a Dask client is made."""

from __future__ import annotations

import time
from pathlib import Path

import dask
import pytest
from conftest import wait_until

from ccfraud import compute


def test_engines_are_pandas_or_dask():
    assert compute.check_engine("dask") == "dask"
    with pytest.raises(compute.ComputeError, match="one of pandas, dask; found 'spark'"):
        compute.check_engine("spark")


def test_local_cluster_has_one_single_threaded_worker_per_cpu_within_the_memory_share():
    options = compute.local_cluster_options(cpus=4, memory_bytes=8 * 2**30)
    assert options["n_workers"] == 4 and options["threads_per_worker"] == 1 and options["processes"]
    assert options["memory_limit"] * 4 <= 8 * 2**30 * compute.LOCAL_MEMORY_SHARE


def test_the_address_comes_from_dask_configuration():
    with dask.config.set({"scheduler-address": "tcp://10.0.0.7:8786"}):
        assert compute.scheduler_address() == "tcp://10.0.0.7:8786"
    with dask.config.set({"scheduler-address": None}):
        assert compute.scheduler_address() is None


def test_an_unreachable_scheduler_is_an_error_naming_its_address(monkeypatch):
    # Port 9 on loopback (discard): nothing listens there on a test machine. Refused at once, but Dask retries
    # until the timeout: a short one keeps the test from idling its xdist worker.
    monkeypatch.setattr(compute, "CONNECT_TIMEOUT", 0.5)
    with dask.config.set({"scheduler-address": "tcp://127.0.0.1:9"}):
        with pytest.raises(compute.ComputeError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
            with compute.dask_client():
                pass


def test_a_configured_scheduler_is_used_as_it_is(dask_client):
    address = dask_client.scheduler.address
    with dask.config.set({"scheduler-address": address}), compute.dask_client() as client:
        assert client.scheduler.address == address
        assert client.submit(sum, [1, 2, 3]).result() == 6


def _straggle(started: str, written: str) -> None:
    """A task that goes on after it is cancelled: it writes ``written`` only once its worker has been told."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    Path(started).touch()
    deadline = time.monotonic() + 60  # never hold the session cluster's worker for ever
    while worker.state.tasks[key].state != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # still busy a while after the cancellation, as a partition being written is
    Path(written).write_text("written after the cancellation")


def test_abandon_returns_only_once_a_cancelled_task_that_was_running_has_ended(dask_client, tmp_path):
    """Cancelling a future does not stop a task already running; abandon waits for its end, so a job that
    removes its parts after abandon leaves none behind (a failed Dask download once did)."""
    started, written = tmp_path / "started", tmp_path / "written"
    future = dask_client.submit(_straggle, str(started), str(written), pure=False)
    wait_until(started.exists, "the task running")
    compute.abandon(dask_client, [future])
    assert written.read_text() == "written after the cancellation"
    assert future.cancelled()
