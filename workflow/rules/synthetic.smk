rule synthetic:
    output:
        SYNTHETIC_MARKER,
    log:
        f"{RESULTS}/logs/synthetic.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthetic.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        config_hash=section_hash(CFG.synthetic),
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "mmc data synthetic --config {params.config} --out {params.out} > {log} 2>&1"
