"""Learning-rate range test (Leslie Smith; fastai's ``lr_find``) on exactly ``train``'s data path and device.

:func:`find_lr` sets up training as :func:`finetune.training.fit` does (same optimizer and parameter
groups, same batches, augmentation, normalisation and device), then raises the learning rate
exponentially from ``min_lr`` to ``max_lr`` over ``steps`` optimizer steps, each group at
``lr * lr_scale``. Each step's loss is recorded with its bias-corrected exponential moving average
(smoothing ``beta``: ``avg = beta * avg + (1 - beta) * loss``, smoothed = ``avg / (1 - beta**(i+1))``).
The test stops as soon as the smoothed loss exceeds ``diverge_factor`` times its minimum so far, or
is not finite. Unlike ``fit``, the loop reads every step's loss (it must, to stop on divergence).

Suggestion: the lr of the steepest descent of the smoothed loss (its largest drop from one step to
the next, at or before its minimum, after the first ``SKIP_START`` steps, where the average still
rests on a few batches): ``method: steepest``. Where the smoothed loss never falls there, the lr of
its minimum / 10: ``method: min_loss/10``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .errors import ConfigError
from .tensors import Data, Preprocessing
from .training import (TrainOptions, _epoch_order, _prepare_epoch, _read_batches, _set_up, _train_step,
                       _training_batch)

DEFAULT_STEPS = 200
# The range test's settings (config key lr_find; the schema gives the same defaults) and their defaults.
DEFAULT_RANGE = {"min_lr": 1e-7, "max_lr": 10.0, "steps": DEFAULT_STEPS, "smoothing": 0.98, "diverge_factor": 4.0}
SKIP_START = 10  # fastai's skip_start: the first steps' smoothed loss says more about a few batches than about the lr


@dataclass
class LrCurve:
    lr: list[float]
    loss: list[float]
    smoothed: list[float]
    suggestion: float
    method: str            # steepest | min_loss/10
    diverged: bool         # stopped before max_lr because the smoothed loss diverged

    def rows(self) -> list[dict]:
        return [{"step": i + 1, "lr": lr, "loss": loss, "smoothed_loss": s}
                for i, (lr, loss, s) in enumerate(zip(self.lr, self.loss, self.smoothed))]


def range_test_problems(settings: dict) -> list[str]:
    """What is wrong with the range test's settings (``lr_find`` of the config, as rule lr_find passes them), by the
    schema's bounds: the workflow's start refuses them first; a script run alone met a TypeError (`steps: "10"`), ran
    with a smoothing of 1.5, or blamed min_lr for a diverge_factor below 1."""
    from .cli import is_number as number, is_whole as whole

    bounds = {"min_lr": (lambda v: number(v) and v > 0, "a number above 0"),
              "max_lr": (lambda v: number(v) and v > 0, "a number above 0"),
              "steps": (lambda v: whole(v) and v >= 2, "a whole number, at least 2"),
              "smoothing": (lambda v: number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
              "diverge_factor": (lambda v: number(v) and v > 1, "a number above 1")}
    return [f"{key} must be {what}, not {settings[key]!r}" for key, (ok, what) in bounds.items()
            if key in settings and not ok(settings[key])]


def range_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``min_lr`` to ``max_lr``, evenly spaced on a log scale."""
    if not 0 < min_lr < max_lr or steps < 2:
        raise ConfigError(f"lr_find: needs 0 < min_lr < max_lr and steps >= 2 (here {min_lr}, {max_lr}, {steps})")
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average of ``losses``."""
    average, smoothed = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (i + 1)))
    return smoothed


def suggest(lrs: list[float], smoothed: list[float], skip_start: int = SKIP_START) -> tuple[float, str]:
    """(suggested lr, method): the steepest fall of the smoothed loss up to its minimum, else min-loss lr / 10.

    The first ``skip_start`` steps are left out (all kept when the curve is too short to leave them out, or where
    the loss only fell among them). Below ``lrs[0]`` only where the loss was lowest at the first step."""
    skip = skip_start if len(smoothed) > skip_start + 2 else 0
    finite = [s if math.isfinite(s) else math.inf for s in smoothed]
    lowest = min(range(skip, len(finite)), key=finite.__getitem__)
    drops = [(finite[i] - finite[i - 1], i) for i in range(skip + 1, lowest + 1) if finite[i] < finite[i - 1]]
    if drops:
        return lrs[min(drops)[1]], "steepest"
    if skip and lrs[lowest] / 10 < lrs[0]:
        # the loss fell (if at all) among the steps left out: look at them rather than suggest an lr never tried
        return suggest(lrs, smoothed, skip_start=0)
    return lrs[lowest] / 10, "min_loss/10"


def find_lr(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions, num_classes: int,
            min_lr: float = DEFAULT_RANGE["min_lr"], max_lr: float = DEFAULT_RANGE["max_lr"], steps: int = DEFAULT_STEPS,
            smoothing: float = DEFAULT_RANGE["smoothing"], diverge_factor: float = DEFAULT_RANGE["diverge_factor"],
            feature_cache: Path | None = None,
            log: Callable[[str], None] = print) -> LrCurve:
    """Run the range test on ``model`` (which it trains: pass a fresh one) and return the curve and suggestion."""
    if opts.optimizer == "lbfgs":
        raise ConfigError("lr_find: optimizer lbfgs chooses its own step (line search); it has no lr to find")
    lrs = range_lrs(min_lr, max_lr, steps)
    setup = _set_up(model, train, val, prep, opts, num_classes, feature_cache, log)
    _prepare_epoch(setup, 0)  # the first epoch's trainable parameters (gradual: the head)
    losses, smoothed = [], []
    for lr, (x, y, _) in zip(lrs, _batches(setup)):  # one process: no share of a global batch
        for group in setup.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x, y = _training_batch(setup, x, y)
        losses.append(float(_train_step(setup, x, y)[1].item()))  # the one read per step
        smoothed = smooth(losses, smoothing)
        if _diverges(smoothed, diverge_factor):
            break
    diverged = _diverges(smoothed, diverge_factor)
    suggestion, method = suggest(lrs[: len(losses)], smoothed)
    if suggestion < lrs[0]:
        # The loss never fell: its lowest was at the first lr tried, and a tenth of that was never tried. Trained
        # at it, a run can end at chance accuracy without a word (lr 10 from a range of 100 to 1e5, say).
        raise ConfigError(
            f"lr_find: the smoothed loss was lowest at the first lr tried, {lrs[0]:.3g} (lr_find.min_lr: {min_lr:g}), "
            f"and {'diverged' if diverged else 'never fell'} after it ({len(losses)} step(s), to lr {lrs[len(losses) - 1]:.3g}): "
            f"the range starts above every lr that trains this run, and its suggestion ({suggestion:.3g}) would be one "
            f"it never tried. Lower lr_find.min_lr (to {min_lr / 1000:g}, say), or set the run's lr yourself")
    log(f"lr_find: {len(losses)} steps, lr {lrs[0]:.2e} to {lrs[len(losses) - 1]:.2e}"
        f"{' (stopped: loss diverged)' if diverged else ''}; suggested lr {suggestion:.3g} ({method})")
    return LrCurve(lr=lrs[: len(losses)], loss=losses, smoothed=smoothed, suggestion=suggestion, method=method,
                   diverged=diverged)


def _diverges(smoothed: list[float], diverge_factor: float) -> bool:
    last = smoothed[-1]
    return not math.isfinite(last) or last > diverge_factor * min(smoothed)


def _batches(setup):
    """Training batches as ``fit`` reads them, epoch after epoch, for as long as asked."""
    while True:
        yield from _read_batches(setup, _epoch_order(setup))
