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
  decode_passes_demo           images decoded over the bench's whole DAG vs the images its jobs read
  export_onnx_s                the export_onnx job vs the export call alone
  train_peak_rss_4x            peak RSS of a train job on 4x the images vs on 1x (same image size)
  ddp_cpu_2proc_img_per_s      one run trained by 2 gloo processes (train.devices 2) vs 1, same global batch
  transfer_acc_finetune        test accuracy of the demo's experiments vs scratch, mean over seeds (seed s: few-shot
                               sample s, training seed s)
  transfer_acc_feature_extract
  recipe_acc_vs_tutorial       test accuracy of the demo's finetune at 100 train images per class vs the PyTorch
                               tutorial's recipe (SGD + StepLR, 25 epochs), mean over seeds; both wall times

Usage:
  python bench/bench.py                      # the full benchmark, checks the targets (about 25 min on 2 idle
                                             # cores before recipe_acc_vs_tutorial, which alone took 46 min, shared)
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
import os
import shutil
import signal
import sys
import traceback
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
from gpu import batch_sizes, bench_gpu, gpu_args_problem
from inputs import demo_weights, folder_split_csv, speed_split, tiny_weights, write_image_folder
from onnx_speed import bench_onnx
from recipe import bench_recipe
from report import ROWS, check, machine_info, print_table, verdicts
from train_speed import bench_feature_extract, bench_train_throughput
from transfer import bench_transfer


# decode_img_per_s_12mp's folder: 48 photos, so the decode job's fixed cost (reading and checking the split file,
# creating, flushing and fsyncing the array and its record: 20-40 ms) weighs in a rate in img/s as little as in a
# real folder; with 12 it was a tenth of the stage's time (docs/bench.md, decode_img_per_s_12mp).
PHOTOS = 48


# Rows that read the transfer rows' checkpoints, and rows that need no source model.
NEEDS_TRANSFER = ("transfer_acc_finetune", "transfer_acc_feature_extract", "onnx_infer_img_per_s_b1",
                  "onnx_infer_img_per_s_b64", "export_onnx_s")
NEEDS_NO_WEIGHTS = ("noop_rerun_s", "decode_passes_demo", "decode_img_per_s_12mp", "dag_build_20exp_s")


