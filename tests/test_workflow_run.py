"""The real workflow, end to end, on a tiny version of config/test.yaml: locally, on a real SLURM
cluster, and interrupted during pretraining (SIGINT to snakemake; SIGKILL of the training process).

Every run is compared with one uninterrupted local run (the reference). The SLURM run goes to the
end: its tables, selection records and published checkpoints must be byte-identical. The
interrupted runs (to stay within the test budget) go as far as checkpoint selection, the stage
after the interrupted one: every kept epoch checkpoint and both selection records must be
byte-identical; everything downstream is a deterministic function of those files, which the
local-vs-SLURM comparison shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from slurm_support import SLURM_CI_ARGS, ci_profile, require_slurm
from workflow_helpers import (
    BIN,
    SNAKEFILE,
    job_counts,
    snakemake,
    snakemake_env,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow
RESULTS = "results/test"
COMPARED = [
    "tables/segmentation.csv",
    "tables/similarity.csv",
    "select/mmc/seed0.json",
    "select/mim_only/seed0.json",
]
# dvc.checkpoint_dir of config/test.yaml
PUBLISHED = ["checkpoints/test/mmc/seed0.pth", "checkpoints/test/mim_only/seed0.pth"]


def make_workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_config(path / "tiny.yaml", tiny_config())
    return path


def run_args(*extra: str) -> list[str]:
    return ["--configfile", "tiny.yaml", "--cores", "2", *extra]


# What the interrupted runs ask for: pretraining (interrupted) and the selection after it.
SELECTIONS = [f"{RESULTS}/select/mmc/seed0.json", f"{RESULTS}/select/mim_only/seed0.json"]


def assert_same_results(workdir: Path, reference: Path) -> None:
    for name in COMPARED:
        assert (workdir / RESULTS / name).read_bytes() == (reference / RESULTS / name).read_bytes(), name
    for name in PUBLISHED:
        assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(demo_run) -> Path:
    """One uninterrupted local run (conftest's demo project, shared with tests/test_reproduce.py)."""
    return demo_run


def test_local_run_and_noop_rerun(reference):
    expected = [f"{RESULTS}/{name}" for name in COMPARED] + PUBLISHED
    expected += [f"{RESULTS}/report/summary.md", f"{RESULTS}/figures/qualitative_synthetic_val.png"]
    assert [name for name in expected if not (reference / name).exists()] == []
    job_lines = [
        p.read_text().splitlines()[0] for p in (reference / RESULTS / "logs" / "pretrain").rglob("*.log")
    ]
    assert job_lines and all("slurm_job_id=none" in line for line in job_lines)  # local jobs, not SLURM
    # the data were versioned with DVC before anything read them, and every reader carries the hash
    data_md5 = yaml.safe_load((reference / "data.dvc").read_text())["outs"][0]["md5"]
    jobs = reference / RESULTS / "tracking" / "jobs"
    readers = sorted(jobs.glob("segment-*.json")) + sorted(jobs.glob("pretrain-*.json"))
    assert len(readers) == 5  # segment: mmc, init, colour; pretrain: mmc, mim_only
    for record in readers:
        assert json.loads(record.read_text())["tags"]["mmc.dataset_dvc_md5"] == data_md5, record.name
    start = time.perf_counter()
    done = snakemake(reference, *run_args(), code=reference)
    print(f"\nno-op rerun of the finished test workflow: {time.perf_counter() - start:.1f} s")
    assert "Nothing to be done" in done.stdout + done.stderr
    snakemake(reference, "--configfile", "tiny.yaml", "--report", "report.html", code=reference)
    html = (reference / "report.html").read_text()
    for name in ("segmentation.csv", "similarity.csv", "qualitative_synthetic_val.png", "summary.md"):
        assert name in html, f"{name} is missing from the HTML report"


def test_published_checkpoint_changed_with_its_time_kept_is_refused(reference):
    """Snakemake sees modification times only: a published checkpoint replaced by another of the same
    size, its old time put back, would be reused. The workflow refuses to start, naming it."""
    published = reference / PUBLISHED[0]
    original, before = published.read_bytes(), published.stat()
    other = bytearray(original)
    other[len(other) // 2] ^= 0xFF  # other bytes, the same size
    other = bytes(other)

    def put(data: bytes) -> None:  # a new file renamed over the old one (DVC may have linked it to its cache)
        fresh = published.with_name("fresh.pth")
        fresh.write_bytes(data)
        os.replace(fresh, published)
        os.utime(published, ns=(before.st_atime_ns, before.st_mtime_ns))

    put(other)
    try:
        refused = snakemake(reference, *run_args("-n"), check=False)
    finally:
        put(original)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and f"a published checkpoint changed since `mmc publish` wrote {PUBLISHED[0]}.dvc" in said
    assert f"modified {PUBLISHED[0]} (its modification time was kept)" in said
    # the original bytes back (a new inode): checked once by md5, then nothing to do
    assert "Nothing to be done" in snakemake(reference, *run_args("-n")).stdout


# ----------------------------------------------------------------------------- SLURM
@pytest.fixture(scope="module")
def slurm():
    require_slurm()


GPU_RULES = ("pretrain", "segment", "similarity")
CLUSTER_RULES = (*GPU_RULES, "select", "figures")


@pytest.mark.slurm
def test_slurm_run_equals_local_run(slurm, reference, tmp_path):
    workdir = make_workdir(tmp_path / "slurm")
    # the repository's profile with its node-size numbers scaled to the 2-CPU CI node
    profile = ci_profile(tmp_path / "profile")
    start = time.perf_counter()
    done = snakemake(workdir, "--configfile", "tiny.yaml", "--profile", str(profile), *SLURM_CI_ARGS, timeout=900)
    print(f"\nend-to-end run through SLURM: {time.perf_counter() - start:.1f} s")
    run_logs = "".join(p.read_text() for p in (workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", done.stdout + done.stderr + run_logs)
    logs = {
        p.relative_to(workdir / RESULTS / "logs"): p.read_text()
        for p in (workdir / RESULTS / "logs").rglob("*.log")
    }
    cluster_logs = {p: t for p, t in logs.items() if p.parts[0].removesuffix(".log") in CLUSTER_RULES}
    # pretrain and select: 2 experiments; segment and similarity: 3 models; and figures
    assert len(cluster_logs) == 2 * 2 + 2 * 3 + 1, sorted(map(str, cluster_logs))
    assert len(submitted) >= len(cluster_logs)
    for path, text in cluster_logs.items():
        info = re.match(r"job: host=\S+ slurm_job_id=(\S+) CUDA_VISIBLE_DEVICES=(\S+) cpus=(\S+)", text)
        assert info, f"{path}: no job line"
        assert info.group(1) in submitted, f"{path} ran outside SLURM: {info.group(0)}"
        # the job step got what the profile asks for: one GPU and cpus_per_gpu (scaled to 1) per GPU
        assert info.group(3) == "1", f"{path}: CPUs of the step: {info.group(0)}"
        if path.parts[0].removesuffix(".log") in GPU_RULES:
            assert re.fullmatch(r"\d+", info.group(2)), f"{path}: not one GPU: {info.group(0)}"
        else:
            assert info.group(2) == "unset", f"{path}: a GPU was allocated to a CPU rule"
    assert_same_results(workdir, reference)


# ----------------------------------------------------------------------------- resume
def start_snakemake(workdir: Path) -> subprocess.Popen:
    cmd = ["timeout", "-k", "10", "600", str(BIN / "snakemake"), "--snakefile", str(SNAKEFILE)]
    cmd += run_args(*SELECTIONS)
    log = open(workdir / "interrupted.log", "w")  # noqa: SIM115 (closed by the OS with the process)
    return subprocess.Popen(
        cmd, cwd=workdir, env=snakemake_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_resume_state(
    workdir: Path, experiment: str, process: subprocess.Popen, min_step: int = 4
) -> int:
    """Wait until pretraining of ``experiment`` has written a rolling checkpoint at step >= min_step."""
    state = workdir / "state" / "test" / "pretrain" / experiment / "seed0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = [
            int(m.group(1)) for p in state.glob("step_*.pth") if (m := re.match(r"step_(\d+)\.pth$", p.name))
        ]
        if steps and max(steps) >= min_step:
            return max(steps)
        assert process.poll() is None, (workdir / "interrupted.log").read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no resume checkpoint under {state} after 300 s")


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def assert_same_training(workdir: Path, reference: Path) -> None:
    kept = sorted(p.relative_to(reference) for p in (reference / RESULTS / "pretrain").rglob("epoch_*.pth"))
    assert (
        kept
        and sorted(p.relative_to(workdir) for p in (workdir / RESULTS / "pretrain").rglob("epoch_*.pth"))
        == kept
    )
    for name in [*kept, *SELECTIONS]:
        assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name


def rerun_and_check(workdir: Path, reference: Path, resumed: list[str]) -> None:
    start = time.perf_counter()
    done = snakemake(workdir, *run_args(*SELECTIONS), timeout=600)
    print(f"\nrerun after the interruption: {time.perf_counter() - start:.1f} s")
    counts = job_counts(done.stdout + done.stderr)
    assert "synthetic" not in counts, f"a finished stage was redone: {counts}"
    for experiment in resumed:
        log = (workdir / RESULTS / "logs" / "pretrain" / experiment / "seed0.log").read_text()
        step = re.search(r"resuming from \S+ \(step (\d+) of", log)
        assert step and int(step.group(1)) > 0, f"pretrain {experiment} did not resume:\n{log[-2000:]}"
    assert_same_training(workdir, reference)


def test_resume_after_sigint_to_snakemake(reference, tmp_path):
    workdir = make_workdir(tmp_path / "sigint")
    process = start_snakemake(workdir)
    wait_for_resume_state(workdir, "mmc", process)
    # SIGINT to snakemake alone (not to `timeout`, which would SIGKILL it 10 s later): it stops its
    # jobs itself and releases its lock.
    snakemake_pid = next(p for p in descendants(process.pid) if "snakemake --snakefile" in command_line(p))
    os.kill(snakemake_pid, signal.SIGINT)
    assert process.wait(timeout=120) != 0
    assert not descendants(process.pid)
    rerun_and_check(workdir, reference, resumed=["mmc"])


def test_resume_after_sigkill_of_training(reference, tmp_path):
    workdir = make_workdir(tmp_path / "sigkill")
    process = start_snakemake(workdir)
    wait_for_resume_state(workdir, "mmc", process)
    trainers = [
        p
        for p in descendants(process.pid)
        if re.search(r"mmc pretrain .*--experiment mmc\b", command_line(p))
    ]
    assert trainers, "the training process of experiment mmc was not found"
    for pid in trainers:
        os.kill(pid, signal.SIGKILL)
    assert process.wait(timeout=300) != 0  # the job failed; snakemake finished the others and stopped
    # Snakemake stops the other running jobs when one fails: those resume too (not asserted).
    rerun_and_check(workdir, reference, resumed=["mmc"])


# ----------------------------------------------------------------------------- the report in a browser
def _click(browser, locate: str, arg: str, until: str | None, attempts: int = 3) -> None:
    """A real click at the centre of the element ``locate`` finds (scrolled into view first); with
    ``until``, clicked again (re-located) while ``until`` is not true 10 s after a click: a click
    while the report's app is still laying the page out lands where the element was, not where it is."""
    from browser import WebDriverError

    for attempt in range(attempts):
        rect = browser.run(
            locate + " e.scrollIntoView({block: 'center'});"
            "const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];",
            arg,
        )
        browser.click(*rect)
        if until is None:
            return
        try:
            browser.wait_for(until, timeout=10.0)
            return
        except WebDriverError:
            if attempt == attempts - 1:
                raise


def click_text(browser, text: str, until: str | None = None) -> None:
    """A real click on the innermost visible element whose text is ``text`` (see :func:`_click`)."""
    browser.wait_for(
        "return Array.from(document.querySelectorAll('body *')).some(e => e.textContent.trim() === arguments[0]"
        " && e.getClientRects().length)",
        text,
    )
    locate = (
        "const all = Array.from(document.querySelectorAll('body *')).filter(e =>"
        " e.textContent.trim() === arguments[0] && e.getClientRects().length);"
        "const e = all[all.length - 1];"
    )
    _click(browser, locate, text, until)


def click_view(browser, label: str, until: str | None = None) -> None:
    """A real click on the "view" (eye) button of the report's result labelled ``label`` (see :func:`_click`)."""
    browser.wait_for(
        "return Array.from(document.querySelectorAll('td')).some(e => e.textContent.trim() === arguments[0])", label
    )
    locate = (
        "const td = Array.from(document.querySelectorAll('td')).find(e => e.textContent.trim() === arguments[0]);"
        "const e = td.closest('tr').querySelector('a');"
    )
    _click(browser, locate, label, until)


def test_the_report_shows_numbers_figures_and_the_explorer(reference, tmp_path):
    """Headless Chromium on the HTML report: the dataset's tables are on screen (the CSV's numbers),
    and the prompt explorer opens and draws its maps. Screenshots go to the test's tmp_path."""
    import pandas as pd
    from browser import Browser, browser_or_skip

    from mmc.report import format_cell

    browser_or_skip()
    snakemake(reference, "--configfile", "tiny.yaml", "--report", "report.html")
    segmentation = pd.read_csv(reference / RESULTS / "tables" / "segmentation.csv")
    with Browser(tmp_path / "chromium", width=1500, height=1000) as browser:
        browser.open(reference / "report.html")
        browser.wait_for("return typeof app !== 'undefined' && app !== undefined")
        shots = [browser.screenshot(tmp_path / "report_landing.png")]
        click_text(browser, "synthetic_val")  # the dataset's category in the menu
        one_frame = "return document.querySelectorAll('iframe').length === 1"
        click_view(browser, "tables: segmentation and similarity", until=one_frame)
        browser.switch_to_frame(0)
        cells = browser.wait_for(
            "return document.querySelectorAll('td').length && Array.from(document.querySelectorAll('td'),"
            " e => e.textContent)"
        )
        for row in segmentation.itertuples():
            assert row.model in cells
            for value in (row.best_miou, row.oracle_miou, row.miou_at_demo_tau, row.n_objects):
                assert format_cell(value) in cells, (row.model, value)
        browser.switch_to_frame(None)
        shots.append(browser.screenshot(tmp_path / "report_tables.png"))

        browser.run("app.setView({content: 'rulegraph'})")
        click_text(browser, "prompt explorer of synthetic_val")
        deadline = time.monotonic() + 30
        while len(handles := browser._session("GET", "/window/handles")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(handles) == 2, "the explorer did not open in a new tab"
        browser._session("POST", "/window", {"handle": handles[-1]})
        browser.wait_for("return document.body && document.body.dataset.rendered")
        models = browser.run("return explorer.data.models.map(m => m.name)")
        assert models == ["mmc", "init", "colour"]
        for model in models:
            drawn = browser.run(
                "const c = document.querySelector(`canvas.similarity[data-model='${arguments[0]}']`);"
                "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).some(v => v > 0);",
                model,
            )
            assert drawn, f"no similarity map drawn for {model}"
        shots.append(browser.screenshot(tmp_path / "report_explorer.png"))
    print("\nreport screenshots: " + ", ".join(map(str, shots)))
