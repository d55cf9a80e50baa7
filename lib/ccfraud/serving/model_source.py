"""Load the served model from a local directory or an ``s3://bucket/prefix/`` location.

An S3 model is downloaded (``model.json``, then the model file it names) into a
temporary directory, verified and loaded by :func:`ccfraud.artifacts.load_model`
exactly like a local one (signature, checksum, allowed types), and the temporary copy
is removed: the process keeps the model in memory, so nothing stale is left on disk
for a later start to trust. Whoever can write the prefix can replace both files, so
with ``CCFRAUD_MODEL_SIGNING_KEY`` set only a model signed with that key is served.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ccfraud import artifacts, s3

log = logging.getLogger(__name__)


def is_s3(location: str) -> bool:
    return location.lower().startswith(s3.SCHEME)


def _base_uri(location: str) -> str:
    """``s3://bucket/prefix/`` for a location given with or without the trailing slash."""
    bucket, prefix = s3.parse_s3_uri(location, require_key=False)
    prefix = prefix.rstrip("/")
    return f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"


def _download_model(location: str, dest: Path, endpoint_url: str | None = None) -> None:
    """Fetch model.json, then the model file it names, from the S3 prefix ``location``."""
    base = _base_uri(location)
    s3.download(base + artifacts.METADATA_FILE, dest / artifacts.METADATA_FILE, endpoint_url=endpoint_url,
                progress=False)
    model_file = artifacts.read_metadata(dest).get("model_file", artifacts.MODEL_FILE)
    if Path(model_file).name != model_file:
        raise artifacts.ArtifactError(f"{base}{artifacts.METADATA_FILE} names model file {model_file!r}; "
                                      "expected a plain file name next to it")
    s3.download(base + model_file, dest / model_file, endpoint_url=endpoint_url, progress=False)


def load(location: str, endpoint_url: str | None = None) -> artifacts.LoadedModel:
    """The verified model at ``location`` (a model directory, or an S3 prefix holding one).

    ``endpoint_url`` is an S3-compatible endpoint; None uses ``AWS_ENDPOINT_URL`` or AWS itself.

    Raises ArtifactError (missing, tampered, unsigned or wrongly signed, incompatible, or
    holding types outside the allowlist) or S3Error (cannot download); both messages say
    where, and neither contains credentials or the signing key.
    """
    if not is_s3(location):
        return artifacts.load_model(Path(location))
    with tempfile.TemporaryDirectory(prefix="ccfraud-model-") as tmp:
        _download_model(location, Path(tmp), endpoint_url)
        loaded = artifacts.load_model(Path(tmp), origin=_base_uri(location))
    log.info("downloaded and verified model %s from %s", loaded.version, location)
    return loaded
