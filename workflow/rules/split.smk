# Seeded, stratified train/val/test split of the target dataset (and of the source dataset for `pretrain`).


rule split:
    input:
        script=script("split"),
        modules=package_modules("split"),
        data=dataset_inputs,
    output:
        csv="resources/splits/{dataset}.csv",
        report="resources/splits/{dataset}.report.json",
    params:
        python=PYTHON,
        dataset=lambda w: as_json(split_dataset_config(w.dataset)),
        fetch=lambda w: split_dataset_fetch(w.dataset),  # where Fashion-MNIST is downloaded to: reruns nothing
        key=lambda w: NotARerunTrigger(dataset_key(w.dataset)),  # the key its messages name
        data_state=dataset_state,
    log:
        "results/logs/split/{dataset}.log",
    benchmark:
        "results/benchmarks/split/{dataset}.tsv"
    threads: config["threads"]["data"]
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "exec {params.python:q} {input.script:q} --dataset {params.dataset:q} --fetch {params.fetch:q} --key {params.key:q} "
        "--out {output.csv} --report {output.report} --threads {threads} > {log} 2>&1"
