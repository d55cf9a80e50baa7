"""Small real models for tests that score: trained in about a second on synthetic data, saved as training saves them.

Import the fixtures into a test module (``from model_fixtures import logreg_model_dir``)
until conftest lists this module in ``pytest_plugins``; each is built once per session
(per xdist worker). The logistic regression is the one tests/test_serving.py trains; the
random forest is scored by the forest kernel of the serving fast path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ccfraud import artifacts, modeling, schema, synthetic

#: The training data: small, with enough frauds for both classes in every fit.
TRAINING = {"rows": 5000, "frauds": 100, "seed": 0}
LOGREG = ("logreg", "class_weight", {})
FOREST = ("random_forest", "undersample", {"sampling_ratio": 0.1, "n_estimators": 30})


def train_small_model(out: Path, candidate: str, sampler: str, options: dict[str, Any], *,
                      threshold: float = 0.5) -> Path:
    """Fit ``candidate`` as the train stage builds it and save it to ``out`` with its metadata."""
    data = synthetic.generate(**TRAINING)
    model = modeling.make_pipeline(candidate, sampler, **options).fit(data[schema.FEATURES], data[schema.TARGET])
    artifacts.save_model(model, out, threshold=threshold,
                         extra={"candidate": candidate, "metrics": {"test": {"auprc": 0.61, "roc_auc": 0.93}}})
    return out


@pytest.fixture(scope="session")
def logreg_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression (class-weighted) model directory."""
    return train_small_model(tmp_path_factory.mktemp("logreg-model"), *LOGREG)


@pytest.fixture(scope="session")
def forest_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-tree random forest (undersampled, so prior-corrected) model directory."""
    return train_small_model(tmp_path_factory.mktemp("forest-model"), *FOREST)
