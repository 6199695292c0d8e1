"""Downloads from a real HTTP server on 127.0.0.1: resume, restart, retries, every error case, and
``fetch_dataset`` end to end for the four dataset layouts."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dataset_fixtures import official_archives
from loopback_server import Behaviour, LoopbackServer
from workflow_helpers import REPO, write_config

from mmc import config
from mmc.data import download as dl
from mmc.data import layouts
from mmc.data.fetch import fetch_checkpoint, fetch_dataset
from mmc.data.readers import open_reader
from mmc.errors import MMCError

FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, "progress": False}
PAYLOAD = os.urandom(3 * dl.CHUNK_SIZE + 12345)  # several chunks, not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ----------------------------------------------------------------------------- download()
def test_download_verifies_sha256_and_md5(tmp_path):
    with LoopbackServer({"f.bin": PAYLOAD}) as server:
        got = dl.download(server.url("f.bin"), tmp_path / "f.bin", size=len(PAYLOAD), sha256=SHA, md5=MD5, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert (got.sha256, got.md5, got.size, got.attempts) == (SHA, MD5, len(PAYLOAD), 1)
    assert leftovers(tmp_path) == ["f.bin"]


def test_dropped_connection_resumes_with_range(tmp_path):
    half = len(PAYLOAD) // 2
    with LoopbackServer({"f.bin": PAYLOAD}, Behaviour(drop_first_at=0.5)) as server:
        got = dl.download(server.url("f.bin"), tmp_path / "f.bin", sha256=SHA, **FAST)
        requests = list(server.requests)
    assert [(r.range, r.status) for r in requests] == [(None, 200), (f"bytes={half}-", 206)]
    assert got.resumed_at == (half,)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_partial_file_of_an_earlier_run_is_continued(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    with LoopbackServer({"f.bin": PAYLOAD}) as server:
        got = dl.download(server.url("f.bin"), tmp_path / "f.bin", md5=MD5, **FAST)
        assert [r.range for r in server.requests] == ["bytes=1000-"]
    assert got.md5 == MD5 and (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_and_still_verifies(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: must not survive a restart
    with LoopbackServer({"f.bin": PAYLOAD}, Behaviour(ignore_range=True, drop_first_at=0.5)) as server:
        got = dl.download(server.url("f.bin"), tmp_path / "f.bin", sha256=SHA, **FAST)
        requests = list(server.requests)
    assert [r.status for r in requests] == [200, 200]
    assert requests[1].range == f"bytes={(len(PAYLOAD) - 0) // 2}-"  # asked to resume, got the whole file
    assert got.resumed_at == () and got.sha256 == SHA
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_http_404_is_not_retried(tmp_path):
    with LoopbackServer({}) as server:
        with pytest.raises(MMCError, match=r"HTTP 404 .*not retried"):
            dl.download(server.url("missing.zip"), tmp_path / "missing.zip", **FAST)
        assert len(server.requests) == 1
    assert leftovers(tmp_path) == []


def test_http_500_is_retried_then_reported(tmp_path):
    with LoopbackServer({"f.bin": PAYLOAD}, Behaviour(fail_status=500, fail_times=-1)) as server:
        with pytest.raises(MMCError, match=r"after 3 attempts: HTTP 500"):
            dl.download(server.url("f.bin"), tmp_path / "f.bin", **FAST)
        assert len(server.requests) == 3
    assert not (tmp_path / "f.bin").exists()


def test_transient_500_recovers_with_backoff(tmp_path):
    pauses = []
    with LoopbackServer({"f.bin": PAYLOAD}, Behaviour(fail_status=503, fail_times=2)) as server:
        got = dl.download(server.url("f.bin"), tmp_path / "f.bin", sha256=SHA, **{**FAST, "backoff_s": 0.5}, sleep=pauses.append)
    assert got.attempts == 3 and pauses == [0.5, 1.0]


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MMCError, match="connection refused"):
        dl.download(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin", **FAST)
    assert leftovers(tmp_path) == []


def test_stalled_server_times_out(tmp_path):
    expected = r"after 1 attempts: transfer interrupted at byte 0: timed out"
    with LoopbackServer({"f.bin": PAYLOAD}, Behaviour(stall_s=3.0)) as server, pytest.raises(MMCError, match=expected):
        dl.download(server.url("f.bin"), tmp_path / "f.bin", **{**FAST, "retries": 0, "timeout_s": 0.3})
    assert not (tmp_path / "f.bin").exists()


def test_truncated_transfer_fails_after_retries(tmp_path):
    truncating = LoopbackServer({"f.bin": PAYLOAD}, Behaviour(ignore_range=True, always_truncate_at=0.3))
    with truncating as server, pytest.raises(MMCError, match=r"truncated transfer: got \d+ of \d+ bytes"):
        dl.download(server.url("f.bin"), tmp_path / "f.bin", sha256=SHA, **FAST)
    assert not (tmp_path / "f.bin").exists()  # only the resumable .part, never the final name


def test_checksum_mismatch_deletes_everything(tmp_path):
    expected = r"checksum mismatch \(md5 [0-9a-f]{32}, expected 0{32}\)"
    with LoopbackServer({"f.bin": PAYLOAD}) as server, pytest.raises(MMCError, match=expected):
        dl.download(server.url("f.bin"), tmp_path / "f.bin", md5="0" * 32, **FAST)
    assert leftovers(tmp_path) == []


def test_size_announced_by_server_differs_from_registry(tmp_path):
    expected = f"offers {len(PAYLOAD)} bytes, the registry expects 10"
    with LoopbackServer({"f.bin": PAYLOAD}) as server, pytest.raises(MMCError, match=expected):
        dl.download(server.url("f.bin"), tmp_path / "f.bin", size=10, **FAST)
    assert leftovers(tmp_path) == []


def test_verified_file_is_not_downloaded_again(tmp_path):
    with LoopbackServer({"f.bin": PAYLOAD}) as server:
        dl.download(server.url("f.bin"), tmp_path / "f.bin", sha256=SHA, **FAST)
        again = dl.download(server.url("f.bin"), tmp_path / "f.bin", sha256=SHA, **FAST)
        assert len(server.requests) == 1 and again.attempts == 0


# ----------------------------------------------------------------------------- fetch_dataset()
def make_config(tmp_path: Path, datasets: dict, models: dict | None = None):
    raw = {"run_name": "t", "data_dir": str(tmp_path / "data"), "datasets": datasets, "models": models or {}}
    return config.freeze(config.resolve(raw))


ROOTS = {"voc": "voc/VOC2012", "coco": "coco", "ade20k": "ade20k/ADEChallengeData2016", "davis": "davis/DAVIS"}


@pytest.mark.parametrize("fmt", ["voc", "coco", "ade20k", "davis"])
def test_fetch_dataset_in_official_layout(tmp_path, fmt):
    archives = official_archives(fmt, tmp_path / "build")
    with LoopbackServer({a.name: a for a in archives}) as server:
        entries = [{"url": server.url(a.name), "size": a.stat().st_size} for a in archives]
        # The first archive has a published md5; the others have none and get pinned.
        entries[0]["md5"] = hashlib.md5(archives[0].read_bytes()).hexdigest()
        root = tmp_path / "data" / ROOTS[fmt]
        cfg = make_config(tmp_path, {fmt: {"format": fmt, "root": str(root), "archives": entries}})
        manifest_file = fetch_dataset(cfg, fmt, **FAST)
        assert layouts.missing_entries(root, fmt, "val") == []
        assert all(sample.objects for sample in open_reader(cfg.datasets[fmt]))  # readable as downloaded
        manifest = json.loads(manifest_file.read_text())
        assert manifest["complete"] and manifest["root"] == str(root)
        assert [a["url"] for a in manifest["archives"]] == [e["url"] for e in entries]
        assert manifest["archives"][0]["verified_by"] == "registry md5"
        pins_file = tmp_path / "data/manifests/pins.json"
        pins = json.loads(pins_file.read_text()) if len(archives) > 1 else {}
        assert pins_file.exists() == (len(archives) > 1)
        for archive, record in zip(archives[1:], manifest["archives"][1:], strict=True):
            assert pins[record["url"]]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert entries[0]["url"] not in pins
        served = len(server.requests)
        assert fetch_dataset(cfg, fmt, **FAST) == manifest_file  # complete manifest: no-op
        assert len(server.requests) == served
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_pinned_checksum_catches_a_changed_file(tmp_path):
    archives = official_archives("ade20k", tmp_path / "build")
    root = tmp_path / "data/ade20k/ADEChallengeData2016"
    with LoopbackServer({archives[0].name: archives[0]}) as server:
        cfg = make_config(tmp_path, {"ade": {"format": "ade20k", "root": str(root), "archives": [{"url": server.url(archives[0].name)}]}})
        fetch_dataset(cfg, "ade", **FAST)
        # The server's file changes; a fresh fetch (no manifest, no cached archive) must refuse it.
        (tmp_path / "data/manifests/ade.json").unlink()
        (tmp_path / "data/downloads" / archives[0].name).unlink()
        tampered = bytearray(archives[0].read_bytes())
        tampered[len(tampered) // 2] ^= 0xFF  # same size: only the pinned hash can tell
        server.files[archives[0].name] = bytes(tampered)
        with pytest.raises(MMCError, match="checksum mismatch"):
            fetch_dataset(cfg, "ade", **FAST)
    assert not (tmp_path / "data/manifests/ade.json").exists()


def test_unexpected_layout_leaves_nothing(tmp_path):
    archives = official_archives("coco", tmp_path / "build")  # serve only the images, not the annotations
    root = tmp_path / "data/coco"
    with LoopbackServer({archives[0].name: archives[0]}) as server:
        cfg = make_config(tmp_path, {"coco": {"format": "coco", "root": str(root), "archives": [{"url": server.url(archives[0].name)}]}})
        with pytest.raises(MMCError, match=r"unexpected layout: .*missing annotations/instances_val2017.json"):
            fetch_dataset(cfg, "coco", **FAST)
    assert not root.exists()
    assert leftovers(tmp_path / "data") == ["downloads"]  # the verified archive only: no root, no manifest
    assert not (tmp_path / "data/manifests").exists()


def test_traversal_member_in_a_served_archive_leaves_nothing(tmp_path):
    import zipfile

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("DAVIS/JPEGImages/480p/a/00000.jpg", b"x")
        zf.writestr("../../escaped.txt", b"x")
    root = tmp_path / "data/davis/DAVIS"
    with LoopbackServer({"evil.zip": archive}) as server:
        cfg = make_config(tmp_path, {"d": {"format": "davis", "root": str(root), "archives": [{"url": server.url("evil.zip")}]}})
        with pytest.raises(MMCError, match=r"contains '\.\.' \(path traversal\)"):
            fetch_dataset(cfg, "d", **FAST)
    assert not root.exists() and leftovers(root.parent) == []
    assert not list(tmp_path.rglob("escaped.txt"))


def test_http_404_through_fetch_dataset(tmp_path):
    with LoopbackServer({}) as server:
        cfg = make_config(tmp_path, {"c": {"format": "coco", "root": str(tmp_path / "data/coco"), "archives": [{"url": server.url("val2017.zip")}]}})
        with pytest.raises(MMCError, match="HTTP 404"):
            fetch_dataset(cfg, "c", **FAST)
    assert not (tmp_path / "data/coco").exists() and not (tmp_path / "data/manifests").exists()


def test_fetch_checkpoint_pins_then_verifies(tmp_path):
    with LoopbackServer({"dino.pth": PAYLOAD}) as server:
        cfg = make_config(tmp_path, {}, {"dino": {"source": "url", "url": server.url("dino.pth")}})
        path = fetch_checkpoint(cfg, "dino", **FAST)
        assert path == tmp_path / "data/checkpoints/dino.pth" and path.read_bytes() == PAYLOAD
        pins = json.loads((tmp_path / "data/manifests/pins.json").read_text())
        assert pins[server.url("dino.pth")]["sha256"] == SHA
        fetch_checkpoint(cfg, "dino", **FAST)  # verified against the pin: no second request
        assert len(server.requests) == 1
        bad = make_config(tmp_path, {}, {"dino": {"source": "url", "url": server.url("dino.pth"), "sha256": "1" * 64}})
        with pytest.raises(MMCError, match="checksum mismatch"):
            fetch_checkpoint(bad, "dino", **FAST)
    assert not path.exists()  # it no longer matched the config: re-downloaded, refused, deleted


def run_limited(tmp_path: Path, call: str, limit: int = dl.CHUNK_SIZE) -> subprocess.CompletedProcess:
    """Run ``call`` (on ``cfg``) in a child whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE).

    Tests run as root, where permission bits stop nothing; a file-size limit fails writes with EFBIG.
    """
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        from mmc import config
        from mmc.data.fetch import fetch_checkpoint, fetch_dataset
        from mmc.errors import MMCError
        cfg = config.freeze(config.resolve(json.loads(sys.argv[1])))
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        try:
            {call}
        except MMCError as e:
            print(e)
            sys.exit(3)
        """
    )
    raw = (tmp_path / "raw.json").read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script, raw], env=env, capture_output=True, text=True, timeout=60)


