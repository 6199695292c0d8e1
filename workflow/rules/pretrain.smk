# The declared output holds only the kept epoch checkpoints. Rolling resume state lives in
# {state_dir}/pretrain/<experiment>, outside every declared output, because Snakemake deletes a
# job's outputs before it reruns: an interrupted run resumes from there.
#
# `exec`: the shell becomes the launcher, so no shell sits between Snakemake and `mmc pretrain`.
# SLURM's walltime warning and `scancel --signal=TERM` signal every process of the job step; a
# shell would die of it at once, and the step would end (killing the trainer mid-checkpoint)
# instead of waiting for `mmc pretrain` to write its resume checkpoint and exit 75.


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
        "exec > {log} 2>&1; {params.job_info}; exec {params.launcher} pretrain --config {params.config} --experiment {wildcards.experiment} --out {output}"
