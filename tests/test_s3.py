"""The S3 layer against a real S3 server (SeaweedFS), including the ways S3 goes wrong.

Every fault test checks: the error type, a message naming ``s3://bucket/key`` and the
cause in plain words, no secret in the message, a bounded time, and a destination
directory left as it was (an earlier download untouched, no temp file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import closing_server
from s3_fixtures import isolate_aws_environment
from test_sources import assert_untouched, closed_port, csv_text, valid_frame

from ccfraud import s3
from ccfraud.s3 import S3Error
from ccfraud.s3_server import LocalS3Server
from ccfraud.schema import SchemaError
from ccfraud.sources import SourceError, fetch_dataset

MiB = 1024 * 1024
#: A transfer must fail within this many seconds once the server is gone (retries included).
FAULT_DEADLINE = 25.0


def unique(name: str) -> str:
    """A key of its own for each test: the session server is shared."""
    return f"tests/{uuid.uuid4().hex[:12]}/{name}"


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def check_message(error: BaseException, server: LocalS3Server, *expected: str) -> None:
    """The message holds every ``expected`` fragment and neither secret key."""
    message = str(error)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert server.secret_key not in message
    assert "wrong-secret-value" not in message


# ---------------------------------------------------------------- URIs (no server needed)


def test_parse_s3_uri_keeps_the_key_verbatim():
    assert s3.parse_s3_uri("s3://bucket/raw/credit card?.csv") == ("bucket", "raw/credit card?.csv")
    assert s3.parse_s3_uri("s3://bucket/models/", require_key=False) == ("bucket", "models/")
    assert s3.parse_s3_uri("s3://bucket", require_key=False) == ("bucket", "")


@pytest.mark.parametrize(("uri", "message"), [
    ("https://bucket/key", "not an S3 URI: 'https://bucket/key'"),
    ("s3:///key", "no bucket name in 's3:///key'"),
    ("s3://bucket", "no object key in 's3://bucket'"),
    ("s3://bucket/models/", "no object key in 's3://bucket/models/'"),
])
def test_parse_s3_uri_errors(uri: str, message: str):
    with pytest.raises(S3Error, match=message.replace("?", r"\?")):
        s3.parse_s3_uri(uri)


def test_credentials_in_a_uri_are_refused_without_echoing_them():
    with pytest.raises(S3Error, match="must not embed credentials") as caught:
        s3.parse_s3_uri("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/key")
    assert "wJalrXUtnFEMI" not in str(caught.value)


def test_invalid_endpoint_is_named_without_its_userinfo():
    with pytest.raises(S3Error, match=r"invalid S3 endpoint URL 'localhost:9000'; expected http\(s\)://host:port"):
        s3.make_client("localhost:9000")
    # Without a scheme urlsplit reads the user name as one: the userinfo must still not be echoed.
    with pytest.raises(S3Error, match=r"invalid S3 endpoint URL 'localhost:9000'") as caught:
        s3.make_client("AKIAX:s3cr3t@localhost:9000")
    assert "s3cr3t" not in str(caught.value) and "AKIAX" not in str(caught.value)


def test_uploading_a_missing_file_names_it(tmp_path: Path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(S3Error, match=f"cannot upload {missing} to s3://bucket/k: no such file"):
        s3.upload(missing, "s3://bucket/k")


# ---------------------------------------------------------------- transfers


@pytest.mark.s3
def test_upload_download_roundtrip(s3_env: LocalS3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="ccfraud")
    data = random_file(tmp_path / "in" / "small.bin", 1000)
    uri = f"s3://{s3_env.bucket}/{unique('small.bin')}"
    assert s3.upload(tmp_path / "in" / "small.bin", uri) == 1000
    dest = tmp_path / "out" / "small.bin"
    assert s3.download(uri, dest) == 1000
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["small.bin"]
    assert s3_env.secret_key not in caplog.text


@pytest.mark.s3
def test_large_object_goes_multipart_and_roundtrips(s3_env: LocalS3Server, tmp_path: Path):
    size = 2 * s3.MULTIPART_CHUNKSIZE + 12345  # three parts
    data = random_file(tmp_path / "in" / "large.bin", size)
    key = unique("large.bin")
    uri = f"s3://{s3_env.bucket}/{key}"
    received: list[int] = []
    s3.upload(tmp_path / "in" / "large.bin", uri)
    etag = s3_env.client().head_object(Bucket=s3_env.bucket, Key=key)["ETag"]  # type: ignore[attr-defined]
    assert etag.strip('"').endswith("-3"), f"a multipart upload's ETag ends in -<parts>, got {etag}"
    dest = tmp_path / "out" / "large.bin"
    s3.download(uri, dest, callback=received.append)
    assert hashlib.md5(dest.read_bytes()).hexdigest() == hashlib.md5(data).hexdigest()
    assert sum(received) == size, "the callback saw every byte"
    assert os.listdir(dest.parent) == ["large.bin"]


@pytest.mark.s3
def test_upload_directory_and_list_keys(s3_env: LocalS3Server, tmp_path: Path):
    model = tmp_path / "model"
    random_file(model / "model.skops", 300)
    random_file(model / "meta" / "metadata.json", 50)
    prefix = f"s3://{s3_env.bucket}/{unique('models')}/v1/"
    written = s3.upload_directory(model, prefix)
    assert written == [f"{prefix}meta/metadata.json", f"{prefix}model.skops"]
    bucket, key_prefix = s3.parse_s3_uri(prefix, require_key=False)
    assert s3.list_keys(prefix) == [f"{key_prefix}meta/metadata.json", f"{key_prefix}model.skops"]
    assert s3.list_keys(f"s3://{bucket}/{unique('nothing-here')}") == []


@pytest.mark.s3
def test_fetch_dataset_from_s3(s3_env: LocalS3Server, tmp_path: Path, out_dir: Path):
    content = csv_text(valid_frame(rows=12, frauds=3)).encode()
    source = tmp_path / "creditcard.csv"
    source.write_bytes(content)
    uri = f"s3://{s3_env.bucket}/{unique('creditcard.csv')}"
    s3.upload(source, uri)
    summary = fetch_dataset(uri, out_dir / "creditcard.csv", expected_md5=hashlib.md5(content).hexdigest())
    assert (out_dir / "creditcard.csv").read_bytes() == content
    assert (summary.source, summary.rows, summary.frauds) == (uri, 12, 3)
    assert os.listdir(out_dir) == ["creditcard.csv"]


@pytest.mark.s3
def test_endpoint_argument_works_without_the_environment_variable(
        s3_env: LocalS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    uri = f"s3://{s3_env.bucket}/{unique('x.bin')}"
    data = random_file(tmp_path / "x.bin", 10)
    s3.upload(tmp_path / "x.bin", uri)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3.download(uri, tmp_path / "back.bin", endpoint_url=s3_env.endpoint_url)
    assert (tmp_path / "back.bin").read_bytes() == data


# ---------------------------------------------------------------- faults


@pytest.fixture
def stored(s3_env: LocalS3Server, tmp_path: Path) -> str:
    """The URI of a small valid dataset on the server."""
    source = tmp_path / "stored.csv"
    source.write_text(csv_text(valid_frame()))
    uri = f"s3://{s3_env.bucket}/{unique('creditcard.csv')}"
    s3.upload(source, uri)
    return uri


@pytest.mark.s3
def test_wrong_secret_key(s3_env: LocalS3Server, stored: str, out_dir: Path,
                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-0123456789")
    with pytest.raises(S3Error) as caught:
        s3.download(stored, out_dir / "creditcard.csv")
    check_message(caught.value, s3_env, f"cannot download {stored}: wrong credentials",
                  "secret key does not match", "AWS_SECRET_ACCESS_KEY")
    assert_untouched(out_dir)


@pytest.mark.s3
def test_unknown_access_key(s3_env: LocalS3Server, stored: str, out_dir: Path,
                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY")
    with pytest.raises(S3Error) as caught:
        s3.download(stored, out_dir / "creditcard.csv")
    check_message(caught.value, s3_env, f"cannot download {stored}: wrong credentials",
                  "does not know this access key ID")
    assert_untouched(out_dir)


@pytest.mark.s3
def test_no_credentials_at_all(s3_env: LocalS3Server, stored: str, out_dir: Path,
                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3Error) as caught:
        s3.download(stored, out_dir / "creditcard.csv")
    check_message(caught.value, s3_env, f"cannot download {stored}: no AWS credentials found")
    assert_untouched(out_dir)


@pytest.mark.s3
def test_each_client_takes_the_credentials_in_the_environment_as_it_is_now(
        s3_env: LocalS3Server, stored: str, out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """make_client keeps its boto3 session only while the AWS_* variables stay the same: a key changed
    between two transfers is the one the next transfer signs with, and changing it back works again."""
    s3.download(stored, out_dir / "first.csv")
    right = os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-0123456789")
    with pytest.raises(S3Error, match="wrong credentials"):
        s3.download(stored, out_dir / "second.csv")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", right)
    s3.download(stored, out_dir / "third.csv")
    assert (out_dir / "third.csv").read_bytes() == (out_dir / "first.csv").read_bytes()


@pytest.mark.s3
def test_a_key_rotated_in_the_credentials_file_is_the_one_the_next_transfer_signs_with(
        s3_env: LocalS3Server, stored: str, out_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    credentials = tmp_path / "aws-credentials"
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))

    def rotate(secret_key: str) -> None:
        credentials.write_text(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret_key}\n")

    rotate(secret)
    s3.download(stored, out_dir / "first.csv")
    rotate("a-wrong-secret-of-another-length")
    with pytest.raises(S3Error, match="wrong credentials"):
        s3.download(stored, out_dir / "second.csv")
    rotate(secret)
    s3.download(stored, out_dir / "third.csv")


def test_a_child_forked_while_a_client_is_being_made_makes_its_own():
    """A fork while another thread holds the session lock (a gunicorn or multiprocessing fork, say): the child
    starts with no session and a free lock, instead of waiting forever for a lock no thread of its owns."""
    with s3._session_lock:
        child = os.fork()
        if child == 0:  # the child: exit 0 once it has a client, 1 on any error, 2 if stuck for 60 s
            signal.alarm(60)
            signal.signal(signal.SIGALRM, lambda *_: os._exit(2))
            try:
                s3.make_client("http://127.0.0.1:9")
            except BaseException:
                os._exit(1)
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.s3
def test_clients_made_in_many_threads_at_once_all_work(s3_env: LocalS3Server, stored: str):
    """Clients made in eight threads at once (from one shared session) all list the bucket."""
    bucket = stored.split("/")[2]
    start = threading.Barrier(8)

    def list_with_a_new_client(_: int) -> list[str]:
        start.wait()
        client = s3.make_client()
        return [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    with ThreadPoolExecutor(8) as pool:
        listings = list(pool.map(list_with_a_new_client, range(8)))
    assert all(stored.split("/", 3)[3] in keys for keys in listings)


@pytest.mark.s3
def test_missing_bucket(s3_env: LocalS3Server, out_dir: Path):
    uri = "s3://no-such-bucket-ccfraud/raw/creditcard.csv"
    with pytest.raises(S3Error) as caught:
        s3.download(uri, out_dir / "creditcard.csv")
    check_message(caught.value, s3_env,
                  f"cannot download {uri}: bucket 'no-such-bucket-ccfraud' does not exist")
    assert_untouched(out_dir)


@pytest.mark.s3
def test_missing_key(s3_env: LocalS3Server, out_dir: Path):
    key = unique("creditcard.csv")
    uri = f"s3://{s3_env.bucket}/{key}"
    with pytest.raises(S3Error) as caught:
        s3.download(uri, out_dir / "creditcard.csv")
    check_message(caught.value, s3_env, f"cannot download {uri}: no object with key '{key}' in bucket")
    assert_untouched(out_dir)


@pytest.mark.s3
def test_upload_to_missing_bucket(s3_env: LocalS3Server, tmp_path: Path):
    random_file(tmp_path / "x.bin", 10)
    with pytest.raises(S3Error) as caught:
        s3.upload(tmp_path / "x.bin", "s3://no-such-bucket-ccfraud/x.bin")
    check_message(caught.value, s3_env, "cannot upload s3://no-such-bucket-ccfraud/x.bin: bucket "
                                        "'no-such-bucket-ccfraud' does not exist")


@pytest.mark.s3
def test_upload_with_wrong_secret(s3_env: LocalS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    random_file(tmp_path / "x.bin", 10)
    uri = f"s3://{s3_env.bucket}/{unique('x.bin')}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-0123456789")
    with pytest.raises(S3Error) as caught:
        s3.upload(tmp_path / "x.bin", uri)
    check_message(caught.value, s3_env, f"cannot upload {uri}: wrong credentials")


@pytest.mark.s3
def test_server_down_fails_fast_naming_the_endpoint(s3_env: LocalS3Server, out_dir: Path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    uri = f"s3://{s3_env.bucket}/raw/creditcard.csv"
    started = time.monotonic()
    with pytest.raises(S3Error) as caught:
        s3.download(uri, out_dir / "creditcard.csv", endpoint_url=endpoint)
    assert time.monotonic() - started < FAULT_DEADLINE
    check_message(caught.value, s3_env,
                  f"cannot download {uri}: cannot connect to the S3 endpoint {endpoint}")
    assert_untouched(out_dir)


@pytest.mark.parametrize(("setting", "attempts"), [(None, s3.MAX_ATTEMPTS), ("2", 2), ("1", 1)])
def test_a_failing_call_is_tried_max_attempts_times_in_all(setting: str | None, attempts: int, tmp_path: Path,
                                                             out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Three attempts, first try included, unless AWS_MAX_ATTEMPTS says otherwise; the message gives the count.

    (botocore's ``max_attempts`` config key counts retries: given 3, it made four attempts.)
    """
    isolate_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    if setting is not None:
        monkeypatch.setenv(s3.MAX_ATTEMPTS_ENV, setting)
    made = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    with closing_server(b"") as (port, requests):  # every connection closed unanswered
        with pytest.raises(S3Error, match=rf"broke during the transfer \(.*\), still after {made}$"):
            s3.download("s3://bucket/raw/creditcard.csv", out_dir / "creditcard.csv",
                        endpoint_url=f"http://127.0.0.1:{port}")
    assert len(requests) == attempts
    assert_untouched(out_dir)


