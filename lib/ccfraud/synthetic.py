"""A deterministic generator of creditcard.csv-shaped data: the pipeline's built-in dataset.

Machines with no credentials and no network still need data to run the whole pipeline
on, and tests need data that is small, reproducible and behaves like the real thing.
``generate`` returns a frame with exactly the columns of the Kaggle/ULB
"Credit Card Fraud Detection" file (``Time, V1..V28, Amount, Class``), built so that
the modelling problem has the same character as the real one:

* ``V1..V28`` look like PCA components: centred, uncorrelated among legitimate rows,
  spread decreasing from V1 to V28 (the real standard deviations), with heavy tails
  where the real components have them.
* Frauds come in three kinds, so the problem is neither trivial nor hopeless:

  - *linear* frauds are shifted along the real data's most informative features
    (V14, V12, V10, V17, V3 negative; V4, V11 positive; a few more, weaker);
  - *interaction* frauds have the legitimate mean on every feature, but V13 and V15 are
    both far out with the same sign (an XOR-like pattern): a tree model can find them,
    a linear model cannot;
  - *camouflaged* frauds are drawn exactly like legitimate rows: no model can find them.

* ``Time`` covers two days with a daily cycle; frauds follow a flatter cycle, so the
  night has a higher fraud rate, as in the real data.
* ``Amount`` is skewed like card payments (median about 22, mean about 88, a tail to
  thousands) and tied to V2 (negatively), V7 and V20 (positively); fraud amounts are
  often tiny "does the card work?" tests, sometimes large cash-outs.

Calibration (train on the earliest 60% by Time, test on the latest 20%): a scaled logistic
regression reaches an average precision of about 0.4-0.55, an untuned
HistGradientBoostingClassifier about 0.5-0.75 at the real fraud rate and 0.75-0.85 at a
higher one; nothing can reach 1, because of the camouflaged frauds.

Everything is drawn from one ``numpy.random.default_rng(seed)`` in a fixed order, so the
same arguments always give the same frame, bit for bit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

from ccfraud import schema

SCHEME = "synthetic"
#: The real file's size: 284,807 transactions of which 492 are frauds.
DEFAULT_ROWS = 284_807
DEFAULT_FRAUDS = 492
DEFAULT_SEED = 0
#: A guard against a typo in a URI exhausting memory (the frame takes about 250 bytes a row):
#: the most rows one frame (``generate``, or one partition) may have.
MAX_ROWS = 20_000_000
#: The most rows a partitioned dataset may have: a guard against a typo filling a disk
#: (a row takes about 250 bytes of Parquet).
MAX_TOTAL_ROWS = 1_000_000_000
#: Rows per partition when a URI does not say ``partitions``: the real file's size, so that
#: each partition is like one more real file (two days of transactions, about 70 MB).
PARTITION_ROWS = DEFAULT_ROWS
#: Seconds between the starts of consecutive partitions: two whole days, so partition ``i``
#: covers days ``2i`` and ``2i + 1`` and the daily cycle keeps its hours.
PARTITION_SECONDS = 2 * 86_400

# ---------------------------------------------------------------------------------------
# Legitimate transactions
# ---------------------------------------------------------------------------------------

#: The real file covers two days: Time runs from 0 to 172,792 seconds.
LAST_SECOND = 172_792
#: Relative number of transactions per hour of the day (hour 0 = the file's first hour),
#: read off the real data: a deep trough at night and a plateau from 9h to 22h.
HOURLY_VOLUME = np.array([
    7.7, 4.2, 3.3, 3.5, 2.2, 2.9, 4.1, 7.2, 10.3, 15.8, 16.6, 16.8,
    15.4, 15.4, 16.5, 16.6, 16.4, 16.2, 17.0, 15.6, 16.8, 17.7, 15.4, 10.9,
])

#: Standard deviations of V1..V28 in the real data (PCA orders components by variance).
V_STD = np.array([
    1.959, 1.651, 1.516, 1.416, 1.380, 1.332, 1.237, 1.194, 1.099, 1.089, 1.021, 0.999, 0.995, 0.959,
    0.915, 0.876, 0.849, 0.838, 0.814, 0.771, 0.735, 0.726, 0.624, 0.606, 0.521, 0.483, 0.404, 0.330,
])
#: How heavy each component's tails are. In the real data the highest kurtosis (hundreds)
#: is in components that say little about fraud, the fraud-informative ones owe much of
#: theirs to the frauds themselves, and the rest are close to Gaussian.
HEAVY_TAILED = ("V1", "V2", "V5", "V6", "V7", "V8", "V20", "V21", "V23", "V27", "V28")
MODERATE_TAILED = ("V3", "V10", "V12", "V14", "V16", "V17")
#: Degrees of freedom of the Student-t scales. Heavy tails are a scale mixture: a per-row
#: scale shared by all heavy-tailed features (an outlying transaction is outlying in many
#: components, as in the real data) times per-feature noise. Moderate tails: noise alone.
ROW_TAIL_DF = 6.0
FEATURE_TAIL_DF = 5.0
MODERATE_TAIL_DF = 8.0
#: Features with a longer tail on one side (negative: left), by how much that side is stretched.
SKEW = {"V1": -1.8, "V2": -1.5, "V3": -1.4, "V5": -1.5, "V7": 1.5, "V8": -1.3, "V20": 1.4}

#: log(Amount) leans on these (standardised) components, like the real Amount; the rest is noise.
AMOUNT_LOADINGS = {"V2": -0.55, "V7": 0.35, "V20": 0.35, "V5": -0.25, "V1": -0.15}
#: Components enter the amount softly clipped (``c * tanh(z / c)``) at this many standard
#: deviations, so that a heavy-tailed component cannot produce absurd amounts.
AMOUNT_CLIP = 2.5
#: log(Amount) = log(AMOUNT_MEDIAN) + a two-sided spread of a score x (about unit variance):
#: below the median ``AMOUNT_LOW_SPREAD * x``; above it ``AMOUNT_HIGH_SPREAD * x / (1 + AMOUNT_BEND * x)``,
#: a tail lighter than log-normal. Fitted to the real quartiles (5.60, 22.00, 77.17), mean (88.35),
#: standard deviation (250), 99th percentile (about 1,000) and maximum (25,691), 1.00s and 0.00s included.
AMOUNT_MEDIAN = 27.0
AMOUNT_LOW_SPREAD = 2.1
AMOUNT_HIGH_SPREAD = 2.0
AMOUNT_BEND = 0.07
#: Shares of legitimate amounts that are exactly 1.00 and 0.00 (card checks), as in the real data.
LEGIT_ONE_SHARE = 0.045
LEGIT_ZERO_SHARE = 0.006

# ---------------------------------------------------------------------------------------
# Frauds
# ---------------------------------------------------------------------------------------

#: Shares of the interaction and camouflaged kinds of fraud; the rest are linear.
INTERACTION_SHARE = 0.35
CAMOUFLAGED_SHARE = 0.20

#: Mean shift of the linear frauds, in legitimate standard deviations: roughly the real
#: fraud means divided by the real standard deviations, so the same features stand out.
FRAUD_SHIFT = {
    "V17": -8.0, "V14": -7.8, "V12": -6.6, "V3": -5.6, "V10": -5.5, "V7": -5.4, "V16": -4.9,
    "V11": 3.8, "V4": 3.2, "V18": -2.7, "V1": -2.5, "V9": -2.4, "V5": -2.3, "V2": 2.2, "V6": -1.0,
}
#: Each linear fraud moves ``intensity`` times the shift, with intensity = MIN + (1 - MIN) * G,
#: G ~ Gamma(SHAPE) of mean 1: some frauds are blatant, the weakest reach into the
#: legitimate tail, where a linear model mixes them up with unusual legitimate rows.
LINEAR_INTENSITY_MIN = 0.6
LINEAR_INTENSITY_SHAPE = 2.0

#: The interaction frauds: both features at INTERACTION_CENTRE +- INTERACTION_SPREAD
#: standard deviations from zero, with the same sign (two opposite corners of the plane).
#: Both features are light-tailed, so legitimate rows rarely go there.
INTERACTION = ("V13", "V15")
INTERACTION_CENTRE = 3.5
INTERACTION_SPREAD = 0.3

#: Frauds follow the daily cycle less: this share of their intensity is flat over the day.
FRAUD_FLAT_SHARE = 0.5

#: Fraud amounts (real frauds: median 9.25, mean 122, a quarter exactly 1.00 or 0.00, maximum
#: 2,125.87): exactly 1.00, exactly 0.00, a small test amount below SMALL, a medium purchase,
#: and (the remaining share) a large cash-out. Medians and log-spreads of the last two follow.
FRAUD_AMOUNT_SHARES = {"one": 0.22, "zero": 0.05, "small": 0.25, "medium": 0.35}
FRAUD_SMALL_AMOUNT = 12.0
FRAUD_MEDIUM_AMOUNT = (60.0, 1.0)
FRAUD_LARGE_AMOUNT = (450.0, 0.6)
FRAUD_AMOUNT_MAX = 2_500.0

_PARAMETERS = ("rows", "frauds", "seed", "partitions")
_WHOLE_NUMBER = re.compile(r"-?[0-9]+")
_HEAVY = np.isin(schema.PCA_FEATURES, HEAVY_TAILED)
_MODERATE = np.isin(schema.PCA_FEATURES, MODERATE_TAILED)


def _check_integers(**values: object) -> None:
    """Raise ValueError naming the first value that is not an integer (booleans are not)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"synthetic data: {name} must be an integer, got {value!r}")


