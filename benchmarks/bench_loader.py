"""Loader benchmark: CPU cost per image of the pretraining input pipeline, former vs current, files vs shards.

For ViT-S/16 views (2 global 224 px crops, the default augmentations, block masks) over generated
ImageNet-like JPEGs, measured in this one run with cases interleaved round by round:

- CPU ms per image in one process on one thread (``time.process_time``: what one core spends,
  whatever else runs on the machine) and images/s through a real DataLoader with 1 and 2 workers
  (wall clock: shared machines make this one noisy; the load averages are printed);
- for three pipelines: ``former`` (the PIL pipeline mmc used before: every augmentation on PIL
  images in the worker, float32 views out; kept below as the reference), ``current`` (workers
  decode, draw parameters, cut uint8 crops; photometric ops batched on the device) and
  ``current-device-decode`` (``data.decode: device``: workers only read bytes and draw parameters);
- bytes per image sent to the device, the device share run on this CPU (1 thread, per image:
  on a GPU it is a few batched kernels), and the cores per GPU needed to feed 4,000 images/s.

    PYTHONPATH=$PWD python benchmarks/bench_loader.py [--images 192] [--rounds 3] [--quick]

Writes the result as JSON to $OUT/bench_loader.json when OUT is set.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_IMAGES_PER_S = 4000  # per GPU: ViT-S/16 at >= 40 % MFU on an H100 (issue's goal)
BATCH = 32


# ------------------------------------------------------------------ the former pipeline (reference)
class FormerGaussianBlur:
    """PIL Gaussian blur, radius U(0.1, 2.0), probability p (the former mmc.pretrain.augment)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image):
        import torch
        from PIL import ImageFilter

        if torch.rand(()).item() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=0.1 + 1.9 * torch.rand(()).item()))


def former_view_transform(size, scale, aug, blur_p, solarize_p):
    from torchvision import transforms as T

    from mmc.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=aug.flip_p),
        T.RandomApply([T.ColorJitter(*aug.color_jitter)], p=aug.color_jitter_p),
        T.RandomGrayscale(p=aug.grayscale_p),
        FormerGaussianBlur(blur_p),
        T.RandomSolarize(128, p=solarize_p),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


class FormerDataset:
    """The former PretrainDataset: PIL decode, PIL augmentations under a forked seeded RNG, float32 views."""

    def __init__(self, pcfg, source, seed: int):
        from mmc.pretrain.data import PretrainDataset

        self.current = PretrainDataset.__new__(PretrainDataset)  # for its masks only
        self.current.grid, self.current.mask_args = (14, 14), (tuple(pcfg.mask.ratio), pcfg.mask.min_block_patches,
                                                                tuple(pcfg.mask.aspect_ratio))  # fmt: skip
        data, aug = pcfg.data, pcfg.augment
        self.views = [former_view_transform(data.global_crop_size, data.global_crop_scale, aug, aug.blur_p[v], aug.solarize_p[v])
                      for v in range(2)]  # fmt: skip
        self.source, self.seed = source, seed

    def __len__(self):
        return len(self.source)

    def __getitem__(self, key):
        import torch
        from PIL import Image

        from mmc.pretrain.data import sample_seed

        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        with Image.open(io.BytesIO(self.source.read(index))) as image:
            image = image.convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = torch.stack([t(image) for t in self.views])
        return views, [], self.current._masks(seed)

    @staticmethod
    def collate(items):
        import torch

        return torch.stack([v for v, _, _ in items], 1), [], torch.stack([m for _, _, m in items], 1)


