"""Every config key a user sets reaches the job that uses it (issue 12).

Each key of every section of the schema gets a value other than its default, derived from the
schema itself (so a new key is covered without touching this file); a dry run
(`snakemake -n --printshellcmds`, nothing runs) prints every job's command line, and each value is
looked for in the command of the job that uses it.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import REPO, TINY_CONFIG, run_snakemake, tiny_config

def _one_pixel_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, format="PNG")
    return out.getvalue()


PNG = _one_pixel_png()  # an image file for a predict.images folder, which the workflow lists at start

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
# Enough cores that no rule's `threads` is scaled down to fit.
CORES = ("--cores", "64")

# Values the schema cannot suggest: they must name things that exist in the config.
CHOSEN = {
    "weights.preprocessing": {"resize_size": 40, "crop_size": 36, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
    "weights.arch": "resnet34",  # one torchvision has: another name is refused at start
    "weights.url": "https://models.example.org/w.pth",  # a URL the downloader reads: another is refused at start
    "weights.mirror": "https://mirror.example.org/pytorch",
    "predict.images": "new_images",
    # An ImageFolder the workflow finds at start (dry_run_output makes it): a missing one is refused before any job.
    "dataset.path": "photos",
    "pretrain.dataset.path": "photos",
    "predict.experiment": "finetune",  # the default is null (the run selected by validation metric)
    "predict.seed": 3,  # in SEEDS below; the default is null (the selected run's best seed)
    # Not feature_extract: every train key changed at once sets layer_decay, refused with it.
    "train.strategy": "gradual",
    "pretrain.train.strategy": "gradual",
    # Where every changed key is acted on (a key the run would not act on is refused): warmup_epochs by a
    # schedule other than onecycle, amp and channels_last on CUDA (a dry run needs no GPU).
    "train.schedule": "constant",
    "pretrain.train.schedule": "constant",
    "train.device": "cuda",
    "pretrain.train.device": "cuda",
    # One process: every train key changed at once sets mixup_alpha, refused with several processes. The
    # distributed keys reach their jobs in the sweep cases and in test_distributed_keys_reach_the_train_job.
    "train.devices": 1,
    "train.nodes": 1,
    "train.sync_batchnorm": False,
}
SEEDS = [0, 3]


# --------------------------------------------------------------------------- values from the schema

def resolve(schema: dict) -> dict:
    if "$ref" in schema:
        return {**SCHEMA["$defs"][schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def section_keys(section: str) -> dict[str, dict]:
    """The keys of a (dotted) section of the schema with their sub-schemas."""
    schema = SCHEMA
    for part in section.split("."):
        schema = resolve(schema["properties"][part])
    return schema["properties"]


def candidates(schema: dict, default):
    """Values to try, in order, for a key: the first valid one that is not the default is used."""
    types = schema.get("type", [])
    types = types if isinstance(types, list) else [types]
    yield from schema.get("enum", [])
    if "boolean" in types:
        yield not default
    if "integer" in types:
        base = default if isinstance(default, int) else schema.get("minimum", 0)
        yield from (base + 1, base + 3, 9)
    if "number" in types:
        base = default if isinstance(default, (int, float)) else 1
        yield from (base * 2, base / 2, base + 0.25, 0.5)
    if "string" in types:
        yield from ((default or "x") + "-changed", "ab" * 32)
    if "array" in types:
        yield from ([0, 1], ["a", "b"])


def non_default(section: str, key: str, schema: dict):
    if f"{section}.{key}" in CHOSEN:
        return CHOSEN[f"{section}.{key}"]
    default = schema.get("default")
    for value in candidates(schema, default):
        if value != default and jsonschema.Draft202012Validator(schema).is_valid(value):
            return value
    raise AssertionError(f"{section}.{key}: no non-default value derived from the schema; add one to CHOSEN")


def changed(section: str, skip: tuple = ()) -> dict:
    return {key: non_default(section, key, schema) for key, schema in section_keys(section).items() if key not in skip}


# --------------------------------------------------------------------------- the jobs' command lines

def commands(output: str) -> list[tuple[str, dict]]:
    """(rule, {option: value}) of every job a dry run printed; rule = the script's name."""
    jobs = []
    for line in output.splitlines():
        if not line.startswith("Shell command: ") or line == "Shell command: None":  # `all` runs nothing
            continue
        words = shlex.split(line[len("Shell command: "):].split(" > ")[0])
        words = words[1:] if words[0] == "exec" else words  # each rule execs its script
        words = [part for word in words for part in (word.split("=", 1) if word.startswith("--") and "=" in word
                                                     else [word])]  # --images=-x.png: option and value
        options, i = {}, 2
        if words[1:3] == ["-m", "finetune.launch"]:  # several training processes: the launcher, then the script
            options = {"launch-devices": words[words.index("--devices") + 1],
                       "launch-nodes": words[words.index("--nodes") + 1]}
            words = [words[0], *words[words.index("--") + 1:]]
        while i < len(words):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True
            options[words[i].lstrip("-")] = value
            i += 1 if value is True else 2
        jobs.append((Path(words[1]).stem, options))
    return jobs


def jobs_of(jobs, rule: str, **where) -> list[dict]:
    found = [o for r, o in jobs if r == rule and all(o.get(k) == v for k, v in where.items())]
    assert found, f"no {rule} job with {where} in the dry run"
    return found


def command_line_config(config: dict, via: str) -> list[str]:
    """``config`` as ``--config`` arguments: as a user types them (YAML flow text), or as the workflow has
    Snakemake pass them on to the jobs it spawns on a cluster (JSON: finetune.userconfig.as_config_args)."""
    if via == "--config":
        return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()}" for key, value in config.items()]
    return [f"{key}={json.dumps(value)}" for key, value in config.items()]


def dry_run_output(tmp_path: Path, config: dict, via: str = "configfile", check: bool = True) -> str:
    """What a dry run of ``config`` as written prints (any key left out takes the schema's default), the
    config given in a file or on the command line (:func:`command_line_config`)."""
    (tmp_path / "new_images").mkdir(exist_ok=True)  # predict.images must exist and hold an image (checked at start)
    (tmp_path / "new_images" / "a.png").write_bytes(PNG)
    for name in ("cat", "dog"):  # dataset.path (CHOSEN), with the classes dataset.classes [0, 1] names (checked at start)
        (tmp_path / "photos" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name / "a.png").write_bytes(PNG)
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config if via == "configfile" else {}, sort_keys=False))
    given = [] if via == "configfile" else ["--config", *command_line_config(config, via)]
    return run_snakemake(tmp_path, configfile, "-n", "--printshellcmds", *CORES, *given, check=check).stdout


def dry_run(tmp_path: Path, config: dict, via: str = "configfile") -> list[tuple[str, dict]]:
    """The jobs of ``config`` as written."""
    return commands(dry_run_output(tmp_path, config, via))


def assert_json_option_carries(options: dict, flag: str, values: dict, where: str) -> None:
    carried = json.loads(options[flag])
    wrong = {k: (v, carried.get(k, "<missing>")) for k, v in values.items() if carried.get(k, "<missing>") != v}
    assert not wrong, f"{where}: set -> arrived: {wrong}"


# --------------------------------------------------------------------------- the checks

# Keys Snakemake itself acts on, which reach no job: `watch` (dataset and predict) sets what a param of
# the split or predict rule digests (test_reruns: an image overwritten in place reruns them).
SNAKEMAKE_KEYS = ("watch",)


def job_keys(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in SNAKEMAKE_KEYS}


TRAIN_NOT_LOOP = ("pretrained", "image_size")  # reach train as --scratch / --image-size
NOT_PRETRAIN = (*TRAIN_NOT_LOOP, "devices", "nodes", "sync_batchnorm")  # refused in pretrain.train


def as_a_run_gets(train: dict) -> dict:
    """``train`` with the keys the run does not act on (configcheck.ignored_options, inert_recipes: a gradual-only key
    for a finetune run, `cache_features: false` where nothing is cached, say; a patience it cannot reach) at the
    schema's default."""
    from finetune.configcheck import earliest_stop, ignored_options, inert_recipes, train_defaults

    defaults = train_defaults(REPO / "workflow" / "schemas" / "config.schema.yaml")
    idle = {**ignored_options({**defaults, **train}), **inert_recipes({**defaults, **train})}
    if earliest_stop({**defaults, **train}):
        idle["early_stopping_patience"] = "it cannot stop the run"
    return {k: defaults[k] if k in idle else v for k, v in train.items()}


def assert_train_job_carries(options: dict, train: dict, where: str) -> None:
    """The run's keys reach its train job as set, but those it does not act on (:func:`as_a_run_gets`), which arrive
    at the schema's default."""
    train = as_a_run_gets(train)
    loop = {k: v for k, v in train.items() if k not in TRAIN_NOT_LOOP}
    assert_json_option_carries(options, "options", loop, where)
    assert options.get("scratch", False) is (not train.get("pretrained", True)), f"{where}: pretrained"
    assert options.get("image-size") == (str(train["image_size"]) if train.get("image_size") else None), where
    devices, nodes = train.get("devices", 1), train.get("nodes", 1)
    launched = {"launch-devices": str(devices), "launch-nodes": str(nodes)} if devices * nodes > 1 else {}
    assert {k: v for k, v in options.items() if k.startswith("launch-")} == launched, where


FASHION_MNIST_ONLY = ("download_dir", "download_timeout_s")  # refused with another format: test below


def everything_changed_but_weights() -> dict:
    return {
        "dataset": changed("dataset", skip=FASHION_MNIST_ONLY),
        "pretrain": {"dataset": changed("pretrain.dataset", skip=(*FASHION_MNIST_ONLY, "max_test_per_class")),  # refused: below
                     "image_size": non_default("pretrain", "image_size",
                                                                                        section_keys("pretrain")["image_size"]),
                     "train": changed("pretrain.train", skip=NOT_PRETRAIN)},
        "train": changed("train"),
        "evaluate": changed("evaluate"),
        "export": changed("export"),
        "lr_find": changed("lr_find"),
        "predict": changed("predict"),
        "threads": changed("threads"),
        "seeds": SEEDS,
    }


