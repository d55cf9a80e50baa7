"""The serving benchmarks' load generators, against a small loopback server: they count what was answered.

No timing is asserted (figures belong to the benchmarks' printout); these tests check
that the load loop reads whole responses on kept-alive and on closed connections, stops
on an error status or counts failed requests when asked to (the soak's worker kill), that
the wrk script it writes is one wrk runs, that the slow-client phase replaces the
connections the server ends and counts how it ended them, and that the soak reads
processes' memory and the benchmark their CPU time.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import closing_server, missing_tool

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module; benchmarks/ goes on sys.path, as when a benchmark runs as a script,
    because the soak imports the serving benchmark's server and load generators by name."""
    benchmarks = str(ROOT / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module(name)


bench = load_benchmark("serving")
soak = load_benchmark("soak")


class PredictHandler(http.server.BaseHTTPRequestHandler):
    """Answers POST /predict with a JSON body; ``close``, ``status`` and ``drop`` are set per server.

    A request whose body is in ``drop`` gets no answer: its connection is closed, as a
    killed worker's would be.
    """

    protocol_version = "HTTP/1.1"
    close = False
    status = 200
    drop: frozenset[bytes] = frozenset()
    seen: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(body)
        if body in self.drop:
            self.close_connection = True
            return
        answer = b'{"predictions": [{"fraud_probability": 0.5, "is_fraud": true}]}' if self.status == 200 else b""
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if self.close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)
        if self.close:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class PredictServer(http.server.ThreadingHTTPServer):
    """The test server; a client hanging up mid-request (as a failing load run does) is not an error here."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def predict_server(close: bool = False, status: int = 200,
                   drop: frozenset[bytes] = frozenset()) -> Iterator[tuple[int, list[bytes]]]:
    seen: list[bytes] = []
    handler = type("Handler", (PredictHandler,), {"close": close, "status": status, "drop": drop, "seen": seen})
    server = PredictServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


BODIES = [b'{"Time": 1}', b'{"Time": 2}', b'{"Time": 3}']


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection closed"])
def test_load_loop_counts_whole_responses(close):
    with predict_server(close=close) as (port, seen):
        # Ends at 30 counted requests: the 10 s bound only matters if the machine stalls.
        result = bench.run_clients(port, BODIES, clients=3, seconds=10, max_requests=30, warmup=0.1)
    assert result["clients"] == 3
    assert 0 < result["requests"] <= len(seen)  # warm-up requests are sent but not counted
    assert set(seen) == set(BODIES)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["throughput_rps"] > 0


def test_load_loop_stops_at_max_requests():
    with predict_server() as (port, _):
        result = bench.run_clients(port, BODIES, clients=2, seconds=30, max_requests=50, warmup=0.0)
    assert 50 <= result["requests"] <= 51  # the request in flight on the other connection may finish


def test_load_loop_fails_on_an_error_status():
    with predict_server(status=500) as (port, _):
        with pytest.raises(RuntimeError, match="HTTP 500"):
            bench.run_clients(port, BODIES, clients=2, seconds=0.3, max_requests=1000, warmup=0.0)


def test_load_loop_stops_when_a_connection_closes_without_an_answer():
    with predict_server(drop=frozenset({BODIES[1]})) as (port, _):
        with pytest.raises(RuntimeError, match="closed a connection mid-response"):
            bench.run_clients(port, BODIES, clients=3, seconds=0.3, max_requests=1000, warmup=0.0)


def test_load_loop_counts_failed_requests_and_carries_on_when_asked():
    """The soak's kill phase: a request the killed worker never answers is counted, its client reconnects."""
    with predict_server(drop=frozenset({BODIES[1]})) as (port, seen):
        result = bench.run_clients(port, BODIES, clients=3, seconds=2, max_requests=30, warmup=0.0,
                                   count_errors=True)
    assert result["errors"] >= 1  # client 1 sends BODIES[1] first
    assert result["requests"] >= 1
    assert result["requests"] + result["errors"] <= len(seen)
    assert seen.count(BODIES[1]) >= result["errors"]


def test_wrk_script_sends_every_body():
    script = bench.wrk_script(BODIES)
    for body in BODIES:
        assert body.decode() in script
    with pytest.raises(ValueError, match="Lua string delimiter"):
        bench.wrk_script([b'{"a": "]==]"}'])