@pytest.mark.parametrize("setting", ["three", "0", "-1", "2.5"])
def test_a_bad_max_attempts_setting_is_named(setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    isolate_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv(s3.MAX_ATTEMPTS_ENV, setting)
    expected = f"AWS_MAX_ATTEMPTS must be a whole number of attempts, 1 or more; got '{setting}'"
    with pytest.raises(S3Error, match=re.escape(expected)):
        s3.make_client("http://127.0.0.1:9")


@pytest.mark.s3
@pytest.mark.parametrize("fault", ["missing key", "wrong secret", "server down"])
def test_fetch_dataset_reports_s3_faults_as_source_errors(fault: str, s3_env: LocalS3Server, stored: str,
                                                          out_dir: Path, monkeypatch: pytest.MonkeyPatch):
    uri, expected = stored, "wrong credentials"
    if fault == "missing key":
        uri, expected = stored + ".missing", "no object with key"
    elif fault == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-0123456789")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        expected = "cannot connect to the S3 endpoint"
    with pytest.raises(SourceError) as caught:
        fetch_dataset(uri, out_dir / "creditcard.csv")
    check_message(caught.value, s3_env, uri, expected)
    assert_untouched(out_dir)


@pytest.mark.s3
def test_corrupted_object_fails_the_checksum(s3_env: LocalS3Server, tmp_path: Path, out_dir: Path):
    good = csv_text(valid_frame()).encode()
    corrupt = good[:-40]  # truncated in the last row, as a broken upload would leave it
    uri = f"s3://{s3_env.bucket}/{unique('creditcard.csv')}"
    (tmp_path / "corrupt.csv").write_bytes(corrupt)
    s3.upload(tmp_path / "corrupt.csv", uri)
    good_md5, bad_md5 = hashlib.md5(good).hexdigest(), hashlib.md5(corrupt).hexdigest()
    with pytest.raises(SourceError) as caught:
        fetch_dataset(uri, out_dir / "creditcard.csv", expected_md5=good_md5)
    check_message(caught.value, s3_env, f"{uri}: checksum mismatch: expected md5 {good_md5}, got {bad_md5}")
    assert_untouched(out_dir)
    with pytest.raises(SchemaError, match=f"{uri}: column '.*': 1 missing or infinite value"):
        fetch_dataset(uri, out_dir / "creditcard.csv")  # without a checksum, the schema still catches it
    assert_untouched(out_dir)


def killer(server: LocalS3Server) -> tuple[list[int], Callable[[int], None]]:
    """A byte callback that kills ``server`` when the first bytes have moved, and counts bytes."""
    moved: list[int] = []
    lock = threading.Lock()

    def on_bytes(count: int) -> None:
        with lock:
            moved.append(count)
            if server.running:
                server.kill()

    return moved, on_bytes


def use_server(server: LocalS3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_aws_environment(monkeypatch, tmp_path)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)


@pytest.mark.s3
def test_server_killed_mid_download(s3_server_fresh: LocalS3Server, tmp_path: Path, out_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch):
    use_server(s3_server_fresh, monkeypatch, tmp_path)
    size = 6 * s3.MULTIPART_CHUNKSIZE  # more parts than threads: some requests start after the kill
    random_file(tmp_path / "big.bin", size)
    uri = f"s3://{s3_server_fresh.bucket}/big.bin"
    s3.upload(tmp_path / "big.bin", uri)
    moved, on_bytes = killer(s3_server_fresh)
    started = time.monotonic()
    with pytest.raises(S3Error) as caught:
        s3.download(uri, out_dir / "creditcard.csv", callback=on_bytes)
    elapsed = time.monotonic() - started
    # s3transfer reports a retried part's bytes again as a negative count, hence moved[0].
    assert not s3_server_fresh.running and moved and moved[0] > 0, "the server died mid-transfer"
    assert elapsed < FAULT_DEADLINE, f"took {elapsed:.1f} s"
    message = str(caught.value)
    assert message.startswith(f"cannot download {uri}: ")
    assert "was lost mid-transfer" in message, message
    assert s3_server_fresh.endpoint_url in message
    assert_untouched(out_dir)
    print(f"mid-download failure after {elapsed:.1f} s: {message}")


@pytest.mark.s3
def test_server_killed_mid_upload(s3_server_fresh: LocalS3Server, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch):
    use_server(s3_server_fresh, monkeypatch, tmp_path)
    size = 6 * s3.MULTIPART_CHUNKSIZE
    random_file(tmp_path / "big.bin", size)
    uri = f"s3://{s3_server_fresh.bucket}/big.bin"
    moved, on_bytes = killer(s3_server_fresh)
    started = time.monotonic()
    with pytest.raises(S3Error) as caught:
        s3.upload(tmp_path / "big.bin", uri, callback=on_bytes)
    elapsed = time.monotonic() - started
    assert not s3_server_fresh.running and moved and moved[0] > 0, "the server died mid-transfer"
    assert elapsed < FAULT_DEADLINE, f"took {elapsed:.1f} s"
    message = str(caught.value)
    assert message.startswith(f"cannot upload {uri}: ")
    assert "was lost mid-transfer" in message, message
    print(f"mid-upload failure after {elapsed:.1f} s: {message}")
