"""Running the real Snakemake workflow from tests (always under `timeout -k`, in a scratch directory),
and the one way tests write config files (:func:`write_config`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
BIN = Path(sys.executable).parent
# The command line as the tests run it: this interpreter's mmc, whether or not its environment is
# activated (CI runs `make test` without activating it, so a bare "mmc" is not on PATH).
MMC = [sys.executable, "-m", "mmc"]


def snakemake_env(code: Path = REPO) -> dict[str, str]:
    """The environment of a workflow run whose jobs import ``mmc`` from ``code``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.pop("MLFLOW_RUN_ID", None)
    return env


def snakemake(
    workdir: Path, *args: str, timeout: int = 300, check: bool = True, code: Path = REPO, **popen
) -> subprocess.CompletedProcess:
    """`snakemake` with the Snakefile and ``mmc`` of ``code`` (this checkout), run in ``workdir``,
    killed after ``timeout`` s."""
    snakemake_bin = shutil.which("snakemake", path=str(BIN)) or "snakemake"
    snakefile = code / "workflow" / "Snakefile"
    cmd = ["timeout", "-k", "10", str(timeout), snakemake_bin, "--snakefile", str(snakefile), *args]
    done = subprocess.run(cmd, cwd=workdir, env=snakemake_env(code), capture_output=True, text=True, **popen)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done


def write_config(path_or_dir: Path, raw: dict) -> Path:
    """The one way tests write a config file: ``raw`` as YAML at ``path_or_dir`` (a ``.yaml`` file,
    or a folder: its ``config.yaml``), parent folders made; returns the file. Builders of ``raw``:
    :func:`config_with`, :func:`tiny_config`, ``pretrain_support.pretrain_config``,
    ``segmentation_fixtures.segmentation_config``."""
    path = Path(path_or_dir)
    if path.suffix not in (".yaml", ".yml"):
        path = path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def paper_config(folder: Path) -> Path:
    """config/config.yaml (the paper run) as ``folder``/config/config.yaml, the default config file of
    a run in ``folder``, its ImageNet path pointed at a folder that exists (the dry run checks it)."""
    imagenet = Path(folder) / "imagenet" / "train"
    imagenet.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["pretrain"]["data"]["path"] = str(imagenet)
    return write_config(Path(folder) / "config" / "config.yaml", raw)


def config_with(**overrides) -> dict:
    """config/test.yaml with ``overrides`` merged in (nested mappings merge)."""
    from mmc.config import deep_merge

    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    return deep_merge(raw, overrides)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The `Job stats` table of a dry run: rule -> count."""
    counts: dict[str, int] = {}
    lines = dry_run_output.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# ----------------------------------------------------------------------------- the demo project
# config/test.yaml made small enough for 2 CPU cores, large enough that pretraining takes several
# resume checkpoints.
TINY = {
    "synthetic": {"images": 24, "unlabelled_images": 64, "size": 64},
    "pretrain": {
        "optim": {"epochs": 3, "batch_size": 16, "warmup_epochs": 1},
        "checkpoint": {"every_steps": 2, "save_epochs": [2]},
    },
    "evaluation": {"resolution": 64},
    "datasets": {"synthetic_select": {"max_images": 8}},
}
DEMO_CONFIG = "tiny.yaml"
DEMO_RESULTS = "results/test"


def tiny_config() -> dict:
    raw = config_with(**TINY)
    # three rows suffice: a trained model, its initial weights (its reference) and the colour floor
    raw["models"] = {name: raw["models"][name] for name in ("mmc", "init", "colour")}
    return raw


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=mmc tests", "-c", "user.email=tests@localhost", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def make_project(path: Path) -> Path:
    """A project as a user has it: a git repository holding this checkout's code (committed and
    uncommitted files alike) and the tiny config, at one commit, with a clean working tree. Jobs
    run with ``snakemake(path, ..., code=path)`` record that commit: `mmc reproduce` can check
    it out again."""
    path.mkdir(parents=True, exist_ok=True)
    listed = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted in the checkout but not yet from the index is skipped
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    write_config(path / DEMO_CONFIG, tiny_config())
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "the demo project")
    return path
