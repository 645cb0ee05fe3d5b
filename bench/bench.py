#!/usr/bin/env python
"""Benchmarks of finetune against what a user would otherwise write (`make bench`; docs/bench.md).

Every row is a ratio ``ours / baseline`` of two figures measured in the same run, on the same
machine, one after the other (interleaved where repeated), so a loaded machine slows both sides
alike. Rows (see ``TARGETS`` for the goals):

  train_img_per_s              full fine-tuning, end to end from a folder of PNG files: our decode-once +
                               ``fit`` vs the tutorial-style loop (bench/baseline_tutorial.py)
  feature_extract_25ep_s       head-only training with cached backbone features vs the tutorial's
                               frozen-backbone loop (backbone forward every epoch); both accuracies
  noop_rerun_s                 ``snakemake --cores 4`` on a finished DAG vs ``snakemake --version``
  dag_build_20exp_s            dry run of 20 experiments vs 1 experiment
  onnx_infer_img_per_s_b1/_b64 onnxruntime vs eager PyTorch inference
  transfer_acc_finetune        test accuracy of the demo's experiments vs scratch, mean over seeds
  transfer_acc_feature_extract

Usage:
  python bench/bench.py                      # the full benchmark (< 15 min on 2 cores), checks the targets
  python bench/bench.py --smoke --out X.csv  # tiny sizes, every row, no checks (tests/test_bench_smoke.py)
  python bench/bench.py --gpu                # CUDA: fp32 eager vs AMP + channels_last at 224 px
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
# Threads that wait for work sleep instead of spinning, on both sides (torch's OpenMP here, onnxruntime's
# pool in bench_onnx). On a machine shared with other jobs, libgomp's default spin-wait makes torch up to
# 60x slower at batch 1 (measured: 1.8 vs 112 img/s), and the figures would measure the neighbours.
# Must be set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SPIN = os.environ["OMP_WAIT_POLICY"].upper() == "ACTIVE"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import baseline_tutorial as tutorial  # noqa: E402
from finetune.cli import usable_cpus  # noqa: E402
from finetune.data import read_split  # noqa: E402
from finetune.images import normalize as numpy_normalize, read_idx, split_ref  # noqa: E402
from finetune.models import build_target_model, find_output_layer  # noqa: E402
from finetune.stages import evaluate_stage, load_checkpoint, load_split_tensors, train_stage  # noqa: E402
from finetune.tensors import Preprocessing, batched_forward, decode_images  # noqa: E402
from finetune.training import TrainOptions, fit, is_no_decay, lr_factor, seed_everything  # noqa: E402
from finetune.weights import load_state_dict, read_manifest  # noqa: E402

COLUMNS = ["metric", "ours", "baseline", "ratio", "unit", "higher_is_better", "note"]
ROWS = [
    "train_img_per_s", "feature_extract_25ep_s", "noop_rerun_s", "dag_build_20exp_s",
    "onnx_infer_img_per_s_b1", "onnx_infer_img_per_s_b64", "transfer_acc_finetune", "transfer_acc_feature_extract",
]
# (comparison, bound) on the ratio; the accuracy rows are checked as a difference in points instead.
TARGETS = {
    "train_img_per_s": (">=", 1.2),
    "feature_extract_25ep_s": ("<=", 0.05),
    "noop_rerun_s": ("<=", 2.0),
    "dag_build_20exp_s": ("<=", 3.0),
    "onnx_infer_img_per_s_b1": (">=", 1.5),
}
TRANSFER_MIN_POINTS = 5.0     # pretrained must beat scratch by this many points of test accuracy
FEATURE_EXTRACT_MAX_POINTS = 1.0  # cached features must not change the accuracy by more than this
IMAGE_SIZE = 32
# The speed rows (train_img_per_s, feature_extract_25ep_s) read a fixed subset of the demo's target
# classes, whatever the demo's few-shot budget: with 10 images per class an epoch is 2 batches, and
# fixed costs would decide the ratio. Test: every official test image of those classes.
SPEED_SUBSET = {"max_train_per_class": 100, "max_val_per_class": 100, "max_test_per_class": None, "seed": 0}
DEMO_CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
NOT_LOOP_OPTIONS = ("pretrained", "image_size")  # as in workflow/rules/common.smk


@dataclass(frozen=True)
class Sizes:
    """How much work each row does. ``full`` follows the demo config; ``smoke`` only proves the code runs."""

    train_epochs: int           # train_img_per_s: epochs per timed run
    reps: int                   # timed repetitions (median) of the training rows
    snakemake_reps: int         # noop_rerun_s (dag_build_20exp_s: at most 3, each is a few seconds)
    onnx_reps: int
    onnx_calls_b1: int          # calls per repetition
    onnx_calls_b64: int
    seeds: tuple[int, ...]      # transfer rows
    tiny_experiments: int       # experiments in the DAG run to completion for noop_rerun_s
    fe_epochs: int              # feature_extract_25ep_s: epochs of head-only training


FULL = Sizes(train_epochs=2, reps=3, snakemake_reps=5, onnx_reps=5, onnx_calls_b1=200, onnx_calls_b64=6,
             seeds=(0, 1, 2), tiny_experiments=3, fe_epochs=25)
SMOKE = Sizes(train_epochs=1, reps=1, snakemake_reps=1, onnx_reps=1, onnx_calls_b1=5, onnx_calls_b64=1,
              seeds=(0,), tiny_experiments=1, fe_epochs=2)

# feature_extract_25ep_s: the optimizer both sides of that row use (minibatch AdamW, as the tutorial trains).
FE_LOOP_OPTIMIZER = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 1e-4}

# A few real images per class and one epoch: the shape of the demo's DAG, finished in about a minute.
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TINY_CONFIG = {
    "dataset": {"format": "fashion-mnist", "path": FASHION_MNIST, "classes": [6, 7, 8, 9], "val_fraction": 0.2,
                "max_train_per_class": 8, "max_val_per_class": 4, "max_test_per_class": 6, "seed": 0},
    "weights": {"source": "pretrain", "arch": "resnet18"},
    "pretrain": {
        "dataset": {"format": "fashion-mnist", "path": FASHION_MNIST, "classes": [0, 1, 2, 3, 4, 5],
                    "val_fraction": 0.1, "max_train_per_class": 8, "max_val_per_class": 4},
        "image_size": IMAGE_SIZE,
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.002},
    },
    "train": {"epochs": 1, "batch_size": 8, "lr": 0.001},
    "experiments": {
        "finetune": {"strategy": "finetune"},
        "feature_extract": {"strategy": "feature_extract", "lr": 0.01},
        "scratch": {"strategy": "finetune", "pretrained": False},
    },
    "seeds": [0],
    "threads": {"train": 2, "data": 1},
    # The no-op rerun does not depend on the exporter; TorchScript's is three times quicker to run once.
    "export": {"parity_batch": 4, "exporter": "torchscript"},
}


# --------------------------------------------------------------------------- small helpers

def say(message: str = "") -> None:
    print(message, flush=True)


def quiet(_message: str) -> None:
    pass


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> str:
    """'median (min-max, n=3)' for the note."""
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{median(values):.3g} ({min(values):.3g}-{max(values):.3g}, n={len(values)})"


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def row(metric: str, ours: float, baseline: float, unit: str, higher_is_better: bool, note: str) -> dict:
    return {"metric": metric, "ours": ours, "baseline": baseline, "ratio": ours / baseline if baseline else math.nan,
            "unit": unit, "higher_is_better": higher_is_better, "note": note}


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run_checked(cmd: list[str], what: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH")] if p)}
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise SystemExit(f"bench: {what} failed ({result.returncode}):\n{' '.join(cmd)}\n{result.stdout[-4000:]}")
    return result


def demo_config() -> dict:
    """config/config.yaml with the schema's defaults filled in, exactly as workflow/rules/common.smk does."""
    from snakemake.utils import validate

    config = yaml.safe_load(DEMO_CONFIG.read_text())
    experiments = copy.deepcopy(config.get("experiments"))
    validate(config, str(SCHEMA))
    if experiments is not None:
        config["experiments"] = experiments
    return config


