"""The ``mmc`` command line: one subcommand per pipeline stage.

One way to wire a command: :data:`COMMANDS` names the module that defines
``add_arguments(parser)``; it sets ``func`` to the module's ``_main(args)`` (or, for a command with
actions such as ``mmc data synthetic``, one subparser per action with ``func=_<action>``). That module
is the stage's own (``mmc.select``, ``mmc.evaluation.segment``), or a ``cli`` module beside a library
that other stages import (``mmc.config_cli``, ``mmc.track_cli``, ``mmc.data.cli``,
``mmc.pretrain.cli``) so that importing the library never imports argparse wiring. Heavy imports
(torch, timm, mlflow) stay inside the handlers, so ``mmc --help`` stays fast: only the module of
the chosen subcommand is imported.
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
    "plan": ("mmc.plan", "estimate a config's pretraining: FLOPs, GPU-hours, wall time, GPU memory, loader cores"),
    "pretrain": ("mmc.pretrain.cli", "pretrain a ViT with MMC (masked modelling, self-distillation, contrast)"),
    "select": ("mmc.select", "choose the checkpoint of an MMC experiment to evaluate"),
    "publish": ("mmc.publish", "copy a selected checkpoint to checkpoints/E/seedS.pth, dvc add and push it"),
    "segment": ("mmc.evaluation.segment", "zero-shot prompt-patch segmentation of one model on one dataset"),
    "similarity": ("mmc.evaluation.similarity", "intra/inter-object similarity of one model on one dataset"),
    "tables": ("mmc.tables", "paper-style comparison tables (CSV, Markdown, LaTeX)"),
    "figures": ("mmc.figures", "mIoU-vs-threshold curves, similarity histograms, qualitative overlays"),
    "explorer": ("mmc.explorer.cli", "an interactive prompt explorer page per evaluation dataset (HTML)"),
    "report": ("mmc.report", "the one-page summary of a run (selected checkpoints and tables)"),
    "track": ("mmc.track_cli", "start a workflow invocation; load job records into MLflow"),
    "pipeline-info": ("mmc.pipeline_info", "write results/pipeline_info: config, versions, rule graph, trace"),
    "share": ("mmc.share", "version the run's results folder with DVC and push it with its data and checkpoints"),
    "provenance": ("mmc.provenance", "trace an output file back to its jobs, inputs, configs and code; verify hashes"),
    "reproduce": ("mmc.reproduce.cli", "re-execute a sample of a run's recorded jobs; compare with the recorded outputs"),
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
    except OSError as e:
        # A write that no stage turned into an MMCError (the disk filled up): one line, not a traceback.
        from mmc.files import describe_free, write_failure

        if write_failure(e) is None:
            raise
        written = e.filename2 or e.filename  # a copy names its destination second
        print(f"mmc {args.command}: error: cannot write {written or 'a file'}: {e.strerror} "
              f"({describe_free(written or '.')})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
