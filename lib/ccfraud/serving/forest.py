"""Score a fitted binary random forest with its own trees, minus the overhead of its ``predict_proba``.

``RandomForestClassifier.predict_proba`` checks its input and dispatches one joblib task
per tree on every call: about 10 ms for one row of a 200-tree forest, whose arithmetic
takes microseconds, and one core for a 10,000-row batch. This module scores the *same
fitted trees* in two ways, each where it is fastest:

* :class:`NodeTable`, for a few rows (a web request usually sends one): every split of
  every tree is decided for the row at once (one gather and one comparison over all
  internal nodes), then each tree's decided branches are followed from its root, one
  gather per level. About 60 us for one row of a 200-tree forest.
* :class:`TreeChunks`, for many rows: scikit-learn's own compiled walk (each tree's
  ``apply``, which runs without the GIL), the trees split into contiguous chunks that run
  in parallel threads, one per available CPU.

Both give the forest's ``predict_proba(X)[:, 1]`` to the bit: the same comparisons (the
feature cast to float32 against the float64 threshold) and the trees' leaf fractions
added one tree after another, so a row scores the same alone or in a batch.
:func:`forest_kernel` checks both against the forest's own method on rows that sit on
split thresholds before either is used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from ccfraud.serving import config as serving_config

#: Up to this many rows :class:`NodeTable` scores a request; above, :class:`TreeChunks`. Measured on a
#: 200-tree forest (2 CPUs): 16 rows 0.6 ms table vs 3.2 ms chunks, 32 rows 1.7 vs 2.7 ms, 64 rows 3.8 vs 3.3 ms.
NODE_TABLE_ROWS = 32
#: Rows per :class:`NodeTable` pass at most: its scratch table and temporaries grow with rows x nodes.
NODE_TABLE_SLICE = 32
#: Entries (8 bytes each) a kernel's per-call arrays may hold: a :class:`NodeTable` pass of a big forest gets
#: fewer rows, :class:`TreeChunks` scores big batches in blocks of rows. 4 Mi entries = 32 MiB.
SCRATCH_ENTRIES = 1 << 22

Kernel = Callable[[np.ndarray], np.ndarray]


class ForestMismatch(Exception):
    """A forest this module cannot score exactly as the forest's ``predict_proba`` does."""


