"""Candidate models, leakage-free imbalanced-learning pipelines and the AUPRC search.

Every fitted step (scaler, resampler, classifier) lives inside one
``imblearn.pipeline.Pipeline``, so cross-validation refits all of it per fold and
resampling never touches a validation fold or the test split.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from imblearn.under_sampling import NearMiss, RandomUnderSampler
from imblearn.under_sampling.base import BaseUnderSampler
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, TimeSeriesSplit
from sklearn.utils.validation import check_is_fitted

from ccfraud import schema
from ccfraud.preprocess import SPLIT_STRATEGIES, make_preprocessor
from ccfraud.progress import heartbeat

MODELS = ("logreg", "random_forest", "hist_gb")


def one_thread():
    """A context in which native thread pools (OpenMP: HistGradientBoosting; BLAS) use one thread.

    Fits run side by side instead (the search's threads, one per core): on the shared 2-core machine at a
    load of 13, OpenMP's default of a thread per core made a small search take 130 s of wall
    time (48 s of CPU, mostly spinning) instead of 8 s.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)
SAMPLERS = ("none", "class_weight", "undersample", "smote", "nearmiss")


def make_classifier(model: str, seed: int = 0, **params: Any) -> BaseEstimator:
    """An unfitted classifier by name; ``params`` are its hyper-parameters."""
    if model == "logreg":
        defaults = {"C": 1.0, "max_iter": 1000, "solver": "lbfgs"}
        return LogisticRegression(**{**defaults, **params, "random_state": seed})
    if model == "random_forest":
        defaults = {"n_estimators": 200, "min_samples_leaf": 1, "n_jobs": 1}
        return RandomForestClassifier(**{**defaults, **params, "random_state": seed})
    if model == "hist_gb":
        return HistGradientBoostingClassifier(**{**params, "random_state": seed})
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def make_sampler(name: str, ratio: float = 1.0, seed: int = 0) -> BaseEstimator | None:
    """The resampling step by name; ``ratio`` is frauds per legitimate row after resampling.

    ``none`` and ``class_weight`` resample nothing (class weights are set on the classifier).
    """
    if name in ("none", "class_weight"):
        return None
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"sampling_ratio must be in (0, 1], got {ratio!r}")
    if name == "undersample":
        return RandomUnderSampler(sampling_strategy=ratio, random_state=seed)
    if name == "nearmiss":
        return NearMiss(sampling_strategy=ratio, version=1)
    if name == "smote":
        return SMOTE(sampling_strategy=ratio, random_state=seed)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")


