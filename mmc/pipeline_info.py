"""``mmc pipeline-info``: what an auditor needs to know about a run, in ``{results_dir}/pipeline_info/``.

- ``config.yaml``: the resolved configuration (every default filled in);
- ``software_versions.yaml``: Python, torch, CUDA, GPU model, snakemake and the SLURM executor
  plugin, DVC, MLflow, the git commit of the code, and every installed Python package;
- ``rulegraph.dot``: ``snakemake --rulegraph`` of the workflow (when snakemake can parse it);
- ``trace.csv``: one row per job from the ``benchmark:`` files under ``{results_dir}/benchmarks``
  (start, duration, max RSS, CPU time, ...);
- ``jobs.csv``: one row per job record (exact start/end, status, host, SLURM job id, device, commit);
- ``index.json``: what was written, what could not be and why, the report and tracking store paths
  (relative to the working directory: the file travels with the run folder).

The workflow runs it after the HTML report is rendered, so ``index.json`` says whether it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mmc import records
from mmc.files import atomic_path, write_text_atomic

TRACE_COLUMNS = ("benchmark", "rule", "wildcards", "jobid", "repeat", "start", "duration_s", "max_rss_mb",
                 "max_vms_mb", "max_uss_mb", "max_pss_mb", "io_in_mb", "io_out_mb", "mean_load", "cpu_time_s",
                 "threads")
# snakemake benchmark field -> trace column
_FIELDS = {"s": "duration_s", "max_rss": "max_rss_mb", "max_vms": "max_vms_mb", "max_uss": "max_uss_mb",
           "max_pss": "max_pss_mb", "io_in": "io_in_mb", "io_out": "io_out_mb", "mean_load": "mean_load",
           "cpu_time": "cpu_time_s", "jobid": "jobid", "rule_name": "rule", "threads": "threads",
           "wildcards": "wildcards"}


def _benchmark_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]


def collect_trace(benchmarks: Path) -> list[dict[str, Any]]:
    """One row per benchmark entry. Snakemake records no start time: it is the file's modification
    time (written when the job ends) minus the job's duration, so an estimate to the second."""
    rows = []
    for path in sorted(p for p in benchmarks.rglob("*") if p.suffix in (".jsonl", ".tsv", ".txt") and p.is_file()):
        relative = path.relative_to(benchmarks)
        ended = path.stat().st_mtime  # the end of the last repeat; repeats run one after another
        file_rows = []
        for repeat, entry in enumerate(_benchmark_rows(path)):
            row: dict[str, Any] = {"benchmark": str(relative), "repeat": repeat}
            for field, column in _FIELDS.items():
                value = entry.get(field)
                if value not in (None, "NA", "-"):
                    row[column] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            if "rule" not in row:  # plain (non-extended) format: the folder under benchmarks/ names the rule
                row["rule"] = relative.parts[0] if len(relative.parts) > 1 else relative.stem
            file_rows.append(row)
        for row in reversed(file_rows):
            with contextlib.suppress(ValueError):
                ended -= float(row.get("duration_s", 0))
            row["start"] = datetime.fromtimestamp(ended, tz=UTC).isoformat(timespec="seconds")
        rows.extend(file_rows)
    return rows


JOB_COLUMNS = ("name", "stage", "rule", "wildcards", "status", "start", "end", "duration_s", "host", "slurm_job_id",
               "device", "invocation_id", "git_commit", "config_hash")


def job_rows(records_dir: Path) -> list[dict[str, Any]]:
    """One row per job record: exact start/end times, where it ran, which code and config."""

    def iso(ms: int | None) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds") if ms else ""

    rows = []
    for rec in records.read_records(records_dir)[0] if records_dir.is_dir() else []:
        tags = rec.tags
        start, end = rec.start_time, rec.end_time
        rows.append({
            "name": rec.name, "stage": rec.stage, "rule": rec.rule,
            "wildcards": json.dumps(rec.wildcards, sort_keys=True), "status": rec.status,
            "start": iso(start), "end": iso(end),
            "duration_s": round((end - start) / 1000, 3) if start and end else "",
            "host": tags.get("mmc.host", ""), "slurm_job_id": tags.get("slurm.job_id", ""),
            "device": tags.get("mmc.device", ""), "invocation_id": rec.invocation_id or "",
            "git_commit": tags.get("mmc.git_commit", ""), "config_hash": rec.config["hash"] or "",
        })
    return sorted(rows, key=lambda r: (r["start"], r["name"] or ""))


