"""Reason codes: which features pushed a transaction's fraud score up or down, and by how much.

One :class:`Explainer` per model serves both the API (``POST /predict?explain=true``)
and the reports (:func:`global_importance`, :func:`reason_table`), so an analyst reads
the same reasons in the evaluation report as the service returns for the same row.

A contribution is an exact share of the classifier's own output, on that output's scale:

* logistic regression (method ``linear``): coefficient x the scaled value the model saw,
  on the **log-odds** of the served fraud probability; the base is the intercept plus
  log(beta), the prior correction, which adds a constant to the log-odds;
* random forest and extra trees (method ``tree_path``): each tree's path from its root
  to the row's leaf, split by split (Saabas): a split moves the expected fraud fraction
  from the node's to the child's, and the change is credited to the split's feature;
  averaged over the trees. On the forest's **probability** scale (its vote share, before
  the prior correction, which is monotone: signs and order are those of the served score);
* HistGradientBoosting (method ``tree_path``): the same walk on each tree's output, added
  over trees, on the **log-odds** of the served probability (base: the baseline, every
  tree's expected output and log(beta)).

On every model ``base + contributions.sum() = score`` on that scale, to rounding; the
:class:`Explainer` checks it against the model's own ``predict_proba`` when it is built.
A node's expected output is its training rows' (sample-weighted) mean output, as the
tree stores it (forest) or as its children's count-weighted mean (gradient boosting).

Why not shap's TreeExplainer: shap 0.51 (the last release for Python 3.11) took a median
39 ms for one row of the default 200-tree forest (the goal is 20 ms; the walk here takes
about 1 ms), 8.7 s to import, and its import warns with our matplotlib. Path attributions
are not Shapley values: they sum exactly to the score, but split credit by where a
feature appears on the path, so two correlated features may share credit differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from ccfraud import modeling, schema
from ccfraud.serving import forest, scoring

LOG_ODDS = "log_odds"
PROBABILITY = "probability"
SCALES = (LOG_ODDS, PROBABILITY)
LINEAR = "linear"
TREE_PATH = "tree_path"
METHODS = (LINEAR, TREE_PATH)
#: Reasons per explained row, by default: the features with the largest contributions either way.
TOP_REASONS = 5
#: Largest difference from the model's own probability that ``base + contributions`` may show on probe rows.
PARITY_TOLERANCE = 1e-9
#: Rows per pass of the tree walk: its temporaries are (rows, trees) arrays.
WALK_ROWS = 1024


class UnsupportedModel(Exception):
    """A model whose scores this module cannot attribute to features."""


@dataclass(frozen=True)
class Explanation:
    """Per-row, per-feature contributions (columns in ``schema.FEATURES`` order) and what they add up to."""

    values: np.ndarray  #: (rows, features) the input values
    contributions: np.ndarray  #: (rows, features) on ``scale``
    base: float  #: the score of a row with no contribution: the model's expected output
    scale: str  #: LOG_ODDS or PROBABILITY
    method: str  #: LINEAR or TREE_PATH

    @property
    def scores(self) -> np.ndarray:
        """``base + contributions`` summed per row: the model's score on ``scale``."""
        return self.base + self.contributions.sum(axis=1)

    def reasons(self, row: int, top: int = TOP_REASONS) -> list[dict[str, Any]]:
        """Row ``row``'s ``top`` features by absolute contribution (ties in feature order), largest first.

        Each is ``{"feature", "value", "contribution"}``: positive contributions pushed
        the score towards fraud, negative ones away from it. Features that contributed
        nothing (no split on them on the row's paths) are left out.
        """
        contributions = self.contributions[row]
        order = np.argsort(-np.abs(contributions), kind="stable")[:top]
        values = self.values[row]
        return [{"feature": schema.FEATURES[i], "value": float(values[i]), "contribution": float(contributions[i])}
                for i in order.tolist() if contributions[i] != 0.0]


