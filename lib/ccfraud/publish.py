"""Publish a trained model to S3 as one immutable version folder: ``s3://bucket/prefix/<model_version>/``.

A deployed API loads its model from such a folder (:mod:`ccfraud.serving.model_source`),
so a version URI must always mean the same bytes. Hence:

* the local model is verified first (checksum, features, library versions, as
  :func:`ccfraud.artifacts.load_model` does): a tampered or incompatible model is never published;
* the model file is uploaded first and ``model.json`` last: S3 makes each object visible
  only once it is complete, so a reader that finds the metadata finds the model it describes;
* with ``CCFRAUD_MODEL_SIGNING_KEY`` set, the uploaded ``model.json`` is signed: a local
  model signed with the key is uploaded as it is, an unsigned one is signed on the way (the
  local file is left alone: it is a DVC output), one signed with another key is refused.
  The signature is a field of ``model.json``, so it arrives with the last upload and an
  interrupted publish never leaves a loadable unsigned model. Without a key the model is
  published as it is, with a warning that servers holding a key will refuse it;
* nothing is overwritten: a folder already holding a different model (other bytes, or the
  same bytes with another threshold or feature list) is an error. A folder holding this very
  model is success, so publishing twice is harmless, and a folder holding only this model's
  file (a publish interrupted before ``model.json``) is completed rather than refused.

Two publishers racing on the same version are not arbitrated (S3 has no portable
compare-and-swap); the version is the model's checksum, so both write the same file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ccfraud import artifacts, s3

log = logging.getLogger(__name__)

#: Metadata that decides what a served model answers: two model.json files that agree on these
#: describe the same deployed behaviour (``trained_at`` or ``git_revision`` may differ).
IDENTITY_KEYS = ("sha256", "model_file", "threshold", "features")
#: A model version must be usable as one S3 folder name (save_model writes 12 hex digits).
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PublishError(RuntimeError):
    """Publishing would replace or mix with another model; the message names the S3 folder and the conflict."""


def version_uri(uri_prefix: str, version: str) -> str:
    """The folder ``<uri_prefix>/<version>/`` for a prefix such as ``s3://bucket/models/`` (slash optional)."""
    bucket, prefix = s3.parse_s3_uri(uri_prefix, require_key=False)
    prefix = prefix.rstrip("/")
    return f"s3://{bucket}/{prefix}/{version}/" if prefix else f"s3://{bucket}/{version}/"


def publish_model(model_dir: str | os.PathLike[str], uri_prefix: str, *, endpoint_url: str | None = None) -> str:
    """Upload the verified model in ``model_dir`` to ``<uri_prefix>/<model_version>/`` and return that URI.

    Raises ArtifactError when the local model does not verify or is signed with another
    key than ``CCFRAUD_MODEL_SIGNING_KEY`` (nothing is uploaded), PublishError when the
    version folder already holds something else (or, with a key, an unsigned or wrongly
    signed copy of this model), and S3Error when
    S3 fails (wrong bucket, credentials, endpoint); every message names the location.
    ``endpoint_url`` is for S3-compatible servers; by default boto3 reads ``AWS_ENDPOINT_URL``.
    """
    model_dir = Path(model_dir)
    metadata = artifacts.read_metadata(model_dir)
    model_path = artifacts.verify(model_dir, metadata)
    key = artifacts.signing_key()
    upload_metadata = _metadata_to_upload(model_dir, metadata, key)
    version = _checked_version(metadata, model_dir)
    if model_path.name != metadata.get("model_file", artifacts.MODEL_FILE):
        raise artifacts.ArtifactError(
            f"{model_dir / artifacts.METADATA_FILE} names model file {metadata.get('model_file')!r}; "
            "expected a plain file name next to it"
        )
    target = version_uri(uri_prefix, version)
    model_uri = target + model_path.name
    metadata_uri = target + artifacts.METADATA_FILE

    bucket, _ = s3.parse_s3_uri(target, require_key=False)
    existing = {f"s3://{bucket}/{key}" for key in s3.list_keys(target, endpoint_url=endpoint_url)}
    strangers = sorted(existing - {model_uri, metadata_uri})
    if strangers:
        raise PublishError(
            f"{target} already holds objects that are not part of model {version}: {strangers[:5]}; "
            "refusing to mix them; publish under another prefix or remove them"
        )
    if metadata_uri in existing:
        _check_published(target, metadata, model_uri, metadata_uri, has_model=model_uri in existing,
                         key=key, endpoint_url=endpoint_url)
        log.info("model %s is already published at %s; nothing to upload", version, target)
        return target
    # What is uploaded is what was verified: the model file is copied and checked again, and model.json is the
    # metadata read above, so a train run rewriting model_dir meanwhile cannot pair its file with this version.
    with tempfile.TemporaryDirectory(prefix="ccfraud-publish-") as tmp:
        if model_uri in existing:
            # An earlier publish stopped between the two uploads: finish it if the file is this model's.
            _check_remote_model(model_uri, metadata["sha256"], target, endpoint_url=endpoint_url)
            log.info("completing an interrupted publish of model %s at %s", version, target)
        else:
            s3.upload(_verified_copy(model_path, metadata["sha256"], Path(tmp), model_dir), model_uri,
                      endpoint_url=endpoint_url)
        described = Path(tmp) / artifacts.METADATA_FILE
        described.write_bytes(artifacts.metadata_bytes(metadata if upload_metadata is None else upload_metadata))
        s3.upload(described, metadata_uri, endpoint_url=endpoint_url)
    log.info("published model %s to %s", version, target)
    return target


