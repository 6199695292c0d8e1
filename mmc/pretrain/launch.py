"""How the workflow starts ``mmc pretrain``: one process, ``torchrun`` on one node, or ``srun`` +
``torchrun`` on several nodes (see docs/workflow.md, "Pretraining on a SLURM cluster").

The pretrain rule's shell command is ``{launcher} pretrain --config ...``; the launcher is the
``shell`` of :func:`launcher`, built from the job's SLURM resources in workflow/rules/common.smk.
The multi-node test runs the ``program`` part (torchrun) of the same object on 127.0.0.1, so the command the
profile submits and the command the test runs cannot drift apart.

* One node (workflow/profiles/slurm): the SLURM executor runs the rule inside ONE task
  (``srun -n1``) holding all the node's GPUs; ``torchrun --standalone`` starts one process per GPU
  inside it. Never a SLURM task per GPU: torchrun supervises its processes itself.
* Several nodes (workflow/profiles/slurm-multinode, resource ``mpi``): the executor runs the rule
  in the batch shell on the job's first node, and the rule's own ``srun`` starts one task, one
  ``torchrun``, per node. They meet through a c10d rendezvous hosted by the first node
  (``$(hostname)`` is expanded there, in the batch shell). The executor strips the ``SLURM_*``
  variables of the allocation from that shell, so ``srun`` is given every count explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

RDZV_PORT = 29500  # torchrun's default c10d port, on the job's first node


@dataclass(frozen=True)
class Launcher:
    srun: tuple[str, ...]  # empty unless multi-node
    program: tuple[str, ...]  # what runs on each node: ("mmc",) or torchrun ... -m mmc

    @property
    def shell(self) -> str:
        """The command line, for a shell that expands ``$(hostname)`` and ``$SLURM_JOB_ID``."""
        return " ".join((*self.srun, *self.program))


def launcher(
    nodes: int = 1,
    gpus_per_node: int = 0,
    cpus_per_node: int = 0,
    *,
    multinode: bool = False,
    rdzv_host: str = "$(hostname)",
    rdzv_port: int = RDZV_PORT,
    rdzv_id: str = "$SLURM_JOB_ID",
) -> Launcher:
    """The command that starts ``mmc`` on ``nodes`` nodes with ``gpus_per_node`` GPUs each.

    ``multinode``: start one torchrun per node with srun and a c10d rendezvous (also for one node,
    so that the multi-node path can be run on a single machine); else plain ``mmc`` for at most
    one GPU and ``torchrun --standalone`` for more.
    """
    if nodes < 1 or gpus_per_node < 0 or cpus_per_node < 0:
        raise ValueError(f"nodes {nodes} must be >= 1, GPUs {gpus_per_node} and CPUs {cpus_per_node} >= 0")
    procs = max(gpus_per_node, 1)
    if not multinode:
        if nodes > 1:
            raise ValueError(
                f"{nodes} nodes need the multi-node launch (resource mpi, see workflow/profiles/slurm-multinode)"
            )
        if procs == 1:
            return Launcher((), ("mmc",))
        return Launcher((), ("torchrun", "--standalone", f"--nproc-per-node={procs}", "-m", "mmc"))
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"]
    if cpus_per_node:
        srun.append(f"--cpus-per-task={cpus_per_node}")
    srun.append("--kill-on-bad-exit=1")  # a node that fails stops the others (no hang in a collective)
    program = (
        "torchrun", f"--nnodes={nodes}", f"--nproc-per-node={procs}", f"--rdzv-id={rdzv_id}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_host}:{rdzv_port}", "-m", "mmc",
    )  # fmt: skip
    return Launcher(tuple(srun), program)


def slurm_launcher(resources) -> Launcher:
    """The launcher for a job's Snakemake ``resources`` (a mapping) under the repository's profiles.

    GPUs per node: ``gpu`` (one node) or the count of ``gres: gpu[:model]:N`` (per node). CPUs per
    node: ``cpus_per_task`` if set (non-zero), else ``cpus_per_gpu`` x GPUs per node. Several
    nodes need ``mpi`` (set by the multi-node profile): without it, the executor would run the rule
    inside a one-node step.
    """
    gpus = gpus_per_node(resources)
    cpus = int(resources.get("cpus_per_task", 0) or 0) or int(resources.get("cpus_per_gpu", 0) or 0) * gpus
    return launcher(
        nodes=int(resources.get("nodes", 1) or 1),
        gpus_per_node=gpus,
        cpus_per_node=cpus,
        multinode=bool(resources.get("mpi")),
    )


def gpus_per_node(resources) -> int:
    """GPUs of one node: the count in ``gres: gpu[:model]:N`` (per node), else ``gpu``."""
    gres = str(resources.get("gres", "") or "")
    for part in gres.split(","):
        if part.strip().startswith("gpu"):
            count = part.strip().split(":")[-1]
            return int(count) if count.isdigit() else 1
    return int(resources.get("gpu", 0) or 0)
