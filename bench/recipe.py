"""``recipe_acc_vs_tutorial`` (issue 16): test accuracy of the demo's ``finetune`` experiment at 100 training
images per class against the PyTorch transfer-learning tutorial's recipe, mean over seeds.

Ours: the demo's ``finetune`` experiment (config/config.yaml: strategy finetune, backbone_lr_factor 0.3, AdamW
lr 1e-3, cosine, warm-up 1, 12 epochs, batch 32) through the pipeline's own ``train_stage`` and
``evaluate_stage``, on the demo's split with ``dataset.max_train_per_class: 100`` (everything else the demo's:
10 val images per class, every official test image of classes 6-9).

The tutorial: its "finetuning the ConvNet" recipe in bench/baseline_tutorial.py: ImageFolder over the same split
written as PNG files, RandomResizedCrop + RandomHorizontalFlip for training, Resize + CenterCrop for val and
test, SGD lr 0.001 momentum 0.9 over every parameter, StepLR(7, 0.1) per epoch, CrossEntropyLoss, 25 epochs,
batch 4, the best val epoch's weights kept.

Both: the same pretrained weights (the demo's source model, a new 4-class head), the same train / val / test
images, the same image size and preprocessing constants, the same seeds, the same torch threads. Wall time per
side: training plus scoring the test images (writing the PNG files, once, is not counted).
"""

from __future__ import annotations

import time
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import SMOKE, Sizes, experiment_options, quiet, row, say

import numpy as np

import baseline_tutorial as tutorial
from finetune.models import build_target_model
from finetune.stages import evaluate_stage, split_stage, train_stage
from finetune.tensors import Preprocessing
from finetune.training import seed_everything
from finetune.weights import load_state_dict, read_manifest
from inputs import write_image_folder

METRIC = "recipe_acc_vs_tutorial"
TRAIN_PER_CLASS = 100  # the budget: dataset.max_train_per_class, the rest of the demo's dataset as it is


def recipe_split(config: dict, workdir: Path, threads: int) -> Path:
    """The demo's split with ``max_train_per_class: 100`` (the split rule's own code)."""
    out = workdir / "recipe_split.csv"
    split_stage({**config["dataset"], "max_train_per_class": TRAIN_PER_CLASS}, out, workdir / "recipe_split.json",
                threads)
    return out


def ours_run(split_csv: Path, manifest_path: Path, config: dict, seed: int, folder: Path, threads: int,
             epochs: int | None) -> tuple[float, float, dict]:
    """The demo's finetune experiment, one seed, through train_stage + evaluate_stage: (seconds, accuracy, info)."""
    options, pretrained, image_size = experiment_options(config, "finetune", seed)
    if epochs is not None:
        options["epochs"] = epochs
    started = time.perf_counter()
    info = train_stage(split_csv, manifest_path, options, folder / "model.pt", folder / "history.csv",
                       folder / "train_info.json", threads, pretrained=pretrained, image_size=image_size, log=quiet)
    report = evaluate_stage(folder / "model.pt", split_csv, folder / "metrics.json", folder / "confusion_matrix.csv",
                            folder / "test_predictions.csv", threads)
    return time.perf_counter() - started, float(report["accuracy"]), {**info, "n_test": report["n_test"]}


def tutorial_run(image_root: Path, manifest: dict, source_state: dict, prep: Preprocessing, seed: int,
                 recipe: dict) -> tuple[float, float, dict]:
    """The tutorial's recipe, one seed: (seconds, test accuracy, details)."""
    started = time.perf_counter()
    seed_everything(seed, False)
    train_transform = tutorial.train_transforms(prep.crop_size, prep.mean, prep.std)
    datasets, loaders = tutorial.make_dataloaders(str(image_root), prep.crop_size, prep.mean, prep.std,
                                                  recipe["batch_size"], phases=("train", "val"),
                                                  resize_size=prep.resize_size, train_transform=train_transform)
    model = build_target_model(manifest["arch"], len(datasets["train"].classes), source_state, manifest["num_classes"])
    criterion, optimizer, scheduler = tutorial.tutorial_recipe(model, recipe)
    model, history = tutorial.train_model(model, criterion, optimizer, scheduler, loaders, num_epochs=recipe["epochs"],
                                          scheduler_step="epoch")
    _, test_loaders = tutorial.make_dataloaders(str(image_root), prep.crop_size, prep.mean, prep.std, 256,
                                                phases=("test",), resize_size=prep.resize_size)
    accuracy = tutorial.test_accuracy(model, test_loaders["test"])
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i))  # the first best, as train_model keeps
    return time.perf_counter() - started, accuracy, {"best_epoch": best + 1,
                                                     "best_val_accuracy": history[best]["val_accuracy"],
                                                     "n_train": len(datasets["train"]), "n_val": len(datasets["val"]),
                                                     "n_test": len(test_loaders["test"].dataset)}


