"""Evaluation plots as small functions: data in, one PNG file out (matplotlib, Agg backend, no torch).

Each function takes plain numbers (arrays, lists, a DataFrame), draws one figure, writes it
atomically to ``out_path`` and closes it, so a rule can call several in one process without
leaking figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import atomic_path  # noqa: E402
from .selection import SHARES, best_epoch_row  # noqa: E402

DPI = 110


def _save(fig, out_path: str | Path) -> None:
    try:
        fig.tight_layout()
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")  # long class names: widen, never clip
    finally:
        plt.close(fig)


def confusion_matrix_plot(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], out_path: str | Path,
                          title: str = "Confusion matrix") -> None:
    """Counts in every cell; the colour is the row-normalised share (recall on the diagonal)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {n} class names")
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    side = min(16.0, max(4.5, 0.6 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    # class names as written: parse_math off, or a name with two `$` ("$5-$10") is drawn as TeX or stops the job
    labels = [_tick_label(name) for name in class_names]
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right", parse_math=False)
    ax.set_yticks(range(n), labels=labels, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} ({int(cm.sum())} images)")
    if n <= 30:
        fontsize = 9 if n <= 12 else 6
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.5 else "black")
    _save(fig, out_path)


def _tick_label(name: str, most: int = 40) -> str:
    """A class name as a tick label: at most ``most`` characters, a longer one cut in the middle ("Looo…g name"), its
    start and end kept, so that the figure keeps its size and names that share a start stay apart."""
    name = str(name)
    if len(name) <= most:
        return name
    head = (most - 1) // 2
    return f"{name[:head]}…{name[-(most - 1 - head):]}"


def reliability_plot(bins: Sequence[dict], ece: float, out_path: str | Path, title: str = "Reliability") -> None:
    """Reliability diagram from :func:`finetune.metrics.expected_calibration_error`'s bins.

    Top: accuracy per confidence bin (bars) against the bin's mean confidence (red ticks, the red
    line is the gap) and the diagonal (perfect calibration); bottom: how many images fall in each
    bin. Empty bins are left blank.
    """
    lows = np.array([b["low"] for b in bins], dtype=float)
    highs = np.array([b["high"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=float)
    accuracy = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins], dtype=float)
    confidence = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins], dtype=float)
    width = highs - lows
    filled = counts > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.bar(lows[filled], accuracy[filled], width=width[filled], align="edge", color="tab:blue", alpha=0.8,
            edgecolor="black", label="accuracy in bin")
    centres = lows[filled] + width[filled] / 2
    top.vlines(centres, accuracy[filled], confidence[filled], color="tab:red", linewidth=1.5)
    top.plot(centres, confidence[filled], "_", color="tab:red", markersize=14, markeredgewidth=2.5,
             label="mean confidence in bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}: ECE {ece:.4f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lows, counts, width=width, align="edge", color="tab:grey", edgecolor="black")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    _save(fig, out_path)


def accuracy_columns(columns, metric: str) -> list[str]:
    """The accuracy curves drawn: train and validation accuracy, and the validation figure that chose the epoch kept
    where it is another share (val_balanced_accuracy)."""
    wanted = ["train_accuracy", "val_accuracy", *([metric] if metric in SHARES - {"val_accuracy"} else [])]
    return [column for column in wanted if column in columns]


def learning_curves_plot(history, out_path: str | Path, title: str = "Learning curves",
                         best_epoch: int | None = None, metric: str = "val_accuracy") -> int | None:
    """Loss and accuracy per epoch, train and validation, from a ``history.csv`` DataFrame (or its path), with
    a dotted line at ``best_epoch``, the epoch whose weights training kept by ``metric`` (train_info.json's; where
    not given, the best by ``metric``, accuracy ties to the lower validation loss). Returns the epoch marked."""
    import pandas as pd

    frame = history if isinstance(history, pd.DataFrame) else pd.read_csv(history)
    if frame.empty or "epoch" not in frame.columns:
        raise ValueError("history has no epochs to plot")
    epochs = frame["epoch"].to_numpy()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for column, style in (("train_loss", "-o"), ("val_loss", "--s")):
        if column in frame.columns:
            loss_ax.plot(epochs, frame[column], style, label=column.replace("_", " "), markersize=4)
    for column, style in zip(accuracy_columns(frame.columns, metric), ("-o", "--s", ":^")):
        acc_ax.plot(epochs, frame[column], style, label=column.replace("_", " "), markersize=4)
    if best_epoch is None and metric in frame.columns and frame[metric].notna().any():
        best_epoch = int(best_epoch_row(frame.reset_index(drop=True).to_dict("records"), metric)["epoch"])
    if best_epoch is not None and best_epoch in epochs:
        for ax in (loss_ax, acc_ax):
            ax.axvline(best_epoch, color="grey", linestyle=":",
                       label=f"kept (epoch {best_epoch}, best {metric.replace('_', ' ')})")
    else:
        best_epoch = None
    for ax, ylabel in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    acc_ax.set_ylim(0, 1.02)
    fig.suptitle(f"{title} ({len(epochs)} epoch{'s' if len(epochs) != 1 else ''})")
    _save(fig, out_path)
    return best_epoch



def lr_find_plot(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float,
                 method: str, out_path: str | Path, title: str = "Learning-rate range test") -> None:
    """Loss against learning rate (log scale), raw and smoothed, with the suggested lr marked."""
    lrs, losses, smoothed = (np.asarray(v, dtype=np.float64) for v in (lrs, losses, smoothed))
    if len(lrs) == 0:
        raise ValueError("the range test recorded no steps to plot")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="lightgrey", linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(suggestion, color="tab:red", linestyle=":", label=f"suggested lr {suggestion:.2e} ({method})")
    finite = smoothed[np.isfinite(smoothed)]
    if len(finite):  # the divergence at the end would flatten the rest of the curve
        low, start = finite.min(), finite[0]
        ax.set_ylim(low - 0.1 * abs(low), max(start, low) + 0.5 * abs(max(start, low) - low) + 0.1 * abs(low) + 1e-6)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title} ({len(lrs)} steps)")
    _save(fig, out_path)
