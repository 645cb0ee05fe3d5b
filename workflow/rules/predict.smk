# Classify new images with an exported model: onnxruntime, Pillow and numpy only (no torch), the
# preprocessing read from the model's metadata. Asked for by `rule all` when predict.images is set
# (predict_selected where the config leaves the run to selection, see PREDICT in common.smk); any
# experiment and seed can be asked for by name too:
#   snakemake results/predictions/scratch/seed0/predictions.csv --config predict='{images: my_images}'


rule predict:
    input:
        unpack(predict_images_input),
        script=script("predict"),
        modules=package_modules("predict"),
        model=predict_model,
    output:
        csv="results/predictions/{experiment}/seed{seed}/predictions.csv",
    params:
        python=PYTHON,
        images=predict_images,
        images_state=predict_images_state,
        top_k=config["predict"]["top_k"],
        batch_size=Untracked(config["predict"]["batch_size"]),
    log:
        "results/logs/predict/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "exec {params.python:q} {input.script:q} --model {input.model} --images={params.images:q} --out {output.csv} "
        "--top-k {params.top_k} --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"


# The model of the run selected by validation metric (finetune.selection, as the leaderboard selects)
# among the candidates: a sweep's runs, or every run where predict.experiment is null. The choice is
# the job's (from train_info.json), written to selection.json beside the predictions.


rule predict_selected:
    input:
        unpack(predict_selected_inputs),
        unpack(predict_images_input),
        script=script("predict"),
        modules=package_modules("predict_selected"),
    output:
        csv="results/predictions/selected/predictions.csv",
        selection="results/predictions/selected/selection.json",
    params:
        python=PYTHON,
        images=predict_images,
        images_state=predict_images_state,
        runs=[output_path(f"results/{run}/seed{seed}") for run in PREDICT_CANDIDATES for seed in SEEDS],
        model_name=predict_model_name(),
        seed="" if config["predict"]["seed"] is None else f"--seed {config['predict']['seed']}",
        top_k=config["predict"]["top_k"],
        batch_size=Untracked(config["predict"]["batch_size"]),
    log:
        "results/logs/predict/selected.log",
    benchmark:
        "results/benchmarks/predict/selected.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "exec {params.python:q} {input.script:q} --choose-from {params.runs} --model-name {params.model_name} {params.seed} "
        "--images={params.images:q} --out {output.csv} --out-selection {output.selection} "
        "--top-k {params.top_k} --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"
