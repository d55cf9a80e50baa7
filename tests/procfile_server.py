"""The Procfile's web command, run for real on 127.0.0.1: one helper for every test that needs the real server.

The command is read from the Procfile (as Heroku and ``make serve`` do) and only
changed to listen on 127.0.0.1, on a port the OS picks, instead of every interface.
Extracted from tests/test_serving_procfile.py so that the schemathesis test starts the
same server the same way.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 90.0


def web_command() -> str:
    """The Procfile's ``web:`` command, as written."""
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
    assert len(lines) == 1, "the Procfile needs exactly one web: line"
    return lines[0].removeprefix("web:").strip()


#: gunicorn's line naming the address it bound and the master's pid.
LISTENING = re.compile(rf"Listening at: http://{re.escape(LOOPBACK)}:(\d+) \((\d+)\)")


def listening(log_path: Path) -> tuple[int, int] | None:
    """(port, master pid) from gunicorn's log once it has bound its socket, else None."""
    found = LISTENING.search(log_path.read_text(errors="replace"))
    return (int(found[1]), int(found[2])) if found else None


#: The Procfile's default number of workers (``WEB_CONCURRENCY`` unset).
WORKERS = 2


def workers_ready(log_path: Path) -> int:
    """How many workers have said they are ready (``gunicorn_conf.post_worker_init``), replacements included."""
    from ccfraud.serving.gunicorn_conf import WORKER_READY

    return log_path.read_text(errors="replace").count(WORKER_READY)


def get(port: int, path: str, body: bytes | None = None, content_type: str = "application/json",
        timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``path`` on the local server, or POST ``body`` to it: (status, the decoded JSON answer)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        connection.request("POST" if body is not None else "GET", path, body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@contextmanager
def procfile_server(model_location: Path, tmp_path: Path,
                    env: Mapping[str, str] | None = None) -> Iterator[tuple[int, Path]]:
    """Run the web command in its own process group; yields (port, log file) once it listens.

    The server binds port 0, so the OS picks a free port as it binds (no race with tests
    running in parallel), and the port is read from gunicorn's log. ``env`` adds settings
    (``CCFRAUD_READ_TIMEOUT``, ...) to the server's environment.
    """
    # exec: the shell becomes gunicorn, so the signal and the exit code are gunicorn's (as on Heroku).
    command = "exec " + web_command().replace("0.0.0.0", LOOPBACK)
    env = dict(os.environ, **(env or {}), PORT="0", CCFRAUD_MODEL=str(model_location))
    env.pop("WEB_CONCURRENCY", None)  # the Procfile's default number of workers
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.NamedTemporaryFile(dir=tmp_path, prefix="gunicorn-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        process = subprocess.Popen(["sh", "-c", command], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            # Every worker ready (a SIGTERM before that is lost, and stopping waits the whole graceful timeout),
            # and one of them answering.
            if (address := listening(log_path)) is not None and workers_ready(log_path) >= WORKERS:
                port = address[0]
                try:
                    get(port, "/health")
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer within {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the master stops its workers gracefully
        try:
            exit_code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"server did not stop on SIGTERM:\n{log_path.read_text()[-3000:]}")
    assert exit_code == 0, f"server exited with {exit_code} on SIGTERM:\n{log_path.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small logistic-regression model directory for the server to load (module-scoped: trained once per file)."""
    from ccfraud import artifacts, modeling, schema, synthetic

    data = synthetic.generate(rows=5000, frauds=100, seed=0)
    model = modeling.make_pipeline("logreg", "class_weight").fit(data[schema.FEATURES], data[schema.TARGET])
    out = tmp_path_factory.mktemp("procfile-model")
    artifacts.save_model(model, out, threshold=0.5)
    return out
