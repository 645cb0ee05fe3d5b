# Learning-rate range test of one experiment run (lr rising exponentially, loss smoothed, stopped on
# divergence), on train's data path and device. Its suggestion.json is the lr of every train job of a
# run with `lr: auto`; the rule runs for those runs, or when its outputs are asked for by name.


rule lr_find:
    input:
        unpack(lambda w: target_decoded(w.experiment)),
        unpack(run_weights_inputs),
        script=script("lr_find"),
        modules=package_modules("lr_find"),
        split="resources/splits/target.csv",
    output:
        csv="results/lr_find/{experiment}/lr_find.csv",
        png=report(
            "results/lr_find/{experiment}/lr_find.png",
            caption="../report/lr_find.rst",
            category="3. Learning-rate finder",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "figure": "lr range test"},
        ),
        suggestion=LR_SUGGESTION,
    params:
        python=PYTHON,
        options=lambda w: as_json(lr_find_options(w.experiment)),
        key_names=lambda w: NotARerunTrigger(as_json(job_key_names(w.experiment))),  # for messages only
        range_test=as_json({key: value for key, value in config["lr_find"].items() if key != "seed"}),  # in options
        weights=run_weights_args,
        image_size=lambda w: (
            f"--image-size {experiment_config(w.experiment)['image_size']}"
            if experiment_config(w.experiment)["image_size"]
            else ""
        ),
        feature_cache_dir=FEATURE_FOLDER,
    log:
        "results/logs/lr_find/{experiment}.log",
    benchmark:
        "results/benchmarks/lr_find/{experiment}.tsv"
    threads: config["threads"]["train"]
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=lambda w: 1 if uses_gpu(w.experiment) else 0,
    shell:
        "exec {params.python:q} {input.script:q} --split {input.split} --decoded {input.decoded_images} {input.decoded_info} {params.weights} "
        "--options {params.options:q} --key-names {params.key_names:q} --range-test {params.range_test:q} {params.image_size} "
        "--out-csv {output.csv} --out-png {output.png} --out-suggestion {output.suggestion} "
        "--feature-cache-dir {params.feature_cache_dir} --threads {threads} > {log} 2>&1"
