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
from mmc.files import atomic_path, md5_file  # md5_file: the md5 DVC 3 records for a file

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


def tree_md5(
    folder: str | os.PathLike, ignore_patterns: tuple[str, ...] = (), root: str | os.PathLike | None = None
) -> str:
    """The ``<md5>.dir`` that ``dvc add`` (DVC 3, ``hash: md5``) records for ``folder``, computed
    here from the bytes on disk, without DVC or its cache: the md5 of every file, listed as
    ``[{"md5", "relpath"}]`` sorted by path, serialised the way DVC serialises a tree object.

    ``ignore_patterns`` are the lines of the ``.dvcignore`` in ``root`` (:func:`ignore_patterns`;
    ``root`` default: the DVC repository holding ``folder``, else ``folder``), matched as DVC matches
    them: a pattern without ``/`` matches a name at any depth, one with ``/`` a path from ``root``
    (``/data/downloads/``), a trailing ``/`` folders only (negations are not supported). Every byte
    is read once: seconds for the demo data, minutes for full datasets.
    """
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise MMCError(f"{folder}: not a folder: cannot compute its DVC md5")
    anchor = Path(root).absolute() if root is not None else (find_root(folder) or folder)
    patterns = [p.strip() for p in ignore_patterns if p.strip() and not p.strip().startswith("#")]
    files = tracked_files(anchor, folder, patterns)
    return listing_md5({relpath: md5_file(path) for relpath, path in files.items()})


def ignore_patterns(repo_root: str | os.PathLike | None) -> tuple[str, ...]:
    """The patterns of the repository's top-level ``.dvcignore``, blank lines and comments left out
    (none when there is no repository or no such file)."""
    if repo_root is None:
        return ()
    path = Path(repo_root) / ".dvcignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


# ----------------------------------------------------------------------------- the data on disk vs data.dvc
def _ignored(relpath: str, is_dir: bool, patterns: list[str]) -> bool:
    """gitignore-style matching as DVC applies it, for the patterns this project writes: a pattern
    without a slash matches a name at any depth; one with a slash matches the path from the root;
    a trailing slash matches directories only. (Negations (``!``) are not supported.)"""
    import fnmatch

    name = relpath.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        if "/" in pattern:
            if fnmatch.fnmatchcase(relpath, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def tracked_files(
    root: str | os.PathLike, target: str | os.PathLike, patterns: list[str] | None = None
) -> dict[str, Path]:
    """Relative path (under ``target``) -> path of every file ``dvc add target`` tracks: files and
    followed links, minus what ``.dvcignore`` excludes (``patterns``, default: those of ``root``'s
    ``.dvcignore`` and :data:`IGNORED`), minus DVC's own folders."""
    root, target = Path(root), Path(target)
    base = target if target.is_absolute() else root / target
    if patterns is None:  # IGNORED always: the partial downloads and locks of `mmc data download`
        patterns = sorted(set(ignore_patterns(root)) | set(IGNORED))
    prefix = os.path.relpath(base, root).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    if base.is_file():  # a single tracked file (a published checkpoint)
        return {"": base}
    found: dict[str, Path] = {}
    for folder, dirs, names in os.walk(base, followlinks=True):
        rel_folder = os.path.relpath(folder, base).replace(os.sep, "/")
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if d not in (".dvc", ".git")
                         and not _ignored(f"{prefix}{rel_folder}{d}", True, patterns))  # fmt: skip
        for name in names:
            if not _ignored(f"{prefix}{rel_folder}{name}", False, patterns):
                found[rel_folder + name] = Path(folder, name)
    return found


def listing_md5(files: Mapping[str, str]) -> str:
    """The ``.dir`` md5 ``dvc add`` records for a tree with these ``relative path -> md5``: the md5
    of DVC's JSON listing (entries sorted by path, keys sorted). :func:`tree_md5` computes it from
    a folder on disk."""
    import hashlib
    import json

    listing = [{"md5": files[path], "relpath": path} for path in sorted(files)]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode(), usedforsecurity=False).hexdigest() + ".dir"