def make_pipeline(model: str, sampler: str = "none", *, sampling_ratio: float = 1.0, seed: int = 0,
                  legit_fraction: float = 1.0, **params: Any) -> PriorCorrected:
    """preprocess -> (resample) -> classifier, wrapped to undo the prior shift resampling causes.

    ``legit_fraction``: the share of legitimate rows the training rows kept when they were
    drawn from a larger split (every fraud kept); 1 when the model sees the whole split.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if sampler == "class_weight":
        params = {**params, "class_weight": "balanced"}
    # The "sample" step always exists ("passthrough" when nothing is resampled) so a search
    # can swap samplers in and out of the same pipeline.
    steps = [
        ("preprocess", make_preprocessor()),
        ("sample", make_sampler(sampler, sampling_ratio, seed) or "passthrough"),
        ("model", make_classifier(model, seed, **params)),
    ]
    return PriorCorrected(Pipeline(steps), legit_fraction=legit_fraction)


def _class_weights(classifier: BaseEstimator, n_legit: int, n_fraud: int) -> tuple[float, float]:
    weight = getattr(classifier, "class_weight", None)
    if weight is None:
        return 1.0, 1.0
    if weight == "balanced":
        total = n_legit + n_fraud
        return total / (2 * n_legit), total / (2 * n_fraud)
    return float(weight.get(0, 1.0)), float(weight.get(1, 1.0))


def prior_shift_beta(pipeline: Pipeline, n_legit: int, n_fraud: int) -> float:
    """How much resampling/class weights shrank legitimate rows relative to frauds (beta <= 1).

    This is the beta of Dal Pozzolo et al. (2015): the effective fraction of
    legitimate rows kept. Undersampling keeps legit_after of n_legit rows; SMOTE and
    class weights shift the prior the same way, expressed as an equivalent beta.
    """
    legit_after, fraud_after = float(n_legit), float(n_fraud)
    sampler = pipeline.named_steps.get("sample")
    if hasattr(sampler, "sampling_strategy_"):
        strategy = sampler.sampling_strategy_
        if isinstance(sampler, BaseUnderSampler):
            legit_after = float(strategy.get(0, n_legit))
            fraud_after = float(strategy.get(1, n_fraud))
        else:
            legit_after += float(strategy.get(0, 0))
            fraud_after += float(strategy.get(1, 0))
    w_legit, w_fraud = _class_weights(pipeline.named_steps["model"], n_legit, n_fraud)
    return (legit_after * w_legit / (fraud_after * w_fraud)) / (n_legit / n_fraud)


def correct_probability(p_sampled: np.ndarray, beta: float) -> np.ndarray:
    """Dal Pozzolo et al. (2015): p = beta*p_s / ((beta - 1)*p_s + 1)."""
    p_sampled = np.asarray(p_sampled, dtype=float)
    # Clipped: at p_s = 1 rounding can land a hair above 1.
    return np.clip(beta * p_sampled / ((beta - 1.0) * p_sampled + 1.0), 0.0, 1.0)


@contextlib.contextmanager
def _forest_jobs(pipeline: Pipeline, jobs: int | None):
    """Let a forest in ``pipeline`` build its trees on ``jobs`` threads (None: all cores) for one fit.

    Its ``n_jobs`` is put back afterwards, so the fitted model (and its saved file) is what a
    one-thread fit gives.
    """
    model = pipeline.named_steps.get("model")
    if jobs == 1 or not isinstance(model, RandomForestClassifier):
        yield
        return
    configured = model.n_jobs
    model.n_jobs = -1 if jobs is None else jobs
    try:
        yield
    finally:
        model.n_jobs = configured


class PriorCorrected(ClassifierMixin, BaseEstimator):
    """A pipeline whose fraud probabilities are corrected for the resampling it trained on.

    Ranking (and so AUPRC) is unchanged; probabilities become estimates of the real
    fraud rate, which the threshold, the Brier score and a fraud analyst rely on.

    Two samplings shift the prior, and their betas multiply (each scales the odds): the
    pipeline's own resampler or class weights, and ``legit_fraction``, the share of
    legitimate rows kept when the training rows were drawn from a split too large to
    train on whole (every fraud kept, see ``training.draw_training_sample``).
    """

    def __init__(self, estimator: Pipeline, legit_fraction: float = 1.0):
        self.estimator = estimator
        self.legit_fraction = legit_fraction

    def fit(self, X: pd.DataFrame, y, *, forest_jobs: int | None = 1) -> PriorCorrected:
        """Fit the pipeline and its prior correction.

        Native thread pools (OpenMP, BLAS) get one thread: fits run side by side, one per core, and
        OpenMP's spinning threads, oversubscribed, made a test's refit take 65 s instead of 4 s.
        ``forest_jobs``: the threads a forest builds its trees on (None: all cores), for a fit
        that runs alone (the final model); each tree is one large task, so no thread spins. The
        fitted forest is the same either way: it draws every tree's seed before building any.
        """
        if not 0.0 < self.legit_fraction <= 1.0:
            raise ValueError(f"legit_fraction must be in (0, 1], got {self.legit_fraction!r}")
        y = np.asarray(y, dtype=int)
        n_fraud = int(y.sum())
        n_legit = len(y) - n_fraud
        if n_fraud == 0 or n_legit == 0:
            raise ValueError(f"training needs both classes, got {n_legit} legitimate and {n_fraud} fraud rows")
        estimator = clone(self.estimator)
        with one_thread(), _forest_jobs(estimator, forest_jobs):
            self.estimator_ = estimator.fit(X[schema.FEATURES], y)
        self.beta_ = float(prior_shift_beta(self.estimator_, n_legit, n_fraud)) * float(self.legit_fraction)
        self.classes_ = np.array([0, 1])
        self.feature_names_in_ = np.array(schema.FEATURES, dtype=object)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        p = self.estimator_.predict_proba(X[schema.FEATURES])[:, 1]
        if self.beta_ != 1.0:
            p = correct_probability(p, self.beta_)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def cv_splitter(split_strategy: str, folds: int, seed: int = 0):
    """Folds that respect how the test split was made: forward-chaining in time for ``time``."""
    if folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {folds}")
    if split_strategy not in SPLIT_STRATEGIES:
        raise ValueError(f"split strategy must be one of {SPLIT_STRATEGIES}, got {split_strategy!r}")
    if split_strategy == "time":
        return TimeSeriesSplit(n_splits=folds)
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


def _sampled_average_precision(estimator: BaseEstimator, X: pd.DataFrame, y, legit_weight: float) -> float:
    y = np.asarray(y, dtype=int)
    scores = estimator.predict_proba(X)[:, 1]
    return float(average_precision_score(y, scores, sample_weight=np.where(y == 1, 1.0, legit_weight)))


def auprc_scoring(legit_fraction: float = 1.0) -> str | Callable[..., float]:
    """The CV scorer: average precision, with legitimate rows weighted 1/``legit_fraction`` when sampled.

    A fold of a training sample has more frauds per legitimate row than the data; the
    weight restores the real mix, so the CV AUPRC estimates what the full data would give
    (and stays comparable with the test AUPRC) instead of flattering every candidate.
    """
    if legit_fraction == 1.0:
        return "average_precision"
    if not 0.0 < legit_fraction < 1.0:
        raise ValueError(f"legit_fraction must be in (0, 1], got {legit_fraction!r}")
    return functools.partial(_sampled_average_precision, legit_weight=1.0 / legit_fraction)


def _grid(spec: dict[str, Any], seed: int) -> list[dict[str, list]]:
    """Turn a params.yaml candidate spec into GridSearchCV grids (one per sampler choice)."""
    spec = dict(spec)
    samplers = spec.pop("sampler", ["none"])
    ratios = spec.pop("sampling_ratio", [1.0])
    samplers = samplers if isinstance(samplers, list) else [samplers]
    ratios = ratios if isinstance(ratios, list) else [ratios]
    model_grid = {f"estimator__model__{k}": (v if isinstance(v, list) else [v]) for k, v in spec.items()}
    grids = []
    for sampler in samplers:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        grid = dict(model_grid)
        grid["estimator__model__class_weight"] = ["balanced" if sampler == "class_weight" else None]
        resamplers = [make_sampler(sampler, r, seed) for r in ratios]
        grid["estimator__sample"] = [r for r in resamplers if r is not None] or ["passthrough"]
        grids.append(grid)
    return grids


@dataclass
class SearchResult:
    """One candidate's search: the refitted best estimator and how it scored in CV."""

    name: str
    model: str
    best_estimator: PriorCorrected
    best_params: dict[str, Any]
    cv_auprc_mean: float
    cv_auprc_std: float
    fit_seconds: float
    #: Its fits' seconds added up (they run side by side with the other candidates' fits).
    search_seconds: float
    n_configs: int
    table: pd.DataFrame = field(repr=False)
    #: AUPRC of ``best_estimator`` on the validation split, once :func:`ccfraud.training.select_model` scored it.
    valid_auprc: float | None = None

    def describe_params(self) -> dict[str, Any]:
        """Best parameters with the sampler named, for tables and metadata."""
        return short_params(self.best_params)


