"""The pull-request report: metrics/params diff against a base revision, plots, stage reports.

The end-to-end tests build small git + DVC repositories by hand (two commits whose
metrics differ) and run the real ``ccfraud pr-report`` command in them; the unit
tests check the Markdown rendering from plain dicts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run
from PIL import Image

from ccfraud import pr_report
from ccfraud.pr_report import Change, ReportError, ReportImage, ReportInputs

DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "echo trained",
            "params": ["train"],
            "metrics": [{"reports/metrics.json": {"cache": False}}],
            "plots": [{"reports/plots/pr_curve.csv": {"cache": False}},
                      {"reports/plots/confusion.csv": {"cache": False}}],
        }
    }
}
BASE_METRICS = {
    "model": "logreg", "threshold": 0.5, "threshold_rule": "max_f1",
    "test": {"auprc": 0.7, "roc_auc": 0.95, "precision": 0.6, "recall": 0.7, "alerts": 40},
    "cv": {"auprc_mean": 0.68, "auprc_std": 0.02},
}
HEAD_METRICS = {
    "model": "hist_gb", "threshold": 0.35, "threshold_rule": "max_f1",
    "test": {"auprc": 0.8123, "roc_auc": 0.97, "precision": 0.75, "recall": 0.8, "alerts": 36,
             "auprc_ci95": [0.75, 0.86]},
    "cv": {"auprc_mean": 0.79, "auprc_std": 0.03},
    "valid": {"auprc": 0.74},
    "seed_baseline": {"auprc": 0.41, "roc_auc": 0.93, "precision": 0.02, "recall": 0.9, "alerts": 1500},
}
#: actual/predicted per test row: TN=90, FP=4, FN=2, TP=4.
CONFUSION = pd.DataFrame({"actual": [0] * 94 + [1] * 6, "predicted": [0] * 90 + [1] * 4 + [0] * 2 + [1] * 4})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_pipeline_outputs(repo: Path, metrics: dict, seed: int, curve_power: float) -> None:
    """What `dvc repro` would leave behind: params, metrics.json, plot CSVs and a stage HTML report."""
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"seed": seed, "threshold_rule": "max_f1"}}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    plots = repo / "reports" / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    (repo / "reports" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    recall = np.linspace(0, 1, 30)
    pd.DataFrame({"recall": recall, "precision": 1 - 0.6 * recall**curve_power}).to_csv(plots / "pr_curve.csv",
                                                                                     index=False)
    CONFUSION.to_csv(plots / "confusion.csv", index=False)
    (repo / "reports" / "03_train.html").write_text("<html><body><h1>Train</h1></body></html>")


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], path)
    return path


@pytest.fixture(scope="module")
def two_commit_repo(tmp_path_factory) -> Path:
    """main has one pipeline run's outputs; the checked-out branch a better run with another seed."""
    repo = new_repo(tmp_path_factory.mktemp("pr_report") / "repo")
    run(["dvc", "init", "-q"], repo)
    write_pipeline_outputs(repo, BASE_METRICS, seed=42, curve_power=1.0)
    commit_all(repo, "base run")
    run(["git", "checkout", "-q", "-b", "better-model"], repo)
    write_pipeline_outputs(repo, HEAD_METRICS, seed=7, curve_power=3.0)
    commit_all(repo, "better run")
    result = run(["ccfraud", "pr-report", "--base", "main"], repo)
    assert result.stderr.splitlines() == ["[ccfraud] wrote reports/pr_report.md (against main)"], \
        "the command prints one line and no warnings"
    return repo


