"""The serving benchmark's load generators, against a small loopback server: they count what was answered.

No timing is asserted (figures belong to the benchmark's printout); these tests check
that the load loop reads whole responses on kept-alive and on closed connections, stops
on an error status, and that the wrk script it writes is one wrk runs.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import missing_tool

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_benchmark()


class PredictHandler(http.server.BaseHTTPRequestHandler):
    """Answers POST /predict with a JSON body; ``close`` and ``status`` are set per server."""

    protocol_version = "HTTP/1.1"
    close = False
    status = 200
    seen: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(body)
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


@contextlib.contextmanager
def predict_server(close: bool = False, status: int = 200) -> Iterator[tuple[int, list[bytes]]]:
    seen: list[bytes] = []
    handler = type("Handler", (PredictHandler,), {"close": close, "status": status, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
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
        result = bench.run_clients(port, BODIES, clients=3, seconds=0.3, max_requests=100_000, warmup=0.1)
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
