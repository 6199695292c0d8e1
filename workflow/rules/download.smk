# Downloads need the internet, which compute nodes often lack: they run where snakemake runs.


rule download:
    output:
        f"{DATA}/manifests/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/{{dataset}}.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        config_hash=lambda wc: section_hash(dataset_config(wc.dataset)),
    shell:
        "mmc data download {wildcards.dataset} --config {params.config} > {log} 2>&1"


rule fetch_checkpoint:
    output:
        f"{DATA}/checkpoints/{{model}}.pth",
    log:
        f"{RESULTS}/logs/fetch_checkpoint/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_checkpoint/{{model}}.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        config_hash=lambda wc: section_hash(model_config(wc.model)),
    shell:
        "mmc data fetch-checkpoint {wildcards.model} --config {params.config} > {log} 2>&1"
