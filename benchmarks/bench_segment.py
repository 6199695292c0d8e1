"""How much does the zero-shot evaluation cost beyond the backbone forward pass?

Part 1, end to end (the headline): ``mmc segment`` (config, model loaded from a checkpoint file in
timm's layout holding random ViT-S/16 weights, tracking record, VOC files read and decoded, features,
feature cache, protocol, parquet/CSV/JSON outputs) on ``--images`` VOC-sized scenes (500 x 375 JPEG
+ label PNGs written here), against the pure backbone forward (``patch_features``) on the same
images, preprocessed beforehand, in batches of ``evaluation.batch_size``. Cases, interleaved (the
order rotates each repeat): ``forward``; ``segment, cache on`` (empty cache: every entry is written)
and ``segment, cache off``, the command run in this process after one untimed warm-up run (imports
done); ``process, cache on``, the command as the workflow runs it (``python -m mmc segment``:
interpreter start and imports included). Each case: min / median / max seconds over ``--repeats``;
ratios of medians (and of minima) to ``forward``. Then, measured once each (indicative): the
interpreter start and imports of the command, and per image outside the forward: reading and
decoding, preprocessing, the protocol, writing its cache entry (synchronously), reading it back;
and the cache entry's size.

Part 2 (``--protocol``): on a randomly initialised ViT-S/16 at the evaluation resolution
  (a) the backbone forward (``patch_features``), seconds per image;
  (b) the full per-image evaluation of ``mmc segment`` (preprocessing, one forward per image, every
      prompt, every threshold, the exact oracle), seconds per image;
  (c) a naive implementation that recomputes the features for every prompt and builds one
      full-resolution mask per threshold (and per candidate threshold for the oracle);
the ratios (b)/(a) and (c)/(b) against the number of objects per image, the process's peak memory,
and ViT-S/16 throughput at 480 px in float32 and bfloat16. (b) and (c) are checked to give the same
IoUs. "of which prompts" is the time spent in the per-object work of (b) (all prompts, thresholds
and the oracle), i.e. (b) without preprocessing and the forward pass.

Run:  PYTHONPATH=. python benchmarks/bench_segment.py  [--threads N] [--images N] [--repeats N] [--protocol]
The script uses only interfaces that ``main`` had before the feature cache changed, so the same
script measures an older checkout (``PYTHONPATH=/path/to/old/checkout``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmc.cpu_precision import cpu_runs_natively
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


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# ----------------------------------------------------------------------------- part 1: end to end
def _palette_png(labels: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([(i * 37) % 256 if c == 0 else (i * 91) % 256 if c == 1 else (i * 53) % 256
                      for i in range(256) for c in range(3)])  # fmt: skip
    image.save(path)


def voc_scene(seed: int, n_objects: int, height: int = 375, width: int = 500):
    """A VOC-sized photo-like image (smooth background, textured rectangles) and its label maps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    image = image + rng.integers(-12, 13, (height, width, 3))
    instances = np.zeros((height, width), np.uint8)
    classes = np.zeros((height, width), np.uint8)
    for k in range(1, n_objects + 1):
        h, w = rng.integers(40, 200), rng.integers(40, 260)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        band = (slice(max(y - 2, 0), y + h + 2), slice(max(x - 2, 0), x + w + 2))
        instances[band] = classes[band] = 255  # void band (overlapping objects lose pixels to it)
        instances[y : y + h, x : x + w] = k
        classes[y : y + h, x : x + w] = 1 + k % 20
        image[y : y + h, x : x + w] = rng.integers(0, 255, 3) + rng.integers(-30, 31, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), instances, classes


