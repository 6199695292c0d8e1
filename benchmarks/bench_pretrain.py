"""CPU benchmark of the MMC training step against a DINO-style and an iBOT-style step, interleaved.

Every case is a full optimiser step (student forward and backward, teacher forward, losses, centres,
clipping, AdamW, EMA) on a pre-built batch (data loading excluded) of ``--batch`` images with two
224 px global crops, ViT-S/16, K = 8192 prototypes:

- ``mmc``: ``mmc.pretrain.train.Trainer._train_step``, the very code ``mmc pretrain`` runs;
- ``mmc-compiled`` (with ``--compile``): the same with ``compile: true``, each transformer block
  compiled by ``torch.compile`` (its compilation happens in the warm-up rounds);
- ``mmc-baseline`` (with ``--baseline-rev REV``): the same, from the ``mmc`` package of git
  revision REV of this repository (unpacked into a temporary folder), to measure a change;
- ``dino-style``: timm's ViT + this project's DINO head, [CLS] self-distillation only (DINO,
  arXiv 2104.14294): heads on [CLS], teacher centring, per-parameter clipping, fused AdamW, EMA;
- ``ibot-style``: the same plus masked patch tokens (iBOT, arXiv 2111.07832) with iBOT's layout:
  the shared head on every token of student and teacher, the patch loss over full (V, B, N, K)
  tensors weighted by the mask, the patch centre from every teacher patch output.

A shared machine's load changes from second to second, so the cases are interleaved: each round
runs every case once (in a rotated order), and each case re-measures the matmul peak of its dtype
(best of 3 n^3 matmuls, in the same process) just before its step and again just after it, and
takes the higher. After ``--warmup`` rounds,
``--rounds`` rounds are timed; the script prints min/median/max of the step time and of the
achieved analytic FLOP/s over that peak, and each case's time per analytic FLOP relative to the
DINO-style and iBOT-style steps of the same round (median over rounds; > 1 = more efficient), and
the minor page faults of its process during the step (median; ``mmc.host_memory``). Each
case counts the FLOPs it really computes (``mmc.pretrain.flops.step_flops`` of its own code).

The peer-style steps run in the ``mmc`` case's process, built after its Trainer, so they share the
process-wide settings the Trainer makes (on a CPU with glibc, ``mmc.host_memory``'s allocator
policy): the comparison is one of step designs. ``mmc-baseline`` runs in a process of its own, with
its revision's settings.

    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py [--threads 2] [--baseline-rev main] [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def best_time(call, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``call``, after one untimed warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` (the practical peak of this machine now)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, repeats)


def runnable_precisions(precisions: list[str], threads: int) -> list[str]:
    """``precisions`` less those whose matmuls this CPU runs only in PyTorch's reference kernel
    (bfloat16 without AVX-512, ``mmc.cpu_precision``): their steps would take minutes each and
    measure that kernel, not the step. Each one skipped is printed with its measured matmul rate."""
    import torch

    from mmc.cpu_precision import cpu_runs_natively

    torch.set_num_threads(threads)
    kept = []
    for precision in precisions:
        if cpu_runs_natively(precision):
            kept.append(precision)
            continue
        slow, fast = matmul_peak(precision, n=512, repeats=1), matmul_peak("float32", n=512, repeats=1)
        print(f"skipping {precision}: this CPU has no native {precision} matmuls (n = 512: {slow / 1e9:.3g} GFLOP/s "
              f"against {fast / 1e9:.3g} in float32, {fast / slow:.0f}x slower)", flush=True)  # fmt: skip
    return kept


def case_config(case: str, precision: str, batch: int, device: str = "cpu", extra: dict | None = None):
    from mmc import config

    if case == "test":
        raw = config.load_raw(REPO / "config" / "test.yaml")
        pretrain = raw.get("pretrain", {})
    else:  # ViT-S/16 at 224 px with the schema's default heads
        pretrain = {"backbone": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6, "img_size": 224}}
    pretrain = config.deep_merge(pretrain, {"precision": precision, "optim": {"batch_size": batch}, "compile": False})
    pretrain = config.deep_merge(pretrain, extra or {})
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


# ----------------------------------------------------------------------------- peer-style steps
def timm_backbone(b):
    """timm's ViT with the backbone config ``b`` (no classifier): the peer-style steps' backbone."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=b.img_size, patch_size=b.patch_size, embed_dim=b.embed_dim, depth=b.depth,
        num_heads=b.num_heads, mlp_ratio=b.mlp_ratio, num_classes=0, drop_path_rate=b.drop_path,
    )  # fmt: skip


