"""Honest model selection: runs are chosen by the validation metric their training recorded
(``train.metric``, at the best epoch; ``train_info.json``), never by a test figure.

Torch- and pandas-free: the summary (leaderboard) and predict (the selected model) choose alike.
Within an experiment (a sweep's runs, or the one run of an experiment without a sweep) the run
whose mean over seeds is best is selected; of its seeds, the one with the best value. Ties go as they
go between epochs (:func:`epoch_score`): with an accuracy, to the lower validation loss of the
best epoch (its mean over seeds, for runs); then to the first written.
"""

from __future__ import annotations

import csv
import math
import re
from fractions import Fraction
from pathlib import Path

from .errors import ConfigError
from .fileio import read_json

METRICS = ("val_accuracy", "val_balanced_accuracy", "val_loss")  # train.metric: history.csv's columns
LOWER_IS_BETTER = {"val_loss"}
SHARES = {"val_accuracy", "val_balanced_accuracy"}  # accuracies (higher is better): ties go to the lower val_loss


def oriented(metric: str, value: float) -> float:
    """``value`` as a score where higher is better."""
    return -value if metric in LOWER_IS_BETTER else value


def epoch_score(row: dict, metric: str) -> tuple[float, float]:
    """How one epoch of a history ranks on ``metric`` (higher is better), as training keeps its best epoch.

    Accuracy ties (and balanced accuracy ties) go to the lower ``val_loss``: on a small validation split the
    accuracy ties for many epochs (40 images: steps of 2.5%), and the first of a tie can be a model whose
    validation loss is still falling (the demo's finetune, seed 0: epoch 2 of 12 at val loss 0.54 instead of 0.20).
    """
    tie_break = -row.get("val_loss", math.inf) if metric in SHARES else 0.0
    return share_score(metric, row[metric]), tie_break


def share_score(metric: str, value: float):
    """``value`` oriented (:func:`oriented`); a share as the fraction it stands for (:func:`exact`), so that two epochs
    or seeds of one balanced accuracy tie: 11/18 as a mean of recalls came out 0.6111111111111112 or 0.611111111111111
    by the recalls summed, and the ulp above won the tie its lower val_loss should have."""
    return exact(value) if metric in SHARES and math.isfinite(value) else oriented(metric, value)


def best_epoch_row(history: list[dict], metric: str) -> dict:
    """The epoch training keeps: the best :func:`epoch_score`, the first of equal ones."""
    return max(history, key=lambda row: epoch_score(row, metric))  # max keeps the first of equal scores


def validation_record(info: dict, folder: str | Path) -> dict:
    """{"metric", "value", "tie_break"}: the metric training chose its best epoch by, that epoch's value,
    and how the run ranks among runs of an equal value (higher is better: :func:`epoch_score`'s second
    part, from the best epoch of the run's history.csv in ``folder``)."""
    metric = info["options"]["metric"]
    return {"metric": metric, "value": float(info[f"best_{metric}"]), "tie_break": tie_break(folder, metric)}


def tie_break(folder: str | Path, metric: str) -> float:
    """The second part of the best epoch's :func:`epoch_score` in ``folder``/history.csv (0 where none)."""
    if metric not in SHARES:
        return 0.0
    with open(Path(folder) / "history.csv", newline="") as f:
        history = [{k: float(v or "nan") for k, v in row.items() if k in (metric, "val_loss")}
                   for row in csv.DictReader(f)]
    return epoch_score(best_epoch_row(history, metric), metric)[1] if history else 0.0


def folder_record(folder: str | Path) -> dict:
    """The record of a run folder, results/<run name>/seed<n>: experiment (the run's name), seed, metric,
    value, tie_break, folder."""
    folder = Path(folder)
    seed = re.fullmatch(r"seed(\d+)", folder.name)
    if seed is None:
        raise ConfigError(f"{folder}: not a run folder (results/<run>/seed<n>)")
    info = read_json(folder / "train_info.json")
    return {"experiment": folder.parent.name, "seed": int(seed.group(1)), **validation_record(info, folder),
            "folder": str(folder)}


def common_metric(records: list[dict]) -> str:
    metrics = sorted({r["metric"] for r in records})
    if len(metrics) != 1:
        named = ", ".join(f"{r['experiment']}: {r['metric']}" for r in records)
        raise ConfigError(f"runs chosen among must share one train.metric; they have {named}")
    return metrics[0]


# The largest denominator of a figure as runs are compared on it (:func:`exact`): a share of validation images right is
# k/n, and a mean over seeds (k1 + k2 + ...)/(seeds x n), far below this for any validation split and seeds. A balanced
# accuracy's (a mean of the classes' recalls) can pass it (C x the lcm of the class counts): two such figures within
# ~1e-14 of each other then tie, and go to the lower val_loss.
EXACT_DENOMINATOR = 10**7


def exact(value: float) -> Fraction:
    """``value`` as the fraction it stands for (the nearest of denominator <= :data:`EXACT_DENOMINATOR`), so that as
    many images right over the seeds tie whatever the order of float additions: 0.0 + 0.3 and 0.1 + 0.2 over two
    seeds are 0.15 and 0.15000000000000002, both 3/20 (rounding to digits still parted such means at its cut points)."""
    return Fraction(value).limit_denominator(EXACT_DENOMINATOR)


def seeds_mean(values) -> Fraction:
    """The mean over seeds as runs are compared on it: of each seed's figure as a fraction (:func:`exact`)."""
    values = [exact(v) for v in values]
    return exact(sum(values) / len(values))


def select_experiment(records: list[dict]) -> str:
    """The run name whose mean validation value over its seeds is best; on a tie, the best mean tie_break,
    then the first written."""
    metric = common_metric(records)
    runs: dict[str, list[dict]] = {}
    for record in records:
        runs.setdefault(record["experiment"], []).append(record)
    return max(runs, key=lambda name: (oriented(metric, seeds_mean(r["value"] for r in runs[name])),
                                       seeds_mean(r.get("tie_break", 0.0) for r in runs[name])))


def select_run(records: list[dict], seed: int | None = None) -> dict:
    """The selected run's record: its experiment by :func:`select_experiment`, then its best seed
    (or ``seed`` where given)."""
    chosen = select_experiment(records)
    mine = [r for r in records if r["experiment"] == chosen and (seed is None or r["seed"] == seed)]
    if not mine:
        raise ConfigError(f"no run of {chosen} with seed {seed}")
    return max(mine, key=lambda r: (share_score(r["metric"], r["value"]), r.get("tie_break", 0.0)))


def choose_model(folders: list, model_name: str, seed: int | None = None) -> dict:
    """The selected run among run folders (every seed of every candidate) and its model file."""
    run = select_run([folder_record(folder) for folder in folders], seed)
    return {**run, "model": str(Path(run["folder"]) / model_name)}
