rule figures:
    input:
        summaries=segment_summaries(),
        objects=segment_objects(),
        similarity=similarity_results(),
        datasets=[dataset_ready(name) for name in CFG.evaluation.datasets],
    output:
        report(
            expand(
                f"{RESULTS}/figures/miou_vs_threshold_{{dataset}}.png",
                dataset=CFG.evaluation.datasets,
            ),
            caption="../report/miou_vs_threshold.rst",
            category="Figures",
            subcategory="mIoU vs threshold",
        ),
        report(
            expand(
                f"{RESULTS}/figures/similarity_histograms_{{dataset}}.png",
                dataset=CFG.evaluation.datasets,
            ),
            caption="../report/similarity_histograms.rst",
            category="Figures",
            subcategory="Similarity histograms",
        ),
        report(
            expand(
                f"{RESULTS}/figures/qualitative_{{dataset}}.png",
                dataset=CFG.evaluation.datasets,
            ),
            caption="../report/qualitative.rst",
            category="Figures",
            subcategory="Qualitative",
        ),
        expand(
            f"{RESULTS}/figures/{{name}}_{{dataset}}.svg",
            name=["miou_vs_threshold", "similarity_histograms"],
            dataset=CFG.evaluation.datasets,
        ),
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.jsonl"
    localrule: True
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        config_hash=section_hash(CFG.models, CFG.evaluation.datasets),
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "mmc figures --config {params.config} --summaries {input.summaries} --objects {input.objects} --similarity {input.similarity} --out {params.out} > {log} 2>&1"
