# The leaderboard: one table comparing the experiments (mean and std over seeds).


localrules:
    summary,


rule summary:
    input:
        script=script("summary"),
        modules=package_modules("summary"),
        metrics=expand("results/{run}/metrics.json", run=RUNS),
        info=expand("results/{run}/train_info.json", run=RUNS),
    output:
        csv="results/summary.csv",
        md="results/summary.md",
        html=report(
            "results/summary.html",
            caption="../report/leaderboard.rst",
            category="1. Leaderboard",
            labels={"table": "leaderboard"},
        ),
    params:
        python=PYTHON,
        runs=[f"results/{run}" for run in RUNS],
        weights_source=weights_label(),
    log:
        "results/logs/summary.log",
    shell:
        "{params.python} {input.script} --runs {params.runs} --weights-source {params.weights_source:q} "
        "--out-csv {output.csv} --out-md {output.md} --out-html {output.html} > {log} 2>&1"
