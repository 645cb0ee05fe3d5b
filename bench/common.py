"""Shared by every benchmark family: paths, sizes, timing, the ratio row, the CSV, subprocess and config helpers.

Imported first (bench/bench.py does): it sets ``OMP_WAIT_POLICY`` before anything imports torch. It
imports no torch itself.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "src", REPO / "tests"):  # finetune; tests/helpers.py (the tiny config)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
# Threads that wait for work sleep instead of spinning, on both sides (torch's OpenMP here, onnxruntime's
# pool in onnx_speed.py). On a machine shared with other jobs, libgomp's default spin-wait makes torch up to
# 60x slower at batch 1 (measured: 1.8 vs 112 img/s), and the figures would measure the neighbours.
# Must be set before torch is imported; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SPIN = os.environ["OMP_WAIT_POLICY"].upper() == "ACTIVE"

import yaml  # noqa: E402

COLUMNS = ["metric", "ours", "baseline", "ratio", "unit", "higher_is_better", "note"]
IMAGE_SIZE = 32
DEMO_CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
NOT_LOOP_OPTIONS = ("pretrained", "image_size")  # as in workflow/rules/common.smk


@dataclass(frozen=True)
class Sizes:
    """How much work each row does. ``full`` follows the demo config; ``smoke`` only proves the code runs."""

    train_epochs: int           # train_img_per_s: epochs per timed run
    reps: int                   # timed repetitions (median) of the training rows
    snakemake_reps: int         # noop_rerun_s (dag_build_20exp_s: at most 3, each is a few seconds)
    onnx_reps: int
    onnx_calls_b1: int          # calls per repetition
    onnx_calls_b64: int
    seeds: tuple[int, ...]      # transfer rows
    tiny_experiments: int       # experiments in the DAG run to completion for noop_rerun_s
    fe_epochs: int              # feature_extract_25ep_s: epochs of head-only training
    rss_images: int             # train_peak_rss_4x: training images of the 1x job (the other has 4x)
    rss_image_size: int
    ddp_images: int             # ddp_cpu_2proc_img_per_s: training images
    ddp_epochs: int
    recipe_tutorial_epochs: int  # recipe_acc_vs_tutorial: the tutorial recipe's epochs (ours: the demo's; smoke 1)


FULL = Sizes(train_epochs=2, reps=3, snakemake_reps=5, onnx_reps=5, onnx_calls_b1=200, onnx_calls_b64=6,
             seeds=(0, 1, 2), tiny_experiments=3, fe_epochs=25,
             rss_images=4000, rss_image_size=128, recipe_tutorial_epochs=25, ddp_images=1024, ddp_epochs=2)
SMOKE = Sizes(train_epochs=1, reps=1, snakemake_reps=1, onnx_reps=1, onnx_calls_b1=5, onnx_calls_b64=1,
              seeds=(0,), tiny_experiments=1, fe_epochs=2,
              rss_images=40, rss_image_size=32, recipe_tutorial_epochs=2, ddp_images=40, ddp_epochs=1)


# --------------------------------------------------------------------------- messages and timing

def say(message: str = "") -> None:
    print(message, flush=True)


def quiet(_message: str) -> None:
    pass


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> str:
    """'median (min-max, n=3)' for the note."""
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{median(values):.3g} ({min(values):.3g}-{max(values):.3g}, n={len(values)})"


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


# --------------------------------------------------------------------------- rows and the CSV

def row(metric: str, ours: float, baseline: float, unit: str, higher_is_better: bool, note: str) -> dict:
    return {"metric": metric, "ours": ours, "baseline": baseline, "ratio": ours / baseline if baseline else math.nan,
            "unit": unit, "higher_is_better": higher_is_better, "note": note}


_WRITTEN: set[Path] = set()  # the CSVs this process wrote: an earlier run's is kept aside once, before the first write


def write_csv(rows: list[dict], out: Path) -> None:
    """The rows as a CSV at ``out``. An earlier run's CSV there that holds rows this one does not (a full run's, before
    an ``--only`` run or one stopped by a failure) is kept aside first, with its JSON companion (:func:`keep_earlier`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.resolve() not in _WRITTEN:
        keep_earlier(out, {r["metric"] for r in rows})
        _WRITTEN.add(out.resolve())
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "ours": f"{r['ours']:.6g}", "baseline": f"{r['baseline']:.6g}",
                             "ratio": f"{r['ratio']:.4g}"})


def keep_earlier(out: Path, metrics: set[str]) -> Path | None:
    """Move an earlier CSV at ``out`` (and its ``.json``) to ``<stem>.<its time>.csv`` where it holds a row not in
    ``metrics``, which writing ``out`` would lose (said). The path it went to, or None."""
    try:
        with open(out, newline="") as handle:
            earlier = {row.get("metric") for row in csv.DictReader(handle)} - {None}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    lost = sorted(earlier - metrics)
    if not lost:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(out.stat().st_mtime))
    kept = out.with_name(f"{out.stem}.{stamp}{out.suffix}")
    os.replace(out, kept)
    if out.with_suffix(".json").exists():
        os.replace(out.with_suffix(".json"), kept.with_suffix(".json"))
    say(f"  the earlier {out.name} holds row(s) this run does not measure ({', '.join(lost[:4])}"
        f"{', ...' if len(lost) > 4 else ''}): kept as {kept.name}")
    return kept


def default_out() -> str:
    return str(REPO / "results" / "bench" / "bench.csv")


# --------------------------------------------------------------------------- subprocesses and the demo config

def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def with_package_env() -> dict:
    """This process's environment with the repo's src/ first on PYTHONPATH: what the bench's subprocesses run with."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH")] if p)}


def run_checked(cmd: list[str], what: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                            env=with_package_env())
    if result.returncode != 0:
        raise SystemExit(f"bench: {what} failed ({result.returncode}):\n{' '.join(cmd)}\n{result.stdout[-4000:]}")
    return result


def demo_config() -> dict:
    """config/config.yaml with the schema's defaults filled in, exactly as workflow/rules/common.smk does."""
    from snakemake.utils import validate

    config = yaml.safe_load(DEMO_CONFIG.read_text())
    experiments = copy.deepcopy(config.get("experiments"))
    validate(config, str(SCHEMA))
    if experiments is not None:
        config["experiments"] = experiments
    return config


def experiment_options(config: dict, experiment: str, seed: int) -> tuple[dict, bool, int | None]:
    """The training loop's options of one demo run, as the train rule passes them, on the CPU; plus pretrained,
    image_size. The rows that train through them are CPU rows, against baselines that run on the CPU (the tutorial's
    loop) and figures recomputed there: the demo's `device: auto` would train on a GPU where there is one (and
    leave the model there), so that `make bench` would compare a GPU with a CPU, and fail, on a machine with one."""
    merged = {**config["train"], **config["experiments"][experiment]}
    options = {k: v for k, v in merged.items() if k not in NOT_LOOP_OPTIONS} | {"seed": int(seed), "device": "cpu"}
    return options, bool(merged.get("pretrained", True)), merged.get("image_size")
