"""The train stage's edges: where its inputs come from and what it writes.

The notebook calls these so that it only orchestrates and explains; the file
layout (metrics.json, plots/*.csv, the model directory) is decided here once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import artifacts, atomicio, checksums, evaluation, modeling, preprocess, schema
from ccfraud.modeling import SearchResult, candidates_table

PLOTS_DIR = "plots"
METRICS_FILE = "metrics.json"


def demo_splits(seed: int = 0) -> tuple[preprocess.Splits, dict]:
    """Small synthetic splits for running the train notebook on its own, in seconds."""
    from ccfraud import synthetic

    frame = synthetic.generate(rows=20_000, frauds=200, seed=seed)
    frame, _ = preprocess.drop_duplicates(frame)
    return preprocess.split(frame, "time"), {"split": "time", "source": "synthetic demo"}


def load_processed(processed_dir: Path) -> tuple[preprocess.Splits, dict]:
    """The eda_preprocess stage's splits and manifest (which says how they were split)."""
    manifest = preprocess.read_manifest(Path(processed_dir))
    return preprocess.read_splits(Path(processed_dir)), manifest


REFIT_CHOICES = ("train", "train_valid")


def refit_rows(train: pd.DataFrame, valid: pd.DataFrame, refit_on: str) -> pd.DataFrame:
    """The rows the final model learns from once search and threshold are settled."""
    if refit_on == "train":
        return train
    if refit_on == "train_valid":
        return pd.concat([train, valid], ignore_index=True)
    raise ValueError(f"refit_on must be one of {REFIT_CHOICES}, got {refit_on!r}")


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

    @property
    def best(self) -> SearchResult:
        return self.results[0]


def select_model(
    train: pd.DataFrame,
    valid: pd.DataFrame,
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
    n_jobs: int = -1,
) -> Selection:
    """Search (CV on train), pick the threshold (valid), refit: the test split is not even an argument.

    Taking only train and valid is the guarantee that no choice can look at the test split.
    """
    results = modeling.search_all(candidates, train, train[schema.TARGET], split_strategy=split_strategy,
                                  folds=cv_folds, seed=seed, n_jobs=n_jobs)
    valid_scores = modeling.fraud_probability(results[0].best_estimator, valid)
    threshold = evaluation.choose_threshold(
        valid[schema.TARGET], valid_scores, threshold_rule, target_precision=target_precision,
        target_recall=target_recall, amount=valid[schema.AMOUNT], review_cost=review_cost,
    )
    rows = refit_rows(train, valid, refit_on)
    model = modeling.refit(results[0].best_estimator, rows)
    return Selection(results, threshold, valid_scores, evaluation.curves(valid[schema.TARGET], valid_scores), model,
                     len(rows), int(rows[schema.TARGET].sum()))


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
    training_data = {}
    if processed_dir is not None:
        training_data = {name: checksums.file_md5(Path(processed_dir) / f"{name}.parquet")
                         for name in preprocess.SPLIT_NAMES}
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
            "training_data_md5": training_data,
            "split": manifest,
            "params": params,
            "metrics": {"test": metrics["test"], "cv": metrics["cv"]},
        },
    )
    metrics["model_version"] = meta["model_version"]
    atomicio.write_text(Path(reports_dir) / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_plots(reports_dir, test_curves, selection.valid_curves, test_labels, test_scores, threshold)
    return meta


