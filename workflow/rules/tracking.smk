# Provenance hooks (docs/provenance.md). They run in the main snakemake process only, never in dry
# runs: `mmc track start` opens the invocation's parent run; afterwards a single writer loads the
# per-job records into the MLflow store, the HTML report is rendered, `mmc pipeline-info` writes the
# audit trail (after the report, which it lists) and `mmc share` versions the run folder with DVC
# and pushes it (docs/sharing.md).


onstart:
    if CFG.tracking.enabled:
        run_hook("mmc track start")


onsuccess:
    if CFG.tracking.enabled:
        run_hook("mmc track load --status finished")
    if all(os.path.exists(path) for path in final_targets()):
        shell(f"{REPORT_COMMAND} --report {REPORT_HTML}")
    else:  # a run asked for some targets only: the report needs the tables and figures
        print(
            f"mmc: {REPORT_HTML} not rendered: the final targets are not all made yet"
        )
    run_hook(
        f"mmc pipeline-info --snakefile {workflow.main_snakefile} --report {REPORT_HTML}"
    )
    if CFG.dvc.version_results:
        run_hook("mmc share")


onerror:
    # The job's own error is what matters: a failing hook is reported, never raised over it.
    try:
        if CFG.tracking.enabled:
            run_hook("mmc track load --status failed")
        run_hook(
            f"mmc pipeline-info --snakefile {workflow.main_snakefile} --report {REPORT_HTML}"
        )
    except Exception as error:
        print(
            f"provenance hooks failed after the error above: {error}",
            file=sys.stderr,
        )
