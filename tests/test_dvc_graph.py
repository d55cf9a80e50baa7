"""dvc.yaml's code dependencies are exactly what each stage imports, derived here from the source.

A stage runs ``ccfraud stage <name>`` (``cli._cmd_stage``), which executes
``notebooks/NN_<name>.ipynb``. Its code is that notebook and every ``lib/ccfraud`` module the
notebook's code cells or the stage command import, directly or through other modules (imports
inside functions count: a stage may call them). A dependency missing from dvc.yaml means a code
change that does not rerun the stage; an extra one means reruns for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ccfraud"
LIB = ROOT / "lib" / PACKAGE
#: The function of the command line that runs a stage: its imports (and the module's own) are every stage's.
STAGE_COMMAND = ("cli", "_cmd_stage")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_path(name: str) -> Path | None:
    """``lib/ccfraud/<name>.py`` (or a subpackage's ``__init__.py``) for a dotted module name, None if not one."""
    parts = name.split(".")
    candidate = LIB.joinpath(*parts).with_suffix(".py")
    if candidate.exists():
        return candidate
    package = LIB.joinpath(*parts, "__init__.py")
    return package if package.exists() else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(tree: ast.AST) -> set[str]:
    """The ``ccfraud`` modules (dotted, without the package) an AST imports, anywhere but ``if TYPE_CHECKING``."""
    found: set[str] = set()
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for child in node.body for n in ast.walk(child)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".", 1)[1] for alias in node.names if alias.name.startswith(f"{PACKAGE}.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE:
                # `from ccfraud import x`: x is a module or a name of the package's __init__
                found |= {alias.name for alias in node.names if module_path(alias.name)} | {"__init__"}
            elif node.module.startswith(f"{PACKAGE}."):
                # `from ccfraud.serving import forest`: the subpackage, and forest if it is a module of it
                found.add(parent := node.module.split(".", 1)[1])
                found |= {f"{parent}.{alias.name}" for alias in node.names if module_path(f"{parent}.{alias.name}")}
    return found


def parse_file(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def closure(start: set[str]) -> set[Path]:
    """The files of ``start`` and of everything they import, transitively (each importing the package's __init__)."""
    seen: set[Path] = set()
    todo = [LIB / "__init__.py"] + [path for name in start if (path := module_path(name)) is not None]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [found for name in imported_modules(parse_file(path)) if (found := module_path(name)) is not None]
    return seen


def stage_command_modules() -> set[str]:
    """What the stage command imports: ``cli``'s module-level imports, and those inside its stage function
    and the functions of ``cli`` it calls, transitively."""
    module, function = STAGE_COMMAND
    tree = parse_file(module_path(module))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top_level = ast.Module(body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[])
    found, todo, seen = {module} | imported_modules(top_level), [function], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found |= imported_modules(functions[name])
        todo += [call.func.id for call in ast.walk(functions[name])
                 if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in functions]
    return found


def notebook_modules(notebook: Path) -> set[str]:
    cells = nbformat.read(notebook, as_version=4).cells
    return imported_modules(ast.parse("\n".join(c.source for c in cells if c.cell_type == "code")))


def derived_code_deps(notebook: Path) -> set[str]:
    """The notebook, the stage command's module, and every module either imports, transitively."""
    command = module_path(STAGE_COMMAND[0])
    files = {command} | closure(notebook_modules(notebook) | stage_command_modules() - {STAGE_COMMAND[0]})
    return {str(path.relative_to(ROOT)) for path in files | {notebook}}


def declared_code_deps(stage: dict) -> set[str]:
    return {dep for dep in stage.get("deps", []) if dep.startswith(("lib/", "notebooks/"))}


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(name):
    notebook = next((ROOT / "notebooks").glob(f"[0-9][0-9]_{name}.ipynb"))
    derived, declared = derived_code_deps(notebook), declared_code_deps(STAGES[name])
    assert declared == derived, (f"stage {name}: missing from dvc.yaml {sorted(derived - declared)}, "
                                 f"not imported {sorted(declared - derived)}")


def test_no_stage_reads_another_stage_notebook_module_for_a_shared_helper():
    """The EDA stage's notebook does not reach into the train/evaluate stages' modules."""
    eda = notebook_modules(next((ROOT / "notebooks").glob("[0-9][0-9]_eda_preprocess.ipynb")))
    assert not eda & {"baseline", "modeling", "training", "assessment", "evaluation"}


def test_every_declared_output_is_read_by_a_later_stage_or_is_a_report():
    """An output is a report (HTML, executed notebook, metrics, plots), the model, or another stage's dependency."""
    deps = {dep for stage in STAGES.values() for dep in stage.get("deps", [])}
    for name, stage in STAGES.items():
        for out in stage.get("outs", []):
            out = out if isinstance(out, str) else next(iter(out))
            assert out.startswith(("reports/", "models/")) or any(
                dep == out or dep.startswith(f"{out}/") for dep in deps), f"stage {name}: nothing reads {out}"


def test_the_derivation_sees_imports_inside_functions_and_skips_type_checking():
    tree = ast.parse("from ccfraud import schema\nif TYPE_CHECKING:\n    from ccfraud import lake\n"
                     "def f():\n    from ccfraud.training import score\n    import ccfraud.modeling\n")
    assert imported_modules(tree) == {"schema", "training", "modeling", "__init__"}


def test_only_the_evaluate_stage_reads_the_test_split():
    readers = {name for name, stage in STAGES.items()
               if any(dep.startswith("data/processed/test") for dep in stage.get("deps", []))}
    assert readers == {"evaluate"}
