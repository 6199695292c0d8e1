"""`mmc publish` in a real git + DVC repository with a local-directory remote."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, write_config

from mmc.files import sha256_file


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MMC_INVOCATION_ID"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def _mmc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "mmc", *args, cwd=cwd, check=check)


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    """A git + DVC project holding a pretrained checkpoint and the selection that chose it."""
    _run("git", "init", "-q", cwd=tmp_path)
    _run(sys.executable, "-m", "dvc", "init", "-q", cwd=tmp_path)
    write_config(tmp_path, {
        "run_name": "publish", "results_dir": "results", "data_dir": "data",
        "experiments": {"mmc": {}, "no_mim": {"loss": {"w_mim": 0.0}}},
        "dvc": {"remote": "../remote-store", "cache_type": "copy"},
    })
    checkpoint = tmp_path / "results" / "pretrain" / "mmc" / "epoch_0002.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(os.urandom(300_000))
    selection = tmp_path / "results" / "select" / "mmc.json"
    selection.parent.mkdir(parents=True)
    selection.write_text(json.dumps({"checkpoint": str(checkpoint.relative_to(tmp_path)),
                                     "sha256": sha256_file(checkpoint), "policy": "last", "reason": "last epoch"}))
    return tmp_path


def test_publish_adds_pushes_and_restores_the_checkpoint(dvc_project):
    source = dvc_project / "results" / "pretrain" / "mmc" / "epoch_0002.pth"
    content = source.read_bytes()
    done = _mmc("publish", "--config", "config.yaml", "--experiment", "mmc",
                "--selection", "results/select/mmc.json", cwd=dvc_project)
    md5 = hashlib.md5(content).hexdigest()
    assert f"DVC md5 {md5}" in done.stdout

    published = dvc_project / "checkpoints" / "mmc.pth"
    assert published.read_bytes() == content
    dvc_file = yaml.safe_load((dvc_project / "checkpoints" / "mmc.pth.dvc").read_text())
    assert dvc_file["outs"][0]["md5"] == md5 and dvc_file["outs"][0]["path"] == "mmc.pth"
    remote = (dvc_project / ".." / "remote-store").resolve()
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).read_bytes() == content  # really pushed
    assert "checkpoints/mmc.pth" not in _run("git", "status", "--porcelain", "--ignored=no", cwd=dvc_project).stdout

    record = json.loads((dvc_project / "results" / "tracking" / "jobs" / "publish-experiment=mmc.json").read_text())
    assert record["tags"]["dvc.md5"] == md5
    assert record["files"]["produced"]["checkpoints/mmc.pth"] == hashlib.sha256(content).hexdigest()
    assert record["files"]["consumed"]["results/pretrain/mmc/epoch_0002.pth"] == hashlib.sha256(content).hexdigest()

    # A fresh clone's view: no workspace copy, no cache; `dvc pull` brings it back from the remote.
    published.unlink()
    shutil.rmtree(dvc_project / ".dvc" / "cache")
    _run(sys.executable, "-m", "dvc", "pull", "-q", "checkpoints/mmc.pth.dvc", cwd=dvc_project)
    assert published.read_bytes() == content

    # Downstream jobs that consume the published checkpoint carry its hash and DVC md5 in provenance.
    (dvc_project / "segment.py").write_text(
        "import sys\nfrom pathlib import Path\nfrom mmc import config, tracking\n"
        "cfg = config.load('config.yaml')\n"
        "with tracking.job('segment', cfg, wildcards={'model': 'mmc', 'dataset': 'toy'}) as rec:\n"
        "    rec.consumed('checkpoints/mmc.pth')\n"
        "    Path('results/summary.csv').write_text('model,miou\\nmmc,0.5\\n')\n"
        "    rec.produced('results/summary.csv')\n")
    _run(sys.executable, "segment.py", cwd=dvc_project)
    trail = _mmc("provenance", "results/summary.csv", cwd=dvc_project).stdout
    assert f"checkpoint   checkpoints/mmc.pth sha256 {hashlib.sha256(content).hexdigest()} (DVC md5 {md5})" in trail
    assert "job publish-experiment=mmc " in trail and "job segment-model=mmc-dataset=toy " in trail


def test_republish_updates_the_dvc_file_and_keeps_both_versions(dvc_project):
    args = ("publish", "--config", "config.yaml", "--experiment", "mmc", "--selection", "results/select/mmc.json")
    _mmc(*args, cwd=dvc_project)
    first = yaml.safe_load((dvc_project / "checkpoints" / "mmc.pth.dvc").read_text())["outs"][0]["md5"]
    newer = dvc_project / "results" / "pretrain" / "mmc" / "epoch_0004.pth"
    newer.write_bytes(os.urandom(1000))
    (dvc_project / "results" / "select" / "mmc.json").write_text(json.dumps({"checkpoint": str(newer.relative_to(dvc_project)),
                                                                      "sha256": sha256_file(newer)}))
    _mmc(*args, cwd=dvc_project)
    second = yaml.safe_load((dvc_project / "checkpoints" / "mmc.pth.dvc").read_text())["outs"][0]["md5"]
    assert second == hashlib.md5(newer.read_bytes()).hexdigest() != first
    remote = (dvc_project / ".." / "remote-store").resolve()
    assert all((remote / "files" / "md5" / h[:2] / h[2:]).is_file() for h in (first, second))
    assert (dvc_project / "checkpoints" / "mmc.pth").read_bytes() == newer.read_bytes()


def test_checkpoint_changed_after_selection_is_refused(dvc_project):
    source = dvc_project / "results" / "pretrain" / "mmc" / "epoch_0002.pth"
    source.write_bytes(source.read_bytes() + b"\0")
    done = _mmc("publish", "--config", "config.yaml", "--experiment", "mmc",
                "--selection", "results/select/mmc.json", cwd=dvc_project, check=False)
    assert done.returncode == 2
    assert "the checkpoint changed after selection" in done.stderr
    assert not (dvc_project / "checkpoints" / "mmc.pth").exists()
    record = json.loads((dvc_project / "results" / "tracking" / "jobs" / "publish-experiment=mmc.json").read_text())
    assert record["status"] == "FAILED"


def test_unknown_experiment_is_a_clear_error(dvc_project):
    done = _mmc("publish", "--config", "config.yaml", "--experiment", "nope",
                "--selection", "results/select/mmc.json", cwd=dvc_project, check=False)
    assert done.returncode == 2 and "'nope' is not a key of experiments" in done.stderr
