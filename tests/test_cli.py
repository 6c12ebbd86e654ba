"""The ``lungbench`` console script: subcommands reach the ``python -m`` programs."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from benchmark.cli import COMMANDS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "lungbench"
# the installed script where `pip install -e .` made it; the same main() otherwise
LUNGBENCH = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "benchmark.cli"]


def lungbench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LUNGBENCH, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_console_script_is_declared_and_installed():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"lungbench": "benchmark.cli:main"}
    assert SCRIPT.exists(), "run `pip install -e .` to install the lungbench script"


def test_every_command_is_a_python_m_program():
    assert set(COMMANDS) == {"download", "convert", "train", "sweep", "predict", "report", "compare"}
    for module, _ in COMMANDS.values():
        spec = importlib.util.find_spec(module)
        assert spec is not None and 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def test_help_lists_the_commands(tmp_path):
    p = lungbench(tmp_path, "--help")
    assert p.returncode == 0 and p.stderr == ""
    lines = p.stdout.splitlines()
    for name, (_, help_) in COMMANDS.items():
        assert sum(line.split()[:1] == [name] for line in lines) == 1, p.stdout
        assert f"{name}  " in p.stdout and help_ in p.stdout


def test_convert_help_is_the_converters_hydra_app(tmp_path):
    p = lungbench(tmp_path, "convert", "--help")
    assert p.returncode == 0, p.stderr
    assert "convert is powered by Hydra" in p.stdout
    assert "data: covid19_ct_seg, phantom" in p.stdout
    assert os.listdir(tmp_path) == []


def test_convert_passes_overrides_and_its_exit_status_on(tmp_path):
    p = lungbench(tmp_path, "convert", f"out={tmp_path / 'x'}", "slices.keep=some")
    assert p.returncode == 2
    assert p.stderr == "error: config: slices.keep must be all|lung|stride, not 'some'\n"


def test_report_help_is_reports_build(tmp_path):
    p = lungbench(tmp_path, "report", "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: python -m reports.build")
    p = lungbench(tmp_path, "report")  # reports.build's own argument check
    assert p.returncode == 2 and "give either a sweep dir or --latest" in p.stderr


@pytest.mark.parametrize("args", [["frob"], []])
def test_unknown_or_missing_command_exits_2_with_the_list(tmp_path, args):
    p = lungbench(tmp_path, *args)
    assert p.returncode == 2 and p.stdout == ""
    assert ("unknown command 'frob'" if args else "no command given") in p.stderr
    for name in COMMANDS:
        assert f"  {name}  " in p.stderr
