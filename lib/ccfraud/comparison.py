"""The models the chosen one is compared with on the test split: fitted by train, scored by evaluate.

Two rows sit next to the model in ``metrics.json``: the seed project's recipe, fitted on the
search's rows, and the untuned yardstick (:data:`ccfraud.modeling.REFERENCE`), fitted on the
final model's rows. The train stage holds both sets of rows already, so it fits them there,
in its search's pool of threads, and saves them next to the model (``comparison.skops``, its sha256 in
``model.json``); the evaluate stage loads them, checked like the model, and scores all three in
one pass over the test split. The evaluate stage then never reads the train or validation split:
it used to draw those rows again (two passes over 23 M rows at 100x the data) and refit both.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ccfraud import artifacts, baseline, modeling

FILE = "comparison.skops"
#: The key of ``model.json`` that records the comparison file.
METADATA_KEY = "comparison"


class ComparisonError(artifacts.ArtifactError):
    """The comparison file is missing, tampered with or not the model's; the message says which."""


@dataclass
class Comparison:
    """The seed recipe's model and its accuracy claim, and the yardstick (None: the model is the yardstick)."""

    seed_method: Any
    seed_accuracy_claim: float
    reference: Any | None

    @property
    def reference_is_model(self) -> bool:
        return self.reference is None


@dataclass
class Pending:
    """The comparison models being fitted in background threads while the search runs (:func:`start`)."""

    seed_method: Future[baseline.SeedBaseline]
    reference: Future[Any]

    def result(self, chosen: str) -> Comparison:
        """Wait for both fits; the yardstick is dropped when it is the chosen model (the model then stands for it)."""
        seed_method, reference = self.seed_method.result(), self.reference.result()
        return Comparison(seed_method.model, seed_method.balanced_accuracy_claim,
                          None if chosen == modeling.REFERENCE else reference)


def start(executor: Executor, search_rows: pd.DataFrame, model_rows: pd.DataFrame, *, model_legit_fraction: float,
          seed: int) -> Pending:
    """Start fitting the seed recipe on the search's rows and the untuned yardstick on the final model's rows.

    Neither depends on the search, so they are queued in its pool (``executor``) before its fits,
    each on one native thread like them (the default train stage spent 2.9 s fitting them after
    the search). If the search then chooses the yardstick, its fit here is the
    model (:func:`ccfraud.training.select_model`), and the comparison keeps no copy of it.
    ``model_legit_fraction`` is the share of legitimate rows ``model_rows`` kept of its split (the
    yardstick's prior correction needs it, as the model's did).
    """
    return Pending(executor.submit(baseline.fit_seed_baseline, search_rows, seed),
                   executor.submit(modeling.refit, modeling.reference_pipeline(seed), model_rows,
                                   legit_fraction=model_legit_fraction))


def dump(comparison: Comparison) -> tuple[bytes, dict[str, Any]]:
    """``comparison.skops``'s bytes, and what ``model.json`` records about them.

    :func:`ccfraud.artifacts.save_model` writes them with the model (``companions``), once every
    byte of the model directory is computed.
    """
    import skops.io as sio

    payload = sio.dumps({"seed_method": comparison.seed_method, "reference": comparison.reference})
    # What each model does, as model_version is for the model: the file's bytes differ from save to save.
    versions = {"seed_method": artifacts.behaviour_fingerprint(comparison.seed_method)[:12],
                "reference": None if comparison.reference is None
                else artifacts.behaviour_fingerprint(comparison.reference)[:12]}
    return payload, {"sha256": hashlib.sha256(payload).hexdigest(),
                     "seed_accuracy_claim": round(float(comparison.seed_accuracy_claim), 6), "versions": versions}


def load(model_dir: Path, metadata: dict[str, Any]) -> Comparison:
    """The comparison models the train stage saved with the model whose ``model.json`` is ``metadata``.

    Refused, with the file named, unless its sha256 is the one ``model.json`` records and every
    type in it is one :data:`ccfraud.artifacts.ALLOWED_TYPES` lists: the same checks as the model's.
    """
    import skops.io as sio

    record = metadata.get(METADATA_KEY)
    path = Path(model_dir) / FILE
    if not record or not {"sha256", "seed_accuracy_claim"} <= set(record):
        raise ComparisonError(f"{Path(model_dir) / artifacts.METADATA_FILE} records no comparison models "
                              f"(its '{METADATA_KEY}' entry is missing or incomplete): retrain with this version "
                              "(dvc repro train)")
    if not path.exists():
        raise ComparisonError(f"{path} not found (named by {Path(model_dir) / artifacts.METADATA_FILE})")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != record.get("sha256"):
        raise ComparisonError(f"{path}: checksum mismatch (model.json says sha256 {record.get('sha256')}, file has "
                              f"{actual}); it is not this model's comparison file, refusing to load it")
    artifacts.check_types(data, path)
    models = sio.loads(data, trusted=sorted(artifacts.ALLOWED_TYPES))
    return Comparison(models["seed_method"], float(record["seed_accuracy_claim"]), models["reference"])


#: Column names of the comparison models' scores next to the model's (:data:`ccfraud.modeling.SCORE`).
SEED_SCORE, REFERENCE_SCORE = "seed_method_score", "reference_score"


def scorers(model: Any, comparison: Comparison) -> dict[str, Any]:
    """The models to score on the test split in one pass, by the column their scores go to."""
    models = {modeling.SCORE: model, SEED_SCORE: comparison.seed_method}
    if comparison.reference is not None:
        models[REFERENCE_SCORE] = comparison.reference
    return models


def reference_scores(scored: pd.DataFrame) -> Any:
    """The yardstick's test scores: its own column, or the model's when the model is the yardstick."""
    column = REFERENCE_SCORE if REFERENCE_SCORE in scored else modeling.SCORE
    return scored[column].to_numpy()

