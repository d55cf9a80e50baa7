"""The train stage's edges: where its inputs come from and what it writes.

The notebook calls these so that it only orchestrates and explains; the file
layout (metrics.json, plots/*.csv, the model directory) is decided here once.

With the ``dask`` engine the splits stay on the cluster: the model learns from a sample
(every fraud, a recorded fraction of the legitimate rows) drawn there, its probabilities
are corrected for that fraction, and the threshold and the metrics come from the **full**
validation and test splits, scored partition by partition on the workers. Only the
(label, score, amount) of each row comes back, which is what curves and metrics need.
With the pandas engine (and a split smaller than ``sample_rows``) the sample is the whole
split and everything is as it always was.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import artifacts, atomicio, evaluation, modeling, preprocess, progress, schema, summaries
from ccfraud.modeling import SearchResult, candidates_table

PLOTS_DIR = "plots"
METRICS_FILE = "metrics.json"


def demo_splits(seed: int = 0) -> tuple[preprocess.Splits, dict]:
    """Small synthetic splits for running the train notebook on its own, in seconds."""
    from ccfraud import synthetic

    frame = synthetic.generate(rows=20_000, frauds=200, seed=seed)
    frame, _ = preprocess.drop_duplicates(frame)
    return preprocess.split(frame, "time"), {"split": "time", "source": "synthetic demo"}


def write_demo_processed(out_dir: Path | None = None, seed: int = 0, partition_rows: int = 5_000) -> Path:
    """:func:`demo_splits` written as the eda_preprocess stage writes splits (either engine then reads them)."""
    out_dir = Path(tempfile.mkdtemp(prefix="ccfraud-demo-")) if out_dir is None else Path(out_dir)
    splits, manifest = demo_splits(seed)
    preprocess.write_splits(splits, out_dir, partition_rows=partition_rows)
    details = {key: value for key, value in manifest.items() if key != "split"}
    preprocess.write_manifest(out_dir, preprocess.split_facts(splits), strategy=manifest["split"], **details)
    return out_dir


def load_processed(processed_dir: Path, engine: str = "pandas") -> tuple[preprocess.Splits, dict]:
    """The eda_preprocess stage's splits (in memory, or dask frames for ``dask``) and its manifest."""
    from ccfraud import compute

    manifest = preprocess.read_manifest(Path(processed_dir))
    if compute.check_engine(engine) == "dask":
        return preprocess.open_splits(Path(processed_dir)), manifest
    return preprocess.read_splits(Path(processed_dir)), manifest


REFIT_CHOICES = ("train", "train_valid")


def refit_rows(train: Any, valid: Any, refit_on: str) -> Any:
    """The rows the final model learns from once search and threshold are settled (pandas or dask frames)."""
    if refit_on == "train":
        return train
    if refit_on == "train_valid":
        if summaries.is_partitioned(train):
            import dask.dataframe as dd

            return dd.concat([train, valid])
        return pd.concat([train, valid], ignore_index=True)
    raise ValueError(f"refit_on must be one of {REFIT_CHOICES}, got {refit_on!r}")


@dataclass(frozen=True)
class TrainingSample:
    """The rows a model is fitted on: every fraud of a split and a fraction of its legitimate rows, in order."""

    frame: pd.DataFrame
    legit_fraction: float
    split_rows: int
    split_frauds: int

    def describe(self) -> dict[str, Any]:
        """What the model card and metrics record about the sample."""
        return {"rows": len(self.frame), "frauds": int(self.frame[schema.TARGET].sum()),
                "legit_fraction": round(self.legit_fraction, 6), "split_rows": self.split_rows,
                "split_frauds": self.split_frauds}


