"""Benchmark the prediction API as deployed: the Procfile's gunicorn command on a loopback port.

Reports single-record latency (p50/p99) with 1 and 16 concurrent clients, single-record
throughput, the time to score a 10,000-row CSV batch, and, for scale, the in-process
``predict_proba`` single-row rate of the same model.

    .venv/bin/python benchmarks/serving.py                 # models/ if trained, else a small demo model
    .venv/bin/python benchmarks/serving.py --model models --seconds 10
    .venv/bin/python benchmarks/serving.py --load python   # the built-in load loop even if wrk is installed

Goals on a 2-core machine: throughput >= half the in-process single-row rate, p99 <= 10 ms
at 16 clients, the 10,000-row batch <= 100 ms. The clients run on the same cores as the
server, so every microsecond the load generator spends is taken from the server: wrk
(``apt-get install wrk``) spends about 85 us of CPU per request, the built-in Python loop
about 180 us, so its figures are worse. Other load on the machine makes them worse too.
"""

from __future__ import annotations

import argparse
import errno
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
import time
from array import array
from pathlib import Path

import numpy as np

from ccfraud import artifacts, modeling, schema, synthetic
from ccfraud.serving.scoring import Scorer

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
BATCH_ROWS = 10_000


#: gunicorn's line naming the address it bound and the master's pid.
LISTENING = re.compile(rf"Listening at: http://{re.escape(LOOPBACK)}:(\d+) \((\d+)\)")


def procfile_command(port: int) -> str:
    """The Procfile's web command, bound to a loopback port instead of every interface."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    command = line.removeprefix("web:").strip().replace("0.0.0.0", LOOPBACK)
    return command.replace("$PORT", str(port)).replace("${PORT}", str(port))


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

    def __init__(self, model_dir: Path):
        env = dict(os.environ, CCFRAUD_MODEL=str(model_dir), PORT="0")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.port = 0
        self.log = tempfile.TemporaryFile()
        #: the master's pid too: ``exec`` makes the shell gunicorn
        self.process = subprocess.Popen(["sh", "-c", "exec " + procfile_command(0)], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

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
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ccfraud-bench-") as tmp:
        model_dir = choose_model(args.model, Path(tmp))
        loaded = artifacts.load_model(model_dir)
        data = synthetic.generate(rows=BATCH_ROWS, frauds=50, seed=123)
        rows = data[schema.FEATURES].to_numpy()
        bodies = record_bodies(data)
        csv_body = data.to_csv(index=False).encode()

        print(f"[bench] model {loaded.version} from {model_dir} ({loaded.metadata.get('candidate', 'model')}); "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
        rate = in_process_rate(loaded.model, rows[:1000], min(args.seconds, 5.0))
        fast_rate = scorer_rate(loaded.model, rows[:1000], min(args.seconds, 2.0))
        started = time.perf_counter()
        modeling.fraud_probability(loaded.model, data)
        in_process_batch = time.perf_counter() - started

        wrk = shutil.which("wrk") if args.load != "python" else None
        if args.load == "wrk" and wrk is None:
            parser.error("--load wrk: wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)")
        script = Path(tmp) / "predict.lua"
        script.write_text(wrk_script(bodies))
        server = Server(Path(model_dir).resolve())
        try:
            server.wait_ready()
            if wrk:
                single = [run_wrk(wrk, server.port, script, n, args.seconds) for n in (1, 16)]
            else:
                single = [run_clients(server.port, bodies, n, args.seconds, args.max_requests) for n in (1, 16)]
            results = {
                "model_version": loaded.version,
                "load_generator": "wrk" if wrk else "python",
                "in_process_single_row_per_s": rate,
                "in_process_scorer_single_row_per_s": fast_rate,
                "in_process_batch_10k_ms": in_process_batch * 1e3,
                "single": single,
            }
            times = batch_times(server.port, csv_body, args.batch_repeats)
            results["batch_10k_csv_ms"] = {"median": statistics.median(times) * 1e3, "min": min(times) * 1e3,
                                           "max": max(times) * 1e3, "body_bytes": len(csv_body)}
        finally:
            server.stop()

    print(f"in-process predict_proba, one row:  {rate:8.0f} rows/s   (10,000-row batch in-process: "
          f"{results['in_process_batch_10k_ms']:.1f} ms)")
    print(f"in-process server scoring path, one row: {fast_rate:8.0f} rows/s   (no HTTP, no parsing)")
    print(f"load generator: {results['load_generator']}"
          + ("" if wrk else " (the built-in loop; wrk, if installed, takes less of the CPU the server shares)"))
    for phase in results["single"]:
        print(f"HTTP single record, {phase['clients']:2d} client(s):  {phase['throughput_rps']:8.0f} req/s   "
              f"p50 {phase['p50_ms']:6.2f} ms   p99 {phase['p99_ms']:6.2f} ms   ({phase['requests']} requests)")
    batch = results["batch_10k_csv_ms"]
    print(f"HTTP 10,000-row CSV batch ({batch['body_bytes'] / 1e6:.1f} MB):  median {batch['median']:.1f} ms   "
          f"min {batch['min']:.1f} ms   max {batch['max']:.1f} ms")
    print(f"server command: {shlex.join(['sh', '-c', procfile_command(0)]).replace(':0 ', ':$PORT ')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
