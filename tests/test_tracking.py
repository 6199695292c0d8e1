"""Job records and their loading into a real MLflow store (embedded SQLite and a real server)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from workflow_helpers import REPO, write_config

from mmc import config, mlflow_store, records, tracking, versions
from mmc.files import sha256_file

# A real job: a separate Python process running a stage-like body inside tracking.job.
JOB_SCRIPT = """
import sys
from pathlib import Path
from mmc import config, tracking

cfg = config.load(sys.argv[1])
index = sys.argv[2]
with tracking.job("segment", cfg, wildcards={"model": "m" + index, "dataset": "toy"}) as rec:
    out = Path(cfg.results_dir) / "segment" / ("m" + index) / "summary.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"model,miou\\nm{index},0.{index}\\n")
    weights = out.parent / "weights.pth"
    weights.write_bytes(bytes(range(256)) * 64)
    rec.log_params({"evaluation": {"resolution": 32, "prompt": "center"}})
    for step in range(3):
        rec.log_metrics({"loss": 1.0 / (step + 1), "miou": 0.1 * step}, step=step)
    rec.consumed(weights)
    rec.produced(out)
    rec.log_artifact(out)
    rec.log_artifact(weights)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MMC_INVOCATION_ID", "SLURM_JOB_ID")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


def _mmc(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mmc", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def tracking_config(tmp_path: Path, **tracking_opts) -> dict:
    """Tracking on (``tracking_opts``: more of its options), results and data under ``tmp_path``."""
    return {"run_name": "unit", "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
            "tracking": {"enabled": True, **tracking_opts}}


def _start(cfg_path: Path, cwd: Path) -> str:
    """`mmc track start`: a sentence naming the new invocation (kept in invocation.json)."""
    said = _mmc("track", "start", "--config", str(cfg_path), cwd=cwd).stdout
    invocation = json.loads((cwd / "results" / "tracking" / "invocation.json").read_text())["invocation_id"]
    assert said.startswith(f"mmc: invocation {invocation} started: MLflow parent run unit-{invocation[:8]}"), said
    return invocation


def _run_jobs(tmp_path: Path, cfg_path: Path, indices, **env: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(cfg_path), str(i)], cwd=tmp_path,
                              env=_env(**env), stderr=subprocess.PIPE, text=True) for i in indices]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


