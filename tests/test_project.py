"""Project files that must agree with each other: dependencies, README commands, CI."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(requirements: list[str]) -> dict[str, str]:
    out = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", requirement)
        assert match, f"not pinned with ==: {requirement!r}"
        out[match.group(1).lower()] = match.group(3)
    return out


def test_environment_yml_lists_every_pinned_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = requirement_names(project["dependencies"])
    dev = requirement_names(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    conda = requirement_names([r for r in pip_section if not r.startswith("-e")])
    assert "python=3.11" in env["dependencies"]
    assert runtime.items() <= conda.items(), f"missing or different: {sorted(runtime.items() - conda.items())}"
    assert dev.items() <= conda.items(), f"missing or different: {sorted(dev.items() - conda.items())}"


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^#+\s*Quick start.*?$.*?^```[^\n]*\n(.*?)^```", text, re.S | re.M | re.I)
    assert match, "README.md has no 'Quick start' section with a fenced code block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
