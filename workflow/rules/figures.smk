# The figures of every evaluation dataset; each PNG is shown in the report under its dataset.
FIGURES = {
    "miou_vs_threshold": "figure: mIoU vs threshold",
    "similarity_histograms": "figure: similarity histograms",
    "qualitative": "figure: predicted masks",
}


rule figures:
    input:
        summaries=figure_inputs("summaries"),
        objects=figure_inputs("objects"),
        similarity=figure_inputs("similarity"),
        datasets=[dataset_ready(name) for name in CFG.evaluation.datasets],
        checkpoints=figure_checkpoint_inputs(),
    output:
        [
            report(
                f"{RESULTS}/figures/{name}_{dataset}.png",
                caption=f"../report/{name}.rst",
                category=dataset,
                labels={"result": label},
            )
            for dataset in CFG.evaluation.datasets
            for name, label in FIGURES.items()
        ],
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
