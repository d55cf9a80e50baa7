"""The Procfile's web command, run for real: gunicorn starts, loads the model once, scores, stops.

The command is read from the Procfile (as Heroku and ``make serve`` do) and only
changed to listen on 127.0.0.1, on a port the OS picks, instead of every interface.
Also here: the server hooks the Procfile loads (``ccfraud.serving.gunicorn_conf``),
a worker killed with SIGKILL, which the master replaces while the server stays ready,
/metrics counting every worker's requests, and slow clients, which neither hold the workers nor keep a request open past
``CCFRAUD_READ_TIMEOUT`` (``ccfraud.serving.worker``).
"""

from __future__ import annotations

import gc
import http.client
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import wait_until
from procfile_server import LOOPBACK, get, listening, procfile_server, web_command, workers_ready

from ccfraud import artifacts, modeling, schema, synthetic
from ccfraud.serving import config as serving_config
from ccfraud.serving import create_app, gunicorn_conf
from ccfraud.serving import metrics as serving_metrics
from ccfraud.serving.config import available_cpus


def test_procfile_runs_the_app_factory_with_gunicorn_on_port():
    command = web_command()
    assert command.startswith("gunicorn ")
    assert '"ccfraud.serving:create_app()"' in command
    assert "--bind 0.0.0.0:$PORT" in command
    assert "--preload" in command


def test_procfile_server_loads_once_scores_and_stops(model_dir, tmp_path):
    loaded = artifacts.load_model(model_dir)
    data = synthetic.generate(rows=300, frauds=20, seed=9)
    expected = modeling.fraud_probability(loaded.model, data)
    with procfile_server(model_dir, tmp_path) as (port, log_path):
        assert get(port, "/ready") == (200, {"status": "ready", "model_version": loaded.version})
        row = {name: float(data[name].iloc[0]) for name in schema.FEATURES}
        status, body = get(port, "/predict", json.dumps(row).encode())
        assert status == 200
        assert body["model_version"] == loaded.version
        np.testing.assert_allclose([body["predictions"][0]["fraud_probability"]], expected[:1], rtol=0, atol=1e-12)
        status, body = get(port, "/predict", data.to_csv(index=False).encode(), "text/csv")
        assert status == 200
        np.testing.assert_allclose([p["fraud_probability"] for p in body["predictions"]], expected,
                                   rtol=0, atol=1e-12)
        status, body = get(port, "/predict", b'{"Time": 0}')
        assert status == 400 and "missing column(s)" in body["error"]["message"]
    log = log_path.read_text()
    # --preload: the master loads the model once and the workers inherit it.
    assert log.count(f"serving model {loaded.version}") == 1, log
    assert log.count("Booting worker") >= 2, log
    # The hooks ran: the master froze its heap once before forking, each worker sized Arrow's pool to its CPUs.
    assert log.count("objects out of garbage collection before forking workers") == 1, log
    assert log.count(f"Arrow's thread pool sized to {available_cpus()} threads") >= 2, log


