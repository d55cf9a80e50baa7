"""Progress lines of long stage work: the step, i of n, elapsed time; results come back in order."""

from __future__ import annotations

import io
import threading

import dask
import pytest

from ccfraud import progress


def test_steps_are_numbered_and_timed():
    out = io.StringIO()
    steps = progress.Steps("stage", 2, stream=out)
    with steps.step("first"):
        pass
    with steps.step("second"):
        steps.say("half-way")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[stage] step 1/2: first ...")
    assert lines[1].startswith("[stage] step 1/2: first done in ")
    assert lines[3].startswith("[stage] half-way (") and lines[3].endswith(" s elapsed)")
    assert lines[4].startswith("[stage] step 2/2: second done in ")


def test_compute_returns_results_in_order():
    tasks = [dask.delayed(pow)(2, n) for n in range(5)]
    with dask.config.set(scheduler="sync"):
        assert progress.compute(tasks, "powers") == [1, 2, 4, 8, 16]


def _fail(n: int) -> int:
    if n == 3:
        raise ValueError("partition 3 is broken")
    return n


def test_compute_on_the_cluster_returns_results_or_the_first_failure(dask_client):
    assert progress.compute([dask.delayed(pow)(3, n) for n in range(4)], "powers", every=0.01) == [1, 3, 9, 27]
    with pytest.raises(ValueError, match="partition 3 is broken"):
        progress.compute([dask.delayed(_fail)(n) for n in range(5)], "failing", every=0.01)


def test_a_heartbeat_speaks_while_a_long_block_runs_and_stops_with_it():
    said, spoke = [], threading.Event()

    def say(line: str) -> None:
        said.append(line)
        spoke.set()

    with progress.heartbeat(say, lambda: "still fitting: 3 of 21 fits done", every=0.01):
        assert spoke.wait(timeout=30)  # the block outlives a beat: at least one line, whenever it comes
    count = len(said)
    assert set(said) == {"still fitting: 3 of 21 fits done"}
    spoke.clear()
    assert not spoke.wait(timeout=0.1) and len(said) == count  # silent once the block is over
    with progress.heartbeat(None, lambda: "unused"):  # no progress wanted: no thread, no line
        pass
