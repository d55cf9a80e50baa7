"""fetch_dataset: every source kind, every kind of bad input, and nothing half-written, ever.

Each bad-input test checks three things: the error type, a message that names what is
wrong (column, path, checksum, status), and that the destination directory holds
exactly what it held before (an earlier download, untouched, and no temp file).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import OLD_CONTENT

from ccfraud import schema, sources
from ccfraud.schema import SchemaError
from ccfraud.sources import SourceError, fetch_dataset, redact


def valid_frame(rows: int = 8, frauds: int = 2) -> pd.DataFrame:
    """A small creditcard-shaped frame with distinct rows."""
    rng = np.random.default_rng(0)
    data = {column: rng.normal(size=rows).round(6) for column in schema.FEATURES}
    data[schema.TIME] = np.arange(rows, dtype=float)
    data[schema.AMOUNT] = rng.uniform(0, 100, size=rows).round(2)
    data[schema.TARGET] = [1] * frauds + [0] * (rows - frauds)
    return pd.DataFrame(data)[schema.COLUMNS]


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)


def quoted_like_real_file(frame: pd.DataFrame) -> str:
    """The Kaggle file's layout: quoted header, quoted Class values, bare numbers elsewhere."""
    lines = [",".join(f'"{c}"' for c in frame.columns)]
    for row in frame.itertuples(index=False):
        *features, label = row
        lines.append(",".join([*(repr(float(v)) for v in features), f'"{label}"']))
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def no_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home and no $NETRC, so the user's own ~/.netrc never takes part; returns the home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    return home


def assert_untouched(out_dir: Path) -> None:
    """Only the earlier file is there, byte for byte: no temp file, no partial replacement."""
    assert sorted(p.name for p in out_dir.iterdir()) == ["creditcard.csv"]
    assert (out_dir / "creditcard.csv").read_bytes() == OLD_CONTENT


def write_source(tmp_path: Path, content: str | bytes, name: str = "source.csv") -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def with_cell(column: str, row: int, value: object) -> str:
    frame = valid_frame().astype(object)
    frame.loc[row, column] = value
    return csv_text(frame)


BAD_CONTENT: dict[str, tuple[str | bytes, str]] = {
    "renamed column": (
        csv_text(valid_frame().rename(columns={"V3": "v3"})),
        r"missing column\(s\) \['V3'\].*unexpected column\(s\) \['v3'\]",
    ),
    "missing column": (csv_text(valid_frame().drop(columns=["Amount"])), r"missing column\(s\) \['Amount'\]"),
    "extra column": (csv_text(valid_frame().assign(Extra=1)), r"unexpected column\(s\) \['Extra'\]"),
    "text in a numeric column": (
        with_cell("V5", 3, "abc"), r"column 'V5': 1 non-numeric value\(s\), first at row 3: 'abc'"
    ),
    "NaN": (with_cell("V7", 4, ""), r"column 'V7': 1 missing or infinite value\(s\), first at row 4"),
    "inf": (
        with_cell("Amount", 5, "inf"), r"column 'Amount': 1 missing or infinite value\(s\), first at row 5"
    ),
    "empty file": ("", r"empty file \(0 bytes\)"),
    "blank lines only": ("\n\n\n", r"empty file"),
    "header only": (",".join(schema.COLUMNS) + "\n", r"no data rows"),
    "only one class": (csv_text(valid_frame(frauds=0)), r"column 'Class': no fraud \(Class 1\) rows"),
    "Class value 2": (
        with_cell("Class", 6, 2), r"column 'Class': 1 value\(s\) outside \{0, 1\}, first at row 6"
    ),
    "ragged row": (csv_text(valid_frame()) + "1,2,3," * 12 + "\n", r"not a well-formed CSV file.*line 10"),
    "a trailing comma on every row": (
        csv_text(valid_frame()).replace("\n", ",\n").replace(",\n", "\n", 1),
        r"the rows have one field more than the header's 31 names .*every column would shift by one",
    ),
    "True/False column": (
        csv_text(valid_frame().assign(V3=[False, True] * 4)),
        r"column 'V3': 8 boolean value\(s\), expected numbers, first at row 0: False",
    ),
    "True among empty cells": (
        csv_text(valid_frame().assign(V3=[None, None, True, None, None, None, False, None])),
        r"column 'V3': 2 boolean value\(s\), expected numbers, first at row 2: True",
    ),
    "integer too large for a float": (
        csv_text(valid_frame().assign(Time=[0, 10**400, 2, 3, 4, 5, 6, 7])),
        r"column 'Time': 1 integer\(s\) too large for a float .*first at row 1: a 1329-bit integer",
    ),
    "gzip bytes": (b"\x1f\x8b\x08\x00\xff\xfe\x00\x00", r"not a UTF-8 text file"),
}


