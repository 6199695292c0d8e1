# The typed config and the input functions every rule file uses.
#
# Jobs read the same YAML file the workflow was started with (`mmc <stage> --config FILE`), so the
# workflow insists on exactly one config file and no `--config KEY=VALUE` overrides: what a job
# reads is then exactly what was validated here. Every rule about the config lives in mmc.config;
# this file only loads the file with mmc.config's strict loader (before Snakemake's own validation
# walks it) and hands the typed config to the rules. Each rule carries a hash of the config
# sections it depends on as a `params:` entry, so editing one section reruns only the stages that
# read it.

import copy
import os
import sys
from pathlib import Path

from snakemake.utils import validate

from mmc import config as mmc_config
from mmc import dvc as mmc_dvc
from mmc.errors import MMCError
from mmc.pretrain.launch import slurm_launcher

SCHEMA = str(Path(workflow.basedir) / "schemas" / "config.schema.yaml")
# Without --configfile, the paper run. With it, that file alone: Snakemake would otherwise merge
# the two files, and the jobs, which read one file, would see a different config.
DEFAULT_CONFIG_FILE = "config/config.yaml"


def _config_file():
    given = list(workflow.overwrite_configfiles or [])
    if len(given) > 1:
        raise WorkflowError(
            f"pass exactly one --configfile (got {', '.join(map(str, given))}): every job reads "
            "that one file, so several files merged by Snakemake would not be what the jobs see"
        )
    if workflow.config_settings.config:
        raise WorkflowError(
            "--config KEY=VALUE overrides are not supported: jobs read the config file itself; "
            "copy the config file, edit the copy and pass it with --configfile"
        )
    if not given:
        return DEFAULT_CONFIG_FILE
    path = os.path.abspath(given[0])
    inside = path.startswith(os.getcwd() + os.sep)
    return os.path.relpath(path) if inside else path


CONFIG_FILE = _config_file()
try:
    RAW_CONFIG = mmc_config.load_raw(CONFIG_FILE)
    CFG = mmc_config.freeze(
        mmc_config.resolve(RAW_CONFIG, where=CONFIG_FILE, check_inputs=True)
    )
except MMCError as error:
    raise WorkflowError(str(error)) from None
if not workflow.overwrite_configfiles:

    # recorded as the workflow's config file (report, archive); read only once accepted above
    configfile: DEFAULT_CONFIG_FILE


# `config` is what mmc.config read (Snakemake's own copy of the file was parsed without its rules)
config.clear()
config.update(copy.deepcopy(RAW_CONFIG))
validate(config, SCHEMA, set_default=True)

RESULTS = CFG.results_dir
DATA = CFG.data_dir
# `dvc add {data_dir}` writes this file; its `.dir` md5 is the data's provenance identifier
DATA_VERSION = os.path.normpath(DATA) + ".dvc"
SYNTHETIC_DIR = f"{DATA}/synthetic"


wildcard_constraints:
    experiment="[A-Za-z0-9_-]+",
    model="[A-Za-z0-9_-]+",
    dataset="[A-Za-z0-9_-]+",


# One line at the top of every compute job's log: where it ran and what it was given. The SLURM
# tests read `slurm_job_id`, `CUDA_VISIBLE_DEVICES` and `cpus` (the job step's CPUs) from it.
JOB_INFO = (
    'echo "job: host=$(hostname) slurm_job_id=${SLURM_JOB_ID:-none} '
    'CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset} cpus=${SLURM_CPUS_ON_NODE:-unset}"'
)


def section_hash(*values):
    """A short, stable hash of config sections: a rerun trigger that changes with their content."""
    return mmc_config.config_hash(list(values))


# ----------------------------------------------------------------------------- names
def _named(kind, section, name):
    """``section[name]``, or one clear line when a requested target names something unknown."""
    if name not in section:
        raise WorkflowError(
            f"no such {kind} {name!r} (have: {', '.join(sorted(section))})"
        )
    return section[name]


def experiment_config(name):
    return _named("experiment", CFG.experiments, name)


def model_config(name):
    return _named("model", CFG.models, name)


def dataset_config(name):
    return _named("dataset", CFG.datasets, name)


# ----------------------------------------------------------------------------- experiments
def init_checkpoint(experiment):
    return experiment_config(experiment).init_checkpoint


def pretrain_dir(experiment):
    return f"{RESULTS}/pretrain/{experiment}"


def _inside(path, folder):
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def pretrain_inputs(wildcards):
    """Pretraining reads an image folder; only the synthetic one is made by this workflow, and a
    folder under data_dir is versioned with it (data.dvc), so its hash reaches the job's record.
    """
    path = experiment_config(wildcards.experiment).data.path
    inputs = [SYNTHETIC_MARKER] if _inside(path, SYNTHETIC_DIR) else []
    return inputs + ([DATA_VERSION] if _inside(path, DATA) else [])


def versioned_data():
    """What `data.dvc` versions: every dataset and fetched checkpoint the run reads, complete on disk."""
    names = list(CFG.evaluation.datasets)
    if CFG.selection.policy != "last":
        names.append(CFG.selection.dataset)
    ready = {dataset_ready(name) for name in names}
    ready |= {
        SYNTHETIC_MARKER
        for e in CFG.experiments.values()
        if _inside(e.data.path, SYNTHETIC_DIR)
    }
    # checkpoints fetched under data_dir too: data.dvc is made after every write under data/
    ready |= {
        model_checkpoint(m) for m, model in CFG.models.items() if model.source == "url"
    }
    return sorted(ready)


