# Honest numbers: every experiment is evaluated on the same held-out test images.


rule evaluate:
    input:
        script=script("evaluate"),
        checkpoint=rules.train.output.checkpoint,
        split="resources/splits/target.csv",
    output:
        metrics="results/{experiment}/seed{seed}/metrics.json",
        confusion="results/{experiment}/seed{seed}/confusion_matrix.csv",
        predictions="results/{experiment}/seed{seed}/test_predictions.csv",
    params:
        top_k=config["evaluate"]["top_k"],
    log:
        "results/logs/evaluate/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "{PYTHON} {input.script} --checkpoint {input.checkpoint} --split {input.split} "
        "--out-metrics {output.metrics} --out-confusion {output.confusion} "
        "--out-predictions {output.predictions} --top-k {params.top_k} --threads {threads} > {log} 2>&1"
