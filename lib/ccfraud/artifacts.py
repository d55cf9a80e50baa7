"""Save and load a trained model together with the metadata that makes it trustworthy.

A model file alone cannot say which features it expects, which threshold it was
tuned for or which library versions can read it. The JSON next to it does, and
loading refuses a file whose checksum or library versions do not match.

The checksum only proves that the model file matches ``model.json``; whoever can
write one can write the other. Two further checks decide what a loaded file may be:

* **Types.** A skops file names the types it builds. Loading builds only the types in
  :data:`ALLOWED_TYPES` (what our candidate pipelines contain) and refuses any other
  file before constructing anything. Trusting whatever a file lists would give skops
  pickle's trust model back: ``sklearn.tree._tree.Tree``, for one, is untrusted by
  skops because a crafted tree crashes the process when it first scores.
* **Signature.** With a key in ``CCFRAUD_MODEL_SIGNING_KEY``, :func:`save_model` signs
  ``model.json`` (HMAC-SHA256; it holds the model file's sha256, so the signature
  covers the model too) and :func:`load_model` refuses a model that is unsigned or
  signed with another key. Only a holder of the key can make a model this code loads,
  however the directory or S3 prefix was written. Without a key, loading warns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import logging
import os
import platform
import subprocess
import zipfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import atomicio, schema
from ccfraud.checksums import file_sha256  # also imported from here by ccfraud.publish

log = logging.getLogger(__name__)

MODEL_FILE = "model.skops"
METADATA_FILE = "model.json"
FORMAT_VERSION = 1
#: Libraries whose version must match exactly for a pickled estimator to behave the same.
PINNED_LIBRARIES = ("scikit-learn", "imbalanced-learn", "numpy", "skops")
RECORDED_LIBRARIES = (*PINNED_LIBRARIES, "pandas", "scipy")

#: Every type a skops file of ours may build, and nothing else: what a model of each
#: candidate family (modeling.MODELS) with each sampler (modeling.SAMPLERS) contains.
#: Derived by saving one model of every combination and listing the types its skops file
#: names (tests/test_artifacts.py checks the list against those files, both ways).
#: A new candidate, sampler or library version that needs another type fails that test;
#: extend the list only with types you have read, never with what a file asks for.
#: Marked "skops: untrusted" are types skops itself refuses unless told to trust them.
ALLOWED_TYPES: frozenset[str] = frozenset({
    # our wrapper and the imbalanced-learn pipeline around every model
    "ccfraud.modeling.PriorCorrected",  # skops: untrusted
    "imblearn.pipeline.Pipeline",  # skops: untrusted
    # preprocessing (ccfraud.preprocess.make_preprocessor); "passthrough" is a FunctionTransformer
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    # samplers (modeling.make_sampler); SMOTE and NearMiss keep a fitted NearestNeighbors
    "imblearn.under_sampling._prototype_selection._random_under_sampler.RandomUnderSampler",  # skops: untrusted
    "imblearn.over_sampling._smote.base.SMOTE",  # skops: untrusted
    "imblearn.under_sampling._prototype_selection._nearmiss.NearMiss",  # skops: untrusted
    "sklearn.neighbors._unsupervised.NearestNeighbors",
    # logreg
    "sklearn.linear_model._logistic.LogisticRegression",
    # random_forest
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",  # skops: untrusted (a crafted node array crashes the scorer)
    # hist_gb and its internals: trees, binning, loss, label encoding, random generator
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # skops: untrusted
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "numpy.random._generator.Generator",
    "numpy.random.PCG64",
    # containers and values inside fitted attributes
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.slice",
    "builtins.str",
    "collections.OrderedDict",
    "numpy.ndarray",
    "numpy.int64",
    "numpy.uint64",
})

#: The environment variable holding the model-signing key (never params.yaml or a file in the repo).
SIGNING_KEY_ENV = "CCFRAUD_MODEL_SIGNING_KEY"
#: Shortest key accepted: an HMAC key anyone can guess signs nothing.
MIN_KEY_CHARACTERS = 32
#: The model.json field holding the signature; the signature covers every other field.
SIGNATURE_FIELD = "signature"
SIGNATURE_ALGORITHM = "hmac-sha256"
#: Prefixed to the signed bytes so this signature can never be mistaken for another use of the key.
_SIGNATURE_CONTEXT = b"ccfraud model.json v1\n"


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


def signing_key() -> bytes | None:
    """The model-signing key from ``CCFRAUD_MODEL_SIGNING_KEY``, or None when it is unset or empty.

    Empty counts as unset because that is what CI gives a workflow whose secret is not
    available (a fork's pull request). A key that is set but short is an error, not a
    weak signature. Messages name the variable, never its value.
    """
    value = os.environ.get(SIGNING_KEY_ENV, "").strip()
    if not value:
        return None
    if len(value) < MIN_KEY_CHARACTERS:
        raise ArtifactError(
            f"{SIGNING_KEY_ENV} is shorter than {MIN_KEY_CHARACTERS} characters; use a random key, e.g. "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return value.encode()


def _as_json(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` as a reader of model.json will see it (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(metadata, default=str))


def metadata_signature(metadata: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (hex) of model.json's canonical form: every field except the signature.

    Canonical means sorted keys, no whitespace, ASCII only, so any writer that keeps the
    same values keeps the same signature, and any changed value (threshold, features,
    the model's sha256) breaks it.
    """
    unsigned = {name: value for name, value in metadata.items() if name != SIGNATURE_FIELD}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, _SIGNATURE_CONTEXT + canonical.encode("ascii"), hashlib.sha256).hexdigest()