def experiment_options(config: dict, experiment: str, seed: int) -> tuple[dict, bool, int | None]:
    """The training loop's options of one demo run, as the train rule passes them; plus pretrained, image_size."""
    merged = {**config["train"], **config["experiments"][experiment]}
    options = {k: v for k, v in merged.items() if k not in NOT_LOOP_OPTIONS} | {"seed": int(seed)}
    return options, bool(merged.get("pretrained", True)), merged.get("image_size")


def machine_info(threads: int) -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": model, "cpus_usable": usable_cpus(), "cpus_online": os.cpu_count(), "threads": threads,
        "loadavg_1_5_15": [round(v, 2) for v in load], "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


# --------------------------------------------------------------------------- data: a folder of PNG files

def write_image_folder(split_csv: Path, root: Path) -> dict[str, list[tuple[str, int]]]:
    """Write the split's images as PNG files in ``root/<split>/<class>/``; return (path, label) per split.

    Labels follow ImageFolder's rule (sorted folder names), so both sides see the same labels.
    """
    frame, classes = read_split(split_csv)
    folders = {name: name.replace("/", "-") for name in classes}
    label_of = {name: i for i, name in enumerate(sorted(folders.values()))}
    listing: dict[str, list[tuple[str, int]]] = {}
    from PIL import Image

    for split in ("train", "val", "test"):
        rows = frame[frame["split"] == split]
        items = []
        for n, (ref, name) in enumerate(zip(rows["path"], rows["class_name"])):
            folder = root / split / folders[name]
            target = folder / f"{n:05d}.png"
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                path, index = split_ref(ref)
                if index is not None:
                    Image.fromarray(read_idx(path)[index], mode="L").save(target)
                else:
                    shutil.copyfile(path, target)
            items.append((str(target), label_of[folders[name]]))
        listing[split] = items
    return listing


