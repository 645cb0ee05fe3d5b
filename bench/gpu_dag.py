"""``bench.py --gpu --dag``: the 224-px DAG of issue 13 on a GPU, its wall time and how busy the GPU is while
the train jobs fit (``nvidia-smi`` sampled once a second).

The config is the issue's: Fashion-MNIST classes 6-9, 2,000 training images per class at 224 px, batch 128,
bf16 + channels_last, experiments finetune + feature_extract (L-BFGS head), one seed; the source model is
pretrained at 32 px on classes 0-5. Goals (issue 13): the DAG in <= 60 s, the GPU busy (utilization above 0)
in >= 80% of the samples taken during the train jobs' epochs (``epochs_window_unix_s`` in their train_info.json;
the share over their whole ``fit``, set-up included, ``fit_window_unix_s``, is given beside it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import REPO, row, say, snakemake_cmd, with_package_env

import yaml

from finetune.cli import usable_cpus

DAG_GOAL_S = 60.0


def dag_config(fashion_mnist: str, threads: int | None = None) -> dict:
    """The issue's config; ``threads`` for both kinds of job (default: every usable CPU, as the issue has it)."""
    fm = {"format": "fashion-mnist", "path": fashion_mnist}
    threads = threads or usable_cpus()
    return {
        "dataset": {**fm, "classes": [6, 7, 8, 9], "val_fraction": 0.1, "max_train_per_class": 2000, "max_val_per_class": 200},
        "weights": {"source": "pretrain", "arch": "resnet18"},
        "pretrain": {"dataset": {**fm, "classes": [0, 1, 2, 3, 4, 5], "val_fraction": 0.1, "max_train_per_class": 1000,
                                 "max_val_per_class": 200},
                     "image_size": 32, "train": {"epochs": 3, "batch_size": 64, "lr": 0.002, "amp": "bf16", "channels_last": True}},
        "train": {"image_size": 224, "epochs": 3, "batch_size": 128, "amp": "bf16", "channels_last": True, "lr": 0.001,
                  "schedule": "cosine"},
        "experiments": {"finetune": {"strategy": "finetune", "backbone_lr_factor": 0.3},
                        "feature_extract": {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0,
                                            "weight_decay": 0.1, "epochs": 25}},
        "seeds": [0],
        "threads": {"train": threads, "data": threads},
    }


class GpuSampler:
    """``nvidia-smi`` utilization samples, (unix time, percent), once a second, in a background thread."""

    def __init__(self, period_ms: int = 1000):
        self.samples: list[tuple[float, int]] = []
        self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                       f"-lms={period_ms}"], stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            first = line.strip().split(",")[0]
            if first.isdigit():
                self.samples.append((time.time(), int(first)))

    def stop(self) -> list[tuple[float, int]]:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._reader.join(timeout=10)
        return self.samples


def busy_share(samples: list[tuple[float, int]], windows: list[list[float]]) -> tuple[int, int]:
    """(samples with utilization > 0, samples) among those taken inside any of ``windows``."""
    inside = [util for t, util in samples if any(start <= t <= end for start, end in windows)]
    return sum(util > 0 for util in inside), len(inside)


def run_logged(cmd: list[str], log_path: Path, timeout: float = 3600) -> None:
    """Run the DAG with its output going to ``log_path`` as it comes (a run stopped at a time limit still shows how
    far it got); its tail in the error when it fails."""
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=with_package_env(), timeout=timeout).returncode
    if code != 0:
        raise SystemExit(f"bench: the 224-px DAG failed ({code}):\n{' '.join(cmd)}\n{log_path.read_text()[-4000:]}")


def job_seconds(benchmarks: Path) -> dict[str, float]:
    """Each job's wall seconds from its Snakemake ``benchmark:`` file, keyed by the file's path under ``benchmarks``."""
    seconds = {}
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) >= 2:
            seconds[str(tsv.relative_to(benchmarks).with_suffix(""))] = float(lines[1].split("\t")[0])
    return seconds


def bench_gpu_dag(workdir: Path, fashion_mnist: str, threads: int | None = None) -> tuple[list[dict], dict]:
    """Run the DAG once in ``workdir`` (emptied first: a finished DAG would rerun nothing); the busy-share row
    and the figures for bench_gpu.json. ``threads``: each job's (default: every CPU, the issue's config)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    configfile = workdir / "config.yaml"
    config = dag_config(fashion_mnist, threads)
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    sampler = GpuSampler()
    started = time.perf_counter()
    try:
        run_logged(snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile",
                                 str(configfile), "--cores", str(usable_cpus())), workdir / "snakemake.log")
    finally:
        samples = sampler.stop()
    wall = time.perf_counter() - started
    infos = [json.loads(p.read_text()) for p in sorted(workdir.glob("results/*/seed*/train_info.json"))]
    epochs, fits = [i["epochs_window_unix_s"] for i in infos], [i["fit_window_unix_s"] for i in infos]
    busy, total = busy_share(samples, epochs)
    fit_busy, fit_total = busy_share(samples, fits)
    figures = {"wall_s": round(wall, 1), "goal_wall_s": DAG_GOAL_S, "busy_samples": busy, "epoch_samples": total,
               "busy_samples_whole_fit": fit_busy, "fit_samples": fit_total,
               "all_samples": len(samples), "busy_samples_whole_dag": sum(u > 0 for _, u in samples),
               "epochs_windows_unix_s": epochs, "fit_windows_unix_s": fits,
               "threads": config["threads"]["train"], "cores": usable_cpus(),
               "job_s": job_seconds(workdir / "results" / "benchmarks")}
    say(f"  224-px DAG ({config['threads']['train']} threads a job, --cores {usable_cpus()}): {wall:.0f} s (goal <= {DAG_GOAL_S:.0f} s); GPU busy in {busy} of {total} samples during the "
        f"train jobs' epochs ({fit_busy} of {fit_total} over their whole fit)")
    note = (f"224-px DAG of issue 13 (finetune + feature_extract, 8,000 train images, batch 128, bf16 + channels_last): "
            f"wall {wall:.0f} s (goal <= {DAG_GOAL_S:.0f} s); nvidia-smi samples with utilization > 0 during the train "
            f"jobs' epochs vs all samples then (issue 13: busy >= 80% of the epochs); over each train job's whole fit, "
            f"its set-up before the first epoch included, {fit_busy} of {fit_total}; over the whole DAG "
            f"{figures['busy_samples_whole_dag']} of {len(samples)}")
    return [row("gpu_busy_share_dag224", busy, max(total, 1), "samples", True, note)], figures


def main(argv: list[str] | None = None) -> int:
    """The DAG alone, e.g. with fewer threads a job than cores so that jobs run side by side (docs/gpu.md, "On a GPU"):
    ``python bench/gpu_dag.py FASHION_MNIST WORKDIR --threads 8``; its figures as JSON on the last line."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("fashion_mnist")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="each job's threads (default: every usable CPU)")
    args = parser.parse_args(argv)
    rows, figures = bench_gpu_dag(args.workdir.resolve(), args.fashion_mnist, args.threads)
    print(json.dumps({key: figures[key] for key in ("wall_s", "threads", "cores", "busy_samples", "epoch_samples",
                                                    "busy_samples_whole_fit", "fit_samples", "job_s")}
                     | {"busy_share": round(rows[0]["ratio"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