def rule_graph(snakefile: Path, config_path: Path, timeout: int = 300) -> tuple[str | None, str]:
    """(dot text, note). ``--nolock``: this runs from ``onsuccess``, inside the locked workflow."""
    if not snakefile.is_file():
        return None, f"no Snakefile at {snakefile}"
    command = [sys.executable, "-m", "snakemake", "--rulegraph", "--nolock", "--snakefile", str(snakefile),
               "--configfile", str(config_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"`snakemake --rulegraph` did not finish in {timeout} s"
    start = done.stdout.find("digraph")
    if done.returncode != 0 or start < 0:
        return None, f"`snakemake --rulegraph` failed ({done.returncode}): {done.stderr.strip()[-1500:]}"
    return done.stdout[start:], f"from {' '.join(command[1:])}"


def write(cfg: Any, config_path: Path, snakefile: Path, report: Path | None, out: Path | None = None) -> dict:
    from mmc import config, mlflow_store, versions

    out = out or Path(cfg.results_dir) / "pipeline_info"
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"created": datetime.now(tz=UTC).isoformat(timespec="seconds"), "files": {}, "notes": {}}

    write_text_atomic(out / "config.yaml", config.dump(cfg))
    with atomic_path(out / "config_source.yaml") as tmp:
        shutil.copyfile(config_path, tmp)
    index["files"]["config"] = "config.yaml"
    index["files"]["config_source"] = "config_source.yaml"
    index["config_hash"] = config.config_hash(cfg)

    started = time.perf_counter()
    software = {"versions": versions.environment_versions(), "python_packages": versions.installed_packages()}
    write_text_atomic(out / "software_versions.yaml", yaml.safe_dump(software, sort_keys=False))
    index["files"]["software_versions"] = "software_versions.yaml"
    index["git_commit"] = software["versions"]["git_commit"]

    dot, note = rule_graph(snakefile, config_path)
    if dot is not None:
        write_text_atomic(out / "rulegraph.dot", dot)
        index["files"]["rulegraph"] = "rulegraph.dot"
    index["notes"]["rulegraph"] = note

    benchmarks = Path(cfg.results_dir) / "benchmarks"
    rows = collect_trace(benchmarks) if benchmarks.is_dir() else []
    with atomic_path(out / "trace.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRACE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    index["files"]["trace"] = "trace.csv"
    index["notes"]["trace"] = f"{len(rows)} job(s) from {benchmarks}" if rows else f"no benchmark files under {benchmarks}"

    jobs = job_rows(records.record_dir(cfg))
    with atomic_path(out / "jobs.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=JOB_COLUMNS)
        writer.writeheader()
        writer.writerows(jobs)
    index["files"]["jobs"] = "jobs.csv"
    index["notes"]["jobs"] = f"{len(jobs)} job record(s)"

    report = report or Path(cfg.results_dir) / "report.html"
    index["report"] = {"path": _relative(report), "exists": report.exists()}
    store = mlflow_store.store_uri(cfg)
    if store.startswith("sqlite:///"):  # a relative SQLite URI works from the working directory
        store = f"sqlite:///{_relative(store.removeprefix('sqlite:///'))}"
    index["tracking"] = {"store": store, "invocation_id": records.current_invocation(cfg).get("invocation_id")}
    index["paths"] = "relative to the working directory the workflow ran in (the repository root)"
    index["notes"] = {name: _without_cwd(note) for name, note in index["notes"].items()}
    index["seconds"] = round(time.perf_counter() - started, 3)
    write_text_atomic(out / "index.json", json.dumps(index, indent=1))
    return index


def _relative(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies inside it: index.json travels with
    the run folder (docs/sharing.md), so it names no folder of this machine."""
    absolute = Path(os.path.abspath(path))
    return os.path.relpath(absolute) if absolute.is_relative_to(Path.cwd()) else str(path)


def _without_cwd(text: str) -> str:
    return text.replace(f"{Path.cwd()}{os.sep}", "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a YAML config file")
    parser.add_argument("--snakefile", default="workflow/Snakefile", help="for the rule graph (default: %(default)s)")
    parser.add_argument("--report", help="the Snakemake HTML report of this run (default: {results_dir}/report.html)")
    parser.add_argument("--out", help="output folder (default: {results_dir}/pipeline_info)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mmc import config

    cfg = config.load(args.config)
    index = write(cfg, Path(args.config), Path(args.snakefile), Path(args.report) if args.report else None,
                  Path(args.out) if args.out else None)
    out = Path(args.out) if args.out else Path(cfg.results_dir) / "pipeline_info"
    print(f"wrote {', '.join(index['files'].values())} to {out}")
    for name, note in index["notes"].items():
        print(f"  {name}: {note}")
    return 0
