# Classify new images with an exported model: onnxruntime, Pillow and numpy only (no torch), the
# preprocessing read from the model's metadata. Asked for by `rule all` when predict.images is set;
# any experiment and seed can be asked for by name too:
#   snakemake results/predictions/scratch/seed0/predictions.csv --config predict='{images: my_images}'


rule predict:
    input:
        script=script("predict"),
        modules=package_modules("predict"),
        model=predict_model,
        images=predict_images,
    output:
        csv="results/predictions/{experiment}/seed{seed}/predictions.csv",
    params:
        python=PYTHON,
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
        "{params.python} {input.script} --model {input.model} --images {input.images:q} --out {output.csv} "
        "--top-k {params.top_k} --batch-size {params.batch_size} --threads {threads} > {log} 2>&1"