def post_chunked(port: int, body: bytes, content_type: str, chunk: int = 65536):
    """POST with Transfer-Encoding: chunked (no Content-Length), as streaming clients send."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        pieces = (body[i : i + chunk] for i in range(0, len(body), chunk))
        connection.request("POST", "/predict", pieces, {"Content-Type": content_type}, encode_chunked=True)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def forest_dir(tmp_path_factory) -> Path:
    data = synthetic.generate(rows=5000, frauds=100, seed=0)
    model = modeling.make_pipeline("random_forest", "undersample", sampling_ratio=0.1, n_estimators=40)
    model.fit(data[schema.FEATURES], data[schema.TARGET])
    out = tmp_path_factory.mktemp("procfile-forest")
    artifacts.save_model(model, out, threshold=0.5)
    return out


def test_procfile_workers_score_forest_batches_in_threads_after_fork(forest_dir, tmp_path):
    """Big batches run in threads (tree chunks, Arrow's CSV reader) inside the forked workers; chunked bodies too."""
    loaded = artifacts.load_model(forest_dir)
    data = synthetic.generate(rows=2000, frauds=40, seed=11)
    expected = modeling.fraud_probability(loaded.model, data)
    csv_body = data.to_csv(index=False).encode()
    with procfile_server(forest_dir, tmp_path) as (port, log_path):
        for _ in range(3):  # each request on a new connection, to whichever worker accepts it
            status, body = get(port, "/predict", csv_body, "text/csv")
            assert status == 200, body
            np.testing.assert_allclose([p["fraud_probability"] for p in body["predictions"]], expected,
                                       rtol=0, atol=1e-12)
        status, body = post_chunked(port, csv_body, "text/csv")
        assert status == 200, body
        np.testing.assert_allclose([p["fraud_probability"] for p in body["predictions"]], expected, rtol=0, atol=1e-12)
    assert "scoring path: numpy (classifier: binary_forest)" in log_path.read_text()


def test_procfile_server_without_a_model_is_alive_but_not_ready(tmp_path):
    missing = tmp_path / "no-model"
    with procfile_server(missing, tmp_path) as (port, log_path):
        assert get(port, "/health") == (200, {"status": "ok"})
        status, body = get(port, "/ready")
        assert status == 503
        assert str(missing) in body["error"]["message"]
    assert f"cannot load the model from {missing}" in log_path.read_text()


# --- the server hooks, in this process ----------------------------------------------------------

def fake_arbiter(preload: bool) -> SimpleNamespace:
    """What the hooks use of gunicorn's Arbiter: its settings and its logger."""
    return SimpleNamespace(cfg=SimpleNamespace(preload_app=preload), log=logging.getLogger("test.gunicorn"))


def test_when_ready_freezes_the_preloaded_app_out_of_garbage_collection(model_dir, caplog):
    """What exists once the master has loaded the app (libraries, model, app) is never walked by a collection again."""
    app = create_app(str(model_dir))
    state = app.extensions["ccfraud"]
    try:
        with caplog.at_level(logging.INFO, logger="test.gunicorn"):
            gunicorn_conf.when_ready(fake_arbiter(preload=True))
        walked = {id(obj) for obj in gc.get_objects()}  # frozen objects are left out
        assert id(app) not in walked and id(state) not in walked and id(state.loaded.model) not in walked
        fresh = ["created after the freeze"]  # a list is always tracked
        assert id(fresh) in {id(obj) for obj in gc.get_objects()}
        assert re.search(r"froze [1-9]\d* objects out of garbage collection", caplog.text), caplog.text
    finally:
        gc.unfreeze()


def test_when_ready_freezes_nothing_without_preload(caplog):
    """Without --preload the master has no app to freeze: the workers load theirs after the fork."""
    frozen = gc.get_freeze_count()
    with caplog.at_level(logging.INFO, logger="test.gunicorn"):
        gunicorn_conf.when_ready(fake_arbiter(preload=False))
    assert gc.get_freeze_count() == frozen
    assert "heap not frozen" in caplog.text


def test_post_fork_lets_arrow_parse_csv_on_every_cpu_whatever_omp_num_threads_says(monkeypatch, caplog):
    """OMP_NUM_THREADS=1 (Procfile) sizes Arrow's pool to one thread; each worker resizes it to its CPUs."""
    import pyarrow

    before = pyarrow.cpu_count()
    pyarrow.set_cpu_count(1)  # what OMP_NUM_THREADS=1 does to Arrow at import
    monkeypatch.setattr(serving_config, "available_cpus", lambda: 7)
    handlers = {stop: signal.getsignal(stop) for stop in gunicorn_conf.STOP_SIGNALS}  # post_fork replaces them
    try:
        with caplog.at_level(logging.INFO, logger="test.gunicorn"):
            gunicorn_conf.post_fork(fake_arbiter(preload=True), SimpleNamespace(pid=os.getpid()))
        assert pyarrow.cpu_count() == 7
        assert "Arrow's thread pool sized to 7 threads" in caplog.text
    finally:
        pyarrow.set_cpu_count(before)
        for stop, handler in handlers.items():
            signal.signal(stop, handler)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "SIGQUIT"])
