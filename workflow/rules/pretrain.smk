# The declared output holds only the kept epoch checkpoints. Rolling resume state lives in
# {state_dir}/pretrain/<experiment>, outside every declared output, because Snakemake deletes a
# job's outputs before it reruns: an interrupted run resumes from there.


rule pretrain:
    input:
        pretrain_inputs,
    output:
        directory(pretrain_dir("{experiment}")),
    log:
        f"{RESULTS}/logs/pretrain/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{experiment}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    resources:
        gpu=0,
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        config_hash=lambda wc: section_hash(experiment_config(wc.experiment), CFG.seed),
        launcher=pretrain_launcher,
    shell:
        "({params.job_info} && {params.launcher} pretrain --config {params.config} --experiment {wildcards.experiment} --out {output}) > {log} 2>&1"