def _check_arguments(rows: int, frauds: int, seed: int) -> None:
    """Raise ValueError naming the first argument that cannot give a valid dataset."""
    _check_integers(rows=rows, frauds=frauds, seed=seed)
    if not 2 <= rows <= MAX_ROWS:
        raise ValueError(
            f"synthetic data: rows must be between 2 (one row of each class) and {MAX_ROWS:,}, got {rows}"
        )
    if not 1 <= frauds < rows:
        raise ValueError(
            f"synthetic data: frauds must be at least 1 and less than rows={rows} "
            f"(both classes are required), got {frauds}"
        )
    if seed < 0:
        raise ValueError(f"synthetic data: seed must be a non-negative integer, got {seed}")


# ---------------------------------------------------------------------------------------
# V1..V28
# ---------------------------------------------------------------------------------------


def _t_scale(rng: np.random.Generator, df: float, size: tuple[int, int]) -> np.ndarray:
    """Multipliers that turn standard normal draws into unit-variance Student-t(df) draws."""
    return np.sqrt((df - 2.0) / rng.chisquare(df, size=size))


def _mean_abs(name: str) -> float:
    """E|z| of feature ``name``'s unit-variance draw before skewing: a normal times its t scales."""
    if name in HEAVY_TAILED:
        dfs = [ROW_TAIL_DF, FEATURE_TAIL_DF]
    elif name in MODERATE_TAILED:
        dfs = [MODERATE_TAIL_DF]
    else:
        dfs = []
    mean_abs = math.sqrt(2.0 / math.pi)
    for df in dfs:
        # E[1 / sqrt(X)] for X ~ chi-square(df), computed through log-gamma to avoid overflow.
        inverse_root_mean = math.exp(math.lgamma((df - 1.0) / 2.0) - math.lgamma(df / 2.0)) / math.sqrt(2.0)
        mean_abs *= math.sqrt(df - 2.0) * inverse_root_mean
    return mean_abs


