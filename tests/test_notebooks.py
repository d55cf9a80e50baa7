"""Notebooks are committed clean and keep the contract papermill and DVC rely on.

Running them with their default parameters is nbval's job (``--nbval-lax notebooks``,
configured in pyproject.toml); these tests check the files themselves.
"""

from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Notebooks that implement a DVC stage (NN_<stage>.ipynb); others (the monitor) run outside the pipeline.
STAGE_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SECRET_NAMES = ("aws_access_key_id", "aws_secret_access_key", "secret", "password", "token")


def test_one_notebook_per_dvc_stage():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert [nb.stem.split("_", 1)[1] for nb in STAGE_NOTEBOOKS] == list(stages)
    for index, (name, stage) in enumerate(stages.items(), start=1):
        assert f"notebooks/{index:02d}_{name}.ipynb" in stage["deps"]
        assert f"reports/{index:02d}_{name}.html" in stage["outs"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell_without_secrets(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    source = tagged[0].source.lower()
    assert not any(name in source for name in SECRET_NAMES), f"{path.name}: a secret-looking parameter"
