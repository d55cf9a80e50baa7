"""The few entry points users type: ``ccfraud <command>``.

Each command is a thin shell around a library function, so everything it does is
also importable and tested without a subprocess.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml


def load_stage_params(stage: str, params_file: Path = Path("params.yaml")) -> dict:
    """Read one stage's section of params.yaml (the stage reads nothing else)."""
    if not params_file.exists():
        raise SystemExit(f"error: {params_file} not found (run from the repository root)")
    params = yaml.safe_load(params_file.read_text()) or {}
    if stage not in params:
        raise SystemExit(f"error: {params_file} has no section '{stage}'; sections: {sorted(params)}")
    return dict(params[stage] or {})


def parse_assignments(assignments: list[str]) -> dict:
    """``key=value`` pairs from the command line; values are read as YAML (``null``, numbers, lists)."""
    out = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"error: -p expects key=value with a Python identifier as key, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def stage_parameters(stage: str, params_file: Path = Path("params.yaml"),
                     assignments: Sequence[str] = ()) -> tuple[dict, bool]:
    """The parameters ``ccfraud stage`` passes to a stage's notebook, and whether its report shows the code.

    The stage's params.yaml section, then the ``-p`` pairs; ``show_code`` is taken out (it is
    not a notebook parameter).
    """
    params = load_stage_params(stage, params_file)
    show_code = bool(params.pop("show_code", False))
    params.update(parse_assignments(list(assignments)))
    return params, show_code


def refuse_secret_parameters(params: dict) -> None:
    """Stop (SystemExit naming the parameter) if a URI-valued parameter carries credentials.

    papermill writes the parameters into the executed notebook before the first cell runs, and a
    failed run's notebook is kept: the check must come before the notebook exists, not inside it.
    """
    uris = {key: value for key, value in params.items() if isinstance(value, str) and "://" in value}
    if not uris:
        return  # spare the stage process importing sources (pandas, boto3)
    from ccfraud.sources import SourceError, refuse_credentials

    try:
        for key, value in uris.items():
            refuse_credentials(value, what=f"parameter '{key}'")
    except SourceError as error:
        raise SystemExit(f"error: {error}") from None


def _cmd_stage(args: argparse.Namespace) -> int:
    from ccfraud import reporting

    params, show_code = stage_parameters(args.name, Path(args.params), args.param)
    refuse_secret_parameters(params)
    notebook = reporting.stage_notebook(args.name, Path.cwd() / reporting.NOTEBOOKS_DIR)
    kernel = reporting.start_kernel(notebook, Path.cwd())  # it boots while this process logs and imports papermill
    try:
        print(f"[ccfraud] stage '{args.name}' with parameters {params}", file=sys.stderr, flush=True)
    except BaseException:
        reporting.stop_kernel(kernel)
        raise
    executed, html = reporting.run_notebook(notebook, params, show_code=show_code, kernel=kernel)
    print(f"[ccfraud] wrote {executed} and {html}", file=sys.stderr, flush=True)
    return 0


def _cmd_pr_report(args: argparse.Namespace) -> int:
    from ccfraud.pr_report import ReportError, write_report

    try:
        out = write_report(args.base, out=Path(args.out))
    except ReportError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"[ccfraud] wrote {out} (against {args.base})", file=sys.stderr, flush=True)
    return 0


def _cmd_s3_server(args: argparse.Namespace) -> int:
    from ccfraud.s3_server import run_local_server

    run_local_server(args.dir, bucket=args.bucket, s3_port=args.port)
    return 0


