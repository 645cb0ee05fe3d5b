# The leaderboard: one table comparing the experiments (mean and std over seeds).


localrules:
    summary,


def weights_label():
    """The pretrained weights as the leaderboard names them."""
    weights = config["weights"]
    source = weights["source"]
    if source == "torchvision":
        return f"torchvision:{weights['torchvision']}"
    if source in ("url", "path") and weights.get(source):
        return f"{source}:{os.path.basename(str(weights[source]).rstrip('/'))}"
    return source


rule summary:
    input:
        script=script("summary"),
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
        runs=[f"results/{run}" for run in RUNS],
        weights_source=weights_label(),
    log:
        "results/logs/summary.log",
    shell:
        "{PYTHON} {input.script} --runs {params.runs} --weights-source {params.weights_source:q} "
        "--out-csv {output.csv} --out-md {output.md} --out-html {output.html} > {log} 2>&1"
