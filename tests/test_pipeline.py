"""End to end: `dvc repro` in a temporary copy of the repository on a small synthetic dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run, set_params

from ccfraud import evaluation

pytestmark = pytest.mark.slow

REPORTS = ("01_download.html", "02_eda_preprocess.html", "03_train.html", "04_evaluate.html")
STAGES = ("download", "eda_preprocess", "train", "evaluate")


def copy_repo(repo: Path, dest: Path) -> Path:
    """A copy including DVC's cache and lock file, so it starts exactly where ``repo`` is."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def ran_stages(output: str) -> set[str]:
    return {name for name in STAGES if f"Running stage '{name}'" in output}


def test_every_stage_leaves_its_report_and_outputs(pipeline_run):
    """The stage outputs dvc.yaml promises; what the HTML reports hold is test_browser's."""
    for name in REPORTS:
        assert (pipeline_run / "reports" / name).stat().st_size > 0, name
        assert (pipeline_run / "reports" / name.replace(".html", ".ipynb")).exists()
    for path in ("data/raw/creditcard/_manifest.json", "data/processed/train/_manifest.json",
                 "data/processed/test/_manifest.json",
                 "models/model.skops", "models/model.json", "reports/plots/pr_curve.csv",
                 "reports/plots/confusion.csv", "reports/plots/threshold.csv", "reports/metrics.json"):
        assert (pipeline_run / path).stat().st_size > 0, path


def code_calls(notebook: Path) -> list[str]:
    """Lines of a notebook's code cells that call something and are long enough not to appear by chance."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    lines = [line.strip() for cell in cells if cell.cell_type == "code" for line in cell.source.splitlines()]
    return [line for line in lines if "(" in line and len(line) >= 30 and not line.startswith("#")]


def page_text(html: str) -> str:
    """What a reader sees of a page: tags (and syntax-highlighting spans) removed, entities decoded."""
    import html as html_lib
    import re

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.parametrize("report", REPORTS)
def test_reports_hide_code_by_default(pipeline_run, report, tmp_path):
    """With show_code false (the default) none of the notebook's calls appear; with it true they do."""
    from ccfraud import reporting

    calls = code_calls(pipeline_run / "notebooks" / report.replace(".html", ".ipynb"))
    assert len(calls) >= 3, f"{report}: too few code lines to check: {calls}"
    text = page_text((pipeline_run / "reports" / report).read_text())
    assert not [call for call in calls if call in text], f"{report}: code is visible"
    executed = pipeline_run / "reports" / report.replace(".html", ".ipynb")
    shown = page_text(reporting.notebook_to_html(executed, tmp_path / report, show_code=True).read_text())
    assert all(call in shown for call in calls), "the check would not see code if it were shown"


def test_metrics_have_the_expected_keys_and_sane_values(pipeline_run):
    metrics = json.loads((pipeline_run / "reports" / "metrics.json").read_text())
    test = metrics["test"]
    for key in ("auprc", "roc_auc", "precision", "recall", "f1", "brier", "tp", "fp", "tn", "fn",
                "auprc_ci95", "recall_ci95", "net_saving", "fraud_amount_caught", "precision_at_100"):
        assert key in test, key
    assert 0.0 < test["auprc"] <= 1.0 and 0.5 < test["roc_auc"] <= 1.0
    assert test["auprc_ci95"][0] <= test["auprc"] <= test["auprc_ci95"][1]
    assert 0.0 < metrics["threshold"] < 1.0
    assert test["tp"] + test["fn"] == test["frauds"] > 0
    assert "accuracy" not in test
    seed = metrics["seed_baseline"]
    assert test["auprc"] > seed["auprc"]
    assert not any("accuracy" in key for key in seed)
    reference = metrics["reference_untuned_hgb"]
    assert reference["auprc_margin"] == pytest.approx(test["auprc"] - reference["auprc"], abs=2e-6)
    assert reference["auprc_margin_ci95"][0] <= reference["auprc_margin"] <= reference["auprc_margin_ci95"][1]
    assert reference["verdict"] == evaluation.margin_verdict(*reference["auprc_margin_ci95"])
    assert 0 <= reference["reference_at_least_as_good"] <= 1
    assert "hist_gb_untuned" in metrics["candidates"]  # the yardstick took part in the search
    model = json.loads((pipeline_run / "models" / "model.json").read_text())
    assert model["threshold"] == pytest.approx(metrics["threshold"], abs=1e-6)
    assert model["model_version"] == metrics["model_version"]


def test_second_repro_runs_nothing(pipeline_run):
    result = run(["dvc", "repro"], pipeline_run)
    assert ran_stages(result.stdout + result.stderr) == set()
    status = run(["dvc", "status"], pipeline_run)
    assert "up to date" in status.stdout


def test_changing_an_evaluation_parameter_reruns_only_evaluate(pipeline_run, tmp_path):
    """Only evaluate reruns; the model is untouched and the metrics are reproduced but for the knob."""
    repo = copy_repo(pipeline_run, tmp_path / "repo")
    set_params(repo, {"evaluate": {"top_k": 50}})
    result = run(["dvc", "repro"], repo)
    assert ran_stages(result.stdout + result.stderr) == {"evaluate"}
    before = json.loads((pipeline_run / "reports" / "metrics.json").read_text())
    after = json.loads((repo / "reports" / "metrics.json").read_text())
    assert "precision_at_50" in after["test"] and "precision_at_100" not in after["test"]
    del after["test"]["precision_at_50"], before["test"]["precision_at_100"]
    assert after == before


def test_a_failing_download_leaves_no_data_behind(tmp_path):
    from conftest import make_project_copy

    repo = make_project_copy(tmp_path / "repo", source=str(tmp_path / "does-not-exist.csv"))
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "does-not-exist.csv" in result.stdout + result.stderr
    assert not (repo / "data" / "raw").exists() or not any((repo / "data" / "raw").iterdir())


def test_the_test_split_is_not_used_for_any_choice(pipeline_run, tmp_path):
    """Shuffle the test labels and rerun the train stage: the chosen model, its threshold and every figure of
    the search must not move. (The train stage does not even list the test split among its DVC dependencies:
    test_dvc_graph; evaluate, the stage that reads it, is test_changing_an_evaluation_parameter's.)"""
    from ccfraud import lake

    repo = copy_repo(pipeline_run, tmp_path / "repo")
    test_dir = str(repo / "data" / "processed" / "test")
    test = lake.read_pandas(test_dir)
    shuffled = test.assign(Class=test["Class"].sample(frac=1.0, random_state=1).to_numpy())
    assert not shuffled["Class"].equals(test["Class"])
    # A new run's parts and a manifest replaced by rename: nothing is written through DVC's cache links.
    lake.write_frames([shuffled], test_dir)
    run(["ccfraud", "stage", "train", "-p", "processed_dir=data/processed", "-p", "model_dir=models",
         "-p", "reports_dir=reports"], repo)
    before = json.loads((pipeline_run / "models" / "model.json").read_text())
    after = json.loads((repo / "models" / "model.json").read_text())
    assert after["trained_at"] > before["trained_at"]  # a new model.json, written by the rerun
    for key in ("model_version", "threshold", "candidate", "best_params", "candidates", "metrics",
                "training_sample", "training_data_sha256"):
        assert after[key] == before[key], key
    for key in ("seed_accuracy_claim", "versions"):  # the seed recipe and the yardstick, fitted by train too
        assert after["comparison"][key] == before["comparison"][key], key