def test_a_worker_stopped_while_it_boots_exits_at_once(stop):
    """A forked worker inherits the master's handler, which only queues the signal; after post_fork's reset it exits.

    The child stands for a worker between the fork and gunicorn's own handlers: it
    "boots" for at most 60 s and exits 1 if the signal did not end it.
    """
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            for inherited in gunicorn_conf.STOP_SIGNALS:
                signal.signal(inherited, lambda signum, frame: None)  # as the master's: queue it and carry on
            gunicorn_conf.exit_on_stop_signals()
            os.write(ready_write, b"booting")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os._exit(1)
    os.close(ready_write)
    assert os.read(ready_read, 16) == b"booting"
    os.close(ready_read)
    os.kill(pid, getattr(signal, stop))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_loading_the_hooks_loads_neither_the_app_nor_openmp():
    """gunicorn imports the hooks before it sets the Procfile's OMP_NUM_THREADS=1, which OpenMP reads once, at load:
    importing them must not load scikit-learn (and its OpenMP), pyarrow or the app yet."""
    code = ("import sys, ccfraud.serving.gunicorn_conf; "
            "print(sorted(m for m in ('sklearn', 'pyarrow', 'flask', 'ccfraud.serving.app') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


# --- reading /metrics and the workers' metric files (issue 13) ------------------------------------

def get_text(port: int, path: str) -> tuple[int, str, str]:
    """GET ``path``: (status, Content-Type, body as text)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def scraped(port: int) -> dict[tuple[str, tuple], float]:
    """One scrape of /metrics, by whichever worker takes it: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, content_type, text = get_text(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type, text[:300])
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


PREDICT_OK = ("ccfraud_http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))


def predicts_by_process(directory: Path) -> dict[int, float]:
    """Each process's own count of answered POST /predict requests, from its counter file in ``directory``."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for path in directory.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        counts[int(path.stem.removeprefix("counter_"))] = sum(
            value for key, value, *_ in values
            if (parsed := json.loads(key))[1] == PREDICT_OK[0] and parsed[2] == dict(PREDICT_OK[1]))
    return counts


#: More than enough new connections for the kernel to have given each of two workers some.
MAX_REQUESTS = 400


# --- a worker killed under the master ----------------------------------------------------------

#: Generous: the master notices the death at once and forks from its preloaded app, but CI machines are busy.
REPLACE_TIMEOUT = 30.0


def worker_pids(master: int) -> set[int]:
    """Pids of the live children of ``master``: the serving benchmark's reading of /proc."""
    from test_benchmarks import load_benchmark

    return load_benchmark("serving").child_pids(master)


def send_until_two_workers_answered(port: int, body: bytes, metrics_dir: Path) -> int:
    """POST ``body`` to /predict, each time on a new connection, until two processes have counted some; how many.

    Which worker takes a connection is the kernel's choice, so the test cannot pick: it sends until both have.
    """
    sent = 0
    while len([pid for pid, count in predicts_by_process(metrics_dir).items() if count > 0]) < 2:
        assert sent < MAX_REQUESTS, f"one worker took all {sent} connections: {predicts_by_process(metrics_dir)}"
        assert get(port, "/predict", body)[0] == 200
        sent += 1
    return sent


def test_master_replaces_a_killed_worker_and_the_server_stays_ready_and_counts_every_worker(model_dir, tmp_path):
    """kill -9 one of the two workers: the master forks a new one, and every /ready meanwhile answers 200.

    Before that, /metrics counts the requests both workers answered, in one scrape by whichever worker takes
    it; after it, the killed worker's counts are still there, and only its live gauges are gone (child_exit).
    One server for both: each start costs seconds.
    """
    loaded = artifacts.load_model(model_dir)
    data = synthetic.generate(rows=300, frauds=30, seed=4)
    rows = pd.concat([data[data[schema.TARGET] == 1].head(2), data[data[schema.TARGET] == 0].head(1)])
    flagged_per_request = int(np.count_nonzero(modeling.fraud_probability(loaded.model, rows) >= loaded.threshold))
    body = json.dumps({"instances": [{name: float(r[name]) for name in schema.FEATURES}
                                     for _, r in rows.iterrows()]}).encode()
    metrics_dir = tmp_path / "prometheus"
    with procfile_server(model_dir, tmp_path, env={serving_metrics.MULTIPROC_ENV: str(metrics_dir)}) as (port,
                                                                                                         log_path):
        master = listening(log_path)[1]
        workers = wait_until(lambda: pids if len(pids := worker_pids(master)) == 2 else None, "two workers")
        sent = send_until_two_workers_answered(port, body, metrics_dir)
        for _ in range(5):
            assert get(port, "/predict", body)[0] == 200
        assert get(port, "/predict?explain=true", body)[0] == 200
        sent += 6
        counted = predicts_by_process(metrics_dir)
        assert set(counted) == workers and sum(counted.values()) == sent, (counted, workers, sent)
        # Each count is written before its answer is sent; retried all the same, in case a scrape races a write.
        found = wait_until(lambda: found if (found := scraped(port)).get(PREDICT_OK) == sent else None,
                           f"a scrape counting all {sent} requests", timeout=10)
        assert found[("ccfraud_rows_scored_total", ())] == 3 * sent
        assert found[("ccfraud_rows_flagged_total", ())] == flagged_per_request * sent
        assert found[("ccfraud_rows_explained_total", ())] == 3
        assert found[("ccfraud_http_request_duration_seconds_count", (("route", "/predict"),))] == sent
        assert found[("ccfraud_model_info", (("candidate", ""), ("model_version", loaded.version),
                                             ("threshold", repr(loaded.threshold))))] == 1

        victim = min(workers)
        assert (metrics_dir / f"gauge_livemax_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)
        # Probe only once the victim is dead (a zombie or reaped): it can no longer accept a connection.
        wait_until(lambda: victim not in worker_pids(master), f"worker {victim} dying of SIGKILL")
        statuses = []
        deadline = time.monotonic() + REPLACE_TIMEOUT
        while True:  # at most REPLACE_TIMEOUT / 50 ms probes, one at a time
            statuses.append(get(port, "/ready")[0])
            if (replacements := worker_pids(master) - workers) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        statuses += [get(port, "/ready")[0] for _ in range(5)]  # and once the replacement is there
        assert replacements, f"no new worker within {REPLACE_TIMEOUT:.0f} s:\n{log_path.read_text()[-3000:]}"
        assert worker_pids(master) == workers - {victim} | replacements
        assert set(statuses) == {200}, statuses
        # Stopped before it is ready, the replacement would lose the SIGTERM (procfile_server.workers_ready).
        wait_until(lambda: workers_ready(log_path) >= 3, "the replacement ready")

        wait_until(lambda: not (metrics_dir / f"gauge_livemax_{victim}.db").exists(), "child_exit dropping its gauge")
        after = scraped(port)
        assert after[PREDICT_OK] == sent and after[("ccfraud_rows_scored_total", ())] == 3 * sent
        assert sum(value for (name, _), value in after.items() if name == "ccfraud_model_info") == 1
    log = log_path.read_text()
    assert f"Worker (pid:{victim}) was sent SIGKILL" in log, log
    assert log.count("Arrow's thread pool sized to") >= 3, log  # the replacement ran the post_fork hook too
    assert "workers count their metrics in" in log, log


# --- slow clients (issue 14) ----------------------------------------------------------------------

#: A normal request's client timeout while slow clients are connected: generous, for a busy CI machine.
NORMAL_TIMEOUT = 20.0


def open_slow(port: int, kind: str) -> socket.socket:
    """A connection partway through a request: ``body`` has sent the headers of a JSON POST announcing
    100 bytes and one of them; ``headers`` has sent the request line and half a header."""
    head = f"POST /predict HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Type: application/json\r\n"
    first = {"body": f"{head}Content-Length: 100\r\n\r\n{{", "headers": f"{head}X-Slow: a"}[kind]
    sock = socket.create_connection((LOOPBACK, port), timeout=NORMAL_TIMEOUT)
    sock.sendall(first.encode())
    return sock


def trickle_until_closed(trickling: list[socket.socket], silent: list[socket.socket], every: float,
                         timeout: float) -> dict[socket.socket, bytes]:
    """Send one more byte on each ``trickling`` socket every ``every`` seconds, nothing on ``silent`` ones,
    and read every socket until the server closes it; what each received. Fails after ``timeout`` s."""
    received = {sock: b"" for sock in trickling + silent}
    open_ = set(received)
    answering: set[socket.socket] = set()  # the server has begun to answer: no more bytes to it
    deadline = time.monotonic() + timeout
    while open_:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(open_)} slow connection(s) neither answered nor closed within {timeout:.0f} s")
        for sock in select.select(list(open_), [], [], every)[0]:
            chunk = sock.recv(65536)
            received[sock] += chunk
            answering.add(sock)
            if not chunk:
                open_.discard(sock)
        for sock in open_ - answering - set(silent):
            sock.sendall(b"a")  # a body's next byte, or a header value's
    return received


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], object]:
    """(status, headers by lower-case name, decoded JSON body) of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def test_slow_clients_do_not_keep_normal_requests_waiting(model_dir, tmp_path):
    """More clients than workers, each stalled partway through its request, while normal requests are answered.

    Issue 14: with ``sync`` workers each slow client held a worker until its request ended, and
    four of them took the service down. Here the read timeout is far beyond the normal requests'
    client timeout, so the slow clients are still connected, unanswered, throughout.
    """
    data = synthetic.generate(rows=50, frauds=5, seed=3)
    row = json.dumps({name: float(data[name].iloc[0]) for name in schema.FEATURES}).encode()
    with procfile_server(model_dir, tmp_path, env={serving_config.READ_TIMEOUT_ENV: "300"}) as (port, _):
        slow = [open_slow(port, kind) for kind in ("body", "headers") * 3]
        try:
            assert get(port, "/ready", timeout=NORMAL_TIMEOUT)[0] == 200
            status, body = get(port, "/predict", row, timeout=NORMAL_TIMEOUT)
            assert status == 200 and len(body["predictions"]) == 1, body
            assert select.select(slow, [], [], 0)[0] == []  # the slow ones: neither answered nor closed
        finally:
            for sock in slow:
                sock.close()


def test_a_request_not_complete_within_the_read_timeout_gets_408_and_its_connection_closed(model_dir, tmp_path):
    """CCFRAUD_READ_TIMEOUT bounds the whole request, not the gap between two bytes: clients sending a byte every
    0.2 s get a 408 JSON error naming what was late once it is up, and the server closes their connection;
    one that sent nothing is closed without an answer. The server serves on."""
    with procfile_server(model_dir, tmp_path, env={serving_config.READ_TIMEOUT_ENV: "2"}) as (port, log_path):
        body_late, headers_late = open_slow(port, "body"), open_slow(port, "headers")
        silent = socket.create_connection((LOOPBACK, port), timeout=NORMAL_TIMEOUT)
        try:
            received = trickle_until_closed([body_late, headers_late], [silent], every=0.2, timeout=60)
        finally:
            for sock in (body_late, headers_late, silent):
                sock.close()
        status, headers, body = parse_answer(received[body_late])
        assert status == 408 and headers["connection"] == "close", received[body_late]
        assert headers["content-type"] == "application/json"
        assert body["error"]["status"] == 408
        assert "CCFRAUD_READ_TIMEOUT" in body["error"]["message"]
        assert "the 100 bytes its Content-Length announced" in body["error"]["message"]
        status, headers, body = parse_answer(received[headers_late])
        assert status == 408 and headers["connection"] == "close", received[headers_late]
        assert body == {"error": {"status": 408, "message": "the request headers did not arrive within 2 s "
                                                           "(CCFRAUD_READ_TIMEOUT)"}}
        assert received[silent] == b""
        assert get(port, "/ready")[0] == 200
    assert "408 to 127.0.0.1: the request headers did not arrive" in log_path.read_text()


def exchange(port: int, request: bytes) -> bytes:
    """Send raw ``request`` bytes and read until the server closes the connection."""
    with socket.create_connection((LOOPBACK, port), timeout=NORMAL_TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


#: Requests gunicorn refuses before the application sees them: (raw request, status, what the message names).
UNPARSABLE = {
    "request line over 4,094 bytes": (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                      414, "Request Line is too large (5014 > 4094)"),
    "header over 8,190 bytes": (b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
                                431, "limit request headers fields size"),
    "header name with a space": (b"GET /ready HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
                                 400, "Invalid HTTP header name: 'Bad Name'"),
    "request line without a version": (b"GET /ready\r\nHost: x\r\n\r\n",
                                       400, "Invalid HTTP request line: 'GET /ready'"),
    "long header name with a space": (b"GET /ready HTTP/1.1\r\nHost: x\r\n" + b"(" * 5000 + b" x: 1\r\n\r\n",
                                      400, "Invalid HTTP header name: '((((("),
}


def test_requests_refused_before_the_app_get_the_apis_json_error_not_gunicorns_html_page(model_dir, tmp_path):
    """A client parsing the API's errors gets the same shape for what gunicorn refuses: the status gunicorn
    chose, a message naming the problem, ``Connection: close``; the server serves on."""
    with procfile_server(model_dir, tmp_path) as (port, log_path):
        for what, (request, expected_status, message) in UNPARSABLE.items():
            status, headers, body = parse_answer(exchange(port, request))
            assert (status, headers["content-type"], headers["connection"]) == (
                expected_status, "application/json", "close"), what
            assert body["error"]["status"] == expected_status, what
            assert message in body["error"]["message"], (what, body)
            assert len(body["error"]["message"]) <= len("Request Header Fields Too Large: ") + 300
        assert get(port, "/ready")[0] == 200
    assert "Invalid request from ip=127.0.0.1: Invalid HTTP header name: 'Bad Name'" in log_path.read_text()


def test_a_body_that_breaks_after_the_answer_closes_the_connection_without_a_second_answer(model_dir, tmp_path):
    """A 404 does not read the body; the worker drains it after the answer. A broken chunk found then must not
    become a second response, which the client would take for the answer to its next request; and the bytes
    after it, left unread, must not turn the close into a reset (``exchange`` would raise)."""
    request = (b"POST /no-such-endpoint HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n" + b"x" * 20_000)
    with procfile_server(model_dir, tmp_path) as (port, _):
        received = exchange(port, request)
        assert get(port, "/ready")[0] == 200
    assert received.count(b"HTTP/1.1 ") == 1, received
    status, _, body = parse_answer(received)
    assert status == 404 and body["error"]["status"] == 404


def gunicorn_page(status: int, reason: str, message: str) -> bytes:
    """What gunicorn itself writes for an error it answers (``gunicorn.util.write_error``)."""
    from gunicorn import util

    from ccfraud.serving.worker import _CapturedWrites

    captured = _CapturedWrites(socket.socket())
    try:
        util.write_error(captured, status, reason, message)
    finally:
        captured.close()
    return captured.sent


@pytest.mark.parametrize(("status", "reason", "message", "expected"), [
    (400, "Bad Request", "Invalid HTTP header name: '<a&b>'", "Bad Request: Invalid HTTP header name: '<a&b>'"),
    (500, "Internal Server Error", "", "Internal Server Error: the server's log has the details"),
    (403, "Forbidden", "Request forbidden", "Forbidden: Request forbidden"),
    (400, "Bad Request", "", "Bad Request"),
])
def test_gunicorns_own_error_page_becomes_the_json_error_with_its_status_and_message(status, reason, message,
                                                                                      expected):
    """gunicorn's page, as its installed version writes it: the message it chose to show (HTML-escaped there)."""
    from ccfraud.serving.worker import _as_json_error

    head, _, body = _as_json_error(gunicorn_page(status, reason, message)).partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()
    assert json.loads(body) == {"error": {"status": status, "message": expected}}


