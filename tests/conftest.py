"""Shared pytest fixtures; the S3 server fixture lives in s3_fixtures.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import yaml

pytest_plugins = ["s3_fixtures", "dask_fixtures", "procfile_server"]

ROOT = Path(__file__).resolve().parents[1]
#: A small dataset that still has enough frauds in every split.
SMALL_SOURCE = "synthetic://?rows=20000&frauds=200&seed=3"
#: What the end-to-end copy of the repository needs to run `dvc repro`.
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".gitignore")
PROJECT_DIRS = ("notebooks", "lib")


#: Set to 1 in CI (.ci/run, the tests workflow): a missing browser, ``weed`` or ``wrk`` fails the
#: tests that need it instead of skipping them, so nothing is skipped silently where it must run.
REQUIRE_TOOLS = "CCFRAUD_REQUIRE_TOOLS"


def missing_tool(reason: str) -> NoReturn:
    """Skip the test for a missing external tool, or fail it where :data:`REQUIRE_TOOLS` is set."""
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1: this run must have it)", pytrace=False)
    pytest.skip(reason)


def tool_env() -> dict[str, str]:
    """The environment for subprocesses: this venv's executables (dvc, ccfraud, papermill) first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "ccfraud tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "ccfraud tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@example.invalid")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
                    f"stderr:\n{result.stderr[-4000:]}")
    return result


def set_params(repo: Path, updates: dict[str, dict]) -> None:
    """Change keys of params.yaml in a repository copy, section by section."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project_copy(dest: Path, source: str = SMALL_SOURCE) -> Path:
    """A fresh git repository holding the pipeline definition, pointed at ``source``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    set_params(dest, {"download": {"source": source}})
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline copy"], dest)
    return dest


#: What a destination held before a fetch: a failed fetch must leave it byte for byte.
OLD_CONTENT = b"an earlier download that must survive a failed fetch\n"


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """A destination directory already holding an earlier ``creditcard.csv``."""
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / "creditcard.csv").write_bytes(OLD_CONTENT)
    return directory


#: The end-to-end run tests the pipeline's mechanics, not the search: a smaller t-SNE, grid and fold count
#: (every candidate family still takes part) keep it short. The defaults run in `make pipeline`.
PIPELINE_TEST_PARAMS = {
    "eda_preprocess": {"balanced_per_class": 100},
    "train": {
        "cv_folds": 2,
        "candidates": {
            "logreg": {"sampler": ["class_weight"], "C": [1.0]},
            "random_forest": {"sampler": ["undersample"], "sampling_ratio": [0.1], "n_estimators": [40],
                              "min_samples_leaf": [1]},
            "hist_gb": {"sampler": ["none"], "max_iter": [50]},
        },
    },
    "evaluate": {"bootstrap": 50},
}


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """A temporary copy of the repository where `dvc repro` has run on a small synthetic dataset.

    Shared by the end-to-end, report and browser tests so the pipeline runs once per session.
    """
    repo = make_project_copy(tmp_path_factory.mktemp("pipeline") / "repo")
    set_params(repo, PIPELINE_TEST_PARAMS)
    run(["git", "commit", "-q", "-am", "lighter knobs for the test run"], repo)
    result = run(["dvc", "repro"], repo)
    (repo / "repro.log").write_text(result.stdout + result.stderr)
    return repo


#: The files whose tests use ``pipeline_run``: xdist runs them on one worker, so the pipeline runs once.
PIPELINE_FILES = ("tests/test_pipeline.py", "tests/test_browser.py", "tests/test_dvc_remote.py")


#: The longest groups of tests (``--durations``: minutes of pipeline runs, a fuzzer), started first so that
#: no worker is left running one of them alone at the end while the other waits.
LONG_FIRST = ("pipeline", "tests/test_pipeline_dask.py", "tests/test_serving_schemathesis.py",
              "tests/test_batch.py", "tests/test_serving_procfile.py")


def _group(nodeid: str) -> str:
    """The xdist group of a test: the pipeline's files form one, every other file its own."""
    path = nodeid.split("::", 1)[0]
    return "pipeline" if path in PIPELINE_FILES else path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that uses ``pipeline_run`` outside :data:`PIPELINE_FILES` (it would rerun the pipeline);
    put the :data:`LONG_FIRST` groups first (a stable sort: each file keeps its own order, nbval's cells too)."""
    for item in items:
        if "pipeline_run" in getattr(item, "fixturenames", ()) and item.nodeid.split("::")[0] not in PIPELINE_FILES:
            raise pytest.UsageError(f"{item.nodeid} uses pipeline_run: add its file to conftest.PIPELINE_FILES")
    rank = {group: number for number, group in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` by file: a file's tests run on one worker, the pipeline's files all on one.

    A file's module-scoped fixtures are then built once, the session's pipeline run happens once,
    and nbval's cells of one notebook run in order in one kernel (nbval's node ids cannot carry
    xdist's group suffix, so the file is the grouping). An explicit ``xdist_group`` mark still wins.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    # Groups in collection order, where pytest_collection_modifyitems put the longest first (xdist's default
    # orders them by their number of tests, which put the two pipeline runs behind a hundred quick tests).
    config.option.loadscopereorder = False
    from xdist.scheduler import LoadScopeScheduling

    class GroupOrFileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.rsplit("@", 1)[1] if "@" in nodeid else _group(nodeid)

    return GroupOrFileScheduling(config, log)


@contextlib.contextmanager
def closing_server(answer: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A loopback server that reads a connection's first bytes, sends ``answer`` (may be empty) and closes it.

    Yields its port and each connection's first bytes, one entry a connection.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    firsts: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            with sock, contextlib.suppress(OSError):  # the clients close their sockets when they stop
                sock.settimeout(5)
                firsts.append(sock.recv(65536))
                sock.sendall(answer)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # until the client closes: no reset for bytes it sent meanwhile
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], firsts
    finally:
        stop.set()
        thread.join()
        listener.close()


T = TypeVar("T")
#: Seconds :func:`wait_until` waits for a state unless told otherwise.
WAIT_TIMEOUT = 30.0


def wait_until(condition: Callable[[], T], what: str, timeout: float = WAIT_TIMEOUT) -> T:
    """Poll ``condition`` every 50 ms until it returns something truthy (returned); fail after ``timeout``.

    A wait for a state, not a pause: it returns as soon as the state holds.
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return result
