"""How short a MIM-only run makes the slow test pass (docs/study.md#slow-test).

    python benchmarks/study_short_run.py [SEED ...]     (default: 0 1 2)

For each seed, the run of tests/test_study.py (the demo's scenes and model, MIM alone) for 4 epochs
with checkpoints after 1, 2 and 4 epochs, each evaluated by `mmc segment` with the initial weights
as paired reference; prints each checkpoint's Δ mIoU (best τ) with its 95 % bootstrap interval, as
`mmc tables` computes it, and the time taken. Works in a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_study  # noqa: E402  (the slow test's own config and evaluation)
from workflow_helpers import write_config  # noqa: E402

EPOCHS = (1, 2, 4)


def measure(seed: int, tmp: Path) -> None:
    raw = test_study._study_config(tmp, seed)
    raw["pretrain"]["optim"]["epochs"] = EPOCHS[-1]
    raw["pretrain"]["checkpoint"]["save_epochs"] = list(EPOCHS[:-1])
    raw["models"] = {f"e{e}": {"source": "experiment", "experiment": "mim_only", "reference": "init"} for e in EPOCHS}
    raw["models"]["init"] = {"source": "experiment", "experiment": "mim_only", "checkpoint": "initial"}
    config = write_config(tmp, raw)
    start = time.perf_counter()
    test_study._mmc("data", "synthetic", "--config", config, "--out", tmp / "data" / "synthetic")
    test_study._mmc("pretrain", "--config", config, "--experiment", "mim_only", "--seed", seed, "--out", tmp / "pretrain")
    trained = time.perf_counter()
    checkpoints = {f"e{e}": tmp / "pretrain" / f"epoch_{e:04d}.pth" for e in EPOCHS}
    rows = test_study.evaluate_paired(tmp, config, seed, checkpoints | {"init": tmp / "pretrain" / "epoch_0000.pth"})
    done = time.perf_counter()
    for row in rows.values():
        if row["seed"] == "all" and row["reference"]:
            delta, lo, hi = (100 * float(row[k]) for k in ("delta_best_miou", "delta_best_miou_lo", "delta_best_miou_hi"))
            print(f"seed {seed}, {row['model'][1:]} epoch(s): Δ mIoU {delta:+.1f} [{lo:+.1f}, {hi:+.1f}]", flush=True)
    print(f"seed {seed}: data + 4 epochs {trained - start:.0f} s, evaluation of 4 checkpoints {done - trained:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    for seed in map(int, argv or ["0", "1", "2"]):
        with tempfile.TemporaryDirectory(prefix="mmc-short-run-") as tmp:
            measure(seed, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
