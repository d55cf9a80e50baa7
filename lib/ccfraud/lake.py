"""Partitioned Parquet datasets committed as a data lake does: the parts first, a manifest last.

A dataset is a directory or an ``s3://bucket/prefix/``::

    TARGET/_manifest.json                             written last: the commit point
    TARGET/parts/part-00000-<sha256[:16]>.parquet     the committed parts
    TARGET/parts/part-00001-<sha256[:16]>.parquet ...

Parts are written first (by many workers at once, on a cluster), each named by its position
and its own content's SHA-256, then the manifest lists each part with its row count, size and
SHA-256. A reader trusts only what the manifest lists, so a job that dies half-way leaves the
previous dataset exactly as readable as before, and a reader never sees half a result. On a
local disk a part and the manifest are each written with an atomic rename; on S3 one PUT
replaces one object whole. Files under ``parts/`` that the new manifest does not list (an
earlier dataset's, a failed job's) are removed after it is in place.

Everything written is a function of the data alone (no run ids, no timestamps): the same
frames always give the same part names, the same bytes and the same manifest. So when a stage
reruns and writes the same data, DVC sees an unchanged output and skips the stages after it.

Writing our own manifest rather than Dask's ``to_parquet``: its ``_metadata`` file is optional,
carries no checksums and is written beside the parts with no commit point, so an interrupted
write is indistinguishable from a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from ccfraud import atomicio, compute

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
FORMAT = "ccfraud-lake/1"
#: The directory of a dataset's parts.
PARTS = "parts"
#: Hex digits of a part's SHA-256 in its name: enough that two different parts never share one.
NAME_DIGEST = 16
#: A part's path relative to its dataset (also the layout before parts were content-addressed).
PART_PATH = re.compile(rf"(^|/)(parts/part-[\d-]+-[0-9a-f]{{{NAME_DIGEST}}}|run-[^/]+/part-[\d-]+)\.parquet$")


class LakeError(RuntimeError):
    """A dataset is missing, uncommitted or does not match its manifest; the message names the file."""


@dataclass(frozen=True)
class Part:
    """One committed part: its path relative to the dataset, its rows, bytes and SHA-256."""

    path: str
    rows: int
    bytes: int
    sha256: str


def storage_options(location: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for ``location``: for S3 the endpoint, when one is given, and bounded retries and timeouts.

    Credentials are never options: s3fs reads them from the environment or an AWS profile,
    on the client and on every worker. Without the timeouts, an unreachable endpoint would
    keep a stage retrying for minutes instead of failing in seconds with a clear error.
    """
    if not str(location).startswith("s3://"):
        return {"endpoint_url": endpoint_url} if is_remote(location) and endpoint_url else {}
    from ccfraud import s3  # boto3: only for S3 locations

    # ccfraud.s3's client settings: short timeouts, its attempts (AWS_MAX_ATTEMPTS or three),
    # path-style addressing (local S3 servers rarely have wildcard DNS).
    options: dict[str, Any] = {"config_kwargs": s3.client_settings()}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def is_remote(location: str) -> bool:
    """True for an ``s3://`` (or other fsspec URL) location, False for a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


def for_workers(location: str) -> str:
    """``location`` as tasks on a cluster must be given it: a local path made absolute.

    A worker's working directory is not the client's (with a configured scheduler it is
    another process, maybe on another machine sharing the storage at the same path).
    """
    return str(location) if is_remote(location) else os.path.abspath(location)


def _filesystem(location: str, options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(str(location), **(options or {}))
    return fs, root.rstrip("/")


def new_job_id() -> str:
    """A fresh id for one job's task keys and plugin names; never part of what is written."""
    return uuid.uuid4().hex[:12]


