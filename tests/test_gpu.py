"""The training loop on CUDA (issue 14): every precision and memory format trains, evaluates and exports; resume
after a kill; no host sync in a training step. Marked ``gpu``: skipped (with the reason) where CUDA is missing,
run on a GPU machine with ``pytest -m gpu``. Tiny generated images: no dataset needed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from faults import PREPROCESSING_32, split_and_weights, start_script, train_args
from helpers import REPO, run_script

pytestmark = [pytest.mark.gpu]

OPTIONS = {"epochs": 2, "batch_size": 4, "lr": 0.001, "device": "cuda", "seed": 0}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SimpleNamespace:
    """A split of 2 x 12 generated 32-px images and random-init resnet18 weights with their manifest."""
    return split_and_weights(tmp_path_factory.mktemp("inputs"), 12)


def train(inputs, out, options, resume_dir=None):
    result = run_script("train", *train_args(inputs.split, inputs.manifest, out, options, resume_dir))
    assert result.returncode == 0, result.stdout
    return result.stdout


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_trains_evaluates_and_exports_on_cuda(inputs, tmp_path, amp, channels_last):
    from finetune.stages import evaluate_stage, export_stage, load_checkpoint

    train(inputs, tmp_path, OPTIONS | {"amp": amp, "channels_last": channels_last})
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 2 and all(math.isfinite(v) for v in history[["train_loss", "val_loss"]].to_numpy().ravel())
    assert json.loads((tmp_path / "train_info.json").read_text())["device"] == "cuda"
    model, _ = load_checkpoint(tmp_path / "model.pt")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    metrics = {}
    for device in ("cuda", "cpu"):
        metrics[device] = evaluate_stage(tmp_path / "model.pt", inputs.split, tmp_path / f"{device}.json",
                                         tmp_path / f"{device}_cm.csv", tmp_path / f"{device}_pred.csv", 1, device=device)
    n_test = metrics["cpu"]["n_test"]
    assert abs(metrics["cuda"]["accuracy"] - metrics["cpu"]["accuracy"]) * n_test <= 1, "more than one image differs"
    report = export_stage(tmp_path / "model.pt", inputs.split, tmp_path / "model.onnx", tmp_path / "parity.json",
                          1e-4, 4, 1, log=lambda _: None)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_reports_its_compile_time_and_exports(inputs, tmp_path, mode):
    from finetune.stages import export_stage

    output = train(inputs, tmp_path, OPTIONS | {"amp": "bf16", "channels_last": True, "compile": mode})
    info = json.loads((tmp_path / "train_info.json").read_text())
    assert 0 < info["compile_seconds"] <= info["train_seconds"]
    assert f"torch.compile (train.compile {mode}): the first training step took" in output
    history = pd.read_csv(tmp_path / "history.csv")
    assert all(math.isfinite(v) for v in history[["train_loss", "val_loss"]].to_numpy().ravel())
    report = export_stage(tmp_path / "model.pt", inputs.split, tmp_path / "model.onnx", tmp_path / "parity.json",
                          1e-4, 4, 1, log=lambda _: None)
    assert report["passed"]


def test_resume_after_sigkill_on_cuda_ends_like_an_uninterrupted_run(inputs, tmp_path):
    # deterministic: cuDNN and cuBLAS pick reproducible kernels, so the two runs can be compared closely.
    options = OPTIONS | {"epochs": 4, "deterministic": True, "amp": "bf16", "channels_last": True}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(inputs, reference, options)
    proc = start_script("train", *train_args(inputs.split, inputs.manifest, resumed, options, resumed / "resume"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any((resumed / "resume").glob("*.pt")):
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (resumed / "model.pt").exists()
    assert "resuming from" in train(inputs, resumed, options, resumed / "resume")
    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "history.csv")[columns],
                                  pd.read_csv(reference / "history.csv")[columns], rtol=1e-5)


# Runs the train script with the size under which a split's images sit on the GPU whole set to argv[1].
RESIDENT_BYTES_PROBE = """import runpy, sys
from finetune import training
training.GPU_RESIDENT_BYTES = int(sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_decoded_file_trains_the_same_on_the_gpu_whole_or_streamed_through_pinned_memory(inputs, tmp_path):
    """The two ways a decoded file reaches the GPU, both copied as stored (channels last) and laid out there: whole
    (a small split) or batch by batch through pinned memory. Deterministic kernels: the same epochs exactly."""
    npy, info = tmp_path / "decoded.npy", tmp_path / "decoded.json"
    decoded = run_script("decode", "--split", str(inputs.split), "--manifest", str(inputs.manifest),
                         "--out-images", str(npy), "--out-info", str(info))
    assert decoded.returncode == 0, decoded.stdout
    options = OPTIONS | {"epochs": 3, "deterministic": True, "amp": "bf16", "channels_last": True, "augment": True}
    script, histories = str(REPO / "workflow" / "scripts" / "train.py"), {}
    for name, resident_bytes in (("whole", 2 * 1024**3), ("streamed", 0)):
        args = [*train_args(inputs.split, inputs.manifest, tmp_path / name, options), "--decoded", str(npy), str(info)]
        result = subprocess.run([sys.executable, "-c", RESIDENT_BYTES_PROBE, str(resident_bytes), script, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert result.returncode == 0, result.stdout
        read = "copied to the GPU" if name == "whole" else "read from the decoded file batch by batch"
        assert any(line.startswith("trainable parameters:") and read in line for line in result.stdout.splitlines()), \
            result.stdout[-3000:]
        histories[name] = pd.read_csv(tmp_path / name / "history.csv")
    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    assert all(math.isfinite(v) for v in histories["whole"][["train_loss", "val_loss"]].to_numpy().ravel())
    pd.testing.assert_frame_equal(histories["streamed"][columns], histories["whole"][columns], check_exact=True)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_cpu_run_on_a_gpu_machine_never_starts_cuda(inputs, tmp_path, device):
    """A ``device: cpu`` train job, resume state and all, takes no CUDA context (GPU memory another job may need);
    the same job with ``device: cuda`` does, which shows the probe can see it."""
    script = str(REPO / "workflow" / "scripts" / "train.py")
    args = train_args(inputs.split, inputs.manifest, tmp_path, OPTIONS | {"device": device}, tmp_path / "resume")
    probe = ("import atexit, runpy, sys, torch\n"
             "atexit.register(lambda: print('CUDA initialized:', torch.cuda.is_initialized(), flush=True))\n"
             f"sys.argv = [{script!r}, *{args!r}]\n"
             f"runpy.run_path({script!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stdout
    assert json.loads((tmp_path / "train_info.json").read_text())["device"] == device
    assert f"CUDA initialized: {device == 'cuda'}" in result.stdout.splitlines(), result.stdout[-2000:]


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("resident", [True, False], ids=["images_on_gpu", "pinned_copies"])
def test_a_training_step_never_waits_for_the_gpu(monkeypatch, amp, resident):
    """The steps between two divergence checks run under torch.cuda.set_sync_debug_mode("error"): any host
    sync (``.item()``, a Python ``if`` on a device tensor, a pageable copy) raises."""
    from finetune import stopping, training
    from finetune.models import build_target_model
    from finetune.tensors import Data, Preprocessing

    if not resident:
        monkeypatch.setattr(training, "GPU_RESIDENT_BYTES", 0)  # images stay on the host: pinned per batch
    gen = torch.Generator().manual_seed(0)
    data = Data(torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(48) % 3)
    opts = training.TrainOptions.from_dict({**OPTIONS, "amp": amp, "channels_last": True, "batch_size": 2})
    torch.manual_seed(0)
    model = build_target_model("resnet18", 3, None, None)
    setup = training._set_up(model, data, data, Preprocessing.from_dict(PREPROCESSING_32), opts, 3, None, lambda _: None)
    training._prepare_epoch(setup, 0)
    sums, divergence = training._EpochSums.on(setup.place.device), stopping.DivergenceCheck(opts, 0, [], None)
    batches = training._read_batches(setup, training._epoch_order(setup))
    steps = stopping.DIVERGENCE_CHECK_STEPS - 1
    for step in range(3):  # warm-up: cuDNN's choices, the optimizer's state, the first read of the epoch
        training._one_step(setup, 0, step, *next(batches), sums, divergence)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3, min(steps, len(data.labels) // 2)):
            training._one_step(setup, 0, step, *next(batches), sums, divergence)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    divergence.check()
    assert math.isfinite(sums.metrics(1.0)["train_loss"])
