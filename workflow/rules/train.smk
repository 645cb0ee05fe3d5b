# Recipe steps 2-4: copy the source model but its output layer, put a new output layer sized to the
# target classes, train (head only, everything, or gradually). One job per experiment and seed.


rule train:
    input:
        unpack(lambda w: target_decoded(w.experiment)),
        unpack(run_weights_inputs),
        unpack(lr_suggestion_input),
        script=script("train"),
        modules=package_modules("train"),
        split="resources/splits/target.csv",
    output:
        checkpoint="results/{experiment}/seed{seed}/model.pt",
        history="results/{experiment}/seed{seed}/history.csv",
        info="results/{experiment}/seed{seed}/train_info.json",
    params:
        # One process, or devices x nodes processes started by torchrun (docs/gpu.md, "Several GPUs and nodes").
        python=PYTHON,
        # how devices x nodes processes start (devices and nodes themselves are compared in options)
        launch=lambda w: NotARerunTrigger(train_launcher(w.experiment)),
        options=lambda w: as_json(train_options(w.experiment, w.seed)),
        # Where each key is written, for messages only: a key moved from train to the experiment reruns nothing.
        key_names=lambda w: NotARerunTrigger(as_json(job_key_names(w.experiment))),
        weights=run_weights_args,
        image_size=lambda w: (
            f"--image-size {experiment_config(w.experiment)['image_size']}"
            if experiment_config(w.experiment)["image_size"]
            else ""
        ),
        # Resume state lives outside the outputs (Snakemake deletes a failed job's outputs).
        resume_dir=lambda w: f"{RESUME_FOLDER}/{w.experiment}/seed{w.seed}",
        feature_cache_dir=FEATURE_FOLDER,
        lr_from=lr_from_arg,
    log:
        "results/logs/train/{experiment}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{experiment}/seed{seed}.tsv"
    threads: config["threads"]["train"]
    resources:
        mem_mb=6000,
        runtime=240,
        # GPUs per node (sbatch --gpus; a job of several nodes asks with `gres` instead: docs/slurm.md, "GPUs")
        gpu=lambda w: experiment_config(w.experiment)["devices"] if uses_gpu(w.experiment) else 0,
    shell:
        "exec {params.python:q} {params.launch} {input.script:q} --split {input.split} --decoded {input.decoded_images} {input.decoded_info} {params.weights} "
        "--options {params.options:q} --key-names {params.key_names:q} {params.image_size} {params.lr_from} "
        "--out-checkpoint {output.checkpoint} --out-history {output.history} --out-info {output.info} "
        "--resume-dir {params.resume_dir} --feature-cache-dir {params.feature_cache_dir} "
        "--threads {threads} > {log} 2>&1"
