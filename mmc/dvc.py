"""DVC at the edge: the one module that runs DVC and reads what it writes.

``data/`` is tracked as a whole by the top-level ``data.dvc`` (``mmc data version``); its ``.dir``
md5 is the dataset provenance identifier (:func:`dataset_hash`). Published checkpoints are tracked
one ``E.pth.dvc`` each (``mmc publish``); :func:`dvc_md5` reads any ``.dvc`` file for the job
records and ``mmc provenance``. The default remote is a local directory, so push and pull work
offline; any DVC URL (``s3://``, ``ssh://``...) can replace it in ``dvc.remote``.

The DVC CLI of the running interpreter is called (``python -m dvc``). Each call costs about half a
second, so :func:`setup` reads the repository's config files itself and only runs ``dvc config`` /
``dvc remote`` for a setting that differs. DVC allows one command per repository at a time: every
command that changes the repository (``dvc add``, ``dvc push``, config writes) runs inside
:func:`locked`, which serialises them on a file lock in ``.dvc/tmp`` (several Snakemake localrules
may run side by side).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mmc.errors import MMCError
from mmc.files import atomic_path

REMOTE_NAME = "storage"
LOCK_NAME = "mmc-dvc.lock"
# Never versioned: resumable partial downloads, the pins lock, a killed run's temporary directories.
IGNORED = ("*.part", "pins.lock", ".*.extract-*", ".*.old-*")


@dataclasses.dataclass(frozen=True)
class Store:
    """A DVC repository set up from the config's ``dvc`` section."""

    root: Path  # the repository (holds .dvc/)
    remote: str  # name of the remote that points at dvc.remote (the default remote)
    url: str  # where it points: an absolute path for a local directory, else the URL as configured


def run(repo: str | os.PathLike, *args: str) -> str:
    """Run ``dvc ARGS`` in ``repo``; return its stdout, or raise MMCError with DVC's own message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = "\n  ".join(message[-8:]) or f"exit status {result.returncode}"
        raise MMCError(f"dvc {' '.join(args)} (in {repo}) failed:\n  {tail}")
    return result.stdout


def find_root(start: str | os.PathLike) -> Path | None:
    """The DVC repository holding ``start`` (the nearest folder with a ``.dvc/``), or None."""
    start = Path(start).absolute()
    return next((folder for folder in (start, *start.parents) if (folder / ".dvc").is_dir()), None)


def ensure_repo(start: str | os.PathLike) -> Path:
    """The DVC repository holding ``start``; ``dvc init`` there if there is none.

    Inside git, DVC must be initialised at the git root; outside git, ``--no-scm``.
    """
    start = Path(start).absolute()
    root = find_root(start)
    if root is not None:
        return root
    try:
        git = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True)
        git_root = Path(git.stdout.strip()) if git.returncode == 0 else None
    except FileNotFoundError:  # no git installed: not in a git repository either
        git_root = None
    if git_root is not None and git_root.resolve() != start.resolve():
        raise MMCError(f"{start}: not a DVC repository and not the root of its git repository "
                       f"({git_root}): run `dvc init` there first")
    try:
        run(start, "init", "--quiet", *([] if git_root else ["--no-scm"]))
    except MMCError:
        if not (start / ".dvc").is_dir():  # else a concurrent job initialised it first
            raise
    return start


@contextlib.contextmanager
def repo_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the repository's mmc lock (blocking): one DVC-mutating command at a time. Not re-entrant."""
    lock = Path(root) / ".dvc" / "tmp" / LOCK_NAME
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(start: str | os.PathLike, dvc_cfg: Any) -> Iterator[Store]:
    """:func:`setup` under the repository lock; DVC commands inside the block run under it too."""
    with repo_lock(ensure_repo(start)):
        yield setup(start, dvc_cfg)