def test_the_config_covers_every_section_of_the_schema():
    sections = set(SCHEMA["properties"]) - {"experiments", "seeds", "weights"}  # seeds and experiments: below
    assert sections <= set(everything_changed_but_weights()), "a new section needs a check here"


@pytest.mark.parametrize("experiments, via", [
    (None, "configfile"),
    # train.pretrained is changed (false): "transfer" starts from the weights, so that pretrain runs
    ({"finetune": {}, "longer": {"epochs": 7}, "auto": {"lr": "auto"}, "transfer": {"pretrained": True}}, "configfile"),
    # Snakemake reads a nested --config value as text ('0.01'): the workflow reads the command line again as a
    # config file would, and has the jobs Snakemake spawns on a cluster given JSON, which they read alike.
    ({"finetune": {}, "longer": {"epochs": 7}, "auto": {"lr": "auto"}, "transfer": {"pretrained": True}}, "--config"),
    ({"finetune": {}, "longer": {"epochs": 7}, "auto": {"lr": "auto"}, "transfer": {"pretrained": True}},
     "spawned-job --config"),
], ids=["without-experiments", "with-experiments", "command-line", "command-line-of-a-cluster-job"])
def test_every_key_reaches_its_job(tmp_path, experiments, via):
    config = everything_changed_but_weights()
    config["weights"] = TINY_CONFIG["weights"]
    if experiments is not None:
        config["experiments"] = experiments
    jobs = dry_run(tmp_path, config, via)

    target, source = jobs_of(jobs, "split", out="resources/splits/target.csv"), jobs_of(jobs, "split", out="resources/splits/source.csv")
    assert_json_option_carries(target[0], "dataset", job_keys(config["dataset"]), "dataset -> split target")
    assert_json_option_carries(source[0], "dataset", job_keys(config["pretrain"]["dataset"]),
                               "pretrain.dataset -> split source")

    if any({**config["train"], **overrides}.get("pretrained", True) for overrides in (experiments or {"finetune": {}}).values()):
        pretrain = jobs_of(jobs, "pretrain")[0]
        assert pretrain["image-size"] == str(config["pretrain"]["image_size"])
        assert_json_option_carries(pretrain, "options", as_a_run_gets(config["pretrain"]["train"]),
                                   "pretrain.train -> pretrain")
    else:  # every run from scratch (train.pretrained false): no run starts from the weights, none are made
        assert not [rule for rule, _ in jobs if rule in ("pretrain", "weights")]

    for name, overrides in (experiments or {"finetune": {}}).items():
        for seed in SEEDS:
            train = {**config["train"], **overrides, "seed": seed}
            options = jobs_of(jobs, "train", **{"out-checkpoint": f"results/{name}/seed{seed}/model.pt"})[0]
            assert_train_job_carries(options, train, f"train -> train {name}/seed{seed}")

    if "auto" in (experiments or {}):  # lr: auto runs the range test, with every lr_find setting
        (options,) = jobs_of(jobs, "lr_find")
        range_test = {key: value for key, value in config["lr_find"].items() if key != "seed"}
        assert json.loads(options["range-test"]) == range_test, "lr_find -> lr_find"
        assert json.loads(options["options"])["seed"] == config["lr_find"]["seed"], "lr_find.seed -> lr_find's options"

    for options in jobs_of(jobs, "evaluate"):
        assert options["top-k"] == str(config["evaluate"]["top_k"])
        assert options["calibration-bins"] == str(config["evaluate"]["calibration_bins"])
        assert (options["device"], options["batch-size"]) == (config["evaluate"]["device"], str(config["evaluate"]["batch_size"]))
        assert config["evaluate"]["onnx"] is True and options["onnx"] == options["checkpoint"].replace("model.pt", "model.onnx")
        assert options["tta"] == config["evaluate"]["tta"] == "hflip"
    export = config["export"]
    for options in jobs_of(jobs, "export_onnx"):
        assert (options["tolerance"], options["rtol"], options["parity-batch"], options["exporter"], options["opset"]) == (
            str(export["tolerance"]), str(export["rtol"]), str(export["parity_batch"]), export["exporter"],
            str(export["opset"]))
        assert export["tta"] is True and options["tta"] == "hflip"
    assert export["quantize"] is True and jobs_of(jobs, "quantize_onnx")

    predict = config["predict"]
    run = f"results/{predict['experiment']}/seed{predict['seed']}"
    options = jobs_of(jobs, "predict", out=f"results/predictions/{predict['experiment']}/seed{predict['seed']}/predictions.csv")[0]
    assert options["images"] == predict["images"]
    assert options["model"] == f"{run}/{'model.int8.onnx' if predict['model'] == 'int8' else 'model.onnx'}"
    assert (options["top-k"], options["batch-size"]) == (str(predict["top_k"]), str(predict["batch_size"]))

    threads = config["threads"]
    for rule, kind in (("pretrain", "train"), ("train", "train"), ("split", "data"), ("decode", "data"), ("evaluate", "data"),
                       ("export_onnx", "data"), ("quantize_onnx", "data"), ("predict", "data")):
        if rule != "pretrain" or experiments is not None:  # without: every run is from scratch, no pretrain job
            assert {o["threads"] for o in jobs_of(jobs, rule)} == {str(threads[kind])}, f"threads.{kind} -> {rule}"


def test_the_fashion_mnist_keys_reach_the_split_job(tmp_path):
    dataset = {**TINY_CONFIG["dataset"], **{key: non_default("dataset", key, section_keys("dataset")[key]) for key in FASHION_MNIST_ONLY}}
    jobs = dry_run(tmp_path, {"dataset": dataset, "weights": TINY_CONFIG["weights"]})
    (split,) = jobs_of(jobs, "split", out="resources/splits/target.csv")
    # How a missing Fashion-MNIST is fetched comes apart from the dataset (another folder or timeout reruns nothing).
    assert_json_option_carries(split, "dataset", {k: v for k, v in dataset.items() if k not in FASHION_MNIST_ONLY},
                               "dataset -> split")
    assert json.loads(split["fetch"]) == {key: dataset[key] for key in FASHION_MNIST_ONLY}, "dataset -> split --fetch"


@pytest.mark.parametrize("fmt, key", [("fashion-mnist", "test_fraction"), ("fashion-mnist", "on_bad_image"),
                                      ("imagefolder", "download_dir")])
def test_a_dataset_key_the_format_does_not_read_is_refused(tmp_path, fmt, key):
    """`test_fraction: 0.3` with Fashion-MNIST would be silently ignored (its official test split is the test set)."""
    value = non_default("dataset", key, section_keys("dataset")[key])
    dataset = {**TINY_CONFIG["dataset"], key: value} if fmt == "fashion-mnist" else \
        {"format": fmt, "path": str(tmp_path), key: value}
    config = tiny_config(tmp_path, replace={"dataset": dataset})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert f"dataset.{key}: not used with dataset.format: {fmt} (" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("fmt", ["fashion-mnist", "imagefolder"])
def test_a_test_cap_on_the_source_dataset_pretrain_never_tests_on_is_refused(tmp_path, fmt):
    """pretrain.dataset.max_test_per_class changed the source split (and so pretrained again) and nothing else:
    pretrain reads the source's train and val images only (an ImageFolder's cap was taken without a word, and
    since the source draws no test images where its test_fraction is not written, it caps nothing)."""
    (tmp_path / "photos" / "a").mkdir(parents=True)
    dataset = {"max_test_per_class": 5} if fmt == "fashion-mnist" else {
        "format": "imagefolder", "path": str(tmp_path / "photos"), "classes": None, "max_test_per_class": 5}
    config = tiny_config(tmp_path, pretrain={"dataset": dataset})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "pretrain.dataset.max_test_per_class: not used: pretrain trains and validates on the source's train and val " \
           "images" in result.stdout, result.stdout[-2000:]
    config = tiny_config(tmp_path, dataset={"max_test_per_class": 5})  # the target's: its test split is read
    assert run_snakemake(tmp_path, config, "-n", check=False).returncode == 0


@pytest.mark.parametrize("source", ["torchvision", "url", "path"])
def test_every_weights_key_a_source_reads_reaches_the_weights_job(tmp_path, source):
    from finetune.weights import WEIGHTS_KEYS

    every = changed("weights")
    weights = {"source": source, **{key: every[key] for key in WEIGHTS_KEYS[source]}}
    if source == "torchvision":
        weights["arch"] = "resnet18"  # a check there: it must name the enum's architecture
        weights["torchvision"] = "ResNet18_Weights.DEFAULT"
    if source == "path":
        (tmp_path / weights["path"]).write_bytes(b"")  # it must exist at start: an input of the weights rule
    jobs = dry_run(tmp_path, {"weights": weights})
    (options,) = jobs_of(jobs, "weights")
    # how to fetch them (and torchvision's arch, a check; the path as written, whose file the job's file state pins):
    # not compared between runs
    fetch = json.loads(options["fetch"])
    assert set(fetch) == {"timeout_s", "mirror", "url", *(["arch"] if source == "torchvision" else []),
                          *(["path"] if source == "path" else [])}
    carried = json.dumps({**json.loads(options["weights"]), **fetch})
    # The same weights in the words the job compares between runs: the alias as the member it names (torchvision's
    # own answer), the preprocessing's keys left out at the schema's values.
    expected = dict(weights)
    if source == "torchvision":
        import torchvision

        member = torchvision.models.get_weight(weights["torchvision"])
        expected["torchvision"] = f"{type(member).__name__}.{member.name}"
    else:
        expected["preprocessing"] = {"interpolation": "bilinear", "channels": "RGB", **weights["preprocessing"]}
    assert_json_option_carries({"weights": carried}, "weights", expected, "weights -> weights")
    assert not [rule for rule, _ in jobs if rule == "pretrain"], "no pretraining with other weights"


