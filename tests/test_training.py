"""Training strategies, schedules, cached features and resume, on tiny real Fashion-MNIST data."""

import json
import math
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as F

from finetune.models import build_target_model, find_output_layer, strip_output_layer
from finetune.stages import load_split_tensors
from finetune.tensors import Preprocessing, batched_forward
from finetune.augment import augment_batch
from finetune.training import Data, TrainOptions, fit, lr_factor
from finetune.weights import load_state_dict, read_manifest
from helpers import REPO, run_snakemake, tiny_config

pytestmark = [pytest.mark.fashion_mnist]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    manifest = read_manifest(tiny_run / "resources/weights/manifest.json")
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    data, classes, _ = load_split_tensors(tiny_run / "resources/splits/target.csv", prep, threads=1,
                                          splits=("train", "val"))
    state = load_state_dict(manifest["path"])
    return {"manifest": manifest, "prep": prep, "data": data, "classes": classes, "state": state}


def make_model(tiny, seed=0):
    torch.manual_seed(seed)
    return build_target_model("resnet18", len(tiny["classes"]), tiny["state"], tiny["manifest"]["num_classes"])


def run_fit(tiny, model, log=lambda _: None, resume_path=None, train=None, global_seed=0, feature_cache=None, val=None,
            **options):
    """fit on the tiny split, on the CPU (the tests compare with CPU tensors; override with device=...).

    ``global_seed`` seeds torch's global RNG just before: fit must not depend on it.
    """
    opts = TrainOptions.from_dict({"epochs": 2, "batch_size": 8, "lr": 0.01, "device": "cpu", **options})
    torch.manual_seed(global_seed)
    return fit(model, train or tiny["data"]["train"], val or tiny["data"]["val"], tiny["prep"], opts,
               num_classes=len(tiny["classes"]), log=log, resume_path=resume_path, feature_cache=feature_cache)


class Interrupted(Exception):
    pass


def interrupted_in_epoch_3(tiny, resume, **options) -> dict:
    """Run fit with a resume file and stop it as epoch 3 is logged (after epoch 2's state was saved);
    return the resume state it left."""
    def interrupt_in_epoch_3(line):
        if line.startswith("epoch 3/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        run_fit(tiny, make_model(tiny), log=interrupt_in_epoch_3, resume_path=resume, **options)
    return torch.load(resume, weights_only=False)


def snapshot(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def strip(history):
    """The history without its timings."""
    return [{k: v for k, v in row.items() if k not in ("img_per_s", "elapsed_s")} for row in history]


def equal_states(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def changed(before, after, prefix=""):
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_new_output_layer_is_sized_to_target_and_backbone_is_copied(tiny):
    model = make_model(tiny)
    name, head = find_output_layer(model)
    assert name == "fc" and head.out_features == 4 and head.in_features == 512
    for key, value in tiny["state"].items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("arch", ["resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16"])
def test_output_layer_found_generically(arch):
    from finetune.models import build_architecture, replace_output_layer

    model = build_architecture(arch, 7)
    name, layer = find_output_layer(model)
    assert layer.out_features == 7
    replace_output_layer(model, 3)
    assert find_output_layer(model)[1].out_features == 3
    assert name in dict(model.named_modules())


def test_feature_extract_trains_only_the_head_and_keeps_batchnorm_statistics(tiny):
    model = make_model(tiny)
    before = snapshot(model)
    result = run_fit(tiny, model, strategy="feature_extract", cache_features=False)
    after = snapshot(model)
    assert changed(before, after) == {"fc.weight", "fc.bias"}, "backbone weights or BN running stats moved"
    assert result.trainable_params == 512 * 4 + 4


def test_finetune_trains_everything(tiny):
    model = make_model(tiny)
    before = snapshot(model)
    result = run_fit(tiny, model, strategy="finetune")
    after = snapshot(model)
    assert "conv1.weight" in changed(before, after) and "bn1.running_mean" in changed(before, after)
    assert result.trainable_params == sum(p.numel() for p in model.parameters())


def test_finetune_with_frozen_batchnorm_keeps_running_statistics(tiny):
    model = make_model(tiny)
    before = snapshot(model)
    run_fit(tiny, model, strategy="finetune", bn="frozen", epochs=1)
    moved = changed(before, snapshot(model))
    assert "conv1.weight" in moved
    assert not {k for k in moved if "bn" in k or "downsample.1" in k}, "BatchNorm moved although bn: frozen"


def test_a_backbone_lr_factor_of_zero_keeps_the_weights_but_not_batchnorm_statistics_and_the_start_says_so(
        tiny_run_copy):
    """backbone_lr_factor: 0 (the schema takes it) looks like a frozen backbone: its weights never change, but every
    step still computes their gradients, and under bn auto BatchNorm's running statistics follow the target's images.
    A real run of it: the backbone's weights are the published weights' to the bit, its statistics are not, and the
    start says so, naming the key as written."""
    from helpers import run_snakemake, tiny_config

    tiny_config(tiny_run_copy, experiments={"finetune": {"strategy": "finetune", "backbone_lr_factor": 0}})
    ran = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml").stdout
    assert ("note: experiments.finetune.backbone_lr_factor 0 (finetune): the backbone trains at lr 0, so its weights "
            "never change, yet each step computes their gradients, and its BatchNorm layers' running statistics still "
            "follow the target's images (bn: frozen keeps the source model's)") in ran, ran[-3000:]
    source = torch.load(tiny_run_copy / "resources/weights/weights.pth", map_location="cpu", weights_only=True)
    trained = torch.load(tiny_run_copy / "results/finetune/seed0/model.pt", map_location="cpu",
                         weights_only=False)["state_dict"]
    backbone = [k for k in source if not k.startswith("fc.")]
    moved = {k for k in backbone if not torch.equal(source[k], trained[k])}
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved), moved
    assert any(k.endswith(".weight") and source[k].dim() == 4 for k in backbone)  # convolutions among those kept
    tiny_config(tiny_run_copy, experiments={"finetune": {"strategy": "finetune", "backbone_lr_factor": 0.3}})
    assert "backbone trains at lr 0" not in run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml").stdout


def test_gradual_from_no_pretrained_weights_is_said_at_start_and_trains_the_head_alone_first(tiny_run_copy):
    """strategy gradual with pretrained: false was taken without a word (feature_extract is refused there, its backbone
    staying random): its first unfreeze_epoch epochs train a head on a random, frozen backbone. Said at start, naming
    the run and the key; the run's history shows the head alone trainable in that epoch (counted here from a fresh
    torchvision resnet18's 4-class head), every parameter after it."""
    import torchvision

    from finetune.startchecks import random_backbone_gradual_note
    from helpers import run_snakemake, tiny_config

    tiny_config(tiny_run_copy, replace={"experiments": {
        "slow": {"strategy": "gradual", "pretrained": False, "unfreeze_epoch": 1, "epochs": 2}}})
    ran = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml").stdout
    assert ("note: slow: strategy gradual with experiments.slow.pretrained false: the first 1 epoch(s) train the new "
            "head alone on a random backbone, frozen") in ran, ran[-3000:]
    model = torchvision.models.resnet18(num_classes=4)
    head, every = (sum(p.numel() for p in part.parameters()) for part in (model.fc, model))
    history = pd.read_csv(tiny_run_copy / "results/slow/seed0/history.csv")
    assert list(history["trainable_params"]) == [head, every]
    # From pretrained weights, or unfrozen from the first epoch: nothing to say.
    for options in ({"strategy": "gradual", "pretrained": True, "unfreeze_epoch": 2},
                    {"strategy": "gradual", "pretrained": False, "unfreeze_epoch": 0},
                    {"strategy": "finetune", "pretrained": False}):
        assert random_backbone_gradual_note({"run": options}, {}) is None, options


def test_frozen_batchnorm_from_no_pretrained_weights_is_said_at_start_and_normalises_nothing(tiny_run_copy):
    """bn: frozen with pretrained: false was taken without a word: BatchNorm keeps the statistics of the weights it
    starts from, here a fresh model's. Said at start, naming the run and both keys; the trained model.pt's BatchNorm
    layers hold exactly those (mean 0, variance 1, scale 1, shift 0)."""
    from finetune.startchecks import frozen_random_batchnorm_note
    from helpers import run_snakemake, tiny_config

    tiny_config(tiny_run_copy, replace={"experiments": {"plain": {"strategy": "finetune", "pretrained": False,
                                                                  "bn": "frozen"}}})
    ran = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml").stdout
    assert ("note: plain: bn frozen with pretrained false (experiments.plain.bn, experiments.plain.pretrained): "
            "BatchNorm keeps the statistics of the weights it starts from, here its initial ones") in ran, ran[-3000:]
    state = torch.load(tiny_run_copy / "results/plain/seed0/model.pt", map_location="cpu",
                       weights_only=False)["state_dict"]
    norms = sorted({key.rsplit(".", 1)[0] for key in state if key.endswith("running_var")})
    assert len(norms) == 20  # resnet18's BatchNorm layers
    for norm in norms:
        for name, value in (("running_mean", 0.0), ("running_var", 1.0), ("weight", 1.0), ("bias", 0.0)):
            assert torch.equal(state[f"{norm}.{name}"], torch.full_like(state[f"{norm}.{name}"], value)), (norm, name)
    # From pretrained weights, or BatchNorm trained: nothing to say.
    for options in ({"bn": "frozen", "pretrained": True}, {"bn": "auto", "pretrained": False},
                    {"bn": "train", "pretrained": False}):
        assert frozen_random_batchnorm_note({"run": options}, {}) is None, options
    # Pretraining starts from random weights: bn frozen there is said too (its source model then normalises nothing).
    tiny_config(tiny_run_copy, pretrain={"train": {"bn": "frozen"}})
    ran = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml").stdout
    assert "note: pretrain.train.bn frozen: pretraining starts from random weights" in ran, ran[-3000:]
    source = torch.load(tiny_run_copy / "resources/pretrain/model.pth", map_location="cpu", weights_only=False)
    source = source.get("state_dict", source)
    assert all(torch.equal(source[f"{norm}.running_var"], torch.ones_like(source[f"{norm}.running_var"]))
               for norm in norms)


@pytest.mark.parametrize("total", [2, 4, 8, 24, 50, 100, 1000])
def test_schedules_give_the_lr_of_torch_s_own_schedulers_step_for_step(total):
    """onecycle against torch's OneCycleLR (pct_start 0.3, cosine, lr/25 up to lr, down to lr/25e4), and cosine
    against CosineAnnealingLR, at every step: the fall of onecycle was one step short, so that a short run ended far
    above lr/25e4 (lr/15 after 8 steps, lr/117 after 24), and its peak one step late."""
    from finetune.training import lr_factor

    def torch_lrs(make):
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        scheduler = make(optimizer)
        lrs = []
        for _ in range(total):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return lrs

    cycle = []
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=total, anneal_strategy="cos",
                                                    cycle_momentum=False)
    for step in range(total):
        cycle.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if step < total - 1:  # OneCycleLR refuses a step past its total
            scheduler.step()
    assert [lr_factor(step, total, 0, "onecycle") for step in range(total)] == pytest.approx(cycle, rel=1e-9)
    assert lr_factor(total - 1, total, 0, "onecycle") == pytest.approx(1 / 25e4)
    cosine = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total))
    assert [lr_factor(step, total, 0, "cosine") for step in range(total)] == pytest.approx(cosine, rel=1e-9, abs=1e-12)


