rule figures:
    input:
        summaries=figure_inputs("summaries"),
        objects=figure_inputs("objects"),
        similarity=figure_inputs("similarity"),
        datasets=[dataset_ready(name) for name in CFG.evaluation.datasets],
        checkpoints=figure_checkpoint_inputs(),
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
    conda:
        "../envs/mmc.yaml"
    params:
        config=CONFIG_FILE,
        job_info=JOB_INFO,
        checkpoints=" ".join(
            f"--checkpoint {model}={path}"
            for model, path in figure_checkpoints().items()
        ),
        config_hash=section_hash(CFG.models, CFG.evaluation.datasets),
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "({params.job_info} && mmc figures --config {params.config} --summaries {input.summaries} --objects {input.objects} --similarity {input.similarity} {params.checkpoints} --out {params.out}) > {log} 2>&1"
