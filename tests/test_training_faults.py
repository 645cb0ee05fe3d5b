"""Faults during training (issue 5): a diverging loss, out of memory, SIGTERM/SIGINT, a write that fails
mid-file. Each through the real train script (out of memory: the real training loop), checking the
message, the exit status, and that the earlier checkpoint or resume state is still there, byte for byte."""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from finetune.errors import TrainingError
from finetune.tensors import Data, Preprocessing
from finetune.training import TrainOptions, fit

from faults import assert_same_state, decode_split, snapshot, split_and_weights, start_script, train_args
from helpers import REPO, run_script

OPTIONS = {"epochs": 1, "batch_size": 4, "lr": 0.001, "device": "cpu", "schedule": "constant"}
FILE_SIZE_LIMIT = 1 << 20  # 1 MiB: far below a resnet18 checkpoint (45 MB)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SimpleNamespace:
    """A split of 2 x 6 tiny images (8 train: 2 steps an epoch) and random-init resnet18 weights with their manifest."""
    return split_and_weights(tmp_path_factory.mktemp("inputs"), 6)


@pytest.fixture(scope="module")
def earlier_run(inputs, tmp_path_factory) -> Path:
    """An earlier good result of the train script: model.pt, history.csv, train_info.json."""
    out = tmp_path_factory.mktemp("earlier")
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, OPTIONS))
    assert result.returncode == 0, result.stdout
    return out


@pytest.fixture
def out(earlier_run, tmp_path) -> Path:
    """A private copy of the earlier result, for a run that writes the same outputs and must fail."""
    destination = tmp_path / "run"
    shutil.copytree(earlier_run, destination)
    return destination


def error_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(("error: ", "stopped by ")))


def limit_file_size():
    """preexec_fn: the child may write no file beyond FILE_SIZE_LIMIT bytes; a longer write fails
    with EFBIG mid-file, as on a full disk (Python ignores SIGXFSZ, so the write returns the error)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def resume_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def wait_for(predicate, process, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- diverging loss

@pytest.mark.slow
def test_loss_nan_stops_with_epoch_and_step(inputs, out):
    before = snapshot(out)
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, {**OPTIONS, "lr": 1e30}))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    message = error_line(result.stdout)
    assert re.search(r"loss became (nan|inf|-inf) at epoch 1, step \d+: training diverged; lower train\.lr "
                     r"\(now 1e\+30\)", message), message
    assert snapshot(out) == before, "the earlier checkpoint must stay as it was"
    # The lr an experiment sets (the workflow says so with --key-names): the message names the key written.
    names = {"lr": "experiments.div.lr", "on_divergence": "experiments.div.on_divergence"}
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, {**OPTIONS, "lr": 1e30}),
                        "--key-names", json.dumps(names))
    message = error_line(result.stdout)
    assert result.returncode == 1 and "training diverged; lower experiments.div.lr (now 1e+30) or use train.warmup_epochs " \
        "(experiments.div.on_divergence: stop keeps" in message, message


@pytest.mark.slow
def test_loss_nan_in_a_later_epoch_keeps_the_last_good_resume_state(inputs, tmp_path):
    """Epoch 1 trains the head at a sane lr; epoch 2 unfreezes the backbone at lr 1e30 and diverges.
    The resume state of epoch 1 stays, intact and finite."""
    options = {**OPTIONS, "epochs": 3, "strategy": "gradual", "unfreeze_epoch": 1, "backbone_lr_factor": 1e33}
    resume = tmp_path / "resume"
    result = run_script("train", *train_args(inputs.split, inputs.manifest, tmp_path / "run", options, resume))
    assert result.returncode == 1, result.stdout
    message = error_line(result.stdout)
    [state_file] = resume_files(resume)
    assert re.search(r"loss became (nan|inf|-inf) at epoch 2, step \d+", message), message
    assert f"Last good state: resume state of epoch 1 kept in {state_file}" in message
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_on_divergence_stop_ends_the_run_with_the_epochs_before_it(inputs, tmp_path):
    """The same run as above with on_divergence: stop: the job succeeds, and its model is exactly the weights
    that epoch 1 left, as the failing run's epoch-1 resume state holds them (the run is deterministic on the CPU).
    train_info.json says where it diverged; the history holds epoch 1 only."""
    options = {**OPTIONS, "epochs": 3, "strategy": "gradual", "unfreeze_epoch": 1, "backbone_lr_factor": 1e33}
    resume = tmp_path / "resume"
    failed = run_script("train", *train_args(inputs.split, inputs.manifest, tmp_path / "failed", options, resume))
    assert failed.returncode == 1 and "train.on_divergence: stop keeps the best epoch" in failed.stdout, failed.stdout
    epoch_1 = torch.load(resume_files(resume)[0], map_location="cpu", weights_only=False)["model"]

    run = tmp_path / "run"
    args = train_args(inputs.split, inputs.manifest, run, {**options, "on_divergence": "stop"}, tmp_path / "resume_stop")
    result = run_script("train", *args)
    assert result.returncode == 0, result.stdout
    assert re.search(r"loss became (nan|inf|-inf) at epoch 2, step \d+: training diverged; the run ends with the best "
                     r"of its 1 epoch\(s\) done", result.stdout), result.stdout
    model = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert_same_state(model, epoch_1)
    info = json.loads((run / "train_info.json").read_text())
    assert re.fullmatch(r"loss became (nan|inf|-inf) at epoch 2, step \d+", info["diverged"]), info["diverged"]
    assert info["epochs_run"] == info["best_epoch"] == 1 and len(pd.read_csv(run / "history.csv")) == 1
    # Its outputs removed after it ended (a TIMEOUT at the walltime's edge): written again from its finished state,
    # as they were, the divergence included, without training the diverging epoch again.
    for path in run.iterdir():
        path.unlink()
    again = run_script("train", *args)
    assert again.returncode == 0, again.stdout
    assert "the run had ended after 1 epoch(s); writing its outputs" in again.stdout and "diverged" not in again.stdout
    assert json.loads((run / "train_info.json").read_text())["diverged"] == info["diverged"]
    rewritten = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(rewritten[k], epoch_1[k]) for k in model)


@pytest.mark.slow
def test_on_divergence_stop_still_fails_where_no_epoch_was_done(inputs, out):
    before = snapshot(out)
    options = {**OPTIONS, "lr": 1e30, "on_divergence": "stop"}
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, options))
    assert result.returncode == 1, result.stdout
    message = error_line(result.stdout)
    assert re.search(r"loss became (nan|inf|-inf) at epoch 1, step \d+: .*on_divergence is stop, but no epoch was "
                     r"done before it", message), message
    assert snapshot(out) == before


def invert_an_image(split: Path) -> None:
    """Edit the split file's first image in place: its pixels inverted, its size and format kept."""
    from PIL import Image

    image = Path(pd.read_csv(split)["path"].iloc[0])
    Image.fromarray(255 - np.asarray(Image.open(image).convert("RGB"))).save(image)


