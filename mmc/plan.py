"""``mmc plan``: what a config's pretraining costs before any GPU time is spent (docs/cluster.md).

Per experiment: FLOPs per image (the analytic counter of ``mmc.pretrain.flops``), total FLOPs,
GPU-hours and wall time at an assumed model-FLOPs utilisation (MFU) of a named GPU's peak, an
estimate of the memory one GPU needs, the micro-batch and gradient accumulation that memory
implies, and the CPU cores the data loader needs to keep up. Every number is an ESTIMATE from
formulas stated below; measured throughput comes from ``benchmarks/`` and the training logs.

Memory per GPU, bytes (P student parameters, Q teacher parameters, b images per GPU and step):

    4P weights + 4P gradients + 8P AdamW moments (+ 4P DDP gradient buckets on > 1 GPU)
    + 4Q teacher + 2(P + Q) bf16/fp16 weight copies held by autocast
    + b x (activations kept for backward + the heads' outputs alive until the step ends)

Activations of one image, s bytes per element in the autocast precision (2 for bf16/fp16, 4 for
fp32), per global view (2 views): each of the L blocks keeps T x D x (8 + s(7 + 2r)) bytes (T tokens,
width D, MLP ratio r): the fp32 inputs of its two LayerNorms (2 x 4), and in precision s the inputs
of qkv, proj, fc1 (3), q, k, v and the attention output (4, fused attention keeps no T x T matrix,
only 4 bytes x heads x T of softmax statistics), the GELU input and the fc2 input (2r). This is
Korthikanti et al.'s count ("Reducing Activation Recomputation in Large Transformer Models",
arXiv:2205.05198, Sec. 4.1) without dropout masks and without the attention matrix. The heads add
their inputs (DINO head: the 3-layer MLP on every token), the fp32 log-probabilities of the scored
tokens and their teacher targets (masked fraction: the mean of ``mask.ratio``). tests/test_plan.py checks the formula against the bytes
torch actually saves for backward in an MMC forward on the CPU. Not counted: the CUDA context,
allocator fragmentation, the DataLoader's pinned buffers (``optim.memory_fraction`` leaves room).

``micro_batch_for`` turns the estimate into the split of a process's share of the global batch; it is
the one function behind this plan's micro-batch column and ``optim.micro_batch_size: auto`` in
``mmc pretrain``, so the plan shows what the run will do.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

# Peak dense tensor throughput per GPU, TFLOP/s (no structured sparsity), and memory in GB, from the
# vendors' datasheets: NVIDIA H100 Tensor Core GPU datasheet (SXM5 and PCIe), H200 Tensor Core GPU
# datasheet (SXM), A100 Tensor Core GPU datasheet (SXM, 40 and 80 GB), L40S datasheet, A40
# datasheet, V100 Tensor Core GPU datasheet (SXM2). The datasheets print the sparse figure first:
# the dense one is half of it. fp32 is the non-tensor FP32 figure: `float32` training runs in fp32
# (PyTorch leaves TF32 off for matrix products unless asked). V100 has no bf16 tensor cores.
GPUS: dict[str, dict[str, float | None]] = {
    "h100": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9, "memory_gb": 80},
    "h100-pcie": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.2, "memory_gb": 80},
    "h200": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9, "memory_gb": 141},
    "a100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "memory_gb": 80},
    "a100-40gb": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "memory_gb": 40},
    "l40s": {"bfloat16": 362.05, "float16": 362.05, "float32": 91.6, "memory_gb": 48},
    "a40": {"bfloat16": 149.7, "float16": 149.7, "float32": 37.4, "memory_gb": 48},
    "v100": {"bfloat16": None, "float16": 125.0, "float32": 15.7, "memory_gb": 32},
}
DEFAULT_GPU, DEFAULT_GPUS, DEFAULT_MFU = "a100", 4, 0.4  # = workflow/profiles/slurm's pretrain node
GIB = 1024**3  # every memory_gb here counts GiB (2^30 bytes)


# ----------------------------------------------------------------------------- pure arithmetic
def vit_params(patch: int, dim: int, depth: int, mlp_ratio: float, img_size: int) -> int:
    """Parameters of timm's VisionTransformer(num_classes=0): patch embedding, [CLS], positions, blocks, norm."""
    hidden = int(dim * mlp_ratio)
    tokens = (img_size // patch) ** 2 + 1
    block = 4 * dim * dim + 2 * dim * hidden + 9 * dim + hidden  # qkv, proj, fc1, fc2 (+biases), 2 LayerNorms
    return 3 * patch * patch * dim + dim + dim + tokens * dim + depth * block + 2 * dim


def _mlp_params(layers: int, d_in: int, hidden: int, d_out: int, norm: str) -> int:
    """MoCo v3's MLP of mmc.pretrain.model.mlp (Linear-Norm-ReLU, last norm without affine)."""
    total = 0
    for i in range(layers):
        a, b = (d_in if i == 0 else hidden), (d_out if i == layers - 1 else hidden)
        total += a * b + (b if norm == "none" else 0)
        if i < layers - 1 and norm != "none":
            total += 2 * b
    return total


def model_params(pcfg) -> tuple[int, int]:
    """(student, teacher) parameter counts of mmc.pretrain.model.build_pair (teacher 0 for MIM only)."""
    b, w = pcfg.backbone, pcfg.loss
    backbone = vit_params(b.patch_size, b.embed_dim, b.depth, b.mlp_ratio, b.img_size)
    student = backbone + b.embed_dim  # mask token
    teacher = backbone
    if w.w_mim > 0:
        student += (b.embed_dim + 1) * 3 * b.patch_size**2
    if w.w_distill > 0:
        d = pcfg.distill
        head = (b.embed_dim + 1) * d.hidden_dim + (d.hidden_dim + 1) * d.hidden_dim
        head += (d.hidden_dim + 1) * d.bottleneck_dim + d.bottleneck_dim * d.out_dim
        student += head
        teacher += head
    if w.w_contrast > 0:
        c = pcfg.contrast
        projector = _mlp_params(3, b.embed_dim, c.hidden_dim, c.dim, c.head_norm)
        student += projector + _mlp_params(2, c.dim, c.hidden_dim, c.dim, c.head_norm)
        teacher += projector
    if w.w_distill == 0 and w.w_contrast == 0:
        teacher = 0
    return student, teacher


def precision_bytes(precision: str) -> int:
    return 4 if precision == "float32" else 2


def activation_bytes(pcfg, precision: str, masked_fraction: float | None = None) -> dict[str, float]:
    """Bytes one image adds to a training step: ``saved`` for backward, ``outputs`` alive until its end.

    ``masked_fraction``: of a view's patches (default: the mean of ``mask.ratio``); the heads run on
    the masked patches.
    """
    b, w, s = pcfg.backbone, pcfg.loss, precision_bytes(precision)
    r = b.mlp_ratio
    grid = pcfg.data.global_crop_size // b.patch_size
    patches = grid * grid
    tokens = patches + 1
    views = 2
    masked = pcfg.mask.ratio[0] / 2 + pcfg.mask.ratio[1] / 2 if masked_fraction is None else masked_fraction

    def backbone(t: int, side: int) -> float:
        block = t * b.embed_dim * (8 + s * (7 + 2 * r)) + 4 * b.num_heads * t
        return b.depth * block + 4 * t * b.embed_dim + s * 3 * side * side  # + final norm, patch-embed input

    saved = views * backbone(tokens, pcfg.data.global_crop_size)
    outputs = 0.0
    if w.w_mim > 0:  # the reconstruction head runs on the masked patches only
        pixels = 3 * b.patch_size**2
        saved += views * masked * patches * (s * b.embed_dim + 4 * pixels)  # head input, L1 on masked
        outputs += views * s * masked * patches * pixels
    if w.w_distill > 0:
        d = pcfg.distill
        head_in = s * (b.embed_dim + 4 * d.hidden_dim) + (4 + s) * d.bottleneck_dim  # MLP, normalised bottleneck
        # the student's head runs on what a loss scores: [CLS] and the masked patches (patch mode), or
        # [CLS] and every patch (cls_to_patch); each scored token keeps its log-probabilities (autocast
        # dtype) and meets a float32 teacher target: [CLS] and masked patches, or the teacher's [CLS]
        scored, targets = (1 + masked * patches, 1 + masked * patches) if d.mode == "patch" else (1 + patches, 1)
        saved += views * scored * head_in
        saved += views * (scored * s + targets * 4) * d.out_dim
        outputs += views * (scored + targets) * d.out_dim * s  # student and teacher logits
        local = pcfg.data.local_crops
        if local:
            lside = pcfg.data.local_crop_size
            ltokens = (lside // b.patch_size) ** 2 + 1
            saved += local * (backbone(ltokens, lside) + head_in + d.out_dim * 4 * 2)
    if w.w_contrast > 0:
        c = pcfg.contrast
        saved += views * s * (b.embed_dim + 4 * c.hidden_dim + 2 * c.dim)  # projector and predictor inputs
    return {"saved": saved, "outputs": outputs}


def static_bytes(student: int, teacher: int, precision: str, gpus: int) -> float:
    """Weights, gradients, AdamW moments, DDP buckets, teacher, autocast's low-precision weight copies."""
    total = 16 * student + 4 * teacher + (4 * student if gpus > 1 else 0)
    if precision != "float32":
        total += 2 * (student + teacher)
    return total


@dataclass(frozen=True)
class MicroBatch:
    """How one process splits its share of the global batch (``micro_batch_for``)."""

    per_process: int  # images per process and optimiser step
    micro_batch: int | None  # None: not even one image fits the budget
    accumulation: int | None
    static_gb: float  # weights, gradients, optimiser state, teacher, autocast copies
    per_image_gb: float  # activations and head outputs of one image
    memory_gb: float | None  # what was planned for; None: no limit
    budget_gb: float | None  # memory_fraction x memory_gb; None: no limit

    @property
    def memory_gb_at_micro_batch(self) -> float | None:
        return None if self.micro_batch is None else self.static_gb + self.micro_batch * self.per_image_gb


def largest_fitting_divisor(n: int, static: float, per_image: float, budget: float | None) -> int | None:
    """The largest divisor m of ``n`` with static + m x per_image <= budget (``n`` when budget is None);
    None when not even m = 1 fits."""
    if budget is None:
        return n
    return next((m for m in range(n, 0, -1) if n % m == 0 and static + m * per_image <= budget), None)


def micro_batch_for(pcfg, world: int, memory_gb: float | None) -> MicroBatch:
    """The micro-batch ``optim.micro_batch_size: auto`` runs with on ``world`` processes, each with
    ``memory_gb`` GiB (None: no limit), of which ``optim.memory_fraction`` may be used.

    The one function behind both ``mmc plan`` and ``mmc pretrain`` (pure: it reads only the config).
    ``optim.batch_size`` must be divisible by ``world`` (the callers check it).
    """
    student, teacher = model_params(pcfg)
    static = static_bytes(student, teacher, pcfg.precision, world)
    act = activation_bytes(pcfg, pcfg.precision)
    per_image = act["saved"] + act["outputs"]
    per_process = pcfg.optim.batch_size // world
    budget = None if memory_gb is None else pcfg.optim.memory_fraction * memory_gb * GIB
    micro = largest_fitting_divisor(per_process, static, per_image, budget)
    return MicroBatch(
        per_process=per_process,
        micro_batch=micro,
        accumulation=per_process // micro if micro else None,
        static_gb=static / GIB,
        per_image_gb=per_image / GIB,
        memory_gb=memory_gb,
        budget_gb=None if budget is None else budget / GIB,
    )


def does_not_fit(split: MicroBatch, prefix: str, world: int, memory: str) -> str:
    """The one-line reason ``auto`` has no micro-batch; ``prefix`` names the optim keys
    (``experiments.E.optim.``), ``memory`` where ``split.memory_gb`` came from."""
    processes = "1 process" if world == 1 else f"{world} processes (DDP buckets included)"
    return (
        f"{prefix}micro_batch_size: auto: not even one image fits {prefix}memory_fraction "
        f"({split.budget_gb / split.memory_gb:g}) x {memory} = "
        f"{split.budget_gb:.3g} GiB per process on {processes}: the estimate is {split.static_gb:.3g} GiB for "
        f"weights, gradients and optimiser state + {split.per_image_gb:.3g} GiB per image (mmc plan); expected "
        f"more memory ({prefix}memory_gb), a larger {prefix}memory_fraction, or a smaller model or precision"
    )


@dataclass(frozen=True)
class Plan:
    experiment: str
    backbone: str
    params_m: float
    gflop_per_image: float
    steps: int
    total_flop: float
    gpu_hours: float
    wall_hours: float
    images_per_s_per_gpu: float
    batch_per_gpu: int
    memory_gb_at_batch: float
    micro_batch_setting: int | str | None  # optim.micro_batch_size as configured
    memory_gb_planned: float | None  # the config's optim.memory_gb (None: the GPU's memory)
    micro_batch: int | None  # what `auto` runs with; None: not even one image fits
    accumulation: int | None
    memory_gb_at_micro_batch: float | None
    loader_cores_per_gpu: int | None  # None: no loader rate given

    def row(self) -> dict:
        return asdict(self)


def plan_experiment(
    name: str, pcfg, *, images: int, gpus: int, peak_tflops: float, mfu: float, memory_gb: float,
    loader_rate: float | None = None,
) -> Plan:  # fmt: skip
    """The estimates for one experiment on ``gpus`` GPUs of ``peak_tflops`` at ``mfu``."""
    from mmc.pretrain.flops import step_flops

    batch = pcfg.optim.batch_size
    per_image = step_flops(pcfg, batch)["step"] / batch
    steps = (images // batch) * pcfg.optim.epochs  # the sampler drops the last incomplete batch
    total = per_image * steps * batch
    rate = peak_tflops * 1e12 * mfu  # achieved FLOP/s per GPU
    gpu_hours = total / rate / 3600
    student, _ = model_params(pcfg)
    # what `optim.micro_batch_size: auto` will run with; an explicit optim.memory_gb is what
    # `mmc pretrain` plans for, so it wins over the GPU's
    split = micro_batch_for(pcfg, gpus, memory_gb if pcfg.optim.memory_gb is None else pcfg.optim.memory_gb)
    images_per_s = rate / per_image
    b = pcfg.backbone
    return Plan(
        experiment=name,
        backbone=f"ViT {b.embed_dim}x{b.depth} /{b.patch_size}",
        params_m=student / 1e6,
        gflop_per_image=per_image / 1e9,
        steps=steps,
        total_flop=total,
        gpu_hours=gpu_hours,
        wall_hours=gpu_hours / gpus,
        images_per_s_per_gpu=images_per_s,
        batch_per_gpu=split.per_process,
        memory_gb_at_batch=split.static_gb + split.per_process * split.per_image_gb,
        micro_batch_setting=pcfg.optim.micro_batch_size,
        memory_gb_planned=pcfg.optim.memory_gb,
        micro_batch=split.micro_batch,
        accumulation=split.accumulation,
        memory_gb_at_micro_batch=split.memory_gb_at_micro_batch,
        loader_cores_per_gpu=math.ceil(images_per_s / loader_rate) if loader_rate else None,
    )


def plan_config(cfg, *, images: int, gpus: int, gpu: str, mfu: float, memory_gb: float | None = None,
                loader_rate: float | None = None) -> list[Plan]:  # fmt: skip
    from mmc.errors import MMCError

    if gpu not in GPUS:
        raise MMCError(f"--gpu {gpu!r}: unknown GPU (known: {', '.join(GPUS)})")
    if not 0 < mfu <= 1:
        raise MMCError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    if gpus < 1 or images < 1:
        raise MMCError(f"--gpus {gpus} and --images {images} must be >= 1")
    plans = []
    for name, pcfg in cfg.experiments.items():
        if pcfg.init_checkpoint:
            continue  # not trained
        peak = GPUS[gpu][pcfg.precision]
        if peak is None:
            raise MMCError(f"experiments.{name}.precision {pcfg.precision}: {gpu} has no {pcfg.precision} tensor cores")
        if pcfg.optim.batch_size % gpus:
            raise MMCError(f"experiments.{name}.optim.batch_size {pcfg.optim.batch_size} is not divisible by --gpus {gpus}")
        memory = memory_gb or GPUS[gpu]["memory_gb"]
        plan = plan_experiment(
            name, pcfg, images=images, gpus=gpus, peak_tflops=peak, mfu=mfu, memory_gb=memory, loader_rate=loader_rate
        )
        plans.append(plan)
    return plans


# ----------------------------------------------------------------------------- data-dependent inputs
def count_images(path: str, data_format: str = "auto") -> int:
    """Images of a pretraining source (an image folder or tar shards), read as pretraining reads it."""
    from mmc.pretrain.data import open_source

    return len(open_source(path, data_format))


def measure_loader_rate(pcfg, folder: str, seconds: float) -> float:
    """Images per CPU-second ONE core decodes and augments (views + masks), as a DataLoader worker does."""
    import dataclasses
    import time

    import torch

    from mmc.pretrain.data import PretrainDataset

    torch.set_num_threads(1)  # a DataLoader worker runs torch with one thread
    probe = dataclasses.replace(pcfg, data=dataclasses.replace(pcfg.data, path=str(folder)))
    dataset = PretrainDataset(probe, seed=0)
    dataset[(0, 0)]  # first-call costs (imports) out of the timing
    # CPU time of this one-threaded process, not wall time: other processes sharing the core do
    # not lower the rate of the core itself
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        dataset[(0, done % len(dataset))]
        done += 1
    return done / (time.process_time() - cpu)


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--gpus", type=int, default=DEFAULT_GPUS, help=f"GPUs training one experiment (default {DEFAULT_GPUS})")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help=f"GPU model (default {DEFAULT_GPU})")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"assumed model-FLOPs utilisation (default {DEFAULT_MFU})")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="memory of one GPU (default: the model's)")
    parser.add_argument("--images", type=int, default=None, help="training images per epoch (default: count the data.path folder)")
    parser.add_argument(
        "--loader-rate", type=float, default=None, metavar="IMG_PER_S",
        help="images/s one CPU core decodes and augments (default: unknown, unless --measure-loader)",
    )  # fmt: skip
    parser.add_argument(
        "--measure-loader", metavar="DIR", default=None,
        help="measure --loader-rate on the images in DIR with the first experiment's own augmentations (one core)",
    )  # fmt: skip
    parser.add_argument("--measure-seconds", type=float, default=10.0, help="how long --measure-loader runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mmc import config

    cfg = config.load(args.config)
    loader_rate = args.loader_rate
    if args.measure_loader:
        first = next(iter(cfg.experiments.values()))
        loader_rate = measure_loader_rate(first, args.measure_loader, args.measure_seconds)
    images = args.images
    if images is None:
        sources = {(pcfg.data.path, pcfg.data.format) for pcfg in cfg.experiments.values() if not pcfg.init_checkpoint}
        counts = {p: count_images(p, f) for p, f in sorted(sources)}  # MMCError naming the folder if missing
        if len(set(counts.values())) > 1:
            from mmc.errors import MMCError

            raise MMCError(f"experiments read folders of different sizes {counts}: pass --images")
        images = next(iter(counts.values()))
    plans = plan_config(
        cfg, images=images, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, memory_gb=args.gpu_memory_gb,
        loader_rate=loader_rate,
    )  # fmt: skip
    memory = args.gpu_memory_gb or GPUS[args.gpu]["memory_gb"]
    fractions = sorted({p.optim.memory_fraction for p in cfg.experiments.values() if not p.init_checkpoint})
    assumptions = {
        "config": args.config, "images_per_epoch": images, "gpus": args.gpus, "gpu": args.gpu,
        "mfu": args.mfu, "gpu_memory_gb": memory, "memory_fraction": fractions[0] if len(fractions) == 1 else None,
        "loader_images_per_s_per_core": loader_rate, "seeds": list(cfg.seeds),
    }  # fmt: skip
    if args.json:
        json.dump({"assumptions": assumptions, "experiments": [p.row() for p in plans]}, sys.stdout, indent=1)
        print()
    else:
        print(format_table(plans, assumptions))
    return 0


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _setting_note(p: Plan) -> str:
    """What the config sets, where it is not simply the split shown: ``auto`` runs exactly that split;
    an integer or null that differs from it runs as set (and may not fit)."""
    setting = p.micro_batch_setting
    if setting == "auto":
        return " (auto)" if p.memory_gb_planned is None else f" (auto, optim.memory_gb {p.memory_gb_planned:g})"
    configured = p.batch_per_gpu if setting is None else setting
    return "" if configured == p.micro_batch else f" (set: {json.dumps(setting)})"


def format_table(plans: list[Plan], a: dict) -> str:
    """A Markdown table, with the assumptions it rests on above it."""
    rate = a["loader_images_per_s_per_core"]
    fraction = "optim.memory_fraction" if a["memory_fraction"] is None else f"{a['memory_fraction']:.0%}"
    lines = [
        f"mmc plan: ESTIMATES for {a['config']}: {a['images_per_epoch']} images/epoch, {a['gpus']} x {a['gpu']} "
        f"at {a['mfu']:.0%} MFU, {a['gpu_memory_gb']:g} GB per GPU (micro-batch fits {fraction} of it), "
        + (f"loader {rate:.1f} images/s per core" if rate else "loader rate unknown (--loader-rate or --measure-loader)"),
        "",
        "| experiment | backbone | params (M) | GFLOP/image | steps | total EFLOP | GPU-hours | wall hours "
        "| images/s/GPU | batch/GPU | GB/GPU at batch | micro-batch x accumulation | GB/GPU at micro | loader cores/GPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in plans:
        fit = f"{p.micro_batch} x {p.accumulation}" if p.micro_batch else "does not fit"
        fit += _setting_note(p)
        lines.append(
            f"| {p.experiment} | {p.backbone} | {p.params_m:.1f} | {p.gflop_per_image:.1f} | {p.steps} "
            f"| {p.total_flop / 1e18:.2f} | {p.gpu_hours:.1f} | {p.wall_hours:.1f} | {p.images_per_s_per_gpu:.0f} "
            f"| {p.batch_per_gpu} | {p.memory_gb_at_batch:.1f} | {fit} | {_fmt(p.memory_gb_at_micro_batch, '.1f')} "
            f"| {_fmt(p.loader_cores_per_gpu, 'd')} |"
        )
    seeds = a.get("seeds") or []
    if len(seeds) > 1:  # docs/workflow.md#seeds: every experiment runs once per training seed
        lines += ["", f"Each row is one training run; the config trains each experiment once per seed {seeds}: "
                  f"{len(seeds)} x its GPU-hours."]  # fmt: skip
    return "\n".join(lines)