# --------------------------------------------------------------------------------------- set-up
def make_images(root: Path, count: int) -> dict:
    """ImageNet-like JPEGs: 500 x 375 px, textured, quality 90, in 4 class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = []
    for i in range(count):
        coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)).astype(np.int16)
        texture = rng.normal(0, 12, (375, 500, 3))
        pixels = np.clip(smooth + texture, 0, 255).astype(np.uint8)
        path = root / f"n{i % 4:08d}" / f"img_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        sizes.append(path.stat().st_size)
    return {"images": count, "width": 500, "height": 375, "mean_jpeg_bytes": sum(sizes) / count}


def pretrain_config(path: Path, decode: str = "worker"):
    from mmc import config

    pretrain = {"backbone": {"patch_size": 16, "img_size": 224}, "data": {"path": str(path), "decode": decode}}
    cfg = config.freeze(config.resolve({"run_name": "bench", "tracking": {"enabled": False}, "pretrain": pretrain}))
    return cfg.experiments["mmc"]


def dataset_for(pipeline: str, source_dir: Path):
    from mmc.pretrain.data import PretrainDataset, open_source

    if pipeline == "former":
        pcfg = pretrain_config(source_dir)
        return FormerDataset(pcfg, open_source(str(source_dir)), seed=0)
    return PretrainDataset(pretrain_config(source_dir, "device" if pipeline == "current-device-decode" else "worker"), 0)


def cpu_ms_per_image(dataset, count: int) -> float:
    """CPU time of this process per item, one thread."""
    start = time.process_time()
    for i in range(count):
        dataset[(0, i)]
    return (time.process_time() - start) / count * 1e3


def loader_images_per_s(dataset, count: int, workers: int) -> float:
    """Wall-clock images/s through a DataLoader (workers started before the clock)."""
    import torch
    from torch.utils.data import DataLoader

    from mmc.pretrain.data import RunBatchSampler, seed_worker

    sampler = RunBatchSampler(len(dataset), BATCH, 0, 0, 1, 0, count // BATCH)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=dataset.collate,
                        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0), prefetch_factor=4,
                        persistent_workers=True)  # fmt: skip
    iterator = iter(loader)
    first = next(iterator)  # workers are up, first batch done
    start = time.perf_counter()
    rest = sum(1 for _ in iterator)
    del first
    return rest * BATCH / (time.perf_counter() - start)


def device_share(dataset) -> tuple[float, float]:
    """(bytes per image sent to the device, CPU ms per image of the device part on this CPU)."""
    import torch

    from mmc.pretrain.data import HostBatch, RunBatchSampler, to_device

    keys = next(iter(RunBatchSampler(len(dataset), BATCH, 0, 0, 1, 0, 1)))
    batch = dataset.collate([dataset[k] for k in keys])
    tensors = [t for t in batch if isinstance(t, torch.Tensor)]
    sent = sum(t.nbytes for t in tensors) + sum(t.nbytes for part in batch if isinstance(part, list) for t in part)
    if not isinstance(batch, HostBatch):
        return sent / BATCH, 0.0
    to_device(batch, torch.device("cpu"))
    start = time.process_time()
    to_device(batch, torch.device("cpu"))
    return sent / BATCH, (time.process_time() - start) / BATCH * 1e3


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192, help="generated images (a multiple of 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every case")
    parser.add_argument("--quick", action="store_true", help="64 images, 1 round, no DataLoader runs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.rounds = 64, 1
    import torch

    from mmc.data import shards

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f} (other processes inflate the wall-clock numbers, not the CPU times)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / "files"
        data = make_images(files, args.images)
        items, source, classes = shards.folder_items(files)
        shards.write_shards(items, Path(tmp) / "shards", source, 64 * 10**6, classes, log=lambda m: None)
        print(f"{data['images']} JPEGs of {data['width']} x {data['height']} px, mean {data['mean_jpeg_bytes'] / 1e3:.0f} kB")
        sources = {"files": files, "shards": Path(tmp) / "shards"}
        pipelines = ("former", "current", "current-device-decode")
        cases = [(p, s) for s in sources for p in pipelines]
        datasets = {case: dataset_for(case[0], sources[case[1]]) for case in cases}
        cpu = {case: [] for case in cases}
        wall = {(case, w): [] for case in cases for w in (1, 2)}
        for round_ in range(args.rounds):
            for case in cases:
                cpu[case].append(cpu_ms_per_image(datasets[case], args.images))
                if not args.quick:
                    for workers in (1, 2):
                        wall[(case, workers)].append(loader_images_per_s(datasets[case], args.images, workers))
            print(f"round {round_ + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
        results = []
        header = (f"{'pipeline':22s} {'source':6s} {'CPU ms/img':>22s} {'img/s/core':>10s} {'DL 1 worker img/s':>20s} "
                  f"{'DL 2 workers img/s':>20s} {'bytes/img':>9s} {'dev ms/img':>10s} {'cores/GPU':>9s}")  # fmt: skip
        print(header)
        for case in cases:
            ms = summary(cpu[case])
            sent, device_ms = device_share(datasets[case])
            per_core = 1e3 / ms["median"]
            row = {"pipeline": case[0], "source": case[1], "cpu_ms_per_image": ms, "images_per_s_per_core": per_core,
                   "bytes_per_image_to_device": sent, "device_part_cpu_ms_per_image": device_ms,
                   "cores_per_gpu_at_4000": TARGET_IMAGES_PER_S / per_core}  # fmt: skip
            for workers in (1, 2):
                if wall[(case, workers)]:
                    row[f"loader_{workers}_workers_images_per_s"] = summary(wall[(case, workers)])
            results.append(row)

            def fmt(s):
                return f"{s['min']:6.1f}/{s['median']:6.1f}/{s['max']:6.1f}" if s else "-"

            print(f"{case[0]:22s} {case[1]:6s} {fmt(ms):>22s} {per_core:10.1f} "
                  f"{fmt(row.get('loader_1_workers_images_per_s')):>20s} {fmt(row.get('loader_2_workers_images_per_s')):>20s} "
                  f"{sent:9.0f} {device_ms:10.2f} {row['cores_per_gpu_at_4000']:9.1f}")  # fmt: skip
    by = {(r["pipeline"], r["source"]): r for r in results}
    ratios = {}
    for source_name in sources:
        former = by[("former", source_name)]
        for pipeline in pipelines[1:]:
            current = by[(pipeline, source_name)]
            ratios[f"{pipeline}/former {source_name}: per-core rate"] = (
                current["images_per_s_per_core"] / former["images_per_s_per_core"])
            for workers in (1, 2):
                key = f"loader_{workers}_workers_images_per_s"
                if key in current:
                    ratios[f"{pipeline}/former {source_name}: DataLoader {workers} worker(s)"] = (
                        current[key]["median"] / former[key]["median"])
    ratios["former: bytes per image to the device / current"] = (
        by[("former", "files")]["bytes_per_image_to_device"] / by[("current", "files")]["bytes_per_image_to_device"])
    for name, value in ratios.items():
        print(f"{name:60s} {value:6.2f}x")
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    result = {"data": data, "batch": BATCH, "rounds": args.rounds, "load_average": {"start": load_start, "end": load_end},
              "cases": results, "ratios": ratios}  # fmt: skip
    print(json.dumps(result))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_loader.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
