"""GPU benchmark of MMC pretraining with its real input pipeline: ViT-S/16, bf16 autocast, 2 x 224 px crops.

In one run: generates ImageNet-like JPEGs (500 x 375 px), packs them into shards (`mmc data
shard`'s writer), builds the real `Trainer` over them and

1. times the step alone (``Trainer._train_step`` on one batch already on the device: photometric
   augmentations included, loading excluded);
2. times the step fed by the real loader (``make_run_loader``: DataLoader workers, pinned memory,
   ``data.decode`` as asked) and measures how long each step waits for its batch.

Prints images/s, analytic FLOPs per step, MFU against the card's dense bf16 peak (datasheet table
below; the measured bf16 matmul peak of this run is printed beside it), peak GPU memory and the
fraction of the time the step waits on data. Writes the result as JSON to $OUT/gpu_pretrain.json
when OUT is set. ``--device cpu --quick`` runs the same code on the CPU with the test model (a
smoke test: no MFU).

    PYTHONPATH=$PWD python benchmarks/gpu_pretrain.py [--batch 128] [--steps 30] [--workers N]
        [--decode worker|device] [--compile] [--device cpu --quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pretrain import case_config

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
BF16_PEAK = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12,
             "H100 NVL": 835.5e12, "A100": 312e12, "L40S": 362.05e12, "A10": 125e12}  # fmt: skip
WARMUP = 5  # untimed steps (compilation, cuDNN/cuBLAS autotuning); 1 with --quick


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


def _write_image(args: tuple[Path, int, int, int]) -> int:
    import numpy as np
    from PIL import Image

    path, seed, width, height = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(np.int16)
    pixels = np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path.stat().st_size


def make_shards(root: Path, count: int, width: int, height: int, processes: int) -> dict:
    """``count`` JPEGs in 8 class folders, packed into shards of 256 MB; returns a description."""
    from multiprocessing import Pool

    from mmc.data import shards

    jobs = [(root / "images" / f"n{i % 8:08d}" / f"img_{i:06d}.JPEG", i, width, height) for i in range(count)]
    with Pool(processes) as pool:
        sizes = pool.map(_write_image, jobs, chunksize=16)
    items, source, classes = shards.folder_items(root / "images")
    shards.write_shards(items, root / "shards", source, 256 * 10**6, classes, log=lambda m: None)
    return {"images": count, "width": width, "height": height, "mean_jpeg_bytes": sum(sizes) / count}


def make_trainer(cfg, shard_dir: Path, workers: int, decode: str, device, tmp: Path):
    import torch

    from mmc.pretrain import train
    from mmc.tracking import JobRecorder

    pcfg = cfg.experiments["mmc"]
    data = dataclasses.replace(pcfg.data, path=str(shard_dir), num_workers=workers, decode=decode)
    pcfg = dataclasses.replace(pcfg, data=data)
    return train.Trainer(cfg, pcfg, tmp / "out", tmp / "state", torch.device(device), JobRecorder("pretrain", "bench", None))


def on_device(batch, device):
    """The batch's tensors on the device, its parameter rows on the CPU (as ``to_device`` expects them)."""
    from mmc.pretrain.data import HostBatch

    if isinstance(batch, HostBatch):
        return batch._replace(global_crops=batch.global_crops.to(device), local_crops=batch.local_crops.to(device),
                              masks=batch.masks.to(device))  # fmt: skip
    return batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="images per step (one GPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps of the step alone")
    parser.add_argument("--loader-steps", type=int, default=150, help="timed steps fed by the loader")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1, at most 16)")
    parser.add_argument("--decode", choices=["worker", "device"], default="worker", help="pretrain data.decode")
    parser.add_argument("--images", type=int, default=4096, help="generated images (the loader cycles over them)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="the test model, 32 small images, 3 steps (smoke test)")
    args = parser.parse_args()
    import torch

    from mmc.pretrain.data import make_run_loader
    from mmc.pretrain.flops import step_flops

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu_pretrain: no CUDA device (use --device cpu --quick for a smoke test)", file=sys.stderr)
        return 1
    if args.quick:
        args.batch, args.steps, args.loader_steps, args.images = 8, 2, 2, 32
    warmup = 1 if args.quick else WARMUP
    workers = args.workers if args.workers is not None else max(1, min(16, (os.cpu_count() or 2) - 1))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if cuda else "cpu"
    precision = "bfloat16" if cuda else "float32"
    cfg = case_config("test" if args.quick else "vits16", precision, args.batch, device=args.device)
    images = max(args.images, args.batch)
    size = (128, 96) if args.quick else (500, 375)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data = make_shards(tmp, images, *size, processes=max(1, min(16, os.cpu_count() or 1)))
        print(f"{images} JPEGs in shards in {time.perf_counter() - start:.1f} s", flush=True)
        trainer = make_trainer(cfg, tmp / "shards", workers, args.decode, args.device, tmp)
        forward = torch.compile(trainer.student) if args.compile else trainer.student
        dataset = trainer.dataset
        batch = on_device(dataset.collate([dataset[(0, i)] for i in range(args.batch)]), trainer.device)

        # 1. the step alone, on one batch already on the device
        for i in range(warmup):  # warm-up (and compilation)
            trainer.step = i
            trainer._train_step(forward, batch, 0)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for i in range(args.steps):
            trainer.step = warmup + i
            trainer._train_step(forward, batch, 0)
        if cuda:
            torch.cuda.synchronize()
        step_only_s = (time.perf_counter() - start) / args.steps

        # 2. the step fed by the real loader, started now; the first steps (workers starting, their
        # prefetch queue of 2 batches each filling) are not timed, so the rest shows the steady state
        skip = warmup + 2 * workers
        loader = make_run_loader(dataset, args.batch, trainer.seed, 0, 1, 0, skip + args.loader_steps, workers,
                                 trainer.device)  # fmt: skip
        waits, steps = [], []
        tick = time.perf_counter()
        for i, host in enumerate(loader):
            fetched = time.perf_counter()
            trainer.step = i
            trainer._train_step(forward, host, 0)
            if cuda:  # the step leaves its values on the device: wait for its kernels
                torch.cuda.synchronize()
            done = time.perf_counter()
            if i >= skip:
                waits.append(fetched - tick)
                steps.append(done - tick)
            tick = done
        del loader
    loaded_s = sum(steps) / len(steps)
    # the heads run on the masked tokens: count the FLOPs of this batch's masks
    flops = step_flops(trainer.pcfg, args.batch, masked_tokens=int(batch.masks.sum()))["step"]
    peak = datasheet_peak(name) if cuda else None
    matmul = measured_matmul_peak() if cuda else None
    result = {
        "device": name, "cpus": os.cpu_count(), "load_average": os.getloadavg(), "batch": args.batch,
        "crops": f"2 x {trainer.pcfg.data.global_crop_size}", "precision": precision, "compile": args.compile,
        "loader": {"workers": workers, "decode": args.decode, "format": "shards", "pin_memory": cuda, **data},
        "step_only_s": step_only_s, "step_only_images_per_s": args.batch / step_only_s,
        "step_with_loader_s": loaded_s, "images_per_s": args.batch / loaded_s,
        "loader_steps_timed": len(steps), "data_wait_fraction": sum(waits) / sum(steps), "max_data_wait_s": max(waits),
        "flops_per_step": flops, "achieved_flops_per_s": flops / loaded_s, "datasheet_bf16_peak": peak,
        "mfu": flops / loaded_s / peak if peak else None,
        "mfu_step_only": flops / step_only_s / peak if peak else None,
        "measured_bf16_matmul_peak": matmul,
        "ratio_to_measured_matmul": flops / loaded_s / matmul if matmul else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }  # fmt: skip
    for key, value in result.items():
        print(f"{key:28s} {value}")
    verdict = "waits on data" if result["data_wait_fraction"] > 0.05 else "is fed (waits < 5 % of the time)"
    print(f"the step {verdict}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_pretrain.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
