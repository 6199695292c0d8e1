"""The MMC pretraining loop (docs/method.md#pretraining): one process, or DDP under ``torchrun``.

Exit codes: 0 done; 2 a user error (bad config, missing data, non-finite loss); 75 (EX_TEMPFAIL)
stopped by SIGTERM after writing a resume checkpoint at the next step boundary, so a scheduler
(SLURM requeue, Snakemake retries) reruns the same command and it resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmc import config as config_mod
from mmc import records, tracking
from mmc.cpu_precision import slow_precision_warning
from mmc.data.digest import pretrain_entry
from mmc.errors import ConfigError, MMCError
from mmc.files import atomic_path, sha256_file
from mmc.host_memory import keep_freed_memory
from mmc.plan import GIB, MicroBatch, does_not_fit, micro_batch_for
from mmc.pretrain import checkpoint as ckpt_mod
from mmc.pretrain import distributed as dist_util
from mmc.pretrain.data import PretrainDataset, make_run_loader, micro_batch_positions, to_device
from mmc.pretrain.diagnostics import CollapseWatch
from mmc.pretrain.distributed import all_gather_cat
from mmc.pretrain.gradients import clip_
from mmc.pretrain.losses import GlobalCounts, center_from_sum, mmc_loss, patchify
from mmc.pretrain.masking import take_masked
from mmc.pretrain.model import (
    arch_of,
    build_pair,
    compile_blocks,
    ema_update,
    param_groups,
    use_fused_attention,
)
from mmc.pretrain.schedules import pretrain_schedules

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; the rerun resumes from the checkpoint
METRICS_NAME = "train_metrics.jsonl"


class Preempted(Exception):
    """SIGTERM arrived; a resume checkpoint has been written."""


def _log(message: str) -> None:
    if dist_util.rank() == 0:
        print(f"mmc pretrain: {message}", file=sys.stderr, flush=True)


def _step_seed(seed: int, step: int, rank: int) -> int:
    # drop-path draws from the global generator: reseeding per step makes it a function of the step
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def _setup_distributed(device_kind: str) -> torch.device:
    use_cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise MMCError("device: 'cuda' was asked for but no CUDA device is available (set device: auto or cpu)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist_util.is_distributed():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _expected_epochs(pcfg) -> list[int]:
    """Epochs whose checkpoints are kept: the initial weights (epoch 0, see ``Trainer._save_initial``),
    ``save_epochs`` (config validation keeps them within the run) and the last one."""
    return sorted({0, *pcfg.checkpoint.save_epochs, pcfg.optim.epochs})


def run(cfg, experiment: str, out: str | Path, state_dir: str | Path | None = None, seed: int | None = None) -> int:
    """Pretrain ``experiment`` into ``out``. ``seed``: the training seed, one of the config's ``seeds``
    (the workflow passes it; the resume state then defaults to ``{state_dir}/pretrain/E/seedS``);
    None trains with the base ``seed`` as before, state in ``{state_dir}/pretrain/E``."""
    if experiment not in cfg.experiments:
        raise ConfigError(f"--experiment: '{experiment}' is not a key of experiments (have: {sorted(cfg.experiments)})")
    pcfg = cfg.experiments[experiment]
    if pcfg.init_checkpoint is not None:
        raise ConfigError(
            f"experiments.{experiment}.init_checkpoint is set ({pcfg.init_checkpoint}): nothing to "
            "pretrain; `mmc select` takes that file directly (the workflow has no pretrain job for it)"
        )
    if seed is not None and seed not in cfg.seeds:
        raise ConfigError(f"--seed {seed} is not one of the config's seeds {list(cfg.seeds)}")
    wildcards: dict = {"experiment": experiment} if seed is None else {"experiment": experiment, "seed": seed}
    cfg = dataclasses.replace(cfg, seed=int(cfg.seed if seed is None else seed))  # the Trainer's seed
    out = Path(out)
    default_state = Path(cfg.state_dir) / "pretrain" / config_mod.run_name(experiment, seed)
    state = Path(state_dir) if state_dir else default_state
    if state.resolve() == out.resolve() or out.resolve() in state.resolve().parents:
        raise MMCError(f"--state-dir {state} is inside --out {out}: resume state must survive deletion of the outputs")
    if pcfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = _setup_distributed(cfg.device)
    recorder = (
        tracking.job("pretrain", cfg, wildcards=wildcards)
        if dist_util.rank() == 0
        else contextlib.nullcontext(tracking.JobRecorder("pretrain", records.default_name("pretrain", wildcards), None))
    )
    try:
        with recorder as rec:
            rec.log_params(config_mod.to_dict(pcfg))
            rec.set_tags({"experiment": experiment, "seed": str(cfg.seed), "config_hash": config_mod.config_hash(pcfg)})
            if rec.enabled:  # what the run reads, for `mmc provenance` (rank 0 records the job)
                rec.read_data("pretrain", pretrain_entry(pcfg.data.path, pcfg.data.format))
            Trainer(cfg, pcfg, out, state, device, rec, experiment=experiment).fit()
        return 0
    except Preempted:
        _log(f"SIGTERM: resume checkpoint written to {state}; exiting with {EXIT_PREEMPTED} (rerun to resume)")
        return EXIT_PREEMPTED
    finally:
        dist_util.shutdown()


# Keys that change how a run is executed or logged, not what it computes: a resume may differ in them.
# optim.memory_gb and memory_fraction only choose how `micro_batch_size: auto` splits the same global
# batch, as the number of processes does (a resume may run on other GPUs).
EXECUTION_KEYS = frozenset({
    "data.num_workers", "checkpoint", "log_every_steps", "compile", "diagnostics", "optim.memory_gb",
    "optim.memory_fraction",
})  # fmt: skip


def _semantic_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring EXECUTION_KEYS."""
    changed = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if name in EXECUTION_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _semantic_changes(a, b, f"{name}.")
        elif a != b:
            changed.append(name)
    return changed


