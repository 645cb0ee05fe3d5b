"""Training against the tutorial-style loop (bench/baseline_tutorial.py), end to end from PNG files:
``train_img_per_s`` (full fine-tuning) and ``feature_extract_25ep_s`` (head-only, cached features vs a
backbone forward every epoch)."""

from __future__ import annotations

import math
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import Sizes, experiment_options, median, quiet, row, say, spread, timed

import numpy as np
import pandas as pd
import torch

import baseline_tutorial as tutorial
from finetune.models import build_target_model, find_output_layer
from finetune.stages import load_split_tensors
from finetune.tensors import Preprocessing, batched_forward, decode_images
from finetune.training import TrainOptions, fit, is_no_decay, lr_factor, seed_everything

# feature_extract_25ep_s: the optimizer both sides of that row use (minibatch AdamW, as the tutorial trains).
FE_LOOP_OPTIMIZER = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 1e-4}


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
                                                  opts.batch_size, num_workers=workers, resize_size=prep.resize_size)
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
        seed_everything(seed, False)  # the same new head on both sides
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
                                           options["batch_size"], num_workers=workers, resize_size=prep.resize_size)
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
                                                num_workers=workers, phases=("test",), resize_size=prep.resize_size)

    def once(side: str, seed: int, n_epochs: int) -> tuple[float, float]:
        opts = TrainOptions.from_dict(options | {"seed": seed, "epochs": n_epochs})
        seed_everything(seed, False)  # the same new head on both sides: the accuracies differ by the training alone
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