def part_stem(index: int, chunk: int | None = None) -> str:
    """The name of part ``index`` before its digest; ``chunk`` numbers the parts of one task.

    A task that cannot know in advance how many parts its input makes (a Parquet file
    of unknown length, on a worker) writes ``part-<index>-<chunk>``: names never collide
    and sort in dataset order, and the manifest lists them in that order.
    """
    return f"part-{index:05d}" if chunk is None else f"part-{index:05d}-{chunk:04d}"


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as one Parquet file (no index), the bytes that are checksummed and written.

    The same frame always gives the same bytes (the file's metadata holds the library
    versions and the schema, no time or host).
    """
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_part(frame: pd.DataFrame, target: str, stem: str, options: dict[str, Any] | None = None) -> Part:
    """Write one part, named ``parts/<stem>-<sha256[:16]>.parquet``, and describe it for the manifest.

    Runs on a worker. A task run twice (its worker lost) writes the same bytes to the same
    name; on a local disk through a temporary file and a rename, so a reader of a committed
    part with that name never sees a half-written file.
    """
    data = parquet_bytes(frame)
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{PARTS}/{stem}-{digest[:NAME_DIGEST]}.parquet"
    fs, root = _filesystem(target, options)
    path = f"{root}/{relative}"
    if is_remote(target):
        fs.pipe_file(path, data)
    else:
        atomicio.write_bytes(path, data)
    return Part(relative, len(frame), len(data), digest)


def commit(target: str, parts: Sequence[Part], *, columns: Sequence[str],
           options: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the manifest listing ``parts`` (the commit point), then remove the parts it does not list."""
    manifest = {
        "format": FORMAT,
        "rows": int(sum(part.rows for part in parts)),
        "columns": list(columns),
        "parts": [asdict(part) for part in parts],
        **(extra or {}),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    fs, root = _filesystem(target, options)
    if is_remote(target):
        fs.pipe_file(f"{root}/{MANIFEST}", text.encode())
    else:
        atomicio.write_text(os.path.join(root, MANIFEST), text)
    _remove_unlisted(fs, root, {part.path for part in parts})
    return manifest


def _remove_unlisted(fs: Any, root: str, keep: set[str]) -> None:
    """Remove the parts under ``root`` not in ``keep`` (and run directories of the earlier layout)."""
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and name.startswith("run-"):
            fs.rm(entry["name"], recursive=True)
    parts_dir = f"{root}/{PARTS}"
    if not fs.exists(parts_dir):
        return
    stale = [path for path in fs.find(parts_dir) if path[len(root):].lstrip("/") not in keep]
    if stale:
        fs.rm(stale)


def discard_after_failure(target: str, options: dict[str, Any] | None = None) -> None:
    """:func:`discard_uncommitted` for a job that failed: the job's own error is the one to raise, so a store that
    cannot be reached either is logged (what is left, and that the next commit removes it), not raised."""
    try:
        discard_uncommitted(target, options)
    except Exception as error:
        log.warning("could not remove the failed job's parts under %s/%s (%s); the next successful commit there "
                    "removes them", str(target).rstrip("/"), PARTS, error)


def discard_uncommitted(target: str, options: dict[str, Any] | None = None) -> None:
    """Remove what a failed job wrote: every part the committed manifest (if any) does not list."""
    fs, root = _filesystem(target, options)
    try:
        keep = {part["path"] for part in read_manifest(target, options)["parts"]}
    except LakeError as error:
        if fs.exists(f"{root}/{MANIFEST}"):  # a committed dataset this code cannot read: not ours to clear
            log.warning("removing nothing under %s: %s", str(target).rstrip("/"), error)
            return
        keep = set()  # nothing committed there: every part is the failed job's
    _remove_unlisted(fs, root, keep)
    if not keep and not is_remote(target) and os.path.isdir(f"{root}/{PARTS}"):
        with contextlib.suppress(OSError):
            os.rmdir(f"{root}/{PARTS}")  # only if empty


def read_manifest(target: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The committed manifest of ``target``; a :class:`LakeError` when nothing was committed there."""
    fs, root = _filesystem(target, options)
    path = f"{root}/{MANIFEST}"
    if not fs.exists(path):
        raise LakeError(f"no committed dataset at {target}: {MANIFEST} is missing "
                        "(a write that did not finish leaves none)")
    try:
        manifest = json.loads(fs.cat_file(path))
    except ValueError as error:  # not JSON, or not UTF-8
        raise LakeError(f"{target}/{MANIFEST} is not a manifest: it is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        raise LakeError(f"{target}/{MANIFEST} is not a manifest: expected a JSON object with a list of parts")
    if manifest.get("format") != FORMAT:
        raise LakeError(f"{target}/{MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def part_locations(target: str, manifest: dict[str, Any]) -> list[str]:
    """The full location of every committed part, in order."""
    base = str(target).rstrip("/")
    return [f"{base}/{part['path']}" for part in manifest["parts"]]


def verify(target: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every listed part's size and SHA-256; return the manifest or raise naming the first bad part."""
    manifest = read_manifest(target, options)
    fs, root = _filesystem(target, options)
    for part in manifest["parts"]:
        path = f"{root}/{part['path']}"
        if not fs.exists(path):
            raise LakeError(f"{target}: part {part['path']} is listed in {MANIFEST} but missing")
        data = fs.cat_file(path)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != part["bytes"] or digest != part["sha256"]:
            raise LakeError(f"{target}: part {part['path']} does not match {MANIFEST} "
                            f"({len(data)} bytes, sha256 {digest[:12]}…; expected {part['bytes']} bytes, "
                            f"sha256 {part['sha256'][:12]}…)")
    return manifest


CSV = "csv"
PARQUET = "parquet"
#: The data files a listing returns, by name ending.
SUFFIXES = {".csv": CSV, ".parquet": PARQUET, ".pq": PARQUET}


@dataclass(frozen=True)
class DataFile:
    """One input file; for a lake part, also its committed row count, size, checksum and columns."""

    location: str
    kind: str
    size: int | None = None
    rows: int | None = None
    sha256: str | None = None
    columns: tuple[str, ...] | None = None


def file_kind(path: str) -> str | None:
    """``csv`` or ``parquet`` by the name's ending, else None."""
    lower = path.lower()
    return next((kind for suffix, kind in SUFFIXES.items() if lower.endswith(suffix)), None)


def _natural_key(text: str) -> list[Any]:
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", text)]


def find_files(location: str, options: dict[str, Any] | None = None) -> list[DataFile]:
    """The data files at ``location``, in order: the one input lister of the download stage and ``ccfraud score``.

    ``location`` is one ``.csv``/``.parquet`` file, a directory or ``s3://`` prefix of them
    (natural name order, so ``part.10`` follows ``part.9``; names starting with ``_`` or ``.``,
    such as ``_SUCCESS``, are not data), or a lake dataset: exactly the parts its manifest
    lists, with their rows and checksums. A directory holding lake parts but no manifest is
    refused: the write that made them did not commit. An empty directory or prefix gives an
    empty list (the caller says what it expected). Storage errors are raised as they come,
    for the caller to name; what this function refuses is a :class:`LakeError`.
    """
    fs, root = _filesystem(location, options)
    fs.invalidate_cache(root)  # a listing cached earlier in this process may predate the files
    if not str(location).endswith("/") and (file_kind(root) is not None or fs.isfile(root)):
        kind = file_kind(root)
        if kind is None:
            raise LakeError(f"{location}: expected a .csv or .parquet file (or a directory of them)")
        return [DataFile(str(location), kind, size=fs.info(root)["size"])]
    if not is_remote(location) and not fs.isdir(root):
        raise LakeError(f"{location} not found")
    if fs.exists(f"{root}/{MANIFEST}"):
        manifest = read_manifest(location, options)
        columns = tuple(manifest["columns"])
        return [DataFile(part_location, PARQUET, size=part["bytes"], rows=part["rows"], sha256=part["sha256"],
                         columns=columns)
                for part_location, part in zip(part_locations(location, manifest), manifest["parts"], strict=True)]
    files = []
    for path, info in fs.find(root, detail=True).items():
        relative = path[len(root):].lstrip("/")
        if any(piece.startswith(("_", ".")) for piece in relative.split("/")):
            continue
        if PART_PATH.search(relative):
            raise LakeError(f"{location} holds lake parts ({relative}) but no {MANIFEST}: the write that made "
                            "them did not commit, so they are not a dataset to trust")
        kind = file_kind(path)
        if kind is not None:
            files.append((relative, DataFile(f"{str(location).rstrip('/')}/{relative}", kind, size=info.get("size"))))
    return [file for _, file in sorted(files, key=lambda item: _natural_key(item[0]))]


def read_pandas(target: str, options: dict[str, Any] | None = None,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The committed dataset as one pandas frame (parts in order), for data that fits in memory."""
    manifest = read_manifest(target, options)
    frames = [pd.read_parquet(location, columns=list(columns) if columns else None, storage_options=options or None)
              for location in part_locations(target, manifest)]
    if not frames:
        return pd.DataFrame(columns=list(columns or manifest["columns"]))
    return pd.concat(frames, ignore_index=True)


def read_dask(target: str, options: dict[str, Any] | None = None, columns: Sequence[str] | None = None) -> Any:
    """The committed dataset as a ``dask.dataframe``: exactly the parts its manifest lists."""
    import dask.dataframe as dd

    manifest = read_manifest(target, options)
    return dd.read_parquet(part_locations(target, manifest), columns=list(columns) if columns else None,
                           storage_options=options or None)


def write_frames(frames: Iterable[pd.DataFrame], target: str, *, options: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write frames one by one as parts and commit them: for a single process (bounded memory)."""
    parts: list[Part] = []
    columns: list[str] | None = None
    try:
        for index, frame in enumerate(frames):
            columns = columns or [str(c) for c in frame.columns]
            parts.append(write_part(frame, target, part_stem(index), options))
        return commit(target, parts, columns=columns or [], options=options, extra=extra)
    except BaseException:  # after the commit point too: the parts the new manifest lists are then kept
        discard_after_failure(target, options)
        raise


def write_dask(frame: Any, target: str, client: Any, *, options: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every partition of a ``dask.dataframe`` as a part on the cluster, then commit on the client.

    A worker lost mid-job only costs its tasks: the scheduler recomputes them elsewhere and
    they write the same bytes to the same paths. If the job fails, nothing is committed and,
    once its tasks still running have ended (:func:`ccfraud.compute.abandon`), the parts it
    wrote are removed.
    """
    import dask

    on_workers = for_workers(target)
    tasks = [dask.delayed(write_part)(partition, on_workers, part_stem(index), options)
             for index, partition in enumerate(frame.to_delayed())]
    futures = client.compute(tasks)
    try:
        parts = client.gather(futures)
        return commit(target, parts, columns=[str(c) for c in frame.columns], options=options, extra=extra)
    except BaseException:  # after the commit point too: the parts the new manifest lists are then kept
        compute.abandon(client, futures)  # a task still running would write its part after the removal
        discard_after_failure(target, options)
        raise
