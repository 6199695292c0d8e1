"""``mmc track``: open a workflow invocation (Snakemake ``onstart``) and load job records into MLflow
(``onsuccess``/``onerror``, one writer at a time)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start an invocation: new id in {results_dir}/tracking/invocation.json")
    start.add_argument("--config", required=True, help="a YAML config file")
    start.set_defaults(func=_start)
    load = sub.add_parser("load", help="load every job record not yet in the MLflow store")
    load.add_argument("--config", required=True, help="a YAML config file")
    load.add_argument("--status", choices=["finished", "failed", "killed"],
                      help="also close the current invocation's parent run with this status")
    load.set_defaults(func=_load)


def _start(args: argparse.Namespace) -> int:
    from mmc import config, mlflow_store

    cfg = config.load(args.config)
    if not cfg.tracking.enabled:
        return 0
    invocation = mlflow_store.start_invocation(cfg, config_path=args.config)
    name = mlflow_store.parent_run_name(cfg, invocation)
    where = (f"MLflow parent run {name} ({invocation['parent_run_id']}) on {cfg.tracking.uri}"
             if invocation.get("parent_run_id") else f"MLflow parent run {name} once the jobs are loaded")
    print(f"mmc: invocation {invocation['invocation_id']} started: {where}")
    return 0


def _load(args: argparse.Namespace) -> int:
    from mmc import config, mlflow_store

    cfg = config.load(args.config)
    if not cfg.tracking.enabled:
        return 0
    report = mlflow_store.load_records(cfg, status=args.status)
    uri = mlflow_store.store_uri(cfg)
    print(f"mmc: {report.summary()} -> {uri}")
    if report.experiment_id is not None:
        ui = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then "
        print(f"mmc: runs of experiment {cfg.tracking.experiment!r}: {ui}{mlflow_store.runs_url(cfg, report.experiment_id)}")
    for path in report.invalid:
        print(f"  unreadable record (left in place): {path}")
    for problem in report.failed:
        print(f"  not loaded (retried by the next load): {problem}")
    return 1 if report.failed else 0
