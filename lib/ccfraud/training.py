"""The train stage's edges: where its inputs come from and what it writes.

The notebook calls these so that it only orchestrates and explains; the model directory's
layout is decided here once. The train stage reads the train and validation splits only:
the test split is the evaluate stage's (:mod:`ccfraud.assessment`), so no choice made here
can depend on it, and DVC's graph shows it.

With the ``dask`` engine the splits stay on the cluster: the model learns from a sample
(every fraud, a recorded fraction of the legitimate rows) drawn there, its probabilities
are corrected for that fraction, and the threshold comes from the **full** validation
split, scored partition by partition on the workers. Only the (label, score, amount) of
each row comes back, which is what curves and the threshold need. With the pandas engine
(and a split smaller than ``sample_rows``) the sample is the whole split.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import effective_n_jobs

from ccfraud import artifacts, atomicio, comparison, evaluation, modeling, preprocess, progress, schema, summaries
from ccfraud.modeling import SearchResult

#: The splits the train stage reads; the test split is the evaluate stage's alone.
TRAIN_SPLITS = ("train", "valid")
#: The validation split's precision and recall against the threshold: the plot of the choice made here.
THRESHOLD_PLOT = Path("plots") / "threshold.csv"


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


def load_processed(processed_dir: Path, engine: str = "pandas",
                   names: tuple[str, ...] = preprocess.SPLIT_NAMES) -> tuple[preprocess.Splits, dict]:
    """The eda_preprocess stage's splits in ``names`` (in memory, or dask frames for ``dask``; others None)
    and its manifest."""
    from ccfraud import compute

    manifest = preprocess.read_manifest(Path(processed_dir))
    if compute.check_engine(engine) == "dask":
        return preprocess.open_splits(Path(processed_dir), names), manifest
    return preprocess.read_splits(Path(processed_dir), names), manifest


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


def score_models(models: dict[str, Any], frame: Any, label: str = "scoring") -> pd.DataFrame:
    """Class, Amount and each model's score (a column per key of ``models``) of every row of a labelled split.

    One pass over the split for all the models: on the workers, partition by partition, for a
    dask frame, the fitted models shipped once; only these columns come back.
    """
    if not summaries.is_partitioned(frame):
        return modeling.scored_rows(frame, models)
    import dask

    shipped = dask.delayed(models, pure=False, traverse=False)
    parts = [dask.delayed(modeling.scored_rows)(part, shipped) for part in frame.to_delayed()]
    return pd.concat(progress.compute(parts, f"{label} ({len(parts)} partitions)"), ignore_index=True)


def model_rows(train: Any, valid: Any, *, refit_on: str, sample_rows: int | None,
               seed: int) -> tuple[TrainingSample, TrainingSample]:
    """The rows the search learns from (drawn from train) and the rows the final model learns from.

    The comparison models (the seed recipe, the untuned yardstick) are fitted on exactly these rows
    too, in the search's pool (:func:`select_model`), while the train stage holds them.
    """
    fit = draw_training_sample(train, sample_rows, seed)
    refit = draw_training_sample(refit_rows(train, valid, refit_on), sample_rows, seed)
    return fit, refit


@dataclass
class Selection:
    """Every choice the train stage makes, and the model it leads to."""

    results: list[SearchResult]
    threshold: float
    valid_scores: np.ndarray
    valid_curves: dict[str, pd.DataFrame]
    valid_metrics: dict[str, Any]
    model: Any
    refit_rows: int
    refit_frauds: int
    fit_sample: TrainingSample | None = None
    refit_sample: TrainingSample | None = None
    #: The seed recipe and the yardstick, for the evaluate stage's comparison rows.
    compared: comparison.Comparison | None = None

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
    compare: bool = True,
) -> Selection:
    """Search (CV on train), choose the candidate and the threshold (valid), refit: the test split is not an argument.

    Taking only train and valid is the guarantee that no choice can look at the test split.
    Each candidate's configuration is chosen by cross-validated AUPRC on train; the
    candidates then compete on the whole validation split, the untuned reference
    (:data:`modeling.REFERENCE`) always among them, so the chosen model is never worse
    than the yardstick on the split the choice is made on. Ties keep the better CV AUPRC.
    ``train`` and ``valid`` are pandas frames or dask frames: the search and the refit use
    a sample of at most about ``sample_rows`` rows (every fraud), the choice and the
    threshold the whole validation split. ``say`` receives progress lines. The comparison models
    (:mod:`ccfraud.comparison`) are fitted in the search's pool of threads (one per core), queued
    before its fits, unless ``compare`` is False (a caller that wants the choice only: nothing can
    then be saved). One pool, not a pool of their own beside it: four threads on two cores contend
    for the GIL (small boosting fits and the seed recipe's 70 tiny ones are mostly Python), and
    the default search took 17-19 s that way against 15 s.
    """
    fit, refit = model_rows(train, valid, refit_on=refit_on, sample_rows=sample_rows, seed=seed)
    candidates = modeling.with_reference(candidates)
    # The final model's rows too, before the search: a ratio they exceed would fail only at the refit.
    modeling.check_sampling_ratios(candidates, {f"the final model's rows ({refit_on})": refit.frame[schema.TARGET]},
                                   legit_fraction=refit.legit_fraction, sample_rows=len(refit.frame))
    # One native thread for the whole block: BLAS's limit is process-wide and each limit puts back what it found,
    # so a comparison fit ending mid-search would otherwise lift the search's limit. Leaving the block waits for
    # the comparison fits, also when the search fails.
    workers = effective_n_jobs(n_jobs)
    with modeling.one_thread(), ThreadPoolExecutor(workers, thread_name_prefix="train") as pool:
        pending = (comparison.start(pool, fit.frame, refit.frame, model_legit_fraction=refit.legit_fraction,
                                    seed=seed) if compare else None)
        selection = _choose_and_refit(fit, refit, valid, candidates, split_strategy=split_strategy, cv_folds=cv_folds,
                                      seed=seed, workers=workers, pool=pool, threshold_rule=threshold_rule,
                                      target_precision=target_precision, target_recall=target_recall,
                                      review_cost=review_cost, say=say,
                                      fitted_reference=None if pending is None else pending.reference)
        if pending is not None:
            selection.compared = pending.result(selection.best.name)
    return selection


def _choose_and_refit(fit: TrainingSample, refit: TrainingSample, valid: Any, candidates: dict[str, dict[str, Any]],
                      *, split_strategy: str, cv_folds: int, seed: int, workers: int, pool: ThreadPoolExecutor,
                      threshold_rule: str,
                      target_precision: float, target_recall: float, review_cost: float,
                      say: Callable[[str], None] | None, fitted_reference: Future[Any] | None) -> Selection:
    """The search on ``fit``, the choice and the threshold on ``valid``, the chosen model refitted on ``refit``.

    ``fitted_reference``: the yardstick's configuration being fitted on ``refit`` already (for the
    comparison rows); when the yardstick is chosen, that fit is the model, not fitted a second time.
    """
    results = modeling.search_all(candidates, fit.frame, fit.frame[schema.TARGET],
                                  split_strategy=split_strategy, folds=cv_folds, seed=seed, n_jobs=workers, pool=pool,
                                  legit_fraction=fit.legit_fraction, progress=say)
    scored = score_models({result.name: result.best_estimator for result in results}, valid,
                          f"scoring the {len(results)} candidates on the validation split")
    valid_labels, valid_amounts = scored[schema.TARGET], scored[schema.AMOUNT]
    for result in results:
        result.valid_auprc = evaluation.auprc(valid_labels, scored[result.name])
    results = sorted(results, key=lambda r: r.valid_auprc, reverse=True)  # stable: CV order on ties
    valid_scores = scored[results[0].name].to_numpy()
    threshold = evaluation.choose_threshold(
        valid_labels, valid_scores, threshold_rule, target_precision=target_precision,
        target_recall=target_recall, amount=valid_amounts, review_cost=review_cost,
    )
    valid_metrics = evaluation.evaluate(valid_labels, valid_scores, threshold, amount=valid_amounts,
                                        review_cost=review_cost, bootstrap=0)
    reuse = results[0].name == modeling.REFERENCE and fitted_reference is not None
    if say:
        say(f"chosen on the validation split: {results[0].name} (AUPRC {results[0].valid_auprc:.4f}); "
            + (f"its fit on {len(refit.frame):,} rows for the comparison is the model" if reuse
               else f"refitting on {len(refit.frame):,} rows"))
    # The last fit, alone (the comparison fits were queued before the search's): a forest's trees on all cores,
    # the same model.
    model = fitted_reference.result() if reuse else modeling.refit(
        results[0].best_estimator, refit.frame, legit_fraction=refit.legit_fraction, forest_jobs=None)
    return Selection(results, threshold, valid_scores, evaluation.curves(valid_labels, valid_scores),
                     valid_metrics, model, len(refit.frame), int(refit.frame[schema.TARGET].sum()), fit, refit)


def search_summary(selection: Selection) -> dict[str, dict[str, Any]]:
    """Per candidate (in the order chosen): its best configuration, CV AUPRC mean and std, validation AUPRC."""
    return {r.name: {"best_params": r.describe_params(), "cv_auprc_mean": round(r.cv_auprc_mean, 6),
                     "cv_auprc_std": round(r.cv_auprc_std, 6), "valid_auprc": round(r.valid_auprc, 6)}
            for r in selection.results}


def save_model(
    selection: Selection,
    *,
    threshold_rule: str,
    refit_on: str,
    manifest: dict,
    params: dict,
    model_dir: Path,
    processed_dir: Path | None = None,
) -> dict:
    """Save the model and its comparison models with what the evaluate stage and the API need to know; return
    the metadata. The comparison models are written first, ``model.json`` last."""
    if selection.compared is None:
        raise ValueError("this selection has no comparison models (select_model(..., compare=False)): the evaluate "
                         "stage needs them; select with compare=True to save a model")
    best, threshold, model = selection.best, selection.threshold, selection.model
    valid = {key: selection.valid_metrics[key] for key in ("auprc", "roc_auc", "precision", "recall", "f1", "alerts")}
    training_data = preprocess.split_digests(Path(processed_dir), TRAIN_SPLITS) if processed_dir is not None else {}
    compared, compared_record = comparison.dump(selection.compared)
    return artifacts.save_model(
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
            "training_sample": selection.samples(),
            "split": manifest,
            "params": params,
            "candidates": search_summary(selection),
            comparison.METADATA_KEY: compared_record,
            "metrics": {"cv": {"auprc_mean": round(best.cv_auprc_mean, 6), "auprc_std": round(best.cv_auprc_std, 6)},
                        "valid": evaluation.rounded(valid)},
        },
        companions={comparison.FILE: compared},
    )


def write_threshold_plot(reports_dir: Path, selection: Selection) -> Path:
    """The DVC plot file of the threshold choice (precision and recall vs threshold on the validation split)."""
    path = Path(reports_dir) / THRESHOLD_PLOT
    frame = evaluation.thin_curve(selection.valid_curves["threshold"])
    return atomicio.write_text(path, frame.round(6).to_csv(index=False))
