"""``ccfraud score``: score a dataset partition by partition on a Dask cluster, with the API's own scorer.

The API and this command share everything but the driver: each partition is checked by
``schema.validate_features`` (the API's CSV check) and scored by
:class:`ccfraud.serving.scoring.Scorer` (the API's scorer), built from the model that
:func:`ccfraud.serving.model_source.load` loads and verifies (the API's loader).
:func:`score_frame` is that per-partition work as a plain pandas function; the rest of
this module only decides which partitions exist and runs the function on the cluster.

Input: a CSV or Parquet file, a directory or ``s3://`` prefix of them (read in natural
name order, ``_``/``.``-prefixed names skipped), or a dataset committed by
:mod:`ccfraud.lake` (its ``_manifest.json`` lists the parts, whose checksums are checked
as they are read). Big files are split: Parquet at row groups, CSV at line boundaries.

Output: a :mod:`ccfraud.lake` dataset, one part per input partition, with the columns
:data:`OUTPUT_COLUMNS`. ``row`` is the transaction's 0-based position in the whole input
(files in order, rows in file order); it is the join key, because the feature spec
admits no id column. ``Time`` and ``Amount`` are kept to check a join by eye.

How it runs, and why:

1. The model is loaded and verified here, on the client, so a bad model fails before
   any cluster work. It reaches the workers once each as a worker plugin
   (:class:`ScorerPlugin`), which builds the ``Scorer`` once per worker process, also
   on a worker that the nanny restarts. Shipping it with every task would cost a
   pickled forest (about 5 MB for 200 trees) per partition, and rebuilding the
   ``Scorer`` (0.05-0.6 s) each time; loading the skops file on each worker instead
   would cost 0.1-0.8 s and need the model's location to be reachable from the workers.
2. Row counts come first, so that every partition knows its first global row number
   and can be scored and written independently: from the manifest (lake), the footers
   (Parquet) or one parsing pass (CSV). Columns are checked at the same time, so a file
   with a wrong header fails before anything is scored.
3. Each partition is then read, validated, scored and written as a part by one task;
   the client commits the manifest last. A worker lost mid-job costs only its tasks,
   which the scheduler runs again elsewhere and which write the same bytes to the same
   paths. A failed job cancels its tasks, waits for those already running to stop, and
   removes every part it wrote: no committed output, no stray parts.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from distributed import as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ccfraud import artifacts, compute, csvformat, lake, s3, schema
from ccfraud.serving import model_source
from ccfraud.serving.scoring import Scorer

log = logging.getLogger(__name__)

ROW = "row"
PROBABILITY = "fraud_probability"
DECISION = "is_fraud"
MODEL_VERSION = "model_version"
#: The columns of every output part, in this order.
OUTPUT_COLUMNS: tuple[str, ...] = (ROW, schema.TIME, schema.AMOUNT, PROBABILITY, DECISION, MODEL_VERSION)
#: Rows per partition when a Parquet file has row groups to split at: about 120 MB of features in memory,
#: near the ~100 MB partitions Dask recommends (a file with fewer rows is one partition).
PARTITION_ROWS = 500_000
#: Bytes of a CSV file per partition (about 200,000 creditcard.csv rows).
CSV_BLOCK_BYTES = 64 * 2**20
#: Seconds between progress lines.
PROGRESS_SECONDS = 10.0
CSV = lake.CSV
PARQUET = lake.PARQUET
_ROW_IN_MESSAGE = re.compile(r"first at row (\d+)")
Progress = Callable[[str], None]


class BatchError(RuntimeError):
    """The input, output or job cannot be used or failed; the message names the file, partition or worker."""


# --- where the input is ------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """What one task reads: a whole file, some row groups of a Parquet file, or a line-aligned CSV block."""

    location: str
    kind: str
    #: Rows in the partition, and the file row of its first one (errors name file rows).
    rows: int
    first_row: int = 0
    row_groups: tuple[int, ...] | None = None
    byte_range: tuple[int, int] | None = None
    #: The CSV file's header line, prepended to every block but the first.
    header: bytes = b""
    #: A lake part's committed size and SHA-256, checked when it is read.
    size: int | None = None
    sha256: str | None = None
    #: Whether the file is split into several partitions (then errors say which rows).
    split: bool = False

    @property
    def label(self) -> str:
        """The file, and which of its rows when it is split: how errors name the partition."""
        if not self.split:
            return self.location
        return f"{self.location} (rows {self.first_row}-{self.first_row + self.rows - 1})"


def check_location(location: str, what: str) -> None:
    """Accept a local path or an ``s3://`` URI without credentials in it; raise BatchError otherwise."""
    if not location:
        raise BatchError(f"{what}: empty location")
    if model_source.is_s3(location):
        try:
            s3.parse_s3_uri(location, require_key=False)
        except s3.S3Error as error:
            raise BatchError(f"{what}: {error}") from None
    elif "://" in location:
        scheme = location.split("://", 1)[0]
        raise BatchError(f"{what}: unsupported scheme {scheme!r}; expected a local path or s3://bucket/prefix")


def _filesystem(location: str, options: dict[str, Any]) -> tuple[Any, str]:
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(location, **options)
    return fs, root.rstrip("/")


@contextmanager
def _storage_errors(location: str, options: dict[str, Any], action: str = "read") -> Iterator[None]:
    """A storage failure on ``location`` as a BatchError saying in plain words what failed (S3: bucket, key, cause).

    The words are :func:`ccfraud.ingest.source_error`'s, the download stage's, so both
    commands explain a missing key, wrong credentials or an unreachable endpoint alike.
    Our own errors, and interrupts, pass through.
    """
    try:
        yield
    except (BatchError, schema.SchemaError, lake.LakeError):
        raise
    except Exception as error:
        from ccfraud.ingest import source_error

        endpoint = options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        raise BatchError(str(source_error(error, location, endpoint, action))) from error


def find_inputs(location: str, options: dict[str, Any] | None = None) -> list[lake.DataFile]:
    """The files to score at ``location``, in order (:func:`ccfraud.lake.find_files`)."""
    options = options or {}
    check_location(location, "input")
    with _storage_errors(location, options, "list"):
        try:
            files = lake.find_files(location, options)
        except lake.LakeError as error:
            raise BatchError(f"input {error}") from None
    if not files:
        raise BatchError(f"input {location}: no .csv or .parquet files in it")
    return files


def check_output(output: str, input_location: str, options: dict[str, Any]) -> None:
    """Refuse an output inside the input (or the reverse), or a non-empty place that is not a dataset."""
    check_location(output, "output")

    def normal(location: str) -> str:
        return location.rstrip("/") if "://" in location else os.path.abspath(location)

    out, source = normal(output), normal(input_location)
    if out == source or out.startswith(source + "/") or source.startswith(out + "/"):
        raise BatchError(f"output {output} and input {input_location} overlap; write the scores elsewhere")
    with _storage_errors(output, options, "inspect"):
        fs, root = _filesystem(output, options)
        fs.invalidate_cache(root)
        if fs.isfile(root):
            raise BatchError(f"output {output} is a file; expected a directory or prefix for a dataset")
        if fs.isdir(root) and fs.ls(root) and not fs.exists(f"{root}/{lake.MANIFEST}"):
            raise BatchError(f"output {output} holds files but no {lake.MANIFEST}: it is not a dataset this "
                             "command wrote; choose a new or empty location")
        fs.invalidate_cache(root)  # the commit lists it again, after the parts are written


# --- reading a partition (runs on a worker) ----------------------------------------------------


def _read_csv(body: bytes, where: str, file_row: int) -> pd.DataFrame:
    """A CSV text as the API reads one (:mod:`ccfraud.csvformat`), so ``schema.validate_features`` names a bad cell.

    ``file_row`` is the file's row number of the text's first row: a malformed row is named by its row in the file.
    """
    try:
        return csvformat.read_table(body).to_pandas()
    except csvformat.CsvFormatError as error:
        raise BatchError(f"{where}: {_in_file_rows(str(error), file_row)}") from None


def _csv_body(partition: Partition, options: dict[str, Any]) -> bytes:
    fs, path = _filesystem(partition.location, options)
    offset, length = partition.byte_range or (0, fs.size(path))
    block = fs.read_block(path, offset, length, delimiter=b"\n")
    return block if offset == 0 else partition.header + block


