"""Augmentation of a training batch at once, on its device: random resized crop and horizontal flip
(``train.augment``), drawn from a generator of its own so a run is the same on any device."""

from __future__ import annotations

import math

import torch


AUGMENT_SCALE = (0.35, 1.0)    # share of the image's area a random crop covers
AUGMENT_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height), drawn log-uniformly


def augment_batch(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
                  part_of: tuple[int, int] | None = None) -> torch.Tensor:
    """Random resized crop to ``size`` x ``size`` and horizontal flip of every image of a batch, at once.

    ``x``: (N, 3, H, W), uint8 or float, on any device (the stored squares at the resize size, or
    already cropped images). Returns float32 pixels (0-255) on ``x``'s device. Each crop is a whole
    number of pixels (box drawn as torchvision's ``RandomResizedCrop`` draws it: area share
    :data:`AUGMENT_SCALE`, aspect :data:`AUGMENT_RATIO`) resized bilinearly, without antialiasing,
    exactly as ``torch.nn.functional.interpolate`` resizes the cropped region; one ``grid_sample``
    does the whole batch. Every random number comes from ``generator`` (a CPU generator; None:
    torch's global one), so a run is the same on any device.

    ``part_of=(offset, total)``: ``x`` is images ``offset ...`` of a batch of ``total`` (one training
    process's share): the random numbers of the whole batch are drawn and ``x`` gets its images' share,
    so every process draws alike and the batch is augmented as one process would augment it.
    """
    n, _, h, w = x.shape
    offset, total = part_of if part_of is not None else (0, n)
    top, left, height, width, flip = (t[offset:offset + n] for t in _crop_boxes(total, h, w, generator))
    columns = _source_coordinates(left, width, size, w)
    columns = torch.where(flip[:, None], columns.flip(1), columns)
    rows = _source_coordinates(top, height, size, h)
    grid = torch.stack([columns[:, None, :].expand(n, size, size), rows[:, :, None].expand(n, size, size)], dim=-1)
    grid = grid.to(torch.float32)
    if x.is_cuda:  # page-locked, so the copy does not wait for the GPU's queued work
        grid = grid.pin_memory()
    grid = grid.to(x.device, non_blocking=True)
    return torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def _crop_boxes(n: int, h: int, w: int, generator: torch.Generator | None):
    """(top, left, height, width, flip) of ``n`` random crops of an ``h`` x ``w`` image, as CPU tensors."""
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = h * w * (AUGMENT_SCALE[0] + (AUGMENT_SCALE[1] - AUGMENT_SCALE[0]) * u[:, 0])
    log_lo, log_hi = math.log(AUGMENT_RATIO[0]), math.log(AUGMENT_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    height = torch.sqrt(area / ratio).round().clamp(1, h)
    width = torch.sqrt(area * ratio).round().clamp(1, w)
    top = torch.floor(u[:, 2] * (h - height + 1)).clamp(max=h - height)
    left = torch.floor(u[:, 3] * (w - width + 1)).clamp(max=w - width)
    return top, left, height, width, u[:, 4] < 0.5


def _source_coordinates(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """grid_sample's normalised coordinates of ``size`` output pixels resized from [start, start + length)
    of an axis ``extent`` long: interpolate's half-pixel rule, clamped to the crop's own edge pixels."""
    out = torch.arange(size, dtype=torch.float64)
    source = start[:, None] + (out[None, :] + 0.5) * (length[:, None] / size) - 0.5
    source = torch.minimum(torch.maximum(source, start[:, None]), (start + length - 1)[:, None])
    return (source + 0.5) * (2.0 / extent) - 1.0
