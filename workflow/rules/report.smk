# The report stage writes a one-page summary (selected checkpoints + result tables) that heads the
# Snakemake HTML report; the HTML itself is rendered afterwards by `snakemake --report`.


rule report:
    input:
        selections=[selection_file(e, s) for e, s in experiment_runs()],
        tables=expand(f"{RESULTS}/tables/{{table}}.md", table=TABLES),
    output:
        report(
            f"{RESULTS}/report/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
    shell:
        "mmc report --config {params.config} --selections {input.selections} --tables {input.tables} --out {output} > {log} 2>&1"
