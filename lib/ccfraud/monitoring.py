"""Drift and live-performance statistics behind the monitor notebook (``ccfraud monitor``).

A deployed model meets data that moves away from what it learnt from, long before
anyone has labels to measure it by. The monitor compares a batch of new data with
the data the model was built on, and says whether anything moved enough to act:

* every feature against the **train split** (``data/processed/train``, what the model
  learnt from): the population stability index (PSI) and a two-sample
  Kolmogorov-Smirnov (KS) test;
* the model's scores against its scores on the **test split**, both from the API's
  :class:`~ccfraud.serving.scoring.Scorer`;
* the alert rate (share of rows at or above the deployed threshold) against the test split's;
* when the data has ``Class``: AUPRC, precision and recall at the deployed threshold
  against the model's figures on the test split, scored now with the same scorer (the
  evaluate stage's figures; ``model.json`` holds none, training never sees the test split,
  but a model that records ``metrics.test`` is compared with those).

The statistics follow :mod:`ccfraud.summaries`: bins are fixed from the reference first
(quantiles of the train split, or of a uniform sample of it beyond
:data:`QUANTILE_ROWS` rows), then every partition becomes a :class:`FeatureSummary`
(rows per bin and column, plus moments) and summaries add up, whichever engine read the
partition. PSI and KS both come from those counts: PSI on ``psi_bins`` quantile bins;
KS on ``ks_bins`` finer ones, as the largest gap between the two cumulative shares at
the bin edges. That is at most the exact KS statistic and at least it minus the largest
reference bin's share (1/``ks_bins`` for a feature without repeated values); with every
distinct value as an edge it is exact, and its p-value is Smirnov's asymptotic one, as
``scipy.stats.ks_2samp(method="asymp")`` computes it (tests/test_monitoring.py checks both).

evidently (PyPI, made for this) is not used: ``pip install --dry-run evidently`` resolves
against our pins (0.7.23 plus 31 new packages, 373 MB, no pinned package changed), but
``import evidently`` fails under our pandas 3.1.1 (``ImportError: infer_dtype_from_object``)
after 4.2 s of imports; it also wants both datasets whole in memory, where these
statistics combine per-partition summaries.

Exit codes of ``ccfraud monitor`` (:data:`EXIT_QUIET`, :data:`EXIT_ALERT`,
:data:`EXIT_BAD_INPUT`) are defined here, next to the rules that decide them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ccfraud import artifacts, atomicio, evaluation, ingest, lake, preprocess, s3, schema, sources, summaries

#: Nothing crossed a threshold.
EXIT_QUIET = 0
#: A threshold was crossed: the console and monitor.json say which. (1 is a crash, 2 a usage error.)
EXIT_ALERT = 3
#: The data, the model or the reference cannot be used: a missing file, a missing column, a non-numeric value...
EXIT_BAD_INPUT = 4
#: The report's file name in the reports directory.
REPORT_FILE = "monitor.json"
#: Floor of a bin's share in the PSI: an empty bin adds a large but finite term instead of infinity.
PSI_FLOOR = 1e-4
#: The reference's bin edges come from at most about this many rows of the train split (all of it up to
#: there): quantiles of a uniform sample of a million rows are within about 0.1% of the population's.
QUANTILE_ROWS = 1_000_000
#: Rows per partition of the new data when the caller does not say (about 100 MB of features).
DEFAULT_PARTITION_ROWS = 400_000
SCORE = "score"
#: The notebook's default new data: a fresh sample of the demo reference's distribution (another seed).
DEMO_DATA = "synthetic://?rows=20000&frauds=200&seed=7"


class MonitorError(ValueError):
    """The monitor's inputs do not fit together (a reference that is not the model's, bad rules); says which."""


#: Errors that mean "this input cannot be used" rather than "the monitor broke": the CLI maps them, raised in
#: the notebook's kernel and known there by name only, to EXIT_BAD_INPUT.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    sources.SourceError, schema.SchemaError, lake.LakeError, artifacts.ArtifactError, s3.S3Error, MonitorError,
)
BAD_INPUT_ERROR_NAMES = frozenset(error.__name__ for error in BAD_INPUT_ERRORS)


# ---------------------------------------------------------------------------------------
# The statistics: pure functions of counts
# ---------------------------------------------------------------------------------------


def quantile_edges(values: np.ndarray | pd.Series, bins: int) -> np.ndarray:
    """Inner edges of ``bins`` bins holding equal shares of ``values`` (fewer where values repeat).

    A bin is ``[edge_i, edge_i+1)``; the first starts at -inf and the last ends at +inf, so
    new data outside the reference's range still lands in a bin.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be a whole number of at least 2, got {bins!r}")
    array = np.asarray(values, dtype="float64")
    if array.size == 0:
        raise ValueError("cannot place quantile bins on no values")
    return np.unique(np.quantile(array, np.arange(1, bins) / bins))


