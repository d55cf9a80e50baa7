"""The download stage: a source becomes the raw lake dataset, partition by partition, validated.

The raw data is a :mod:`ccfraud.lake` dataset (Parquet parts, a manifest written last), so
later stages read it with pandas or Dask alike and no step ever holds more than one
partition of it. Sources:

* a CSV file (local path, ``https://``, ``s3://bucket/key.csv``): fetched and verified as
  :func:`ccfraud.sources.fetch_dataset` does (md5 when given, a temporary file, clear
  errors), then converted as a stream of ``partition_rows``-row parts by pandas' chunked
  CSV reader. A CSV file is one stream whatever the engine: it cannot be cut into parts
  whose row numbers are known without reading it, so this machine converts it;
* Parquet: one ``.parquet`` file, a local directory or an ``s3://bucket/prefix/`` of them
  (or a lake dataset, read by its manifest). Each file is read, validated and written as
  parts by one task: on the cluster with the ``dask`` engine (workers read and write, the
  client commits), one after another with ``pandas``;
* ``synthetic://``: :mod:`ccfraud.synthetic` generates it partition by partition (a task
  each with ``dask``), so 100 times the real file never exists in one process.

Every partition is checked by :func:`ccfraud.schema.validate_dataset`; an error names the
file or part, the column and the row, and says how the row is counted. That both classes
are present is a property of the whole dataset, checked on the combined counts before
the commit. Nothing is committed unless everything passed: a failure leaves an existing
dataset exactly as it was (:func:`ccfraud.lake.commit` is the only commit point).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from ccfraud import compute, lake, progress, s3, schema, sources, synthetic
from ccfraud.checksums import file_md5

log = logging.getLogger(__name__)

#: Rows per part when the caller does not say: about 100 MB in memory (31 float64 columns).
DEFAULT_PARTITION_ROWS = 400_000
#: Seconds between two progress lines (the last part always gets one).
PROGRESS_SECONDS = 5.0
STAGE = "download"
PARQUET_SUFFIX = ".parquet"


# ---------------------------------------------------------------------------------------
# Summaries: one per partition, combined into the dataset's
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionSummary:
    """What the dataset summary needs from one validated partition: counts and row hashes.

    ``row_hashes`` are the partition's distinct 64-bit row hashes, sorted: duplicates
    across partitions are found by combining them, at 8 bytes a row instead of the row's
    250. Two different rows share a hash with odds of about n²/2⁶⁵ (2e-9 at 284,807 rows).
    """

    rows: int
    frauds: int
    row_hashes: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, clean: pd.DataFrame) -> PartitionSummary:
        """Summarise a frame ``schema.validate_dataset`` returned (numeric, ``Class`` 0/1)."""
        hashes = pd.util.hash_pandas_object(clean, index=False).to_numpy()
        return cls(rows=len(clean), frauds=int(clean[schema.TARGET].sum()), row_hashes=_distinct(hashes))


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a uint64 array: ``np.unique`` by sorting, many times faster than its hash table."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def combine(summaries: Sequence[PartitionSummary]) -> dict[str, int]:
    """Rows, frauds and exact-duplicate rows of the whole dataset, from its partitions' summaries."""
    rows = sum(summary.rows for summary in summaries)
    frauds = sum(summary.frauds for summary in summaries)
    hashes = [summary.row_hashes for summary in summaries]
    distinct = len(_distinct(np.concatenate(hashes))) if hashes else 0
    return {"rows": rows, "frauds": frauds, "duplicate_rows": rows - distinct}


def check_both_classes(rows: int, frauds: int, *, where: str) -> None:
    """The whole-dataset rule of ``schema.validate_dataset``, on combined counts."""
    if rows == 0:
        raise schema.SchemaError(f"{where}: no data rows (only a header or nothing at all)")
    for count, name in ((rows - frauds, "legitimate (Class 0)"), (frauds, "fraud (Class 1)")):
        if count == 0:
            raise schema.SchemaError(
                f"{where}: column '{schema.TARGET}': no {name} rows in any part; both classes are required")


