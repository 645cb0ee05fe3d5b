"""``feature_extract`` on cached backbone features: one backbone pass per split (kept in a cache file),
and the head solved full-batch by L-BFGS with an L2 penalty (``optimizer: lbfgs``)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import WriteError
from .fileio import torch_save
from .models import strip_output_layer
from .tensors import Data, Preprocessing, batched_forward


def lbfgs_step(optimizer: torch.optim.LBFGS, head: nn.Module, decayed: list[nn.Parameter], criterion: nn.Module,
                x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One full-batch L-BFGS step on ``criterion + weight_decay/2 * ||decayed||^2``.

    Returns the logits and data loss before the step (what the other optimizers report per batch);
    a non-finite loss is returned before any step is taken.
    """
    with torch.no_grad():
        logits = head(x)
        loss = criterion(logits, y)
    if not torch.isfinite(loss):
        return logits, loss

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        objective = criterion(head(x), y)
        if weight_decay:
            objective = objective + 0.5 * weight_decay * sum(p.pow(2).sum() for p in decayed)
        objective.backward()
        return objective

    optimizer.step(closure)
    return logits, loss


def _read_cache(cache_file: Path | None, n_train: int, n_val: int,
                log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (train, val) features, or None where there are none to use. A cache file that cannot be read
    (cut short, damaged) or holds other shapes is said, removed and computed again: it is derived data."""
    try:
        seen = os.stat(cache_file) if cache_file is not None else None
    except OSError:  # none there (or no folder to hold one)
        seen = None
    if seen is None:
        return None
    try:
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        train, val = cached["train"], cached["val"]
        if (isinstance(train, torch.Tensor) and isinstance(val, torch.Tensor) and train.ndim == val.ndim == 2
                and train.shape[0] == n_train and val.shape[0] == n_val and train.shape[1] == val.shape[1]
                and train.is_floating_point() and val.is_floating_point()):
            return train, val
        why = f"it holds other shapes than {n_train} train and {n_val} val feature vectors"
    except Exception as exc:  # noqa: BLE001  (torch.load's errors for a damaged file are of many kinds)
        why = f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    log(f"warning: feature cache {cache_file}: {why}; removed, the features are computed again")
    try:  # unless another job (another seed of the run) has written it afresh meanwhile
        now = os.stat(cache_file)
        if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
            cache_file.unlink()
    except OSError:
        pass
    return None


def cached_features(model: nn.Module, train: Data, val: Data, prep: Preprocessing, device: torch.device,
                     cache_file: Path | None, log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    cached = _read_cache(cache_file, len(train.labels), len(val.labels), log)
    if cached is not None:
        log(f"backbone features read from cache {cache_file}")
        return cached
    # A copy, channels-last: ResNet18 inference on these CPUs ran ~1.7x faster in NHWC (see batched_forward);
    # the features are the same up to float rounding.
    backbone = strip_output_layer(copy.deepcopy(model)).eval().to(memory_format=torch.channels_last)
    started = time.perf_counter()
    features = {
        "train": batched_forward(backbone, train.images, prep, device, channels_last=True),
        "val": batched_forward(backbone, val.images, prep, device, channels_last=True),
    }
    seconds = time.perf_counter() - started
    log(f"backbone features computed once: {len(train.labels) + len(val.labels)} images in {seconds:.1f}s")
    if cache_file is not None:
        try:
            torch_save(features, cache_file)
        except (WriteError, OSError) as exc:  # a cache: the run goes on with the features it has
            log(f"warning: the features are not cached ({str(exc).split('; ')[0]}); the run goes on with them, and the "
                "next run of these weights and images computes them again")
    return features["train"], features["val"]
