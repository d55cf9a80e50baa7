"""Stage runner: notebook lookup, parameters, HTML rendering and what a failure leaves behind."""

import gc
import tempfile
import warnings
from pathlib import Path

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ccfraud import cli, reporting


def write_notebook(path: Path, body: str) -> Path:
    notebook = new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = new_code_cell("value = 1")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [new_markdown_cell("# A stage report"), parameters, new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def test_stage_notebook_lookup(tmp_path):
    write_notebook(tmp_path / "notebooks" / "01_fetch.ipynb", "pass")
    assert reporting.stage_notebook("fetch", tmp_path / "notebooks").name == "01_fetch.ipynb"
    with pytest.raises(ValueError, match=r"stage 'train': expected one notebook .*found \['01_fetch.ipynb'\]"):
        reporting.stage_notebook("train", tmp_path / "notebooks")


def test_run_stage_writes_ipynb_and_html_with_code_hidden(tmp_path):
    body = "secret_marker_code = value * 21\nprint(secret_marker_code)"
    write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", body)
    executed, html = reporting.run_stage_notebook("demo", {"value": 2}, root=tmp_path)
    text = html.read_text()
    assert "42" in text and "A stage report" in text
    assert "secret_marker_code = value" not in text
    shown = reporting.notebook_to_html(executed, tmp_path / "shown.html", show_code=True).read_text()
    assert "secret_marker_code" in shown
    # The stage's exporter, made (and warmed on an empty notebook) while the kernel ran, renders as a new one does.
    assert reporting.notebook_to_html(executed, tmp_path / "again.html").read_text() == text


def test_failed_stage_keeps_the_failed_notebook_and_no_report(tmp_path):
    write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", "raise RuntimeError('boom in cell')")
    with pytest.raises(Exception, match="boom in cell"):
        reporting.run_stage_notebook("demo", {}, root=tmp_path)
    reports = tmp_path / "reports"
    assert (reports / "01_demo.failed.ipynb").exists()
    assert not (reports / "01_demo.html").exists() and not (reports / "01_demo.ipynb").exists()
    assert not list(reports.glob(".*"))


def test_a_report_that_fails_to_render_leaves_no_report_but_the_failed_notebook(tmp_path, monkeypatch):
    """Every cell ran, but the HTML could not be made (or the run was interrupted then): no executed notebook may
    be left that looks like a finished stage's."""
    write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", "print(value * 21)")

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(reporting, "notebook_to_html", broken)
    with pytest.raises(OSError, match="No space left"):
        reporting.run_stage_notebook("demo", {"value": 2}, root=tmp_path)
    reports = tmp_path / "reports"
    assert sorted(p.name for p in reports.iterdir()) == ["01_demo.failed.ipynb"]
    assert nbformat.read(reports / "01_demo.failed.ipynb", as_version=4).cells[-1].outputs[0]["text"] == "42\n"


def test_assignments_are_read_as_yaml():
    assert cli.parse_assignments(["a=1", "b=null", "c=data/x.csv", "d=[1, 2]"]) == {
        "a": 1, "b": None, "c": "data/x.csv", "d": [1, 2]}
    with pytest.raises(SystemExit, match="key=value"):
        cli.parse_assignments(["no-equals"])


def test_stage_params_errors_name_the_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("download:\n  source: synthetic://\n")
    assert cli.load_stage_params("download", params) == {"source": "synthetic://"}
    with pytest.raises(SystemExit, match="no section 'train'"):
        cli.load_stage_params("train", params)
    with pytest.raises(SystemExit, match="not found"):
        cli.load_stage_params("train", tmp_path / "missing.yaml")


def test_notebook_imports_lists_the_modules_code_cells_import_at_their_top_level():
    notebook = new_notebook()
    notebook.cells = [
        new_markdown_cell("import not_code"),
        new_code_cell("import numpy as np, os.path\nfrom ccfraud import lake, schema\nfrom . import relative"),
        new_code_cell("%matplotlib inline\nimport not_python"),  # IPython syntax: not parsed
        new_code_cell("def f():\n    import nested\nimport numpy\nfrom pathlib import *"),
    ]
    assert reporting.notebook_imports(notebook) == ["numpy", "os.path", "ccfraud", "ccfraud.lake", "ccfraud.schema",
                                                    "pathlib"]


def test_the_kernel_boots_with_the_notebooks_imports_loaded_and_binds_none_of_their_names(tmp_path):
    path = write_notebook(tmp_path / "notebooks" / "01_demo.ipynb",
                          "import sys\nprint(sorted(m for m in ('colorsys', 'email.policy') if m in sys.modules), "
                          "'colorsys' in dir(), 'policy' in dir(), 'import_quietly' in dir())")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(new_code_cell("import colorsys\nfrom email import policy"))
    nbformat.write(notebook, path)
    executed, _ = reporting.run_stage_notebook("demo", {}, root=tmp_path)
    check = next(cell for cell in nbformat.read(executed, as_version=4).cells if cell.source.startswith("import sys"))
    assert check.outputs[0]["text"] == "['colorsys', 'email.policy'] False False False\n"


def test_a_module_that_cannot_be_imported_still_fails_in_the_notebooks_own_cell(tmp_path):
    write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", "print('before')\nimport no_such_module_for_ccfraud")
    with pytest.raises(Exception, match="No module named 'no_such_module_for_ccfraud'"):
        reporting.run_stage_notebook("demo", {}, root=tmp_path)
    failed = nbformat.read(tmp_path / "reports" / "01_demo.failed.ipynb", as_version=4)
    assert failed.cells[-1].outputs[0]["text"] == "before\n"


@pytest.mark.parametrize("ends", ["well", "in an error"])
def test_the_kernel_runs_the_notebooks_exit_handlers_before_its_quick_exit(tmp_path, ends):
    """The kernel skips its module teardown (reporting.KERNEL_QUICK_EXIT), but only after every exit handler
    the notebook registered (a Dask cluster's, say) has run."""
    marker = tmp_path / "handler-ran"
    body = (f"import atexit, pathlib\natexit.register(pathlib.Path({str(marker)!r}).write_text, 'closed')\n"
            + ("raise RuntimeError('boom')" if ends != "well" else "print('done')"))
    write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", body)
    if ends == "well":
        reporting.run_stage_notebook("demo", {}, root=tmp_path)
    else:
        with pytest.raises(Exception, match="boom"):
            reporting.run_stage_notebook("demo", {}, root=tmp_path)
    assert marker.read_text() == "closed"


@pytest.mark.parametrize("ends", ["well", "in a cell's error", "before the first cell"])
def test_a_kernel_started_before_papermill_is_shut_down_however_the_run_ends(tmp_path, ends):
    """run_notebook takes a kernel started early (reporting.start_kernel, booting while papermill is imported)
    and shuts it down after a success, a failing cell, or papermill refusing the parameters before any cell,
    its client's sockets closed too."""
    body = "raise RuntimeError('boom in cell')" if ends == "in a cell's error" else "import os\nprint(os.getcwd())"
    notebook = write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", body)
    with warnings.catch_warnings(record=True) as leaks:
        warnings.simplefilter("always", ResourceWarning)
        kernel = reporting.start_kernel(notebook, tmp_path)
        pid = kernel.provisioner.pid
        assert psutil.pid_exists(pid)
        if ends == "well":
            executed, _ = reporting.run_notebook(notebook, {"value": 2}, root=tmp_path, kernel=kernel)
            assert str(tmp_path) in executed.read_text()  # the kernel ran in root
        else:
            parameters = {"value": object()} if ends == "before the first cell" else {}
            with pytest.raises(Exception, match="boom in cell|not JSON serializable"):
                reporting.run_notebook(notebook, parameters, root=tmp_path, kernel=kernel)
        gc.collect()
    assert not psutil.pid_exists(pid) and not kernel.has_kernel
    assert [str(w.message) for w in leaks if issubclass(w.category, ResourceWarning)] == []
    sockets = Path(kernel.ip)  # its Unix sockets are named by an absolute path, and removed
    assert sockets.is_absolute() and not list(sockets.parent.glob(f"{sockets.name}*"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notebooks", "reports"]


def test_a_kernel_interrupted_while_it_starts_leaves_no_process_and_no_file(tmp_path, monkeypatch):
    """Ctrl-C after the kernel's process is launched but before start_kernel returns: the process is stopped,
    its connection file (which holds its signing key) and its socket files removed."""
    from jupyter_client.manager import AsyncKernelManager

    async def interrupted(self, **kwargs):
        raise KeyboardInterrupt

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the connection and socket files go
    monkeypatch.setattr(AsyncKernelManager, "_async_post_start_kernel", interrupted)
    notebook = write_notebook(tmp_path / "notebooks" / "01_demo.ipynb", "pass")
    before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(KeyboardInterrupt):
        reporting.start_kernel(notebook, tmp_path)
    assert {child.pid for child in psutil.Process().children()} - before == set()
    assert list(temp.iterdir()) == []
