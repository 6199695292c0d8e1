# One job per experiment and training seed. The declared output holds only the kept epoch
# checkpoints (and the initial weights, epoch_0000.pth). Rolling resume state lives in
# {state_dir}/pretrain/<experiment>/seed<seed>, outside every declared output, because Snakemake
# deletes a job's outputs before it reruns: an interrupted run resumes from there.
#
# `exec`: the shell becomes the launcher, so no shell sits between Snakemake and `mmc pretrain`.
# SLURM's walltime warning and `scancel --signal=TERM` signal every process of the job step; a
# shell would die of it at once, and the step would end (killing the trainer mid-checkpoint)
# instead of waiting for `mmc pretrain` to write its resume checkpoint and exit 75.


rule pretrain:
    input:
        pretrain_inputs,
    output:
        directory(pretrain_dir("{experiment}", "{seed}")),
    log:
        f"{RESULTS}/logs/pretrain/{{experiment}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{experiment}}/seed{{seed}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    resources:
        gpu=0,
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        config_hash=lambda wc: section_hash(
            experiment_config(wc.experiment), int(wc.seed)
        ),
        launcher=pretrain_launcher,
    shell:
        "exec > {log} 2>&1; {params.job_info}; exec {params.launcher} pretrain --config {params.config} --experiment {wildcards.experiment} --seed {wildcards.seed} --out {output}"
