#!/usr/bin/env python
"""Choose the demo's training settings without the test set: a development protocol.

The demo trains on a few images per class (``dataset.max_train_per_class``) and scores on Fashion-MNIST's
official test set. Choosing settings by that score would be model selection on the test set. This script
scores candidate settings on other samples instead: for each dataset seed (not the demo's), the split rule's
own train and val picks, and as the scored set ``--dev-per-class`` other images per class from the training
file (never the official test file). Each candidate trains with the pipeline's own ``train_stage`` and is
scored by ``evaluate_stage``; the table gives the mean over dataset seeds x training seeds.

  .venv/bin/python bench/dev_protocol.py --manifest resources/weights/manifest.json   # after `make demo`
  .venv/bin/python bench/dev_protocol.py --manifest ... --only demo scratch --out /tmp/dev

Its figures for the demo (2026-11-29, docs/bench.md "Results"): finetune 0.891, scratch 0.782; of the variants
below only ema_decay (with its warm-up) scored higher, 0.896, within the runs' spread; augment: true scored
lower (finetune 0.829, scratch 0.745). For a source model other than the demo's, make its manifest with the
demo's rules under another config and pass it with --manifest (docs/bench.md, "Findings for the demo", lists those tried).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import sys
import tempfile
from pathlib import Path

# common first: it puts src/ on sys.path and sets OMP_WAIT_POLICY before torch is imported.
from common import REPO, experiment_options, quiet, say

import numpy as np
import pandas as pd
import yaml

from finetune.data import SplitSpec, make_split
from finetune.stages import evaluate_stage, train_stage

# name: (experiment of the demo config, overrides of its options)
CANDIDATES = {
    "demo": ("finetune", {}),
    "scratch": ("scratch", {}),
    "feature_extract": ("feature_extract", {}),
    "backbone_lr_1.0": ("finetune", {"backbone_lr_factor": 1.0}),
    "lr_3e-3": ("finetune", {"lr": 0.003}),
    "layer_decay_0.7": ("finetune", {"layer_decay": 0.7}),
    "epochs_20": ("finetune", {"epochs": 20}),
    "ema_0.99": ("finetune", {"ema_decay": 0.99}),  # with ema_warmup, the default
    "ema_0.999": ("finetune", {"ema_decay": 0.999}),
    "ema_0.99_no_warmup": ("finetune", {"ema_decay": 0.99, "ema_warmup": False}),
    "augment": ("finetune", {"augment": True}),
    "scratch_augment": ("scratch", {"augment": True}),
}


def dev_split(config: dict, seed: int, per_class: int, out: Path) -> Path:
    """The split rule's train and val rows for dataset seed ``seed``; as 'test' rows, ``per_class`` other images
    of each class from the same training file (the official test file is never listed)."""
    dataset = config["dataset"]
    if dataset.get("format") != "fashion-mnist":
        raise SystemExit("dev_protocol: the demo's dataset (format fashion-mnist) only")
    frame, _ = make_split(SplitSpec.from_config({**dataset, "seed": seed}))
    kept = frame[frame["split"].isin(["train", "val"])]
    images = f"{dataset['path']}/train-images-idx3-ubyte.gz"
    with gzip.open(f"{dataset['path']}/train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read()[8:], np.uint8)
    used = set(kept["path"])
    names = kept.drop_duplicates("label").set_index("label")["class_name"].to_dict()
    rng = np.random.default_rng(100 + seed)
    rows = []
    for label, fashion_class in enumerate(dataset["classes"]):
        pool = [i for i in np.flatnonzero(labels == fashion_class) if f"{images}#{i}" not in used]
        rows += [{"path": f"{images}#{i}", "label": label, "class_name": names[label], "split": "test"}
                 for i in rng.choice(pool, per_class, replace=False)]
    pd.concat([kept, pd.DataFrame(rows)]).to_csv(out, index=False)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="the source model's weights manifest")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--dataset-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--dev-per-class", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    if 0 in args.dataset_seeds and config["dataset"].get("seed", 0) == 0:
        say("note: dataset seed 0 is the demo's own sample")
    work = args.out or Path(tempfile.mkdtemp(prefix="dev_protocol-"))
    work.mkdir(parents=True, exist_ok=True)
    splits = {s: dev_split(config, s, args.dev_per_class, work / f"split{s}.csv") for s in args.dataset_seeds}
    say(f"dev protocol: dataset seeds {args.dataset_seeds} x training seeds {args.seeds}, {args.dev_per_class} "
        f"dev images per class; work files in {work}")
    for name in args.only:
        experiment, overrides = CANDIDATES[name]
        scores = []
        for dataset_seed, seed in itertools.product(args.dataset_seeds, args.seeds):
            options, pretrained, image_size = experiment_options(config, experiment, seed)
            folder = work / name / f"data{dataset_seed}_seed{seed}"
            train_stage(splits[dataset_seed], args.manifest, {**options, **overrides}, folder / "model.pt",
                        folder / "history.csv", folder / "train_info.json", args.threads, pretrained=pretrained,
                        image_size=image_size, feature_cache_dir=work / "features", log=quiet)
            report = evaluate_stage(folder / "model.pt", splits[dataset_seed], folder / "metrics.json",
                                    folder / "confusion_matrix.csv", folder / "predictions.csv", args.threads)
            scores.append(report["accuracy"])
        say(f"{name:16s} dev accuracy {np.mean(scores):.4f} (runs: {', '.join(f'{a:.3f}' for a in scores)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
