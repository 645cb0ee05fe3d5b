"""The data path (issue 13): ``decode_img_per_s_12mp``, ``decode_passes_demo`` and ``export_onnx_s``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import REPO, median, row, spread, timed

import numpy as np
import pandas as pd
from PIL import Image

from finetune.store import write_decoded

DECODED_LINE = re.compile(r"^decoded (\d+) images", re.M)


def write_photos(folder: Path, count: int, width: int = 4032, height: int = 3024) -> list[Path]:
    """``count`` 12-megapixel JPEGs (smooth gradients and waves plus noise, quality 92), as a camera writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        pixels = np.stack([(x / (14 + i) + 40 * np.sin(y / 50)) % 256, (y / (10 + i)) % 256, ((x + y) / 20) % 256], -1)
        pixels = np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / "photo" / f"{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path, quality=92)
        paths.append(path)
    return paths


def bench_decode_12mp(workdir: Path, count: int, reps: int, threads: int) -> dict:
    """The decode stage vs the tutorial's ImageFolder + Resize(256) + CenterCrop(224), same threads, same files."""
    from torchvision import datasets, transforms

    paths = write_photos(workdir / "photos", count)
    split = workdir / "photos.csv"
    pd.DataFrame({"path": [str(p) for p in paths], "label": 0, "class_name": "photo", "split": "train"}).to_csv(split, index=False)
    tutorial = datasets.ImageFolder(str(workdir / "photos"), transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()]))

    def ours():
        write_decoded(split, 256, 224, workdir / "photos.npy", workdir / "photos.json", threads=threads, log=lambda _: None)

    def baseline():
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(tutorial.__getitem__, range(len(tutorial))))

    ours(), baseline()  # warm-up: the files in the page cache, PIL's and torchvision's first calls made
    ours_s, base_s = [], []
    for _ in range(reps):
        ours_s.append(count / timed(ours)[0])
        base_s.append(count / timed(baseline)[0])
    return row("decode_img_per_s_12mp", median(ours_s), median(base_s), "img/s", True,
               f"{count} JPEGs 4032x3024 to 224 px, {threads} threads: decode stage (draft mode) {spread(ours_s)} vs "
               f"ImageFolder + Resize + CenterCrop {spread(base_s)} img/s")


def bench_decode_passes(dag_dir: Path) -> dict:
    """Images decoded over a finished DAG (every job's log counted) vs the images its jobs read: every row of the
    target's split file (train, evaluate and export read its train, val and test images) and the train and val
    rows of the source's (pretrain reads no test images). Each decoded once gives exactly 1."""
    decoded = sum(int(n) for log in (dag_dir / "results/logs").rglob("*.log")
                  for n in DECODED_LINE.findall(log.read_text(errors="replace")))
    splits = dag_dir / "resources/splits"
    target, source = pd.read_csv(splits / "target.csv"), pd.read_csv(splits / "source.csv")
    read = len(target) + int((source["split"] != "test").sum())
    jobs = sum(1 for _ in (dag_dir / "results/logs").rglob("*.log"))
    return row("decode_passes_demo", decoded, read, "images", False,
               f"images decoded in the {jobs} jobs of the bench's DAG (lines 'decoded N images' in every job log) vs "
               f"the images its jobs read: the {len(target)} rows of the target's split file and the train and val "
               f"rows of the source's ({read - len(target)} of {len(source)}; pretrain reads no test image)")


EXPORT_CALL = """
import sys, time
from pathlib import Path
import torch
from finetune.export import export_onnx
from finetune.stages import load_checkpoint
torch.set_num_threads(int(sys.argv[3]))
model, checkpoint = load_checkpoint(Path(sys.argv[1]))
started = time.perf_counter()
export_onnx(model, checkpoint, Path(sys.argv[2]))
print(time.perf_counter() - started)
"""


