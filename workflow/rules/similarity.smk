rule similarity:
    input:
        unpack(evaluation_inputs),
    output:
        result=f"{RESULTS}/similarity/{{model}}/{{dataset}}/similarity.json",
        histogram_png=f"{RESULTS}/similarity/{{model}}/{{dataset}}/histogram.png",
        histogram_svg=f"{RESULTS}/similarity/{{model}}/{{dataset}}/histogram.svg",
    log:
        f"{RESULTS}/logs/similarity/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/similarity/{{model}}/{{dataset}}.jsonl"
    conda:
        "../envs/mmc.yaml"
    resources:
        gpu=0,
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        config_hash=lambda wc: evaluation_hash(wc, CFG.evaluation, CFG.similarity),
        model=model_args,
        out=lambda wc, output: os.path.dirname(output.result),
    shell:
        "({params.job_info} && mmc similarity --config {params.config} {params.model} --dataset {wildcards.dataset} --out {params.out}) > {log} 2>&1"
