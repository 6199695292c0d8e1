# The prompt explorer: one self-contained HTML page per evaluation dataset, shown in the report.
# Its features come through the evaluation's own path (the feature cache that segment filled).
# Like the figures, it shows each model once: the evaluation of its first seed.


rule explorer:
    input:
        summaries=lambda wc: [
            f"{RESULTS}/segment/{r}/{wc.dataset}/summary.json" for r in figure_runs()
        ],
        objects=lambda wc: [
            f"{RESULTS}/segment/{r}/{wc.dataset}/objects.parquet"
            for r in figure_runs()
        ],
        dataset=lambda wc: dataset_ready(wc.dataset),
        checkpoints=figure_checkpoint_inputs(),
    output:
        report(
            f"{RESULTS}/explorer/{{dataset}}.html",
            caption="../report/explorer.rst",
            category="{dataset}",
            labels={"result": "prompt explorer (interactive)"},
        ),
    log:
        f"{RESULTS}/logs/explorer/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/explorer/{{dataset}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        checkpoints=" ".join(
            f"--checkpoint {model}={path}"
            for model, path in figure_checkpoints().items()
        ),
        config_hash=lambda wc: section_hash(
            CFG.models,
            CFG.seeds,
            dataset_config(wc.dataset),
            CFG.evaluation,
            CFG.report,
        ),
    shell:
        "({params.job_info} && mmc explorer --config {params.config} --dataset {wildcards.dataset} --summaries {input.summaries} --objects {input.objects} {params.checkpoints} --out {output}) > {log} 2>&1"