@pytest.mark.slow
def test_a_resume_state_of_pixels_decoded_before_is_not_resumed(tmp_path):
    """A run stopped (here: diverged at epoch 2, its epoch-1 state kept) resumes while its decoded images are the
    same file; once the decode has run again (an image edited in place and --forcerun split), the state holds a
    run of the old pixels and the run starts afresh. So it does where the pixels decoded anew from an edited image
    are in a file given the old one's size and time (a copy that keeps times, ``cp -a`` or rsync, of another
    decode): the record's sha256, which holds the pixels' own, tells them apart."""
    own = split_and_weights(tmp_path / "inputs", 6)  # its own images, to edit
    npy, info = decode_split(own.split, tmp_path / "decoded")
    options = {**OPTIONS, "epochs": 3, "strategy": "gradual", "unfreeze_epoch": 1, "backbone_lr_factor": 1e33}
    resume = tmp_path / "resume"

    def train():
        args = train_args(own.split, own.manifest, tmp_path / "run", options, resume)
        result = run_script("train", *args, "--decoded", str(npy), str(info))
        assert result.returncode == 1 and "training diverged" in result.stdout, result.stdout
        return result.stdout

    assert "resuming from" not in train()
    assert f"resuming from {resume_files(resume)[0]}" in train(), "the same pixels: the stopped run goes on"
    time.sleep(0.01)
    decode_split(own.split, tmp_path / "decoded")  # the decode run again
    assert "resuming from" not in train(), "a state of the pixels decoded before was resumed"

    written = npy.stat()
    invert_an_image(own.split)
    decode_split(own.split, tmp_path / "decoded")
    os.utime(npy, ns=(written.st_atime_ns, written.st_mtime_ns))
    assert (npy.stat().st_size, npy.stat().st_mtime_ns) == (written.st_size, written.st_mtime_ns)
    assert "resuming from" not in train(), "a state of other pixels in a file of the same size and time was resumed"


@pytest.mark.slow
def test_a_scratch_run_keeps_no_features_for_another_seed_to_read(inputs, tmp_path):
    """The scratch control's backbone is random, drawn from its seed: features it computed would be another
    seed's wrong ones. Given the feature cache folder the workflow gives every train job, a scratch
    feature_extract run keeps nothing there, and the second seed trains exactly as it does with no cache at all."""
    npy, info = decode_split(inputs.split, tmp_path / "decoded")
    cache = tmp_path / "features"

    def train(seed: int, out: Path, *cached: str):
        options = {**OPTIONS, "strategy": "feature_extract", "cache_features": True, "epochs": 2, "seed": seed}
        result = run_script("train", *train_args(inputs.split, inputs.manifest, out, options), "--scratch",
                            "--decoded", str(npy), str(info), *cached)
        assert result.returncode == 0, result.stdout
        return torch.load(out / "model.pt", weights_only=True)["state_dict"]

    train(0, tmp_path / "seed0", "--feature-cache-dir", str(cache))
    shared = train(1, tmp_path / "seed1", "--feature-cache-dir", str(cache))
    alone = train(1, tmp_path / "seed1-alone")
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.iterdir())
    assert_same_state(shared, alone)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["pixels", "normalisation"])