def bin_counts(values: np.ndarray | pd.Series, edges: np.ndarray) -> np.ndarray:
    """Rows per bin of ``values``: ``len(edges) + 1`` counts (see :func:`quantile_edges` for the bins)."""
    index = np.searchsorted(np.asarray(edges, dtype="float64"), np.asarray(values, dtype="float64"), side="right")
    return np.bincount(index, minlength=len(edges) + 1).astype("int64")


def _shares(counts: np.ndarray, what: str) -> np.ndarray:
    counts = np.asarray(counts, dtype="float64")
    total = counts.sum()
    if counts.ndim != 1 or total <= 0 or (counts < 0).any():
        raise ValueError(f"{what} counts must be a 1-D array of non-negative counts with a positive total")
    return counts / total


def psi(reference_counts: np.ndarray, new_counts: np.ndarray, *, floor: float = PSI_FLOOR) -> float:
    """Population stability index: sum over bins of (q - p) * ln(q / p).

    ``p`` and ``q`` are the reference's and the new data's shares of each bin, floored at
    ``floor`` so an empty bin counts as very different rather than infinitely. The usual
    reading (credit scoring): below 0.1 no real change, 0.1-0.25 a moderate one, above
    0.25 a shift worth acting on.
    """
    p = _shares(reference_counts, "reference")
    q = _shares(new_counts, "new")
    if p.shape != q.shape:
        raise ValueError(f"reference and new counts cover different bins: {p.shape[0]} and {q.shape[0]}")
    p, q = np.maximum(p, floor), np.maximum(q, floor)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_from_counts(reference_counts: np.ndarray, new_counts: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and its asymptotic p-value from rows per bin (same bins for both samples).

    The statistic is the largest gap between the two cumulative shares at the bin edges; the
    p-value is Smirnov's two-sided asymptotic one for sample sizes n and m (the
    Kolmogorov distribution at round(n*m/(n+m)) rows, as ``scipy.stats.ks_2samp``'s
    ``asymp`` method).
    """
    reference = np.asarray(reference_counts, dtype="float64")
    new = np.asarray(new_counts, dtype="float64")
    if reference.shape != new.shape:
        raise ValueError(f"reference and new counts cover different bins: {reference.shape[0]} and {new.shape[0]}")
    _shares(reference, "reference"), _shares(new, "new")  # both non-negative with a positive total
    n, m = float(reference.sum()), float(new.sum())
    gap = np.abs(np.cumsum(reference) / n - np.cumsum(new) / m)
    statistic = float(min(gap.max(), 1.0))
    effective = round(n * m / (n + m))
    p_value = float(np.clip(stats.kstwo.sf(statistic, max(effective, 1)), 0.0, 1.0))
    return statistic, p_value


def alert_rate_change(new_alerts: int, new_rows: int, reference_alerts: int,
                      reference_rows: int) -> tuple[float, float, float, float]:
    """The new and reference alert rates, their ratio, and Fisher's exact two-sided p-value for the difference.

    The ratio is ``inf`` when the reference raised no alert and the new data did, ``nan``
    when neither did. Fisher's test treats both rates as estimates (the test split's rate
    is one too), so a handful of alerts more or less in a small batch is not a change.
    """
    for name, alerts, rows in (("new", new_alerts, new_rows), ("reference", reference_alerts, reference_rows)):
        if rows <= 0 or not 0 <= alerts <= rows:
            raise ValueError(f"{name} alerts must be between 0 and the rows ({rows}), got {alerts}")
    new_rate, reference_rate = new_alerts / new_rows, reference_alerts / reference_rows
    if reference_rate > 0:
        ratio = new_rate / reference_rate
    else:
        ratio = math.inf if new_rate > 0 else math.nan
    table = [[new_alerts, new_rows - new_alerts], [reference_alerts, reference_rows - reference_alerts]]
    p_value = float(stats.fisher_exact(table, alternative="two-sided").pvalue)
    return new_rate, reference_rate, ratio, p_value


def performance(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUPRC, and precision, recall and alerts at ``threshold``, of labelled scores (AUPRC None without frauds)."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels, dtype="int64")
    scores = np.asarray(scores, dtype="float64")
    frauds = int(labels.sum())
    at = evaluation.at_threshold(labels, scores, threshold)
    return {"rows": int(len(labels)), "frauds": frauds,
            "auprc": float(average_precision_score(labels, scores)) if 0 < frauds < len(labels) else None,
            "precision": at["precision"] if at["alerts"] else None,
            "recall": at["recall"] if frauds else None, "alerts": at["alerts"]}


# ---------------------------------------------------------------------------------------
# Summaries: a partition becomes counts per bin, and summaries combine
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binning:
    """Bin edges of each monitored column, fixed from the reference: coarse ones for PSI, fine ones for KS."""

    psi_edges: Mapping[str, np.ndarray]
    ks_edges: Mapping[str, np.ndarray]

    @classmethod
    def of(cls, frame: pd.DataFrame, columns: Sequence[str], *, psi_bins: int, ks_bins: int) -> Binning:
        """Quantile bins of each of ``columns`` of the reference ``frame`` (or of a sample of it)."""
        return cls({c: quantile_edges(frame[c], psi_bins) for c in columns},
                   {c: quantile_edges(frame[c], ks_bins) for c in columns})

    @property
    def columns(self) -> list[str]:
        return list(self.psi_edges)


@dataclass(frozen=True)
class FeatureSummary:
    """Rows per PSI bin and per KS bin of every column, and the columns' moments: a partition's drift summary."""

    psi_counts: Mapping[str, np.ndarray]
    ks_counts: Mapping[str, np.ndarray]
    moments: summaries.Moments

    @classmethod
    def of(cls, frame: pd.DataFrame, binning: Binning) -> FeatureSummary:
        columns = binning.columns
        return cls({c: bin_counts(frame[c], binning.psi_edges[c]) for c in columns},
                   {c: bin_counts(frame[c], binning.ks_edges[c]) for c in columns},
                   summaries.Moments.of(frame, columns))

    def combine(self, other: FeatureSummary) -> FeatureSummary:
        if list(other.psi_counts) != list(self.psi_counts):
            raise ValueError(f"cannot combine summaries of {list(self.psi_counts)} and {list(other.psi_counts)}")
        return FeatureSummary({c: self.psi_counts[c] + other.psi_counts[c] for c in self.psi_counts},
                              {c: self.ks_counts[c] + other.ks_counts[c] for c in self.ks_counts},
                              self.moments.combine(other.moments))

    @property
    def rows(self) -> int:
        return self.moments.n


def feature_summarizer(binning: Binning) -> summaries.Summarizer:
    """A summarizer of :class:`FeatureSummary` (picklable, for :func:`ccfraud.summaries.compute`)."""
    return functools.partial(FeatureSummary.of, binning=binning)


@dataclass(frozen=True)
class Scored:
    """The model's score of every row (and its label, for labelled data), in row order."""

    scores: np.ndarray
    labels: np.ndarray | None

    @classmethod
    def of(cls, frame: pd.DataFrame, scorer: Any) -> Scored:
        """Score a validated partition with ``scorer`` (a :class:`~ccfraud.serving.scoring.Scorer`)."""
        matrix = frame[schema.FEATURES].to_numpy(dtype="float64")
        scores = np.asarray(scorer.probabilities(matrix), dtype="float64") if len(matrix) else np.empty(0)
        labels = frame[schema.TARGET].to_numpy(dtype="int8") if schema.TARGET in frame else None
        return cls(scores, labels)

    def combine(self, other: Scored) -> Scored:
        if (self.labels is None) != (other.labels is None):
            raise ValueError("cannot combine labelled and unlabelled scores")
        labels = None if self.labels is None else np.concatenate([self.labels, other.labels])
        return Scored(np.concatenate([self.scores, other.scores]), labels)

    def frame(self) -> pd.DataFrame:
        """The scores as a one-column frame, to bin and summarise like a feature."""
        return pd.DataFrame({SCORE: self.scores})