def at_least(minimum: int):
    """An argparse type: an integer of ``minimum`` or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be {minimum} or more")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def out_problem(out: Path) -> str | None:
    """Why the CSV ``out`` cannot be written (checked before any row runs, which may take half an hour), or None."""
    if out.suffix.lower() != ".csv":
        return f"{out}: give a .csv file (its JSON companion is written beside it, as {out.with_suffix('.json').name})"
    if out.is_dir():
        return f"{out}: is a folder; give the CSV file to write in it, e.g. {out / 'bench.csv'}"
    folder = next((p for p in out.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        return f"{out}: {folder} is a file, not a folder"
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        return f"{out}: {folder} is not writable"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="CSV to write (default: results/bench/bench.csv; with --gpu, bench_gpu.csv there); its "
                             "folder holds the bench's work files. An earlier CSV there holding rows this run does not "
                             "measure is kept aside as <name>.<its time>.csv")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a couple of minutes, no target checks")
    parser.add_argument("--gpu", action="store_true",
                        help="the training loop on CUDA at 224 px, batch 32/128/256 (bench_gpu.csv; docs/bench.md)")
    parser.add_argument("--reps", type=at_least(1), default=None, help="--gpu only: repeats of each figure (default 3; smoke 1)")
    parser.add_argument("--batches", type=batch_sizes, default=None, metavar="B1,B2,...",
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
    parser.add_argument("--threads", type=at_least(1), default=usable_cpus(), help="torch (and decoding) threads, both sides")
    parser.add_argument("--workers", type=at_least(0), default=0,
                        help="the tutorial's DataLoader worker processes (0: load in the training process, "
                             "which keeps both sides on the same cores)")
    parser.add_argument("--no-check", action="store_true", help="report the targets but exit 0 when one is missed")
    parser.add_argument("--keep", action="store_true", help="keep the bench's work files next to the CSV")
    parser.add_argument("--only", action="append", metavar="METRIC", default=None,
                        help="run only this row (repeat, or separate with commas) and what it needs; the CSV holds "
                             "those rows")
    args = parser.parse_args(argv)
    gpu_only = [f"--{name}" for name in ("reps", "batches", "device", "data", "dag") if getattr(args, name) is not None]
    gpu_only += ["--compile"] if args.compile else []
    if gpu_only and not args.gpu:
        parser.error(f"{', '.join(gpu_only)}: --gpu only (the CPU rows' sizes are fixed: --smoke or the full run)")
    if args.gpu and args.only is not None:
        parser.error("--only chooses among the CPU rows; --gpu measures its own rows (docs/bench.md, GPU rows)")
    cpu_only = [f"--{name}" for name in ("workers", "keep") if getattr(args, name) != parser.get_default(name)]
    if args.gpu and cpu_only:
        parser.error(f"{', '.join(cpu_only)}: for the CPU rows only; --gpu keeps no work folder and loads no images "
                     "through a DataLoader")
    args.out_given = args.out is not None
    args.out = Path(args.out if args.out_given else default_out()).resolve()
    if args.gpu and not args.out_given:
        args.out = args.out.with_name("bench_gpu.csv")
    if out_problem(args.out):
        parser.error(f"--out {out_problem(args.out)}")
    if args.dag is not None:  # the DAG runs in a folder of its own: a relative path is read from here
        args.dag = str(Path(args.dag).resolve())
    if args.gpu:
        gpu_problem = gpu_args_problem(args)
        if gpu_problem:
            parser.error(gpu_problem)
    if args.only is not None:
        args.only = {name.strip() for item in args.only for name in item.split(",") if name.strip()}
        if not args.only or args.only - set(ROWS):
            parser.error(f"--only: unknown row(s) {sorted(args.only - set(ROWS)) or '(none given)'}; rows: {', '.join(ROWS)}")
    return args


class Session:
    """One CPU bench run: its settings, work folder, the rows measured so far and the wall time per phase."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.only = args, args.only
        self.sizes = SMOKE if args.smoke else FULL
        self.threads = args.threads  # at least 1 (parse_args)
        torch.set_num_threads(self.threads)
        self.out = Path(args.out).resolve()
        self.workdir = self.out.parent
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="work-", dir=self.workdir))
        self.started = time.perf_counter()
        self.rows: dict[str, dict] = {}
        self.phases: list[tuple[str, float]] = []  # (name, start)
        self.origin = None  # where the source model came from

    def wanted(self, *names: str) -> bool:
        return self.only is None or bool(self.only.intersection(names))

    def phase(self, name: str) -> None:
        say(f"[{time.perf_counter() - self.started:6.0f} s] {name}")
        self.phases.append((name, time.perf_counter()))

    def add(self, *rows: dict) -> None:
        for row in rows:
            self.rows[row["metric"]] = row

    def finish(self) -> dict[str, float]:
        """Close the last phase, remove the work files (unless --keep); the seconds per phase."""
        self.phases.append(("end", time.perf_counter()))
        if not self.args.keep:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return {name: round(end - start, 1) for (name, start), (_, end) in zip(self.phases, self.phases[1:])}


def measure_dag_rows(run: Session) -> Path | None:
    """The rows that run Snakemake or the decode stage only; the tiny DAG's folder where it ran."""
    tiny_dir = None
    if run.wanted("noop_rerun_s", "decode_passes_demo"):
        run.phase("noop_rerun_s: Snakemake on a finished DAG")
        noop, tiny_dir = bench_noop_rerun(run.scratch / "tiny", run.sizes)
        run.add(noop, bench_decode_passes(tiny_dir))
    if run.wanted("decode_img_per_s_12mp"):
        run.phase("decode_img_per_s_12mp: the decode stage vs ImageFolder + Resize on 12-megapixel JPEGs")
        run.add(bench_decode_12mp(run.scratch / "decode", 2 if run.args.smoke else PHOTOS, run.sizes.reps, run.threads))
    if run.wanted("dag_build_20exp_s"):
        run.phase("dag_build_20exp_s: dry runs")
        run.add(bench_dag_build(run.scratch / "dag", run.sizes))
    return tiny_dir


def source_model(run: Session, tiny_dir: Path | None) -> tuple[Path, Path]:
    """(weights manifest, target split) the training rows start from: the demo's, or the tiny DAG's in smoke."""
    if not run.args.smoke:
        run.phase("the demo's pretrained source model")
        manifest_path, split_csv, run.origin = demo_weights(run.workdir / "demo", run.threads)
    else:
        # The tiny DAG's pretrained model and target split stand in for the demo's.
        if tiny_dir is None:  # --only without the tiny DAG's rows: its weights and split rules alone
            run.phase("the tiny config's pretrained source model")
            tiny_weights(run.scratch / "tiny", run.threads)
            tiny_dir = run.scratch / "tiny"
        manifest_path, split_csv = tiny_dir / "resources/weights/manifest.json", tiny_dir / "resources/splits/target.csv"
        run.origin = "the tiny DAG's (smoke)"
    say(f"  weights: {run.origin}")
    return manifest_path, split_csv


