"""The data a job read is part of its provenance: one evaluation image changed after the run is
named by `mmc provenance` (against the job's record and against data.dvc), the workflow refuses
to start until the data is versioned again, and then reruns the evaluation that read it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from workflow_helpers import BIN, config_with, job_counts, snakemake, snakemake_env, write_config

from mmc import dvc

pytestmark = pytest.mark.slow
SUMMARY = "results/test/segment/random/synthetic_val/summary.json"
TINY = {
    "synthetic": {"images": 8, "unlabelled_images": 4, "size": 64},
    "evaluation": {"resolution": 64},
    "selection": {"policy": "last", "dataset": None},
}


def mmc(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "python"), "-m", "mmc", *args], cwd=workdir, env=snakemake_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def replace_image(path: Path) -> None:
    """What a user editing an image does: a new file written, then renamed over the old one."""
    pixels = Image.open(path).convert("RGB")
    pixels.putpixel((3, 3), (255, 0, 255))
    edited = path.with_name("edited.jpg")
    pixels.save(edited, quality=95)
    os.replace(edited, path)


def test_a_changed_evaluation_image_is_named_refused_then_rerun(tmp_path):
    raw = config_with(**TINY)
    raw["models"] = {"random": {"source": "random", "seed": 0}}  # no training: only the data matter
    write_config(tmp_path / "tiny.yaml", raw)
    snakemake(tmp_path, "--configfile", "tiny.yaml", "--cores", "2", SUMMARY, timeout=600)
    (record_file,) = (tmp_path / "results/test/tracking/jobs").glob("segment-model=random-*dataset=synthetic_val*.json")
    record = json.loads(record_file.read_text())
    entry = record["data"]["synthetic_val"]
    image = "JPEGImages/" + sorted(p for p in entry["files"] if p.startswith("JPEGImages/"))[1].split("/", 1)[1]
    assert entry["kind"] == "dataset" and record["tags"]["mmc.data_digest.synthetic_val"] == entry["digest"]
    assert "ImageSets/Segmentation/val.txt" in entry["files"] and len(entry["files"]) == 1 + 3 * 4
    clean = mmc(tmp_path, "provenance", SUMMARY)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "and the data read (2 dataset version(s)) is unchanged" in clean.stdout

    path = tmp_path / "data/synthetic/VOCdevkit/VOC2012" / image
    replace_image(path)

    audit = mmc(tmp_path, "provenance", SUMMARY)
    assert audit.returncode == 1, audit.stdout + audit.stderr
    relative = f"data/synthetic/VOCdevkit/VOC2012/{image}"
    assert f"CHANGED {tmp_path}/{relative}: sha256 " in audit.stdout  # against the job's record
    assert f"{tmp_path}/{relative}: md5 " in audit.stdout and "data.dvc records" in audit.stdout  # against DVC
    assert f"mmc provenance: data changed: {tmp_path}/{relative}" in audit.stderr

    refused = snakemake(tmp_path, "--configfile", "tiny.yaml", "-n", SUMMARY, check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert f"the data changed since `mmc data version` wrote data.dvc: modified {relative}" in said
    assert "run `mmc data version --config tiny.yaml`" in said

    assert mmc(tmp_path, "data", "version", "--config", "tiny.yaml", "--no-push").returncode == 0
    plan = snakemake(tmp_path, "--configfile", "tiny.yaml", "-n", SUMMARY)
    assert job_counts(plan.stdout) == {"segment": 1}  # the evaluation that read the data, nothing else
    snakemake(tmp_path, "--configfile", "tiny.yaml", "--cores", "2", SUMMARY, timeout=600)
    again = mmc(tmp_path, "provenance", SUMMARY)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to be done" in snakemake(tmp_path, "--configfile", "tiny.yaml", "-n", SUMMARY).stdout


def test_the_cheap_listing_sees_added_removed_and_modified_files(tmp_path):
    """`mmc data version`'s listing (sizes and times, read by the workflow at every start)."""
    repo = tmp_path
    data = repo / "data"
    (data / "a").mkdir(parents=True)
    for name in ("x.jpg", "y.jpg"):
        (data / "a" / name).write_bytes(os.urandom(100))
    (data / "a/partial.part").write_bytes(b"ignored")  # .dvcignore'd, as DVC ignores it
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})  # fmt: skip
    dvc.setup(repo, type("D", (), {"cache_type": "copy", "hardlink_lock": False, "remote": ".remote"})())
    dvc_file = dvc.add(repo, "data")
    dvc.record_listing(dvc_file)
    assert dvc.listing_changes(dvc_file) == [] and dvc.tree_changes(dvc_file) == []
    (data / "a/partial.part").write_bytes(b"still ignored")
    (data / "a/z.jpg").write_bytes(b"new")
    (data / "a/y.jpg").unlink()
    (data / "a/x.jpg").write_bytes(os.urandom(100))
    os.utime(data / "a/x.jpg", ns=(1, 1))
    assert dvc.listing_changes(dvc_file) == [f"added {data}/a/z.jpg", f"removed {data}/a/y.jpg", f"modified {data}/a/x.jpg"]
    problems = dvc.tree_changes(dvc_file)
    assert [p.split(":")[0] for p in problems] == [f"{data}/a/x.jpg", f"{data}/a/y.jpg", f"{data}/a/z.jpg"]
    assert "not in data.dvc (added since)" in problems[2] and "missing on disk" in problems[1]
    # the tree md5 of mmc.dvc is DVC's own: the same files give the md5 `dvc add` writes
    dvc.add(repo, "data")
    assert dvc.listing_md5({r: dvc.md5_file(p) for r, p in dvc.tracked_files(repo, "data").items()}) == dvc.dvc_md5(dvc_file)
    dvc.record_listing(dvc_file)
    # rewritten with its modification time put back: the change time shows it, the md5 confirms it
    before = (data / "a/x.jpg").stat()
    (data / "a/x.jpg").write_bytes(os.urandom(100))
    os.utime(data / "a/x.jpg", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert dvc.listing_changes(dvc_file) == [f"modified {data}/a/x.jpg (its modification time was kept)"]
    os.utime(data / "a/x.jpg")  # (DVC's own state, keyed by inode, size and time, would miss it too)
    dvc.add(repo, "data")
    dvc.record_listing(dvc_file)
    # the project copied elsewhere (new inodes, same bytes and times): no change, and the listing follows
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(repo, copy, copy_function=shutil.copy2)
    assert dvc.listing_changes(copy / "data.dvc") == []
    listing = json.loads(next((copy / ".dvc/tmp/mmc-listing").glob("*.json")).read_text())
    assert listing["files"]["a/x.jpg"][3] == (copy / "data/a/x.jpg").stat().st_ino  # brought up to date


def test_a_published_checkpoint_rewritten_with_its_old_time_is_found(tmp_path):
    """What `mmc publish` notes of the file it publishes; the workflow checks it at every start."""
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})  # fmt: skip
    checkpoint = tmp_path / "checkpoints/mmc.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(os.urandom(5000))
    dvc_file = dvc.add(tmp_path, "checkpoints/mmc.pth")
    dvc.record_listing(dvc_file)
    assert dvc.unversioned_changes(dvc_file, []) == []
    before = checkpoint.stat()
    replacement = checkpoint.with_name("other.pth")
    replacement.write_bytes(os.urandom(5000))  # another checkpoint of the same size
    os.replace(replacement, checkpoint)
    os.utime(checkpoint, ns=(before.st_atime_ns, before.st_mtime_ns))
    changes = dvc.unversioned_changes(dvc_file, [])
    assert changes == [f"modified {checkpoint} (its modification time was kept)"]
    message = dvc.republish_message(dvc_file, changes)
    assert f"dvc checkout {dvc_file}" in message and f"delete {checkpoint}" in message