def test_cached_features_of_other_pixels_or_normalisation_are_not_read(tmp_path, change):
    """The feature cache is shared by the jobs of a DAG (the seeds of a feature_extract run, lr_find) and outlives
    them: features computed from pixels decoded before (an image edited in place, decoded again) or normalised
    otherwise (the same weights file, its preprocessing's mean and std changed) are not read, but computed again,
    and the run trains as one given no cache at all."""
    from finetune.weights import write_manifest

    own = split_and_weights(tmp_path / "inputs", 6)
    npy, info = decode_split(own.split, tmp_path / "decoded")
    cache = tmp_path / "features"
    options = {**OPTIONS, "strategy": "feature_extract", "cache_features": True, "epochs": 2}

    def train(out: Path, manifest: Path, *cached: str):
        result = run_script("train", *train_args(own.split, manifest, out, options), "--decoded", str(npy), str(info),
                            *cached)
        assert result.returncode == 0, result.stdout
        return result.stdout, torch.load(out / "model.pt", weights_only=True)["state_dict"]

    assert "backbone features computed once" in train(tmp_path / "first", own.manifest, "--feature-cache-dir", str(cache))[0]
    assert "read from cache" in train(tmp_path / "again", own.manifest, "--feature-cache-dir", str(cache))[0]
    manifest = own.manifest
    if change == "pixels":
        invert_an_image(own.split)
        decode_split(own.split, tmp_path / "decoded")
    else:
        first = json.loads(own.manifest.read_text())
        manifest = tmp_path / "inputs" / "weights" / "renormalised.json"  # beside the same weights file
        write_manifest(manifest, weights_file=tmp_path / "inputs" / "weights" / "weights.pth", arch="resnet18", num_classes=3, classes=[],
                       preprocessing={**first["preprocessing"], "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]},
                       sha256=first["sha256"], source={"kind": "test"})
    log, cached = train(tmp_path / "changed", manifest, "--feature-cache-dir", str(cache))
    assert "backbone features computed once" in log and "read from cache" not in log, log
    assert len(list(cache.glob("*.pt"))) == 2
    alone = train(tmp_path / "alone", manifest)[1]
    assert_same_state(cached, alone)


@pytest.mark.slow
def test_pretraining_on_pixels_decoded_anew_does_not_take_the_finished_state_of_the_old_ones(tmp_path):
    """Pretrain keeps its finished state after its outputs, to write them again should Snakemake remove them. The
    source's images decoded anew (an image edited in place, then the decode run again) are other pixels: the
    weights of the old ones are not written again from that state, pretraining runs afresh."""
    own = split_and_weights(tmp_path / "inputs", 6)
    npy, info = decode_split(own.split, tmp_path / "decoded", channel_stats_of="train")
    out, resume = tmp_path / "pretrain", tmp_path / "resume"

    def pretrain():
        result = run_script("pretrain", "--split", str(own.split), "--arch", "resnet18", "--image-size", "32",
                            "--options", json.dumps({**OPTIONS, "epochs": 1}), "--out-weights", str(out / "model.pth"),
                            "--out-info", str(out / "info.json"), "--out-history", str(out / "history.csv"),
                            "--resume-dir", str(resume), "--decoded", str(npy), str(info))
        assert result.returncode == 0, result.stdout
        for path in out.iterdir():  # as Snakemake removes the outputs of a job it then calls failed
            path.unlink()
        return result.stdout

    assert re.search(r"^epoch 1/1", pretrain(), re.M)
    assert "this run had ended" in pretrain(), "the same pixels: written again from the finished state"
    invert_an_image(own.split)
    decode_split(own.split, tmp_path / "decoded", channel_stats_of="train")
    again = pretrain()
    assert "this run had ended" not in again and re.search(r"^epoch 1/1", again, re.M), again


# --------------------------------------------------------------------------- a non-finite loss between two checks

class TripwireNet(nn.Module):
    """A small convnet whose loss becomes +inf on a batch holding a white image (normalised > 1.2) from its
    ``STEPS_PER_EPOCH + 1``-th training forward on (epoch 2) while ``armed``: the logit of the image's label (always
    1) becomes -inf. From then on it answers NaN, as a model whose weights that step filled with NaN.
    ``poisoned_steps``: the steps of epoch 2 (1-based) that saw the white image."""

    def __init__(self, armed: bool):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 4)
        self.armed, self.training_calls, self.poisoned_steps = armed, 0, []

    def forward(self, x):
        logits = self.fc(self.features(x))
        self.training_calls += self.training
        if not (self.armed and self.training and self.training_calls > STEPS_PER_EPOCH):
            return logits
        if self.poisoned_steps:
            return logits * torch.nan
        white = x.flatten(1).amax(1) > 1.2
        if white.any():
            self.poisoned_steps.append(self.training_calls - STEPS_PER_EPOCH)
        label_logit = logits[:, 1:2] - torch.where(white, torch.inf, 0.0)[:, None]
        return torch.cat([logits[:, :1], label_logit, logits[:, 2:]], dim=1)


N_TRAIN, BATCH, SEED = 80, 2, 3
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 40: more than one divergence check interval
TRIPWIRE_OPTIONS = {"strategy": "finetune", "epochs": 2, "batch_size": BATCH, "lr": 1e-3,
                    "device": "cpu", "seed": SEED, "schedule": "constant"}
