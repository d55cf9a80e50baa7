"""Partitioned Parquet datasets committed as a data lake does: the parts first, a manifest last.

A dataset is a directory or an ``s3://bucket/prefix/``::

    TARGET/_manifest.json                  written last: the commit point
    TARGET/<run id>/part-00000.parquet     the parts of the committed run
    TARGET/<run id>/part-00001.parquet ...

Parts are written under a fresh run id (by many workers at once, on a cluster), then the
manifest lists each part with its row count, size and SHA-256. A reader trusts only what the
manifest lists, so a job that dies half-way leaves the previous dataset exactly as readable as
before, and a reader never sees half a result. On a local disk the manifest replaces the old one
with an atomic rename; on S3 one PUT replaces one object whole. Parts of earlier runs are
removed after the new manifest is in place.

Writing our own manifest rather than Dask's ``to_parquet``: its ``_metadata`` file is optional,
carries no checksums and is written beside the parts with no commit point, so an interrupted
write is indistinguishable from a complete one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ccfraud import atomicio

MANIFEST = "_manifest.json"
FORMAT = "ccfraud-lake/1"


class LakeError(RuntimeError):
    """A dataset is missing, uncommitted or does not match its manifest; the message names the file."""


@dataclass(frozen=True)
class Part:
    """One committed part: its path relative to the dataset, its rows, bytes and SHA-256."""

    path: str
    rows: int
    bytes: int
    sha256: str


#: s3fs client settings matching :mod:`ccfraud.s3`'s: short connect and idle-read timeouts,
#: three attempts, path-style addressing (local S3 servers rarely have wildcard DNS).
S3_CONFIG = {"connect_timeout": 3, "read_timeout": 15, "retries": {"max_attempts": 3, "mode": "standard"},
             "s3": {"addressing_style": "path"}}


def storage_options(location: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for ``location``: for S3 the endpoint, when one is given, and bounded retries and timeouts.

    Credentials are never options: s3fs reads them from the environment or an AWS profile,
    on the client and on every worker. Without the timeouts, an unreachable endpoint would
    keep a stage retrying for minutes instead of failing in seconds with a clear error.
    """
    if not str(location).startswith("s3://"):
        return {"endpoint_url": endpoint_url} if is_remote(location) and endpoint_url else {}
    options: dict[str, Any] = {"config_kwargs": S3_CONFIG}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def is_remote(location: str) -> bool:
    """True for an ``s3://`` (or other fsspec URL) location, False for a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


def _filesystem(location: str, options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(str(location), **(options or {}))
    return fs, root.rstrip("/")


def new_run_id() -> str:
    """A run id that sorts by time and never collides: ``run-YYYYmmddTHHMMSS-<8 hex>``."""
    return f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def part_path(run_id: str, index: int, chunk: int | None = None) -> str:
    """The relative path of part ``index`` of run ``run_id``; ``chunk`` numbers the parts of one task.

    A task that cannot know in advance how many parts its input makes (a Parquet file
    of unknown length, on a worker) writes ``part-<index>-<chunk>``: names never collide
    and sort in dataset order, and the manifest lists them in that order.
    """
    if chunk is None:
        return f"{run_id}/part-{index:05d}.parquet"
    return f"{run_id}/part-{index:05d}-{chunk:04d}.parquet"


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as one Parquet file (no index), the bytes that are checksummed and written."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_part(frame: pd.DataFrame, target: str, relative: str,
               options: dict[str, Any] | None = None) -> Part:
    """Write one part of an uncommitted run and describe it for the manifest. Runs on a worker."""
    data = parquet_bytes(frame)
    fs, root = _filesystem(target, options)
    path = f"{root}/{relative}"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)
    return Part(relative, len(frame), len(data), hashlib.sha256(data).hexdigest())


def commit(target: str, parts: Sequence[Part], *, columns: Sequence[str],
           options: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the manifest listing ``parts`` (the commit point), then remove parts of earlier runs."""
    manifest = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
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
    _remove_other_runs(fs, root, {part.path.split("/", 1)[0] for part in parts})
    return manifest


def _remove_other_runs(fs: Any, root: str, keep: set[str]) -> None:
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and name.startswith("run-") and name not in keep:
            fs.rm(entry["name"], recursive=True)


def discard_run(target: str, run_id: str, options: dict[str, Any] | None = None) -> None:
    """Remove what an uncommitted run wrote (after a failure); the committed dataset is untouched."""
    fs, root = _filesystem(target, options)
    if fs.exists(f"{root}/{run_id}"):
        fs.rm(f"{root}/{run_id}", recursive=True)


def read_manifest(target: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The committed manifest of ``target``; a :class:`LakeError` when nothing was committed there."""
    fs, root = _filesystem(target, options)
    path = f"{root}/{MANIFEST}"
    if not fs.exists(path):
        raise LakeError(f"no committed dataset at {target}: {MANIFEST} is missing "
                        "(a write that did not finish leaves none)")
    manifest = json.loads(fs.cat_file(path))
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
    """Write frames one by one as the parts of a new run and commit it: for a single process (bounded memory)."""
    run_id = new_run_id()
    parts: list[Part] = []
    columns: list[str] | None = None
    try:
        for index, frame in enumerate(frames):
            columns = columns or [str(c) for c in frame.columns]
            parts.append(write_part(frame, target, part_path(run_id, index), options))
    except BaseException:
        discard_run(target, run_id, options)
        raise
    return commit(target, parts, columns=columns or [], options=options, extra=extra)


def write_dask(frame: Any, target: str, client: Any, *, options: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every partition of a ``dask.dataframe`` as a part on the cluster, then commit on the client.

    A worker lost mid-job only costs its tasks: the scheduler recomputes them elsewhere and
    they write the same bytes to the same paths. If the job fails, nothing is committed and
    the parts it wrote are removed.
    """
    import dask

    run_id = new_run_id()
    tasks = [dask.delayed(write_part)(partition, target, part_path(run_id, index), options)
             for index, partition in enumerate(frame.to_delayed())]
    try:
        parts = client.gather(client.compute(tasks))
    except BaseException:
        discard_run(target, run_id, options)
        raise
    return commit(target, parts, columns=[str(c) for c in frame.columns], options=options, extra=extra)