def table_rows(markdown: str) -> dict[str, list[str]]:
    """Table rows keyed by their first cell (without the code span around a metric name)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| :--"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            key = cells[0][1:-1] if re.fullmatch(r"`[^`]+`", cells[0]) else cells[0]
            rows.setdefault(key, cells[1:])
    return rows


def assert_valid_png(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG (starts with {data[:8]!r})"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= 200 and image.height >= 200
        assert np.asarray(image.convert("L")).std() > 5, f"{path} is (nearly) a single colour"


# --------------------------------------------------------------------------- end to end, in git + DVC repos


def test_report_lists_each_metric_with_old_new_and_change(two_commit_repo):
    text = (two_commit_repo / "reports" / "pr_report.md").read_text()
    rows = table_rows(text)
    assert rows["test.auprc"] == ["0.7000", "0.8123", "+0.1123"]
    assert rows["test.roc_auc"] == ["0.9500", "0.9700", "+0.0200"]
    assert rows["threshold"] == ["0.5000", "0.3500", "-0.1500"]
    assert rows["test.alerts"] == ["40", "36", "-4"]
    assert rows["model"] == ["`logreg`", "`hist_gb`", "changed"]
    assert rows["threshold_rule"] == ["`max_f1`", "`max_f1`", ""]
    assert rows["seed_baseline.auprc"] == ["—", "0.4100", "new"]
    metric_lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert metric_lines[0].startswith("| `test.auprc` |"), "AUPRC must be the first metric row"
    headline = text.split(pr_report.SELECTION_NOTE)[0]
    assert "| `valid.auprc` |" in headline and "| `cv.auprc_mean` |" in headline, "the figures choices rest on"


def test_report_shows_params_model_threshold_and_seed_baseline(two_commit_repo):
    text = (two_commit_repo / "reports" / "pr_report.md").read_text()
    rows = table_rows(text)
    assert rows["train.seed"] == ["42", "7", "-35"]
    assert "train.threshold_rule" not in rows, "unchanged params are not listed"
    assert "**Chosen model:** `hist_gb` (base: `logreg`) at threshold **0.3500** (rule `max_f1`)." in text
    assert "95% bootstrap interval 0.7500 to 0.8600" in text
    assert rows["chosen: `hist_gb`"] == ["0.8123", "0.9700", "0.7500", "0.8000", "36"]
    assert rows["seed baseline (undersampled logistic regression)"] == ["0.4100", "0.9300", "0.0200", "0.9000",
                                                                        "1500"]
    assert "- `reports/03_train.html`" in text
    assert re.search(r"compared with `main` \(`[0-9a-f]{7}`\)", text)


def test_report_references_valid_png_plots(two_commit_repo):
    report = two_commit_repo / "reports" / "pr_report.md"
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", report.read_text())
    assert [title for title, _ in links] == ["Precision-recall curve", "Confusion matrix"]
    for _, link in links:
        assert not link.startswith(("/", "http")), f"{link} must be relative so cml uploads the local file"
        assert_valid_png(report.parent / link)
    assert {link for _, link in links} == {"plots/pr_curve.png", "plots/confusion.png"}
    rows = table_rows(report.read_text())
    assert rows["actual legit"] == ["90", "4"]
    assert rows["actual fraud"] == ["2", "4"]


def test_first_pr_against_a_base_without_metrics(tmp_path):
    repo = new_repo(tmp_path / "repo")
    (repo / "README.md").write_text("nothing here yet\n")
    commit_all(repo, "initial commit")
    run(["git", "checkout", "-q", "-b", "add-pipeline"], repo)
    run(["dvc", "init", "-q"], repo)
    write_pipeline_outputs(repo, HEAD_METRICS, seed=7, curve_power=2.0)
    commit_all(repo, "first pipeline run")
    pr_report.write_report("main", root=repo, env={})  # in process: the fixture runs the command itself
    text = (repo / "reports" / "pr_report.md").read_text()
    assert "The base `main` has no metrics yet" in text
    rows = table_rows(text)
    assert rows["test.auprc"] == ["—", "0.8123", "new"]
    assert rows["train.seed"] == ["—", "7", "new"]
    assert "**Chosen model:** `hist_gb` at threshold" in text
    assert_valid_png(repo / "reports" / "plots" / "pr_curve.png")


def test_unknown_base_fails_naming_it_and_keeps_the_previous_report(two_commit_repo):
    report = two_commit_repo / "reports" / "pr_report.md"
    before = report.read_text()
    result = run(["ccfraud", "pr-report", "--base", "origin/no-such-branch"], two_commit_repo, check=False)
    assert result.returncode != 0
    assert "base revision 'origin/no-such-branch' not found" in result.stderr
    assert "git fetch origin no-such-branch" in result.stderr
    assert "Traceback" not in result.stderr
    assert report.read_text() == before


def test_missing_metrics_says_to_run_the_pipeline(tmp_path):
    repo = new_repo(tmp_path / "repo")
    result = run(["ccfraud", "pr-report", "--base", "main"], repo, check=False)
    assert result.returncode != 0
    assert "reports/metrics.json not found: run the pipeline first" in result.stderr
    assert not (repo / "reports" / "pr_report.md").exists()


def test_report_links_the_ci_run_when_in_github_actions(two_commit_repo, tmp_path):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "acme/ccfraud",
           "GITHUB_RUN_ID": "123"}
    out = tmp_path / "ci_report.md"
    pr_report.write_report("main", root=two_commit_repo, out=out, env=env)
    text = out.read_text()
    assert "[this workflow run](https://github.com/acme/ccfraud/actions/runs/123)" in text
    assert f"artifact `{pr_report.ARTIFACT_NAME}`" in text
    for link in re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text):
        assert (out.parent / link).resolve().is_file(), f"{link} is not relative to {out}"


def declared_outputs(dvc_yaml: dict, kind: str) -> set[str]:
    """Paths the stages of a dvc.yaml declare under ``kind`` (metrics, plots or outs), whichever stage."""
    paths = set()
    for stage in dvc_yaml["stages"].values():
        for entry in stage.get(kind, []):
            paths.update([entry] if isinstance(entry, str) else entry)
    return paths


def test_the_files_the_report_reads_are_declared_in_the_pipeline():
    dvc_yaml = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    assert pr_report.METRICS_PATH.as_posix() in declared_outputs(dvc_yaml, "metrics")
    plots = declared_outputs(dvc_yaml, "plots") | declared_outputs(dvc_yaml, "outs")
    assert {pr_report.PR_CURVE_CSV.as_posix(), pr_report.CONFUSION_CSV.as_posix()} <= plots


# --------------------------------------------------------------------------- pure rendering


def test_markdown_table_escapes_pipes_and_newlines():
    table = pr_report.markdown_table(["name", "value"], [["a|b", "1\n2"]])
    assert table.splitlines() == ["| name | value |", "| :-- | --: |", "| a\\|b | 1 2 |"]


def test_markdown_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells, expected 2"):
        pr_report.markdown_table(["name", "value"], [["only one"]])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (0.7, 0.8, "+0.1000"),
        (0.8, 0.7, "-0.1000"),
        (0.5, 0.5, "0"),
        (40, 36, "-4"),
        (None, 0.8, "new"),
        (0.8, None, "removed"),
        ("logreg", "hist_gb", "changed"),
        ("logreg", "logreg", ""),
        (1000.0, 1250.5, "+250.50"),
        (0.5, 0.50000001, "0"),
    ],
)
def test_format_change(old, new, expected):
    assert pr_report.format_change(old, new) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "—"), (0.81234, "0.8123"), (12345.678, "12,345.68"), (0.00017, "0.00017"), (3, "3"),
     (True, "true"), ("hist_gb", "`hist_gb`"), ([0.1, 1.0], "`[0.1, 1.0]`")],
)
def test_format_value(value, expected):
    assert pr_report.format_value(value) == expected


def test_metrics_are_ordered_auprc_first_then_by_section():
    names = ["candidates.logreg.cv_auprc_mean", "seed_baseline.auprc", "test.tp", "model_version", "test.recall",
             "cv.auprc_mean", "test.brier", "test.auprc", "model"]
    ordered = sorted(names, key=pr_report.metric_sort_key)
    assert ordered == ["test.auprc", "test.recall", "model", "cv.auprc_mean", "test.brier", "test.tp",
                       "model_version", "seed_baseline.auprc", "candidates.logreg.cv_auprc_mean"]


def test_changes_from_dvc_prefixes_files_only_when_several():
    one = {"reports/metrics.json": {"test.auprc": {"old": 0.7, "new": 0.8, "diff": 0.1}}}
    assert pr_report.changes_from_dvc(one) == [Change("test.auprc", 0.7, 0.8)]
    two = {"a.json": {"x": {"old": 1, "new": 2}}, "b.json": {"x": {"old": None, "new": 3}}}
    assert [c.name for c in pr_report.changes_from_dvc(two)] == ["a.json:x", "b.json:x"]
    assert pr_report.changes_from_dvc({}) == []


def test_metrics_section_folds_all_but_the_headline_and_says_when_base_has_none():
    changes = [Change("test.tp", None, 20), Change("test.auprc", None, 0.8),
               Change("candidates.logreg.cv_auprc_mean", None, 0.7)]
    section = pr_report.metrics_section(changes, "main")
    assert section.startswith("The base `main` has no metrics yet")
    main_table, folded = section.split("<details>")
    assert "`test.auprc`" in main_table and "test.tp" not in main_table and "candidates" not in main_table
    assert "(2 rows)" in folded
    assert folded.index("`test.tp`") < folded.index("`candidates.logreg.cv_auprc_mean`")


def test_metrics_section_without_headline_metrics_shows_everything():
    section = pr_report.metrics_section([Change("loss", 0.3, 0.2)], "main")
    assert "<details>" not in section and "| `loss` | 0.3000 | 0.2000 | -0.1000 |" in section


def test_params_section_without_changes():
    assert pr_report.params_section([], "origin/main") == "No parameter changed against `origin/main`."


def test_render_report_from_plain_inputs():
    inputs = ReportInputs(
        base="origin/main", base_sha="abc1234", head_sha="def5678", metrics=HEAD_METRICS,
        metric_changes=[Change("test.auprc", 0.7, 0.8123), Change("model", "logreg", "hist_gb")],
        param_changes=[Change("train.seed", 42, 7)],
        figures=[ReportImage("Precision-recall curve", "plots/pr_curve.png"),
                 ReportImage("Confusion matrix", None, "reports/plots/confusion.csv not found")],
        confusion=np.array([[90, 4], [2, 4]]),
        html_reports=["reports/01_download.html", "reports/03_train.html"],
        run_url="https://github.com/acme/ccfraud/actions/runs/1",
    )
    text = pr_report.render_report(inputs)
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["## Fraud-detection pipeline report", "### Metrics", "### Against the seed baseline",
                        "### Parameters", "### Plots (test split)", "### Stage reports"]
    assert "compared with `origin/main` (`abc1234`)" in text
    assert "| Metric | Old (origin/main) | New (this branch) | Change |" in text
    assert "![Precision-recall curve](plots/pr_curve.png)" in text
    assert "_Confusion matrix: reports/plots/confusion.csv not found_" in text
    assert "- `reports/01_download.html`\n- `reports/03_train.html`" in text
    assert "[this workflow run](https://github.com/acme/ccfraud/actions/runs/1)" in text


def test_ci_run_url_only_inside_github_actions():
    env = {"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "a/b",
           "GITHUB_RUN_ID": "9"}
    assert pr_report.ci_run_url(env) == "https://github.com/a/b/actions/runs/9"
    assert pr_report.ci_run_url({**env, "GITHUB_ACTIONS": ""}) is None
    assert pr_report.ci_run_url({k: v for k, v in env.items() if k != "GITHUB_RUN_ID"}) is None


def test_confusion_counts_and_its_errors():
    assert pr_report.confusion_counts(CONFUSION).tolist() == [[90, 4], [2, 4]]
    with pytest.raises(ReportError, match=r"missing \['predicted'\]"):
        pr_report.confusion_counts(pd.DataFrame({"actual": [0, 1]}))
    with pytest.raises(ReportError, match="labels must be 0/1; 1 other values, first at row 1"):
        pr_report.confusion_counts(pd.DataFrame({"actual": [0, 2], "predicted": [0, 1]}))


@pytest.mark.parametrize(("reference", "expected"), [
    ({"auprc_margin": 0.0045, "auprc_margin_ci95": [-0.0012, 0.0141], "verdict": "no difference"},
     "**Margin over the untuned yardstick (test AUPRC):** +0.0045 (95% paired bootstrap interval -0.0012 to "
     "+0.0141): **no difference the test split can show.**"),
    ({"auprc_margin": 0.03, "auprc_margin_ci95": [0.01, 0.05], "verdict": "win"},
     "**Margin over the untuned yardstick (test AUPRC):** +0.0300 (95% paired bootstrap interval +0.0100 to "
     "+0.0500)."),
    ({"auprc_margin": -0.02, "auprc_margin_ci95": [-0.04, -0.01], "verdict": "loss"},
     "**Margin over the untuned yardstick (test AUPRC):** -0.0200 (95% paired bootstrap interval -0.0400 to "
     "-0.0100): **the untuned yardstick wins on the test split.**"),
    ({"auprc_margin": -0.02}, "**Margin over the untuned yardstick (test AUPRC):** -0.0200."),  # an older file
])
def test_the_summary_states_the_margin_over_the_yardstick_with_what_its_interval_allows(reference, expected):
    metrics = {"model": "hist_gb", "test": {"auprc": 0.77}, "reference_untuned_hgb": {"auprc": 0.76, **reference}}
    assert pr_report.summary_lines(metrics, [])[-1] == expected


def test_a_metrics_file_without_the_yardstick_has_no_margin_line():
    assert not any("yardstick" in line for line in pr_report.summary_lines({"test": {"auprc": 0.7}}, []))


def test_the_report_states_every_verdict_the_evaluate_stage_records():
    from ccfraud import evaluation  # the stage's rule; the report only reads its verdicts

    assert set(pr_report.VERDICT_TEXT) == {evaluation.WIN, evaluation.LOSS, evaluation.NO_DIFFERENCE}

