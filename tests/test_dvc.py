"""DVC against a real temporary git + DVC repository and a real local-directory remote."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mmc import config, dvc
from mmc.errors import MMCError


def git_repo(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    (path / ".gitignore").write_text("/data/\n")  # as in the project: data/ is DVC's, never git's
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_add_push_delete_pull_round_trip(tmp_path):
    repo = git_repo(tmp_path / "repo")
    data = repo / "data"
    (data / "coco/val2017").mkdir(parents=True)
    (data / "coco/val2017/000000000139.jpg").write_bytes(bytes(range(256)) * 40)
    (data / "manifests").mkdir()
    (data / "manifests/coco.json").write_text('{"complete": true}\n')
    before = tree(data)
    cfg = config.freeze(config.resolve({"run_name": "t", "dvc": {"remote": "../remote", "cache_type": "copy", "hardlink_lock": True}}))

    dvc.setup(repo, cfg.dvc)
    dvc.setup(repo, cfg.dvc)  # idempotent
    settings = (repo / ".dvc/config").read_text()
    assert "hardlink_lock = true" in settings and "type = copy" in settings
    assert "url = ../../remote" in settings  # relative to .dvc/: the repo stays movable
    dvc_file = dvc.add(repo, "data")
    assert dvc_file == repo / "data.dvc"
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    assert out["path"] == "data" and out["nfiles"] == 2
    digest = dvc.dataset_hash(repo)
    assert digest == out["md5"] and digest.endswith(".dir") and len(digest) == 36

    dvc.push(repo, "data.dvc")
    remote = tmp_path / "remote"
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc/cache", ignore_errors=True)
    dvc.pull(repo, "data.dvc")
    assert tree(data) == before  # every file back, byte for byte

    (data / "manifests/coco.json").write_text('{"complete": false}\n')  # any change gives a new hash
    dvc.add(repo, "data")
    assert dvc.dataset_hash(repo) != digest


def test_dataset_hash_errors(tmp_path):
    with pytest.raises(MMCError, match=r"data\.dvc: cannot read the DVC file .*mmc data version"):
        dvc.dataset_hash(tmp_path)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  path: data\n")
    with pytest.raises(MMCError, match=r"ending in '\.dir'"):
        dvc.dataset_hash(tmp_path)


def test_dvc_failure_is_reported_with_dvcs_message(tmp_path):
    repo = git_repo(tmp_path / "repo")
    with pytest.raises(MMCError, match=r"dvc add --quiet data \(in .*\) failed"):
        dvc.add(repo, "data")  # not a DVC repository yet


def test_cli_version_adds_pushes_and_prints_the_hash(tmp_path):
    import os
    import sys

    repo = git_repo(tmp_path / "repo")
    (repo / "data/manifests").mkdir(parents=True)
    (repo / "data/manifests/voc.json").write_text("{}\n")
    (repo / "data/manifests/pins.lock").write_text("")
    (repo / "data/downloads").mkdir()
    (repo / "data/downloads/val2017.zip.part").write_bytes(b"partial")
    (repo / "c.yaml").write_text("run_name: t\ndvc: {remote: ../remote}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "mmc", "data", "version", "--config", "c.yaml"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    name, digest = result.stdout.split()
    assert name == "data.dvc" and digest == dvc.dataset_hash(repo)
    assert yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["nfiles"] == 1  # no .part, no lock
    assert any(p.is_file() for p in (tmp_path / "remote").rglob("*"))
