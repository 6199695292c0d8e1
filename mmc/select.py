"""``mmc select``: choose the checkpoint of an MMC experiment that the evaluation uses (docs/workflow.md).

Policies: ``last`` (the last epoch) or ``best:<metric>``, the highest zero-shot metric on the
held-out selection dataset (``selection.dataset``, which config validation keeps disjoint from
every evaluation dataset: the test data never chooses the model). With ``init_checkpoint`` set,
pretraining is skipped and that file is the choice, once its architecture is checked against the
experiment's backbone. The result names the file, its sha256, the policy, every candidate's score
and the reason, in words.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from mmc.errors import MMCError

# best:<metric> -> the field of the evaluation summary (mmc.evaluation.summary.SegmentationSummary)
# holding that metric.
METRIC_KEYS = {"miou": "best_miou", "oracle_miou": "oracle_miou", "demo_miou": "miou_at_demo_tau"}
EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pth$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the workflow's YAML config file")
    parser.add_argument("--experiment", required=True, help="a key of `experiments`")
    parser.add_argument(
        "--checkpoints",
        required=True,
        help="the experiment's pretraining output directory (epoch_EEEE.pth files), or the "
        "init_checkpoint file when the experiment sets one",
    )
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument(
        "--seed", type=int, default=None, help="the training seed of the run selected from (recorded; one of `seeds`)"
    )
    parser.set_defaults(func=_main)


def check_request(cfg: Any, experiment: str, checkpoints: Path) -> None:
    """The arguments, checked before the job record opens: a mistyped one leaves no record behind."""
    if experiment not in cfg.experiments:
        raise MMCError(
            f"--experiment {experiment!r} is not a key of experiments (have: {sorted(cfg.experiments)})"
        )
    if cfg.experiments[experiment].init_checkpoint is None and not checkpoints.is_dir():
        raise MMCError(f"--checkpoints {checkpoints}: expected the pretraining output directory (epoch_EEEE.pth files)")


def kept_epochs(experiment_cfg: Any) -> list[int]:
    """Epochs whose checkpoints pretraining keeps: ``save_epochs`` within the run, and the last."""
    last = experiment_cfg.optim.epochs
    return sorted({e for e in experiment_cfg.checkpoint.save_epochs if e <= last} | {last})


def epoch_checkpoints(directory: Path, epochs: list[int]) -> dict[int, Path]:
    """The checkpoint file of each kept epoch; every one must be there."""
    if not directory.is_dir():
        raise MMCError(f"{directory}: expected the pretraining output directory (epoch_EEEE.pth files)")
    found = {
        int(m.group(1)): directory / p.name for p in directory.iterdir() if (m := EPOCH_FILE.match(p.name))
    }
    missing = [e for e in epochs if e not in found]
    if missing:
        names = ", ".join(f"epoch_{e:04d}.pth" for e in missing)
        raise MMCError(f"{directory}: missing checkpoint(s) {names} (kept epochs by config: {epochs})")
    return {e: found[e] for e in epochs}


def choose(policy: str, scores: dict[int, float | None]) -> tuple[int, str]:
    """The chosen epoch and the reason, from each candidate epoch's score (None under ``last``).

    Under ``best:<metric>`` a higher score wins; on a tie the later epoch wins (it saw more data),
    so the choice never depends on file-system order.
    """
    if not scores:
        raise MMCError("no candidate checkpoints to choose from")
    if policy == "last":
        epoch = max(scores)
        return epoch, f"policy last: the checkpoint of the last kept epoch ({epoch})"
    metric = policy.split(":", 1)[1]
    if any(s is None for s in scores.values()):
        raise MMCError(f"policy {policy}: every candidate needs a score")
    epoch = max(scores, key=lambda e: (scores[e], e))
    others = ", ".join(f"epoch {e}: {scores[e]:.4f}" for e in sorted(scores) if e != epoch)
    reason = (
        f"policy {policy}: highest {metric} on the selection dataset ({scores[epoch]:.4f} at epoch {epoch}"
    )
    return epoch, reason + (f"; {others})" if others else ")")


def score_checkpoint(cfg: Any, path: Path, metric: str) -> float:
    """Zero-shot ``metric`` of an MMC checkpoint on the held-out selection dataset."""
    from mmc.evaluation.segment import evaluate_checkpoint

    summary = evaluate_checkpoint(cfg, path, cfg.selection.dataset, fmt="mmc",
                                  label=f"select: {path.name} on {cfg.selection.dataset}")
    score = getattr(summary, METRIC_KEYS[metric])
    if score is None:
        raise MMCError(
            f"{path}: no object of the selection dataset {cfg.selection.dataset!r} was evaluated, so it "
            f"has no {metric} (are all objects below evaluation.min_object_patches?)"
        )
    return float(score)


def check_init_checkpoint(path: Path, experiment_cfg: Any, experiment: str) -> None:
    """``init_checkpoint`` must be an MMC checkpoint of the experiment's architecture: the evaluation
    builds the model from the experiment's ``backbone``."""
    from mmc.models import ARCH_KEYS, ViTArch, read_checkpoint

    key = f"experiments.{experiment}.init_checkpoint"
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "mmc" or not isinstance(ckpt.get("arch"), dict):
        raise MMCError(f"{key}: {path} is not an MMC checkpoint: expected a dict with format 'mmc' and its arch")
    expected = ViTArch.from_config(experiment_cfg.backbone).as_dict()
    wrong = [
        f"{k} {ckpt['arch'].get(k)} vs {expected[k]}"
        for k in ARCH_KEYS
        if ckpt["arch"].get(k) is None or float(ckpt["arch"][k]) != float(expected[k])
    ]
    if wrong:
        raise MMCError(
            f"{key}: {path} has another architecture than experiments.{experiment}.backbone "
            f"(file vs config: {', '.join(wrong)}): expected the same backbone"
        )


