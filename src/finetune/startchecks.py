"""Checks and notes that only the Snakemake process makes, at the start and at the end of a run.

No job loads this module (it is in no rule's list of modules, workflow/rules/common.smk's RULE_MODULES): a job's
code is an input of the job, so a check kept here can be added or edited without making every earlier result
stale, as one added to a module the jobs load would (configcheck, data, deploy: the update would rerun pretraining
and every run).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .configcheck import _by_experiment, _torchvision_weights_enums

# torchvision's families of classifiers built with BatchNorm layers (the others, as vit, swin, convnext, alexnet, vgg
# without _bn, have none, or are not known here: their train job checks, once the model is built).
BATCHNORM_ARCHS = re.compile(r"^(resnet|resnext|wide_resnet|densenet|mobilenet|efficientnet|regnet|mnasnet|shufflenet|"
                             r"googlenet|inception|maxvit|vgg\d+_bn)")


def model_arch(weights: dict) -> str | None:
    """The architecture the runs build: weights.arch, or with weights.source torchvision the one its weights enum
    names (read from torchvision's source; None where not found there)."""
    if weights.get("source") == "torchvision":
        enum = str(weights.get("torchvision", "")).partition(".")[0]
        return _torchvision_weights_enums().get(enum, (None, {}))[0]
    return weights.get("arch")


def batchnorm_batch_problems(options: dict, arch: str | None) -> list[str]:
    """A batch_size that gives BatchNorm layers training on batches of one image (batch_size 1, or 1 a process
    without sync_batchnorm), which torch cannot train ("Expected more than 1 value per channel"), for an architecture
    known to have BatchNorm; the train job checks the same (finetune.training), after Snakemake removed the outputs
    it would replace. ``options``: a run's training options, defaults filled in."""
    batch, devices, nodes = options.get("batch_size"), options.get("devices", 1), options.get("nodes", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (batch, devices, nodes)):
        return []
    strategy, bn = options.get("strategy", "finetune"), options.get("bn", "auto")
    if (bn == "frozen" or (bn == "auto" and strategy == "feature_extract") or options.get("optimizer") == "lbfgs"
            or not arch or not BATCHNORM_ARCHS.match(arch)):
        return []
    world = devices * nodes
    per_process = batch if options.get("sync_batchnorm") or world == 1 else batch // world
    if per_process >= 2:
        return []
    where = "" if per_process == batch else f" per process ({world} processes, sync_batchnorm off)"
    return [f"batch_size: {batch} gives BatchNorm batches of {per_process} image{where}, and BatchNorm cannot train on "
            f"one image (a {arch}, strategy {strategy}, bn {bn}): use a batch_size of 2 or more"
            f"{' per process, or sync_batchnorm: true' if where else ''}, or bn: frozen (BatchNorm then keeps the "
            "source model's statistics)"]


def batchnorm_problems(config: dict, runs: dict, experiment_of: dict) -> list[str]:
    """:func:`batchnorm_batch_problems` of every run (``runs``: run name -> its experiment's overrides, over
    ``config["train"]``; ``experiment_of``: run name -> its experiment, a sweep's runs under theirs) and of
    pretraining, where weights.source is pretrain (one process: the keys of several are refused there)."""
    arch = model_arch(config["weights"])
    found = {run: batchnorm_batch_problems({**config["train"], **own}, arch) for run, own in runs.items()}
    problems = _by_experiment({run: why for run, why in found.items() if why},
                              {run: experiment_of.get(run, run) for run in runs})
    if config["weights"]["source"] == "pretrain":
        problems += [f"pretrain.train: {why}" for why in batchnorm_batch_problems(config["pretrain"]["train"], arch)]
    return problems


def spacing_note(classes: list[str]) -> str | None:
    """Class folder names that begin or end with white space (``'cat '``, from a copy or an archive): a class name
    the user cannot see, kept in every output (metrics, predictions, the ONNX model's class names)."""
    spaced = [name for name in classes if name != name.strip()]
    if not spaced:
        return None
    return (f"class folder name(s) beginning or ending with white space: {', '.join(map(repr, spaced[:10]))}"
            f"{' ...' if len(spaced) > 10 else ''}: the class names keep it, in the metrics, the predictions and the "
            "ONNX model's metadata (and dataset.classes must write it so); rename the folders if it is not meant")


def unreadable_line(predictions_csv: str | Path) -> str | None:
    """A line for the end of the run that made ``predictions_csv``, where some of its images could not be read
    (their rows' ``error``): how many, and the first; None where every image was classified (or the file does not
    read)."""
    try:
        with open(predictions_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    failed = [row for row in rows if row.get("error")]
    if not failed:
        return None
    return (f"{predictions_csv}: {len(failed)} of {len(rows)} image(s) could not be read and have no prediction (their "
            f"rows' error column says why; the first: {failed[0]['error']})")


def with_hints(problems: list[str]) -> list[str]:
    """Config problems whose cause the message alone does not show, with a hint: a sha256 written as digits alone,
    which YAML reads as a number (its leading zeros dropped), so that the schema sees no text."""
    return [f"{problem} (YAML reads a hash of digits alone as a number, dropping its leading zeros: quote it, "
            "sha256: \"0123...\")" if re.match(r"weights\.sha256: \d+ is not a string", problem) else problem
            for problem in problems]
