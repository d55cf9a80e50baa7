"""The train stage's edges: where its inputs come from and what it writes.

The notebook calls these so that it only orchestrates and explains; the file
layout (metrics.json, plots/*.csv, the model directory) is decided here once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import artifacts, atomicio, evaluation, preprocess
from ccfraud.baseline import SeedBaseline
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
    manifest_path = Path(processed_dir) / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: run the eda_preprocess stage first (dvc repro)")
    manifest = json.loads(manifest_path.read_text())
    return preprocess.read_splits(Path(processed_dir)), manifest


REFIT_CHOICES = ("train", "train_valid")


def refit_rows(splits: preprocess.Splits, refit_on: str) -> pd.DataFrame:
    """The rows the final model learns from once search and threshold are settled (never the test split)."""
    if refit_on == "train":
        return splits.train
    if refit_on == "train_valid":
        return pd.concat([splits.train, splits.valid], ignore_index=True)
    raise ValueError(f"refit_on must be one of {REFIT_CHOICES}, got {refit_on!r}")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    *,
    model: Any,
    refit_on: str,
    best: SearchResult,
    results: list[SearchResult],
    threshold: float,
    threshold_rule: str,
    metrics_test: dict,
    metrics_seed: dict,
    metrics_reference: dict,
    seed_model: SeedBaseline,
    seed_accuracy_on_test: float,
    test_curves: dict[str, pd.DataFrame],
    valid_curves: dict[str, pd.DataFrame],
    test_labels,
    test_scores,
    manifest: dict,
    params: dict,
    model_dir: Path,
    reports_dir: Path,
    processed_dir: Path | None = None,
) -> dict:
    """Save the model with its metadata, ``metrics.json`` and the plot files; return the metadata."""
    table = candidates_table(results)
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
            "accuracy_on_balanced_holdout": round(seed_model.balanced_accuracy_claim, 6),
            "accuracy_on_test": round(seed_accuracy_on_test, 6),
        },
        "reference_untuned_hgb": {"auprc": round(metrics_reference["auprc"], 6),
                                  "roc_auc": round(metrics_reference["roc_auc"], 6)},
    }
    training_data = {}
    if processed_dir is not None:
        training_data = {name: _md5(Path(processed_dir) / f"{name}.parquet") for name in preprocess.SPLIT_NAMES}
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
    write_plots(reports_dir, test_curves, valid_curves, test_labels, test_scores, threshold)
    return meta


