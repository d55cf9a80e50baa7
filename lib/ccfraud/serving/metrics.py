"""The API's Prometheus metrics (``GET /metrics``), counted across every gunicorn worker.

What is counted, under the ``ccfraud_`` prefix:

* ``http_requests_total{route, method, status}``: requests answered by the app, by URL
  rule (``/predict``; ``unmatched`` for a path no route matches, so a client cannot make
  a new series per URL) and by status;
* ``http_request_duration_seconds{route}``: a histogram of the time from the request
  reaching the app to its response being ready (body read, parsed and scored);
* ``rows_scored_total``, ``rows_flagged_total`` (fraud_probability >= threshold) and
  ``rows_explained_total``: the share flagged is ``rate(ccfraud_rows_flagged_total[5m]) /
  rate(ccfraud_rows_scored_total[5m])``;
* ``model_info{model_version, candidate, threshold}``: 1 for the served model (an info
  metric as a gauge: multiprocess mode has no Info type).

Each gunicorn worker is its own process, so with prometheus-client's multiprocess mode
every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and whichever
worker answers ``/metrics`` adds up all the files: the counts are the server's, not one
worker's. The server hooks (:mod:`ccfraud.serving.gunicorn_conf`) make that directory in
the master before any worker forks (a fresh temporary one unless the variable is set)
and clear a dead worker's live gauges. prometheus-client picks its mode when it is
imported, from that variable, so it is imported here only when a process first counts
something: in a worker, after the fork, never in the master at ``--preload`` (and if
something imported it earlier, the mode is chosen again then). Without the variable
(an app built in a test or a REPL), the app counts in its own registry.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "ccfraud"
#: Seconds: a single record takes about a millisecond, a 10,000-row batch about 0.1 s, an explained one seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The route label of a request no URL rule matched (404, or 405 before matching).
UNMATCHED = "unmatched"
#: Methods counted by name; any other a client sends is counted as ``other``.
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


def multiprocess_dir() -> str | None:
    """The directory the workers share their values in, or None (this process counts alone)."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir() -> tuple[Path, bool]:
    """In the master, before workers fork: the shared directory, emptied of an earlier run's files.

    ``PROMETHEUS_MULTIPROC_DIR`` if set (made if missing; its ``*.db`` files are removed,
    as prometheus-client requires between runs), else a new temporary directory, which
    is then exported to the workers. Returns it and whether it was created here.
    """
    configured = multiprocess_dir()
    if configured is None:
        path = Path(tempfile.mkdtemp(prefix="ccfraud-prometheus-"))
        os.environ[MULTIPROC_ENV] = str(path)
        return path, True
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path, False


def mark_worker_dead(pid: int) -> None:
    """In the master, when a worker exits: drop its live gauges (its counters stay: they were counted)."""
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class ServiceMetrics:
    """The app's instruments; created in the process that first counts (a worker), see the module's docstring."""

    def __init__(self, model_info: dict[str, str] | None = None):
        #: Labels of ``ccfraud_model_info`` (None while no model is loaded).
        self.model_info = model_info
        self._made = False
        self._registry: Any = None  # this process's registry when it counts alone
        self._multiprocess = False
        self._requests: dict[tuple[str, str, int], Any] = {}  # children by label values: labels() costs a lock

    def _make(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self._multiprocess = multiprocess_dir() is not None
        if getattr(values.ValueClass, "_multiprocess", False) != self._multiprocess:
            # prometheus-client chose its mode when it was first imported, and the environment has changed
            # since (something imported it before the master made the directory): choose again, as it would.
            log.info("prometheus-client was imported before %s was %s: its mode is chosen again", MULTIPROC_ENV,
                     "set" if self._multiprocess else "unset")
            values.ValueClass = values.get_value_class()
        # Multiprocess values live in files, and the scrape collects them from there: registering them would
        # only report this worker's values a second time.
        self._registry = None if self._multiprocess else CollectorRegistry()
        registry = self._registry
        self._request_counter = Counter(f"{PREFIX}_http_requests", "HTTP requests answered by the app.",
                                        ["route", "method", "status"], registry=registry)
        self._latency = Histogram(f"{PREFIX}_http_request_duration_seconds", "Seconds from a request reaching "
                                  "the app to its response being ready.", ["route"], buckets=LATENCY_BUCKETS,
                                  registry=registry)
        self._latency_by_route: dict[str, Any] = {}
        self._rows = Counter(f"{PREFIX}_rows_scored", "Transactions scored by POST /predict.", registry=registry)
        self._flagged = Counter(f"{PREFIX}_rows_flagged", "Transactions scored at or above the threshold "
                                "(is_fraud true).", registry=registry)
        self._explained = Counter(f"{PREFIX}_rows_explained", "Transactions scored with reason codes.",
                                  registry=registry)
        info = Gauge(f"{PREFIX}_model_info", "The served model: 1, with its version, candidate and threshold "
                     "as labels.", ["model_version", "candidate", "threshold"], multiprocess_mode="livemax",
                     registry=registry)
        if self.model_info is not None:
            info.labels(**self.model_info).set(1)
        self._made = True

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        if not self._made:
            self._make()
        key = (route, method if method in METHODS else "other", status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._request_counter.labels(key[0], key[1], str(status))
        child.inc()
        latency = self._latency_by_route.get(route)
        if latency is None:
            latency = self._latency_by_route[route] = self._latency.labels(route)
        latency.observe(seconds)

    def scored(self, rows: int, flagged: int, explained: bool) -> None:
        """Count a scored request's rows, those flagged as fraud, and whether they were explained."""
        if not self._made:
            self._make()
        self._rows.inc(rows)
        if flagged:
            self._flagged.inc(flagged)
        if explained:
            self._explained.inc(rows)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, every worker's added up; and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not self._made:
            self._make()
        if not self._multiprocess:
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
