"""Re-executing recorded jobs and judging them: the audit behind ``mmc reproduce``.

For each chosen job record: refuse what cannot be audited (the job failed; its code commit is
unknown, missing or was dirty; its inputs or data changed since; its config snapshot does not give
the recorded hash; it would write outside its working directory), else build a sandbox (a fresh
working directory with the recorded config snapshot at the recorded ``--config`` path, links to
the verified inputs, a mirror of the verified data folder, the recorded thread and cuBLAS settings,
and the code of the recorded commit in a temporary git worktree on ``PYTHONPATH``), run the recorded
``mmc`` command there, and compare every file it produced with the recorded sha256, then by value
(:mod:`mmc.reproduce.stages` says how per stage). The original run is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mmc import config, records, versions
from mmc.errors import MMCError
from mmc.files import sha256_file, write_text_atomic
from mmc.records import JobRecord
from mmc.reproduce import compare, sample, stages
from mmc.reproduce.sandbox import CodeCheckouts, DataMirrors, Refused, git_toplevel, inside, place_link

IDENTICAL, WITHIN, DIFFERENT, FAILED, REFUSED, SKIPPED = (
    "identical", "within tolerance", "different", "failed", "refused", "not re-executable")
AUDITED = (IDENTICAL, WITHIN)  # the verdicts that pass
REPORT_SUBDIR = "reproduce"  # under the run's results_dir
SOFTWARE_TAGS = ("mmc.version", "mmc.torch_version", "mmc.timm_version", "mmc.cuda_version")
# Asked of the recorded commit's own code, so a later schema cannot change the answer.
_CONFIG_HASH = "import sys; from mmc import config; print(config.config_hash(config.load(sys.argv[1])))"


@dataclass
class Options:
    run_dir: Path
    sample: int | None = None  # None: one job per stage
    jobs: list[str] = field(default_factory=list)
    seed: int = 0
    stages: list[str] = field(default_factory=list)
    allow_dirty: bool = False
    repo: Path | None = None
    workdir: Path | None = None
    keep: bool = False
    timeout: float | None = None
    mlflow: bool = True


@dataclass
class Check:
    what: str
    recorded: str | None
    reproduced: str | None

    @property
    def same(self) -> bool:
        return self.recorded == self.reproduced


@dataclass
class JobResult:
    name: str
    record_id: str | None
    stage: str
    wildcards: dict[str, str]
    invocation_id: str | None
    record: str
    commit: str | None
    verdict: str = REFUSED
    reason: str | None = None
    recorded_seconds: float | None = None
    reexecution_seconds: float | None = None  # the whole process, start-up included
    rerun_record_seconds: float | None = None  # what the re-executed job's own record says
    tolerance: str | None = None
    files: list[compare.FileResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sandbox: str | None = None
    log_tail: str | None = None

    @property
    def first_difference(self) -> compare.FileResult | None:
        return next((f for f in self.files if not f.reproduced), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [f.to_dict() for f in self.files]
        data["checks"] = [{**asdict(c), "same": c.same} for c in self.checks]
        first = self.first_difference
        data["first_difference"] = first.path if first else None
        return data


# ----------------------------------------------------------------------------- choosing jobs
def select(all_records: list[JobRecord], options: Options) -> list[JobRecord]:
    known = sorted({r.stage for r in all_records})
    for name in options.stages:
        if name not in known:
            raise MMCError(f"--stage: no job of stage {name!r} in {options.run_dir} (stages there: {', '.join(known)})")
        found = stages.policy(name)
        if found is not None and found.not_reexecutable:
            raise MMCError(f"--stage: {name} is not re-executable: it {found.not_reexecutable}")
    pool = [r for r in all_records if not options.stages or r.stage in options.stages]
    if options.jobs:
        chosen: list[JobRecord] = []
        for wanted in options.jobs:
            matches = [r for r in pool if wanted in (r.name, r.record_id) or (
                len(wanted) >= 8 and (r.record_id or "").startswith(wanted))]
            if not matches:
                names = ", ".join(sorted(r.name for r in pool))
                raise MMCError(f"--jobs: no job record named {wanted!r} (or with that record id) in "
                               f"{options.run_dir / records.RECORD_SUBDIR} (have: {names})")
            chosen += [m for m in matches if m not in chosen]
        return chosen
    candidates = [r for r in pool if r.status == "FINISHED" and stages.reexecutable(r.stage)]
    count = options.sample if options.sample is not None else len({r.stage for r in candidates})
    return sample.choose(candidates, count, options.seed, list(stages.STAGES))


# ----------------------------------------------------------------------------- one job
def _config_argument(command: list[str]) -> tuple[int, str] | None:
    """Where ``--config`` stands in the command (index of its value) and its value."""
    for i, arg in enumerate(command):
        if arg == "--config" and i + 1 < len(command):
            return i + 1, command[i + 1]
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
    return None


def _within(path: str, base: Path) -> str | None:
    """``path`` relative to the job's working directory, or None when it lies outside it."""
    if os.path.isabs(path):
        relative = os.path.relpath(path, base)
        return relative if inside(relative) else None
    return path if inside(path) else None