def _cmd_publish_model(args: argparse.Namespace) -> int:
    from ccfraud.artifacts import ArtifactError
    from ccfraud.publish import PublishError, publish_model
    from ccfraud.s3 import S3Error

    try:
        uri = publish_model(Path(args.model_dir), args.uri_prefix, endpoint_url=args.endpoint_url)
    except (ArtifactError, PublishError, S3Error) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"[ccfraud] published {args.model_dir} to {uri}", file=sys.stderr, flush=True)
    print(uri)  # stdout holds only the URI, for scripts: CCFRAUD_MODEL=$(ccfraud publish-model ...)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ccfraud.artifacts import ArtifactError
    from ccfraud.batch import BatchError, score
    from ccfraud.compute import ComputeError
    from ccfraud.lake import LakeError
    from ccfraud.s3 import S3Error
    from ccfraud.schema import SchemaError

    def progress(line: str) -> None:
        print(f"[ccfraud] {line}", file=sys.stderr, flush=True)

    try:
        result = score(args.model, args.input, args.output, endpoint_url=args.endpoint_url, progress=progress)
    except (ArtifactError, BatchError, ComputeError, LakeError, S3Error, SchemaError) as error:
        raise SystemExit(f"error: {error}") from None
    print(result.output)  # stdout holds only the committed dataset's location, for scripts
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    """Run the monitor notebook; exit 0 when quiet, 3 when a rule fired (listed on stdout), 4 on unusable input."""
    import json

    from papermill.exceptions import PapermillExecutionError

    from ccfraud import monitoring
    from ccfraud.reporting import run_notebook
    from ccfraud.sources import SourceError, refuse_credentials

    params = load_stage_params("monitor", Path(args.params))
    show_code = bool(params.pop("show_code", False))
    compute = load_stage_params("compute", Path(args.params))
    notebook = Path("notebooks/monitor.ipynb")
    if not notebook.exists():
        raise SystemExit(f"error: {notebook} not found (run from the repository root)")
    try:
        monitoring.Rules.from_params(params)  # bad rules fail here, not in the middle of the notebook
        # Parameters are recorded in the executed notebook: a URI with credentials must never get there.
        refuse_credentials(args.data, what="data")
        refuse_credentials(args.model, what="model")
        if args.endpoint_url:
            refuse_credentials(args.endpoint_url, what="endpoint_url")
    except (monitoring.MonitorError, SourceError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return monitoring.EXIT_BAD_INPUT
    reports = Path(args.reports).resolve()
    parameters = {**params, "model_dir": args.model, "processed_dir": args.processed, "data": args.data,
                  "reports_dir": str(reports), "endpoint_url": args.endpoint_url,
                  "engine": compute.get("engine", "pandas"),
                  "partition_rows": compute.get("partition_rows", monitoring.DEFAULT_PARTITION_ROWS)}
    print(f"[ccfraud] monitor {args.data} with model {args.model} against {args.processed}",
          file=sys.stderr, flush=True)
    (reports / monitoring.REPORT_FILE).unlink(missing_ok=True)  # no earlier verdict may pass for this one
    try:
        _, html = run_notebook(notebook, parameters, reports_dir=reports, show_code=show_code)
    except PapermillExecutionError as error:
        if error.ename in monitoring.BAD_INPUT_ERROR_NAMES:
            print(f"error: {error.evalue}", file=sys.stderr, flush=True)
            return monitoring.EXIT_BAD_INPUT
        raise
    report = json.loads((reports / monitoring.REPORT_FILE).read_text())
    print(f"[ccfraud] wrote {html} and {reports / monitoring.REPORT_FILE}", file=sys.stderr, flush=True)
    # stdout holds the verdict, one line per rule that fired, for a scheduler's log or a CI job's summary
    for line in report["alerts"]:
        print(f"ALERT {line}")
    if not report["alerts"]:
        print("quiet: no monitoring rule fired")
    return int(report["exit_code"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccfraud", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    stage = commands.add_parser("stage", help="run one pipeline stage notebook and render its HTML report")
    stage.add_argument("name", help="stage name: download, eda_preprocess, train or evaluate "
                       "(runs notebooks/NN_<name>.ipynb)")
    stage.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    stage.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="extra notebook parameter, e.g. the stage's input/output paths (repeatable)")
    stage.set_defaults(func=_cmd_stage)

    report = commands.add_parser("pr-report", help="write the pull-request Markdown report: metrics and params "
                                 "diff against a base revision, plots, stage reports")
    report.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    report.add_argument("--out", default="reports/pr_report.md", help="Markdown file (default: reports/pr_report.md)")
    report.set_defaults(func=_cmd_pr_report)

    server = commands.add_parser("s3-server", help="run a local SeaweedFS S3 server on 127.0.0.1 until Ctrl-C")
    server.add_argument("--dir", default=".s3-data", help="data directory (default: .s3-data)")
    server.add_argument("--bucket", default="ccfraud", help="bucket to create (default: ccfraud)")
    server.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1 (default: 8333)")
    server.set_defaults(func=_cmd_s3_server)

    publish = commands.add_parser("publish-model", help="verify a trained model and upload it to "
                                  "<URI_PREFIX>/<model_version>/ (never overwriting another model)")
    publish.add_argument("model_dir", metavar="MODEL_DIR", help="directory with model.skops and model.json")
    publish.add_argument("uri_prefix", metavar="URI_PREFIX", help="S3 prefix, e.g. s3://bucket/models/")
    publish.add_argument("--endpoint-url", default=None,
                         help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL or AWS)")
    publish.set_defaults(func=_cmd_publish_model)

    scoring = commands.add_parser("score", help="score a CSV/Parquet dataset on the Dask cluster with the API's "
                                  "scorer and commit the scores as a Parquet dataset (manifest last)")
    scoring.add_argument("model", metavar="MODEL", help="model directory, or s3://bucket/models/<version>/")
    scoring.add_argument("input", metavar="INPUT", help="CSV or Parquet file, a directory or s3:// prefix of them, "
                         "or a dataset with a _manifest.json")
    scoring.add_argument("output", metavar="OUTPUT", help="directory or s3:// prefix for the scores (replaced "
                         "only when the new scores are complete)")
    scoring.add_argument("--endpoint-url", default=None,
                         help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL or AWS)")
    scoring.set_defaults(func=_cmd_score)

    watch = commands.add_parser("monitor", help="compare new data with the model's training data (feature and score "
                                "drift, alert rate, performance with labels); exit 0 quiet, 3 alert, 4 bad input")
    watch.add_argument("--model", required=True, help="model directory, or s3://bucket/models/<version>/")
    watch.add_argument("--data", required=True, help="the new data: any source the download stage reads "
                       "(s3://, https://, a CSV or Parquet file or directory, synthetic://); Class optional")
    watch.add_argument("--processed", default="data/processed",
                       help="the training run's processed splits (default: data/processed)")
    watch.add_argument("--reports", default="reports",
                       help="where monitor.html, monitor.ipynb and monitor.json go (default: reports)")
    watch.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    watch.add_argument("--endpoint-url", default=None,
                       help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL or AWS)")
    watch.set_defaults(func=_cmd_monitor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