def _runs_of_invocation(cfg, invocation_id: str) -> tuple:
    """(parent run, child runs) of an invocation, as the MLflow store holds them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store.store_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    (parent,) = client.search_runs([experiment], filter_string=(
        f"tags.`mmc.role` = '{mlflow_store.PARENT_ROLE}' and tags.`mmc.invocation_id` = '{invocation_id}'"))
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


REQUIRED_TAGS = ("mmc.git_commit", "mmc.git_dirty", "mmc.version", "mmc.stage", "snakemake.rule",
                 "snakemake.wildcard.model", "snakemake.wildcard.dataset", "mmc.config_hash", "mmc.host",
                 "mmc.invocation_id", "mmc.record_id", "mmc.record_hash", "mmc.checkpoint_consumed_sha256",
                 "mmc.dataset_dvc_md5")


def test_record_carries_provenance_tags(tmp_path, monkeypatch):
    import torch  # the record reports torch/device only when the job imported torch

    cfg_path = write_config(tmp_path, tracking_config(tmp_path))
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv(records.INVOCATION_ENV, "inv-from-env")
    cfg = config.load(cfg_path)
    ckpt = tmp_path / "epoch_0001.pth"
    ckpt.write_bytes(b"weights")
    with tracking.job("select", cfg, wildcards={"experiment": "mmc"}) as rec:
        rec.consumed(ckpt)
        rec.set_tags({"mmc.device": "set-by-stage"})
    record = json.loads((records.record_dir(cfg) / "select-experiment=mmc.json").read_text())
    tags = record["tags"]
    assert record["status"] == "FINISHED" and record["wildcards"] == {"experiment": "mmc"}
    assert record["invocation_id"] == tags["mmc.invocation_id"] == "inv-from-env"
    assert tags["slurm.job_id"] == "4242"
    assert tags["snakemake.wildcard.experiment"] == "mmc" and tags["snakemake.rule"] == "select"
    assert tags["mmc.dataset_dvc_md5"] == "0123456789abcdef0123456789abcdef.dir"
    assert tags["mmc.checkpoint_consumed_sha256"] == sha256_file(ckpt)
    assert tags["mmc.torch_version"] == torch.__version__ and "mmc.cuda_version" in tags
    assert tags["mmc.device"] == "set-by-stage"  # what a stage says wins over the automatic guess
    # the code's own checkout ("unknown" when installed from an archive without .git)
    assert (tags["mmc.git_commit"], tags["mmc.git_dirty"]) == tuple(versions.git_state().values())
    assert tags["mmc.config_hash"] == config.config_hash(cfg) == record["config"]["hash"]
    assert Path(record["config"]["snapshot"]).read_text() == config.dump(cfg)


def test_record_says_whether_the_job_ran_deterministically(tmp_path, monkeypatch):
    import torch

    cfg = config.load(write_config(tmp_path, tracking_config(tmp_path)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        with tracking.job("pretrain", cfg, wildcards={"experiment": "on"}):
            torch.use_deterministic_algorithms(True)
        with tracking.job("pretrain", cfg, wildcards={"experiment": "off"}):
            torch.use_deterministic_algorithms(False)
    finally:
        torch.use_deterministic_algorithms(was)
    on, off = (json.loads((records.record_dir(cfg) / f"pretrain-experiment={e}.json").read_text())["tags"]
               for e in ("on", "off"))
    assert on["mmc.deterministic"] == on["mmc.deterministic_algorithms"] == "true"  # on CPU: the flag suffices
    assert off["mmc.deterministic"] == off["mmc.deterministic_algorithms"] == "false"
    assert on["mmc.num_threads"] == str(torch.get_num_threads())
    assert on["mmc.env.OMP_NUM_THREADS"] == "1" and on["mmc.env.CUBLAS_WORKSPACE_CONFIG"] == "unset"
    assert set(versions.REPRODUCIBILITY_ENV) <= {k.removeprefix("mmc.env.") for k in on if k.startswith("mmc.env.")}


def test_failed_job_is_recorded_as_failed(tmp_path):
    cfg = config.load(write_config(tmp_path, tracking_config(tmp_path)))
    with pytest.raises(RuntimeError), tracking.job("pretrain", cfg, name="pretrain-mmc") as rec:
        rec.log_metrics({"loss": float("nan"), "lr": 0.1}, step=7)
        raise RuntimeError("loss is not finite")
    record = json.loads((records.record_dir(cfg) / "pretrain-mmc.json").read_text())
    assert record["status"] == "FAILED"
    assert record["tags"]["mmc.error"] == "RuntimeError: loss is not finite"
    assert [m["key"] for m in record["metrics"]] == ["lr"]  # non-finite values are dropped


def test_disabled_tracking_writes_nothing(tmp_path):
    cfg = config.load(write_config(tmp_path, tracking_config(tmp_path, enabled=False)))
    with tracking.job("tables", cfg, wildcards={"table": "main"}) as rec:
        rec.log_metrics({"rows": 2})
    assert not (tmp_path / "results").exists()
    assert _mmc("track", "start", "--config", str(tmp_path / "config.yaml"), cwd=tmp_path).stdout == ""


def test_parallel_jobs_load_as_one_parent_and_one_child_each(tmp_path):
    cfg_path = write_config(tmp_path, tracking_config(tmp_path))
    (tmp_path / "data.dvc").write_text("outs:\n- md5: aaaabbbbccccddddeeeeffff00001111.dir\n  path: data\n")
    invocation = _start(cfg_path, tmp_path)
    jobs = range(8)
    _run_jobs(tmp_path, cfg_path, jobs, MLFLOW_RUN_ID="must-not-be-resumed")
    # Two loaders at once (e.g. onsuccess and a user): the file lock makes them take turns.
    loaders = [subprocess.Popen([sys.executable, "-m", "mmc", "track", "load", "--config", str(cfg_path),
                                 "--status", "finished"], cwd=tmp_path, env=_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [loader.communicate(timeout=120) for loader in loaders]
    assert [loader.returncode for loader in loaders] == [0, 0], outputs
    counts = sorted(re.search(r"loaded (\d+) job record\(s\), skipped (\d+)", out).groups() for out, _ in outputs)
    assert counts == [("0", "8"), ("8", "0")], outputs
    assert "lock" not in "".join(out + err for out, err in outputs).lower()

    cfg = config.load(cfg_path)
    parent, children = _runs_of_invocation(cfg, invocation)
    assert parent is not None and parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == sorted(f"segment-model=m{i}-dataset=toy" for i in jobs)
    for child in children:
        missing = [t for t in REQUIRED_TAGS if t not in child.data.tags]
        assert not missing, (child.info.run_name, missing)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id != child.info.run_id
        assert child.data.params["evaluation.resolution"] == "32"
    client = mlflow_store._client(mlflow_store.store_uri(cfg))
    history = client.get_metric_history(children[0].info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    uploaded = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert uploaded == {"summary.csv", "mmc_job_record.json"}  # the .pth is tagged, never uploaded
    assert any(k.startswith("mmc.artifact_not_uploaded") and "weights.pth sha256=" in v
               for k, v in children[0].data.tags.items())


def test_store_holds_mlflows_own_fields(tmp_path):
    """What the MLflow UI shows besides the mmc.* tags, read back from the store (no screenshots)."""
    import getpass

    import mlflow

    raw = {**tracking_config(tmp_path), "datasets": {"toy": {"format": "synthetic", "root": "data/toy", "split": "val"}}}
    cfg_path = write_config(tmp_path, raw)
    md5 = "aaaabbbbccccddddeeeeffff00001111.dir"
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {md5}\n  path: data\n")
    first = _start(cfg_path, tmp_path)
    _run_jobs(tmp_path, cfg_path, [1])  # then snakemake is killed: no hook closes this invocation
    second = _start(cfg_path, tmp_path)
    _run_jobs(tmp_path, cfg_path, [2])
    loaded = _mmc("track", "load", "--config", str(cfg_path), "--status", "finished", cwd=tmp_path).stdout
    cfg = config.load(cfg_path)
    client = mlflow_store._client(mlflow_store.store_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in loaded
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's model-training kind
    # MLflow makes an artefact location absolute: where it is, docs/sharing.md says
    assert experiment.artifact_location == (tmp_path / "results" / "tracking" / "artifacts").as_uri()

    commit = versions.git_state()["commit"]
    for invocation, index in ((first, 1), (second, 2)):
        parent, children = _runs_of_invocation(cfg, invocation)
        assert parent.info.status == "FINISHED"  # the first from its children, the second by the hook
        assert parent.info.run_name == f"unit-{invocation[:8]}"
        assert [c.info.run_name for c in children] == [f"segment-model=m{index}-dataset=toy"]
        for run in (parent, *children):
            run = client.get_run(run.info.run_id)
            tags = run.data.tags
            assert tags["mlflow.user"] == getpass.getuser() and tags["mlflow.source.type"] == "JOB"
            assert tags["mlflow.runName"] == run.info.run_name
            if commit != "unknown":
                assert tags["mlflow.source.git.commit"] == commit
            inputs = [(i.dataset.name, i.dataset.digest, i.dataset.source_type, {t.key: t.value for t in i.tags})
                      for i in run.inputs.dataset_inputs]
            assert inputs == [("toy", md5, "dvc", {"mlflow.data.context": "evaluation"})], inputs
            assert json.loads(run.inputs.dataset_inputs[0].dataset.source) == {
                "dvc_file": "data.dvc", "md5": md5, "path": "data/toy"}
        assert tags["mlflow.source.name"] == "mmc segment"
        source = f"snakemake --configfile {cfg_path}" if invocation == second else "mmc track"  # (no --config in argv)
        assert client.get_run(parent.info.run_id).data.tags["mlflow.source.name"] == source
        # the artefacts can be fetched back through MLflow from the absolute location
        got = mlflow.artifacts.download_artifacts(run_id=children[0].info.run_id, artifact_path="summary.csv",
                                                  tracking_uri=mlflow_store.store_uri(cfg), dst_path=str(tmp_path / "dl"))
        assert Path(got).read_text() == f"model,miou\nm{index},0.{index}\n"
    assert json.loads((tmp_path / "results/tracking/invocation.json").read_text())["status"] == "FINISHED"


def test_half_loaded_run_is_replaced_not_duplicated(tmp_path):
    cfg_path = write_config(tmp_path, tracking_config(tmp_path))
    cfg = config.load(cfg_path)
    invocation = mlflow_store.start_invocation(cfg)["invocation_id"]
    with tracking.job("tables", cfg) as rec:
        rec.log_metrics({"rows": 2, "miou@0.5": 0.25})  # '@' is not allowed in MLflow keys
        rec.log_params({"a=b": 1})
    record = json.loads((records.record_dir(cfg) / "tables.json").read_text())
    # What a loader killed after create_run (before its final tag) leaves behind:
    client = mlflow_store._client(mlflow_store.store_uri(cfg))
    experiment = mlflow_store._experiment_id(client, cfg)
    client.create_run(experiment, tags={"mmc.record_id": record["record_id"]}, run_name="tables")
    report = mlflow_store.load_records(cfg)
    assert len(report.cleaned) == 1 and len(report.loaded) == 1
    _, children = _runs_of_invocation(cfg, invocation)
    assert [c.info.run_name for c in children] == ["tables"]
    assert children[0].data.metrics == {"rows": 2.0, "miou_0.5": 0.25} and children[0].data.params == {"a_b": "1"}
    assert len(client.search_runs([experiment], filter_string="attributes.run_name = 'tables'")) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    with open(server_dir / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
             "--artifacts-destination", str(server_dir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=server_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(server_dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_jobs_log_directly_to_a_tracking_server(tmp_path, mlflow_server):
    cfg_path = write_config(tmp_path, tracking_config(tmp_path, uri=mlflow_server))
    invocation = _start(cfg_path, tmp_path)
    stored = json.loads((tmp_path / "results" / "tracking" / "invocation.json").read_text())
    assert stored["invocation_id"] == invocation and stored["parent_run_id"]
    _run_jobs(tmp_path, cfg_path, range(3), MLFLOW_RUN_ID=stored["parent_run_id"])
    for i in range(3):
        record = json.loads((tmp_path / "results" / "tracking" / "jobs" / f"segment-model=m{i}-dataset=toy.json").read_text())
        assert record["mlflow"]["uri"] == mlflow_server and record["mlflow"]["run_id"]
    # A job that cannot reach the server still succeeds; its record is loaded afterwards.
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(cfg_path.read_text().replace(mlflow_server, f"http://127.0.0.1:{_free_port()}"))
    _run_jobs(tmp_path, unreachable, [3], MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    assert "mlflow" not in json.loads((tmp_path / "results/tracking/jobs/segment-model=m3-dataset=toy.json").read_text())
    loaded = _mmc("track", "load", "--config", str(cfg_path), "--status", "finished", cwd=tmp_path)
    assert "loaded 1 job record(s), skipped 3" in loaded.stdout  # the others are already on the server

    cfg = config.load(cfg_path)
    parent, children = _runs_of_invocation(cfg, invocation)
    assert parent.info.run_id == stored["parent_run_id"] and parent.info.status == "FINISHED"
    assert parent.data.params  # the resolved config
    assert sorted(c.info.run_name for c in children) == [f"segment-model=m{i}-dataset=toy" for i in range(4)]
    for child in children:
        assert not [t for t in REQUIRED_TAGS if t not in child.data.tags and t != "mmc.dataset_dvc_md5"]
        assert child.info.status == "FINISHED"
    client = mlflow_store._client(mlflow_server)
    assert len(client.get_metric_history(children[0].info.run_id, "miou")) == 3
    assert "summary.csv" in {a.path for a in client.list_artifacts(children[0].info.run_id)}


SNAKEFILE = """
import sys