TRIPWIRE_PREP = Preprocessing(resize_size=8, crop_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def tripwire_data(step_in_epoch_2: int):
    """Dark images (normalised <= 0) but one all-white image, placed in the ``step_in_epoch_2``-th batch (1-based)
    of epoch 2: the epochs' order is ``torch.randperm`` drawn from a generator seeded with ``seed``, one per epoch."""
    shuffle = torch.Generator().manual_seed(SEED)
    torch.randperm(N_TRAIN, generator=shuffle)  # epoch 1
    white = int(torch.randperm(N_TRAIN, generator=shuffle)[(step_in_epoch_2 - 1) * BATCH + 1])
    pixels = torch.Generator().manual_seed(0)
    images = torch.randint(0, 128, (N_TRAIN + 8, 3, 8, 8), dtype=torch.uint8, generator=pixels)
    images[white] = 255
    labels = torch.arange(N_TRAIN + 8) % 4
    labels[white] = 1
    return Data(images[:N_TRAIN], labels[:N_TRAIN]), Data(images[N_TRAIN:], labels[N_TRAIN:])


def fit_tripwire(armed: bool, step_in_epoch_2: int, resume_path=None, log=lambda _: None):
    train, val = tripwire_data(step_in_epoch_2)
    torch.manual_seed(0)
    model = TripwireNet(armed)
    result = fit(model, train, val, TRIPWIRE_PREP, TrainOptions.from_dict(TRIPWIRE_OPTIONS), num_classes=4,
                 resume_path=resume_path, log=log)
    return model, result


@pytest.mark.parametrize("step", [7, 35], ids=["first-interval", "second-interval"])
def test_the_first_non_finite_loss_between_two_checks_is_the_step_named(step):
    from finetune.stopping import DIVERGENCE_CHECK_STEPS

    assert step % DIVERGENCE_CHECK_STEPS not in (0, 1) and step < STEPS_PER_EPOCH, "the step lies inside an interval"
    model = TripwireNet(True)
    train, val = tripwire_data(step)
    with pytest.raises(TrainingError) as error:
        fit(model, train, val, TRIPWIRE_PREP, TrainOptions.from_dict(TRIPWIRE_OPTIONS), num_classes=4, log=lambda _: None)
    assert model.poisoned_steps[0] == step, "the data did not put the white image where the test meant it"
    assert model.training_calls > STEPS_PER_EPOCH + step, "the steps after the bad one ran (the loss is read in intervals)"
    assert str(error.value) == (f"loss became inf at epoch 2, step {step}: training diverged; lower train.lr "
                                "(now 0.001) or use train.warmup_epochs (train.on_divergence: stop keeps the best epoch before "
                                "it instead, where one is done). Last good state: none kept (no --resume-dir)")


def test_a_rerun_after_a_non_finite_loss_resumes_from_the_last_epoch_as_an_uninterrupted_run(tmp_path):
    """Epoch 2 diverges at step 7 and runs on to the check: none of those steps reaches the resume state; the
    rerun (the bright image now harmless) continues from epoch 1's state and ends as a run that never diverged."""
    resume = tmp_path / "resume.pt"
    with pytest.raises(TrainingError, match=r"at epoch 2, step 7: .* Last good state: resume state of epoch 1 kept in "):
        fit_tripwire(True, 7, resume)
    state = torch.load(resume, weights_only=False)
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state["best"]["state"].values() if v.is_floating_point())

    lines = []
    _, resumed = fit_tripwire(False, 7, resume, log=lines.append)
    _, reference = fit_tripwire(False, 7)
    assert f"resuming from {resume}: epoch 2 of 2" in lines
    strip = lambda history: [{k: v for k, v in r.items() if k not in ("img_per_s", "elapsed_s")} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    for key, value in reference.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key


class OverflowNet(TripwireNet):
    """Finite in training; in validation from epoch 2 on, logits of +inf and -inf, as weights grown until the
    outputs overflow (the training losses of such a run can stay finite: seen at SGD lr 100, train loss 1e19)."""

    def forward(self, x):
        logits = super().forward(x)
        if not self.training and self.training_calls > STEPS_PER_EPOCH:
            return logits * torch.inf
        return logits


def test_a_validation_loss_that_is_not_finite_stops_training_before_the_epoch_is_kept(tmp_path):
    resume = tmp_path / "resume.pt"
    train, val = tripwire_data(7)
    torch.manual_seed(0)
    model = OverflowNet(armed=False)
    with pytest.raises(TrainingError) as error:
        fit(model, train, val, TRIPWIRE_PREP, TrainOptions.from_dict(TRIPWIRE_OPTIONS), num_classes=4,
            resume_path=resume, log=lambda _: None)
    assert model.training_calls == 2 * STEPS_PER_EPOCH, "epoch 2 trained to its end, then validation overflowed"
    assert str(error.value) == (
        "validation loss became nan at epoch 2 (the model's outputs are no longer finite numbers): training diverged; "
        "lower train.lr (now 0.001) or use train.warmup_epochs (train.on_divergence: stop keeps the best epoch before it "
        f"instead, where one is done). Last good state: resume state of epoch 1 kept in {resume}")
    state = torch.load(resume, weights_only=False)
    assert state["epoch"] == 0 and len(state["history"]) == 1 and math.isfinite(state["history"][0]["val_loss"])


def test_on_divergence_stop_keeps_the_epoch_before_a_validation_loss_that_is_not_finite():
    """The same run with on_divergence: stop returns epoch 1's model, validated finite, and says where it stopped."""
    train, val = tripwire_data(7)
    torch.manual_seed(0)
    model = OverflowNet(armed=False)
    result = fit(model, train, val, TRIPWIRE_PREP, TrainOptions.from_dict({**TRIPWIRE_OPTIONS, "on_divergence": "stop"}),
                 num_classes=4, log=lambda _: None)
    assert model.training_calls == 2 * STEPS_PER_EPOCH
    assert result.diverged == "validation loss became nan at epoch 2 (the model's outputs are no longer finite numbers)"
    assert len(result.history) == 1 and result.best_epoch == 1 and math.isfinite(result.history[0]["val_loss"])
    assert all(torch.isfinite(v).all() for v in result.best_state.values() if v.is_floating_point())


# --------------------------------------------------------------------------- out of memory (the real loop)

class _RaiseOOMInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")


class OutOfMemoryNet(nn.Module):
    """A tiny real model that runs out of memory in one place, as a too-large batch does on a GPU."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.features = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if self.where == "forward" and self.training or self.where == "validation" and not self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        h = self.features(x).mean(dim=(2, 3))
        if self.where == "backward":
            h = _RaiseOOMInBackward.apply(h)
        return self.fc(h)


@pytest.mark.parametrize("where, phase", [
    ("forward", "training (epoch 1, step 1)"),
    ("backward", "training (epoch 1, step 1)"),
    ("validation", "evaluating the validation split (epoch 1)"),
])
def test_out_of_memory_suggests_a_smaller_batch(where, phase):
    from finetune.errors import TrainingError
    from finetune.tensors import Preprocessing
    from finetune.training import Data, TrainOptions, fit

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(16) % 2
    train, val = Data(images[:12], labels[:12]), Data(images[12:], labels[12:])
    prep = Preprocessing(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    opts = TrainOptions.from_dict({"epochs": 1, "batch_size": 8, "device": "cpu"})
    with pytest.raises(TrainingError) as caught:
        fit(OutOfMemoryNet(where), train, val, prep, opts, num_classes=2, log=lambda _: None)
    assert str(caught.value) == (
        f"out of memory on cpu while {phase} (train.batch_size 8): lower train.batch_size (e.g. 4) "
        "or the experiment's image_size"
    )
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


# --------------------------------------------------------------------------- SIGTERM / SIGINT, full disk, resume

def stopped_once_resumable(args, resume: Path, signum) -> tuple[subprocess.Popen, str]:
    """The train script run with ``args``, sent ``signum`` once its first resume state is in ``resume``: (the ended
    process, its output)."""
    process = start_script("train", *args)
    try:
        assert wait_for(lambda: resume_files(resume), process), process.communicate()[0]
        process.send_signal(signum)
        stdout, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    return process, stdout


@pytest.mark.slow
def test_sigterm_keeps_resume_state_a_full_disk_keeps_it_intact_and_a_rerun_resumes(inputs, tmp_path):
    options = {**OPTIONS, "epochs": 4}
    out, resume = tmp_path / "run", tmp_path / "resume"
    args = train_args(inputs.split, inputs.manifest, out, options, resume)

    # 1. SIGTERM once the first epoch's resume state is on disk: exit 143 at the next batch.
    process, stdout = stopped_once_resumable(args, resume, signal.SIGTERM)
    assert process.returncode == 143, stdout
    [state_file] = resume_files(resume)
    saved = torch.load(state_file, map_location="cpu", weights_only=False)
    done = len(saved["history"])
    assert 1 <= done < 4
    assert re.search(rf"stopped by SIGTERM at epoch {done + 1}, step \d+: resume state of epoch {done} kept in "
                     rf"{re.escape(str(state_file))}: a rerun continues with epoch {done + 1}", stdout), stdout
    assert not out.exists() or not (out / "model.pt").exists()
    kept = snapshot(resume)

    # 2. The rerun resumes, trains an epoch, and cannot write the next resume state (EFBIG mid-file):
    #    a clear error, and the previous resume state is byte-identical, with no partial file beside it.
    full = start_script("train", *args, preexec_fn=limit_file_size)
    stdout, _ = full.communicate(timeout=600)
    assert full.returncode == 1, stdout
    assert f"resuming from {state_file}: epoch {done + 1} of 4" in stdout
    message = error_line(stdout)
    assert message.startswith(f"error: cannot write {state_file}: File too large (errno 27)"), message
    assert "previous" in message and "unchanged" in message
    assert snapshot(resume) == kept

    # 3. With room to write again, the rerun resumes where step 1 stopped and finishes all 4 epochs.
    result = run_script("train", *args)
    assert result.returncode == 0, result.stdout
    assert f"resuming from {state_file}: epoch {done + 1} of 4" in result.stdout
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert json.loads((out / "train_info.json").read_text())["epochs_run"] == 4
    assert [p.name for p in resume_files(resume)] == [state_file.name.replace(".pt", ".done.pt")], \
        "once the outputs are written the resume state becomes the finished state (Snakemake's onsuccess removes it)"


@pytest.mark.slow
def test_sigint_stops_cleanly_and_a_damaged_resume_state_is_not_fatal(inputs, tmp_path):
    resume = tmp_path / "resume"
    args = train_args(inputs.split, inputs.manifest, tmp_path / "run", {**OPTIONS, "epochs": 4}, resume)
    process, stdout = stopped_once_resumable(args, resume, signal.SIGINT)
    assert process.returncode == 143, stdout
    assert "Traceback" not in stdout and "KeyboardInterrupt" not in stdout
    assert re.search(r"stopped by SIGINT at epoch \d, step \d+: resume state of epoch \d kept in ", stdout), stdout
    [state_file] = resume_files(resume)

    # The resume state is damaged afterwards (cut in half): the rerun says so and starts over.
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 2])
    result = run_script("train", *args)
    assert result.returncode == 0, result.stdout
    assert f"warning: resume state {state_file} is unreadable" in result.stdout
    assert "starting again from epoch 1" in result.stdout
    assert list(pd.read_csv(tmp_path / "run" / "history.csv")["epoch"]) == [1, 2, 3, 4]


@pytest.mark.slow
def test_full_disk_while_writing_the_checkpoint_keeps_the_previous_one(inputs, out):
    before = snapshot(out)
    process = start_script("train", *train_args(inputs.split, inputs.manifest, out, OPTIONS), preexec_fn=limit_file_size)
    stdout, _ = process.communicate(timeout=600)
    assert process.returncode == 1, stdout
    assert "Traceback" not in stdout
    message = error_line(stdout)
    assert message.startswith(f"error: cannot write {out / 'model.pt'}: File too large (errno 27)"), message
    assert "run alone, a previous model.pt is unchanged" in message
    assert snapshot(out) == before, "model.pt must be byte-identical, with no partial file beside it"


def test_results_folder_that_cannot_be_created_fails_before_training(inputs, tmp_path):
    """The results "folder" is a regular file (root ignores permissions, so this is the honest way to
    make a folder unwritable here): refused at start, naming it, not after the training."""
    blocker = tmp_path / "results"
    blocker.write_text("not a folder\n")
    result = run_script("train", *train_args(inputs.split, inputs.manifest, blocker / "exp", OPTIONS))
    assert result.returncode == 1, result.stdout
    assert error_line(result.stdout) == (
        f"error: cannot write {blocker / 'exp' / 'model.pt'}: {blocker} is a file, not a folder; "
        "move it away or choose another path"
    )
    assert "trainable parameters" not in result.stdout, "it must fail before training starts"
    assert blocker.read_text() == "not a folder\n"


def test_pretraining_s_messages_name_the_pretrain_train_keys():
    """The pretrain job's keys are pretrain.train.<key> (its script says so with name_keys), not train.<key>."""
    from finetune.options import name_keys
    from finetune.stopping import diverged

    name_keys(prefix="pretrain.train")
    try:
        message = str(diverged("loss became nan at epoch 1, step 2", TrainOptions.from_dict(OPTIONS), [], None))
    finally:
        name_keys()
    assert "training diverged; lower pretrain.train.lr (now 0.001) or use pretrain.train.warmup_epochs (pretrain.train.on_divergence: " \
        "stop keeps" in message, message
    assert "lower train.lr" in str(diverged("loss became nan", TrainOptions.from_dict(OPTIONS), [], None))
    # A warm-up already set: the advice is to lengthen it, not to add one.
    name_keys({"warmup_epochs": "experiments.dv.warmup_epochs"})
    try:
        message = str(diverged("loss became nan", TrainOptions.from_dict({**OPTIONS, "epochs": 3, "warmup_epochs": 2}), [], None))
    finally:
        name_keys()
    assert "lower train.lr (now 0.001) or raise experiments.dv.warmup_epochs (now 2) (" in message, message


@pytest.mark.slow
def test_a_scratch_run_normalised_anew_does_not_take_its_finished_state(inputs, tmp_path):
    """A scratch run (no weights, so no weights sha256 in its key) whose manifest brings another mean and std (the
    source's images changed, pretrain ran again) is another run: before, it found the finished state of the
    earlier normalisation and wrote its model again under the new preprocessing, training nothing."""
    out, resume = tmp_path / "run", tmp_path / "resume"
    first = run_script("train", *train_args(inputs.split, inputs.manifest, out, OPTIONS, resume), "--scratch")
    assert first.returncode == 0, first.stdout
    manifest = json.loads(inputs.manifest.read_text())
    manifest["preprocessing"] = {**manifest["preprocessing"], "mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2]}
    renormalised = inputs.manifest.parent / "renormalised.json"
    renormalised.write_text(json.dumps(manifest))
    for path in out.iterdir():  # as Snakemake removes the outputs of a job it runs again
        path.unlink()
    again = run_script("train", *train_args(inputs.split, renormalised, out, OPTIONS, resume), "--scratch")
    assert again.returncode == 0, again.stdout
    assert "this run had ended" not in again.stdout and re.search(r"^epoch 1/", again.stdout, re.M), again.stdout
    assert torch.load(out / "model.pt", weights_only=True)["preprocessing"]["mean"] == [0.3, 0.3, 0.3]
    assert len(resume_files(resume)) == 2


def test_a_resume_folder_that_cannot_be_written_fails_before_training(inputs, tmp_path):
    """resources/ unwritable (here a file where the folder should be): the resume state could not be saved after
    the first epoch, so the job failed there, an epoch of work late. Refused at start, naming the resume file."""
    blocker = tmp_path / "resources"
    blocker.write_text("not a folder\n")
    out = tmp_path / "run"
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, OPTIONS, blocker / "resume"))
    assert result.returncode == 1, result.stdout
    message = error_line(result.stdout)
    assert re.fullmatch(rf"error: cannot write {re.escape(str(blocker / 'resume'))}/[0-9a-f]+\.pt: {re.escape(str(blocker))} "
                        "is a file, not a folder; move it away or choose another path", message), message
    assert "trainable parameters" not in result.stdout, "it must fail before training starts"
    assert not (out / "model.pt").exists()