def speed_split(config: dict, workdir: Path, threads: int) -> Path:
    """The split of SPEED_SUBSET over the demo's target dataset (the split rule's own code)."""
    from finetune.stages import split_stage

    out = workdir / "speed_split.csv"
    split_stage({**config["dataset"], **SPEED_SUBSET}, out, workdir / "speed_split.json", threads)
    return out


def folder_split_csv(listing: dict[str, list[tuple[str, int]]], out: Path) -> Path:
    """Our side reads the same PNG files through a split CSV (the format the split rule writes)."""
    names = {}
    rows = []
    for split, items in listing.items():
        for path, label in items:
            names[label] = Path(path).parent.name
            rows.append({"path": path, "label": label, "split": split})
    frame = pd.DataFrame(rows)
    frame["class_name"] = frame["label"].map(names)
    frame[["path", "label", "class_name", "split"]].to_csv(out, index=False)
    return out


# --------------------------------------------------------------------------- rows: Snakemake

def tiny_config(workdir: Path, experiments: dict, **top) -> Path:
    config = copy.deepcopy(TINY_CONFIG)
    config["experiments"] = experiments
    config.update(top)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bench_noop_rerun(workdir: Path, sizes: Sizes) -> tuple[dict, Path]:
    """Run a tiny DAG to completion, then time ``snakemake --cores 4`` on it (nothing to do) vs ``--version``."""
    experiments = dict(list(TINY_CONFIG["experiments"].items())[: sizes.tiny_experiments])
    config = tiny_config(workdir, experiments)
    base = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(config)]
    say(f"  running a tiny DAG ({len(experiments)} experiment(s)) to completion in {workdir} ...")
    seconds, _ = timed(run_checked, snakemake_cmd(*base, "--cores", "4"), "the tiny DAG")
    say(f"  done in {seconds:.1f} s")
    noop_cmd, version_cmd = snakemake_cmd(*base, "--cores", "4"), snakemake_cmd("--version")
    run_checked(version_cmd, "snakemake --version")  # warm-up: file cache, bytecode
    first = run_checked(noop_cmd, "the no-op rerun")
    if "Nothing to be done" not in first.stdout:
        raise SystemExit(f"bench: the finished DAG is not a no-op:\n{first.stdout[-3000:]}")
    ours, base_times = [], []
    for _ in range(sizes.snakemake_reps):
        ours.append(timed(run_checked, noop_cmd, "the no-op rerun")[0])
        base_times.append(timed(run_checked, version_cmd, "snakemake --version")[0])
    jobs = 2 + 2 + 3 * len(experiments) + 2  # split x2, pretrain, weights, 3 per run, summary, all
    result = row("noop_rerun_s", median(ours), median(base_times), "s", False,
                 f"finished DAG of {jobs} jobs ({len(experiments)} experiment(s)); no-op {spread(ours)} s, "
                 f"--version {spread(base_times)} s")
    return result, workdir


def bench_dag_build(workdir: Path, sizes: Sizes) -> dict:
    """Dry-run time of 20 experiments vs 1 experiment (same empty working directory shape)."""
    one = {"finetune": {"strategy": "finetune"}}
    twenty = {f"exp{i:02d}": {"strategy": ("finetune", "feature_extract", "gradual")[i % 3], "lr": 0.001 * (1 + i)}
              for i in range(20)}
    cmds = {}
    for name, experiments in (("one", one), ("twenty", twenty)):
        folder = workdir / name
        config = tiny_config(folder, experiments)
        cmds[name] = snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
                                   "--configfile", str(config), "--cores", "4", "-n", "-q")
    jobs = {}
    for name, cmd in cmds.items():  # warm-up, and a count of the jobs (the job stats that -q hides)
        out = run_checked([c for c in cmd if c != "-q"], f"dry run ({name})").stdout
        jobs[name] = next((line.split()[-1] for line in out.splitlines() if line.strip().startswith("total")), "?")
    ours, base_times = [], []
    for _ in range(min(3, sizes.snakemake_reps)):
        ours.append(timed(run_checked, cmds["twenty"], "dry run (20 experiments)")[0])
        base_times.append(timed(run_checked, cmds["one"], "dry run (1 experiment)")[0])
    return row("dag_build_20exp_s", median(ours), median(base_times), "s", False,
               f"snakemake -n: 20 experiments ({jobs['twenty']} jobs) {spread(ours)} s; "
               f"1 experiment ({jobs['one']} jobs) {spread(base_times)} s")


# --------------------------------------------------------------------------- weights and the demo's split