def bench_recipe(config: dict, manifest_path: Path, workdir: Path, sizes: Sizes, threads: int,
                 split_csv: Path | None = None) -> dict:
    """Both recipes for each seed, alternating; the row's figures are the mean test accuracies.

    ``split_csv``: the split to train on (smoke: the tiny DAG's); default the demo's at 100 per class."""
    if split_csv is None:
        split_csv = recipe_split(config, workdir, threads)
    manifest = read_manifest(manifest_path)
    source_state = load_state_dict(manifest["path"])
    _, _, image_size = experiment_options(config, "finetune", 0)
    prep = Preprocessing.from_dict(manifest["preprocessing"], image_size)
    listing = write_image_folder(split_csv, workdir / "images")
    say(f"  {', '.join(f'{k} {len(v)}' for k, v in listing.items())} images ({split_csv.name}) in {workdir / 'images'}")
    smoke = sizes is SMOKE
    recipe = {**tutorial.TUTORIAL_RECIPE, "epochs": sizes.recipe_tutorial_epochs}
    ours_epochs = 1 if smoke else None
    acc: dict[str, list[float]] = {"ours": [], "tutorial": []}
    secs: dict[str, list[float]] = {"ours": [], "tutorial": []}
    best: dict[str, list[str]] = {"ours": [], "tutorial": []}
    n_test = None
    for seed in sizes.seeds:
        seconds, accuracy, info = ours_run(split_csv, manifest_path, config, seed, workdir / "ours" / f"seed{seed}",
                                           threads, ours_epochs)
        acc["ours"].append(accuracy), secs["ours"].append(seconds)
        best["ours"].append(f"{info['best_epoch']}/{info['epochs_run']}")
        n_test = info["n_test"]
        say(f"  seed {seed} ours: test accuracy {accuracy:.4f} ({seconds:.0f} s; {info['n_train']} train, "
            f"{info['n_val']} val, {info['n_test']} test images; best val epoch {best['ours'][-1]})")
        seconds, accuracy, details = tutorial_run(workdir / "images", manifest, source_state, prep, seed, recipe)
        acc["tutorial"].append(accuracy), secs["tutorial"].append(seconds)
        best["tutorial"].append(f"{details['best_epoch']}/{recipe['epochs']}")
        if details["n_test"] != n_test:
            raise SystemExit(f"bench: {METRIC}: the tutorial scored {details['n_test']} test images, ours {n_test}")
        say(f"  seed {seed} tutorial: test accuracy {accuracy:.4f} ({seconds:.0f} s; best val epoch "
            f"{best['tutorial'][-1]}, val accuracy {details['best_val_accuracy']:.4f})")
    ours, base = float(np.mean(acc["ours"])), float(np.mean(acc["tutorial"]))
    diff = (ours - base) * 100
    options = experiment_options(config, "finetune", 0)[0]
    per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(acc["ours"], acc["tutorial"]))
    walls = {side: f"{sum(v):.0f} s ({', '.join(f'{s:.0f}' for s in v)})" for side, v in secs.items()}
    n_train = len(listing["train"])
    note = (f"{diff:+.2f} pts; mean over seeds {list(sizes.seeds)}; per seed ours/tutorial: {per_seed}; "
            f"wall time (train + test scoring, all seeds; per seed) ours {walls['ours']}, "
            f"tutorial {walls['tutorial']}; resnet18 {prep.crop_size}px from the demo's source model, "
            f"{n_train} train + {len(listing['val'])} val + {n_test} test images, {threads} threads; "
            f"ours: the demo's finetune ({options['optimizer']} lr {options['lr']:g}, backbone x"
            f"{options.get('backbone_lr_factor')}, {options['schedule']}, warm-up {options['warmup_epochs']}, "
            f"{ours_epochs or options['epochs']} epochs, batch {options['batch_size']}; best val epoch "
            f"{', '.join(best['ours'])}); tutorial: SGD lr {recipe['lr']:g} momentum {recipe['momentum']:g}, "
            f"StepLR({recipe['step_size']}, {recipe['gamma']:g}), RandomResizedCrop + flip, {recipe['epochs']} epochs, "
            f"batch {recipe['batch_size']}; best val epoch {', '.join(best['tutorial'])}")
    return {**row(METRIC, ours, base, "test accuracy", True, note), "acc_diff_pts": diff,
            "wall_s": {side: [round(s, 1) for s in v] for side, v in secs.items()},
            "accuracy": acc}