@pytest.mark.slow
def test_outputs_removed_after_the_job_ended_are_written_again_from_its_finished_state(inputs, tmp_path):
    """Slurm marks a job TIMEOUT that ends in the last seconds of its walltime, and Snakemake then removes the
    outputs the job had written: the retry trained again from epoch 1, the resume state being gone. The finished
    state is kept until Snakemake's run succeeds: the retry writes the same outputs from it, training nothing.
    Under other code (a module edited) the run is another: it trains afresh."""
    options = {**OPTIONS, "epochs": 3}
    out, resume = tmp_path / "run", tmp_path / "resume"
    args = train_args(inputs.split, inputs.manifest, out, options, resume)
    first = run_script("train", *args)
    assert first.returncode == 0, first.stdout
    [finished] = resume_files(resume)
    assert finished.name.endswith(".done.pt"), finished
    # What ends the run again, not what trains it on: no optimizer state; about the model's size, not 4x it.
    state = torch.load(finished, weights_only=False)
    assert "optimizer" not in state and state["ended"] == {"stopped_early": False, "diverged": None}
    assert finished.stat().st_size < 1.5 * (out / "model.pt").stat().st_size
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    model = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    for path in out.iterdir():  # as Snakemake removes a failed job's outputs
        path.unlink()
    again = run_script("train", *args)
    assert again.returncode == 0, again.stdout
    assert "this run had ended, and the run of Snakemake that ran it did not succeed" in again.stdout, again.stdout
    assert "the run had ended after 3 epoch(s); writing its outputs" in again.stdout, again.stdout
    assert not re.search(r"^epoch \d/", again.stdout, re.M), "an epoch was trained again"
    assert "of other settings or code" not in again.stdout, "its own finished state is no other run's"
    assert (out / "history.csv").read_bytes() == written["history.csv"]
    rewritten = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert_same_state(rewritten, model)
    assert resume_files(resume) == [finished]

    # The same run under edited code (a comment added to a module the job loads) has another key.
    edited = tmp_path / "src"
    shutil.copytree(REPO / "src", edited)
    (edited / "finetune" / "training.py").write_text((edited / "finetune" / "training.py").read_text() + "# edited\n")
    script = REPO / "workflow" / "scripts" / "train.py"
    fresh = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(edited)})
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "resuming from" not in fresh.stdout and "this run had ended" not in fresh.stdout
    assert re.search(r"^epoch 1/3", fresh.stdout, re.M), fresh.stdout
    # Its log names the finished state of the code before, kept beside its own: that one state alone.
    assert re.search(rf"^note: 1 resume state\(s\) of other settings or code of this run are kept in .*\(\d[\d,]* MB: "
                     rf"{re.escape(finished.name)}\)", fresh.stdout, re.M), fresh.stdout
    assert len(resume_files(resume)) == 2 and finished in resume_files(resume)