def sign_metadata(metadata: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of ``metadata`` (in its JSON form) carrying its signature under ``key``."""
    document = _as_json(metadata)
    document.pop(SIGNATURE_FIELD, None)
    document[SIGNATURE_FIELD] = {"algorithm": SIGNATURE_ALGORITHM, "hmac": metadata_signature(document, key)}
    return document


def check_signature(metadata: dict[str, Any], key: bytes, where: str | os.PathLike[str]) -> None:
    """Raise ArtifactError unless ``metadata`` (read from ``where``) is signed with ``key``.

    Says whether the signature is missing, malformed or wrong; a wrong one means the
    metadata changed after signing or another key signed it, which look the same.
    """
    signature = metadata.get(SIGNATURE_FIELD)
    if signature is None:
        raise ArtifactError(f"{where} is not signed, but {SIGNING_KEY_ENV} is set: only a model signed with "
                            "that key is accepted (save or publish it with the key set)")
    if not isinstance(signature, dict) or signature.get("algorithm") != SIGNATURE_ALGORITHM \
            or not isinstance(signature.get("hmac"), str):
        raise ArtifactError(f"{where}: malformed signature field {SIGNATURE_FIELD!r}; expected "
                            f"{{\"algorithm\": \"{SIGNATURE_ALGORITHM}\", \"hmac\": \"<hex>\"}}")
    # Bytes, not str: compare_digest refuses non-ASCII strings, and the field is the file's to choose.
    if not hmac.compare_digest(signature["hmac"].encode(), metadata_signature(metadata, key).encode()):
        raise ArtifactError(f"{where}: signature does not match {SIGNING_KEY_ENV} (the metadata was changed "
                            "after signing, or another key signed it)")


def save_model(model: Any, out_dir: Path, *, threshold: float, extra: dict[str, Any] | None = None,
               companions: dict[str, bytes] | None = None) -> dict:
    """Write ``model.skops`` and ``model.json`` (checksum, features, threshold, versions, ...).

    ``extra`` carries what the training run knows: metrics, params, data checksums;
    ``companions`` other files of the model directory (name: bytes) that ``extra`` describes.
    Every byte is computed before the first file is written, so a failure or an interrupt
    while computing (the fingerprint, git) leaves the directory as it was; then the files
    follow one another, companions first, the JSON last, so a reader that finds it finds a
    complete model. With ``CCFRAUD_MODEL_SIGNING_KEY`` set, ``model.json`` carries its
    signature; without it the model is saved unsigned, as before. Returns the metadata as written.
    """
    import skops.io as sio

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    key = signing_key()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = sio.dumps(model)
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
    meta = sign_metadata(meta, key) if key is not None else _as_json(meta)
    metadata = metadata_bytes(meta)
    for name, data in {**(companions or {}), MODEL_FILE: payload}.items():
        atomicio.write_bytes(out_dir / name, data)
    atomicio.write_bytes(out_dir / METADATA_FILE, metadata)
    return meta


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    """model.json's bytes as every writer (save, publish) writes them."""
    return (json.dumps(metadata, indent=2) + "\n").encode()


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


def _checksum_error(path: Path, expected: Any, actual: str) -> ArtifactError:
    return ArtifactError(
        f"{path}: checksum mismatch (metadata says sha256 {expected}, file has {actual}); "
        "the file was modified or corrupted, refusing to load it"
    )


def verify(model_dir: Path, metadata: dict) -> Path:
    """Check the artifact's checksum, feature spec and library versions; return the model path."""
    path = Path(model_dir) / metadata.get("model_file", MODEL_FILE)
    if not path.exists():
        raise ArtifactError(f"{path} not found (named by {Path(model_dir) / METADATA_FILE})")
    actual = file_sha256(path)
    if actual != metadata.get("sha256"):
        raise _checksum_error(path, metadata.get("sha256"), actual)
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


def skops_types(data: bytes, where: str | os.PathLike[str]) -> set[str]:
    """Every type the skops file ``data`` would build, read from its object tree without building anything.

    ``skops.io.get_untrusted_types`` lists only the types skops does not trust by default;
    this lists all of them (every node's type, every type a node refers to, a random
    generator's bit generator), plus whatever skops's own audit declares, so that
    :data:`ALLOWED_TYPES` decides alone. It uses skops's tree reader (private API; skops
    is a pinned library, and tests/test_artifacts.py fails if the reader changes shape).
    """
    from skops.io._audit import Node, get_tree
    from skops.io._utils import get_module, read_schema

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            state, load_context = read_schema(archive)
            tree = get_tree(state, load_context, trusted=None)
        names = set(tree.get_unsafe_set())
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{where}: not a readable skops file ({type(error).__name__}: {error})") from None
    seen: set[int] = set()
    pending: list[Any] = [tree]
    while pending:
        item = pending.pop()
        if item is None or isinstance(item, (str, bytes, int, float, io.BytesIO)):
            continue  # data: JSON values and the numpy buffers skops reads without pickle
        if isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, type):
            names.add(f"{get_module(item)}.{item.__name__}")
        elif isinstance(item, Node):
            if id(item) in seen:
                continue
            seen.add(id(item))
            names.add(f"{item.module_name}.{item.class_name}")
            bit_generator = getattr(item, "bit_generator_name", None)  # numpy Generator: builds this class too
            if isinstance(bit_generator, str):
                names.add(f"numpy.random.{bit_generator}")
            pending.extend(item.children.values())
        else:
            raise ArtifactError(f"{where}: skops object tree holds a {type(item).__name__} this check cannot "
                                "classify; refusing to load it")
    return names


