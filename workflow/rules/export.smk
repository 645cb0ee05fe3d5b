# ONNX with a dynamic batch axis and its metadata; the job fails unless onnxruntime matches PyTorch.


rule export_onnx:
    input:
        unpack(lambda w: target_decoded(w.experiment)),
        script=script("export_onnx"),
        modules=package_modules("export_onnx"),
        checkpoint=rules.train.output.checkpoint,
        split="resources/splits/target.csv",
    output:
        onnx="results/{experiment}/seed{seed}/model.onnx",
        parity="results/{experiment}/seed{seed}/onnx_parity.json",
    params:
        python=PYTHON,
        tolerance=config["export"]["tolerance"],
        rtol=config["export"]["rtol"],
        parity_batch=config["export"]["parity_batch"],
        exporter=config["export"]["exporter"],
        opset=config["export"]["opset"],
        tta="hflip" if config["export"]["tta"] else "none",
    log:
        "results/logs/export_onnx/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/export_onnx/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "exec {params.python:q} {input.script:q} --checkpoint {input.checkpoint} --split {input.split} "
        "--decoded {input.decoded_images} {input.decoded_info} "
        "--out-onnx {output.onnx} --out-parity {output.parity} --tolerance {params.tolerance} --rtol {params.rtol} "
        "--parity-batch {params.parity_batch} --exporter {params.exporter} --opset {params.opset} "
        "--tta {params.tta} --threads {threads} > {log} 2>&1"


# Optional (export.quantize: true): dynamic INT8 quantization, reported against fp32 on size,
# speed and test accuracy. onnxruntime only, no torch.


rule quantize_onnx:
    input:
        script=script("quantize_onnx"),
        modules=package_modules("quantize_onnx"),
        onnx=rules.export_onnx.output.onnx,
        split="resources/splits/target.csv",
    output:
        onnx="results/{experiment}/seed{seed}/model.int8.onnx",
        report="results/{experiment}/seed{seed}/quantization.json",
    params:
        python=PYTHON,
    log:
        "results/logs/quantize_onnx/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/quantize_onnx/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "exec {params.python:q} {input.script:q} --onnx {input.onnx} --split {input.split} --out-onnx {output.onnx} "
        "--out-report {output.report} --threads {threads} > {log} 2>&1"