def test_wrk_runs_the_script_and_reports_counts(tmp_path):
    wrk = shutil.which("wrk")
    if wrk is None:
        missing_tool("wrk is not installed (apt-get install wrk; the benchmark then uses its own loop)")
    script = tmp_path / "predict.lua"
    script.write_text(bench.wrk_script(BODIES))
    with predict_server() as (port, seen):
        result = bench.run_wrk(wrk, port, script, clients=2, seconds=1)
    assert 0 < result["requests"] <= len(seen)
    assert set(seen) == set(BODIES)
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_wrk_counts_failed_requests_when_asked(tmp_path):
    wrk = shutil.which("wrk")
    if wrk is None:
        missing_tool("wrk is not installed (apt-get install wrk; the benchmark then uses its own loop)")
    script = tmp_path / "predict.lua"
    script.write_text(bench.wrk_script(BODIES))
    with predict_server(drop=frozenset({BODIES[1]})) as (port, seen):
        with pytest.raises(RuntimeError, match="wrk counted [1-9]"):
            bench.run_wrk(wrk, port, script, clients=2, seconds=1, warmup=False)
        result = bench.run_wrk(wrk, port, script, clients=2, seconds=1, warmup=False, count_errors=True)
    assert result["errors"] >= 1
    assert BODIES[1] in seen


# --- the slow-client phase -------------------------------------------------------------------------

def test_slow_clients_replace_the_connections_the_server_ends_and_count_how_it_ended_them():
    answer = b'HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
    with closing_server(answer) as (port, firsts):
        with bench.SlowClients(port, count=4, interval=0.05, max_seconds=30) as slow:
            deadline = time.monotonic() + 30
            while slow.opened < 12 and time.monotonic() < deadline:
                time.sleep(0.01)
    summary = slow.summary()
    assert summary["connections"] == 4
    assert summary["opened"] >= 12  # every ended connection was replaced
    assert set(summary["endings"]) == {"408"}
    assert sum(summary["endings"].values()) >= 8
    assert summary["median_lifetime_s"] is not None
    # Half announce a body and send it later, half never finish their headers.
    assert any(b"Content-Length: 100\r\n\r\n" in first for first in firsts)
    assert any(first.startswith(b"POST /predict ") and b"Content-Length" not in first for first in firsts)


def test_slow_clients_count_a_close_without_an_answer():
    with closing_server(b"") as (port, _):
        with bench.SlowClients(port, count=2, interval=0.05, max_seconds=30) as slow:
            deadline = time.monotonic() + 30
            while slow.opened < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
    assert set(slow.summary()["endings"]) == {"closed"}


def test_slow_clients_refuse_an_unbounded_count():
    with pytest.raises(ValueError, match="slow clients: 1 to 1000"):
        bench.SlowClients(1, count=bench.MAX_SLOW_CLIENTS + 1, interval=1.0, max_seconds=1.0)


def test_timed_requests_count_answers_and_failures():
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 11\r\n\r\n" + BODIES[0]
    with predict_server() as (port, seen):
        result = bench.timed_requests(port, {"predict": request}, seconds=0.2, timeout=5)
    assert result["predict"]["requests"] == len(seen) > 0
    assert result["predict"]["failed"] == 0
    assert 0 < result["predict"]["p50_ms"] <= result["predict"]["p99_ms"] <= result["predict"]["max_ms"]
    with predict_server(status=500) as (port, _):
        result = bench.timed_requests(port, {"predict": request}, seconds=0.2, timeout=5)
    assert result["predict"]["failed"] == result["predict"]["requests"] > 0
    assert result["predict"]["p99_ms"] is None


# --- the soak's memory readings --------------------------------------------------------------------

def test_rss_is_read_for_a_live_process_and_none_once_it_is_gone():
    # Read once the child's interpreter runs (says so): right after exec, on a busy machine, it holds a few pages.
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('running', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"running\n"
        assert child.pid in bench.child_pids(os.getpid())
        assert soak.rss_mb(child.pid) > 1.0
    finally:
        child.communicate(b"")
    assert child.pid not in bench.child_pids(os.getpid())
    assert soak.rss_mb(child.pid) is None


def test_cpu_seconds_grow_with_work_and_are_zero_once_a_process_is_gone():
    before = bench.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # 50 ms of CPU: five clock ticks
        pass
    assert bench.cpu_seconds(os.getpid()) > before
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert bench.cpu_seconds(child.pid) == 0.0


def test_rss_sampler_reports_start_max_and_end_per_process():
    ballast = []
    with soak.RssSampler(lambda: {os.getpid()}, every=0.01) as sampler:
        ballast.append(bytearray(64 << 20))  # 64 MB, written: resident
        while len(sampler.samples.get(os.getpid(), ())) < 3:
            threading.Event().wait(0.01)
    rss = sampler.summary()[os.getpid()]
    assert rss["samples"] >= 3
    assert rss["start_mb"] <= rss["max_mb"] and rss["end_mb"] <= rss["max_mb"]
    assert rss["max_mb"] == max(sampler.samples[os.getpid()])
