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


def _show(args: argparse.Namespace) -> int:
    from mmc import config

    print(config.dump(config.load(args.file, check_inputs=True)), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    from mmc import config

    config.load(args.file, check_inputs=True)
    return 0
