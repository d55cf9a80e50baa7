"""The exploratory analysis behind the eda_preprocess report, as testable functions.

It follows the Kaggle notebook "Credit Fraud || Dealing with Imbalanced Datasets":
what the imbalance hides in the full data, what a balanced subsample reveals, and
which features separate the classes. The plots are made in the notebook.

Statistics of the full data come from :mod:`ccfraud.summaries` (aggregated on the cluster
with the dask engine); what needs rows (box plots, projections, fraud quantiles) works on
samples drawn there: the frauds are few and always all kept.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from ccfraud import schema
from ccfraud.summaries import ClassMoments

#: The features whose fraud outliers (IQR rule) the seed project removed before training.
OUTLIER_FEATURES = ("V14", "V12", "V10")


def class_balance(stats: ClassMoments) -> pd.DataFrame:
    """Rows and share of each class."""
    counts = np.array([stats.legits, stats.frauds])
    return pd.DataFrame(
        {"class": ["legitimate (0)", "fraud (1)"], "rows": counts, "share": (counts / counts.sum()).round(6)}
    )


def balanced_subsample(frame: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_class`` rows of each class, for heatmaps and projections only (never training)."""
    parts = []
    for label in (0, 1):
        rows = frame[frame[schema.TARGET] == label]
        parts.append(rows.sample(n=min(per_class, len(rows)), random_state=seed))
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def class_correlations(correlation: pd.DataFrame) -> pd.Series:
    """Correlation of each feature with Class (from a correlation matrix), strongest (by absolute value) first."""
    corr = correlation.loc[schema.FEATURES, schema.TARGET]
    return corr.reindex(corr.abs().sort_values(ascending=False, kind="stable").index)


def fraud_iqr_fences(frame: pd.DataFrame, feature: str, k: float = 1.5) -> tuple[float, float, float, float]:
    """Q1, Q3 and the fences Q1 - k*IQR, Q3 + k*IQR of one feature among the fraud rows."""
    values = frame.loc[frame[schema.TARGET] == 1, feature]
    q1, q3 = float(values.quantile(0.25)), float(values.quantile(0.75))
    return q1, q3, q1 - k * (q3 - q1), q3 + k * (q3 - q1)


def iqr_outliers(frame: pd.DataFrame, features: list[str], k: float = 1.5) -> pd.DataFrame:
    """Per feature: the fraud rows' IQR fences and how many frauds fall outside them.

    The seed removed these rows before training; this table shows how many it
    would drop. Nothing is removed from any split here.
    """
    frauds = frame[frame[schema.TARGET] == 1]
    rows = []
    for feature in features:
        values = frauds[feature]
        q1, q3, low, high = fraud_iqr_fences(frame, feature, k)
        outside = int(((values < low) | (values > high)).sum())
        rows.append({"feature": feature, "q1": q1, "q3": q3, "lower_fence": low, "upper_fence": high,
                     "fraud_outliers": outside, "frauds": len(values)})
    return pd.DataFrame(rows)


def projections_beside(frame: pd.DataFrame, seed: int = 0) -> Future[dict[str, np.ndarray]]:
    """:func:`projections` computed in a background thread while the caller goes on (its ``result()``).

    t-SNE's iterations release the GIL, but matplotlib renders a figure without releasing it, so
    the thread gets about 40% of a core while the report's other plots are drawn (4.1 s of CPU in
    6.7 s); the projections cell still waits 3-4 s for it, against the 5.6 s it took before. A
    process of its own was tried: starting it and importing scikit-learn cost what it saved.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projections")
    future = pool.submit(projections, frame, seed)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return future


def projections(frame: pd.DataFrame, seed: int = 0) -> dict[str, np.ndarray]:
    """2-D embeddings (t-SNE, PCA, TruncatedSVD) of standardised features of a small subsample.

    t-SNE runs on one OpenMP thread: on the shared 2-core machine (load 5) its 984-row embedding
    took 34 s of wall time and 15.5 s of CPU with a thread per core, 10 s and 5 s with one.
    """
    from threadpoolctl import threadpool_limits

    features = StandardScaler().fit_transform(frame[schema.FEATURES])
    perplexity = float(min(30, max(5, (len(frame) - 1) // 4)))
    with threadpool_limits(limits=1, user_api="openmp"):
        tsne = TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca", max_iter=500)
        embedded = tsne.fit_transform(features)
    return {
        "t-SNE": embedded,
        "PCA": PCA(n_components=2, random_state=seed).fit_transform(features),
        "TruncatedSVD": TruncatedSVD(n_components=2, random_state=seed).fit_transform(features),
    }