def test_a_weights_key_the_source_does_not_read_is_refused(tmp_path):
    """`preprocessing` with torchvision weights would be silently ignored (the enum's own transforms apply)."""
    config = tiny_config(tmp_path, replace={"weights": {"source": "torchvision", "torchvision": "ResNet18_Weights.DEFAULT",
                                                        "preprocessing": CHOSEN["weights.preprocessing"], "path": "x.pth"}})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert ("weights.preprocessing: not used with weights.source: torchvision, which reads torchvision, mirror, "
            "sha256, timeout_s, arch; remove it") in result.stdout
    assert "weights.path: not used with weights.source: torchvision" in result.stdout


@pytest.mark.parametrize("key", NOT_PRETRAIN)
def test_pretrain_train_keys_pretraining_ignores_are_refused(tmp_path, key):
    value = non_default("train", key, SCHEMA["$defs"]["train"]["properties"][key])
    configfile = tiny_config(tmp_path, pretrain={"train": {key: value}})
    result = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert result.returncode != 0
    assert f"pretrain.train.{key}: " in result.stdout, result.stdout[-3000:]


def test_pretraining_only_the_output_layer_of_a_random_network_is_refused(tmp_path):
    """pretrain starts from random weights: feature_extract would publish a random backbone as the source model
    (that it trains the head alone is tests/test_training.py's feature_extract test)."""
    configfile = tiny_config(tmp_path / "head", pretrain={"train": {"strategy": "feature_extract"}})
    result = run_snakemake(tmp_path / "head", configfile, "-n", check=False)
    assert result.returncode != 0
    assert "pretrain.train.strategy: feature_extract trains only the output layer" in result.stdout, result.stdout[-3000:]
    configfile = tiny_config(tmp_path / "gradual", pretrain={"train": {"strategy": "gradual", "epochs": 2}})
    assert run_snakemake(tmp_path / "gradual", configfile, "-n", check=False).returncode == 0


def test_a_scratch_run_that_would_train_only_a_head_on_random_features_is_refused(tmp_path):
    """pretrained: false with strategy feature_extract (from `train`, where a user made feature_extract the
    default) would train a linear probe on a random frozen backbone, not a model from scratch."""
    configfile = tiny_config(tmp_path / "probe", replace={
        "train": {**TINY_CONFIG["train"], "strategy": "feature_extract"},
        "experiments": {"fe": {}, "scratch": {"pretrained": False}}})
    result = run_snakemake(tmp_path / "probe", configfile, "-n", check=False)
    assert result.returncode != 0
    assert ("experiments.scratch: pretrained: false with strategy: feature_extract: the backbone would start random "
            "and stay frozen") in result.stdout, result.stdout[-3000:]
    assert "experiments.fe:" not in result.stdout
    configfile = tiny_config(tmp_path / "scratch", replace={
        "train": {**TINY_CONFIG["train"], "strategy": "feature_extract"},
        "experiments": {"fe": {}, "scratch": {"pretrained": False, "strategy": "finetune"}}})
    assert run_snakemake(tmp_path / "scratch", configfile, "-n", check=False).returncode == 0


# --------------------------------------------------------------------------- sweeps

def sweep_cases() -> dict:
    """One experiment per `train` key sweeping a value derived from the schema (metric is refused in
    a sweep: tests/test_sweeps.py), and one sweeping two keys, 2 x 2 combinations."""
    keys = SCHEMA["$defs"]["train"]["properties"]
    cases = {f"sweep_{key}": {"sweep": {key: [non_default("train", key, rule)]}} for key, rule in keys.items()
             if key not in ("metric", "devices", "nodes", "sync_batchnorm")}
    # Several processes: with the batch mixing off (it is on in `train` here) and a batch they divide.
    cases["sweep_processes"] = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "batch_size": 8,
                                "sweep": {"devices": [2], "nodes": [2]}}
    cases["grid"] = {"strategy": "finetune", "sweep": {"lr": [0.002, 0.0005], "epochs": [2, 5]}}
    return {"finetune": {}, **cases}


def test_every_swept_value_reaches_its_runs_train_job(tmp_path):
    from finetune.sweeps import run_name

    config = everything_changed_but_weights()
    config["weights"], config["experiments"] = TINY_CONFIG["weights"], sweep_cases()
    jobs = dry_run(tmp_path, config)
    expected = 0
    for experiment, overrides in config["experiments"].items():
        sweep = overrides.get("sweep", {})
        keys = list(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)) if sweep else [()]:
            name = run_name(experiment, list(zip(keys, values))) if sweep else experiment
            train = {**config["train"], **{k: v for k, v in overrides.items() if k != "sweep"}, **dict(zip(keys, values))}
            for seed in SEEDS:
                options = jobs_of(jobs, "train", **{"out-checkpoint": f"results/{name}/seed{seed}/model.pt"})[0]
                assert_train_job_carries(options, {**train, "seed": seed}, f"sweep -> train {name}/seed{seed}")
                assert jobs_of(jobs, "evaluate", **{"checkpoint": f"results/{name}/seed{seed}/model.pt"})
                assert jobs_of(jobs, "export_onnx", **{"checkpoint": f"results/{name}/seed{seed}/model.pt"})
                expected += 1
    assert len(jobs_of(jobs, "train")) == expected  # no run beyond the combinations


@pytest.mark.parametrize("experiment, seed", [(None, None), ("grid", None), ("grid", 3), ("finetune", None)])
def test_predict_left_to_selection_chooses_among_the_runs_it_stands_for(tmp_path, experiment, seed):
    """predict.experiment null (every run), naming a sweep, or predict.seed null: the predict_selected job
    chooses by validation metric among exactly those runs (each seed's train_info.json)."""
    from finetune.sweeps import expand

    experiments = {"finetune": {}, "grid": {"sweep": {"lr": [0.002, 0.0005], "epochs": [2, 5]}}}
    config = {"weights": TINY_CONFIG["weights"], "experiments": experiments, "seeds": SEEDS,
              "predict": {"images": "new_images", "experiment": experiment, "seed": seed, "model": "fp32"}}
    output = dry_run_output(tmp_path, config)
    jobs = commands(output)
    runs, sweep_of = expand(experiments)
    candidates = [r for r in runs if experiment in (None, sweep_of[r])]
    assert not [o for r, o in jobs if r == "predict" and "model" in o], "no named-run predict job"
    options = jobs_of(jobs, "predict", out="results/predictions/selected/predictions.csv")[0]
    words = shlex.split(next(line for line in output.splitlines() if "--choose-from" in line).split(" > ")[0])
    start = words.index("--choose-from") + 1
    folders = words[start:words.index("--model-name")]
    assert folders == [f"results/{run}/seed{s}" for run in candidates for s in SEEDS]
    assert options.get("seed") == (None if seed is None else str(seed))
    assert options["model-name"] == "model.onnx" and options["out-selection"] == "results/predictions/selected/selection.json"
    # the models it waits for: each candidate's at predict.seed, where one is set (every seed's train_info.json
    # still, as runs are selected by their mean), not the other seeds' (asked for alone, they would be exported)
    block = output.split("rule predict_selected:\n", 1)[1].split("\n\n", 1)[0]
    inputs = next(line for line in block.splitlines() if line.strip().startswith("input:")).split(":", 1)[1]
    models = sorted(path for path in map(str.strip, inputs.split(",")) if path.endswith("model.onnx"))
    assert models == sorted(f"results/{run}/seed{s}/model.onnx" for run in candidates
                            for s in (SEEDS if seed is None else [seed])), block


