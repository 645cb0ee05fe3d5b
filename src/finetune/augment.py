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
    :data:`AUGMENT_SCALE`, aspect :data:`AUGMENT_RATIO`, redrawn until it fits: :func:`_crop_boxes`) resized bilinearly, without antialiasing,
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


ATTEMPTS = 10  # boxes drawn per image until one fits in it, as torchvision draws them; then the centre crop


def _crop_boxes(n: int, h: int, w: int, generator: torch.Generator | None):
    """(top, left, height, width, flip) of ``n`` random crops of an ``h`` x ``w`` image, as CPU tensors: torchvision's
    ``RandomResizedCrop.get_params`` for each image (the first of :data:`ATTEMPTS` boxes of area share
    :data:`AUGMENT_SCALE` and aspect :data:`AUGMENT_RATIO` that fits in the image; where none does, the largest centred
    box of an aspect in range), with every random number drawn at once, ``ATTEMPTS`` x 2 + 3 an image."""
    u = torch.rand(n, 2 * ATTEMPTS + 3, generator=generator, dtype=torch.float64)
    area = h * w * (AUGMENT_SCALE[0] + (AUGMENT_SCALE[1] - AUGMENT_SCALE[0]) * u[:, :ATTEMPTS])
    log_lo, log_hi = math.log(AUGMENT_RATIO[0]), math.log(AUGMENT_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, ATTEMPTS:2 * ATTEMPTS])
    widths, heights = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
    fits = (widths >= 1) & (widths <= w) & (heights >= 1) & (heights <= h)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first box that fits (0 where none does)
    width, height = widths.gather(1, first)[:, 0], heights.gather(1, first)[:, 0]
    centre_w, centre_h = _centre_box(h, w)
    none_fit = ~fits.any(dim=1)
    width, height = torch.where(none_fit, centre_w, width), torch.where(none_fit, centre_h, height)
    top = torch.floor(u[:, -3] * (h - height + 1)).clamp(max=h - height)
    left = torch.floor(u[:, -2] * (w - width + 1)).clamp(max=w - width)
    top = torch.where(none_fit, torch.floor((h - height) / 2), top)
    left = torch.where(none_fit, torch.floor((w - width) / 2), left)
    return top, left, height, width, u[:, -1] < 0.5


def _centre_box(h: int, w: int) -> tuple[float, float]:
    """(width, height) of torchvision's fallback: the whole image, narrowed to the aspect range's nearest end."""
    if w / h < AUGMENT_RATIO[0]:
        return float(w), float(round(w / AUGMENT_RATIO[0]))
    if w / h > AUGMENT_RATIO[1]:
        return float(round(h * AUGMENT_RATIO[1])), float(h)
    return float(w), float(h)


def _source_coordinates(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """grid_sample's normalised coordinates of ``size`` output pixels resized from [start, start + length)
    of an axis ``extent`` long: interpolate's half-pixel rule, clamped to the crop's own edge pixels."""
    out = torch.arange(size, dtype=torch.float64)
    source = start[:, None] + (out[None, :] + 0.5) * (length[:, None] / size) - 0.5
    source = torch.minimum(torch.maximum(source, start[:, None]), (start + length - 1)[:, None])
    return (source + 0.5) * (2.0 / extent) - 1.0