def float32_floor(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 threshold.

    scikit-learn sends a row left when ``float32(x) <= threshold`` (float64). For a
    float32 ``x`` that is the same test as ``x <= float32_floor(threshold)``: no float32
    lies strictly between the two. So the whole comparison can be made in float32.
    """
    with np.errstate(over="ignore"):  # beyond float32's range: +/-inf, stepped down to the largest float32 below
        floor = thresholds.astype(np.float32)
    rounded_up = floor.astype(np.float64) > thresholds
    floor[rounded_up] = np.nextafter(floor[rounded_up], np.float32(-np.inf))
    return floor


def _binary_trees(forest: RandomForestClassifier | ExtraTreesClassifier) -> list[Any]:
    """The fitted trees' ``tree_`` objects, after checking the forest is one the kernels reproduce."""
    if forest.n_outputs_ != 1 or list(forest.classes_) != [0, 1]:
        raise ForestMismatch(f"{type(forest).__name__} with {forest.n_outputs_} outputs and classes "
                             f"{forest.classes_}, expected one output with classes [0, 1]")
    trees = [estimator.tree_ for estimator in forest.estimators_]
    for index, tree in enumerate(trees):
        distribution = tree.value[tree.children_left == -1, 0, :]
        # scikit-learn >= 1.4 stores each node's class fractions; older versions stored weighted counts
        # and normalised in predict_proba, which these kernels do not do.
        if not np.allclose(distribution.sum(axis=1), 1.0, rtol=0, atol=1e-9):
            raise ForestMismatch(f"tree {index} of the {type(forest).__name__} stores class counts, "
                                 "not fractions, in tree_.value")
    return trees


@dataclass(frozen=True)
class NodeTable:
    """Every node of every tree in one table: internal nodes first (ids ``0..n_internal-1``), then leaves.

    Internal node ``i`` splits on ``feature[i]`` at ``threshold[i]`` and goes to
    ``left[i]`` or ``right[i]`` (table ids). A leaf's next node is itself, so ``depth``
    steps from the roots end on each tree's leaf whatever that tree's own depth.
    """

    roots: np.ndarray  #: (n_trees,) table id of each tree's root
    feature: np.ndarray  #: (n_internal,) the feature column an internal node splits on
    threshold: np.ndarray  #: (n_internal,) float32 ``float32_floor`` of the tree's threshold: right when x > it
    left: np.ndarray  #: (n_internal,) table id of the left child
    right: np.ndarray  #: (n_internal,) table id of the right child
    fraud_fraction: np.ndarray  #: (n_nodes,) ``tree_.value[node, 0, 1]``; read at leaves only
    depth: int  #: the deepest tree's depth
    n_features: int
    #: Per-thread scratch space (see :meth:`_following`): each request thread walks its own copy.
    _scratch: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    @classmethod
    def from_forest(cls, forest: RandomForestClassifier | ExtraTreesClassifier) -> NodeTable:
        trees = _binary_trees(forest)
        is_leaf = np.concatenate([tree.children_left == -1 for tree in trees])
        sizes = np.array([tree.node_count for tree in trees], dtype=np.intp)
        tree_start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        # Table id of each (tree, node), in concatenation order: internal nodes first, then leaves.
        table_id = np.empty(len(is_leaf), dtype=np.intp)
        n_internal = int(np.count_nonzero(~is_leaf))
        table_id[~is_leaf] = np.arange(n_internal)
        table_id[is_leaf] = np.arange(n_internal, len(is_leaf))
        offsets = np.repeat(tree_start, sizes)
        internal = ~is_leaf
        left = np.concatenate([tree.children_left for tree in trees])[internal] + offsets[internal]
        right = np.concatenate([tree.children_right for tree in trees])[internal] + offsets[internal]
        fraction = np.empty(len(is_leaf))
        fraction[table_id] = np.concatenate([tree.value[:, 0, 1] for tree in trees])
        return cls(
            roots=table_id[tree_start],
            feature=np.concatenate([tree.feature for tree in trees])[internal].astype(np.intp),
            threshold=float32_floor(np.concatenate([tree.threshold for tree in trees])[internal]),
            left=table_id[left],
            right=table_id[right],
            fraud_fraction=fraction,
            depth=max(tree.max_depth for tree in trees),
            n_features=int(forest.n_features_in_),
        )

    @cached_property
    def rows_per_pass(self) -> int:
        """NODE_TABLE_SLICE, or fewer for a forest so big that the scratch table would pass SCRATCH_ENTRIES."""
        return max(1, min(NODE_TABLE_SLICE, SCRATCH_ENTRIES // len(self.fraud_fraction)))

    def probabilities(self, values: np.ndarray) -> np.ndarray:
        """``predict_proba(values)[:, 1]`` for a float32 matrix of finite values, ``rows_per_pass`` rows at a time."""
        step = self.rows_per_pass
        if len(values) <= step:
            return self._probabilities(values)
        return np.concatenate([self._probabilities(values[start : start + step])
                               for start in range(0, len(values), step)])

    @cached_property
    def _row_offsets(self) -> np.ndarray:
        """(rows_per_pass, 1): where row r's copy of the table starts in the flat per-row tables."""
        return (np.arange(self.rows_per_pass, dtype=np.intp) * len(self.fraud_fraction))[:, np.newaxis]

    @cached_property
    def _left_per_row(self) -> np.ndarray:
        """(rows_per_pass, n_internal): each internal node's left child in row r's copy of the table."""
        return self.left + self._row_offsets

    @cached_property
    def _right_minus_left(self) -> np.ndarray:
        return self.right - self.left

    @cached_property
    def _roots_per_row(self) -> np.ndarray:
        return self.roots + self._row_offsets

    def _following(self) -> np.ndarray:
        """This thread's (rows_per_pass, n_nodes) next-node table; the leaves' part (themselves) is filled once.

        Reused from call to call: allocating (and page-faulting) a fresh table (9 MB for
        the default model) for every request cost more than the walk itself.
        """
        following = getattr(self._scratch, "following", None)
        if following is None:
            n_internal, n_nodes = len(self.feature), len(self.fraud_fraction)
            following = np.empty((self.rows_per_pass, n_nodes), dtype=np.intp)
            following[:, n_internal:] = np.arange(n_internal, n_nodes) + self._row_offsets
            self._scratch.following = following
        return following

    def _probabilities(self, values: np.ndarray) -> np.ndarray:
        n_rows, n_internal = len(values), len(self.feature)
        go_right = values.take(self.feature, axis=1) > self.threshold  # (rows, internal nodes): every split decided
        # Row r's next node from node i is entry r * n_nodes + i of one flat table.
        following = self._following()[:n_rows]
        decided = following[:, :n_internal]
        np.multiply(go_right, self._right_minus_left, out=decided)
        decided += self._left_per_row[:n_rows]
        flat = following.reshape(-1)  # a view: the first n_rows rows of the buffer are contiguous
        nodes = self._roots_per_row[:n_rows]
        for _ in range(self.depth):
            nodes = flat.take(nodes)
        # predict_proba adds the trees' leaf distributions one tree after another, then divides by their number;
        # cumsum adds in that order (np.sum adds pairwise and could differ in the last bit).
        leaves = nodes - self._row_offsets[:n_rows]
        return np.cumsum(self.fraud_fraction.take(leaves), axis=1)[:, -1] / len(self.roots)


@dataclass(frozen=True)
class TreeChunks:
    """The fitted trees' own compiled ``apply`` over all rows, in ``threads`` contiguous chunks of trees.

    Each thread writes its trees' leaf fractions into their rows of one (trees, rows)
    array; the fractions are then added tree after tree, as ``predict_proba`` adds them,
    so the result has the same bits whatever the number of threads (and equals the
    :class:`NodeTable`'s). Rows go in blocks that keep that array within SCRATCH_ENTRIES.
    """

    estimators: tuple[Any, ...]  #: the forest's fitted trees, in order
    fraud_fractions: tuple[np.ndarray, ...]  #: per tree, ``tree_.value[:, 0, 1]`` (float64, contiguous)
    threads: int

    @classmethod
    def from_forest(cls, forest: RandomForestClassifier | ExtraTreesClassifier,
                    threads: int | None = None) -> TreeChunks:
        trees = _binary_trees(forest)
        threads = max(1, min(threads or serving_config.available_cpus(), len(trees)))
        return cls(tuple(forest.estimators_), tuple(np.ascontiguousarray(t.value[:, 0, 1]) for t in trees), threads)

    def _fill(self, values: np.ndarray, per_tree: np.ndarray, first: int, stop: int) -> None:
        """Leaf fractions of trees ``first..stop-1`` for every row; ``tree_.apply`` runs without the GIL."""
        for index in range(first, stop):
            leaves = self.estimators[index].tree_.apply(values)
            np.take(self.fraud_fractions[index], leaves, out=per_tree[index])

    def _block(self, values: np.ndarray) -> np.ndarray:
        n_trees = len(self.estimators)
        per_tree = np.empty((n_trees, len(values)))
        if self.threads == 1:
            self._fill(values, per_tree, 0, n_trees)
        else:
            bounds = np.linspace(0, n_trees, self.threads + 1).astype(int).tolist()
            # A pool per call: it costs well under a millisecond here, and a pool made before gunicorn forks
            # its workers would have no threads in them.
            with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="forest") as pool:
                list(pool.map(lambda first, stop: self._fill(values, per_tree, first, stop), bounds[:-1], bounds[1:]))
        total = per_tree[0].copy()
        for fractions in per_tree[1:]:
            total += fractions
        return total / n_trees

    def probabilities(self, values: np.ndarray) -> np.ndarray:
        """``predict_proba(values)[:, 1]`` for a C-contiguous float32 matrix of finite values."""
        rows = max(1, SCRATCH_ENTRIES // len(self.estimators))
        if len(values) <= rows:
            return self._block(values)
        return np.concatenate([self._block(values[start : start + rows]) for start in range(0, len(values), rows)])


def threshold_rows(forest: RandomForestClassifier | ExtraTreesClassifier) -> np.ndarray:
    """Inputs that put each tree's root feature on the float32 value nearest its threshold and on both neighbours.

    scikit-learn compares the feature cast to float32 with the float64 threshold, so the
    float32 values next to a threshold decide the branch; whichever way float32 rounds the
    threshold, these three include the largest float32 that goes left and the smallest
    that goes right. Every row reaches the root, so they test the comparison itself, which
    random rows almost never do. Other features are 0. The thresholds are read from the
    fitted trees, not from a kernel's own copy; a forest of single-leaf trees gets one row.
    """
    trees = [estimator.tree_ for estimator in forest.estimators_ if estimator.tree_.node_count > 1]
    if not trees:
        return np.zeros((1, int(forest.n_features_in_)))
    with np.errstate(over="ignore"):  # a threshold beyond float32's range: inf, whose neighbour is the largest
        nearest = np.array([tree.threshold[0] for tree in trees]).astype(np.float32)
    below, above = np.nextafter(nearest, np.float32(-np.inf)), np.nextafter(nearest, np.float32(np.inf))
    values = np.concatenate([below, nearest, above]).astype(np.float64)
    features = np.array([tree.feature[0] for tree in trees], dtype=np.intp)
    rows = np.zeros((len(values), int(forest.n_features_in_)))
    rows[np.arange(len(values)), np.tile(features, 3)] = values
    return rows


def forest_kernel(forest: RandomForestClassifier | ExtraTreesClassifier, own_predict_proba: Kernel,
                  *, tolerance: float, threads: int | None = None) -> Kernel:
    """The forest's ``predict_proba[:, 1]``: the node table for a few rows, tree chunks for many.

    Before it is returned, both must equal ``own_predict_proba`` (the forest's method) on
    :func:`threshold_rows`, to ``tolerance``. Rows that are not finite once cast to float32 (NaN,
    or beyond float32's range) are passed to ``own_predict_proba``, so they get exactly the
    forest's missing-value routing or its error.
    """
    table = NodeTable.from_forest(forest)
    chunks = TreeChunks.from_forest(forest, threads)
    rows = threshold_rows(forest)
    reference = own_predict_proba(rows)
    as_float32 = np.ascontiguousarray(rows, dtype=np.float32)
    for name, scored in (("node table", table.probabilities(as_float32)),
                         ("tree chunks", chunks.probabilities(as_float32))):
        worst = float(np.max(np.abs(scored - reference), initial=0.0))
        if not worst <= tolerance:
            raise ForestMismatch(f"{type(forest).__name__} scored by its {name} differs from its predict_proba "
                                 f"by {worst:.3g} on rows at split thresholds")

    def fraud_probability(matrix: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, and goes to the forest
            values = np.ascontiguousarray(matrix, dtype=np.float32)
        if not np.isfinite(values).all():
            return own_predict_proba(matrix)
        if len(values) <= NODE_TABLE_ROWS:
            return table.probabilities(values)
        return chunks.probabilities(values)

    return fraud_probability