@pytest.mark.parametrize("run, refused", [
    ({"batch_size": 1}, "batch_size: 1 gives BatchNorm batches of 1 image, and BatchNorm cannot train on one image "
                        "(a resnet18, strategy finetune, bn auto)"),
    ({"batch_size": 2, "devices": 2, "device": "cpu"}, "batch_size: 2 gives BatchNorm batches of 1 image per process "
                                                        "(2 processes, sync_batchnorm off)"),
    ({"batch_size": 1, "pretrained": False}, "batch_size: 1 gives BatchNorm batches of 1 image, and BatchNorm cannot "
                                             "train on one image (a resnet18, strategy finetune, bn auto): use a "
                                             "batch_size of 2 or more\n"),
    ({"batch_size": 1, "bn": "frozen"}, None),
    ({"batch_size": 1, "strategy": "feature_extract", "cache_features": False}, None),
    ({"batch_size": 2}, None),
])
def test_batchnorm_batches_of_one_image_are_refused_at_start(tmp_path, run, refused):
    """batch_size 1 (or 1 a process) with a ResNet's BatchNorm in training mode: the train job refused it, after
    Snakemake had removed that run's model.pt (under Slurm, twice: the profile retries). Now refused before any job,
    naming the experiment's key; with BatchNorm frozen (bn frozen, or feature_extract's head alone) it trains. From
    scratch (pretrained false) bn frozen is not offered: there is no source model whose statistics it would keep."""
    config = {**TINY_CONFIG, "experiments": {"small": {"strategy": "finetune", **run}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(tmp_path, tmp_path / "config.yaml", "-n", check=False)
    if refused:
        assert result.returncode != 0 and f"experiments.small: {refused}" in result.stdout, result.stdout[-3000:]
        assert "use a batch_size of 2 or more" in result.stdout
        assert ("or bn: frozen" in result.stdout) == (run.get("pretrained") is not False), result.stdout[-3000:]
        assert "sync_batchnorm: true" not in result.stdout  # it runs on GPUs only: not offered on the CPU
    else:
        assert result.returncode == 0, result.stdout[-3000:]
        assert "results/small/seed0/model.pt" in result.stdout


def test_pretraining_on_batchnorm_batches_of_one_image_is_refused_at_start(tmp_path):
    config = {**TINY_CONFIG, "pretrain": {**TINY_CONFIG["pretrain"], "train": {**TINY_CONFIG["pretrain"]["train"],
                                                                               "batch_size": 1}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(tmp_path, tmp_path / "config.yaml", "-n", check=False)
    assert result.returncode != 0 and ("pretrain.train: batch_size: 1 gives BatchNorm batches of 1 image, and "
                                       "BatchNorm cannot train on one image (a resnet18, strategy finetune, bn auto): "
                                       "use a batch_size of 2 or more\n") in result.stdout, result.stdout[-3000:]
    assert "bn: frozen" not in result.stdout  # pretraining starts from random weights: no statistics to keep


def test_distributed_keys_reach_the_train_job(tmp_path):
    experiment = {"strategy": "finetune", "device": "cuda", "devices": 2, "nodes": 3, "sync_batchnorm": True,
                  "batch_size": 12}
    config = tiny_config(tmp_path, replace={"experiments": {"ddp": experiment}})
    out = run_snakemake(tmp_path, config, "-n", "--printshellcmds", "--resources", "gpu=2").stdout
    (train,) = jobs_of(commands(out), "train")
    assert (train["launch-devices"], train["launch-nodes"]) == ("2", "3")
    assert_json_option_carries(train, "options", experiment, "experiments.ddp -> train")


def test_every_job_that_trains_or_scores_on_cuda_asks_for_a_gpu(tmp_path):
    """`gpu` is what the Slurm plugin turns into sbatch --gpus (a cluster shows a job only the GPUs it asked for) and
    what the local profile counts. pretrain on CUDA asked for none: on Slurm it failed "no CUDA device", twice."""
    config = tiny_config(tmp_path, pretrain={"train": {"device": "cuda"}}, evaluate={"device": "cuda"},
                         replace={"experiments": {"ft": {"device": "cuda"}, "cpu": {"device": "cpu"}}})
    output = run_snakemake(tmp_path, config, "-n", "--resources", "gpu=1").stdout
    asked = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        outputs = re.search(r"output: (\S+)", block)
        resources = re.search(r"resources: (.*)", block)
        if rule and outputs and resources:
            asked[outputs.group(1).rstrip(",")] = dict(item.split("=", 1) for item in resources.group(1).split(", "))
    gpus = {path: int(found.get("gpu", 0)) for path, found in asked.items()}
    assert gpus["resources/pretrain/model.pth"] == 1, asked
    assert gpus["results/ft/seed0/model.pt"] == 1 and gpus["results/cpu/seed0/model.pt"] == 0, asked
    assert gpus["results/ft/seed0/metrics.json"] == 1 and gpus["results/cpu/seed0/metrics.json"] == 1, asked
    assert gpus["resources/splits/target.csv"] == 0 and gpus["resources/weights/weights.pth"] == 0, asked


# --------------------------------------------------------------------------- a config of one's own over the demo's

def config_over_the_demo(tmp_path: Path, own: dict) -> tuple[Path, Path]:
    """A working folder whose config/config.yaml is the demo's (as in the repository root), and ``own``
    written beside it to give with --configfile."""
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    for name in ("cat", "dog"):  # an ImageFolder of two classes: one changed since it last passed is checked at start
        (tmp_path / "photos" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name / "a.png").write_bytes(PNG)
    configfile = tmp_path / "mine.yaml"
    configfile.write_text(yaml.safe_dump(own, sort_keys=False))
    return tmp_path, configfile


def run_over_the_demo(tmp_path: Path, own: dict, *flags: str):
    """A dry run of ``own`` over the demo's config (:func:`config_over_the_demo`): (the jobs, the output)."""
    output = run_snakemake(*config_over_the_demo(tmp_path, own), *flags, "-n", "--printshellcmds", *CORES).stdout
    return commands(output), output


def test_a_config_naming_another_dataset_does_not_inherit_the_demo_s_choices_for_fashion_mnist(tmp_path):
    """The README's own example for one's own images, over the demo: the demo's classes 6-9 and its few-shot
    caps (10 per class) must not apply to the user's images; the schema's defaults do, and a note says so."""
    own = {"dataset": {"format": "imagefolder", "path": "photos", "val_fraction": 0.15, "test_fraction": 0.15}}
    jobs, output = run_over_the_demo(tmp_path, own)
    dataset = json.loads(jobs_of(jobs, "split", out="resources/splits/target.csv")[0]["dataset"])
    defaults = {key: schema.get("default") for key, schema in section_keys("dataset").items()}
    assert dataset == {k: v for k, v in job_keys({**defaults, **own["dataset"]}).items() if k not in FASHION_MNIST_ONLY}
    assert "note: dataset: your config names another format 'imagefolder' and path 'photos'" in output
    # The source dataset of pretraining is still the demo's: the user named none.
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    source = json.loads(jobs_of(jobs, "split", out="resources/splits/source.csv")[0]["dataset"])
    assert source["classes"] == demo["pretrain"]["dataset"]["classes"]
    # and so is the source model, which sets the size the user's images are trained at: said, with the way out
    size = demo["pretrain"]["image_size"]
    assert [json.loads(o["weights-sizes"])["sizes"] for o in jobs_of(jobs, "decode")
            if o["split"] == "resources/splits/target.csv"] == [size], jobs_of(jobs, "decode")
    assert (f"note: weights.source: pretrain is config/config.yaml's (your config names no source): your images are "
            f"trained from a {demo['weights']['arch']} pretrained here on Fashion-MNIST's 28-px grayscale images of "
            f"classes {demo['pretrain']['dataset']['classes']} at pretrain.image_size {size} px, and at {size} px "
            "themselves") in output, output[-3000:]
    for i, written in enumerate(({"train": {"image_size": 96}}, {"weights": {"source": "torchvision"}},
                                 {"pretrain": {"dataset": own["dataset"]}})):
        _, output = run_over_the_demo(tmp_path / f"written{i}", {**own, **written})
        said = [line for line in output.splitlines() if "weights.source: pretrain is" in line]
        if "train" in written:  # the source model still said, not the size its own images are trained at
            assert len(said) == 1 and f"and at {size} px" not in said[0], said
        else:
            assert said == [], (written, said)


def test_a_config_that_tweaks_the_demo_is_merged_key_by_key(tmp_path):
    """Same dataset (another copy of Fashion-MNIST is the same dataset), an experiment of the demo's: each
    key given replaces the demo's, the rest stays."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    copy = str(tmp_path / "fashion-mnist-copy")
    jobs, output = run_over_the_demo(tmp_path, {"dataset": {"seed": 1, "path": copy}, "experiments": {"finetune": {"lr": 0.01}}})
    dataset = json.loads(jobs_of(jobs, "split", out="resources/splits/target.csv")[0]["dataset"])
    assert dataset["seed"] == 1 and dataset["path"] == copy and dataset["classes"] == demo["dataset"]["classes"]
    assert dataset["max_train_per_class"] == demo["dataset"]["max_train_per_class"]
    trained = {Path(o["out-checkpoint"]).parts[1] for o in jobs_of(jobs, "train")}
    assert trained == set(demo["experiments"])
    assert json.loads(jobs_of(jobs, "train", **{"out-checkpoint": "results/finetune/seed0/model.pt"})[0]["options"])["lr"] == 0.01
    assert "note:" not in output


def test_experiments_of_other_names_replace_the_demo_s(tmp_path):
    jobs, output = run_over_the_demo(tmp_path, {"experiments": {"mine": {"strategy": "finetune", "epochs": 2}}})
    assert {Path(o["out-checkpoint"]).parts[1] for o in jobs_of(jobs, "train")} == {"mine"}
    assert "note: experiments: yours (mine) replace config/config.yaml's (finetune, feature_extract, scratch)" in output


def test_another_optimizer_for_a_demo_experiment_names_the_settings_it_keeps_from_the_demo(tmp_path):
    """`feature_extract: {optimizer: adamw}` over the demo kept the demo's lr 1.0 (L-BFGS's line-search scale) and
    weight_decay 0.1 for that experiment: AdamW at lr 1.0, its loss rising every epoch, with nothing said. A note
    names what it keeps and where; with lr written too, only weight_decay is named; the same optimizer, nothing."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["experiments"]["feature_extract"]
    assert demo["optimizer"] == "lbfgs" and {"lr", "weight_decay"} <= set(demo), "the demo's head is no longer so"
    jobs, output = run_over_the_demo(tmp_path / "a", {"experiments": {"feature_extract": {"optimizer": "adamw"}}})
    options = json.loads(jobs_of(jobs, "train", **{"out-checkpoint": "results/feature_extract/seed0/model.pt"})[0]["options"])
    kept = f"lr {demo['lr']!r}, weight_decay {demo['weight_decay']!r}"
    assert (options["optimizer"], options["lr"], options["weight_decay"]) == ("adamw", demo["lr"], demo["weight_decay"])
    assert (f"note: experiments.feature_extract.optimizer adamw (your config) keeps {kept} of config/config.yaml's "
            "experiments.feature_extract, set there for optimizer lbfgs: write lr and weight_decay for adamw under "
            "experiments.feature_extract") in output, output[-3000:]
    _, output = run_over_the_demo(tmp_path / "b", {"experiments": {"feature_extract": {"optimizer": "adamw", "lr": 0.01}}})
    assert (f"keeps weight_decay {demo['weight_decay']!r} of config/config.yaml's experiments.feature_extract, set "
            "there for optimizer lbfgs: write weight_decay for adamw") in output, output[-3000:]
    _, output = run_over_the_demo(tmp_path / "c", {"experiments": {"feature_extract": {"epochs": 3}}})
    assert "note:" not in output, output[-3000:]


def test_another_optimizer_keeping_the_demo_s_train_settings_names_them(tmp_path):
    """`finetune: {optimizer: sgd}` (or `train: {optimizer: sgd}`) over the demo kept the lr and weight_decay the demo's
    `train` sets for AdamW, with nothing said (the note named an experiment's own settings only). Said now: where the
    optimizer is an experiment's, under it; where it is train's, once, under train (the demo's feature_extract, L-BFGS
    of its own, has no such note); a key written beside it is not named."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    train = demo["train"]
    assert train["optimizer"] == "adamw" and {"lr", "weight_decay"} <= set(train), "the demo's train is no longer so"
    jobs, output = run_over_the_demo(tmp_path / "a", {"experiments": {"finetune": {"optimizer": "sgd"}}})
    options = json.loads(jobs_of(jobs, "train", **{"out-checkpoint": "results/finetune/seed0/model.pt"})[0]["options"])
    assert (options["optimizer"], options["lr"], options["weight_decay"]) == ("sgd", train["lr"], train["weight_decay"])
    kept = f"lr {train['lr']!r}, weight_decay {train['weight_decay']!r}"
    assert (f"note: experiments.finetune.optimizer sgd (your config) keeps {kept} of config/config.yaml's train, set "
            "there for optimizer adamw: write lr and weight_decay for sgd under experiments.finetune") in output, output[-3000:]
    _, output = run_over_the_demo(tmp_path / "b", {"train": {"optimizer": "sgd", "lr": 0.1}})
    notes = [line for line in output.splitlines() if "optimizer sgd (your config)" in line]
    assert notes == [f"note: train.optimizer sgd (your config) keeps weight_decay {train['weight_decay']!r} of "
                     "config/config.yaml's train, set there for optimizer adamw: write weight_decay for sgd under "
                     "train"], output[-3000:]


def test_a_train_key_of_yours_that_a_demo_experiment_sets_for_itself_is_said_not_to_reach_it(tmp_path):
    """`train: {epochs: 2}` over the demo: the demo's feature_extract sets its own epochs (25), which win over train's,
    and it trained its 25 epochs with nothing said while the others took 2. A note names each such experiment and
    the key to write; the runs' options show who gets which value. A misspelled optimizer (Adam) is refused with a
    hint, and no note advises on the settings it would keep."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["experiments"]
    keeping = {name: own["epochs"] for name, own in demo.items() if own.get("epochs", 2) != 2}
    assert keeping, "no demo experiment sets its own epochs any more"
    jobs, output = run_over_the_demo(tmp_path / "a", {"train": {"epochs": 2}})
    for name in demo:
        options = json.loads(jobs_of(jobs, "train", **{"out-checkpoint": f"results/{name}/seed0/model.pt"})[0]["options"])
        assert options["epochs"] == keeping.get(name, 2), (name, options)
    notes = [line for line in output.splitlines() if line.startswith("note: train.epochs")]
    assert notes == [f"note: train.epochs 2 (your config) does not reach experiment {name}: config/config.yaml sets its "
                     f"epochs to {epochs}, and an experiment's own key wins over train's (write "
                     f"experiments.{name}.epochs in your config to change it)"
                     for name, epochs in keeping.items()], output[-3000:]
    _, output = run_over_the_demo(tmp_path / "b", {"experiments": {name: {"epochs": 2} for name in keeping},
                                                   "train": {"epochs": 2}})
    assert "note: train.epochs" not in output, output[-3000:]
    result = run_snakemake(*config_over_the_demo(tmp_path / "c", {"train": {"optimizer": "Adam"}}), "-n", check=False)
    assert result.returncode != 0 and "train.optimizer: 'Adam' is not allowed; use one of adamw, sgd, lbfgs (did you " \
        "mean adamw?)" in result.stdout, result.stdout[-3000:]
    assert "(your config) keeps" not in result.stdout, result.stdout[-3000:]


def test_an_int8_model_asked_of_predict_with_no_images_is_said_unused_not_refused(tmp_path):
    """predict.model: int8 without export.quantize was refused even where predict.images is null, after a note that
    predict.model is not used: the note alone now; with images, the refusal stands (test above)."""
    result = run_snakemake(*config_over_the_demo(tmp_path, {"predict": {"images": None, "model": "int8"}}), "-n")
    assert "note: predict: predict.model not used: predict.images is null" in result.stdout, result.stdout[-3000:]
    assert "int8 needs export.quantize" not in result.stdout


def test_a_demo_key_that_a_change_of_yours_makes_unused_says_how_to_be_rid_of_it(tmp_path):
    """`finetune: {strategy: feature_extract}` over the demo: the demo's own `backbone_lr_factor` of that experiment is
    not used by a head on a frozen backbone, and was refused with `remove it (set in config/config.yaml)`, which a file
    merged over the demo cannot do. The message says what can: another name, or --replace-workflow-config."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["experiments"]["finetune"]
    assert "backbone_lr_factor" in demo, "the demo's finetune no longer sets backbone_lr_factor"
    result = run_snakemake(*config_over_the_demo(tmp_path, {"experiments": {"finetune": {"strategy": "feature_extract"}}}),
                           "-n", check=False)
    assert result.returncode != 0
    line = next(line for line in result.stdout.splitlines() if "experiments.finetune.backbone_lr_factor" in line)
    assert line.rstrip().endswith("(set in config/config.yaml, the demo's config yours is merged over: a file of yours "
                                  "cannot unset its keys; name the experiment otherwise, or run with "
                                  "--replace-workflow-config to use your config alone)"), line


def test_a_batchnorm_refusal_over_the_demo_names_the_file_that_wrote_the_batch_size(tmp_path):
    """`train: {batch_size: 1}` over the demo: each demo experiment training BatchNorm is refused, and the line named no
    file (the config check's lines do): it names the demo's experiment and the user's train.batch_size."""
    workdir, mine = config_over_the_demo(tmp_path, {"train": {"batch_size": 1}})
    result = run_snakemake(workdir, mine, "-n", check=False)
    lines = [line.strip() for line in result.stdout.splitlines() if "gives BatchNorm batches of 1 image" in line]
    assert result.returncode != 0 and lines, result.stdout[-3000:]
    assert all(line.endswith(f"(set in config/config.yaml, the demo's config yours is merged over; train.batch_size in "
                             f"{mine})") for line in lines), lines


def test_refusals_whose_line_starts_with_more_than_the_key_name_the_file_that_wrote_it(tmp_path):
    """Over the demo, `dataset.val_fraction is 0: ...` (the key path followed by words, not by a colon), the int8
    model asked of predict without export.quantize, and a predict.seed or predict.experiment of yours that names no
    run named no file: said now, as every other refusal's key."""
    for name, own, start in (("a", {"dataset": {"val_fraction": 0}}, "dataset.val_fraction is 0: "),
                             ("b", {"predict": {"images": "photos", "model": "int8"}}, "predict.model: int8 needs "),
                             ("c", {"predict": {"images": "photos", "seed": 5}}, "predict.seed: 5 is not in seeds "),
                             ("d", {"predict": {"images": "photos", "experiment": "nope"}}, "predict.experiment: 'nope' ")):
        workdir, mine = config_over_the_demo(tmp_path / name, own)
        result = run_snakemake(workdir, mine, "-n", check=False)
        line = next((line.strip() for line in result.stdout.splitlines() if start in line), "")
        assert result.returncode != 0 and line.endswith(f"(set in {mine})"), result.stdout[-3000:]


def test_an_empty_experiments_section_over_the_demo_is_said_to_add_nothing(tmp_path):
    """`experiments: {}` in a file merged over the demo: Snakemake's merge adds nothing, and the demo's experiments
    all ran without a word, as if the section had been read."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["experiments"]
    result = run_snakemake(*config_over_the_demo(tmp_path, {"experiments": {}}), "-n")
    assert (f"note: experiments: yours is empty, which adds nothing to config/config.yaml's ({', '.join(demo)}): they "
            "all run") in result.stdout, result.stdout[-3000:]
    trained = set(re.findall(r"results/([\w-]+)/seed\d+/model\.pt", result.stdout))
    assert trained == set(demo), (trained, result.stdout[-3000:])


def test_experiments_of_yours_sharing_a_name_with_the_demos_are_said_to_keep_the_demos_others(tmp_path):
    """`experiments: {finetune: {lr: 0.01}, mine: {...}}` over the demo: Snakemake's merge keeps the demo's other
    experiments, which all ran (12 train jobs for 6), without a word; names none of the demo's replace them (said)."""
    demo = list(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["experiments"])
    shared = demo[0]
    result = run_snakemake(*config_over_the_demo(tmp_path, {"experiments": {
        shared: {"lr": 0.01}, "mine": {"strategy": "finetune"}}}), "-n")
    assert (f"note: experiments: yours ({shared}, mine) share the name {shared} with config/config.yaml's, so they are "
            f"merged with its experiments: its {', '.join(demo[1:])} run too; name yours all otherwise") \
        in result.stdout, result.stdout[-3000:]
    trained = set(re.findall(r"results/([\w-]+)/seed\d+/model\.pt", result.stdout))
    assert trained == {*demo, "mine"}, (trained, result.stdout[-3000:])


def test_a_demo_experiment_refused_for_a_train_key_of_yours_names_that_key_and_your_file(tmp_path):
    """`train: {sync_batchnorm: true}` over the demo (one process): each demo experiment is refused, and the line was
    credited to config/config.yaml alone, with the advice to rename the experiment; the key at fault, written in the
    user's file, was not named (the line says `sync_batchnorm shares ...`, not `sync_batchnorm: true`)."""
    workdir, mine = config_over_the_demo(tmp_path, {"train": {"sync_batchnorm": True}})
    result = run_snakemake(workdir, mine, "-n", check=False)
    lines = [line.strip() for line in result.stdout.splitlines() if "it needs devices x nodes > 1" in line]
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["experiments"]
    assert result.returncode != 0 and sorted(line.split(":", 1)[0] for line in lines) == sorted(
        f"experiments.{name}" for name in demo), result.stdout[-3000:]
    assert all(line.endswith(f"(set in config/config.yaml, the demo's config yours is merged over; train.sync_batchnorm "
                             f"in {mine})") for line in lines), lines


def test_a_problem_of_train_s_own_keys_is_named_under_train_and_the_file_that_wrote_them(tmp_path):
    """`train: {epochs: 2, warmup_epochs: 5}` over the demo: every run warms up past its end. It was refused once per
    demo experiment, as `experiments.finetune: ...`, credited to config/config.yaml (which writes neither key) with
    the advice to rename the experiment. It is train's: said once, as `train.warmup_epochs`, set in the user's file.
    An experiment that sets the key itself keeps its own line."""
    result = run_snakemake(*config_over_the_demo(tmp_path / "a", {"train": {"epochs": 2, "warmup_epochs": 5}}), "-n",
                           check=False)
    lines = [line for line in result.stdout.splitlines() if "5 with epochs: 2" in line]
    assert result.returncode != 0 and len(lines) == 1, result.stdout[-3000:]
    # the demo's feature_extract (L-BFGS, no schedule to warm up) has no such problem: the others are named
    assert lines[0].strip().startswith("train.warmup_epochs (experiments finetune, scratch): 5 with epochs: 2: the "
                                       "learning rate would still be"), lines
    assert lines[0].rstrip().endswith(f"(set in {tmp_path / 'a' / 'mine.yaml'})") and "experiments." not in lines[0], lines
    own = {"train": {"epochs": 2, "warmup_epochs": 1}, "experiments": {"long": {"warmup_epochs": 3}}}
    result = run_snakemake(*config_over_the_demo(tmp_path / "b", own), "-n", check=False)
    assert "experiments.long: warmup_epochs: 3 with epochs: 2" in result.stdout, result.stdout[-3000:]
    assert "train.warmup_epochs" not in result.stdout


def test_a_train_key_no_experiment_acts_on_is_refused_only_where_the_user_wrote_it(tmp_path):
    """Over the demo, experiments of the user's own that are all L-BFGS heads act on none of the demo's
    `train.schedule` and `train.warmup_epochs`: those are the demo's, not refused. The user's own
    `train.momentum`, which their AdamW experiment does not act on, is refused, naming the key."""
    head = {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0}
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert {"schedule", "warmup_epochs"} <= set(demo["train"]), "the demo's train section no longer sets these"
    jobs, output = run_over_the_demo(tmp_path / "demo-keys", {"experiments": {"head": head}})
    assert {Path(o["out-checkpoint"]).parts[1] for o in jobs_of(jobs, "train")} == {"head"}
    assert "not used" not in output
    mine = {"train": {"momentum": 0.5}, "experiments": {"head": head, "mine": {"strategy": "finetune"}}}
    result = run_snakemake(*config_over_the_demo(tmp_path / "own-key", mine), "-n", check=False)
    assert result.returncode != 0
    assert ("train.momentum: not used by any experiment that takes it from train: only optimizer sgd has momentum, "
            "and this is optimizer lbfgs (experiment head); only optimizer sgd has momentum, and this is optimizer "
            "adamw (experiment mine); remove it") in result.stdout, result.stdout[-3000:]
    assert "train.schedule" not in result.stdout and "train.warmup_epochs" not in result.stdout


def test_a_train_key_no_experiment_acts_on_names_each_experiments_own_reason(tmp_path):
    """`train.warmup_epochs` that an L-BFGS head (no schedule) and a onecycle sweep (its own warm-up) both take
    from train and neither acts on: the message gives each experiment's reason, not the first one's as if it were
    every experiment's, and names the sweep's experiment once for its two runs."""
    head = {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0}
    cycle = {"schedule": "onecycle", "sweep": {"lr": [0.01, 0.001]}}
    mine = {"train": {"warmup_epochs": 1}, "experiments": {"head": head, "cycle": cycle}}
    result = run_snakemake(*config_over_the_demo(tmp_path, mine), "-n", check=False)
    assert result.returncode != 0
    assert ("train.warmup_epochs: not used by any experiment that takes it from train: optimizer lbfgs's line search "
            "chooses each step: no learning-rate schedule applies (experiment head); schedule onecycle warms up over "
            "its first 30% of steps itself (experiment cycle); remove it") in result.stdout, result.stdout[-3000:]


def test_predict_keys_without_predict_images_are_named(tmp_path):
    """predict.top_k and predict.experiment choose what classifies predict.images: with no images they do
    nothing, and the run says so at start; with images, no note and the predict job carries them."""
    (tmp_path / "none").mkdir()
    output = dry_run_output(tmp_path / "none", {**TINY_CONFIG, "predict": {"top_k": 2, "experiment": "scratch"}})
    assert ("note: predict: predict.top_k, predict.experiment not used: predict.images is null, so nothing is "
            "classified") in output, output[-3000:]
    assert "results/predictions/" not in output

    def refused_at_start(folder: str, target: str, said: str, not_seen: str) -> None:
        refused = run_snakemake(tmp_path / folder, tmp_path / folder / "config.yaml", "-n", target, check=False)
        assert refused.returncode != 0 and not_seen not in refused.stdout, refused.stdout[-3000:]
        assert f"{target}: {said}" in refused.stdout, refused.stdout[-3000:]

    # Asking for predictions by name with no images is refused at start, naming the key (no input function's traceback).
    for target in ("results/predictions/scratch/seed0/predictions.csv", "predict_selected"):
        refused_at_start("none", target, "predictions need predict.images (a folder of images or a CSV with a `path` "
                         "column), which is null: nothing ran", "InputFunctionException")
    (tmp_path / "some").mkdir()
    output = dry_run_output(tmp_path / "some", {**TINY_CONFIG, "predict": {"images": "new_images", "top_k": 2,
                                                                          "experiment": "scratch", "seed": 0}})
    assert "note: predict" not in output
    options = jobs_of(commands(output), "predict", out="results/predictions/scratch/seed0/predictions.csv")[0]
    assert options["top-k"] == "2"
    # The selected run's predictions asked for where the config names one run and seed: nothing to select among (the
    # job started with an empty --choose-from and stopped on it); refused at start, naming the run's own file.
    for target in ("results/predictions/selected/predictions.csv", "predict_selected"):
        refused_at_start("some", target, "predict.experiment scratch with predict.seed 0 names one run, whose "
                         "predictions are results/predictions/scratch/seed0/predictions.csv: nothing ran", "choose-from")
    # So with experiment null and a config of one experiment of one run: the key named as written, null.
    (tmp_path / "one").mkdir()
    tiny_config(tmp_path / "one", replace={"experiments": {"scratch": TINY_CONFIG["experiments"]["scratch"]}},
                predict={"images": "new_images", "experiment": None, "seed": 0})
    refused_at_start("one", "predict_selected", "predict.experiment null with predict.seed 0 names one run, whose "
                     "predictions are results/predictions/scratch/seed0/predictions.csv: nothing ran", "choose-from")
    configfile = tmp_path / "some" / "config.yaml"
    # A run's seed folder asked for with a seed not in `seeds`: it trains, and the start says the leaderboard leaves it out.
    for target in ("results/scratch/seed5/metrics.json", "results/predictions/scratch/seed5/predictions.csv"):
        planned = run_snakemake(tmp_path / "some", configfile, "-n", target).stdout
        assert (f"note: {target}: seed 5 is not in seeds {TINY_CONFIG['seeds']}: its run trains as asked, but the "
                "leaderboard (results/summary.csv) and the selection count only the seeds listed") in planned, planned[-3000:]
        assert "output: results/scratch/seed5/model.pt" in planned, planned[-3000:]
    assert "seed 0 is not in seeds" not in run_snakemake(tmp_path / "some", configfile, "-n",
                                                         "results/scratch/seed0/metrics.json").stdout


def test_amp_on_device_auto_is_said_at_the_start_of_a_run_on_a_machine_where_torch_sees_no_gpu(tmp_path):
    """The start of a local run names a run's amp set (experiments.<name>.amp) with device auto where torch sees no
    GPU (it trains as without it: tests/test_training.py); on a machine with one, nothing is said."""
    import torch

    fast = {"strategy": "finetune", "amp": "bf16", "device": "auto"}
    config = tiny_config(tmp_path, replace={"experiments": {"fast": fast}})
    output = run_snakemake(tmp_path, config, "--until", "train").stdout
    assert ("rule train:" in output) and (("note: experiments.fast.amp bf16 (fast): autocast and channels-last act "
                                           "on CUDA only") in output) == (not torch.cuda.is_available()), output[-3000:]


def test_photos_of_a_format_predict_does_not_read_are_named_at_start(tmp_path):
    """A phone's photos (.heic) in predict.images got no row, said only in the predict job's log, and only once it
    reran (adding them alone reran nothing): each start says how many of each format, counted in the folder and
    the folders below it (hidden ones left out, as predict leaves them out); without them, nothing is said."""
    config = {**TINY_CONFIG, "predict": {"images": "new_images", "experiment": "scratch", "seed": 0}}
    (tmp_path / "new_images" / "2026" / ".thumbs").mkdir(parents=True)
    for name in ("IMG_1.HEIC", "2026/IMG_2.heic", "2026/raw.dng", "2026/.thumbs/IMG_3.heic", "notes.txt"):
        (tmp_path / "new_images" / name).write_bytes(b"\0\0\0\x18ftypheic")
    output = dry_run_output(tmp_path, config)
    assert ("note: predict.images: 3 file(s) of an image format not read here (1 .dng, 2 .heic) get no prediction: "
            "convert them to one read here (") in output, output[-3000:]
    for name in ("IMG_1.HEIC", "2026/IMG_2.heic", "2026/raw.dng"):
        (tmp_path / "new_images" / name).unlink()
    assert "not read here" not in dry_run_output(tmp_path, config)


@pytest.mark.parametrize("dataset, n_classes", [({}, 4), ({"classes": None}, 10)])
def test_a_top_k_at_or_above_the_number_of_classes_is_named_at_start(tmp_path, dataset, n_classes):
    """evaluate.top_k at the number of classes (top-k accuracy would be 1.0, so it is left out of the metrics) and
    predict.top_k above it (every class listed) change nothing a user sees: said at start, counting the classes
    of dataset.classes, or Fashion-MNIST's ten where none are chosen. One below (evaluate) or at it (predict): no
    note, and the jobs carry the value."""
    target = {**TINY_CONFIG["dataset"], **dataset}
    (tmp_path / "over").mkdir()
    (tmp_path / "under").mkdir()
    output = dry_run_output(tmp_path / "over", {**TINY_CONFIG, "dataset": target, "evaluate": {"top_k": n_classes},
                                                "predict": {"images": "new_images", "top_k": n_classes + 1}})
    assert (f"note: evaluate.top_k: {n_classes} with {n_classes} classes: top-k accuracy is left out of the metrics "
            "(it would be 1.0)") in output, output[-3000:]
    assert f"note: predict.top_k: {n_classes + 1} with {n_classes} classes: each image lists all {n_classes} " \
           "classes" in output
    output = dry_run_output(tmp_path / "under", {**TINY_CONFIG, "dataset": target, "evaluate": {"top_k": n_classes - 1},
                                                 "predict": {"images": "new_images", "top_k": n_classes}})
    assert "top_k" not in "\n".join(line for line in output.splitlines() if line.startswith("note:"))
    assert {options["top-k"] for options in jobs_of(commands(output), "evaluate")} == {str(n_classes - 1)}
    assert {options["top-k"] for options in jobs_of(commands(output), "predict")} == {str(n_classes)}


def test_a_top_k_is_not_named_where_the_classes_are_not_known_yet(tmp_path):
    """An ImageFolder without dataset.classes, never split: its classes are known only once the split job lists the
    folder, so nothing is said at start about a top_k (the evaluate job's metrics leave top-k out where it is
    not below the classes found)."""
    folder = {"format": "imagefolder", "path": "photos", "val_fraction": 0.5, "test_fraction": 0.0}
    output = dry_run_output(tmp_path, {**TINY_CONFIG, "dataset": folder, "evaluate": {"top_k": 50}})
    assert "note: evaluate.top_k" not in output
    assert {options["top-k"] for options in jobs_of(commands(output), "evaluate")} == {"50"}
    # Nor where no top_k is written: the schema's 2 with 2 classes is no setting of the user's to question.
    output = dry_run_output(tmp_path, {**TINY_CONFIG, "dataset": {**folder, "classes": ["cat", "dog"]}})
    assert "note: evaluate.top_k" not in output
    assert {options["top-k"] for options in jobs_of(commands(output), "evaluate")} == {"2"}
    # Once split, the folder's classes are those its split's report lists: a top_k at or above them is named.
    from faults import make_images

    make_images(tmp_path / "split_photos", {"cat": 4, "dog": 4, "owl": 4})
    config = {**TINY_CONFIG, "dataset": {**folder, "path": "split_photos"}, "evaluate": {"top_k": 50}}
    assert "note: evaluate.top_k" not in dry_run_output(tmp_path, config)
    run_snakemake(tmp_path, None, "resources/splits/target.csv", "--configfile", str(tmp_path / "config.yaml"))
    assert "note: evaluate.top_k: 50 with 3 classes: top-k accuracy is left out" in dry_run_output(tmp_path, config)


def test_an_early_stopping_patience_no_run_of_its_length_can_reach_is_named(tmp_path):
    """Patience 3: the first epoch is the first best, so the earliest stop is after epoch 4 (gradual: 3 epochs after
    the unfreeze). A run of 4 epochs cannot stop early; one of 5 can."""
    config = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 5, "early_stopping_patience": 3},
              "pretrain": {**TINY_CONFIG["pretrain"], "train": {**TINY_CONFIG["pretrain"]["train"], "epochs": 3,
                                                                "early_stopping_patience": 2}},
              "experiments": {"short": {"epochs": 4}, "long": {"epochs": 5},
                              "late": {"strategy": "gradual", "unfreeze_epoch": 2, "epochs": 5, "early_stopping_patience": 3}}}
    output = dry_run_output(tmp_path, config)
    # named where written: `train` for short, which takes it from there (it named the experiment's own key)
    assert ("note: experiments.short: train.early_stopping_patience 3 with epochs 4: the run cannot stop early (the earliest "
            "stop is after epoch 4: 3 epochs without a better val_accuracy after epoch 1)") in output, output[-3000:]
    assert ("note: experiments.late: early_stopping_patience 3 with epochs 5: the run cannot stop early (the earliest "
            "stop is after epoch 5: 3 epochs without a better val_accuracy after epoch 2)") in output, output[-3000:]
    assert "experiments.long: early_stopping_patience" not in output
    assert ("note: pretrain.train.early_stopping_patience 2 with epochs 3: pretraining cannot stop early (the earliest "
            "stop is after epoch 3: 2 epochs without a better val_accuracy after epoch 1)") in output, output[-3000:]


def test_a_sweep_of_patiences_no_run_of_its_length_can_reach_is_refused(tmp_path):
    """Patience 3 and 4 in 4 epochs: neither run can stop (the earliest stops would be after epochs 4 and 5), so both
    train the same run under two names: refused, as a sweep of any value that changes nothing. Patience 1 and 3 in 4
    epochs: the first can stop after epoch 2, two runs that differ."""
    swept = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 4}}
    output = dry_run_output(tmp_path, {**swept, "experiments": {"ft": {"sweep": {"early_stopping_patience": [3, 4]}}}},
                            check=False)
    assert ("experiments.ft.sweep.early_stopping_patience: runs ft-early_stopping_patience3 and "
            "ft-early_stopping_patience4 would train the same run (early_stopping_patience: with epochs 4 neither can "
            "stop early: the earliest stop is after epoch 1 + the patience)") in output, output[-3000:]
    assert "Job stats" not in output
    output = dry_run_output(tmp_path, {**swept, "experiments": {"ft": {"sweep": {"early_stopping_patience": [1, 3]}}}})
    assert "would train the same run" not in output
    assert len([job for job in commands(output) if job[0] == "train"]) == 2 * len(TINY_CONFIG.get("seeds", [0])), output[-3000:]