def test_a_finished_state_goes_once_its_outputs_are_there_and_stays_while_they_are_missing(tmp_path):
    """What the workflow's onsuccess removes: the finished resume states (``<key>.done.pt``) of the runs whose
    outputs are there, with the folders they leave empty, but never the resume folder itself; a finished state
    whose outputs are missing stays, for the next run to write them from instead of training again. The runs'
    outputs are found from the states' folders (``pretrain/``, ``<experiment>/seed<seed>/``) as the rules name
    them; another experiment's seed of the same number is another run."""
    from finetune.stages import remove_finished_states

    resume = tmp_path / "resume"
    states = {name: resume / name / "0123abcd.done.pt"
              for name in ("pretrain", "finetune/seed0", "finetune/seed1", "feature_extract/seed0")}
    for state in states.values():
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_bytes(b"state")
    kept_beside = resume / "finetune" / "seed1" / "4567cdef.pt"  # an unfinished state of other settings
    kept_beside.write_bytes(b"state")
    outputs = {"pretrain": tmp_path / "pretrain/model.pth", "finetune/seed0": tmp_path / "results/finetune/seed0/model.pt",
               "finetune/seed1": tmp_path / "results/finetune/seed1/model.pt"}  # feature_extract/seed0's is missing
    for output in outputs.values():
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"output")

    train_output = str(tmp_path / "results/{experiment}/seed{seed}/model.pt")  # the train rule's, moved
    removed = remove_finished_states(resume, str(outputs["pretrain"]), train_output)

    assert sorted(removed) == sorted(states[name] for name in outputs)
    assert sorted(p for p in resume.rglob("*") if p.is_file()) == sorted([states["feature_extract/seed0"], kept_beside])
    assert not (resume / "pretrain").exists() and not (resume / "finetune/seed0").exists(), "emptied folders go"
    assert (resume / "finetune/seed1").is_dir()
    assert remove_finished_states(resume, str(outputs["pretrain"]), train_output) == []
    # A resume folder the last state leaves empty is kept (it is the rules' resume_dir, say a link's target).
    alone = tmp_path / "alone"
    (alone / "x/seed3").mkdir(parents=True)
    (alone / "x/seed3/89ab.done.pt").write_bytes(b"state")
    (tmp_path / "results/x/seed3").mkdir(parents=True)
    (tmp_path / "results/x/seed3/model.pt").write_bytes(b"output")
    assert remove_finished_states(alone, str(outputs["pretrain"]), train_output) == [alone / "x/seed3/89ab.done.pt"]
    assert alone.is_dir() and not list(alone.iterdir())