def short_params(params: dict[str, Any]) -> dict[str, Any]:
    """Search parameters as a reader wants them: ``C`` not ``estimator__model__C``, samplers by name."""
    out = {}
    for key, value in params.items():
        short = key.replace("estimator__model__", "").replace("estimator__", "")
        if hasattr(value, "fit_resample"):
            value = f"{type(value).__name__}({value.sampling_strategy})"
        out[short] = value
    return out


#: The yardstick: HistGradientBoosting with scikit-learn's defaults. It is always one of the candidates, so the
#: search cannot choose a model that its own yardstick beats on the split the choice is made on.
REFERENCE = "hist_gb_untuned"
REFERENCE_SPEC: dict[str, Any] = {"model": "hist_gb", "sampler": ["none"]}
#: Seconds between two progress lines of one candidate's search (the last fit always gets one).
PROGRESS_EVERY = 2.0


def with_reference(candidates: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``candidates`` plus the untuned reference (:data:`REFERENCE`), unless one of them already is it."""
    if REFERENCE in candidates:
        if (candidates[REFERENCE] or {}) != REFERENCE_SPEC:
            raise ValueError(f"candidate name {REFERENCE!r} is reserved for the untuned reference "
                             f"{REFERENCE_SPEC}, found {candidates[REFERENCE]}")
        return dict(candidates)
    return {**candidates, REFERENCE: dict(REFERENCE_SPEC)}


def reference_pipeline(seed: int = 0, legit_fraction: float = 1.0) -> PriorCorrected:
    """The yardstick's pipeline (:data:`REFERENCE_SPEC`, unfitted), as the search builds its candidate.

    The comparison's yardstick is made here too: when the search chooses the yardstick, that fit
    is the model (:func:`ccfraud.training.select_model`), so both must be the same configuration.
    """
    grid = _Grid.of(REFERENCE, REFERENCE_SPEC, 1, seed, legit_fraction)
    [config] = grid.configs
    return clone(grid.base).set_params(**config)


def _fit_and_score(base: BaseEstimator, params: dict[str, Any], X: pd.DataFrame, y: np.ndarray, train: np.ndarray,
                   test: np.ndarray, scorer: Callable[..., float]) -> tuple[float, float]:
    """Fit one configuration on one fold's training rows and score it on the fold's held-out rows; (score, seconds)."""
    started = time.perf_counter()
    estimator = clone(base).set_params(**params).fit(X.iloc[train], y[train])
    seconds = time.perf_counter() - started
    with one_thread():  # OpenMP's limit is per calling thread: this task's scoring sets its own
        score = float(scorer(estimator, X.iloc[test], y[test]))
    return score, seconds


def _configurations(name: str, spec: dict[str, Any], seed: int) -> tuple[str, list[dict[str, Any]]]:
    """A params.yaml candidate spec as (classifier name, every configuration of its grid)."""
    from sklearn.model_selection import ParameterGrid

    spec = dict(spec or {})
    model = spec.pop("model", name)
    return model, list(ParameterGrid(_grid(spec, seed)))


@dataclass
class _Grid:
    """One candidate's grid while it is searched: what to fit, and the scores of the fits done so far."""

    name: str
    model: str
    base: PriorCorrected
    configs: list[dict[str, Any]]
    scores: np.ndarray
    fit_times: np.ndarray
    recorded: int = 0

    @classmethod
    def of(cls, name: str, spec: dict[str, Any], folds: int, seed: int, legit_fraction: float) -> _Grid:
        model, configs = _configurations(name, spec, seed)
        if not configs:
            raise ValueError(f"candidate {name}: its grid has no configuration to try (an empty list in {spec})")
        base = make_pipeline(model, "none", seed=seed, legit_fraction=legit_fraction)
        return cls(name, model, base, configs, np.full((len(configs), folds), np.nan), np.zeros((len(configs), folds)))

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores.mean(axis=1)))

    def record(self, index: int, fold: int, score: float, seconds: float) -> bool:
        """Keep one fit's score and time; whether the grid is now done (every configuration on every fold)."""
        self.scores[index, fold], self.fit_times[index, fold] = score, seconds
        self.recorded += 1
        return self.recorded == self.scores.size

    def refit_best(self, X: pd.DataFrame, y: np.ndarray) -> PriorCorrected:
        return clone(self.base).set_params(**self.configs[self.best]).fit(X, y)

    def result(self, best_estimator: PriorCorrected) -> SearchResult:
        """The finished grid as the search reports it: its best configuration, refitted, and every row."""
        means, stds = self.scores.mean(axis=1), self.scores.std(axis=1)
        table = pd.DataFrame({"candidate": self.name, "params": [short_params(p) for p in self.configs],
                              "cv_auprc_mean": means, "cv_auprc_std": stds,
                              "fit_seconds": self.fit_times.mean(axis=1)})
        return SearchResult(
            name=self.name,
            model=self.model,
            best_estimator=best_estimator,
            best_params=self.configs[self.best],
            cv_auprc_mean=float(means[self.best]),
            cv_auprc_std=float(stds[self.best]),
            fit_seconds=float(self.fit_times[self.best].mean()),
            search_seconds=float(self.fit_times.sum()),
            n_configs=len(self.configs),
            table=table,
        )

    def searched_line(self, number: int, of: int, elapsed: float, rows: int) -> str:
        """The progress line of a finished grid."""
        plural = "s" if len(self.configs) > 1 else ""
        return (f"candidate {number + 1} of {of}: {self.name} searched, CV AUPRC "
                f"{self.scores.mean(axis=1)[self.best]:.4f} ({len(self.configs)} configuration{plural}); "
                f"{elapsed:.0f} s; refitting its best on all {rows:,} search rows")


