"""GPU benchmark of the full MMC step: ViT-S/16, batch 64, bf16 autocast, 2 x 224 px global crops.

Prints images/s, analytic FLOPs per step, MFU against the card's dense bf16 peak (datasheet table
below; the measured bf16 matmul peak of this run is printed beside it), and peak GPU memory. The
step is `mmc.pretrain.train.Trainer._train_step`, the code `mmc pretrain` runs; data loading is
excluded. Writes the result as JSON to $OUT/gpu_pretrain.json when OUT is set.

    PYTHONPATH=$PWD python benchmarks/gpu_pretrain.py [--batch 64] [--steps 20] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pretrain import case_config, make_trainer, synthetic_batch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
BF16_PEAK = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12,
             "H100 NVL": 835.5e12, "A100": 312e12, "L40S": 362.05e12, "A10": 125e12}  # fmt: skip


def datasheet_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def measured_matmul_peak(n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    args = parser.parse_args()
    import torch

    from mmc.pretrain.flops import step_flops

    if not torch.cuda.is_available():
        print("gpu_pretrain: no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name()
    cfg = case_config("vits16", "bfloat16", args.batch, device="cuda")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, args.batch, "cuda", Path(tmp))
    forward = torch.compile(trainer.student) if args.compile else trainer.student
    data = synthetic_batch(trainer.pcfg, args.batch, "cuda")
    for i in range(5):  # warm-up (and compilation)
        trainer.step = i
        trainer._train_step(forward, data, 0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        trainer.step = 5 + i
        trainer._train_step(forward, data, 0)
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / args.steps
    flops = step_flops(trainer.pcfg, args.batch, masked_tokens=int(data[2].sum()))["step"]
    peak = datasheet_peak(name)
    matmul = measured_matmul_peak()
    result = {
        "device": name, "batch": args.batch, "crops": "2 x 224", "precision": "bfloat16", "compile": args.compile,
        "step_s": step_s, "images_per_s": args.batch / step_s, "flops_per_step": flops,
        "achieved_flops_per_s": flops / step_s, "datasheet_bf16_peak": peak,
        "mfu": flops / step_s / peak if peak else None,
        "measured_bf16_matmul_peak": matmul, "ratio_to_measured_matmul": flops / step_s / matmul,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }  # fmt: skip
    for key, value in result.items():
        print(f"{key:28s} {value}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_pretrain.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
