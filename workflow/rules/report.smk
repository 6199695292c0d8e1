# The report stage writes the pages of numbers that the Snakemake HTML report shows inline: the
# run's summary (selected checkpoints, then every table per dataset) and one page of tables per
# dataset; the HTML report itself is rendered afterwards by `snakemake --report`.


rule report:
    input:
        selections=[selection_file(e, s) for e, s in experiment_runs()],
        tables=expand(f"{RESULTS}/tables/{{table}}.md", table=TABLES),
        csv=expand(f"{RESULTS}/tables/{{table}}.csv", table=TABLES),
    output:
        summary=f"{RESULTS}/report/summary.md",
        html=report(
            f"{RESULTS}/report/summary.html",
            caption="../report/summary.rst",
            category="Overview",
            labels={"result": "summary: selected checkpoints and every table"},
        ),
        datasets=[
            report(
                f"{RESULTS}/report/tables_{dataset}.html",
                caption="../report/tables.rst",
                category=dataset,
                labels={"result": "tables: segmentation and similarity"},
            )
            for dataset in CFG.evaluation.datasets
        ],
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        html_dir=lambda wc, output: os.path.dirname(output.html),
    shell:
        "mmc report --config {params.config} --selections {input.selections} --tables {input.tables} --csv {input.csv} --out {output.summary} --html-dir {params.html_dir} > {log} 2>&1"
