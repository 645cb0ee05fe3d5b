# The leaderboard: every run (mean and std over seeds), ranked by the validation metric (train.metric);
# the run selected per experiment (a sweep's runs together) is marked and written to selected.json.


rule summary:
    localrule: True
    input:
        script=script("summary"),
        modules=package_modules("summary"),
        metrics=expand("results/{run}/metrics.json", run=RUNS),
        info=expand("results/{run}/train_info.json", run=RUNS),
        history=expand("results/{run}/history.csv", run=RUNS),  # ties on the metric: the best epoch's val_loss
        predictions=expand("results/{run}/test_predictions.csv", run=RUNS),
        split_report="resources/splits/target.report.json",
    output:
        csv="results/summary.csv",
        md="results/summary.md",
        selected="results/selected.json",
        html=report(
            "results/summary.html",
            caption="../report/leaderboard.rst",
            category="1. Leaderboard",
            labels={"table": "leaderboard"},
        ),
    params:
        python=PYTHON,
        runs=[output_path(f"results/{run}") for run in RUNS],
        weights_source=weights_label(),
        sweep_of=as_json(SWEEP_OF),
        export_tta="--export-tta" if config["export"]["tta"] else "",
        report_note=Untracked(" ".join(REPORT_NOTES)),  # read by the report's caption only
    log:
        "results/logs/summary.log",
    shell:
        "exec {params.python:q} {input.script:q} --runs {params.runs} --weights-source {params.weights_source:q} "
        "--sweep-of {params.sweep_of:q} {params.export_tta} --out-csv {output.csv} --out-md {output.md} --out-html {output.html} "
        "--out-selected {output.selected} --split-report {input.split_report} > {log} 2>&1"