def _verified_copy(model_path: Path, sha256: str, into: Path, model_dir: Path) -> Path:
    """A copy of the model file in ``into``, refused unless it still has the checksum ``model.json`` records."""
    copy = into / model_path.name
    shutil.copyfile(model_path, copy)
    if artifacts.file_sha256(copy) != sha256:
        raise PublishError(f"{model_path} changed while it was being published (its sha256 is no longer the one "
                           f"{model_dir / artifacts.METADATA_FILE} records; a training run writing there?): "
                           "nothing was uploaded; publish again once it has finished")
    return copy


def _metadata_to_upload(model_dir: Path, metadata: dict[str, Any], key: bytes | None) -> dict[str, Any] | None:
    """The signed metadata to upload instead of the local model.json, or None to upload the local metadata as read."""
    where = model_dir / artifacts.METADATA_FILE
    if key is None:
        if artifacts.SIGNATURE_FIELD not in metadata:
            log.warning("publishing an unsigned model (%s is not set): servers with a signing key will refuse it",
                        artifacts.SIGNING_KEY_ENV)
        return None
    if artifacts.SIGNATURE_FIELD in metadata:
        artifacts.check_signature(metadata, key, where)  # another key, or edited after signing: refuse
        return None
    log.info("signing %s for publication with %s", where, artifacts.SIGNING_KEY_ENV)
    return artifacts.sign_metadata(metadata, key)


def _checked_version(metadata: dict[str, Any], model_dir: Path) -> str:
    version = metadata.get("model_version")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise artifacts.ArtifactError(
            f"{model_dir / artifacts.METADATA_FILE}: model_version {version!r} cannot name an S3 folder; "
            "expected letters, digits, '.', '_' or '-' (save_model writes the first 12 hex digits of the sha256)"
        )
    return version


def _check_published(target: str, metadata: dict[str, Any], model_uri: str, metadata_uri: str, *,
                     has_model: bool, key: bytes | None, endpoint_url: str | None) -> None:
    """Succeed only if the folder already holds exactly this model: same identity, intact file and,
    with a key, a valid signature (a copy the servers would refuse is not "already published")."""
    with tempfile.TemporaryDirectory(prefix="ccfraud-publish-") as tmp:
        s3.download(metadata_uri, Path(tmp) / artifacts.METADATA_FILE, endpoint_url=endpoint_url, progress=False)
        remote = artifacts.read_metadata(Path(tmp))
    differences = [f"{key}: published {remote.get(key)!r}, local {metadata.get(key)!r}"
                   for key in IDENTITY_KEYS if remote.get(key) != metadata.get(key)]
    if differences:
        raise PublishError(
            f"{target} already holds a different model {metadata.get('model_version')} "
            f"({'; '.join(differences)}); refusing to overwrite a published version"
        )
    if key is not None:
        try:
            artifacts.check_signature(remote, key, metadata_uri)
        except artifacts.ArtifactError as error:
            raise PublishError(
                f"{target} already holds this model, but {error}; servers with this key would refuse it. "
                "Refusing to overwrite a published version: remove the folder and publish again"
            ) from None
    if not has_model:
        raise PublishError(
            f"{metadata_uri} exists but {model_uri} does not: the published version is damaged; "
            "remove the folder and publish again"
        )
    _check_remote_model(model_uri, metadata["sha256"], target, endpoint_url=endpoint_url)


def _check_remote_model(model_uri: str, sha256: str, target: str, *, endpoint_url: str | None) -> None:
    """Download the published model file and compare its bytes with the local checksum."""
    with tempfile.TemporaryDirectory(prefix="ccfraud-publish-") as tmp:
        path = Path(tmp) / "model"
        s3.download(model_uri, path, endpoint_url=endpoint_url, progress=False)
        actual = artifacts.file_sha256(path)
    if actual != sha256:
        raise PublishError(
            f"{model_uri} already exists with different content (sha256 {actual}, local model {sha256}); "
            f"refusing to overwrite it; inspect or remove {target} and publish again"
        )
