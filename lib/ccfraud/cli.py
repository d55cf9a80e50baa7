"""The few entry points users type: ``ccfraud <command>``.

Each command is a thin shell around a library function, so everything it does is
also importable and tested without a subprocess.
"""

from __future__ import annotations

import argparse
import sys
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


def _cmd_stage(args: argparse.Namespace) -> int:
    from ccfraud.reporting import run_stage_notebook

    params = load_stage_params(args.name, Path(args.params))
    show_code = bool(params.pop("show_code", False))
    params.update(parse_assignments(args.param))
    print(f"[ccfraud] stage '{args.name}' with parameters {params}", file=sys.stderr, flush=True)
    executed, html = run_stage_notebook(args.name, params, show_code=show_code)
    print(f"[ccfraud] wrote {executed} and {html}", file=sys.stderr, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccfraud", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    stage = commands.add_parser("stage", help="run one pipeline stage notebook and render its HTML report")
    stage.add_argument("name", help="stage name, e.g. download, eda_preprocess, train")
    stage.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    stage.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="extra notebook parameter, e.g. the stage's input/output paths (repeatable)")
    stage.set_defaults(func=_cmd_stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
