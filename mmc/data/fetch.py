"""Fetch a registered dataset or checkpoint: download, verify, extract safely, record a manifest.

``fetch_dataset`` leaves ``datasets.NAME.root`` either complete or absent: archives are extracted
into a temporary directory beside the root, the expected layout is found in it, and only that
directory is renamed into place. ``{data_dir}/manifests/NAME.json`` is written last (atomically);
a complete manifest that matches the registry makes a rerun a no-op.

Where the registry publishes no checksum, the sha256 of the first download is pinned in
``{data_dir}/manifests/pins.json`` (URL -> sha256, size, time) once the archive has been checked
complete and extracted, and every later download of that URL must match it. A download that is
not pinned yet and fails extraction (a truncated or unsafe archive) is deleted, never pinned.
:func:`unpin` (``mmc data unpin NAME``) drops the pins of a dataset's archives or a model's file.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmc import __version__
from mmc.data import download as dl
from mmc.data import layouts
from mmc.data.extract import safe_extract
from mmc.errors import MMCError
from mmc.files import write_text_atomic

MANIFEST_VERSION = 1


def manifest_path(cfg: Any, name: str) -> Path:
    return Path(cfg.data_dir) / "manifests" / f"{name}.json"


def pins_path(cfg: Any) -> Path:
    return Path(cfg.data_dir) / "manifests" / "pins.json"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"mmc data: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _pins(cfg: Any) -> Iterator[dict]:
    """Read-modify-write of the pins file under an exclusive lock (parallel download jobs)."""
    path = pins_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name("pins.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pins = json.loads(path.read_text()) if path.exists() else {}
        before = json.dumps(pins, sort_keys=True)
        yield pins
        if json.dumps(pins, sort_keys=True) != before:
            write_text_atomic(path, json.dumps(pins, indent=2, sort_keys=True) + "\n")


def read_pins(cfg: Any) -> dict:
    path = pins_path(cfg)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        raise MMCError(f"{path}: not valid JSON ({e}); fix or delete it") from None


def _archive_file_name(url: str) -> str:
    """The file name a download is kept under: the URL's last path segment, which must be a plain name."""
    segment = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    if segment in ("", ".", "..") or "/" in segment or "\\" in segment or any(ord(c) < 32 or ord(c) == 127 for c in segment):
        raise MMCError(f"{url}: the URL's last path segment {segment!r} is not a file name: expected a URL "
                       "ending in the archive's name (e.g. https://host/path/VOCtrainval_11-May-2012.tar)")
    return segment


def _pin_reference(cfg: Any, pin: dict, what: str) -> str:
    return (f"the pin in {pins_path(cfg)} (made {pin.get('pinned_at', '?')}; if the source changed on purpose, "
            f"`mmc data unpin {what} --config F` drops it)")


def _verify_plan(cfg: Any, url: str, size, sha256, md5, pins: dict, what: str) -> tuple[dict, str, str]:
    """Expected values for one download, how they were obtained, and that source in words (for messages)."""
    if sha256 or md5:
        how = "registry " + ("sha256" if sha256 else "md5")
        return {"size": size, "sha256": sha256, "md5": md5}, how, "the registry"
    pin = pins.get(url)
    if pin:
        expected = {"size": size if size is not None else pin.get("size"), "sha256": pin["sha256"], "md5": None}
        return expected, "pinned sha256", _pin_reference(cfg, pin, what)
    return {"size": size, "sha256": None, "md5": None}, "none published: sha256 pinned now", "the registry"


def _manifest_is_current(path: Path, dataset: Any) -> bool:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    recorded = manifest.get("archives", [])
    same_archives = len(recorded) == len(dataset.archives) and all(
        r.get("url") == a.url and all(getattr(a, key) in (None, r.get(key)) for key in ("size", "md5", "sha256"))
        for r, a in zip(recorded, dataset.archives, strict=False)
    )  # the registry's URLs and every value it publishes match what was verified
    return (
        manifest.get("complete") is True
        and manifest.get("root") == str(dataset.root)
        and same_archives
        and not layouts.missing_entries(Path(dataset.root), dataset.format, dataset.split)
    )


def fetch_dataset(cfg: Any, name: str, **download_options) -> Path:
    """Download, verify and extract ``cfg.datasets[name]``; return its manifest path."""
    if name not in cfg.datasets:
        raise MMCError(f"datasets.{name}: no such dataset in the config (have: {sorted(cfg.datasets)})")
    dataset = cfg.datasets[name]
    manifest = manifest_path(cfg, name)
    if _manifest_is_current(manifest, dataset):
        _log(f"{name}: complete ({manifest}); nothing to do")
        return manifest
    if not dataset.archives:
        return _record_provided(cfg, name, dataset, manifest)
    downloads_dir = Path(cfg.data_dir) / "downloads"
    names = [_archive_file_name(a.url) for a in dataset.archives]
    if len(set(names)) != len(names):
        raise MMCError(f"datasets.{name}.archives: two URLs end in the same file name ({names})")
    pins = read_pins(cfg)
    records = []
    for archive, file_name in zip(dataset.archives, names, strict=True):
        expected, how, reference = _verify_plan(cfg, archive.url, archive.size, archive.sha256, archive.md5, pins, name)
        _log(f"{name}: downloading {archive.url}")
        got = dl.download(archive.url, downloads_dir / file_name, **expected, reference=reference, **download_options)
        records.append(
            {"url": archive.url, "file": str(got.path), "size": got.size, "sha256": got.sha256, "md5": got.md5, "verified_by": how}
        )
    root = Path(dataset.root)
    manifest.unlink(missing_ok=True)  # from here on the old manifest would describe a root being replaced
    try:
        _install(root, [Path(r["file"]) for r in records], dataset.format, dataset.split, what=f"datasets.{name}",
                 max_bytes=dataset.max_extracted_bytes)
    except MMCError:
        # Nothing vouches for an archive that is not pinned yet: a later run must fetch it afresh.
        for r in records:
            if r["verified_by"].startswith("none published"):
                Path(r["file"]).unlink(missing_ok=True)
        raise
    with _pins(cfg) as current:
        for r in records:
            if r["verified_by"].startswith("none published"):
                current[r["url"]] = {"sha256": r["sha256"], "size": r["size"], "pinned_at": _now()}
    _write_manifest(manifest, name, dataset, records, source="download")
    _log(f"{name}: complete at {root}; manifest {manifest}")
    return manifest


