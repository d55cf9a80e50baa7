"""The S3 layer: parse ``s3://`` URIs, download and upload files, and explain failures.

Everything that talks to S3 goes through here so that three promises hold everywhere:

* credentials come only from the environment or an AWS profile (boto3's own chain);
  no function takes a key as a parameter and no message or log line contains one;
* a failure is an :class:`S3Error` whose message names ``s3://bucket/key`` and says
  in plain words what went wrong (wrong credentials, missing bucket, missing key,
  server unreachable, server gone mid-transfer, ...), after a bounded number of retries;
* a download never leaves a half-written file: it goes to a temporary file next to
  the destination and is renamed only when complete.

Works with AWS and with S3-compatible stores (SeaweedFS, MinIO): the endpoint comes
from the ``endpoint_url`` argument or ``AWS_ENDPOINT_URL``, and addressing is
path-style because local stores rarely have wildcard DNS for ``bucket.host``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from tqdm import tqdm

from ccfraud import atomicio

log = logging.getLogger(__name__)

SCHEME = "s3://"
MiB = 1024 * 1024

#: Total attempts per API call (first try included) unless ``AWS_MAX_ATTEMPTS`` (the variable every
#: AWS SDK reads) says otherwise. Retries cover throttling, 5xx and dropped connections; three keeps
#: "server down" to a few seconds of backoff.
MAX_ATTEMPTS = 3
MAX_ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"
#: Seconds to open a TCP connection: a live server on a LAN answers in milliseconds, so a
#: few seconds is plenty and "nothing is listening" fails fast.
CONNECT_TIMEOUT = 3
#: Seconds without a byte before a read is abandoned (an idle timeout, not a total one):
#: long enough for a busy server, short enough that a frozen one does not hang a pipeline.
READ_TIMEOUT = 15
#: Objects above this size are transferred in parts, in parallel, and show progress.
MULTIPART_THRESHOLD = 8 * MiB
MULTIPART_CHUNKSIZE = 8 * MiB
#: Attempts s3transfer makes to re-read a part whose stream broke mid-body; each attempt
#: already includes botocore's own retries, so keep this small to bound the total time.
DOWNLOAD_ATTEMPTS = 2
PROGRESS_MIN_BYTES = MULTIPART_THRESHOLD

TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD,
    multipart_chunksize=MULTIPART_CHUNKSIZE,
    max_concurrency=4,
    num_download_attempts=DOWNLOAD_ATTEMPTS,
    # The CRT client would bypass client_settings() (timeouts, retries); keep the classic one.
    preferred_transfer_client="classic",
)

#: Called with the number of bytes moved since the previous call.
ByteCallback = Callable[[int], Any]

_CREDENTIAL_HINT = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile in use"


class S3Error(RuntimeError):
    """An S3 operation failed (or its URI is malformed); the message names the object and the cause."""


def max_attempts() -> int:
    """Total attempts per S3 call: ``AWS_MAX_ATTEMPTS`` when set, else :data:`MAX_ATTEMPTS`.

    Read on every client, so the variable works as it does for the AWS CLI (a fixed count in the
    client's config would override it); a profile's ``max_attempts`` and ``AWS_RETRY_MODE`` are not
    read: the mode is always botocore's "standard". botocore's ``max_attempts`` config key counts
    *retries* (three meant four attempts); ``total_max_attempts`` counts attempts, as the messages do.
    """
    value = os.environ.get(MAX_ATTEMPTS_ENV)
    if value is None or not value.strip():
        return MAX_ATTEMPTS
    try:
        attempts = int(value)
    except ValueError:
        attempts = 0
    if attempts < 1:
        raise S3Error(f"{MAX_ATTEMPTS_ENV} must be a whole number of attempts, 1 or more; got {value!r}")
    return attempts


def _attempts() -> str:
    """The attempts a failure message reports ("3 attempts"); never raises while another error is described."""
    try:
        count = max_attempts()
    except S3Error:
        count = MAX_ATTEMPTS
    return "1 attempt" if count == 1 else f"{count} attempts"


def client_settings() -> dict[str, Any]:
    """botocore's client settings for S3: short timeouts, :func:`max_attempts` attempts, path-style addressing.

    A dict, so that s3fs takes the same ones (its ``config_kwargs``) as :func:`make_client`'s clients.
    """
    return {
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        "retries": {"total_max_attempts": max_attempts(), "mode": "standard"},
        "s3": {"addressing_style": "path"},
    }


def parse_s3_uri(uri: str, *, require_key: bool = True) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    The key is everything after the first slash, verbatim (S3 keys may contain ``?``,
    ``#`` or spaces, so this is not parsed as a URL). ``require_key=False`` accepts a
    bare bucket or a prefix such as ``s3://bucket/models/`` for listing and publishing.
    """
    if not isinstance(uri, str) or not uri.lower().startswith(SCHEME):
        raise S3Error(f"not an S3 URI: {uri!r}; expected s3://bucket/key")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if "@" in bucket:
        # Do not echo the URI: the part before '@' is probably a key pair.
        raise S3Error(
            "an s3:// URI must not embed credentials (found '@' before the bucket name); "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE instead"
        )
    if not bucket:
        raise S3Error(f"no bucket name in {uri!r}; expected s3://bucket/key")
    if require_key and (not key or key.endswith("/")):
        raise S3Error(f"no object key in {uri!r}; expected s3://{bucket}/path/to/object")
    return bucket, key


#: The boto3 session of the last client made, and a digest of what its credentials came from.
_session: tuple[bytes, boto3.session.Session] | None = None
_session_lock = threading.Lock()


def _forget_session() -> None:
    """In a forked child: no session, and a lock no thread of the parent may be holding."""
    global _session, _session_lock
    _session, _session_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_session)


