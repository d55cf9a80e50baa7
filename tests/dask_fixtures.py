"""pytest fixtures for a real Dask cluster: ``distributed.LocalCluster`` with two worker processes.

* ``dask_client``: one cluster per test session (per xdist worker), shared by the tests; a
  test that kills a worker waits for its nanny to bring it back (:func:`restore_workers`).
* :class:`KillOnStart`: a worker plugin that kills its worker the moment a chosen task starts
  executing there: a deterministic worker loss, mid-task, with no sleeps or polling.

All run in this machine's processes, on loopback; nothing is mocked.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from ccfraud.compute import LOCAL_DASHBOARD

#: Two single-threaded worker processes: real parallelism, real pickling, real worker loss.
#: The dashboard on a free loopback port, as compute.dask_client does: without one the scheduler's
#: HTTP server still tries 8787 and warns whenever another cluster (another test process) holds it.
CLUSTER_OPTIONS = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "memory_limit": "1GiB",
                   "dashboard_address": LOCAL_DASHBOARD, "host": "127.0.0.1"}

#: What the test cluster leaves out of Dask's defaults, which no test reads: each worker's statistical
#: profiler (a stack sample every 10 ms), the event-loop health tick of every server (every 20 ms) and
#: every server's system metrics for the dashboards (every 0.5 s). Idle, the cluster spent 1.8 s of
#: CPU in 15 s on them (12% of a core, for as long as the session holds it), 0.6 s without. The
#: nannies hand their configuration to the workers they start, restarted ones too.
QUIET_CONFIG = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                "distributed.admin.system-monitor.interval": "2s"}


def _client() -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(QUIET_CONFIG):
        cluster = LocalCluster(**CLUSTER_OPTIONS)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(CLUSTER_OPTIONS["n_workers"], timeout=60)
        yield client


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A client of a two-worker LocalCluster shared by the session; stopped at the end."""
    yield from _client()


def restore_workers(client: Any, timeout: float = 60) -> None:
    """Wait until the cluster has exactly its workers again, every one answering.

    The nannies restart killed workers; until the scheduler has also forgotten a dead one, it
    still lists it (three workers, one of them unreachable), and the next test's ``client.run``
    would reach for it. A wait for a state, not a pause: it returns as soon as the state holds.
    """
    import time

    wanted = CLUSTER_OPTIONS["n_workers"]
    client.wait_for_workers(wanted, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        listed = set(client.scheduler_info()["workers"])
        answering = {address for address, pid in client.run(os.getpid, on_error="ignore").items()
                     if isinstance(pid, int)}
        if len(listed) == wanted and answering == listed:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not get back to {wanted} answering workers in {timeout:g} s: "
                               f"listed {sorted(listed)}, answering {sorted(answering)}")
        time.sleep(0.05)


class KillOnStart(WorkerPlugin):
    """SIGKILL the worker process on which the task whose key ends with ``key_suffix`` starts executing, once.

    The worker's state machine tells the plugin of every transition; the kill happens on the
    transition of that task to ``executing``, so the task has demonstrably started and not
    finished. ``marker`` (a file, created exclusively) makes it happen once in all: the task,
    rerun elsewhere or on the restarted worker, then completes. The marker holds the killed pid.
    """

    name = "ccfraud-test-kill-on-start"

    def __init__(self, key_suffix: str, marker: str) -> None:
        self.key_suffix, self.marker = key_suffix, marker

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).endswith(self.key_suffix):
            return
        try:
            descriptor = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def killed_pid(marker: str) -> int | None:
        """The pid the plugin killed, or None if it never fired."""
        path = Path(marker)
        return int(path.read_text()) if path.exists() else None