def setup(start: str | os.PathLike, dvc_cfg: Any) -> Store:
    """Make ``start`` (or the repository above it) a DVC repository configured by the ``dvc`` section.

    Idempotent and cheap: settings already in effect are left alone, so a configured repository
    costs no DVC call. A relative local ``remote`` is relative to ``start`` (DVC stores it relative
    to ``.dvc/``, so the repository stays movable). The remote already pointing there is reused
    (whatever its name), else it is added as ``storage``; it becomes the default remote. A setting
    overridden in ``.dvc/config.local`` is changed there, else in ``.dvc/config``. ``cache_type``
    link types avoid storing every byte twice on HPC file systems; ``hardlink_lock`` is needed on NFS.
    """
    start = Path(start).absolute()
    root = ensure_repo(start)
    _ensure_ignored(root / ".dvcignore")
    shared, local = _read_config(root / ".dvc" / "config"), _read_config(root / ".dvc" / "config.local")

    def effective(section: str, key: str) -> tuple[str | None, list[str]]:
        """The value in effect and the ``--local`` flag that writes at the level it comes from."""
        if key in local.get(section, {}):
            return str(local[section][key]), ["--local"]
        return (str(shared[section][key]) if key in shared.get(section, {}) else None), []

    for section, key, wanted in (("cache", "type", dvc_cfg.cache_type),
                                 ("core", "hardlink_lock", "true" if dvc_cfg.hardlink_lock else "false")):
        value, level = effective(section, key)
        if value is None or value.lower() != wanted.lower():
            run(root, "config", *level, f"{section}.{key}", wanted)

    url = remote_url(start, dvc_cfg.remote)
    remotes = {**_remotes(shared, root), **_remotes(local, root)}
    matching = [name for name, where in remotes.items() if where == url]
    name = REMOTE_NAME if REMOTE_NAME in matching or not matching else matching[0]
    default, default_level = effective("core", "remote")
    if name not in matching:
        level = ["--local"] if f'remote "{name}"' in local else []
        make_default = default != name and level == default_level
        run(root, "remote", "add", "--force", *level, *(["--default"] if make_default else []), name,
            _as_configured(dvc_cfg.remote, url, root))
        default = name if make_default else default
    if default != name:
        run(root, "remote", "default", *default_level, name)
    return Store(root=root, remote=name, url=url)


def _is_url(remote: str) -> bool:
    return "://" in remote


def remote_url(start: str | os.PathLike, remote: str) -> str:
    """Where ``dvc.remote`` points: a URL as given; a local path made absolute (``~`` expanded, a
    relative one taken from ``start``, the working directory)."""
    if _is_url(remote):
        return remote
    return str((Path(start).absolute() / Path(remote).expanduser()).resolve())


def _as_configured(remote: str, url: str, root: Path) -> str:
    """What ``dvc remote add`` is given: a relative local path stays relative (DVC resolves it against
    its working directory, the repository root, and stores it relative to ``.dvc/``, so clones side
    by side share it); an absolute or ``~`` path stays absolute, so a clone at any depth finds it."""
    if _is_url(url) or Path(remote).expanduser().is_absolute():
        return url
    return os.path.relpath(url, root)


def _read_config(path: Path) -> Mapping[str, Any]:
    import configobj  # DVC's own config parser (a dependency of DVC)

    if not path.is_file():
        return {}
    try:
        return configobj.ConfigObj(str(path), interpolation=False, file_error=True)
    except (OSError, configobj.ConfigObjError) as e:
        raise MMCError(f"{path}: cannot read the DVC config ({e})") from None


def _remotes(config: Mapping[str, Any], root: Path) -> dict[str, str]:
    """Remote name -> URL, a local path made absolute (DVC stores it relative to ``.dvc/``)."""
    found = {}
    for section, values in config.items():
        if section.startswith('remote "') and section.endswith('"') and "url" in values:
            url = str(values["url"])
            found[section[len('remote "'):-1]] = url if _is_url(url) else str((root / ".dvc" / url).resolve())
    return found


def _ensure_ignored(path: Path) -> None:
    ensure_ignored(path.parent, IGNORED, "mmc data download: partial downloads, locks and temporary directories")


def ensure_ignored(root: str | os.PathLike, patterns: Iterable[str], why: str) -> bool:
    """Add the ``patterns`` missing from ``root/.dvcignore`` (under a ``# why`` comment); True if any was.

    Files a pattern matches are left out of every tracked directory (``dvc add`` of a folder)."""
    path = Path(root) / ".dvcignore"
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [pattern for pattern in patterns if pattern not in lines]
    if missing:
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join([*lines, f"# {why}", *missing]) + "\n")
    return bool(missing)


