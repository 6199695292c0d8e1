"""``mmc provenance FILE``: the chain of jobs that produced a file, and whether it still holds.

Every job record lists the files it consumed and produced with their sha256. Starting from FILE,
find the job that produced it (by path, preferring the record whose output hash equals the file's
current hash; by hash alone when the file was moved or copied), then the producers of each of that
job's inputs, and so on. Every file met is hashed again on disk: a file that changed since the job
that recorded it is a MISMATCH (exit status 1); a file no longer on disk is only reported.

The data the jobs read is checked too (exit status 1 naming the file): the images and labels of
each evaluation dataset are hashed again against the job's record (:mod:`mmc.data.digest`; files
the dataset's reader reads now but the job did not are reported as added), pretraining data
against its manifest hash or listing hash, and the data folder on disk against ``data.dvc``
(every file's md5, as DVC computes it, :func:`mmc.dvc.tree_changes`), whose md5 must still be the
one tagged on the job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mmc import records
from mmc.errors import MMCError
from mmc.files import sha256_file
from mmc.records import JobRecord


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
class DataCheck:
    """One dataset a job read (an entry of its record's ``data``), checked again."""

    name: str
    kind: str
    root: str
    digest: str
    problems: list[str]  # each names a file; empty: unchanged

    @property
    def state(self) -> str:
        return "CHANGED" if self.problems else "OK"


@dataclass
class Step:
    record: JobRecord
    consumed: list[FileCheck] = field(default_factory=list)
    produced: list[FileCheck] = field(default_factory=list)
    data: list[DataCheck] = field(default_factory=list)


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

    def data_problems(self) -> list[str]:
        """Every data problem of the chain, once each (several jobs read the same data)."""
        return list(dict.fromkeys(p for s in self.steps for d in s.data for p in d.problems))

    def failed(self) -> bool:
        return bool(self.mismatches() or self.data_problems())


class RecordIndex:
    """All job records of a results folder, indexed by the files they produced."""

    def __init__(self, jobs: list[JobRecord]):
        self.records = jobs
        self.by_path: dict[str, list[JobRecord]] = {}
        self.by_hash: dict[str, list[JobRecord]] = {}
        for record in sorted(jobs, key=lambda r: r.end_time or 0, reverse=True):
            for path, digest in record.produced.items():
                self.by_path.setdefault(record.resolve(path), []).append(record)
                self.by_hash.setdefault(digest, []).append(record)

    @classmethod
    def from_dir(cls, directory: Path) -> RecordIndex:
        return cls(records.read_records(directory)[0])

    def producer(self, absolute: str, digest: str | None) -> JobRecord | None:
        """The job that wrote this version of the file: same path and hash, else same hash, else same path."""
        by_path = self.by_path.get(absolute, [])
        for record in by_path:
            if digest and _produced_hash(record, absolute) == digest:
                return record
        if digest and self.by_hash.get(digest):
            return self.by_hash[digest][0]
        finished = [r for r in by_path if r.status == "FINISHED"]
        return (finished or by_path or [None])[0]


def _produced_hash(record: JobRecord, absolute: str) -> str | None:
    for path, digest in record.produced.items():
        if record.resolve(path) == absolute:
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
    queue: deque[JobRecord] = deque([first])
    while queue:
        record = queue.popleft()
        key = record.record_id or id(record)
        if key in seen:
            continue
        seen[key] = len(steps)
        step = Step(record)
        steps.append(step)
        for files, checks in ((record.consumed, step.consumed), (record.produced, step.produced)):
            for path, digest in files.items():
                abs_path = record.resolve(path)
                checks.append(FileCheck(path, abs_path, digest, hasher(abs_path)))
        for check in step.consumed:
            parent = index.producer(check.absolute, check.recorded)
            if parent is not None and parent is not record:
                queue.append(parent)
    for step in steps:  # link each input to the step that produced it, now that all are numbered
        for check in step.consumed:
            parent = index.producer(check.absolute, check.recorded)
            if parent is not None and parent is not step.record:
                check.producer = seen.get(parent.record_id or id(parent))
    data = _DataChecker()
    for step in steps:
        step.data = data.check(step.record)
    return Trace(str(target), target_sha, steps)


class _DataChecker:
    """Checks the data of every step once per distinct entry (many jobs read the same dataset)."""

    def __init__(self):
        self.done: dict[tuple, list[str]] = {}
        self.configs: dict[str, object] = {}

    def _config(self, record: JobRecord):
        """The resolved config the job ran with (its snapshot), or None."""
        snapshot = record.config.get("snapshot")
        if not snapshot:
            return None
        path = record.resolve(snapshot)
        if path not in self.configs:
            self.configs[path] = _load_snapshot(path)
        return self.configs[path]

    def _once(self, key: tuple, compute) -> list[str]:
        if key not in self.done:
            self.done[key] = compute()
        return self.done[key]

    def check(self, record: JobRecord) -> list[DataCheck]:
        from mmc.data.digest import check_entry

        cfg = self._config(record)
        checks = []
        for name, entry in sorted(record.data_entries.items()):
            datasets = getattr(cfg, "datasets", {}) or {}
            dataset = datasets.get(name) if entry.get("kind") == "dataset" else None
            key = ("entry", record.resolve(entry["root"]), entry.get("kind"), entry.get("digest"), name)
            problems = self._once(key, lambda e=entry, d=dataset: check_entry(e, record.base_dir, d))
            checks.append(DataCheck(name, str(entry.get("kind")), entry["root"], str(entry.get("digest")), problems))
        versioned = record.tags.get("mmc.dataset_dvc_md5")
        if versioned and cfg is not None:
            dvc_file = record.resolve(os.path.normpath(str(cfg.data_dir)) + ".dvc")
            problems = self._once(("dvc", dvc_file, versioned), lambda: _check_dvc(dvc_file, versioned))
            checks.append(DataCheck(os.path.basename(dvc_file), "dvc", dvc_file, versioned, problems))
        return checks


def _load_snapshot(path: str):
    """A config snapshot (the resolved config, written with every unset key as null) as a config, or None."""
    import yaml

    from mmc import config

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
        # the nulls that stand for absent keys go, as for `mmc reproduce`; nulls the schema allows stay
        return config.freeze(config.resolve(config.without_absent(raw), where=path))
    except (MMCError, OSError, yaml.YAMLError, TypeError, ValueError):
        return None


def _check_dvc(dvc_file: str, tagged: str) -> list[str]:
    """The data folder must still be the version the job was tagged with, and match it on disk."""
    from mmc.dvc import dvc_md5, tree_changes

    now = dvc_md5(dvc_file)
    if now is None:
        return [f"{dvc_file}: missing or unreadable (the job read data version {tagged})"]
    if now != tagged:
        return [f"{dvc_file}: now records {now}, the job read data version {tagged} (the data was versioned "
                "again since: rerun the job)"]
    return tree_changes(dvc_file)


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
        rec, tags = step.record, step.record.tags
        cfg = rec.config
        wildcards = ", ".join(f"{k}={v}" for k, v in rec.wildcards.items()) or "-"
        lines += [
            f"[{number}] job {rec.name}  (stage {rec.stage}, rule {rec.rule}, wildcards {wildcards})  {rec.status}",
            f"    ran          {_when(rec.start_time)} .. {_when(rec.end_time)} on "
            f"{tags.get('mmc.host', '?')}" + (f", SLURM job {tags['slurm.job_id']}" if "slurm.job_id" in tags else ""),
            f"    invocation   {rec.invocation_id or '-'}",
            f"    code         mmc {tags.get('mmc.version', '?')}, git {tags.get('mmc.git_commit', '?')}"
            f" (dirty: {tags.get('mmc.git_dirty', '?')})",
            f"    config       {cfg.get('hash') or '?'}  {cfg.get('path') or '-'}"
            + (f"  (snapshot {cfg['snapshot']})" if cfg["snapshot"] else ""),
        ]
        data = {k: v for k, v in tags.items() if k.startswith("mmc.dataset")}
        lines += [f"    data         {k.removeprefix('mmc.')} {v}" for k, v in sorted(data.items())]
        env = [f"{k.removeprefix('mmc.')} {tags[k]}" for k in ("mmc.torch_version", "mmc.cuda_version",
                                                                "mmc.timm_version", "mmc.device", "mmc.deterministic",
                                                                "mmc.num_threads") if k in tags]
        if env:
            lines.append(f"    software     {', '.join(env)}")
        if rec.command:
            lines.append(f"    command      {' '.join(rec.command)}")
        for title, checks in (("consumed", step.consumed), ("produced", step.produced)):
            if checks:
                lines.append(f"    {title}")
                lines += [_check_line(c) for c in checks]
        if step.data:
            lines.append("    data read")
            for d in step.data:
                lines.append(f"      {d.state:<8} {d.name} ({d.kind}) {d.root}  digest {d.digest[:16]}")
                lines += [f"        {problem}" for problem in d.problems]
        lines.append("")
    lines += _summary(result)
    return "\n".join(lines)


def _summary(result: Trace) -> list[str]:
    from mmc.dvc import dvc_md5

    tags = [s.record.tags for s in result.steps]
    data = sorted({f"{k.removeprefix('mmc.')} {v}" for t in tags for k, v in t.items() if k.startswith("mmc.dataset")})
    checkpoints = {}
    for check in result.checks():
        if records.is_checkpoint(check.path):
            md5 = dvc_md5(check.absolute + ".dvc")
            checkpoints[(check.path, check.recorded)] = f"{check.path} sha256 {check.recorded}" + (
                f" (DVC md5 {md5})" if md5 else "")
    configs = sorted({f"{s.record.config['hash']} {s.record.config['path'] or '-'}"
                      for s in result.steps if s.record.config["hash"]})
    commits = sorted({f"{t.get('mmc.git_commit', '?')} (dirty: {t.get('mmc.git_dirty', '?')})" for t in tags})
    lines = ["Summary"]
    lines += [f"  data         {d}" for d in data] or ["  data         (no DVC hash recorded)"]
    lines += [f"  checkpoint   {c}" for c in checkpoints.values()] or ["  checkpoint   (none in the chain)"]
    lines += [f"  config       {c}" for c in configs]
    lines += [f"  code         git {c}" for c in commits]
    bad = result.mismatches()
    missing = sorted({c.path for c in result.checks() if c.state == "MISSING"})
    data_bad = result.data_problems()
    data_checked = {(d.kind, d.root, d.digest) for s in result.steps for d in s.data}
    if missing:
        lines.append(f"  missing      {len(missing)} file(s) no longer on disk: {', '.join(missing)}")
    if bad:
        lines.append(f"  VERIFY FAILED: {len(bad)} file(s) changed since the job that recorded them:")
        lines += [f"    MISMATCH {c.path}: recorded {c.recorded}, on disk {c.on_disk}" for c in bad]
    if data_bad:
        lines.append(f"  VERIFY FAILED: the data the jobs read changed ({len(data_bad)} problem(s)):")
        lines += [f"    CHANGED {problem}" for problem in data_bad]
    if not bad and not data_bad:
        lines.append(f"  verified     every file on disk matches its recorded sha256 ({len(result.checks())} checked), "
                     f"and the data read ({len(data_checked)} dataset version(s)) is unchanged")
    return lines


def as_json(result: Trace) -> str:
    def check(c: FileCheck) -> dict:
        return {"path": c.path, "recorded_sha256": c.recorded, "on_disk_sha256": c.on_disk, "state": c.state,
                "producer_step": c.producer}

    steps = [{"record": s.record.data, "consumed": [check(c) for c in s.consumed], "produced": [check(c) for c in s.produced]}
             for s in result.steps]
    for step, s in zip(steps, result.steps, strict=True):
        step["data"] = [{"name": d.name, "kind": d.kind, "root": d.root, "digest": d.digest, "state": d.state,
                         "problems": d.problems} for d in s.data]  # fmt: skip
    return json.dumps({"target": result.target, "target_sha256": result.target_sha256, "steps": steps,
                       "mismatches": [check(c) for c in result.mismatches()],
                       "data_problems": result.data_problems()}, indent=1)


# ----------------------------------------------------------------------------- command
def records_dir_for(target: Path, config_path: str | None, records_dir: str | None) -> Path:
    if records_dir:
        return Path(records_dir)
    if config_path:
        from mmc import config

        return records.record_dir(config.load(config_path))
    for parent in Path(os.path.abspath(target)).parents:
        if (parent / records.RECORD_SUBDIR).is_dir():
            return parent / records.RECORD_SUBDIR
    return Path("results") / records.RECORD_SUBDIR


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
    for problem in result.data_problems():
        print(f"mmc provenance: data changed: {problem}", file=sys.stderr)
    return 1 if result.failed() else 0

