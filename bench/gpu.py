"""``bench.py --gpu``: the training loop on a GPU at 224 px, from generated images (or ``--data``), batch 32, 128
and 256. Writes ``bench_gpu.csv`` (the columns of bench.csv) and ``bench_gpu.json`` (every figure measured):

  train_img_per_s_cuda224_b256  ``fit`` with AMP (bf16) + channels_last vs ``fit`` in fp32 eager, batch 256
  fit_vs_ceiling_cuda224_b256   ``fit`` (AMP + channels_last) vs a minimal loop of the same model: fused AdamW,
                                data already on the GPU, no host sync in the timed steps
  fit_vs_ceiling_cuda224_b32    the fastest ``fit`` variant vs the fastest minimal loop at batch 32
  compile_vs_eager_cuda224_b32  ``--compile``: ``fit`` with train.compile reduce-overhead (CUDA graphs) vs eager,
  compile_vs_eager_cuda224_b256 both AMP + channels_last, epochs after the first; the note gives the compile time
                                and after how many epochs of ``n_train`` images it pays

``--smoke`` runs the same code at tiny sizes (``--device cpu`` where there is no GPU): a test checks it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import median, quiet, row, say, spread, write_csv

import torch

from finetune.models import build_target_model
from finetune.tensors import Data, Preprocessing, normalization_constants
from finetune.training import TrainOptions, fit, seed_everything
from report import COMPILE_ROWS, GPU_ROWS, check, machine_info, print_table

NUM_CLASSES = 4
PREP_224 = {"resize_size": 256, "crop_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
VARIANTS = {"fp32": {"amp": "off", "channels_last": False}, "amp_cl": {"amp": "bf16", "channels_last": True}}
# --compile: at the smallest and the largest batch, in the first repeat only (each compiles for minutes' share of
# the device time); a failure is recorded in bench_gpu.json and leaves the other variants' figures standing.
COMPILED = {"amp_cl_graphs": {"amp": "bf16", "channels_last": True, "compile": "reduce-overhead"}}


@dataclass(frozen=True)
class GpuSizes:
    image_size: int
    n_train: int
    n_val: int
    epochs: int                 # per `fit` run; the first is the warm-up (cuDNN's search, the allocator)
    reps: int
    ceiling_steps: int          # timed steps of the minimal loop, after as many warm-up steps / 4
    batches: tuple[int, ...] = (32, 128, 256)


GPU_FULL = GpuSizes(image_size=224, n_train=6144, n_val=512, epochs=3, reps=3, ceiling_steps=60)
GPU_SMOKE = GpuSizes(image_size=16, n_train=64, n_val=16, epochs=2, reps=1, ceiling_steps=4)


def gpu_args_problem(args) -> str | None:
    """What is wrong with ``--device``, ``--data`` and ``--dag`` (checked before anything runs: a wrong
    --dag was read only after every speed row, minutes of device time), or None."""
    try:
        torch.device(args.device or "cuda")
    except RuntimeError:
        return f"--device {args.device!r}: not a torch device (cuda, cuda:1, cpu)"
    if args.data is not None and not Path(args.data).is_file():
        return f"--data {args.data}: no such file (a split CSV: path, label, split)"
    if args.dag is not None:
        if not Path(args.dag).is_dir():
            return f"--dag {args.dag}: no such folder (Fashion-MNIST's files: /usr/share/datasets/fashion-mnist)"
        if shutil.which("nvidia-smi") is None:
            return "--dag: nvidia-smi is not on PATH, and the DAG's row is how busy it sees the GPU"
    return None


def bench_gpu(args) -> int:
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        say(f"bench --gpu needs a CUDA device, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). "
            "Run it on a machine with an NVIDIA GPU (or --smoke --device cpu); the CPU benchmark is `make bench`.")
        return 2
    sizes = sized(GPU_SMOKE if args.smoke else GPU_FULL, args.reps, args.batches)
    out = Path(args.out)  # bench_gpu.csv beside bench.csv where --out is not given (bench.parse_args)
    torch.set_num_threads(args.threads)  # at least 1 (bench.parse_args)
    prep = Preprocessing.from_dict(PREP_224, sizes.image_size)
    train, val = gpu_data(args.data, prep, sizes, args.threads)
    compiled = lambda b: COMPILED if args.compile and b in (min(sizes.batches), max(sizes.batches)) else {}  # noqa: E731
    figures = {b: measure_batch(b, train, val, prep, device, sizes, compiled(b)) for b in sizes.batches}
    rows = gpu_rows(figures, device, sizes, len(train.labels))
    expected = GPU_ROWS + (COMPILE_ROWS if args.compile else [])
    assert [r["metric"] for r in rows] == expected, "report.GPU_ROWS / COMPILE_ROWS and gpu_rows disagree"
    details = {"device": device_name(device), "sizes": asdict(sizes), "figures": figures}
    write_csv(rows, out)  # the speed rows stand even if the DAG below fails or is stopped at a time limit
    out.with_suffix(".json").write_text(json.dumps(details, indent=2) + "\n")
    if args.dag:
        release(device)
        from gpu_dag import bench_gpu_dag

        dag_rows, details["dag224"] = bench_gpu_dag(out.parent / "dag224", args.dag)
        rows += dag_rows
    write_csv(rows, out)
    out.with_suffix(".json").write_text(json.dumps(details, indent=2) + "\n")
    print_table(rows, machine_info(args.threads) | {"gpu": device_name(device)}, checked=not args.smoke)
    say(f"wrote {out}")
    missed = [] if args.smoke else [r["metric"] for r in rows if check(r)[1] is False]
    if missed:
        say(f"targets missed: {', '.join(missed)} (see docs/bench.md, GPU rows)")
    return 1 if missed and not args.no_check else 0


def batch_sizes(text: str) -> tuple[int, ...]:
    """``--batches`` (an argparse type): "32,256" -> (32, 256), sorted, each once."""
    try:
        chosen = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes separated by commas, e.g. 32,256") from None
    if not chosen or min(chosen) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every batch size must be a positive integer")
    return chosen


def sized(sizes: GpuSizes, reps: int | None, batches: tuple[int, ...] | None) -> GpuSizes:
    """``sizes`` with ``--reps`` and ``--batches`` where given (checked by bench.parse_args)."""
    if reps is not None:
        sizes = replace(sizes, reps=reps)
    if batches:
        sizes = replace(sizes, batches=batches)
    return sizes


def gpu_data(path: str | None, prep: Preprocessing, sizes: GpuSizes, threads: int) -> tuple[Data, Data]:
    """The train and val splits of a split CSV (``--data``), or generated uint8 images with random labels."""
    if path:
        from finetune.stages import load_split_tensors

        data, _, _ = load_split_tensors(Path(path), prep, threads, splits=("train", "val"))
        return data["train"], data["val"]
    gen = torch.Generator().manual_seed(0)
    n, s = sizes.n_train + sizes.n_val, sizes.image_size
    images = torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return Data(images[:sizes.n_train], labels[:sizes.n_train]), Data(images[sizes.n_train:], labels[sizes.n_train:])


def fresh_model(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_target_model("resnet18", num_classes, None, None)


def measure_batch(batch: int, train: Data, val: Data, prep: Preprocessing, device: torch.device,
                  sizes: GpuSizes, compiled: dict | None = None) -> dict:
    """img/s of each `fit` variant and each minimal-loop variant at ``batch``: lists over the repeats.

    ``compiled`` (``--compile``): more variants, run in the first repeat only; their compile seconds go to
    ``compile_s`` and an error to ``compile_error`` (the variant then has no figures)."""
    variants = {**VARIANTS, **(compiled or {})}
    figures: dict = {"fit": {v: [] for v in variants}, "ceiling": {v: [] for v in variants}}
    num_classes = int(train.labels.max()) + 1
    for rep in range(sizes.reps):
        for variant, options in variants.items():
            if variant in VARIANTS:
                measure_variant(figures, variant, batch, options, train, val, prep, device, sizes, num_classes, rep)
            elif rep == 0:
                try:
                    measure_variant(figures, variant, batch, options, train, val, prep, device, sizes, num_classes, rep)
                except Exception as exc:  # noqa: BLE001  (an optional variant: its failure is a finding, not a crash)
                    figures.setdefault("compile_error", {})[variant] = f"{type(exc).__name__}: {str(exc)[:500]}"
                    figures["fit"][variant], figures["ceiling"][variant] = [], []
                    release(device)
        say(f"  batch {batch} rep {rep + 1}: " + ", ".join(
            f"{kind} {v} {figures[kind][v][-1]:.0f}" for kind in ("fit", "ceiling") for v in variants
            if len(figures[kind][v]) > rep) + " img/s")
    return figures


def measure_variant(figures: dict, variant: str, batch: int, options: dict, train: Data, val: Data,
                    prep: Preprocessing, device: torch.device, sizes: GpuSizes, num_classes: int, rep: int) -> None:
    speed, compile_s = fit_speed(batch, options, train, val, prep, device, sizes, num_classes, rep)
    figures["fit"][variant].append(speed)
    if compile_s is not None:
        figures.setdefault("compile_s", {})[variant] = compile_s
    speed, check = ceiling_speed(batch, options, train, prep, device, sizes, num_classes)
    release(device)
    figures["ceiling"][variant].append(speed)
    figures.setdefault("ceiling_check", check)


def fit_speed(batch: int, options: dict, train: Data, val: Data, prep: Preprocessing, device: torch.device,
              sizes: GpuSizes, num_classes: int, seed: int) -> tuple[float, float | None]:
    """Median img/s of the epochs after the first, as `fit` reports them (an epoch's time ends with its check),
    and with train.compile on the first step's seconds (compilation included)."""
    opts = TrainOptions.from_dict({"strategy": "finetune", "epochs": sizes.epochs, "batch_size": batch, "lr": 1e-3,
                                   "device": device.type, "seed": seed, "schedule": "constant", **options})
    seed_everything(seed, False)
    result = fit(fresh_model(num_classes), train, val, prep, opts, num_classes=num_classes, log=quiet)
    release(device)
    return median([r["img_per_s"] for r in result.history[1:]]), result.compile_seconds


def ceiling_speed(batch: int, options: dict, train: Data, prep: Preprocessing, device: torch.device,
                  sizes: GpuSizes, num_classes: int) -> tuple[float, dict]:
    """img/s of the minimal loop: the same model and precision, fused AdamW, normalised batches already on the
    device, nothing read back inside the timed steps. Also what shows it trained: its parameter count, whether
    every parameter moved, its last loss. With ``compile`` in ``options``, the model's forward is compiled in that
    mode, as `fit` compiles it; the warm-up steps compile (and record the CUDA graphs)."""
    amp = options["amp"] != "off" and device.type == "cuda"
    channels_last = options["channels_last"] and device.type == "cuda"
    model = fresh_model(num_classes).to(device, memory_format=torch.channels_last if channels_last else None).train()
    forward = model if options.get("compile", "off") == "off" else torch.compile(model, mode=options["compile"])
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batches = device_batches(train, prep, device, batch, channels_last)
    for i in range(max(1, sizes.ceiling_steps // 4)):  # warm-up
        ceiling_step(forward, optimizer, *batches[i % len(batches)], amp)
    synchronize(device)
    started = time.perf_counter()
    for i in range(sizes.ceiling_steps):
        loss = ceiling_step(forward, optimizer, *batches[i % len(batches)], amp)
    synchronize(device)
    seconds = time.perf_counter() - started
    images = sum(len(batches[i % len(batches)][1]) for i in range(sizes.ceiling_steps))
    check = {"parameters": sum(p.numel() for p in model.parameters()), "last_loss": float(loss.detach()),
             "every_parameter_moved": all(not torch.equal(p, s) for p, s in zip(model.parameters(), start))}
    return images / seconds, check


def ceiling_step(model: torch.nn.Module | Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 amp: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def device_batches(train: Data, prep: Preprocessing, device: torch.device, batch: int,
                   channels_last: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to 8 full batches of the training images, normalised on the device, ready to feed."""
    n = min(len(train.labels), 8 * batch)
    n = max(batch, n - n % batch) if n >= batch else n
    mean, std = normalization_constants(prep, device)
    x = (train.images[:n].to(device).float() / 255.0 - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return list(zip(x.split(batch), train.labels[:n].to(device).split(batch)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"cpu ({machine_info(torch.get_num_threads())['cpu_model']}), torch {torch.__version__}, no CUDA"


def gpu_rows(figures: dict, device: torch.device, sizes: GpuSizes, n_train: int) -> list[dict]:
    """The rows of bench_gpu.csv from the figures of the largest and the smallest batch (with ``--compile``,
    five: the compiled variant competes for the fastest at batch 32 and is compared with eager at both)."""
    large, small = figures[max(sizes.batches)], figures[min(sizes.batches)]
    where = (f"{device_name(device)}; resnet18 {sizes.image_size}px, {n_train} images, {sizes.epochs} epochs per fit "
             f"(median of epochs 2+), {sizes.ceiling_steps} minimal-loop steps; median (min-max, n) of {sizes.reps}")
    best_fit = max((v for v in small["fit"] if small["fit"][v]), key=lambda v: median(small["fit"][v]))
    best_ceiling = max((v for v in small["ceiling"] if small["ceiling"][v]), key=lambda v: median(small["ceiling"][v]))
    rows = [
        row("train_img_per_s_cuda224_b256", median(large["fit"]["amp_cl"]), median(large["fit"]["fp32"]), "img/s", True,
            f"{where}; batch {max(sizes.batches)}: fit AMP bf16 + channels_last {spread(large['fit']['amp_cl'])} vs "
            f"fit fp32 eager {spread(large['fit']['fp32'])} img/s"),
        row("fit_vs_ceiling_cuda224_b256", median(large["fit"]["amp_cl"]), median(large["ceiling"]["amp_cl"]), "img/s",
            True, f"{where}; batch {max(sizes.batches)}, AMP bf16 + channels_last: fit {spread(large['fit']['amp_cl'])} "
            f"vs minimal loop {spread(large['ceiling']['amp_cl'])} img/s"),
        row("fit_vs_ceiling_cuda224_b32", median(small["fit"][best_fit]), median(small["ceiling"][best_ceiling]), "img/s",
            True, f"{where}; batch {min(sizes.batches)}: fit {best_fit} {spread(small['fit'][best_fit])} vs minimal "
            f"loop {best_ceiling} {spread(small['ceiling'][best_ceiling])} img/s (the fastest variant of each)"),
    ]
    variant = next(iter(COMPILED))
    if variant in small["fit"]:  # --compile
        for name, figs, batch in zip(COMPILE_ROWS, (small, large), (min(sizes.batches), max(sizes.batches))):
            rows.append(compile_row(name, figs, variant, batch, where, n_train))
    return rows


def compile_row(name: str, figures: dict, variant: str, batch: int, where: str, n_train: int) -> dict:
    """A compiled variant vs eager (both AMP + channels_last) through `fit`; NaN where it failed (the error in the note)."""
    eager, compiled = median(figures["fit"]["amp_cl"]), figures["fit"][variant]
    if not compiled:
        error = figures.get("compile_error", {}).get(variant, "no figures")
        return row(name, math.nan, eager, "img/s", True, f"{where}; batch {batch}: {variant} failed: {error}")
    ours, seconds = median(compiled), figures.get("compile_s", {}).get(variant, math.nan)
    per_epoch_gain = n_train / eager - n_train / ours  # seconds an epoch saves once compiled
    pays = (f"it pays after {seconds / per_epoch_gain:.1f} epochs of {n_train} images" if per_epoch_gain > 0
            else "it never pays: not faster than eager")
    return row(name, ours, eager, "img/s", True,
               f"{where}; batch {batch}: fit {variant} (train.compile {COMPILED[variant]['compile']}) {spread(compiled)} "
               f"vs eager amp_cl {spread(figures['fit']['amp_cl'])} img/s; its first step (compilation) {seconds:.1f} s: "
               f"{pays}; one repeat")