def check_sampling_ratios(candidates: dict[str, dict[str, Any]], labels: dict[str, Any], *,
                          legit_fraction: float = 1.0, sample_rows: int | None = None) -> None:
    """Refuse a resampling ratio that rows the candidates will be fitted on already exceed, before any fit.

    ``labels`` maps a description of each set of rows (the search's rows, a fold's training
    rows, the final model's rows) to their labels. A resampler can only move the
    fraud-to-legitimate ratio up to its ``sampling_ratio``; rows already past it make
    imbalanced-learn fail mid-search. That happens when a training sample keeps few legitimate
    rows per fraud (``train.sample_rows`` small for the data's frauds: the 100x run's forest
    failed after the sample was drawn), so the message names both knobs and, from ``sample_rows``
    (the sample's size now), the size that would bring the offending rows under the ratio.
    """
    for name, spec in candidates.items():
        for config in _configurations(name, spec, 0)[1]:
            sampler = config.get("estimator__sample")
            ratio = getattr(sampler, "sampling_strategy", None)
            if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool):
                continue  # "auto", a dict: imbalanced-learn's own forms, not ours
            for where, y in labels.items():
                y = np.asarray(y, dtype=int)
                frauds = int(y.sum())
                legits = len(y) - frauds
                if legits and frauds / legits > ratio:
                    # Legitimate rows dominate a sample: scaling it by how far these rows are past the ratio
                    # (with a margin for the folds) brings them under it.
                    needed = (sample_rows or len(y)) * (frauds / legits) / ratio * 1.2
                    sample = (f" (drawn from a larger split: raise train.sample_rows to at least about {needed:,.0f},"
                              f" every fraud plus {1 / ratio:g} legitimate rows per fraud and a margin for the folds)"
                              if legit_fraction < 1.0 else "")
                    raise ValueError(
                        f"candidate {name}: sampling_ratio {ratio:g} (frauds per legitimate row after "
                        f"{type(sampler).__name__}) is below the {frauds / legits:.4g} that {where} already have "
                        f"({frauds:,} frauds, {legits:,} legitimate rows); raise its sampling_ratio or give it more "
                        f"legitimate rows{sample}")