def anchored(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """A ``.dvcignore`` pattern for ``path`` (a folder or file inside the repository) alone, not for
    every file of that name: relative to the repository root with a leading ``/``."""
    relative = Path(os.path.abspath(path)).relative_to(Path(root).absolute()).as_posix()
    return f"/{relative}"


def add(repo: str | os.PathLike, path: str = "data") -> Path:
    """``dvc add PATH`` (relative to ``repo``): track the file or whole tree; returns ``PATH.dvc``."""
    run(repo, "add", "--quiet", path)
    return Path(repo) / f"{path.rstrip('/')}.dvc"


def unprotect(repo: str | os.PathLike, *targets: str) -> None:
    """Replace the links ``dvc add`` made into the cache by copies: for folders the workflow keeps
    writing into (a log rewritten through a hardlink would change the cached version)."""
    run(repo, "unprotect", *targets)


def push(repo: str | os.PathLike, *targets: str, remote: str = REMOTE_NAME) -> None:
    run(repo, "push", "--quiet", "--remote", remote, *targets)


def pull(repo: str | os.PathLike, *targets: str, remote: str = REMOTE_NAME) -> None:
    run(repo, "pull", "--quiet", "--remote", remote, *targets)


def remote_object(url: str, md5: str) -> Path | None:
    """Where a local-directory remote keeps the object with this md5 (DVC 3 layout); None for a URL."""
    return None if _is_url(url) else Path(url) / "files" / "md5" / md5[:2] / md5[2:]


def _first_out_md5(path: Path) -> Any:
    """The md5 of a ``.dvc`` file's first output as written (None if absent); OSError/YAMLError if unreadable."""
    import yaml

    body = yaml.safe_load(path.read_text())
    outs = body.get("outs") if isinstance(body, Mapping) else None
    return outs[0].get("md5") if isinstance(outs, list) and outs and isinstance(outs[0], Mapping) else None


@functools.cache
def _cached_md5(dvc_file: str, mtime_ns: int) -> str | None:
    import yaml

    try:
        md5 = _first_out_md5(Path(dvc_file))
    except (OSError, yaml.YAMLError):
        return None
    return md5 if isinstance(md5, str) else None


def dvc_md5(dvc_file: str | os.PathLike) -> str | None:
    """The md5 DVC recorded for a tracked file or folder (``<md5>.dir`` for a folder), or None.

    Tolerant (a missing or broken ``.dvc`` file gives None): for tags and provenance summaries.
    Cached per file modification time, since every job record asks again.
    """
    try:
        mtime = Path(dvc_file).stat().st_mtime_ns
    except OSError:
        return None
    return _cached_md5(str(dvc_file), mtime)


def dataset_hash(repo_root: str | os.PathLike, dvc_file: str = "data.dvc") -> str:
    """The ``.dir`` md5 that ``dvc add`` recorded for the tracked tree, as stored (``<md5>.dir``).

    It identifies the exact content of the tree: the data's provenance id. Strict: raises MMCError.
    """
    import yaml

    path = Path(repo_root) / dvc_file
    try:
        md5 = _first_out_md5(path)
    except OSError as e:
        raise MMCError(f"{path}: cannot read the DVC file ({e.strerror}); run `mmc data version` first") from None
    except yaml.YAMLError as e:
        raise MMCError(f"{path}: not a valid DVC file ({e})") from None
    if not isinstance(md5, str) or not md5.endswith(".dir"):
        raise MMCError(f"{path}: expected one tracked directory with an md5 ending in '.dir', got {md5!r}")
    return md5


def tree_md5(folder: str | os.PathLike, ignore_patterns: tuple[str, ...] = ()) -> str:
    """The ``<md5>.dir`` that ``dvc add`` (DVC 3, ``hash: md5``) records for ``folder``, computed
    here from the bytes on disk, without DVC or its cache: the md5 of every file, listed as
    ``[{"md5", "relpath"}]`` sorted by path, serialised the way DVC serialises a tree object.

    ``ignore_patterns`` are ``.dvcignore`` lines: a pattern without ``/`` matches a file or folder
    name at any depth, one with ``/`` a path relative to ``folder`` (negations are not supported).
    Every byte is read once: seconds for the demo data, minutes for full datasets.
    """
    import fnmatch
    import hashlib
    import json

    root = Path(folder)
    if not root.is_dir():
        raise MMCError(f"{root}: not a folder: cannot compute its DVC md5")
    patterns = [p.strip().rstrip("/") for p in ignore_patterns if p.strip() and not p.startswith("#")]

    def ignored(relpath: str) -> bool:
        name = relpath.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(relpath if "/" in p else name, p.lstrip("/")) for p in patterns)

    entries = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else f"{base}/"
        subdirs[:] = sorted(d for d in subdirs if d not in (".dvc", ".git") and not ignored(prefix + d))
        for name in files:
            relpath = prefix + name
            if ignored(relpath):
                continue
            digest = hashlib.md5(usedforsecurity=False)
            with open(Path(directory) / name, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            entries.append({"md5": digest.hexdigest(), "relpath": relpath})
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def ignore_patterns(repo_root: str | os.PathLike | None) -> tuple[str, ...]:
    """The lines of the repository's top-level ``.dvcignore`` (none when there is no such file)."""
    if repo_root is None:
        return ()
    path = Path(repo_root) / ".dvcignore"
    return tuple(path.read_text().splitlines()) if path.is_file() else ()
