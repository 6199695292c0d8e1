"""torch.profiler view of one MMC training step (the code `mmc pretrain` runs), on CPU or CUDA.

Builds the same Trainer and synthetic batch as ``bench_pretrain.py`` (ViT-S/16 at 224 px by
default), warms up, profiles ``--steps`` steps and prints the operators that take the most self
time, plus what a GPU step would wait for (host reads of values, boolean selections) per step and
the minor page faults of one more step, run outside the profiler.
``--trace FILE`` also writes a Chrome trace (open in chrome://tracing or Perfetto).

    PYTHONPATH=$PWD python benchmarks/profile_pretrain.py [--precision bfloat16] [--case test] [--trace t.json]
    PYTHONPATH=$PWD python benchmarks/profile_pretrain.py --attention | --matmuls | --patch-loss | --backbone

``--attention`` instead times one attention layer's forward and backward at the step's shapes with
PyTorch's fused kernel and with the explicit q @ k^T, softmax, @ v (best of 5, fp32 and bf16): the
measurement behind the step's choice of the explicit form on CPU under 16-bit autocast.

``--matmuls`` instead times the step's own matmul shapes (each linear layer's forward, input and
weight gradients; attention's q @ k^T) as fractions of the square matmul the benchmark calls the
peak: the ceiling of a step made only of matmuls.

``--patch-loss`` instead times the patch-distillation loss at the step's shapes (the masked tokens of
the benchmark's batch, K prototypes), forward and backward, fused
(``losses.distill_cross_entropy``: float32 row blocks that stay in cache) against the unfused
``teacher_probs`` + ``soft_cross_entropy`` (float32 teacher probabilities and, under 16-bit
autocast, a 16-bit student log-softmax, over whole (M, K) tensors); interleaved, min/median/max.

``--backbone`` instead times the ViT backbone alone at the step's shapes, the way the step runs it:
the student's forward and backward (stochastic depth on) and the teacher's forward (no gradient),
eager and with compiled blocks (``compile: true``, ``mmc.pretrain.model.compile_blocks``; needs a
C++ compiler), interleaved, each as a fraction of the matmul peak measured beside it
(min/median/max): which part of a step falls short of the peak, and what a compiler recovers there.

``--code DIR`` profiles another checkout's ``mmc`` (e.g. ``git archive main mmc workflow/schemas``
unpacked in DIR) with this script, to compare before and after a change.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def runnable_dtypes(threads: int) -> list:
    """float32 and bfloat16, less bfloat16 where this CPU has no native bfloat16 matmuls (it is
    skipped with its measured rate: ``bench_pretrain.runnable_precisions``)."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_pretrain import runnable_precisions

    return [getattr(torch, name) for name in runnable_precisions(["float32", "bfloat16"], threads)]