class Audit:
    """One audit: shared scratch directory, code checkouts and data mirrors for every job."""

    def __init__(self, options: Options, reproduction_id: str, scratch: Path, repositories: list[Path]):
        self.options = options
        self.reproduction_id = reproduction_id
        self.scratch = scratch
        self.checkouts = CodeCheckouts(scratch, repositories)
        self.mirrors = DataMirrors(scratch)

    def job(self, record: JobRecord, index: int) -> JobResult:
        tags = record.tags
        result = JobResult(
            name=record.name, record_id=record.record_id, stage=record.stage, wildcards=dict(record.wildcards),
            invocation_id=record.invocation_id, record=str(record.path), commit=tags.get("mmc.git_commit"),
            recorded_seconds=None if sample.duration_s(record) == float("inf") else sample.duration_s(record),
        )
        try:
            self._run(record, result, self.scratch / f"job-{index:02d}")
        except Refused as e:
            result.verdict, result.reason = REFUSED, str(e)
        return result

    # ------------------------------------------------------------------ refuse or prepare
    def _run(self, record: JobRecord, result: JobResult, job_dir: Path) -> None:
        policy = stages.policy(record.stage)
        if policy is None:
            raise Refused(f"no reproduction declaration for stage {record.stage!r} in mmc.reproduce.stages "
                          f"(declared: {', '.join(stages.STAGES)})")
        if policy.not_reexecutable:
            result.verdict, result.reason = SKIPPED, f"stage {record.stage} is not re-executed: it {policy.not_reexecutable}"
            return
        if record.status != "FINISHED":
            raise Refused(f"the job did not finish (status {record.status}): there is no result to reproduce")
        if not record.produced:
            raise Refused("the record lists no produced file: there is nothing to compare")
        command = list(record.command)
        if len(command) < 2:
            raise Refused("the record has no command (record format version 1?)")
        base = record.base_dir
        tags = record.tags

        worktree = self._code(tags, result)
        raw = self._snapshot(record)
        for key in ("results_dir", "state_dir"):
            if os.path.isabs(str(raw.get(key) or "")):
                raise Refused(f"the config's {key} is an absolute path ({raw[key]}): the re-executed job would "
                              "write into the original run; audits need a relative one")
        unsafe = [p for p in record.produced if _within(p, base) is None]
        if unsafe:
            raise Refused(f"the job wrote outside its working directory {base}: {', '.join(unsafe)}")
        self._check_inputs(record)
        data_link = self._data(record, raw, policy) if policy.reads_data else None

        job_dir.mkdir(parents=True)
        result.sandbox = str(job_dir)
        argv = self._place_config(record, command, raw, job_dir, worktree)
        if data_link is not None:  # first: inputs under data_dir (manifests, fetched checkpoints) are in it
            place_link(job_dir, *data_link)
            dvc_file = base / f"{os.path.normpath(data_link[0])}.dvc"
            if dvc_file.is_file():
                place_link(job_dir, f"{os.path.normpath(data_link[0])}.dvc", dvc_file)
        for path in record.consumed:
            relative = _within(path, base)
            if relative is not None:
                place_link(job_dir, relative, Path(record.resolve(path)))
        argv = [sys.executable, "-m", "mmc", *(self._rebase(a, base, job_dir) for a in argv[1:])]
        self._execute(record, result, job_dir, argv, worktree)
        if result.verdict == FAILED:
            return
        self._judge(record, result, job_dir, raw, policy)

    def _code(self, tags: dict[str, str], result: JobResult) -> Path:
        commit, dirty = tags.get("mmc.git_commit"), tags.get("mmc.git_dirty")
        if not commit or commit == "unknown":
            raise Refused("the record names no git commit (mmc.git_commit): the code that ran is unknown")
        if dirty != "false":
            if not self.options.allow_dirty:
                raise Refused(f"the working tree was dirty when the job ran (mmc.git_dirty={dirty}): commit {commit} "
                              "is not the code that ran (--allow-dirty re-executes it at that commit anyway: "
                              "not an audit)")
            result.notes.append(f"NOT AN AUDIT: the working tree was dirty when the job ran (mmc.git_dirty={dirty}); "
                                f"re-executed at commit {commit} because of --allow-dirty")
        return self.checkouts.checkout(commit)

    def _snapshot(self, record: JobRecord) -> dict[str, Any]:
        cfg = record.config
        candidates = [record.resolve(cfg["snapshot"])] if cfg["snapshot"] else []
        if cfg["hash"]:
            candidates.append(str(self.options.run_dir / records.TRACKING_SUBDIR / "configs" / f"{cfg['hash']}.yaml"))
        path = next((Path(p) for p in candidates if os.path.isfile(p)), None)
        if path is None or not cfg["hash"]:
            raise Refused(f"no config snapshot of the job's resolved config (hash {cfg['hash']}) on disk "
                          f"(looked at {', '.join(candidates) or 'nothing: the record names none'})")
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise Refused(f"{path}: cannot read the config snapshot ({e})") from None
        if not isinstance(raw, dict):
            raise Refused(f"{path}: the config snapshot is not a mapping")
        return config.without_absent(raw)

    def _check_inputs(self, record: JobRecord) -> None:
        changed = []
        for path, recorded in record.consumed.items():
            absolute = record.resolve(path)
            if not os.path.isfile(absolute):
                changed.append(f"{path} (missing)")
                continue
            now = sha256_file(absolute)
            if now != recorded:
                changed.append(f"{path} (sha256 {now[:16]} now, recorded {recorded[:16]})")
        if changed:
            raise Refused(f"input(s) changed since the job recorded them: {'; '.join(changed)}")

    def _data(self, record: JobRecord, raw: dict[str, Any], policy: stages.StagePolicy) -> tuple[str, Path] | None:
        data_dir = str(raw.get("data_dir") or "data")
        recorded = record.tags.get("mmc.dataset_dvc_md5")
        if not recorded:
            raise Refused(f"the record has no DVC md5 of {data_dir} (mmc.dataset_dvc_md5): the data the "
                          f"{record.stage} job read cannot be verified (version it with `mmc data version`)")
        folder = Path(data_dir) if os.path.isabs(data_dir) else record.base_dir / data_dir
        self.mirrors.verify(folder, recorded)
        if os.path.isabs(data_dir):
            return None  # read in place, verified
        if not inside(data_dir):
            raise Refused(f"data_dir {data_dir} lies outside the job's working directory")
        return data_dir, self.mirrors.mirror(folder)

    def _place_config(self, record: JobRecord, command: list[str], raw: dict, job_dir: Path, worktree: Path) -> list[str]:
        found = _config_argument(command)
        if found is None:
            raise Refused("the recorded command has no --config argument")
        index, given = found
        relative = given if inside(given) else os.path.join(".mmc-reproduce", "config.yaml")
        target = job_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
        argv = list(command)
        argv[index] = relative if argv[index] == given else f"--config={relative}"
        done = subprocess.run([sys.executable, "-c", _CONFIG_HASH, relative], cwd=job_dir, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(worktree)})
        digest = done.stdout.strip()
        if done.returncode != 0 or digest != record.config["hash"]:
            why = f"gives hash {digest}" if done.returncode == 0 else (
                "is refused: " + (done.stderr.strip().splitlines() or ["?"])[-1])
            raise Refused(f"the config snapshot, loaded by the recorded commit's code, {why}; the job recorded "
                          f"config hash {record.config['hash']}")
        return argv

    @staticmethod
    def _rebase(arg: str, base: Path, job_dir: Path) -> str:
        """Absolute paths into the original working directory point into the sandbox instead."""
        prefix, sep, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        root = str(base)
        if value == root or value.startswith(root + os.sep):
            value = str(job_dir) + value[len(root):]
        return f"{prefix}{sep}{value}"

    # ------------------------------------------------------------------ run
    def _environment(self, record: JobRecord, result: JobResult, worktree: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", records.INVOCATION_ENV)}
        env["PYTHONPATH"] = str(worktree)
        env[records.INVOCATION_ENV] = self.reproduction_id
        recorded = {k.removeprefix("mmc.env."): v for k, v in record.tags.items() if k.startswith("mmc.env.")}
        if not recorded:
            result.notes.append("the record has no thread or cuBLAS settings (mmc.env.*, recorded since "
                                "mmc reproduce exists): the job ran with this shell's")
        for name, value in recorded.items():
            if name not in versions.REPRODUCIBILITY_ENV:
                continue
            if value == "unset":
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def _execute(self, record: JobRecord, result: JobResult, job_dir: Path, argv: list[str], worktree: Path) -> None:
        log = job_dir / "job.log"
        env = self._environment(record, result, worktree)
        start = time.perf_counter()
        try:
            with open(log, "w") as handle:
                done = subprocess.run(argv, cwd=job_dir, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                      timeout=self.options.timeout, check=False)
            status: int | None = done.returncode
        except subprocess.TimeoutExpired:
            status = None
        result.reexecution_seconds = time.perf_counter() - start
        if status != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            result.verdict = FAILED
            result.reason = (f"the re-executed command ran past --timeout {self.options.timeout:g} s" if status is None
                             else f"the re-executed command exited with status {status}")
            result.log_tail = "\n".join(tail)

    # ------------------------------------------------------------------ judge
    def _judge(self, record: JobRecord, result: JobResult, job_dir: Path, raw: dict, policy: stages.StagePolicy) -> None:
        rerun_path = job_dir / str(raw.get("results_dir") or "results") / records.RECORD_SUBDIR / f"{record.name}.json"
        rerun_records, _ = records.read_records(rerun_path.parent) if rerun_path.parent.is_dir() else ([], [])
        rerun = next((r for r in rerun_records if r.path == rerun_path), None)
        tags, new = record.tags, (rerun.tags if rerun else {})
        if rerun is None:
            result.notes.append(f"the re-executed job wrote no record at {rerun_path}")
        else:
            result.rerun_record_seconds = sample.duration_s(rerun)
            result.checks = [
                Check("config hash", record.config["hash"], rerun.config["hash"]),
                Check("git commit", tags.get("mmc.git_commit"), new.get("mmc.git_commit")),
                *[Check(k.removeprefix("mmc."), tags.get(k), new.get(k)) for k in sorted(tags)
                  if k.startswith("mmc.dataset") and k in new],
                *[Check(k.removeprefix("mmc."), tags.get(k), new.get(k)) for k in SOFTWARE_TAGS if k in tags or k in new],
                *[Check(k.removeprefix("mmc."), tags.get(k), new.get(k)) for k in
                  ("mmc.device", "mmc.deterministic", "mmc.num_threads") if k in tags or k in new],
            ]
            extra = sorted(set(rerun.produced) - set(record.produced))
            if extra:
                result.notes.append(f"the re-executed job also produced: {', '.join(extra)}")
        on_gpu = any(str(t.get("mmc.device", "")).startswith("cuda") for t in (tags, new))
        tolerance = policy.tolerance if on_gpu else stages.EXACT
        result.tolerance = tolerance.describe() if on_gpu else "exact (both runs on CPU)"
        base = record.base_dir
        for path, digest in record.produced.items():
            relative = _within(path, base)
            original = Path(record.resolve(path))
            intact = original if original.is_file() and sha256_file(original) == digest else None
            result.files.append(compare.compare_file(
                path, stages.kind_of(path), digest, intact, job_dir / relative, tolerance, policy.ignored_fields(path)))
        outcomes = {f.outcome for f in result.files}
        if outcomes & {compare.DIFFERENT, compare.MISSING}:
            result.verdict = DIFFERENT
            first = result.first_difference
            result.reason = f"first differing file: {first.path}" + (
                f"; {first.difference.describe()}" if first.difference else "") + (f" ({first.note})" if first.note else "")
        elif compare.WITHIN in outcomes:
            result.verdict = WITHIN
        else:
            result.verdict = IDENTICAL


# ----------------------------------------------------------------------------- the whole audit
@dataclass
class Report:
    reproduction_id: str
    run_dir: str
    started: str
    command: list[str]
    seed: int
    sample: int | None
    stages: list[str]
    requested: list[str]  # --jobs
    jobs: list[JobResult]
    repositories: list[str]
    wall_seconds: float = 0.0
    scratch: str | None = None
    mlflow: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        verdicts = [j.verdict for j in self.jobs]
        return any(v in AUDITED for v in verdicts) and all(v in AUDITED or v == SKIPPED for v in verdicts)

    def totals(self) -> dict[str, float]:
        ran = [j for j in self.jobs if j.reexecution_seconds is not None]
        return {
            "recorded_seconds": sum(j.recorded_seconds or 0.0 for j in ran),
            "reexecution_seconds": sum(j.reexecution_seconds or 0.0 for j in ran),
            "rerun_record_seconds": sum(j.rerun_record_seconds or 0.0 for j in ran),
            "wall_seconds": self.wall_seconds,
            "jobs_run": len(ran),
        }

    def counts(self) -> dict[str, int]:
        return {verdict: sum(j.verdict == verdict for j in self.jobs)
                for verdict in (IDENTICAL, WITHIN, DIFFERENT, FAILED, REFUSED, SKIPPED)}

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "jobs"}
        data.update(jobs=[j.to_dict() for j in self.jobs], totals=self.totals(), counts=self.counts(),
                    passed=self.passed)
        return data


