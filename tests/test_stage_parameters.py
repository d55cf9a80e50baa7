"""Papermill knows every parameter a stage passes: no "Passed unknown parameter" warning.

Papermill reads a notebook's parameters cell with its own line parser, which gives up on any
line holding more than one ``=`` (``source = "synthetic://?rows=20000&frauds=200"``): the
parameter is then "unknown" and every stage run warns. These tests give papermill the exact
parameters ``ccfraud stage`` passes (params.yaml plus the ``-p`` pairs of dvc.yaml) with
``prepare_only``: the same parsing and injection as a run, without starting a kernel.
"""

import logging
import re
import shlex
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from ccfraud import cli, reporting

ROOT = Path(__file__).resolve().parents[1]
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
#: What papermill logs when it cannot read a parameters cell or does not know a passed parameter.
COMPLAINTS = ("Passed unknown parameter", "Unable to parse")


def dvc_assignments(cmd: str) -> list[str]:
    """The ``-p key=value`` pairs of a dvc.yaml stage command, ``${section.key}`` filled in from params.yaml."""
    def lookup(match: re.Match) -> str:
        value = PARAMS
        for key in match.group(1).split("."):
            value = value[key]
        return str(value)

    words = shlex.split(re.sub(r"\$\{([\w.]+)\}", lookup, cmd))
    return [value for flag, value in zip(words, words[1:], strict=False) if flag in ("-p", "--param")]


def papermill_complaints(stage: str, parameters: dict, tmp_path: Path, caplog) -> list[str]:
    notebook = reporting.stage_notebook(stage, ROOT / reporting.NOTEBOOKS_DIR)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters=parameters,
                                   prepare_only=True, progress_bar=False)
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(COMPLAINTS)]


@pytest.mark.parametrize("stage", list(DVC_STAGES))
def test_papermill_knows_every_parameter_the_stage_passes(stage, tmp_path, caplog):
    parameters, _ = cli.stage_parameters(stage, ROOT / "params.yaml", dvc_assignments(DVC_STAGES[stage]["cmd"]))
    assert papermill_complaints(stage, parameters, tmp_path, caplog) == []


def test_download_with_a_query_string_source_runs_without_warnings(tmp_path, caplog):
    parameters, _ = cli.stage_parameters("download", ROOT / "params.yaml",
                                         ["source=synthetic://?rows=2000&frauds=20&seed=3",
                                          f"output_path={tmp_path / 'creditcard'}"])
    assert parameters["source"] == "synthetic://?rows=2000&frauds=20&seed=3"
    assert papermill_complaints("download", parameters, tmp_path, caplog) == []
    injected = (tmp_path / "01_download.ipynb").read_text()
    assert "synthetic://?rows=2000&frauds=20&seed=3" in injected, "papermill injects the source as given"


@pytest.mark.parametrize("value", ["https://analyst:hunter2@example.invalid/creditcard.csv",
                                   "https://example.invalid/creditcard.csv?X-Amz-Signature=hunter2"])
def test_a_parameter_carrying_credentials_stops_the_stage_before_any_notebook_is_written(value, tmp_path,
                                                                                       monkeypatch, capsys):
    """papermill writes the parameters into the executed notebook first thing, and a failed run's notebook is
    kept: ``ccfraud stage`` refuses the URI before a kernel, a notebook or a report exists."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    notebook = reporting.stage_notebook("download", ROOT / reporting.NOTEBOOKS_DIR)
    shutil.copyfile(notebook, tmp_path / "notebooks" / notebook.name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"source": value, "md5": None}}))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["stage", "download", "-p", "output_path=data/raw/creditcard"])
    message = str(stopped.value)
    assert message.startswith("error: parameter 'source' https://example.invalid/creditcard.csv carries credentials")
    assert "hunter2" not in message + capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks", "params.yaml"]


def test_an_unparsable_parameters_cell_is_caught(tmp_path, caplog):
    """The check above would see the warning: a default with '=' in it makes papermill complain."""
    notebook = tmp_path / "notebooks" / "01_demo.ipynb"
    notebook.parent.mkdir()
    source = reporting.stage_notebook("download", ROOT / reporting.NOTEBOOKS_DIR).read_text()
    notebook.write_text(source.replace('"source = None ', '"source = \\"synthetic://?rows=1&frauds=1\\" ', 1))
    with caplog.at_level(logging.WARNING, logger="papermill"):
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters={"source": "x"},
                                   prepare_only=True, progress_bar=False)
    messages = [r.getMessage() for r in caplog.records]
    assert "Passed unknown parameter: source" in messages


def test_a_notebook_run_prints_no_warning(tmp_path, capfd, caplog):
    """The runner every stage uses, given a value with '=' and '&': no warning from papermill or the kernel."""
    cells = [nbformat.v4.new_code_cell("source = None  # None: the default", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("print(source)")]
    kernelspec = {"name": "python3", "language": "python", "display_name": "Python 3"}
    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": kernelspec}), notebook)
    with caplog.at_level(logging.WARNING):
        executed, _ = reporting.run_notebook(notebook, {"source": "synthetic://?rows=2000&frauds=20"},
                                             root=tmp_path, reports_dir=tmp_path / "reports")
    assert [r.getMessage() for r in caplog.records] == []
    assert "WARNING" not in capfd.readouterr().err
    output = nbformat.read(executed, as_version=4).cells[-1].outputs[0]["text"]
    assert output == "synthetic://?rows=2000&frauds=20\n"
