"""Save and load a trained model together with the metadata that makes it trustworthy.

A model file alone cannot say which features it expects, which threshold it was
tuned for or which library versions can read it. The JSON next to it does, and
loading refuses a file whose checksum or library versions do not match.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import atomicio, schema
from ccfraud.checksums import file_sha256  # also imported from here by ccfraud.publish

MODEL_FILE = "model.skops"
METADATA_FILE = "model.json"
FORMAT_VERSION = 1
#: Libraries whose version must match exactly for a pickled estimator to behave the same.
PINNED_LIBRARIES = ("scikit-learn", "imbalanced-learn", "numpy", "skops")
RECORDED_LIBRARIES = (*PINNED_LIBRARIES, "pandas", "scipy")


class ArtifactError(RuntimeError):
    """A model artifact is missing, tampered with or incompatible; the message says which."""


def behaviour_fingerprint(model: Any) -> str:
    """sha256 of the model's fraud probabilities on fixed probe transactions.

    The saved file's bytes differ from save to save (skops stores timestamps and object
    ids), so the version is derived from what the model *does*: retraining on the same
    data with the same params gives the same version, any change in behaviour a new one.
    """
    rng = np.random.default_rng(20151103)
    probe = pd.DataFrame(rng.standard_normal((256, len(schema.FEATURES))) * 3.0, columns=schema.FEATURES)
    probe[schema.TIME] = rng.uniform(0.0, 172_800.0, len(probe))
    probe[schema.AMOUNT] = rng.lognormal(3.0, 1.5, len(probe))
    scores = np.round(np.asarray(model.predict_proba(probe)[:, 1], dtype="float64"), 10)
    return hashlib.sha256(type(model).__name__.encode() + scores.tobytes()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {name: importlib_metadata.version(name) for name in RECORDED_LIBRARIES}
    versions["python"] = platform.python_version()
    return versions


def git_revision(cwd: Path | None = None) -> str:
    """The commit the model was trained from (``+dirty`` if the tree had changes), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def save_model(model: Any, out_dir: Path, *, threshold: float, extra: dict[str, Any] | None = None) -> dict:
    """Write ``model.skops`` and ``model.json`` (checksum, features, threshold, versions, ...).

    ``extra`` carries what the training run knows: metrics, params, data checksums.
    The JSON is written last, so a reader that finds it finds a complete model.
    """
    import skops.io as sio

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = sio.dumps(model)
    atomicio.write_bytes(out_dir / MODEL_FILE, payload)
    sha = hashlib.sha256(payload).hexdigest()
    meta = {
        "format_version": FORMAT_VERSION,
        "model_file": MODEL_FILE,
        "sha256": sha,
        "model_version": behaviour_fingerprint(model)[:12],
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "threshold": float(threshold),
        "features": list(schema.FEATURES),
        "library_versions": library_versions(),
        "git_revision": git_revision(out_dir),
        **(extra or {}),
    }
    atomicio.write_bytes(out_dir / METADATA_FILE, (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return meta


def read_metadata(model_dir: Path) -> dict:
    path = Path(model_dir) / METADATA_FILE
    if not path.exists():
        raise ArtifactError(f"{path} not found: train a model first (dvc repro) or point to a model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is not valid JSON: {error}") from None


@dataclass
class LoadedModel:
    """A verified model and its metadata."""

    model: Any
    metadata: dict

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def version(self) -> str:
        return str(self.metadata["model_version"])


def verify(model_dir: Path, metadata: dict) -> Path:
    """Check the artifact's checksum, feature spec and library versions; return the model path."""
    path = Path(model_dir) / metadata.get("model_file", MODEL_FILE)
    if not path.exists():
        raise ArtifactError(f"{path} not found (named by {Path(model_dir) / METADATA_FILE})")
    actual = file_sha256(path)
    if actual != metadata.get("sha256"):
        raise ArtifactError(
            f"{path}: checksum mismatch (metadata says sha256 {metadata.get('sha256')}, file has {actual}); "
            "the file was modified or corrupted, refusing to load it"
        )
    if metadata.get("features") != schema.FEATURES:
        raise ArtifactError(f"{path}: trained on features {metadata.get('features')}, this code serves "
                            f"{schema.FEATURES}")
    recorded = metadata.get("library_versions", {})
    current = library_versions()
    mismatched = [f"{name} {recorded.get(name)} (installed: {current[name]})"
                  for name in PINNED_LIBRARIES if recorded.get(name) != current[name]]
    if mismatched:
        raise ArtifactError(f"{path}: saved with different library versions: {', '.join(mismatched)}; "
                            "install the versions it was saved with or retrain")
    return path


def load_model(model_dir: Path) -> LoadedModel:
    """Load a model saved by :func:`save_model`, refusing anything that does not verify."""
    import skops.io as sio

    metadata = read_metadata(model_dir)
    path = verify(model_dir, metadata)
    # The checksum above proves these are the bytes we wrote, so their types are trusted.
    trusted = sio.get_untrusted_types(file=path)
    return LoadedModel(sio.load(path, trusted=trusted), metadata)