# ---------------------------------------------------------------------------------------
# Partitions: validate, summarise, write (on a worker or here)
# ---------------------------------------------------------------------------------------


def _write_validated(frame: pd.DataFrame, target: str, stem: str, options: dict[str, Any] | None,
                     *, where: str, first_row: int) -> tuple[lake.Part, PartitionSummary]:
    """Validate one partition (both classes not required), summarise it and write it as one part."""
    clean = schema.validate_dataset(frame, where=where, first_row=first_row, require_both_classes=False)
    summary = PartitionSummary.of(clean)
    try:
        part = lake.write_part(clean, target, stem, options)
    except Exception as exc:
        if isinstance(exc, lake.LakeError):
            raise
        endpoint = (options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        raise lake.LakeError(str(source_error(exc, f"{target.rstrip('/')}/{lake.PARTS}/{stem}", endpoint,
                                              action="write"))) from exc
    return part, summary


def _rows_label(start: int, rows: int) -> str:
    return f"rows {start}-{start + rows - 1}"


def synthetic_task(spec: synthetic.Spec, index: int, target: str, partition_rows: int,
                   options: dict[str, Any] | None, where: str) -> list[tuple[lake.Part, PartitionSummary]]:
    """Generate synthetic partition ``index`` and write it as parts of ``partition_rows`` rows (a task)."""
    frame = synthetic.generate_partition(spec, index)
    first = sum(spec.partition_counts(i)[0] for i in range(index))
    results = []
    for chunk, start in enumerate(range(0, len(frame), partition_rows)):
        piece = frame.iloc[start:start + partition_rows]
        label = f"{where}, partition {index} ({_rows_label(first + start, len(piece))} of the dataset)"
        results.append(_write_validated(piece, target, lake.part_stem(index, chunk), options,
                                        where=label, first_row=first + start))
    return results


def parquet_file_task(location: str, source_options: dict[str, Any] | None, index: int, target: str,
                      partition_rows: int,
                      options: dict[str, Any] | None) -> list[tuple[lake.Part, PartitionSummary]]:
    """Read one Parquet file, validate it in parts of ``partition_rows`` rows and write them (a task).

    Row numbers in errors count the rows of this file from 0.
    """
    import pyarrow.parquet as pq

    results = []
    with _source_errors(location, source_options):
        handle = _open_source(location, source_options)
    with handle:
        with _source_errors(location, source_options):
            try:
                parquet = pq.ParquetFile(handle)
            except OSError:
                raise
            except Exception as exc:  # pyarrow.ArrowInvalid: not Parquet, a broken footer
                raise schema.SchemaError(f"{location}: not a readable Parquet file: {exc}") from None
        names = [name for name in parquet.schema_arrow.names if not name.startswith("__index_level_")]
        schema.check_columns(names, where=location)
        batches = _read_batches(parquet.iter_batches(batch_size=partition_rows, columns=schema.COLUMNS),
                                location=location, options=source_options)
        for chunk, (table, start) in enumerate(_exact_chunks(batches, partition_rows)):
            label = f"{location} ({_rows_label(start, table.num_rows)} of this file)"
            results.append(_write_validated(table.to_pandas(), target, lake.part_stem(index, chunk),
                                            options, where=label, first_row=start))
    return results


def _read_batches(batches: Iterable[Any], *, location: str, options: dict[str, Any] | None) -> Iterator[Any]:
    """Arrow's batches of one file; a failure while reading is the source's (storage) or the file's (decoding)."""
    import pyarrow as pa

    iterator = iter(batches)
    while True:
        with _source_errors(location, options):
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except OSError:
                raise
            except (pa.ArrowException, ValueError) as exc:
                raise schema.SchemaError(f"{location}: cannot decode the file: {exc}") from None
        yield batch


def _exact_chunks(batches: Iterable[Any], rows: int) -> Iterator[tuple[Any, int]]:
    """Regroup Arrow record batches into tables of exactly ``rows`` rows (the last may be shorter).

    Yields ``(table, first_row)``. Holds at most one chunk plus one batch.
    """
    import pyarrow as pa

    pending: list[Any] = []
    pending_rows = 0
    start = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows), start
            start += rows
            rest = table.slice(rows)
            pending = rest.to_batches() if rest.num_rows else []
            pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending), start