def cache_dir(root: str | os.PathLike) -> Path:
    """The repository's DVC cache (``cache.dir`` of its config, else ``.dvc/cache``)."""
    root = Path(root)
    for name in ("config.local", "config"):
        configured = _read_config(root / ".dvc" / name).get("cache", {}).get("dir")
        if configured:
            return (root / ".dvc" / str(configured)).resolve()
    return root / ".dvc" / "cache"


def cached_listing(root: str | os.PathLike, dir_md5: str) -> dict[str, str] | None:
    """``relative path -> md5`` of the tree ``dir_md5`` from the DVC cache, or None if not cached."""
    import json

    value = dir_md5.removesuffix(".dir")
    path = cache_dir(root) / "files" / "md5" / value[:2] / f"{value[2:]}.dir"
    try:
        entries = json.loads(path.read_text())
        return {e["relpath"]: e["md5"] for e in entries}
    except (OSError, ValueError, TypeError, KeyError):
        return None


def tree_changes(dvc_file: str | os.PathLike) -> list[str]:
    """How the tree on disk differs from what ``dvc_file`` (``data.dvc``) records; empty if it does not.

    Every file is hashed (md5, as DVC does). With the tree's listing in the DVC cache, each
    modified, added or removed file is named; without it, only the tree md5 can be compared.
    """
    dvc_file = Path(dvc_file).absolute()
    recorded = dvc_md5(dvc_file)
    if recorded is None:
        return [f"{dvc_file}: missing or unreadable"]
    root = find_root(dvc_file.parent) or dvc_file.parent
    target = dvc_file.with_name(dvc_file.name.removesuffix(".dvc"))
    if not target.is_dir():
        return [f"{target}: the folder {dvc_file.name} versions is missing"]
    files = tracked_files(root, target)
    now = {rel: md5_file(path) for rel, path in files.items()}
    if listing_md5(now) == recorded:
        return []
    listing = cached_listing(root, recorded)
    if listing is None:
        return [f"{target}: its tree md5 is {listing_md5(now)}, {dvc_file.name} records {recorded} (the DVC cache "
                "lacks that version's listing to name the files: `dvc pull` it)"]
    problems = []
    for rel in sorted(set(now) | set(listing)):
        if rel not in listing:
            problems.append(f"{target / rel}: not in {dvc_file.name} (added since)")
        elif rel not in now:
            problems.append(f"{target / rel}: in {dvc_file.name} (md5 {listing[rel]}), missing on disk")
        elif now[rel] != listing[rel]:
            problems.append(f"{target / rel}: md5 {now[rel]}, {dvc_file.name} records {listing[rel]}")
    return problems


# ----------------------------------------------------------------------------- a cheap check for the workflow
LISTING_DIR = ("tmp", "mmc-listing")  # under .dvc/: DVC's own scratch folder, never versioned


def _listing_path(root: Path, target: Path) -> Path:
    name = os.path.relpath(target.absolute(), root).replace(os.sep, "__")
    return root.joinpath(".dvc", *LISTING_DIR, f"{name}.json")


def _stat_listing(root: Path, target: Path) -> dict[str, list[int]]:
    """Size, modification time, change time and inode of every tracked file. The last two cannot be
    set by hand: a file rewritten with its old modification time put back still shows."""
    listing = {}
    for rel, path in tracked_files(root, target).items():
        info = path.stat()
        listing[rel] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
    return listing


def _recorded_md5s(root: Path, dvc_md5_value: str) -> dict[str, str] | None:
    """``relative path -> md5`` as ``dvc add`` recorded it (a tree's listing from the cache, or a
    single file's md5 under the key ``""``); None when the cache lacks the listing."""
    if dvc_md5_value.endswith(".dir"):
        return cached_listing(root, dvc_md5_value)
    return {"": dvc_md5_value}


def record_listing(dvc_file: str | os.PathLike) -> Path:
    """After ``dvc add``: note the size and modification time of every tracked file, with the md5
    ``dvc_file`` records, so that :func:`listing_changes` can tell cheaply whether the data changed."""
    import json

    from mmc.files import write_text_atomic

    dvc_file = Path(dvc_file).absolute()
    root = find_root(dvc_file.parent) or dvc_file.parent
    target = dvc_file.with_name(dvc_file.name.removesuffix(".dvc"))
    body = {"dvc_file": str(dvc_file), "md5": dvc_md5(dvc_file), "files": _stat_listing(root, target)}
    return write_text_atomic(_listing_path(root, target), json.dumps(body, sort_keys=True))


