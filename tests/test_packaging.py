from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib

import yaml

from mmc import __version__
from mmc.cli import COMMANDS
from tests.conftest import MMC, REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_runtime_packages_as_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = {_name(r) for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(r) for r in dep["pip"]}
        else:
            conda.add(_name(dep))
    assert (conda | pip) - {"python", "pip"} == runtime


def test_lock_pins_every_runtime_package():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = {_name(line) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line}
    missing = {_name(r) for r in pyproject["project"]["dependencies"]} - pinned
    assert not missing, f"requirements.lock lacks {missing}"


def test_help_is_fast_and_lists_the_stages():
    start = time.perf_counter()
    run = subprocess.run([*MMC, "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert run.returncode == 0
    for name in COMMANDS:
        assert name in run.stdout
    assert elapsed < 1.0, f"mmc --help took {elapsed:.2f} s: a heavy import at module level?"


def test_help_imports_no_heavy_library():
    code = "import sys; from mmc.cli import main; main(['--help']) if False else None; import mmc.cli, mmc.config; print(sorted(m for m in ('torch','timm','mlflow','snakemake','pandas') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_version():
    run = subprocess.run([*MMC, "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"mmc {__version__}"


def test_unknown_command_is_an_error():
    run = subprocess.run([*MMC, "frobnicate"], capture_output=True, text=True)
    assert run.returncode == 2 and "invalid choice" in run.stderr
