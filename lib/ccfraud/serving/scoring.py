"""Score a float matrix with the trained pipeline: the training code path, minus pandas overhead.

``modeling.fraud_probability`` on a one-row DataFrame spends nearly all of its time
in pandas and scikit-learn's input checks (milliseconds), not in arithmetic
(microseconds). A web request has already checked its input against the feature
spec, so :class:`Scorer` can run the *same fitted objects* on a NumPy matrix:

* the fitted ``ColumnTransformer`` is replayed step by step on its columns,
  passthrough columns copied, in the transformer's output order;
* resamplers are skipped, as the pipeline itself skips them when predicting;
* the fitted classifier scores the result;
* the prior-shift correction is ``modeling.correct_probability`` with the fitted beta.

Each fitted step runs through its own ``transform``/``predict_proba``, except the
few whose arithmetic is one line and whose input checks cost 50 times more than it
(``RobustScaler``, ``StandardScaler``, binary ``LogisticRegression``): for those,
:data:`KERNELS` applies the same operations to the fitted arrays, in the same order.
Binary ``RandomForestClassifier``/``ExtraTreesClassifier`` get a kernel too: their
``predict_proba`` dispatches one joblib task per tree (about 10 ms for one row of 200
trees), so :mod:`ccfraud.serving.forest` scores the same fitted trees with a node table
for a few rows and parallel chunks of the trees' own compiled walk for many.
Nothing is re-fitted: the arrays are the ones training produced.

The plan is only used after it reproduces ``modeling.fraud_probability`` on probe
rows (to 1e-12) at load time; any other pipeline shape, or any mismatch, falls back
to ``modeling.fraud_probability`` itself, and the reason is logged.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import RobustScaler, StandardScaler

from ccfraud import modeling, schema
from ccfraud.serving import forest

log = logging.getLogger(__name__)

#: Largest difference from modeling.fraud_probability the fast path may show on the probe rows.
PARITY_TOLERANCE = 1e-12
FAST = "numpy"
PIPELINE = "pipeline"
#: How the classifier is scored on the NumPy path when it has no kernel: its own ``predict_proba``.
OWN_PREDICT_PROBA = "predict_proba"


class UnsupportedPipeline(Exception):
    """The fitted pipeline has a shape the NumPy plan does not know; the pipeline path is used."""


def _without_feature_names(estimator: Any) -> Any:
    """A copy that accepts NumPy input without the "fitted with feature names" warning.

    Column names are checked once, when the plan is built, instead of on every call.
    The copy shares the fitted arrays with the original, so memory is not doubled.
    """
    twin = copy.copy(estimator)
    if hasattr(twin, "feature_names_in_"):
        del twin.feature_names_in_
    return twin


Kernel = forest.Kernel


def _shift_and_scale(shift: np.ndarray | None, scale: np.ndarray | None) -> Kernel:
    """(X - shift) / scale on dense input, either part optional: what both scalers' transform does."""

    def transform(matrix: np.ndarray) -> np.ndarray:
        out = np.array(matrix, dtype=np.float64)
        if shift is not None:
            out -= shift
        if scale is not None:
            out /= scale
        return out

    return transform


def _robust_scaler(step: RobustScaler) -> Kernel:
    """RobustScaler.transform: subtract center_, divide by scale_."""
    return _shift_and_scale(step.center_ if step.with_centering else None, step.scale_ if step.with_scaling else None)


def _standard_scaler(step: StandardScaler) -> Kernel:
    """StandardScaler.transform: subtract mean_, divide by scale_."""
    return _shift_and_scale(step.mean_ if step.with_mean else None, step.scale_ if step.with_std else None)


def _binary_logistic(step: LogisticRegression) -> Kernel:
    """LogisticRegression.predict_proba[:, 1] for two classes: expit(X @ coef_.T + intercept_)."""
    if step.coef_.shape[0] != 1:
        raise UnsupportedPipeline(f"LogisticRegression with coef_ of shape {step.coef_.shape}")
    coef_t = step.coef_.T
    intercept = step.intercept_

    def fraud_probability(matrix: np.ndarray) -> np.ndarray:
        scores = (matrix @ coef_t + intercept).reshape(-1)
        return expit(scores, out=scores)

    return fraud_probability