@dataclass(frozen=True)
class TreePaths:
    """Every node of every tree in flat arrays, for walking rows from the roots and crediting each split.

    A leaf's children are itself with a threshold of +inf, so ``depth`` steps from the
    roots end on each tree's leaf and credit nothing once there.
    """

    roots: np.ndarray  #: (trees,) node id of each tree's root
    feature: np.ndarray  #: (nodes,) the split's column (0 at leaves)
    threshold: np.ndarray  #: (nodes,) right when the value is greater (float32 for scikit-learn trees)
    left: np.ndarray  #: (nodes,)
    right: np.ndarray  #: (nodes,)
    expectation: np.ndarray  #: (nodes,) the node's expected output
    depth: int
    weight: float  #: each tree's weight in the model's output: 1/trees for a forest's mean, 1 for boosting

    @property
    def base(self) -> float:
        """The model's expected output: the trees' root expectations, weighted."""
        return float(self.expectation[self.roots].sum() * self.weight)

    @classmethod
    def _from_arrays(cls, trees: list[dict[str, np.ndarray]], weight: float, float32: bool) -> TreePaths:
        sizes = [len(tree["left"]) for tree in trees]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        is_leaf = np.concatenate([tree["is_leaf"] for tree in trees])
        own = np.arange(len(is_leaf), dtype=np.intp)
        offsets = np.repeat(starts, sizes)
        left = np.where(is_leaf, own, np.concatenate([tree["left"] for tree in trees]) + offsets)
        right = np.where(is_leaf, own, np.concatenate([tree["right"] for tree in trees]) + offsets)
        threshold = np.concatenate([tree["threshold"] for tree in trees]).astype(np.float64)
        threshold[is_leaf] = np.inf
        if float32:  # scikit-learn compares float32(x) <= threshold: the same as x <= the float32 below it
            threshold = forest.float32_floor(threshold)
        feature = np.where(is_leaf, 0, np.concatenate([tree["feature"] for tree in trees])).astype(np.intp)
        return cls(roots=starts, feature=feature, threshold=threshold, left=left, right=right,
                   expectation=np.concatenate([tree["expectation"] for tree in trees]).astype(np.float64),
                   depth=max(int(tree["depth"]) for tree in trees), weight=weight)

    @classmethod
    def from_forest(cls, model: RandomForestClassifier | ExtraTreesClassifier) -> TreePaths:
        """A binary forest: each node's expectation is its stored fraud fraction (``tree_.value[:, 0, 1]``)."""
        trees = []
        for estimator in model.estimators_:
            tree = estimator.tree_
            trees.append({"left": tree.children_left, "right": tree.children_right, "is_leaf": tree.children_left == -1,
                          "feature": tree.feature, "threshold": tree.threshold, "expectation": tree.value[:, 0, 1],
                          "depth": tree.max_depth})
        return cls._from_arrays(trees, 1.0 / len(trees), float32=True)

    @classmethod
    def from_hist_gb(cls, model: HistGradientBoostingClassifier) -> TreePaths:
        """Binary gradient boosting on numeric features: leaves hold log-odds steps; inner nodes their mean by count."""
        if model.n_trees_per_iteration_ != 1:
            raise UnsupportedModel(f"HistGradientBoostingClassifier with {model.n_trees_per_iteration_} trees per "
                                   "iteration: only binary models are explained")
        if getattr(model, "is_categorical_", None) is not None and np.any(model.is_categorical_):
            raise UnsupportedModel("HistGradientBoostingClassifier with categorical features")
        trees = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            is_leaf = nodes["is_leaf"].astype(bool)
            expectation = nodes["value"].astype(np.float64)  # right at leaves; inner nodes are filled below
            count = nodes["count"].astype(np.float64)
            for node in range(len(nodes) - 1, -1, -1):  # children come after their parent
                if not is_leaf[node]:
                    left, right = nodes["left"][node], nodes["right"][node]
                    expectation[node] = ((count[left] * expectation[left] + count[right] * expectation[right])
                                         / (count[left] + count[right]))
            trees.append({"left": nodes["left"].astype(np.intp), "right": nodes["right"].astype(np.intp),
                          "is_leaf": is_leaf, "feature": nodes["feature_idx"], "threshold": nodes["num_threshold"],
                          "expectation": expectation, "depth": nodes["depth"].max()})
        return cls._from_arrays(trees, 1.0, float32=False)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, columns) contributions of each column of the classifier's input ``matrix`` (finite values)."""
        float32 = self.threshold.dtype == np.float32
        with np.errstate(over="ignore"):  # beyond float32's range: inf, on the side scikit-learn sends it
            values = np.ascontiguousarray(matrix, dtype=np.float32 if float32 else np.float64)
        rows, columns = values.shape
        out = np.empty((rows, columns))
        for start in range(0, rows, WALK_ROWS):
            block = values[start : start + WALK_ROWS]
            out[start : start + len(block)] = self._walk(block)
        return out

    def _walk(self, block: np.ndarray) -> np.ndarray:
        rows, columns = block.shape
        flat = block.reshape(-1)
        row_start = (np.arange(rows, dtype=np.intp) * columns)[:, np.newaxis]
        nodes = np.broadcast_to(self.roots, (rows, len(self.roots)))
        total = np.zeros(rows * columns)
        for _ in range(self.depth):
            cell = row_start + self.feature.take(nodes)  # where each node's split value is in the flat block
            go_right = flat.take(cell) > self.threshold.take(nodes)
            following = np.where(go_right, self.right.take(nodes), self.left.take(nodes))
            change = self.expectation.take(following) - self.expectation.take(nodes)
            total += np.bincount(cell.reshape(-1), weights=change.reshape(-1), minlength=rows * columns)
            nodes = following
        return total.reshape(rows, columns) * self.weight


