# One table comparing the experiments (mean and std over seeds).


localrules:
    summary,


rule summary:
    input:
        script=script("summary"),
        metrics=expand("results/{run}/metrics.json", run=RUNS),
        info=expand("results/{run}/train_info.json", run=RUNS),
    output:
        csv="results/summary.csv",
        md="results/summary.md",
    params:
        runs=[f"results/{run}" for run in RUNS],
        weights_source=config["weights"]["source"],
    log:
        "results/logs/summary.log",
    shell:
        "{PYTHON} {input.script} --runs {params.runs} --weights-source {params.weights_source} "
        "--out-csv {output.csv} --out-md {output.md} > {log} 2>&1"
