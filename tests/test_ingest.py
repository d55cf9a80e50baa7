"""The download stage's engine: CSV, Parquet and synthetic sources become a validated lake dataset.

Real Dask (a LocalCluster of two worker processes) and a real S3 server (SeaweedFS); nothing
is mocked. Every failure test also checks that nothing was committed: an earlier dataset at
the target reads back exactly as before and no run directory is left behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest

from ccfraud import compute, ingest, lake, schema, sources, synthetic
from ccfraud.schema import SchemaError
from ccfraud.sources import SourceError

SMALL = "synthetic://?rows=3000&frauds=30&seed=2"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic.generate(rows=3000, frauds=30, seed=2)


@pytest.fixture
def earlier(tmp_path: Path) -> str:
    """A target already holding a committed dataset (another synthetic one), which failures must keep."""
    target = str(tmp_path / "raw")
    ingest.download("synthetic://?rows=500&frauds=5&seed=9", target)
    return target


def assert_unchanged(target: str) -> None:
    """The earlier dataset is still the committed one, whole, and no other part is left."""
    pd.testing.assert_frame_equal(lake.read_pandas(target), synthetic.generate(rows=500, frauds=5, seed=9))
    lake.verify(target)
    written = sorted(str(p.relative_to(target)) for p in Path(target).rglob("*.parquet"))
    assert written == sorted(part["path"] for part in lake.read_manifest(target)["parts"]), "no other part is left"


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def write_parquet_files(directory: Path, frame: pd.DataFrame, sizes: list[int]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for index, size in enumerate(sizes):
        path = directory / f"part-{index}.parquet"
        frame.iloc[start:start + size].to_parquet(path, index=False)
        paths.append(path)
        start += size
    return paths


# ---------------------------------------------------------------- synthetic


def test_a_synthetic_source_is_the_generator_s_data_in_one_part(tmp_path: Path, frame: pd.DataFrame):
    summary = ingest.download(SMALL, tmp_path / "raw")
    assert (summary.rows, summary.frauds, summary.legit, summary.parts) == (3000, 30, 2970, 1)
    assert summary.duplicate_rows == 0 and summary.source_md5 is None and summary.kind == "synthetic"
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), frame, check_exact=True)
    pd.testing.assert_frame_equal(sources.read_dataset(tmp_path / "raw"), frame, check_exact=True)
    manifest = lake.verify(str(tmp_path / "raw"))
    assert manifest["source"] == SMALL and manifest["summary"]["rows"] == 3000


def _workers_keep_dying(*arguments: Any) -> Any:
    """What the client sees when the scheduler gives up on a task whose workers died (as a task's own error)."""
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    raise KilledWorker("ingest-job-1", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)


def test_a_file_whose_workers_keep_dying_is_named_not_its_task_key(tmp_path: Path, dask_client: Any):
    tasks = [(_workers_keep_dying, (), "s3://bucket/raw/huge.parquet")]
    counter = ingest.progress.Parts("download", "test", len(tasks), stream=io.StringIO())
    with pytest.raises(SourceError) as caught:
        ingest._run_on_cluster(tasks, dask_client, "job", counter)
    assert str(caught.value) == ("s3://bucket/raw/huge.parquet: the Dask workers running it died 4 time(s) in a row "
                                 "(out of memory? see the workers' logs); nothing was committed")


def test_synthetic_partitions_are_the_same_bytes_on_the_cluster_and_here(tmp_path: Path, dask_client: Any):
    uri = "synthetic://?rows=2500&frauds=9&seed=1&partitions=3"
    here = ingest.download(uri, tmp_path / "here", partition_rows=500)
    there = ingest.download(uri, tmp_path / "there", engine="dask", partition_rows=500, client=dask_client)
    assert here.parts == there.parts == 6  # 834 + 833 + 833 rows, each cut at 500
    assert (there.rows, there.frauds, there.engine) == (2500, 9, "dask")
    digests = [[part["sha256"] for part in lake.read_manifest(str(tmp_path / name))["parts"]]
               for name in ("here", "there")]
    assert digests[0] == digests[1]
    expected = synthetic.generate_from_uri(uri)
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "there")), expected, check_exact=True)


def test_bad_synthetic_parameters_commit_nothing(earlier: str):
    with pytest.raises(SourceError, match=r"synthetic://\?rows=abc: .*'rows' must be a whole number"):
        ingest.download("synthetic://?rows=abc", earlier)
    assert_unchanged(earlier)