def test_pretrain_train_where_every_run_is_a_scratch_run_is_said_unused(tmp_path):
    """weights.source pretrain with only `pretrained: false` runs: no pretrain job is planned, so the pretrain.train
    written changed nothing, and nothing said so. With one pretrained run beside them, pretrain trains: no note."""
    (tmp_path / "scratch").mkdir()
    config = {**TINY_CONFIG, "experiments": {"scratch": {"strategy": "finetune", "pretrained": False}}}
    output = dry_run_output(tmp_path / "scratch", config)
    assert "note: pretrain.train: not used: every experiment run is pretrained: false" in output, output[-3000:]
    assert "pretrain" not in {job[0] for job in commands(output)}
    (tmp_path / "both").mkdir()
    output = dry_run_output(tmp_path / "both", {**config, "experiments": {**config["experiments"], "ft": {}}})
    assert "note: pretrain.train" not in output and "pretrain" in {job[0] for job in commands(output)}, output[-3000:]


def test_lr_find_keys_without_a_run_at_lr_auto_are_named(tmp_path):
    (tmp_path / "fixed").mkdir()
    output = dry_run_output(tmp_path / "fixed", {**TINY_CONFIG, "lr_find": {"steps": 50}})
    assert "note: lr_find: no experiment run has lr: auto, so lr_find.steps set only the curves asked for" in output
    (tmp_path / "auto").mkdir()
    # one run at lr: auto beside one of a fixed lr: the range test runs for it, with the settings written
    config = {**TINY_CONFIG, "lr_find": {"steps": 50}, "experiments": {"finetune": {"lr": "auto"}, "fixed": {}}}
    output = dry_run_output(tmp_path / "auto", config)
    assert "note: lr_find" not in output
    assert [json.loads(job["range-test"])["steps"] for job in jobs_of(commands(output), "lr_find")] == [50]