def _repositories(options: Options, chosen: list[JobRecord]) -> list[Path]:
    if options.repo is not None:
        top = git_toplevel(options.repo)
        if top is None:
            raise MMCError(f"--repo {options.repo}: not a git repository")
        return [top]
    found: list[Path] = []
    for folder in [*(r.base_dir for r in chosen), options.run_dir.resolve(), versions.CODE_ROOT]:
        top = git_toplevel(folder)
        if top is not None and top not in found:
            found.append(top)
    return found


def reproduce(options: Options, argv: list[str] | None = None) -> Report:
    start = time.perf_counter()
    jobs_dir = options.run_dir / records.RECORD_SUBDIR
    if not jobs_dir.is_dir():
        raise MMCError(f"{options.run_dir}: no job records under {records.RECORD_SUBDIR} (give the run's results_dir, "
                       "e.g. results/test)")
    all_records, _ = records.read_records(jobs_dir)
    if not all_records:
        raise MMCError(f"{jobs_dir}: no job records")
    chosen = select(all_records, options)
    reproduction_id = uuid.uuid4().hex
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mmc-reproduce-", dir=options.workdir))
    repositories = _repositories(options, chosen)
    audit = Audit(options, reproduction_id, scratch, repositories)
    report = Report(
        reproduction_id=reproduction_id, run_dir=str(options.run_dir),
        started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), command=list(argv or sys.argv),
        seed=options.seed, sample=options.sample, stages=list(options.stages), requested=list(options.jobs), jobs=[],
        repositories=[str(r) for r in repositories], scratch=str(scratch) if options.keep else None,
    )
    try:
        for index, record in enumerate(chosen):
            report.jobs.append(audit.job(record, index))
    finally:
        audit.checkouts.close()
        if not options.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    report.wall_seconds = time.perf_counter() - start
    _write(report, options, chosen)
    return report


