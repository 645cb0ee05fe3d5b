"""ddp_cpu_2proc_img_per_s: one run trained by two processes (train.devices 2, gloo on the CPU) vs one process.

Both sides are the real train job (workflow/scripts/train.py reading the decode stage's file; the two-process
side started as the rule starts it, through finetune.launch and torchrun) on the same Fashion-MNIST images
at the same global batch and the same total threads (one process with all of them, or each of two with
half). On the CPU cores of one machine this proves the path, not a speed-up: expect about 1x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from common import REPO, row
from data_path import _fashion_split
from finetune.store import write_decoded


def bench_ddp_cpu(manifest: Path, fashion_mnist: Path, workdir: Path, n_train: int, image_size: int, epochs: int,
                  threads: int) -> dict:
    from finetune.images import Preprocessing as Prep
    from finetune.weights import read_manifest

    prep = Prep.from_dict(read_manifest(manifest)["preprocessing"], image_size)
    split = _fashion_split(workdir / "ddp.csv", fashion_mnist, n_train, 64)
    npy, info = workdir / "ddp.npy", workdir / "ddp.json"
    write_decoded(split, prep.resize_size, prep.crop_size, npy, info, threads=threads, log=lambda _: None)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    img_per_s, wall_s = {}, {}
    for devices in (1, 2):
        options = json.dumps({"strategy": "finetune", "bn": "frozen", "epochs": epochs, "batch_size": 32, "lr": 0.001,
                              "device": "cpu", "seed": 0, "devices": devices})
        out = workdir / f"ddp{devices}"
        job = [sys.executable, "-m", "finetune.launch", "--devices", str(devices), "--",
               str(REPO / "workflow/scripts/train.py"), "--split", str(split), "--manifest", str(manifest),
               "--options", options, "--image-size", str(image_size), "--decoded", str(npy), str(info),
               "--threads", str(threads)] + [a for name in ("checkpoint", "history", "info")
                                               for a in (f"--out-{name}", str(out / name))]
        started = time.perf_counter()
        result = subprocess.run(job, capture_output=True, text=True, env=env)
        wall_s[devices] = time.perf_counter() - started
        if result.returncode:
            raise SystemExit(f"bench: the train job with devices {devices} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        history = pd.read_csv(out / "history")
        img_per_s[devices] = float(history["img_per_s"].iloc[-1])  # the last epoch: start-up and first-epoch costs out
    return row("ddp_cpu_2proc_img_per_s", img_per_s[2], img_per_s[1], "img/s", True,
               f"train job, finetune (bn frozen), {image_size} px, {n_train} Fashion-MNIST images, global batch 32, "
               f"{threads} threads in all, last of {epochs} epochs: 2 gloo processes {img_per_s[2]:.1f} vs 1 process "
               f"{img_per_s[1]:.1f} img/s (job wall time {wall_s[2]:.0f} vs {wall_s[1]:.0f} s); CPU cores of one machine: "
               "the path, not a speed-up")
