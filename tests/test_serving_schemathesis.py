"""An outside fuzzer: schemathesis, with all its checks, against the Procfile's server and its own OpenAPI document.

Our own fuzz test (test_serving_fuzz.py) knows the rules it tests; schemathesis knows
only ``GET /openapi.json``. It derives requests from the document, valid ones and ones
that break a rule of it (wrong types, missing fields, values past a bound, malformed
bodies), sends them to the real gunicorn command, and checks every answer against the
document: no 5xx, only documented status codes and content types, bodies matching their
schemas, valid requests accepted and invalid ones refused. Any disagreement between the
document and the server fails the test.

The run is deterministic (``--generation-deterministic``: Hypothesis derandomized, no
example database, nothing kept between runs since it works in a fresh directory), and
the test reads schemathesis' JSON report, so it counts the cases it claims instead of
trusting a number of examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from procfile_server import LOOPBACK, get, procfile_server

#: At least this many requests in all: the coverage phase's boundary cases (about 680) plus fuzzing.
MIN_CASES = 1000
#: Hypothesis examples per operation in the fuzzing phase.
MAX_EXAMPLES = 330
#: Only a hung run trips this; a normal one takes well under a minute.
RUN_TIMEOUT = 600
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def run_schemathesis(port: int, workdir: Path) -> tuple[dict, str]:
    """``schemathesis run`` against the server's document: (its JSON report, its console output)."""
    report_path = workdir / "report.json"
    command = [
        str(SCHEMATHESIS), "run", f"http://{LOOPBACK}:{port}/openapi.json",
        "--checks", "all",
        "--mode", "all",  # valid and invalid requests
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", "30",
        "--report", "json", "--report-json-path", str(report_path),
        "--no-color",
    ]
    # Its own defaults only: no config file (an empty directory), and no hooks or proxy from our environment.
    env = {key: value for key, value in os.environ.items()
           if not key.upper().startswith(("SCHEMATHESIS_", "HYPOTHESIS_")) and "PROXY" not in key.upper()}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = result.stdout + result.stderr
    assert report_path.exists(), f"schemathesis wrote no report (exit {result.returncode}):\n{output[-5000:]}"
    report = json.loads(report_path.read_text())
    assert report["exit_code"] == result.returncode, output[-5000:]
    return report, output


def test_schemathesis_finds_no_disagreement_between_the_document_and_the_procfile_server(model_dir, tmp_path):
    workdir = tmp_path / "schemathesis"
    workdir.mkdir()
    with procfile_server(model_dir, tmp_path) as (port, _):
        status, document = get(port, "/openapi.json")
        assert status == 200
        report, output = run_schemathesis(port, workdir)
    where = f"\n{output[-8000:]}"
    assert report["failures"] == [], where
    assert report["errors"] == [], where
    assert {name: found for name, found in report["warnings"].items() if found} == {}, where
    assert report["test_cases"]["with_failures"] == report["test_cases"]["errored"] == 0, where
    assert report["complete"] and report["stop_reason"] == "completed", where
    assert report["exit_code"] == 0, where
    # Every operation ran, but the one schemathesis read the document from, and the cases add up.
    operations = {f"{method.upper()} {path}" for path, methods in document["paths"].items() for method in methods}
    assert report["operations"]["tested"] == report["operations"]["total"] == len(operations - {"GET /openapi.json"})
    assert {name: phase["status"] for name, phase in report["phases"].items() if name in ("coverage", "fuzzing")} \
        == {"coverage": "success", "fuzzing": "success"}, where
    assert report["test_cases"]["generated"] >= MIN_CASES, where