def _search_status(fits_done: int, fits: int, refits_done: int, candidates: int, seconds: float) -> str:
    """The search's heartbeat line: both counts, since a finished grid's refit runs before the next fold."""
    return (f"  still searching: {fits_done} of {fits} fits and {refits_done} of {candidates} refits done, "
            f"{seconds:.0f} s")


def _run_in_turn(pool: Executor, workers: int,
                 next_task: Callable[[], tuple[Callable[[], Any], Callable[[Any], None]] | None]) -> None:
    """Run tasks ``workers`` at a time on ``pool``, each chosen by ``next_task`` when a thread frees up.

    Tasks are handed out one per free thread, not queued all at once, so ``next_task`` decides at
    each moment what comes next (the search: a finished grid's refit before the next fold). Each
    outcome goes to the task's handler on the calling thread. Tasks never wait on each other, so a
    pool shared with other work cannot deadlock. If a task fails, the tasks not yet started are
    cancelled and the error is raised; the ones already running finish on the pool.
    """
    running: dict[Future, Callable[[Any], None]] = {}
    try:
        while True:
            while len(running) < workers and (task := next_task()) is not None:
                work, handle = task
                running[pool.submit(work)] = handle
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)(future.result())
    except BaseException:
        for future in running:
            future.cancel()
        raise


