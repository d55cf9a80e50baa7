"""Run a stage notebook with papermill and render it to an HTML report.

The executed notebook *is* the report: one artefact a reviewer can open in a
browser, with code cells hidden unless the stage's ``show_code`` parameter asks.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import sys
import tempfile
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccfraud import atomicio

if TYPE_CHECKING:
    from jupyter_client.manager import AsyncKernelManager

NOTEBOOKS_DIR = Path("notebooks")
REPORTS_DIR = Path("reports")


def without_iri_grammar() -> None:
    """Keep jsonschema from building rfc3987-syntax's IRI grammar when papermill imports nbformat.

    jupyter-events installs rfc3987-syntax (jsonschema's ``format-nongpl`` extra) and jsonschema
    imports it, if present, to check the ``iri`` formats: compiling its Lark grammar took 1.6 s of
    the 2.5 s ``import papermill`` costs every stage (``python -X importtime``). No notebook
    schema uses those formats, so this process marks the module absent, for the rest of its life,
    before nbformat loads. pytest does it first thing too (:mod:`ccfraud.pytest_startup`).
    """
    sys.modules.setdefault("rfc3987_syntax", None)


#: Run by the kernel at its start: the kernel then leaves with ``os._exit`` instead of tearing its modules down
#: one by one (0.8-1.1 s of every stage's shutdown with pandas, scikit-learn and matplotlib loaded; 0.1 s
#: without). Registered first among the handlers added after start-up, it runs after them: the notebook's
#: own and those of the libraries it imports (a Dask cluster's, multiprocessing's). It skips what the kernel
#: registered before it (IPython's exit routine, logging's flush, weakref finalisers, ipykernel's socket
#: close), as nbclient's "immediate" shutdown (SIGKILL) does: the outputs are all delivered by then, the
#: kernel only exits when asked, after the last cell. Given on the command line, it replaces any
#: ``exec_lines`` of the user's IPython profile in the stage's kernel.
KERNEL_QUICK_EXIT = "--IPKernelApp.exec_lines=import atexit, os; atexit.register(os._exit, 0)"


#: papermill's name for :func:`_started_kernel_engine`'s engine.
STARTED_KERNEL_ENGINE = "ccfraud-started-kernel"


def stage_notebook(stage: str, notebooks_dir: Path = NOTEBOOKS_DIR) -> Path:
    """Find ``NN_<stage>.ipynb``: the notebook that implements a DVC stage."""
    matches = sorted(notebooks_dir.glob(f"[0-9][0-9]_{stage}.ipynb"))
    if len(matches) != 1:
        found = sorted(p.name for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
        raise ValueError(f"stage '{stage}': expected one notebook {notebooks_dir}/NN_{stage}.ipynb, found {found}")
    return matches[0]


def html_exporter(*, show_code: bool = False) -> Any:
    """nbconvert's HTML exporter with its templates compiled: input cells and prompts hidden unless ``show_code``.

    It renders an empty notebook once, so that a stage can make it while its kernel runs (on a
    core the kernel leaves idle) and the report's own render is all that remains afterwards:
    0.1 s instead of 0.5-0.75 s (importing nbconvert and compiling its Jinja templates).
    """
    without_iri_grammar()
    import nbformat  # imported here, like papermill: nbformat's jsonschema import alone takes seconds
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=not show_code, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.from_notebook_node(nbformat.v4.new_notebook())
    return exporter


def notebook_to_html(notebook: Path, html: Path, *, show_code: bool = False, exporter: Any = None) -> Path:
    """Render an executed notebook to HTML (``exporter``: an :func:`html_exporter` made with this ``show_code``)."""
    import nbformat

    exporter = html_exporter(show_code=show_code) if exporter is None else exporter
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    atomicio.write_text(html, body)
    return html


def run_stage_notebook(
    stage: str,
    parameters: dict[str, Any],
    *,
    root: Path = Path("."),
    show_code: bool = False,
) -> tuple[Path, Path]:
    """Execute ``notebooks/NN_<stage>.ipynb`` with ``parameters`` and write its ipynb and HTML reports."""
    root = root.resolve()
    return run_notebook(stage_notebook(stage, root / NOTEBOOKS_DIR), parameters, root=root, show_code=show_code)


def start_kernel(notebook: Path, cwd: Path) -> AsyncKernelManager:
    """Start ``notebook``'s kernel in ``cwd`` and return its (asyncio) kernel manager.

    Started before papermill is even imported: the kernel boots in its own process (0.6-0.9 s)
    while this one imports papermill (0.5-0.8 s) and prepares the notebook, instead of after:
    from the evaluate stage's start to its kernel's launch, 1.24 s before, 0.51 s now (strace);
    the stage, 9.3 s -> 8.5 s (five interleaved pairs, medians). Same kernel as papermill's
    own: the notebook's kernelspec, Unix sockets (only this user reaches them, and ipykernel does
    not warn on every run that TCP traffic is unencrypted), no history file, the quick exit.
    """
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    document = json.loads(Path(notebook).read_text())
    spec = document.get("metadata", {}).get("kernelspec", {})
    # Unix sockets named by an absolute path: the kernel runs in cwd, papermill connects from cwd while it
    # executes, but a kernel papermill never reached is shut down (and its sockets removed) from anywhere.
    # (Short: a Unix socket's path has at most 107 bytes.)
    sockets = {"transport": "ipc", "ip": str(Path(tempfile.gettempdir()) / f"ccfraud-kernel-{uuid.uuid4().hex[:12]}")}
    manager = AsyncKernelManager(kernel_name=spec.get("name", "python3"), **(sockets if os.name == "posix" else {}))
    try:
        warm = f"; __import__('ccfraud.reporting').reporting.import_quietly({notebook_imports(document)!r})"
        startup = [KERNEL_QUICK_EXIT + warm, "--HistoryManager.hist_file=:memory:"]
        run_sync(manager.start_kernel)(extra_arguments=startup, cwd=str(cwd))
    except BaseException:  # launched but not started (Ctrl-C during its boot, say): nothing of it is left
        stop_kernel(manager)
        raise
    return manager


def notebook_imports(document: dict[str, Any]) -> list[str]:
    """The modules a notebook's code cells import at their top level, in order (``from a import b``: a, a.b).

    :func:`start_kernel` has its kernel import them as it boots, on the core the stage's process
    leaves idle while it imports papermill and prepares the notebook: the notebook's own imports
    (0.8-2.1 s of pandas, scikit-learn, matplotlib) then find them loaded. The evaluate stage: 7.8 s
    -> 7.2 s (nine interleaved pairs, medians), its figures byte for byte the same; the Dask engine's
    end-to-end test with another process keeping a core busy: 46.7, 48.1, 56.4 s against 51.8, 53.2,
    56.7 s (interleaved). No name is bound: only the notebook's cells bind them. What a module
    prints or warns as it is imported happens before papermill listens, so it is not in the report,
    and a module is imported before any cell runs: a notebook must not set up (``os.environ``,
    ``sys.path``) what its imports read. The stage notebooks import first, then configure.
    """
    modules: list[str] = []
    for cell in document.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        try:
            with warnings.catch_warnings():  # an invalid escape in a cell is the kernel's to report
                warnings.simplefilter("ignore")
                tree = ast.parse("".join(cell.get("source", "")))
        except (SyntaxError, ValueError):  # IPython syntax (magics), a NUL byte: the kernel reads those
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"]
    return list(dict.fromkeys(modules))


def import_quietly(modules: list[str]) -> None:
    """Import what can be imported of ``modules`` (``a.b`` may name a function, not a module), silently.

    Run in a :func:`start_kernel` kernel before the notebook: a module that fails to import fails
    again in the notebook's own cell, where its error is shown and stops the stage.
    """
    for name in modules:
        parent, _, attribute = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], attribute):
            continue  # from a import b, b an attribute of a (a function, a class, a loaded submodule)
        try:
            importlib.import_module(name)
        except Exception:
            continue


def stop_kernel(manager: AsyncKernelManager) -> None:
    """Shut a :func:`start_kernel` kernel down unless papermill did (after the last cell, or a cell's failure)."""
    from jupyter_core.utils import run_sync

    if manager.has_kernel:
        run_sync(manager.shutdown_kernel)(now=True)
    else:
        run_sync(manager.cleanup_resources)()  # its connection file (holding its signing key), its socket files


@functools.cache
def _started_kernel_engine() -> str:
    """Register, once per process, papermill's nbclient engine on a kernel started beforehand; its name.

    papermill hands its engine's keyword arguments to nbclient, which runs on a given kernel
    manager (:func:`start_kernel`) but then leaves the kernel and its client's sockets open: this
    engine asks nbclient to shut both down after the last cell, as it does for a kernel of its own.
    """
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    class StartedKernelEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, *, km, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            # The arguments as papermill's own engine passes them on (its execute_managed_notebook).
            kwargs = remove_args(["input_path"], **kwargs)
            final = merge_kwargs(remove_args(["timeout", "startup_timeout"], **kwargs),
                                 timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                                 startup_timeout=start_timeout, kernel_name=kernel_name, log=logger,
                                 log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
            return PapermillNotebookClient(nb_man, km=km, **final).execute(cleanup_kc=True)

    papermill_engines.register(STARTED_KERNEL_ENGINE, StartedKernelEngine)
    return STARTED_KERNEL_ENGINE


def run_notebook(
    source: Path,
    parameters: dict[str, Any],
    *,
    root: Path = Path("."),
    reports_dir: Path | None = None,
    show_code: bool = False,
    kernel: AsyncKernelManager | None = None,
) -> tuple[Path, Path]:
    """Execute the notebook ``source`` in ``root``; write ``<name>.ipynb`` and ``.html`` to ``reports_dir``.

    ``reports_dir`` defaults to ``root/reports``. The executed notebook is written to a
    temp file first: on failure it is kept next to the reports as ``<name>.failed.ipynb``
    (to see which cell failed) and no report is left that looks like a success. Stage
    notebooks and the monitor notebook (not a stage) both run through here. ``kernel``: one
    :func:`start_kernel` started for ``source`` in ``root`` (else it is started here, first
    thing); it is shut down before this returns or raises.
    """
    root = root.resolve()
    try:
        kernel = start_kernel(source, root) if kernel is None else kernel
        return _execute_and_render(source, parameters, root, reports_dir, show_code, kernel)
    finally:
        if kernel is not None:
            stop_kernel(kernel)


def _execute_and_render(source: Path, parameters: dict[str, Any], root: Path, reports_dir: Path | None,
                        show_code: bool, kernel: AsyncKernelManager) -> tuple[Path, Path]:
    without_iri_grammar()
    import papermill

    reports = root / REPORTS_DIR if reports_dir is None else Path(reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    executed = reports / Path(source).name
    html = executed.with_suffix(".html")
    failed = executed.with_suffix(".failed.ipynb")
    for stale in (executed, html, failed):
        stale.unlink(missing_ok=True)
    warming = ThreadPoolExecutor(max_workers=1, thread_name_prefix="html")
    exporter = warming.submit(html_exporter, show_code=show_code)  # while the kernel runs
    warming.shutdown(wait=False)
    # The HTML is rendered from the temp notebook and committed first, the notebook last: whatever fails (a cell,
    # the render, the notebook's commit, an interrupt), no report is left that looks like a success.
    try:
        with atomicio.atomic_path(executed, suffix=".ipynb") as tmp:
            try:
                papermill.execute_notebook(
                    str(source),
                    str(tmp),
                    parameters=parameters,
                    cwd=str(root),
                    progress_bar=True,
                    report_mode=False,
                    engine_name=_started_kernel_engine(),
                    km=kernel,
                )
                notebook_to_html(tmp, html, show_code=show_code, exporter=exporter.result())
            except BaseException:
                _keep_failed(tmp, failed)
                raise
    except BaseException:
        html.unlink(missing_ok=True)  # rendered, then the notebook's commit failed or was interrupted
        raise
    return executed, html


def _keep_failed(tmp: Path, failed: Path) -> None:
    """Keep what a failed run executed as ``failed`` (to see which cell failed), if anything; never raise over the
    run's own error."""
    try:
        if tmp.exists() and tmp.stat().st_size:
            atomicio.write_bytes(failed, tmp.read_bytes())
    except OSError as error:
        print(f"[ccfraud] could not keep the failed notebook as {failed}: {error}", file=sys.stderr, flush=True)