def test_an_unreachable_scheduler_is_named_and_nothing_is_written(earlier: str, monkeypatch):
    monkeypatch.setattr(compute, "CONNECT_TIMEOUT", 0.5)  # refused at once; Dask retries until the timeout
    with dask.config.set({"scheduler-address": "tcp://127.0.0.1:9"}):
        with pytest.raises(compute.ComputeError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
            ingest.download(SMALL, earlier, engine="dask")
    assert_unchanged(earlier)


# ---------------------------------------------------------------- CSV


def test_csv_is_converted_in_parts_equal_to_a_one_shot_read(tmp_path: Path, frame: pd.DataFrame):
    source = write_csv(tmp_path / "in" / "creditcard.csv", frame)
    summary = ingest.download(source, tmp_path / "raw", partition_rows=700)
    one_shot = schema.validate_dataset(pd.read_csv(source), where="one shot")
    manifest = lake.verify(str(tmp_path / "raw"))
    assert [part["rows"] for part in manifest["parts"]] == [700, 700, 700, 700, 200]
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), one_shot, check_exact=True)
    assert summary.source_md5 == hashlib.md5(source.read_bytes()).hexdigest()
    assert (summary.rows, summary.frauds, summary.kind, summary.files) == (3000, 30, "csv", 1)


def test_csv_like_the_real_file_quoted_header_and_class(tmp_path: Path, frame: pd.DataFrame):
    lines = [",".join(f'"{c}"' for c in schema.COLUMNS)]
    lines += [",".join([*(repr(float(v)) for v in row[:-1]), f'"{int(row[-1])}"'])
              for row in frame.head(200).itertuples(index=False)]
    source = tmp_path / "quoted.csv"
    source.write_text("\n".join(lines) + "\n")
    ingest.download(source, tmp_path / "raw", partition_rows=64)
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), frame.head(200), check_exact=True)


def test_duplicates_are_counted_across_parts(tmp_path: Path, frame: pd.DataFrame):
    doubled = pd.concat([frame.head(100), frame.iloc[[5, 7]], frame.head(100).iloc[[5]]], ignore_index=True)
    doubled.loc[0, schema.TARGET] = 1  # both classes in 103 rows
    summary = ingest.download(write_csv(tmp_path / "d.csv", doubled), tmp_path / "raw", partition_rows=40)
    assert (summary.rows, summary.duplicate_rows, summary.parts) == (103, 3, 3)


