"""Benchmark: the full default pipeline (all three stages, HTML included) from scratch.

Copies the pipeline definition into a temporary git repository, runs `dvc repro`
there with the default params.yaml (284,807 synthetic rows unless you pass
--source) and prints the wall time of each stage, the total, and the peak memory
(largest resident set of any process in the run). Goals: 90 s and 2 GB on 2 cores.

    .venv/bin/python benchmarks/pipeline.py [--source URI] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".gitignore")


def prepare(dest: Path, source: str | None) -> None:
    for name in FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    for name in ("notebooks", "lib"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if source:
        import yaml

        params = yaml.safe_load((dest / "params.yaml").read_text())
        params["download"]["source"] = source
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "benchmark"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key, value in (("GIT_AUTHOR_NAME", "bench"), ("GIT_AUTHOR_EMAIL", "bench@example.invalid"),
                       ("GIT_COMMITTER_NAME", "bench"), ("GIT_COMMITTER_EMAIL", "bench@example.invalid")):
        env.setdefault(key, value)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="download.source to use instead of params.yaml's")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ccfraud-bench-"))
    try:
        prepare(workdir, args.source)
        started = time.perf_counter()
        stage_started: dict[str, float] = {}
        stage_seconds: dict[str, float] = {}
        process = subprocess.Popen(["dvc", "repro"], cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        current = None
        for line in process.stdout:
            match = re.match(r"Running stage '(\w+)'", line)
            if match:
                now = time.perf_counter()
                if current:
                    stage_seconds[current] = now - stage_started[current]
                current = match.group(1)
                stage_started[current] = now
        code = process.wait()
        total = time.perf_counter() - started
        if current:
            stage_seconds[current] = time.perf_counter() - stage_started[current]
        if code:
            print(f"dvc repro failed with exit code {code}; see {workdir}", file=sys.stderr)
            return code
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        for name, seconds in stage_seconds.items():
            print(f"stage {name:<15} {seconds:6.1f} s")
        print(f"total (dvc repro)     {total:6.1f} s")
        print(f"peak memory (largest process RSS) {peak_mib:,.0f} MiB")
        print(f"cores: {os.cpu_count()}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
