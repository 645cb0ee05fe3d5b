# Pretrained weights and their manifest. With `weights.source: pretrain`, recipe step 1 runs here:
# the source architecture is trained from scratch on the source classes, then published exactly
# like downloaded weights.


rule pretrain:
    input:
        **source_decoded(),
        script=script("pretrain"),
        modules=package_modules("pretrain"),
        split="resources/splits/source.csv",
    output:
        weights="resources/pretrain/model.pth",
        info="resources/pretrain/info.json",
        history="resources/pretrain/history.csv",
    params:
        python=PYTHON,
        arch=config["weights"]["arch"],
        image_size=config["pretrain"]["image_size"],
        # as a run's: a key pretraining does not act on, or a value that trains as its default does (bn: train,
        # layer_decay: 1.0), at its default, so that writing it is the same source model (configcheck.job_options)
        options=as_json(loop_options(job_options(config["pretrain"]["train"], {}, TRAIN_DEFAULTS,
                                                 config["weights"]["arch"]))),
        resume_dir=f"{RESUME_FOLDER}/pretrain",
    log:
        "results/logs/pretrain.log",
    benchmark:
        "results/benchmarks/pretrain.tsv"
    threads: config["threads"]["train"]
    resources:
        mem_mb=4000,
        runtime=120,
        # sbatch --gpus=1 where it trains on CUDA (a cluster shows a job only the GPUs it asked for)
        gpu=1 if config["pretrain"]["train"]["device"] == "cuda" else 0,
    shell:
        "exec {params.python:q} {input.script:q} --split {input.split} --decoded {input.decoded_images} {input.decoded_info} --arch {params.arch} --image-size {params.image_size} "
        "--options {params.options:q} --out-weights {output.weights} --out-info {output.info} "
        "--out-history {output.history} --resume-dir {params.resume_dir} --threads {threads} > {log} 2>&1"


rule weights:
    # on the machine running Snakemake: downloads need the internet, which cluster compute nodes often lack
    # (a rule's own localrule, unlike a localrules list, stays with it in `use rule * from finetune as ...`)
    localrule: True
    input:
        unpack(weights_inputs),
    output:
        weights="resources/weights/weights.pth",
        manifest="resources/weights/manifest.json",
    params:
        python=PYTHON,
        weights=weights_identity(),
        fetch=weights_fetch(),
        file_state=lambda wildcards: weights_file_state(),  # when the job starts: the file may be made in this run
        pretrained=pretrained_args,
    log:
        "results/logs/weights.log",
    benchmark:
        "results/benchmarks/weights.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "exec {params.python:q} {input.script:q} --weights {params.weights:q} --fetch {params.fetch:q} --out-weights {output.weights} "
        "--out-manifest {output.manifest} {params.pretrained} > {log} 2>&1"


rule scratch_manifest:
    # A scratch run's (pretrained: false) architecture and preprocessing where the weights come from a url or a file:
    # those the config gives the weights, without them, so that other weights there (another file at weights.path,
    # another weights.sha256) retrain no scratch run. (With torchvision's weights a scratch run reads the weights'
    # manifest, which changes only with the config; with pretrain's, the source's decoded images' record.)
    localrule: True
    input:
        script=script("scratch_manifest"),
        modules=package_modules("scratch_manifest"),
    output:
        manifest="resources/weights/scratch.json",
    params:
        python=PYTHON,
        weights=scratch_identity(),
    log:
        "results/logs/scratch_manifest.log",
    benchmark:
        "results/benchmarks/scratch_manifest.tsv"
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "exec {params.python:q} {input.script:q} --weights {params.weights:q} --out-manifest {output.manifest} > {log} 2>&1"