def test_gradual_unfreezes_only_the_last_stages_after_the_head_epochs(tiny):
    model = make_model(tiny)
    before = snapshot(model)
    result = run_fit(tiny, model, strategy="gradual", unfreeze_epoch=1, unfreeze_stages=1, epochs=2,
                     backbone_lr_factor=0.1)
    moved = changed(before, snapshot(model))
    assert any(k.startswith("layer4.") for k in moved)
    assert not any(k.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")) for k in moved)
    trainable = [row["trainable_params"] for row in result.history]
    assert trainable[0] == 512 * 4 + 4 and trainable[1] > trainable[0]


def test_gradual_counts_a_resnets_stem_as_one_stage(tiny):
    """A ResNet's backbone has five stages (the stem conv1 + bn1, layer1 .. layer4), as layer_decay counts them:
    unfreeze_stages 5 trains all of it, conv1 included (the same run as null: all stages), and 6 is refused."""
    from finetune.errors import ConfigError

    runs = {}
    for stages in (5, None):
        model = make_model(tiny)
        before = snapshot(model)
        runs[stages] = run_fit(tiny, model, strategy="gradual", unfreeze_epoch=1, unfreeze_stages=stages, epochs=2)
        moved = changed(before, snapshot(model))
        assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.bias"} <= moved
    assert strip(runs[5].history) == strip(runs[None].history)
    four = make_model(tiny)
    before = snapshot(four)
    run_fit(tiny, four, strategy="gradual", unfreeze_epoch=1, unfreeze_stages=4, epochs=2)
    moved = changed(before, snapshot(four))
    assert "layer1.0.conv1.weight" in moved and not {k for k in moved if k.startswith(("conv1.", "bn1."))}
    with pytest.raises(ConfigError, match=r"unfreeze_stages: 6, but this architecture's backbone has 5 stages"):
        run_fit(tiny, make_model(tiny), strategy="gradual", unfreeze_epoch=1, unfreeze_stages=6, epochs=2)
    # and for a ResNet the workflow refuses it at start, before any job
    from finetune.configcheck import config_problems

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    assert config_problems({"experiments": {"g": {"strategy": "gradual", "unfreeze_stages": 6}}}, schema) == [
        "experiments.g: unfreeze_stages: 6, but a resnet18's backbone has 5 stages (the stem conv1 + bn1, then "
        "layer1 .. layer4): use at most 5, or null for all of them"]
    assert config_problems({"experiments": {"g": {"strategy": "gradual", "unfreeze_stages": 5}}}, schema) == []


def test_gradual_that_would_never_unfreeze_is_refused(tiny):
    """unfreeze_epoch >= epochs: the head trains alone to the end and the backbone never moves (trained here with
    options built without their checks), so the workflow and the loop refuse it."""
    from finetune.configcheck import config_problems
    from finetune.errors import ConfigError

    model = make_model(tiny)
    before = snapshot(model)
    unchecked = TrainOptions(strategy="gradual", unfreeze_epoch=2, epochs=2, batch_size=8, lr=0.01, device="cpu")
    fit(model, tiny["data"]["train"], tiny["data"]["val"], tiny["prep"], unchecked, num_classes=len(tiny["classes"]),
        log=lambda _: None)
    moved = changed(before, snapshot(model))
    assert moved and all(k.startswith("fc.") for k in moved), "the backbone trained"
    for unfreeze, epochs in ((2, 2), (5, 3)):
        options = {"strategy": "gradual", "unfreeze_epoch": unfreeze, "epochs": epochs}
        problems = config_problems({"experiments": {"slow": options}}, REPO / "workflow/schemas/config.schema.yaml")
        assert problems == [f"experiments.slow: unfreeze_epoch: {unfreeze} with epochs: {epochs}: strategy gradual "
                            f"trains the head alone for {unfreeze} epochs, so the backbone would never train; lower "
                            "unfreeze_epoch below epochs, or use strategy feature_extract"], problems
        with pytest.raises(ConfigError, match=f"unfreeze_epoch: {unfreeze} with epochs: {epochs}"):
            TrainOptions.from_dict(options)
    assert config_problems({"experiments": {"ok": {"strategy": "gradual", "unfreeze_epoch": 1, "epochs": 2}}},
                           REPO / "workflow/schemas/config.schema.yaml") == []
    # A model that starts from random weights (a run with pretrained: false, the source model pretrain trains): the
    # advice is finetune, which passes, as feature_extract (refused there: it would never train the backbone) would not
    def starting_random(strategy, **keys):
        return (({"experiments": {"s": {"strategy": strategy, "epochs": 2, "pretrained": False, **keys}}}, "experiments.s"),
                ({"pretrain": {"train": {"strategy": strategy, "epochs": 2, **keys}}}, "pretrain.train"))

    for (config, where), (followed, _), (refused, _) in zip(starting_random("gradual", unfreeze_epoch=2),
                                                            starting_random("finetune"),
                                                            starting_random("feature_extract")):
        problems = config_problems(config, REPO / "workflow/schemas/config.schema.yaml")
        assert [p for p in problems if p.startswith(f"{where}: unfreeze_epoch: 2")] == [
            f"{where}: unfreeze_epoch: 2 with epochs: 2: strategy gradual trains the head alone for 2 epochs, so the "
            "backbone would never train; lower unfreeze_epoch below epochs, or use strategy finetune (the backbone "
            "starts random: feature_extract would never train it)"], problems
        assert config_problems(followed, REPO / "workflow/schemas/config.schema.yaml") == []
        assert config_problems(refused, REPO / "workflow/schemas/config.schema.yaml") != []


def test_training_options_given_alone_hold_the_schema_s_bounds_and_defaults():
    """A script run alone (train.py --options '{...}') checks its options itself: each bound and choice of the schema's
    `train` keys, just outside it, is refused naming the key (a label_smoothing of 1.5 met torch's traceback; a momentum
    of 2, a negative warm-up trained), just inside it passes, and a key left out takes the schema's default (batch_size
    was 64 there, 32 in the workflow). Read from workflow/schemas/config.schema.yaml, not from the code."""
    import dataclasses

    import yaml

    from finetune.errors import ConfigError

    keys = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["$defs"]["train"]["properties"]
    base = {"strategy": "finetune", "epochs": 100, "unfreeze_epoch": 0}  # room for the warm-up and unfreeze checks
    checked = 0
    for key, spec in keys.items():
        integer = "integer" in (spec["type"] if isinstance(spec.get("type"), list) else [spec.get("type")])
        step = 1 if integer else 0.5
        outside, inside = [], []
        if "minimum" in spec:
            outside.append(spec["minimum"] - step)
            inside.append(spec["minimum"])
        if "maximum" in spec:
            outside.append(spec["maximum"] + step)
            inside.append(spec["maximum"])
        if "exclusiveMinimum" in spec and key != "lr":
            outside.append(spec["exclusiveMinimum"])
        if "exclusiveMaximum" in spec:
            outside.append(spec["exclusiveMaximum"])
        if "enum" in spec:
            outside.append("nonesuch")
        for value in outside:
            with pytest.raises(ConfigError, match=re.escape(key)):
                TrainOptions.from_dict({**base, key: value})
            checked += 1
        for value in inside:
            if key not in ("epochs", "unfreeze_epoch", "warmup_epochs", "image_size", "devices", "nodes"):
                TrainOptions.from_dict({**base, key: value})
    assert checked >= 20
    defaults = {field.name: field.default for field in dataclasses.fields(TrainOptions)}
    for key, spec in keys.items():
        if key in defaults and "default" in spec:
            assert defaults[key] == spec["default"], key
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        TrainOptions.from_dict({"seed": -3})


def test_a_warm_up_longer_than_the_training_is_refused():
    """warmup_epochs above epochs: the lr would never reach the lr written (the linear warm-up's factor at the last
    step is (steps run) / (warm-up steps) < 1), so the workflow and the loop refuse it; equal to epochs reaches it."""
    from finetune.configcheck import config_problems
    from finetune.errors import ConfigError
    from finetune.training import lr_factor

    schema = REPO / "workflow/schemas/config.schema.yaml"
    for schedule in ("cosine", "constant"):
        options = {"strategy": "finetune", "schedule": schedule, "warmup_epochs": 5, "epochs": 2}
        steps = 2 * 3  # 3 steps an epoch
        assert lr_factor(steps - 1, steps, 5 * 3, schedule) == pytest.approx(6 / 15)
        problems = config_problems({"experiments": {"w": options}}, schema)
        assert problems == ["experiments.w: warmup_epochs: 5 with epochs: 2: the learning rate would still be warming "
                            "up when training ends, below the lr written, and the schedule after the warm-up would never "
                            "run; lower warmup_epochs to at most epochs"], problems
        with pytest.raises(ConfigError, match="warmup_epochs: 5 with epochs: 2"):
            TrainOptions.from_dict(options)
        assert lr_factor(steps - 1, steps, steps, schedule) == 1.0
        assert config_problems({"experiments": {"w": {**options, "warmup_epochs": 2}}}, schema) == []
    assert config_problems({"train": {"warmup_epochs": 1.5, "epochs": 1}}, schema)  # the shared train section too


def test_cached_features_match_the_uncached_loop(tiny):
    cached = run_fit(tiny, make_model(tiny), strategy="feature_extract", epochs=3, cache_features=True)
    plain = run_fit(tiny, make_model(tiny), strategy="feature_extract", epochs=3, cache_features=False)
    assert cached.used_cached_features and not plain.used_cached_features
    n_val = len(tiny["data"]["val"].labels)
    for a, b in zip(cached.history, plain.history):
        assert abs(a["val_accuracy"] - b["val_accuracy"]) * n_val <= 1, "more than one validation image differs"
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


@pytest.mark.parametrize("damage", ["cut short", "other shapes", "fewer val rows", "widths differ", "integers"])
def test_a_damaged_feature_cache_is_said_removed_and_computed_again(tiny, tmp_path, damage):
    """The cache is derived data: a file cut short (a kill mid-write on a file system without atomic renames, a
    disk error) crashed every rerun with torch.load's traceback until found by hand. Now it is computed again,
    and the run is the run with an intact cache."""
    cache = tmp_path / "features.pt"
    options = {"strategy": "feature_extract", "epochs": 2, "cache_features": True}
    lines = []
    first = run_fit(tiny, make_model(tiny), feature_cache=cache, log=lines.append, **options)
    assert any(line.startswith("backbone features computed once") for line in lines), lines
    intact = torch.load(cache, weights_only=True)
    if damage == "cut short":
        cache.write_bytes(cache.read_bytes()[:5000])
    else:
        train, val = intact["train"], intact["val"]
        damaged = {"other shapes": (train[:3], val), "fewer val rows": (train, val[:2]),
                   "widths differ": (train[:, :100], val), "integers": (train.long(), val.long())}[damage]
        torch.save(dict(zip(("train", "val"), damaged)), cache)
    lines = []
    again = run_fit(tiny, make_model(tiny), feature_cache=cache, log=lines.append, **options)
    warning = next(line for line in lines if line.startswith("warning: feature cache"))
    n_train, n_val = len(tiny["data"]["train"].labels), len(tiny["data"]["val"].labels)
    why = (r"it cannot be read \(\w+: .+\)" if damage == "cut short" else  # the error torch.load raised, named
           re.escape(f"it holds other shapes than {n_train} train and {n_val} val feature vectors"))
    assert re.fullmatch(rf"warning: feature cache {re.escape(str(cache))}: {why}; removed, the features are computed "
                        "again", warning), warning
    assert any(line.startswith("backbone features computed once") for line in lines), lines
    rewritten = torch.load(cache, weights_only=True)
    assert all(torch.equal(rewritten[k], intact[k]) for k in ("train", "val"))
    assert strip(again.history) == strip(first.history)
    lines = []
    run_fit(tiny, make_model(tiny), feature_cache=cache, log=lines.append, **options)
    assert f"backbone features read from cache {cache}" in lines and not any("warning" in line for line in lines)


def test_a_damaged_feature_cache_that_another_job_writes_afresh_meanwhile_is_left_to_it(tmp_path):
    """The seeds of a run share one cache: a job finds it damaged and, as it says so, another job (another seed) writes
    it afresh. That fresh file is kept for the next reads, not removed as the damaged one; a damaged file that no one
    rewrote is removed."""
    from finetune.features import _read_cache
    from finetune.fileio import torch_save

    cache = tmp_path / "features.pt"
    cache.write_bytes(b"a cache cut short")
    fresh = {"train": torch.randn(4, 8), "val": torch.randn(2, 8)}
    lines = []

    def another_job_writes_it_meanwhile(line):
        lines.append(line)
        torch_save(fresh, cache)

    assert _read_cache(cache, 4, 2, another_job_writes_it_meanwhile) is None
    assert lines[0].startswith(f"warning: feature cache {cache}: it cannot be read"), lines
    train, val = _read_cache(cache, 4, 2, lines.append)
    assert torch.equal(train, fresh["train"]) and torch.equal(val, fresh["val"]) and len(lines) == 1
    cache.write_bytes(b"a cache cut short")
    assert _read_cache(cache, 4, 2, lines.append) is None and not cache.exists()


def test_a_feature_cache_that_cannot_be_written_is_said_and_the_run_trains_on(tiny, tmp_path):
    """The cache is derived data: a full disk (here a path whose folder is a file) failed the whole train job after
    its features were computed. Now the run goes on with them, as the run without a cache."""
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    options = {"strategy": "feature_extract", "epochs": 2, "cache_features": True}
    lines = []
    result = run_fit(tiny, make_model(tiny), feature_cache=blocked / "features.pt", log=lines.append, **options)
    warning = next(line for line in lines if line.startswith("warning: the features are not cached"))
    assert warning == (f"warning: the features are not cached (cannot write {blocked / 'features.pt'}: {blocked} is a "
                       "file, not a folder); the run goes on with them, and the next run of these weights and images "
                       "computes them again"), "the run goes on: no path to choose, nothing to rerun"
    assert not (blocked / "features.pt").exists() and not list(tmp_path.glob("**/*.tmp*"))
    assert strip(result.history) == strip(run_fit(tiny, make_model(tiny), **options).history)


@pytest.mark.parametrize("optimizer", [{"optimizer": "adamw"}, {"optimizer": "lbfgs", "lr": 1.0, "weight_decay": 0.1}],
                         ids=["adamw", "lbfgs"])
def test_cached_features_resume_keeps_only_the_head_and_continues_the_same_run(tiny, tmp_path, optimizer):
    options = {"strategy": "feature_extract", "epochs": 4, "cache_features": True, **optimizer}
    reference = run_fit(tiny, make_model(tiny), **options)
    resume = tmp_path / "resume.pt"
    saved = interrupted_in_epoch_3(tiny, resume, **options)
    assert saved["epoch"] == 1 and set(saved["model"]) == {"weight", "bias"}, "only the head is resume state"
    assert resume.stat().st_size < 1_000_000, "the head and its optimizer state, not the ~45 MB model"

    lines = []
    resumed = run_fit(tiny, make_model(tiny), log=lines.append, resume_path=resume, **options)
    assert any(line.startswith("resuming from") for line in lines)
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    assert set(resumed.best_state) == set(reference.best_state), "the checkpoint is the whole model"
    for key, value in reference.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key


def test_a_resume_state_of_other_parameters_is_said_and_the_run_starts_again(tiny, tmp_path):
    """A resume state of a run that cached features (the head's two tensors, its trained module) found by a run whose
    trained module is the whole network (the same options without cache_features): the run says so and trains as
    one without a resume state would, from epoch 1; the file is overwritten with its own state."""
    options = {"strategy": "feature_extract", "epochs": 3}
    resume = tmp_path / "resume.pt"
    interrupted_in_epoch_3(tiny, resume, cache_features=True, **options)
    fresh = run_fit(tiny, make_model(tiny), cache_features=False, **options)
    lines = []
    resumed = run_fit(tiny, make_model(tiny), cache_features=False, log=lines.append, resume_path=resume, **options)
    assert f"warning: resume state {resume} holds other parameters than this run trains; starting again from " \
           "epoch 1" in lines, lines
    assert not any(line.startswith("resuming from") for line in lines), lines
    assert strip(resumed.history) == strip(fresh.history) and len(resumed.history) == 3
    assert set(torch.load(resume, weights_only=False)["model_keys"]) == set(make_model(tiny).state_dict())


def test_a_resume_path_holding_a_model_s_weights_is_said_and_the_run_starts_again(tiny, tmp_path):
    """A file at the resume path that torch reads but that is no resume state (a model's state_dict put there): the
    run says it is not one, names the file, and trains from epoch 1 as a run without it."""
    options = {"strategy": "feature_extract", "epochs": 2}
    resume = tmp_path / "resume.pt"
    torch.save(make_model(tiny).state_dict(), resume)
    fresh = run_fit(tiny, make_model(tiny), **options)
    lines = []
    resumed = run_fit(tiny, make_model(tiny), log=lines.append, resume_path=resume, **options)
    assert f"warning: resume state {resume} is unreadable (ValueError: not a resume state written by this training " \
           "loop); starting again from epoch 1 (it is overwritten after the first epoch)" in lines, lines
    assert strip(resumed.history) == strip(fresh.history) and len(resumed.history) == 2


def test_lbfgs_solves_the_regularised_head_problem(tiny):
    """Full-batch L-BFGS on cached features minimises cross-entropy + wd/2 ||W||^2 over the head only."""
    wd = 0.1
    model = make_model(tiny)
    before = snapshot(model)
    result = run_fit(tiny, model, strategy="feature_extract", optimizer="lbfgs", lr=1.0, weight_decay=wd, epochs=8)
    last = {k: v.detach().clone() for k, v in model.fc.state_dict().items()}  # the head trained in place, as the
    assert result.used_cached_features and len(result.history) == 8  # last epoch left it (best_state: the best by val)
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert changed(before, result.best_state) == {"fc.weight", "fc.bias"}

    # The same objective, computed here from the features: its gradient at the result is ~0 (a minimum),
    # and at the random initial head it is not.
    model.load_state_dict(before)
    backbone = strip_output_layer(model).eval()
    with torch.no_grad():
        features = batched_forward(backbone, tiny["data"]["train"].images, tiny["prep"], torch.device("cpu"))
    labels = tiny["data"]["train"].labels

    def gradient_norm(weight, bias):
        weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        objective = torch.nn.functional.cross_entropy(features @ weight.T + bias, labels) + 0.5 * wd * weight.pow(2).sum()
        objective.backward()
        return torch.cat([weight.grad.flatten(), bias.grad]).norm().item()

    assert gradient_norm(before["fc.weight"], before["fc.bias"]) > 0.1
    assert gradient_norm(last["weight"], last["bias"]) < 1e-3
    # Each epoch reports the loss and accuracy of the head it started from, as a batch of the other optimizers does
    # (before its step): epoch 1's are the random initial head's.
    with torch.no_grad():
        logits = features @ before["fc.weight"].T + before["fc.bias"]
    assert result.history[0]["train_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)
    assert result.history[0]["train_accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())


@pytest.mark.parametrize("options", [
    {"optimizer": "sgd", "schedule": "onecycle", "label_smoothing": 0.1},
    {"class_weighting": "sampler", "early_stopping_patience": 1, "metric": "val_loss", "epochs": 3},
    {"class_weighting": "loss", "augment": True, "warmup_epochs": 1, "schedule": "constant"},
])
def test_optimisation_options_train(tiny, options):
    result = run_fit(tiny, make_model(tiny), strategy="finetune", **options)
    assert 1 <= len(result.history) <= options.get("epochs", 2)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


def test_same_seed_same_history_whatever_the_global_rng_and_another_seed_another(tiny):
    """The run is a function of opts.seed: not of torch's global RNG (disturbed differently before each
    run here), and a different seed gives a different run."""
    a = run_fit(tiny, make_model(tiny), strategy="finetune", seed=3, global_seed=1)
    b = run_fit(tiny, make_model(tiny), strategy="finetune", seed=3, global_seed=2)
    c = run_fit(tiny, make_model(tiny), strategy="finetune", seed=4, global_seed=1)
    assert strip(a.history) == strip(b.history)
    assert equal_states(a.best_state, b.best_state)
    assert [r["train_loss"] for r in c.history] != [r["train_loss"] for r in a.history]


# (a run's options, a key, two values of it): the run does not act on the key, so the two values train the same run,
# and the workflow refuses the key written for that run (configcheck.unread_options).
UNREAD = [
    ({"strategy": "finetune", "epochs": 3}, "unfreeze_epoch", 1, 2),
    ({"strategy": "finetune"}, "unfreeze_stages", 1, 3),
    ({"strategy": "feature_extract"}, "backbone_lr_factor", 0.1, 1.0),
    ({"strategy": "feature_extract", "augment": True}, "backbone_lr_factor", 0.1, 1.0),
    ({"strategy": "finetune", "optimizer": "adamw"}, "momentum", 0.5, 0.9),
    ({"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0}, "schedule", "cosine", "constant"),
    ({"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0}, "warmup_epochs", 0, 1),
    ({"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0}, "batch_size", 4, 16),
    ({"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0}, "amp", "off", "bf16"),
    ({"strategy": "feature_extract"}, "compile", "off", "default"),
    ({"strategy": "feature_extract"}, "channels_last", False, True),
    ({"strategy": "finetune", "schedule": "onecycle"}, "warmup_epochs", 0, 1),
    ({"strategy": "feature_extract"}, "bn", "frozen", "train"),
    ({"strategy": "feature_extract", "augment": True}, "bn", "frozen", "train"),
    ({"strategy": "feature_extract", "augment": True}, "cache_features", False, True),
    ({"strategy": "finetune"}, "cache_features", False, True),
    ({"strategy": "finetune", "device": "cpu"}, "amp", "off", "bf16"),
    ({"strategy": "finetune", "device": "cpu"}, "channels_last", False, True),
]
# The same keys where the run acts on them: the two values train two different runs, and the key is accepted.
READ = [
    ({"strategy": "gradual", "epochs": 3}, "unfreeze_epoch", 1, 2),
    ({"strategy": "gradual", "unfreeze_epoch": 1}, "unfreeze_stages", 1, 3),
    ({"strategy": "finetune"}, "backbone_lr_factor", 0.1, 1.0),
    ({"strategy": "finetune", "optimizer": "sgd"}, "momentum", 0.5, 0.9),
    ({"strategy": "finetune"}, "warmup_epochs", 0, 1),
    ({"strategy": "finetune"}, "bn", "frozen", "train"),
    ({"strategy": "feature_extract"}, "cache_features", False, True),
    ({"strategy": "feature_extract"}, "batch_size", 4, 16),
]


# (a run's options, a key, its default, another value that trains as the default does): one run, whichever is written.
SAME_AS_DEFAULT = [
    ({"strategy": "finetune"}, "bn", "auto", "train"),
    ({"strategy": "gradual", "unfreeze_epoch": 1, "epochs": 2}, "bn", "auto", "train"),
    ({"strategy": "finetune"}, "layer_decay", None, 1.0),
    ({"strategy": "gradual", "unfreeze_epoch": 1, "epochs": 2}, "unfreeze_stages", None, 5),
    # the earliest stop is after epoch 1 + 1: the last one, so the patience stops nothing
    ({"strategy": "finetune", "epochs": 2}, "early_stopping_patience", None, 1),
]


@pytest.mark.parametrize("options, key, default, value", SAME_AS_DEFAULT,
                         ids=[f"{c[1]}-{c[0]['strategy']}" for c in SAME_AS_DEFAULT])
def test_a_value_that_trains_as_the_default_is_the_same_run(tiny, options, key, default, value):
    """`bn: train` where auto trains BatchNorm too, `layer_decay: 1.0` (no decay), `unfreeze_stages: 5` of a ResNet's 5:
    trained, each gives the very run of the default. So the jobs get the default (writing the value reruns nothing),
    a sweep over both is refused as one run twice, naming why, and the value written alone is no problem."""
    from finetune.configcheck import config_problems, job_options, model_arch, train_defaults

    schema = REPO / "workflow/schemas/config.schema.yaml"
    first = run_fit(tiny, make_model(tiny), **{**options, key: default})
    second = run_fit(tiny, make_model(tiny), **{**options, key: value})
    assert strip(first.history) == strip(second.history) and equal_states(first.best_state, second.best_state)
    defaults, arch = train_defaults(schema), model_arch({})
    assert job_options(defaults, {**options, key: value}, defaults, arch) == \
        job_options(defaults, {**options, key: default}, defaults, arch)
    assert config_problems({"experiments": {"probe": {**options, key: value}}}, schema) == []
    swept = config_problems({"experiments": {"probe": {**options, "sweep": {key: [default, value]}}}}, schema)
    assert len(swept) == 1 and swept[0].startswith(f"experiments.probe.sweep.{key}: runs probe-") \
        and f"would train the same run ({key}: " in swept[0], swept


def test_unfreeze_stages_of_a_model_other_than_a_resnet_is_its_own_run():
    """`unfreeze_stages: 5` is all of a ResNet's stages, not of every model's: with ConvNeXt's weights (more stages) a
    sweep over null and 5 is two runs, and 6 is not refused at start as a ResNet's would be (the train job counts the
    model's own stages)."""
    from finetune.configcheck import config_problems, model_arch

    schema = REPO / "workflow/schemas/config.schema.yaml"
    weights = {"source": "torchvision", "torchvision": "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"}
    assert model_arch(weights) == "convnext_tiny"
    gradual = {"strategy": "gradual", "unfreeze_epoch": 1, "epochs": 2}
    assert config_problems({"weights": weights, "experiments": {
        "probe": {**gradual, "sweep": {"unfreeze_stages": [None, 5, 6]}}}}, schema) == []


@pytest.mark.parametrize("options, key, a, b", UNREAD + READ,
                         ids=[f"{'unread' if i < len(UNREAD) else 'read'}-{c[1]}-{c[0]['strategy']}"
                              for i, c in enumerate(UNREAD + READ)])
def test_a_key_the_run_does_not_act_on_is_refused_and_one_it_acts_on_is_not(tiny, options, key, a, b):
    from finetune.configcheck import config_problems

    first = run_fit(tiny, make_model(tiny), **{**options, key: a})
    second = run_fit(tiny, make_model(tiny), **{**options, key: b})
    same = strip(first.history) == strip(second.history) and equal_states(first.best_state, second.best_state)
    problems = config_problems({"experiments": {"probe": {**options, key: b}}}, REPO / "workflow/schemas/config.schema.yaml")
    refused = [p for p in problems if p.startswith(f"experiments.probe.{key}: not used: ")]
    # Swept over both values (one of which may ask for nothing, like warmup_epochs 0): refused as one run twice.
    swept = config_problems({"experiments": {"probe": {**options, "sweep": {key: [a, b]}}}},
                            REPO / "workflow/schemas/config.schema.yaml")
    if (options, key, a, b) in UNREAD:
        assert same, f"{key} {a} and {b} trained different runs: the run acts on it"
        assert refused and problems == refused, problems
        assert len(swept) == 1 and swept[0].startswith(f"experiments.probe.sweep.{key}: "), swept
    else:
        assert not same, f"{key} {a} and {b} trained the same run"
        assert problems == [] and swept == [], (problems, swept)


def test_amp_and_channels_last_on_device_auto_without_a_gpu_train_as_without_them_and_the_start_says_so(tiny):
    """amp and channels_last act on CUDA only: refused with device cpu, but with device auto on a machine without a
    GPU the run trained as without them, the same history to the last digit, and nothing said. Where torch sees no
    GPU both runs are the same here, and cuda_only_options_note (said at the start of a local run where torch sees
    none) names the keys as written and the runs; on a GPU they are two runs."""
    from finetune.startchecks import cuda_only_options_note

    plain = run_fit(tiny, make_model(tiny), strategy="finetune", device="auto")
    both = run_fit(tiny, make_model(tiny), strategy="finetune", device="auto", amp="bf16", channels_last=True)
    same = strip(plain.history) == strip(both.history) and equal_states(plain.best_state, both.best_state)
    assert same == (not torch.cuda.is_available())
    runs = {"fast": {"device": "auto", "amp": "bf16", "channels_last": True},
            "nhwc": {"device": "auto", "channels_last": True},
            "plain": {"device": "auto", "amp": "off"}, "cuda": {"device": "cuda", "amp": "fp16"}}
    note = cuda_only_options_note(runs, {"fast": {"amp": "experiments.fast.amp"}})
    assert note.startswith("experiments.fast.amp bf16 (fast); train.channels_last true (fast, nhwc): autocast and "
                           "channels-last act on CUDA only"), note
    assert cuda_only_options_note({"plain": runs["plain"], "cuda": runs["cuda"]}, {}) is None


@pytest.mark.slow
def test_pretraining_s_amp_and_channels_last_on_device_auto_without_a_gpu_are_said_at_start(tmp_path):
    """The train runs' note (above) left pretraining out: pretrain.train amp and channels_last on device auto, where
    torch sees no GPU, pretrained as without them, nothing said. Said now, naming the keys as written; the source
    model's info.json records them as written. (No GPU to torch here, even on a machine with one.)"""
    config = tiny_config(tmp_path, pretrain={"train": {"device": "auto", "amp": "bf16", "channels_last": True}})
    result = run_snakemake(tmp_path, config, "--printshellcmds", "resources/pretrain/model.pth",
                           env={"CUDA_VISIBLE_DEVICES": ""})
    assert ("note: pretrain.train.amp bf16 (pretrain); pretrain.train.channels_last true (pretrain): autocast and "
            "channels-last act on CUDA only, and this machine has no GPU that torch sees") in result.stdout, \
        result.stdout[-3000:]
    options = json.loads((tmp_path / "resources/pretrain/info.json").read_text())["options"]
    assert (options["device"], options["amp"], options["channels_last"]) == ("auto", "bf16", True), options


def test_compile_reduce_overhead_on_the_cpu_is_said_to_compile_as_default():
    """compile: reduce-overhead is the default mode with CUDA graphs (torch's own table of modes), which act on CUDA
    only: a run on the CPU (device cpu, or auto where no GPU is seen) compiles as with default, and a sweep of the two
    trained twice the same, nothing said. The start names each key as written; not for a run that may see a GPU."""
    import torch._inductor

    from finetune.startchecks import cuda_graphs_on_cpu_note

    assert torch._inductor.list_mode_options("reduce-overhead") == {"triton.cudagraphs": True}
    assert not torch._inductor.list_mode_options("default")
    runs = {"a-compiledefault": {"compile": "default", "device": "cpu"},
            "a-compilereduce-overhead": {"compile": "reduce-overhead", "device": "cpu"},
            "b": {"compile": "reduce-overhead", "device": "auto"}, "c": {"compile": "reduce-overhead", "device": "cuda"}}
    keys = {"a-compiledefault": {"compile": "experiments.a.sweep.compile"},
            "a-compilereduce-overhead": {"compile": "experiments.a.sweep.compile"}, "b": {}, "c": {}}
    tail = (": reduce-overhead is torch.compile's default mode with CUDA graphs, which act on CUDA only, and these runs "
            "train on the CPU: they compile and train as with compile: default")
    assert cuda_graphs_on_cpu_note(runs, keys, gpu_seen=True) == (
        "experiments.a.sweep.compile reduce-overhead (a-compilereduce-overhead)" + tail)
    assert cuda_graphs_on_cpu_note(runs, keys, gpu_seen=False) == (
        "experiments.a.sweep.compile reduce-overhead (a-compilereduce-overhead); train.compile reduce-overhead (b)" + tail)
    assert cuda_graphs_on_cpu_note({"c": runs["c"]}, keys, gpu_seen=False) is None


def test_compile_takes_a_mode_and_refuses_anything_else_naming_the_key():
    from finetune.errors import ConfigError

    assert TrainOptions().compile == "off"
    assert TrainOptions.from_dict({"compile": "reduce-overhead"}).compile == "reduce-overhead"
    for bad in ("fast", True):
        with pytest.raises(ConfigError, match=r"^train: compile must be one of \('off', 'default', 'reduce-overhead'\), "):
            TrainOptions.from_dict({"compile": bad})


def test_a_warm_up_of_one_step_is_told_and_one_of_two_ramps(tiny):
    """With every training image in one batch an epoch is one optimizer step: warmup_epochs 1 (or 0.1, rounded to
    a step, not down to none) is a one-step warm-up, which starts at the full lr: the log says so. warmup_epochs
    2 is two steps: the first at lr / 2 (history's lr is the epoch's last step's), the second at lr."""
    n_train = len(tiny["data"]["train"].labels)
    for warmup in (1, 0.1):
        lines = []
        result = run_fit(tiny, make_model(tiny), epochs=2, batch_size=n_train, warmup_epochs=warmup,
                         schedule="constant", lr=0.01, log=lines.append)
        assert [row["lr"] for row in result.history] == pytest.approx([0.01, 0.01])
        assert any(line.startswith(f"warning: train.warmup_epochs: {warmup:g} is one optimizer step here") for line in lines), lines
    lines = []
    result = run_fit(tiny, make_model(tiny), epochs=3, batch_size=n_train, warmup_epochs=2, schedule="constant",
                     lr=0.01, log=lines.append)
    assert [row["lr"] for row in result.history] == pytest.approx([0.005, 0.01, 0.01])
    assert not any("warm-up" in line for line in lines), lines


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0
    peak = max(lr_factor(s, 100, 0, "onecycle") for s in range(100))
    assert peak == pytest.approx(1.0) and lr_factor(0, 100, 0, "onecycle") == pytest.approx(1 / 25)
    # the documented shapes at every step, written out here: onecycle rises by a half cosine from 1/25 to 1 until
    # step 0.3 x 100 - 1 (torch's OneCycleLR), then falls by a half cosine to 1/25e4 at the last step; cosine after a
    # warm-up falls from 1 to 0
    low, floor = 1 / 25, 1 / 25e4
    for step in range(100):
        expected = (low + (1 - low) * (1 - math.cos(math.pi * step / 29)) / 2 if step <= 29 else
                    floor + (1 - floor) * (1 + math.cos(math.pi * (step - 29) / 70)) / 2)
        assert lr_factor(step, 100, 0, "onecycle") == pytest.approx(expected, rel=1e-12), step
    assert lr_factor(99, 100, 0, "onecycle") < 6e-4  # near the floor, far below lr/25
    assert lr_factor(99, 100, 0, "onecycle") == pytest.approx(floor)  # reached at the last step
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_history_lr_is_the_head_s_not_a_backbone_group_s(tiny):
    """history.csv's lr is the head's (the lr written, 0.01 here at a constant schedule): the backbone's groups train
    at it x backbone_lr_factor x layer_decay^depth (at most 0.001), none of which is the figure."""
    result = run_fit(tiny, make_model(tiny), strategy="finetune", schedule="constant", warmup_epochs=0, lr=0.01,
                     backbone_lr_factor=0.1, layer_decay=0.7)
    assert [row["lr"] for row in result.history] == pytest.approx([0.01, 0.01])


# --------------------------------------------------------------------------- early stopping

EARLY_STOPPING = {"strategy": "feature_extract", "schedule": "constant", "metric": "val_accuracy", "lr": 0.05}


def test_early_stopping_stops_patience_epochs_after_the_best_and_keeps_its_weights(tiny):
    patience, epochs = 2, 12
    model, lines = make_model(tiny), []
    result = run_fit(tiny, model, epochs=epochs, early_stopping_patience=patience, log=lines.append, **EARLY_STOPPING)
    n_val = len(tiny["data"]["val"].labels)
    shares = {k / n_val for k in range(n_val + 1)}  # an accuracy is an exact share (0.84), not a float32 (0.83999997)
    assert all(row["val_accuracy"] in shares for row in result.history), [r["val_accuracy"] for r in result.history]
    # the highest accuracy; among epochs tied on it the lowest validation loss (then the first)
    ranked = [(row["val_accuracy"], -row["val_loss"], -row["epoch"]) for row in result.history]
    best_epoch = -max(ranked)[2]
    assert result.stopped_early
    assert len(result.history) == best_epoch + patience < epochs
    assert result.best_epoch == best_epoch and best_epoch > 1
    # val_accuracy is higher-is-better with val_loss breaking ties: the line says both
    assert f"early stopping: val_accuracy (nor val_loss at equal accuracy) did not improve for {patience} epoch(s); " \
           f"best epoch {best_epoch}" in lines, lines
    last_state = snapshot(model)
    assert not equal_states(result.best_state, last_state), "best_state is the last epoch's, not the best epoch's"

    # Independently: the same seed trained for best_epoch epochs only (a constant lr: the same steps).
    shorter_model = make_model(tiny)
    shorter = run_fit(tiny, shorter_model, epochs=best_epoch, **EARLY_STOPPING)
    assert strip(shorter.history) == strip(result.history[:best_epoch])
    assert equal_states(result.best_state, snapshot(shorter_model))


def test_a_run_whose_patience_runs_out_at_its_last_epoch_did_not_stop_early(tiny):
    """Patience reached at the last epoch ends nothing that was not ending: stopped_early false, no early-stopping
    line. The case is built from a longer run of the same seed (constant lr: the same epochs), which stops early."""
    patience = 2
    longer = run_fit(tiny, make_model(tiny), epochs=12, early_stopping_patience=patience, **EARLY_STOPPING)
    assert longer.stopped_early, "the case: the longer run stops patience epochs after its best"
    epochs, lines = len(longer.history), []
    result = run_fit(tiny, make_model(tiny), epochs=epochs, early_stopping_patience=patience, log=lines.append,
                     **EARLY_STOPPING)
    assert strip(result.history) == strip(longer.history) and result.best_epoch == longer.best_epoch
    assert not result.stopped_early and len(result.history) == epochs
    assert not any(line.startswith("early stopping") for line in lines), lines


def test_early_stopping_lets_gradual_train_its_backbone_patience_epochs_after_the_unfreeze(tiny):
    """A run whose metric never improves after its first epoch (lr 1e-30, below float32 rounding, BatchNorm frozen: every epoch scores the
    same) would stop in its head-only phase, its backbone never trained; with gradual the count starts again
    at the unfreeze, so it stops ``patience`` epochs after it, and the log says the best epoch is a head-only one."""
    patience, unfreeze = 2, 2
    lines = []
    result = run_fit(tiny, make_model(tiny), strategy="gradual", unfreeze_epoch=unfreeze, epochs=8, lr=1e-30,
                     bn="frozen", schedule="constant", early_stopping_patience=patience, log=lines.append)
    head = 512 * len(tiny["classes"]) + len(tiny["classes"])
    assert [row["val_loss"] for row in result.history] == [result.history[0]["val_loss"]] * len(result.history)
    assert result.stopped_early and len(result.history) == unfreeze + patience
    assert [row["trainable_params"] > head for row in result.history] == [False] * unfreeze + [True] * patience
    assert result.best_epoch == 1
    assert any("best epoch 1 is a head-only one" in line for line in lines), lines


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present_and_chooses_the_epoch(tiny):
    """``metric: val_balanced_accuracy`` on a validation split of unequal classes, one of them absent: the kept
    epoch is the best on it (ties to the lower val_loss), and its figure is the mean over the classes the split
    holds of their recalls, recomputed here from the kept weights' predictions."""
    full = tiny["data"]["val"]
    sizes = torch.bincount(full.labels, minlength=len(tiny["classes"])).tolist()
    val = imbalanced(full, [sizes[0], max(1, sizes[1] // 3), max(1, sizes[2] // 5), 0])
    lines = []
    model = make_model(tiny)
    result = run_fit(tiny, model, val=val, epochs=4, log=lines.append, metric="val_balanced_accuracy",
                     **{k: v for k, v in EARLY_STOPPING.items() if k != "metric"})
    ranked = [(row["val_balanced_accuracy"], -row["val_loss"], -row["epoch"]) for row in result.history]
    assert result.best_epoch == -max(ranked)[2]
    best = result.history[result.best_epoch - 1]
    assert result.best_metric == best["val_balanced_accuracy"]

    model.load_state_dict(result.best_state)
    mean = torch.tensor(tiny["prep"].mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny["prep"].std).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = model.eval()((val.images.float() / 255 - mean) / std).argmax(1)
    labels = val.labels
    recalls = [((predicted == c) & (labels == c)).sum().item() / (labels == c).sum().item() for c in range(3)]
    assert best["val_balanced_accuracy"] == pytest.approx(sum(recalls) / 3, abs=1e-12)
    assert best["val_accuracy"] == pytest.approx((predicted == labels).float().mean().item(), abs=1e-6)
    assert any(abs(row["val_balanced_accuracy"] - row["val_accuracy"]) > 0.01 for row in result.history), \
        "the unequal classes must part the two figures here"
    assert any(f"val_bal_acc {best['val_balanced_accuracy']:.4f}" in line for line in lines), lines


@pytest.mark.parametrize("metric", ["val_accuracy", "val_balanced_accuracy"])
def test_the_best_epoch_breaks_accuracy_ties_by_validation_loss(metric):
    from finetune.progress import Progress, track_best

    opts = TrainOptions.from_dict({"metric": metric})
    progress = Progress(history=[], best={"state": {}, "metric": float("-inf"), "epoch": -1})
    layer = torch.nn.Linear(2, 2)
    rows = [(0.75, 0.9), (0.95, 0.54), (0.95, 0.41), (0.95, 0.47), (0.90, 0.20), (0.95, 0.41)]
    kept = []
    for epoch, (accuracy, loss) in enumerate(rows, start=1):
        track_best(progress, layer, {"epoch": epoch, metric: accuracy, "val_loss": loss}, opts)
        kept.append((progress.best["epoch"], progress.since_best))
    # epoch 3 ties epoch 2's accuracy at a lower loss: it is kept; 4 (higher loss), 5 (lower accuracy) and 6
    # (the same loss, not lower) are not, and count as epochs without improvement for early stopping
    assert kept == [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2), (3, 3)]
    by_loss = Progress(history=[], best={"state": {}, "metric": float("inf"), "epoch": -1})
    for epoch, (accuracy, loss) in enumerate(rows, start=1):
        track_best(by_loss, layer, {"epoch": epoch, metric: accuracy, "val_loss": loss},
                   TrainOptions.from_dict({"metric": "val_loss"}))
    assert by_loss.best["epoch"] == 5  # metric val_loss: the lowest loss, whatever the accuracy


def test_one_balanced_accuracy_reached_by_other_recalls_is_one_float_and_ties_go_to_the_lower_loss():
    """6 validation images per class: recalls (1, 5, 5)/6 and (4, 4, 3)/6 are both 11/18 balanced accuracy, but their
    float means were 0.6111111111111112 and 0.611111111111111, so the epoch an ulp above was kept over the later one of
    lower val_loss (and the seed an ulp above chosen). Now the figure is the exact share, and shares compare exactly."""
    from fractions import Fraction

    from finetune.progress import Progress, track_best
    from finetune.selection import best_epoch_row
    from finetune.training import _accuracies

    def counts(right):
        return torch.tensor([[6, 6, 6], right], dtype=torch.float64)

    old = [math.fsum(r / 6 for r in right) / 3 for right in ((1, 5, 5), (4, 4, 3))]
    assert old[0] != old[1]  # the case as the helper found it
    ours = [_accuracies(counts(right))["val_balanced_accuracy"] for right in ((1, 5, 5), (4, 4, 3))]
    assert ours == [float(Fraction(11, 18))] * 2
    # and rows written by the old computation (a history from before) tie too, going to the lower loss
    rows = [{"epoch": 1, "val_balanced_accuracy": old[0], "val_loss": 1.0557}, {"epoch": 2, "val_balanced_accuracy": 0.5, "val_loss": 0.9},
            {"epoch": 3, "val_balanced_accuracy": old[1], "val_loss": 1.0162}]
    assert best_epoch_row(rows, "val_balanced_accuracy")["epoch"] == 3
    opts = TrainOptions.from_dict({"metric": "val_balanced_accuracy"})
    progress = Progress(history=[], best={"state": {}, "metric": float("-inf"), "epoch": -1})
    for row in rows:
        track_best(progress, torch.nn.Linear(2, 2), row, opts)
    assert progress.best["epoch"] == 3


def test_pretrain_records_the_figures_of_the_epoch_it_kept(tiny_run, tmp_path):
    """pretrain with metric val_loss keeps the lowest validation loss's epoch; its info.json (and the weights'
    manifest, the log) gave the highest validation accuracy of any epoch, which may be another epoch's."""
    from finetune.stages import pretrain_stage

    def pretrain(lr: float, metric: str) -> tuple[dict, pd.DataFrame]:
        options = {"epochs": 5, "batch_size": 8, "lr": lr, "device": "cpu", "metric": metric, "schedule": "constant"}
        out = tmp_path / f"{metric}_lr{lr}"
        out.mkdir()
        info = pretrain_stage(tiny_run / "resources/splits/source.csv", "resnet18", 32, options, out / "model.pth",
                              out / "info.json", out / "history.csv", threads=2, log=lambda _: None)
        assert json.loads((out / "info.json").read_text()) == json.loads(json.dumps(info))
        return info, pd.read_csv(out / "history.csv")

    # The case needs a history whose lowest val_loss is not at its highest val_accuracy. Training resnet18 from
    # scratch on 48 images at these lrs is chaotic (losses in the millions at first), so which lr parts the two
    # epochs changes with the split's draw and with torch: the first of a few lrs that does is taken (on the draw of
    # 2026-12-02, 0.02; on that of 2026-12-01, 0.1), and none parting fails the test.
    tried = []
    for lr in (0.02, 0.1, 0.05):
        info, history = pretrain(lr, "val_loss")
        kept = history.loc[history["val_loss"].idxmin()]
        if history["val_accuracy"].max() > kept["val_accuracy"]:
            break
        tried.append((lr, list(history["val_accuracy"]), list(history["val_loss"])))
    else:
        raise AssertionError(f"no lr parts the lowest val_loss's epoch from the best val_accuracy's: {tried}")
    assert info["best_epoch"] == kept["epoch"]
    assert info["best_val_loss"] == pytest.approx(kept["val_loss"], abs=1e-12)
    assert info["best_val_accuracy"] == pytest.approx(kept["val_accuracy"], abs=1e-12), (info, history)

    # With metric val_accuracy, an epoch kept before the last: its figures, not the last epoch's (the draws above
    # keep lowering the loss to the last epoch; their accuracy peaks earlier at some lrs).
    for lr in (0.1, 0.05, 0.02, 0.2):
        info, history = pretrain(lr, "val_accuracy")
        kept = history.sort_values(["val_accuracy", "val_loss"], ascending=[False, True]).iloc[0]  # ties: lower loss
        last = history.iloc[-1]
        if kept["epoch"] != last["epoch"] and (kept["val_accuracy"], kept["val_loss"]) != (last["val_accuracy"], last["val_loss"]):
            break
    else:
        raise AssertionError("no lr keeps an epoch before the last by val_accuracy")
    assert info["best_epoch"] == kept["epoch"]
    assert info["best_val_accuracy"] == pytest.approx(kept["val_accuracy"], abs=1e-12), (info, history)
    assert "best_val_loss" not in info


# --------------------------------------------------------------------------- class weighting

def imbalanced(data, counts):
    """The first ``counts[c]`` images of each class ``c`` of ``data``."""
    keep = torch.cat([torch.nonzero(data.labels == c).flatten()[:n] for c, n in enumerate(counts)])
    assert [int((data.labels[keep] == c).sum()) for c in range(len(counts))] == list(counts)
    return Data(data.images[keep], data.labels[keep])


def test_class_weighting_loss_optimises_the_inverse_frequency_weighted_cross_entropy(tiny):
    counts = [2, 8, 1, 4]  # with the tiny split of 2026-12-01's draw, [8, 4, 2, 1] made the two losses 0.003 apart
    train = imbalanced(tiny["data"]["train"], counts)
    # The initial model's losses on the whole training set (a full batch, in train mode as fit's first step).
    reference = make_model(tiny).train()
    mean = torch.tensor(tiny["prep"].mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny["prep"].std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = reference((train.images.float() / 255 - mean) / std)
    losses = torch.nn.functional.cross_entropy(logits, train.labels, reduction="none")
    weights = torch.tensor([1 / n for n in counts])[train.labels]  # inverse frequency
    weighted, plain = ((weights * losses).sum() / weights.sum()).item(), losses.mean().item()
    assert abs(weighted - plain) > 0.01, "the weighting must make a difference here"

    options = {"strategy": "finetune", "epochs": 1, "batch_size": len(train.labels)}
    for weighting, expected in (("loss", weighted), ("none", plain)):
        result = run_fit(tiny, make_model(tiny), train=train, class_weighting=weighting, **options)
        assert result.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5), weighting


def test_class_weighting_loss_on_balanced_classes_says_it_does_nothing_which_holds(tiny):
    """Equal class counts: every inverse-frequency weight is 1, so the run trains exactly as without weighting, and the
    log says so; with unequal counts it weights, and says nothing."""
    balanced, unequal = imbalanced(tiny["data"]["train"], [3, 3, 3, 3]), imbalanced(tiny["data"]["train"], [4, 3, 3, 3])
    options = {"strategy": "finetune", "epochs": 2, "batch_size": 4}
    for train, said in ((balanced, True), (unequal, False)):
        lines = []
        weighted = run_fit(tiny, make_model(tiny), train=train, class_weighting="loss", log=lines.append, **options)
        plain = run_fit(tiny, make_model(tiny), train=train, class_weighting="none", **options)
        same = strip(weighted.history) == strip(plain.history) and equal_states(weighted.best_state, plain.best_state)
        warned = [line for line in lines if line.startswith("warning: train.class_weighting: loss does nothing here: "
                                                            "every class has 3 training images")]
        assert same == said and bool(warned) == said, (train.labels.bincount(), lines)


class TinyNet(nn.Module):
    """A real, small classifier on channel means: fast enough for epochs over hundreds of images."""

    def __init__(self, classes=2):
        super().__init__()
        self.features = nn.Linear(3, 4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.features(x.mean(dim=(2, 3)))))


def record_training_inputs(model):
    """The inputs of every forward pass in train mode (the training steps; validation runs in eval mode)."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()) if module.training else None)
    return seen


PLAIN = Preprocessing(8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalised input = pixel / 255


def fit_tiny_net(train, val, **options):
    """Train a TinyNet; return the images it saw in its training steps, in order."""
    torch.manual_seed(0)
    model = TinyNet(int(train.labels.max()) + 1)
    seen = record_training_inputs(model)
    opts = TrainOptions.from_dict({"epochs": 1, "batch_size": 100, "lr": 0.01, "device": "cpu", **options})
    fit(model, train, val, PLAIN, opts, num_classes=int(train.labels.max()) + 1, log=lambda _: None)
    return torch.cat(seen)


def test_an_epoch_never_ends_on_a_batch_of_one_image(tiny):
    """25 training images at batch_size 8 (or 32 at 31): the lone last image joins the batch before it, for
    BatchNorm cannot train on one image ("Expected more than 1 value per channel", the job stopped), and every
    image is still trained on once an epoch; the learning-rate schedule counts the steps taken."""
    full = tiny["data"]["train"]
    for train, batch_size, sizes in ((Data(full.images[:25], full.labels[:25]), 8, [8, 8, 9]),
                                     (full, len(full.labels) - 1, [len(full.labels)])):
        model = make_model(tiny)
        seen = record_training_inputs(model)
        result = run_fit(tiny, model, train=train, batch_size=batch_size, strategy="finetune", schedule="cosine",
                         warmup_epochs=0)
        assert [len(x) for x in seen] == sizes * 2  # two epochs
        for epoch in range(2):  # each (distinct) image once an epoch: as many different inputs as images
            shown = torch.cat(seen[epoch * len(sizes):(epoch + 1) * len(sizes)])
            assert len({tuple(x.flatten()[::7].tolist()) for x in shown}) == len(train.labels)
        assert all(math.isfinite(row["train_loss"]) for row in result.history)
        # cosine over the steps taken (history: the lr of each epoch's last step)
        steps = len(sizes)
        assert [row["lr"] for row in result.history] == pytest.approx(
            [0.01 * lr_factor(steps - 1, 2 * steps, 0, "cosine"), 0.01 * lr_factor(2 * steps - 1, 2 * steps, 0, "cosine")])


def test_batchnorm_that_would_train_on_one_image_is_refused_naming_the_keys(tiny):
    """batch_size 1 with BatchNorm layers in train mode stopped the job deep in torch; now it is refused
    before the first step, naming the keys that fix it. With bn: frozen, or the head alone
    (feature_extract), batch_size 1 trains."""
    from finetune.errors import ConfigError

    model = make_model(tiny)
    before = snapshot(model)
    with pytest.raises(ConfigError, match=r"train\.batch_size: 1 gives BatchNorm batches of 1 image, and BatchNorm cannot "
                                          r"train on one image \(strategy finetune, bn auto\): use a batch_size of 2 or more, "
                                          r"or bn: frozen"):
        run_fit(tiny, model, batch_size=1, strategy="finetune", epochs=1)
    assert equal_states(before, snapshot(model))  # nothing trained
    for options in ({"strategy": "finetune", "bn": "frozen"}, {"strategy": "feature_extract", "cache_features": False}):
        result = run_fit(tiny, make_model(tiny), batch_size=1, epochs=1, **options)
        assert math.isfinite(result.history[0]["train_loss"]), options


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_last_batch_too_small_for_batchnorm_s_processes_is_named_as_the_last_batch(device):
    """27 training images at batch_size 8 over 2 processes: batches of 8, 8, 8 and 3 (counted here), the last split 2 + 1,
    so one process's BatchNorm would train on one image. The refusal said the batch_size gave batches of one a process
    and to use 2 or more a process (8 already gives 4), and offered sync_batchnorm on the CPU, where it is refused."""
    from torch import nn

    from finetune.distributed import Ranks
    from finetune.errors import ConfigError
    from finetune.training import _check_batchnorm_batches

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sizes = [8] * (27 // 8) + [27 % 8]
    assert sizes[-1] == 3 and sizes[-1] // 2 == 1
    opts = TrainOptions(strategy="finetune", batch_size=8, devices=2, device=device)
    with pytest.raises(ConfigError) as refused:
        _check_batchnorm_batches(model, 27, opts, Ranks(world=2))
    said = str(refused.value)
    assert ("batch_size: 8 leaves a last batch of 3 image(s) (27 training images), which gives BatchNorm 1 image per "
            "process (2 processes, sync_batchnorm off)") in said, said
    assert "use a batch_size that leaves at least 4 images (or none) for the last batch" in said, said
    assert ("sync_batchnorm: true" in said) == (device == "cuda"), said
    _check_batchnorm_batches(model, 28, opts, Ranks(world=2))  # 8, 8, 8, 4: two images a process


def test_class_weighting_sampler_shows_the_model_balanced_classes():
    # 90% class 0, 10% class 1; every pixel of an image says its label (0 or 255).
    labels = torch.tensor([0] * 540 + [1] * 60)
    images = (labels * 255).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()
    train, val = Data(images, labels), Data(images[::100], labels[::100])
    shares = {}
    for weighting in ("sampler", "none"):
        seen = fit_tiny_net(train, val, class_weighting=weighting)
        assert len(seen) == 600, "one epoch shows as many images as the training split has"
        shares[weighting] = int((seen.mean(dim=(1, 2, 3)) > 0.5).sum()) / len(seen)
    assert shares["none"] == 60 / 600  # each image once: the natural ratio
    assert 0.4 <= shares["sampler"] <= 0.6, shares  # balanced: 0.5, give or take 5 standard deviations (0.02)


# --------------------------------------------------------------------------- augmentation

def crops_and_flips(image, size, min_area):
    """Every crop of ``image`` (whole pixels) covering at least ``min_area`` of it, resized to ``size`` x ``size``
    bilinearly without antialiasing (torch's interpolate on the cropped region), and its mirror image; float."""
    _, h, w = image.shape
    candidates = []
    for ch in range(1, h + 1):
        for cw in range(1, w + 1):
            if ch * cw < min_area * h * w:
                continue
            for top in range(h - ch + 1):
                for left in range(w - cw + 1):
                    crop = F.resized_crop(image.float(), top, left, ch, cw, [size, size], antialias=False)
                    candidates += [crop, crop.flip(-1)]
    return torch.stack(candidates)


def matches_one_of(x, candidates, atol=1e-3):
    return bool(((candidates - x).abs().flatten(1).amax(1) <= atol).any())


def test_augment_shows_the_model_random_crops_and_flips_of_the_training_images():
    generator = torch.Generator().manual_seed(0)
    n = 6
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    images[:, 2] = (40 * torch.arange(n, dtype=torch.uint8)).view(n, 1, 1)  # channel 2 names the image
    labels = torch.arange(n) % 2
    train, val = Data(images, labels), Data(images[:2], labels[:2])
    plain = fit_tiny_net(train, val, epochs=2, batch_size=3)
    augmented = fit_tiny_net(train, val, epochs=2, batch_size=3, augment=True)
    assert len(plain) == len(augmented) == 2 * n
    as_pixels = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    assert {as_pixels(x).numpy().tobytes() for x in plain} == {image.numpy().tobytes() for image in images}

    # Each image seen is a resized crop (of at least ~1/3 of the image, as promised 0.35-1), possibly mirrored, of
    # its training image, and most are not the training image itself.
    candidates = {}
    unchanged = 0
    for x in augmented:
        x = x * 255
        index = int(x[2, 0, 0].round()) // 40
        assert torch.allclose(x[2], torch.tensor(40.0 * index), atol=1e-3), "the naming channel is constant"
        if index not in candidates:
            candidates[index] = crops_and_flips(images[index], 8, min_area=0.3)
        assert matches_one_of(x, candidates[index]), "not a crop and flip of its training image"
        unchanged += torch.allclose(x, images[index].float(), atol=1e-3)
    assert unchanged <= len(augmented) // 2


def test_augment_crops_from_the_stored_squares_margin_and_resizes_to_the_crop_size():
    """Stored squares larger than the crop (the decode stage keeps the resize size): every augmented image is a
    whole-pixel crop of its square of at least 0.35 of its area (up to rounding), resized to the crop size, some
    mirrored; the crops reach into the margin outside the centre crop."""
    squares = torch.randint(0, 256, (12, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    out = augment_batch(squares, 8, torch.Generator().manual_seed(4))
    assert out.shape == (12, 3, 8, 8) and out.dtype == torch.float32
    for image, seen in zip(squares, out):
        assert matches_one_of(seen, crops_and_flips(image, 8, min_area=0.3))
    centre = squares[:, :, 1:9, 1:9].float()
    assert not any(torch.allclose(seen, c) for seen, c in zip(out, centre))


@pytest.mark.parametrize("h, w", [(40, 40), (12, 40), (40, 12)])
def test_augment_draws_its_boxes_as_torchvisions_random_resized_crop(h, w):
    """The boxes' area shares against torchvision's own RandomResizedCrop.get_params (same scale and ratio), 20,000
    each: the same mean and the same share of near-whole crops (a box too large for the image is drawn again, not
    clamped to it, which made whole-image crops rarer and the mean larger); every box inside the image, of an
    aspect in range up to whole-pixel rounding."""
    import numpy as np
    from torchvision.transforms import RandomResizedCrop

    from finetune.augment import AUGMENT_RATIO, AUGMENT_SCALE, _crop_boxes

    n = 20_000
    top, left, height, width, flip = _crop_boxes(n, h, w, torch.Generator().manual_seed(0))
    ours = (height * width / (h * w)).numpy()
    torch.manual_seed(0)
    boxes = [RandomResizedCrop.get_params(torch.zeros(1, h, w), AUGMENT_SCALE, AUGMENT_RATIO) for _ in range(n)]
    theirs = np.array([bh * bw / (h * w) for _, _, bh, bw in boxes])
    assert abs(ours.mean() - theirs.mean()) < 0.01, (ours.mean(), theirs.mean())  # standard error ~0.002
    assert abs((ours >= 0.95).mean() - (theirs >= 0.95).mean()) < 0.01, ((ours >= 0.95).mean(), (theirs >= 0.95).mean())
    # boxes as wide or as high as the image fit (drawn, not redrawn), as often as torchvision's
    for mine, side, index in ((width, w, 3), (height, h, 2)):
        share, their_share = (mine == side).double().mean().item(), np.mean([box[index] == side for box in boxes])
        assert abs(share - their_share) < 0.01, (share, their_share)
    # and lie where torchvision's lie, on average: a box that never fits (a tall image's) falls back to the centre
    for mine, index in ((top, 0), (left, 1)):
        assert abs(mine.double().mean().item() - np.mean([box[index] for box in boxes])) < 0.3
    assert bool(((top >= 0) & (left >= 0) & (top + height <= h) & (left + width <= w)).all())
    assert bool(((width + 0.5) / (height - 0.5) >= AUGMENT_RATIO[0]).all() and
                ((width - 0.5) / (height + 0.5) <= AUGMENT_RATIO[1]).all())
    assert abs(flip.double().mean().item() - 0.5) < 0.02
    # a box's offset is uniform over every place it fits, the last one included (torchvision's randint(0, room + 1))
    for offset, room in ((top, h - height), (left, w - width)):
        fits = room > 0
        assert bool((offset[fits] == room[fits]).any()) and bool((offset[fits] == 0).any())
        one = room == 1
        if one.sum() > 100:  # two places: each half the time
            assert abs((offset[one] == 1).double().mean().item() - 0.5) < 0.1


def test_augment_turns_feature_caching_off_and_the_backbone_sees_augmented_images(tiny):
    model = make_model(tiny)
    seen = record_training_inputs(model)
    result = run_fit(tiny, model, strategy="feature_extract", epochs=1, augment=True)
    assert not result.used_cached_features
    train = tiny["data"]["train"]
    assert len(torch.cat(seen)) == len(train.labels), "the whole model runs on every training image"
    mean = torch.tensor(tiny["prep"].mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny["prep"].std).view(1, 3, 1, 1)
    originals = (train.images.float() / 255 - mean) / std
    exact = sum(bool((originals == x).flatten(1).all(1).any()) for x in torch.cat(seen))
    assert exact <= len(train.labels) // 2, "most images seen must be transformed"


def test_augment_batch_draws_only_from_its_generator():
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    global_state = torch.get_rng_state()
    a = augment_batch(images, 12, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), global_state), "augment_batch drew from torch's global RNG"
    torch.manual_seed(123)
    assert torch.equal(augment_batch(images, 12, torch.Generator().manual_seed(7)), a)
    assert not torch.equal(augment_batch(images, 12, torch.Generator().manual_seed(8)), a)


AUGMENTED = {"strategy": "finetune", "augment": True, "epochs": 3, "lr": 0.001}


def test_augment_is_deterministic_per_seed(tiny):
    """The same seed gives the same run whatever torch's global RNG (disturbed differently here); another, another."""
    options = {**AUGMENTED, "epochs": 2}
    models = [make_model(tiny) for _ in range(3)]
    a = run_fit(tiny, models[0], seed=5, global_seed=1, **options)
    b = run_fit(tiny, models[1], seed=5, global_seed=2, **options)
    c = run_fit(tiny, models[2], seed=6, global_seed=1, **options)
    assert strip(a.history) == strip(b.history)
    assert equal_states(snapshot(models[0]), snapshot(models[1]))
    assert [r["train_loss"] for r in c.history] != [r["train_loss"] for r in a.history]
    assert not equal_states(snapshot(models[0]), snapshot(models[2]))


def test_augment_resumes_as_the_same_run(tiny, tmp_path):
    reference_model = make_model(tiny)
    reference = run_fit(tiny, reference_model, **AUGMENTED)
    resume = tmp_path / "resume.pt"
    saved = interrupted_in_epoch_3(tiny, resume, **AUGMENTED)
    assert saved["epoch"] == 1
    old_format = {k: v for k, v in saved.items() if k != "augment"}  # as written before augment had its generator

    lines = []
    resumed_model = make_model(tiny)
    resumed = run_fit(tiny, resumed_model, log=lines.append, resume_path=resume, global_seed=7, **AUGMENTED)
    assert any(line.startswith("resuming from") for line in lines)
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    assert equal_states(resumed.best_state, reference.best_state)
    assert equal_states(snapshot(resumed_model), snapshot(reference_model))

    # A resume state without the augmentation generator's state still resumes, with a warning.
    torch.save(old_format, resume)
    lines = []
    old = run_fit(tiny, make_model(tiny), log=lines.append, resume_path=resume, **AUGMENTED)
    assert any("holds no augmentation generator state" in line for line in lines)
    assert strip(old.history[:2]) == strip(reference.history[:2]) and len(old.history) == 3


# --------------------------------------------------------------------------- resume after SIGKILL

def train_command(tiny_run, out: Path, epochs: int) -> list[str]:
    options = {"strategy": "finetune", "epochs": epochs, "batch_size": 8, "lr": 0.001, "seed": 0, "device": "cpu"}
    return [
        sys.executable, str(REPO / "workflow/scripts/train.py"),
        "--split", str(tiny_run / "resources/splits/target.csv"),
        "--manifest", str(tiny_run / "resources/weights/manifest.json"),
        "--options", json.dumps(options),
        "--out-checkpoint", str(out / "model.pt"), "--out-history", str(out / "history.csv"),
        "--out-info", str(out / "train_info.json"), "--resume-dir", str(out / "resume"), "--threads", "1",
    ]


def run_to_end(cmd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout
    return result.stdout


@pytest.mark.slow
def test_cached_features_are_not_read_by_other_code(tiny_run, tmp_path):
    """The feature cache outlives a job, and an upgrade or an edit of the package must not read features that
    other code computed: the same train job run from a copy of src/ whose features.py differs (by a comment)
    computes them again, while the unchanged code reads its own."""
    other_src = tmp_path / "other" / "src"
    shutil.copytree(REPO / "src", other_src, ignore=shutil.ignore_patterns("__pycache__"))
    features_py = other_src / "finetune" / "features.py"
    features_py.write_text(features_py.read_text() + "\n# another version\n")
    options = {"strategy": "feature_extract", "epochs": 1, "batch_size": 8, "lr": 0.01, "seed": 0, "device": "cpu"}

    def train(src: Path, name: str) -> str:
        command = train_command(tiny_run, tmp_path / name, 1)
        command[command.index("--options") + 1] = json.dumps(options)
        decoded = tiny_run / "resources/decoded/target/native"
        command += ["--feature-cache-dir", str(tmp_path / "features"),
                    "--decoded", str(decoded / "images.npy"), str(decoded / "info.json")]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(src)})
        assert result.returncode == 0, result.stdout
        return result.stdout

    assert "backbone features computed once" in train(REPO / "src", "first")
    assert "read from cache" in train(REPO / "src", "again")
    assert "backbone features computed once" in train(other_src, "other_code")
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2


@pytest.mark.slow
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tiny_run, tmp_path):
    epochs = 4
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_to_end(train_command(tiny_run, reference, epochs))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(train_command(tiny_run, resumed, epochs), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    resume_dir = resumed / "resume"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(resume_dir.glob("*.pt")):
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)  # a walltime kill, a laptop lid: no chance to clean up
    proc.wait()
    assert not (resumed / "model.pt").exists()
    assert len(list(resume_dir.glob("*.pt"))) == 1

    output = run_to_end(train_command(tiny_run, resumed, epochs))
    assert "resuming from" in output
    assert [p.name.endswith(".done.pt") for p in resume_dir.glob("*.pt")] == [True], \
        "after success only the finished state is left (Snakemake's onsuccess removes it)"

    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    expected = pd.read_csv(reference / "history.csv")[columns]
    actual = pd.read_csv(resumed / "history.csv")[columns]
    pd.testing.assert_frame_equal(actual, expected)
    a = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_input_size_probe_changes_nothing_and_names_what_the_model_refuses():
    from finetune.models import build_architecture, input_size_error

    model = build_architecture("resnet18", 4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert input_size_error(model, 32) is None
    assert model.training, "the probe left the model in eval mode"
    assert torch.equal(torch.get_rng_state(), rng), "the probe drew random numbers: training would change"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the probe moved a weight or buffer"
    # torchvision's ViT takes its one image size only; the probe returns the model's own reason.
    vit = build_architecture("vit_b_16", 4)
    with pytest.raises(AssertionError) as refused:
        vit(torch.zeros(1, 3, 64, 64))
    assert input_size_error(vit, 64) == str(refused.value)


def test_train_info_records_when_the_fit_and_its_epochs_ran(tiny_run, tmp_path):
    """fit_window_unix_s spans the whole fit, epochs_window_unix_s its epochs (bench.py --gpu --dag counts GPU
    samples in them): both lie inside the job as the test's own clock saw it, the epochs inside the fit, and the
    epochs' span is the time history.csv records for them, plus what follows the last row (its resume state
    written, the best weights kept: seconds at most)."""
    before = time.time()
    run_to_end(train_command(tiny_run, tmp_path, 2))
    after = time.time()
    info = json.loads((tmp_path / "train_info.json").read_text())
    fit_window, epochs_window = info["fit_window_unix_s"], info["epochs_window_unix_s"]
    assert before <= fit_window[0] <= epochs_window[0] <= epochs_window[1] <= fit_window[1] <= after + 0.001
    elapsed = pd.read_csv(tmp_path / "history.csv")["elapsed_s"].iloc[-1]
    assert elapsed - 0.01 <= epochs_window[1] - epochs_window[0] <= elapsed + 5, (epochs_window, elapsed)