def _write_manifest(path: Path, name: str, dataset: Any, archives: list[dict], source: str) -> None:
    body = {
        "version": MANIFEST_VERSION,
        "dataset": name,
        "format": dataset.format,
        "split": dataset.split,
        "root": str(dataset.root),
        "source": source,
        "archives": archives,
        "layout": [e.path for e in layouts.expected_layout(dataset.format, dataset.split)],
        "layout_checked": True,
        "complete": True,
        "created": _now(),
        "mmc_version": __version__,
    }
    write_text_atomic(path, json.dumps(body, indent=2) + "\n")


def _record_provided(cfg: Any, name: str, dataset: Any, manifest: Path) -> Path:
    """A dataset without archives (already on disk, or sharing another entry's root): check, record."""
    missing = layouts.missing_entries(Path(dataset.root), dataset.format, dataset.split)
    if missing:
        raise MMCError(
            f"datasets.{name}: no archives to download and {dataset.root} is not a complete {dataset.format} "
            f"dataset (split {dataset.split!r}): missing {', '.join(missing)}"
        )
    _write_manifest(manifest, name, dataset, [], source="provided")
    _log(f"{name}: no archives; {dataset.root} has the {dataset.format} layout; manifest {manifest}")
    return manifest


def _remove_stale(root: Path) -> None:
    """Temporary directories left beside ``root`` by a run that was killed."""
    for stale in root.parent.glob(f".{root.name}.extract-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.parent.glob(f".{root.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _install(root: Path, archives: list[Path], fmt: str, split: str, what: str, max_bytes: int | None = None) -> None:
    """Extract ``archives`` beside ``root``, find the layout, rename it onto ``root``."""
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.extract-", dir=root.parent))
    try:
        for archive in archives:
            _log(f"extracting {archive.name}")
            safe_extract(archive, staging, max_bytes=max_bytes)
        found = layouts.find_dataset_root(staging, fmt, split, what=f"{what} ({', '.join(a.name for a in archives)})")
        if root.exists() or root.is_symlink():
            # An earlier root without a current manifest (interrupted, or the registry changed):
            # move it aside first so that the new one appears in one rename.
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            root.rename(old / "root")
            found.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            found.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_checkpoint(cfg: Any, model_name: str, **download_options) -> Path:
    """Download a ``source: url`` model's checkpoint to ``{data_dir}/checkpoints/MODEL.pth``, verified."""
    if model_name not in cfg.models:
        raise MMCError(f"models.{model_name}: no such model in the config (have: {sorted(cfg.models)})")
    model = cfg.models[model_name]
    if model.source != "url":
        raise MMCError(f"models.{model_name}.source is {model.source!r}: only 'url' models are downloaded")
    dest = Path(cfg.data_dir) / "checkpoints" / f"{model_name}.pth"
    expected, how, reference = _verify_plan(cfg, model.url, None, model.sha256, None, read_pins(cfg), model_name)
    _log(f"{model_name}: downloading {model.url}")
    got = dl.download(model.url, dest, **expected, reference=reference, **download_options)
    if how.startswith("none published"):
        with _pins(cfg) as current:
            current[model.url] = {"sha256": got.sha256, "size": got.size, "pinned_at": _now()}
        _log(f"{model_name}: no sha256 in the config; pinned {got.sha256} in {pins_path(cfg)}")
    return dest


def unpin(cfg: Any, name: str) -> dict[str, dict]:
    """Drop the pins of dataset ``name``'s archives (or model ``name``'s file); return what was dropped.

    The next download of those URLs is pinned afresh, after its archive has been checked.
    """
    if name in cfg.datasets:
        urls = [a.url for a in cfg.datasets[name].archives]
    elif name in cfg.models and cfg.models[name].source == "url":
        urls = [cfg.models[name].url]
    else:
        have = sorted(cfg.datasets) + sorted(m for m in cfg.models if cfg.models[m].source == "url")
        raise MMCError(f"{name!r} is neither a key of datasets nor a `source: url` model (have: {have})")
    read_pins(cfg)  # a broken pins file: one clear error before the lock
    with _pins(cfg) as current:
        return {url: current.pop(url) for url in urls if url in current}
