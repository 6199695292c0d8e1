"""``mmc report``: the one-page summary that heads the Snakemake HTML report.

It names the run and the config, the checkpoint selected for each experiment (file, sha256,
reason), and repeats the Markdown result tables. The HTML report itself is rendered afterwards by
``snakemake --report`` from the workflow's ``report()`` outputs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmc.errors import MMCError


def summary_markdown(cfg: Any, config_file: str, selections: Sequence[dict], tables: Sequence[str]) -> str:
    lines = [f"# {cfg.run_name}", "", f"Configuration: `{config_file}`.", ""]
    if selections:
        lines += [
            "## Selected checkpoints",
            "",
            "| experiment | checkpoint | sha256 | reason |",
            "|---|---|---|---|",
        ]
        for s in selections:
            lines.append(
                f"| {s['experiment']} | `{s['checkpoint']}` | `{s['sha256'][:12]}` | {s['reason']} |"
            )
        lines.append("")
    lines += ["## Results", ""]
    for table in tables:
        lines += [table.strip(), ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the workflow's YAML config file")
    parser.add_argument("--selections", nargs="*", default=[], help="JSON files of mmc select")
    parser.add_argument("--tables", nargs="+", required=True, help="Markdown tables of mmc tables")
    parser.add_argument("--out", required=True, help="the Markdown file to write")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config, tracking
    from mmc.files import require_files, write_text_atomic

    cfg = config.load(args.config)
    require_files(args.selections, "--selections")
    require_files(args.tables, "--tables")
    with tracking.job("report", cfg) as rec:
        selections, tables = [], []
        for path in args.selections:
            try:
                selections.append(json.loads(Path(path).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise MMCError(f"{path}: cannot read a selection record ({e})") from None
            rec.consumed(path)
        for path in args.tables:
            tables.append(Path(path).read_text())
            rec.consumed(path)
        write_text_atomic(args.out, summary_markdown(cfg, args.config, selections, tables))
        rec.produced(args.out)
    print(args.out)
    return 0