def scored_summarizer(scorer: Any) -> summaries.Summarizer:
    """A summarizer of :class:`Scored` (picklable, for :func:`ccfraud.summaries.compute`)."""
    return functools.partial(Scored.of, scorer=scorer)


def bin_table(reference: FeatureSummary, new: FeatureSummary, binning: Binning, column: str) -> pd.DataFrame:
    """Share of the reference's and the new data's rows in each PSI bin of ``column``, for plots and tables."""
    edges = binning.psi_edges[column]
    lower = np.r_[-np.inf, edges]
    upper = np.r_[edges, np.inf]
    return pd.DataFrame({"from": lower, "to": upper,
                         "reference": _shares(reference.psi_counts[column], "reference"),
                         "new": _shares(new.psi_counts[column], "new")})


# ---------------------------------------------------------------------------------------
# Rules: what the monitor alerts on (params.yaml's monitor section)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """How the monitor measures and when it alerts; every field is a key of params.yaml's ``monitor`` section."""

    psi_bins: int = 10
    ks_bins: int = 100
    psi_alert: float = 0.25
    ks_alert: float = 0.1
    alpha: float = 0.01
    ignore: tuple[str, ...] = (schema.TIME,)
    alert_rate_ratio_min: float = 0.5
    alert_rate_ratio_max: float = 2.0
    max_metric_drop: float = 0.1
    min_frauds: int = 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore))
        problems = []
        for name in ("psi_bins", "ks_bins", "min_frauds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "min_frauds" else 2):
                problems.append(f"{name} must be a whole number{' of at least 2' if name != 'min_frauds' else ''}, "
                                f"got {value!r}")
        for name, low, high in (("psi_alert", 0.0, math.inf), ("ks_alert", 0.0, 1.0), ("alpha", 0.0, 1.0),
                                ("alert_rate_ratio_min", 0.0, 1.0), ("alert_rate_ratio_max", 1.0, math.inf),
                                ("max_metric_drop", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
                problems.append(f"{name} must be a number between {low:g} and {high:g} (exclusive), got {value!r}")
        unknown = [name for name in self.ignore if name not in schema.FEATURES]
        if unknown:
            problems.append(f"ignore names {unknown}, which are not features; features are {schema.FEATURES}")
        if problems:
            raise MonitorError("monitor rules (params.yaml's monitor section): " + "; ".join(problems))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Rules:
        """Rules from a ``monitor`` params section (``show_code`` and the run's paths are not rules)."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(params) - known)
        if unknown:
            raise MonitorError(f"monitor rules: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**dict(params))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ignore": list(self.ignore)}

    def drift_reasons(self, psi_value: float, ks_statistic: float, ks_p_value: float) -> list[str]:
        """Why a distribution drifted: PSI at or above ``psi_alert``, or a KS gap both large and significant.

        The KS test alone would flag differences too small to matter once there are tens
        of thousands of rows, hence both its statistic and its p-value must cross.
        """
        reasons = []
        if psi_value >= self.psi_alert:
            reasons.append(f"PSI {psi_value:.3f} >= {self.psi_alert:g}")
        if ks_statistic >= self.ks_alert and ks_p_value < self.alpha:
            reasons.append(f"KS {ks_statistic:.3f} >= {self.ks_alert:g} (p {ks_p_value:.2g} < {self.alpha:g})")
        return reasons


# ---------------------------------------------------------------------------------------
# Comparing new data with the reference
# ---------------------------------------------------------------------------------------


def drift_table(reference: FeatureSummary, new: FeatureSummary, rules: Rules,
                ignore: Iterable[str] = ()) -> pd.DataFrame:
    """PSI, KS statistic and p-value, means and the verdict of every column, most drifted (by PSI) first."""
    ignored = set(ignore)
    rows = []
    reference_mean = dict(zip(reference.moments.columns, reference.moments.mean, strict=True))
    new_mean = dict(zip(new.moments.columns, new.moments.mean, strict=True))
    for column in reference.psi_counts:
        psi_value = psi(reference.psi_counts[column], new.psi_counts[column])
        statistic, p_value = ks_from_counts(reference.ks_counts[column], new.ks_counts[column])
        reasons = rules.drift_reasons(psi_value, statistic, p_value)
        rows.append({"column": column, "psi": psi_value, "ks_statistic": statistic, "ks_pvalue": p_value,
                     "reference_mean": float(reference_mean[column]), "new_mean": float(new_mean[column]),
                     "drifted": bool(reasons), "ignored": column in ignored, "alert": bool(reasons) and
                     column not in ignored, "reasons": "; ".join(reasons)})
    return pd.DataFrame(rows).sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)


@dataclass
class Reference:
    """What new data is compared with: the train split's bins and summary, the test split's scores, the figures."""

    binning: Binning
    features: FeatureSummary
    score_binning: Binning
    scores: FeatureSummary
    test: Scored
    #: AUPRC, precision and recall at the threshold at training time, and where each figure comes from.
    performance: dict[str, Any]
    #: Which data each comparison uses, in words and numbers (for the report and monitor.json).
    description: dict[str, Any]


def _check_training_data(model: artifacts.LoadedModel, processed_dir: Path) -> str:
    """Raise MonitorError unless the splits are the ones the model records; say what was checked."""
    recorded = model.metadata.get("training_data_sha256") or {}
    if not recorded:
        return "model.json records no digest of its training data: not checked"
    current = preprocess.split_digests(processed_dir)
    for name in ("train", "test"):
        if name in recorded and recorded[name] != current.get(name):
            raise MonitorError(
                f"reference {processed_dir / name}: not the data model {model.version} was trained and tested on "
                f"(content sha256 {str(current.get(name))[:12]}..., model.json records {str(recorded[name])[:12]}...); "
                "point the monitor at that training run's processed data")
    said = []
    for name in ("train", "test"):
        if name in recorded:
            said.append(f"the {name} split matches its digest in model.json")
        elif name == "test":
            said.append("the test split's digest is not recorded (the train stage never reads the test split): "
                        "not checked")
        else:
            said.append(f"the {name} split's digest is not recorded: not checked")
    return "; ".join(said)


def build_reference(model: artifacts.LoadedModel, scorer: Any, processed_dir: str | os.PathLike[str], rules: Rules,
                    *, engine: str = "pandas", say: Callable[[str], None] | None = None) -> Reference:
    """Bins and summaries of the train split, and the test split's scores, read as the train stage reads them.

    ``engine`` is ``compute.engine``: ``dask`` summarises the splits on the current cluster,
    partition by partition, with the same summaries as ``pandas`` computes in memory.
    """
    from ccfraud import compute

    processed_dir = Path(processed_dir)
    say = say or (lambda _line: None)
    try:
        checked = _check_training_data(model, processed_dir)
        if compute.check_engine(engine) == "dask":
            splits = preprocess.open_splits(processed_dir)
            train_rows = int(preprocess.read_manifest(processed_dir)["splits"]["train"]["rows"])
        else:
            splits = preprocess.read_splits(processed_dir)
            train_rows = len(splits.train)
    except (FileNotFoundError, ValueError, lake.LakeError) as exc:
        if isinstance(exc, MonitorError):
            raise
        raise MonitorError(f"reference {processed_dir}: {exc}") from None
    fraction = summaries.fraction_for(QUANTILE_ROWS, train_rows)
    say(f"reference: bins from {'all' if fraction >= 1 else f'{fraction:.1%} of the'} {train_rows:,} train rows")
    sample = summaries.compute(splits.train, {"rows": summaries.sample(fraction, fraction)}, label="quantile sample")
    binning = Binning.of(sample["rows"].frame, schema.FEATURES, psi_bins=rules.psi_bins, ks_bins=rules.ks_bins)
    features = summaries.compute(splits.train, {"f": feature_summarizer(binning)}, label="train summary")["f"]
    say("reference: scoring the test split")
    test = summaries.compute(splits.test, {"s": scored_summarizer(scorer)}, label="test scores")["s"]
    score_binning = Binning.of(test.frame(), [SCORE], psi_bins=rules.psi_bins, ks_bins=rules.ks_bins)
    test_alerts = int((test.scores >= model.threshold).sum())
    measured = performance(test.labels, test.scores, model.threshold)
    recorded = (model.metadata.get("metrics") or {}).get("test") or {}
    figures: dict[str, Any] = {}
    for name in ("auprc", "precision", "recall"):
        if isinstance(recorded.get(name), int | float):
            figures[name] = {"value": float(recorded[name]), "source": "model.json metrics.test (training time)"}
        else:
            figures[name] = {"value": measured[name], "source": "test split, scored now"}
    description = {
        "features": {"split": str(processed_dir / "train"), "rows": train_rows,
                     "why": "the train split, what the model learnt from (its refit may add the validation split)",
                     "data_check": checked},
        "scores": {"split": str(processed_dir / "test"), "rows": int(len(test.scores)), "alerts": test_alerts,
                   "alert_rate": test_alerts / len(test.scores),
                   "why": "the test split, scored now with the same Scorer as the API"},
        "performance": {name: figure["source"] for name, figure in figures.items()},
    }
    return Reference(binning, features, score_binning, FeatureSummary.of(test.frame(), score_binning), test,
                     figures, description)


# ---------------------------------------------------------------------------------------
# Reading new data: any source the download stage reads; Class optional
# ---------------------------------------------------------------------------------------


def validate_partition(frame: pd.DataFrame, *, where: str, first_row: int = 0) -> pd.DataFrame:
    """A partition of new data, numeric, in file column order: the features, and ``Class`` when it has one.

    The rules are the download stage's (:func:`ccfraud.schema.validate_dataset`), except that
    ``Class`` may be absent: new data is often not labelled yet. Errors name the column and
    the row (counted from ``first_row``).
    """
    schema.check_columns(list(frame.columns), require_target=False, where=where)
    if schema.TARGET in frame.columns:
        if len(frame) == 0:
            return schema.coerce_numeric(frame, schema.COLUMNS, where=where, first_row=first_row)
        return schema.validate_dataset(frame, where=where, first_row=first_row, require_both_classes=False)
    return schema.coerce_numeric(frame, schema.FEATURES, where=where, first_row=first_row)


def _rows_label(where: str, start: int, rows: int, of: str) -> str:
    return f"{where} (rows {start}-{start + rows - 1} of {of})"


def _synthetic_frames(source: str, where: str, partition_rows: int) -> Iterator[tuple[pd.DataFrame, str, int]]:
    from ccfraud import synthetic

    try:
        spec = synthetic.spec_from_uri(source)
    except ValueError as exc:
        raise sources.SourceError(f"{where}: {exc}") from None
    first = 0
    for index in range(spec.partitions):
        frame = synthetic.generate_partition(spec, index)
        for start in range(0, len(frame), partition_rows):
            piece = frame.iloc[start:start + partition_rows]
            yield piece, _rows_label(f"{where}, partition {index}", first + start, len(piece), "the dataset"), \
                first + start
        first += len(frame)


def _csv_chunks(path: Path, where: str, partition_rows: int) -> Iterator[tuple[pd.DataFrame, str, int]]:
    """A CSV file in frames of ``partition_rows`` rows, parse errors named as the download stage names them."""
    if path.stat().st_size == 0:
        raise schema.SchemaError(f"{where}: empty file (0 bytes): no header and no data rows")
    start = 0
    try:
        with pd.read_csv(path, chunksize=partition_rows, low_memory=False) as reader:
            for chunk in reader:
                schema.check_header_covers_rows(chunk, where=where)
                if start == 0:  # the header is the file's, not a part's: named as the download stage names it
                    schema.check_columns(list(chunk.columns), require_target=False, where=where)
                yield chunk, _rows_label(where, start, len(chunk), "the file"), start
                start += len(chunk)
    except pd.errors.EmptyDataError:
        raise schema.SchemaError(f"{where}: empty file: blank lines only, no header, no data rows") from None
    except pd.errors.ParserError as exc:
        raise schema.SchemaError(f"{where}: not a well-formed CSV file: {str(exc).strip()}") from None
    except UnicodeDecodeError as exc:
        raise schema.SchemaError(f"{where}: not a UTF-8 text file (undecodable byte at offset {exc.start}); "
                                 "is it compressed?") from None


def _csv_frames(source: str, where: str, endpoint_url: str | None,
                partition_rows: int) -> Iterator[tuple[pd.DataFrame, str, int]]:
    """A local CSV file read where it is; a remote one fetched first, as the download stage fetches it."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme in ("", "file"):
        local = Path(sources.local_path(source))
        if not local.exists():
            raise sources.SourceError(f"{where}: local file {local} does not exist (resolved to {local.resolve()})")
        yield from _csv_chunks(local, where, partition_rows)
        return
    with tempfile.TemporaryDirectory(prefix="ccfraud-monitor-") as tmp:
        local = Path(tmp) / "source.csv"
        sources.fetch_to(source, local, where=where, endpoint_url=endpoint_url)
        yield from _csv_chunks(local, where, partition_rows)


def _parquet_frames(source: str, endpoint_url: str | None,
                    partition_rows: int) -> Iterator[tuple[pd.DataFrame, str, int]]:
    """Every Parquet file of the source (as :func:`ccfraud.ingest.parquet_files` lists them), in batches."""
    import fsspec.core
    import pyarrow as pa
    import pyarrow.parquet as pq

    location = source if source.lower().startswith("s3://") else str(Path(sources.local_path(source)).resolve())
    options = lake.storage_options(location, endpoint_url)
    endpoint = options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    for file in ingest.parquet_files(location, options):
        try:
            fs, path = fsspec.core.url_to_fs(file, **options)
            with fs.open(path, "rb") as handle:
                try:
                    parquet = pq.ParquetFile(handle)
                except pa.ArrowException as exc:
                    raise schema.SchemaError(f"{file}: not a readable Parquet file: {exc}") from None
                names = [name for name in parquet.schema_arrow.names if not name.startswith("__index_level_")]
                schema.check_columns(names, require_target=False, where=file)
                start = 0
                for batch in parquet.iter_batches(batch_size=partition_rows,
                                                  columns=[c for c in schema.COLUMNS if c in names]):
                    if batch.num_rows:
                        yield batch.to_pandas(), _rows_label(file, start, batch.num_rows, "this file"), start
                        start += batch.num_rows
        except (schema.SchemaError, sources.SourceError, lake.LakeError):
            raise
        except pa.ArrowException as exc:
            raise schema.SchemaError(f"{file}: cannot decode the file: {exc}") from None
        except OSError as exc:
            raise ingest.source_error(exc, file, endpoint) from exc


def read_partitions(source: str | os.PathLike[str], *, partition_rows: int = DEFAULT_PARTITION_ROWS,
                    endpoint_url: str | None = None) -> Iterator[pd.DataFrame]:
    """Validated partitions of new data from any source the download stage reads; ``Class`` optional.

    Sources are the download stage's (:func:`ccfraud.ingest.source_kind`): a CSV file (local,
    ``https://``, ``s3://``), Parquet (a file, a directory, an ``s3://`` prefix or a lake
    dataset) or ``synthetic://``. Errors are its errors: SourceError when the source cannot
    be read (credentials in the URI refused before anything is fetched), SchemaError naming
    the file, column and row when the data breaks the schema. Either all partitions have
    ``Class`` or none. One partition is in memory at a time.
    """
    source = os.fspath(source)
    sources.refuse_credentials(source, what="source")
    if endpoint_url:
        sources.refuse_credentials(endpoint_url, what="endpoint_url")
    if isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1:
        raise ValueError(f"partition_rows must be a positive whole number of rows, got {partition_rows!r}")
    where = sources.redact(source)
    kind = ingest.source_kind(source)
    if kind == "synthetic":
        frames = _synthetic_frames(source, where, partition_rows)
    elif kind == "parquet":
        frames = _parquet_frames(source, endpoint_url, partition_rows)
    else:
        frames = _csv_frames(source, where, endpoint_url, partition_rows)
    rows = 0
    labelled: bool | None = None
    for frame, label, first_row in frames:
        clean = validate_partition(frame, where=label, first_row=first_row)
        has_labels = schema.TARGET in clean.columns
        if labelled is not None and has_labels != labelled:
            raise schema.SchemaError(f"{label}: column '{schema.TARGET}' is {'present' if has_labels else 'absent'} "
                                     f"here but not in the parts before it; label all of the data or none",
                                     column=schema.TARGET)
        labelled = has_labels
        rows += len(clean)
        if len(clean):
            yield clean
    if rows == 0:
        raise schema.SchemaError(f"{where}: no data rows (only a header or nothing at all)")


# ---------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------


@dataclass
class MonitorResult:
    """What the monitor found: the report (monitor.json's content), and the summaries behind its plots."""

    report: dict[str, Any]
    features: pd.DataFrame
    reference: Reference
    new_features: FeatureSummary
    new_scores: FeatureSummary
    new: Scored = field(repr=False)

    @property
    def alerts(self) -> list[str]:
        return list(self.report["alerts"])

    @property
    def exit_code(self) -> int:
        return int(self.report["exit_code"])


def summarise_new(partitions: Iterable[pd.DataFrame], binning: Binning, scorer: Any,
                  say: Callable[[str], None] | None = None) -> tuple[FeatureSummary, Scored]:
    """The new data's feature summary and scores, one partition at a time (a line per partition to ``say``)."""
    features: FeatureSummary | None = None
    scored: Scored | None = None
    rows = 0
    for index, partition in enumerate(partitions, start=1):
        part_features, part_scored = FeatureSummary.of(partition, binning), Scored.of(partition, scorer)
        features = part_features if features is None else features.combine(part_features)
        scored = part_scored if scored is None else scored.combine(part_scored)
        rows += len(partition)
        if say:
            say(f"new data: part {index} summarised and scored, {rows:,} rows so far")
    if features is None or scored is None:
        raise schema.SchemaError("new data: no data rows")
    return features, scored


def _performance_check(reference: Reference, new: Scored, threshold: float,
                       rules: Rules) -> tuple[dict[str, Any] | None, list[str]]:
    if new.labels is None:
        return None, []
    measured = performance(new.labels, new.scores, threshold)
    judged = measured["frauds"] >= rules.min_frauds
    metrics = {}
    alerts = []
    for name in ("auprc", "precision", "recall"):
        value, before = measured[name], reference.performance[name]["value"]
        drop = before - value if value is not None and before is not None else None
        alert = bool(judged and drop is not None and drop > rules.max_metric_drop)
        metrics[name] = {"new": value, "reference": before, "drop": drop, "alert": alert,
                         "reference_source": reference.performance[name]["source"]}
        if alert:
            alerts.append(f"{name} {value:.3f} is {drop:.3f} below the training-time {before:.3f} "
                          f"(more than {rules.max_metric_drop:g})")
    note = None if judged else (f"{measured['frauds']} fraud(s), fewer than min_frauds={rules.min_frauds}: "
                                "shown, not judged")
    return {"rows": measured["rows"], "frauds": measured["frauds"], "alerts": measured["alerts"],
            "judged": judged, "note": note, "metrics": metrics}, alerts


def assess(reference: Reference, new_features: FeatureSummary, new: Scored, *, threshold: float,
           rules: Rules) -> tuple[dict[str, Any], pd.DataFrame, FeatureSummary]:
    """Compare the new data's summaries with the reference's; the report, the drift table and the score summary."""
    alerts: list[str] = []
    table = drift_table(reference.features, new_features, rules, ignore=rules.ignore)
    for row in table[table["alert"]].itertuples():
        alerts.append(f"feature {row.column} drifted: {row.reasons}")
    new_scores = FeatureSummary.of(new.frame(), reference.score_binning)
    score_row = drift_table(reference.scores, new_scores, rules).iloc[0]
    if score_row["alert"]:
        alerts.append(f"score distribution drifted from the test split's: {score_row['reasons']}")
    new_alerts = int((new.scores >= threshold).sum())
    described = reference.description["scores"]
    new_rate, reference_rate, ratio, p_value = alert_rate_change(new_alerts, len(new.scores), described["alerts"],
                                                                 described["rows"])
    outside = not math.isnan(ratio) and not rules.alert_rate_ratio_min <= ratio <= rules.alert_rate_ratio_max
    rate_alert = bool(outside and p_value < rules.alpha)
    if rate_alert:
        alerts.append(f"alert rate {new_rate:.3%} is {ratio:.2f}x the test split's {reference_rate:.3%} "
                      f"(outside {rules.alert_rate_ratio_min:g}-{rules.alert_rate_ratio_max:g}x; "
                      f"Fisher p {p_value:.2g} < {rules.alpha:g})")
    performance_report, performance_alerts = _performance_check(reference, new, threshold, rules)
    alerts.extend(performance_alerts)
    report = {
        "status": "alert" if alerts else "quiet",
        "exit_code": EXIT_ALERT if alerts else EXIT_QUIET,
        "alerts": alerts,
        "rules": rules.to_dict(),
        "features": _records(table),
        "scores": {key: _plain(score_row[key]) for key in
                   ("psi", "ks_statistic", "ks_pvalue", "reference_mean", "new_mean", "alert", "reasons")},
        "alert_rate": {"threshold": threshold, "new_alerts": new_alerts, "new_rows": int(len(new.scores)),
                       "new_rate": new_rate, "reference_alerts": described["alerts"],
                       "reference_rows": described["rows"], "reference_rate": reference_rate,
                       "ratio": None if math.isnan(ratio) or math.isinf(ratio) else ratio,
                       "fisher_pvalue": p_value, "alert": rate_alert},
        "performance": performance_report,
    }
    return report, table, new_scores


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy values as Python ones, NaN and infinity (not JSON) as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [{key: _plain(value) for key, value in row.items()} for row in table.to_dict("records")]


def monitor(model: artifacts.LoadedModel, data: str | os.PathLike[str], processed_dir: str | os.PathLike[str],
            rules: Rules, *, scorer: Any = None, model_location: str | None = None, engine: str = "pandas",
            partition_rows: int = DEFAULT_PARTITION_ROWS, endpoint_url: str | None = None,
            say: Callable[[str], None] | None = None) -> MonitorResult:
    """Compare the new data at ``data`` with the model's reference in ``processed_dir`` under ``rules``.

    ``scorer`` defaults to a :class:`~ccfraud.serving.scoring.Scorer` of ``model`` (the
    API's). Raises one of :data:`BAD_INPUT_ERRORS` when an input cannot be used; nothing
    is written here (:func:`write_report` writes the report).
    """
    from ccfraud.serving.scoring import Scorer

    scorer = scorer if scorer is not None else Scorer(model.model)
    reference = build_reference(model, scorer, processed_dir, rules, engine=engine, say=say)
    new_features, new = summarise_new(read_partitions(data, partition_rows=partition_rows, endpoint_url=endpoint_url),
                                      reference.binning, scorer, say)
    report, table, new_scores = assess(reference, new_features, new, threshold=model.threshold, rules=rules)
    report = {
        "status": report.pop("status"), "exit_code": report.pop("exit_code"), "alerts": report.pop("alerts"),
        "model": {"location": model_location, "version": model.version, "threshold": model.threshold},
        "data": {"source": sources.redact(os.fspath(data)), "rows": int(len(new.scores)),
                 "labelled": new.labels is not None,
                 "frauds": None if new.labels is None else int(new.labels.sum())},
        "reference": reference.description,
        **report,
    }
    return MonitorResult(report, table, reference, new_features, new_scores, new)


def write_report(report: Mapping[str, Any], reports_dir: str | os.PathLike[str]) -> Path:
    """Write ``monitor.json`` atomically into ``reports_dir``: a reader sees the old verdict or the new one."""
    return atomicio.write_text(Path(reports_dir) / REPORT_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")


def read_report(reports_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``monitor.json`` as :func:`write_report` wrote it."""
    return json.loads((Path(reports_dir) / REPORT_FILE).read_text())


# ---------------------------------------------------------------------------------------
# The notebook's quick default: a small reference and model
# ---------------------------------------------------------------------------------------


def write_demo_reference(out_dir: str | os.PathLike[str], seed: int = 0) -> tuple[Path, Path]:
    """Small synthetic splits and a logistic regression trained on them, written as the pipeline writes them.

    Returns ``(processed_dir, model_dir)`` under ``out_dir``. The threshold is chosen on the
    validation split (max F1) and the test figures recorded in model.json, as the train
    stage does, so the monitor's notebook and tests run in seconds against a real reference.
    """
    from ccfraud import modeling, training

    out_dir = Path(out_dir)
    processed = training.write_demo_processed(out_dir / "processed", seed=seed)
    splits = preprocess.read_splits(processed)
    model = modeling.make_pipeline("logreg", "class_weight", seed=seed)
    model.fit(splits.train[schema.FEATURES], splits.train[schema.TARGET])
    valid_scores = modeling.fraud_probability(model, splits.valid)
    threshold = evaluation.choose_threshold(splits.valid[schema.TARGET], valid_scores, "max_f1")
    test_scores = modeling.fraud_probability(model, splits.test)
    metrics = evaluation.evaluate(splits.test[schema.TARGET], test_scores, threshold, bootstrap=0)
    artifacts.save_model(model, out_dir / "model", threshold=threshold, extra={
        "candidate": "logreg", "metrics": {"test": metrics},
        "training_data_sha256": preprocess.split_digests(processed)})
    return processed, out_dir / "model"
