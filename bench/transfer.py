"""``transfer_acc_finetune`` and ``transfer_acc_feature_extract``: test accuracy of the demo's experiments
against its scratch experiment, mean over seeds, through the pipeline's own train and evaluate stages.

Seed ``s`` draws the few-shot sample (``dataset.seed: s``, cut by the split rule's own code) and trains with
``seed: s``: at 10 images per class the sample moves test accuracy more than the training seed does (docs/bench.md,
"Transfer"), so a mean over training seeds on one sample measures that sample. Every sample is scored on the
same official test images. The note also gives the demo's own sample alone (its ``dataset.seed``, the same
training seeds), the figure this row reported before 2026-11-29."""

from __future__ import annotations

import time
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import SMOKE, Sizes, experiment_options, quiet, row, say

import numpy as np

from finetune.data import SplitSpec, make_split
from finetune.stages import evaluate_stage, train_stage


def sample_split(config: dict, dataset_seed: int, demo_split: Path, workdir: Path) -> Path:
    """The demo's split drawn with ``dataset.seed: dataset_seed``: the demo's own file for its own seed."""
    if dataset_seed == config["dataset"].get("seed", 0):
        return demo_split
    out = workdir / f"split_sample{dataset_seed}.csv"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        frame, _ = make_split(SplitSpec.from_config({**config["dataset"], "seed": dataset_seed}))
        frame.to_csv(out, index=False)
    return out


def train_and_score(config: dict, experiment: str, seed: int, split_csv: Path, manifest: Path, folder: Path,
                    workdir: Path, sizes: Sizes, threads: int) -> float:
    """One run of a demo experiment: its test accuracy."""
    options, pretrained, image_size = experiment_options(config, experiment, seed)
    if sizes is SMOKE:
        options["epochs"] = 1
    started = time.perf_counter()
    train_stage(split_csv, manifest, options, folder / "model.pt", folder / "history.csv",
                folder / "train_info.json", threads, pretrained=pretrained, image_size=image_size,
                feature_cache_dir=workdir / "features", log=quiet)
    report = evaluate_stage(folder / "model.pt", split_csv, folder / "metrics.json",
                            folder / "confusion_matrix.csv", folder / "test_predictions.csv", threads)
    took = time.perf_counter() - started
    say(f"  {experiment} {folder.name}: test accuracy {report['accuracy']:.4f} ({took:.0f} s, "
        f"{report['n_test']} test images)")
    return report["accuracy"]


def control_experiment(config: dict) -> str:
    scratch = [name for name in config["experiments"] if not experiment_options(config, name, 0)[1]]
    if not scratch:
        raise SystemExit("bench: the demo config has no scratch experiment (pretrained: false) to compare with")
    for experiment in ("finetune", "feature_extract"):
        if experiment not in config["experiments"]:
            raise SystemExit(f"bench: the demo config has no {experiment!r} experiment")
    return scratch[0]


def bench_transfer(config: dict, manifest: Path, split_csv: Path, workdir: Path, sizes: Sizes,
                   threads: int) -> tuple[list[dict], dict]:
    """Train every demo experiment for each seed (its own sample) and, for the note, for each training seed on
    the demo's sample, with the pipeline's own train/evaluate stages."""
    control = control_experiment(config)
    demo_seed = config["dataset"].get("seed", 0)
    runs = {(seed, seed) for seed in sizes.seeds} | {(demo_seed, seed) for seed in sizes.seeds}
    accuracy: dict[tuple[str, int, int], float] = {}
    checkpoints = {}
    for dataset_seed, seed in sorted(runs):
        split = sample_split(config, dataset_seed, split_csv, workdir)
        for experiment in config["experiments"]:
            folder = workdir / experiment / f"sample{dataset_seed}_seed{seed}"
            accuracy[experiment, dataset_seed, seed] = train_and_score(
                config, experiment, seed, split, manifest, folder, workdir, sizes, threads)
            if dataset_seed == demo_seed:
                checkpoints.setdefault(experiment, folder / "model.pt")

    def figures(experiment: str, pairs: list[tuple[int, int]]) -> list[float]:
        return [accuracy[experiment, dataset_seed, seed] for dataset_seed, seed in pairs]

    samples = [(seed, seed) for seed in sizes.seeds]
    demo_sample = [(demo_seed, seed) for seed in sizes.seeds]
    rows = []
    for experiment in ("finetune", "feature_extract"):
        ours, base = figures(experiment, samples), figures(control, samples)
        demo_ours, demo_base = figures(experiment, demo_sample), figures(control, demo_sample)
        per_seed = ", ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(ours, base))
        demo_gap = (np.mean(demo_ours) - np.mean(demo_base)) * 100
        rows.append(row(f"transfer_acc_{experiment}", float(np.mean(ours)), float(np.mean(base)), "test accuracy", True,
                        f"{(np.mean(ours) - np.mean(base)) * 100:+.1f} pts over {control}; mean over seeds "
                        f"{list(sizes.seeds)}, seed s = few-shot sample s (dataset.seed) and training seed s; per seed "
                        f"ours/{control}: {per_seed}; the demo's own sample (dataset.seed {demo_seed}) alone, training "
                        f"seeds {list(sizes.seeds)}: {np.mean(demo_ours):.4f} vs {np.mean(demo_base):.4f}, "
                        f"{demo_gap:+.1f} pts"))
    return rows, {"checkpoints": checkpoints}
