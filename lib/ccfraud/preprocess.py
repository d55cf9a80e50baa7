"""From a validated raw frame to train/valid/test splits and the fitted preprocessing.

Order matters for honesty: duplicates are dropped first, the split happens next,
and anything fitted (the scaler, any resampling) only ever sees the train split.

The same steps run on a pandas frame (one process) or a ``dask.dataframe`` (a cluster),
and give the same splits: the ``dask`` time split sorts by (Time, original row number),
so exact duplicates meet in one partition and ties keep the order pandas' stable sort
gives them, then cuts at the same row positions. Splits are written as
:mod:`ccfraud.lake` datasets (Parquet parts, a manifest written last) by either engine,
so every reader has one format to read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import RobustScaler

from ccfraud import atomicio, lake, progress, schema, summaries

SPLIT_STRATEGIES = ("time", "stratified")
SPLIT_NAMES = ("train", "valid", "test")
MANIFEST_FILE = "manifest.json"
#: The original row number (partition number << 32 | position) the dask split sorts ties by.
ROW_KEY = "_row"
#: The scaler is fitted on at most about this many rows of the train split (all of it at the default size):
#: a median and an IQR are known to well under 1% from a uniform sample of a million rows.
SCALER_ROWS = 1_000_000


@dataclass(frozen=True)
class Splits:
    """The three parts of the data; ``test`` is only ever scored, never used for a choice.

    Each part is a pandas frame or, with the dask engine, a ``dask.dataframe``.
    """

    train: Any
    valid: Any
    test: Any

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in SPLIT_NAMES]


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate rows (the real file has about a thousand).

    Duplicates would otherwise land on both sides of a split and flatter the test score.
    """
    deduplicated = frame.drop_duplicates(keep="first", ignore_index=True)
    return deduplicated, len(frame) - len(deduplicated)


def _check_sizes(valid_size: float, test_size: float) -> None:
    for name, value in (("valid_size", valid_size), ("test_size", test_size)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value!r}")
    if valid_size + test_size >= 1.0:
        raise ValueError(f"valid_size + test_size must leave rows for training, got {valid_size} + {test_size}")


