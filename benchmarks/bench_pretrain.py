"""CPU benchmark of the full MMC training step (student fwd+bwd, teacher fwd, losses, AdamW, EMA).

Prints, measured in this one run: this machine's matmul peak (fp32, bf16), then for the test model
(config/test.yaml) and ViT-S/16 at 224 px, in fp32 and bf16 autocast: images/s, analytic FLOPs per
step, achieved FLOP/s and its ratio to the matmul peak of the same dtype, and peak memory (max RSS of
a fresh process per case). Data loading is excluded (batches are pre-built tensors); the step is
`mmc.pretrain.train.Trainer._train_step`, the very code `mmc pretrain` runs.

    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 8) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` (the practical peak of this machine)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def case_config(case: str, precision: str, batch: int, device: str = "cpu"):
    from mmc import config

    if case == "test":
        raw = config.load_raw(REPO / "config" / "test.yaml")
        pretrain = raw.get("pretrain", {})
    else:  # ViT-S/16 at 224 px with the schema's default heads
        pretrain = {"backbone": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6, "img_size": 224}}
    pretrain = config.deep_merge(pretrain, {"precision": precision, "optim": {"batch_size": batch}, "compile": False})
    return config.freeze(config.resolve({"run_name": "bench", "device": device, "tracking": {"enabled": False},
                                         "pretrain": pretrain}))  # fmt: skip


def make_trainer(cfg, batch: int, device, tmp: Path):
    """A real Trainer (model, optimiser, schedules) over a throw-away folder of ``batch`` images."""
    import torch
    from PIL import Image

    from mmc.pretrain import train
    from mmc.tracking import JobRecorder

    folder = tmp / "images"
    folder.mkdir()
    for i in range(batch):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(folder / f"{i}.png")
    pcfg = cfg.experiments["mmc"]
    pcfg = type(pcfg)(**{**pcfg.__dict__, "data": type(pcfg.data)(**{**pcfg.data.__dict__, "path": str(folder)})})
    return train.Trainer(cfg, pcfg, tmp / "out", tmp / "state", torch.device(device), JobRecorder("pretrain", "bench", None))


def synthetic_batch(pcfg, batch: int, device: str):
    import torch

    size = pcfg.data.global_crop_size
    grid = size // pcfg.backbone.patch_size
    generator = torch.Generator().manual_seed(0)
    views = torch.randn(2, batch, 3, size, size, generator=generator).to(device)
    masks = (torch.rand(2, batch, grid * grid, generator=generator) < 0.3).to(device)
    return views, [], masks


def run_case(case: str, precision: str, batch: int, steps: int, threads: int, queue) -> None:
    import torch

    from mmc.pretrain.flops import step_flops

    torch.set_num_threads(threads)
    cfg = case_config(case, precision, batch)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, batch, "cpu", Path(tmp))
    pcfg = trainer.pcfg
    data = synthetic_batch(pcfg, batch, "cpu")
    warmup = 2 if case == "test" else 1  # a ViT-S step on CPU is long enough to settle in one
    times = []
    for i in range(steps + warmup):
        trainer.step = i
        start = time.perf_counter()
        trainer._train_step(trainer.student, data, 0)
        times.append(time.perf_counter() - start)
    timed = sorted(times[warmup:])
    step_time = timed[len(timed) // 2]  # median
    flops = step_flops(pcfg, batch)["step"]
    queue.put({
        "case": case, "precision": precision, "batch": batch, "step_s": step_time,
        "images_per_s": batch / step_time, "flops_per_step": flops, "flops_per_s": flops / step_time,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and only fp32 for ViT-S")
    parser.add_argument("--vits-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    # other processes on the machine distort every number here: the load average says how much
    print(f"torch {torch.__version__}, {args.threads} of {os.cpu_count()} CPU threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    peaks = {p: matmul_peak(p) for p in ("float32", "bfloat16")}
    for name, value in peaks.items():
        print(f"matmul peak {name:8s}: {value / 1e9:8.1f} GFLOP/s (2048^3, best of 8)")
    vits_steps = 1 if args.quick else 2
    cases = [("test", "float32", 32, 5), ("test", "bfloat16", 32, 5), ("vits16", "float32", args.vits_batch, vits_steps)]
    if not args.quick:
        cases.append(("vits16", "bfloat16", args.vits_batch, vits_steps))
    context = mp.get_context("spawn")
    results = []
    header = f"{'model':7s} {'precision':9s} {'batch':>5s} {'step s':>7s} {'img/s':>7s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'of peak':>7s} {'peak RSS MiB':>12s}"
    print(header)
    for case, precision, batch, steps in cases:
        queue = context.Queue()
        proc = context.Process(target=run_case, args=(case, precision, batch, steps, args.threads, queue))
        proc.start()
        result = queue.get()
        proc.join()
        result["ratio_to_matmul_peak"] = result["flops_per_s"] / peaks[precision]
        results.append(result)
        print(f"{case:7s} {precision:9s} {batch:5d} {result['step_s']:7.3f} {result['images_per_s']:7.1f} "
              f"{result['flops_per_step'] / 1e9:10.2f} {result['flops_per_s'] / 1e9:8.1f} "
              f"{result['ratio_to_matmul_peak']:7.1%} {result['peak_rss_mib']:12.0f}", flush=True)  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(json.dumps({"threads": args.threads, "matmul_peak_flops": peaks, "cases": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