def demo_weights(workdir: Path, threads: int) -> tuple[Path, Path, str]:
    """The demo's pretrained source model and target split: reused from the repository's resources/ when
    `make demo` made them, otherwise made by the demo pipeline's own rules in ``workdir``."""
    manifest, split = REPO / "resources/weights/manifest.json", REPO / "resources/splits/target.csv"
    if manifest.exists() and split.exists():
        try:
            read_manifest(manifest)
            return manifest, split, f"reused {manifest.relative_to(REPO)}"
        except Exception as exc:  # a half-written or stale manifest: make our own
            say(f"  not reusing {manifest}: {exc}")
    targets = ["resources/weights/manifest.json", "resources/splits/target.csv"]
    cmd = snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                        "--configfile", str(DEMO_CONFIG), "--cores", str(max(threads, 1)), *targets)
    say(f"  running the demo's split, pretrain and weights rules in {workdir} ...")
    seconds, _ = timed(run_checked, cmd, "the demo's weights rule", 3600)
    return (workdir / targets[0], workdir / targets[1],
            f"the demo's rules in {workdir} ({seconds:.0f} s; Snakemake reran only what was missing or stale)")


# --------------------------------------------------------------------------- rows: transfer accuracy

def bench_transfer(config: dict, manifest: Path, split_csv: Path, workdir: Path, sizes: Sizes,
                   threads: int) -> tuple[list[dict], dict]:
    """Train every demo experiment for each seed with the pipeline's own train/evaluate stages."""
    accuracy: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    checkpoints = {}
    for seed in sizes.seeds:
        for experiment in config["experiments"]:
            options, pretrained, image_size = experiment_options(config, experiment, seed)
            if sizes is SMOKE:
                options["epochs"] = 1
            folder = workdir / experiment / f"seed{seed}"
            started = time.perf_counter()
            train_stage(split_csv, manifest, options, folder / "model.pt", folder / "history.csv",
                        folder / "train_info.json", threads, pretrained=pretrained, image_size=image_size,
                        feature_cache_dir=workdir / "features", log=quiet)
            report = evaluate_stage(folder / "model.pt", split_csv, folder / "metrics.json",
                                    folder / "confusion_matrix.csv", folder / "test_predictions.csv", threads)
            took = time.perf_counter() - started
            accuracy.setdefault(experiment, []).append(report["accuracy"])
            seconds.setdefault(experiment, []).append(took)
            checkpoints.setdefault(experiment, folder / "model.pt")
            say(f"  {experiment} seed {seed}: test accuracy {report['accuracy']:.4f} ({took:.0f} s, "
                f"{report['n_test']} test images)")
    scratch = [name for name in config["experiments"] if not experiment_options(config, name, 0)[1]]
    if not scratch:
        raise SystemExit("bench: the demo config has no scratch experiment (pretrained: false) to compare with")
    control = scratch[0]
    rows = []
    for experiment in ("finetune", "feature_extract"):
        if experiment not in accuracy:
            raise SystemExit(f"bench: the demo config has no {experiment!r} experiment")
        ours, base = float(np.mean(accuracy[experiment])), float(np.mean(accuracy[control]))
        per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(accuracy[experiment], accuracy[control]))
        rows.append(row(f"transfer_acc_{experiment}", ours, base, "test accuracy", True,
                        f"{(ours - base) * 100:+.1f} pts over {control}; mean over seeds {list(sizes.seeds)}; "
                        f"per seed ours/{control}: {per_seed}"))
    return rows, {"checkpoints": checkpoints, "seconds": seconds}


# --------------------------------------------------------------------------- rows: training vs the tutorial