def _write(report: Report, options: Options, chosen: list[JobRecord]) -> None:
    stamp = report.started.replace("-", "").replace(":", "")
    folder = options.run_dir / REPORT_SUBDIR
    markdown, as_json = folder / f"{stamp}-{report.reproduction_id[:8]}.md", folder / f"{stamp}-{report.reproduction_id[:8]}.json"
    report.paths = {"markdown": str(markdown), "json": str(as_json)}
    if options.mlflow:
        report.mlflow = _mlflow_target(options, chosen)
    write_text_atomic(markdown, render_markdown(report))
    write_text_atomic(as_json, json.dumps(report.to_dict(), indent=1))
    if report.mlflow.get("uri"):  # the reports are the run's artefacts; then they name the run
        try:
            report.mlflow["run_id"] = _log_to_mlflow(report, options, chosen, [markdown, as_json])
        except Exception as e:  # the audit itself is done and written; the store holds a copy of it
            report.mlflow = {"note": f"not logged to MLflow: {type(e).__name__}: {e}"[:500]}
        write_text_atomic(markdown, render_markdown(report))
        write_text_atomic(as_json, json.dumps(report.to_dict(), indent=1))


def _tracking_config(options: Options, chosen: list[JobRecord]) -> Any | None:
    """What ``mmc.mlflow_store`` needs of the run's config, from a snapshot (any schema version)."""
    from types import SimpleNamespace

    for record in chosen:
        snapshot = record.config["snapshot"]
        if not snapshot or not os.path.isfile(record.resolve(snapshot)):
            continue
        try:
            raw = yaml.safe_load(Path(record.resolve(snapshot)).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        tracking = raw.get("tracking") or {}
        return SimpleNamespace(
            results_dir=str(options.run_dir.resolve()), run_name=raw.get("run_name"),
            tracking=SimpleNamespace(enabled=tracking.get("enabled", True), uri=tracking.get("uri"),
                                     experiment=tracking.get("experiment", "mmc-repro"),
                                     max_artifact_mb=tracking.get("max_artifact_mb", 50)))
    return None


def _mlflow_target(options: Options, chosen: list[JobRecord]) -> dict[str, str]:
    cfg = _tracking_config(options, chosen)
    if cfg is None:
        return {"note": "not logged to MLflow: no config snapshot names the run's tracking store"}
    if not cfg.tracking.enabled:
        return {"note": "not logged to MLflow: tracking is disabled in the run's config"}
    from mmc import mlflow_store

    return {"uri": mlflow_store.store_uri(cfg), "experiment": cfg.tracking.experiment}


def _log_to_mlflow(report: Report, options: Options, chosen: list[JobRecord], artifacts: list[Path]) -> str:
    from mmc import mlflow_store

    cfg = _tracking_config(options, chosen)
    counts, totals = report.counts(), report.totals()
    tags = {"mmc.reproduction_id": report.reproduction_id, "mmc.reproduce.passed": str(report.passed).lower(),
            "mmc.reproduce.command": " ".join(report.command)}
    tags.update({f"mmc.reproduce.verdict.{j.name}": j.verdict for j in report.jobs})
    params = {"seed": str(report.seed), "sample": str(report.sample), "stages": ",".join(report.stages) or "all",
              "jobs": ",".join(j.name for j in report.jobs), "run_dir": report.run_dir}
    metrics = {f"jobs_{k.replace(' ', '_').replace('-', '_')}": v for k, v in counts.items()} | totals
    invocations = [j.invocation_id for j in report.jobs if j.invocation_id]
    return mlflow_store.log_reproduction(cfg, name=f"reproduce-{report.reproduction_id[:8]}", invocations=invocations,
                                         tags=tags, params=params, metrics=metrics, artifacts=artifacts)


# ----------------------------------------------------------------------------- Markdown
def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def timing_lines(report: Report) -> list[str]:
    totals = report.totals()
    if not totals["jobs_run"]:
        return [f"No job was re-executed; the audit took {report.wall_seconds:.1f} s."]
    overhead = report.wall_seconds - totals["reexecution_seconds"]
    return [
        f"- the {totals['jobs_run']} re-executed job(s) took {totals['recorded_seconds']:.1f} s in the run "
        "(their records: start to end of the job, process start-up excluded)",
        f"- re-executing them took {totals['reexecution_seconds']:.1f} s (whole processes; their own records: "
        f"{totals['rerun_record_seconds']:.1f} s)",
        f"- the audit took {report.wall_seconds:.1f} s in all: {overhead:.1f} s beyond the re-executions "
        "(hashing inputs and data, code checkout, config check, comparison)",
    ]


def render_markdown(report: Report) -> str:
    counts = report.counts()
    summary = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)
    lines = [
        f"# Reproduction of {report.run_dir}",
        "",
        f"Audit `{report.reproduction_id}` started {report.started}: `{' '.join(report.command)}`.",
        f"Jobs: {summary or 'none'}. Result: **{'PASSED' if report.passed else 'FAILED'}**.",
        (f"Jobs named: {', '.join(report.requested)}. " if report.requested else
         f"Sample: {report.sample if report.sample is not None else 'one job per stage'} (seed {report.seed}"
         + (f", stages {', '.join(report.stages)}" if report.stages else "") + "). ")
        + f"Code from: {', '.join(report.repositories) or '-'}.",
        "",
        "| job | stage | verdict | recorded | re-executed | note |",
        "|---|---|---|---|---|---|",
    ]
    for job in report.jobs:
        note = job.reason or (f"tolerance: {job.tolerance}" if job.verdict == WITHIN else "")
        lines.append(f"| {job.name} | {job.stage} | {job.verdict} | {_seconds(job.recorded_seconds)} | "
                     f"{_seconds(job.reexecution_seconds)} | {note.replace('|', '/')} |")
    lines += ["", "## Time", "", *timing_lines(report), ""]
    for job in report.jobs:
        lines += [f"## {job.name}", "", f"- verdict: **{job.verdict}**" + (f": {job.reason}" if job.reason else ""),
                  f"- record: `{job.record}` (invocation {job.invocation_id or '-'}, commit {job.commit or '-'})"]
        if job.tolerance:
            lines.append(f"- comparison: {job.tolerance}")
        for check in job.checks:
            mark = "same" if check.same else "DIFFERS"
            lines.append(f"- {check.what}: {check.reproduced or '-'} ({mark}" +
                         (f"; recorded {check.recorded or '-'})" if not check.same else ")"))
        lines += [f"- note: {note}" for note in job.notes]
        if job.files:
            lines += ["", "| file | outcome | detail |", "|---|---|---|"]
            for f in job.files:
                detail = " ".join(x for x in ((f.difference.describe() if f.difference and not f.reproduced else ""),
                                              f.note or "") if x)
                lines.append(f"| {f.path} | {f.outcome} | {detail.replace('|', '/')} |")
        if job.log_tail:
            lines += ["", "```", job.log_tail, "```"]
        lines.append("")
    if report.mlflow:
        where = (f"MLflow run {report.mlflow['run_id']} in {report.mlflow['uri']}" if report.mlflow.get("run_id")
                 else report.mlflow.get("note") or f"MLflow: {report.mlflow.get('uri')}")
        lines += [f"Logged: {where}.", ""]
    return "\n".join(lines)
