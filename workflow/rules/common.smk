# Shared by every rule: config validation, paths, and the per-rule slices of the config.

import copy
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir)
SCRIPTS = REPO / "workflow" / "scripts"
# The same interpreter that runs Snakemake runs the scripts (also inside cluster jobs).
PYTHON = sys.executable
# Scripts import the `finetune` package from src/, here and in jobs submitted to a cluster.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH")] if p)

sys.path.insert(0, str(REPO / "src"))
from finetune.configcheck import config_problems, format_problems

# Every problem at once, one line each with its key path (Snakemake's own message shows only the
# first, buried in a dump of the schema); nothing runs with a config that fails here.
_problems = config_problems(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
if _problems:
    raise WorkflowError(format_problems(_problems))

# Experiments override `train`, so they must not get the schema's defaults filled in: validate
# them as written, and let `train` supply every key an experiment leaves out.
_experiments_as_written = copy.deepcopy(config.get("experiments"))
validate(config, "../schemas/config.schema.yaml")
if _experiments_as_written is not None:
    config["experiments"] = _experiments_as_written

EXPERIMENTS = config["experiments"]
SEEDS = config["seeds"]
RUNS = [f"{experiment}/seed{seed}" for experiment in EXPERIMENTS for seed in SEEDS]

# What `rule all` asks `predict` for, if anything: the model of one experiment and seed.
PREDICT = config["predict"]
PREDICT_RUN = None
if PREDICT["images"] is not None:
    _experiment = PREDICT["experiment"] if PREDICT["experiment"] is not None else next(iter(EXPERIMENTS))
    _seed = PREDICT["seed"] if PREDICT["seed"] is not None else SEEDS[0]
    if _experiment not in EXPERIMENTS:
        raise WorkflowError(
            f"predict.experiment: {_experiment!r} is not an experiment of this config ({', '.join(EXPERIMENTS)})"
        )
    if _seed not in SEEDS:
        raise WorkflowError(f"predict.seed: {_seed} is not in seeds {SEEDS}")
    PREDICT_RUN = f"{_experiment}/seed{_seed}"
if PREDICT["model"] == "int8" and not config["export"]["quantize"]:
    raise WorkflowError("predict.model: int8 needs export.quantize: true (the int8 model is not made otherwise)")

# Settings of an experiment that are not options of the training loop.
NOT_LOOP_OPTIONS = ("pretrained", "image_size")


wildcard_constraints:
    experiment="|".join(EXPERIMENTS) or "NONE",
    seed=r"\d+",
    dataset="target|source",
    size=r"native|\d+",


def script(name):
    """Scripts are rule inputs too, so editing one reruns exactly the jobs that use it."""
    return str(SCRIPTS / f"{name}.py")


def as_json(value):
    return json.dumps(value, sort_keys=True)


def experiment_config(experiment):
    return {**config["train"], **EXPERIMENTS[experiment]}


def loop_options(train_config):
    return {k: v for k, v in train_config.items() if k not in NOT_LOOP_OPTIONS}


def train_options(experiment, seed):
    """The training loop's options for one run: `train`, overridden by the experiment, plus the seed."""
    return loop_options(experiment_config(experiment)) | {"seed": int(seed)}


def uses_gpu(experiment):
    return experiment_config(experiment)["device"] == "cuda"


def decoded(dataset, size):
    """The decode rule's outputs for a split file at an image size (None: the weights' own)."""
    folder = f"resources/decoded/{dataset}/{'native' if size is None else size}"
    return {"decoded_images": f"{folder}/images.npy", "decoded_info": f"{folder}/info.json"}


def target_decoded(experiment):
    return decoded("target", experiment_config(experiment)["image_size"])


def source_decoded():
    return decoded("source", config["pretrain"]["image_size"])


def decode_sizes_key(dataset, size):
    """What fixes the sizes of a split's decoded images: when it changes, the decode job reruns."""
    if dataset == "source":
        return size
    weights = config["weights"]
    source = weights["source"]
    if source == "pretrain":
        sizes = config["pretrain"]["image_size"]
    elif source == "torchvision":
        sizes = weights["torchvision"]
    else:
        sizes = {k: (weights["preprocessing"] or {}).get(k) for k in ("resize_size", "crop_size")}
    return as_json({"weights": source, "sizes": sizes, "image_size": size})
