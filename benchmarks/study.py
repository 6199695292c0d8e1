"""The CPU study's tools (docs/study.md): its sweep, and two tables of a finished run.

    python benchmarks/study.py [--base config/study.yaml] [--epochs 6] [--cores 2]   # the sweep
    python benchmarks/study.py --diagnostics config/study.yaml   # [CLS]/patch losses, entropies
    python benchmarks/study.py --paired config/study.yaml        # mmc vs each other model, paired

The sweep (docs/study.md#sweep): which small-scale settings let the [CLS] term learn?

One-at-a-time variations of the mmc experiment of ``--base`` over the settings that decide whether
the [CLS] self-distillation learns at this scale (prototypes K, teacher temperature and its
warm-up, centre momentum, teacher momentum) and over the loss weights. Every variant is a short
run (``--epochs``, one seed, the base's other settings), so the sweep is one ordinary workflow run:
this script writes its config (``{out}/sweep.yaml``: the variants as experiments, each model with
its initial weights as paired reference), runs ``snakemake`` on it, and joins two things per
variant into ``{out}/sweep.md``:

- the zero-shot mIoU on the **selection split** (``selection.dataset`` of the base; the evaluation
  split is never looked at) and its paired difference from the initial weights, with the tables'
  bootstrap intervals;
- the training diagnostics over the last epoch (mean of the logged steps): the [CLS] and patch
  distillation losses and the teacher's [CLS] entropy, each divided by ln K (1.0 = chance, a
  uniform teacher).

Rerunning reuses what the workflow already made (Snakemake reruns only what changed).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmc.config import deep_merge  # noqa: E402  (light: no torch)

# The sweep's starting point, written out so that the sweep does not change when config/study.yaml
# takes its conclusion: the demo's (DINO's) [CLS]-distillation settings, scaled to short runs.
SWEEP_BASE = {
    "distill": {"out_dim": 256, "teacher_temp": [0.04, 0.07], "teacher_temp_warmup_epochs": 2, "center_momentum": 0.9},
    "loss": {"w_mim": 1.0, "w_distill": 1.0, "w_contrast": 1.0},
    "optim": {"ema_momentum": [0.9, 1.0]},
}

# name -> (what it changes, override of SWEEP_BASE)
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("the starting point (SWEEP_BASE)", {}),
    "k64": ("K = 64 prototypes", {"distill": {"out_dim": 64}}),
    "k1024": ("K = 1024 prototypes", {"distill": {"out_dim": 1024}}),
    "tt04": ("teacher temperature 0.04, no warm-up", {"distill": {"teacher_temp": [0.04, 0.04]}}),
    "tt02": ("teacher temperature 0.02, no warm-up", {"distill": {"teacher_temp": [0.02, 0.02]}}),
    "tt07": ("teacher temperature 0.07, no warm-up", {"distill": {"teacher_temp": [0.07, 0.07]}}),
    "cm99": ("centre momentum 0.99", {"distill": {"center_momentum": 0.99}}),
    "cm50": ("centre momentum 0.5", {"distill": {"center_momentum": 0.5}}),
    "ema99": ("teacher momentum 0.99 -> 1", {"optim": {"ema_momentum": [0.99, 1.0]}}),
    "wc025": ("w_contrast = 0.25", {"loss": {"w_contrast": 0.25}}),
    "wd2": ("w_distill = 2", {"loss": {"w_distill": 2.0}}),
    "wm05": ("w_mim = 0.5", {"loss": {"w_mim": 0.5}}),
    # round 2, around the best of round 1 (a sharp teacher, tt02)
    "tt01": ("teacher temperature 0.01, no warm-up", {"distill": {"teacher_temp": [0.01, 0.01]}}),
    "tt005": ("teacher temperature 0.005, no warm-up", {"distill": {"teacher_temp": [0.005, 0.005]}}),
    "tt02w": ("teacher temperature 0.02 -> 0.04 (warm-up)", {"distill": {"teacher_temp": [0.02, 0.04]}}),
    "tt02_k1024": ("tt02 + K = 1024", {"distill": {"teacher_temp": [0.02, 0.02], "out_dim": 1024}}),
    "tt02_cm99": ("tt02 + centre momentum 0.99", {"distill": {"teacher_temp": [0.02, 0.02], "center_momentum": 0.99}}),
    "tt02_wd2": ("tt02 + w_distill = 2", {"distill": {"teacher_temp": [0.02, 0.02]}, "loss": {"w_distill": 2.0}}),
    "tt02_wc05": ("tt02 + w_contrast = 0.5", {"distill": {"teacher_temp": [0.02, 0.02]}, "loss": {"w_contrast": 0.5}}),
}


# the diagnostics shown, each divided by ln K: the [CLS] loss, the teacher's [CLS] entropy, the patch loss
DIAGNOSTICS = ("distill_cls", "teacher_entropy_cls", "distill_patch")


def sweep_config(base: dict, epochs: int, out: Path) -> dict:
    """The sweep's workflow config: the base config (the study's) with the variants of SWEEP_BASE
    as experiments, one seed, short runs, evaluated on the base's selection split only."""
    config = copy.deepcopy(base)
    mmc = deep_merge(config.get("experiments", {}).get("mmc", {}), SWEEP_BASE)
    select = config["selection"]["dataset"]
    seed = (config.get("seeds") or [config.get("seed", 0)])[0]
    config.update(
        run_name="study_sweep",
        results_dir=str(out),
        state_dir=f"state/{out.name}",
        seeds=[seed],
        experiments={name: deep_merge(mmc, override) for name, (_, override) in VARIANTS.items()},
        selection={"policy": "last", "dataset": None},
    )
    pretrain = config["pretrain"]
    pretrain["optim"] = {**pretrain.get("optim", {}), "epochs": epochs}
    pretrain["checkpoint"] = {**pretrain.get("checkpoint", {}), "save_epochs": []}
    config["models"] = {name: {"source": "experiment", "experiment": name, "reference": "init"} for name in VARIANTS}
    config["models"]["init"] = {"source": "experiment", "experiment": "base", "checkpoint": "initial"}
    config["evaluation"] = {**config["evaluation"], "datasets": [select]}
    config["dvc"] = {**config.get("dvc", {}), "checkpoint_dir": f"checkpoints/{out.name}", "version_results": False}
    return config