def test_disk_write_error_during_download_leaves_nothing(tmp_path):
    with LoopbackServer({"big.pth": PAYLOAD}) as server:
        raw = {"run_name": "t", "data_dir": str(tmp_path / "data"), "models": {"m": {"source": "url", "url": server.url("big.pth")}}}
        (tmp_path / "raw.json").write_text(json.dumps(raw))
        result = run_limited(tmp_path, 'fetch_checkpoint(cfg, "m", retries=0, progress=False)')
    assert result.returncode == 3, result.stderr
    assert "cannot write the download (File too large)" in result.stdout
    assert leftovers(tmp_path / "data/checkpoints") == []


def test_disk_write_error_during_extraction_leaves_nothing(tmp_path):
    import zipfile

    from dataset_fixtures import make_davis

    src = tmp_path / "build/DAVIS"
    make_davis(src)
    (src / "JPEGImages/480p/blackswan/big.bin").write_bytes(bytes(4 * dl.CHUNK_SIZE))  # compresses to a few KiB
    archive = tmp_path / "DAVIS-2017-trainval-480p.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, str(p.relative_to(src.parent)))
    assert archive.stat().st_size < dl.CHUNK_SIZE
    root = tmp_path / "data/davis/DAVIS"
    with LoopbackServer({archive.name: archive}) as server:
        raw = {"run_name": "t", "data_dir": str(tmp_path / "data"),
               "datasets": {"d": {"format": "davis", "root": str(root), "archives": [{"url": server.url(archive.name)}]}}}  # fmt: skip
        (tmp_path / "raw.json").write_text(json.dumps(raw))
        result = run_limited(tmp_path, 'fetch_dataset(cfg, "d", retries=0, progress=False)')
    assert result.returncode == 3, result.stderr
    assert "extraction into" in result.stdout and "File too large" in result.stdout
    assert not root.exists() and leftovers(root.parent) == []
    assert not (tmp_path / "data/manifests/d.json").exists()


