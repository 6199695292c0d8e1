"""The ``mmc`` command line: one subcommand per pipeline stage.

Each stage module defines ``add_arguments(parser)`` (which sets ``func``) and keeps heavy imports
(torch, timm, mlflow) inside the functions that need them, so ``mmc --help`` stays fast: only the
module of the chosen subcommand is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mmc import __version__
from mmc.errors import MMCError

# name -> (module defining add_arguments, one-line help). The order is the pipeline's.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("mmc.config_cli", "show or check a resolved configuration"),
    "data": ("mmc.data.cli", "make, download and inspect datasets"),
    "pretrain": ("mmc.pretrain.cli", "pretrain a ViT with MMC (masked modelling, self-distillation, contrast)"),
    "select": ("mmc.select", "choose the checkpoint of an MMC experiment to evaluate"),
    "publish": ("mmc.publish", "copy a selected checkpoint to checkpoints/E/seedS.pth, dvc add and push it"),
    "segment": ("mmc.evaluation.segment", "zero-shot prompt-patch segmentation of one model on one dataset"),
    "similarity": ("mmc.evaluation.similarity", "intra/inter-object similarity of one model on one dataset"),
    "tables": ("mmc.tables", "paper-style comparison tables (CSV, Markdown, LaTeX)"),
    "figures": ("mmc.figures", "mIoU-vs-threshold curves, similarity histograms, qualitative overlays"),
    "report": ("mmc.report", "the one-page summary of a run (selected checkpoints and tables)"),
    "track": ("mmc.track_cli", "start a workflow invocation; load job records into MLflow"),
    "pipeline-info": ("mmc.pipeline_info", "write results/pipeline_info: config, versions, rule graph, trace"),
    "provenance": ("mmc.provenance", "trace an output file back to its jobs, inputs, configs and code; verify hashes"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmc",
        description="Masked Momentum Contrastive learning (MMC) and zero-shot prompt-patch evaluation of ViTs.",
    )
    parser.add_argument("--version", action="version", version=f"mmc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(sub)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _chosen_command(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        (parser if args.command is None else parser.parse_args([args.command, "--help"])).print_help()
        return 0 if args.command is None and argv == [] else 2
    try:
        return int(func(args) or 0)
    except MMCError as e:
        print(f"mmc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