def attention_times(threads: int, batch: int, repeats: int = 5) -> None:
    """Fused vs explicit attention, forward + backward, ViT-S/16 at 224 px (2 views x batch, 6 heads)."""
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    for dtype in runnable_dtypes(threads):
        q, k, v = (torch.randn(2 * batch, 6, 197, 64, dtype=dtype, requires_grad=True) for _ in range(3))

        def fused(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v)

        def explicit(q=q, k=k, v=v):
            return ((q * 64**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v

        best = {}
        for _ in range(repeats):  # interleaved
            for name, fn in (("fused", fused), ("explicit", explicit)):
                start = time.perf_counter()
                fn().sum().backward()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
        print(f"attention {str(dtype).removeprefix('torch.'):9s} fused {best['fused'] * 1e3:7.1f} ms, explicit "
              f"{best['explicit'] * 1e3:7.1f} ms: fused / explicit = {best['fused'] / best['explicit']:.2f}")  # fmt: skip


def matmul_shapes(threads: int, batch: int, repeats: int = 5) -> None:
    """The ViT-S/16 step's own matmul shapes (2 views x ``batch`` images of 197 tokens; forward,
    input gradient and weight gradient of each linear layer, and attention's q @ k^T) in float32
    and bfloat16, each as a fraction of bench_pretrain.matmul_peak (the n = 2048 square matmul),
    measured beside it: how fast the step could be if it were only its matmuls."""
    import torch

    torch.set_num_threads(threads)
    rows = 2 * batch * 197
    sys.path.insert(0, str(HERE))
    from bench_pretrain import best_time, matmul_peak

    for dtype in runnable_dtypes(threads):
        peak = matmul_peak(str(dtype).removeprefix("torch."))
        print(f"{str(dtype).removeprefix('torch.')}: n = 2048 square matmul {peak / 1e9:.0f} GFLOP/s")
        for name, (k, n) in {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}.items():
            x, w, grad = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(rows, n, dtype=dtype)
            flops = 2 * rows * k * n
            parts = {"forward": lambda x=x, w=w: x @ w.t(), "input grad": lambda grad=grad, w=w: grad @ w,
                     "weight grad": lambda grad=grad, x=x: grad.t() @ x}  # fmt: skip
            shares = ", ".join(f"{part} {flops / best_time(fn, repeats) / peak:.0%}" for part, fn in parts.items())
            print(f"  {name:5s} ({rows} x {k} x {n}): {shares}")
        q, kt = torch.randn(2 * batch * 6, 197, 64, dtype=dtype), torch.randn(2 * batch * 6, 64, 197, dtype=dtype)
        flops = 2 * q.shape[0] * 197 * 197 * 64
        print(f"  attention q @ k^T ({q.shape[0]} x 197 x 64 x 197): {flops / best_time(lambda q=q, kt=kt: torch.bmm(q, kt), repeats) / peak:.0%}")


def patch_loss_times(threads: int, batch: int, repeats: int = 9) -> None:
    """Fused vs unfused patch-distillation loss, forward + backward, at the ViT-S/16 step's shapes."""
    import statistics
    import time

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    from bench_pretrain import case_config, synthetic_batch

    from mmc.pretrain import losses

    pcfg = case_config("vits16", "float32", batch).experiments["mmc"]
    rows, k = int(synthetic_batch(pcfg, batch, "cpu")[2].sum()), pcfg.distill.out_dim
    generator = torch.Generator().manual_seed(0)
    teacher_temp, student_temp = pcfg.distill.teacher_temp[0], pcfg.distill.student_temp
    for dtype in runnable_dtypes(threads):
        student = torch.randn(rows, k, generator=generator).to(dtype)
        teacher = torch.randn(rows, k, generator=generator).to(dtype)
        center = 0.01 * torch.randn(k, generator=generator)

        def fused(student=student, teacher=teacher, center=center):
            x = student.clone().requires_grad_()
            losses.distill_cross_entropy(x, teacher, center, teacher_temp, student_temp)[0].sum().backward()

        def unfused(student=student, teacher=teacher, center=center):
            x = student.clone().requires_grad_()
            target = losses.teacher_probs(teacher, center, teacher_temp)
            losses.soft_cross_entropy(target, x, student_temp).sum().backward()

        times: dict[str, list[float]] = {"unfused": [], "fused": []}
        for _ in range(repeats + 1):  # interleaved; the first round is a warm-up
            for name, fn in (("unfused", unfused), ("fused", fused)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        cells = {name: [t * 1e3 for t in values[1:]] for name, values in times.items()}
        ratios = [u / f for u, f in zip(cells["unfused"], cells["fused"], strict=True)]
        print(f"patch loss {str(dtype).removeprefix('torch.'):9s} ({rows} x {k}): "
              + ", ".join(f"{name} {min(v):.1f}/{statistics.median(v):.1f}/{max(v):.1f} ms" for name, v in cells.items())
              + f"; unfused / fused min/median/max {min(ratios):.2f}/{statistics.median(ratios):.2f}/{max(ratios):.2f}")  # fmt: skip


def backbone_times(threads: int, batch: int, rounds: int = 9) -> None:
    """Student forward + backward and teacher forward of the benchmark's backbone, eager and with
    compiled blocks, in each runnable precision, as fractions of the matmul peak."""
    import copy
    import statistics
    import time

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    from bench_pretrain import case_config, matmul_peak, synthetic_batch, timm_backbone

    from mmc.host_memory import keep_freed_memory
    from mmc.pretrain.flops import vit_backward_flops, vit_forward_flops
    from mmc.pretrain.model import compile_blocks, use_fused_attention

    keep_freed_memory()  # as the Trainer does on a CPU
    pcfg = case_config("vits16", "float32", batch).experiments["mmc"]
    b = pcfg.backbone
    images = synthetic_batch(pcfg, batch, "cpu")[0].flatten(0, 1)  # both views
    grid = pcfg.data.global_crop_size // b.patch_size
    shape = (grid * grid + 1, grid * grid, b.patch_size, b.embed_dim, b.depth, b.mlp_ratio)
    forward, backward = (len(images) * count(*shape) for count in (vit_forward_flops, vit_backward_flops))
    torch.manual_seed(0)
    eager = torch.nn.Module()
    eager.backbone = timm_backbone(b)
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    for dtype in runnable_dtypes(threads):
        name = str(dtype).removeprefix("torch.")
        for net in (eager, compiled):  # the step's kernel choice (explicit attention under CPU autocast)
            use_fused_attention(net, dtype == torch.float32)

        def student(net, dtype=dtype):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                tokens = net.backbone.forward_features(images)
            tokens.float().sum().backward()
            net.zero_grad(set_to_none=True)

        def teacher(net, dtype=dtype):
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                net.backbone.forward_features(images)

        parts = {("student forward + backward", tag): (lambda net=net: student(net), forward + backward)
                 for tag, net in (("eager", eager), ("compiled", compiled))}  # fmt: skip
        parts |= {("teacher forward", tag): (lambda net=net: teacher(net), forward)
                  for tag, net in (("eager", eager), ("compiled", compiled))}  # fmt: skip
        for call, _ in parts.values():  # warm-up (and compilation)
            call()
            call()
        shares: dict = {key: [] for key in parts}
        for _ in range(rounds):  # interleaved
            for key, (call, flops) in parts.items():
                peak = matmul_peak(name)
                start = time.perf_counter()
                call()
                seconds = time.perf_counter() - start
                shares[key].append(flops / seconds / max(peak, matmul_peak(name)))
        for (part, tag), values in shares.items():
            print(f"{name:9s} {part:27s} {tag:8s} of matmul peak min/median/max "
                  f"{min(values):.1%} / {statistics.median(values):.1%} / {max(values):.1%}")  # fmt: skip


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution")
CASTS = ("aten::copy_",)  # under autocast: float32 <-> 16-bit copies (and .contiguous() copies)


def time_shares(averages) -> str:
    """How the step's CPU self time splits: the matmuls (what the FLOP count counts), the copies
    (autocast's casts, layout copies) and everything else (softmax, GELU, norms, the optimiser)."""
    total = sum(e.self_cpu_time_total for e in averages)
    matmul = sum(e.self_cpu_time_total for e in averages if e.key in MATMULS)
    casts = sum(e.self_cpu_time_total for e in averages if e.key in CASTS)
    return (
        f"self time: matmuls {matmul / total:.0%}, copies {casts / total:.0%}, "
        f"everything else {(total - matmul - casts) / total:.0%}"
    )


def host_reads(events, steps: int) -> str:
    """What a GPU step would wait for: reads of a tensor's value by the host (``aten::item``) and
    boolean selections (``aten::nonzero``, whose output size is read back), per step.

    On the CPU some are not device synchronisations and are counted apart: fused AdamW's CPU
    kernel reads each parameter's step count (its CUDA kernel does not), and the step's
    ``nonzero`` calls whose parent is no indexing op are the masked positions, computed on the host
    copy of the masks (mmc.pretrain.masking.masked_positions). Gradient clipping reads the norm on
    the CPU only (mmc.pretrain.gradients.clip_): one of the remaining host reads there.
    """

    def ancestors(event):
        parent = event.cpu_parent
        while parent is not None:
            yield parent.name
            parent = parent.cpu_parent

    items = [e for e in events if e.name == "aten::item"]
    in_adamw = sum("aten::_fused_adamw_" in set(ancestors(e)) for e in items)
    nonzero = [e for e in events if e.name == "aten::nonzero"]
    by_indexing = sum(bool({"aten::index", "aten::_index_put_impl_"} & set(ancestors(e))) for e in nonzero)
    return (
        f"per step: {(len(items) - in_adamw) / steps:g} host reads of a value (aten::item), plus "
        f"{in_adamw / steps:g} in fused AdamW's CPU kernel (none on CUDA); "
        f"{by_indexing / steps:g} boolean-indexing selections (aten::nonzero under an indexing op), plus "
        f"{(len(nonzero) - by_indexing) / steps:g} masked-position computations on the host masks"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["test", "vits16"], default="vits16")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--trace", type=Path, help="write a Chrome trace here")
    parser.add_argument("--attention", action="store_true", help="only time fused vs explicit attention")
    parser.add_argument("--shapes", action="store_true", help="also group the operators by input shape")
    parser.add_argument("--matmuls", action="store_true", help="only time the step's matmul shapes against the peak")
    parser.add_argument("--patch-loss", action="store_true", help="only time the fused vs unfused patch loss")
    parser.add_argument("--backbone", action="store_true",
                        help="only time the backbone's student and teacher passes, eager and compiled")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds of --backbone")
    parser.add_argument("--code", type=Path, help="the checkout whose mmc package is profiled (default: this one)")
    args = parser.parse_args()
    if args.attention:
        print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
        attention_times(args.threads, args.batch)
        return 0
    if args.patch_loss:
        print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
        patch_loss_times(args.threads, args.batch)
        return 0
    if args.matmuls:
        print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
        matmul_shapes(args.threads, args.batch)
        return 0
    if args.backbone:
        print(f"{args.threads} threads, load average {os.getloadavg()[0]:.2f}")
        backbone_times(args.threads, args.batch, args.rounds)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
        return 0
    sys.path.insert(0, str(HERE))
    from bench_pretrain import case_config, make_trainer, synthetic_batch  # puts this checkout on sys.path

    if args.code:
        sys.path.insert(0, str(args.code.resolve()))
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    cfg = case_config(args.case, args.precision, args.batch, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, args.batch, args.device, Path(tmp))
    data = synthetic_batch(trainer.pcfg, args.batch, args.device)
    for i in range(args.warmup):
        trainer.step = i
        trainer._train_step(trainer.student, data, 0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # one more step, outside the profiler
    trainer.step = args.warmup
    trainer._train_step(trainer.student, data, 0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities, record_shapes=args.shapes) as prof:
        for i in range(args.steps):
            trainer.step = args.warmup + 1 + i
            trainer._train_step(trainer.student, data, 0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"{args.case} {args.precision} batch {args.batch}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print(averages.table(sort_by=sort, row_limit=args.rows))
    if args.shapes:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=args.rows))
    if not args.device.startswith("cuda"):
        print(time_shares(averages))
    print(host_reads(prof.events(), args.steps))
    print(f"minor page faults of the process in one step (outside the profiler): {faults} (mmc.host_memory)")
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
