"""From a validated raw frame to train/valid/test splits and the fitted preprocessing.

Order matters for honesty: duplicates are dropped first, the split happens next,
and anything fitted (the scaler, any resampling) only ever sees the train split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import RobustScaler

from ccfraud import atomicio, schema

SPLIT_STRATEGIES = ("time", "stratified")
SPLIT_NAMES = ("train", "valid", "test")
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Splits:
    """The three parts of the data; ``test`` is only ever scored, never used for a choice."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
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

    ``time`` keeps the earliest transactions for training and the latest for testing,
    which is how a deployed model meets the data; ``stratified`` is a random split
    that keeps the fraud rate equal in the three parts.
    """
    _check_sizes(valid_size, test_size)
    if strategy == "time":
        ordered = frame.sort_values(schema.TIME, kind="stable", ignore_index=True)
        n = len(ordered)
        n_test = round(n * test_size)
        n_valid = round(n * valid_size)
        n_train = n - n_valid - n_test
        parts = (
            ordered.iloc[:n_train],
            ordered.iloc[n_train : n_train + n_valid],
            ordered.iloc[n_train + n_valid :],
        )
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


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a parquet file atomically (temp file in the same directory, then rename)."""
    with atomicio.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_splits(splits: Splits, out_dir: Path) -> dict[str, Path]:
    """Write ``train/valid/test.parquet`` (raw feature values; scaling lives in the model pipeline)."""
    paths = {}
    for name, part in splits.items():
        paths[name] = Path(out_dir) / f"{name}.parquet"
        write_parquet(part, paths[name])
    return paths


def write_manifest(out_dir: Path, splits: Splits, *, strategy: str, **facts) -> Path:
    """Record how the splits were made; the train stage reads the strategy from here to choose its CV folds."""
    manifest = {
        "split": strategy,
        **facts,
        "splits": {
            name: {"rows": len(part), "frauds": int(part[schema.TARGET].sum())} for name, part in splits.items()
        },
    }
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


def read_splits(in_dir: Path) -> Splits:
    """Read the splits written by :func:`write_splits`, checking the schema of each."""
    parts = []
    for name in SPLIT_NAMES:
        path = Path(in_dir) / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the eda_preprocess stage first (dvc repro)")
        parts.append(schema.validate_dataset(pd.read_parquet(path), where=str(path)))
    return Splits(*parts)