def draw_training_sample(frame: Any, sample_rows: int | None, seed: int) -> TrainingSample:
    """Every fraud of ``frame`` plus legitimate rows up to about ``sample_rows`` in all (all rows if fewer).

    Drawn on the cluster for a dask frame (rows by :func:`summaries.row_uniforms`, so the
    same rows whatever the engine). The recorded ``legit_fraction`` is the share actually
    kept, which is what the prior correction needs. ``sample_rows`` None keeps everything.
    """
    counts = summaries.compute(frame[[schema.TARGET]], {"m": summaries.moments([schema.TARGET])},
                               label="class counts")["m"]
    fraction = 1.0
    if sample_rows is not None:
        room = int(sample_rows) - counts.frauds
        if room <= 0:
            raise ValueError(f"train.sample_rows={sample_rows} leaves no room for legitimate rows: every one of "
                             f"the {counts.frauds:,} frauds is kept; raise it well above that")
        fraction = summaries.fraction_for(room, counts.legits)
    rows = summaries.compute(frame, {"rows": summaries.sample(fraction, 1.0, seed)}, label="training sample")
    drawn = rows["rows"].frame
    legit_kept = len(drawn) - int(drawn[schema.TARGET].sum())
    return TrainingSample(drawn, legit_kept / counts.legits if fraction < 1.0 else 1.0, counts.rows, counts.frauds)


def score(model: Any, frame: Any, label: str = "scoring") -> pd.DataFrame:
    """(Class, score, Amount) of every row of a labelled split; on the workers, partition by partition, for dask.

    The fitted model is shipped to the workers once; only these three columns come back.
    """
    if not summaries.is_partitioned(frame):
        return modeling.scored_rows(frame, model)
    import dask

    shipped = dask.delayed(model, pure=False)
    parts = [dask.delayed(modeling.scored_rows)(part, shipped) for part in frame.to_delayed()]
    return pd.concat(progress.compute(parts, f"{label} ({len(parts)} partitions)"), ignore_index=True)


@dataclass
class Selection:
    """Every choice the train stage makes, and the model it leads to."""

    results: list[SearchResult]
    threshold: float
    valid_scores: np.ndarray
    valid_curves: dict[str, pd.DataFrame]
    model: Any
    refit_rows: int
    refit_frauds: int
    fit_sample: TrainingSample | None = None
    refit_sample: TrainingSample | None = None

    @property
    def best(self) -> SearchResult:
        return self.results[0]

    def samples(self) -> dict[str, dict[str, Any]]:
        """What the search and the final model were fitted on."""
        return {name: sample.describe() for name, sample in (("search", self.fit_sample),
                                                             ("refit", self.refit_sample)) if sample is not None}


def select_model(
    train: Any,
    valid: Any,
    *,
    candidates: dict[str, dict[str, Any]],
    split_strategy: str,
    cv_folds: int,
    seed: int,
    threshold_rule: str,
    target_precision: float,
    target_recall: float,
    review_cost: float,
    refit_on: str,
    sample_rows: int | None = None,
    n_jobs: int = -1,
    say: Callable[[str], None] | None = None,
) -> Selection:
    """Search (CV on train), pick the threshold (valid), refit: the test split is not even an argument.

    Taking only train and valid is the guarantee that no choice can look at the test split.
    ``train`` and ``valid`` are pandas frames or dask frames: the search and the refit use
    a sample of at most about ``sample_rows`` rows (every fraud), the threshold the whole
    validation split. ``say`` receives progress lines.
    """
    fit = draw_training_sample(train, sample_rows, seed)
    results = modeling.search_all(candidates, fit.frame, fit.frame[schema.TARGET], split_strategy=split_strategy,
                                  folds=cv_folds, seed=seed, n_jobs=n_jobs, legit_fraction=fit.legit_fraction,
                                  progress=say)
    valid_scored = score(results[0].best_estimator, valid, "scoring the validation split")
    valid_scores = valid_scored[modeling.SCORE].to_numpy()
    threshold = evaluation.choose_threshold(
        valid_scored[schema.TARGET], valid_scores, threshold_rule, target_precision=target_precision,
        target_recall=target_recall, amount=valid_scored[schema.AMOUNT], review_cost=review_cost,
    )
    refit = draw_training_sample(refit_rows(train, valid, refit_on), sample_rows, seed)
    model = modeling.refit(results[0].best_estimator, refit.frame, legit_fraction=refit.legit_fraction)
    return Selection(results, threshold, valid_scores, evaluation.curves(valid_scored[schema.TARGET], valid_scores),
                     model, len(refit.frame), int(refit.frame[schema.TARGET].sum()), fit, refit)