def split(
    frame: pd.DataFrame,
    strategy: str = "time",
    *,
    valid_size: float = 0.2,
    test_size: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Split into train/valid/test before any resampling.

    ``time`` keeps the earliest transactions for training and the latest for testing (cut
    between two Times, never inside one: :func:`first_of_its_time`),
    which is how a deployed model meets the data; ``stratified`` is a random split
    that keeps the fraud rate equal in the three parts.
    """
    _check_sizes(valid_size, test_size)
    if strategy == "time":
        ordered = frame.sort_values(schema.TIME, kind="stable", ignore_index=True)
        times = ordered[schema.TIME].to_numpy()
        n_train, n_valid, _ = split_sizes(len(ordered), valid_size, test_size)
        valid_from, test_from = (first_of_its_time(times, cut) for cut in (n_train, n_train + n_valid))
        _check_cuts(valid_from, test_from, len(ordered))
        parts = (ordered.iloc[:valid_from], ordered.iloc[valid_from:test_from], ordered.iloc[test_from:])
    elif strategy == "stratified":
        labels = frame[schema.TARGET]
        rest, test = train_test_split(frame, test_size=test_size, stratify=labels, random_state=seed)
        train, valid = train_test_split(
            rest,
            test_size=valid_size / (1.0 - test_size),
            stratify=rest[schema.TARGET],
            random_state=seed,
        )
        parts = (train.sort_index(), valid.sort_index(), test.sort_index())
    else:
        raise ValueError(f"split strategy must be one of {SPLIT_STRATEGIES}, got {strategy!r}")
    splits = Splits(*(part.reset_index(drop=True) for part in parts))
    for name, part in splits.items():
        if part[schema.TARGET].nunique() < 2:
            raise ValueError(
                f"split '{strategy}': the {name} part has {len(part)} rows and "
                f"{int(part[schema.TARGET].sum())} frauds; every part needs both classes (use more data)"
            )
    return splits


def first_of_its_time(times: np.ndarray, cut: int) -> int:
    """``cut`` moved back to the first row with the Time of the row at ``cut`` (``times`` sorted).

    A time split cuts between two Times, never inside one: the transactions of one second
    all go to the later part, so no second (a burst of one card's frauds, say) is in
    two parts, where the refit on train + valid would learn from half of it and the
    evaluation score the other half.
    """
    if cut <= 0 or cut >= len(times):
        return cut
    return int(np.searchsorted(times, times[cut], side="left"))


def _check_cuts(valid_from: int, test_from: int, rows: int) -> None:
    """Refuse a time split whose cuts, moved to the start of their seconds, leave a part empty (both engines)."""
    for name, size in (("train", valid_from), ("valid", test_from - valid_from), ("test", rows - test_from)):
        if size <= 0:
            raise ValueError(f"split 'time': the {name} part has 0 rows once the cuts are moved to the start of "
                             "their seconds (one Time value covers it); every part needs both classes (use more data)")


def split_sizes(rows: int, valid_size: float, test_size: float) -> tuple[int, int, int]:
    """Rows of train, valid and test in a time split of ``rows`` rows (the same rounding on both engines)."""
    n_test = round(rows * test_size)
    n_valid = round(rows * valid_size)
    return rows - n_valid - n_test, n_valid, n_test


@dataclass(frozen=True)
class Prepared:
    """Deduplicated splits and what the preprocessing did to get them."""

    splits: Splits
    rows_in: int
    duplicates: int
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare(frame: Any, strategy: str = "time", *, valid_size: float = 0.2, test_size: float = 0.2,
            seed: int = 0) -> Prepared:
    """Drop exact duplicates, then split: pandas in memory, a dask frame on the cluster.

    Both give the same deduplicated rows and, for ``time``, the same three parts. The
    ``stratified`` split on a dask frame assigns each row by :func:`summaries.row_uniforms`
    (the fraud rate is the same in every part in expectation, not to the row as in pandas).
    Returns the splits with their facts (rows, frauds, first and last Time of each).
    """
    _check_sizes(valid_size, test_size)
    if strategy not in SPLIT_STRATEGIES:
        raise ValueError(f"split strategy must be one of {SPLIT_STRATEGIES}, got {strategy!r}")
    if summaries.is_partitioned(frame):
        rows_in = int(len(frame))
        deduplicated = _sort_and_deduplicate(frame)
        rows = int(len(deduplicated))
        splits = _split_partitioned(deduplicated, strategy, valid_size=valid_size, test_size=test_size, seed=seed)
    else:
        rows_in = len(frame)
        deduplicated, _ = drop_duplicates(frame)
        rows = len(deduplicated)
        splits = split(deduplicated, strategy, valid_size=valid_size, test_size=test_size, seed=seed)
    facts = split_facts(splits)
    for name, fact in facts.items():
        if fact["frauds"] == 0 or fact["frauds"] == fact["rows"]:
            raise ValueError(f"split '{strategy}': the {name} part has {fact['rows']} rows and {fact['frauds']} "
                             "frauds; every part needs both classes (use more data)")
    return Prepared(splits, rows_in, rows_in - rows, facts)


def _with_row_key(partition: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
    number = partition_info["number"] if partition_info else 0
    keys = (np.int64(number) << np.int64(32)) + np.arange(len(partition), dtype="int64")
    return partition.assign(**{ROW_KEY: keys})


def _drop_sorted_duplicates(partition: pd.DataFrame) -> pd.DataFrame:
    # Sorted by (Time, row key): the first of equal rows is the earliest in the file, as pandas keeps.
    return partition[~partition.duplicated(subset=schema.COLUMNS, keep="first")]


def _sort_and_deduplicate(frame: Any) -> Any:
    """Sort by (Time, original row) on the cluster and drop exact duplicates; persisted (every split reads it).

    The sort places equal Times in one partition (it partitions by Time, then sorts each
    partition by both keys), so duplicates, which share their Time, meet there.
    """
    meta = frame._meta.assign(**{ROW_KEY: np.int64(0)})
    keyed = frame.map_partitions(_with_row_key, meta=meta)
    ordered = keyed.sort_values([schema.TIME, ROW_KEY])
    deduplicated = ordered.map_partitions(_drop_sorted_duplicates, meta=meta)
    return progress.persist(deduplicated, "sort by Time and drop duplicates")


def _rows_between(partition: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    return partition.iloc[start:stop].drop(columns=ROW_KEY).reset_index(drop=True)


def _part_of(partition: pd.DataFrame, which: int, seed: int, test_size: float, valid_size: float) -> pd.DataFrame:
    uniforms = summaries.row_uniforms(partition, seed, stream="split")
    assigned = np.where(uniforms < test_size, 2, np.where(uniforms < test_size + valid_size, 1, 0))
    return partition[assigned == which].drop(columns=ROW_KEY)


def _first_of_its_time_partitioned(ordered: Any, offsets: np.ndarray, cut: int) -> int:
    """:func:`first_of_its_time` on a Time-ordered dask frame: one Time lies in one partition (the sort's), so only
    the Time column of the partition holding ``cut`` is read."""
    if cut <= 0 or cut >= offsets[-1]:
        return cut
    number = int(np.searchsorted(offsets, cut, side="right")) - 1
    times = ordered.get_partition(number)[schema.TIME].compute().to_numpy()
    return int(offsets[number]) + first_of_its_time(times, cut - int(offsets[number]))


def _split_partitioned(ordered: Any, strategy: str, *, valid_size: float, test_size: float, seed: int) -> Splits:
    """The three parts of a persisted, Time-ordered, deduplicated dask frame (as dask frames)."""
    import dask
    import dask.dataframe as dd

    meta = ordered._meta.drop(columns=ROW_KEY)
    if strategy == "stratified":
        return Splits(*(ordered.map_partitions(_part_of, which, seed, test_size, valid_size, meta=meta)
                        for which in range(3)))
    lengths = [int(n) for n in ordered.map_partitions(len).compute()]
    n_train, n_valid, _ = split_sizes(sum(lengths), valid_size, test_size)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    valid_from, test_from = (_first_of_its_time_partitioned(ordered, offsets, cut)
                             for cut in (n_train, n_train + n_valid))
    _check_cuts(valid_from, test_from, sum(lengths))
    bounds = [(0, valid_from), (valid_from, test_from), (test_from, sum(lengths))]
    parts = ordered.to_delayed()
    out = []
    for first, last in bounds:
        pieces = [dask.delayed(_rows_between)(part, max(first, start) - start, min(last, stop) - start)
                  for part, start, stop in zip(parts, offsets[:-1], offsets[1:], strict=True)
                  if start < last and stop > first]
        out.append(dd.from_delayed(pieces, meta=meta, verify_meta=False))
    return Splits(*out)


def split_facts(splits: Splits) -> dict[str, dict[str, Any]]:
    """Rows, frauds and the first and last Time of each part (aggregated on the cluster for dask frames)."""
    facts = {}
    for name, part in splits.items():
        stats = summaries.compute(part, {"m": summaries.moments([schema.TIME])}, label=f"{name} facts")["m"]
        overall = stats.overall()
        facts[name] = {"rows": stats.rows, "frauds": stats.frauds,
                       "first_time": float(overall.minimum[0]), "last_time": float(overall.maximum[0])}
    return facts


def make_preprocessor() -> ColumnTransformer:
    """Scale Time and Amount robustly (heavy tails), pass the PCA components through.

    The same (unfitted) object starts every model pipeline, so it is refitted inside
    each cross-validation fold and serving applies exactly what training fitted.
    """
    transformer = ColumnTransformer(
        [("robust", RobustScaler(), schema.SCALED_FEATURES)],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    return transformer.set_output(transform="pandas")


def fit_preprocessor(train: pd.DataFrame) -> ColumnTransformer:
    """Fit the preprocessing on the train split only."""
    return make_preprocessor().fit(train[schema.FEATURES])


def scaler_rows(train: Any, rows: int, seed: int = 0, limit: int = SCALER_ROWS) -> tuple[pd.DataFrame, float]:
    """The train rows the stage's scaler is fitted on, and their fraction: all of them up to ``limit`` rows.

    Beyond ``limit`` a uniform sample (same fraction in both classes) drawn on the cluster;
    the model pipeline refits its own scaler on the rows it trains on in any case.
    """
    fraction = summaries.fraction_for(limit, rows)
    drawn = summaries.compute(train, {"rows": summaries.sample(fraction, fraction, seed)}, label="scaler sample")
    return drawn["rows"].frame, fraction


def _chunks(frame: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    if rows < 1:
        raise ValueError(f"partition_rows must be at least 1, got {rows}")
    for start in range(0, max(len(frame), 1), rows):
        yield frame.iloc[start:start + rows]


def write_splits(splits: Splits, out_dir: Path, *, partition_rows: int, client: Any = None) -> dict[str, Path]:
    """Write each split as a lake dataset ``out_dir/<split>/`` (raw feature values; scaling lives in the model).

    A pandas split is cut into parts of ``partition_rows`` rows; a dask split is written by
    the workers, one part per partition (``client``: the cluster's, by default the current one),
    to the absolute path: a worker's working directory need not be this process's.
    """
    paths = {}
    for name, part in splits.items():
        paths[name] = Path(out_dir) / name
        if summaries.is_partitioned(part):
            if client is None:
                from distributed import default_client

                client = default_client()
            lake.write_dask(part, str(paths[name]), client)
        else:
            lake.write_frames(_chunks(part, partition_rows), str(paths[name]))
    return paths


def write_manifest(out_dir: Path, facts: dict[str, dict[str, Any]], *, strategy: str, **details: Any) -> Path:
    """Record how the splits were made (``facts``: :func:`split_facts`); the train stage reads it.

    The train stage takes the strategy from here to choose its CV folds, and the rows and
    frauds of each split to size its training sample without a pass over the data.
    """
    manifest = {"split": strategy, **details, "splits": facts}
    return atomicio.write_text(Path(out_dir) / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def read_manifest(in_dir: Path) -> dict:
    """The manifest written by :func:`write_manifest`, checked for the keys the train stage relies on."""
    path = Path(in_dir) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the eda_preprocess stage first (dvc repro)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("split") not in SPLIT_STRATEGIES:
        raise ValueError(f"{path}: 'split' must be one of {SPLIT_STRATEGIES}, found {manifest.get('split')!r}")
    return manifest


def _split_location(in_dir: Path, name: str) -> str:
    path = Path(in_dir) / name
    if not (path / lake.MANIFEST).exists():
        raise FileNotFoundError(f"{path}/{lake.MANIFEST} not found: no committed '{name}' split; "
                                "run the eda_preprocess stage first (dvc repro)")
    return str(path)


def read_splits(in_dir: Path, names: tuple[str, ...] = SPLIT_NAMES) -> Splits:
    """Read the splits written by :func:`write_splits` into memory, checking the schema of each.

    Only the splits in ``names`` are read (the others are None): the train stage never opens the test split.
    """
    parts = {}
    for name in names:
        location = _split_location(in_dir, name)
        parts[name] = schema.validate_dataset(lake.read_pandas(location), where=location)
    return Splits(*(parts.get(name) for name in SPLIT_NAMES))


def open_splits(in_dir: Path, names: tuple[str, ...] = SPLIT_NAMES) -> Splits:
    """The splits in ``names`` as dask frames (the others None): exactly the parts their manifests list."""
    return Splits(*(lake.read_dask(_split_location(in_dir, name)) if name in names else None
                    for name in SPLIT_NAMES))


def split_digests(in_dir: Path, names: tuple[str, ...] = SPLIT_NAMES) -> dict[str, str]:
    """A SHA-256 of each split's content (its parts' checksums, in order): the model records what it learnt from.

    It does not depend on run ids or commit times, so the same data gives the same digest.
    """
    import hashlib

    digests = {}
    for name in names:
        manifest = lake.read_manifest(_split_location(in_dir, name))
        digests[name] = hashlib.sha256("".join(part["sha256"] for part in manifest["parts"]).encode()).hexdigest()
    return digests


def load_raw(location: str | os.PathLike[str], engine: str, *, partition_rows: int) -> Any:
    """The raw dataset: a pandas frame, or a dask frame of the lake dataset's parts for the ``dask`` engine.

    The download stage writes a validated lake dataset, which the workers read part by part.
    A CSV file or a ``synthetic://`` URI (the notebook's quick default) is read here and cut
    into partitions of ``partition_rows`` rows.
    """
    from ccfraud import compute
    from ccfraud.sources import read_dataset

    compute.check_engine(engine)
    location = os.fspath(location)
    if engine == "pandas":
        return read_dataset(location)
    import dask.dataframe as dd

    if "://" not in location and Path(location).is_dir():
        return lake.read_dask(location)
    return dd.from_pandas(read_dataset(location), chunksize=partition_rows, sort=False)