@pytest.mark.parametrize("case", BAD_CONTENT, ids=list(BAD_CONTENT))
def test_bad_content_is_refused_with_a_message_naming_the_problem(case: str, tmp_path: Path, out_dir: Path):
    content, message = BAD_CONTENT[case]
    source = write_source(tmp_path, content)
    with pytest.raises(SchemaError, match=message) as caught:
        fetch_dataset(source, out_dir / "creditcard.csv")
    assert str(source) in str(caught.value), "the message says which source was bad"
    assert_untouched(out_dir)


def test_checksum_mismatch_names_both_checksums(tmp_path: Path, out_dir: Path):
    source = write_source(tmp_path, csv_text(valid_frame()))
    actual = hashlib.md5(source.read_bytes()).hexdigest()
    wrong = "0" * 32
    with pytest.raises(SourceError, match=f"checksum mismatch: expected md5 {wrong}, got {actual}"):
        fetch_dataset(source, out_dir / "creditcard.csv", expected_md5=wrong)
    assert_untouched(out_dir)


def test_malformed_expected_md5_is_refused_before_fetching(tmp_path: Path, out_dir: Path):
    source = write_source(tmp_path, csv_text(valid_frame()))
    with pytest.raises(SourceError, match=r"expected_md5 'abc' is not an MD5 checksum"):
        fetch_dataset(source, out_dir / "creditcard.csv", expected_md5="abc")
    assert_untouched(out_dir)


def test_missing_local_file_names_the_path(tmp_path: Path, out_dir: Path):
    missing = tmp_path / "nowhere" / "creditcard.csv"
    with pytest.raises(SourceError, match=f"local file {missing} does not exist"):
        fetch_dataset(missing, out_dir / "creditcard.csv")
    assert_untouched(out_dir)


def test_directory_as_source_is_refused(tmp_path: Path, out_dir: Path):
    with pytest.raises(SourceError, match="is a directory"):
        fetch_dataset(tmp_path, out_dir / "creditcard.csv")
    assert_untouched(out_dir)


def test_directory_as_destination_is_refused(tmp_path: Path, out_dir: Path):
    source = write_source(tmp_path, csv_text(valid_frame()))
    with pytest.raises(SourceError, match=f"destination {out_dir} is a directory"):
        fetch_dataset(source, out_dir)
    assert_untouched(out_dir)