def read_partition(partition: Partition, options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The partition's rows as they are in the file (not yet validated); BatchError naming it if unreadable."""
    options = options or {}
    if partition.kind == CSV:
        with _storage_errors(partition.location, options):
            body = _csv_body(partition, options)
        return _read_csv(body, partition.label, partition.first_row)
    with _storage_errors(partition.location, options):
        fs, path = _filesystem(partition.location, options)
        if partition.sha256 is not None:  # a lake part: the bytes must be the committed ones
            data = fs.cat_file(path)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != partition.size or digest != partition.sha256:
                raise BatchError(f"{partition.label}: {len(data)} bytes with sha256 {digest[:12]}…, but the "
                                 f"dataset's {lake.MANIFEST} lists {partition.size} bytes with sha256 "
                                 f"{partition.sha256[:12]}…: the part changed after it was committed")
            return pq.read_table(io.BytesIO(data)).to_pandas()
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            table = parquet.read() if partition.row_groups is None else parquet.read_row_groups(partition.row_groups)
        return table.to_pandas()


# --- scoring a partition: the same on one frame in pandas and on many on the cluster -----------


def _in_file_rows(message: str, first_row: int) -> str:
    """The schema's message with its partition row number turned into the file's row number."""
    return _ROW_IN_MESSAGE.sub(lambda match: f"first at row {first_row + int(match.group(1))}", message)


def score_frame(frame: pd.DataFrame, scorer: Scorer, *, threshold: float, model_version: str, first_row: int = 0,
                where: str = "input", file_row: int = 0) -> pd.DataFrame:
    """Validate ``frame`` as the API does, score it, and return the output rows (:data:`OUTPUT_COLUMNS`).

    ``first_row`` is the global row number of the frame's first row; ``file_row`` its row in
    the file, so that a schema error names the file's row (rows count from 0, the header is
    not a row).
    """
    try:
        clean = schema.validate_features(frame, where=where)
    except schema.SchemaError as error:
        raise schema.SchemaError(_in_file_rows(str(error), file_row)) from None
    matrix = clean.to_numpy(dtype=np.float64)
    probabilities = scorer.probabilities(matrix) if len(matrix) else np.empty(0)
    return pd.DataFrame({
        ROW: np.arange(first_row, first_row + len(clean), dtype=np.int64),
        schema.TIME: clean[schema.TIME].to_numpy(),
        schema.AMOUNT: clean[schema.AMOUNT].to_numpy(),
        PROBABILITY: probabilities,
        DECISION: probabilities >= threshold,  # the API's rule
        MODEL_VERSION: model_version,
    })


class ScorerPlugin(WorkerPlugin):
    """The verified model on every worker, and one ``Scorer`` per worker process built from it.

    Registered once per job; the scheduler sends it to each worker, and to any worker that
    joins later (a restarted one included), which builds its ``Scorer`` before it takes a
    task. Setup first checks that the worker runs the library versions the client verified
    the model with: a pickled estimator is only trustworthy under those.
    """

    def __init__(self, loaded: artifacts.LoadedModel, versions: dict[str, str], name: str) -> None:
        self.loaded = loaded
        self.versions = versions
        self.name = name
        self._scorer: Scorer | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "versions": self.versions, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scorer = None
        self._lock = threading.Lock()

    async def setup(self, worker: Any) -> None:
        """Build the scorer in a thread (a forest takes up to a second), not on the worker's event loop."""
        await asyncio.to_thread(self.scorer)

    def teardown(self, worker: Any) -> None:
        self._scorer = None

    def scorer(self) -> Scorer:
        """This worker's scorer, built on first use."""
        with self._lock:
            if self._scorer is None:
                found = artifacts.library_versions()
                wrong = [f"{name} {found.get(name)} (the client has {self.versions.get(name)})"
                         for name in artifacts.PINNED_LIBRARIES if found.get(name) != self.versions.get(name)]
                if wrong:
                    raise artifacts.ArtifactError(f"Dask worker {os.uname().nodename} (pid {os.getpid()}) runs "
                                                  f"other library versions than the client: {', '.join(wrong)}")
                self._scorer = Scorer(self.loaded.model)
            return self._scorer


@dataclass(frozen=True)
class _Task:
    """Everything one scoring task needs besides its partition: small, so the graph stays small."""

    plugin: str
    target: str
    options: dict[str, Any]
    threshold: float
    model_version: str


def _score_partition(partition: Partition, first_row: int, stem: str, task: _Task) -> lake.Part:
    """Read, validate, score and write one partition as an uncommitted part. Runs on a worker."""
    plugin = get_worker().plugins.get(task.plugin)
    if not isinstance(plugin, ScorerPlugin):
        raise BatchError(f"{partition.label}: this worker has no scorer (plugin {task.plugin} is missing)")
    frame = read_partition(partition, task.options)
    if len(frame) != partition.rows:
        raise BatchError(f"{partition.label}: {len(frame)} rows now, {partition.rows} when the job was planned: "
                         "the input changed while it was being scored")
    scored = score_frame(frame, plugin.scorer(), threshold=task.threshold, model_version=task.model_version,
                         first_row=first_row, where=partition.label, file_row=partition.first_row)
    with _storage_errors(f"{task.target.rstrip('/')}/{lake.PARTS}/{stem}", task.options, "write"):
        return lake.write_part(scored, task.target, stem, task.options)


# --- planning: row counts and columns of every partition (tasks on the cluster) ----------------


def _check_file_columns(columns: Sequence[str], where: str) -> None:
    """The schema's column check (``Class`` allowed and ignored), before any row is scored."""
    schema.check_columns([c for c in columns if c != schema.TARGET], require_target=False, where=where)


def _parquet_layout(location: str, options: dict[str, Any]) -> tuple[list[str], list[int]]:
    """A Parquet file's data columns and its row groups' row counts, from its footer. Runs on a worker."""
    with _storage_errors(location, options):
        fs, path = _filesystem(location, options)
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            metadata = parquet.metadata
            pandas_index = (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
            columns = [name for name in parquet.schema_arrow.names if name not in pandas_index]
            return columns, [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def _header_columns(header: bytes, location: str) -> list[str]:
    try:
        return pa_csv.read_csv(pa.BufferReader(header)).column_names
    except pa.ArrowInvalid as error:
        raise BatchError(f"{location}: malformed CSV header: {str(error).strip()}") from None


def _csv_block_layout(location: str, offset: int, length: int, options: dict[str, Any]) -> tuple[bytes, int]:
    """A CSV file's header line and the number of rows in one block of it. Runs on a worker.

    The rows are counted by the parser that reads them later (so the counts agree), with
    only the first column converted.
    """
    with _storage_errors(location, options):
        fs, path = _filesystem(location, options)
        header = fs.read_block(path, 0, 1, delimiter=b"\n")
        block = fs.read_block(path, offset, length, delimiter=b"\n")
    if not header.strip():
        raise BatchError(f"{location}: empty file; expected a header line with the columns {schema.FEATURES}")
    if not header.endswith(b"\n"):
        header += b"\n"
    first = _header_columns(header, location)[0]
    body = block if offset == 0 else header + block
    try:
        rows = pa_csv.read_csv(pa.BufferReader(body), convert_options=pa_csv.ConvertOptions(
            include_columns=[first], column_types={first: pa.string()})).num_rows
    except pa.ArrowInvalid as error:
        raise BatchError(f"{location} (bytes {offset}-{offset + length}): malformed CSV: "
                         f"{str(error).strip()}") from None
    return header, rows


def plan(files: Sequence[lake.DataFile], client: Any, options: dict[str, Any] | None = None, *,
         partition_rows: int = PARTITION_ROWS, csv_block_bytes: int = CSV_BLOCK_BYTES) -> list[Partition]:
    """Every non-empty partition of ``files`` with its row count, after checking each file's columns.

    Footers and CSV blocks are read by tasks on the cluster (many files on S3 are many
    round trips); a lake dataset's counts and columns are in its manifest already.
    """
    options = options or {}
    blocks: dict[int, list[tuple[int, int]]] = {}
    futures: dict[int, list[Any]] = {}
    for index, file in enumerate(files):
        if file.rows is not None:
            continue
        if file.kind == PARQUET:
            futures[index] = [client.submit(_parquet_layout, file.location, options, pure=False)]
        else:
            size = max(file.size or 0, 1)  # an empty file is one block, which says it is empty
            blocks[index] = [(offset, min(csv_block_bytes, size - offset))
                             for offset in range(0, size, csv_block_bytes)]
            futures[index] = [client.submit(_csv_block_layout, file.location, offset, length, options, pure=False)
                              for offset, length in blocks[index]]
    try:
        layouts = {index: client.gather(file_futures) for index, file_futures in futures.items()}
    finally:
        client.cancel([future for file_futures in futures.values() for future in file_futures])

    partitions: list[Partition] = []
    for index, file in enumerate(files):
        if file.rows is not None:  # a lake part: one partition, counted and checksummed by the manifest
            _check_file_columns(file.columns or (), file.location)
            partitions.append(Partition(file.location, PARQUET, file.rows, size=file.size, sha256=file.sha256))
        elif file.kind == PARQUET:
            columns, groups = layouts[index][0]
            _check_file_columns(columns, file.location)
            partitions.extend(_parquet_partitions(file.location, groups, partition_rows))
        else:
            header = layouts[index][0][0]
            _check_file_columns(_header_columns(header, file.location), file.location)
            partitions.extend(_csv_partitions(file.location, header, blocks[index],
                                              [rows for _, rows in layouts[index]]))
    return [partition for partition in partitions if partition.rows > 0]


def _parquet_partitions(location: str, groups: list[int], partition_rows: int) -> list[Partition]:
    """Consecutive row groups, up to ``partition_rows`` rows each (a file that fits is one partition)."""
    if sum(groups) <= partition_rows or len(groups) <= 1:
        return [Partition(location, PARQUET, sum(groups))]
    chunks: list[list[int]] = [[]]
    rows = 0
    for group, count in enumerate(groups):
        if chunks[-1] and rows + count > partition_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(group)
        rows += count
    out, first = [], 0
    for chunk in chunks:
        count = sum(groups[g] for g in chunk)
        out.append(Partition(location, PARQUET, count, first_row=first, row_groups=tuple(chunk), split=True))
        first += count
    return out


def _csv_partitions(location: str, header: bytes, blocks: list[tuple[int, int]], rows: list[int]) -> list[Partition]:
    out, first = [], 0
    for (offset, length), count in zip(blocks, rows, strict=True):
        out.append(Partition(location, CSV, count, first_row=first, byte_range=(offset, length), header=header,
                             split=len(blocks) > 1))
        first += count
    return out


# --- the job -----------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What a finished job committed."""

    output: str
    manifest: dict[str, Any]
    model_version: str
    partitions: int
    seconds: float
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = int(self.manifest["rows"])


class _Reporter:
    """Progress lines every ``interval`` seconds while the job runs (also when no partition finished)."""

    def __init__(self, report: Progress, partitions: int, rows: int, interval: float) -> None:
        self.report, self.partitions, self.rows, self.interval = report, partitions, rows, interval
        self.done_partitions = self.done_rows = 0
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccfraud-progress", daemon=True)

    def line(self) -> str:
        return (f"scored {self.done_partitions} of {self.partitions} partitions ({self.done_rows:,} of "
                f"{self.rows:,} rows), {time.monotonic() - self.start:.0f} s elapsed")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report(self.line())

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _explain(error: BaseException, labels: dict[str, str]) -> BaseException:
    """A lost worker as a BatchError naming the partition; every other error as it is."""
    from distributed.scheduler import KilledWorker

    if isinstance(error, KilledWorker):
        return BatchError(compute.lost_workers_message(labels.get(str(error.task), str(error.task)), error))
    return error


def load_model(location: str, endpoint_url: str | None = None) -> artifacts.LoadedModel:
    """The verified model at ``location``, loaded exactly as the API loads it."""
    check_location(location, "model")
    return model_source.load(location, endpoint_url)


def score(model: str | artifacts.LoadedModel, input_location: str, output: str, *, endpoint_url: str | None = None,
          client: Any = None, progress: Progress | None = None, partition_rows: int = PARTITION_ROWS,
          csv_block_bytes: int = CSV_BLOCK_BYTES, progress_seconds: float = PROGRESS_SECONDS) -> BatchResult:
    """Score every row of ``input_location`` with ``model`` and commit the scores at ``output``.

    ``model`` is a model directory, an ``s3://`` model prefix, or a model already loaded.
    ``endpoint_url`` (else ``AWS_ENDPOINT_URL``) is the S3-compatible endpoint; credentials
    come from the environment only. Without ``client``, :func:`ccfraud.compute.dask_client`
    gives one (the configured scheduler, else a local cluster). Progress lines go to
    ``progress`` (default: this module's logger). An existing dataset at ``output`` is
    replaced when the new one commits, and left as it was if the job fails.
    """
    if client is None:
        with compute.dask_client() as own_client:
            return score(model, input_location, output, endpoint_url=endpoint_url, client=own_client,
                         progress=progress, partition_rows=partition_rows, csv_block_bytes=csv_block_bytes,
                         progress_seconds=progress_seconds)
    report = progress or log.info
    started = time.monotonic()
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    in_options = lake.storage_options(input_location, endpoint)
    out_options = lake.storage_options(output, endpoint)
    loaded = model if isinstance(model, artifacts.LoadedModel) else load_model(model, endpoint)
    check_output(output, input_location, out_options)
    files = find_inputs(lake.for_workers(input_location), in_options)
    partitions = plan(files, client, in_options, partition_rows=partition_rows, csv_block_bytes=csv_block_bytes)
    total = sum(partition.rows for partition in partitions)
    if total == 0:
        raise BatchError(f"input {input_location}: no data rows to score")
    report(f"scoring {total:,} rows in {len(partitions)} partition(s) of {len(files)} file(s) with model "
           f"{loaded.version}")

    job_id = lake.new_job_id()
    plugin = ScorerPlugin(loaded, artifacts.library_versions(), name=f"ccfraud-scorer-{job_id}")
    parts: list[lake.Part] | None = None  # set once every part is written (a failed _run removes its own)
    try:
        try:
            client.register_plugin(plugin)  # raises a worker's setup error (other library versions, say)
            task = _Task(plugin.name, lake.for_workers(output), out_options, loaded.threshold, loaded.version)
            parts = _run(client, partitions, job_id, task, report, progress_seconds)
        finally:
            try:
                client.unregister_worker_plugin(plugin.name)
            except Exception as error:  # the job's outcome matters more than a plugin left registered
                log.warning("could not unregister worker plugin %s: %s", plugin.name, error)
        extra = {"model_version": loaded.version, "model_sha256": loaded.metadata.get("sha256"),
                 "threshold": loaded.threshold, "input": input_location,
                 "sources": [{"location": p.location, "first_row": p.first_row, "rows": p.rows} for p in partitions]}
        with _storage_errors(f"{output.rstrip('/')}/{lake.MANIFEST}", out_options, "write"):
            manifest = lake.commit(output, parts, columns=list(OUTPUT_COLUMNS), options=out_options, extra=extra)
    except BaseException:  # Ctrl-C while unregistering included
        if parts is not None:
            lake.discard_after_failure(output, out_options)  # keeps what a manifest that did land lists
        raise
    seconds = time.monotonic() - started
    report(f"committed {manifest['rows']:,} scored rows to {output} in {seconds:.1f} s")
    return BatchResult(output, manifest, loaded.version, len(partitions), seconds)


def _run(client: Any, partitions: Sequence[Partition], job_id: str, task: _Task, report: Progress,
         progress_seconds: float) -> list[lake.Part]:
    """Submit one task per partition, collect their parts in order; on any failure leave nothing behind."""
    offsets = np.concatenate([[0], np.cumsum([p.rows for p in partitions])]).tolist()
    futures = [client.submit(_score_partition, partition, int(offsets[i]), lake.part_stem(i), task,
                             key=f"ccfraud-score-{job_id}-{i:05d}", pure=False)
               for i, partition in enumerate(partitions)]
    index = {future.key: i for i, future in enumerate(futures)}
    labels = {future.key: partitions[i].label for i, future in enumerate(futures)}
    parts: list[lake.Part | None] = [None] * len(futures)
    pending = set(futures)
    try:
        with _Reporter(report, len(partitions), int(offsets[-1]), progress_seconds) as reporter:
            for batch in as_completed(futures, loop=client.loop).batches():
                for future in batch:
                    try:
                        part = future.result()
                    except BaseException as error:
                        raise _explain(error, labels) from None
                    parts[index[future.key]] = part
                    pending.discard(future)
                    future.release()  # the part is on storage: a worker lost now need not redo it
                    reporter.done_partitions += 1
                    reporter.done_rows += part.rows
            report(reporter.line())
    except BaseException:
        compute.abandon(client, list(pending))
        lake.discard_after_failure(task.target, task.options)
        raise
    return [part for part in parts if part is not None]
