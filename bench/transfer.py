"""``transfer_acc_finetune`` and ``transfer_acc_feature_extract``: test accuracy of the demo's experiments
against its scratch experiment, mean over seeds, through the pipeline's own train and evaluate stages."""

from __future__ import annotations

import time
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import SMOKE, Sizes, experiment_options, quiet, row, say

import numpy as np

from finetune.stages import evaluate_stage, train_stage


def bench_transfer(config: dict, manifest: Path, split_csv: Path, workdir: Path, sizes: Sizes,
                   threads: int) -> tuple[list[dict], dict]:
    """Train every demo experiment for each seed with the pipeline's own train/evaluate stages."""
    accuracy: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    checkpoints = {}
    for seed in sizes.seeds:
        for experiment in config["experiments"]:
            options, pretrained, image_size = experiment_options(config, experiment, seed)
            if sizes is SMOKE:
                options["epochs"] = 1
            folder = workdir / experiment / f"seed{seed}"
            started = time.perf_counter()
            train_stage(split_csv, manifest, options, folder / "model.pt", folder / "history.csv",
                        folder / "train_info.json", threads, pretrained=pretrained, image_size=image_size,
                        feature_cache_dir=workdir / "features", log=quiet)
            report = evaluate_stage(folder / "model.pt", split_csv, folder / "metrics.json",
                                    folder / "confusion_matrix.csv", folder / "test_predictions.csv", threads)
            took = time.perf_counter() - started
            accuracy.setdefault(experiment, []).append(report["accuracy"])
            seconds.setdefault(experiment, []).append(took)
            checkpoints.setdefault(experiment, folder / "model.pt")
            say(f"  {experiment} seed {seed}: test accuracy {report['accuracy']:.4f} ({took:.0f} s, "
                f"{report['n_test']} test images)")
    scratch = [name for name in config["experiments"] if not experiment_options(config, name, 0)[1]]
    if not scratch:
        raise SystemExit("bench: the demo config has no scratch experiment (pretrained: false) to compare with")
    control = scratch[0]
    rows = []
    for experiment in ("finetune", "feature_extract"):
        if experiment not in accuracy:
            raise SystemExit(f"bench: the demo config has no {experiment!r} experiment")
        ours, base = float(np.mean(accuracy[experiment])), float(np.mean(accuracy[control]))
        per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(accuracy[experiment], accuracy[control]))
        rows.append(row(f"transfer_acc_{experiment}", ours, base, "test accuracy", True,
                        f"{(ours - base) * 100:+.1f} pts over {control}; mean over seeds {list(sizes.seeds)}; "
                        f"per seed ours/{control}: {per_seed}"))
    return rows, {"checkpoints": checkpoints, "seconds": seconds}