def _binary_forest(step: RandomForestClassifier | ExtraTreesClassifier) -> Kernel:
    """A forest's predict_proba[:, 1] from its own fitted trees, without per-call overhead (see :mod:`.forest`)."""
    twin = _without_feature_names(step)
    return forest.forest_kernel(step, lambda matrix: twin.predict_proba(matrix)[:, 1], tolerance=PARITY_TOLERANCE)


#: Steps whose operations are applied directly (exact types only: a subclass may behave differently).
KERNELS: dict[type, Callable[[Any], Kernel]] = {
    RobustScaler: _robust_scaler,
    StandardScaler: _standard_scaler,
    LogisticRegression: _binary_logistic,
    RandomForestClassifier: _binary_forest,
    ExtraTreesClassifier: _binary_forest,
}


def _transformer(fitted: Any) -> Kernel:
    """The step's kernel, or its own ``transform`` (NumPy in, NumPy out)."""
    kernel = KERNELS.get(type(fitted))
    if kernel is not None:
        return kernel(fitted)
    twin = _without_feature_names(copy.deepcopy(fitted))
    twin.set_output(transform="default")
    return lambda matrix: np.asarray(twin.transform(matrix))


def _classifier(fitted: Any) -> tuple[Kernel, str]:
    """The classifier's kernel, or its own ``predict_proba`` column for class 1; and which of the two it is."""
    kernel = KERNELS.get(type(fitted))
    if kernel is not None:
        return kernel(fitted), getattr(kernel, "__name__", type(fitted).__name__).lstrip("_")
    twin = _without_feature_names(fitted)
    return (lambda matrix: twin.predict_proba(matrix)[:, 1]), OWN_PREDICT_PROBA


def _column_indices(columns: Any, names: list[str]) -> list[int]:
    if isinstance(columns, str):
        columns = [columns]
    indices = []
    for column in columns:
        if isinstance(column, str):
            indices.append(names.index(column))
        elif isinstance(column, int | np.integer):
            indices.append(int(column))
        else:
            raise UnsupportedPipeline(f"column selector {columns!r}")
    return indices


def _column_transformer_plan(transformer: ColumnTransformer) -> tuple[Kernel, list[str]]:
    """Replay a fitted ColumnTransformer on a NumPy matrix; returns the function and its output names."""
    names = [str(n) for n in getattr(transformer, "feature_names_in_", [])]
    if names != schema.FEATURES:
        raise UnsupportedPipeline(f"ColumnTransformer fitted on {names}, expected {schema.FEATURES}")
    parts: list[tuple[Kernel | None, list[int]]] = []
    out_names: list[str] = []
    for _name, fitted, columns in transformer.transformers_:
        if isinstance(fitted, str) and fitted == "drop":
            continue
        indices = _column_indices(columns, names)
        if not indices:
            continue
        selected = [names[i] for i in indices]
        if isinstance(fitted, str):
            if fitted != "passthrough":
                raise UnsupportedPipeline(f"ColumnTransformer step {fitted!r}")
            parts.append((None, indices))
            out_names.extend(selected)
            continue
        parts.append((_transformer(fitted), indices))
        out_names.extend(str(n) for n in fitted.get_feature_names_out(selected))
    expected = [str(n) for n in transformer.get_feature_names_out()]
    if out_names != expected:
        raise UnsupportedPipeline(f"replayed ColumnTransformer gives columns {out_names}, the fitted one {expected}")

    def apply(matrix: np.ndarray) -> np.ndarray:
        blocks = [matrix[:, indices] if step is None else step(matrix[:, indices]) for step, indices in parts]
        return np.hstack(blocks) if len(blocks) > 1 else blocks[0]

    return apply, out_names


class Plan(NamedTuple):
    """The NumPy replay of a fitted pipeline, and how it scores the classifier (for logs and tests)."""

    probabilities: Kernel
    #: The KERNELS entry that scores the classifier (``binary_logistic``, ``binary_forest``), or ``predict_proba``.
    classifier: str


class Features(NamedTuple):
    """The NumPy replay of a fitted pipeline's steps before its classifier, and the classifier."""

    #: ``schema.FEATURES`` matrix in, the classifier's input matrix out.
    transform: Kernel
    #: The names of the classifier's input columns, in order.
    names: list[str]
    classifier: Any


