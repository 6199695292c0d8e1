# Provenance hooks (docs/provenance.md). They run in the main snakemake process only, never in dry
# runs: `mmc track start` opens the invocation's parent run; afterwards a single writer loads the
# per-job records into the MLflow store and `mmc pipeline-info` writes the audit trail.


onstart:
    if CFG.tracking.enabled:
        run_hook("mmc track start")


onsuccess:
    if CFG.tracking.enabled:
        run_hook("mmc track load --status finished")
    run_hook(f"mmc pipeline-info --snakefile {workflow.main_snakefile}")


onerror:
    # The job's own error is what matters: a failing hook is reported, never raised over it.
    try:
        if CFG.tracking.enabled:
            run_hook("mmc track load --status failed")
        run_hook(f"mmc pipeline-info --snakefile {workflow.main_snakefile}")
    except Exception as error:
        print(
            f"provenance hooks failed after the error above: {error}",
            file=sys.stderr,
        )
