# Decode once per DAG: every image of a split file, at the size its readers need, into one
# file-backed uint8 array (resources/decoded/). pretrain, train, evaluate and export_onnx read
# batches from it instead of decoding the images again.


rule decode:
    input:
        script=script("decode"),
        modules=package_modules("decode"),
        split="resources/splits/{dataset}.csv",
        # No weights file: the target's sizes come from the config (params.weights: the weights' source and
        # what fixes their preprocessing; the source's from params.image_size), so decoding runs beside the
        # weights job, reruns exactly when the sizes change, and not when the weights are written again.
        # The jobs that read the images check them against the manifest's preprocessing.
    output:
        images="resources/decoded/{dataset}/{size}/images.npy",
        info="resources/decoded/{dataset}/{size}/info.json",
    params:
        python=PYTHON,
        weights=lambda w: ["--weights-sizes", decode_sizes_key(w.size)] if w.dataset == "target" else [],
        image_size=lambda w: "" if w.size == "native" else f"--image-size {w.size}",
        # pretrain reads the source's train and val images; train, evaluate and export all three of the target's
        splits=lambda w: "train val test" if w.dataset == "target" else "train val",
        # the source's train images' mean and std, with which pretrain and the scratch control normalise them
        channel_stats=lambda w: "--channel-stats train" if w.dataset == "source" else "",
        # the images' state, as the split's: one overwritten in place decodes again, where the split made again
        # came out the same file (common.smk: decoded_data_state)
        data_state=decoded_data_state,
    log:
        "results/logs/decode/{dataset}/{size}.log",
    benchmark:
        "results/benchmarks/decode/{dataset}/{size}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=1000,
        runtime=60,
    shell:
        "exec {params.python:q} {input.script:q} --split {input.split} {params.weights:q} {params.image_size} "
        "--splits {params.splits} {params.channel_stats} --out-images {output.images} --out-info {output.info} --threads {threads} > {log} 2>&1"