class Explainer:
    """Contributions for a fitted ``PriorCorrected`` pipeline; rows are ``schema.FEATURES`` matrices.

    Built once per model (the API builds it when it loads the model); raises
    :class:`UnsupportedModel` for a model it cannot explain exactly.
    """

    def __init__(self, model: Any):
        try:
            features = scoring.classifier_features(model)
        except scoring.UnsupportedPipeline as error:
            raise UnsupportedModel(str(error)) from None
        if sorted(features.names) != sorted(schema.FEATURES):
            raise UnsupportedModel(f"the classifier's inputs {features.names} are not the features, one column each")
        self.model = model
        self._transform = features.transform
        #: Where each of the classifier's input columns goes in ``schema.FEATURES`` order.
        self._columns = np.array([schema.FEATURES.index(name) for name in features.names], dtype=np.intp)
        self.beta = float(model.beta_)
        classifier = features.classifier
        kind = type(classifier)
        if kind is LogisticRegression:
            if classifier.coef_.shape[0] != 1:
                raise UnsupportedModel(f"LogisticRegression with coef_ of shape {classifier.coef_.shape}")
            coefficients = classifier.coef_[0].astype(np.float64)
            self._attribute = lambda z: z * coefficients
            self.base = float(classifier.intercept_[0]) + float(np.log(self.beta))
            self.scale, self.method = LOG_ODDS, LINEAR
        elif kind in (RandomForestClassifier, ExtraTreesClassifier):
            paths = TreePaths.from_forest(classifier)
            self._attribute = paths.contributions
            self.base = paths.base
            self.scale, self.method = PROBABILITY, TREE_PATH
        elif kind is HistGradientBoostingClassifier:
            paths = TreePaths.from_hist_gb(classifier)
            self._attribute = paths.contributions
            self.base = float(np.ravel(classifier._baseline_prediction)[0]) + paths.base + float(np.log(self.beta))
            self.scale, self.method = LOG_ODDS, TREE_PATH
        else:
            raise UnsupportedModel(f"no reason codes for a {kind.__name__} classifier")
        self._check()

    def explain(self, matrix: np.ndarray) -> Explanation:
        """Contributions of each feature to each row's score (``matrix``: validated, ``schema.FEATURES`` order)."""
        matrix = np.asarray(matrix, dtype=np.float64)
        contributions = np.empty(matrix.shape)
        contributions[:, self._columns] = self._attribute(self._transform(matrix))
        return Explanation(matrix, contributions, self.base, self.scale, self.method)

    def explain_frame(self, frame: pd.DataFrame) -> Explanation:
        """:meth:`explain` for a DataFrame with the feature columns (by name; others ignored)."""
        return self.explain(frame[schema.FEATURES].to_numpy(dtype=np.float64))

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """The served fraud probability for scores on this explainer's scale."""
        if self.scale == LOG_ODDS:
            return expit(scores)
        return modeling.correct_probability(scores, self.beta) if self.beta != 1.0 else np.asarray(scores)

    def _check(self) -> None:
        """base + contributions must give the model's own probability on probe rows, else UnsupportedModel."""
        probe = scoring.probe_rows()
        expected = modeling.fraud_probability(self.model, pd.DataFrame(probe, columns=schema.FEATURES))
        found = self.probabilities(self.explain(probe).scores)
        worst = float(np.max(np.abs(found - expected)))
        if not worst <= PARITY_TOLERANCE:
            raise UnsupportedModel(f"contributions add up to probabilities that differ from the model's by "
                                   f"{worst:.3g} on probe rows")