def measure_training_rows(run: Session, config: dict, manifest_path: Path, split_csv: Path) -> dict | None:
    """Transfer accuracy, a train job's memory, two-process training, the tutorial's recipe; the transfer runs."""
    sizes, threads, dataset = run.sizes, run.threads, Path(config["dataset"]["path"])
    transfer = None
    if run.wanted(*NEEDS_TRANSFER):
        run.phase(f"transfer_acc_*: the demo's experiments x seeds {list(sizes.seeds)}")
        transfer_rows, transfer = bench_transfer(config, manifest_path, split_csv, run.scratch / "transfer", sizes, threads)
        run.add(*transfer_rows)
    if run.wanted("train_peak_rss_4x"):
        run.phase("train_peak_rss_4x: peak RSS of a train job on 4x the images vs 1x")
        run.add(bench_train_peak_rss(manifest_path, dataset, run.scratch, sizes.rss_images, sizes.rss_image_size, threads))
    if run.wanted("ddp_cpu_2proc_img_per_s"):
        run.phase("ddp_cpu_2proc_img_per_s: 2 training processes (gloo) vs 1, same global batch and threads")
        run.add(bench_ddp_cpu(manifest_path, dataset, run.scratch, sizes.ddp_images, IMAGE_SIZE, sizes.ddp_epochs, threads))
    if run.wanted("recipe_acc_vs_tutorial"):
        run.phase(f"recipe_acc_vs_tutorial: the demo's finetune vs the PyTorch tutorial's recipe x seeds {list(sizes.seeds)}")
        # Smoke: the tiny DAG's split stands in for the demo's at 100 training images per class.
        run.add(bench_recipe(config, manifest_path, run.scratch / "recipe", sizes, threads,
                             split_csv if run.args.smoke else None))
    return transfer


def measure_speed_rows(run: Session, config: dict, manifest_path: Path, split_csv: Path) -> None:
    """Head-only and full training speed, from a folder of PNG files, against the tutorial's loops."""
    if not run.wanted("feature_extract_25ep_s", "train_img_per_s"):
        return
    manifest = read_manifest(manifest_path)
    source_state = load_state_dict(manifest["path"])
    run.phase("writing the speed rows' images as PNG files (ImageFolder)")
    # Smoke: the tiny DAG's few images stand in for the subset.
    speed_csv = split_csv if run.args.smoke else speed_split(config, run.scratch, run.threads)
    folder = run.scratch / "images"
    listing = write_image_folder(speed_csv, folder)
    folder_csv = folder_split_csv(listing, run.scratch / "images.csv")
    prep = Preprocessing.from_dict(manifest["preprocessing"], IMAGE_SIZE)
    say(f"  {', '.join(f'{k} {len(v)}' for k, v in listing.items())} images in {folder}")
    common = (folder, folder_csv, manifest, source_state, prep, config, run.sizes, run.threads, run.args.workers)
    if run.wanted("feature_extract_25ep_s"):
        run.phase("feature_extract_25ep_s: cached features vs the tutorial's frozen backbone")
        run.add(bench_feature_extract(*common))
    if run.wanted("train_img_per_s"):
        run.phase("train_img_per_s: full fine-tuning vs the tutorial loop")
        run.add(bench_train_throughput(*common))


def measure_export_rows(run: Session, transfer: dict | None, split_csv: Path) -> None:
    """onnxruntime vs PyTorch inference, and the export job vs the export call, on the transfer runs' finetune model."""
    if run.wanted("onnx_infer_img_per_s_b1", "onnx_infer_img_per_s_b64"):
        run.phase("onnx_infer_img_per_s_*: onnxruntime vs eager PyTorch")
        run.add(*bench_onnx(transfer["checkpoints"]["finetune"], split_csv, run.scratch, run.sizes, run.threads))
    if run.wanted("export_onnx_s"):
        run.phase("export_onnx_s: the export job vs the export call alone")
        run.add(bench_export_job(transfer["checkpoints"]["finetune"], split_csv, run.scratch, run.sizes.reps, run.threads))