def _credential_sources() -> bytes:
    """A digest of the AWS_* variables and of the AWS config and credentials files as they are now.

    The files by path, modification time and size: a key rotated in ~/.aws/credentials (``aws
    configure``) counts as a change. A digest, so that no secret sits in a variable a traceback shows.
    """
    aws = sorted((name, value) for name, value in os.environ.items() if name.startswith("AWS_"))
    files = []
    for variable, default in (("AWS_CONFIG_FILE", "~/.aws/config"),
                              ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")):
        path = os.path.expanduser(os.environ.get(variable, default))
        try:
            stat = os.stat(path)
            files.append((path, stat.st_mtime_ns, stat.st_size))
        except OSError:
            files.append((path, None, None))
    return hashlib.sha256(repr((aws, files)).encode()).digest()


def make_client(endpoint_url: str | None = None) -> Any:
    """Return a boto3 S3 client with bounded retries, short timeouts and path-style addressing.

    The endpoint is ``endpoint_url`` if given, else whatever boto3 finds on its own
    (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` or the profile), else AWS itself.
    Credentials are read as they are now, not as they were when the first client was made: the
    session is kept only while every ``AWS_*`` variable (keys, profile, file locations, endpoint)
    and the AWS config and credentials files stay the same. A new session re-reads botocore's
    description of the S3 API, 0.1-0.5 s a client (20 s of the publish tests' 30 s), against
    0.01 s from a kept one. Sessions are not thread-safe, so clients are made under a lock;
    clients themselves are thread-safe.
    """
    global _session
    sources = _credential_sources()
    try:
        with _session_lock:
            if _session is None or _session[0] != sources:
                _session = (sources, boto3.session.Session())
            return _session[1].client("s3", endpoint_url=endpoint_url or None, config=Config(**client_settings()))
    except ValueError:  # botocore: "Invalid endpoint: <the URL>", which may hold userinfo
        raise S3Error(
            f"invalid S3 endpoint URL {_display_endpoint(endpoint_url)!r}; expected http(s)://host:port"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:  # e.g. ProfileNotFound
        raise S3Error(f"cannot configure the S3 client: {exc}") from None


def download(uri: str, dest_path: str | os.PathLike[str], *, endpoint_url: str | None = None,
             progress: bool = True, callback: ByteCallback | None = None) -> int:
    """Download ``uri`` to ``dest_path`` atomically and return its size in bytes.

    The bytes go to a temporary file in the destination directory (:mod:`ccfraud.atomicio`)
    and replace ``dest_path`` only once the whole object has arrived and its size matches;
    on any failure, including Ctrl-C, the temporary file is removed and an existing
    ``dest_path`` is left as it was. ``progress`` shows a bar for
    large objects; ``callback``, if given, is called with each increment of bytes received
    (from transfer threads), for callers that report progress their own way.
    """
    bucket, key = parse_s3_uri(uri)
    client = make_client(endpoint_url)
    with atomicio.atomic_path(dest_path) as tmp:
        meter = _Meter(f"download {uri}", show_bar=progress, callback=callback)
        with open(tmp, "wb") as handle, _translated("download", bucket, key, client, meter):
            size = _object_size(client, bucket, key)
            with meter.running(size):
                client.download_fileobj(bucket, key, handle, Config=TRANSFER_CONFIG, Callback=meter)
        written = tmp.stat().st_size
        if written != size:
            raise S3Error(
                f"cannot download s3://{bucket}/{key}: the transfer ended early "
                f"({written} of {size} bytes arrived)"
            )
    log.info("downloaded s3://%s/%s to %s (%d bytes)", bucket, key, dest_path, size)
    return size


def upload(path: str | os.PathLike[str], uri: str, *, endpoint_url: str | None = None,
           progress: bool = True, callback: ByteCallback | None = None) -> int:
    """Upload the file at ``path`` to ``uri`` and return its size in bytes.

    S3 makes an object visible only once its upload completes (multipart uploads
    included), so a failed upload never leaves a partial object under ``uri``.
    ``progress`` and ``callback`` are as for :func:`download`.
    """
    bucket, key = parse_s3_uri(uri)
    client = make_client(endpoint_url)
    return _upload_file(client, Path(path), bucket, key, progress=progress, callback=callback)


def upload_directory(local_dir: str | os.PathLike[str], uri_prefix: str, *,
                     endpoint_url: str | None = None, progress: bool = True) -> list[str]:
    """Upload every file under ``local_dir`` below ``uri_prefix`` and return the URIs written.

    Relative paths become keys (``model/meta.json`` -> ``<prefix>/model/meta.json``), so a
    published model version is one prefix such as ``s3://bucket/models/<version>/``.
    Files are uploaded in sorted order, which makes a failure reproducible.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise S3Error(f"cannot upload {root} to {uri_prefix}: not a directory")
    bucket, prefix = parse_s3_uri(uri_prefix, require_key=False)
    prefix = prefix.rstrip("/")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise S3Error(f"cannot upload {root} to {uri_prefix}: the directory has no files")
    client = make_client(endpoint_url)
    written = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        key = f"{prefix}/{relative}" if prefix else relative
        _upload_file(client, path, bucket, key, progress=progress)
        written.append(f"s3://{bucket}/{key}")
    return written


def list_keys(uri_prefix: str, *, endpoint_url: str | None = None) -> list[str]:
    """Return the sorted keys under ``uri_prefix`` (``s3://bucket`` or ``s3://bucket/prefix``)."""
    bucket, prefix = parse_s3_uri(uri_prefix, require_key=False)
    client = make_client(endpoint_url)
    keys: list[str] = []
    with _translated("list", bucket, prefix, client):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def _upload_file(client: Any, path: Path, bucket: str, key: str, *, progress: bool,
                 callback: ByteCallback | None = None) -> int:
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file"
        raise S3Error(f"cannot upload {path} to s3://{bucket}/{key}: {reason}")
    size = path.stat().st_size
    meter = _Meter(f"upload s3://{bucket}/{key}", show_bar=progress, callback=callback)
    with _translated("upload", bucket, key, client, meter), meter.running(size):
        client.upload_file(str(path), bucket, key, Config=TRANSFER_CONFIG, Callback=meter)
    log.info("uploaded %s to s3://%s/%s (%d bytes)", path, bucket, key, size)
    return size


def _object_size(client: Any, bucket: str, key: str) -> int:
    """HEAD the object; when that fails, ask again with a GET to learn why.

    A HEAD error has no body, so the server cannot say whether a 404 means "no such
    bucket" or "no such key", or whether a 403 means a wrong key ID or a wrong secret.
    A one-byte ranged GET needs the same permission as the download and returns the
    error code, which turns a bare "403" into "the secret key is wrong".
    """
    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except botocore.exceptions.ClientError as head_error:
        if _status(head_error) not in (400, 401, 403, 404):
            raise
        try:
            client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
        except botocore.exceptions.ClientError as probe_error:
            raise probe_error from None
        raise


def _status(error: botocore.exceptions.ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class _Meter:
    """Byte counter for one transfer: drives the progress bar and the caller's callback.

    It also remembers whether any bytes moved, so that when the server vanishes an error
    can say "lost mid-transfer" rather than a misleading "cannot connect". s3transfer calls
    it from several threads, and with a negative count when it rewinds a retried part.
    """

    def __init__(self, label: str, *, show_bar: bool, callback: ByteCallback | None) -> None:
        self.label = label
        self.show_bar = show_bar
        self.callback = callback
        self.started = False
        self._bar: tqdm | None = None
        self._lock = threading.Lock()

    @contextmanager
    def running(self, total: int) -> Iterator[None]:
        """Show a bar while the block runs, for transfers large enough to take a while.

        Small files finish before a bar is readable; the bar goes to stderr and only to a
        terminal (``disable=None``), while the log line tells a CI log a long transfer started.
        """
        if not self.show_bar or total <= PROGRESS_MIN_BYTES:
            yield
            return
        log.info("%s: %.1f MiB", self.label, total / MiB)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.label,
                  file=sys.stderr, disable=None, leave=False) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def __call__(self, count: int) -> None:
        with self._lock:
            self.started = self.started or count > 0
            if self._bar is not None:
                self._bar.update(count)
        if self.callback is not None:
            self.callback(count)


@contextmanager
def _translated(action: str, bucket: str, key: str, client: Any,
                meter: _Meter | None = None) -> Iterator[None]:
    """Turn any boto3/botocore/s3transfer failure inside the block into an S3Error."""
    try:
        yield
    except S3Error:
        raise
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
            boto3.exceptions.Boto3Error, OSError) as exc:
        where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        cause = describe_failure(exc, bucket=bucket, key=key, endpoint=client.meta.endpoint_url,
                                 mid_transfer=meter is not None and meter.started)
        raise S3Error(f"cannot {action} {where}: {cause}") from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: cause/context links and s3transfer's last_exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "last_exception", None)
        if not isinstance(wrapped, BaseException):
            wrapped = current.__cause__ or current.__context__
        current = wrapped


def describe_failure(exc: BaseException, *, bucket: str, key: str, endpoint: str | None,
                     mid_transfer: bool = False) -> str:
    """Say in plain words why an S3 call failed; never includes credentials.

    ``mid_transfer`` says bytes had already moved: a connection failure then means the
    server went away during the transfer, not that it was never there.
    """
    chain = list(_chain(exc))
    client_error = next((e for e in chain if isinstance(e, botocore.exceptions.ClientError)), None)
    if client_error is not None:
        return _describe_client_error(client_error, bucket=bucket, key=key)
    core = next((e for e in chain if isinstance(e, botocore.exceptions.BotoCoreError)), None)
    server = _display_endpoint(endpoint)
    exc = core if core is not None else chain[-1]
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return f"no AWS credentials found; {_CREDENTIAL_HINT}"
    if isinstance(exc, botocore.exceptions.PartialCredentialsError | botocore.exceptions.ProfileNotFound):
        return f"incomplete AWS configuration ({exc}); {_CREDENTIAL_HINT}"
    network_failure = (
        botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
        botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError,
        botocore.exceptions.ReadTimeoutError, ConnectionError, TimeoutError,
    )
    if mid_transfer and isinstance(exc, network_failure):
        return (
            f"the connection to the S3 server at {server} was lost mid-transfer (server stopped or "
            f"network failed) and reconnecting failed after {_attempts()}"
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return (
            f"cannot connect to the S3 endpoint {server}: nothing answered after {_attempts()} "
            "(is the server running and the endpoint URL right?)"
        )
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | TimeoutError):
        return f"the S3 server at {server} stopped answering (no data for {READ_TIMEOUT} s)"
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError
                  | botocore.exceptions.IncompleteReadError | botocore.exceptions.ResponseStreamingError
                  | ConnectionError):
        return (
            f"the connection to the S3 server at {server} broke during the transfer "
            f"(server stopped or network failed), still after {_attempts()}"
        )
    if isinstance(exc, OSError) and exc.filename:
        return f"local file error on {exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _describe_client_error(error: botocore.exceptions.ClientError, *, bucket: str, key: str) -> str:
    details = error.response.get("Error", {})
    code = str(details.get("Code", ""))
    status = _status(error)
    if code == "InvalidAccessKeyId":
        return f"wrong credentials: the server does not know this access key ID; {_CREDENTIAL_HINT}"
    if code == "SignatureDoesNotMatch":
        return f"wrong credentials: the secret key does not match the access key ID; {_CREDENTIAL_HINT}"
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return f"the session token is expired or invalid; refresh the credentials ({code})"
    if code == "RequestTimeTooSkewed":
        return "the local clock differs too much from the server's; fix the system time"
    if code in ("AccessDenied", "Forbidden", "403") or status == 403:
        return f"access denied (HTTP 403): wrong credentials or no permission; {_CREDENTIAL_HINT}"
    if code == "NoSuchBucket":
        return f"bucket '{bucket}' does not exist"
    if code in ("NoSuchKey", "NotFound", "404") or status == 404:
        return f"no object with key '{key}' in bucket '{bucket}'"
    if code == "NoSuchUpload":
        return "the server dropped the multipart upload before it completed"
    if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        return f"the server failed with {code or 'an error'} (HTTP {status}) after {_attempts()}"
    message = details.get("Message", "")
    return f"the server refused the request: {code} (HTTP {status}){': ' + message if message else ''}"


def _display_endpoint(endpoint: str | None) -> str:
    """The endpoint without userinfo, query or fragment, safe to print."""
    if not endpoint:
        return "(default AWS endpoint)"
    if "://" not in endpoint:  # no scheme: urlsplit would take "user:" for one and keep the rest
        return endpoint.split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    parts = urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
