"""Statistics written once: a partition becomes a small summary, and summaries combine.

Every statistic of the EDA report and of the splits is one of the summaries below: made
from one partition with ``of`` and merged with ``combine``. :func:`compute` is the only
place that knows about engines: a pandas frame is one partition; a ``dask.dataframe`` is
summarised partition by partition on the cluster and the small summaries are combined
here. The maths never asks which engine runs it, so the pandas report and the cluster's
agree (exactly for counts, to rounding for floating sums).

* :class:`ClassMoments`: per class, count, mean, co-moment matrix, min and max of some
  columns (class balance, describe tables, the correlation matrix of the full data);
* :class:`Histogram`: rows per class and bin of one column (the Amount and Time plots);
* :class:`Rows`: a sample of rows (frauds all kept, a fraction of legitimate rows),
  drawn by :func:`class_sample` with a per-row pseudo-random number that depends only on
  the row's values, so the same rows are drawn whatever the partitioning or the engine.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np
import pandas as pd

from ccfraud import progress, schema

CLASSES = (0, 1)
#: Rows turned into a float matrix at a time: a partition's summary needs a few MB, not copies of it.
CHUNK_ROWS = 65_536


class Summary(Protocol):
    """What :func:`compute` needs of a summary: combining with another of the same kind."""

    def combine(self, other: Self) -> Self: ...


#: Makes one partition's summary; must be picklable (a module-level function or a functools.partial).
Summarizer = Callable[[pd.DataFrame], Any]


def is_partitioned(frame: Any) -> bool:
    """True for a ``dask.dataframe`` (summarised partition by partition), False for a pandas frame."""
    return not isinstance(frame, pd.DataFrame | pd.Series) and hasattr(frame, "to_delayed")


def _summarize(partition: pd.DataFrame, summarizers: Mapping[str, Summarizer]) -> dict[str, Any]:
    return {name: make(partition) for name, make in summarizers.items()}


def compute(frame: Any, summarizers: Mapping[str, Summarizer], *, label: str = "summaries") -> dict[str, Any]:
    """Every summary of ``frame``, in one pass: a pandas frame is one partition, a dask frame many.

    On a dask frame each partition is read once, summarised by all ``summarizers`` on a
    worker, and the small summaries are combined here in partition order.
    """
    if not is_partitioned(frame):
        return _summarize(frame, summarizers)
    import dask

    tasks = [dask.delayed(_summarize)(part, dict(summarizers)) for part in frame.to_delayed()]
    parts = progress.compute(tasks, f"{label} ({len(tasks)} partitions)")
    return {name: functools.reduce(lambda a, b: a.combine(b), [p[name] for p in parts])
            for name in summarizers}


# ---------------------------------------------------------------------------------------
# Moments: count, mean, co-moments, min, max (combined as Chan, Golub and LeVeque do)
# ---------------------------------------------------------------------------------------


def _chunks(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[start:start + CHUNK_ROWS] for start in range(0, len(frame), CHUNK_ROWS)]


@dataclass(frozen=True)
class Moments:
    """Count, mean vector, co-moment matrix (sum of centred cross products), min and max of columns.

    Centred sums rather than raw sums of squares: combining two parts adds a correction
    for the difference of their means, so the variance of values far from zero (Time in
    seconds) keeps its precision however many parts are merged.
    """

    columns: tuple[str, ...]
    n: int
    mean: np.ndarray
    comoment: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def of_values(cls, columns: Sequence[str], values: np.ndarray) -> Moments:
        """The moments of a float matrix whose columns are ``columns``."""
        k = len(columns)
        if len(values) == 0:
            return cls(tuple(columns), 0, np.zeros(k), np.zeros((k, k)), np.full(k, np.inf), np.full(k, -np.inf))
        mean = values.mean(axis=0)
        centred = values - mean
        return cls(tuple(columns), len(values), mean, centred.T @ centred, values.min(axis=0), values.max(axis=0))

    @classmethod
    def of(cls, frame: pd.DataFrame, columns: Sequence[str]) -> Moments:
        moments = cls.of_values(columns, np.empty((0, len(columns))))
        for chunk in _chunks(frame):
            moments = moments.combine(cls.of_values(columns, chunk[list(columns)].to_numpy(dtype="float64")))
        return moments

    def combine(self, other: Moments) -> Moments:
        if other.columns != self.columns:
            raise ValueError(f"cannot combine moments of {list(self.columns)} with moments of {list(other.columns)}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(
            self.columns, n, self.mean + delta * (other.n / n),
            self.comoment + other.comoment + np.outer(delta, delta) * (self.n * other.n / n),
            np.minimum(self.minimum, other.minimum), np.maximum(self.maximum, other.maximum),
        )

    def _series(self, values: np.ndarray) -> pd.Series:
        return pd.Series(values, index=list(self.columns))

    def std(self) -> pd.Series:
        """Sample standard deviation (ddof=1, as pandas), NaN below two rows."""
        if self.n < 2:
            return self._series(np.full(len(self.columns), np.nan))
        return self._series(np.sqrt(np.maximum(np.diag(self.comoment), 0.0) / (self.n - 1)))

    def describe(self) -> pd.DataFrame:
        """count, mean, std, min and max of each column (rows are the columns)."""
        return pd.DataFrame({"count": self.n, "mean": self._series(self.mean), "std": self.std(),
                             "min": self._series(self.minimum), "max": self._series(self.maximum)})

    def correlation(self) -> pd.DataFrame:
        """Pearson correlation matrix; NaN where a column is constant (as ``DataFrame.corr``)."""
        scale = np.sqrt(np.diag(self.comoment))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = self.comoment / np.outer(scale, scale)
        corr[~np.isfinite(corr)] = np.nan
        np.fill_diagonal(corr, np.where(scale > 0, 1.0, np.nan))
        return pd.DataFrame(corr, index=list(self.columns), columns=list(self.columns))


@dataclass(frozen=True)
class ClassMoments:
    """:class:`Moments` of the legitimate rows and of the fraud rows, separately."""

    legit: Moments
    fraud: Moments

    @classmethod
    def of(cls, frame: pd.DataFrame, columns: Sequence[str] = tuple(schema.COLUMNS)) -> ClassMoments:
        empty = Moments.of_values(columns, np.empty((0, len(columns))))
        moments = cls(empty, empty)
        for chunk in _chunks(frame):
            values = chunk[list(columns)].to_numpy(dtype="float64")
            is_fraud = (chunk[schema.TARGET] == 1).to_numpy()
            moments = moments.combine(cls(Moments.of_values(columns, values[~is_fraud]),
                                          Moments.of_values(columns, values[is_fraud])))
        return moments

    def combine(self, other: ClassMoments) -> ClassMoments:
        return ClassMoments(self.legit.combine(other.legit), self.fraud.combine(other.fraud))

    @property
    def rows(self) -> int:
        return self.legit.n + self.fraud.n

    @property
    def frauds(self) -> int:
        return self.fraud.n

    @property
    def legits(self) -> int:
        return self.legit.n

    def overall(self) -> Moments:
        """The moments of all rows: both classes merged."""
        return self.legit.combine(self.fraud)

    def by_class(self, column: str) -> pd.DataFrame:
        """``describe`` of one column for each class (rows 0 and 1), as ``groupby(Class)[column]``."""
        table = pd.DataFrame([m.describe().loc[column] for m in (self.legit, self.fraud)], index=list(CLASSES))
        table.index.name = schema.TARGET
        return table.astype({"count": "int64"})


# ---------------------------------------------------------------------------------------
# Histograms
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """Rows per class and bin of one column; bins of fixed ``width``, on a log10 scale if ``log``.

    Bins are fixed in advance (bin ``b`` covers ``[b*width, (b+1)*width)`` of the value or of
    its log10), so partitions' counts add up without a first pass to find the range. On the
    log scale values below ``floor`` (zeros) are counted in the bin of ``floor``.
    """

    column: str
    width: float
    log: bool
    floor: float
    counts: pd.Series  # index: (Class, bin); values: rows

    @classmethod
    def of(cls, frame: pd.DataFrame, column: str, width: float, *, log: bool = False,
           floor: float = 0.01) -> Histogram:
        values = frame[column].to_numpy(dtype="float64")
        if log:
            values = np.log10(np.maximum(values, floor))
        bins = np.floor(values / width).astype("int64")
        counts = pd.Series(1, index=pd.MultiIndex.from_arrays(
            [frame[schema.TARGET].to_numpy(), bins], names=[schema.TARGET, "bin"])).groupby(level=[0, 1]).sum()
        return cls(column, width, log, floor, counts.astype("int64"))

    def combine(self, other: Histogram) -> Histogram:
        if (other.column, other.width, other.log) != (self.column, self.width, self.log):
            raise ValueError(f"cannot combine histograms of {self.column} and {other.column} with other bins")
        counts = self.counts.add(other.counts, fill_value=0).astype("int64").sort_index()
        return Histogram(self.column, self.width, self.log, self.floor, counts)

    def table(self) -> pd.DataFrame:
        """One row per class and bin: its edges (in the column's units), rows and density within the class.

        Every bin between the lowest and the highest is listed for both classes (zero rows
        where none fell), so each class's bins are contiguous and plot as one step line.
        Density is the share of the class's rows per unit of the binned scale, so the two
        classes are comparable however different their sizes (``common_norm=False``).
        """
        bins = self.counts.index.get_level_values("bin")
        full = pd.MultiIndex.from_product([list(CLASSES), range(int(bins.min()), int(bins.max()) + 1)],
                                          names=[schema.TARGET, "bin"]) if len(bins) else self.counts.index
        counts = self.counts.reindex(full, fill_value=0).rename("rows").reset_index()
        scale = (lambda b: 10.0 ** (b * self.width)) if self.log else (lambda b: b * self.width)
        counts["left"] = scale(counts["bin"].astype("float64"))
        counts["right"] = scale(counts["bin"].astype("float64") + 1.0)
        totals = counts.groupby(schema.TARGET)["rows"].transform("sum")
        counts["density"] = counts["rows"] / totals / self.width
        return counts


# ---------------------------------------------------------------------------------------
# Samples: frauds all kept, a fraction of legitimate rows
# ---------------------------------------------------------------------------------------


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _stream_key(seed: int, stream: str) -> np.uint64:
    digest = hashlib.sha256(f"{stream}:{int(seed)}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def row_uniforms(frame: pd.DataFrame, seed: int, stream: str = "sample") -> np.ndarray:
    """A pseudo-random number in [0, 1) per row, a function of the row's values, ``seed`` and ``stream`` only.

    The row's 64-bit hash (pandas' ``hash_pandas_object`` of the schema's columns) is mixed
    with the seed by SplitMix64's finaliser. Because it depends on nothing else, a row is
    drawn or not whatever the partitioning, the order or the engine: pandas on the whole
    frame and Dask on its partitions draw the same sample, and a larger fraction draws a
    superset of a smaller one. Exact duplicate rows get the same number (they are dropped
    before any sample that trains a model).
    """
    hashes = pd.util.hash_pandas_object(frame[schema.COLUMNS], index=False).to_numpy(dtype="uint64")
    z = hashes ^ _stream_key(seed, stream)
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype("float64") * 2.0**-53


def class_sample(frame: pd.DataFrame, legit_fraction: float, fraud_fraction: float = 1.0,
                 seed: int = 0) -> pd.DataFrame:
    """The rows of one partition whose :func:`row_uniforms` fall below their class's fraction.

    A fraction of 1 keeps every row of that class (in order, index untouched), so a
    "sample" of everything is the frame itself.
    """
    for name, value in (("legit_fraction", legit_fraction), ("fraud_fraction", fraud_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    if legit_fraction >= 1.0 and fraud_fraction >= 1.0:
        return frame
    uniforms = row_uniforms(frame, seed)
    threshold = np.where((frame[schema.TARGET] == 1).to_numpy(), fraud_fraction, legit_fraction)
    return frame[uniforms < threshold]


@dataclass(frozen=True)
class Rows:
    """Some rows of the data (a sample): combining keeps partition order."""

    frame: pd.DataFrame

    @classmethod
    def sample(cls, frame: pd.DataFrame, legit_fraction: float, fraud_fraction: float = 1.0,
               seed: int = 0) -> Rows:
        return cls(class_sample(frame, legit_fraction, fraud_fraction, seed))

    def combine(self, other: Rows) -> Rows:
        return Rows(pd.concat([self.frame, other.frame], ignore_index=True))


def fraction_for(wanted: int, available: int) -> float:
    """The fraction of ``available`` rows that draws about ``wanted`` of them (1 when there are no more)."""
    if wanted < 0:
        raise ValueError(f"the number of rows wanted must not be negative, got {wanted}")
    return 1.0 if available <= wanted else wanted / available


def moments(columns: Sequence[str] = tuple(schema.COLUMNS)) -> Summarizer:
    """A summarizer of :class:`ClassMoments` of ``columns`` (picklable, for :func:`compute`)."""
    return functools.partial(ClassMoments.of, columns=tuple(columns))


def histogram(column: str, width: float, *, log: bool = False) -> Summarizer:
    """A summarizer of one column's :class:`Histogram` (picklable, for :func:`compute`)."""
    return functools.partial(Histogram.of, column=column, width=width, log=log)


def sample(legit_fraction: float, fraud_fraction: float = 1.0, seed: int = 0) -> Summarizer:
    """A summarizer of a :class:`Rows` sample (picklable, for :func:`compute`)."""
    return functools.partial(Rows.sample, legit_fraction=legit_fraction, fraud_fraction=fraud_fraction, seed=seed)