def measure(run: Session) -> None:
    """Every row asked for, in the order that lets later rows reuse earlier rows' inputs."""
    tiny_dir = measure_dag_rows(run)
    if run.only is not None and run.only <= set(NEEDS_NO_WEIGHTS):
        return
    config = demo_config()
    manifest_path, split_csv = source_model(run, tiny_dir)
    transfer = measure_training_rows(run, config, manifest_path, split_csv)
    measure_speed_rows(run, config, manifest_path, split_csv)
    measure_export_rows(run, transfer, split_csv)


def report(run: Session, info: dict, durations: dict[str, float], failure: BaseException | None = None) -> int:
    """Write the CSV and its JSON companion, print the table; the exit status (1: a target missed, or a row failed:
    the rows measured before it are written all the same)."""
    asked = [name for name in ROWS if run.only is None or name in run.only]
    not_measured = [name for name in asked if name not in run.rows]
    if not_measured and failure is None:  # a row measure() left out: a bug of the bench, not a figure to leave out
        failure = RuntimeError(f"rows asked for but not measured: {', '.join(not_measured)}")
    ordered = [run.rows[name] for name in asked if name in run.rows]
    write_csv(ordered, run.out)
    info["loadavg_1_5_15_end"] = machine_info(run.threads)["loadavg_1_5_15"]
    print_table(ordered, info, checked=not run.args.smoke)
    total = time.perf_counter() - run.started
    say("\nwall time per phase: " + "; ".join(f"{name.split(':')[0]} {seconds:.0f} s" for name, seconds in durations.items()))
    say(f"wrote {run.out} in {total:.0f} s ({total / 60:.1f} min)")
    recipe = run.rows.get("recipe_acc_vs_tutorial")
    summary = {"machine": info, "seconds": round(total, 1), "phases_s": durations, "smoke": run.args.smoke,
               "weights": run.origin, "only": None if run.only is None else sorted(run.only),
               "recipe_acc_vs_tutorial": {k: recipe[k] for k in ("accuracy", "wall_s")} if recipe else None,
               "targets": None if run.args.smoke else verdicts(ordered)}  # --smoke checks none
    if failure is not None:
        error = ("".join(traceback.format_exception(failure)) if not isinstance(failure, (SystemExit, Stopped))
                 else str(failure))
        kept = str(run.scratch) if run.scratch.exists() else None
        summary["failed"] = {"error": error, "not_measured": not_measured, "work_folder_kept": kept}
    run.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    if isinstance(failure, Stopped):
        say(f"\nbench: {failure}; {len(ordered)} row(s) measured before are in {run.out}; not measured: "
            f"{', '.join(not_measured) or 'none'}")
        return failure.status
    if failure is not None:
        say(f"\nbench: a row failed, {len(ordered)} row(s) measured before it are in {run.out}; not measured: "
            f"{', '.join(not_measured)}." + (f" Its work folder (logs) is kept: {kept}" if kept else "")
            + f"\n{summary['failed']['error']}")
        return 1
    if run.args.smoke:
        return 0
    missed = [r["metric"] for r in ordered if check(r)[1] is False]
    if missed:
        say(f"targets missed: {', '.join(missed)} (see docs/bench.md)")
        return 0 if run.args.no_check else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu:
        return bench_gpu(args)
    run = Session(args)
    info = machine_info(run.threads)
    say(f"finetune bench ({'smoke' if args.smoke else 'full'}): {info['cpu_model']}, {info['cpus_usable']} CPU(s), "
        f"{run.threads} thread(s), load average {info['loadavg_1_5_15']}")
    failure = None
    signal.signal(signal.SIGTERM, stopped_by_signal)  # as Ctrl-C: the work folder removed, the rows measured kept
    try:
        measure(run)
    except (KeyboardInterrupt, Stopped) as exc:
        failure = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
    except (Exception, SystemExit) as exc:  # run_checked's SystemExit too: the rows measured before it are kept
        failure = exc
        run.args.keep = True  # the failed step's logs are in the work folder
    finally:
        durations = run.finish()
    return report(run, info, durations, failure)


class Stopped(Exception):
    """The bench was stopped (SIGTERM, Ctrl-C): its work folder is removed, the rows measured before are written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.status = 128 + signum  # as a shell reports a process a signal ended


def stopped_by_signal(signum, frame) -> None:
    raise Stopped(signum)


if __name__ == "__main__":
    sys.exit(main())
