"""pytest fixtures for a real Dask cluster: ``distributed.LocalCluster`` with two worker processes.

* ``dask_client``: one cluster per test session (per xdist worker), for tests that do not hurt it.
* ``dask_client_fresh``: a cluster of its own for one test, which may kill its workers.

Both run in this machine's processes, on loopback; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ccfraud.compute import LOCAL_DASHBOARD

#: Two single-threaded worker processes: real parallelism, real pickling, real worker loss.
#: The dashboard on a free loopback port, as compute.dask_client does: without one the scheduler's
#: HTTP server still tries 8787 and warns whenever another cluster (another test process) holds it.
CLUSTER_OPTIONS = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "memory_limit": "1GiB",
                   "dashboard_address": LOCAL_DASHBOARD, "host": "127.0.0.1"}


def _client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(**CLUSTER_OPTIONS) as cluster, Client(cluster) as client:
        client.wait_for_workers(CLUSTER_OPTIONS["n_workers"], timeout=60)
        yield client


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A client of a two-worker LocalCluster shared by the session; stopped at the end."""
    yield from _client()


@pytest.fixture
def dask_client_fresh() -> Iterator[Any]:
    """A client of a two-worker LocalCluster for one test only, so the test may kill a worker."""
    yield from _client()
