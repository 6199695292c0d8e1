# DVC allows one command per repository at a time and may push to a remote: a local rule, and
# the `dvc` resource (1 in every profile) keeps two publish jobs from running at once.


rule publish:
    input:
        selection=selection_file("{experiment}", "{seed}"),
    output:
        checkpoint=published_checkpoint("{experiment}", "{seed}"),
        dvc=published_checkpoint("{experiment}", "{seed}") + ".dvc",
    log:
        f"{RESULTS}/logs/publish/{{experiment}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/publish/{{experiment}}/seed{{seed}}.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    resources:
        dvc=1,
    params:
        config=CONFIG_FILE,
        config_hash=section_hash(CFG.dvc),
    shell:
        "mmc publish --config {params.config} --experiment {wildcards.experiment} --seed {wildcards.seed} --selection {input.selection} --out {output.checkpoint} > {log} 2>&1"