@pytest.mark.parametrize("given, said", [
    ((), "give the weights manifest (--manifest), or for a scratch run --source-info and --arch"),
    (("--source-info", "{info}", "--arch", "resnet18"), "--source-info (instead of a weights manifest) is for a scratch run"),
    (("--source-info", "{info}", "--scratch"), "--source-info (instead of a weights manifest) is for a scratch run"),
    (("--source-info", "{info}", "--arch", "resnet18", "--scratch", "--manifest", "{manifest}"),
     "--source-info (instead of a weights manifest) is for a scratch run: give it with --scratch and --arch, and without --manifest"),
])
def test_train_run_alone_without_the_weights_it_can_build_from_says_which_arguments_it_needs(inputs, tmp_path, given, said):
    """The train script builds its model from a weights manifest, or (a scratch run with weights from pretrain) from
    the source's decoded record and an architecture: another mix of the three arguments stops on one line saying
    which to give, before reading anything, and writes nothing."""
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"channel_stats": {"split": "train", "crop_size": 32, "mean": [0.5] * 3, "std": [0.2] * 3}}))
    out = tmp_path / "out"
    args = train_args(inputs.split, inputs.manifest, out, OPTIONS)
    del args[2:4]  # --manifest and its path
    filled = [a.format(info=info, manifest=inputs.manifest) for a in given]
    result = run_script("train", *args, *filled)
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"error: {said}" in result.stdout, result.stdout
    assert not out.exists()


def _damage_in_place(path: Path, at: int) -> None:
    """Bytes written over inside the file, its size kept (a bad copy, a disk error), its time then later."""
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(bytes(b ^ 0xFF for b in handle.read(64)))
    os.utime(path, ns=(time.time_ns() + 5 * 10 ** 9,) * 2)


