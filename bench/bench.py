#!/usr/bin/env python
"""Benchmarks of finetune against what a user would otherwise write (`make bench`; docs/bench.md).

Every row is a ratio ``ours / baseline`` of two figures measured in the same run, on the same
machine, one after the other (interleaved where repeated), so a loaded machine slows both sides
alike. Rows (see ``TARGETS`` in report.py for the goals):

  train_img_per_s              full fine-tuning, end to end from a folder of PNG files: our decode-once +
                               ``fit`` vs the tutorial-style loop (bench/baseline_tutorial.py)
  feature_extract_25ep_s       head-only training with cached backbone features vs the tutorial's
                               frozen-backbone loop (backbone forward every epoch); both accuracies
  noop_rerun_s                 ``snakemake --cores 4`` on a finished DAG vs ``snakemake --version``
  dag_build_20exp_s            dry run of 20 experiments vs 1 experiment (note: a 3x3x3 sweep over 3 seeds)
  onnx_infer_img_per_s_b1/_b64 onnxruntime vs eager PyTorch inference
  decode_img_per_s_12mp        the decode stage on 12-megapixel JPEGs vs ImageFolder + Resize + CenterCrop
  decode_passes_demo           images decoded over the bench's whole DAG vs images in its split files
  export_onnx_s                the export_onnx job vs the export call alone
  train_peak_rss_4x            peak RSS of a train job on 4x the images vs on 1x (same image size)
  ddp_cpu_2proc_img_per_s      one run trained by 2 gloo processes (train.devices 2) vs 1, same global batch
  transfer_acc_finetune        test accuracy of the demo's experiments vs scratch, mean over seeds (seed s: few-shot
                               sample s, training seed s)
  transfer_acc_feature_extract
  recipe_acc_vs_tutorial       test accuracy of the demo's finetune at 100 train images per class vs the PyTorch
                               tutorial's recipe (SGD + StepLR, 25 epochs), mean over seeds; both wall times

Usage:
  python bench/bench.py                      # the full benchmark, checks the targets (< 15 min on 2 cores
                                             # before recipe_acc_vs_tutorial, which alone took 46 min, shared)
  python bench/bench.py --smoke --out X.csv  # tiny sizes, every row, no checks (tests/test_bench_smoke.py)
  python bench/bench.py --only recipe_acc_vs_tutorial   # some rows only (and what they need), checks those
  python bench/bench.py --gpu                # CUDA at 224 px, batch 32/128/256: bench_gpu.csv (bench/gpu.py)
  python bench/bench.py --gpu --smoke --device cpu --out X.csv   # its code path at tiny sizes, no GPU needed

One module per family of rows, all in bench/: dag.py (the Snakemake rows), transfer.py (accuracy),
train_speed.py (training vs bench/baseline_tutorial.py), recipe.py (the tutorial's recipe), onnx_speed.py, data_path.py (decode, export job), gpu.py (--gpu); inputs.py makes
what they read (the demo's source model, the PNG folder), common.py holds the timing, the row and the
CSV, report.py the targets and the printed table. The tiny config is the tests' (tests/helpers.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

# common first: it puts src/ and tests/ on sys.path and sets OMP_WAIT_POLICY before torch is imported.
from common import FULL, IMAGE_SIZE, SMOKE, default_out, demo_config, say, write_csv

import torch

from dag import bench_dag_build, bench_noop_rerun
from distributed import bench_ddp_cpu
from data_path import bench_decode_12mp, bench_decode_passes, bench_export_job, bench_train_peak_rss
from finetune.cli import usable_cpus
from finetune.tensors import Preprocessing
from finetune.weights import load_state_dict, read_manifest
from gpu import bench_gpu
from inputs import demo_weights, folder_split_csv, speed_split, tiny_weights, write_image_folder
from onnx_speed import bench_onnx
from recipe import bench_recipe
from report import ROWS, check, machine_info, print_table
from train_speed import bench_feature_extract, bench_train_throughput
from transfer import bench_transfer


class _Done(Exception):
    """--only: every row asked for is measured."""


# decode_img_per_s_12mp's folder: 48 photos, so the decode job's fixed cost (reading and checking the split file,
# creating, flushing and fsyncing the array and its record: 20-40 ms) weighs in a rate in img/s as little as in a
# real folder; with 12 it was a tenth of the stage's time (docs/bench.md, decode_img_per_s_12mp).
PHOTOS = 48


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out(), help="CSV to write; its folder holds the bench's work files")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a couple of minutes, no target checks")
    parser.add_argument("--gpu", action="store_true",
                        help="the training loop on CUDA at 224 px, batch 32/128/256 (bench_gpu.csv; docs/bench.md)")
    parser.add_argument("--reps", type=int, default=None, help="--gpu only: repeats of each figure (default 3; smoke 1)")
    parser.add_argument("--batches", default=None, metavar="B1,B2,...",
                        help="--gpu only: the batch sizes to sweep (default 32,128,256); the rows read the smallest and largest")
    parser.add_argument("--compile", action="store_true",
                        help="--gpu only: also fit with train.compile reduce-overhead (CUDA graphs) at the smallest and "
                             "largest batch, one repeat (rows compile_vs_eager_cuda224_b32/_b256; docs/bench.md)")
    parser.add_argument("--device", default=None, help="--gpu only: the device (default cuda; cpu for --smoke)")
    parser.add_argument("--data", default=None,
                        help="--gpu only: a split CSV to read images from (default: generated images in memory)")
    parser.add_argument("--dag", metavar="FASHION_MNIST", default=None,
                        help="--gpu only: also run issue 13's 224-px DAG on Fashion-MNIST at this path (its wall time, "
                             "and how busy nvidia-smi sees the GPU while its train jobs fit)")
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="torch (and decoding) threads, both sides")
    parser.add_argument("--workers", type=int, default=0,
                        help="the tutorial's DataLoader worker processes (0: load in the training process, "
                             "which keeps both sides on the same cores)")
    parser.add_argument("--no-check", action="store_true", help="report the targets but exit 0 when one is missed")
    parser.add_argument("--keep", action="store_true", help="keep the bench's work files next to the CSV")
    parser.add_argument("--only", action="append", metavar="METRIC", default=None,
                        help="run only this row (repeat, or separate with commas) and what it needs; the CSV holds "
                             "those rows")
    args = parser.parse_args(argv)
    if args.gpu:
        return bench_gpu(args)
    only = None if args.only is None else {name.strip() for item in args.only for name in item.split(",") if name.strip()}
    if only is not None and (not only or only - set(ROWS)):
        parser.error(f"--only: unknown row(s) {sorted(only - set(ROWS)) or '(none given)'}; rows: {', '.join(ROWS)}")

    def wanted(*names: str) -> bool:
        return only is None or bool(only.intersection(names))

    sizes = SMOKE if args.smoke else FULL
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    out = Path(args.out).resolve()
    workdir = out.parent
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="work-", dir=workdir))
    started = time.perf_counter()
    info = machine_info(threads)
    say(f"finetune bench ({'smoke' if args.smoke else 'full'}): {info['cpu_model']}, {info['cpus_usable']} CPU(s), "
        f"{threads} thread(s), load average {info['loadavg_1_5_15']}")
    rows: dict[str, dict] = {}
    phases: list[tuple[str, float]] = []  # (name, start)

    def phase(name: str):
        say(f"[{time.perf_counter() - started:6.0f} s] {name}")
        phases.append((name, time.perf_counter()))

    # Rows that read the transfer rows' checkpoints, and rows that need no source model.
    needs_transfer = ("transfer_acc_finetune", "transfer_acc_feature_extract", "onnx_infer_img_per_s_b1",
                      "onnx_infer_img_per_s_b64", "export_onnx_s")
    needs_no_weights = ("noop_rerun_s", "decode_passes_demo", "decode_img_per_s_12mp", "dag_build_20exp_s")
    tiny_dir, origin = None, None
    try:
        if wanted("noop_rerun_s", "decode_passes_demo"):
            phase("noop_rerun_s: Snakemake on a finished DAG")
            rows["noop_rerun_s"], tiny_dir = bench_noop_rerun(scratch / "tiny", sizes)
            rows["decode_passes_demo"] = bench_decode_passes(tiny_dir)
        if wanted("decode_img_per_s_12mp"):
            phase("decode_img_per_s_12mp: the decode stage vs ImageFolder + Resize on 12-megapixel JPEGs")
            rows["decode_img_per_s_12mp"] = bench_decode_12mp(scratch / "decode", 2 if args.smoke else PHOTOS, sizes.reps, threads)
        if wanted("dag_build_20exp_s"):
            phase("dag_build_20exp_s: dry runs")
            rows["dag_build_20exp_s"] = bench_dag_build(scratch / "dag", sizes)
        if only is not None and only <= set(needs_no_weights):
            raise _Done

        config = demo_config()
        if args.smoke:
            # The tiny DAG's pretrained model and target split stand in for the demo's.
            if tiny_dir is None:  # --only without the tiny DAG's rows: its weights and split rules alone
                phase("the tiny config's pretrained source model")
                tiny_weights(scratch / "tiny", threads)
                tiny_dir = scratch / "tiny"
            manifest_path, split_csv = tiny_dir / "resources/weights/manifest.json", tiny_dir / "resources/splits/target.csv"
            origin = "the tiny DAG's (smoke)"
        else:
            phase("the demo's pretrained source model")
            manifest_path, split_csv, origin = demo_weights(workdir / "demo", threads)
        say(f"  weights: {origin}")
        manifest = read_manifest(manifest_path)
        source_state = load_state_dict(manifest["path"])

        if wanted(*needs_transfer):
            phase(f"transfer_acc_*: the demo's experiments x seeds {list(sizes.seeds)}")
            transfer_rows, transfer = bench_transfer(config, manifest_path, split_csv, scratch / "transfer", sizes, threads)
            for r in transfer_rows:
                rows[r["metric"]] = r

        if wanted("train_peak_rss_4x"):
            phase("train_peak_rss_4x: peak RSS of a train job on 4x the images vs 1x")
            rows["train_peak_rss_4x"] = bench_train_peak_rss(manifest_path, Path(config["dataset"]["path"]), scratch,
                                                             sizes.rss_images, sizes.rss_image_size, threads)

        if wanted("ddp_cpu_2proc_img_per_s"):
            phase("ddp_cpu_2proc_img_per_s: 2 training processes (gloo) vs 1, same global batch and threads")
            rows["ddp_cpu_2proc_img_per_s"] = bench_ddp_cpu(manifest_path, Path(config["dataset"]["path"]), scratch,
                                                            sizes.ddp_images, IMAGE_SIZE, sizes.ddp_epochs, threads)
        if wanted("recipe_acc_vs_tutorial"):
            phase(f"recipe_acc_vs_tutorial: the demo's finetune vs the PyTorch tutorial's recipe x seeds {list(sizes.seeds)}")
            # Smoke: the tiny DAG's split stands in for the demo's at 100 training images per class.
            rows["recipe_acc_vs_tutorial"] = bench_recipe(config, manifest_path, scratch / "recipe", sizes, threads,
                                                          split_csv if args.smoke else None)

        if wanted("feature_extract_25ep_s", "train_img_per_s"):
            phase("writing the speed rows' images as PNG files (ImageFolder)")
            # Smoke: the tiny DAG's few images stand in for the subset.
            speed_csv = split_csv if args.smoke else speed_split(config, scratch, threads)
            listing = write_image_folder(speed_csv, scratch / "images")
            folder_csv = folder_split_csv(listing, scratch / "images.csv")
            prep = Preprocessing.from_dict(manifest["preprocessing"], IMAGE_SIZE)
            say(f"  {', '.join(f'{k} {len(v)}' for k, v in listing.items())} images in {scratch / 'images'}")

        if wanted("feature_extract_25ep_s"):
            phase("feature_extract_25ep_s: cached features vs the tutorial's frozen backbone")
            rows["feature_extract_25ep_s"] = bench_feature_extract(scratch / "images", folder_csv, manifest, source_state,
                                                                   prep, config, sizes, threads, args.workers)
        if wanted("train_img_per_s"):
            phase("train_img_per_s: full fine-tuning vs the tutorial loop")
            rows["train_img_per_s"] = bench_train_throughput(scratch / "images", folder_csv, manifest, source_state, prep,
                                                             config, sizes, threads, args.workers)
        if wanted("onnx_infer_img_per_s_b1", "onnx_infer_img_per_s_b64"):
            phase("onnx_infer_img_per_s_*: onnxruntime vs eager PyTorch")
            for r in bench_onnx(transfer["checkpoints"]["finetune"], split_csv, scratch, sizes, threads):
                rows[r["metric"]] = r
        if wanted("export_onnx_s"):
            phase("export_onnx_s: the export job vs the export call alone")
            rows["export_onnx_s"] = bench_export_job(transfer["checkpoints"]["finetune"], split_csv, scratch, sizes.reps,
                                                     threads)
    except _Done:
        pass
    finally:
        phases.append(("end", time.perf_counter()))
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    durations = {name: round(end - start, 1) for (name, start), (_, end) in zip(phases, phases[1:])}

    ordered = [rows[name] for name in ROWS if only is None or name in only]
    write_csv(ordered, out)
    info_after = machine_info(threads)
    info["loadavg_1_5_15"] = f"{info['loadavg_1_5_15']} at start, {info_after['loadavg_1_5_15']} at end"
    print_table(ordered, info, checked=not args.smoke)
    total = time.perf_counter() - started
    say("\nwall time per phase: " + "; ".join(f"{name.split(':')[0]} {seconds:.0f} s" for name, seconds in durations.items()))
    say(f"wrote {out} in {total:.0f} s ({total / 60:.1f} min)")
    (out.with_suffix(".json")).write_text(json.dumps({"machine": info, "seconds": round(total, 1), "phases_s": durations,
                                                      "smoke": args.smoke, "weights": origin,
                                                      "only": None if only is None else sorted(only),
                                                      "recipe_acc_vs_tutorial": {k: rows["recipe_acc_vs_tutorial"][k]
                                                                                 for k in ("accuracy", "wall_s")}
                                                      if "recipe_acc_vs_tutorial" in rows else None},
                                                     indent=2) + "\n")
    if args.smoke:
        return 0
    missed = [r["metric"] for r in ordered if check(r)[1] is False]
    if missed:
        say(f"targets missed: {', '.join(missed)} (see docs/bench.md)")
        return 0 if args.no_check else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