def with_cell(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    changed = frame.astype({column: object})
    changed.loc[row, column] = value
    return changed


CSV_ERRORS = {
    "text in part 3": (lambda f: with_cell(f, 1450, "V5", "abc"),
                       r"d.csv \(rows 1400-2099 of the file\): column 'V5': 1 non-numeric value\(s\), "
                       r"first at row 1450: 'abc'"),
    "missing value": (lambda f: with_cell(f, 2999, "Amount", None),
                      r"d.csv \(rows 2800-2999 of the file\): column 'Amount': 1 missing .*first at row 2999"),
    "Class 2": (lambda f: with_cell(f, 800, "Class", 2), r"column 'Class': 1 value\(s\) outside \{0, 1\}.*row 800"),
    "renamed column": (lambda f: f.rename(columns={"V3": "v3"}), r"d.csv: missing column\(s\) \['V3'\]"),
    "no fraud in any part": (lambda f: f.assign(Class=0), r"d.csv: column 'Class': no fraud \(Class 1\) rows in any"),
    "header only": (lambda f: f.iloc[:0], r"d.csv: no data rows"),
    "True/False in part 2": (lambda f: f.astype({"V3": object}).assign(
        V3=lambda g: [*g["V3"].iloc[:700], *([True, False] * 1150)]),
        r"d.csv \(rows 700-1399 of the file\): column 'V3': 700 boolean value\(s\), expected numbers, "
        r"first at row 700: True"),
}


@pytest.mark.parametrize("case", CSV_ERRORS, ids=list(CSV_ERRORS))
def test_csv_errors_name_the_rows_of_the_file_and_commit_nothing(case: str, tmp_path: Path, earlier: str,
                                                                 frame: pd.DataFrame):
    mutate, message = CSV_ERRORS[case]
    source = write_csv(tmp_path / "d.csv", mutate(frame))
    with pytest.raises(SchemaError, match=message):
        ingest.download(source, earlier, partition_rows=700)
    assert_unchanged(earlier)


def test_a_failed_first_download_leaves_no_directory(tmp_path: Path, frame: pd.DataFrame):
    source = write_csv(tmp_path / "in" / "d.csv", with_cell(frame, 2500, "V1", "x"))
    with pytest.raises(SchemaError, match=r"column 'V1': .*first at row 2500"):
        ingest.download(source, tmp_path / "raw", partition_rows=1000)
    assert not (tmp_path / "raw").exists()


def test_a_ragged_csv_line_is_named_by_its_line_number(tmp_path: Path, earlier: str, frame: pd.DataFrame):
    source = write_csv(tmp_path / "d.csv", frame.head(50))
    with source.open("a") as handle:
        handle.write("1,2,3," * 12 + "\n")
    with pytest.raises(SchemaError, match=r"not a well-formed CSV file: .*Expected 31 fields in line 52, saw 37"):
        ingest.download(source, earlier, partition_rows=20)
    assert_unchanged(earlier)


BINARY = {"empty": (b"", r"empty file \(0 bytes\)"), "blank lines": (b"\n\n", r"empty file"),
          "gzip": (b"\x1f\x8b\x08\x00\xff\xfe\x00\x00", r"not a UTF-8 text file \(undecodable byte at offset 1\)")}


@pytest.mark.parametrize("content, message", BINARY.values(), ids=list(BINARY))
def test_empty_or_binary_files_are_schema_errors(content: bytes, message: str, tmp_path: Path, earlier: str):
    source = tmp_path / "d.csv"
    source.write_bytes(content)
    with pytest.raises(SchemaError, match=message):
        ingest.download(source, earlier)
    assert_unchanged(earlier)


def test_an_md5_mismatch_commits_nothing(tmp_path: Path, earlier: str, frame: pd.DataFrame):
    source = write_csv(tmp_path / "d.csv", frame)
    with pytest.raises(SourceError, match=r"checksum mismatch: expected md5 0{32}, got [0-9a-f]{32}"):
        ingest.download(source, earlier, expected_md5="0" * 32)
    assert_unchanged(earlier)
    good = hashlib.md5(source.read_bytes()).hexdigest()
    assert ingest.download(source, earlier, expected_md5=good.upper()).source_md5 == good


def test_a_missing_source_or_a_file_as_target_is_a_source_error(tmp_path: Path, earlier: str):
    with pytest.raises(SourceError, match=r"nowhere.csv: local file .* does not exist"):
        ingest.download(tmp_path / "nowhere.csv", earlier)
    assert_unchanged(earlier)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match=r"destination .*file is a file; expected a directory"):
        ingest.download(SMALL, tmp_path / "file")


def test_credentials_in_a_source_are_refused_before_anything_happens(earlier: str):
    with pytest.raises(SourceError, match=r"carries credentials") as caught:
        ingest.download("s3://AKIAEXAMPLE:s3cr3t@bucket/data/", earlier)
    assert "s3cr3t" not in str(caught.value)
    assert_unchanged(earlier)


# ---------------------------------------------------------------- Parquet


@pytest.mark.parametrize("engine", ["pandas", "dask"])
def test_a_directory_of_parquet_files_becomes_the_dataset(engine: str, tmp_path: Path, frame: pd.DataFrame,
                                                          request: pytest.FixtureRequest):
    client = request.getfixturevalue("dask_client") if engine == "dask" else None
    write_parquet_files(tmp_path / "src", frame, [1000, 1500, 500])
    (tmp_path / "src" / "_SUCCESS").write_text("")  # not data
    summary = ingest.download(tmp_path / "src", tmp_path / "raw", engine=engine, partition_rows=600, client=client)
    assert (summary.files, summary.parts, summary.rows, summary.frauds) == (3, 6, 3000, 30)
    manifest = lake.verify(str(tmp_path / "raw"))
    assert [part["rows"] for part in manifest["parts"]] == [600, 400, 600, 600, 300, 500]
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), frame, check_exact=True)