def adamw_like_ours(model: torch.nn.Module, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on weights only, as `fit` builds it (for the baseline's parameters)."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = list(params)
    decay = [p for p in params if not is_no_decay(names[id(p)], p)]
    no_decay = [p for p in params if is_no_decay(names[id(p)], p)]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr)


def per_step_schedule(optimizer, opts: TrainOptions, n_train: int):
    """Our learning-rate schedule (warm-up + cosine, per step) as a LambdaLR for the baseline."""
    steps = math.ceil(n_train / opts.batch_size)
    total, warmup = steps * opts.epochs, int(round(opts.warmup_epochs * steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, opts.schedule))


def ours_train(folder_csv: Path, model, prep: Preprocessing, opts: TrainOptions, threads: int):
    """Our path: decode the train and val files once, then `fit`."""
    seed_everything(opts.seed, False)
    data, _, _ = load_split_tensors(folder_csv, prep, threads, splits=("train", "val"))
    result = fit(model, data["train"], data["val"], prep, opts, num_classes=4, threads=threads, log=quiet)
    return result


def baseline_train(image_root: Path, model, prep: Preprocessing, opts: TrainOptions, head_only: bool,
                   workers: int):
    """The tutorial's path: ImageFolder + transforms + DataLoader, `train_model`."""
    seed_everything(opts.seed, False)
    datasets, loaders = tutorial.make_dataloaders(str(image_root), prep.crop_size, prep.mean, prep.std,
                                                  opts.batch_size, num_workers=workers)
    if head_only:
        for p in model.parameters():
            p.requires_grad_(False)
        head = find_output_layer(model)[1]
        for p in head.parameters():
            p.requires_grad_(True)
        params = head.parameters()
    else:
        params = model.parameters()
    optimizer = adamw_like_ours(model, params, opts.lr, opts.weight_decay)
    scheduler = per_step_schedule(optimizer, opts, len(datasets["train"]))
    model, history = tutorial.train_model(model, torch.nn.CrossEntropyLoss(), optimizer, scheduler, loaders,
                                          num_epochs=opts.epochs, scheduler_step="batch", freeze_bn=head_only)
    return model, history


def optimizer_step_ms(model: torch.nn.Module, fused: bool | None, steps: int = 5) -> float:
    """Milliseconds of one AdamW step over every parameter (random gradients): torch's default vs fused."""
    params = [p for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=fused)
    for _ in range(2):
        optimizer.step()
    seconds, _ = timed(lambda: [optimizer.step() for _ in range(steps)])
    return 1000 * seconds / steps


def fresh_model(manifest: dict, source_state: dict) -> torch.nn.Module:
    return build_target_model(manifest["arch"], 4, source_state, manifest["num_classes"])


def bench_train_throughput(image_root: Path, folder_csv: Path, manifest: dict, source_state: dict,
                           prep: Preprocessing, config: dict, sizes: Sizes, threads: int, workers: int) -> dict:
    """Full fine-tuning, end to end from PNG files: images per second per epoch (train images x epochs / wall time)."""
    options = experiment_options(config, "finetune", 0)[0] | {"epochs": sizes.train_epochs}
    n_train = int((pd.read_csv(folder_csv)["split"] == "train").sum())
    n_val = int((pd.read_csv(folder_csv)["split"] == "val").sum())

    def once(side: str, seed: int, epochs: int) -> float:
        opts = TrainOptions.from_dict(options | {"seed": seed, "epochs": epochs})
        model = fresh_model(manifest, source_state)
        if side == "ours":
            seconds, _ = timed(ours_train, folder_csv, model, prep, opts, threads)
        else:
            seconds, _ = timed(baseline_train, image_root, model, prep, opts, False, workers)
        return seconds

    once("ours", 0, 1), once("baseline", 0, 1)  # warm-up: file cache, oneDNN primitives, allocator
    ours, base = [], []
    for rep in range(sizes.reps):
        ours.append(n_train * sizes.train_epochs / once("ours", rep, sizes.train_epochs))
        base.append(n_train * sizes.train_epochs / once("baseline", rep, sizes.train_epochs))
        say(f"  rep {rep + 1}: ours {ours[-1]:.1f} img/s, tutorial {base[-1]:.1f} img/s")
    # Where the tutorial's epoch goes: one pass of its DataLoaders alone (decode + transforms + collate).
    _, loaders = tutorial.make_dataloaders(str(image_root), prep.crop_size, prep.mean, prep.std,
                                           options["batch_size"], num_workers=workers)
    load_s, _ = timed(lambda: [None for phase in ("train", "val") for _ in loaders[phase]])
    epoch_s = n_train / median(base)
    # And the optimizer step, the other difference: `fit` uses fused AdamW, the tutorial torch's default.
    default_ms = optimizer_step_ms(fresh_model(manifest, source_state), None)
    fused_ms = optimizer_step_ms(fresh_model(manifest, source_state), True)
    steps = math.ceil(n_train / options["batch_size"])
    return row("train_img_per_s", median(ours), median(base), "img/s", True,
               f"resnet18 {prep.crop_size}px, {n_train} train + {n_val} val PNGs, batch {options['batch_size']}, "
               f"{sizes.train_epochs} epochs, AdamW both, {threads} threads, DataLoader workers {workers}; "
               f"ours {spread(ours)}, tutorial {spread(base)} img/s; the tutorial's data loading is "
               f"{load_s:.2f} s of its {epoch_s:.1f} s epoch ({100 * load_s / epoch_s:.0f}%); one AdamW step: "
               f"torch's default {default_ms:.0f} ms, fused (ours) {fused_ms:.0f} ms, x {steps} steps per epoch")


def bench_feature_extract(image_root: Path, folder_csv: Path, manifest: dict, source_state: dict,
                          prep: Preprocessing, config: dict, sizes: Sizes, threads: int, workers: int) -> dict:
    """25 epochs of head-only training with the demo's feature_extract settings: cached features vs a
    backbone forward every epoch."""
    # This row times the loop, not the solver: the tutorial's loop is minibatch AdamW, so both sides run
    # the same AdamW (the demo's own L-BFGS head solver needs cached features, which the tutorial lacks).
    options = experiment_options(config, "feature_extract", 0)[0] | {"epochs": sizes.fe_epochs, **FE_LOOP_OPTIMIZER}
    epochs = options["epochs"]
    test = pd.read_csv(folder_csv)
    test = test[test["split"] == "test"]
    test_images = decode_images(test["path"].tolist(), prep, threads)
    test_labels = torch.tensor(test["label"].to_numpy())
    _, test_loaders = tutorial.make_dataloaders(str(image_root), prep.crop_size, prep.mean, prep.std, 256,
                                                num_workers=workers, phases=("test",))

    def once(side: str, seed: int, n_epochs: int) -> tuple[float, float]:
        opts = TrainOptions.from_dict(options | {"seed": seed, "epochs": n_epochs})
        model = fresh_model(manifest, source_state)
        if side == "ours":
            seconds, result = timed(ours_train, folder_csv, model, prep, opts, threads)
            assert result.used_cached_features, "feature_extract did not use cached features"
            model.load_state_dict(result.best_state)
            logits = batched_forward(model.eval(), test_images, prep, torch.device("cpu"))
            accuracy = (logits.argmax(1) == test_labels).float().mean().item()
        else:
            seconds, (model, _) = timed(baseline_train, image_root, model, prep, opts, True, workers)
            accuracy = tutorial.test_accuracy(model, test_loaders["test"])
        return seconds, accuracy

    once("ours", 0, 1), once("baseline", 0, 1)  # warm-up
    ours, base, ours_acc, base_acc = [], [], [], []
    for rep in range(sizes.reps):
        seconds, accuracy = once("ours", rep, epochs)
        ours.append(seconds), ours_acc.append(accuracy)
        seconds, accuracy = once("baseline", rep, epochs)
        base.append(seconds), base_acc.append(accuracy)
        say(f"  rep {rep + 1}: ours {ours[-1]:.2f} s (acc {ours_acc[-1]:.4f}), "
            f"tutorial {base[-1]:.1f} s (acc {base_acc[-1]:.4f})")
    a, b = float(np.mean(ours_acc)), float(np.mean(base_acc))
    return {**row("feature_extract_25ep_s", median(ours), median(base), "s", False,
               f"{epochs} epochs head-only, batch {options['batch_size']}, AdamW lr {options['lr']:g}; "
               f"ours {spread(ours)} s, tutorial {spread(base)} s; test accuracy ours {a:.4f} "
               f"tutorial {b:.4f} ({(a - b) * 100:+.2f} pts; mean of seeds {list(range(sizes.reps))}, "
               f"{len(test_labels)} test images)"), "acc_diff_pts": (a - b) * 100}


# --------------------------------------------------------------------------- rows: ONNX

def bench_onnx(checkpoint_path: Path, split_csv: Path, workdir: Path, sizes: Sizes, threads: int) -> list[dict]:
    """onnxruntime vs eager PyTorch on the CPU, same threads, same real inputs; batch 1 and 64."""
    import onnxruntime as ort

    from finetune.export import export_onnx

    model, checkpoint = load_checkpoint(checkpoint_path)
    prep = Preprocessing.from_dict(checkpoint["preprocessing"])
    onnx_path = workdir / "model.onnx"
    export_s, _ = timed(export_onnx, model, checkpoint, onnx_path)
    frame, _ = read_split(split_csv)
    refs = frame[frame["split"] == "test"]["path"].tolist()[:64]
    pixels = decode_images(refs, prep, threads).permute(0, 2, 3, 1).numpy()
    inputs = numpy_normalize(pixels, prep.mean, prep.std).astype(np.float32)
    while len(inputs) < 64:  # smoke sizes: repeat the few test images up to one batch
        inputs = np.concatenate([inputs, inputs])[:64]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for batch, calls in ((1, sizes.onnx_calls_b1), (64, sizes.onnx_calls_b64)):
        x = np.ascontiguousarray(inputs[:batch])
        xt = torch.from_numpy(x)

        def run_ort():
            for _ in range(calls):
                session.run(None, {name: x})

        def run_eager():
            with torch.inference_mode():
                for _ in range(calls):
                    model(xt)

        with torch.inference_mode():
            diff = float(np.abs(session.run(None, {name: x})[0] - model(xt).numpy()).max())
        for _ in range(2):  # warm-up
            run_ort(), run_eager()
        ours, base = [], []
        for _ in range(sizes.onnx_reps):
            ours.append(batch * calls / timed(run_ort)[0])
            base.append(batch * calls / timed(run_eager)[0])
        rows.append(row(f"onnx_infer_img_per_s_b{batch}", median(ours), median(base), "img/s", True,
                        f"{checkpoint['arch']} {prep.crop_size}px 4 classes, {threads} threads; onnxruntime "
                        f"{ort.__version__} {spread(ours)} vs torch eager (inference_mode) {spread(base)} img/s; "
                        f"max |diff| {diff:.2e}; export {export_s:.1f} s"))
    return rows


# --------------------------------------------------------------------------- GPU stub

def bench_gpu(args) -> int:
    """train_img_per_s on CUDA at 224 px: fp32 eager (baseline) vs AMP + channels_last (ours), both through `fit`.

    Written to be correct by reading: the machines this was developed on have no GPU.
    """
    if not torch.cuda.is_available():
        say(f"bench --gpu needs a CUDA device, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). "
            "Run it on a machine with an NVIDIA GPU; the CPU benchmark is `make bench`.")
        return 2
    out = Path(args.out).with_name("bench_gpu.csv") if args.out == default_out() else Path(args.out)
    workdir = out.parent
    workdir.mkdir(parents=True, exist_ok=True)
    threads = args.threads
    torch.set_num_threads(threads)
    config = demo_config()
    manifest_path, _, origin = demo_weights(workdir / "demo", threads)
    manifest = read_manifest(manifest_path)
    source_state = load_state_dict(manifest["path"])
    listing = write_image_folder(speed_split(config, workdir, threads), workdir / "images")
    folder_csv = folder_split_csv(listing, workdir / "images.csv")
    size = 224
    prep = Preprocessing.from_dict(manifest["preprocessing"], size)
    data, _, _ = load_split_tensors(folder_csv, prep, threads, splits=("train", "val"))
    amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    base_options = experiment_options(config, "finetune", 0)[0] | {"device": "cuda", "epochs": 6}
    variants = {"baseline": base_options | {"amp": "off", "channels_last": False},
                "ours": base_options | {"amp": amp, "channels_last": True}}
    speeds: dict[str, list[float]] = {"ours": [], "baseline": []}
    for rep in range(3):
        for side, options in variants.items():
            seed_everything(rep, False)
            model = fresh_model(manifest, source_state)
            result = fit(model, data["train"], data["val"], prep, TrainOptions.from_dict(options | {"seed": rep}),
                         num_classes=4, threads=threads, log=quiet)
            # Epoch 1 is the warm-up (cuDNN algorithm search, allocator); `fit` syncs every step (loss.item()).
            speeds[side].append(median([r["img_per_s"] for r in result.history[1:]]))
            torch.cuda.synchronize()
            del model, result
            torch.cuda.empty_cache()
    rows = [row("train_img_per_s_cuda224", median(speeds["ours"]), median(speeds["baseline"]), "img/s", True,
                f"{torch.cuda.get_device_name()} resnet18 {size}px batch {base_options['batch_size']}: "
                f"AMP {amp} + channels_last {spread(speeds['ours'])} vs fp32 eager {spread(speeds['baseline'])} img/s "
                f"(median of epochs 2-6, 3 runs each; weights: {origin})")]
    write_csv(rows, out)
    print_table(rows, machine_info(threads) | {"gpu": torch.cuda.get_device_name()})
    say(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- output

def write_csv(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "ours": f"{r['ours']:.6g}", "baseline": f"{r['baseline']:.6g}",
                             "ratio": f"{r['ratio']:.4g}"})


def check(r: dict) -> tuple[str, bool | None]:
    """('target', met?) of a row; None where the row has no target."""
    metric = r["metric"]
    if metric in TARGETS:
        op, bound = TARGETS[metric]
        met = r["ratio"] >= bound if op == ">=" else r["ratio"] <= bound
        target = f"ratio {op} {bound:g}"
        if metric == "feature_extract_25ep_s":
            met = met and abs(r["acc_diff_pts"]) <= FEATURE_EXTRACT_MAX_POINTS
            target += f", |acc diff| <= {FEATURE_EXTRACT_MAX_POINTS:g} pt"
        return target, met
    if metric.startswith("transfer_acc_"):
        return f">= +{TRANSFER_MIN_POINTS:g} pts", (r["ours"] - r["baseline"]) * 100 >= TRANSFER_MIN_POINTS
    return "", None


def print_table(rows: list[dict], info: dict, checked: bool = True) -> None:
    say()
    say(f"finetune benchmark - {info['date']}")
    say(f"machine: {info['cpu_model']}, {info['cpus_usable']} usable CPU(s) of {info['cpus_online']}, "
        f"{info['threads']} torch thread(s), load average {info['loadavg_1_5_15']}; torch {info['torch']}, "
        f"Python {info['python']}, OMP_WAIT_POLICY={info['omp_wait_policy']}" + (f"; GPU {info['gpu']}" if info.get("gpu") else ""))
    header = f"{'metric':<30} {'ours':>11} {'baseline':>11} {'ratio':>8}  {'unit':<14} {'target':<34} {'met':<4}"
    say(header)
    say("-" * len(header))
    for r in rows:
        target, met = check(r)
        mark = "" if met is None or not checked else ("yes" if met else "NO")
        say(f"{r['metric']:<30} {r['ours']:>11.4g} {r['baseline']:>11.4g} {r['ratio']:>8.3g}  {r['unit']:<14} "
            f"{target:<34} {mark:<4}")
    say()
    for r in rows:
        say(f"  {r['metric']}: {r['note']}")


def default_out() -> str:
    return str(REPO / "results" / "bench" / "bench.csv")


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out(), help="CSV to write; its folder holds the bench's work files")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a couple of minutes, no target checks")
    parser.add_argument("--gpu", action="store_true", help="CUDA: fp32 eager vs AMP + channels_last at 224 px")
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="torch (and decoding) threads, both sides")
    parser.add_argument("--workers", type=int, default=0,
                        help="the tutorial's DataLoader worker processes (0: load in the training process, "
                             "which keeps both sides on the same cores)")
    parser.add_argument("--no-check", action="store_true", help="report the targets but exit 0 when one is missed")
    parser.add_argument("--keep", action="store_true", help="keep the bench's work files next to the CSV")
    args = parser.parse_args(argv)
    if args.gpu:
        return bench_gpu(args)

    sizes = SMOKE if args.smoke else FULL
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    out = Path(args.out).resolve()
    workdir = out.parent
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="work-", dir=workdir))
    started = time.perf_counter()
    info = machine_info(threads)
    say(f"finetune bench ({'smoke' if args.smoke else 'full'}): {info['cpu_model']}, {info['cpus_usable']} CPU(s), "
        f"{threads} thread(s), load average {info['loadavg_1_5_15']}")
    rows: dict[str, dict] = {}
    phases: list[tuple[str, float]] = []  # (name, start)

    def phase(name: str):
        say(f"[{time.perf_counter() - started:6.0f} s] {name}")
        phases.append((name, time.perf_counter()))

    try:
        phase("noop_rerun_s: Snakemake on a finished DAG")
        rows["noop_rerun_s"], tiny_dir = bench_noop_rerun(scratch / "tiny", sizes)
        phase("dag_build_20exp_s: dry runs")
        rows["dag_build_20exp_s"] = bench_dag_build(scratch / "dag", sizes)

        config = demo_config()
        if args.smoke:
            # The tiny DAG's pretrained model and target split stand in for the demo's.
            manifest_path, split_csv = tiny_dir / "resources/weights/manifest.json", tiny_dir / "resources/splits/target.csv"
            origin = "the tiny DAG's (smoke)"
        else:
            phase("the demo's pretrained source model")
            manifest_path, split_csv, origin = demo_weights(workdir / "demo", threads)
        say(f"  weights: {origin}")
        manifest = read_manifest(manifest_path)
        source_state = load_state_dict(manifest["path"])

        phase(f"transfer_acc_*: the demo's experiments x seeds {list(sizes.seeds)}")
        transfer_rows, transfer = bench_transfer(config, manifest_path, split_csv, scratch / "transfer", sizes, threads)
        for r in transfer_rows:
            rows[r["metric"]] = r

        phase("writing the speed rows' images as PNG files (ImageFolder)")
        # Smoke: the tiny DAG's few images stand in for the subset.
        speed_csv = split_csv if args.smoke else speed_split(config, scratch, threads)
        listing = write_image_folder(speed_csv, scratch / "images")
        folder_csv = folder_split_csv(listing, scratch / "images.csv")
        prep = Preprocessing.from_dict(manifest["preprocessing"], IMAGE_SIZE)
        say(f"  {', '.join(f'{k} {len(v)}' for k, v in listing.items())} images in {scratch / 'images'}")

        phase("feature_extract_25ep_s: cached features vs the tutorial's frozen backbone")
        rows["feature_extract_25ep_s"] = bench_feature_extract(scratch / "images", folder_csv, manifest, source_state,
                                                               prep, config, sizes, threads, args.workers)
        phase("train_img_per_s: full fine-tuning vs the tutorial loop")
        rows["train_img_per_s"] = bench_train_throughput(scratch / "images", folder_csv, manifest, source_state, prep,
                                                         config, sizes, threads, args.workers)
        phase("onnx_infer_img_per_s_*: onnxruntime vs eager PyTorch")
        for r in bench_onnx(transfer["checkpoints"]["finetune"], split_csv, scratch, sizes, threads):
            rows[r["metric"]] = r
        phases.append(("end", time.perf_counter()))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    durations = {name: round(end - start, 1) for (name, start), (_, end) in zip(phases, phases[1:])}

    ordered = [rows[name] for name in ROWS]
    write_csv(ordered, out)
    info_after = machine_info(threads)
    info["loadavg_1_5_15"] = f"{info['loadavg_1_5_15']} at start, {info_after['loadavg_1_5_15']} at end"
    print_table(ordered, info, checked=not args.smoke)
    total = time.perf_counter() - started
    say("\nwall time per phase: " + "; ".join(f"{name.split(':')[0]} {seconds:.0f} s" for name, seconds in durations.items()))
    say(f"wrote {out} in {total:.0f} s ({total / 60:.1f} min)")
    (out.with_suffix(".json")).write_text(json.dumps({"machine": info, "seconds": round(total, 1), "phases_s": durations,
                                                      "smoke": args.smoke, "weights": origin}, indent=2) + "\n")
    if args.smoke:
        return 0
    missed = [r["metric"] for r in ordered if check(r)[1] is False]
    if missed:
        say(f"targets missed: {', '.join(missed)} (see docs/bench.md)")
        return 0 if args.no_check else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