def test_pretraining_data_entries_name_what_changed(tmp_path):
    """The pretraining job's data entry: a listing hash of an image folder (paths and sizes), the
    manifest's sha256 of shards; checked again as `mmc provenance` does, naming what changed."""
    from mmc.data.digest import check_entry, pretrain_entry
    from mmc.data.shards import folder_items, write_shards

    folder = tmp_path / "images"
    for c in ("n01", "n02"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16 + i, 12), (40 * i, 10, 200)).save(folder / c / f"{c}_{i}.JPEG")
    entry = pretrain_entry(folder, "folder")
    assert entry["kind"] == "folder" and entry["files"] == 6 and check_entry(entry, tmp_path) == []
    (folder / "n02/n02_9.JPEG").write_bytes((folder / "n02/n02_0.JPEG").read_bytes())
    now = entry["bytes"] + (folder / "n02/n02_0.JPEG").stat().st_size
    assert check_entry(entry, tmp_path) == [
        f"{folder}: the listing (paths and sizes) changed: now 7 files, {now} bytes; recorded 6 files, {entry['bytes']} bytes"
    ]
    (folder / "n02/n02_9.JPEG").unlink()

    items, source, classes = folder_items(folder)
    shards = tmp_path / "shards"
    write_shards(items, shards, source, classes=classes, log=lambda message: None)
    entry = pretrain_entry(shards)  # format auto: the manifest makes it shards
    assert entry["kind"] == "shards" and check_entry(entry, tmp_path) == []
    shard = sorted(shards.glob("*.tar"))[0]
    with open(shard, "ab") as f:
        f.write(b"\0" * 512)
    assert len(problems := check_entry(entry, tmp_path)) == 1 and problems[0].startswith(f"{shard}: ")
    manifest = shards / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"samples"', '"samples" ', 1))
    changed = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert check_entry(entry, tmp_path) == [f"{manifest}: sha256 {changed}, recorded {entry['digest']}"]
