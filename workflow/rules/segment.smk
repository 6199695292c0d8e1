# One job per model evaluation ({model} is MODEL, or MODEL/seedS for a seeded model) and dataset.


rule segment:
    input:
        unpack(evaluation_inputs),
    output:
        objects=f"{RESULTS}/segment/{{model}}/{{dataset}}/objects.parquet",
        summary_csv=f"{RESULTS}/segment/{{model}}/{{dataset}}/summary.csv",
        summary=f"{RESULTS}/segment/{{model}}/{{dataset}}/summary.json",
    log:
        f"{RESULTS}/logs/segment/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{model}}/{{dataset}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    resources:
        gpu=0,
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        config_hash=lambda wc: evaluation_hash(wc, CFG.evaluation),
        model=model_args,
        out=lambda wc, output: os.path.dirname(output.summary),
    shell:
        "({params.job_info} && mmc segment --config {params.config} {params.model} --dataset {wildcards.dataset} --out {params.out}) > {log} 2>&1"
