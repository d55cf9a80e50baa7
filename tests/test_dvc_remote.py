"""A DVC remote on a real S3 server: push the pipeline's outputs, lose cache and outputs, pull them back.

Runs on a copy of the session's ``pipeline_run`` repository (no extra pipeline run).
The remote is configured as the README says: the URL in ``.dvc/config``, the endpoint in
``.dvc/config.local`` (machine-specific) or ``AWS_ENDPOINT_URL``, the credentials only
in the environment.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import run
from test_s3_pipeline import s3_tool_env

from ccfraud.s3_server import REGION, LocalS3Server

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def cached_outputs(repo: Path) -> list[str]:
    """The outputs DVC caches (and so pushes): every stage's ``outs`` in dvc.yaml."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return sorted(str(out) for stage in stages.values() for out in stage.get("outs", []))


def sha256s(repo: Path, paths: list[str]) -> dict[str, str]:
    return {path: digest(repo / path) for path in paths}


def digest(path: Path) -> str:
    """A file's SHA-256; for a directory output (the raw Parquet dataset), one over its files' names and bytes."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    sha = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        sha.update(file.relative_to(path).as_posix().encode())
        sha.update(hashlib.sha256(file.read_bytes()).digest())
    return sha.hexdigest()


def test_push_then_pull_restores_identical_outputs(pipeline_run: Path, s3_server: LocalS3Server, tmp_path: Path):
    repo = Path(shutil.copytree(pipeline_run, tmp_path / "repo", symlinks=True))
    store = f"dvc-store/{uuid.uuid4().hex[:12]}"
    credentials = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                   "AWS_DEFAULT_REGION": REGION}
    env = s3_tool_env(tmp_path, credentials)  # no AWS_ENDPOINT_URL: the endpoint comes from the local config
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{s3_server.bucket}/{store}"], repo, env)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server.endpoint_url], repo, env)

    outputs = cached_outputs(repo)
    assert {"data/raw/creditcard", "data/processed/train", "models/model.skops",
            "models/model.json", "reports/03_train.html"} <= set(outputs)
    before = sha256s(repo, outputs)
    run(["dvc", "push"], repo, env)
    listing = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=store + "/")  # type: ignore[attr-defined]
    assert listing.get("KeyCount", 0) >= len(set(before.values())), "the remote holds fewer objects than outputs"

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / "models")
    for path in outputs:
        (repo / path).unlink(missing_ok=True)
    assert not any((repo / path).exists() for path in outputs)

    # Pull with the endpoint from the environment instead: dvc-s3 3.3.0 honours AWS_ENDPOINT_URL.
    (repo / ".dvc" / "config.local").unlink()
    run(["dvc", "pull"], repo, {**env, "AWS_ENDPOINT_URL": s3_server.endpoint_url})
    assert sha256s(repo, outputs) == before
    status = run(["dvc", "status"], repo, env)
    assert "Data and pipelines are up to date" in status.stdout

    config = (repo / ".dvc" / "config").read_text()
    assert f"s3://{s3_server.bucket}/{store}" in config
    assert s3_server.access_key not in config and s3_server.secret_key not in config