def explainer_for(model: Any) -> Explainer:
    """``model`` itself if it is an Explainer, else a new one for it."""
    return model if isinstance(model, Explainer) else Explainer(model)


def global_importance(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Mean absolute contribution per feature over ``frame``'s rows, largest first.

    Columns: ``feature``, ``mean_abs_contribution`` and ``mean_contribution`` (its sign:
    whether the feature mostly raised or lowered the scores). ``attrs["scale"]`` and
    ``attrs["method"]`` say what the numbers are. ``model`` is a fitted model or an
    :class:`Explainer`. The tree walk takes about 0.2 ms per row of the default forest:
    pass a sample of a large split.
    """
    if len(frame) == 0:
        raise ValueError("global importance needs at least one row; the frame is empty")
    explanation = explainer_for(model).explain_frame(frame)
    table = pd.DataFrame({
        "feature": schema.FEATURES,
        "mean_abs_contribution": np.abs(explanation.contributions).mean(axis=0),
        "mean_contribution": explanation.contributions.mean(axis=0),
    }).sort_values("mean_abs_contribution", ascending=False, kind="stable").reset_index(drop=True)
    table.attrs.update(scale=explanation.scale, method=explanation.method, rows=len(frame))
    return table


def describe_reason(reason: dict[str, Any]) -> str:
    """One reason as an analyst reads it: ``V14 = -8.21 (+0.312)``."""
    return f"{reason['feature']} = {reason['value']:.4g} ({reason['contribution']:+.3g})"


def reason_table(model: Any, frame: pd.DataFrame, scores: np.ndarray, top: int = 10,
                 reasons: int = TOP_REASONS) -> pd.DataFrame:
    """The ``top`` highest-scoring rows of ``frame`` (the alerts an analyst sees first) with their reason codes.

    ``scores`` are the rows' fraud probabilities, in ``frame``'s order (e.g.
    ``modeling.fraud_probability``). One row per alert, highest score first: ``rank``,
    ``row`` (the frame's index label), ``fraud_probability``, ``Amount``, ``Class`` when the
    frame has it, then ``reason_1`` ... ``reason_<reasons>``, each ``feature = value
    (contribution)``, largest contribution first; ``attrs["scale"]`` says the contributions'
    scale.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(frame),):
        raise ValueError(f"scores: expected one per row of the frame ({len(frame)}), found shape {scores.shape}")
    if top < 1:
        raise ValueError(f"top must be at least 1, found {top}")
    chosen = np.argsort(-scores, kind="stable")[:top]
    alerts = frame.iloc[chosen]
    explanation = explainer_for(model).explain_frame(alerts)
    table = pd.DataFrame({"rank": np.arange(1, len(alerts) + 1), "row": alerts.index,
                          "fraud_probability": scores[chosen], schema.AMOUNT: alerts[schema.AMOUNT].to_numpy()})
    if schema.TARGET in alerts.columns:
        table[schema.TARGET] = alerts[schema.TARGET].to_numpy()
    texts = [[describe_reason(r) for r in explanation.reasons(i, reasons)] for i in range(len(alerts))]
    for position in range(reasons):
        table[f"reason_{position + 1}"] = [row[position] if position < len(row) else "" for row in texts]
    table.attrs.update(scale=explanation.scale, method=explanation.method)
    return table
