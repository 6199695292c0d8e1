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
from mmc.evaluation.job import selection_file as mmc_selection_file
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


# The training seeds (docs/workflow.md#seeds): every experiment runs once per seed; a seeded model's
# evaluations live under MODEL/seedS, so the `model` wildcard of the evaluation rules may carry one.
SEEDS = list(CFG.seeds)


wildcard_constraints:
    experiment="[A-Za-z0-9_-]+",
    seed="-?[0-9]+",
    model="[A-Za-z0-9_-]+(/seed-?[0-9]+)?",
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


def experiment_runs():
    """(experiment, seed) of every pretraining, selection and publication."""
    return [(e, s) for e in CFG.experiments for s in SEEDS]


def pretrain_dir(experiment, seed):
    return f"{RESULTS}/pretrain/{experiment}/seed{seed}"


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
        model_checkpoint(m, None)
        for m, model in CFG.models.items()
        if model.source == "url"
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
        ancient(path) if path else pretrain_dir(wildcards.experiment, wildcards.seed)
    )
    if CFG.selection.policy != "last":
        inputs["selection_data"] = dataset_ready(CFG.selection.dataset)
        inputs["data_version"] = DATA_VERSION
    return inputs


def selection_file(experiment, seed):
    return mmc_selection_file(RESULTS, experiment, seed)


def published_checkpoint(experiment, seed):
    return f"{CFG.dvc.checkpoint_dir}/{experiment}/seed{seed}.pth"


# ----------------------------------------------------------------------------- datasets, models
SYNTHETIC_MARKER = f"{SYNTHETIC_DIR}/classes.json"


def dataset_ready(name):
    """The file that exists once dataset ``name`` is complete on disk."""
    if dataset_config(name).format == "synthetic":
        return SYNTHETIC_MARKER
    return f"{DATA}/manifests/{name}.json"


def model_seeds(name):
    """The seeds model ``name`` is evaluated with, or [None] for a model evaluated once."""
    return list(mmc_config.model_seeds(model_config(name), SEEDS) or [None])


def model_runs(name):
    """The evaluations of model ``name``: MODEL/seedS per seed, or MODEL."""
    return [mmc_config.run_name(name, seed) for seed in model_seeds(name)]


def split_run(run):
    """``MODEL/seedS`` -> (MODEL, S); ``MODEL`` -> (MODEL, None); the model must exist."""
    name, _, rest = run.partition("/")
    model_config(name)
    seed = int(rest.removeprefix("seed")) if rest else None
    if seed not in model_seeds(name):
        raise WorkflowError(
            f"no evaluation {run!r} of model {name!r} (have: {', '.join(model_runs(name))})"
        )
    return name, seed


def model_checkpoint(name, seed):
    """The checkpoint file one evaluation of a model reads, or None (random and colour models)."""
    model = model_config(name)
    if model.source == "experiment":
        if model.checkpoint == "initial":
            return f"{pretrain_dir(model.experiment, seed)}/epoch_0000.pth"
        return published_checkpoint(model.experiment, seed)
    if model.source == "url":
        return f"{DATA}/checkpoints/{name}.pth"
    if model.source == "file":
        return model.path
    return None


def evaluation_inputs(wildcards):
    inputs = {"dataset": dataset_ready(wildcards.dataset), "data_version": DATA_VERSION}
    name, seed = split_run(wildcards.model)
    model = model_config(name)
    path = model_checkpoint(name, seed)
    if path is None:
        return inputs
    if model.source == "file":
        inputs["checkpoint"] = ancient(path)
    elif model.source == "experiment" and model.checkpoint == "initial":
        # a file inside the pretraining job's directory output: depend on the directory
        inputs["checkpoint"] = pretrain_dir(model.experiment, seed)
    else:
        inputs["checkpoint"] = path
    return inputs


def model_args(wildcards):
    """``--model M [--seed S] [--checkpoint PATH]`` of one evaluation job."""
    name, seed = split_run(wildcards.model)
    path = model_checkpoint(name, seed)
    args = [f"--model {name}"]
    args += [f"--seed {seed}"] if seed is not None else []
    args += [f"--checkpoint {path}"] if path else []
    return " ".join(args)


def evaluation_hash(wildcards, *sections):
    name, seed = split_run(wildcards.model)
    return section_hash(
        model_config(name), seed, dataset_config(wildcards.dataset), *sections
    )


# ----------------------------------------------------------------------------- final targets
def evaluated_pairs():
    """(run, dataset) of every evaluation: each model's runs (one per seed) on every dataset."""
    return [
        (r, d)
        for m in CFG.models
        for r in model_runs(m)
        for d in CFG.evaluation.datasets
    ]


def segment_summaries():
    return [f"{RESULTS}/segment/{r}/{d}/summary.json" for r, d in evaluated_pairs()]


def segment_objects():
    return [f"{RESULTS}/segment/{r}/{d}/objects.parquet" for r, d in evaluated_pairs()]


def similarity_results():
    return [
        f"{RESULTS}/similarity/{r}/{d}/similarity.json" for r, d in evaluated_pairs()
    ]


def figure_runs():
    """The figures show each model once: its first seed."""
    return [model_runs(m)[0] for m in CFG.models]


def figure_inputs(kind):
    folder, name = {
        "summaries": ("segment", "summary.json"),
        "objects": ("segment", "objects.parquet"),
        "similarity": ("similarity", "similarity.json"),
    }[kind]
    return [
        f"{RESULTS}/{folder}/{r}/{d}/{name}"
        for r in figure_runs()
        for d in CFG.evaluation.datasets
    ]


def figure_checkpoints():
    """MODEL -> the checkpoint of the evaluation the figures show (models that read one)."""
    found = {}
    for model in CFG.models:
        path = model_checkpoint(model, model_seeds(model)[0])
        if path:
            found[model] = path
    return found


def figure_checkpoint_inputs():
    found = []
    for model in CFG.models:
        seed = model_seeds(model)[0]
        spec = model_config(model)
        if spec.source == "experiment" and spec.checkpoint == "initial":
            found.append(pretrain_dir(spec.experiment, seed))
        elif model_checkpoint(model, seed):
            found.append(model_checkpoint(model, seed))
    return found


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
    # Every experiment is trained, selected and published (once per seed); `models` says which
    # are evaluated.
    targets = [selection_file(e, s) for e, s in experiment_runs()]
    targets += [published_checkpoint(e, s) for e, s in experiment_runs()]
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
    for _experiment, _seed in experiment_runs():
        _published = published_checkpoint(_experiment, _seed) + ".dvc"
        _changes = mmc_dvc.unversioned_changes(
            _published, [selection_file(_experiment, _seed)]
        )
        if _changes:
            raise WorkflowError(mmc_dvc.republish_message(_published, _changes))


# The HTML report, rendered by the onsuccess hook (a second snakemake reading this run's metadata).
REPORT_HTML = f"{RESULTS}/report.html"
REPORT_COMMAND = (
    f"snakemake --snakefile {workflow.main_snakefile} --configfile {CONFIG_FILE}"
)
