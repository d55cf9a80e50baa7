"""Benchmark the prediction API as deployed: the Procfile's gunicorn command on a loopback port.

Reports single-record latency (p50/p99) with 1 and 16 concurrent clients, single-record
throughput, the time to score a 10,000-row CSV batch, and, for scale, the in-process
``predict_proba`` single-row rate of the same model. Then the slow-client phase: 200
connections trickle their requests a byte every 1.5 s (half their bodies, half their
headers) while ``GET /ready`` and a single-record ``POST /predict`` are timed.

    .venv/bin/python benchmarks/serving.py                 # models/ if trained, else a small demo model
    .venv/bin/python benchmarks/serving.py --model models --seconds 10
    .venv/bin/python benchmarks/serving.py --load python   # the built-in load loop even if wrk is installed
    .venv/bin/python benchmarks/serving.py --compare sync="--worker-class sync"   # the Procfile, then sync workers
    .venv/bin/python benchmarks/serving.py --model models --metrics-ab 5 --slow-clients 0   # and the metrics' cost

Reason codes: one explained row (``POST /predict?explain=true``, one record, one client
at a time) is timed over HTTP and in-process (``ccfraud.explain``); goal: median <= 20 ms
for the default model. ``--metrics-ab ROUNDS``: the single-record load (16 clients) on the
Procfile's app and on the same app without its metrics (``app_without_metrics``), the two
servers side by side, alternating A/B and B/A for ROUNDS pairs; the overhead is the median
of the pairs' throughput ratios. Goal: <= 5% of requests per second.

``--compare LABEL="gunicorn args"`` runs every phase again on the Procfile command with
those arguments appended (they override its own), back to back in the same run, so
server designs are compared on the same (shared, noisy) machine at the same moment.

Goals on a 2-core machine: throughput >= 2,500 req/s and p99 <= 10 ms at 16 clients, the
10,000-row batch <= 100 ms; with the 200 slow connections, p99 <= 100 ms for ``/ready``
and for a single record. The clients run on the same cores as the server, so every
microsecond the load generator spends is taken from the server: wrk (``apt-get install
wrk``) spends about 85 us of CPU per request, the built-in Python loop about 180 us, so
its figures are worse. Other load on the machine makes them worse too: the load average
is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import http.client
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

import numpy as np

from ccfraud import artifacts, explain, modeling, schema, synthetic
from ccfraud.serving.scoring import Scorer

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
BATCH_ROWS = 10_000


#: gunicorn's line naming the address it bound and the master's pid.
LISTENING = re.compile(rf"Listening at: http://{re.escape(LOOPBACK)}:(\d+) \((\d+)\)")


#: The Procfile's app, and the one the metrics A/B compares it with.
PROCFILE_APP = '"ccfraud.serving:create_app()"'
APP_WITHOUT_METRICS = '"benchmarks.serving:app_without_metrics()"'


def procfile_command(port: int, extra_args: str = "", app: str = PROCFILE_APP) -> str:
    """The Procfile's web command, bound to a loopback port instead of every interface.

    ``extra_args`` go at the end, where gunicorn lets them override the Procfile's own
    (``--worker-class sync``): how the benchmark compares server designs. ``app`` replaces
    the Procfile's app (the metrics A/B).
    """
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    command = line.removeprefix("web:").strip().replace("0.0.0.0", LOOPBACK)
    command = command.replace("$PORT", str(port)).replace("${PORT}", str(port))
    if PROCFILE_APP not in command:
        raise RuntimeError(f"the Procfile's web command does not serve {PROCFILE_APP}: {command}")
    return f"{command.replace(PROCFILE_APP, app)} {extra_args}".strip()


def app_without_metrics():
    """The Procfile's app without its metrics: no clock started or read, nothing counted (the metrics A/B).

    Imported by gunicorn from the repository's root (``benchmarks.serving:app_without_metrics()``).
    """
    from ccfraud.serving import create_app
    from ccfraud.serving.app import METRICS_EXTENSION

    app = create_app()
    for hooks in (app.before_request_funcs, app.after_request_funcs):
        hooks[None] = [f for f in hooks.get(None, []) if f.__name__ not in ("start_clock", "count")]
    app.extensions[METRICS_EXTENSION].scored = lambda *args: None
    return app


def choose_model(model_dir: Path | None, scratch: Path) -> Path:
    """``model_dir`` if given, else models/ if the pipeline has trained one, else a demo model under ``scratch``."""
    if model_dir is not None:
        return model_dir
    default = ROOT / "models"
    if (default / artifacts.METADATA_FILE).exists():
        return default
    print("[bench] models/ has no model: training a small logistic regression (demo)", file=sys.stderr)
    return train_demo_model(scratch / "model")


def record_bodies(data, count: int = 1000) -> list[bytes]:
    """Single-record JSON request bodies, one per row of ``data`` (the first ``count``)."""
    rows = data[schema.FEATURES].to_numpy()[:count]
    return [json.dumps(dict(zip(schema.FEATURES, row.tolist(), strict=True))).encode() for row in rows]


def train_demo_model(out_dir: Path) -> Path:
    """A small logistic-regression model, for when the pipeline has not produced models/ yet."""
    data = synthetic.generate(rows=20_000, frauds=200, seed=0)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data[schema.FEATURES], data[schema.TARGET])
    artifacts.save_model(model, out_dir, threshold=0.5)
    return out_dir


class Server:
    """The Procfile command in its own process group, stopped with SIGTERM (then SIGKILL).

    It binds port 0, so the OS picks a free port as gunicorn binds it; ``wait_ready``
    reads the port from gunicorn's log.
    """

    def __init__(self, model_dir: Path, extra_args: str = "", app: str = PROCFILE_APP):
        env = dict(os.environ, CCFRAUD_MODEL=str(model_dir), PORT="0")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.port = 0
        self.log = tempfile.TemporaryFile()
        #: the master's pid too: ``exec`` makes the shell gunicorn
        self.process = subprocess.Popen(["sh", "-c", "exec " + procfile_command(0, extra_args, app)], cwd=ROOT,
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            if not self.port and (found := LISTENING.search(self.output(limit=None))):
                self.port = int(found[1])
            try:
                if self.port and probe(self.port, "/ready") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.output()}")

    def worker_pids(self) -> set[int]:
        """The master's live children: its workers."""
        return child_pids(self.process.pid)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the master and its live workers have used so far.

        Per request, it is a cost figure that other jobs on a shared machine disturb far
        less than throughput or latency, which depend on how much of the CPU the server got.
        """
        return sum(cpu_seconds(pid) for pid in {self.process.pid} | self.worker_pids())

    def output(self, limit: int | None = 4000) -> str:
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        return text if limit is None else text[-limit:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def probe(port: int, path: str, timeout: float = 10.0) -> int:
    """The status of one GET on a new connection (the body is read and dropped)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc; 0 once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def child_pids(parent: int) -> set[int]:
    """Pids of the live (not exited) children of ``parent``, from /proc (Linux)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)": state, ppid, ...
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[1]) == parent:
            pids.add(int(stat.parent.name))
    return pids


def in_process_rate(model, rows: np.ndarray, seconds: float) -> float:
    """Single-row ``predict_proba`` calls per second on one-row DataFrames, as a notebook would call it.

    OpenMP is limited to one thread, as in the server (the Procfile sets OMP_NUM_THREADS=1).
    """
    import pandas as pd
    from threadpoolctl import threadpool_limits

    frames = [pd.DataFrame(rows[i : i + 1], columns=schema.FEATURES) for i in range(len(rows))]
    with threadpool_limits(limits=1, user_api="openmp"):
        model.predict_proba(frames[0])
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.predict_proba(frames[count % len(frames)])
            count += 1
        return count / (time.perf_counter() - started)


def scorer_rate(model, rows: np.ndarray, seconds: float) -> float:
    """Single-row calls per second of the server's scoring path (``serving.scoring.Scorer``), for context."""
    from threadpoolctl import threadpool_limits

    scorer = Scorer(model)
    with threadpool_limits(limits=1, user_api="openmp"):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            scorer.probabilities(rows[count % len(rows)][None, :])
            count += 1
        return count / (time.perf_counter() - started)