def micro_batching(global_batch: int, world: int, micro_batch_size: int | None) -> tuple[int, int]:
    """(micro-batch per process, accumulation steps) for a global batch split over ``world`` processes.

    ``micro_batch_size`` None: the whole per-process batch in one forward/backward.
    """
    if global_batch % world:
        raise MMCError(f"optim.batch_size {global_batch} is not divisible by the number of processes {world}")
    per_process = global_batch // world
    micro = per_process if micro_batch_size is None else int(micro_batch_size)
    if per_process % micro:
        raise MMCError(
            f"optim.batch_size {global_batch} is not divisible by processes x optim.micro_batch_size "
            f"({world} x {micro}): each process's {per_process} images must split into whole micro-batches"
        )
    return micro, per_process // micro


def memory_to_plan_for(pcfg, device: torch.device) -> tuple[float | None, str]:
    """(GiB per process that ``micro_batch_size: auto`` plans for, where that number comes from):
    ``optim.memory_gb`` if set, else the CUDA device's total memory, else (CPU) no limit."""
    if pcfg.optim.memory_gb is not None:
        return float(pcfg.optim.memory_gb), f"optim.memory_gb ({pcfg.optim.memory_gb:g} GiB)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        total = props.total_memory / GIB
        return total, f"the total memory of {props.name} ({total:.2f} GiB)"
    return None, "no limit (CPU)"


def auto_micro_batch(pcfg, world: int, device: torch.device, prefix: str = "") -> tuple[MicroBatch, str]:
    """The split ``micro_batch_size: auto`` runs with here: ``mmc.plan.micro_batch_for`` (the function
    ``mmc plan`` prints) for this number of processes and this device's memory."""
    if pcfg.optim.batch_size % world:
        raise MMCError(f"optim.batch_size {pcfg.optim.batch_size} is not divisible by the number of processes {world}")
    memory, source = memory_to_plan_for(pcfg, device)
    split = micro_batch_for(pcfg, world, memory)
    if split.micro_batch is None:
        named = f"{prefix}{source}" if pcfg.optim.memory_gb is not None else source  # the key, as written
        raise MMCError(does_not_fit(split, f"{prefix}optim.", world, named))
    return split, source


