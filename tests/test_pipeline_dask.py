"""End to end on the Dask engine: `dvc repro` with ``compute.engine: dask`` in a scratch copy, on small data.

The stages connect to the session's two-worker LocalCluster through ``DASK_SCHEDULER_ADDRESS``,
as they would to any deployed scheduler (the path a real cluster takes), instead of starting a
cluster of their own three times. The data is small, but cut into several partitions, and
``train.sample_rows`` is set below the split sizes so that the sampled training path runs.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import ROOT, make_project_copy, run, set_params, tool_env

from ccfraud import lake, preprocess, schema

pytestmark = pytest.mark.slow

SOURCE = "synthetic://?rows=12000&frauds=150&seed=3"
DASK_PARAMS = {
    "compute": {"engine": "dask", "partition_rows": 2500},
    "eda_preprocess": {"balanced_per_class": 100, "plot_sample": 2000},
    "train": {
        # One candidate of our own; the untuned yardstick joins it as a candidate on its own.
        "candidates": {"logreg": {"sampler": ["class_weight"], "C": [1.0]}},
        "cv_folds": 2,
        "sample_rows": 5000,
    },
    "evaluate": {"bootstrap": 20},
}


@pytest.fixture(scope="module")
def dask_run(tmp_path_factory, dask_client):
    repo = make_project_copy(tmp_path_factory.mktemp("dask-pipeline") / "repo", SOURCE)
    set_params(repo, DASK_PARAMS)
    run(["git", "commit", "-q", "-am", "the dask engine on small data"], repo)
    env = {**tool_env(), "DASK_SCHEDULER_ADDRESS": dask_client.scheduler.address}
    result = run(["dvc", "repro"], repo, env=env)
    return repo, result.stdout + result.stderr


def declared_steps(notebook: str) -> int:
    """How many steps a stage's notebook declares (``progress.Steps("<stage>", n)``)."""
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    source = "".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    return int(re.search(r'progress\.Steps\("\w+", (\d+)', source).group(1))


def test_the_dask_engine_writes_the_splits_the_pandas_engine_would(dask_run):
    repo, output = dask_run
    processed = repo / "data" / "processed"
    manifest = preprocess.read_manifest(processed)
    assert manifest["engine"] == "dask" and manifest["split"] == "time"
    raw = lake.read_pandas(str(repo / "data" / "raw" / "creditcard"))
    expected = preprocess.prepare(raw, "time", valid_size=manifest["valid_size"], test_size=manifest["test_size"],
                                  seed=manifest["seed"])
    written = preprocess.read_splits(processed)
    for name, part in expected.splits.items():
        pd.testing.assert_frame_equal(getattr(written, name), part)
    assert manifest["splits"] == expected.facts
    assert manifest["time_cuts"]["test_from"] == expected.splits.test[schema.TIME].iloc[0]
    assert len(lake.read_manifest(str(processed / "train"))["parts"]) > 1  # written by the workers, part by part
    # Progress reached the console: steps with i of n, and the candidates one by one.
    last_steps = {stage: declared_steps(notebook) for stage, notebook in
                  (("eda_preprocess", "02_eda_preprocess"), ("train", "03_train"), ("evaluate", "04_evaluate"))}
    assert all(f"[{stage}] step {n}/{n}" in output for stage, n in last_steps.items()), last_steps
    assert re.search(r"\[train\] candidate (\d+) of \1\b", output), "the last candidate's progress line"


def test_the_dask_engine_trains_on_a_sample_and_scores_the_whole_test_split(dask_run):
    repo, _ = dask_run
    manifest = preprocess.read_manifest(repo / "data" / "processed")
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    sample = metrics["training_sample"]
    splits = manifest["splits"]
    assert 0.0 < sample["search"]["legit_fraction"] < 1.0 and 0.0 < sample["refit"]["legit_fraction"] < 1.0
    assert sample["search"]["frauds"] == splits["train"]["frauds"]  # every fraud is kept
    assert sample["refit"]["frauds"] == splits["train"]["frauds"] + splits["valid"]["frauds"]
    assert sample["search"]["rows"] < splits["train"]["rows"]
    test = metrics["test"]
    assert (test["rows"], test["frauds"]) == (splits["test"]["rows"], splits["test"]["frauds"])
    assert 0.0 < test["auprc"] <= 1.0 and 0.0 < metrics["threshold"] < 1.0
    model = json.loads((repo / "models" / "model.json").read_text())
    assert model["prior_correction_beta"] < 1.0 and model["training_sample"] == sample
    assert "engine <strong>dask</strong>" in (repo / "reports" / "03_train.html").read_text()