# ----------------------------------------------------------------------------- command line
def mmc_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mmc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_download_and_fetch_checkpoint(tmp_path):
    archives = official_archives("davis", tmp_path / "build")
    files = {a.name: a for a in archives} | {"w.pth": PAYLOAD}
    with LoopbackServer(files, Behaviour(drop_first_at=0.5)) as server:
        raw = {
            "run_name": "t",
            "data_dir": "data",
            "datasets": {
                "davis": {"format": "davis", "root": "data/davis/DAVIS", "archives": [{"url": server.url(archives[0].name)}]},
                "broken": {"format": "davis", "root": "data/broken", "archives": [{"url": server.url("nope.zip")}]},
            },
            "models": {"w": {"source": "url", "url": server.url("w.pth"), "sha256": SHA}},
        }
        write_config(tmp_path / "c.yaml", raw)
        ok = mmc_cli("data", "download", "davis", "--config", "c.yaml", "--no-progress", cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "data/manifests/davis.json"
        assert (tmp_path / "data/davis/DAVIS/ImageSets/2017/val.txt").is_file()
        assert [r.range for r in server.requests] == [None, f"bytes={archives[0].stat().st_size // 2}-"]
        again = mmc_cli("data", "download", "davis", "--config", "c.yaml", cwd=tmp_path)
        assert again.returncode == 0 and "nothing to do" in again.stderr
        bad = mmc_cli("data", "download", "broken", "--config", "c.yaml", "--retries", "0", cwd=tmp_path)
        assert bad.returncode == 2 and "mmc data: error:" in bad.stderr and "HTTP 404" in bad.stderr
        assert "Traceback" not in bad.stderr
        ckpt = mmc_cli("data", "fetch-checkpoint", "w", "--config", "c.yaml", "--backoff", "0", cwd=tmp_path)
        assert ckpt.returncode == 0, ckpt.stderr
        assert (tmp_path / "data/checkpoints/w.pth").read_bytes() == PAYLOAD


def test_paper_config_registers_the_four_datasets_with_known_layouts():
    merged = config.load(REPO / "config/config.yaml")
    for name in ("voc", "coco", "ade20k", "davis"):
        assert merged.datasets[name].archives, name
        assert layouts.expected_layout(merged.datasets[name].format, merged.datasets[name].split)


def test_provided_dataset_without_archives_is_checked_and_recorded(tmp_path):
    from dataset_fixtures import make_voc

    root = tmp_path / "data/voc/VOC2012"
    cfg = make_config(tmp_path, {"voc_train": {"format": "voc", "root": str(root), "split": "train"}})
    with pytest.raises(MMCError, match=r"no archives to download and .* missing .*ImageSets/Segmentation/train\.txt"):
        fetch_dataset(cfg, "voc_train")
    assert not (tmp_path / "data/manifests").exists()
    make_voc(root, split="train")
    manifest = json.loads(fetch_dataset(cfg, "voc_train").read_text())
    assert manifest["complete"] and manifest["source"] == "provided" and manifest["archives"] == []


def test_killed_run_leftovers_and_an_unrecorded_root_are_replaced(tmp_path):
    archives = official_archives("ade20k", tmp_path / "build")
    root = tmp_path / "data/ade20k/ADEChallengeData2016"
    (root / "junk").mkdir(parents=True)  # a root with no manifest: not trusted
    stale = root.parent / ".ADEChallengeData2016.extract-abc123"
    (stale / "images").mkdir(parents=True)  # what a killed extraction leaves
    with LoopbackServer({archives[0].name: archives[0]}) as server:
        cfg = make_config(tmp_path, {"ade": {"format": "ade20k", "root": str(root), "archives": [{"url": server.url(archives[0].name)}]}})
        fetch_dataset(cfg, "ade", **FAST)
    assert not (root / "junk").exists() and layouts.missing_entries(root, "ade20k", "val") == []
    assert leftovers(root.parent) == ["ADEChallengeData2016"]


def test_changed_registry_checksum_is_not_a_no_op(tmp_path):
    archives = official_archives("ade20k", tmp_path / "build")
    root = tmp_path / "data/ade20k/ADEChallengeData2016"
    with LoopbackServer({archives[0].name: archives[0]}) as server:
        entry = {"url": server.url(archives[0].name), "md5": hashlib.md5(archives[0].read_bytes()).hexdigest()}
        cfg = make_config(tmp_path, {"ade": {"format": "ade20k", "root": str(root), "archives": [entry]}})
        fetch_dataset(cfg, "ade", **FAST)
        changed = make_config(tmp_path, {"ade": {"format": "ade20k", "root": str(root), "archives": [{**entry, "md5": "f" * 32}]}})
        with pytest.raises(MMCError, match=r"checksum mismatch \(md5 [0-9a-f]{32}, expected f{32}\)"):
            fetch_dataset(changed, "ade", **FAST)
        assert len(server.requests) == 2  # the cached archive no longer matched: fetched again, refused


# ----------------------------------------------------------------------------- lying servers, pins, crafted archives
def tar_member_offset(archive: Path, index: int) -> int:
    """Byte offset of member ``index``'s header in a plain tar: cutting there ends on a member boundary."""
    import tarfile

    with tarfile.open(archive) as tar:
        return tar.getmembers()[index].offset


def test_short_content_length_is_refused_never_pinned_and_the_honest_file_is_accepted(tmp_path):
    archive = official_archives("voc", tmp_path / "build")[0]  # a plain tar; no checksum is published
    root = tmp_path / "data/voc/VOC2012"
    cut = tar_member_offset(archive, 5)
    with LoopbackServer({archive.name: archive}, Behaviour(short_content_length=cut)) as server:
        cfg = make_config(tmp_path, {"voc": {"format": "voc", "root": str(root), "archives": [{"url": server.url(archive.name)}]}})
        with pytest.raises(MMCError, match=r"truncated tar: the end-of-archive blocks are missing"):
            fetch_dataset(cfg, "voc", **FAST)
        assert not root.exists() and not (tmp_path / "data/manifests/voc.json").exists()
        assert leftovers(tmp_path / "data/downloads") == []  # the unvouched file is gone
        assert server.url(archive.name) not in fetch_read_pins(cfg)  # nothing pinned
        server.behaviour.short_content_length = None  # the server is honest again
        fetch_dataset(cfg, "voc", **FAST)
    assert layouts.missing_entries(root, "voc", "val") == []
    assert fetch_read_pins(cfg)[server.url(archive.name)]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()


def fetch_read_pins(cfg) -> dict:
    from mmc.data.fetch import read_pins

    return read_pins(cfg)


def test_a_pinned_mismatch_says_pinned_and_unpin_drops_the_pin(tmp_path):
    archives = official_archives("ade20k", tmp_path / "build")
    name = archives[0].name
    with LoopbackServer({name: archives[0]}) as server:
        raw = {"run_name": "t", "data_dir": "data",
               "datasets": {"ade": {"format": "ade20k", "root": "data/ade20k/ADEChallengeData2016",
                                    "archives": [{"url": server.url(name)}]}}}  # fmt: skip
        write_config(tmp_path / "c.yaml", raw)
        assert mmc_cli("data", "download", "ade", "--config", "c.yaml", "--no-progress", cwd=tmp_path).returncode == 0
        (tmp_path / "data/manifests/ade.json").unlink()
        (tmp_path / "data/downloads" / name).unlink()
        bigger = archives[0].read_bytes() + b"\0" * 10  # the source changed (the zip stays readable)
        server.files[name] = bigger
        refused = mmc_cli("data", "download", "ade", "--config", "c.yaml", "--retries", "0", cwd=tmp_path)
        errors = [line for line in refused.stderr.splitlines() if "error:" in line]
        assert refused.returncode == 2 and len(errors) == 1, refused.stderr
        assert "registry" not in errors[0] and "the pin in data/manifests/pins.json" in errors[0]
        assert f"expects {archives[0].stat().st_size}" in errors[0] and "mmc data unpin ade" in errors[0]
        dropped = mmc_cli("data", "unpin", "ade", "--config", "c.yaml", cwd=tmp_path)
        assert dropped.returncode == 0 and f"unpinned {server.url(name)}" in dropped.stdout
        assert json.loads((tmp_path / "data/manifests/pins.json").read_text()) == {}
        again = mmc_cli("data", "unpin", "ade", "--config", "c.yaml", cwd=tmp_path)
        assert again.returncode == 0 and "nothing pinned" in again.stdout
        unknown = mmc_cli("data", "unpin", "nope", "--config", "c.yaml", cwd=tmp_path)
        assert unknown.returncode == 2 and "neither a key of datasets" in unknown.stderr
        assert mmc_cli("data", "download", "ade", "--config", "c.yaml", "--no-progress", cwd=tmp_path).returncode == 2
        server.files[name] = archives[0]  # (the padded zip is refused as damaged: its end record is not last)
        assert mmc_cli("data", "download", "ade", "--config", "c.yaml", "--no-progress", cwd=tmp_path).returncode == 0
    pins = json.loads((tmp_path / "data/manifests/pins.json").read_text())
    assert pins[server.url(name)]["sha256"] == hashlib.sha256(archives[0].read_bytes()).hexdigest()


@pytest.mark.parametrize("tail", ["", ".", "..", "%2e%2e", "a%2Fb"])
def test_url_without_a_file_name_is_refused_cleanly(tmp_path, tail):
    url = f"http://127.0.0.1:9/archives/{tail}"
    raw = {"run_name": "t", "data_dir": "data", "datasets": {"d": {"format": "davis", "root": "data/d", "archives": [{"url": url}]}}}
    write_config(tmp_path / "c.yaml", raw)
    done = mmc_cli("data", "download", "d", "--config", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "last path segment" in done.stderr and "is not a file name" in done.stderr
    assert not (tmp_path / "data").exists()


def test_cve_2025_4517_archive_through_mmc_data_download(tmp_path):
    """A tar crafted like the public exploit, served for a dataset without a checksum: exit 2, one
    line, nothing written outside data_dir, the file it targets through a hard link unchanged."""
    from test_extract import cve_2025_4517_tar

    (tmp_path / "outside").mkdir()
    (tmp_path / "victim.txt").write_text("original\n")
    # staging is data/voc/.VOC2012.extract-*/: three levels below tmp_path
    archive = cve_2025_4517_tar(tmp_path / "VOCtrainval_11-May-2012.tar", levels_to_escape=3)

    with LoopbackServer({archive.name: archive}) as server:
        raw = {"run_name": "t", "data_dir": "data",
               "datasets": {"voc": {"format": "voc", "root": "data/voc/VOC2012", "archives": [{"url": server.url(archive.name)}]}}}  # fmt: skip
        write_config(tmp_path / "c.yaml", raw)
        done = mmc_cli("data", "download", "voc", "--config", "c.yaml", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "is a symbolic link" in error[0] and "every link is refused" in error[0]
    assert (tmp_path / "victim.txt").read_text() == "original\n"
    assert list((tmp_path / "outside").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCtrainval_11-May-2012.tar", "c.yaml", "data", "outside", "victim.txt"]
    assert leftovers(tmp_path / "data/voc") == [] and not (tmp_path / "data/manifests").exists()