def test_a_run_s_json_record_damaged_since_its_job_is_refused_at_start_keeping_the_leaderboard(tiny_run_copy):
    """A run's metrics.json or train_info.json cut short or written over since its job: the summary job found it, but
    only once Snakemake had removed the earlier leaderboard (summary.md, summary.csv, selected.json). Refused at start
    now, naming the file and the command that makes it again, with nothing run or removed; put back, nothing reruns."""
    from faults import snapshot
    from helpers import jobs_run, run_snakemake

    workdir, config = tiny_run_copy, tiny_run_copy / "config.yaml"
    before = snapshot(workdir / "results")
    run = workdir / "results/finetune/seed0"
    for name, damage in (("metrics.json", lambda text: text[: len(text) // 2]), ("train_info.json", lambda _: "[1, 2]"),
                         ("metrics.json", lambda text: "\0" * len(text))):
        path = run / name
        whole, stat = path.read_bytes(), path.stat()
        path.write_text(damage(whole.decode()))
        with pytest.raises(ValueError if name == "metrics.json" else AssertionError):  # the damage, seen here
            assert isinstance(json.loads(path.read_text()), dict)
        refused = run_snakemake(workdir, config, check=False)
        assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
        assert f"results/finetune/seed0/{name} " in refused.stdout and "nothing ran, and nothing was removed" in \
            refused.stdout, refused.stdout[-3000:]
        assert f"make it again with --forcerun results/finetune/seed0/{name}" in refused.stdout, refused.stdout[-3000:]
        after = snapshot(workdir / "results")
        assert {k: v for k, v in after.items() if k != f"finetune/seed0/{name}"} == \
            {k: v for k, v in before.items() if k != f"finetune/seed0/{name}"}
        path.write_bytes(whole)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert jobs_run(run_snakemake(workdir, config).stdout) == []


def test_a_model_pt_weights_or_decoded_images_damaged_since_their_job_are_refused_at_start_keeping_every_result(
        tiny_run_copy):
    """A run's model.pt, the published weights or the decoded images cut short or written over since their job: the
    jobs after them refused them, but only once Snakemake had removed their outputs (the run's model.onnx and
    metrics.json; for the weights or the images, a run's model.pt). Refused at start now, naming the file and the
    command that makes it again, with nothing run or removed; put back, nothing reruns; made again with --forcerun, the
    model is the one it was (every tensor equal: training on the CPU is deterministic)."""
    import zipfile

    from faults import snapshot
    from helpers import jobs_run, run_snakemake

    workdir, config = tiny_run_copy, tiny_run_copy / "config.yaml"
    model, weights = workdir / "results/finetune/seed0/model.pt", workdir / "resources/weights/weights.pth"
    (decoded,) = (workdir / "resources/decoded/target").glob("*/images.npy")
    before = snapshot(workdir / "results")
    trained = torch.load(model, map_location="cpu", weights_only=False)["state_dict"]
    cases = [
        (weights, lambda: os.truncate(weights, 1000), "resources/weights/weights.pth does not match its manifest"),
        (decoded, lambda: _damage_in_place(decoded, decoded.stat().st_size // 2),
         f"decoded images {decoded.relative_to(workdir)}: its bytes changed after it was written"),
        (decoded, lambda: os.truncate(decoded, decoded.stat().st_size - 10),
         f"decoded images {decoded.relative_to(workdir)}: it has "),
        (model, lambda: os.truncate(model, model.stat().st_size // 2),
         "results/finetune/seed0/model.pt no longer reads as the checkpoint its train job wrote (BadZipFile"),
        (model, lambda: _damage_in_place(model, model.stat().st_size // 2),
         "results/finetune/seed0/model.pt no longer holds the bytes its train job wrote ("),
    ]
    for path, damage, said in cases:
        whole, stat = path.read_bytes(), path.stat()
        damage()
        assert path.read_bytes() != whole
        refused = run_snakemake(workdir, config, check=False)
        assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
        assert said in refused.stdout and "nothing ran, and nothing was removed" in refused.stdout, refused.stdout[-3000:]
        assert f"make it again with --forcerun {path.relative_to(workdir)}" in refused.stdout, refused.stdout[-3000:]
        after = snapshot(workdir / "results")  # every result kept: the damaged model.pt aside, byte for byte
        assert after.keys() == before.keys()
        assert {k: v for k, v in after.items() if k != "finetune/seed0/model.pt"} == \
            {k: v for k, v in before.items() if k != "finetune/seed0/model.pt"}
        path.write_bytes(whole)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert jobs_run(run_snakemake(workdir, config).stdout) == []
    # A target built from the damaged model.pt (the check at parse time leaves out what the targets do not name): its
    # evaluate job ran and failed, after Snakemake removed the run's metrics. Checked as the run starts.
    whole, stat = model.read_bytes(), model.stat()
    os.truncate(model, model.stat().st_size // 2)
    refused = run_snakemake(workdir, config, "-p", "results/finetune/seed0/metrics.json", check=False)
    assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
    assert "results/finetune/seed0/model.pt no longer reads as the checkpoint" in refused.stdout, refused.stdout[-3000:]
    assert snapshot(workdir / "results")["finetune/seed0/metrics.json"] == before["finetune/seed0/metrics.json"]
    model.write_bytes(whole)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # An independent verdict on the damage the check finds: Python's zipfile, on the CRCs torch.save wrote.
    _damage_in_place(model, model.stat().st_size // 2)
    with zipfile.ZipFile(model) as archive:
        assert archive.testzip() is not None
    ran = run_snakemake(workdir, config, "--forcerun", "results/finetune/seed0/model.pt")
    assert "train" in jobs_run(ran.stdout), ran.stdout[-3000:]
    again = torch.load(model, map_location="cpu", weights_only=False)["state_dict"]
    assert again.keys() == trained.keys() and all(torch.equal(again[key], trained[key]) for key in trained)
