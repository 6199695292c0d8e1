# Provenance hooks (see docs/provenance.md). They run in the main snakemake process only, never in
# dry runs: `mmc track start` opens the invocation's parent run; after the run, one single writer
# loads the per-job records into the MLflow store and `mmc pipeline-info` writes the audit trail.


onstart:
    if CFG.tracking.enabled:
        run_hook("mmc track start")


onsuccess:
    if CFG.tracking.enabled:
        run_hook("mmc track load")
    run_hook("mmc pipeline-info")


onerror:
    if CFG.tracking.enabled:
        run_hook("mmc track load")
    run_hook("mmc pipeline-info")
