"""Which engine runs a stage, the one place a Dask client is made, and how a failed Dask job stops its tasks.

``params.yaml``'s ``compute.engine`` is ``pandas`` (the default: one process, the whole
dataset in memory) or ``dask`` (``dask.dataframe`` on a ``distributed`` cluster, for data
that outgrows one machine). Where the cluster is never comes from params: it is Dask's own
configuration (``DASK_SCHEDULER_ADDRESS``, or ``scheduler-address`` in a dask config file),
as on any Dask deployment. With no address, a :class:`distributed.LocalCluster` sized to this
machine is started for the duration of the block and stopped after it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

ENGINES = ("pandas", "dask")
#: Seconds to wait for a configured scheduler before giving up with an error naming it.
CONNECT_TIMEOUT = 5.0
#: Share of the machine's memory the local workers may use together (the rest is the client's).
LOCAL_MEMORY_SHARE = 0.6
#: Where a local cluster's dashboard listens: this machine only, on a port the system picks.
LOCAL_DASHBOARD = "127.0.0.1:0"
#: Seconds a failed job waits for its tasks that are still running before removing what they wrote.
ABANDON_TIMEOUT = 300.0


class ComputeError(RuntimeError):
    """The engine name is unknown or the cluster cannot be reached; the message says which and where."""


def check_engine(engine: str) -> str:
    """Return ``engine`` if it is one of :data:`ENGINES`, else raise naming the choices."""
    if engine not in ENGINES:
        raise ComputeError(f"compute.engine must be one of {', '.join(ENGINES)}; found {engine!r}")
    return engine


def scheduler_address() -> str | None:
    """The scheduler Dask's configuration names (``DASK_SCHEDULER_ADDRESS`` or a config file), if any."""
    import dask

    address = dask.config.get("scheduler-address", None)
    return str(address) if address else None


def _machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_cluster_options(cpus: int | None = None, memory_bytes: int | None = None) -> dict[str, Any]:
    """One single-threaded worker process per CPU, sharing :data:`LOCAL_MEMORY_SHARE` of the memory.

    Single-threaded workers because the per-partition work (parsing, validation, scoring)
    holds the GIL for much of its time; processes use every core.
    """
    workers = max(1, cpus or len(os.sched_getaffinity(0)))
    memory = memory_bytes or _machine_memory_bytes()
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "memory_limit": int(memory * LOCAL_MEMORY_SHARE / workers)}


def connect(address: str, timeout: float | None = None) -> Any:
    """A client of the scheduler at ``address``, or a :class:`ComputeError` naming it within ``timeout`` s
    (default :data:`CONNECT_TIMEOUT`, read at the call)."""
    from distributed import Client

    timeout = CONNECT_TIMEOUT if timeout is None else timeout

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ComputeError(
            f"cannot reach the Dask scheduler at {address} (from DASK_SCHEDULER_ADDRESS or dask's "
            f"'scheduler-address' setting) within {timeout:g} s: {exc}") from exc


@contextmanager
def dask_client(**local_options: Any) -> Iterator[Any]:
    """A :class:`distributed.Client` for the block: the configured scheduler, else a LocalCluster.

    ``local_options`` override :func:`local_cluster_options` for the local cluster only
    (tests and benchmarks set ``n_workers`` or ``memory_limit``); a configured scheduler
    is used as it is.
    """
    address = scheduler_address()
    if address:
        client = connect(address)
        log.info("using the Dask scheduler at %s", address)
        with client:
            yield client
        return
    from distributed import Client, LocalCluster

    # The dashboard on a free loopback port: without one, the scheduler's HTTP server still
    # tries port 8787 and warns when another cluster (another stage, a test) holds it.
    options = {**local_cluster_options(), "dashboard_address": LOCAL_DASHBOARD, **local_options}
    log.info("starting a local Dask cluster: %s workers × %s thread(s)", options["n_workers"],
             options["threads_per_worker"])
    with LocalCluster(**options) as cluster, Client(cluster) as client:
        log.info("local Dask cluster's dashboard: %s", cluster.dashboard_link)
        yield client


#: Scheduler states of a task that may still be sent to a worker.
_SCHEDULED = frozenset({"waiting", "queued", "processing", "no-worker"})
#: Worker states of a task that neither runs nor will: done, failed or dropped.
_SETTLED = frozenset({"memory", "error", "released", "forgotten"})


def _scheduled_keys(keys: set[Any], dask_scheduler: Any = None) -> list[Any]:
    """Which of ``keys`` the scheduler may still send to a worker (a cancel it has not handled yet)."""
    tasks = dask_scheduler.tasks
    return [key for key in keys if key in tasks and tasks[key].state in _SCHEDULED]


def _unsettled_keys(keys: set[Any], dask_worker: Any = None) -> list[Any]:
    """Which of ``keys`` this worker runs or is about to run (cancelled ones still running included)."""
    tasks = dask_worker.state.tasks
    return [key for key in keys if key in tasks and tasks[key].state not in _SETTLED]


def abandon(client: Any, futures: Sequence[Any], timeout: float = ABANDON_TIMEOUT) -> None:
    """Cancel ``futures`` and wait until none of them runs or is about to run anywhere, so none writes after cleanup.

    Cancelling a future stops a task only if it has not started: one already running on a
    worker runs to its end, and a job that removed its parts at once found a part written
    after the removal (a failed Dask download left one behind on a busy machine). Every job
    that writes parts on the workers calls this before removing them. The cancel reaches the
    scheduler, and its word the workers, asynchronously: this waits until the scheduler will
    send none of the tasks to a worker and no worker holds one that is not settled, twice in a
    row 50 ms apart (a task already on its way to a worker shows up there in the meantime).
    """
    keys = {future.key for future in futures}
    deadline = time.monotonic() + timeout
    try:
        client.cancel(list(futures), force=True)
    except Exception:  # the client is closed: the job's error, not this one, is the one to report
        return
    settled_checks, unsettled = 0, 0
    while time.monotonic() < deadline:
        try:
            scheduled = client.run_on_scheduler(_scheduled_keys, keys)
            on_workers = client.run(_unsettled_keys, keys, on_error="ignore")
        except Exception:  # the cluster itself is gone: nothing of it can write any more
            return
        unsettled = len(scheduled) + sum(map(len, on_workers.values()))  # unreachable workers are left out
        settled_checks = 0 if unsettled else settled_checks + 1
        if settled_checks == 2:
            return
        time.sleep(0.05)
    log.warning("%d task(s) still running %.0f s after the job failed; parts they write later will be removed "
                "by the next successful commit", unsettled, timeout)


def lost_workers_message(label: str, error: Any) -> str:
    """What to say when the scheduler gave up on a task (``distributed``'s KilledWorker): ``label`` names what the
    task worked on (a file, a partition), not the scheduler's key, which means nothing to a user."""
    return (f"{label}: the Dask workers running it died {error.allowed_failures + 1} time(s) in a row "
            "(out of memory? see the workers' logs); nothing was committed")
