# `dvc add` of the whole data folder once every dataset the run reads is complete: the `.dir` md5
# in data.dvc is then tagged on every job that reads the data. DVC allows one command per
# repository at a time and may push to a remote: a local rule holding the `dvc` resource.


rule version_data:
    input:
        versioned_data(),
    output:
        DATA_VERSION,
    log:
        f"{RESULTS}/logs/version_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/version_data.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    resources:
        dvc=1,
    params:
        config=CONFIG_FILE,
        config_hash=section_hash(CFG.dvc),
    shell:
        "mmc data version --config {params.config} > {log} 2>&1"