def listing_changes(dvc_file: str | os.PathLike) -> list[str] | None:
    """Files added, removed or modified since ``dvc_file`` was written (``mmc data version``,
    ``mmc publish``); None when that cannot be told cheaply (no listing recorded for this version of
    ``dvc_file``). For the workflow, at every start: it stats every file and reads only those of
    the same size whose modification time, change time or inode differ (edited, touched as
    Snakemake touches a job's outputs, rewritten with the old time put back, or copied with the
    project): their md5 is compared with DVC's record, and when all match, the listing is brought up
    to date, so such files are read once."""
    import json

    shown = Path(dvc_file).with_name(Path(dvc_file).name.removesuffix(".dvc"))  # as the caller names it
    dvc_file = Path(dvc_file).absolute()
    root = find_root(dvc_file.parent)
    md5 = dvc_md5(dvc_file)
    if root is None or md5 is None:
        return None
    target = dvc_file.with_name(dvc_file.name.removesuffix(".dvc"))
    try:
        body = json.loads(_listing_path(root, target).read_text())
    except (OSError, ValueError):
        return None
    if body.get("md5") != md5 or not target.exists():
        return None
    before, now = body.get("files", {}), _stat_listing(root, target)
    changes = [f"added {shown / rel}" for rel in sorted(set(now) - set(before))]
    changes += [f"removed {shown / rel}" for rel in sorted(set(before) - set(now))]
    common = sorted(set(now) & set(before))
    changes += [f"modified {shown / rel}" for rel in common if now[rel][0] != before[rel][0]]
    suspects = [rel for rel in common if now[rel][0] == before[rel][0] and now[rel][1:] != before[rel][1:]]
    if suspects:
        reference = _recorded_md5s(root, md5) or {}
        for rel in suspects:
            time_kept = now[rel][1] == before[rel][1]
            if rel not in reference:  # nothing to compare with: a new time is a change, a new inode alone a copy
                if not time_kept:
                    changes.append(f"modified {shown / rel}")
            elif md5_file(target / rel if rel else target) != reference[rel]:
                changes.append(f"modified {shown / rel}" + (" (its modification time was kept)" if time_kept else ""))
        if not changes:  # touched, copied or relinked: the same bytes
            from mmc.files import write_text_atomic

            body["files"] = now
            with contextlib.suppress(OSError):
                write_text_atomic(_listing_path(root, target), json.dumps(body, sort_keys=True))
    return changes


def unversioned_changes(dvc_file: str | os.PathLike, inputs: list[str]) -> list[str]:
    """For the workflow, at start: the changes to the data since ``mmc data version`` wrote
    ``dvc_file`` (:func:`listing_changes`), unless the workflow versions the data again anyway
    before any job reads it (``dvc_file`` absent, or one of its rule's ``inputs`` missing or newer)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        return []
    versioned_at = dvc_file.stat().st_mtime
    if any(not os.path.exists(p) or os.path.getmtime(p) > versioned_at for p in inputs):
        return []
    return listing_changes(dvc_file) or []


def _some(changes: list[str]) -> str:
    return "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")


def unversioned_message(dvc_file: str | os.PathLike, changes: list[str], config_file: str) -> str:
    return (
        f"the data changed since `mmc data version` wrote {dvc_file}: {_some(changes)}. Nothing that read the "
        f"old data would be redone: run `mmc data version --config {config_file}` to version the data as it is "
        f"now (every job that reads it then reruns), or restore the versioned data with `dvc checkout {dvc_file}`"
    )


def republish_message(dvc_file: str | os.PathLike, changes: list[str]) -> str:
    checkpoint = str(dvc_file).removesuffix(".dvc")
    return (
        f"a published checkpoint changed since `mmc publish` wrote {dvc_file}: {_some(changes)}. The results "
        f"evaluated from it would stand: restore it with `dvc checkout {dvc_file}`, or delete {checkpoint} and "
        "the workflow publishes the selected checkpoint again"
    )