class PeerStep:
    """A DINO-style (``patches=False``) or iBOT-style (``patches=True``) step from timm and project parts."""

    def __init__(self, pcfg, batch: int, patches: bool):
        import copy

        import torch

        from mmc.pretrain.model import DINOHead

        b, d = pcfg.backbone, pcfg.distill
        self.pcfg, self.patches, self.amp_dtype = pcfg, patches, None
        torch.manual_seed(0)
        student = torch.nn.Module()
        student.backbone = timm_backbone(b)
        student.head = DINOHead(b.embed_dim, d.out_dim, d.hidden_dim, d.bottleneck_dim)
        if patches:
            student.mask_token = torch.nn.Parameter(torch.zeros(1, 1, b.embed_dim))
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04, fused=True)
        self.centers = {"cls": torch.zeros(d.out_dim), "patch": torch.zeros(d.out_dim)}
        self.batch = batch

    def _tokens(self, net, images, masks=None):
        import torch

        vit = net.backbone
        x = vit.patch_embed(images)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), net.mask_token.to(x.dtype), x)
        return vit.norm(vit.blocks(vit._pos_embed(x)))

    def step(self, data) -> None:
        import torch
        import torch.nn.functional as F

        from mmc.pretrain.gradients import clip_
        from mmc.pretrain.losses import distill_cls_loss, teacher_probs, updated_center
        from mmc.pretrain.model import ema_update

        views, _, masks = data
        v, b = views.shape[:2]
        try:  # the MMC step's kernel choice, so that the comparison isolates the rest of the step
            from mmc.pretrain.model import use_fused_attention

            for net in (self.student, self.teacher):
                use_fused_attention(net, self.amp_dtype is None)
        except ImportError:
            pass
        flat = views.flatten(0, 1)
        flat_masks = masks.flatten(0, 1) if self.patches else None
        dtype = self.amp_dtype or torch.float32
        with torch.autocast("cpu", dtype=dtype, enabled=self.amp_dtype is not None):
            s_tok = self._tokens(self.student, flat, flat_masks)
            with torch.no_grad():
                t_tok = self._tokens(self.teacher, flat)
            if self.patches:  # iBOT: the head on every token of both networks
                s_out = self.student.head(s_tok).unflatten(0, (v, b))
                with torch.no_grad():
                    t_out = self.teacher.head(t_tok).unflatten(0, (v, b))
            else:
                s_out = self.student.head(s_tok[:, 0]).unflatten(0, (v, b)).unsqueeze(2)
                with torch.no_grad():
                    t_out = self.teacher.head(t_tok[:, 0]).unflatten(0, (v, b)).unsqueeze(2)
            temp = self.pcfg.distill.teacher_temp[0]
            loss = distill_cls_loss(s_out[:, :, 0], teacher_probs(t_out[:, :, 0], self.centers["cls"], temp), 0.1)
            if self.patches:  # iBOT's layout: full (V, B, N, K) tensors, the mask as a weight
                t_patch = F.softmax((t_out[:, :, 1:].float() - self.centers["patch"]) / temp, dim=-1)
                ce = -(t_patch * F.log_softmax(s_out[:, :, 1:].float() / 0.1, dim=-1)).sum(-1)
                weight = masks.float()
                loss = loss + ((ce * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_(self.student.parameters(), 3.0, "per_param")
        self.optimizer.step()
        ema_update(self.teacher, self.student, 0.996)
        self.centers["cls"] = updated_center(self.centers["cls"], t_out[:, :, 0], 0.9)
        if self.patches:
            self.centers["patch"] = updated_center(self.centers["patch"], t_out[:, :, 1:], 0.9)
        float(loss.detach())

    def flops(self) -> int:
        from mmc.pretrain.flops import vit_backward_flops, vit_forward_flops

        b, d = self.pcfg.backbone, self.pcfg.distill
        grid = self.pcfg.data.global_crop_size // b.patch_size
        tokens = grid * grid + 1
        shape = (tokens, grid * grid, b.patch_size, b.embed_dim, b.depth, b.mlp_ratio)
        head = 2 * (b.embed_dim * d.hidden_dim + d.hidden_dim**2 + d.hidden_dim * d.bottleneck_dim + d.bottleneck_dim * d.out_dim)
        heads = (tokens if self.patches else 1) * head
        forward = 2 * self.batch * (vit_forward_flops(*shape) + heads)
        backward = 2 * self.batch * (vit_backward_flops(*shape) + 2 * heads)
        return forward + backward + forward  # student forward and backward, teacher forward


# ----------------------------------------------------------------------------- worker processes
def worker(code: str, model: str, batch: int, threads: int, names: list[str], conn) -> None:
    """Hosts the cases of one checkout of ``mmc`` (``code``) and runs them on request."""
    sys.path.insert(0, code)
    import torch

    torch.set_num_threads(threads)
    cfg = case_config(model, "float32", batch)
    cases = {}
    for name in names:
        if name in ("mmc", "mmc-baseline", "mmc-diagnostics", "mmc-compiled"):
            extra = {
                "mmc-diagnostics": {"diagnostics": {"every_steps": 1}, "log_every_steps": 1},  # every step
                "mmc-compiled": {"compile": True},  # regional compilation of the blocks
            }.get(name)
            with tempfile.TemporaryDirectory() as tmp:
                trainer = make_trainer(case_config(model, "float32", batch, extra=extra), batch, "cpu", Path(tmp))
            data = synthetic_batch(trainer.pcfg, batch, "cpu")
            from mmc.pretrain.flops import step_flops

            try:
                flops = step_flops(trainer.pcfg, batch, masked_tokens=int(data[2].sum()))
            except TypeError:  # a revision whose heads run on every token: no masked-token argument
                flops = step_flops(trainer.pcfg, batch)
            cases[name] = (trainer, data, flops["step"])
        else:
            peer = PeerStep(cfg.experiments["mmc"], batch, patches=name == "ibot-style")
            cases[name] = (peer, synthetic_batch(cfg.experiments["mmc"], batch, "cpu"), peer.flops())
    conn.send({name: flops for name, (_, _, flops) in cases.items()})
    counter = 0
    while True:
        request = conn.recv()
        if request is None:
            return
        name, precision = request
        target, data, _ = cases[name]
        target.amp_dtype = None if precision == "float32" else torch.bfloat16
        peak = matmul_peak(precision)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        if isinstance(target, PeerStep):
            target.step(data)
        else:  # steps 1, 2, ...: metrics read every log_every_steps, no per-term gradient diagnostics
            target.step = 1 + counter
            target._train_step(target.student, data, 0)
        step_s = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        # and after it: a neighbour's burst during one of the two measurements does not lower the
        # peak (seen: best-of-3 peaks 40 % low, and a step at 103 % of such a peak)
        peak = max(peak, matmul_peak(precision))
        conn.send({"step_s": step_s, "peak": peak, "page_faults": faults})
        counter += 1


def unpack_revision(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "mmc", "workflow/schemas"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def summarise(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["vits16", "test"], default="vits16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads per case")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every case each)")
    # two: in a new process the second step is still 10-20 % slower than the steps after it
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--baseline-rev", help="also time the mmc step of this git revision (e.g. main)")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also time the mmc step with the per-term gradient diagnostics on (every step)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the mmc step with compile: true (each transformer block compiled)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed rounds (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup = 2, 1
    import torch

    print(f"torch {torch.__version__}, {args.threads} of {os.cpu_count()} CPU threads, {args.model} batch {args.batch}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)", flush=True)  # fmt: skip
    precisions = runnable_precisions(args.precisions, args.threads)
    if not precisions:
        print("nothing to time: no precision asked for runs natively on this CPU", file=sys.stderr)
        return 2
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        extra_cases = (["mmc-diagnostics"] if args.diagnostics else []) + (["mmc-compiled"] if args.compile else [])
        groups = {str(REPO): ["mmc", "dino-style", "ibot-style", *extra_cases]}
        if args.baseline_rev:
            groups[str(unpack_revision(args.baseline_rev, Path(tmp)))] = ["mmc-baseline"]
        owner, flops = {}, {}
        procs = []
        for code, names in groups.items():
            parent, child = context.Pipe()
            proc = context.Process(target=worker, args=(code, args.model, args.batch, args.threads, names, child))
            proc.start()
            procs.append(proc)
            flops.update(parent.recv())
            for name in names:
                owner[name] = parent
        cases = [(name, p) for p in precisions for name in owner]
        times = {c: [] for c in cases}
        ratios = {c: [] for c in cases}
        faults = {c: [] for c in cases}
        for r in range(args.warmup + args.rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]  # rotate: no case always first
            for name, precision in order:
                owner[name].send((name, precision))
                result = owner[name].recv()
                if r >= args.warmup:
                    times[(name, precision)].append(result["step_s"])
                    faults[(name, precision)].append(result["page_faults"])
                    ratios[(name, precision)].append(flops[name] / result["step_s"] / result["peak"])
            print(f"  round {r + 1}/{args.warmup + args.rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
        for conn in set(owner.values()):
            conn.send(None)
        for proc in procs:
            proc.join()
    header = (f"{'case':13s} {'precision':9s} {'GFLOP/step':>10s} {'step s min/med/max':>20s} "
              f"{'of matmul peak min/med/max':>27s} {'vs DINO-style':>13s} {'vs iBOT-style':>13s} {'page faults':>11s}")  # fmt: skip
    print(header)
    rows = []
    for name, precision in cases:
        relative = {}
        for peer in ("dino-style", "ibot-style"):
            per_round = [a / b for a, b in zip(ratios[(name, precision)], ratios[(peer, precision)], strict=True)]
            relative[peer] = statistics.median(per_round)
        t, q = summarise(times[(name, precision)]), summarise(ratios[(name, precision)])
        page_faults = statistics.median(faults[(name, precision)])
        rows.append({"case": name, "precision": precision, "flops_per_step": flops[name], "step_s": t,
                     "ratio_to_matmul_peak": q, "vs_dino_style": relative["dino-style"],
                     "vs_ibot_style": relative["ibot-style"], "page_faults_per_step": page_faults})  # fmt: skip
        print(f"{name:13s} {precision:9s} {flops[name] / 1e9:10.1f} {t[0]:6.2f}/{t[1]:6.2f}/{t[2]:6.2f} "
              f"{q[0]:8.1%}/{q[1]:7.1%}/{q[2]:7.1%}   {relative['dino-style']:11.2f}x {relative['ibot-style']:11.2f}x "
              f"{page_faults:11.0f}")  # fmt: skip
    for precision in precisions if args.diagnostics else []:
        per_round = [a / b for a, b in zip(times[("mmc-diagnostics", precision)], times[("mmc", precision)], strict=True)]
        every = case_config(args.model, precision, args.batch).experiments["mmc"].diagnostics.every_steps
        overhead = statistics.median(per_round) - 1.0
        print(f"diagnostics {precision}: a step with them takes {overhead:+.1%} (median over rounds); "
              f"at the default every {every} steps that is {overhead / every:+.2%} of the training time")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(json.dumps({"threads": args.threads, "model": args.model, "batch": args.batch, "rounds": args.rounds,
                      "baseline_rev": args.baseline_rev, "cases": rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