@pytest.mark.parametrize("experiment, written", [
    ({"strategy": "feature_extract", "augment": True}, {"cache_features": False}),
    ({"strategy": "feature_extract"}, {"bn": "frozen"}),
])
def test_a_value_that_asks_for_nothing_where_its_key_does_not_apply_is_the_same_run_as_leaving_it_out(
        tmp_path, experiment, written):
    """`cache_features: false` for an augmented feature_extract run (nothing is cached either way), `bn: frozen` for
    feature_extract (its BatchNorm is frozen either way): accepted, and the run's jobs get the key's default, so
    that removing it later does not train the run again (it did: its options had changed)."""
    options = {}
    for name, spec in (("written", {**experiment, **written}), ("left_out", experiment)):
        (tmp_path / name).mkdir()
        output = dry_run_output(tmp_path / name, {**TINY_CONFIG, "experiments": {"run": spec}})
        options[name] = json.loads(jobs_of(commands(output), "train")[0]["options"])
    assert options["written"] == options["left_out"]


def test_a_path_starting_with_a_tilde_is_read_in_the_home_folder(tmp_path):
    """`dataset.path: ~/photos` (and predict.images, weights.path) name the home folder's, as torchvision's
    datasets read them: the jobs get the real path."""
    home, work = tmp_path / "home", tmp_path / "work"
    for folder in (home / "photos" / "cat", home / "photos" / "dog", home / "incoming", work):
        folder.mkdir(parents=True)
    (home / "w.pth").write_bytes(b"")
    for image in (home / "incoming" / "a.png", home / "photos" / "cat" / "a.png", home / "photos" / "dog" / "a.png"):
        image.write_bytes(PNG)
    weights = {"source": "path", "path": "~/w.pth", "arch": "resnet18", "preprocessing": CHOSEN["weights.preprocessing"]}
    config = {**TINY_CONFIG, "dataset": {"format": "imagefolder", "path": "~/photos"}, "weights": weights,
              "predict": {"images": "~/incoming", "experiment": "finetune", "seed": 0}}
    configfile = work / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    output = run_snakemake(work, configfile, "-n", "--printshellcmds", *CORES, env={"HOME": str(home)}).stdout
    jobs = commands(output)
    split = json.loads(jobs_of(jobs, "split", out="resources/splits/target.csv")[0]["dataset"])
    assert split["path"] == str(home / "photos")
    assert json.loads(jobs_of(jobs, "weights")[0]["fetch"])["path"] == str(home / "w.pth")
    assert jobs_of(jobs, "predict")[0]["images"] == str(home / "incoming")


