"""gunicorn server hooks: the process-wide settings of the Procfile's server, kept out of the app factory.

The Procfile loads this module with ``--config python:ccfraud.serving.gunicorn_conf``;
its command line keeps every other setting. Freezing the heap, sizing Arrow's thread
pool and the directory the workers share their metrics in change the whole process (or
all of them), so they are done by the server that owns the processes, at the moment
each one is right for, and not by ``create_app``: a test or a REPL that builds an app
changes nothing global.

gunicorn imports this module before it applies the Procfile's ``--env
OMP_NUM_THREADS=1``, and OpenMP reads that variable once, when scikit-learn first
loads it: so nothing heavy (the app, scikit-learn, pyarrow) is imported here at
module level, only inside the hooks, which run after it.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker


def freeze_heap() -> int:
    """Leave every object alive now (libraries, the model, the app) out of all future garbage collections.

    A full collection walks every tracked object: about 180,000 once the libraries and a
    random forest are loaded, which took ~90 ms, roughly once per 20,000 requests in a
    worker, and landed in some request's latency. Frozen objects are not walked (a full
    collection then takes well under a millisecond), and the forked workers no longer
    write GC bookkeeping into, and so copy, the master's pages. Garbage is collected
    first so that only live objects are frozen: a frozen cycle would never be freed.
    Returns how many objects are frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def size_arrow_threads() -> int:
    """Let Arrow's CSV reader use every CPU this process may run on, as the forest's batch scoring does.

    Arrow sizes its thread pool from ``OMP_NUM_THREADS``, which the Procfile sets to 1 so
    that an OpenMP model (hist_gb) does not wake a team of threads for every single-row
    request, competing with the other worker: without this, a 10,000-row CSV batch was
    parsed on one core (17 ms instead of 9 ms). Returns the pool's size.
    """
    import pyarrow

    from ccfraud.serving.config import available_cpus

    pyarrow.set_cpu_count(available_cpus())
    return pyarrow.cpu_count()


def when_ready(server: Arbiter) -> None:
    """In the master, after ``--preload`` has loaded the app and before the first worker forks: freeze the heap.

    Without ``--preload`` the master holds no app and each worker loads its own after
    the fork, so there is nothing worth freezing here; the log says so.
    """
    if not server.cfg.preload_app:
        server.log.info("heap not frozen: without --preload each worker loads the app after the fork")
        return
    server.log.info("froze %d objects out of garbage collection before forking workers", freeze_heap())


#: The signals gunicorn's master sends its workers to stop them (gracefully: TERM; at once: INT, QUIT).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def exit_on_stop_signals() -> None:
    """Until the worker installs its own handlers, a stop signal ends it at once: a booting worker has no request.

    A forked worker inherits the master's handlers, which only queue the signal for the
    master's loop, and the worker runs no such loop: a worker stopped while it was still
    booting (a deploy or a test stopping a server that has just started) ignored the
    signal, and the master waited out ``--graceful-timeout`` (10 s) before killing it.
    gunicorn installs the worker's real handlers once it has booted.
    """
    for stop in STOP_SIGNALS:
        signal.signal(stop, lambda signum, frame: os._exit(0))


def post_fork(server: Arbiter, worker: Worker) -> None:
    """In each new worker, the first one and every replacement: stop signals end it while it boots; size Arrow's
    thread pool, and log it.

    A size set in the master before the fork survives it (pyarrow 26), but setting it
    where the pool is used does not depend on that, and each worker's log line says
    what it got.
    """
    exit_on_stop_signals()
    server.log.info("Arrow's thread pool sized to %d threads", size_arrow_threads())


#: The metrics directory ``on_starting`` created (removed again by ``on_exit``); None if it was configured.
_created_metrics_dir: Path | None = None


def on_starting(server: Arbiter) -> None:
    """In the master, before any worker forks: the directory every worker counts its metrics in.

    ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of an earlier run's files), else a new
    temporary directory, exported to the workers (see :mod:`ccfraud.serving.metrics`).
    """
    global _created_metrics_dir
    from ccfraud.serving import metrics

    path, created = metrics.prepare_multiprocess_dir()
    _created_metrics_dir = path if created else None
    server.log.info("workers count their metrics in %s (%s)", path,
                    "a temporary directory" if created else metrics.MULTIPROC_ENV)


def child_exit(server: Arbiter, worker: Worker) -> None:
    """In the master, when a worker has exited (stopped, killed, replaced): drop its live gauges; counts stay."""
    from ccfraud.serving import metrics

    metrics.mark_worker_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    """In the master, as the server stops: remove the metrics directory if ``on_starting`` created it."""
    global _created_metrics_dir
    if _created_metrics_dir is not None:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
        _created_metrics_dir = None


#: What each worker logs once it can serve and be stopped (tests wait for it before stopping the server).
WORKER_READY = "ready: app loaded, signal handlers installed"


def post_worker_init(worker: Worker) -> None:
    """In each worker, once its signal handlers are installed and its app loaded: say so.

    Until then a stop signal ends the worker at once (:func:`exit_on_stop_signals`) rather
    than gracefully; tests that stop the server wait for this line from every worker, so
    that what they check is a graceful stop of a server that had fully started.
    """
    worker.log.info("worker %d %s", worker.pid, WORKER_READY)
