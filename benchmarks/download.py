"""Benchmark the download stage's conversion: rows per second and peak memory, CSV and synthetic.

1. CSV: writes the synthetic dataset ``--source`` as one CSV file (partition by partition,
   never whole in memory), then converts it to a lake dataset with ``ingest.download`` in a
   child process and prints the rows per second and that process's peak resident memory,
   next to the stage as it was (``sources.fetch_dataset``: the whole file read at once).
2. Synthetic on the cluster (``--s3``): starts a local SeaweedFS S3 server and a LocalCluster
   and generates ``--source`` as Parquet partitions straight into a bucket prefix from the
   workers (``ingest.write_synthetic``), printing rows per second and the peak memory of the
   client process.

    .venv/bin/python benchmarks/download.py                       # 10x: 2,848,070 rows
    .venv/bin/python benchmarks/download.py --s3                  # ... and synthetic into S3 on the cluster
    .venv/bin/python benchmarks/download.py --s3 --skip-csv --source 'synthetic://?rows=28480700&frauds=49200'

Goal: the CSV conversion's peak memory stays near one partition's worth (``--partition-rows``,
about 100 MB at 400,000 rows), whatever the file's size; the one-shot read grows with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = "synthetic://?rows=2848070&frauds=4920&seed=3"

#: Run in a child process, so that its peak memory is its own: convert, or fetch as the stage used to.
CHILD = r"""
import json, resource, sys, time
mode, csv, target, partition_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
started = time.perf_counter()
if mode == "convert":
    from ccfraud import ingest
    rows = ingest.download(csv, target, partition_rows=partition_rows).rows
else:  # the stage as it was: copy, md5, one-shot read, validate, count duplicates
    from ccfraud import sources
    rows = sources.fetch_dataset(csv, target + ".csv").rows
seconds = time.perf_counter() - started
print(json.dumps({"rows": rows, "seconds": seconds,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_csv(source: str, path: Path) -> int:
    """Write the synthetic dataset as one CSV file, one partition at a time; return its rows."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from ccfraud import synthetic

    spec = synthetic.spec_from_uri(source)
    rows = 0
    with open(path, "wb") as handle:
        for index, frame in enumerate(synthetic.iter_partitions(spec)):
            options = pa_csv.WriteOptions(include_header=index == 0)
            pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), handle, write_options=options)
            rows += len(frame)
    return rows


def run_child(mode: str, csv: Path, target: Path, partition_rows: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(csv), str(target), str(partition_rows)],
                            capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_csv(source: str, partition_rows: int, workdir: Path) -> None:
    csv = workdir / "creditcard.csv"
    started = time.perf_counter()
    rows = write_csv(source, csv)
    print(f"wrote {csv.name}: {rows:,} rows, {csv.stat().st_size / 2**20:,.0f} MiB "
          f"in {time.perf_counter() - started:.1f} s")
    converted = run_child("convert", csv, workdir / "raw", partition_rows)
    print(f"CSV -> lake dataset ({partition_rows:,} rows per part): {converted['seconds']:.1f} s, "
          f"{converted['rows'] / converted['seconds']:,.0f} rows/s, peak RSS {converted['peak_mib']:,.0f} MiB")
    one_shot = run_child("fetch", csv, workdir / "copy", partition_rows)
    print(f"for comparison, the stage as it was (sources.fetch_dataset: a copy, md5, one read of the whole "
          f"file, validation): {one_shot['seconds']:.1f} s, "
          f"{one_shot['rows'] / one_shot['seconds']:,.0f} rows/s, peak RSS {one_shot['peak_mib']:,.0f} MiB")


def bench_s3(source: str, partition_rows: int, workdir: Path) -> None:
    from ccfraud import compute, ingest, lake
    from ccfraud import s3_server as server_lib

    server = server_lib.start_server(workdir / "s3")
    try:
        os.environ.update(server.env())  # the workers started below inherit the credentials
        target = f"s3://{server.bucket}/bench/creditcard"
        options = lake.storage_options(target, server.endpoint_url)
        with compute.dask_client() as client:
            workers = len(client.scheduler_info()["workers"])
            started = time.perf_counter()
            summary = ingest.write_synthetic(source, target, partition_rows=partition_rows, options=options,
                                             client=client)
            seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"synthetic -> S3 on {workers} local worker(s): {summary.rows:,} rows in {summary.parts} parts, "
              f"{summary.size_bytes / 2**20:,.0f} MiB, {seconds:.1f} s, {summary.rows / seconds:,.0f} rows/s; "
              f"client peak RSS {peak:,.0f} MiB")
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=DEFAULT_SOURCE, help=f"a synthetic:// URI (default: {DEFAULT_SOURCE})")
    parser.add_argument("--partition-rows", type=int, default=400_000, help="rows per part (default: 400000)")
    parser.add_argument("--s3", action="store_true", help="also generate the data into a local S3 server")
    parser.add_argument("--skip-csv", action="store_true", help="skip the CSV conversion")
    args = parser.parse_args()
    print(f"machine: {len(os.sched_getaffinity(0))} CPU(s), load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="ccfraud-bench-download-") as tmp:
        if not args.skip_csv:
            bench_csv(args.source, args.partition_rows, Path(tmp))
        if args.s3:
            bench_s3(args.source, args.partition_rows, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
