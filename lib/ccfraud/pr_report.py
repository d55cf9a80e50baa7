"""The pull-request report: what a branch's pipeline run changed, as Markdown for one PR comment.

``ccfraud pr-report --base main`` compares the workspace's metrics and params with a
base git revision (through ``dvc metrics diff`` / ``dvc params diff``), draws the
precision-recall curve and the confusion matrix to PNG, and writes
``reports/pr_report.md``. CI posts that file with ``cml comment update``, which
uploads the images it references; anyone can run the same command locally.

The Markdown is rendered by pure functions from plain dicts, so the layout is tested
without git or DVC; the subprocess calls and file writes sit in the second half.

The values come from DVC (``--json``), the tables are ours rather than ``dvc metrics diff --md``:
on the default run's metrics.json (commit 01d6821), ``--md --all`` prints 42 rows in
alphabetical order with ``test.auprc`` 21st, behind the candidates' CV scores, and marks a
changed model name, an unchanged one and a new metric alike with ``-``; ours leads with the
11 headline rows (AUPRC first), folds the other 31, and says changed, new or removed
(``dvc params diff --md`` has no change column at all).

The report reads the files the pipeline declares in ``dvc.yaml`` (``reports/metrics.json``
and ``reports/plots/*.csv``, whichever stage writes them: a test checks they are declared),
not a stage's module.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ccfraud import atomicio
from ccfraud.reporting import REPORTS_DIR

REPORT_FILE = REPORTS_DIR / "pr_report.md"
#: What the pipeline's dvc.yaml declares as its metrics file and the plot data read here.
METRICS_PATH = REPORTS_DIR / "metrics.json"
PR_CURVE_CSV = REPORTS_DIR / "plots" / "pr_curve.csv"
CONFUSION_CSV = REPORTS_DIR / "plots" / "confusion.csv"
NOT_RUN = "not found (run the pipeline: `dvc repro`)"
#: The workflow artifact holding reports/ (the name must match pipeline-report.yml).
ARTIFACT_NAME = "pipeline-reports"
#: Metrics a reviewer reads first, in this order; AUPRC leads because accuracy and
#: ROC AUC look excellent on a 0.17% fraud rate whatever the model does.
HEADLINE_METRICS = (
    "test.auprc", "test.roc_auc", "test.precision", "test.recall", "test.f1", "test.alerts", "test.net_saving",
    "reference_untuned_hgb.auprc_margin", "model", "threshold", "cv.auprc_mean", "cv.auprc_std", "valid.auprc",
)
#: Under the headline table: which figures a choice between branches may rest on.
SELECTION_NOTE = ("Choose between branches on `cv.*` and `valid.*`, the figures the train stage chose on. The `test.*` "
                  "figures and the yardstick margin (`reference_untuned_hgb.*`, also on test) estimate what the "
                  "chosen model does on new traffic: picking branches by them would make the test split a second "
                  "validation split, and its figures optimistic.")
#: Sections of metrics.json after the headline, in reading order (all folded below the headline table).
METRIC_SECTIONS = ("test", "cv", "", "seed_baseline", "candidates")
MISSING = "—"


class ReportError(RuntimeError):
    """The report cannot be built (unknown base revision, no metrics, dvc failing); the message says why."""


@dataclass(frozen=True)
class Change:
    """One metric or parameter at the base revision (``old``) and in the workspace (``new``); None if absent."""

    name: str
    old: Any
    new: Any


@dataclass(frozen=True)
class ReportImage:
    """An image for the report: its title and a path relative to the report, or a note saying why it is missing."""

    title: str
    link: str | None
    note: str = ""


@dataclass
class ReportInputs:
    """Everything the Markdown is rendered from, gathered by :func:`collect_inputs`."""

    base: str
    base_sha: str
    head_sha: str
    metrics: dict
    metric_changes: list[Change]
    param_changes: list[Change]
    figures: list[ReportImage] = field(default_factory=list)
    confusion: np.ndarray | None = None
    html_reports: list[str] = field(default_factory=list)
    run_url: str | None = None


# --------------------------------------------------------------------------- pure rendering


def changes_from_dvc(payload: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Change]:
    """Flatten ``dvc metrics|params diff --json`` output ({file: {key: {old, new}}}) into changes.

    Keys are prefixed with their file only when there are several files, so the usual
    single metrics.json reads ``test.auprc`` rather than ``reports/metrics.json:test.auprc``.
    """
    several = len(payload) > 1
    changes = []
    for file, entries in payload.items():
        for key, values in (entries or {}).items():
            name = f"{file}:{key}" if several else key
            changes.append(Change(name, values.get("old"), values.get("new")))
    return changes


def metric_sort_key(name: str) -> tuple:
    """Headline metrics first (AUPRC at the top), then by section, AUPRC-like names first within one."""
    if name in HEADLINE_METRICS:
        return (0, HEADLINE_METRICS.index(name), name)
    section = name.split(".", 1)[0] if "." in name else ""
    rank = METRIC_SECTIONS.index(section) if section in METRIC_SECTIONS else len(METRIC_SECTIONS)
    leaf = name.rsplit(".", 1)[-1]
    return (1 + rank, 0 if leaf.startswith("auprc") else 1, name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _format_float(value: float, scale: float) -> str:
    """``value`` with as many decimals as a number of magnitude ``scale`` gets (so a change reads like its values)."""
    if value != value:  # NaN
        return "nan"
    if scale >= 100:
        return f"{value:,.2f}"
    if scale == 0 or scale >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.3g}"


def format_value(value: Any) -> str:
    """A cell for one value: numbers to 4 decimals (2 above 100), strings as code, absent as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value, abs(value))
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value, separators=(', ', ': '))}`"


def format_change(old: Any, new: Any) -> str:
    """The change column: signed difference for numbers, new/removed, or whether a string changed.

    A difference is rounded like the values it compares, so float noise reads as ``0``.
    """
    if old is None and new is None:
        return ""
    if old is None:
        return "new"
    if new is None:
        return "removed"
    if _is_number(old) and _is_number(new):
        diff = new - old
        if isinstance(diff, int):
            text = str(diff)
        else:
            text = _format_float(float(diff), max(abs(old), abs(new)))
        if float(text.replace(",", "")) == 0:
            return "0"
        return text if text.startswith("-") else f"+{text}"
    return "" if old == new else "changed"


def escape_cell(text: str) -> str:
    """Keep a value inside its table cell: pipes escaped, line breaks flattened."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; the first column left-aligned, the others right-aligned."""
    if not headers:
        raise ValueError("markdown_table: at least one header is required")
    for number, row in enumerate(rows, 1):
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: row {number} has {len(row)} cells, expected {len(headers)}: {row!r}")
    align = [":--"] + ["--:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(escape_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def changes_table(changes: Sequence[Change], base: str, what: str = "Metric") -> str:
    """Old, new and change for each entry, in :func:`metric_sort_key` order."""
    rows = [
        [f"`{c.name}`", format_value(c.old), format_value(c.new), format_change(c.old, c.new)]
        for c in sorted(changes, key=lambda c: metric_sort_key(c.name))
    ]
    return markdown_table([what, f"Old ({base})", "New (this branch)", "Change"], rows)


def metrics_section(changes: Sequence[Change], base: str) -> str:
    """The metrics diff: the headline metrics in a table, every other metric folded below it.

    A metrics file without any headline metric is shown whole rather than folded away.
    """
    if not changes:
        return "No metrics found in the workspace or at the base."
    lines = []
    if all(c.old is None for c in changes):
        lines += [f"The base `{base}` has no metrics yet (first pipeline run in this history): every value is new.", ""]
    main = [c for c in changes if c.name in HEADLINE_METRICS] or list(changes)
    folded = [c for c in changes if c not in main]
    lines += [changes_table(main, base), "", SELECTION_NOTE]
    if folded:
        rows = f"{len(folded)} row" + ("" if len(folded) == 1 else "s")
        lines += ["", f"<details><summary>All other metrics: counts, money, candidates, seed baseline ({rows})"
                  "</summary>", "", changes_table(folded, base), "", "</details>"]
    return "\n".join(lines)


def params_section(changes: Sequence[Change], base: str) -> str:
    """The params diff (only what changed, as ``dvc params diff`` reports it)."""
    if not changes:
        return f"No parameter changed against `{base}`."
    return changes_table(changes, base, what="Parameter")


def summary_lines(metrics: Mapping[str, Any], changes: Sequence[Change]) -> list[str]:
    """Which model and threshold this branch chose, and what they replaced."""
    by_name = {c.name: c for c in changes}
    model = metrics.get("model", "unknown")
    threshold = metrics.get("threshold")
    rule = metrics.get("threshold_rule")
    test = metrics.get("test") or {}
    line = f"**Chosen model:** `{model}`"
    old_model = by_name.get("model")
    if old_model is not None and old_model.old not in (None, model):
        line += f" (base: `{old_model.old}`)"
    if threshold is not None:
        line += f" at threshold **{format_value(threshold)}**"
        if rule:
            line += f" (rule `{rule}`)"
    lines = [line + "."]
    if "auprc" in test:
        text = f"**Test AUPRC:** {format_value(test['auprc'])}"
        ci = test.get("auprc_ci95")
        if isinstance(ci, list) and len(ci) == 2:
            text += f" (95% bootstrap interval {format_value(ci[0])} to {format_value(ci[1])})"
        lines.append(text + ".")
    margin_line = yardstick_line(metrics.get("reference_untuned_hgb") or {})
    if margin_line:
        lines.append(margin_line)
    return lines


#: How the summary states the evaluate stage's verdict on the margin (``reference_untuned_hgb.verdict``).
VERDICT_TEXT = {"win": ".", "loss": ": **the untuned yardstick wins on the test split.**",
                "no difference": ": **no difference the test split can show.**"}


def yardstick_line(reference: Mapping[str, Any]) -> str | None:
    """The margin over the untuned yardstick on test, with the verdict the evaluate stage recorded; None if absent.

    Stated in the summary, not in a folded table: a tuned model no better than scikit-learn's
    defaults is what a reviewer most needs to know about a search. The verdict is read, not
    recomputed (:func:`ccfraud.evaluation.margin_verdict` is the rule); a metrics file without
    one gets the figures alone.
    """
    margin = reference.get("auprc_margin")
    if not isinstance(margin, (int, float)):
        return None
    text = f"**Margin over the untuned yardstick (test AUPRC):** {margin:+.4f}"
    ci = reference.get("auprc_margin_ci95")
    if isinstance(ci, list) and len(ci) == 2:
        text += f" (95% paired bootstrap interval {ci[0]:+.4f} to {ci[1]:+.4f})"
    return text + VERDICT_TEXT.get(reference.get("verdict"), ".")


def seed_baseline_section(metrics: Mapping[str, Any]) -> str:
    """The chosen model next to the seed project's recipe, scored on the same test split."""
    seed = metrics.get("seed_baseline")
    test = metrics.get("test")
    if not seed or not test:
        return "metrics.json has no seed-baseline comparison."
    columns = [("auprc", "AUPRC"), ("roc_auc", "ROC AUC"), ("precision", "Precision"), ("recall", "Recall"),
               ("alerts", "Alerts")]
    rows = [
        [f"chosen: `{metrics.get('model', 'unknown')}`"] + [format_value(test.get(key)) for key, _ in columns],
        ["seed baseline (undersampled logistic regression)"] + [format_value(seed.get(key)) for key, _ in columns],
    ]
    table = markdown_table(["Model (test split)"] + [title for _, title in columns], rows)
    return (f"{table}\n\nThe seed judged its model by accuracy on a balanced 50/50 holdout, which hides how many "
            "false alarms it raises on real traffic: compare AUPRC and precision on the imbalanced test split.")


def confusion_table(counts: np.ndarray) -> str:
    """The 2x2 confusion counts as text (also readable when the image fails to load)."""
    rows = [["actual legit", str(int(counts[0, 0])), str(int(counts[0, 1]))],
            ["actual fraud", str(int(counts[1, 0])), str(int(counts[1, 1]))]]
    return markdown_table(["", "predicted legit", "predicted fraud"], rows)


def figures_section(figures: Sequence[ReportImage], confusion: np.ndarray | None) -> str:
    """Relative image links (``cml comment`` uploads the files they point to) or why an image is missing."""
    parts = []
    for figure in figures:
        if figure.link:
            parts.append(f"![{figure.title}]({figure.link})")
        else:
            parts.append(f"_{figure.title}: {figure.note}_")
    if confusion is not None:
        parts.append(confusion_table(confusion))
    return "\n\n".join(parts)


def html_reports_section(html_reports: Sequence[str], run_url: str | None) -> str:
    """Where to read the stage notebooks: the local files, and in CI the workflow artifact holding them."""
    if not html_reports:
        return "No HTML stage reports found (run `dvc repro`)."
    lines = [f"- `{name}`" for name in html_reports]
    if run_url:
        lines += ["", f"They are attached to [this workflow run]({run_url}) as the artifact `{ARTIFACT_NAME}` "
                      "(download, unzip, open in a browser)."]
    else:
        lines += ["", "Open them in a browser; in CI they are attached to the workflow run as the artifact "
                      f"`{ARTIFACT_NAME}`."]
    return "\n".join(lines)


def render_report(inputs: ReportInputs) -> str:
    """The whole Markdown report, from already-collected inputs."""
    base = inputs.base
    sections = [
        "## Fraud-detection pipeline report",
        f"This branch's pipeline run (workspace at `{inputs.head_sha}`) compared with `{base}` "
        f"(`{inputs.base_sha}`).",
        "\n\n".join(summary_lines(inputs.metrics, inputs.metric_changes)),
        "### Metrics",
        metrics_section(inputs.metric_changes, base),
        "### Against the seed baseline",
        seed_baseline_section(inputs.metrics),
        "### Parameters",
        params_section(inputs.param_changes, base),
        "### Plots (test split)",
        figures_section(inputs.figures, inputs.confusion),
        "### Stage reports",
        html_reports_section(inputs.html_reports, inputs.run_url),
    ]
    return "\n\n".join(sections) + "\n"


def ci_run_url(env: Mapping[str, str]) -> str | None:
    """The GitHub Actions run page when running in Actions (its artifacts are listed there), else None."""
    keys = ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    if env.get("GITHUB_ACTIONS") != "true" or not all(env.get(k) for k in keys):
        return None
    return f"{env['GITHUB_SERVER_URL']}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"


def confusion_counts(frame: pd.DataFrame) -> np.ndarray:
    """2x2 counts [[TN, FP], [FN, TP]] from the per-row ``actual``/``predicted`` 0/1 columns of confusion.csv."""
    missing = {"actual", "predicted"} - set(frame.columns)
    if missing:
        raise ReportError(f"confusion plot data: expected columns actual, predicted; missing {sorted(missing)}, "
                          f"found {list(frame.columns)}")
    actual = frame["actual"].to_numpy()
    predicted = frame["predicted"].to_numpy()
    bad = ~np.isin(actual, (0, 1)) | ~np.isin(predicted, (0, 1))
    if bad.any():
        raise ReportError(f"confusion plot data: labels must be 0/1; {int(bad.sum())} other values, "
                          f"first at row {int(np.argmax(bad))}")
    counts = np.zeros((2, 2), dtype=int)
    np.add.at(counts, (actual.astype(int), predicted.astype(int)), 1)
    return counts


# --------------------------------------------------------------------------- images


def _save_png(fig, path: Path) -> Path:
    with atomicio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def draw_pr_curve(current: pd.DataFrame, base: pd.DataFrame | None, path: Path, *, base_label: str,
                  operating_point: tuple[float, float] | None = None) -> Path:
    """PR curve of this branch (and of the base, dashed, when it has one) to a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    # Steps, as scikit-learn draws it: precision holds until the next threshold (no interpolation).
    if base is not None:
        ax.plot(base["recall"], base["precision"], drawstyle="steps-post", linestyle="--", color="0.55",
                label=f"base ({base_label})")
    ax.plot(current["recall"], current["precision"], drawstyle="steps-post", color="C0", label="this branch")
    if operating_point is not None:
        ax.plot(*operating_point, "o", color="C3", label="chosen threshold")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02),
           title="Precision-recall curve (test split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save_png(fig, path)


def draw_confusion(counts: np.ndarray, path: Path, *, threshold: float | None = None) -> Path:
    """The 2x2 confusion matrix as an annotated heatmap PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.log1p(counts), cmap="Blues")  # log: 50 frauds next to 50,000 legit rows
    for (row, col), value in np.ndenumerate(counts):
        dark = image.norm(np.log1p(value)) > 0.5
        ax.text(col, row, f"{value:,}", ha="center", va="center", color="white" if dark else "black", fontsize=13)
    ax.set_xticks([0, 1], ["legit", "fraud"])
    ax.set_yticks([0, 1], ["legit", "fraud"])
    ax.set(xlabel="predicted", ylabel="actual")
    title = "Confusion matrix (test split)"
    if threshold is not None:
        title += f"\nat threshold {threshold:.4g}"
    ax.set_title(title)
    return _save_png(fig, path)


# --------------------------------------------------------------------------- git / dvc edges


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise ReportError(f"cannot run {cmd[0]!r}: {error}") from error


def resolve_revision(base: str, root: Path) -> str:
    """The commit a base name points to; a clear error when the repository does not have it."""
    result = _run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], root)
    if result.returncode != 0:
        inside = _run(["git", "rev-parse", "--git-dir"], root)
        if inside.returncode != 0:
            raise ReportError(f"{root.resolve()} is not a git repository: {inside.stderr.strip()}")
        remote, _, branch = base.partition("/")
        fetch = f"git fetch {remote} {branch}" if branch else "git fetch"
        raise ReportError(
            f"base revision '{base}' not found in the git repository at {root.resolve()}; fetch it first "
            f"(`{fetch}`; in CI check out with fetch-depth: 0)"
        )
    return result.stdout.strip()


def head_revision(root: Path) -> str:
    """Short HEAD commit, or ``(no commits)`` in a repository that has none yet."""
    result = _run(["git", "rev-parse", "--short", "HEAD"], root)
    return result.stdout.strip() if result.returncode == 0 else "(no commits)"


def dvc_diff(kind: str, base: str, root: Path) -> dict:
    """``dvc metrics diff`` or ``dvc params diff`` of the workspace against ``base``, as parsed JSON.

    Metrics use ``--all`` so unchanged values are listed too: a reviewer wants the
    level, not only the delta. Params list only what changed.
    """
    if kind not in ("metrics", "params"):
        raise ValueError(f"dvc_diff: kind must be 'metrics' or 'params', got {kind!r}")
    cmd = [sys.executable, "-m", "dvc", kind, "diff", "--json"] + (["--all"] if kind == "metrics" else []) + [base]
    result = _run(cmd, root)
    if result.returncode != 0:
        raise ReportError(f"`dvc {kind} diff {base}` failed in {root.resolve()} (exit {result.returncode}): "
                          f"{result.stderr.strip() or result.stdout.strip()}")
    try:
        return json.loads(result.stdout or "{}")
    except json.JSONDecodeError as error:
        raise ReportError(f"`dvc {kind} diff --json {base}` printed something that is not JSON: "
                          f"{result.stdout[:300]!r}") from error


def git_show(revision: str, path: str, root: Path) -> str | None:
    """A file's text at a revision, or None when it did not exist there."""
    result = _run(["git", "show", f"{revision}:./{path}"], root)
    return result.stdout if result.returncode == 0 else None


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: expected columns {list(columns)}, missing {missing}; found {list(frame.columns)}")
    return frame


def _relative_link(target: Path, report: Path) -> str:
    return Path(os.path.relpath(target.resolve(), report.resolve().parent)).as_posix()


def collect_inputs(base: str, *, root: Path = Path("."), out: Path = REPORT_FILE,
                   env: Mapping[str, str] | None = None) -> ReportInputs:
    """Run the git/dvc queries and draw the PNGs next to the plot data; return what the Markdown needs."""
    root = Path(root)
    reports = root / REPORTS_DIR
    metrics_path = root / METRICS_PATH
    if not metrics_path.exists():
        raise ReportError(f"{metrics_path} not found: run the pipeline first (`dvc repro` or `make pipeline`)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{metrics_path} is not valid JSON: {error}") from error
    base_sha = resolve_revision(base, root)
    metric_changes = changes_from_dvc(dvc_diff("metrics", base, root))
    param_changes = changes_from_dvc(dvc_diff("params", base, root))

    figures: list[ReportImage] = []
    pr_csv = root / PR_CURVE_CSV
    if pr_csv.exists():
        base_text = git_show(base, PR_CURVE_CSV.as_posix(), root)
        base_curve = None
        if base_text:
            base_curve = pd.read_csv(io.StringIO(base_text))
            if not {"recall", "precision"} <= set(base_curve.columns):
                base_curve = None
        test = metrics.get("test") or {}
        point = (test["recall"], test["precision"]) if {"recall", "precision"} <= set(test) else None
        png = draw_pr_curve(_read_csv(pr_csv, ("recall", "precision")), base_curve, pr_csv.with_suffix(".png"),
                            base_label=base, operating_point=point)
        figures.append(ReportImage("Precision-recall curve", _relative_link(png, root / out)))
    else:
        figures.append(ReportImage("Precision-recall curve", None, f"{pr_csv} {NOT_RUN}"))

    confusion = None
    confusion_csv = root / CONFUSION_CSV
    if confusion_csv.exists():
        confusion = confusion_counts(_read_csv(confusion_csv, ("actual", "predicted")))
        png = draw_confusion(confusion, confusion_csv.with_suffix(".png"), threshold=metrics.get("threshold"))
        figures.append(ReportImage("Confusion matrix", _relative_link(png, root / out)))
    else:
        figures.append(ReportImage("Confusion matrix", None, f"{confusion_csv} {NOT_RUN}"))

    html_reports = sorted((REPORTS_DIR / p.name).as_posix() for p in reports.glob("[0-9][0-9]_*.html"))
    return ReportInputs(
        base=base, base_sha=base_sha[:7], head_sha=head_revision(root), metrics=metrics,
        metric_changes=metric_changes, param_changes=param_changes, figures=figures, confusion=confusion,
        html_reports=html_reports, run_url=ci_run_url(os.environ if env is None else env),
    )


def write_report(base: str, *, root: Path = Path("."), out: Path = REPORT_FILE,
                 env: Mapping[str, str] | None = None) -> Path:
    """Build the report against ``base`` and write it atomically to ``root / out``; return that path."""
    inputs = collect_inputs(base, root=root, out=out, env=env)
    return atomicio.write_text(Path(root) / out, render_report(inputs))
