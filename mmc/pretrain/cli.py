"""``mmc pretrain``: train one MMC experiment (see docs/pretrain.md)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--experiment", required=True, help="a key of `experiments` in the config")
    parser.add_argument("--out", required=True, help="output directory: epoch_EEEE.pth and train_metrics.jsonl")
    parser.add_argument(
        "--state-dir",
        default=None,
        help="resume state directory (default {state_dir}/pretrain/EXPERIMENT, or .../EXPERIMENT/seedS with "
        "--seed; never inside --out)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the training seed, one of the config's `seeds` (default: the base `seed`)",
    )
    parser.epilog = "Exit status 75 means SIGTERM stopped the run after a resume checkpoint: rerun to resume."
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config
    from mmc.pretrain.train import run

    cfg = config.load(args.config)
    return run(cfg, args.experiment, args.out, args.state_dir, args.seed)
