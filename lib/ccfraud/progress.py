"""Progress lines for long stage work: the step, i of n, elapsed seconds.

A stage notebook runs in a papermill kernel, where ``print`` reaches only the notebook.
Lines here go to the process's original stdout (``sys.__stdout__``): the kernel, which
watches that file descriptor, shows them in the executed notebook *and* echoes them to the
console that ran ``dvc repro``, so a long run on a cluster is visibly alive in both places.
A kernel that does not watch it (ipykernel does not under pytest) gets each line twice:
once for the notebook, once for the console.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

#: Seconds between two "k of n done" lines while waiting on the cluster.
EVERY_SECONDS = 10.0
#: Seconds between two "still working" lines while one long task (a fit of minutes) runs.
HEARTBEAT_SECONDS = 30.0


def _write(line: str, stream: TextIO | None) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)
        return
    console = sys.__stdout__
    if console is None or sys.stdout is console or getattr(sys.stdout, "_should_watch", False):
        print(line, file=console or sys.stdout, flush=True)
        return
    print(line, file=sys.stdout, flush=True)
    print(line, file=console, flush=True)


class Steps:
    """Numbered steps of one stage: ``[stage] step i/n: name`` on start, ``... done in s`` at the end."""

    def __init__(self, stage: str, total: int, stream: TextIO | None = None) -> None:
        self.stage = stage
        self.total = total
        self.number = 0
        self.started = time.perf_counter()
        self.stream = stream

    def say(self, text: str) -> None:
        """One line, prefixed with the stage and the time since the first step."""
        elapsed = time.perf_counter() - self.started
        _write(f"[{self.stage}] {text} ({elapsed:.1f} s elapsed)", self.stream)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce step ``i of n``, run the block, then say how long it took."""
        self.number += 1
        label = f"step {self.number}/{self.total}: {name}"
        self.say(f"{label} ...")
        began = time.perf_counter()
        yield
        self.say(f"{label} done in {time.perf_counter() - began:.1f} s")


class Parts:
    """Parts of one step done as they finish: ``[stage] name: part k of n done, rows, note (elapsed)``.

    A line at most every ``every`` seconds, and always for the last part (or, for a stream
    of unknown length, from :meth:`finish`), so thousands of parts do not flood the report.
    """

    def __init__(self, stage: str, name: str, total: int | None = None, *, every: float = EVERY_SECONDS,
                 stream: TextIO | None = None) -> None:
        self.prefix = f"[{stage}] {name}"
        self.total = total
        self.every = every
        self.stream = stream
        self.done = 0
        self.rows = 0
        self.started = time.perf_counter()
        self._last = -math.inf

    def advance(self, rows: int, note: str = "") -> None:
        """Count one finished part of ``rows`` rows; say so if ``every`` seconds passed, or if it was the last."""
        self.done += 1
        self.rows += rows
        now = time.perf_counter()
        if (self.total is not None and self.done >= self.total) or now - self._last >= self.every:
            self._last = now
            of = f" of {self.total}" if self.total is not None else ""
            self.say(f"part {self.done}{of} done, {self.rows:,} rows" + (f", {note}" if note else ""))

    def finish(self) -> None:
        """Say how many parts and rows there were in all (for a stream of unknown length)."""
        self.say(f"all {self.done} part(s) done, {self.rows:,} rows")

    def say(self, text: str) -> None:
        _write(f"{self.prefix}: {text} ({time.perf_counter() - self.started:.1f} s elapsed)", self.stream)


@contextmanager
def heartbeat(say: Callable[[str], None] | None, status: Callable[[], str],
              every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """While the block runs, ``say(status())`` every ``every`` seconds, from a thread of its own.

    For work whose own progress lines come only as tasks finish: at 100x the data one fit of
    the search takes minutes, and a user should not watch a silent cell meanwhile.
    """
    if say is None:
        yield
        return
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.wait(every):
            say(status())

    thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def _client() -> Any:
    """The ``distributed`` client of this process, if one is running."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def wait(futures: Sequence[Any], label: str, *, every: float = EVERY_SECONDS, stream: TextIO | None = None) -> None:
    """Wait for ``futures``, printing ``label: k of n done`` every ``every`` seconds; raise the first failure."""
    from distributed import wait as wait_for

    began = time.perf_counter()
    while True:
        try:
            wait_for(futures, timeout=every)
            break
        except TimeoutError:
            done = sum(future.done() for future in futures)
            _write(f"  {label}: {done} of {len(futures)} done, {time.perf_counter() - began:.0f} s", stream)
    for future in futures:
        if future.status == "error":
            future.result()  # raises the task's exception, with its traceback


def compute(tasks: Sequence[Any], label: str, *, every: float = EVERY_SECONDS,
            stream: TextIO | None = None) -> list[Any]:
    """Compute dask ``tasks`` (delayed objects or collections) and return their results, in order.

    On a ``distributed`` cluster, prints ``label: k of n done`` every ``every`` seconds
    while it waits; without one (dask's local schedulers), it simply computes.
    """
    import dask

    client = _client()
    if client is None:
        return list(dask.compute(*tasks))
    futures = client.compute(list(tasks))
    wait(futures, label, every=every, stream=stream)
    return client.gather(futures)


def persist(collection: Any, label: str, *, every: float = EVERY_SECONDS, stream: TextIO | None = None) -> Any:
    """``collection.persist()``, waiting for it with the same ``k of n done`` lines as :func:`compute`.

    For a collection that several later steps read (each would otherwise recompute it).
    """
    client = _client()
    if client is None:
        return collection.persist()
    from distributed import futures_of

    persisted = client.persist(collection)
    wait(futures_of(persisted), label, every=every, stream=stream)
    return persisted
