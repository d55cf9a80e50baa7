"""Soak and fault benchmark of the Procfile server: sustained load with worker memory watched, then a worker killed.

Soak: ``--connections`` clients post single records to ``/predict`` for ``--seconds``
while every worker's resident memory (RSS) is sampled; prints req/s, p50/p99, errors
and each worker's RSS at the start, its maximum and at the end. A leak shows as an RSS
that keeps climbing; copy-on-write pages of the preloaded master being touched show
as a one-off rise early on.

Kill: the same load for ``--kill-seconds``; a third of the way in, one worker gets
SIGKILL. Prints whether the master replaced it (a new worker pid) and how long that
took, how many requests failed (the killed worker's request in flight, at least), and
whether every ``GET /ready`` sent meanwhile, one at a time, answered 200.

    .venv/bin/python benchmarks/soak.py                       # 60 s at 32 connections, then the kill
    .venv/bin/python benchmarks/soak.py --seconds 10 --connections 8 --kill-seconds 5
    .venv/bin/python benchmarks/soak.py --load python         # the built-in load loop even if wrk is installed

The server, the load generators and the model choice are those of ``serving.py``
(wrk when installed, else the built-in loop; models/ if trained, else a demo model).
All traffic goes to 127.0.0.1 and every phase stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving import Server, choose_model, probe, record_bodies, run_clients, run_wrk, wrk_script  # benchmarks/

from ccfraud import artifacts, synthetic

#: Seconds between two RSS samples of the workers.
SAMPLE_EVERY = 0.5
#: Seconds between two /ready probes (each waits for its answer first) during the kill phase.
PROBE_EVERY = 0.05
#: Cap on the built-in loop's counted requests: far above what a 2-core machine serves in a run.
MAX_REQUESTS = 10_000_000


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (VmRSS, /proc), or None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None  # a zombie has no memory left


class RssSampler:
    """Samples the RSS of every pid ``pids()`` names, every ``every`` seconds, in a thread, until stopped."""

    def __init__(self, pids: Callable[[], set[int]], every: float = SAMPLE_EVERY):
        self.pids = pids
        self.every = every
        self.samples: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            for pid in self.pids():
                if (rss := rss_mb(pid)) is not None:
                    self.samples.setdefault(pid, []).append(rss)
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[int, dict[str, float]]:
        """Per pid: RSS at the first sample, the largest and at the last sample (MB), and how many samples."""
        return {pid: {"start_mb": values[0], "max_mb": max(values), "end_mb": values[-1], "samples": len(values)}
                for pid, values in self.samples.items()}


class Load:
    """Single-record load on the server for a fixed time: wrk if given, else the built-in loop."""

    def __init__(self, port: int, bodies: list[bytes], connections: int, wrk: str | None, script: Path):
        self.port, self.bodies, self.connections, self.wrk, self.script = port, bodies, connections, wrk, script

    def run(self, seconds: float, warmup: bool = True) -> dict:
        """Load for ``seconds`` (after a warm-up if ``warmup``); failed requests are counted, not fatal."""
        if self.wrk:
            return run_wrk(self.wrk, self.port, self.script, self.connections, seconds, warmup=warmup,
                           count_errors=True)
        return run_clients(self.port, self.bodies, self.connections, seconds, MAX_REQUESTS,
                           warmup=0.5 if warmup else 0.0, count_errors=True)


def soak(server: Server, load: Load, seconds: float) -> dict:
    """``seconds`` of load with every worker's RSS sampled throughout."""
    with RssSampler(server.worker_pids) as sampler:
        result = load.run(seconds)
    return {"load": result, "worker_rss": sampler.summary()}