def search_all(
    candidates: dict[str, dict[str, Any]],
    X: pd.DataFrame,
    y,
    *,
    split_strategy: str = "time",
    folds: int = 3,
    seed: int = 0,
    n_jobs: int = 1,
    pool: Executor | None = None,
    legit_fraction: float = 1.0,
    progress: Callable[[str], None] | None = None,
    every: float = PROGRESS_EVERY,
) -> list[SearchResult]:
    """Grid-search every candidate by cross-validated average precision on the train split only; best first.

    Per candidate, what ``GridSearchCV`` does (every configuration on every fold, the best by mean
    AUPRC refitted on all of ``X``), but every candidate's fits share one pool of threads, so the
    cores stay busy from the first fit to the last (one ``GridSearchCV`` per candidate waits for
    its slowest fold and refits alone: the default train stage's search took 33.6 s that way and
    26.4 s pooled on the idle machine, the same models to the bit). Threads, not processes: the trees, the boosting
    and the linear algebra release the GIL, and no worker process has to start, import and
    receive the data (91 s with worker processes, 59 s with threads, at load 4).
    ``progress`` receives a line (candidate, configuration i of n, fold, fits done, elapsed) as
    fits finish, at most every ``every`` seconds and always for the last, and one line per
    candidate once its grid is done, when its best configuration's refit is the next task the
    search hands out. The scores and models do not depend on the number of threads. ``legit_fraction`` < 1:
    ``X`` is a sample of the train split with that share of its legitimate rows (every fraud); the
    scorer and the prior correction account for it. ``pool``: the caller's executor with ``n_jobs``
    threads, which its other work shares (queued before the search's, it runs first); None: one of
    the search's own. On a failure the caller's pool may still be finishing a fit: its owner's
    shutdown waits for it.
    """
    from joblib import effective_n_jobs
    from sklearn.metrics import get_scorer

    if not candidates:
        raise ValueError("no candidates to train: params.yaml train.candidates is empty")
    grids = [_Grid.of(name, spec or {}, folds, seed, legit_fraction) for name, spec in candidates.items()]
    X = X[schema.FEATURES]
    y = np.asarray(y, dtype=int)
    scoring = auprc_scoring(legit_fraction)
    scorer = get_scorer(scoring) if isinstance(scoring, str) else scoring
    fold_rows = list(cv_splitter(split_strategy, folds, seed).split(X, y))
    check_sampling_ratios(candidates, {"the search's rows": y, **{f"fold {i + 1}'s training rows": y[train]
                                                                  for i, (train, _) in enumerate(fold_rows)}},
                          legit_fraction=legit_fraction, sample_rows=len(y))
    fits = deque((number, index, fold) for number, grid in enumerate(grids) for index in range(len(grid.configs))
                 for fold in range(len(fold_rows)))
    total = len(fits)
    refits: deque[int] = deque()  # candidates whose grid is done: their best configuration is refitted next
    fitted: dict[int, PriorCorrected] = {}
    started = last_line = time.perf_counter()
    finished = [0]

    def status() -> str:
        return _search_status(finished[0], total, len(fitted), len(grids), time.perf_counter() - started)

    def fit_done(number: int, index: int, fold: int, outcome: tuple[float, float]) -> None:
        nonlocal last_line
        finished[0] += 1
        grid, now = grids[number], time.perf_counter()
        done = grid.record(index, fold, *outcome)
        if progress and (now - last_line >= every or finished[0] == total):
            last_line = now
            progress(f"  {grid.name}: configuration {index + 1} of {len(grid.configs)}, fold {fold + 1} of "
                     f"{len(fold_rows)} (AUPRC {outcome[0]:.4f}); {finished[0]} of {total} fits, {now - started:.0f} s")
        if done:
            refits.append(number)
            if progress:
                progress(grid.searched_line(number, len(grids), now - started, len(X)))

    def next_task() -> tuple[Callable[[], Any], Callable[[Any], None]] | None:
        """The next task and what to do with its outcome: a finished grid's refit first, else the next fold."""
        if refits:
            number = refits.popleft()
            return functools.partial(grids[number].refit_best, X, y), functools.partial(fitted.__setitem__, number)
        if fits:
            number, index, fold = fits.popleft()
            grid, (train, test) = grids[number], fold_rows[fold]
            return (functools.partial(_fit_and_score, grid.base, grid.configs[index], X, y, train, test, scorer),
                    functools.partial(fit_done, number, index, fold))
        return None

    # One native thread per fit, fits side by side instead: OpenMP's limit is per calling thread, so each
    # task sets its own (PriorCorrected.fit, the scoring in _fit_and_score); this outer limit keeps the
    # process-wide pools (BLAS) at one thread whatever the tasks restore when they finish.
    workers = effective_n_jobs(n_jobs)
    own = pool is None
    pool = ThreadPoolExecutor(workers, thread_name_prefix="search") if own else pool
    with one_thread(), heartbeat(progress, status), (pool if own else contextlib.nullcontext()):
        _run_in_turn(pool, workers, next_task)
    results = [grid.result(fitted[number]) for number, grid in enumerate(grids)]
    return sorted(results, key=lambda r: r.cv_auprc_mean, reverse=True)


