"""What checking the data costs, on the demo data of config/test.yaml (or a copy of your own data).

    PYTHONPATH=$PWD python benchmarks/bench_data_checks.py [--config config/test.yaml] [--repeats 3]

In a scratch directory: generates the synthetic scenes of the config, versions them with DVC
(`mmc data version --no-push`), then times, best of ``--repeats``:

- the workflow's check at every start (``mmc.dvc.listing_changes``: one stat per file);
- ``mmc provenance``'s check of ``data.dvc`` against the disk (``mmc.dvc.tree_changes``: md5 of
  every file, as DVC computes it);
- what one evaluation job adds to record its data (``mmc.data.digest.dataset_entry``: sha256 of
  every file its reader reads) and ``mmc provenance``'s check of that record;
- for comparison, DVC's own ``dvc data status --granular``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def best(repeats: int, call) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "test.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    work = Path(tempfile.mkdtemp(prefix="mmc-data-checks-"))
    try:
        shutil.copy(args.config, work / "config.yaml")
        os.chdir(work)
        run = [sys.executable, "-m", "mmc"]
        subprocess.run([*run, "data", "synthetic", "--config", "config.yaml", "--out", "data/synthetic"], env=env,
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], env=env, check=True)
        subprocess.run([*run, "data", "version", "--config", "config.yaml", "--no-push"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        from mmc import config, dvc
        from mmc.data.digest import check_entry, dataset_entry

        cfg = config.load("config.yaml")
        files = dvc.tracked_files(work, "data")
        size = sum(p.stat().st_size for p in files.values())
        print(f"data/: {len(files)} files, {size / 1e6:.1f} MB")
        name = cfg.evaluation.datasets[0]
        dataset = cfg.datasets[name]
        entry = dataset_entry(dataset)
        rows = [
            ("workflow start: listing_changes(data.dvc)", lambda: dvc.listing_changes("data.dvc")),
            ("mmc provenance: tree_changes(data.dvc)", lambda: dvc.tree_changes("data.dvc")),
            (f"evaluation job: dataset_entry({name}), {len(entry['files'])} files", lambda: dataset_entry(dataset)),
            (f"mmc provenance: check_entry({name})", lambda: check_entry(entry, work, dataset)),
            ("dvc data status --granular --json", lambda: subprocess.run(
                [sys.executable, "-m", "dvc", "data", "status", "--granular", "--json"], env=env, check=True,
                capture_output=True)),
        ]  # fmt: skip
        for label, call in rows:
            print(f"{label:<60} {best(args.repeats, call) * 1000:8.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
