"""``mmc config``: print or check a resolved configuration.

Both apply exactly the rules the workflow applies when it is parsed (``mmc.config.resolve`` with
``check_inputs``): ``mmc config check F`` and ``snakemake -n --configfile F`` give the same verdict.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config (defaults filled in) or the error")
    show.add_argument("file", help="a YAML config file")
    show.set_defaults(func=_show)
    check = sub.add_parser("check", help="validate a config file; print nothing but errors")
    check.add_argument("file", help="a YAML config file")
    check.set_defaults(func=_check)
    docs = sub.add_parser("docs", help="write config/README.md (every section and key) from the schema")
    docs.add_argument("--out", help="the file to write (default: print the page)")
    docs.set_defaults(func=_docs)


def _show(args: argparse.Namespace) -> int:
    from mmc import config

    print(config.dump(config.load(args.file, check_inputs=True)), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    from mmc import config

    config.load(args.file, check_inputs=True)
    return 0


def _docs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmc import config_docs
    from mmc.files import write_text_atomic

    page = config_docs.current()
    if args.out:
        write_text_atomic(Path(args.out), page)
        print(f"mmc: wrote {args.out} from workflow/schemas/config.schema.yaml")
    else:
        print(page, end="")
    return 0