def pretrain_launcher(wildcards, resources):
    """How `mmc pretrain` is started: `mmc`, `torchrun --standalone` in ONE task on one node, or
    (profile slurm-multinode, resource `mpi`) srun + one torchrun per node; see mmc.pretrain.launch.
    """
    try:
        return slurm_launcher(resources).shell
    except ValueError as error:
        raise WorkflowError(f"pretrain resources: {error}") from None


def select_inputs(wildcards):
    inputs = {}
    path = init_checkpoint(wildcards.experiment)
    inputs["checkpoints"] = (
        ancient(path) if path else pretrain_dir(wildcards.experiment)
    )
    if CFG.selection.policy != "last":
        inputs["selection_data"] = dataset_ready(CFG.selection.dataset)
        inputs["data_version"] = DATA_VERSION
    return inputs


def selection_file(experiment):
    return f"{RESULTS}/select/{experiment}.json"


def published_checkpoint(experiment):
    return f"{CFG.dvc.checkpoint_dir}/{experiment}.pth"


# ----------------------------------------------------------------------------- datasets, models
SYNTHETIC_MARKER = f"{SYNTHETIC_DIR}/classes.json"


def dataset_ready(name):
    """The file that exists once dataset ``name`` is complete on disk."""
    if dataset_config(name).format == "synthetic":
        return SYNTHETIC_MARKER
    return f"{DATA}/manifests/{name}.json"


def model_checkpoint(name):
    """The checkpoint file a model is evaluated from, or None for a randomly initialised backbone."""
    model = model_config(name)
    if model.source == "experiment":
        return published_checkpoint(model.experiment)
    if model.source == "url":
        return f"{DATA}/checkpoints/{name}.pth"
    if model.source == "file":
        return model.path
    return None


def evaluation_inputs(wildcards):
    inputs = {"dataset": dataset_ready(wildcards.dataset), "data_version": DATA_VERSION}
    path = model_checkpoint(wildcards.model)
    if path is not None:
        user_file = model_config(wildcards.model).source == "file"
        inputs["checkpoint"] = ancient(path) if user_file else path
    return inputs


def checkpoint_arg(wildcards):
    path = model_checkpoint(wildcards.model)
    return f"--checkpoint {path}" if path else ""


def evaluation_hash(wildcards, *sections):
    return section_hash(
        model_config(wildcards.model), dataset_config(wildcards.dataset), *sections
    )


# ----------------------------------------------------------------------------- final targets
def evaluated_pairs():
    return [(m, d) for m in CFG.models for d in CFG.evaluation.datasets]


def segment_summaries():
    return [f"{RESULTS}/segment/{m}/{d}/summary.json" for m, d in evaluated_pairs()]


def segment_objects():
    return [f"{RESULTS}/segment/{m}/{d}/objects.parquet" for m, d in evaluated_pairs()]


def similarity_results():
    return [
        f"{RESULTS}/similarity/{m}/{d}/similarity.json" for m, d in evaluated_pairs()
    ]


TABLES = ["segmentation", "similarity"]
TABLE_FORMATS = ["csv", "md", "tex"]


def table_files():
    return expand(
        f"{RESULTS}/tables/{{table}}.{{ext}}", table=TABLES, ext=TABLE_FORMATS
    )


def figure_files():
    names = ["miou_vs_threshold", "similarity_histograms", "qualitative"]
    return expand(
        f"{RESULTS}/figures/{{name}}_{{dataset}}.png",
        name=names,
        dataset=CFG.evaluation.datasets,
    )


def report_files():
    pages = [f"{RESULTS}/report/tables_{d}.html" for d in CFG.evaluation.datasets]
    return [f"{RESULTS}/report/summary.md", f"{RESULTS}/report/summary.html", *pages]


def explorer_files():
    return [f"{RESULTS}/explorer/{d}.html" for d in CFG.evaluation.datasets]


def final_targets():
    # Every experiment is trained, selected and published; `models` says which are evaluated.
    targets = [selection_file(e) for e in CFG.experiments]
    targets += [published_checkpoint(e) for e in CFG.experiments]
    if CFG.evaluation.datasets and CFG.models:
        targets += table_files() + figure_files() + report_files() + explorer_files()
    return targets


# ----------------------------------------------------------------------------- tracking hooks
def run_hook(command):
    shell(f"{command} --config {CONFIG_FILE}")


# ----------------------------------------------------------------------------- the data on disk
# Snakemake sees modification times, not the data: a file of data_dir changed by hand since
# `mmc data version` would leave every job that read it as it was. Checked once, by the main
# process (cluster jobs parse this file too), from file sizes and times (docs/workflow.md).
# Published checkpoints likewise, against what `mmc publish` noted (a file rewritten with its old
# modification time is found from its change time and md5).
if workflow.is_main_process:
    _changes = mmc_dvc.unversioned_changes(DATA_VERSION, versioned_data())
    if _changes:
        raise WorkflowError(
            mmc_dvc.unversioned_message(DATA_VERSION, _changes, CONFIG_FILE)
        )
    for _experiment in CFG.experiments:
        _published = published_checkpoint(_experiment) + ".dvc"
        _changes = mmc_dvc.unversioned_changes(
            _published, [selection_file(_experiment)]
        )
        if _changes:
            raise WorkflowError(mmc_dvc.republish_message(_published, _changes))


# The HTML report, rendered by the onsuccess hook (a second snakemake reading this run's metadata).
REPORT_HTML = f"{RESULTS}/report.html"
REPORT_COMMAND = (
    f"snakemake --snakefile {workflow.main_snakefile} --configfile {CONFIG_FILE}"
)
