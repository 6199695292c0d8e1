"""DVC against a real temporary git + DVC repository and a real local-directory remote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, write_config

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
    repo = git_repo(tmp_path / "repo")
    (repo / "data/manifests").mkdir(parents=True)
    (repo / "data/manifests/voc.json").write_text("{}\n")
    (repo / "data/manifests/pins.lock").write_text("")
    (repo / "data/downloads").mkdir()
    (repo / "data/downloads/val2017.zip.part").write_bytes(b"partial")
    write_config(repo / "c.yaml", {"run_name": "t", "dvc": {"remote": "../remote"}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "mmc", "data", "version", "--config", "c.yaml"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    name, digest = result.stdout.split()
    assert name == "data.dvc" and digest == dvc.dataset_hash(repo)
    assert yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["nfiles"] == 1  # no .part, no lock
    assert any(p.is_file() for p in (tmp_path / "remote").rglob("*"))


def dvc_settings(repo: Path, *, remote: str = "../remote", cache_type: str = "copy", hardlink_lock: bool = False):
    return config.freeze(config.resolve({"run_name": "t", "dvc": {"remote": remote, "cache_type": cache_type,
                                                                   "hardlink_lock": hardlink_lock}})).dvc


def count_dvc_calls(monkeypatch) -> list[tuple[str, ...]]:
    """Record every DVC command that mmc.dvc runs (they still run, for real)."""
    calls: list[tuple[str, ...]] = []
    real = dvc.run

    def recording(repo, *args):
        calls.append(args)
        return real(repo, *args)

    monkeypatch.setattr(dvc, "run", recording)
    return calls


def test_setup_writes_only_what_differs(tmp_path, monkeypatch):
    repo = git_repo(tmp_path / "repo")
    calls = count_dvc_calls(monkeypatch)
    store = dvc.setup(repo, dvc_settings(repo))
    assert store == dvc.Store(root=repo, remote="storage", url=str((tmp_path / "remote").resolve()))
    assert calls and calls[0][0] == "init"
    calls.clear()
    assert dvc.setup(repo, dvc_settings(repo)) == store
    assert calls == []  # configured: no DVC call at all (each costs ~0.5 s)
    dvc.setup(repo, dvc_settings(repo, hardlink_lock=True))
    assert calls == [("config", "core.hardlink_lock", "true")]


def test_setup_of_the_projects_own_dvc_config_is_a_no_op(tmp_path, monkeypatch):
    """The committed .dvc/config (quoted cache type, `storage` remote) already says what the defaults say."""
    repo = git_repo(tmp_path / "repo")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    shutil.copyfile(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copyfile(REPO / ".dvcignore", repo / ".dvcignore")
    defaults = config.freeze(config.resolve({"run_name": "t"})).dvc
    calls = count_dvc_calls(monkeypatch)
    store = dvc.setup(repo, defaults)
    # the default remote is a folder beside the repository: outside it, shared by clones side by side
    assert calls == [] and store.remote == "storage" and store.url == str(tmp_path / "mmc-repro-dvc-remote")


def test_an_absolute_remote_is_stored_absolute_a_relative_one_relative(tmp_path, monkeypatch):
    """A clone at another depth must still find an absolute remote; clones side by side share a relative one."""
    repo = git_repo(tmp_path / "repo")
    store = dvc.setup(repo, dvc_settings(repo, remote=str(tmp_path / "shared" / "remote")))
    assert store.url == str(tmp_path / "shared" / "remote")
    assert f"url = {tmp_path / 'shared' / 'remote'}" in (repo / ".dvc" / "config").read_text()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store = dvc.setup(repo, dvc_settings(repo, remote="~/dvc-remote"))
    assert store.url == str(tmp_path / "home" / "dvc-remote")
    assert f"url = {tmp_path / 'home' / 'dvc-remote'}" in (repo / ".dvc" / "config").read_text()
    dvc.setup(repo, dvc_settings(repo, remote="../beside"))
    assert "url = ../../beside" in (repo / ".dvc" / "config").read_text()


def test_setup_reuses_a_remote_pointing_there_and_follows_config_local(tmp_path):
    repo = git_repo(tmp_path / "repo")
    for command in (["init", "-q"], ["remote", "add", "backup", "/elsewhere"],
                    ["remote", "add", "--default", "shared", "../remote"], ["config", "--local", "cache.type", "symlink"],
                    ["remote", "default", "--local", "backup"]):
        subprocess.run([sys.executable, "-m", "dvc", *command], cwd=repo, check=True, capture_output=True)
    store = dvc.setup(repo, dvc_settings(repo))
    assert store.remote == "shared"  # no second remote for the same place
    assert "storage" not in (repo / ".dvc/config").read_text()
    local = (repo / ".dvc/config.local").read_text()
    assert "type = copy" in local and "remote = shared" in local  # changed where it was overridden
    default = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
    assert default.strip() == "shared"  # as DVC itself sees it


def test_ensure_repo_refuses_a_git_subfolder(tmp_path):
    repo = git_repo(tmp_path / "repo")
    (repo / "sub").mkdir()
    with pytest.raises(MMCError, match=r"sub: not a DVC repository and not the root of its git repository"):
        dvc.ensure_repo(repo / "sub")
    assert not (repo / "sub/.dvc").exists()


def test_data_version_waits_for_the_repository_lock(tmp_path):
    """`mmc data version` and `mmc publish` share one lock: DVC allows one command per repository."""
    repo = git_repo(tmp_path / "repo")
    (repo / "data/manifests").mkdir(parents=True)
    (repo / "data/manifests/voc.json").write_text("{}\n")
    write_config(repo / "c.yaml", {"run_name": "t", "dvc": {"remote": "../remote"}})
    dvc.ensure_repo(repo)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with dvc.repo_lock(repo):
        version = subprocess.Popen([sys.executable, "-m", "mmc", "data", "version", "--config", "c.yaml", "--no-push"],
                                   cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # long enough to start Python and reach the lock
        assert version.poll() is None and not (repo / "data.dvc").exists()
    out, err = version.communicate(timeout=120)
    assert version.returncode == 0, err
    assert out.split() == ["data.dvc", dvc.dataset_hash(repo)]


def test_dvc_md5_is_tolerant_and_follows_changes(tmp_path):
    path = tmp_path / "model.pth.dvc"
    assert dvc.dvc_md5(path) is None
    path.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  path: model.pth\n")
    assert dvc.dvc_md5(path) == "0123456789abcdef0123456789abcdef"
    path.write_text("outs: [")
    os.utime(path, ns=(1, 1))  # a different mtime, even on a coarse-grained file system
    assert dvc.dvc_md5(path) is None


def test_tree_md5_is_the_md5_dvc_add_records(tmp_path):
    # `mmc reproduce` verifies the data a job read against the recorded DVC md5 without DVC
    repo = git_repo(tmp_path / "repo")
    data = repo / "data"
    (data / "synthetic/VOCdevkit").mkdir(parents=True)
    (data / "synthetic/VOCdevkit/a.png").write_bytes(bytes(range(256)) * 7)
    (data / "synthetic/classes.json").write_text('{"1": "disc"}\n')
    (data / "synthetic/empty.txt").write_bytes(b"")
    (data / "coco.zip.part").write_bytes(b"half a download")  # ignored by the .dvcignore setup writes
    (data / "downloads").mkdir()
    (data / "downloads/voc.tar").write_bytes(b"an archive")  # ignored by a pattern from the repository root
    cfg = config.freeze(config.resolve({"run_name": "t", "dvc": {"remote": "../remote", "cache_type": "copy"}}))
    dvc.setup(repo, cfg.dvc)
    with open(repo / ".dvcignore", "a") as f:
        f.write("/data/downloads/\n")  # as the project's .dvcignore: anchored at the root, not at data/
    recorded = yaml.safe_load(dvc.add(repo, "data").read_text())["outs"][0]["md5"]
    patterns = dvc.ignore_patterns(repo)
    assert "*.part" in patterns
    assert dvc.tree_md5(data, patterns) == recorded
    (data / "synthetic/classes.json").write_text('{"1": "disk"}\n')
    assert dvc.tree_md5(data, patterns) != recorded
    with pytest.raises(MMCError, match="not a folder"):
        dvc.tree_md5(data / "missing")