def _round(values: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in values.items()}


def write_plots(reports_dir: Path, test_curves: dict[str, pd.DataFrame], valid_curves: dict[str, pd.DataFrame],
                test_labels, test_scores, threshold: float) -> dict[str, Path]:
    """Write the DVC plot files declared in dvc.yaml (small CSVs, one per plot)."""
    plots = Path(reports_dir) / PLOTS_DIR
    frames = {
        "pr_curve": evaluation.thin_curve(test_curves["pr_curve"]),
        "roc_curve": evaluation.thin_curve(test_curves["roc_curve"]),
        "calibration": test_curves["calibration"],
        "threshold": evaluation.thin_curve(valid_curves["threshold"]),
        "confusion": pd.DataFrame(
            {"actual": np.asarray(test_labels, dtype=int),
             "predicted": (np.asarray(test_scores) >= threshold).astype(int)}
        ),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = plots / f"{name}.csv"
        atomicio.write_text(paths[name], frame.round(6).to_csv(index=False))
    return paths


def finish_run(
    selection: Selection,
    *,
    threshold_rule: str,
    refit_on: str,
    metrics_test: dict,
    metrics_seed: dict,
    metrics_reference: dict,
    test_curves: dict[str, pd.DataFrame],
    test_labels,
    test_scores,
    manifest: dict,
    params: dict,
    model_dir: Path,
    reports_dir: Path,
    processed_dir: Path | None = None,
) -> dict:
    """Save the model with its metadata, ``metrics.json`` and the plot files; return the metadata."""
    best, threshold, model = selection.best, selection.threshold, selection.model
    table = candidates_table(selection.results)
    metrics = {
        "model": best.name,
        "threshold": round(float(threshold), 6),
        "threshold_rule": threshold_rule,
        "refit_on": refit_on,
        "split": manifest.get("split"),
        "test": _round(metrics_test),
        "cv": {"auprc_mean": round(best.cv_auprc_mean, 6), "auprc_std": round(best.cv_auprc_std, 6)},
        # Timings stay out of metrics.json (they differ run to run); the report's table shows them.
        "candidates": {row["candidate"]: {"cv_auprc_mean": row["cv_auprc_mean"], "cv_auprc_std": row["cv_auprc_std"]}
                       for row in table.to_dict("records")},
        "seed_baseline": {
            "auprc": round(metrics_seed["auprc"], 6),
            "roc_auc": round(metrics_seed["roc_auc"], 6),
            "precision": round(metrics_seed["precision"], 6),
            "recall": round(metrics_seed["recall"], 6),
            "alerts": metrics_seed["alerts"],
        },
        "reference_untuned_hgb": {"auprc": round(metrics_reference["auprc"], 6),
                                  "roc_auc": round(metrics_reference["roc_auc"], 6)},
    }
    samples = selection.samples()
    if any(sample["legit_fraction"] < 1.0 for sample in samples.values()):
        # Only when the model learnt from a sample: a run on whole splits keeps its metrics.json as it was.
        metrics["training_sample"] = samples
    training_data = preprocess.split_digests(Path(processed_dir)) if processed_dir is not None else {}
    meta = artifacts.save_model(
        model,
        model_dir,
        threshold=float(threshold),
        extra={
            "candidate": best.name,
            "best_params": best.describe_params(),
            "threshold_rule": threshold_rule,
            "refit_on": refit_on,
            "prior_correction_beta": getattr(model, "beta_", 1.0),
            "training_data_sha256": training_data,
            "training_sample": samples,
            "split": manifest,
            "params": params,
            "metrics": {"test": metrics["test"], "cv": metrics["cv"]},
        },
    )
    metrics["model_version"] = meta["model_version"]
    atomicio.write_text(Path(reports_dir) / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_plots(reports_dir, test_curves, selection.valid_curves, test_labels, test_scores, threshold)
    return meta