def test_a_single_parquet_file_with_an_index_and_integer_columns(tmp_path: Path, frame: pd.DataFrame):
    source = tmp_path / "one.parquet"
    frame.assign(Time=frame[schema.TIME].astype("int64")).set_index(schema.TIME, drop=False).to_parquet(source)
    summary = ingest.download(source, tmp_path / "raw", expected_md5=hashlib.md5(source.read_bytes()).hexdigest())
    assert summary.files == 1 and summary.source_md5 is not None
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), frame, check_exact=True)


@pytest.mark.parametrize("engine", ["pandas", "dask"])
def test_a_bad_parquet_file_is_named_with_its_column_and_row(engine: str, tmp_path: Path, earlier: str,
                                                             frame: pd.DataFrame, request: pytest.FixtureRequest):
    client = request.getfixturevalue("dask_client") if engine == "dask" else None
    files = write_parquet_files(tmp_path / "src", frame, [1000, 2000])
    frame.iloc[1000:].reset_index(drop=True).pipe(with_cell, 1234, "V9", np.inf).astype({"V9": float}).to_parquet(
        files[1], index=False)
    with pytest.raises(SchemaError, match=r"src/part-1.parquet \(rows 1200-1799 of this file\): column 'V9': "
                                          r"1 missing or infinite value\(s\), first at row 1234: inf"):
        ingest.download(tmp_path / "src", earlier, engine=engine, partition_rows=600, client=client)
    assert_unchanged(earlier)


def test_parquet_files_with_other_columns_or_no_files_are_refused(tmp_path: Path, earlier: str,
                                                                  frame: pd.DataFrame):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: no Parquet files \(\*.parquet\) there"):
        ingest.download(tmp_path / "empty", earlier)
    write_parquet_files(tmp_path / "src", frame.drop(columns=["V4"]), [3000])
    with pytest.raises(SchemaError, match=r"part-0.parquet: missing column\(s\) \['V4'\]"):
        ingest.download(tmp_path / "src", earlier)
    (tmp_path / "not.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(SchemaError, match=r"not.parquet: not a readable Parquet file"):
        ingest.download(tmp_path / "not.parquet", earlier)
    assert_unchanged(earlier)


def test_csv_and_parquet_files_over_http_are_fetched_then_converted(tmp_path: Path, frame: pd.DataFrame):
    from test_sources import serve_directory

    root = tmp_path / "site"
    write_csv(root / "creditcard.csv", frame)
    frame.to_parquet(root / "creditcard.parquet", index=False)
    with serve_directory(root) as base:
        from_csv = ingest.download(f"{base}/creditcard.csv", tmp_path / "from-csv", partition_rows=2000)
        from_parquet = ingest.download(f"{base}/creditcard.parquet", tmp_path / "from-parquet", partition_rows=2000)
        with pytest.raises(SourceError, match=r"/missing.parquet: the server answered HTTP 404"):
            ingest.download(f"{base}/missing.parquet", tmp_path / "nothing")
    assert (from_csv.kind, from_csv.parts, from_parquet.kind, from_parquet.parts) == ("csv", 2, "parquet", 2)
    for name in ("from-csv", "from-parquet"):
        pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / name)), frame, check_exact=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from-csv", "from-parquet", "site"], "no temp file left"


def test_a_lake_dataset_as_source_is_read_by_its_manifest(tmp_path: Path, earlier: str):
    stray = Path(earlier) / "run-stray" / "part-00000.parquet"  # uncommitted: not part of the dataset
    stray.parent.mkdir()
    synthetic.generate(rows=10, frauds=1).to_parquet(stray, index=False)
    summary = ingest.download(earlier, tmp_path / "copy")
    assert summary.rows == 500
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "copy")), lake.read_pandas(earlier))


