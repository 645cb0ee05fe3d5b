"""``bench.py --gpu``: ``train_img_per_s`` on CUDA at 224 px through ``fit``, fp32 eager (baseline) against
AMP + channels_last (ours)."""

from __future__ import annotations

from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import default_out, demo_config, experiment_options, median, quiet, row, say, spread, write_csv

import torch

from finetune.stages import load_split_tensors
from finetune.tensors import Preprocessing
from finetune.training import TrainOptions, fit, seed_everything
from finetune.weights import load_state_dict, read_manifest
from inputs import demo_weights, folder_split_csv, speed_split, write_image_folder
from report import machine_info, print_table
from train_speed import fresh_model


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