def test_a_pretrain_section_unused_by_the_weights_source_is_named(tmp_path):
    """Written with weights.source: path, `pretrain` trains nothing: the run says so at start (not refused: a
    config copied from the demo keeps its section)."""
    weights = {"source": "path", "path": "w.pth", "arch": "resnet18", "preprocessing": CHOSEN["weights.preprocessing"]}
    (tmp_path / "w.pth").write_bytes(b"")
    output = dry_run_output(tmp_path, {**TINY_CONFIG, "weights": weights})
    assert "note: pretrain: not used with weights.source: path" in output
    (tmp_path / "demo-source").mkdir()
    assert "note: pretrain" not in dry_run_output(tmp_path / "demo-source", TINY_CONFIG)
    # Over the demo, its own pretrain section is not the user's: no note for what they did not write.
    (tmp_path / "over").mkdir()
    (tmp_path / "over" / "w.pth").write_bytes(b"")
    _, output = run_over_the_demo(tmp_path / "over", {"weights": weights})
    assert "note: pretrain" not in output


def test_an_experiment_named_as_a_folder_of_results_is_refused(tmp_path):
    """results/logs/, results/benchmarks/, ... are not runs: an experiment (or a sweep's run) named so would put its
    model among the logs, where clearing them deletes it. Letter case aside: one folder on macOS."""
    configfile = tiny_config(tmp_path, replace={"experiments": {"finetune": {}, "Logs": {}, "lr_find": {"lr": "auto"},
                                                                "benchmarks": {"sweep": {"lr": [0.01]}}}})
    result = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert result.returncode != 0
    for experiment, folder, holds in (("Logs", "logs", "the jobs' logs"), ("lr_find", "lr_find", "the learning-rate finder's curves")):
        assert (f"experiments.{experiment}: the run name {experiment} names the folder results/{folder}/ (letter case aside), "
                f"which holds {holds}: rename the experiment") in result.stdout, result.stdout[-3000:]
    assert "experiments.finetune:" not in result.stdout
    assert "experiments.benchmarks:" not in result.stdout  # its run is benchmarks-lr0.01 (finetune.sweeps)
    assert not (tmp_path / "results").exists()