def select(cfg: Any, experiment: str, checkpoints: Path, seed: int | None = None) -> dict:
    """The selection record of ``experiment`` (see module docstring); ``seed``, the training seed of
    the run, is recorded."""
    from mmc.files import sha256_file

    if experiment not in cfg.experiments:
        raise MMCError(
            f"--experiment {experiment!r} is not a key of experiments (have: {sorted(cfg.experiments)})"
        )
    exp = cfg.experiments[experiment]
    policy = cfg.selection.policy
    if seed is not None and seed not in cfg.seeds:
        raise MMCError(f"--seed {seed} is not one of the config's seeds {list(cfg.seeds)}")
    record: dict[str, Any] = {"experiment": experiment, "seed": seed, "policy": policy, "selection_dataset": None}
    if exp.init_checkpoint is not None:
        init = Path(exp.init_checkpoint)
        if not init.is_file():
            raise MMCError(
                f"experiments.{experiment}.init_checkpoint: {init} does not exist or is not a file"
            )
        check_init_checkpoint(init, exp, experiment)
        sha = sha256_file(init)
        reason = "pretrain.init_checkpoint is set: pretraining was skipped and that file is used as is"
        candidates = [{"epoch": None, "path": str(init), "sha256": sha, "score": None}]
        return {
            **record,
            "checkpoint": str(init),
            "epoch": None,
            "sha256": sha,
            "reason": reason,
            "candidates": candidates,
        }
    files = epoch_checkpoints(checkpoints, kept_epochs(exp))
    scores: dict[int, float | None] = dict.fromkeys(files)
    if policy != "last":
        metric = policy.split(":", 1)[1]
        if metric not in METRIC_KEYS:
            raise MMCError(
                f"selection.policy: unknown metric {metric!r}: expected one of {sorted(METRIC_KEYS)}"
            )
        record["selection_dataset"] = cfg.selection.dataset
        scores = {epoch: score_checkpoint(cfg, path, metric) for epoch, path in files.items()}
    epoch, reason = choose(policy, scores)
    hashes = {e: sha256_file(p) for e, p in files.items()}
    candidates = [
        {"epoch": e, "path": str(p), "sha256": hashes[e], "score": scores[e]} for e, p in files.items()
    ]
    return {
        **record,
        "checkpoint": str(files[epoch]),
        "epoch": epoch,
        "sha256": hashes[epoch],
        "reason": reason,
        "candidates": candidates,
    }


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking
    from mmc.files import write_text_atomic

    cfg = config.load(args.config)
    check_request(cfg, args.experiment, Path(args.checkpoints))
    wildcards = {"experiment": args.experiment}
    if args.seed is not None:
        wildcards["seed"] = args.seed
    with tracking.job("select", cfg, wildcards=wildcards) as rec:
        record = select(cfg, args.experiment, Path(args.checkpoints), args.seed)
        rec.log_params({"selection": config.to_dict(cfg.selection), "experiment": args.experiment})
        rec.set_tags({"experiment": args.experiment, "selected_checkpoint_sha256": record["sha256"]})
        for candidate in record["candidates"]:
            rec.consumed(candidate["path"], candidate["sha256"])
            if candidate["score"] is not None:
                rec.log_metrics({"selection_score": candidate["score"]}, step=candidate["epoch"])
        if record["selection_dataset"] is not None:
            from mmc.data.digest import dataset_entry

            name = record["selection_dataset"]
            rec.read_data(name, dataset_entry(cfg.datasets[name]))
        write_text_atomic(args.out, json.dumps(record, indent=1) + "\n")
        rec.produced(args.out)
    print(f"{args.experiment}: {record['checkpoint']} ({record['reason']})")
    return 0