def _skew(z: np.ndarray, name: str, factor: float) -> np.ndarray:
    """Stretch one side of a symmetric unit-variance draw, then restore mean 0 and variance 1.

    The moments are exact (not estimated from the sample), so a small frame is a faithful
    sample of a large one and no feature is rescaled by its own frauds.
    """
    stretch = abs(factor)
    stretched = np.where((z < 0) if factor < 0 else (z > 0), z * stretch, z)
    mean = math.copysign((stretch - 1.0) * _mean_abs(name) / 2.0, factor)
    std = math.sqrt((1.0 + stretch**2) / 2.0 - mean**2)
    return (stretched - mean) / std


def _standard_components(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zero-mean, unit-variance, mutually uncorrelated draws for V1..V28, shape (n, 28).

    The tail scales multiply the Gaussian draws independently of their signs, so features
    that share the row scale are dependent (extremes co-occur) yet uncorrelated.
    """
    z = rng.standard_normal((n, len(schema.PCA_FEATURES)))
    row_scale = _t_scale(rng, ROW_TAIL_DF, (n, 1))
    z[:, _HEAVY] *= row_scale * _t_scale(rng, FEATURE_TAIL_DF, (n, int(_HEAVY.sum())))
    z[:, _MODERATE] *= _t_scale(rng, MODERATE_TAIL_DF, (n, int(_MODERATE.sum())))
    for name, factor in SKEW.items():
        j = schema.PCA_FEATURES.index(name)
        z[:, j] = _skew(z[:, j], name, factor)
    return z


def _linear_fraud_components(rng: np.random.Generator, n: int) -> np.ndarray:
    """Legitimate-looking draws moved along ``FRAUD_SHIFT`` by a per-row intensity."""
    shift = np.array([FRAUD_SHIFT.get(name, 0.0) for name in schema.PCA_FEATURES])
    gamma = rng.gamma(LINEAR_INTENSITY_SHAPE, 1.0 / LINEAR_INTENSITY_SHAPE, size=(n, 1))
    intensity = LINEAR_INTENSITY_MIN + (1.0 - LINEAR_INTENSITY_MIN) * gamma
    return (_standard_components(rng, n) + intensity * shift) * V_STD


def _interaction_fraud_components(rng: np.random.Generator, n: int) -> np.ndarray:
    """Legitimate-looking draws except that both ``INTERACTION`` features are far out, same sign.

    Among these frauds each of the two features is symmetric around zero, so no weighted
    sum of features sets them apart; their product (or a tree) does.
    """
    z = _standard_components(rng, n)
    sign = rng.choice(np.array([-1.0, 1.0]), size=n)
    for name in INTERACTION:
        distance = np.abs(rng.normal(INTERACTION_CENTRE, INTERACTION_SPREAD, size=n))
        z[:, schema.PCA_FEATURES.index(name)] = sign * distance
    return z * V_STD


# ---------------------------------------------------------------------------------------
# Time and Amount
# ---------------------------------------------------------------------------------------


def _daily_cycle(volume: np.ndarray) -> np.ndarray:
    """Relative intensity of every second 0..LAST_SECOND, linear between the hours' midpoints."""
    hour = (np.arange(LAST_SECOND + 1) / 3600.0) % 24.0
    midpoints = np.arange(24) + 0.5
    # Wrap around midnight: one hour of padding on each side of the day.
    xp = np.concatenate([[midpoints[-1] - 24.0], midpoints, [midpoints[0] + 24.0]])
    fp = np.concatenate([[volume[-1]], volume, [volume[0]]])
    return np.interp(hour, xp, fp)


def _times(rng: np.random.Generator, n: int, intensity: np.ndarray) -> np.ndarray:
    """Whole seconds drawn with probability proportional to ``intensity`` (inverse CDF)."""
    cdf = np.cumsum(intensity)
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").astype(np.float64)


def _legitimate_amounts(rng: np.random.Generator, components: np.ndarray) -> np.ndarray:
    """Skewed amounts whose logarithm leans on a few components (see ``AMOUNT_LOADINGS``)."""
    n = len(components)
    loadings = np.array([AMOUNT_LOADINGS.get(name, 0.0) for name in schema.PCA_FEATURES])
    explained = (AMOUNT_CLIP * np.tanh(components / V_STD / AMOUNT_CLIP)) @ loadings
    score = explained + rng.standard_normal(n) * math.sqrt(1.0 - float(loadings @ loadings))
    above = np.maximum(score, 0.0)
    below = np.minimum(score, 0.0)
    log_ratio = AMOUNT_LOW_SPREAD * below + AMOUNT_HIGH_SPREAD * above / (1.0 + AMOUNT_BEND * above)
    amounts = AMOUNT_MEDIAN * np.exp(log_ratio)
    kind = rng.random(n)
    amounts[kind < LEGIT_ONE_SHARE] = 1.0
    amounts[kind >= 1.0 - LEGIT_ZERO_SHARE] = 0.0
    return amounts


def _fraud_amounts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Many tiny "does the card work?" tests (often exactly 1.00 or 0.00) and some large cash-outs."""
    kind = rng.random(n)
    small = rng.uniform(0.01, FRAUD_SMALL_AMOUNT, size=n)
    medium = rng.lognormal(math.log(FRAUD_MEDIUM_AMOUNT[0]), FRAUD_MEDIUM_AMOUNT[1], size=n)
    large = rng.lognormal(math.log(FRAUD_LARGE_AMOUNT[0]), FRAUD_LARGE_AMOUNT[1], size=n)
    shares = FRAUD_AMOUNT_SHARES
    bounds = np.cumsum([shares["one"], shares["zero"], shares["small"], shares["medium"]])
    amounts = np.select([kind < bound for bound in bounds], [1.0, 0.0, small, medium], default=large)
    return np.minimum(amounts, FRAUD_AMOUNT_MAX)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _fraud_kinds(frauds: int) -> dict[str, int]:
    """How ``generate`` splits ``frauds`` into its three kinds (exact counts that add up)."""
    interaction = round(frauds * INTERACTION_SHARE)
    camouflaged = round(frauds * CAMOUFLAGED_SHARE)
    linear = frauds - interaction - camouflaged
    return {"linear": linear, "interaction": interaction, "camouflaged": camouflaged}


def generate(
    rows: int = DEFAULT_ROWS, frauds: int = DEFAULT_FRAUDS, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """Return ``rows`` creditcard.csv-shaped transactions, exactly ``frauds`` of them fraud.

    Columns are ``schema.COLUMNS`` in file order (float64 features, int64 ``Class``) and
    rows are sorted by ``Time``, as in the real file, so a time-ordered split means the
    same thing on both. The defaults reproduce the real file's size and fraud count.
    The same arguments always return the same frame; another ``seed`` gives other data.
    """
    _check_arguments(rows, frauds, seed)
    return _generate_block(np.random.default_rng(seed), rows, frauds)


def _generate_block(rng: np.random.Generator, rows: int, frauds: int) -> pd.DataFrame:
    """``rows`` transactions of which ``frauds`` are fraud (0 <= frauds <= rows), from ``rng``.

    One partition of a partitioned dataset may hold no fraud or only frauds; ``generate``
    checks that a whole dataset has both classes before calling this.
    """
    kinds = _fraud_kinds(frauds)
    # Camouflaged frauds are drawn in the same calls as legitimate rows: identical by construction.
    like_legit = rows - frauds + kinds["camouflaged"]
    unusual = kinds["linear"] + kinds["interaction"]

    components = np.vstack([
        _standard_components(rng, like_legit) * V_STD,
        _linear_fraud_components(rng, kinds["linear"]),
        _interaction_fraud_components(rng, kinds["interaction"]),
    ])
    amounts = np.concatenate([
        _legitimate_amounts(rng, components[:like_legit]),
        _fraud_amounts(rng, unusual),
    ])
    legit_cycle = _daily_cycle(HOURLY_VOLUME)
    fraud_cycle = (1.0 - FRAUD_FLAT_SHARE) * legit_cycle / legit_cycle.mean() + FRAUD_FLAT_SHARE
    times = np.concatenate([_times(rng, like_legit, legit_cycle), _times(rng, unusual, fraud_cycle)])
    labels = np.zeros(rows, dtype=np.int64)
    labels[rows - frauds :] = 1  # the camouflaged frauds end the legitimate-like block
    tie_breaker = rng.random(rows)

    order = np.lexsort((tie_breaker, times))
    frame = pd.DataFrame(components[order] - components.mean(axis=0), columns=schema.PCA_FEATURES)
    frame.insert(0, schema.TIME, times[order] - times[order[0]])  # seconds from the first transaction
    frame[schema.AMOUNT] = np.round(amounts[order], 2)
    frame[schema.TARGET] = labels[order]
    return frame[schema.COLUMNS]


@dataclass(frozen=True)
class Spec:
    """A synthetic dataset as ``partitions`` independent blocks: what a ``synthetic://`` URI describes.

    With one partition the data is exactly ``generate(rows, frauds, seed)``. With more,
    partition ``i`` has its own random stream (``SeedSequence(seed, spawn_key=(i,))``), so
    it can be generated alone, on any worker, and equals partition ``i`` of the whole; its
    transactions cover two more days (``Time`` + ``i * PARTITION_SECONDS``), so ``Time``
    increases across partitions as in a transaction log. Rows and frauds are spread as
    evenly as integers allow, the totals exact.
    """

    rows: int = DEFAULT_ROWS
    frauds: int = DEFAULT_FRAUDS
    seed: int = DEFAULT_SEED
    partitions: int = 1

    def __post_init__(self) -> None:
        _check_spec(self.rows, self.frauds, self.seed, self.partitions)

    def partition_counts(self, index: int) -> tuple[int, int]:
        """``(rows, frauds)`` of partition ``index``: the first ``rows % partitions`` get one more row."""
        if not 0 <= index < self.partitions:
            raise IndexError(f"synthetic data: partition {index} does not exist (0 to {self.partitions - 1})")
        rows = self.rows // self.partitions + (index < self.rows % self.partitions)
        frauds = self.frauds // self.partitions + (index < self.frauds % self.partitions)
        return rows, frauds


def _check_spec(rows: int, frauds: int, seed: int, partitions: int) -> None:
    """Raise ValueError naming the first argument that cannot give a valid partitioned dataset."""
    _check_integers(rows=rows, frauds=frauds, seed=seed, partitions=partitions)
    if partitions == 1:
        _check_arguments(rows, frauds, seed)
        return
    if partitions < 1:
        raise ValueError(f"synthetic data: partitions must be at least 1, got {partitions}")
    if seed < 0:
        raise ValueError(f"synthetic data: seed must be a non-negative integer, got {seed}")
    if not partitions <= rows <= MAX_TOTAL_ROWS:
        raise ValueError(
            f"synthetic data: rows must be between partitions={partitions} (one row in each) and "
            f"{MAX_TOTAL_ROWS:,}, got {rows}"
        )
    if -(-rows // partitions) > MAX_ROWS:
        raise ValueError(
            f"synthetic data: {rows:,} rows in {partitions} partitions is more than {MAX_ROWS:,} rows "
            "in one partition; ask for more partitions"
        )
    if not 1 <= frauds < rows:
        raise ValueError(
            f"synthetic data: frauds must be at least 1 and less than rows={rows} "
            f"(both classes are required), got {frauds}"
        )


def generate_partition(spec: Spec, index: int) -> pd.DataFrame:
    """Partition ``index`` of ``spec``: the same frame whether generated alone or with the others.

    Its index counts from 0; its ``Time`` starts at ``index * PARTITION_SECONDS``.
    """
    rows, frauds = spec.partition_counts(index)
    if spec.partitions == 1:
        return _generate_block(np.random.default_rng(spec.seed), rows, frauds)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(index,)))
    frame = _generate_block(rng, rows, frauds)
    frame[schema.TIME] += float(index * PARTITION_SECONDS)
    return frame


def iter_partitions(spec: Spec) -> Iterator[pd.DataFrame]:
    """Every partition of ``spec`` in order, one at a time (one partition in memory)."""
    for index in range(spec.partitions):
        yield generate_partition(spec, index)


def parse_uri(uri: str) -> dict[str, int]:
    """Read ``synthetic://?rows=..&frauds=..&seed=..&partitions=..`` into :class:`Spec`'s arguments.

    Missing keys take ``generate``'s defaults, so ``synthetic://`` means the real file's
    size. Without ``partitions``, a dataset has one partition per :data:`PARTITION_ROWS`
    rows (rounded up): the default is one partition, exactly ``generate()``, and 100 times
    the default is 100 partitions of two days each. The count depends on the URI alone,
    never on how the data is stored, so one URI always means the same data. Anything else
    in the URI (a host, a path, an unknown or repeated key, a value that is not a whole
    number) is an error rather than ignored, because a typo would otherwise quietly
    produce another dataset than the one asked for.
    """
    parts = urlsplit(uri)
    example = f"{SCHEME}://?rows=20000&frauds=200&seed=1"
    if parts.scheme != SCHEME:
        raise ValueError(f"{uri!r}: not a {SCHEME}: URI (expected e.g. {example!r})")
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"{uri!r}: a {SCHEME}: URI takes only query parameters, e.g. {example!r}")
    arguments = {"rows": DEFAULT_ROWS, "frauds": DEFAULT_FRAUDS, "seed": DEFAULT_SEED}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as error:
        raise ValueError(f"{uri!r}: malformed query ({error}); expected e.g. {example!r}") from None
    seen: set[str] = set()
    for key, value in pairs:
        if key not in _PARAMETERS:
            raise ValueError(f"{uri!r}: unknown parameter {key!r}; expected some of {list(_PARAMETERS)}")
        if key in seen:
            raise ValueError(f"{uri!r}: parameter {key!r} is given more than once")
        if not _WHOLE_NUMBER.fullmatch(value):
            raise ValueError(f"{uri!r}: parameter {key!r} must be a whole number, got {value!r}")
        seen.add(key)
        arguments[key] = int(value)
    if "partitions" not in arguments:
        arguments["partitions"] = max(1, -(-arguments["rows"] // PARTITION_ROWS))
    _check_spec(**arguments)
    return arguments


def spec_from_uri(uri: str) -> Spec:
    """The :class:`Spec` a ``synthetic://`` URI describes (see ``parse_uri``)."""
    return Spec(**parse_uri(uri))


def generate_from_uri(uri: str) -> pd.DataFrame:
    """The whole dataset of a ``synthetic://`` URI as one frame (``generate`` for one partition).

    For data that fits in memory (at most :data:`MAX_ROWS` rows); larger datasets are
    written partition by partition (``ccfraud.ingest``) and never exist in one process.
    """
    spec = spec_from_uri(uri)
    if spec.partitions == 1:
        return generate_partition(spec, 0)
    if spec.rows > MAX_ROWS:
        raise ValueError(
            f"{uri!r}: {spec.rows:,} rows are more than {MAX_ROWS:,} for one in-memory frame; "
            "the download stage writes such a dataset partition by partition"
        )
    return pd.concat(list(iter_partitions(spec)), ignore_index=True)
