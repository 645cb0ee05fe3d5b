"""Training strategies, schedules, cached features and resume, on tiny real Fashion-MNIST data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from finetune.models import build_target_model, find_output_layer, strip_output_layer
from finetune.stages import load_split_tensors
from finetune.tensors import Preprocessing, batched_forward
from finetune.training import TrainOptions, fit, lr_factor
from finetune.weights import load_state_dict, read_manifest
from helpers import REPO

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


def run_fit(tiny, model, log=lambda _: None, resume_path=None, **options):
    opts = TrainOptions.from_dict({"epochs": 2, "batch_size": 8, "lr": 0.01, **options})
    torch.manual_seed(0)
    return fit(model, tiny["data"]["train"], tiny["data"]["val"], tiny["prep"], opts,
               num_classes=len(tiny["classes"]), log=log, resume_path=resume_path)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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


def test_cached_features_match_the_uncached_loop(tiny):
    cached = run_fit(tiny, make_model(tiny), strategy="feature_extract", epochs=3, cache_features=True)
    plain = run_fit(tiny, make_model(tiny), strategy="feature_extract", epochs=3, cache_features=False)
    assert cached.used_cached_features and not plain.used_cached_features
    n_val = len(tiny["data"]["val"].labels)
    for a, b in zip(cached.history, plain.history):
        assert abs(a["val_accuracy"] - b["val_accuracy"]) * n_val <= 1, "more than one validation image differs"
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


@pytest.mark.parametrize("optimizer", [{"optimizer": "adamw"}, {"optimizer": "lbfgs", "lr": 1.0, "weight_decay": 0.1}],
                         ids=["adamw", "lbfgs"])
def test_cached_features_resume_keeps_only_the_head_and_continues_the_same_run(tiny, tmp_path, optimizer):
    options = {"strategy": "feature_extract", "epochs": 4, "cache_features": True, **optimizer}
    reference = run_fit(tiny, make_model(tiny), **options)

    class Interrupted(Exception):
        pass

    def interrupt_in_epoch_3(line):
        if line.startswith("epoch 3/"):
            raise Interrupted

    resume = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        run_fit(tiny, make_model(tiny), log=interrupt_in_epoch_3, resume_path=resume, **options)
    saved = torch.load(resume, weights_only=False)
    assert saved["epoch"] == 1 and set(saved["model"]) == {"weight", "bias"}, "only the head is resume state"
    assert resume.stat().st_size < 1_000_000, "the head and its optimizer state, not the ~45 MB model"

    lines = []
    resumed = run_fit(tiny, make_model(tiny), log=lines.append, resume_path=resume, **options)
    assert any(line.startswith("resuming from") for line in lines)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("img_per_s", "elapsed_s")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    assert set(resumed.best_state) == set(reference.best_state), "the checkpoint is the whole model"
    for key, value in reference.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key


def test_lbfgs_solves_the_regularised_head_problem(tiny, tmp_path):
    """Full-batch L-BFGS on cached features minimises cross-entropy + wd/2 ||W||^2 over the head only."""
    wd = 0.1
    model = make_model(tiny)
    before = snapshot(model)
    resume = tmp_path / "resume.pt"  # holds the head after the last epoch (best_state: the best by val)
    result = run_fit(tiny, model, strategy="feature_extract", optimizer="lbfgs", lr=1.0, weight_decay=wd, epochs=8,
                     resume_path=resume)
    assert result.used_cached_features and len(result.history) == 8
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
    last = torch.load(resume, weights_only=False)["model"]
    assert gradient_norm(last["weight"], last["bias"]) < 1e-3


@pytest.mark.parametrize("options", [
    {"optimizer": "sgd", "schedule": "onecycle", "label_smoothing": 0.1},
    {"class_weighting": "sampler", "early_stopping_patience": 1, "metric": "val_loss", "epochs": 3},
    {"class_weighting": "loss", "augment": True, "warmup_epochs": 1, "schedule": "constant"},
])
def test_optimisation_options_train(tiny, options):
    result = run_fit(tiny, make_model(tiny), strategy="finetune", **options)
    assert 1 <= len(result.history) <= options.get("epochs", 2)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


def test_same_seed_same_history(tiny):
    a = run_fit(tiny, make_model(tiny), strategy="finetune", seed=3)
    b = run_fit(tiny, make_model(tiny), strategy="finetune", seed=3)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("img_per_s", "elapsed_s")} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0
    peak = max(lr_factor(s, 100, 0, "onecycle") for s in range(100))
    assert peak == pytest.approx(1.0) and lr_factor(0, 100, 0, "onecycle") == pytest.approx(1 / 25)


# --------------------------------------------------------------------------- resume after SIGKILL

def train_command(tiny_run, out: Path, epochs: int) -> list[str]:
    options = {"strategy": "finetune", "epochs": epochs, "batch_size": 8, "lr": 0.001, "seed": 0}
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
    assert not list(resume_dir.glob("*.pt")), "resume state must be cleaned up after success"

    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    expected = pd.read_csv(reference / "history.csv")[columns]
    actual = pd.read_csv(resumed / "history.csv")[columns]
    pd.testing.assert_frame_equal(actual, expected)
    a = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