def test_a_long_message_is_cut_and_nothing_written_is_passed_on_as_nothing():
    from ccfraud.serving.worker import MAX_MESSAGE_CHARS, _as_json_error

    body = _as_json_error(gunicorn_page(400, "Bad Request", "x" * 10_000)).partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"]["message"] == "Bad Request: " + "x" * (MAX_MESSAGE_CHARS - 1) + "…"
    assert _as_json_error(b"") == b""


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", ""])
def test_a_malformed_read_timeout_stops_the_server_at_start_up(monkeypatch, value):
    from ccfraud.serving.worker import BoundedGeventWorker

    monkeypatch.setenv(serving_config.READ_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"CCFRAUD_READ_TIMEOUT must be a positive number of seconds, found '{value}'"):
        BoundedGeventWorker.check_config(SimpleNamespace(), logging.getLogger("test.gunicorn"))


# --- the metrics hooks, in this process -------------------------------------------------------------

def test_on_starting_makes_a_temporary_metrics_directory_and_on_exit_removes_it(monkeypatch, caplog):
    monkeypatch.setenv(serving_metrics.MULTIPROC_ENV, "restored after the test")
    monkeypatch.delenv(serving_metrics.MULTIPROC_ENV)
    with caplog.at_level(logging.INFO, logger="test.gunicorn"):
        gunicorn_conf.on_starting(fake_arbiter(preload=True))
    made = Path(os.environ[serving_metrics.MULTIPROC_ENV])
    assert made.is_dir() and made.name.startswith("ccfraud-prometheus-")
    assert f"workers count their metrics in {made} (a temporary directory)" in caplog.text
    gunicorn_conf.on_exit(fake_arbiter(preload=True))
    assert not made.exists()


def test_on_starting_empties_a_configured_metrics_directory_and_child_exit_drops_a_dead_workers_gauges(
        monkeypatch, tmp_path):
    configured = tmp_path / "metrics"
    configured.mkdir()
    for name in ("counter_11.db", "gauge_livemax_11.db", "notes.txt"):
        (configured / name).write_text("from an earlier run")
    monkeypatch.setenv(serving_metrics.MULTIPROC_ENV, str(configured))
    gunicorn_conf.on_starting(fake_arbiter(preload=True))
    assert sorted(p.name for p in configured.iterdir()) == ["notes.txt"]
    for name in ("counter_12.db", "gauge_livemax_12.db", "gauge_livemax_13.db"):
        (configured / name).write_bytes(b"")
    gunicorn_conf.child_exit(fake_arbiter(preload=True), SimpleNamespace(pid=12))
    assert sorted(p.name for p in configured.iterdir()) == ["counter_12.db", "gauge_livemax_13.db", "notes.txt"]
    gunicorn_conf.on_exit(fake_arbiter(preload=True))
    assert configured.is_dir()  # configured, not made by the server: left where it is
