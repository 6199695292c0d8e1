from __future__ import annotations

import hashlib

import pytest

from mmc.files import atomic_path, sha256_file, write_text_atomic


def test_atomic_file_appears_only_on_success(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary left behind
    write_text_atomic(target, "whole")
    assert target.read_text() == "whole"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_atomic_directory_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "dataset"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_path(target, directory=True) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_path(target, directory=True) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_atomic_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    from mmc import files

    write_text_atomic(tmp_path / "shared.csv", "x")
    assert stat.S_IMODE((tmp_path / "shared.csv").stat().st_mode) == 0o666 & ~files._UMASK
    assert os.stat(tmp_path / "shared.csv").st_mode & stat.S_IRGRP or files._UMASK & 0o040


def test_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- disk full
def test_disk_full_is_one_clear_error_and_the_previous_file_survives(tmp_path):
    from full_disk import fill, small_file_system

    from mmc.files import WriteError, atomic_path, write_text_atomic

    with small_file_system(tmp_path / "small", "256k") as disk:
        target = write_text_atomic(disk / "table.csv", "tau,miou\n0.5,0.4\n")
        fill(disk, leave=8192)
        with pytest.raises(WriteError, match=r"cannot write .*/small/table.csv: No space left on device "
                                             r"\(\d+\.\d MB free on the file system of .*/small when the write "
                                             r"failed\); the previous table.csv is unchanged"):
            write_text_atomic(target, "x" * 100_000)
        assert target.read_text() == "tau,miou\n0.5,0.4\n"
        refused = pytest.raises(WriteError, match=r"cannot write .*/new.json: .*; nothing was written there")
        with refused, atomic_path(disk / "new.json") as tmp:
            tmp.write_bytes(bytes(100_000))
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "table.csv"]  # no temporary file left


def test_torch_save_on_a_full_disk_names_the_checkpoint(tmp_path):
    import torch
    from full_disk import fill, small_file_system

    from mmc.files import WriteError
    from mmc.pretrain.checkpoint import save

    with small_file_system(tmp_path / "small", "256k") as disk:
        save({"w": torch.zeros(10)}, disk / "epoch_0001.pth")
        previous = (disk / "epoch_0001.pth").read_bytes()
        fill(disk, leave=8192)
        with pytest.raises(WriteError, match=r"cannot write .*/epoch_0001.pth: torch.save could not write the file "
                                             r"\(.* MB free .*\); the previous epoch_0001.pth is unchanged"):
            save({"w": torch.zeros(100_000)}, disk / "epoch_0001.pth")
        assert (disk / "epoch_0001.pth").read_bytes() == previous
