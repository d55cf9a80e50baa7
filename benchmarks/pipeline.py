"""Benchmark: the whole pipeline from scratch, stage by stage, with either engine.

Copies the pipeline definition (dvc.yaml, params.yaml, notebooks/, lib/) into a temporary git
repository, runs `dvc repro` there and prints, for every stage of dvc.yaml (whatever stages it
has), its wall time and peak memory: the client (the stage's notebook kernel, which holds
what the stage collects), the stage's whole process tree without the Dask workers (the
kernel, `ccfraud stage`, joblib's processes), and each Dask worker process. Memory is the
resident set of every process under `dvc repro`, sampled with psutil every
``--sample-seconds``. The machine's load average is printed beside the times: other work on
the same cores inflates them.

    .venv/bin/python benchmarks/pipeline.py                                   # default params.yaml
    .venv/bin/python benchmarks/pipeline.py --engine dask --source 'synthetic://?rows=2848070&frauds=4920&seed=3'
    .venv/bin/python benchmarks/pipeline.py --engine dask --source s3://ccfraud/synthetic-100x/ \\
        --endpoint-url http://127.0.0.1:8333 --until eda_preprocess     # credentials from the environment

``--set SECTION.KEY=VALUE`` overrides one parameter (VALUE is YAML). The copy imports its own
``lib/`` (PYTHONPATH), not the checkout's, so run it from a committed worktree to measure a
revision. DVC's cache links outputs (hardlinks) instead of copying them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".gitignore")
MiB = 2**20


def prepare(dest: Path, overrides: dict[str, Any]) -> list[str]:
    """Copy the pipeline into ``dest``, apply ``overrides`` ({"section.key": value}), commit; the stage names."""
    for name in FILES:
        if (ROOT / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for name in ("notebooks", "lib"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        params.setdefault(section, {})[key] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "benchmark"],
                ["dvc", "config", "--local", "cache.type", "hardlink,copy"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, stdout=subprocess.DEVNULL)
    return list(yaml.safe_load((dest / "dvc.yaml").read_text())["stages"])


def _env(dest: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(dest / "lib")  # the copy's code, not the checkout's editable install
    for key, value in (("GIT_AUTHOR_NAME", "bench"), ("GIT_AUTHOR_EMAIL", "bench@example.invalid"),
                       ("GIT_COMMITTER_NAME", "bench"), ("GIT_COMMITTER_EMAIL", "bench@example.invalid")):
        env.setdefault(key, value)
    return env


def kind_of(cmdline: list[str]) -> str:
    """``worker`` for a Dask worker process (spawned by its nanny), ``client`` for a notebook kernel, else ``other``."""
    text = " ".join(cmdline)
    if "ipykernel_launcher" in text:
        return "client"
    if "multiprocessing.spawn" in text or "multiprocessing.forkserver" in text:
        return "worker"  # joblib's loky processes and the resource tracker are started otherwise
    return "other"


@dataclass
class StageMemory:
    """Peaks of one stage: the kernel, the stage's tree without workers, each worker (by pid), and the load."""

    client: int = 0
    tree: int = 0
    largest: int = 0
    workers: dict[int, int] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)