def http_request(port: int, path: str, body: bytes, content_type: str) -> bytes:
    """One HTTP/1.1 POST as bytes, built once so the load loop only sends it."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


class Connection:
    """One client's keep-alive connection in the load loop: its socket, unread bytes and request in flight."""

    def __init__(self, address: tuple[str, int], index: int):
        self.address = address
        self.index = index  #: which request body this client sends next
        self.sock: socket.socket | None = None
        self.pending = b""
        self.unsent = b""
        self.started = 0.0

    def open(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(self.address)  # an IP address: no name lookup
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            raise ConnectionError(f"connect to {self.address}: {os.strerror(error)}")
        self.sock, self.pending = sock, b""
        return sock

    def response(self) -> tuple[int, bool] | None:
        """(status, server closes) once ``pending`` holds a whole response (consumed); None until then.

        Enough HTTP/1.1 for this server's answers: the body's end comes from Content-Length.
        """
        end = self.pending.find(b"\r\n\r\n")
        if end < 0:
            return None
        status_line, *header_lines = self.pending[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        body_end = end + 4 + int(headers.get("content-length", "0"))
        if len(self.pending) < body_end:
            return None
        self.pending = self.pending[body_end:]
        return int(status_line.split()[1]), headers.get("connection") == "close"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_clients(port: int, bodies: list[bytes], clients: int, seconds: float, max_requests: int,
                warmup: float = 0.5, count_errors: bool = False) -> dict:
    """``clients`` concurrent connections posting single records back to back; latency percentiles.

    The load generator is one event loop over all connections, as wrk runs, so that it
    takes as little of the machine's CPU (shared with the server) as Python allows.
    Each latency runs from the request's first byte (or the connect, when the server
    closed the previous connection, as gunicorn's sync workers do) to its last response
    byte. Requests in the first ``warmup`` seconds are not counted. A failed request
    (an error status, a connection reset or closed mid-response) stops the run, unless
    ``count_errors``: then it is counted under ``errors`` and its client carries on, on
    a new connection, as wrk does (the fault benchmark kills a worker mid-request).
    """
    requests = [http_request(port, "/predict", body, "application/json") for body in bodies]
    selector = selectors.DefaultSelector()
    connections = [Connection((LOOPBACK, port), i) for i in range(clients)]
    latencies = array("d")
    counted_from = time.perf_counter() + warmup
    deadline = counted_from + seconds
    in_flight = errors = 0

    def start(connection: Connection) -> None:
        nonlocal in_flight
        connection.started = time.perf_counter()
        connection.unsent = requests[connection.index % len(requests)]
        connection.index += clients
        if connection.sock is None:
            selector.register(connection.open(), selectors.EVENT_WRITE, connection)
        else:
            selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        in_flight += 1

    def failed(connection: Connection, reason: str) -> None:
        """Count the request in flight on ``connection`` as failed (or stop), and start the next one afresh."""
        nonlocal in_flight, errors
        if not count_errors:
            raise RuntimeError(f"load test failed: {reason} (client {connection.index % clients})")
        errors += 1
        in_flight -= 1
        selector.unregister(connection.sock)
        connection.close()
        if time.perf_counter() < deadline:
            start(connection)

    try:
        for connection in connections:
            start(connection)
        first_counted = last_done = 0.0
        while in_flight:
            ready = selector.select(timeout=30)
            if not ready:
                raise RuntimeError(f"load test failed: no response within 30 s ({in_flight} requests in flight)")
            for key, events in ready:
                connection: Connection = key.data
                sock = connection.sock
                try:
                    if events & selectors.EVENT_WRITE:
                        sent = sock.send(connection.unsent)
                        connection.unsent = connection.unsent[sent:]
                        if not connection.unsent:
                            selector.modify(sock, selectors.EVENT_READ, connection)
                        continue
                    chunk = sock.recv(65536)
                except OSError as exc:
                    failed(connection, f"the connection failed: {exc}")
                    continue
                if not chunk:
                    failed(connection, "the server closed a connection mid-response")
                    continue
                connection.pending += chunk
                done = connection.response()
                if done is None:
                    continue
                now = time.perf_counter()
                status, closes = done
                if status != 200:
                    failed(connection, f"HTTP {status}")
                    continue
                in_flight -= 1
                if connection.started >= counted_from:
                    first_counted = first_counted or connection.started
                    latencies.append(now - connection.started)
                    last_done = now
                if closes:
                    selector.unregister(sock)
                    connection.close()
                if now < deadline and len(latencies) < max_requests:
                    start(connection)
    finally:  # also when a failure stops the run: no socket left open
        for connection in connections:
            connection.close()
        selector.close()
    flat = np.frombuffer(latencies, dtype=np.float64)
    if flat.size == 0:
        raise RuntimeError("load test failed: no request completed after the warm-up")
    return {
        "clients": clients,
        "requests": int(flat.size),
        "errors": errors,
        "throughput_rps": flat.size / (last_done - first_counted),
        "p50_ms": float(np.percentile(flat, 50) * 1e3),
        "p99_ms": float(np.percentile(flat, 99) * 1e3),
        "max_ms": float(flat.max() * 1e3),
    }


WRK_RESULT = "WRK_RESULT "
#: The end of the wrk script: send the prepared requests in turn; print the summary as one JSON line.
WRK_SCRIPT_END = r"""
local next_request = 0
request = function()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, "max_us": %.1f, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_script(bodies: list[bytes]) -> str:
    """A wrk Lua script posting ``bodies`` in turn, printing its summary as one JSON line at the end."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"', "requests = {}"]
    for body in bodies:
        text = body.decode("ascii")
        if "]==]" in text:
            raise ValueError("a request body contains the Lua string delimiter ]==]")
        lines.append(f'requests[#requests + 1] = wrk.format(nil, "/predict", nil, [==[{text}]==])')
    return "\n".join(lines) + WRK_SCRIPT_END


def run_wrk(wrk: str, port: int, script: Path, clients: int, seconds: float, warmup: bool = True,
            count_errors: bool = False) -> dict:
    """One wrk run (one thread, ``clients`` connections), after a one-second warm-up run if ``warmup``.

    Any failed request (wrk's connect, read, write, status and timeout errors) stops the
    benchmark, unless ``count_errors``: then the count is returned under ``errors``.
    """
    url = f"http://{LOOPBACK}:{port}/predict"
    for duration in (1.0, seconds) if warmup else (seconds,):
        completed = subprocess.run([wrk, "-t1", f"-c{clients}", f"-d{duration:g}s", "--timeout", "30s",
                                    "-s", str(script), url], capture_output=True, text=True, timeout=duration + 60)
        lines = [line for line in completed.stdout.splitlines() if line.startswith(WRK_RESULT)]
        if completed.returncode != 0 or not lines:
            output = completed.stdout[-1000:] + completed.stderr[-1000:]
            raise RuntimeError(f"wrk failed ({completed.returncode}): {output}")
    summary = json.loads(lines[-1].removeprefix(WRK_RESULT))
    if (summary["errors"] and not count_errors) or not summary["requests"]:
        raise RuntimeError(f"load test failed: wrk counted {summary['errors']} errors "
                           f"in {summary['requests']} requests")
    return {
        "clients": clients,
        "requests": summary["requests"],
        "errors": summary["errors"],
        "throughput_rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1e3,
        "p99_ms": summary["p99_us"] / 1e3,
        "max_ms": summary["max_us"] / 1e3,
    }


def batch_times(port: int, body: bytes, repeats: int) -> list[float]:
    """Seconds to POST a CSV batch and read the full response, per repetition."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    headers = {"Content-Type": "text/csv"}
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        connection.request("POST", "/predict", body, headers)
        response = connection.getresponse()
        content = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"batch request failed: HTTP {response.status}: {content[:300]!r}")
    connection.close()
    return times[1:]  # the first one warms the connection and the worker


#: Most slow connections one run may hold open: far above the 200 of the goal, far below the fd limit.
MAX_SLOW_CLIENTS = 1000
#: Bytes a slow client trickles, one per interval: a body (after headers announcing 100 bytes) or a header line.
SLOW_BODY_BYTES = 100


class SlowClients:
    """``count`` connections that send their request one byte every ``interval`` seconds, from a thread.

    Even ones send the headers of a JSON ``POST /predict`` announcing a 100-byte body, then
    the body a byte at a time (the four sockets of issue 14); odd ones send the request line
    and then their headers a byte at a time, never finishing them. A connection the server
    answers or closes is counted and replaced at once, so ``count`` stay open, as a client
    wanting the service down would do. Only to 127.0.0.1; stops on :meth:`stop` or after
    ``max_seconds``, and closes every socket.
    """

    def __init__(self, port: int, count: int, interval: float, max_seconds: float):
        if not 0 < count <= MAX_SLOW_CLIENTS:
            raise ValueError(f"slow clients: 1 to {MAX_SLOW_CLIENTS}, found {count}")
        self.address = (LOOPBACK, port)
        self.count = count
        self.interval = interval
        self.max_seconds = max_seconds
        self.opened = 0
        self.failed_connects = 0
        #: how the server ended slow connections: "408", another status, or "closed" (no answer)
        self.endings: dict[str, int] = {}
        #: seconds from connect to the server's answer or close, per ended connection
        self.lifetimes: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"slow clients failed: {self.error}") from self.error

    def summary(self) -> dict:
        lifetimes = sorted(self.lifetimes)
        return {"connections": self.count, "interval_s": self.interval, "opened": self.opened,
                "failed_connects": self.failed_connects, "endings": dict(sorted(self.endings.items())),
                "median_lifetime_s": statistics.median(lifetimes) if lifetimes else None}

    def _open(self, index: int) -> dict | None:
        head = (f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}:{self.address[1]}\r\n"
                "Content-Type: application/json\r\n")
        if index % 2 == 0:
            first = f"{head}Content-Length: {SLOW_BODY_BYTES}\r\n\r\n".encode()
            trickle = b" " * SLOW_BODY_BYTES
        else:
            first, trickle = head.encode(), b"X-Slow: " + b"a" * 4000  # never the blank line that ends headers
        try:
            sock = socket.create_connection(self.address, timeout=1.0)
            sock.sendall(first)
        except OSError:
            self.failed_connects += 1
            return None
        sock.setblocking(False)
        self.opened += 1
        return {"sock": sock, "index": index, "trickle": trickle, "sent": 0, "answer": b"",
                "started": time.monotonic()}

    def _end(self, connection: dict, selector: selectors.BaseSelector) -> None:
        selector.unregister(connection["sock"])
        connection["sock"].close()
        answer = connection["answer"]
        ending = answer.split(b" ", 2)[1].decode("latin-1") if answer.startswith(b"HTTP/") else "closed"
        self.endings[ending] = self.endings.get(ending, 0) + 1
        self.lifetimes.append(time.monotonic() - connection["started"])

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        connections: dict[int, dict] = {}  # by index: the connection standing in that slot now
        due: list[tuple[float, int]] = []  # (when its next byte is due, index)
        end = time.monotonic() + self.max_seconds

        def open_slot(index: int) -> None:
            """A new connection in slot ``index`` (if the connect fails, the slot's next turn retries)."""
            if (connection := self._open(index)) is not None:
                connections[index] = connection
                selector.register(connection["sock"], selectors.EVENT_READ, index)

        try:
            for index in range(self.count):
                open_slot(index)
                heapq.heappush(due, (time.monotonic() + self.interval, index))  # each slot's one turn, always
            while not self._stop.is_set() and time.monotonic() < end:
                wait = min(0.1, max(0.0, due[0][0] - time.monotonic())) if due else 0.1
                for key, _ in selector.select(wait):
                    connection = connections[key.data]
                    try:
                        data = connection["sock"].recv(65536)
                    except OSError:
                        data = b""
                    connection["answer"] += data
                    if not data:  # the server closed it (after an answer, or without one)
                        self._end(connection, selector)
                        del connections[key.data]
                        open_slot(key.data)
                now = time.monotonic()
                while due and due[0][0] <= now:
                    _, index = heapq.heappop(due)
                    if index not in connections:
                        open_slot(index)
                        continue
                    connection = connections[index]
                    if connection["sent"] < len(connection["trickle"]):
                        position = connection["sent"]
                        try:
                            connection["sent"] += connection["sock"].send(connection["trickle"][position:position + 1])
                        except OSError:
                            pass  # reset by the server: its close is read above
                    heapq.heappush(due, (now + self.interval, index))
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            for connection in connections.values():
                connection["sock"].close()
            selector.close()


def timed_requests(port: int, requests: dict[str, bytes], seconds: float, timeout: float = 10.0) -> dict:
    """Send each of ``requests`` (raw HTTP/1.1, by name) in turn, one at a time, each on a new connection.

    As a health checker or an occasional client sees the server: the latency runs from the
    connect to the last byte of the answer. A request not answered 200 within ``timeout``
    counts as failed. Runs for ``seconds`` (plus at most one ``timeout``).
    """
    latencies: dict[str, list[float]] = {name: [] for name in requests}
    failed: dict[str, int] = dict.fromkeys(requests, 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, request in requests.items():
            started = time.perf_counter()
            try:
                with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
                    sock.sendall(request)
                    answer = b""
                    while chunk := sock.recv(65536):  # the request says Connection: close
                        answer += chunk
                ok = answer.startswith(b"HTTP/1.1 200 ")
            except OSError:  # timed out, refused or reset
                ok = False
            if ok:
                latencies[name].append(time.perf_counter() - started)
            else:
                failed[name] += 1
    out = {}
    for name, values in latencies.items():
        flat = np.array(values) * 1e3
        out[name] = {"requests": len(values) + failed[name], "failed": failed[name],
                     "p50_ms": float(np.percentile(flat, 50)) if flat.size else None,
                     "p99_ms": float(np.percentile(flat, 99)) if flat.size else None,
                     "max_ms": float(flat.max()) if flat.size else None}
    return out


def slow_client_phase(port: int, predict_body: bytes, slow_clients: int, interval: float,
                      seconds: float) -> dict:
    """``GET /ready`` and a single-record ``POST /predict`` timed while ``slow_clients`` trickle their requests."""
    close = f"Host: {LOOPBACK}:{port}\r\nConnection: close\r\n"
    requests = {
        "ready": f"GET /ready HTTP/1.1\r\n{close}\r\n".encode(),
        "predict": (f"POST /predict HTTP/1.1\r\n{close}Content-Type: application/json\r\n"
                    f"Content-Length: {len(predict_body)}\r\n\r\n").encode() + predict_body,
    }
    # Bounded: the phase, the settling time and one request timeout, with a margin.
    with SlowClients(port, slow_clients, interval, max_seconds=seconds + 2 * interval + 60) as slow:
        time.sleep(2 * interval)  # every slow connection has sent its headers and a trickled byte
        timed = timed_requests(port, requests, seconds)
    return {"timed": timed, "slow": slow.summary()}


def explained_row_times(port: int, bodies: list[bytes], repeats: int) -> list[float]:
    """Seconds per ``POST /predict?explain=true`` of one record, one at a time on one kept-alive connection."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    headers = {"Content-Type": "application/json"}
    times = []
    try:
        for index in range(repeats + 5):
            started = time.perf_counter()
            connection.request("POST", "/predict?explain=true", bodies[index % len(bodies)], headers)
            response = connection.getresponse()
            content = response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200 or b'"reasons"' not in content:
                raise RuntimeError(f"explained request failed: HTTP {response.status}: {content[:300]!r}")
    finally:
        connection.close()
    return times[5:]  # the first ones warm the connection and both workers' scratch space


def in_process_explain_times(model, rows: np.ndarray, repeats: int) -> list[float]:
    """Seconds per explained row in-process: ``ccfraud.explain`` on one row, reasons included, no HTTP."""
    explainer = explain.Explainer(model)
    times = []
    for index in range(repeats + 5):
        started = time.perf_counter()
        explainer.explain(rows[index % len(rows)][None, :]).reasons(0)
        times.append(time.perf_counter() - started)
    return times[5:]


def summary_ms(times: list[float]) -> dict:
    flat = np.array(times) * 1e3
    return {"median": float(np.median(flat)), "p99": float(np.percentile(flat, 99)), "max": float(flat.max()),
            "requests": len(times)}


def metrics_ab(model_dir: Path, rounds: int, args: argparse.Namespace, wrk: str | None, script: Path,
               bodies: list[bytes], clients: int = 16) -> dict:
    """Single-record throughput with and without the metrics, the two servers side by side, in alternating pairs.

    Round i runs A (the Procfile's app) then B (without metrics), or B then A when i is odd,
    so a machine that speeds up or slows down during a round favours neither. Each pair gives
    a ratio A/B; the overhead is 1 minus the median ratio. The servers' CPU time per request
    is compared the same way: other jobs on a shared machine disturb it less than throughput.
    """
    servers = {"with metrics": Server(model_dir), "without metrics": Server(model_dir, app=APP_WITHOUT_METRICS)}
    pairs = []
    try:
        for server in servers.values():
            server.wait_ready()

        for round_ in range(rounds):
            order = ["with metrics", "without metrics"][:: 1 if round_ % 2 == 0 else -1]
            measured = {label: single_record_phase(servers[label], clients, args, wrk, script, bodies)
                        for label in order}
            pair = {label: {key: phase[key] for key in ("throughput_rps", "p99_ms", "server_cpu_us_per_request")}
                    for label, phase in measured.items()}
            pair["ratio"] = measured["with metrics"]["throughput_rps"] / measured["without metrics"]["throughput_rps"]
            pair["cpu_ratio"] = (measured["with metrics"]["server_cpu_us_per_request"]
                                 / measured["without metrics"]["server_cpu_us_per_request"])
            pair["order"] = order
            pairs.append(pair)
            print(f"[bench] metrics A/B round {round_ + 1}: " + ", ".join(
                f"{label} {pair[label]['throughput_rps']:.0f} req/s" for label in order)
                + f" (ratio {pair['ratio']:.3f}, CPU per request ratio {pair['cpu_ratio']:.3f})", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    ratios = [pair["ratio"] for pair in pairs]
    cpu_ratios = [pair["cpu_ratio"] for pair in pairs]
    return {"clients": clients, "seconds": args.seconds, "pairs": pairs, "median_ratio": statistics.median(ratios),
            "overhead_percent": (1.0 - statistics.median(ratios)) * 100.0,
            "median_cpu_ratio": statistics.median(cpu_ratios),
            "cpu_overhead_percent": (statistics.median(cpu_ratios) - 1.0) * 100.0}


def single_record_phase(server: Server, clients: int, args: argparse.Namespace, wrk: str | None, script: Path,
                        bodies: list[bytes]) -> dict:
    """Single records posted by ``clients`` connections for ``args.seconds`` (wrk if installed, else our loop).

    A 1 s warm-up run first; the CPU the server spends is counted over the measured run alone
    (``server_cpu_us_per_request``).
    """
    def run(seconds: float) -> dict:
        if wrk:
            return run_wrk(wrk, server.port, script, clients, seconds, warmup=False)
        return run_clients(server.port, bodies, clients, seconds, args.max_requests, warmup=0.0)

    run(1.0)
    cpu = server.cpu_seconds()
    phase = run(args.seconds)
    phase["server_cpu_us_per_request"] = (server.cpu_seconds() - cpu) / phase["requests"] * 1e6
    return phase


def measure_design(label: str, extra_args: str, model_dir: Path, args: argparse.Namespace, wrk: str | None,
                   script: Path, bodies: list[bytes], csv_body: bytes) -> dict:
    """Every HTTP phase against one server design: the Procfile command plus ``extra_args``."""
    print(f"[bench] {label}: {procfile_command(0, extra_args)}", file=sys.stderr)
    server = Server(model_dir, extra_args)
    try:
        server.wait_ready()
        single = []
        for clients in (1, 16):
            single.append(single_record_phase(server, clients, args, wrk, script, bodies))
        times = batch_times(server.port, csv_body, args.batch_repeats)
        result = {"label": label, "extra_args": extra_args, "single": single,
                  "batch_10k_csv_ms": {"median": statistics.median(times) * 1e3, "min": min(times) * 1e3,
                                       "max": max(times) * 1e3, "body_bytes": len(csv_body)}}
        if args.explain_repeats:
            result["explained_row_ms"] = summary_ms(explained_row_times(server.port, bodies, args.explain_repeats))
        if args.slow_clients:
            result["slow_clients"] = slow_client_phase(server.port, bodies[0], args.slow_clients,
                                                       args.slow_interval, args.seconds)
    finally:
        server.stop()
    return result


def print_design(result: dict) -> None:
    print(f"== {result['label']}: {result['extra_args'] or 'the Procfile as it is'}")
    for phase in result["single"]:
        print(f"HTTP single record, {phase['clients']:2d} client(s):  {phase['throughput_rps']:8.0f} req/s   "
              f"p50 {phase['p50_ms']:6.2f} ms   p99 {phase['p99_ms']:6.2f} ms   "
              f"server CPU {phase['server_cpu_us_per_request']:5.0f} us/request   ({phase['requests']} requests)")
    batch = result["batch_10k_csv_ms"]
    print(f"HTTP 10,000-row CSV batch ({batch['body_bytes'] / 1e6:.1f} MB):  median {batch['median']:.1f} ms   "
          f"min {batch['min']:.1f} ms   max {batch['max']:.1f} ms")
    if "explained_row_ms" in result:
        timed = result["explained_row_ms"]
        print(f"HTTP one explained row (?explain=true, one client):  median {timed['median']:.2f} ms   "
              f"p99 {timed['p99']:.2f} ms   max {timed['max']:.1f} ms   ({timed['requests']} requests)")
    if "slow_clients" in result:
        slow = result["slow_clients"]["slow"]
        print(f"with {slow['connections']} slow connections (a byte every {slow['interval_s']:g} s; half bodies, "
              "half headers), one request at a time on a new connection:")
        for name, timed in result["slow_clients"]["timed"].items():
            figures = (f"p50 {timed['p50_ms']:7.2f} ms   p99 {timed['p99_ms']:7.2f} ms   max {timed['max_ms']:7.1f} ms"
                       if timed["p50_ms"] is not None else "no answer")
            print(f"  {name:8s} {figures}   ({timed['requests']} requests, {timed['failed']} failed or timed out)")
        lifetime = slow["median_lifetime_s"]
        print(f"  slow connections: {slow['opened']} opened; ended by the server: {slow['endings'] or 'none'}"
              + (f", after {lifetime:.1f} s (median)" if lifetime is not None else ""))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: models/ if it holds a model, else a small demo model)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load phase (default 5)")
    parser.add_argument("--max-requests", type=int, default=200_000,
                        help="cap on requests per load phase of the built-in load loop")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk (the lightest, if installed), the built-in Python loop, "
                             "or auto (wrk when on PATH; default)")
    parser.add_argument("--batch-repeats", type=int, default=15,
                        help="timed 10,000-row batch requests; the median is reported (default 15)")
    parser.add_argument("--slow-clients", type=int, default=200,
                        help=f"slow connections in the slow-client phase, 0 to skip it (at most {MAX_SLOW_CLIENTS})")
    parser.add_argument("--slow-interval", type=float, default=1.5,
                        help="seconds between two bytes of a slow connection (default 1.5)")
    parser.add_argument("--compare", action="append", default=[], metavar='LABEL="ARGS"',
                        help="also measure the Procfile command with these gunicorn arguments appended (repeatable)")
    parser.add_argument("--explain-repeats", type=int, default=200,
                        help="explained single-record requests timed (median reported; 0 skips; default 200)")
    parser.add_argument("--metrics-ab", type=int, default=0, metavar="ROUNDS",
                        help="also compare single-record throughput with and without the metrics, in ROUNDS "
                             "alternating pairs (default 0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not 0 <= args.slow_clients <= MAX_SLOW_CLIENTS:
        parser.error(f"--slow-clients: 0 to {MAX_SLOW_CLIENTS}")
    designs = [("procfile", "")]
    for spec in args.compare:
        label, sep, extra = spec.partition("=")
        if not sep or not label:
            parser.error(f'--compare takes LABEL="gunicorn args", found {spec!r}')
        designs.append((label, extra))

    with tempfile.TemporaryDirectory(prefix="ccfraud-bench-") as tmp:
        model_dir = choose_model(args.model, Path(tmp))
        loaded = artifacts.load_model(model_dir)
        data = synthetic.generate(rows=BATCH_ROWS, frauds=50, seed=123)
        rows = data[schema.FEATURES].to_numpy()
        bodies = record_bodies(data)
        csv_body = data.to_csv(index=False).encode()

        load_before = load_average()
        print(f"[bench] model {loaded.version} from {model_dir} ({loaded.metadata.get('candidate', 'model')}); "
              f"{os.cpu_count()} CPUs; load average {load_before}", file=sys.stderr)
        rate = in_process_rate(loaded.model, rows[:1000], min(args.seconds, 5.0))
        fast_rate = scorer_rate(loaded.model, rows[:1000], min(args.seconds, 2.0))
        started = time.perf_counter()
        modeling.fraud_probability(loaded.model, data)
        in_process_batch = time.perf_counter() - started
        explain_times = in_process_explain_times(loaded.model, rows[:1000], max(args.explain_repeats, 50))

        wrk = shutil.which("wrk") if args.load != "python" else None
        if args.load == "wrk" and wrk is None:
            parser.error("--load wrk: wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)")
        script = Path(tmp) / "predict.lua"
        script.write_text(wrk_script(bodies))
        measured = [measure_design(label, extra, Path(model_dir).resolve(), args, wrk, script, bodies, csv_body)
                    for label, extra in designs]
        ab = (metrics_ab(Path(model_dir).resolve(), args.metrics_ab, args, wrk, script, bodies)
              if args.metrics_ab else None)
        results = {
            "model_version": loaded.version,
            "load_generator": "wrk" if wrk else "python",
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "in_process_single_row_per_s": rate,
            "in_process_scorer_single_row_per_s": fast_rate,
            "in_process_batch_10k_ms": in_process_batch * 1e3,
            "in_process_explained_row_ms": summary_ms(explain_times),
            "designs": measured,
            "metrics_ab": ab,
        }

    print(f"machine: {os.cpu_count()} CPUs, load average {results['load_average_before']} before, "
          f"{results['load_average_after']} after (1, 5, 15 min)")
    print(f"in-process predict_proba, one row:  {rate:8.0f} rows/s   (10,000-row batch in-process: "
          f"{results['in_process_batch_10k_ms']:.1f} ms)")
    print(f"in-process server scoring path, one row: {fast_rate:8.0f} rows/s   (no HTTP, no parsing)")
    timed = results["in_process_explained_row_ms"]
    print(f"in-process reason codes (ccfraud.explain), one row: median {timed['median']:.2f} ms   "
          f"p99 {timed['p99']:.2f} ms")
    print(f"load generator: {results['load_generator']}"
          + ("" if wrk else " (the built-in loop; wrk, if installed, takes less of the CPU the server shares)"))
    for result in measured:
        print_design(result)
    if ab is not None:
        print(f"== metrics A/B, single record at {ab['clients']} clients, {len(ab['pairs'])} alternating pairs of "
              f"{ab['seconds']:g} s: median throughput ratio {ab['median_ratio']:.3f} "
              f"(overhead {ab['overhead_percent']:.1f}%); server CPU per request: median ratio "
              f"{ab['median_cpu_ratio']:.3f} (overhead {ab['cpu_overhead_percent']:.1f}%)")
        for pair in ab["pairs"]:
            print("  " + ", ".join(f"{label} {pair[label]['throughput_rps']:.0f} req/s (p99 "
                                   f"{pair[label]['p99_ms']:.1f} ms, server CPU "
                                   f"{pair[label]['server_cpu_us_per_request']:.0f} us/request)"
                                   for label in pair["order"])
                  + f": ratio {pair['ratio']:.3f}, CPU {pair['cpu_ratio']:.3f}")
    print(f"server command: {shlex.join(['sh', '-c', procfile_command(0)]).replace(':0 ', ':$PORT ')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