def describe_split(split: MicroBatch, source: str, world: int) -> str:
    """The one line ``mmc pretrain`` prints for ``micro_batch_size: auto``."""
    if split.budget_gb is None:
        fits = f"{source}"
    else:
        fits = f"{split.budget_gb:.3g} GiB = optim.memory_fraction ({split.budget_gb / split.memory_gb:g}) x {source}"
    return (
        f"optim.micro_batch_size auto: micro-batch {split.micro_batch} x {split.accumulation} accumulation steps "
        f"({split.per_process} images per process, {world} process{'es' if world > 1 else ''}); estimated "
        f"{split.memory_gb_at_micro_batch:.3g} GiB per process, budget {fits}"
    )


class Trainer:
    def __init__(self, cfg, pcfg, out: Path, state: Path, device: torch.device, rec, *, experiment: str | None = None):
        self.cfg, self.pcfg, self.out, self.state, self.device, self.rec = cfg, pcfg, out, state, device, rec
        self.seed = int(cfg.seed)
        self.rank, self.world = dist_util.rank(), dist_util.world_size()
        self.is_main = self.rank == 0
        self.config_dict = config_mod.to_dict(pcfg)
        self.expected_epochs = _expected_epochs(pcfg)
        if pcfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if device.type == "cpu":  # every step allocates the same blocks: reuse their pages
            keep_freed_memory()
        option = f"experiments.{experiment}.precision" if experiment else "pretrain.precision"
        warning = slow_precision_warning(option, pcfg.precision, device.type)
        if warning:
            _log(f"warning: {warning}")
        torch.manual_seed(self.seed)  # identical initial weights on every rank
        self.dataset = PretrainDataset(pcfg, self.seed)
        self.batch_size = int(pcfg.optim.batch_size)
        micro, derived = pcfg.optim.micro_batch_size, {}
        if micro == "auto":
            prefix = f"experiments.{experiment}." if experiment else ""
            split, source = auto_micro_batch(pcfg, self.world, device, prefix)
            micro = split.micro_batch
            derived = {"memory_gb": split.memory_gb, "memory_budget_gb": split.budget_gb,
                       "estimated_memory_gb": split.memory_gb_at_micro_batch}  # fmt: skip
            if self.is_main:
                print(f"mmc pretrain: {describe_split(split, source, self.world)}", flush=True)
        self.micro_batch, self.accumulation = micro_batching(self.batch_size, self.world, micro)
        # the split as run (for every setting), beside the config's own params
        rec.log_params({"derived": {"processes": self.world, "micro_batch": self.micro_batch,
                                    "accumulation_steps": self.accumulation, **derived}})  # fmt: skip
        self.steps_per_epoch = len(self.dataset) // self.batch_size
        if self.steps_per_epoch == 0:
            raise MMCError(
                f"{pcfg.data.path}: {len(self.dataset)} images is fewer than one global batch "
                f"(optim.batch_size {self.batch_size})"
            )
        self.total_steps = pcfg.optim.epochs * self.steps_per_epoch
        self.student, self.teacher = build_pair(pcfg)
        if pcfg.contrast.head_norm == "batch" and self.world > 1 and device.type == "cuda":
            self.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.student.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        if pcfg.compile:
            for network in (self.student, self.teacher):
                if network is not None:
                    compile_blocks(network)
        self.amp_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[pcfg.precision]
        self._fused_attention = True  # timm's default; see _choose_attention
        k = pcfg.distill.out_dim
        self.centers = {"cls": torch.zeros(k, device=device), "patch": torch.zeros(k, device=device)}
        # fused AdamW: one kernel per parameter group instead of ~6 per tensor (CPU and CUDA)
        self.optimizer = torch.optim.AdamW(param_groups(self.student), lr=0.0, weight_decay=0.0, fused=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=pcfg.precision == "float16")
        self.step = 0
        self.stop_requested = False
        self.ddp = None  # the DistributedDataParallel wrapper while _loop runs (for no_sync)
        diag = pcfg.diagnostics
        self.collapse = CollapseWatch(k, diag.collapse_tolerance, diag.collapse_span_steps)
        self._first_nonfinite = None  # (step, loss values) on the device, found between two host reads

    # ------------------------------------------------------------------ state
    def _resume(self) -> None:
        ckpt, path = ckpt_mod.latest_valid(self.state, report=_log)
        if ckpt is None:
            return
        changed = _semantic_changes(ckpt["config"], self.config_dict)
        if changed:
            raise MMCError(
                f"{path}: resume state was written with a different configuration ({', '.join(changed)}); "
                f"delete {self.state} to start afresh"
            )
        self.student.load_state_dict(ckpt["student"])
        if self.teacher is not None:
            self.teacher.load_state_dict(ckpt["teacher"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.centers = {k: v.to(self.device) for k, v in ckpt["centers"].items()}
        ckpt_mod.set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        _log(f"resuming from {path} (step {self.step} of {self.total_steps})")
        before = ckpt.get("sampler", {}).get("micro_batch")
        if before is not None and before != self.micro_batch:
            # other GPUs or another number of them: the same global batch, split differently
            _log(f"the micro-batch is now {self.micro_batch} x {self.accumulation} per process (was {before}): "
                 "the same global batch, split differently (docs/pretrain.md)")  # fmt: skip

    def _state_dicts(self) -> tuple[dict, dict | None]:
        teacher = self.teacher.state_dict() if self.teacher is not None else None
        return self.student.state_dict(), teacher

    def _save_resume(self) -> None:
        if not self.is_main:
            return
        student, teacher = self._state_dicts()
        epoch = self.step // self.steps_per_epoch
        ckpt = ckpt_mod.mmc_checkpoint(
            arch_of(self.pcfg), student, teacher, epoch, self.step, self.config_dict,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            centers={k: v.cpu() for k, v in self.centers.items()},
            rng=ckpt_mod.rng_state(),
            sampler={"epoch": epoch, "step_in_epoch": self.step % self.steps_per_epoch, "seed": self.seed,
                     "global_batch": self.batch_size, "num_images": len(self.dataset),
                     "micro_batch": self.micro_batch, "accumulation_steps": self.accumulation},
        )  # fmt: skip
        ckpt_mod.save(ckpt, self.state / ckpt_mod.resume_name(self.step))
        ckpt_mod.prune(self.state, self.pcfg.checkpoint.keep_last)

    def _save_epoch(self, epoch: int) -> None:
        if not self.is_main:
            return
        student, teacher = self._state_dicts()
        ckpt = ckpt_mod.mmc_checkpoint(
            arch_of(self.pcfg), student, teacher, epoch, self.step, self.config_dict,
            centers={k: v.cpu() for k, v in self.centers.items()},
        )  # fmt: skip
        ckpt_mod.save(ckpt, self.state / "epochs" / ckpt_mod.epoch_name(epoch))

    def _save_initial(self) -> None:
        """The weights before the first step (epoch 0), the paired reference of the trained model
        (``models.M.checkpoint: initial``). Called once, before any resume replaces the freshly built
        weights: they depend only on the seed and the config, so a resumed run writes the same file."""
        if self.is_main and not (self.state / "epochs" / ckpt_mod.epoch_name(0)).exists():
            self._save_epoch(0)

    def _metrics_path(self) -> Path:
        return self.state / METRICS_NAME

    def _restore_metrics(self) -> None:
        """Keep the metric lines of steps before the resume point; replay them into the recorder."""
        path = self._metrics_path()
        if not self.is_main or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                row = json.loads(line)
                if row["step"] < self.step:
                    kept.append(line)
                    self.rec.log_metrics({k: v for k, v in row.items() if k not in ("step", "epoch")}, step=row["step"])
                    self._watch_collapse(row, report=False)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))

    # ------------------------------------------------------------------ loop
    def fit(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            for stale in self.state.glob(".step_*.tmp-*"):  # a save cut short by a kill
                stale.unlink(missing_ok=True)
        self._save_initial()
        self._resume()
        self._restore_metrics()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._loop()
        finally:
            signal.signal(signal.SIGTERM, previous)
        self._check_ranks_agree()
        if self.is_main:
            self._export()

    def _check_ranks_agree(self) -> None:
        """Under DDP every rank must end with the same weights; a silent divergence is a bug."""
        if self.world == 1:
            return
        digest = ckpt_mod.state_digest(*self._state_dicts())
        digests = [None] * self.world
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise MMCError(f"ranks ended with different weights: {digests}")
        _log(f"weights identical on {self.world} ranks: sha256 {digest}")

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def _loop(self) -> None:
        from tqdm import tqdm

        pcfg = self.pcfg
        model = self.student
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = self.ddp = torch.nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.is_main, unit="step",
            dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip
        metrics_file = open(self._metrics_path(), "a") if self.is_main else None  # noqa: SIM115
        try:
            self._since = (time.perf_counter(), self.step)  # images/s between two host reads
            # one loader for the whole run: its workers start once, its sampler spans the epochs
            loader = make_run_loader(
                self.dataset, self.batch_size, self.seed, self.rank, self.world, self.step, self.total_steps,
                pcfg.data.num_workers, self.device,
            )  # fmt: skip
            for batch in loader:
                epoch = self.step // self.steps_per_epoch
                row = self._train_step(model, batch, epoch)
                self.step += 1
                self._after_step(row, epoch, bar, metrics_file)
                if row["stop"]:
                    if self.world > 1:
                        # no rank leaves before rank 0 has written the resume checkpoint: the
                        # launchers stop every process once one exits (torchrun; srun
                        # --kill-on-bad-exit on several nodes), which would cut the write short
                        torch.distributed.barrier()
                    raise Preempted()  # _after_step wrote the resume checkpoint
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()
            self.ddp = None

    def _logged(self, step: int) -> bool:
        """Whether step index ``step`` (0-based) is written to the metrics: every N-th, the diagnostics' and the last."""
        every = self.pcfg.diagnostics.every_steps
        return step % self.pcfg.log_every_steps == 0 or step == self.total_steps - 1 or bool(every and step % every == 0)

    def _after_step(self, row: dict, epoch: int, bar, metrics_file) -> None:
        step, every = self.step, self.pcfg.checkpoint.every_steps
        epoch_end = step % self.steps_per_epoch == 0
        save = epoch_end or (every and step % every == 0) or row["stop"]
        logged = self._logged(step - 1)
        if logged or save:  # the only host reads of the step's values
            values = self._host_values(row)
            now = time.perf_counter()
            values["images_per_s"] = self.batch_size * (step - self._since[1]) / max(now - self._since[0], 1e-9)
            self._since = (now, step)
            bar.set_postfix(
                {k: f"{values[k]:.4g}" for k in ("loss", "mim", "distill", "contrast") if k in values}
                | {"img/s": f"{values['images_per_s']:.1f}"},
                refresh=False,
            )
            if logged and self.is_main:
                line = {"step": step - 1, "epoch": epoch, **values}
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()
                self.rec.log_metrics(values, step=step - 1)
                self._watch_collapse(line)
        bar.update(1)
        if epoch_end and (epoch + 1) in self.expected_epochs:
            self._save_epoch(epoch + 1)
        if save:
            self._save_resume()

    def _host_values(self, row: dict) -> dict:
        """Reduce the step's device values over ranks, read them in one transfer, stop on a non-finite loss.

        Loss terms are each rank's share of the global-batch loss (summed, then / world); entropies
        come as (sum, ``@count``) pairs over all ranks; other tensors are identical on every rank.
        """
        tensors = {k: v.detach().float().reshape(()) for k, v in row.items() if isinstance(v, torch.Tensor)}
        reduced = sorted(k for k in tensors if k in self._LOSS_KEYS or k.startswith("teacher_entropy_"))
        local = sorted(k for k in tensors if k not in reduced)
        parts = [dist_util.all_reduce_sum(torch.stack([tensors[k] for k in reduced]))] if reduced else []
        parts += [torch.stack([tensors[k] for k in local])] if local else []
        first = self._first_nonfinite
        if first is not None:
            parts.append(dist_util.all_reduce_min(first[0]).reshape(1))
            parts.append(torch.stack([first[0]] + [first[1][k] for k in sorted(first[1])]))
        flat = torch.cat(parts).tolist() if parts else []
        values = dict(zip(reduced + local, flat, strict=False))
        if first is not None and math.isfinite(flat[len(reduced) + len(local)]):
            bad = int(flat[len(reduced) + len(local)])
            mine = flat[len(reduced) + len(local) + 1 :]
            if mine[0] == bad:
                shares = "" if self.world == 1 else f" (rank {self.rank}'s share)"
                described = ", ".join(f"{k}={v:.6g}" for k, v in zip(sorted(first[1]), mine[1:], strict=True)) + shares
            else:
                described = "first seen on another rank"
            raise MMCError(f"non-finite loss at step {bad} (epoch {bad // self.steps_per_epoch}): {described}; stopping")
        for name in list(values):
            if name in self._LOSS_KEYS:
                values[name] /= self.world
            elif name.endswith("@count"):
                count = values.pop(name)
                base = name.removesuffix("@count")
                values[base] = values[base] / count if count else float("nan")
            elif name.startswith("backbone_grad_norm_"):
                values[name] = math.sqrt(values[name])
        return {**values, **{k: v for k, v in row.items() if not isinstance(v, torch.Tensor) and k != "stop"}}

    _LOSS_KEYS = frozenset({"loss", "mim", "distill", "distill_cls", "distill_patch", "contrast"})

    def _watch_collapse(self, row: dict, report: bool = True) -> None:
        for key, name in (("teacher_entropy_cls", "teacher [CLS] distribution"),
                          ("teacher_entropy_patch", "teacher patch distribution")):  # fmt: skip
            if key in row:
                message = self.collapse.observe(name, row["step"], row[key])
                if message and report:
                    _log(message)

    # ------------------------------------------------------------------ step
    def _to_device(self, batch) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """A host batch from the loader -> (global views (V, B, 3, H, W) float, normalised; local views
        [(B, 3, h, w)] (empty unless L_distill uses them); masks (V, B, N) bool), on the device.

        The only place that knows the loader's host layout (:func:`mmc.pretrain.data.to_device`).
        """
        global_views, local_views, masks = to_device(batch, self.device)
        return global_views, (local_views if self.pcfg.loss.w_distill > 0 else []), masks

    def _choose_attention(self) -> None:
        """PyTorch's CPU flash-attention kernel is slow in 16-bit floats: use the explicit form there."""
        fused = not (self.device.type == "cpu" and self.amp_dtype is not None)
        if fused != self._fused_attention:
            for network in (self.student, self.teacher):
                if network is not None:
                    use_fused_attention(network, fused)
            self._fused_attention = fused

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _train_step(self, forward, batch, epoch: int) -> dict:
        """One optimiser step over this rank's part of the global batch, in micro-batches.

        Returns the step's values as device tensors (read on the host only when logged: no host
        synchronisation per step), the schedule values, and ``stop`` (SIGTERM on any rank).
        """
        pcfg, step = self.pcfg, self.step
        sched = pretrain_schedules(step, self.steps_per_epoch, pcfg)
        for group in self.optimizer.param_groups:
            group["lr"] = sched["lr"]
            if group["apply_wd"]:
                group["weight_decay"] = sched["wd"]
        torch.manual_seed(_step_seed(self.seed, step, self.rank))
        self._choose_attention()
        views, local_views, masks = self._to_device(batch)
        positions = micro_batch_positions(batch, self.micro_batch, self.device)  # from the host masks
        counts = GlobalCounts.of_masks(masks)
        micros = [slice(a * self.micro_batch, (a + 1) * self.micro_batch) for a in range(views.shape[1] // self.micro_batch)]
        keys_after_ema = self.teacher is not None and pcfg.contrast.keys_after_ema
        if keys_after_ema:  # MoCo v3's order: the teacher takes this step's student before it is used
            ema_update(self.teacher, self.student, sched["momentum"])
        teacher_out = self._teacher_pass(views, masks, micros, positions)
        diagnose = bool(pcfg.diagnostics.every_steps) and step % pcfg.diagnostics.every_steps == 0
        entropies = self._logged(step) and pcfg.loss.w_distill > 0
        row: dict = {}
        term_grads: dict[str, list[torch.Tensor]] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for a, part in enumerate(micros):
            last = a == len(micros) - 1
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    s_out = forward(views[:, part], masks[:, part], [v[part] for v in local_views] or None, positions[a])
                    t_out = teacher_out[a] if teacher_out else None
                    targets = None
                    if pcfg.loss.w_mim > 0:
                        targets = patchify(views[:, part].flatten(0, 1), pcfg.backbone.patch_size)  # (V*b, N, P)
                        targets = take_masked(targets, positions[a], 2)
                    micro_counts = dataclasses.replace(counts, key_offset=self.rank * views.shape[1] + part.start)
                    losses = mmc_loss(s_out, t_out, targets, masks[:, part], self.centers, sched["teacher_temp"], pcfg,
                                      micro_counts, entropies=entropies, positions=positions[a])  # fmt: skip
                for name in [k for k in losses if k.startswith("entropy_")]:  # (sum, "@count") pairs
                    _accumulate(row, f"teacher_{name}", losses.pop(name).detach())
                if diagnose:
                    self._term_gradients(losses, term_grads)
                self.scaler.scale(losses["loss"]).backward()
            for name, value in losses.items():
                _accumulate(row, name, value.detach())
        self._track_nonfinite(row, step)
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_(self.student.parameters(), pcfg.optim.clip_grad, pcfg.optim.clip_mode)
        if epoch < pcfg.distill.freeze_last_layer_epochs and hasattr(self.student, "dino_head"):
            self.student.dino_head.last.weight.grad = None  # DINO: the prototypes stay put (no update, no decay)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.teacher is not None:
            if not keys_after_ema:
                ema_update(self.teacher, self.student, sched["momentum"])
            if pcfg.loss.w_distill > 0:
                self._update_centers(teacher_out, views.shape[1], masks.shape[-1])
        for name, grads in term_grads.items():
            grads = dist_util.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / self.world
            row[f"backbone_grad_norm_{name}"] = grads.float().square().sum()  # sqrt after the host read
        if entropies:
            row["center_norm_cls"] = self.centers["cls"].norm()
            if pcfg.distill.mode == "patch":
                row["center_norm_patch"] = self.centers["patch"].norm()
        row["grad_norm"] = grad_norm.detach()
        row.update(sched)
        row["stop"] = dist_util.host_flag_any(self.stop_requested)
        return row

    @torch.no_grad()
    def _teacher_pass(
        self, views: torch.Tensor, masks: torch.Tensor, micros: list[slice], positions: list[torch.Tensor]
    ) -> list[dict] | None:
        """Teacher outputs of every micro-batch, before any student pass: the contrast keys of the
        whole global batch are all-gathered once and every micro-batch scores its queries against them."""
        if self.teacher is None:
            return None
        with self._autocast():
            outs = [self.teacher(views[:, part], masks[:, part], None, positions[a]) for a, part in enumerate(micros)]
        if self.pcfg.loss.w_contrast > 0:
            keys = torch.cat([o["key"] for o in outs], dim=1)  # (2, B_rank, d)
            keys = torch.stack([all_gather_cat(keys[0]), all_gather_cat(keys[1])])
            for o in outs:
                o["key"] = keys
        return outs

    @torch.no_grad()
    def _update_centers(self, teacher_out: list[dict], images: int, patches: int) -> None:
        """Both centres from float32 sums over every micro-batch and rank: one all-reduce."""
        momentum = self.pcfg.distill.center_momentum
        cls_sum = sum(o["dino_cls"].sum(dim=(0, 1), dtype=torch.float32) for o in teacher_out)
        patch_mode = self.pcfg.distill.mode == "patch"
        parts = [cls_sum] + ([sum(o["dino_patch_sum"] for o in teacher_out)] if patch_mode else [])
        totals = dist_util.all_reduce_sum(torch.stack(parts))
        cls_count = float(teacher_out[0]["dino_cls"].shape[0] * images * self.world)
        self.centers["cls"] = center_from_sum(self.centers["cls"], totals[0], cls_count, momentum)
        if patch_mode:
            self.centers["patch"] = center_from_sum(self.centers["patch"], totals[1], cls_count * patches, momentum)

    def _term_gradients(self, losses: dict, into: dict[str, list[torch.Tensor]]) -> None:
        """Add each weighted loss term's gradient on the backbone parameters (diagnostics)."""
        w = self.pcfg.loss
        weights = {"mim": w.w_mim, "distill_cls": w.w_distill, "distill_patch": w.w_distill, "contrast": w.w_contrast}
        params = [p for p in self.student.backbone.parameters() if p.requires_grad]
        for name, weight in weights.items():
            if name not in losses:
                continue
            scaled = self.scaler.scale(losses[name] * weight)
            grads = torch.autograd.grad(scaled, params, retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params, strict=True)]
            if self.scaler.is_enabled():
                inv = 1.0 / self.scaler.get_scale()
                torch._foreach_mul_(grads, inv)
            if name in into:
                torch._foreach_add_(into[name], grads)
            else:
                into[name] = grads

    def _track_nonfinite(self, row: dict, step: int) -> None:
        """Remember, on the device, the first step whose loss is not finite (read at the next log)."""
        values = {k: v for k, v in row.items() if k in self._LOSS_KEYS}
        finite = torch.isfinite(torch.stack([v.float() for v in values.values()])).all()
        if self._first_nonfinite is None:
            inf = torch.full((), float("inf"), device=finite.device)
            self._first_nonfinite = (inf, {k: torch.zeros_like(v, dtype=torch.float32) for k, v in values.items()})
        first_step, first_values = self._first_nonfinite
        new = ~finite & torch.isinf(first_step)
        first_step = torch.where(new, torch.full((), float(step), device=finite.device), first_step)
        first_values = {k: torch.where(new, v.float(), first_values[k]) for k, v in values.items()}
        self._first_nonfinite = (first_step, first_values)


    # ------------------------------------------------------------------ outputs
    def _export(self) -> None:
        """Copy the kept epoch checkpoints and the metrics from the state dir into ``out`` atomically."""
        self.out.mkdir(parents=True, exist_ok=True)
        for epoch in self.expected_epochs:
            source = self.state / "epochs" / ckpt_mod.epoch_name(epoch)
            if not source.exists():
                raise MMCError(f"{source}: epoch checkpoint missing from the resume state (was {self.state} edited?)")
            target = self.out / ckpt_mod.epoch_name(epoch)
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            self.rec.produced(target, sha256_file(target))
        with atomic_path(self.out / METRICS_NAME) as tmp:
            shutil.copyfile(self._metrics_path(), tmp)
        self.rec.produced(self.out / METRICS_NAME)
        _log(f"done: {self.total_steps} steps; checkpoints in {self.out}")


def _accumulate(row: dict, name: str, value: torch.Tensor) -> None:
    row[name] = row[name] + value if name in row else value
