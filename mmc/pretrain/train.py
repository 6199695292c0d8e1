"""The MMC pretraining loop (SPEC §1): one process, or DDP under ``torchrun``.

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
from mmc.errors import ConfigError, MMCError
from mmc.files import atomic_path, sha256_file
from mmc.pretrain import checkpoint as ckpt_mod
from mmc.pretrain import distributed as dist_util
from mmc.pretrain.data import PretrainDataset, make_run_loader, to_device
from mmc.pretrain.losses import mmc_loss, patchify, updated_center
from mmc.pretrain.model import arch_of, build_pair, ema_update, param_groups
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
            Trainer(cfg, pcfg, out, state, device, rec).fit()
        return 0
    except Preempted:
        _log(f"SIGTERM: resume checkpoint written to {state}; exiting with {EXIT_PREEMPTED} (rerun to resume)")
        return EXIT_PREEMPTED
    finally:
        if dist_util.is_distributed():
            torch.distributed.destroy_process_group()


# Keys that change how a run is executed or logged, not what it computes: a resume may differ in them.
EXECUTION_KEYS = frozenset({"data.num_workers", "checkpoint", "log_every_steps", "compile"})


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


class Trainer:
    def __init__(self, cfg, pcfg, out: Path, state: Path, device: torch.device, rec):
        self.cfg, self.pcfg, self.out, self.state, self.device, self.rec = cfg, pcfg, out, state, device, rec
        self.seed = int(cfg.seed)
        self.rank, self.world = dist_util.rank(), dist_util.world_size()
        self.is_main = self.rank == 0
        self.config_dict = config_mod.to_dict(pcfg)
        self.expected_epochs = _expected_epochs(pcfg)
        if pcfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(self.seed)  # identical initial weights on every rank
        self.dataset = PretrainDataset(pcfg, self.seed)
        self.batch_size = int(pcfg.optim.batch_size)
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
        k = pcfg.distill.out_dim
        self.centers = {"cls": torch.zeros(k, device=device), "patch": torch.zeros(k, device=device)}
        # fused AdamW: one kernel per parameter group instead of ~6 per tensor (CPU and CUDA)
        self.optimizer = torch.optim.AdamW(param_groups(self.student), lr=0.0, weight_decay=0.0, fused=True)
        self.amp_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[pcfg.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=pcfg.precision == "float16")
        self.step = 0
        self.stop_requested = False

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
                     "global_batch": self.batch_size, "num_images": len(self.dataset)},
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
            model = torch.nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        forward = torch.compile(model) if pcfg.compile else model
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.is_main, unit="step",
            dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )  # fmt: skip
        metrics_file = open(self._metrics_path(), "a") if self.is_main else None  # noqa: SIM115
        try:
            last = time.perf_counter()
            # one loader for the whole run: its workers start once, its sampler spans the epochs
            loader = make_run_loader(
                self.dataset, self.batch_size, self.seed, self.rank, self.world, self.step, self.total_steps,
                pcfg.data.num_workers, self.device,
            )  # fmt: skip
            for batch in loader:
                epoch = self.step // self.steps_per_epoch
                row = self._train_step(forward, batch, epoch)
                self.step += 1
                now = time.perf_counter()
                row["images_per_s"] = self.batch_size / max(now - last, 1e-9)
                last = now
                self._after_step(row, epoch, bar, metrics_file)
                if row["stop"]:
                    raise Preempted()  # _after_step wrote the resume checkpoint
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()

    def _after_step(self, row: dict, epoch: int, bar, metrics_file) -> None:
        step, every = self.step, self.pcfg.checkpoint.every_steps
        if self.is_main and ((step - 1) % self.pcfg.log_every_steps == 0 or step == self.total_steps):
            line = {"step": step - 1, "epoch": epoch, **{k: v for k, v in row.items() if k != "stop"}}
            metrics_file.write(json.dumps(line) + "\n")
            metrics_file.flush()
            self.rec.log_metrics({k: v for k, v in line.items() if k not in ("step", "epoch")}, step=step - 1)
        bar.update(1)
        bar.set_postfix(
            {k: f"{row[k]:.4g}" for k in ("loss", "mim", "distill", "contrast") if k in row}
            | {"img/s": f"{row['images_per_s']:.1f}"},
            refresh=False,
        )
        epoch_end = step % self.steps_per_epoch == 0
        if epoch_end and (epoch + 1) in self.expected_epochs:
            self._save_epoch(epoch + 1)
        if epoch_end or (every and step % every == 0) or (row["stop"] and not epoch_end):
            self._save_resume()

    def _to_device(self, batch):
        """Host batch -> (global views (V, B, 3, H, W) float normalised, [local views], masks (V, B, N)) on the device."""
        return to_device(batch, self.device)

    def _train_step(self, forward, batch, epoch: int) -> dict:
        pcfg, step = self.pcfg, self.step
        sched = pretrain_schedules(step, self.steps_per_epoch, pcfg)
        for group in self.optimizer.param_groups:
            group["lr"] = sched["lr"]
            if group["apply_wd"]:
                group["weight_decay"] = sched["wd"]
        torch.manual_seed(_step_seed(self.seed, step, self.rank))
        global_views, local_views, masks = self._to_device(batch)
        local_views = local_views if pcfg.loss.w_distill > 0 and local_views else None
        targets = None
        if pcfg.loss.w_mim > 0:
            targets = patchify(global_views.flatten(0, 1), pcfg.backbone.patch_size).unflatten(0, global_views.shape[:2])
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            s_out = forward(global_views, masks, local_views)
            t_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(global_views)
            losses = mmc_loss(s_out, t_out, targets, masks, self.centers, sched["teacher_temp"], pcfg)
        names = sorted(losses)
        values = torch.stack([losses[k].detach().float() for k in names])
        reduced = dist_util.all_reduce_sum(
            torch.cat([values, torch.tensor([float(self.stop_requested)], device=values.device)])
        )
        values = (reduced[:-1] / self.world).tolist()
        row = dict(zip(names, values, strict=True))
        if not all(math.isfinite(v) for v in values):
            parts = ", ".join(f"{k}={v:.6g}" for k, v in row.items())
            raise MMCError(f"non-finite loss at step {step} (epoch {epoch}): {parts}; stopping")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        clip = pcfg.optim.clip_grad
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip if clip else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.teacher is not None:
            ema_update(self.teacher, self.student, sched["momentum"])
            if pcfg.loss.w_distill > 0:
                dino = t_out["dino"]
                momentum = pcfg.distill.center_momentum
                self.centers["cls"] = updated_center(self.centers["cls"], dino[:, :, 0], momentum)
                if pcfg.distill.mode == "patch":
                    self.centers["patch"] = updated_center(self.centers["patch"], dino[:, :, 1:], momentum)
        row.update(sched)
        row["grad_norm"] = float(grad_norm)
        row["stop"] = bool(reduced[-1].item() > 0)
        return row

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
