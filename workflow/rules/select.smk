rule select:
    input:
        unpack(select_inputs),
    output:
        selection_file("{experiment}"),
    log:
        f"{RESULTS}/logs/select/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/{{experiment}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        config_hash=lambda wc: section_hash(
            CFG.selection, experiment_config(wc.experiment), CFG.evaluation
        ),
    shell:
        "({params.job_info} && mmc select --config {params.config} --experiment {wildcards.experiment} --checkpoints {input.checkpoints} --out {output}) > {log} 2>&1"