def bench_export_job(checkpoint: Path, split_csv: Path, workdir: Path, reps: int, threads: int) -> dict:
    """The export_onnx job (script: start-up, decoded test images, export, parity) vs the export call alone,
    timed around the call in a fresh process as a job makes it: the exporter's own lazy imports (torch.onnx's
    exporter, onnx, onnxscript) included; torch._dynamo is not among them, torchvision's import loads it."""
    from finetune.stages import load_checkpoint

    _, ckpt = load_checkpoint(checkpoint)
    size = ckpt["preprocessing"]["resize_size"], ckpt["preprocessing"]["crop_size"]
    npy, info = workdir / "export_decoded.npy", workdir / "export_decoded.json"
    write_decoded(split_csv, *size, npy, info, threads=threads, log=lambda _: None)
    job = [sys.executable, str(REPO / "workflow/scripts/export_onnx.py"), "--checkpoint", str(checkpoint), "--split",
           str(split_csv), "--decoded", str(npy), str(info), "--out-onnx", str(workdir / "job.onnx"),
           "--out-parity", str(workdir / "job.json"), "--threads", str(threads)]
    call = [sys.executable, "-c", EXPORT_CALL, str(checkpoint), str(workdir / "call.onnx"), str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    job_s, call_s = [], []
    for _ in range(reps):
        started = time.perf_counter()
        subprocess.run(job, check=True, capture_output=True, env=env)
        job_s.append(time.perf_counter() - started)
        call_s.append(float(subprocess.run(call, check=True, capture_output=True, text=True, env=env).stdout.split()[-1]))
    return row("export_onnx_s", median(job_s), median(call_s), "s", False,
               f"export_onnx.py (start-up, decoded test images, dynamo export, parity on <= 256 images) {spread(job_s)} s "
               f"vs the export call alone in a fresh process (dynamo; its lazy imports included, torch._dynamo loaded by "
               f"torchvision before it) {spread(call_s)} s")


# The train job's own peak, as its parent sees it: ru_maxrss of the waited-for child (this wrapper
# imports nothing large, so what the child inherits over fork + exec is a few MB).
PEAK_OF_CHILD = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if code.returncode:
    sys.exit(code.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _fashion_split(out: Path, fashion_mnist: Path, n_train: int, n_val: int) -> Path:
    """A split CSV of the first ``n_train`` + ``n_val`` Fashion-MNIST training images (classes as they come)."""
    from finetune.images import read_idx

    labels = read_idx(fashion_mnist / "train-labels-idx1-ubyte.gz")[: n_train + n_val]
    refs = [f"{fashion_mnist}/train-images-idx3-ubyte.gz#{i}" for i in range(len(labels))]
    pd.DataFrame({"path": refs, "label": labels.astype(int), "class_name": [f"c{v}" for v in labels],
                  "split": ["train"] * n_train + ["val"] * n_val}).to_csv(out, index=False)
    return out


def bench_train_peak_rss(manifest: Path, fashion_mnist: Path, workdir: Path, n_train: int, image_size: int,
                         threads: int) -> dict:
    """Peak RSS of the train job (workflow/scripts/train.py, reading the decode stage's file) on 4x the
    images vs on 1x, same image size. The job is feature_extract (one backbone pass over every image,
    then the head): it touches every image like a fine-tuning epoch, at a fraction of the time."""
    from finetune.images import Preprocessing as Prep
    from finetune.weights import read_manifest

    prep = Prep.from_dict(read_manifest(manifest)["preprocessing"], image_size)
    options = json.dumps({"strategy": "feature_extract", "epochs": 1, "batch_size": 64, "lr": 0.01, "device": "cpu", "seed": 0})
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    peaks_mb, held_mb = {}, {}
    for scale in (1, 4):
        split = _fashion_split(workdir / f"rss{scale}.csv", fashion_mnist, n_train * scale, 200)
        npy, info = workdir / f"rss{scale}.npy", workdir / f"rss{scale}.json"
        write_decoded(split, prep.resize_size, prep.crop_size, npy, info, threads=threads, log=lambda _: None)
        held_mb[scale] = npy.stat().st_size / 1e6
        job = [sys.executable, str(REPO / "workflow/scripts/train.py"), "--split", str(split), "--manifest", str(manifest),
               "--options", options, "--image-size", str(image_size), "--decoded", str(npy), str(info),
               "--threads", str(threads)] + [a for name in ("checkpoint", "history", "info")
                                               for a in (f"--out-{name}", str(workdir / f"rss{scale}.{name}"))]
        out = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *job], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"bench: the train job on {split} failed:\n{out.stderr}")
        peaks_mb[scale] = int(out.stdout.split()[-1]) / 1024
    return row("train_peak_rss_4x", peaks_mb[4], peaks_mb[1], "MB", False,
               f"peak RSS of the train job (feature_extract, {image_size} px, streamed from the decode stage's file) on "
               f"{4 * n_train} vs {n_train} Fashion-MNIST images: {peaks_mb[4]:.0f} vs {peaks_mb[1]:.0f} MB; held in "
               f"memory the images alone would be {held_mb[4]:.0f} vs {held_mb[1]:.0f} MB, so a job holding them would "
               f"reach at least {(peaks_mb[1] + held_mb[4] - held_mb[1]) / peaks_mb[1]:.2f}x")
