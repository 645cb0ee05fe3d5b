# Honest numbers: every experiment is evaluated on the same held-out test images. Besides the
# numbers (metrics.json), the rule draws what a reader acts on: the confusion matrix, the
# reliability diagram and the learning curves, all in the Snakemake report (`--report`).


rule evaluate:
    input:
        unpack(lambda w: target_decoded(w.experiment)),
        unpack(onnx_to_score),
        script=script("evaluate"),
        modules=package_modules("evaluate"),
        checkpoint=rules.train.output.checkpoint,
        history=rules.train.output.history,
        train_info=rules.train.output.info,
        split="resources/splits/target.csv",
        split_report="resources/splits/target.report.json",
    output:
        metrics="results/{experiment}/seed{seed}/metrics.json",
        confusion="results/{experiment}/seed{seed}/confusion_matrix.csv",
        predictions="results/{experiment}/seed{seed}/test_predictions.csv",
        html=report(
            "results/{experiment}/seed{seed}/metrics.html",
            caption="../report/metrics.rst",
            category="2. Evaluation",
            subcategory="{experiment} seed {seed}",
            labels=run_labels("metrics tables"),
        ),
        confusion_png=report(
            "results/{experiment}/seed{seed}/confusion_matrix.png",
            caption="../report/confusion_matrix.rst",
            category="2. Evaluation",
            subcategory="{experiment} seed {seed}",
            labels=run_labels("confusion matrix"),
        ),
        reliability_png=report(
            "results/{experiment}/seed{seed}/reliability.png",
            caption="../report/reliability.rst",
            category="2. Evaluation",
            subcategory="{experiment} seed {seed}",
            labels=run_labels("reliability diagram"),
        ),
        learning_curves_png=report(
            "results/{experiment}/seed{seed}/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="2. Evaluation",
            subcategory="{experiment} seed {seed}",
            labels=run_labels("learning curves"),
        ),
    params:
        python=PYTHON,
        top_k=config["evaluate"]["top_k"],
        calibration_bins=config["evaluate"]["calibration_bins"],
        device=Untracked(config["evaluate"]["device"]),
        batch_size=Untracked(config["evaluate"]["batch_size"]),
        tta=config["evaluate"]["tta"],
        onnx=lambda w, input: f"--onnx {input.onnx}" if "onnx" in input.keys() else "",
        title=lambda w: f"{w.experiment} seed {w.seed}",
    log:
        "results/logs/evaluate/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=1 if config["evaluate"]["device"] == "cuda" else 0,
    shell:
        "exec {params.python:q} {input.script:q} --checkpoint {input.checkpoint} --split {input.split} --split-report {input.split_report} "
        "--history {input.history} --train-info {input.train_info} "
        "--decoded {input.decoded_images} {input.decoded_info} "
        "--out-metrics {output.metrics} --out-confusion {output.confusion} "
        "--out-predictions {output.predictions} --out-html {output.html} "
        "--out-confusion-png {output.confusion_png} --out-reliability-png {output.reliability_png} "
        "--out-learning-curves-png {output.learning_curves_png} --title {params.title:q} "
        "--top-k {params.top_k} --calibration-bins {params.calibration_bins} "
        "--device {params.device} --batch-size {params.batch_size} {params.onnx} --tta {params.tta} --threads {threads} > {log} 2>&1"