def test_read_dataset_refuses_a_directory_without_a_manifest(tmp_path: Path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(SourceError, match=r"no committed dataset at .*raw.*run the download stage first"):
        sources.read_dataset(tmp_path / "raw")


# ---------------------------------------------------------------- S3


def put_parquet(server: Any, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    server.client().put_object(Bucket=server.bucket, Key=key, Body=buffer.getvalue())


@pytest.fixture
def s3_cluster(s3_env: Any, dask_client: Any) -> Iterator[Any]:
    """The session's cluster, its workers' environment holding the S3 server's settings for the test.

    Workers get credentials as on any cluster: from their own environment, never in a task.
    """
    names = list(s3_env.env())
    saved = dask_client.run(lambda: {name: os.environ.get(name) for name in names})
    dask_client.run(lambda values: os.environ.update(values), s3_env.env())  # (a bound method would copy environ)
    yield dask_client

    def restore(previous: dict[str, str | None]) -> None:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    for worker, previous in saved.items():
        dask_client.run(restore, previous, workers=[worker])


@pytest.mark.s3
def test_a_parquet_prefix_in_s3_becomes_the_dataset_on_the_cluster(s3_env: Any, s3_cluster: Any, tmp_path: Path,
                                                                   frame: pd.DataFrame):
    prefix = f"in/{uuid.uuid4().hex[:8]}"
    for index, (start, stop) in enumerate([(0, 1200), (1200, 2000), (2000, 3000)]):
        put_parquet(s3_env, f"{prefix}/{index:02d}.parquet", frame.iloc[start:stop])
    source = f"s3://{s3_env.bucket}/{prefix}/"
    summary = ingest.download(source, tmp_path / "raw", engine="dask", partition_rows=1000, client=s3_cluster,
                              endpoint_url=s3_env.endpoint_url)
    assert (summary.files, summary.parts, summary.rows, summary.source) == (3, 4, 3000, source)
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), frame, check_exact=True)


@pytest.mark.s3
def test_synthetic_partitions_are_written_by_the_workers_into_an_s3_prefix(s3_env: Any, s3_cluster: Any):
    uri = "synthetic://?rows=1800&frauds=12&seed=5&partitions=3"
    target = f"s3://{s3_env.bucket}/lake/{uuid.uuid4().hex[:8]}/creditcard"
    options = lake.storage_options(target, s3_env.endpoint_url)
    summary = ingest.write_synthetic(uri, target, options=options, client=s3_cluster)
    assert (summary.parts, summary.rows, summary.frauds) == (3, 1800, 12)
    lake.verify(target, options)
    pd.testing.assert_frame_equal(lake.read_pandas(target, options), synthetic.generate_from_uri(uri),
                                  check_exact=True)


@pytest.mark.s3
def test_a_csv_object_in_s3_is_fetched_verified_and_converted(s3_env: Any, tmp_path: Path, frame: pd.DataFrame):
    body = frame.to_csv(index=False).encode()
    key = f"in/{uuid.uuid4().hex[:8]}/creditcard.csv"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=body)
    summary = ingest.download(f"s3://{s3_env.bucket}/{key}", tmp_path / "raw", partition_rows=1000,
                              expected_md5=hashlib.md5(body).hexdigest())
    assert summary.parts == 3 and summary.source_md5 == hashlib.md5(body).hexdigest()
    pd.testing.assert_frame_equal(lake.read_pandas(str(tmp_path / "raw")), frame, check_exact=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"], "the fetched CSV file is removed"


@pytest.mark.s3
def test_s3_failures_name_the_bucket_the_key_and_the_cause(s3_env: Any, earlier: str,
                                                           monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame):
    bucket = s3_env.bucket
    with pytest.raises(SourceError, match=r"s3://no-such-bucket-ccfraud/in/: bucket 'no-such-bucket-ccfraud' "
                                          r"does not exist"):
        ingest.download("s3://no-such-bucket-ccfraud/in/", earlier)
    with pytest.raises(SourceError, match=rf"s3://{bucket}/nothing-here/: no Parquet files"):
        ingest.download(f"s3://{bucket}/nothing-here/", earlier)
    with pytest.raises(SourceError, match=rf"{bucket}/missing.parquet: no object with key 'missing.parquet'"):
        ingest.download(f"s3://{bucket}/missing.parquet", earlier)
    key = f"in/{uuid.uuid4().hex[:8]}/one.parquet"
    put_parquet(s3_env, key, frame)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    # Listing a prefix with a wrong secret: SeaweedFS answers 403 without saying which part is wrong.
    with pytest.raises(SourceError, match=rf"cannot read s3://{bucket}/{key.rsplit('/', 1)[0]}/: "
                                          r"(wrong credentials|access denied \(HTTP 403\): wrong credentials)"):
        ingest.download(f"s3://{bucket}/{key.rsplit('/', 1)[0]}/", earlier)
    with pytest.raises(SourceError, match=rf"s3://{bucket}/{key}: .*(wrong credentials|access denied)"):
        ingest.download(f"s3://{bucket}/{key}", earlier)
    assert_unchanged(earlier)