def last_epoch_means(metrics: Path) -> dict[str, float]:
    """Mean of each diagnostic over the logged steps of the run's last epoch (each row names its epoch)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tail = [r for r in rows if r["epoch"] == rows[-1]["epoch"]]
    keys = ("distill_cls", "distill_patch", "teacher_entropy_cls", "teacher_entropy_patch", "mim", "contrast")
    return {k: sum(r[k] for r in tail) / len(tail) for k in keys if all(k in r for r in tail)}


def _interval(row: dict, key: str, signed: bool = False) -> str:
    value, lo, hi = (100 * float(row[k]) for k in (key, f"{key}_lo", f"{key}_hi"))
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"


def sweep_table(out: Path, config_path: Path) -> str:
    from mmc import config as mmc_config

    cfg = mmc_config.load(config_path)
    dataset = cfg.evaluation.datasets[0]
    rows = {
        r["model"]: r
        for r in csv.DictReader((out / "tables" / "segmentation.csv").open())
        if r["dataset"] == dataset and r["seed"] == "all"
    }
    seed = cfg.seeds[0]
    lines = [
        f"| variant | change | mIoU (best τ) on {dataset} | Δ init | [CLS] loss / ln K | teacher [CLS] entropy / ln K | patch loss / ln K |",
        "|:---|:---|---:|---:|---:|---:|---:|",
    ]
    init = rows["init"]
    lines.append(f"| init | the initial weights | {_interval(init, 'best_miou')} | - | - | - | - |")
    for name, (change, _) in VARIANTS.items():
        exp = cfg.experiments[name]
        diag = last_epoch_means(out / "pretrain" / name / f"seed{seed}" / "train_metrics.jsonl")
        ln_k = math.log(exp.distill.out_dim)
        ratios = " | ".join(_over_ln_k([diag], key, ln_k) for key in DIAGNOSTICS)
        row = rows[name]
        lines.append(
            f"| {name} | {change} | {_interval(row, 'best_miou')} | {_interval(row, 'delta_best_miou', True)} | {ratios} |"
        )
    return "\n".join(lines) + "\n"


def diagnostics_table(config_path: Path) -> str:
    """Per experiment of a finished run (e.g. the study): the last epoch's [CLS] and patch losses
    and the teacher's [CLS] entropy, each / ln K, as the mean over the run's seeds (min-max)."""
    from mmc import config as mmc_config

    cfg = mmc_config.load(config_path)
    lines = [
        "| experiment | seeds | [CLS] loss / ln K | teacher [CLS] entropy / ln K | patch loss / ln K |",
        "|:---|---:|---:|---:|---:|",
    ]
    for name, exp in cfg.experiments.items():
        per_seed = [
            last_epoch_means(Path(cfg.results_dir) / "pretrain" / name / f"seed{s}" / "train_metrics.jsonl")
            for s in cfg.seeds
        ]
        if exp.loss.w_distill == 0:  # the term is not trained: its value says nothing
            cells = " | ".join("-" for _ in DIAGNOSTICS)
        else:
            cells = " | ".join(_over_ln_k(per_seed, key, math.log(exp.distill.out_dim)) for key in DIAGNOSTICS)
        lines.append(f"| {name} | {len(per_seed)} | {cells} |")
    return "\n".join(lines) + "\n"


def paired_table(config_path: Path, model: str = "mmc") -> str:
    """``model`` against every other model of a finished run, on each evaluation dataset: the
    difference in mIoU (best τ) over the same objects with its paired bootstrap interval, seed by
    seed (experiments sharing a seed share their initial weights), exactly as ``mmc tables``
    computes a reference's Δ; the run's own tables compare each model with one reference only."""
    from mmc import config as mmc_config
    from mmc.tables import BootstrapSettings, read_runs, segmentation_rows

    cfg = mmc_config.load(config_path)
    summaries = sorted(Path(cfg.results_dir, "segment").glob("**/summary.json"))
    runs = read_runs(summaries, [p.with_name("objects.parquet") for p in summaries])
    settings = BootstrapSettings(cfg.tables.resamples, cfg.tables.resample_seed, cfg.tables.confidence)
    lines = [
        f"| dataset | {model} minus | Δ mIoU (best τ) [95 % interval] | ± across seeds | objects |",
        "|:---|:---|---:|---:|---:|",
    ]
    for dataset in cfg.evaluation.datasets:
        for other in cfg.models:
            if other == model:
                continue
            rows = segmentation_rows(runs, {model: other}, settings, [model], [dataset])
            row = rows[rows["seed"].astype(str) == "all"].iloc[0]
            sd = row["delta_best_miou_seed_sd"]
            spread = "-" if sd != sd else f"{100 * sd:.1f}"  # NaN: one pair
            lines.append(f"| {dataset} | {other} | {_interval(row, 'delta_best_miou', True)} | {spread} | {row['n_paired']} |")
    return "\n".join(lines) + "\n"


def _over_ln_k(per_seed: list[dict[str, float]], key: str, ln_k: float) -> str:
    """A diagnostic / ln K: the mean over seeds, and (min-max) when there are several."""
    values = [d[key] / ln_k for d in per_seed if key in d]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{mean:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="config/study.yaml")
    parser.add_argument("--epochs", type=int, default=6, help="length of every variant's run")
    parser.add_argument("--out", default="results/study_sweep")
    parser.add_argument("--cores", default="2")
    parser.add_argument("--table-only", action="store_true", help="print the table of a finished sweep")
    parser.add_argument(
        "--diagnostics", metavar="CONFIG",
        help="print the training diagnostics of the finished run of CONFIG (e.g. config/study.yaml) and stop",
    )  # fmt: skip
    parser.add_argument("--paired", metavar="CONFIG", help="print mmc against every other model of the finished run of CONFIG and stop")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    if args.diagnostics:
        print(diagnostics_table(Path(args.diagnostics)), end="")
        return 0
    if args.paired:
        print(paired_table(Path(args.paired)), end="")
        return 0
    out = Path(args.out)
    config_path = out / "sweep.yaml"
    if not args.table_only:
        base = yaml.safe_load(Path(args.base).read_text())
        out.mkdir(parents=True, exist_ok=True)
        tmp = config_path.with_suffix(".yaml.tmp")
        tmp.write_text(
            f"# written by benchmarks/study.py from {args.base} (--epochs {args.epochs}); do not edit\n"
            + yaml.safe_dump(sweep_config(base, args.epochs, out), sort_keys=False)
        )
        os.replace(tmp, config_path)
        subprocess.run(["snakemake", "--configfile", str(config_path), "--cores", args.cores], check=True)
    table = sweep_table(out, config_path)
    (out / "sweep.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