class Sampler(threading.Thread):
    """Every ``every`` seconds, the RSS of every process under ``root``, credited to the stage running then."""

    def __init__(self, root: int, every: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root, self.every = psutil.Process(root), every
        self.stage: str | None = None
        self.stages: dict[str, StageMemory] = {}
        self.stopped = threading.Event()
        self._kinds: dict[int, str] = {}

    def sample(self) -> None:
        stage = self.stage
        if stage is None:
            return
        memory = self.stages.setdefault(stage, StageMemory())
        tree = client = 0
        try:
            processes = self.root.children(recursive=True)
        except psutil.Error:
            return
        for process in processes:
            try:
                if process.pid not in self._kinds:
                    self._kinds[process.pid] = kind_of(process.cmdline())
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            kind = self._kinds[process.pid]
            memory.largest = max(memory.largest, rss)
            if kind == "worker":
                memory.workers[process.pid] = max(memory.workers.get(process.pid, 0), rss)
                continue
            tree += rss
            if kind == "client":
                client = max(client, rss)
        memory.client = max(memory.client, client)
        memory.tree = max(memory.tree, tree)
        memory.load.append(os.getloadavg()[0])

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()


def run_pipeline(workdir: Path, stages: list[str], every: float,
                 until: str | None = None) -> tuple[int, float, dict[str, float], Sampler]:
    """`dvc repro [until]` in ``workdir``: exit code, total seconds, seconds per stage, and the memory sampler."""
    started = time.perf_counter()
    stage_started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    process = subprocess.Popen(["dvc", "repro", *([until] if until else [])], cwd=workdir, env=_env(workdir),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid, every)
    sampler.start()
    log = (workdir / "dvc-repro.log").open("w", buffering=1)  # line by line: follow it with tail -f
    for line in process.stdout:
        log.write(line)
        match = re.match(r"Running stage '([\w-]+)'", line)
        if match and match.group(1) in stages:
            now = time.perf_counter()
            if sampler.stage:
                seconds[sampler.stage] = now - stage_started[sampler.stage]
            sampler.stage = match.group(1)
            stage_started[sampler.stage] = now
            print(f"[bench] {time.strftime('%H:%M:%S')} stage {sampler.stage} (load average "
                  f"{os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        elif line.startswith("[") and "] step " in line:
            print(f"[bench]   {line.rstrip()}", file=sys.stderr, flush=True)
    code = process.wait()
    log.close()
    total = time.perf_counter() - started
    if sampler.stage:
        seconds[sampler.stage] = time.perf_counter() - stage_started[sampler.stage]
    sampler.stopped.set()
    sampler.join()
    return code, total, seconds, sampler


def report(stages: list[str], seconds: dict[str, float], sampler: Sampler, total: float,
           load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict[str, Any]:
    figures: dict[str, Any] = {"stages": {}, "total_seconds": round(total, 1), "cpus": os.cpu_count(),
                               "load_average_before": [round(x, 2) for x in load_before],
                               "load_average_after": [round(x, 2) for x in load_after]}
    print(f"{'stage':<16}{'wall':>9}{'load':>6}{'client':>10}{'stage tree':>12}  Dask workers (peak RSS each)")
    for name in stages:
        if name not in seconds:
            print(f"{name:<16}{'(not run: up to date or failed before it)':>40}")
            continue
        memory = sampler.stages.get(name, StageMemory())
        load = sum(memory.load) / len(memory.load) if memory.load else float("nan")
        workers = [round(rss / MiB) for _, rss in sorted(memory.workers.items())]
        shown = ", ".join(f"{mib:,}" for mib in workers) if workers else "-"
        print(f"{name:<16}{seconds[name]:>7.1f} s{load:>6.1f}{memory.client / MiB:>6,.0f} MiB"
              f"{memory.tree / MiB:>8,.0f} MiB  {shown}{' MiB' if workers else ''}")
        figures["stages"][name] = {"seconds": round(seconds[name], 1), "mean_load_average": round(load, 2),
                                   "client_peak_mib": round(memory.client / MiB),
                                   "stage_tree_peak_mib": round(memory.tree / MiB),
                                   "largest_process_peak_mib": round(memory.largest / MiB),
                                   "worker_peaks_mib": workers}
    largest = max((m.largest for m in sampler.stages.values()), default=0)
    figures["largest_process_peak_mib"] = round(largest / MiB)
    print(f"total (dvc repro) {total:.1f} s; largest process {largest / MiB:,.0f} MiB; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores")
    print("client: the stage's notebook kernel; stage tree: every process of the stage but the Dask workers "
          "(kernel, ccfraud stage, joblib); workers: one figure per worker process (a restarted one is a new figure)")
    return figures


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("pandas", "dask"), help="compute.engine (default: params.yaml's)")
    parser.add_argument("--source", help="download.source to use instead of params.yaml's")
    parser.add_argument("--endpoint-url", help="download.endpoint_url, for an s3:// source on a local server")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a parameter (VALUE is YAML); repeatable")
    parser.add_argument("--until", metavar="STAGE", help="run only STAGE and the stages before it (dvc repro STAGE)")
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.engine:
        overrides["compute.engine"] = args.engine
    if args.source:
        overrides["download.source"] = args.source
    if args.endpoint_url:
        overrides["download.endpoint_url"] = args.endpoint_url
    workdir = Path(tempfile.mkdtemp(prefix="ccfraud-bench-"))
    try:
        stages = prepare(workdir, overrides)
        print(f"[bench] {workdir}: stages {', '.join(stages)}; overrides {overrides}", file=sys.stderr, flush=True)
        load_before = os.getloadavg()
        if args.until and args.until not in stages:
            raise SystemExit(f"--until {args.until}: not a stage of dvc.yaml ({', '.join(stages)})")
        code, total, seconds, sampler = run_pipeline(workdir, stages, args.sample_seconds, args.until)
        if code:
            print(f"dvc repro failed with exit code {code}; see {workdir}/dvc-repro.log", file=sys.stderr)
            args.keep = True
        figures = report(stages, seconds, sampler, total, load_before, os.getloadavg())
        figures.update({"overrides": overrides, "exit_code": code})
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return code
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