def test_file_uri_with_a_host_is_refused(out_dir: Path):
    with pytest.raises(SourceError, match="file:// URIs name no host; got host 'data'"):
        fetch_dataset("file://data/creditcard.csv", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


def test_unsupported_scheme_lists_the_supported_ones(out_dir: Path):
    with pytest.raises(SourceError, match=r"unsupported source scheme 'ftp'.*'s3://'.*'synthetic://'"):
        fetch_dataset("ftp://example.org/creditcard.csv", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url_says_connection_refused(out_dir: Path):
    port = closed_port()
    with pytest.raises(SourceError, match=rf"http://127.0.0.1:{port}/x.csv: cannot reach 127.0.0.1: "
                                          r"connection refused"):
        fetch_dataset(f"http://127.0.0.1:{port}/x.csv", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@contextlib.contextmanager
def serve_directory(root: Path, handler_class: type[_QuietHandler] = _QuietHandler) -> Iterator[str]:
    """Serve ``root`` on a free loopback port with ``handler_class``; yield the base URL."""

    def handler(*args: object, **kwargs: object) -> _QuietHandler:
        return handler_class(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on loopback serving a temporary directory: (base URL, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as base:
        yield base, root


def test_http_404_names_the_status(http_root: tuple[str, Path], out_dir: Path):
    base, _ = http_root
    with pytest.raises(SourceError, match=rf"{base}/missing.csv: the server answered HTTP 404"):
        fetch_dataset(f"{base}/missing.csv", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


def test_http_errors_keep_harmless_query_parameters(http_root: tuple[str, Path], out_dir: Path):
    base, _ = http_root
    with pytest.raises(SourceError, match=rf"{base}/missing.csv\?version=2: the server answered HTTP 404"):
        fetch_dataset(f"{base}/missing.csv?version=2", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


# Nothing listens on the port, so a URI that got past the refusal would fail differently ("connection refused").
_NOWHERE = f"127.0.0.1:{closed_port()}"
USERINFO = "a user name or password before '@'"
SECRET_QUERY = "secret-looking query parameter"
URIS_WITH_CREDENTIALS: dict[str, tuple[str, str, list[str]]] = {
    # name: (source URI, the problem the message names, secrets it must not show)
    "user and password": (f"http://alice:hunter2@{_NOWHERE}/creditcard.csv", USERINFO, ["alice", "hunter2"]),
    "token as user name": (f"https://ghp_T0KEN@{_NOWHERE}/creditcard.csv", USERINFO, ["ghp_T0KEN"]),
    "token parameter": (f"http://{_NOWHERE}/creditcard.csv?token=s3cr3t&version=2", f"{SECRET_QUERY}.*'token'",
                        ["s3cr3t"]),
    "pre-signed S3 URL": (
        f"https://{_NOWHERE}/creditcard.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F2024"
        "&X-Amz-Signature=deadbeef",
        f"{SECRET_QUERY}.*'X-Amz-Credential', 'X-Amz-Signature'",
        ["AKIAEXAMPLE", "deadbeef"],
    ),
    "api key and password": (f"http://{_NOWHERE}/d.csv?api_key=k3y&password=pa55", SECRET_QUERY, ["k3y", "pa55"]),
    "keys in an s3 URI": ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/creditcard.csv", USERINFO,
                          ["AKIAEXAMPLE", "wJalrXUtnFEMI"]),
    "token in the fragment": (f"https://{_NOWHERE}/creditcard.csv#access_token=t0k3n", "secret-looking fragment",
                              ["t0k3n"]),
}


@pytest.mark.parametrize("case", URIS_WITH_CREDENTIALS, ids=list(URIS_WITH_CREDENTIALS))
def test_a_source_carrying_credentials_is_refused_without_repeating_them(case: str, out_dir: Path):
    uri, problem, secrets = URIS_WITH_CREDENTIALS[case]
    with pytest.raises(SourceError, match=rf"^source .* carries credentials \({problem}") as caught:
        fetch_dataset(uri, out_dir / "creditcard.csv")
    message = str(caught.value)
    assert "secrets must never be parameters" in message
    assert "~/.netrc" in message and "AWS profile" in message, "the message says where credentials go instead"
    assert not [secret for secret in secrets if secret in message]
    assert_untouched(out_dir)


def test_harmless_parameters_stay_in_the_refusal(out_dir: Path):
    uri, _, _ = URIS_WITH_CREDENTIALS["token parameter"]
    with pytest.raises(SourceError, match=rf"source http://{_NOWHERE}/creditcard.csv\?version=2 carries"):
        fetch_dataset(uri, out_dir / "creditcard.csv")


def test_refused_source_creates_no_destination_directory(tmp_path: Path):
    uri, _, _ = URIS_WITH_CREDENTIALS["user and password"]
    with pytest.raises(SourceError, match="carries credentials"):
        fetch_dataset(uri, tmp_path / "new" / "creditcard.csv")
    assert not (tmp_path / "new").exists()


def test_an_endpoint_url_carrying_credentials_is_refused(out_dir: Path):
    with pytest.raises(SourceError, match=rf"^endpoint_url http://{_NOWHERE} carries credentials") as caught:
        fetch_dataset("s3://bucket/creditcard.csv", out_dir / "creditcard.csv",
                      endpoint_url=f"http://AKIAEXAMPLE:wJalrXUtnFEMI@{_NOWHERE}")
    assert "AKIAEXAMPLE" not in str(caught.value) and "wJalrXUtnFEMI" not in str(caught.value)
    assert_untouched(out_dir)


def test_a_malformed_uri_is_a_source_error_that_does_not_echo_it(out_dir: Path):
    with pytest.raises(SourceError, match=r"^source: malformed URI \(Invalid IPv6 URL\)$"):
        fetch_dataset("https://[::1/creditcard.csv?token=s3cr3t", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


def test_invalid_synthetic_parameters_are_a_source_error(out_dir: Path):
    with pytest.raises(SourceError, match="rows"):
        fetch_dataset("synthetic://?rows=abc", out_dir / "creditcard.csv")
    assert_untouched(out_dir)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, MemoryError])
def test_interrupted_fetch_leaves_nothing(interrupt: type[BaseException], tmp_path: Path, out_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    source = write_source(tmp_path, csv_text(valid_frame()))

    def stop(*_: object, **__: object) -> None:
        raise interrupt()

    monkeypatch.setattr(schema, "validate_dataset", stop)
    with pytest.raises(interrupt):
        fetch_dataset(source, out_dir / "creditcard.csv")
    assert_untouched(out_dir)


# ---------------------------------------------------------------- happy paths


def check_fetched(summary: sources.DatasetSummary, dest: Path, expected: bytes) -> None:
    """The destination holds exactly the source bytes and the summary describes them."""
    assert dest.read_bytes() == expected
    assert summary.path == str(dest)
    assert summary.size_bytes == len(expected)
    assert summary.source_md5 == hashlib.md5(expected).hexdigest()
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name], "no temp file is left"


def test_local_path_replaces_an_earlier_download(tmp_path: Path, out_dir: Path):
    content = csv_text(valid_frame(rows=10, frauds=3)).encode()
    source = write_source(tmp_path, content)
    dest = out_dir / "creditcard.csv"
    summary = fetch_dataset(source, dest)
    check_fetched(summary, dest, content)
    assert (summary.rows, summary.frauds, summary.legit) == (10, 3, 7)
    assert summary.fraud_rate == pytest.approx(0.3)
    assert summary.source == str(source)


def test_relative_path_and_new_destination_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    content = csv_text(valid_frame()).encode()
    write_source(tmp_path, content)
    monkeypatch.chdir(tmp_path)
    summary = fetch_dataset("in/source.csv", "data/raw/creditcard.csv")
    check_fetched(summary, Path("data/raw/creditcard.csv"), content)  # the path as given, for reports


def test_file_uri(tmp_path: Path):
    content = csv_text(valid_frame()).encode()
    source = write_source(tmp_path, content, name="credit card.csv")  # a space, percent-encoded in the URI
    dest = tmp_path / "out" / "creditcard.csv"
    summary = fetch_dataset(source.as_uri(), dest)
    assert "%20" in source.as_uri()
    check_fetched(summary, dest, content)


def test_http_download(http_root: tuple[str, Path], tmp_path: Path):
    base, root = http_root
    content = csv_text(valid_frame()).encode()
    (root / "creditcard.csv").write_bytes(content)
    dest = tmp_path / "out" / "creditcard.csv"
    summary = fetch_dataset(f"{base}/creditcard.csv", dest)
    check_fetched(summary, dest, content)
    assert summary.source == f"{base}/creditcard.csv"


# ---------------------------------------------------------------- HTTP credentials from ~/.netrc

ALICE = "Basic " + base64.b64encode(b"alice:hunter2").decode()
NETRC_ENTRY = "machine 127.0.0.1 login alice password hunter2\n"


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[tuple[str, str, str | None]]]]:
    """A loopback server: (base URL, served directory, requests seen as (host, path, Authorization)).

    ``/private/NAME`` answers 401 unless the request carries alice's Basic login; ``/moved/NAME``
    redirects to ``/public/NAME`` on ``localhost`` (another host name for the same server);
    ``/public/NAME`` serves anyone.
    """
    root = tmp_path / "private-www"
    root.mkdir()
    seen: list[tuple[str, str, str | None]] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization")
            seen.append((self.headers.get("Host", ""), self.path, authorization))
            area, _, name = self.path.lstrip("/").partition("/")
            if area == "moved":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/public/{name}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif area == "private" and authorization != ALICE:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="data"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.path = f"/{name}"
                super().do_GET()

    with serve_directory(root, Handler) as base:
        yield base, root, seen


def write_netrc(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("where", ["~/.netrc", "$NETRC"])
def test_http_login_comes_from_netrc(where: str, private_server, no_netrc: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch):
    base, root, seen = private_server
    content = csv_text(valid_frame()).encode()
    (root / "creditcard.csv").write_bytes(content)
    if where == "~/.netrc":
        write_netrc(no_netrc / ".netrc", NETRC_ENTRY)
    else:
        monkeypatch.setenv("NETRC", str(write_netrc(tmp_path / "credentials", NETRC_ENTRY)))
    dest = tmp_path / "out" / "creditcard.csv"
    summary = fetch_dataset(f"{base}/private/creditcard.csv", dest)
    check_fetched(summary, dest, content)
    assert [authorization for _, _, authorization in seen] == [ALICE], "sent at once, not after a 401"
    assert "hunter2" not in json.dumps(summary.to_dict())


def test_http_without_a_netrc_login_gets_the_servers_refusal(private_server, out_dir: Path):
    base, root, seen = private_server
    (root / "creditcard.csv").write_text(csv_text(valid_frame()))
    with pytest.raises(SourceError, match=r"/private/creditcard.csv: the server answered HTTP 401"):
        fetch_dataset(f"{base}/private/creditcard.csv", out_dir / "creditcard.csv")
    assert [authorization for _, _, authorization in seen] == [None]
    assert_untouched(out_dir)


def test_netrc_login_is_not_sent_to_another_host_after_a_redirect(private_server, no_netrc: Path, tmp_path: Path):
    base, root, seen = private_server
    (root / "creditcard.csv").write_text(csv_text(valid_frame()))
    write_netrc(no_netrc / ".netrc", NETRC_ENTRY)
    fetch_dataset(f"{base}/moved/creditcard.csv", tmp_path / "out" / "creditcard.csv")
    assert [(host.partition(":")[0], authorization) for host, _, authorization in seen] == [
        ("127.0.0.1", ALICE), ("localhost", None)]


@pytest.mark.skipif(os.name != "posix", reason="the ~/.netrc permission check is POSIX-only")
def test_a_netrc_readable_by_others_is_refused(private_server, no_netrc: Path, out_dir: Path):
    base, _, seen = private_server
    write_netrc(no_netrc / ".netrc", NETRC_ENTRY, mode=0o644)
    with pytest.raises(SourceError, match=r"\.netrc: cannot use it for HTTP credentials: .*too permissive") as caught:
        fetch_dataset(f"{base}/private/creditcard.csv", out_dir / "creditcard.csv")
    assert "hunter2" not in str(caught.value)
    assert seen == [], "nothing was sent"
    assert_untouched(out_dir)


def test_a_malformed_netrc_is_refused_without_quoting_it(private_server, tmp_path: Path, out_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    base, _, seen = private_server
    # "password" is missing, so the parser meets the password itself where a keyword belongs.
    path = write_netrc(tmp_path / "credentials", "machine 127.0.0.1 login alice hunter2\n")
    monkeypatch.setenv("NETRC", str(path))
    refusal = rf"^{path}: cannot use it for HTTP credentials: syntax error at line \d+$"
    with pytest.raises(SourceError, match=refusal) as caught:
        fetch_dataset(f"{base}/private/creditcard.csv", out_dir / "creditcard.csv")
    assert "hunter2" not in str(caught.value)
    assert seen == []
    assert_untouched(out_dir)


def test_quoted_header_and_values_like_the_real_file(tmp_path: Path):
    content = quoted_like_real_file(valid_frame())
    assert content.startswith('"Time","V1",') and content.splitlines()[1].endswith(',"1"')
    source = write_source(tmp_path, content)
    summary = fetch_dataset(source, tmp_path / "out" / "creditcard.csv")
    assert (summary.rows, summary.frauds) == (8, 2)


def test_matching_md5_is_accepted_in_any_case(tmp_path: Path):
    content = csv_text(valid_frame()).encode()
    source = write_source(tmp_path, content)
    md5 = hashlib.md5(content).hexdigest()
    summary = fetch_dataset(source, tmp_path / "out" / "creditcard.csv", expected_md5=f" {md5.upper()} ")
    assert summary.source_md5 == md5


def test_summary_counts_duplicates_and_serialises(tmp_path: Path):
    frame = valid_frame(rows=6, frauds=2)
    frame = pd.concat([frame, frame.iloc[[0, 3, 3]]], ignore_index=True)  # 3 exact duplicate rows
    source = write_source(tmp_path, csv_text(frame))
    summary = fetch_dataset(source, tmp_path / "out" / "creditcard.csv")
    assert (summary.rows, summary.duplicate_rows, summary.frauds, summary.legit) == (9, 3, 3, 6)
    as_dict = json.loads(json.dumps(summary.to_dict()))
    assert set(as_dict) == {"source", "path", "size_bytes", "source_md5", "rows", "duplicate_rows", "frauds",
                            "legit", "fraud_rate", "engine", "kind", "files", "parts"}
    assert as_dict["fraud_rate"] == pytest.approx(3 / 9)


def test_synthetic_source_is_written_like_the_real_file(tmp_path: Path):
    uri = "synthetic://?rows=2000&frauds=20&seed=1"
    first = fetch_dataset(uri, tmp_path / "a" / "creditcard.csv")
    second = fetch_dataset(uri, tmp_path / "b" / "creditcard.csv")
    assert (first.rows, first.frauds, first.legit) == (2000, 20, 1980)
    assert first.source_md5 == second.source_md5, "the same URI gives the same bytes"
    header = (tmp_path / "a" / "creditcard.csv").read_text().splitlines()[0]
    assert header == ",".join(f'"{c}"' for c in schema.COLUMNS)
    from ccfraud import synthetic

    written = pd.read_csv(tmp_path / "a" / "creditcard.csv")
    expected = synthetic.generate_from_uri(uri)
    np.testing.assert_array_equal(written.to_numpy(dtype=float), expected.to_numpy(dtype=float))


# ---------------------------------------------------------------- redact

REDACTIONS: dict[str, tuple[str, str]] = {
    "userinfo": ("https://alice:hunter2@example.org/data.csv", "https://example.org/data.csv"),
    "user only": ("https://alice@example.org:8443/data.csv", "https://example.org:8443/data.csv"),
    "presigned S3": (
        "https://b.s3.amazonaws.com/k.csv?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ff"
        "&X-Amz-Security-Token=tok&versionId=3",
        "https://b.s3.amazonaws.com/k.csv?versionId=3",
    ),
    "tokens and keys": (
        "https://example.org/d.csv?api_key=1&access_token=2&sig=3&password=4&Secret=5&dl=1#frag",
        "https://example.org/d.csv?dl=1",
    ),
    "s3": ("s3://bucket/raw/creditcard.csv", "s3://bucket/raw/creditcard.csv"),
    "synthetic": ("synthetic://?rows=100&frauds=5&seed=1", "synthetic://?rows=100&frauds=5&seed=1"),
    "local path": ("data/raw/creditcard.csv", "data/raw/creditcard.csv"),
    "file uri": ("file:///data/creditcard.csv", "file:///data/creditcard.csv"),
}


@pytest.mark.parametrize("case", REDACTIONS, ids=list(REDACTIONS))
def test_redact(case: str):
    uri, expected = REDACTIONS[case]
    assert redact(uri) == expected