def test_a_train_job_is_told_where_its_run_s_own_keys_are_written(tmp_path):
    """Its messages ("lower experiments.div.lr") name the key the user wrote: the experiment's, its sweep's, or train's."""
    config = {**TINY_CONFIG, "experiments": {"finetune": {}, "div": {"optimizer": "sgd", "lr": 0.5,
                                                                     "sweep": {"batch_size": [4, 8]}}}}
    jobs = dry_run(tmp_path, config)
    for name, expected in (("finetune", {}), ("div-batch_size4", {
            "optimizer": "experiments.div.optimizer", "lr": "experiments.div.lr",
            "batch_size": "experiments.div.sweep.batch_size"})):
        options = jobs_of(jobs, "train", **{"out-checkpoint": f"results/{name}/seed0/model.pt"})[0]
        assert json.loads(options["key-names"]) == expected, name


def test_a_weights_path_that_does_not_exist_stops_at_start_naming_the_key(tmp_path):
    weights = {"source": "path", "path": "nonexist.pth", "arch": "resnet18", "preprocessing": CHOSEN["weights.preprocessing"]}
    configfile = tiny_config(tmp_path, replace={"weights": weights})
    result = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert result.returncode != 0
    assert (f"weights.path: nonexist.pth does not exist (relative to the working directory {tmp_path}): name the "
            "weights file") in result.stdout, result.stdout[-2000:]
    assert "MissingInputException" not in result.stdout and not (tmp_path / "results").exists()
    absolute = tiny_config(tmp_path, name="abs.yaml", replace={"weights": {**weights, "path": "/nonexist/w.pth"}})
    result = run_snakemake(tmp_path, absolute, "-n", check=False)  # an absolute path is relative to nothing
    assert result.returncode != 0 and "weights.path: /nonexist/w.pth does not exist: name the weights file" in \
        result.stdout, result.stdout[-2000:]
    (tmp_path / "loop.pth").symlink_to("loop.pth")
    configfile = tiny_config(tmp_path, name="loop.yaml", replace={"weights": {**weights, "path": "loop.pth"}})
    result = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert result.returncode != 0
    assert ("weights.path: loop.pth is a symbolic link to loop.pth, which leads to no file (missing, or a loop of "
            "links)") in result.stdout, result.stdout[-2000:]


def test_a_quoted_value_on_the_command_line_stays_text(tmp_path):
    """`--config 'predict={images: "2024"}'`: quoted, a folder named by a number is a path, as in a config file
    (Snakemake's own parse loses the quotes; read as a number, the schema would refuse it)."""
    (tmp_path / "2024").mkdir()
    (tmp_path / "2024" / "a.png").write_bytes(PNG)
    configfile = tiny_config(tmp_path)
    output = run_snakemake(tmp_path, configfile, "-n", "--printshellcmds", *CORES, "--config",
                           'predict={images: "2024", experiment: finetune, seed: 0}').stdout
    assert jobs_of(commands(output), "predict")[0]["images"] == "2024"


def test_the_batchnorm_check_at_start_takes_the_architecture_torchvision_weights_name():
    """weights.source torchvision names its architecture through its weights enum (weights.arch need not be written):
    a ViT has no BatchNorm, so batch_size 1 is no problem of it; a ResNet's enum is, as for weights.arch."""
    from finetune.startchecks import batchnorm_problems

    def problems(weights):
        config = {"weights": {"source": "torchvision", **weights}, "train": {"batch_size": 1, "strategy": "finetune"}}
        return batchnorm_problems(config, {"small": {}}, {"small": "small"})

    assert problems({"torchvision": "ViT_B_16_Weights.DEFAULT"}) == []
    assert problems({"torchvision": "ResNet50_Weights.IMAGENET1K_V2"}) == [
        "experiments.small: batch_size: 1 gives BatchNorm batches of 1 image, and BatchNorm cannot train on one image "
        "(a resnet50, strategy finetune, bn auto): use a batch_size of 2 or more, or bn: frozen (BatchNorm then keeps "
        "the source model's statistics)"]


def test_a_sha256_of_digits_alone_read_as_a_number_says_to_quote_it(tmp_path):
    """YAML reads an unquoted hash of digits alone as an integer (leading zeros dropped): the schema's "is not a
    string" alone left users puzzled by a 0 they never wrote."""
    config = {key: value for key, value in TINY_CONFIG.items() if key not in ("weights", "pretrain")}
    weights = {"source": "url", "url": "http://127.0.0.1:9/w.pth", "arch": "resnet18",
               "preprocessing": CHOSEN["weights.preprocessing"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "weights": weights}, sort_keys=False)
                                          + "  sha256: " + "0" * 63 + "7\n")  # the last key of weights, unquoted
    result = run_snakemake(tmp_path, tmp_path / "config.yaml", "-n", check=False)
    assert result.returncode != 0
    assert re.search(r"weights\.sha256: 7 is not a string.*\(YAML reads a hash of digits alone as a number, dropping "
                     r"its leading zeros: quote it", result.stdout), result.stdout[-2000:]


def test_a_config_used_alone_without_pretrain_says_how_large_the_schema_s_pretrain_is(tmp_path):
    """The README's sweep example run with --replace-workflow-config (or any config in a --directory without
    config/config.yaml) and no `pretrain`: the schema's defaults pretrained on every Fashion-MNIST train image for
    the default epochs, nothing said. The start says it, the images counted here from the schema's defaults; with
    `pretrain` written, or its model made already, nothing is said."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    val_fraction = schema["$defs"]["dataset"]["properties"]["val_fraction"]["default"]
    epochs = schema["$defs"]["train"]["properties"]["epochs"]["default"]
    images = round(6000 * (1 - val_fraction)) * 10  # Fashion-MNIST: 6,000 train images in each of 10 classes
    alone = {key: value for key, value in TINY_CONFIG.items() if key != "pretrain"}
    output = dry_run_output(tmp_path, alone)
    assert (f"note: pretrain: not in your config, which is used alone (--replace-workflow-config, or no "
            f"config/config.yaml where it runs), so the schema's defaults pretrain the source resnet18 on {images:,} "
            f"Fashion-MNIST images (10 classes) for {epochs} epochs at 32 px: {images * epochs / 18000:.0f} times the "
            "demo's pretrain") in output, output[-3000:]
    assert "with no `dataset` your target is every Fashion-MNIST image too" not in output
    assert "note: pretrain: not in your config" not in dry_run_output(tmp_path, TINY_CONFIG)
    (tmp_path / "resources" / "pretrain").mkdir(parents=True)
    (tmp_path / "resources" / "pretrain" / "model.pth").write_bytes(b"made before")
    assert "note: pretrain: not in your config" not in dry_run_output(tmp_path, alone)
    # A model made before under another config (the demo's 6 classes, 3 epochs), which this one pretrains again: said
    # (it was not, the file being there); one made under these settings is not made again: nothing said.
    record = tmp_path / "resources" / "pretrain" / "info.json"
    for classes, made_epochs, said in ((6, 3, True), (10, epochs + 1, True), (10, epochs, False)):
        record.write_text(json.dumps({"classes": [f"c{i}" for i in range(classes)], "options": {"epochs": made_epochs}}))
        assert ("note: pretrain: not in your config" in dry_run_output(tmp_path, alone)) == said, (classes, made_epochs)


def test_test_time_augmentation_in_evaluate_but_not_in_the_export_is_said_at_start(tmp_path):
    """evaluate.tta hflip with export.tta false, or the reverse: the leaderboard scores another forward pass than the
    shipped model.onnx runs. Said at start; set alike, nothing is."""
    for name, evaluate, export, note in (
            ("apart", "hflip", False, "evaluate.tta is hflip but export.tta is false: the test figures (and the "
                                      "leaderboard) score the model with test-time augmentation hflip, the exported "
                                      "model.onnx runs with none"),
            ("reverse", "none", True, "evaluate.tta is none but export.tta is true: the test figures (and the "
                                      "leaderboard) score the model with test-time augmentation none, the exported "
                                      "model.onnx runs with hflip"),
            ("alike", "hflip", True, None)):
        (tmp_path / name).mkdir()
        output = dry_run_output(tmp_path / name, {**TINY_CONFIG, "evaluate": {"tta": evaluate}, "export": {"tta": export}})
        notes = [line for line in output.splitlines() if line.startswith("note: evaluate.tta")]
        assert notes == ([] if note is None else [f"note: {note}; set both alike to score what is shipped (evaluate.onnx: "
                                                  "true scores model.onnx too)"]), output[-3000:]
