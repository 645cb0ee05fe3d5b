"""What the epochs leave behind: the history, the best epoch (kept on the CPU), early stopping, and the
resume state a rerun continues from as if never stopped (model, optimizer, scaler, every generator)."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from .fileio import torch_save
from .options import TrainOptions
from .selection import LOWER_IS_BETTER, epoch_score

if TYPE_CHECKING:
    from .training import _Setup


@dataclass
class Progress:
    """What the epochs so far leave: the resume state holds it, the next epoch continues it."""

    history: list[dict]
    best: dict              # "state" (of setup.trained, on the CPU), "metric", "epoch" (1-based; -1: none yet), "val_loss"
    since_best: int = 0     # epochs since the best one
    start_epoch: int = 0    # 0-based: the first epoch this call of fit trains
    ended: dict | None = None  # restored from a finished state (:func:`finished_state`): how the run ended


def fresh_progress(setup: _Setup) -> Progress:
    worst = -math.inf if maximizes(setup.opts) else math.inf
    return Progress(history=[], best={"state": copy.deepcopy(setup.trained.state_dict()), "metric": worst, "epoch": -1})


def maximizes(opts: TrainOptions) -> bool:
    return opts.metric not in LOWER_IS_BETTER


def track_best(progress: Progress, trained: nn.Module, row: dict, opts: TrainOptions) -> None:
    """Keep a CPU copy of the trained state if this epoch is the best so far (:func:`improves`); else count one
    more epoch since the best."""
    if improves(row, progress.best, opts):
        progress.best = {"state": {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()},
                         "metric": row[opts.metric], "epoch": row["epoch"], "val_loss": row["val_loss"]}
        progress.since_best = 0
    else:
        progress.since_best += 1


def improves(row: dict, best: dict, opts: TrainOptions) -> bool:
    """Whether an epoch's row beats the best so far on ``opts.metric`` (:func:`finetune.selection.epoch_score`:
    accuracy ties go to the lower validation loss). Validation figures only: the test split never chooses."""
    if best["epoch"] < 0:
        return True
    kept = {opts.metric: best["metric"], "val_loss": best.get("val_loss", math.inf)}
    return epoch_score(row, opts.metric) > epoch_score(kept, opts.metric)


def stops_early(opts: TrainOptions, progress: Progress, log: Callable[[str], None]) -> bool:
    """Whether the run stops after the epochs in its history: its metric has not improved for
    ``early_stopping_patience`` epochs. With ``strategy: gradual`` the count starts again at the unfreeze, so the
    backbone always trains for at least that many epochs (a head-only phase never stops the run before it)."""
    patience = opts.early_stopping_patience
    if patience is None:
        return False
    waited = progress.since_best
    if opts.strategy == "gradual":
        waited = min(waited, len(progress.history) - opts.unfreeze_epoch)
    if waited < patience:
        return False
    tie = " (nor val_loss at equal accuracy)" if maximizes(opts) else ""
    log(f"early stopping: {opts.metric}{tie} did not improve for {progress.since_best} epoch(s); "
        f"best epoch {progress.best['epoch']}")
    return True


def best_model_state(setup: _Setup, progress: Progress) -> dict:
    """The whole model's state at the best epoch; with cached features the backbone as loaded, the best head."""
    best_state = progress.best["state"]
    if setup.trained is not setup.model:
        best_state = {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
        best_state.update({f"{setup.head_name}.{k}": v for k, v in progress.best["state"].items()})
    return best_state


def resume_state(setup: _Setup, progress: Progress, epoch: int) -> dict:
    """All a rerun needs to continue after ``epoch`` (0-based) as if never stopped."""
    return {
        "epoch": epoch, "model": setup.trained.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "scaler": setup.scaler.state_dict(), "shuffle": setup.shuffle.get_state(),
        "augment": setup.augment.get_state(), "mix": setup.mix.get_state(), "rng": rng_state(setup.place.device),
        "history": progress.history, "best": progress.best, "since_best": progress.since_best,
        **({"ema": setup.ema.state_dict()} if setup.ema is not None else {}),
    }


def finished_state(setup: _Setup, progress: Progress, stopped_early: bool, diverged: str | None) -> dict:
    """What is left of a run's resume state once it has ended: its epochs and best weights, and how it ended;
    no optimizer or generator state (nothing more is trained from it), so about the model's size, not four
    times it. Restored (:func:`restore_progress`), the run ends at once as it ended."""
    return {"epoch": len(progress.history) - 1, "history": progress.history, "best": progress.best,
            "since_best": progress.since_best, "model_keys": sorted(setup.trained.state_dict()),
            "ended": {"stopped_early": stopped_early, "diverged": diverged}}


def save_resume(path: Path, state: dict) -> None:
    torch_save(state, path)  # atomic: a failed write leaves the previous epoch's state as it was


def restore_progress(setup: _Setup, resume_path: Path | None, log: Callable[[str], None]) -> Progress | None:
    """Continue from the saved resume state, if there is a usable one: restore it into ``setup``."""
    state = load_resume(resume_path, log) if resume_path is not None and resume_path.exists() else None
    if state is not None and set(state.get("model_keys") or state["model"]) != set(setup.trained.state_dict()):
        log(f"warning: resume state {resume_path} holds other parameters than this run trains; starting again from epoch 1")
        state = None
    if state is None:
        return None
    if "ended" not in state:
        restore_training_state(setup, state, resume_path, log)
    progress = Progress(history=state["history"], best=state["best"], since_best=state["since_best"],
                         start_epoch=state["epoch"] + 1, ended=state.get("ended"))
    if progress.ended is not None:
        log(f"resuming from {resume_path}: the run had ended after {len(progress.history)} epoch(s); writing its outputs")
    elif progress.start_epoch < setup.opts.epochs:
        log(f"resuming from {resume_path}: epoch {progress.start_epoch + 1} of {setup.opts.epochs}")
    else:  # stopped after its last epoch's state was saved, before its outputs were written
        log(f"resuming from {resume_path}: all {setup.opts.epochs} epochs were done; writing the outputs")
    return progress


def restore_training_state(setup: _Setup, state: dict, resume_path: Path, log: Callable[[str], None]) -> None:
    setup.trained.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    if not setup.lbfgs:  # (L-BFGS's one group is the head's, built apart from setup.groups)
        # load_state_dict makes new group dicts: the epochs' freezing must set the lr scales of those (gradual's
        # unfreezing after a resume), not of the dicts the optimizer was built from.
        setup.groups = setup.optimizer.param_groups
    setup.scaler.load_state_dict(state["scaler"])
    setup.shuffle.set_state(state["shuffle"])
    if "augment" in state:
        setup.augment.set_state(state["augment"])
    elif setup.opts.augment:  # written before the augmentation had its own generator
        log(f"warning: resume state {resume_path} holds no augmentation generator state; the augmentation "
            "continues from a freshly seeded one (the run is no longer the same as an uninterrupted one)")
    if "mix" in state:
        setup.mix.set_state(state["mix"])
    if setup.ema is not None:
        setup.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"], setup.place.device)


def _first_line(exc: Exception) -> str:
    """An exception's first line (torch.load's errors run to paragraphs of advice on weights_only)."""
    return (str(exc).strip().splitlines() or [""])[0]


def load_resume(resume_path: Path, log: Callable[[str], None]) -> dict | None:
    """The saved resume state, or None (with a warning) when the file cannot be read."""
    try:
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError("not a resume state written by this training loop")
        return state
    except Exception as exc:  # a file from another torch version, or damaged outside this program
        log(f"warning: resume state {resume_path} is unreadable ({type(exc).__name__}: {_first_line(exc)}); "
            "starting again from epoch 1 (it is overwritten after the first epoch)")
        return None


def rng_state(device: torch.device) -> dict:
    """The global generators' states; CUDA's only for a run on CUDA: reading them starts CUDA (a context and
    its GPU memory), which a ``device: cpu`` run on a machine with a GPU never needs."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda"])
