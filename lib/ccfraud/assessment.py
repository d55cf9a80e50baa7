"""The evaluate stage's edges: the trained model scored once on the untouched test split.

The train stage leaves a model, what it knows about it (``model.json``) and the models it is
compared with (:mod:`ccfraud.comparison`: the seed project's recipe and the untuned yardstick,
fitted on the model's own rows). This stage reads those and the test split, and nothing else,
scores the three models in one pass over it, and writes ``reports/metrics.json`` and the plot
files declared in ``dvc.yaml``; changing an evaluation knob (``params.yaml → evaluate``) reruns
only this stage.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import artifacts, atomicio, evaluation, modeling, summaries, training

PLOTS_DIR = "plots"
METRICS_FILE = "metrics.json"
#: The yardstick's alert threshold: untuned means untuned, its threshold included.
REFERENCE_THRESHOLD = 0.5
#: A comparison row's figures in metrics.json (the seed method's, the yardstick's): ranking quality, and
#: what the row's own threshold does.
COMPARISON_METRICS = ("auprc", "roc_auc", "precision", "recall", "alerts")


def write_demo_run(seed: int = 0) -> tuple[Path, Path]:
    """Small synthetic splits and a model trained on them (seconds), for running the evaluate notebook alone."""
    processed_dir = training.write_demo_processed(seed=seed)
    splits, manifest = training.load_processed(processed_dir, names=training.TRAIN_SPLITS)
    params = {"seed": seed, "sample_rows": None, "refit_on": "train_valid", "review_cost": 5.0}
    selection = training.select_model(
        splits.train, splits.valid, candidates={"logreg": {"sampler": ["class_weight"]}},
        split_strategy=manifest["split"], cv_folds=2, seed=seed, threshold_rule="max_f1", target_precision=0.8,
        target_recall=0.8, review_cost=params["review_cost"], refit_on=params["refit_on"],
    )
    model_dir = Path(tempfile.mkdtemp(prefix="ccfraud-model-"))
    training.save_model(selection, threshold_rule="max_f1", refit_on=params["refit_on"], manifest=manifest,
                        params=params, model_dir=model_dir, processed_dir=processed_dir)
    return processed_dir, model_dir


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_model(model_dir: Path) -> tuple[artifacts.LoadedModel, list[str]]:
    """The train stage's model, verified as the API verifies it, and the warnings loading it raised.

    The warnings (e.g. an unsigned model with no signing key set) are returned for the report
    to state in its text, instead of reaching the executed notebook as a stray log line.
    """
    logger = logging.getLogger(artifacts.__name__)
    collect, propagate = _Collect(), logger.propagate
    logger.addHandler(collect)
    logger.propagate = False
    try:
        return artifacts.load_model(Path(model_dir)), collect.messages
    finally:
        logger.removeHandler(collect)
        logger.propagate = propagate


def margin_summary(model_name: str, test_auprc: float, reference_auprc: float,
                   margin: dict[str, Any] | None = None) -> str:
    """One plain sentence on the model against its yardstick on the test split.

    ``margin`` is :func:`ccfraud.evaluation.paired_margin`'s: with it, the verdict is its
    interval's (:func:`ccfraud.evaluation.margin_verdict`), not the point margin's sign; an
    interval that holds 0 is stated as no difference the test split can show.
    """
    difference = test_auprc - reference_auprc
    if model_name == modeling.REFERENCE:
        return (f"The search chose the untuned yardstick itself ({modeling.REFERENCE}): test AUPRC "
                f"{test_auprc:.4f}, no tuned candidate beat it on the validation split.")
    figures = f"AUPRC {test_auprc:.4f} against {reference_auprc:.4f}, a margin of {difference:+.4f}"
    if margin is None:
        verdict = evaluation.margin_verdict(difference, difference)
        share = ""
    else:
        low, high = margin["auprc_margin_ci95"]
        verdict = margin["verdict"]
        figures += f" (95% paired bootstrap interval {low:+.4f} to {high:+.4f})"
        share = (f" The yardstick scored at least as well in {margin['reference_at_least_as_good']:.0%} of the "
                 "bootstrap resamples.")
    if verdict == evaluation.WIN:
        return f"The chosen model ({model_name}) beats the untuned yardstick on the test split: {figures}."
    if verdict == evaluation.LOSS:
        return (f"**The untuned yardstick still wins on the test split**: {figures}, for the chosen model "
                f"({model_name}). The choice was made on the validation split, where the chosen model was at least "
                "as good.")
    return (f"**The chosen model ({model_name}) and the untuned yardstick cannot be told apart on the test "
            f"split**: {figures}.{share} The tuning's gain, if any, is within the noise of the test split's "
            "frauds.")


def rows_at(frame: Any, positions: np.ndarray) -> pd.DataFrame:
    """The rows of a split at ``positions`` (in :func:`training.score_models`'s row order), in that order.

    For the reason codes of the top alerts and an importance sample: with the dask engine
    only the partitions holding those rows are read, one at a time, and only the rows
    asked for are kept, so the split itself never comes to the client.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if not summaries.is_partitioned(frame):
        return frame.iloc[positions]
    lengths = np.asarray(frame.map_partitions(len).compute(), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if positions.size and (positions.min() < 0 or positions.max() >= lengths.sum()):
        raise IndexError(f"row positions must lie in 0..{lengths.sum() - 1}; "
                         f"found {positions.min()}..{positions.max()}")
    part_of = np.searchsorted(starts, positions, side="right") - 1
    parts = np.unique(part_of)  # ascending, as the stable sort below groups the positions
    chunks = [frame.get_partition(int(part)).compute().iloc[positions[part_of == part] - starts[part]]
              for part in parts]  # one partition in memory at a time: only its wanted rows are kept
    grouped = pd.concat(chunks) if chunks else frame.head(0)
    return grouped.iloc[np.argsort(np.argsort(part_of, kind="stable"), kind="stable")]


def write_plots(reports_dir: Path, test_curves: dict[str, pd.DataFrame], test_labels, test_scores,
                threshold: float) -> dict[str, Path]:
    """Write the test split's DVC plot files declared in dvc.yaml (small CSVs, one per plot).

    The validation split's threshold plot is the train stage's (:func:`ccfraud.training.write_threshold_plot`).
    """
    plots = Path(reports_dir) / PLOTS_DIR
    frames = {
        "pr_curve": evaluation.thin_curve(test_curves["pr_curve"]),
        "roc_curve": evaluation.thin_curve(test_curves["roc_curve"]),
        "calibration": test_curves["calibration"],
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


def write_metrics(
    loaded: artifacts.LoadedModel,
    *,
    metrics_test: dict,
    metrics_seed: dict,
    metrics_reference: dict,
    reports_dir: Path,
    margin: dict[str, Any] | None = None,
) -> dict:
    """``metrics.json``: the model's test metrics, its search and the comparison rows; returns what it wrote.

    ``margin``: :func:`ccfraud.evaluation.paired_margin` of the model over the yardstick, recorded with the
    yardstick's row (its interval and how often the yardstick was at least as good).
    """
    meta = loaded.metadata
    metrics = {
        "model": meta["candidate"],
        "threshold": round(float(meta["threshold"]), 6),
        "threshold_rule": meta["threshold_rule"],
        "refit_on": meta["refit_on"],
        "split": (meta.get("split") or {}).get("split"),
        "test": evaluation.rounded(metrics_test),
        "cv": meta["metrics"]["cv"],
        "valid": meta["metrics"]["valid"],
        # Timings stay out of metrics.json (they differ run to run); the train report's table shows them.
        "candidates": {name: {key: value for key, value in row.items() if key != "best_params"}
                       for name, row in meta["candidates"].items()},
        "seed_baseline": evaluation.rounded({key: metrics_seed[key] for key in COMPARISON_METRICS}),
        "reference_untuned_hgb": {
            **evaluation.rounded({key: metrics_reference[key] for key in COMPARISON_METRICS}),
            "auprc_margin": round(metrics_test["auprc"] - metrics_reference["auprc"], 6),
            **({key: value for key, value in margin.items() if key != "auprc_margin"} if margin else {}),
        },
    }
    samples = meta.get("training_sample") or {}
    if any(sample["legit_fraction"] < 1.0 for sample in samples.values()):
        # Only when the model learnt from a sample: a run on whole splits keeps its metrics.json as it was.
        metrics["training_sample"] = samples
    metrics["model_version"] = meta["model_version"]
    atomicio.write_text(Path(reports_dir) / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics
