"""``mmc provenance FILE``: the chain of jobs that produced a file, and whether it still holds.

Every job record lists the files it consumed and produced with their sha256. Starting from FILE,
find the job that produced it (by path, preferring the record whose output hash equals the file's
current hash; by hash alone when the file was moved or copied), then the producers of each of that
job's inputs, and so on. Every file met is hashed again on disk: a file that changed since the job
that recorded it is a MISMATCH (exit status 1); a file no longer on disk is only reported.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mmc import tracking
from mmc.errors import MMCError
from mmc.files import sha256_file


@dataclass
class FileCheck:
    path: str  # as the record wrote it
    absolute: str
    recorded: str
    on_disk: str | None
    producer: int | None = None  # index of the step that produced this version

    @property
    def state(self) -> str:
        if self.on_disk is None:
            return "MISSING"
        return "OK" if self.on_disk == self.recorded else "MISMATCH"


@dataclass
class Step:
    record: dict
    consumed: list[FileCheck] = field(default_factory=list)
    produced: list[FileCheck] = field(default_factory=list)


@dataclass
class Trace:
    target: str
    target_sha256: str | None
    steps: list[Step]

    def checks(self) -> list[FileCheck]:
        return [c for s in self.steps for c in (*s.consumed, *s.produced)]

    def mismatches(self) -> list[FileCheck]:
        unique = {(c.absolute, c.recorded): c for c in self.checks() if c.state == "MISMATCH"}
        return list(unique.values())


def _absolute(path: str, cwd: str | None) -> str:
    """Relative paths are relative to the job's working directory; where that folder is not on this
    machine (a copied or moved project), to the current one."""
    base = cwd if cwd and _is_dir(cwd) else os.getcwd()
    return os.path.normpath(os.path.join(base, path))


@functools.cache
def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


class RecordIndex:
    """All job records of a results folder, indexed by the files they produced."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.by_path: dict[str, list[dict]] = {}
        self.by_hash: dict[str, list[dict]] = {}
        for record in sorted(records, key=lambda r: r.get("end_time") or 0, reverse=True):
            for path, digest in record.get("files", {}).get("produced", {}).items():
                self.by_path.setdefault(_absolute(path, record.get("cwd")), []).append(record)
                self.by_hash.setdefault(digest, []).append(record)

    @classmethod
    def from_dir(cls, directory: Path) -> RecordIndex:
        from mmc.mlflow_store import read_records

        records, _ = read_records(directory)
        return cls([r for _, r in records])

    def producer(self, absolute: str, digest: str | None) -> dict | None:
        """The job that wrote this version of the file: same path and hash, else same hash, else same path."""
        by_path = self.by_path.get(absolute, [])
        for record in by_path:
            if digest and _produced_hash(record, absolute) == digest:
                return record
        if digest and self.by_hash.get(digest):
            return self.by_hash[digest][0]
        finished = [r for r in by_path if r.get("status") == "FINISHED"]
        return (finished or by_path or [None])[0]


def _produced_hash(record: Mapping, absolute: str) -> str | None:
    for path, digest in record.get("files", {}).get("produced", {}).items():
        if _absolute(path, record.get("cwd")) == absolute:
            return digest
    return None


class _Hasher:
    def __init__(self):
        self.cache: dict[str, str | None] = {}

    def __call__(self, absolute: str) -> str | None:
        if absolute not in self.cache:
            self.cache[absolute] = sha256_file(absolute) if os.path.isfile(absolute) else None
        return self.cache[absolute]


def trace(target: str | Path, index: RecordIndex) -> Trace:
    hasher = _Hasher()
    absolute = os.path.abspath(target)
    target_sha = hasher(absolute)
    first = index.producer(absolute, target_sha)
    if first is None:
        raise MMCError(f"{target}: no job record produced this file (looked for its path and sha256 "
                       f"in {len(index.records)} record(s))")
    steps: list[Step] = []
    seen: dict[str, int] = {}
    queue: deque[dict] = deque([first])
    while queue:
        record = queue.popleft()
        key = record.get("record_id") or id(record)
        if key in seen:
            continue
        seen[key] = len(steps)
        step = Step(record)
        steps.append(step)
        files = record.get("files", {})
        for direction, target_list in (("consumed", step.consumed), ("produced", step.produced)):
            for path, digest in files.get(direction, {}).items():
                abs_path = _absolute(path, record.get("cwd"))
                target_list.append(FileCheck(path, abs_path, digest, hasher(abs_path)))
        for check in step.consumed:
            parent = index.producer(check.absolute, check.recorded)
            if parent is not None and parent is not record:
                queue.append(parent)
    for step in steps:  # link each input to the step that produced it, now that all are numbered
        for check in step.consumed:
            parent = index.producer(check.absolute, check.recorded)
            if parent is not None and parent is not step.record:
                check.producer = seen.get(parent.get("record_id") or id(parent))
    return Trace(str(target), target_sha, steps)


# ----------------------------------------------------------------------------- printing
def _when(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_line(check: FileCheck) -> str:
    origin = f"  <- [{check.producer + 1}]" if check.producer is not None else ""
    line = f"      {check.state:<8} {check.path}  sha256 {check.recorded[:16]}"
    if check.state == "MISMATCH":
        line += f"  (on disk now {check.on_disk[:16]})"
    return line + origin


def render(result: Trace) -> str:
    lines = [f"Provenance of {result.target}"]
    if result.target_sha256 is None:
        lines.append("  (the file is not on disk any more)")
    lines.append("")
    for number, step in enumerate(result.steps, 1):
        rec, tags = step.record, step.record.get("tags", {})
        cfg = rec.get("config", {})
        wildcards = ", ".join(f"{k}={v}" for k, v in rec.get("wildcards", {}).items()) or "-"
        lines += [
            f"[{number}] job {rec.get('name')}  (stage {rec.get('stage')}, rule {rec.get('rule', rec.get('stage'))},"
            f" wildcards {wildcards})  {rec.get('status')}",
            f"    ran          {_when(rec.get('start_time'))} .. {_when(rec.get('end_time'))} on "
            f"{tags.get('mmc.host', '?')}" + (f", SLURM job {tags['slurm.job_id']}" if "slurm.job_id" in tags else ""),
            f"    invocation   {rec.get('invocation_id') or '-'}",
            f"    code         mmc {tags.get('mmc.version', '?')}, git {tags.get('mmc.git_commit', '?')}"
            f" (dirty: {tags.get('mmc.git_dirty', '?')})",
            f"    config       {cfg.get('hash') or '?'}  {cfg.get('path') or '-'}"
            + (f"  (snapshot {cfg['snapshot']})" if cfg.get("snapshot") else ""),
        ]
        data = {k: v for k, v in tags.items() if k.startswith("mmc.dataset")}
        lines += [f"    data         {k.removeprefix('mmc.')} {v}" for k, v in sorted(data.items())]
        env = [f"{k.removeprefix('mmc.')} {tags[k]}" for k in ("mmc.torch_version", "mmc.cuda_version",
                                                                "mmc.timm_version", "mmc.device") if k in tags]
        if env:
            lines.append(f"    software     {', '.join(env)}")
        if rec.get("command"):
            lines.append(f"    command      {' '.join(rec['command'])}")
        for title, checks in (("consumed", step.consumed), ("produced", step.produced)):
            if checks:
                lines.append(f"    {title}")
                lines += [_check_line(c) for c in checks]
        lines.append("")
    lines += _summary(result)
    return "\n".join(lines)


def _summary(result: Trace) -> list[str]:
    from mmc.dvc import dvc_md5
    from mmc.tracking import is_checkpoint

    tags = [s.record.get("tags", {}) for s in result.steps]
    data = sorted({f"{k.removeprefix('mmc.')} {v}" for t in tags for k, v in t.items() if k.startswith("mmc.dataset")})
    checkpoints = {}
    for check in result.checks():
        if is_checkpoint(check.path):
            md5 = dvc_md5(check.absolute + ".dvc")
            checkpoints[(check.path, check.recorded)] = f"{check.path} sha256 {check.recorded}" + (
                f" (DVC md5 {md5})" if md5 else "")
    configs = sorted({f"{s.record['config'].get('hash')} {s.record['config'].get('path') or '-'}"
                      for s in result.steps if s.record.get("config", {}).get("hash")})
    commits = sorted({f"{t.get('mmc.git_commit', '?')} (dirty: {t.get('mmc.git_dirty', '?')})" for t in tags})
    lines = ["Summary"]
    lines += [f"  data         {d}" for d in data] or ["  data         (no DVC hash recorded)"]
    lines += [f"  checkpoint   {c}" for c in checkpoints.values()] or ["  checkpoint   (none in the chain)"]
    lines += [f"  config       {c}" for c in configs]
    lines += [f"  code         git {c}" for c in commits]
    bad = result.mismatches()
    missing = sorted({c.path for c in result.checks() if c.state == "MISSING"})
    if missing:
        lines.append(f"  missing      {len(missing)} file(s) no longer on disk: {', '.join(missing)}")
    if bad:
        lines.append(f"  VERIFY FAILED: {len(bad)} file(s) changed since the job that recorded them:")
        lines += [f"    MISMATCH {c.path}: recorded {c.recorded}, on disk {c.on_disk}" for c in bad]
    else:
        lines.append(f"  verified     every file on disk matches its recorded sha256 ({len(result.checks())} checked)")
    return lines


def as_json(result: Trace) -> str:
    def check(c: FileCheck) -> dict:
        return {"path": c.path, "recorded_sha256": c.recorded, "on_disk_sha256": c.on_disk, "state": c.state,
                "producer_step": c.producer}

    steps = [{"record": s.record, "consumed": [check(c) for c in s.consumed], "produced": [check(c) for c in s.produced]}
             for s in result.steps]
    return json.dumps({"target": result.target, "target_sha256": result.target_sha256, "steps": steps,
                       "mismatches": [check(c) for c in result.mismatches()]}, indent=1)


# ----------------------------------------------------------------------------- command
def records_dir_for(target: Path, config_path: str | None, records: str | None) -> Path:
    if records:
        return Path(records)
    if config_path:
        from mmc import config

        return tracking.record_dir(config.load(config_path))
    for parent in Path(os.path.abspath(target)).parents:
        if (parent / "tracking" / "jobs").is_dir():
            return parent / "tracking" / "jobs"
    return Path("results") / "tracking" / "jobs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="any output: a table, a figure, a checkpoint, a summary")
    parser.add_argument("--config", help="config file whose results_dir holds the job records")
    parser.add_argument("--records", help="folder of job records (default: {results_dir}/tracking/jobs above FILE, "
                                          "else results/tracking/jobs)")
    parser.add_argument("--json", action="store_true", help="print the chain as JSON")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    target = Path(args.file)
    directory = records_dir_for(target, args.config, args.records)
    if not directory.is_dir():
        raise MMCError(f"{directory}: no job records folder (give --config or --records)")
    result = trace(target, RecordIndex.from_dir(directory))
    print(as_json(result) if args.json else render(result))
    if result.mismatches():
        print(f"mmc provenance: {len(result.mismatches())} file(s) do not match their recorded sha256",
              file=sys.stderr)
        return 1
    return 0

