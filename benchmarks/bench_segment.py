"""How much does the zero-shot evaluation cost beyond the backbone forward pass?

Measured in one run, on a randomly initialised ViT-S/16 at the evaluation resolution:
  (a) the backbone forward (``patch_features``), seconds per image;
  (b) the full per-image evaluation of ``mmc segment`` (preprocessing, one forward per image, every
      prompt, every threshold, the exact oracle), seconds per image;
  (c) a naive implementation that recomputes the features for every prompt and builds one
      full-resolution mask per threshold (and per candidate threshold for the oracle);
the ratios (b)/(a) and (c)/(b) against the number of objects per image, the process's peak memory,
and ViT-S/16 throughput at 480 px in float32 and bfloat16. (b) and (c) are checked to give the same
IoUs. "of which prompts" is the time spent in the per-object work of (b) (all prompts, thresholds
and the oracle), i.e. (b) without preprocessing and the forward pass. Run:  PYTHONPATH=. python benchmarks/bench_segment.py  [--threads N] [--images N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmc.data.readers import Sample, SegObject
from mmc.evaluation import metrics
from mmc.evaluation.features import iter_features, patch_features, preprocess
from mmc.evaluation.protocol import iou_column, predicted_mask
from mmc.evaluation.segment import evaluate_image
from mmc.models import random_backbone

VIT_S16 = {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0, "img_size": 224}
THRESHOLDS = [round(0.05 * i, 2) for i in range(20)]


def scene(seed: int, n_objects: int, height: int = 375, width: int = 500) -> Sample:
    """A VOC-sized image with ``n_objects`` rectangles, each with a 2 px void border."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    instances = np.zeros((height, width), np.int64)
    void = np.zeros((height, width), bool)
    for k in range(1, n_objects + 1):
        h, w = rng.integers(60, 160), rng.integers(60, 200)
        y, x = rng.integers(2, height - h - 2), rng.integers(2, width - w - 2)
        void[y - 2 : y + h + 2, x - 2 : x + w + 2] = True
        instances[y - 2 : y + h + 2, x - 2 : x + w + 2] = 0
        instances[y : y + h, x : x + w] = k
        void[y : y + h, x : x + w] = False
        image[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    objects = tuple(
        SegObject(k, k, instances == k) for k in range(1, n_objects + 1) if (instances == k).any()
    )
    return Sample(f"scene{seed}", image, objects, void)


def naive_image(model, sample: Sample, resolution: int) -> list[list[float]]:
    """Per prompt: recompute features, then one full-resolution mask per threshold."""
    h, w = sample.void.shape
    out = []
    for obj in sample.objects:
        feats = patch_features(model, preprocess(sample.image, (resolution, resolution))[None])[0].numpy()
        grid = feats.shape[:2]
        if obj.mask.sum() * grid[0] * grid[1] / (h * w) < 3:
            continue
        y, x = metrics.prompt_point(obj.mask)
        r, c = metrics.patch_of_pixel(y, x, (h, w), grid)
        sim = feats @ feats[r, c]
        ious = [metrics.iou(predicted_mask(sim, (h, w), t, "nearest"), obj.mask, sample.void) for t in THRESHOLDS]
        oracle = max(
            metrics.iou(predicted_mask(sim, (h, w), t, "nearest"), obj.mask, sample.void) for t in np.unique(sim)
        )
        out.append([*ious, oracle])
    return out


def full_evaluation(model, samples: list[Sample], resolution: int) -> tuple[list[dict], float]:
    """What `mmc segment` does per image; also returns the seconds spent in the per-object work."""
    rows, spent = [], 0.0
    for sample, feats in iter_features(model, samples, resolution=resolution, batch_size=len(samples)):
        start = time.perf_counter()
        rows.extend(evaluate_image(feats.numpy(), sample, THRESHOLDS)[0])
        spent += time.perf_counter() - start
    return rows, spent


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=2, help="images per objects-per-image setting")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--resolution", type=int, default=480)
    parser.add_argument(
        "--repeats", type=int, default=5, help="(a), (b) and throughput: the fastest of this many runs"
    )
    parser.add_argument("--throughput-batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_backbone(VIT_S16, 0)
    res = args.resolution
    print(f"ViT-S/16, random init, {res} px, {args.threads} threads, torch {torch.__version__}")
    print("load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    patch_features(model, torch.zeros(1, 3, res, res))  # warm-up
    print(f"peak RSS after model load + warm-up: {peak_rss_mib():.0f} MiB")

    print(
        "\nobjects/img | (a) forward s/img | (b) full eval s/img | of which prompts ms/img | (c) naive s/img | (b)/(a) | (c)/(b) | objects kept"
    )
    for n_objects in args.objects:
        samples = [scene(1000 * n_objects + i, n_objects) for i in range(args.images)]
        batch = torch.stack([preprocess(s.image, (res, res)) for s in samples])
        # (a) and (b) interleaved, best of `--repeats` each (other processes share the cores); (c) once.
        runs_a, runs_b = [], []
        for _ in range(args.repeats):
            runs_a.append(timed(lambda batch=batch: patch_features(model, batch))[0])
            runs_b.append(timed(lambda samples=samples: full_evaluation(model, samples, res)))
        t_a = min(runs_a)
        t_b, (rows, _) = min(runs_b, key=lambda run: run[0])
        protocol_seconds = [spent for _, (_, spent) in runs_b]
        t_c, naive = timed(lambda samples=samples: [r for s in samples for r in naive_image(model, s, res)])
        fast = np.array([[r[iou_column(t)] for t in THRESHOLDS] + [r["oracle_iou"]] for r in rows])
        np.testing.assert_allclose(fast, np.array(naive), atol=1e-9)  # same numbers, two implementations
        a, b, c = (t / len(samples) for t in (t_a, t_b, t_c))
        p = min(protocol_seconds) / len(samples) * 1000
        print(
            f"{n_objects:11d} | {a:17.3f} | {b:19.3f} | {p:19.1f} | {c:15.3f} | {b / a:7.3f} | {c / b:7.2f} | {len(rows)}"
        )
    print(f"peak RSS after (a)-(c): {peak_rss_mib():.0f} MiB")

    print(
        f"\nthroughput, batch {args.throughput_batch} at {res} px (best and median of {args.repeats}, interleaved):"
    )
    x = torch.randn(args.throughput_batch, 3, res, res)
    seconds: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for precision in seconds:
        patch_features(model, x[:1], precision=precision)  # warm-up
    for _ in range(args.repeats):
        for precision in seconds:
            seconds[precision].append(timed(lambda p=precision: patch_features(model, x, precision=p))[0])
    for precision, runs in seconds.items():
        best, median = len(x) / min(runs), len(x) / float(np.median(runs))
        print(f"  {precision:8s}: {best:.2f} images/s (median {median:.2f})")
    print(f"peak RSS at the end: {peak_rss_mib():.0f} MiB")
    print("load average at the end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
