"""What the bench reports: the rows in order, their targets, the machine, and the printed table."""

from __future__ import annotations

import datetime
import math
import os
import platform
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import say

import torch

from finetune.cli import usable_cpus

ROWS = [
    "train_img_per_s", "feature_extract_25ep_s", "noop_rerun_s", "dag_build_20exp_s",
    "onnx_infer_img_per_s_b1", "onnx_infer_img_per_s_b64", "transfer_acc_finetune", "transfer_acc_feature_extract",
    "decode_img_per_s_12mp", "decode_passes_demo", "export_onnx_s", "train_peak_rss_4x",
    "ddp_cpu_2proc_img_per_s",
    "recipe_acc_vs_tutorial",
]
GPU_ROWS = ["train_img_per_s_cuda224_b256", "fit_vs_ceiling_cuda224_b256", "fit_vs_ceiling_cuda224_b32"]  # --gpu
COMPILE_ROWS = ["compile_vs_eager_cuda224_b32", "compile_vs_eager_cuda224_b256"]  # --gpu --compile: no target
# (comparison, bound) on the ratio; the accuracy rows are checked as a difference in points instead.
TARGETS = {
    "train_img_per_s": (">=", 1.2),
    "feature_extract_25ep_s": ("<=", 0.05),
    "noop_rerun_s": ("<=", 2.0),
    "dag_build_20exp_s": ("<=", 3.0),
    "onnx_infer_img_per_s_b1": (">=", 1.5),
    "decode_img_per_s_12mp": (">=", 4.0),
    "decode_passes_demo": ("<=", 1.05),
    "export_onnx_s": ("<=", 2.0),
    "train_peak_rss_4x": ("<=", 1.25),
    "ddp_cpu_2proc_img_per_s": (">=", 0.75),  # 2 processes on the same CPU cores: about 1x (the path, not speed)
    "train_img_per_s_cuda224_b256": (">=", 2.0),
    "fit_vs_ceiling_cuda224_b256": (">=", 0.95),
    "fit_vs_ceiling_cuda224_b32": (">=", 0.9),
    "gpu_busy_share_dag224": (">=", 0.8),  # --gpu --dag
}
TRANSFER_MIN_POINTS = 5.0     # pretrained must beat scratch by this many points of test accuracy
FEATURE_EXTRACT_MAX_POINTS = 1.0  # cached features must not change the accuracy by more than this
RECIPE_MIN_POINTS = 1.0       # the demo's finetune recipe must beat the PyTorch tutorial's by this many points
DECODE_COUNT_MIN_RATIO = 1.0  # every image a job reads is decoded at least once: below, the count missed a pass


def verdicts(rows: list[dict]) -> dict[str, dict]:
    """{metric: {"target", "met"}} of the rows that have a target, for the JSON beside the CSV (whose columns are the
    figures alone): what was missed stays on disk, also after a run with --no-check."""
    found = {}
    for r in rows:
        target, met = check(r)
        if met is not None:
            found[r["metric"]] = {"target": target, "met": bool(met),
                                  **({"acc_diff_pts": r["acc_diff_pts"]} if "acc_diff_pts" in r else {})}
    return found


def machine_info(threads: int) -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": model, "cpus_usable": usable_cpus(), "cpus_online": os.cpu_count(), "threads": threads,
        "loadavg_1_5_15": [round(v, 2) for v in load], "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }



def check(r: dict) -> tuple[str, bool | None]:
    """('target', met?) of a row; None where the row has no target."""
    metric = r["metric"]
    if metric in TARGETS:
        op, bound = TARGETS[metric]
        met = r["ratio"] >= bound if op == ">=" else r["ratio"] <= bound
        target = f"ratio {op} {bound:g}"
        if metric == "feature_extract_25ep_s":
            met = met and abs(r["acc_diff_pts"]) <= FEATURE_EXTRACT_MAX_POINTS
            target += f", |acc diff| <= {FEATURE_EXTRACT_MAX_POINTS:g} pt"
        if metric == "decode_passes_demo":  # fewer decodes than images read: the count itself is broken (a job that
            # decodes without its `decoded N images` line would read as a pass)
            met = met and r["ratio"] >= DECODE_COUNT_MIN_RATIO
            target = f"{DECODE_COUNT_MIN_RATIO:g} <= {target}"
        return target, met
    if metric == "recipe_acc_vs_tutorial":
        return f">= +{RECIPE_MIN_POINTS:g} pt", (r["ours"] - r["baseline"]) * 100 >= RECIPE_MIN_POINTS
    if metric.startswith("transfer_acc_"):
        return f">= +{TRANSFER_MIN_POINTS:g} pts", (r["ours"] - r["baseline"]) * 100 >= TRANSFER_MIN_POINTS
    return "", None


def print_table(rows: list[dict], info: dict, checked: bool = True) -> None:
    say()
    say(f"finetune benchmark - {info['date']}")
    say(f"machine: {info['cpu_model']}, {info['cpus_usable']} usable CPU(s) of {info['cpus_online']}, "
        f"{info['threads']} torch thread(s), load average {info['loadavg_1_5_15']}"
        + (f" at start, {info['loadavg_1_5_15_end']} at end" if "loadavg_1_5_15_end" in info else "")
        + f"; torch {info['torch']}, "
        f"Python {info['python']}, OMP_WAIT_POLICY={info['omp_wait_policy']}" + (f"; GPU {info['gpu']}" if info.get("gpu") else ""))
    header = f"{'metric':<30} {'ours':>11} {'baseline':>11} {'ratio':>8}  {'unit':<14} {'target':<34} {'met':<4}"
    say(header)
    say("-" * len(header))
    for r in rows:
        target, met = check(r)
        mark = "" if met is None or not checked else ("yes" if met else "NO")
        say(f"{r['metric']:<30} {r['ours']:>11.4g} {r['baseline']:>11.4g} {r['ratio']:>8.3g}  {r['unit']:<14} "
            f"{target:<34} {mark:<4}")
    say()
    for r in rows:
        say(f"  {r['metric']}: {r['note']}")

