"""Benchmark ``ccfraud score``: rows per second, and the peak memory of each worker and of the client.

Generates N synthetic creditcard rows as Parquet files (one per 284,807 rows, the real
file's size, each a partition), scores them on a LocalCluster of single-threaded workers
with a memory limit, and prints the figures.

    .venv/bin/python benchmarks/batch_scoring.py                      # 10x the real file: 2,848,070 rows, local disk
    .venv/bin/python benchmarks/batch_scoring.py --rows 28480700      # 100x
    .venv/bin/python benchmarks/batch_scoring.py --s3                 # input and output on a local SeaweedFS server
    .venv/bin/python benchmarks/batch_scoring.py --model models --memory-limit 1GB --json out.json
    . .s3-data/s3.env; .venv/bin/python benchmarks/batch_scoring.py --input s3://ccfraud/synthetic-100x/ \
        --endpoint-url http://127.0.0.1:8333 --candidate logreg      # a dataset already in a bucket

The model is ``--model``, else models/ if the pipeline has trained one, else one trained here
the way the pipeline's candidate ``--candidate`` is: a 200-tree random forest (the default,
and the slowest candidate to score) or a logistic regression. ``--input`` scores an existing
dataset instead (a lake dataset or Parquet files, local or ``s3://`` with ``--endpoint-url``;
credentials from the environment), written to ``--output`` (default: beside it in the same
bucket, or a temporary directory) and removed afterwards. Data and model are made in child processes, so the client's
peak memory is the scoring job's. A tiny job warms the workers up first (imports, the
first scorer), so the rate is the steady one; the job's time includes loading the model,
planning, scoring, writing and the commit.

Memory: each worker's resident set is sampled every ``--sample-seconds`` (``client.run``
with psutil), and each worker's kernel high-water mark (``ru_maxrss``) is read at the end;
the client's both ways too. With a LocalCluster the scheduler runs in the client process,
so the client figure includes it. The machine's load average is printed alongside: other
work on the same cores makes every figure worse.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dask.utils
import psutil

from ccfraud import artifacts, batch, compute, lake, modeling, schema, synthetic

ROOT = Path(__file__).resolve().parents[1]
REAL_ROWS = synthetic.DEFAULT_ROWS
REAL_FRAUDS = synthetic.DEFAULT_FRAUDS
MiB = 2**20


def _train(out_dir: str, candidate: str = "random_forest") -> str:
    """The pipeline's candidate on one real-sized synthetic file: a forest (undersampled 1:10, 200 trees) or logreg."""
    data = synthetic.generate(rows=REAL_ROWS, frauds=REAL_FRAUDS, seed=0)
    if candidate == "random_forest":
        model = modeling.make_pipeline("random_forest", "undersample", sampling_ratio=0.1, n_estimators=200)
    else:
        model = modeling.make_pipeline("logreg", "class_weight", C=1.0)
    model.fit(data[schema.FEATURES], data[schema.TARGET])
    artifacts.save_model(model, Path(out_dir), threshold=0.5)
    return out_dir


