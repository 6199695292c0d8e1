from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib

import yaml
from workflow_helpers import MMC, REPO

from mmc import __version__
from mmc.cli import COMMANDS


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_runtime_packages_as_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = {_name(r) for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(r) for r in dep["pip"] if not r.startswith("-")}  # -c FILE, -e . are options
        else:
            conda.add(_name(dep))
    assert (conda | pip) - {"python", "pip"} == runtime


def _environment_pip() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    return next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))


def test_environment_yml_installs_the_locked_versions():
    """conda gives Python and pip; pip installs every package under requirements.lock's pins, then mmc."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [dep for dep in env["dependencies"] if isinstance(dep, str)]
    assert conda == ["python=3.11", "pip"]  # the Python the lock was resolved and tested on
    pip = _environment_pip()
    assert pip[0] == "-c requirements.lock" and pip[-1] == "-e ."
    assert not [r for r in pip if re.search(r"[<>=!~]", r)], "versions come from the lock, not from here"
    # the conda environment of the workflow's rules (snakemake --sdm conda) installs the same way
    rules_env = yaml.safe_load((REPO / "workflow" / "envs" / "mmc.yaml").read_text())
    assert "python=3.11" in rules_env["dependencies"]
    rules_pip = next(dep["pip"] for dep in rules_env["dependencies"] if isinstance(dep, dict))
    assert "-c ../../requirements.lock" in rules_pip and (REPO / "workflow" / "envs" / "../../requirements.lock").is_file()


def test_the_rules_conda_environment_is_rebuilt_when_the_lock_changes():
    """Snakemake (--sdm conda) names an environment by its file's content: the file carries the lock's hash."""
    import hashlib

    digest = hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
    line = f"# requirements.lock sha256: {digest}"
    assert line in (REPO / "workflow" / "envs" / "mmc.yaml").read_text(), (
        f"requirements.lock changed: put `{line}` in workflow/envs/mmc.yaml so that `snakemake --sdm conda` "
        "rebuilds the rules' environment")


def test_an_environment_made_from_the_lock_satisfies_environment_yml():
    """pip, offline, in the project's environment (made with -c requirements.lock): nothing to change."""
    packages = [r for r in _environment_pip() if not r.startswith("-")]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--disable-pip-version-check",
                           "-c", str(REPO / "requirements.lock"), *packages], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Would install" not in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


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


def test_make_tests_workers_keep_each_module_in_one_worker():
    """`make test`'s `-n 2 --dist loadgroup` with the locked pytest and pytest-xdist: the groups of
    tests/conftest.py take effect (each test's id ends in its group, here its module) and a module's
    tests all run in one worker, so its module-scoped fixtures are built once."""
    modules = ["tests/test_files.py", "tests/test_progress.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-v", *modules],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = re.findall(r"\[(gw\d+)\] \[\s*\d+%\] PASSED (tests/[\w/]+\.py)::\S+@(\S+)", done.stdout)
    assert len(ran) == 10, done.stdout[-3000:]  # 6 + 4 tests, each with its group
    for module in modules:
        assert {group for _, name, group in ran if name == module} == {module}
        assert len({worker for worker, name, _ in ran if name == module}) == 1, done.stdout[-3000:]
