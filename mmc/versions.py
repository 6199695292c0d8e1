"""Where the running code and its environment come from: git commit, package and library versions.

Everything here is cheap enough to call at the end of every job: git is asked once per process
(cached), and torch is only inspected when the job already imported it (importing torch costs
seconds; a job that never touched it has no device to report).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import mmc

CODE_ROOT = Path(mmc.__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = CODE_ROOT) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def git_state(root: Path = CODE_ROOT) -> dict[str, str]:
    """``{"commit": sha, "dirty": "true"|"false"}`` of the checkout holding the code, or "unknown".

    The code's own checkout, not the working directory's: that is the code that ran. Dirty means a
    tracked file differs from the commit (untracked files, e.g. results, do not count), except DVC
    pointer files (``*.dvc``): a run rewrites ``data.dvc`` and published ``E.pth.dvc`` itself, and
    every record carries their md5s, so they would mark a clean checkout dirty for no code change.
    """
    commit = _git("rev-parse", "HEAD", cwd=root)
    if commit is None:
        return {"commit": "unknown", "dirty": "unknown"}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude,glob)**/*.dvc", cwd=root)
    return {"commit": commit, "dirty": "unknown" if status is None else str(bool(status)).lower()}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def host() -> str:
    return socket.gethostname()


def user() -> str:
    """The account running the code (MLflow's ``mlflow.user``); "unknown" where the uid has no name."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def torch_state(requested_device: str | None = None) -> dict[str, str]:
    """torch/CUDA/timm versions and the device, only if this process already imported torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    state = {"torch": str(torch.__version__), "cuda": str(torch.version.cuda)}
    timm = sys.modules.get("timm")
    if timm is not None:
        state["timm"] = str(timm.__version__)
    cuda_used = torch.cuda.is_initialized()
    if requested_device == "cpu" or not cuda_used:
        state["device"] = "cpu"
    else:
        index = torch.cuda.current_device()
        state["device"] = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    state.update(determinism(torch, on_cuda=state["device"] != "cpu"))
    return state


# The environment that decides whether a job's floating-point results repeat bit for bit: CPU
# kernels split their reductions by thread count (Snakemake sets the *_NUM_THREADS variables to a
# job's threads), cuBLAS needs a fixed workspace to be deterministic. Recorded with every job and
# set again by `mmc reproduce` (docs/provenance.md, deterministic mode).
REPRODUCIBILITY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


def reproducibility_env() -> dict[str, str]:
    """``{VAR: value or "unset"}`` for every variable of :data:`REPRODUCIBILITY_ENV`."""
    return {name: os.environ.get(name, "unset") for name in REPRODUCIBILITY_ENV}


def determinism(torch, on_cuda: bool) -> dict[str, str]:
    """torch's settings that decide bitwise repeatability, and whether this job ran deterministically:
    deterministic algorithms on, and on CUDA also a fixed cuBLAS workspace and no cuDNN autotuning."""
    algorithms = bool(torch.are_deterministic_algorithms_enabled())
    benchmark = bool(torch.backends.cudnn.benchmark)
    deterministic = algorithms and (not on_cuda or (
        os.environ.get("CUBLAS_WORKSPACE_CONFIG") in DETERMINISTIC_CUBLAS and not benchmark))
    return {
        "deterministic": str(deterministic).lower(),
        "deterministic_algorithms": str(algorithms).lower(),
        "cudnn_benchmark": str(benchmark).lower(),
        "num_threads": str(torch.get_num_threads()),
    }


def environment_versions() -> dict[str, str]:
    """The full software picture, for pipeline_info (imports torch: not for per-job use)."""
    versions = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "mmc": mmc.__version__,
    }
    for name in ("torch", "torchvision", "timm", "numpy", "snakemake", "snakemake-executor-plugin-slurm",
                 "dvc", "mlflow"):
        versions[name] = package_version(name) or "not installed"
    try:
        import torch

        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        versions["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(count)) or "none"
    except ImportError:
        versions["gpus"] = "unknown (torch not installed)"
    versions.update({f"git_{k}": v for k, v in git_state().items()})
    if "SLURM_JOB_ID" in os.environ:
        versions["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return versions


def installed_packages() -> dict[str, str]:
    """Every distribution importable by this interpreter, like ``pip freeze``."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))
