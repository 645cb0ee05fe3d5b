"""Mixup and cutmix of a training batch, with soft targets (timm's ``Mixup`` semantics, batch mode).

One mixing ratio ``lam`` per batch, drawn from Beta(alpha, alpha); each image is mixed with the image
at the same place of a random permutation of the batch. With both alphas > 0, each batch is mixed by
one of them, cutmix with probability 0.5 (timm's ``switch_prob``). Mixup: ``lam * x + (1 - lam) *
x[perm]``. Cutmix: a box of area ``(1 - lam)`` of the image (centre drawn uniformly, clipped at the
edges) is pasted from ``x[perm]``, and ``lam`` is corrected to the share of the image actually kept.
The targets: ``lam * smooth(onehot(y)) + (1 - lam) * smooth(onehot(y[perm]))``, where ``smooth`` is
label smoothing ``(1 - s) * onehot + s / classes``; each row sums to 1.

Every random number comes from one CPU ``torch.Generator`` (the Beta draw from a NumPy generator
seeded by it), so a run is the same on any device and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Mixing:
    """What one batch's mixing drew: how to recompute it."""

    kind: str                      # "mixup" | "cutmix"
    lam: float                     # the share of the original image (cutmix: corrected to the box's area)
    perm: torch.Tensor             # the partner of each image (CPU)
    box: tuple[int, int, int, int] | None = None  # cutmix: (top, bottom, left, right), rows and columns [top, bottom)


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot rows of ``y`` with label smoothing: ``1 - s + s/C`` on the label, ``s/C`` elsewhere."""
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def draw_mixing(n: int, height: int, width: int, mixup_alpha: float, cutmix_alpha: float,
                generator: torch.Generator) -> Mixing:
    """The mixing of a batch of ``n`` images ``height`` x ``width``, drawn from ``generator``."""
    cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand(1, generator=generator) < 0.5))
    alpha = cutmix_alpha if cutmix else mixup_alpha
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(n, generator=generator)
    if not cutmix:
        return Mixing("mixup", lam, perm)
    box = _cutmix_box(height, width, lam, generator)
    top, bottom, left, right = box
    return Mixing("cutmix", 1.0 - (bottom - top) * (right - left) / (height * width), perm, box)


def _cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of sides ``sqrt(1 - lam)`` of the image's, centred anywhere, clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return top, bottom, left, right


def apply_mixing(x: torch.Tensor, y: torch.Tensor, mixing: Mixing, num_classes: int,
                 smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed images (N, C, H, W) and their soft targets (N, classes), on ``x``'s device."""
    perm = mixing.perm.to(x.device)
    if mixing.kind == "mixup":
        mixed = x * mixing.lam + x[perm] * (1.0 - mixing.lam)
    else:
        top, bottom, left, right = mixing.box
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    targets = smooth_one_hot(y, num_classes, smoothing)
    return mixed, targets * mixing.lam + targets[perm] * (1.0 - mixing.lam)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
              smoothing: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Mixing]:
    """Mix one training batch: (images, soft targets, what was drawn)."""
    mixing = draw_mixing(len(x), x.shape[-2], x.shape[-1], mixup_alpha, cutmix_alpha, generator)
    mixed, targets = apply_mixing(x, y, mixing, num_classes, smoothing)
    return mixed, targets, mixing