def kill_a_worker(server: Server, load: Load, seconds: float) -> dict:
    """``seconds`` of load with one worker killed a third of the way in; /ready probed from the kill to the end."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(load.run(seconds, warmup=False)), daemon=True)
    workers = server.worker_pids()
    thread.start()
    time.sleep(seconds / 3)
    victim = min(workers)
    killed_at = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    replacement, replaced_after, statuses = None, None, []
    while thread.is_alive():
        try:
            statuses.append(probe(server.port, "/ready"))
        except OSError as exc:
            statuses.append(type(exc).__name__)
        if replacement is None and (new := server.worker_pids() - workers):
            replacement, replaced_after = min(new), time.perf_counter() - killed_at
        time.sleep(PROBE_EVERY)
    thread.join()
    if not outcome:
        raise RuntimeError("the load generator failed during the kill phase (see above)")
    return {"victim": victim, "replacement": replacement, "replaced_after_s": replaced_after,
            "workers_after": sorted(server.worker_pids()), "load": outcome,
            "ready_probes": len(statuses), "ready_200": statuses.count(200),
            "ready_failures": sorted({str(status) for status in statuses if status != 200})}


def wait_for_workers(server: Server, count: int, timeout: float = 60.0) -> set[int]:
    """The workers' pids once ``count`` of them run (the second may still be forking when /ready first answers)."""
    deadline = time.monotonic() + timeout
    while len(pids := server.worker_pids()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pids)} workers after {timeout:.0f} s, expected {count}:\n{server.output()}")
        time.sleep(0.1)
    return pids


def report(results: dict) -> None:
    """Print the figures, one line per fact."""
    soaked, load = results["soak"], results["soak"]["load"]
    print(f"soak: {results['seconds']:g} s, {results['connections']} connections, {results['load_generator']}: "
          f"{load['throughput_rps']:,.0f} req/s   p50 {load['p50_ms']:.2f} ms   p99 {load['p99_ms']:.2f} ms   "
          f"max {load['max_ms']:.1f} ms   errors {load['errors']}   ({load['requests']:,} requests)")
    for pid, rss in sorted(soaked["worker_rss"].items()):
        print(f"  worker {pid} RSS: start {rss['start_mb']:.1f} MB   max {rss['max_mb']:.1f} MB   "
              f"end {rss['end_mb']:.1f} MB   ({rss['samples']} samples)")
    kill = results.get("kill")
    if kill is None:
        return
    replaced = (f"replaced by worker {kill['replacement']} after {kill['replaced_after_s'] * 1e3:.0f} ms"
                if kill["replacement"] else "NOT replaced")
    print(f"kill -9 worker {kill['victim']} under load ({results['kill_seconds']:g} s, "
          f"{results['connections']} connections): {replaced}; workers now {kill['workers_after']}")
    print(f"  requests failed: {kill['load']['errors']} of {kill['load']['requests'] + kill['load']['errors']:,}   "
          f"({kill['load']['throughput_rps']:,.0f} req/s over the phase)")
    verdict = "all 200" if kill["ready_200"] == kill["ready_probes"] else f"NOT all 200: {kill['ready_failures']}"
    print(f"  GET /ready from the kill to the end: {kill['ready_200']} of {kill['ready_probes']} answered 200 "
          f"({verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: models/ if it holds a model, else a small demo model)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the soak (default 60)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--kill-seconds", type=float, default=10.0,
                        help="duration of the load around the worker kill (default 10; 0 skips the kill)")
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk, the built-in Python loop, or auto (wrk when on PATH; default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.connections < 1 or args.kill_seconds < 0:
        parser.error("--seconds and --connections must be positive, --kill-seconds not negative")
    wrk = shutil.which("wrk") if args.load != "python" else None
    if args.load == "wrk" and wrk is None:
        parser.error("--load wrk: wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)")

    with tempfile.TemporaryDirectory(prefix="ccfraud-soak-") as tmp:
        model_dir = choose_model(args.model, Path(tmp))
        loaded = artifacts.load_model(model_dir)
        bodies = record_bodies(synthetic.generate(rows=2000, frauds=20, seed=123))
        script = Path(tmp) / "predict.lua"
        script.write_text(wrk_script(bodies))
        print(f"[soak] model {loaded.version} from {model_dir} ({loaded.metadata.get('candidate', 'model')}); "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
        server = Server(Path(model_dir).resolve())
        try:
            server.wait_ready()
            wait_for_workers(server, int(os.environ.get("WEB_CONCURRENCY", "2")))
            load = Load(server.port, bodies, args.connections, wrk, script)
            results = {"model_version": loaded.version, "load_generator": "wrk" if wrk else "python",
                       "seconds": args.seconds, "connections": args.connections, "kill_seconds": args.kill_seconds,
                       "soak": soak(server, load, args.seconds)}
            if args.kill_seconds:
                results["kill"] = kill_a_worker(server, load, args.kill_seconds)
        finally:
            server.stop()

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
