"""The sbatch command lines a SLURM profile submits, rendered by the installed SLURM executor plugin.

    python tests/slurm_render.py --profile workflow/profiles/slurm [--configfile config/config.yaml]

Snakemake plans the workflow exactly as `snakemake --profile P --configfile F -n` does (the
profile's resources, the rules' resources, the config's jobs). Each job the dry run would submit
is handed to the plugin's own `get_submit_command` and `set_gres_string`, the two functions its
`run_job` joins into the sbatch call. Only the site lookups are not done (the plugin asks
`sacctmgr` to validate the account and `scontrol` for the default partition): the account and
partition arguments are written as the plugin writes them after that check (` -A 'acct'`,
` -p 'part'`). Prints JSON, one object per submitted job: rule, wildcards, resources, sbatch;
`local` lists the jobs that run on the submit host.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys

from workflow_helpers import REPO

PLAIN = (str, int, float, bool)


def _account_partition(resources) -> tuple[str, str]:
    account = resources.get("slurm_account")
    partition = resources.get("slurm_partition")
    return (
        f" -A {shlex.quote(str(account))}" if account else "",
        f" -p {shlex.quote(str(partition))}" if partition else "",
    )


def render(profile: str, configfile: str, extra: list[str] | None = None) -> dict:
    """Dry-run the workflow with ``profile`` and render the sbatch call of every submitted job."""
    from snakemake import cli
    from snakemake.executors import dryrun
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    rendered: list[dict] = []
    local: list[str] = []
    settings: dict = {}
    errors: list[str] = []

    def run_job(self, job):
        try:
            record(job)
        except Exception as error:  # reported after the dry run: the scheduler would swallow it
            errors.append(f"{job.rule.name}: {type(error).__name__}: {error}")
        original(self, job)

    def record(job):
        # `job.is_local` is true for every job of a dry run; what a real run decides is this:
        rule, workflow = job.rule, job.dag.workflow
        if rule.name in workflow._localrules or rule.norun:
            local.append(job.rule.name)
        else:
            wildcards = dict(job.wildcards_dict)
            account, partition = _account_partition(job.resources)
            params = {
                "run_uuid": "RUN_UUID",
                "slurm_logfile": f".snakemake/slurm_logs/rule_{job.name}/%j.log",
                "comment_str": f"rule_{job.name}",
                "account": account,
                "partition": partition,
                "workdir": "WORKDIR",
            }
            validate_slurm_extra(job)
            call = get_submit_command(job, params, settings=settings["slurm"])
            call += set_gres_string(job)
            rendered.append(
                {
                    "rule": job.rule.name,
                    "wildcards": wildcards,
                    "resources": {k: v for k, v in dict(job.resources).items() if isinstance(v, PLAIN)},
                    "params": {k: v for k, v in dict(job.params).items() if isinstance(v, str)},
                    "sbatch": call,
                }
            )

    original = dryrun.Executor.run_job
    argv = ["--snakefile", str(REPO / "workflow" / "Snakefile"), "--profile", profile]
    argv += ["--configfile", configfile, "--dry-run", "--cores", "1024", *(extra or [])]
    parser, args = cli.parse_args(argv)
    args.executor = "slurm"  # the profile says so; kept explicit: the plugin validates the resources
    settings["slurm"] = ExecutorPluginRegistry().get_plugin("slurm").get_settings(args)
    dryrun.Executor.run_job = run_job
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ok = cli.args_to_api(args, parser)
    finally:
        dryrun.Executor.run_job = original
    if errors:
        raise RuntimeError("rendering failed: " + "; ".join(sorted(set(errors))))
    if not ok or not rendered:
        raise RuntimeError(f"the dry run failed or submitted nothing:\n{log.getvalue()[-4000:]}")
    return {"jobs": rendered, "local": sorted(set(local))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--one-per-rule", action="store_true", help="print one job of each rule")
    parser.add_argument("extra", nargs="*", help="more snakemake arguments (after --)")
    args = parser.parse_args()
    result = render(args.profile, args.configfile, args.extra)
    if args.one_per_rule:
        seen: dict[str, dict] = {}
        for job in result["jobs"]:
            seen.setdefault(job["rule"], job)
        result["jobs"] = list(seen.values())
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