def write_voc(root: Path, n_images: int) -> Path:
    """``n_images`` scenes (1 to 6 objects) in the VOC2012 layout under ``root``."""
    from PIL import Image

    for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n_images):
        image_id = f"bench_{i:05d}"
        image, instances, classes = voc_scene(i, 1 + i % 6)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        _palette_png(instances, root / "SegmentationObject" / f"{image_id}.png")
        _palette_png(classes, root / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


def write_config(path: Path, work: Path, voc: Path, resolution: int, batch_size: int, workers: int, cache: bool):
    """A config evaluating ``work/vits.pth`` (a ViT-S/16 in timm's layout, as a downloaded file)."""
    import yaml

    weights = work / "vits.pth"
    if not weights.exists():
        torch.save(random_backbone(VIT_S16, 0).state_dict(), weights)
    cfg = {
        "run_name": "bench",
        "results_dir": str(work / "results"),
        "state_dir": str(work / "state"),
        "device": "cpu",
        "models": {"vits": {"source": "file", "path": str(weights), "format": "timm", "backbone": VIT_S16}},
        "datasets": {"voc": {"format": "voc", "root": str(voc), "split": "val"}},
        "evaluation": {
            "resolution": resolution,
            "batch_size": batch_size,
            "num_workers": workers,
            "feature_cache": cache,  # a boolean: valid before and after `auto` was added
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_costs(cfg_path: Path, work: Path, n_images: int) -> dict[str, float]:
    """Seconds per image of each step outside the forward, measured once each, in one thread."""
    from mmc import config
    from mmc.data.readers import open_reader
    from mmc.evaluation import features as feats
    from mmc.evaluation.protocol import thresholds_of

    cfg = config.load(cfg_path)
    reader = open_reader(cfg.datasets["voc"])
    t_read, samples = timed(lambda: [reader[i] for i in range(len(reader))])
    size = (cfg.evaluation.resolution, cfg.evaluation.resolution)
    t_pre, inputs = timed(lambda: [feats.preprocess(s.image, size) for s in samples])
    model = random_backbone(VIT_S16, 0)
    out = [patch_features(model, x[None])[0] for x in inputs[:1]] * len(samples)  # values do not matter
    t_digest, digests = timed(lambda: [feats.image_digest(s.image) for s in samples])
    evaluation = cfg.evaluation
    thresholds = thresholds_of(evaluation)
    t_protocol, _ = timed(lambda: [evaluate_image(f.numpy(), s, thresholds) for f, s in zip(out, samples, strict=True)])
    root = work / "stage-cache"
    cache = feats.FeatureCache(root, "0" * 64)
    # the synchronous write of one entry: FeatureCache.write where it exists, else the old put
    write = getattr(cache, "write", cache.put)
    stored = [feats.stored_features(f) for f in out] if hasattr(feats, "stored_features") else out
    t_write, _ = timed(lambda: [write(s.image_id, d, f) for s, d, f in zip(samples, digests, stored, strict=True)])
    if hasattr(cache, "close"):
        cache.close()
    t_get, got = timed(lambda: [cache.get(s.image_id, d) for s, d in zip(samples, digests, strict=True)])
    assert all(g is not None for g in got)
    entry_bytes = np.mean([p.stat().st_size for p in cache.dir.iterdir()])
    shutil.rmtree(root)
    n = len(samples)
    return {
        "read + decode (JPEG, 2 PNGs)": t_read / n,
        "preprocess (resize, normalise)": t_pre / n,
        "pixel hash (cache check)": t_digest / n,
        "protocol (prompts, IoU curves, oracle)": t_protocol / n,
        "cache entry write (synchronous)": t_write / n,
        "cache entry read": t_get / n,
        "_entry_bytes": float(entry_bytes),
    }


def end_to_end(args) -> None:
    from mmc import config
    from mmc.cli import main as mmc_main
    from mmc.data.readers import open_reader

    work = Path(tempfile.mkdtemp(prefix="bench_segment_"))
    try:
        voc = write_voc(work / "VOC2012", args.images)
        configs = {
            cache: write_config(
                work / f"config-{cache}.yaml", work, voc, args.resolution, args.batch_size, args.workers, cache
            )
            for cache in (True, False)
        }
        cfg = config.load(configs[True])
        size = (args.resolution, args.resolution)
        samples = list(open_reader(cfg.datasets["voc"]))
        inputs = torch.stack([preprocess(s.image, size) for s in samples])
        model = random_backbone(VIT_S16, 0).eval()
        n_objects = sum(len(s.objects) for s in samples)
        del samples

        def forward():
            for start in range(0, len(inputs), args.batch_size):
                patch_features(model, inputs[start : start + args.batch_size])

        def measured(fn):
            """(wall seconds, CPU seconds of this process and its children) of one call."""
            usage = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
            after = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
            cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(usage, after, strict=True))
            return wall, cpu

        def segment(cache: bool):
            def run():
                shutil.rmtree(work / "state" / "features", ignore_errors=True)  # untimed
                code = mmc_main(["segment", "--config", str(configs[cache]), "--model", "vits",
                                 "--dataset", "voc", "--out", str(work / f"out-{cache}")])  # fmt: skip
                assert code == 0

            return lambda: measured(run)

        def process(cache: bool, code_dir: str | None = None):
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
            if code_dir is not None:
                env["PYTHONPATH"] = code_dir

            def run():
                subprocess.run([sys.executable, "-m", "mmc", "segment", "--config", str(configs[cache]), "--model",
                                "vits", "--dataset", "voc", "--out", str(work / "out-process")],
                               check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip

            def clean_then_run():
                shutil.rmtree(work / "state" / "features", ignore_errors=True)
                return measured(run)

            return clean_then_run

        cases = {
            "forward": lambda: measured(forward),
            "segment, cache on": segment(True),
            "process, cache on": process(True),
            "process, cache off": process(False),
        }
        if args.baseline:
            cases["baseline process, cache on"] = process(True, args.baseline)
            cases["baseline process, cache off"] = process(False, args.baseline)
        print(f"\n== part 1: mmc segment end to end vs the backbone forward, {args.images} images "
              f"({n_objects} objects), batch {args.batch_size}, {args.workers} reading threads")  # fmt: skip
        if args.baseline:
            print(f"baseline: the code under {args.baseline}")
        print(f"load average at start (1, 5, 15 min): {load_average()}")
        forward_once = timed(forward)[0]  # warm-up, and the first segment run creates the tracking store
        segment(True)()
        print(f"warm-up done (forward {forward_once:.1f} s); {args.repeats} interleaved repeats")
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(cases[name]())
        wall = {name: [w for w, _ in values] for name, values in runs.items()}
        cpu = {name: [c for _, c in values] for name, values in runs.items()}
        base_median, base_min = float(np.median(wall["forward"])), min(wall["forward"])
        base_cpu = float(np.median(cpu["forward"]))
        print("\nwall-clock seconds, and CPU seconds (all threads and child processes):")
        print(f"{'case':28s} |   min s | median s |   max s | median / forward | min / forward | median CPU s"
              " | CPU / forward CPU")  # fmt: skip
        for name in cases:
            median = float(np.median(wall[name]))
            cpu_median = float(np.median(cpu[name]))
            print(f"{name:28s} | {min(wall[name]):7.2f} | {median:8.2f} | {max(wall[name]):7.2f} |"
                  f" {median / base_median:16.3f} | {min(wall[name]) / base_min:13.3f} | {cpu_median:12.2f} |"
                  f" {cpu_median / base_cpu:17.3f}")  # fmt: skip
        print(f"load average at the end of part 1: {load_average()}")

        imports = "import torch, timm.models.vision_transformer, pandas, pyarrow.parquet, mmc.evaluation.segment"
        t_start = min(timed(lambda: subprocess.run([sys.executable, "-c", imports], check=True))[0] for _ in range(3))
        print(f"interpreter start + imports of mmc segment (best of 3): {t_start:.2f} s")
        costs = stage_costs(configs[True], work, args.images)
        entry_bytes = costs.pop("_entry_bytes")
        print(f"\nper image outside the forward (measured once each, 1 pass, wall-clock; forward median "
              f"{base_median / args.images * 1000:.1f} ms/img):")  # fmt: skip
        for name, value in costs.items():
            print(f"  {name:40s} {value * 1000:8.2f} ms")
        print(f"  cache entry size: {entry_bytes / 1e6:.3f} MB per image")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- part 2: protocol
def protocol_costs(args, model) -> None:
    res = args.resolution
    print(f"\n== part 2: the protocol's cost, ViT-S/16, random init, {res} px")
    patch_features(model, torch.zeros(1, 3, res, res))  # warm-up
    print(f"peak RSS after model load + warm-up: {peak_rss_mib():.0f} MiB")

    print(
        "\nobjects/img | (a) forward s/img | (b) full eval s/img | of which prompts ms/img | (c) naive s/img | (b)/(a) | (c)/(b) | objects kept"
    )
    for n_objects in args.objects:
        samples = [scene(1000 * n_objects + i, n_objects) for i in range(args.protocol_images)]
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
    seconds: dict[str, list[float]] = {"float32": []}
    if cpu_runs_natively("bfloat16"):
        seconds["bfloat16"] = []
    else:
        print("  bfloat16: skipped, this CPU has no native bfloat16 matmuls (PyTorch's reference kernel)")
    for precision in seconds:
        patch_features(model, x[:1], precision=precision)  # warm-up
    for _ in range(args.repeats):
        for precision in seconds:
            seconds[precision].append(timed(lambda p=precision: patch_features(model, x, precision=p))[0])
    for precision, runs in seconds.items():
        best, median = len(x) / min(runs), len(x) / float(np.median(runs))
        print(f"  {precision:8s}: {best:.2f} images/s (median {median:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=50, help="part 1: images of the end-to-end run")
    parser.add_argument("--batch-size", type=int, default=16, help="part 1: evaluation.batch_size")
    parser.add_argument("--workers", type=int, default=2, help="part 1: evaluation.num_workers")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (interleaved)")
    parser.add_argument("--resolution", type=int, default=480)
    parser.add_argument("--protocol", action="store_true", help="also run part 2")
    parser.add_argument(
        "--baseline", help="part 1: also run `mmc segment` (as a process) from the code in this directory"
    )
    parser.add_argument("--protocol-images", type=int, default=2, help="part 2: images per objects-per-image setting")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 8], help="part 2: objects per image")
    parser.add_argument("--throughput-batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import mmc

    print(f"ViT-S/16, random init, {args.resolution} px, {args.threads} threads, torch {torch.__version__}, "
          f"mmc from {Path(mmc.__file__).parent}")  # fmt: skip
    end_to_end(args)
    if args.protocol:
        protocol_costs(args, random_backbone(VIT_S16, 0))
    print(f"\npeak RSS at the end: {peak_rss_mib():.0f} MiB")
    print(f"load average at the end (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
