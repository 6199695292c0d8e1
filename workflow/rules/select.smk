rule select:
    input:
        unpack(select_inputs),
    output:
        selection_file("{experiment}", "{seed}"),
    log:
        f"{RESULTS}/logs/select/{{experiment}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/{{experiment}}/seed{{seed}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        config_hash=lambda wc: section_hash(
            CFG.selection,
            experiment_config(wc.experiment),
            CFG.evaluation,
            int(wc.seed),
        ),
    shell:
        "({params.job_info} && mmc select --config {params.config} --experiment {wildcards.experiment} --seed {wildcards.seed} --checkpoints {input.checkpoints} --out {output}) > {log} 2>&1"