def choose_model(model_dir: Path | None, scratch: Path, candidate: str = "random_forest") -> Path:
    """``model_dir`` if given, else models/ if the pipeline trained one, else ``candidate`` trained in a child."""
    if model_dir is not None:
        return model_dir
    if (ROOT / "models" / artifacts.METADATA_FILE).exists():
        return ROOT / "models"
    print(f"[bench] models/ has no model: training the pipeline's {candidate} candidate", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return Path(pool.submit(_train, str(scratch / "model"), candidate).result())


def _write_partition(spec: synthetic.Spec, index: int, directory: str) -> int:
    frame = synthetic.generate_partition(spec, index)
    frame.to_parquet(Path(directory) / f"part-{index:05d}.parquet", index=False)
    return len(frame)


def generate_data(rows: int, directory: Path, partition_rows: int = REAL_ROWS, processes: int = 2) -> int:
    """``rows`` synthetic transactions as Parquet files of ``partition_rows`` rows, in child processes."""
    directory.mkdir(parents=True, exist_ok=True)
    partitions = max(1, math.ceil(rows / partition_rows))
    frauds = max(1, round(rows * REAL_FRAUDS / REAL_ROWS))
    spec = synthetic.Spec(rows=rows, frauds=frauds, seed=1, partitions=partitions)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        written = sum(pool.map(_write_partition, [spec] * partitions, range(partitions), [str(directory)] * partitions))
    return written


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _peak_rss() -> int:
    """This process's resident-set high-water mark, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemorySampler(threading.Thread):
    """Sample the workers' and this process's RSS until stopped; keep the maximum of each."""

    def __init__(self, client: Any, every: float) -> None:
        super().__init__(daemon=True, name="memory-sampler")
        self.client, self.every = client, every
        self.workers: dict[str, int] = {}
        self.client_peak = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        for address, rss in self.client.run(_rss, on_error="ignore").items():
            if isinstance(rss, int):
                self.workers[address] = max(self.workers.get(address, 0), rss)
        self.client_peak = max(self.client_peak, _rss())

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()


def run(client: Any, model_dir: Path, source: str, target: str, *, endpoint_url: str | None = None,
        sample_seconds: float = 0.25, warm_up: str | None = None) -> dict[str, Any]:
    """Score ``source`` into ``target`` on ``client``'s cluster; the figures as a dict."""
    def progress(line: str) -> None:
        print(f"[ccfraud] {line}", file=sys.stderr, flush=True)

    if warm_up is not None:
        batch.score(str(model_dir), warm_up, f"{target.rstrip('/')}-warm-up", endpoint_url=endpoint_url,
                    client=client, progress=lambda line: None)
    pids_before = client.run(os.getpid)
    cpu_before = client.run(_cpu_seconds)
    client_cpu_before = _cpu_seconds()
    sampler = MemorySampler(client, sample_seconds)
    sampler.start()
    started = time.perf_counter()
    try:
        result = batch.score(str(model_dir), source, target, endpoint_url=endpoint_url, client=client,
                             progress=progress)
    finally:
        sampler.stop()
    seconds = time.perf_counter() - started
    high_water = client.run(_peak_rss, on_error="ignore")
    # CPU seconds the job took on the workers that lived through it: a figure other load on the machine hardly moves.
    worker_cpu = sum(seconds - cpu_before[address] for address, seconds in client.run(_cpu_seconds).items()
                     if address in cpu_before)
    restarted = sorted(set(pids_before.values()) - set(client.run(os.getpid).values()))
    return {
        "rows": result.rows,
        "partitions": result.partitions,
        "seconds": round(seconds, 2),
        "rows_per_second": round(result.rows / seconds),
        "worker_cpu_seconds": round(worker_cpu, 1),
        "rows_per_worker_cpu_second": round(result.rows / worker_cpu) if worker_cpu > 0 else None,
        "client_cpu_seconds": round(_cpu_seconds() - client_cpu_before, 1),
        "workers": {address: {"sampled_peak_mib": round(sampler.workers.get(address, 0) / MiB),
                              "high_water_mib": round(high_water[address] / MiB) if address in high_water else None}
                    for address in sorted(set(sampler.workers) | set(high_water))},
        "workers_restarted": len(restarted),
        "client": {"sampled_peak_mib": round(sampler.client_peak / MiB), "high_water_mib": round(_peak_rss() / MiB)},
        "model_version": result.model_version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10 * REAL_ROWS, help="rows to score (default: 10x the real file)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: models/, else trained)")
    parser.add_argument("--candidate", choices=("random_forest", "logreg"), default="random_forest",
                        help="what to train when there is no model (default: random_forest)")
    parser.add_argument("--input", help="score this dataset (local or s3://) instead of generating one")
    parser.add_argument("--output", help="where the scores go with --input (removed afterwards)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint for --input/--output (else AWS_ENDPOINT_URL)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GB", help="per worker (default: 2GB)")
    parser.add_argument("--s3", action="store_true", help="read and write on a local SeaweedFS S3 server")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to generate the Parquet input (kept, and reused when it holds the same rows)")
    parser.add_argument("--sample-seconds", type=float, default=0.25)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="ccfraud-batch-bench-"))
    server = None
    try:
        model_dir = choose_model(args.model, scratch, args.candidate)
        data_dir = args.data_dir or scratch / "input"
        marker = data_dir / "_rows"
        if args.input is None and not (marker.exists() and marker.read_text() == str(args.rows)):
            shutil.rmtree(data_dir, ignore_errors=True)
            started = time.perf_counter()
            generate_data(args.rows, data_dir)
            marker.write_text(str(args.rows))
            print(f"[bench] generated {args.rows:,} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        warm_dir = scratch / "warm-up"
        generate_data(1000, warm_dir, processes=1)
        source, target, warm_up, endpoint = str(data_dir), str(scratch / "scores"), str(warm_dir), None
        if args.input:
            endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
            source = args.input
            default = f"{args.input.rstrip('/')}-scores-{os.getpid()}" if lake.is_remote(args.input) else target
            target = args.output or default
        elif args.s3:
            from ccfraud import s3, s3_server

            server = s3_server.start_server(scratch / "s3")
            os.environ.update(server.env())  # before the cluster starts: the workers inherit the credentials
            endpoint = server.endpoint_url
            base = f"s3://{server.bucket}/bench"
            s3.upload_directory(data_dir, f"{base}/input/", endpoint_url=endpoint, progress=False)
            s3.upload_directory(warm_dir, f"{base}/warm-up/", endpoint_url=endpoint, progress=False)
            source, target, warm_up = f"{base}/input/", f"{base}/scores", f"{base}/warm-up/"
        load_before = os.getloadavg()
        started = time.perf_counter()
        cluster = {"n_workers": args.workers, "threads_per_worker": 1, "memory_limit": args.memory_limit}
        with compute.dask_client(**cluster) as client:
            client.wait_for_workers(args.workers)
            cluster_seconds = time.perf_counter() - started
            figures = run(client, model_dir, source, target, endpoint_url=endpoint,
                          sample_seconds=args.sample_seconds, warm_up=warm_up)
        options = lake.storage_options(target, endpoint)
        lake.verify(target, options)
        if args.input and lake.is_remote(target):
            import fsspec.core

            fs, root = fsspec.core.url_to_fs(target, **options)
            fs.rm(root, recursive=True)
        memory_limit = dask.utils.parse_bytes(args.memory_limit)
        figures["workers_over_limit"] = sorted(
            address for address, memory in figures["workers"].items()
            if max(memory["sampled_peak_mib"], memory["high_water_mib"] or 0) * MiB > memory_limit)
        storage = "s3" if args.s3 or str(source).startswith("s3://") else "local disk"
        figures.update({"storage": storage, "model": str(model_dir),
                        "memory_limit": args.memory_limit, "n_workers": args.workers,
                        "cluster_start_seconds": round(cluster_seconds, 1), "cpus": os.cpu_count(),
                        "load_average_before": [round(x, 2) for x in load_before],
                        "load_average_after": [round(x, 2) for x in os.getloadavg()]})
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nscored {figures['rows']:,} rows in {figures['partitions']} partitions on {args.workers} workers "
          f"({args.memory_limit} each, {figures['storage']}): {figures['seconds']} s, "
          f"{figures['rows_per_second']:,} rows/s")
    print(f"  CPU: {figures['worker_cpu_seconds']} s on the workers ({figures['rows_per_worker_cpu_second']:,} rows "
          f"per worker-CPU-second), {figures['client_cpu_seconds']} s on the client")
    for address, memory in figures["workers"].items():
        print(f"  worker {address}: peak RSS {memory['sampled_peak_mib']} MiB sampled, "
              f"{memory['high_water_mib']} MiB high-water")
    print(f"  client (and scheduler): peak RSS {figures['client']['sampled_peak_mib']} MiB sampled, "
          f"{figures['client']['high_water_mib']} MiB high-water")
    print(f"  workers over their {args.memory_limit} limit: {len(figures['workers_over_limit'])}")
    print(f"  workers restarted: {figures['workers_restarted']}; load average before/after: "
          f"{figures['load_average_before']} / {figures['load_average_after']} on {figures['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