# ---------------------------------------------------------------------------------------
# CSV: one stream of parts
# ---------------------------------------------------------------------------------------


def _check_text(path: Path, *, where: str, sample_bytes: int = 64 * 1024) -> None:
    """Refuse a file whose start is not UTF-8 text (compressed, Parquet, ...), as pandas' reader would."""
    with open(path, "rb") as handle:
        sample = handle.read(sample_bytes)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut by the end of the sample
            raise schema.SchemaError(f"{where}: not a UTF-8 text file (undecodable byte at offset {exc.start}); "
                                     "is it compressed?") from None
    if b"\x00" in sample:
        raise schema.SchemaError(f"{where}: not a text file (a NUL byte at offset {sample.index(0)}); "
                                 "is it compressed?")


class CsvChunk(NamedTuple):
    """``partition_rows`` rows of a CSV file, parsed but not yet validated, and where they are in it."""

    frame: pd.DataFrame
    first_row: int
    where: str
    bytes_read: int


def csv_chunks(path: str | os.PathLike[str], *, where: str, partition_rows: int) -> Iterator[CsvChunk]:
    """Stream a creditcard CSV file as frames of ``partition_rows`` rows, never the whole file in memory.

    pandas' C parser reads ``partition_rows`` rows at a time: the parser the one-shot read
    used, so the numbers are the same to the last bit and a partition's own dtypes (a column
    of True/False, of words) reach the schema's checks as they would have. (Arrow's streaming
    CSV reader was tried first: it reads the whole file ahead, whatever its block size.)
    A malformed line is named by its line number.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise schema.SchemaError(f"{where}: empty file (0 bytes): no header and no data rows")
    _check_text(path, where=where)
    first_row = 0
    with open(path, "rb") as handle:
        try:
            reader = pd.read_csv(handle, chunksize=partition_rows, low_memory=False)
        except pd.errors.EmptyDataError:
            raise schema.SchemaError(f"{where}: empty file: blank lines only, no header, no data rows") from None
        with reader:
            while True:
                try:
                    frame = reader.get_chunk()
                except StopIteration:
                    break
                except pd.errors.ParserError as exc:
                    raise schema.SchemaError(f"{where}: not a well-formed CSV file: {str(exc).strip()}") from None
                except UnicodeDecodeError as exc:
                    raise schema.SchemaError(f"{where}: not a UTF-8 text file (undecodable byte at offset "
                                             f"{exc.start} of a block); is it compressed?") from None
                schema.check_header_covers_rows(frame, where=where)
                if first_row == 0:
                    schema.check_columns(list(frame.columns), where=where)
                if len(frame) == 0:  # a header and no rows
                    continue
                label = f"{where} ({_rows_label(first_row, len(frame))} of the file)"
                yield CsvChunk(frame, first_row, label, handle.tell())
                first_row += len(frame)
    if first_row == 0:
        raise schema.SchemaError(f"{where}: no data rows (only a header or nothing at all)")


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------


def _is_s3(location: str) -> bool:
    return location.lower().startswith("s3://")


def _scheme(location: str) -> str:
    scheme = urlsplit(location).scheme.lower()
    return scheme if len(scheme) >= 2 else ""


def source_kind(source: str) -> str:
    """``synthetic``, ``parquet`` (a file, a directory or an ``s3://`` prefix ending in ``/``) or ``csv``."""
    scheme = _scheme(source)
    if scheme == synthetic.SCHEME:
        return "synthetic"
    path = urlsplit(source).path if scheme else source
    if path.lower().endswith(PARQUET_SUFFIX) or (scheme == "s3" and source.endswith("/")):
        return "parquet"
    if not scheme and Path(source).expanduser().is_dir():
        return "parquet"
    if scheme == "file" and Path(sources.local_path(source)).is_dir():
        return "parquet"
    return "csv"


def _source_options(location: str, endpoint_url: str | None) -> dict[str, Any]:
    """fsspec options to read a source: a fresh s3fs client, so credentials are those of the environment now."""
    options = lake.storage_options(location, endpoint_url)
    if _is_s3(location):
        options["skip_instance_cache"] = True
    return options


def _open_source(location: str, options: dict[str, Any] | None) -> Any:
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(location, **(options or {}))
    return fs.open(path, "rb")


@contextmanager
def _source_errors(location: str, options: dict[str, Any] | None) -> Iterator[None]:
    """Turn a storage failure reading ``location`` into a SourceError naming it and the cause in plain words.

    S3 failures are described as :mod:`ccfraud.s3` describes them (wrong credentials,
    missing bucket or key, endpoint unreachable); they reach here through s3fs, which
    wraps botocore's errors in OSErrors. Our own errors and interrupts pass through.
    """
    try:
        yield
    except (schema.SchemaError, sources.SourceError, lake.LakeError):
        raise
    except Exception as exc:
        endpoint = (options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        raise source_error(exc, location, endpoint) from exc


def source_error(exc: BaseException, location: str, endpoint: str | None,
                 action: str = "read") -> sources.SourceError:
    """A SourceError for a failure to ``action`` ``location``: bucket, key and cause for S3; path and reason locally."""
    if _is_s3(location):
        bucket, key = s3.parse_s3_uri(location, require_key=False)
        cause = s3.describe_failure(exc, bucket=bucket, key=key, endpoint=endpoint)
        if isinstance(exc, FileNotFoundError) and cause.startswith("FileNotFoundError"):
            cause = f"no object with key '{key}' in bucket '{bucket}'"
        return sources.SourceError(f"cannot {action} {location}: {cause}")
    if isinstance(exc, FileNotFoundError):
        return sources.SourceError(f"cannot {action} {location}: no such file or directory")
    if isinstance(exc, OSError):
        return sources.SourceError(f"cannot {action} {location}: {exc.strerror or exc}")
    return sources.SourceError(f"cannot {action} {location}: {type(exc).__name__}: {exc}")


def parquet_files(source: str, options: dict[str, Any] | None) -> list[str]:
    """The Parquet files of a source, in order, as :func:`ccfraud.lake.find_files` lists them.

    The file itself, a directory's or a prefix's files, or exactly the parts a lake
    dataset's manifest lists. Hidden and ``_``-prefixed files (``_SUCCESS``, ``_metadata``,
    ``.crc``) are not data; neither is a CSV file beside them.
    """
    with _source_errors(source, options):
        try:
            found = [file.location for file in lake.find_files(source, options) if file.kind == lake.PARQUET]
        except lake.LakeError as exc:
            raise sources.SourceError(str(exc)) from None
    if not found:
        raise sources.SourceError(f"{source}: no Parquet files (*.parquet) there; expected a file, a directory "
                                  "or an s3:// prefix holding creditcard-format Parquet files")
    return found


# ---------------------------------------------------------------------------------------
# Running the partitions: here (pandas) or on the cluster (dask), then the commit
# ---------------------------------------------------------------------------------------

Describe = Callable[[dict[str, int], list[lake.Part]], sources.DatasetSummary]
#: A task: the function, its arguments, and what it reads in words (a file, a synthetic partition) for errors.
Task = tuple[Callable[..., list[tuple[lake.Part, PartitionSummary]]], tuple[Any, ...], str]


def _run_here(tasks: Sequence[Task], counter: progress.Parts) -> list[list[tuple[lake.Part, PartitionSummary]]]:
    results = []
    for function, arguments, _ in tasks:
        result = function(*arguments)
        results.append(result)
        counter.advance(sum(summary.rows for _, summary in result))
    return results


def _run_on_cluster(tasks: Sequence[Task], client: Any, job_id: str,
                    counter: progress.Parts) -> list[list[tuple[lake.Part, PartitionSummary]]]:
    """Submit one task per file or partition; results in task order. The first failure cancels the rest and
    waits for the ones already running (:func:`ccfraud.compute.abandon`). A task whose workers kept dying
    (out of memory, say) is a SourceError naming what it read, not the scheduler's task key."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = [client.submit(function, *arguments, key=f"ingest-{job_id}-{index}", pure=False)
               for index, (function, arguments, _) in enumerate(tasks)]
    order = {future.key: index for index, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in as_completed(futures):
            try:
                result = future.result()  # re-raises the task's own exception (SchemaError, SourceError, ...)
            except KilledWorker as error:
                raise sources.SourceError(compute.lost_workers_message(tasks[order[future.key]][2], error)) from None
            results[order[future.key]] = result
            counter.advance(sum(summary.rows for _, summary in result))
    except BaseException:
        compute.abandon(client, futures)  # before the parts are removed
        raise
    return results


def _execute(tasks: Sequence[Task], *, engine: str, client: Any, job_id: str,
             counter: progress.Parts) -> list[list[tuple[lake.Part, PartitionSummary]]]:
    if engine == "pandas":
        return _run_here(tasks, counter)
    if client is not None:
        return _run_on_cluster(tasks, client, job_id, counter)
    with compute.dask_client() as own_client:
        return _run_on_cluster(tasks, own_client, job_id, counter)


def _commit(target: str, results: Iterable[tuple[lake.Part, PartitionSummary]], *, options: dict[str, Any] | None,
            where: str, describe: Describe) -> sources.DatasetSummary:
    """Check the whole dataset on the combined summaries, then write the manifest (the commit point)."""
    parts = [part for part, _ in results]
    totals = combine([summary for _, summary in results])
    check_both_classes(totals["rows"], totals["frauds"], where=where)
    summary = describe(totals, parts)
    try:
        lake.commit(target, parts, columns=schema.COLUMNS, options=options,
                    extra={"source": summary.source, "summary": summary.to_dict()})
    except Exception as exc:
        if isinstance(exc, lake.LakeError):
            raise
        endpoint = (options or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        raise lake.LakeError(str(source_error(exc, f"{target.rstrip('/')}/{lake.MANIFEST}", endpoint,
                                              action="commit"))) from exc
    return summary


@contextmanager
def uncommitted_run(target: str, options: dict[str, Any] | None) -> Iterator[str]:
    """A fresh job id (for task keys); what the job wrote is removed if the block fails before it commits.

    Ctrl-C included. A local target directory that this job created is removed too when it
    is left empty, so a failed first download leaves nothing at all behind.
    """
    existed = lake.is_remote(target) or Path(target).exists()
    job_id = lake.new_job_id()
    try:
        yield job_id
    except BaseException:
        lake.discard_after_failure(target, options)
        if not existed:
            with suppress(OSError):
                os.rmdir(target)  # only if empty
        raise


def _check_partition_rows(partition_rows: int) -> int:
    if isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1:
        raise ValueError(f"compute.partition_rows must be a positive whole number of rows, got {partition_rows!r}")
    return partition_rows


def download(source: str | os.PathLike[str], target: str | os.PathLike[str], *, engine: str = "pandas",
             partition_rows: int = DEFAULT_PARTITION_ROWS, expected_md5: str | None = None,
             endpoint_url: str | None = None, target_options: dict[str, Any] | None = None,
             client: Any = None) -> sources.DatasetSummary:
    """Fetch ``source``, validate it partition by partition and commit it as the lake dataset ``target``.

    ``engine`` is ``compute.engine``: ``dask`` runs one task per Parquet file or synthetic
    partition on ``client`` (default: :func:`ccfraud.compute.dask_client`, the configured
    scheduler or a LocalCluster), ``pandas`` runs them here, one after another. CSV sources
    are converted here as one stream with either engine. ``endpoint_url`` is the source's
    S3-compatible endpoint; ``target_options`` are fsspec options for an ``s3://`` target.

    Raises SourceError (the source cannot be read, a checksum differs, credentials in a
    URI) or schema.SchemaError (the data breaks the schema: file, column and row named);
    either way nothing is committed and an existing dataset at ``target`` is untouched.
    """
    source = os.fspath(source)
    target = os.fspath(target)
    compute.check_engine(engine)
    _check_partition_rows(partition_rows)
    sources.refuse_credentials(source, what="source")
    if endpoint_url:
        sources.refuse_credentials(endpoint_url, what="endpoint_url")
    where = sources.redact(source)
    expected = sources.normalised_md5(expected_md5)
    kind = source_kind(source)
    if not lake.is_remote(target) and Path(target).is_file():
        raise sources.SourceError(f"destination {target} is a file; expected a directory for the Parquet dataset "
                                  "(remove the file, e.g. an earlier creditcard.csv)")
    log.info("download %s (%s) to %s with the %s engine, %d rows per part", where, kind, target, engine,
             partition_rows)
    if kind == "synthetic":
        if expected is not None:
            raise sources.SourceError(f"{where}: an md5 checks a file's bytes; a synthetic source has none "
                                      "(set download.md5 to null)")
        return write_synthetic(source, target, engine=engine, partition_rows=partition_rows,
                               options=target_options, client=client)
    with _local_copy(source, target, kind=kind, expected_md5=expected, endpoint_url=endpoint_url,
                     where=where) as (local, md5):
        if kind == "csv":
            return _convert_csv(local, target, where=where, md5=md5, engine=engine, partition_rows=partition_rows,
                                options=target_options)
        return _convert_parquet(str(local) if local else source, target, where=where, md5=md5, engine=engine,
                                partition_rows=partition_rows, endpoint_url=endpoint_url,
                                options=target_options, client=client)


@contextmanager
def _local_copy(source: str, target: str, *, kind: str, expected_md5: str | None, endpoint_url: str | None,
                where: str) -> Iterator[tuple[Path | None, str | None]]:
    """The source as a local file and its md5 for the block, or ``(None, None)`` for a source read in place.

    A local file is read where it is, and so is an S3 Parquet file with no md5 to check (by
    a task on a worker). Other remote files (CSV; Parquet over HTTP, with its ~/.netrc login;
    an S3 Parquet file whose md5 is to be checked) are fetched as :func:`ccfraud.sources.fetch_to`
    does (clear errors) into a temporary directory beside the target, removed afterwards
    whatever happens. Parquet directories and prefixes are read in place, by the tasks.
    """
    many = kind == "parquet" and (source.endswith("/") or (_scheme(source) in ("", "file")
                                                            and Path(sources.local_path(source)).is_dir()))
    if many:
        if expected_md5 is not None:
            raise sources.SourceError(f"{where}: an md5 checks one file; this source holds many files "
                                      "(set download.md5 to null)")
        yield None, None
        return
    if _scheme(source) in ("", "file"):
        local = Path(sources.local_path(source))
        if not local.exists():
            raise sources.SourceError(f"{where}: local file {local} does not exist (resolved to {local.resolve()})")
        yield local, _verified_md5(local, expected_md5, where=where)
        return
    if kind == "parquet" and expected_md5 is None and _is_s3(source):
        yield None, None  # read in place, by a task on a worker
        return
    parent = None if lake.is_remote(target) else Path(target).resolve().parent
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix=f".{Path(target).name}.download-", dir=parent)
    try:
        local = Path(tmpdir) / ("source" + (PARQUET_SUFFIX if kind == "parquet" else ".csv"))
        sources.fetch_to(source, local, where=where, endpoint_url=endpoint_url)
        yield local, _verified_md5(local, expected_md5, where=where)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _verified_md5(path: Path, expected: str | None, *, where: str) -> str:
    md5 = file_md5(path)
    if expected is not None and md5 != expected:
        raise sources.SourceError(f"{where}: checksum mismatch: expected md5 {expected}, got {md5} "
                                  "(the file is corrupt, truncated or not the expected version)")
    return md5


def _describer(*, source: str, target: str, engine: str, kind: str, files: int,
               md5: str | None) -> Describe:
    def describe(totals: dict[str, int], parts: list[lake.Part]) -> sources.DatasetSummary:
        rows, frauds = totals["rows"], totals["frauds"]
        return sources.DatasetSummary(
            source=source, path=target, engine=engine, kind=kind, files=files, parts=len(parts),
            size_bytes=sum(part.bytes for part in parts), source_md5=md5, rows=rows,
            duplicate_rows=totals["duplicate_rows"], frauds=frauds, legit=rows - frauds, fraud_rate=frauds / rows)
    return describe


def _convert_csv(path: Path | None, target: str, *, where: str, md5: str | None, engine: str, partition_rows: int,
                 options: dict[str, Any] | None) -> sources.DatasetSummary:
    if path is None:
        raise sources.SourceError(f"{where}: a CSV source must be a file")
    if engine == "dask":
        log.info("%s: a CSV file is converted on this machine as one stream, whatever the engine", where)
    counter = progress.Parts(STAGE, f"CSV {where}", every=PROGRESS_SECONDS)
    size = max(path.stat().st_size, 1)
    results = []
    with uncommitted_run(target, options):
        for index, chunk in enumerate(csv_chunks(path, where=where, partition_rows=partition_rows)):
            results.append(_write_validated(chunk.frame, target, lake.part_stem(index), options,
                                            where=chunk.where, first_row=chunk.first_row))
            counter.advance(results[-1][1].rows, f"{min(1.0, chunk.bytes_read / size):.0%} of the file read")
        counter.finish()
        return _commit(target, results, options=options, where=where,
                       describe=_describer(source=where, target=target, engine=engine, kind="csv", files=1, md5=md5))


def _convert_parquet(location: str, target: str, *, where: str, md5: str | None, engine: str,
                     partition_rows: int, endpoint_url: str | None, options: dict[str, Any] | None,
                     client: Any) -> sources.DatasetSummary:
    if not _is_s3(location):
        location = lake.for_workers(str(sources.local_path(location)))
    source_options = _source_options(location, endpoint_url)
    files = parquet_files(location, source_options)
    log.info("%s: %d Parquet file(s)", where, len(files))
    with uncommitted_run(target, options) as job_id:
        tasks: list[Task] = [(parquet_file_task, (file, source_options, index, lake.for_workers(target), partition_rows,
                                                  options), file)
                             for index, file in enumerate(files)]
        results = _execute(tasks, engine=engine, client=client, job_id=job_id,
                           counter=progress.Parts(STAGE, f"Parquet {where}", len(tasks), every=PROGRESS_SECONDS))
        return _commit(target, [item for result in results for item in result], options=options, where=where,
                       describe=_describer(source=where, target=target, engine=engine, kind="parquet",
                                           files=len(files), md5=md5))


def write_synthetic(source: str, target: str, *, engine: str = "dask", partition_rows: int = DEFAULT_PARTITION_ROWS,
                    options: dict[str, Any] | None = None, client: Any = None) -> sources.DatasetSummary:
    """Generate a ``synthetic://`` dataset straight into the lake dataset ``target``, partition by partition.

    With ``engine="dask"`` each partition is generated, validated and written by a task on
    the cluster (``client``, or :func:`ccfraud.compute.dask_client`), so the whole dataset
    never exists in one process: this is how the 100x benchmark data goes into an S3 prefix
    (``target="s3://bucket/prefix"``, ``options=lake.storage_options(target, endpoint)``).
    The same URI always writes the same rows, whatever ``partition_rows`` and the engine.
    """
    compute.check_engine(engine)
    _check_partition_rows(partition_rows)
    where = sources.redact(source)
    try:
        spec = synthetic.spec_from_uri(source)
    except ValueError as exc:
        raise sources.SourceError(f"{where}: {exc}") from None
    with uncommitted_run(target, options) as job_id:
        tasks: list[Task] = [(synthetic_task, (spec, index, lake.for_workers(target), partition_rows, options, where),
                              f"{where}, partition {index}")
                             for index in range(spec.partitions)]
        results = _execute(tasks, engine=engine, client=client, job_id=job_id,
                           counter=progress.Parts(STAGE, f"synthetic {where}", len(tasks), every=PROGRESS_SECONDS))
        return _commit(target, [item for result in results for item in result], options=options, where=where,
                       describe=_describer(source=where, target=target, engine=engine, kind="synthetic",
                                           files=0, md5=None))
