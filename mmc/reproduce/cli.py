"""``mmc reproduce RUN_DIR``: re-execute a sample of a run's recorded jobs and compare their outputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _job_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of jobs, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run's results_dir (holds tracking/jobs), e.g. results/test")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sample", type=_positive, metavar="K",
                       help="re-execute K jobs, one per stage in turn (upstream first), the cheaper jobs of a "
                            "stage first, drawn with --seed (default: one job per stage)")
    which.add_argument("--jobs", type=_job_ids, default=[], metavar="ID,...",
                       help="re-execute these jobs: record names (segment-model=mmc-dataset=voc) or record ids")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--stage", action="append", default=[], metavar="NAME",
                        help="only jobs of this stage (repeatable); with --sample, K jobs of these stages")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="re-execute jobs whose working tree was dirty at the recorded commit anyway "
                             "(NOT an audit: the uncommitted changes that ran are unknown)")
    parser.add_argument("--repo", type=Path, help="git repository holding the recorded commits (default: the run's, "
                                                  "else the one of the running mmc)")
    parser.add_argument("--workdir", type=Path, help="where the scratch directory is made (default: the system's "
                                                     "temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (job folders and logs)")
    parser.add_argument("--timeout", type=float, help="stop a re-executed job after this many seconds (a failure)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the audit as an MLflow run")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import time

    from mmc.reproduce import run

    start = time.perf_counter()

    options = run.Options(
        run_dir=Path(args.run_dir), sample=args.sample, jobs=args.jobs, seed=args.seed, stages=args.stage,
        allow_dirty=args.allow_dirty, repo=args.repo, workdir=args.workdir, keep=args.keep, timeout=args.timeout,
        mlflow=not args.no_mlflow,
    )
    report = run.reproduce(options, argv=["mmc", *sys.argv[1:]] if sys.argv[1:2] == ["reproduce"] else None)
    width = max((len(j.name) for j in report.jobs), default=0)
    print(f"mmc reproduce {report.run_dir}: {len(report.jobs)} job(s), audit {report.reproduction_id[:8]}")
    for job in report.jobs:
        times = f"recorded {run._seconds(job.recorded_seconds)}, re-executed {run._seconds(job.reexecution_seconds)}"
        print(f"  {job.name:<{width}}  {job.verdict:<17} {times}")
        if job.reason and job.verdict != run.IDENTICAL:
            print(f"  {'':<{width}}  {job.reason}")
    print("time:")
    for line in run.timing_lines(report):
        print(f"  {line.removeprefix('- ')}")
    print(f"  with the reports and the MLflow run: {time.perf_counter() - start:.1f} s")
    print(f"report: {report.paths['markdown']} (and .json)")
    if report.mlflow.get("run_id"):
        print(f"MLflow: run {report.mlflow['run_id']} in {report.mlflow['uri']}")
    elif report.mlflow.get("note"):
        print(f"MLflow: {report.mlflow['note']}")
    if report.scratch:
        print(f"scratch directory kept: {report.scratch}")
    for job in report.jobs:
        if job.verdict not in (*run.AUDITED, run.SKIPPED):
            print(f"mmc reproduce: {job.verdict} {job.name}: {job.reason}", file=sys.stderr)
    return 0 if report.passed else 1
