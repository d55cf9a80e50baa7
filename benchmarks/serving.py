"""Benchmark the prediction API as deployed: the Procfile's gunicorn command on a loopback port.

Reports single-record latency (p50/p99) with 1 and 16 concurrent keep-alive clients,
single-record throughput, the time to score a 10,000-row CSV batch, and, for scale,
the in-process ``predict_proba`` single-row rate of the same model.

    .venv/bin/python benchmarks/serving.py                 # models/ if trained, else a small demo model
    .venv/bin/python benchmarks/serving.py --model models --seconds 10

Goals on a 2-core machine: throughput >= half the in-process single-row rate, p99 <= 10 ms
at 16 clients, the 10,000-row batch <= 100 ms. The clients run on the same cores as the
server, so the figures are conservative; other load on the machine makes them worse.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ccfraud import artifacts, modeling, schema, synthetic
from ccfraud.serving.scoring import Scorer

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
BATCH_ROWS = 10_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def procfile_command(port: int) -> str:
    """The Procfile's web command, bound to a loopback port instead of every interface."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    command = line.removeprefix("web:").strip().replace("0.0.0.0", LOOPBACK)
    return command.replace("$PORT", str(port)).replace("${PORT}", str(port))


def train_demo_model(out_dir: Path) -> Path:
    """A small logistic-regression model, for when the pipeline has not produced models/ yet."""
    data = synthetic.generate(rows=20_000, frauds=200, seed=0)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data[schema.FEATURES], data[schema.TARGET])
    artifacts.save_model(model, out_dir, threshold=0.5)
    return out_dir


class Server:
    """The Procfile command in its own process group, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, model_dir: Path, port: int):
        env = dict(os.environ, CCFRAUD_MODEL=str(model_dir), PORT=str(port))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.port = port
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(["sh", "-c", "exec " + procfile_command(port)], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
                connection.request("GET", "/ready")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


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


def run_clients(port: int, bodies: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    """``clients`` threads, each with one keep-alive connection, posting single records until time is up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]
    headers = {"Content-Type": "application/json"}

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
        mine = latencies[index]
        try:
            for body in bodies[:3]:  # warm the connection
                connection.request("POST", "/predict", body, headers)
                connection.getresponse().read()
            barrier.wait()
            i = index
            while time.perf_counter() < deadline[0] and len(mine) < max_requests:
                body = bodies[i % len(bodies)]
                i += clients
                started = time.perf_counter()
                connection.request("POST", "/predict", body, headers)
                response = connection.getresponse()
                response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 200:
                    errors.append(f"HTTP {response.status}")
                    return
        except Exception as exc:  # report, do not hang the barrier
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    barrier.wait()
    started = time.perf_counter()
    deadline[0] = started + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = np.array([x for per_client in latencies for x in per_client])
    if errors or flat.size == 0:
        raise RuntimeError(f"load test failed: {errors[:3]}")
    return {
        "clients": clients,
        "requests": int(flat.size),
        "throughput_rps": flat.size / elapsed,
        "p50_ms": float(np.percentile(flat, 50) * 1e3),
        "p99_ms": float(np.percentile(flat, 99) * 1e3),
        "max_ms": float(flat.max() * 1e3),
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
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap on requests per client per phase")
    parser.add_argument("--batch-repeats", type=int, default=7, help="timed 10,000-row batch requests (default 7)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ccfraud-bench-") as tmp:
        model_dir = args.model
        if model_dir is None:
            default = ROOT / "models"
            model_dir = default if (default / artifacts.METADATA_FILE).exists() else None
        if model_dir is None:
            print("[bench] models/ has no model: training a small logistic regression (demo)", file=sys.stderr)
            model_dir = train_demo_model(Path(tmp) / "model")
        loaded = artifacts.load_model(model_dir)
        data = synthetic.generate(rows=BATCH_ROWS, frauds=50, seed=123)
        rows = data[schema.FEATURES].to_numpy()
        bodies = [json.dumps(dict(zip(schema.FEATURES, row.tolist(), strict=True))).encode() for row in rows[:1000]]
        csv_body = data.to_csv(index=False).encode()

        print(f"[bench] model {loaded.version} from {model_dir} ({loaded.metadata.get('candidate', 'model')}); "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
        rate = in_process_rate(loaded.model, rows[:1000], min(args.seconds, 5.0))
        fast_rate = scorer_rate(loaded.model, rows[:1000], min(args.seconds, 2.0))
        started = time.perf_counter()
        modeling.fraud_probability(loaded.model, data)
        in_process_batch = time.perf_counter() - started

        server = Server(Path(model_dir).resolve(), free_port())
        try:
            server.wait_ready()
            results = {
                "model_version": loaded.version,
                "in_process_single_row_per_s": rate,
                "in_process_scorer_single_row_per_s": fast_rate,
                "in_process_batch_10k_ms": in_process_batch * 1e3,
                "single": [run_clients(server.port, bodies, n, args.seconds, args.max_requests) for n in (1, 16)],
            }
            times = batch_times(server.port, csv_body, args.batch_repeats)
            results["batch_10k_csv_ms"] = {"median": statistics.median(times) * 1e3, "min": min(times) * 1e3,
                                           "max": max(times) * 1e3, "body_bytes": len(csv_body)}
        finally:
            server.stop()

    print(f"in-process predict_proba, one row:  {rate:8.0f} rows/s   (10,000-row batch in-process: "
          f"{results['in_process_batch_10k_ms']:.1f} ms)")
    print(f"in-process server scoring path, one row: {fast_rate:8.0f} rows/s   (no HTTP, no parsing)")
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
