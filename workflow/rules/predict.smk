# Classify new images with an exported model: onnxruntime, Pillow and numpy only (no torch), the
# preprocessing read from the model's metadata. Asked for by `rule all` when predict.images is set;
# any experiment and seed can be asked for by name too:
#   snakemake results/predictions/scratch/seed0/predictions.csv --config predict='{images: my_images}'


def predict_images(wildcards):
    if config["predict"]["images"] is None:
        raise WorkflowError("rule predict: set predict.images (a folder of images or a CSV with a `path` column)")
    return config["predict"]["images"]


def predict_model(wildcards):
    name = "model.int8.onnx" if config["predict"]["model"] == "int8" else "model.onnx"
    return f"results/{wildcards.experiment}/seed{wildcards.seed}/{name}"


rule predict:
    input:
        script=script("predict"),
        model=predict_model,
        images=predict_images,
    output:
        csv="results/predictions/{experiment}/seed{seed}/predictions.csv",
    params:
        top_k=config["predict"]["top_k"],
        batch_size=config["predict"]["batch_size"],
    log:
        "results/logs/predict/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/predict/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{PYTHON} {input.script} --model {input.model} --images {input.images:q} --out {output.csv} "
        "--top-k {params.top_k} --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"