MMC = f"{sys.executable} -m mmc"


onstart:
    shell(f"{MMC} track start --config config.yaml")


onsuccess:
    shell(f"{MMC} track load --config config.yaml --status finished")


onerror:
    shell(f"{MMC} track load --config config.yaml --status failed")


rule all:
    input:
        expand("results/out/{i}.txt", i=range(6)),


rule work:
    output:
        "results/out/{i}.txt",
    shell:
        "python work.py --config config.yaml {wildcards.i} {output}"
"""

WORK_SCRIPT = """
import sys
from pathlib import Path
from mmc import config, tracking

config_path, index, out = sys.argv[2:5]  # like every mmc stage: --config F first
cfg = config.load(config_path)
with tracking.job("work", cfg, wildcards={"i": index}) as rec:
    rec.log_metrics({"value": float(index)}, step=0)
    if index == "3" and not Path("let-3-pass").exists():
        raise RuntimeError("job 3 fails the first time")
    Path(out).write_text(index)
    rec.produced(out)
"""


@pytest.mark.slow
def test_snakemake_run_resumed_after_a_failure_adds_children_only_for_rerun_jobs(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "work.py").write_text(WORK_SCRIPT)
    cfg_path = write_config(tmp_path, tracking_config(tmp_path))
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "-c2", "--keep-going", "--snakefile", "Snakefile"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0 and "job 3 fails the first time" in first.stderr
    first_invocation = json.loads((tmp_path / "results/tracking/invocation.json").read_text())["invocation_id"]
    (tmp_path / "let-3-pass").touch()
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "loaded 1 job record(s), skipped 5" in second.stderr + second.stdout
    second_invocation = json.loads((tmp_path / "results/tracking/invocation.json").read_text())["invocation_id"]
    assert "database is locked" not in first.stderr + second.stderr

    cfg = config.load(cfg_path)
    parent1, children1 = _runs_of_invocation(cfg, first_invocation)
    parent2, children2 = _runs_of_invocation(cfg, second_invocation)
    assert parent1.info.status == "FAILED" and parent2.info.status == "FINISHED"
    assert sorted((c.info.run_name, c.info.status) for c in children1) == [
        (f"work-i={i}", "FAILED" if i == 3 else "FINISHED") for i in range(6)]
    assert [(c.info.run_name, c.info.status) for c in children2] == [("work-i=3", "FINISHED")]
    hashes = [c.data.tags["mmc.record_hash"] for c in children1 + children2]
    assert len(set(hashes)) == 7
    wanted = ("mmc.git_commit", "mmc.git_dirty", "mmc.version", "snakemake.rule", "snakemake.wildcard.i",
              "mmc.config_hash", "mmc.config_path", "mmc.host", "mmc.invocation_id", "mmc.record_id")
    for child in children1 + children2:
        assert not [t for t in wanted if t not in child.data.tags], child.data.tags
        assert child.data.tags["mlflow.parentRunId"] in (parent1.info.run_id, parent2.info.run_id)


def test_dvc_pointer_files_do_not_make_the_code_dirty(tmp_path):
    # a run rewrites data.dvc (mmc data version) and E.pth.dvc (mmc publish) in a clean checkout
    repo = tmp_path / "project"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    (repo / "data.dvc").write_text("outs:\n- md5: 0.dir\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run([*git, *args], cwd=repo, check=True)
    state = versions.git_state.__wrapped__  # uncached
    (repo / "data.dvc").write_text("outs:\n- md5: 1.dir\n")
    assert state(repo / "pkg")["dirty"] == "false"
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert state(repo / "pkg") == {"commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                                            text=True).stdout.strip(), "dirty": "true"}
