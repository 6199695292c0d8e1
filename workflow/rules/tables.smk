rule tables:
    input:
        summaries=segment_summaries(),
        objects=segment_objects(),
        similarity=similarity_results(),
    output:
        [
            report(
                f"{RESULTS}/tables/{table}.csv",
                caption="../report/tables_csv.rst",
                category="Overview",
                labels={"result": f"table as CSV: {table}"},
            )
            for table in TABLES
        ],
        expand(f"{RESULTS}/tables/{{table}}.{{ext}}", table=TABLES, ext=["md", "tex"]),
    log:
        f"{RESULTS}/logs/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        config_hash=section_hash(
            CFG.models, CFG.evaluation.datasets, CFG.tables, CFG.seeds
        ),
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "mmc tables --config {params.config} --summaries {input.summaries} --objects {input.objects} --similarity {input.similarity} --out {params.out} > {log} 2>&1"
