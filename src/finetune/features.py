"""``feature_extract`` on cached backbone features: one backbone pass per split (kept in a cache file),
and the head solved full-batch by L-BFGS with an L2 penalty (``optimizer: lbfgs``)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

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


def cached_features(model: nn.Module, train: Data, val: Data, prep: Preprocessing, device: torch.device,
                     cache_file: Path | None, log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    if cache_file is not None and cache_file.exists():
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        if cached["train"].shape[0] == len(train.labels) and cached["val"].shape[0] == len(val.labels):
            log(f"backbone features read from cache {cache_file}")
            return cached["train"], cached["val"]
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
        torch_save(features, cache_file)
    return features["train"], features["val"]