def candidates_table(results: list[SearchResult]) -> pd.DataFrame:
    """One row per candidate: its best configuration, CV AUPRC mean and std, validation AUPRC, fit time."""
    return pd.DataFrame(
        [
            {
                "candidate": r.name,
                "best_params": r.describe_params(),
                "cv_auprc_mean": round(r.cv_auprc_mean, 4),
                "cv_auprc_std": round(r.cv_auprc_std, 4),
                "valid_auprc": None if r.valid_auprc is None else round(r.valid_auprc, 4),
                "fit_seconds": round(r.fit_seconds, 2),
                "configs_tried": r.n_configs,
                "search_seconds": round(r.search_seconds, 1),
            }
            for r in results
        ]
    )


def refit(estimator: PriorCorrected, frame: pd.DataFrame, legit_fraction: float | None = None, *,
          forest_jobs: int | None = 1) -> PriorCorrected:
    """A fresh copy of a chosen configuration fitted on ``frame`` (features and Class).

    ``legit_fraction``: the share of legitimate rows ``frame`` kept of the rows it was drawn
    from (the prior correction accounts for it); None keeps the estimator's own.
    ``forest_jobs``: see :meth:`PriorCorrected.fit` (None: a forest's trees on all cores).
    """
    fresh = clone(estimator)
    if legit_fraction is not None:
        fresh.set_params(legit_fraction=legit_fraction)
    return fresh.fit(frame, frame[schema.TARGET], forest_jobs=forest_jobs)


def fraud_probability(model: BaseEstimator, frame: pd.DataFrame) -> np.ndarray:
    """P(fraud) for each row, features taken by name in the one feature order."""
    return model.predict_proba(frame[schema.FEATURES])[:, 1]


SCORE = "score"
#: What scoring a labelled split keeps per row: all that metrics, curves and the threshold rules need.
SCORED_COLUMNS = (schema.TARGET, schema.AMOUNT, SCORE)


def scored_rows(frame: pd.DataFrame, models: dict[str, BaseEstimator]) -> pd.DataFrame:
    """Label, amount and each model's P(fraud) (a column per key of ``models``) of every row of a labelled
    frame (or partition), in order: several models scored in one pass over the data."""
    clash = sorted(set(models) & {schema.TARGET, schema.AMOUNT})
    if clash:
        raise ValueError(f"score columns cannot be named {clash}: those columns hold the label and the amount")
    if len(frame) == 0:
        return pd.DataFrame({schema.TARGET: pd.Series(dtype="int64"), schema.AMOUNT: pd.Series(dtype="float64"),
                             **{name: pd.Series(dtype="float64") for name in models}})
    with one_thread():
        scores = {name: fraud_probability(model, frame) for name, model in models.items()}
    return pd.DataFrame({schema.TARGET: frame[schema.TARGET].to_numpy(dtype="int64"),
                         schema.AMOUNT: frame[schema.AMOUNT].to_numpy(dtype="float64"), **scores})
