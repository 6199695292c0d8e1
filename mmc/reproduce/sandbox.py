"""The scratch directory a recorded job runs in again: its code, config, inputs and data.

Nothing here writes outside the scratch directory except ``git worktree add``/``remove`` (git's
own bookkeeping of the temporary checkouts in the audited repository, removed afterwards).
Inputs are symbolic links to the verified originals; data folders are mirrored as real folders of
links, so a job that creates a file under ``data_dir`` creates it in the sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mmc import dvc


class Refused(Exception):
    """A job that cannot be audited as recorded: the message says why (one line)."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=300)


def git_toplevel(folder: Path) -> Path | None:
    try:
        done = _git(folder, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def has_commit(repo: Path, commit: str) -> bool:
    try:
        return _git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class CodeCheckouts:
    """One temporary ``git worktree`` per recorded commit, removed by :meth:`close`."""

    def __init__(self, root: Path, repositories: list[Path]):
        self.root = root
        self.repositories = repositories
        self.worktrees: dict[str, tuple[Path, Path]] = {}  # commit -> (repository, checkout)

    def repository_of(self, commit: str) -> Path:
        for repo in self.repositories:
            if has_commit(repo, commit):
                return repo
        where = ", ".join(map(str, self.repositories)) or "(no git repository found)"
        raise Refused(f"commit {commit} (mmc.git_commit) is not in the git repository at {where}: fetch it "
                      "(git fetch --all) or name the repository holding it with --repo")

    def checkout(self, commit: str) -> Path:
        if commit in self.worktrees:
            return self.worktrees[commit][1]
        repo = self.repository_of(commit)
        target = self.root / f"code-{commit[:12]}"
        done = _git(repo, "worktree", "add", "--detach", "--quiet", str(target), commit)
        if done.returncode != 0:
            raise Refused(f"git worktree add of commit {commit} in {repo} failed: {done.stderr.strip()[:500]}")
        self.worktrees[commit] = (repo, target)
        return target

    def close(self) -> None:
        for repo, target in self.worktrees.values():
            _git(repo, "worktree", "remove", "--force", str(target))
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            _git(repo, "worktree", "prune")
        self.worktrees.clear()


class DataMirrors:
    """Data folders verified against their recorded DVC md5, each mirrored once per audit."""

    def __init__(self, root: Path):
        self.root = root
        self.md5: dict[Path, str] = {}
        self.mirrors: dict[Path, Path] = {}

    def verify(self, folder: Path, recorded_md5: str) -> None:
        if not folder.is_dir():
            raise Refused(f"data folder {folder} is not on disk: the data the job read cannot be verified")
        if folder not in self.md5:
            self.md5[folder] = dvc.tree_md5(folder, dvc.ignore_patterns(dvc.find_root(folder)))
        if self.md5[folder] != recorded_md5:
            raise Refused(f"data changed: {folder} has DVC md5 {self.md5[folder]} now, the job read "
                          f"{recorded_md5} (mmc.dataset_dvc_md5)")

    def mirror(self, folder: Path) -> Path:
        if folder not in self.mirrors:
            target = self.root / f"data-{len(self.mirrors)}"
            mirror_tree(folder, target)
            self.mirrors[folder] = target
        return self.mirrors[folder]


def mirror_tree(source: Path, target: Path) -> None:
    """Real folders, with a symbolic link to each file of ``source``."""
    for directory, subdirs, files in os.walk(source, followlinks=True):
        here = target / Path(directory).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            (here / name).symlink_to(Path(directory, name).absolute())
        subdirs.sort()


def inside(relative: str) -> bool:
    """A relative path that stays inside the folder it is relative to."""
    normal = os.path.normpath(relative)
    return not os.path.isabs(normal) and normal != ".." and not normal.startswith(".." + os.sep)


def place_link(job_dir: Path, relative: str, target: Path) -> None:
    link = job_dir / os.path.normpath(relative)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() and not link.exists():
        link.symlink_to(target)