def classifier_features(model: Any) -> Features:
    """Replay the preprocessing of a fitted ``PriorCorrected(Pipeline([...]))``; UnsupportedPipeline if not that shape.

    Shared by the scorer and :mod:`ccfraud.explain`, which attributes the classifier's
    output to these columns.
    """
    if not isinstance(model, modeling.PriorCorrected) or not hasattr(model, "estimator_"):
        raise UnsupportedPipeline(f"model is a {type(model).__name__}, not a fitted PriorCorrected pipeline")
    steps = getattr(model.estimator_, "steps", None)
    if not steps:
        raise UnsupportedPipeline(f"{type(model.estimator_).__name__} has no pipeline steps")
    transforms: list[Kernel] = []
    names: list[str] = list(schema.FEATURES)
    for step_name, step in steps[:-1]:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue  # resamplers only act during fit
        if not isinstance(step, ColumnTransformer):
            raise UnsupportedPipeline(f"pipeline step {step_name!r} is a {type(step).__name__}")
        apply, names = _column_transformer_plan(step)
        transforms.append(apply)
    classifier = steps[-1][1]
    fitted_names = getattr(classifier, "feature_names_in_", None)
    if fitted_names is not None and [str(n) for n in fitted_names] != names:
        raise UnsupportedPipeline(f"classifier fitted on {list(fitted_names)}, the plan gives {names}")
    if list(getattr(classifier, "classes_", [])) != [0, 1]:
        raise UnsupportedPipeline(f"classifier classes {getattr(classifier, 'classes_', None)}, expected [0, 1]")

    def transform(matrix: np.ndarray) -> np.ndarray:
        for step in transforms:
            matrix = step(matrix)
        return matrix

    return Features(transform, names, classifier)


def build_plan(model: Any) -> Plan:
    """The NumPy replay of a fitted ``PriorCorrected(Pipeline([...]))``; UnsupportedPipeline if not that shape."""
    transform, _, classifier = classifier_features(model)
    predictor, classifier_path = _classifier(classifier)
    beta = float(model.beta_)

    def probabilities(matrix: np.ndarray) -> np.ndarray:
        p = predictor(transform(matrix))
        return modeling.correct_probability(p, beta) if beta != 1.0 else p

    return Plan(probabilities, classifier_path)


def probe_rows(rows: int = 32, seed: int = 0) -> np.ndarray:
    """Transaction-like rows (Time in two days, PCA-like components, positive amounts) for the parity check."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 2.0, size=(rows, len(schema.FEATURES)))
    matrix[:, schema.FEATURES.index(schema.TIME)] = rng.uniform(0, 172_792, rows)
    matrix[:, schema.FEATURES.index(schema.AMOUNT)] = rng.exponential(90.0, rows)
    return matrix


class Scorer:
    """Fraud probabilities for a float matrix whose columns are ``schema.FEATURES``, in order."""

    def __init__(self, model: Any):
        self.model = model
        self.path = PIPELINE
        #: On the NumPy path, how the classifier is scored (``Plan.classifier``); None on the pipeline path.
        self.classifier_path: str | None = None
        self.fallback_reason: str | None = None
        self._fast: Kernel | None = None
        try:
            plan = build_plan(model)
            self._check_parity(plan.probabilities)
        except Exception as exc:  # any failure means: use the pipeline itself, which is always right
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            log.warning("scoring with the pipeline path (slower): %s", self.fallback_reason)
        else:
            self._fast = plan.probabilities
            self.path = FAST
            self.classifier_path = plan.classifier

    def _check_parity(self, fast: Kernel) -> None:
        probe = probe_rows()
        for rows in (probe, probe[:1]):
            expected = self.pipeline_probabilities(rows)
            found = fast(rows)
            worst = float(np.max(np.abs(found - expected)))
            if not worst <= PARITY_TOLERANCE:
                raise UnsupportedPipeline(f"NumPy plan differs from the pipeline by {worst:.3g} on probe rows")

    def pipeline_probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """The training code path: ``modeling.fraud_probability`` on a DataFrame."""
        frame = pd.DataFrame(matrix, columns=schema.FEATURES)
        return np.asarray(modeling.fraud_probability(self.model, frame), dtype=np.float64)

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """P(fraud) per row of ``matrix`` (validated, finite, ``schema.FEATURES`` order)."""
        if self._fast is not None:
            return self._fast(matrix)
        return self.pipeline_probabilities(matrix)