def check_types(data: bytes, where: str | os.PathLike[str]) -> None:
    """Raise ArtifactError naming every type in the skops file ``data`` that is not in :data:`ALLOWED_TYPES`."""
    unexpected = sorted(skops_types(data, where) - ALLOWED_TYPES)
    if unexpected:
        raise ArtifactError(
            f"{where} contains types outside ccfraud.artifacts.ALLOWED_TYPES: {', '.join(unexpected)}; "
            "refusing to build anything from it (a model of ours never contains them; if a new candidate "
            "needs them, review them and add them to the list)"
        )


def _check_signature_policy(metadata: dict, where: str | os.PathLike[str]) -> None:
    """With a key, the signature must verify; without one, say once that nothing was checked."""
    key = signing_key()
    if key is not None:
        check_signature(metadata, key, where)
    elif SIGNATURE_FIELD in metadata:
        log.warning("%s is signed but %s is not set: the signature was not checked", where, SIGNING_KEY_ENV)
    else:
        log.warning("%s is unsigned and %s is not set: loading it without a signature check",
                    where, SIGNING_KEY_ENV)


def load_model(model_dir: Path, *, origin: str | None = None) -> LoadedModel:
    """Load a model saved by :func:`save_model`, refusing anything that does not verify.

    In order: the signature (when ``CCFRAUD_MODEL_SIGNING_KEY`` is set), the checksum,
    features and library versions, then the types the file would build. Only a file
    that passes all of them is built, from the very bytes that were checked.
    ``origin`` names where a downloaded copy came from (an S3 prefix) in signature and
    type messages, instead of the temporary directory.
    """
    import skops.io as sio

    model_dir = Path(model_dir)
    base = origin.rstrip("/") + "/" if origin else f"{model_dir}/"
    metadata = read_metadata(model_dir)
    _check_signature_policy(metadata, base + METADATA_FILE)
    path = verify(model_dir, metadata)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != metadata.get("sha256"):  # replaced since verify() read it
        raise _checksum_error(path, metadata.get("sha256"), actual)
    check_types(data, base + path.name)
    return LoadedModel(sio.loads(data, trusted=sorted(ALLOWED_TYPES)), metadata)
