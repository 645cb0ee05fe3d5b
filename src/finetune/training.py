"""The training loop: strategies, optimisation, cached features, resume after a kill.

:func:`fit`, in the spirit of torchvision's reference ``train.py``: set up once (device, optimizer,
losses, inputs or cached features), then per epoch :func:`train_one_epoch`, :func:`evaluate`, the
best epoch kept, the resume state saved, early stopping. Everything it does is spelled out by
:class:`TrainOptions`. The epochs' order and the augmentation draw from their own generators,
seeded by ``TrainOptions.seed``; the resume state keeps them (and torch's global RNG, for dropout).

Strategies
- ``finetune``: everything trains (optionally the backbone at ``lr * backbone_lr_factor``).
- ``feature_extract``: only the new output layer trains; the backbone stays in eval mode, so
  BatchNorm running statistics do not drift. With no augmentation its features are computed once
  and cached, and the head trains on the cached tensors. There the head is a convex problem
  (multinomial logistic regression on fixed features), so ``optimizer: lbfgs`` can solve it
  full-batch with L-BFGS and an L2 penalty, as linear-probe evaluations do, with no learning-rate
  schedule to tune; each epoch is one L-BFGS step of up to ``LBFGS_ITERATIONS`` iterations.
- ``gradual``: head only for ``unfreeze_epoch`` epochs, then the last ``unfreeze_stages`` stages
  (all when unset) train too at ``lr * backbone_lr_factor``. Every optimizer parameter group exists
  from the start (frozen ones at lr 0), so a run resumed mid-schedule is the same run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import distributed
from .configcheck import caches_features, distributed_problems, recipe_problems
from .distributed import SINGLE, Ranks
from .errors import ConfigError, StopRequested, TrainingError
from .fileio import torch_save
from .mixing import mix_batch
from .models import (backbone_stages, count_parameters, find_output_layer, freeze_batchnorm, parameter_depths,
                     set_batchnorm_eval, strip_output_layer)
from .store import StoredImages, prefetch
from .tensors import Data, Preprocessing, batched_forward, choose_device, normalization_constants, normalize  # noqa: F401  (Data, choose_device: imported from here too)

STRATEGIES = ("finetune", "feature_extract", "gradual")
COMPILE_MODES = ("off", "default", "reduce-overhead")  # torch.compile's mode for the training forward (or none)
OPTIMIZERS = ("adamw", "sgd", "lbfgs")
LBFGS_ITERATIONS = 20  # per epoch: torch's default max_iter; the validation metric is checked in between
GPU_RESIDENT_BYTES = 2 * 1024**3
PREFETCH_BATCHES = 2  # batches read ahead of the step when images stream from a decoded file
# Steps between two reads of the losses for a non-finite one (and at the end of every epoch): each read
# waits for the device, so a GPU runs this many steps ahead of Python at most.
DIVERGENCE_CHECK_STEPS = 32


@dataclass
class TrainOptions:
    strategy: str = "finetune"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"            # adamw | sgd | lbfgs (feature_extract on cached features only)
    lr: float = 1e-3                    # lbfgs: the step scale of its line search (1.0)
    momentum: float = 0.9               # sgd only
    weight_decay: float = 1e-4          # never applied to norm layers and biases; lbfgs: L2 penalty wd/2 * ||W||^2
    backbone_lr_factor: float = 1.0     # finetune / gradual: backbone lr = lr * factor
    unfreeze_epoch: int = 1             # gradual: epochs of head-only training
    unfreeze_stages: int | None = None  # gradual: how many last stages to unfreeze (None: all)
    bn: str = "auto"                    # auto (frozen for feature_extract, else train) | frozen | train
    schedule: str = "cosine"            # cosine | onecycle | constant
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    metric: str = "val_accuracy"        # val_accuracy | val_loss
    class_weighting: str = "none"       # none | loss | sampler
    augment: bool = False               # random resized crop + horizontal flip
    cache_features: bool = True         # feature_extract without augmentation: one backbone pass
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"                # auto | cpu | cuda
    amp: str = "off"                    # off | bf16 | fp16 (CUDA only)
    channels_last: bool = False
    compile: str = "off"                # off | default | reduce-overhead: torch.compile the training forward
    devices: int = 1                    # training processes per node: GPUs, or CPU processes with device cpu
    nodes: int = 1                      # nodes of one training (Slurm); devices x nodes processes share each batch
    sync_batchnorm: bool = False        # several CUDA processes: BatchNorm statistics over the global batch
    ema_decay: float | None = None      # exponential moving average of the weights (None: off); validated and kept
    mixup_alpha: float = 0.0            # mixup's Beta(alpha, alpha) (0: off); with cutmix too, one of them per batch
    cutmix_alpha: float = 0.0           # cutmix's Beta(alpha, alpha) (0: off)
    layer_decay: float | None = None    # finetune / gradual: a stage d stages below the head trains at lr * decay^d

    @classmethod
    def from_dict(cls, cfg: dict) -> "TrainOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        opts = cls(**cfg)
        opts.validate()
        return opts

    def validate(self) -> None:
        checks = [
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, not {self.strategy!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, not {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size}"),
            (not isinstance(self.lr, str) and self.lr > 0,
             f"lr must be > 0, not {self.lr!r}" + (" (lr auto is replaced by lr_find's suggestion first: --lr-from)" if self.lr == "auto" else "")),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}"),
            (self.optimizer != "lbfgs" or self.uses_cached_features,
             "optimizer lbfgs solves the new head on cached backbone features: it needs strategy feature_extract, "
             f"cache_features true and augment false (here strategy {self.strategy!r}, "
             f"cache_features {self.cache_features}, augment {self.augment})"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay}"),
            (self.schedule in ("cosine", "onecycle", "constant"), f"unknown schedule {self.schedule!r}"),
            (self.bn in ("auto", "frozen", "train"), f"bn must be auto, frozen or train, not {self.bn!r}"),
            (self.metric in ("val_accuracy", "val_loss"), f"metric must be val_accuracy or val_loss, not {self.metric!r}"),
            (self.class_weighting in ("none", "loss", "sampler"), f"unknown class_weighting {self.class_weighting!r}"),
            (self.amp in ("off", "bf16", "fp16"), f"amp must be off, bf16 or fp16, not {self.amp!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {self.device!r}"),
            (self.compile in COMPILE_MODES, f"compile must be one of {COMPILE_MODES}, not {self.compile!r}"),
            *self._distributed_checks(),
            *self._recipe_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train: {message}")

    def _distributed_checks(self) -> list[tuple[bool, str]]:
        return [(False, why) for why in distributed_problems(dataclasses.asdict(self))]
    def _recipe_checks(self) -> list[tuple[bool, str]]:
        """ema_decay, mixup_alpha, cutmix_alpha, layer_decay: their values here; the strategies they make no
        sense with by the rule the workflow's start checks too (configcheck.recipe_problems)."""
        ema, layer = self.ema_decay, self.layer_decay
        return [
            (ema is None or 0 < ema < 1, f"ema_decay must be null (off) or between 0 and 1 (e.g. 0.999), not {ema!r}"),
            (self.mixup_alpha >= 0, f"mixup_alpha must be >= 0 (0: off), not {self.mixup_alpha!r}"),
            (self.cutmix_alpha >= 0, f"cutmix_alpha must be >= 0 (0: off), not {self.cutmix_alpha!r}"),
            (layer is None or 0 < layer <= 1, f"layer_decay must be null (off) or in (0, 1] (e.g. 0.7), not {layer!r}"),
            *((False, why) for why in recipe_problems(dataclasses.asdict(self))),
        ]

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def bn_frozen(self) -> bool:
        return self.bn == "frozen" or (self.bn == "auto" and self.strategy == "feature_extract")

    @property
    def uses_cached_features(self) -> bool:
        return caches_features(self.strategy, self.cache_features, self.augment)


# --------------------------------------------------------------------------- small pure helpers

def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimisation ``step`` (0-based)."""
    if schedule == "onecycle":
        # torch's OneCycleLR shape: 30% warm-up from lr/25, cosine down to lr/25e4.
        peak = max(1, int(0.3 * total_steps))
        if step < peak:
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * step / peak)) / 2
        progress = (step - peak) / max(1, total_steps - peak)
        return 1 / 25e4 + (1 - 1 / 25e4) * (1 + math.cos(math.pi * progress)) / 2
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a balanced dataset gets all ones."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return len(labels) / (num_classes * counts)


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm-layer parameters (all 1-D tensors) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def options_key(*parts) -> str:
    """A short stable hash of JSON-able parts: names resume state and feature caches."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


class _SignalGuard:
    """Turn SIGTERM/SIGINT into :class:`StopRequested` at the next batch boundary.

    Resume state is saved at the end of every epoch, so stopping between batches loses at most the
    epoch in progress.
    """

    def __init__(self):
        self.signum = None
        self.agreed = False  # several processes: some rank was asked to stop (seen at a divergence check)
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def check(self, where: Callable[[], str]):
        if self.signum is not None:
            raise StopRequested(f"{signal.Signals(self.signum).name} {where()}")

    def stop_now(self, where: Callable[[], str]):
        name = signal.Signals(self.signum).name if self.signum is not None else "a signal to another training process"
        raise StopRequested(f"{name} {where()}")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# --------------------------------------------------------------------------- the loop

@dataclass
class FitResult:
    best_state: dict
    best_epoch: int
    best_metric: float
    history: list[dict]
    trainable_params: int
    total_params: int
    train_seconds: float
    used_cached_features: bool
    stopped_early: bool
    compile_seconds: float | None = None    # train.compile: the first training step, compilation included


def fit(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions, *,
        num_classes: int, threads: int = 1, resume_path: Path | None = None, feature_cache: Path | None = None,
        log: Callable[[str], None] = print, ranks: Ranks = SINGLE) -> FitResult:
    """Train ``model`` (output layer already sized to ``num_classes``) and return its best state.

    ``ranks``: this process's place among several training processes (:mod:`finetune.distributed`);
    only rank 0 writes the resume state.
    """
    setup = _set_up(model, train, val, prep, opts, num_classes, feature_cache, log, ranks)
    progress = _restore_progress(setup, resume_path, log)
    if progress is None:
        progress = _fresh_progress(setup)
    trainable, total = 0, sum(p.numel() for p in model.parameters())
    started = time.perf_counter() - (progress.history[-1]["elapsed_s"] if progress.history else 0.0)
    stopped_early = False
    with _SignalGuard() as guard:
        for epoch in range(progress.start_epoch, opts.epochs):
            trainable, total = _prepare_epoch(setup, epoch)
            if epoch == progress.start_epoch:
                log(f"trainable parameters: {trainable:,} of {total:,} ({opts.strategy}, "
                    f"bn {'frozen' if opts.bn_frozen else 'train'})")
            train_metrics = train_one_epoch(setup, epoch, guard, progress.history, resume_path)
            with _scored_weights(setup):  # with ema_decay: the averaged weights are validated and kept
                val_loss, val_accuracy = evaluate(setup, epoch)
                row = _epoch_row(setup, epoch, train_metrics, val_loss, val_accuracy, time.perf_counter() - started,
                                 trainable)
                progress.history.append(row)
                _log_epoch(row, opts.epochs, log)
                _track_best(progress, setup.trained, row, opts)
            if resume_path is not None and ranks.main:
                _save_resume(resume_path, _resume_state(setup, progress, epoch))
            if _stops_early(opts, progress, log):
                stopped_early = True
                break
    return FitResult(
        best_state=_best_model_state(setup, progress), best_epoch=progress.best["epoch"],
        best_metric=progress.best["metric"], history=progress.history, trainable_params=trainable,
        total_params=total, train_seconds=time.perf_counter() - started,
        used_cached_features=setup.inputs.cached, stopped_early=stopped_early, compile_seconds=setup.compile_seconds,
    )


# --------------------------------------------------------------------------- set-up

@dataclass(frozen=True)
class _Placement:
    """Where training runs, in which precision and memory format."""

    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool


@dataclass(frozen=True)
class _Losses:
    train: nn.Module                        # class weights ('loss') and label smoothing apply here
    soft: nn.Module                         # mixup/cutmix: cross-entropy on soft targets (smoothed already), class weights
    eval: nn.Module                         # plain cross-entropy: validation loss comparable across options
    sampling_weights: torch.Tensor | None   # 'sampler': per-example weights of the epoch's draw
    train_sum: nn.Module | None = None      # several processes: ``train`` summed, not averaged (see _train_step)
    example_weights: torch.Tensor | None = None  # 'loss': each class's weight (CPU), for a global batch's mean


@dataclass(frozen=True)
class _Share:
    """One training process's part of a global batch: where it starts, the batch's size, and the sum of the
    batch's loss weights (its size, or with class_weighting 'loss' its examples' class weights)."""

    offset: int
    total: int
    normalizer: float


@dataclass(frozen=True)
class _Inputs:
    """What training steps and validation feed: images, or backbone features computed once."""

    train: torch.Tensor
    val: torch.Tensor
    train_forward: Callable[[torch.Tensor], torch.Tensor]
    eval_forward: Callable[[torch.Tensor], torch.Tensor]
    cached: bool


@dataclass(frozen=True)
class _Steps:
    batch_size: int
    per_epoch: int
    total: int
    warmup: int


@dataclass
class _Setup:
    """Everything :func:`fit` sets up once, before the first epoch."""

    opts: TrainOptions
    prep: Preprocessing
    place: _Placement
    model: nn.Module
    head_name: str
    head: nn.Module
    # What training changes, and so what resume state and the best checkpoint hold: the whole model,
    # or with cached features only the head (the frozen backbone is the weights file's): a few KB per
    # epoch instead of writing the model twice (~90 MB for ResNet18) after epochs that take 0.1 s.
    trained: nn.Module
    stages: list[nn.Module]
    groups: list[dict]
    optimizer: torch.optim.Optimizer
    decayed: list[nn.Parameter]             # lbfgs: the head parameters under its L2 penalty
    scaler: torch.amp.GradScaler
    losses: _Losses
    inputs: _Inputs
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    steps: _Steps
    shuffle: torch.Generator                # the epochs' order (or the sampler's draw)
    augment: torch.Generator                # every random number of the augmentation
    normalization: tuple[torch.Tensor, torch.Tensor]  # mean and std on the device, made once
    num_classes: int
    mix: torch.Generator                    # every random number of mixup / cutmix
    ema: "_Ema | None"                      # ema_decay: the moving average of the trained weights
    ranks: Ranks = SINGLE                   # several processes: this one's rank (finetune.distributed)
    compile_seconds: float | None = None    # set by the first training step when train.compile is on
    ddp_trainable: tuple | None = None      # several processes: the parameters the DDP wrapper was built for

    @property
    def lbfgs(self) -> bool:
        return self.opts.optimizer == "lbfgs"


def _set_up(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions, num_classes: int,
            feature_cache: Path | None, log: Callable[[str], None], ranks: Ranks = SINGLE) -> _Setup:
    place = _placement(opts, ranks)
    _check_last_batch(len(train.labels), opts, ranks)
    if opts.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(place.device)
    if place.channels_last:
        model.to(memory_format=torch.channels_last)
    stages = backbone_stages(model)
    groups = _param_groups(model, opts)
    head_name, head = find_output_layer(model)
    optimizer, decayed = _make_optimizer(head, groups, opts, place.device)
    scaler = torch.amp.GradScaler("cuda", enabled=place.amp and place.amp_dtype == torch.float16)
    losses = _make_losses(train.labels, num_classes, opts, place.device)
    inputs = _prepare_inputs(model, head, train, val, prep, opts, place, feature_cache, log)
    trained = head if inputs.cached else model
    return _Setup(
        opts=opts, prep=prep, place=place, model=model, head_name=head_name, head=head,
        trained=trained, stages=stages, groups=groups, optimizer=optimizer,
        decayed=decayed, scaler=scaler, losses=losses, inputs=inputs, train_labels=train.labels,
        val_labels=val.labels, steps=_steps(len(train.labels), opts),
        shuffle=torch.Generator().manual_seed(opts.seed),
        augment=torch.Generator().manual_seed(augmentation_seed(opts.seed)),
        normalization=normalization_constants(prep, place.device), num_classes=num_classes,
        mix=torch.Generator().manual_seed(int(options_key("mix", opts.seed), 16)),
        ema=None if opts.ema_decay is None else _Ema(trained, opts.ema_decay), ranks=ranks,
    )


def _check_last_batch(n_train: int, opts: TrainOptions, ranks: Ranks) -> None:
    """Several processes: every process needs an example of every batch, the epoch's last one included."""
    last = n_train % opts.batch_size or opts.batch_size
    if ranks.active and last < ranks.world:
        raise ConfigError(
            f"train: the last batch of each epoch has {last} example(s) ({n_train} training images, batch_size "
            f"{opts.batch_size}), fewer than the {ranks.world} training processes (devices {opts.devices} x nodes "
            f"{opts.nodes}): choose a batch_size that leaves at least {ranks.world} (or none) for the last batch")


def augmentation_seed(seed: int) -> int:
    """The seed of the augmentation's own generator: derived from ``seed``, unrelated to the shuffle's."""
    return int(options_key("augment", seed), 16)


def _placement(opts: TrainOptions, ranks: Ranks = SINGLE) -> _Placement:
    device = choose_device(opts.device)
    if opts.sync_batchnorm and device.type != "cuda":
        raise ConfigError("train: sync_batchnorm runs on GPUs only (torch's SyncBatchNorm), and this run trains on "
                          f"{device} (device {opts.device}): set sync_batchnorm false or use bn frozen")
    if ranks.active and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)  # one GPU per process
    return _Placement(device=device, amp=opts.amp != "off" and device.type == "cuda",
                      amp_dtype=torch.bfloat16 if opts.amp == "bf16" else torch.float16,
                      channels_last=opts.channels_last and device.type == "cuda")


def _fused_supported(device: torch.device) -> bool | None:
    """Fused optimizer steps where torch has them (CPU and CUDA float parameters); None: torch's default."""
    return True if device.type in ("cpu", "cuda") else None


def _param_groups(model: nn.Module, opts: TrainOptions) -> list[dict]:
    """Head and backbone groups, each split by weight decay. Backbone groups start at lr 0 if frozen.

    With ``layer_decay``, the backbone's groups are split by depth too (:func:`parameter_depths`): each
    group's ``depth_scale`` is ``layer_decay ** (head depth - its depth)``, 1 for the head.
    """
    head_name = find_output_layer(model)[0]
    depths, head_depth = parameter_depths(model) if opts.layer_decay is not None else ({}, 0)
    groups = {("head", head_depth, True): [], ("head", head_depth, False): []}
    for name, param in model.named_parameters():
        part = "head" if name.startswith(head_name + ".") else "backbone"
        if part == "backbone" and opts.strategy == "feature_extract":
            continue
        depth = head_depth if part == "head" else depths.get(name, 0)
        groups.setdefault((part, depth, not is_no_decay(name, param)), []).append(param)
    result = []
    for (part, depth, decay), params in sorted(groups.items(), key=lambda item: (item[0][0] != "head", item[0][1], not item[0][2])):
        if params:
            scale = 1.0 if opts.layer_decay is None else opts.layer_decay ** (head_depth - depth)
            result.append({"params": params, "part": part, "weight_decay": opts.weight_decay if decay else 0.0,
                           "lr": opts.lr, "lr_scale": 1.0, "depth_scale": scale})
    return result


def _make_optimizer(head: nn.Module, groups: list[dict], opts: TrainOptions,
                    device: torch.device) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """The optimizer, and for L-BFGS the head parameters its L2 penalty applies to."""
    if opts.optimizer == "lbfgs":
        # One parameter group (torch's L-BFGS has no others); weight decay becomes the loss's L2 term.
        optimizer = torch.optim.LBFGS(head.parameters(), lr=opts.lr, max_iter=LBFGS_ITERATIONS, history_size=10,
                                      line_search_fn="strong_wolfe")
        return optimizer, [p for name, p in head.named_parameters() if not is_no_decay(name, p)]
    # Fused kernels update every parameter in one pass: on the CPU, AdamW's step over ResNet18 takes
    # ~20 ms instead of ~110 ms with torch's default per-tensor loop (bench/bench.py, train_img_per_s).
    fused = _fused_supported(device)
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=opts.lr, fused=fused), []
    return torch.optim.SGD(groups, lr=opts.lr, momentum=opts.momentum, nesterov=True, fused=fused), []


def _make_losses(labels: torch.Tensor, num_classes: int, opts: TrainOptions, device: torch.device) -> _Losses:
    weights = class_weights(labels, num_classes).to(device) if opts.class_weighting == "loss" else None
    sampling = class_weights(labels, num_classes)[labels] if opts.class_weighting == "sampler" else None
    return _Losses(train=nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing),
                   soft=nn.CrossEntropyLoss(weight=weights), eval=nn.CrossEntropyLoss(), sampling_weights=sampling,
                   train_sum=nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing, reduction="sum"),
                   example_weights=None if weights is None else weights.cpu())


def _prepare_inputs(model: nn.Module, head: nn.Module, train: Data, val: Data, prep: Preprocessing,
                    opts: TrainOptions, place: _Placement, feature_cache: Path | None,
                    log: Callable[[str], None]) -> _Inputs:
    if opts.uses_cached_features:
        return _feature_inputs(model, head, train, val, prep, opts, place.device, feature_cache, log)
    return _image_inputs(model, train, val, prep, opts, place)


def _feature_inputs(model: nn.Module, head: nn.Module, train: Data, val: Data, prep: Preprocessing,
                    opts: TrainOptions, device: torch.device, feature_cache: Path | None,
                    log: Callable[[str], None]) -> _Inputs:
    """One backbone pass per split instead of one per epoch; the head then trains on tensors."""
    try:
        train_features, val_features = _cached_features(model, train, val, prep, device, feature_cache, log)
    except torch.OutOfMemoryError as exc:
        raise _out_of_memory(device, opts, "computing the backbone features") from exc
    eval_forward = lambda x: batched_forward(head, x, None, device, batch_size=1024)  # noqa: E731
    return _Inputs(train_features, val_features, train_forward=head, eval_forward=eval_forward, cached=True)


def _image_inputs(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions,
                  place: _Placement) -> _Inputs:
    train_images = train.images
    if place.device.type == "cuda" and train_images.numel() <= GPU_RESIDENT_BYTES:
        # Small decoded datasets (uint8) live on the GPU: no host-to-device copy per batch.
        train_images = train_images.to(place.device)
    eval_forward = lambda x: batched_forward(model, x, prep, place.device, channels_last=place.channels_last)  # noqa: E731
    train_forward = model if opts.compile == "off" else torch.compile(model, mode=opts.compile)
    return _Inputs(train_images, val.images, train_forward=train_forward, eval_forward=eval_forward, cached=False)


def _steps(n_train: int, opts: TrainOptions) -> _Steps:
    batch_size = n_train if opts.optimizer == "lbfgs" else opts.batch_size  # L-BFGS is a full-batch method
    per_epoch = math.ceil(n_train / batch_size)
    return _Steps(batch_size=batch_size, per_epoch=per_epoch, total=per_epoch * opts.epochs,
                  warmup=int(round(opts.warmup_epochs * per_epoch)))


# --------------------------------------------------------------------------- one epoch

def _prepare_epoch(setup: _Setup, epoch: int) -> tuple[int, int]:
    """Freeze what ``epoch`` does not train, set train/eval modes; return (trainable, total) parameter counts."""
    opts, model = setup.opts, setup.model
    eval_modules = _apply_freezing(model, setup.groups, opts, epoch, setup.stages)
    counts = count_parameters(model)
    model.train()
    for module in eval_modules:
        module.eval()
    if opts.bn_frozen:
        set_batchnorm_eval(model)
    _distributed_forward(setup)
    return counts


def _distributed_forward(setup: _Setup) -> None:
    """Several processes: wrap the model in DistributedDataParallel for the parameters this epoch trains.

    DDP averages the gradients of the parameters that required them when it was built, so the wrapper
    is built again whenever that set changes (``gradual`` unfreezing); every rank does it in the same epoch.
    """
    if not setup.ranks.active:
        return
    trainable = tuple(name for name, p in setup.model.named_parameters() if p.requires_grad)
    if trainable == setup.ddp_trainable:
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [setup.place.device.index] if setup.place.device.type == "cuda" else None
    setup.inputs = dataclasses.replace(setup.inputs, train_forward=None)  # the previous wrapper goes first
    wrapped = DistributedDataParallel(setup.model, device_ids=device_ids)
    forward = wrapped if setup.opts.compile == "off" else torch.compile(wrapped, mode=setup.opts.compile)
    setup.inputs = dataclasses.replace(setup.inputs, train_forward=forward)
    setup.ddp_trainable = trainable


def _apply_freezing(model: nn.Module, groups: list[dict], opts: TrainOptions, epoch: int,
                    stages: list[nn.Module]) -> list[nn.Module]:
    """Set requires_grad and lr scales for ``epoch``; return the modules that must stay in eval mode."""
    head_params = {id(p) for p in find_output_layer(model)[1].parameters()}
    if opts.strategy == "feature_extract" or (opts.strategy == "gradual" and epoch < opts.unfreeze_epoch):
        trainable_stages: list[nn.Module] = []
    elif opts.strategy == "gradual" and opts.unfreeze_stages:
        trainable_stages = stages[-opts.unfreeze_stages:]
    else:
        trainable_stages = stages
    trainable_ids = {id(p) for stage in trainable_stages for p in stage.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params or id(p) in trainable_ids)
    if opts.bn_frozen:
        freeze_batchnorm(model)
    for group in groups:
        if group["part"] == "backbone":
            group["lr_scale"] = opts.backbone_lr_factor * group.get("depth_scale", 1.0) if trainable_stages else 0.0
    return [stage for stage in stages if stage not in trainable_stages]


def train_one_epoch(setup: _Setup, epoch: int, guard: "_SignalGuard", history: list[dict],
                    resume_path: Path | None) -> dict:
    """One pass over the epoch's order; returns its train_loss, train_accuracy and img_per_s.

    Nothing here waits for the device per step: the loss and accuracy sums stay on it, and each step's
    loss is checked for divergence every ``DIVERGENCE_CHECK_STEPS`` steps and at the end of the epoch.
    """
    order = _epoch_order(setup)
    started = time.perf_counter()
    sums = _EpochSums.on(setup.place.device, setup.ranks)
    divergence = _DivergenceCheck(setup.opts, epoch, history, resume_path, setup.ranks, guard)
    for step_in_epoch, (x, y, share) in enumerate(_read_batches(setup, order)):
        _stop_if_requested(setup, guard, divergence, epoch, step_in_epoch, history, resume_path)
        if setup.opts.compile != "off" and setup.compile_seconds is None:
            _first_compiled_step(setup, epoch, step_in_epoch, x, y, share, sums, divergence)
        else:
            _one_step(setup, epoch, step_in_epoch, x, y, share, sums, divergence)
        _show_progress(f"\r  epoch {epoch + 1} {sums.seen}/{len(order)}")
    divergence.check()
    _show_progress("\r")
    return sums.metrics(time.perf_counter() - started)


def _one_step(setup: _Setup, epoch: int, step_in_epoch: int, x: torch.Tensor, y: torch.Tensor, share: "_Share | None",
              sums: "_EpochSums", divergence: "_DivergenceCheck") -> None:
    """Train on one batch as read (:func:`_read_batches`); the loss and accuracy stay on the device."""
    _set_learning_rates(setup, epoch * setup.steps.per_epoch + step_in_epoch)
    x, y = _training_batch(setup, x, y, share)
    try:
        logits, loss = _train_step(setup, x, y, share)
    except torch.OutOfMemoryError as exc:
        divergence.check()  # a loss that went non-finite before is the first thing that went wrong
        where = f"training (epoch {epoch + 1}, step {step_in_epoch + 1})"
        raise _out_of_memory(setup.place.device, setup.opts, where) from exc
    if setup.ema is not None:
        setup.ema.update(setup.trained)
    sums.add(logits, loss, y, share)
    divergence.add(loss)


def _first_compiled_step(setup: _Setup, epoch: int, step_in_epoch: int, x: torch.Tensor, y: torch.Tensor,
                         share: "_Share | None", sums: "_EpochSums", divergence: "_DivergenceCheck") -> None:
    """The first step with train.compile on, timed to the end of its device work: torch.compile compiles there.

    Its time (``FitResult.compile_seconds``, in train_info.json and the log) counts in the epoch's and the job's.
    """
    started = time.perf_counter()
    _one_step(setup, epoch, step_in_epoch, x, y, share, sums, divergence)
    if setup.place.device.type == "cuda":
        torch.cuda.synchronize(setup.place.device)
    setup.compile_seconds = time.perf_counter() - started


class _EpochSums:
    """The epoch's running loss and correct predictions, kept on the device (read once, at its end).

    Several processes: each sums its own examples (the loss as its share of the global batch's mean
    times the batch's size); :meth:`metrics` adds the ranks' sums up, so every rank reports the epoch's.
    """

    def __init__(self, loss_sum: torch.Tensor, correct: torch.Tensor, ranks: Ranks = SINGLE):
        self.loss_sum, self.correct, self.seen, self.ranks = loss_sum, correct, 0, ranks

    @classmethod
    def on(cls, device: torch.device, ranks: Ranks = SINGLE) -> "_EpochSums":
        return cls(torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), dtype=torch.int64, device=device),
                   ranks)

    def add(self, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor, share: "_Share | None" = None) -> None:
        """``y``: labels, or mixup/cutmix soft targets (counted against the label with the larger share)."""
        if y.is_floating_point():
            y = y.argmax(1)
        self.seen += len(y)
        weight = len(y) if share is None else share.total / self.ranks.world
        self.loss_sum += loss.detach().double() * weight
        self.correct += (logits.detach().argmax(1) == y).sum()

    def metrics(self, seconds: float) -> dict:
        loss_sum, correct, seen = self.loss_sum.item(), self.correct.item(), self.seen
        if self.ranks.active:
            totals = distributed.all_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64), self.ranks,
                                         control=True)
            loss_sum, correct, seen = totals[0].item(), int(totals[1].item()), int(totals[2].item())
        return {"train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
                "img_per_s": seen / max(seconds, 1e-9)}


class _DivergenceCheck:
    """Each step's loss, kept on the device until :meth:`check` reads them all at once.

    :meth:`check` raises :func:`_diverged` naming the first non-finite step. It runs before the epoch
    ends, so the steps after a bad one never reach the resume state or the best epoch's copy.
    """

    def __init__(self, opts: TrainOptions, epoch: int, history: list, resume_path: Path | None,
                 ranks: Ranks = SINGLE, guard: "_SignalGuard | None" = None):
        self.opts, self.epoch, self.history, self.resume_path = opts, epoch, history, resume_path
        self.ranks, self.guard = ranks, guard
        self.losses: list[torch.Tensor] = []
        self.first_step = 0  # 0-based step of the epoch of losses[0]

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        if len(self.losses) >= DIVERGENCE_CHECK_STEPS:
            self.check()

    def check(self) -> None:
        """Several processes: every rank calls it at the same steps; the ranks' losses are added up (a
        non-finite one on any rank stops all at the same step) and so are their stop requests."""
        if not self.losses and not self.ranks.active:
            return
        losses = torch.stack(self.losses).cpu() if self.losses else torch.zeros(0)  # the one wait per interval
        if self.ranks.active:
            losses = self._agree(losses)
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise _diverged(losses[i], self.opts, self.epoch, self.first_step + i, self.history, self.resume_path)
        self.first_step += len(self.losses)
        self.losses = []

    def _agree(self, losses: torch.Tensor) -> torch.Tensor:
        """The losses summed over the ranks; marks the guard stopped if any rank was asked to stop."""
        asked = self.guard is not None and self.guard.signum is not None
        flags = torch.cat([losses.double(), torch.tensor([1.0 if asked else 0.0], dtype=torch.float64)])
        distributed.all_sum(flags, self.ranks, control=True)
        if self.guard is not None and flags[-1].item() > 0:
            self.guard.agreed = True
        return flags[:-1]


def _stop_if_requested(setup: _Setup, guard: "_SignalGuard", divergence: _DivergenceCheck, epoch: int,
                       step_in_epoch: int, history: list, resume_path: Path | None) -> None:
    """Raise StopRequested after SIGTERM/SIGINT; a loss that already went non-finite is reported first.

    Several processes stop together: a signal to any rank is seen by all at the next divergence check
    (within ``DIVERGENCE_CHECK_STEPS`` steps, or the epoch's end), and every rank stops there.
    """
    if setup.ranks.active:
        if guard.agreed:
            guard.stop_now(lambda: f"at epoch {epoch + 1}, step {step_in_epoch + 1} (all {setup.ranks.world} "
                                   f"processes): {_saved_state(resume_path, history)}")
        return
    if guard.signum is not None:
        divergence.check()
    guard.check(lambda: f"at epoch {epoch + 1}, step {step_in_epoch + 1}: {_saved_state(resume_path, history)}")


def _epoch_order(setup: _Setup) -> torch.Tensor:
    """The training examples of one epoch in order: a permutation, or with 'sampler' a class-balanced draw."""
    weights = setup.losses.sampling_weights
    if weights is not None:
        return torch.multinomial(weights, len(weights), replacement=True, generator=setup.shuffle)
    return torch.randperm(len(setup.train_labels), generator=setup.shuffle)


def _set_learning_rates(setup: _Setup, step: int) -> None:
    if setup.lbfgs:  # L-BFGS's line search chooses its step
        return
    factor = lr_factor(step, setup.steps.total, setup.steps.warmup, setup.opts.schedule)
    for group in setup.optimizer.param_groups:
        group["lr"] = setup.opts.lr * group["lr_scale"] * factor


def _read_batches(setup: _Setup, order: torch.Tensor):
    """``(inputs, labels, share)`` of each step of the epoch, as stored (uint8 images or features), in order.

    Images streamed from a decoded file (:class:`StoredImages`) are read ahead in a background thread,
    into page-locked memory where they go to a GPU, so the device does not wait for the disk. Labels
    travel with their batch (pinned too). Images already on the GPU are indexed there, with the labels.
    Several processes: each reads only its own part of every global batch (:func:`distributed.shard_bounds`),
    described by ``share`` (:class:`_Share`; None for one process).
    """
    inputs, labels, device, ranks = setup.inputs.train, setup.train_labels, setup.place.device, setup.ranks
    weights = setup.losses.example_weights
    on_gpu = isinstance(inputs, torch.Tensor) and inputs.is_cuda
    if on_gpu:
        order, labels = order.to(device), labels.to(device)
    pin = device.type == "cuda" and not on_gpu

    def read(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Share | None]:
        share = None
        if ranks.active:
            start, stop = distributed.shard_bounds(len(index), ranks)
            normalizer = float(len(index)) if weights is None else float(weights[labels[index].cpu()].sum())
            share, index = _Share(offset=start, total=len(index), normalizer=normalizer), index[start:stop]
        x, y = inputs[index], labels[index]
        return (x.pin_memory(), y.pin_memory(), share) if pin else (x, y, share)

    batches = (read(index) for index in order.split(setup.steps.batch_size))
    return prefetch(batches, depth=PREFETCH_BATCHES) if isinstance(inputs, StoredImages) else batches


def _training_batch(setup: _Setup, x: torch.Tensor, y: torch.Tensor,
                    share: _Share | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of one step, on the device: features, or (augmented) normalised images.

    With mixup / cutmix (after the augmentation) the labels become soft targets (:mod:`finetune.mixing`).
    """
    device = setup.place.device
    y = y.to(device, non_blocking=True)
    if setup.inputs.cached:
        return x.to(device, non_blocking=True), y
    if device.type == "cuda" and not x.is_cuda and not x.is_pinned():
        x = x.pin_memory()  # page-locked, so the copy below can overlap compute
    x = x.to(device, non_blocking=True)
    if setup.opts.augment:  # on the device: crops of the stored squares, resized to the crop size
        x = augment_batch(x, setup.prep.crop_size, setup.augment,
                          part_of=None if share is None else (share.offset, share.total))
    x = normalize(x, setup.prep, setup.normalization)
    if setup.opts.mixes:  # soft targets instead of labels
        opts = setup.opts
        x, y, _ = mix_batch(x, y, setup.num_classes, opts.mixup_alpha, opts.cutmix_alpha, opts.label_smoothing, setup.mix)
    if setup.place.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _train_step(setup: _Setup, x: torch.Tensor, y: torch.Tensor,
                share: _Share | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss of the batch, then one optimizer step.

    The step runs whatever the loss (asking would wait for the device): a non-finite loss stops the
    epoch at the next divergence check, before any state is saved; fp16's GradScaler skips it anyway.

    Several processes (``share``): each rank's loss is its examples' summed loss times world size over
    the global batch's normaliser, so DDP's average of the ranks' gradients is the gradient of the
    global batch's mean loss, exactly as one process computes it, whatever the parts' sizes.
    """
    if setup.lbfgs:
        return _lbfgs_step(setup.optimizer, setup.head, setup.decayed, setup.losses.train, x, y,
                           setup.opts.weight_decay)
    place = setup.place
    with torch.autocast(place.device.type, dtype=place.amp_dtype, enabled=place.amp):
        logits = setup.inputs.train_forward(x)
        if share is not None:  # several processes (mixing is single-process: refused by the options)
            loss = setup.losses.train_sum(logits.float(), y) * (setup.ranks.world / share.normalizer)
        else:
            criterion = setup.losses.soft if y.is_floating_point() else setup.losses.train
            loss = criterion(logits.float(), y)
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss).backward()
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    return logits, loss


def _diverged(loss: torch.Tensor, opts: TrainOptions, epoch: int, step_in_epoch: int, history: list,
              resume_path: Path | None) -> TrainingError:
    if history and resume_path is not None:
        where = f"resume state of epoch {len(history)} kept in {resume_path}"
    else:
        where = "none saved yet" if resume_path is not None else "none kept (no --resume-dir)"
    return TrainingError(
        f"loss became {loss.item()} at epoch {epoch + 1}, step {step_in_epoch + 1}: training "
        f"diverged; lower train.lr (now {opts.lr:g}) or use warmup_epochs. Last good state: {where}"
    )


def _show_progress(text: str) -> None:
    if sys.stderr.isatty():
        print(text, end="", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- validation, the epoch's row

def evaluate(setup: _Setup, epoch: int) -> tuple[float, float]:
    """Validation loss (plain cross-entropy) and accuracy of the model as it is now, in eval mode.

    Several processes: each scores its own part of the split, and the sums are added up.
    """
    setup.model.eval()
    try:
        if setup.ranks.active:
            return _evaluate_shared(setup)
        logits = setup.inputs.eval_forward(setup.inputs.val)
        loss = setup.losses.eval(logits, setup.val_labels).item()
        accuracy = (logits.argmax(1) == setup.val_labels).float().mean().item()
    except torch.OutOfMemoryError as exc:
        raise _out_of_memory(setup.place.device, setup.opts,
                             f"evaluating the validation split (epoch {epoch + 1})") from exc
    return loss, accuracy


def _evaluate_shared(setup: _Setup) -> tuple[float, float]:
    n = len(setup.val_labels)
    start, stop = distributed.shard_bounds(n, setup.ranks)
    images = setup.inputs.val
    part = StoredImages(images.store, images.rows[start:stop], images.crop) if isinstance(images, StoredImages) \
        else images[start:stop]
    labels = setup.val_labels[start:stop]
    logits = setup.inputs.eval_forward(part) if stop > start else torch.zeros(0, 1)
    sums = torch.zeros(2, dtype=torch.float64)
    if stop > start:
        sums[0] = nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        sums[1] = (logits.argmax(1) == labels).sum().double()
    distributed.all_sum(sums, setup.ranks, control=True)
    return sums[0].item() / n, sums[1].item() / n


def _epoch_row(setup: _Setup, epoch: int, train_metrics: dict, val_loss: float, val_accuracy: float,
               elapsed_s: float, trainable: int) -> dict:
    """The epoch's line of the history (its keys are history.csv's columns, in order)."""
    return {
        "epoch": epoch + 1,
        "train_loss": train_metrics["train_loss"],
        "train_accuracy": train_metrics["train_accuracy"],
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "lr": setup.optimizer.param_groups[0]["lr"],
        "img_per_s": train_metrics["img_per_s"],
        "elapsed_s": elapsed_s,
        "trainable_params": trainable,
    }


def _log_epoch(row: dict, epochs: int, log: Callable[[str], None]) -> None:
    log(
        f"epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} train_acc {row['train_accuracy']:.4f} "
        f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} lr {row['lr']:.2e} "
        f"img/s {row['img_per_s']:.1f} elapsed {row['elapsed_s']:.1f}s"
    )


def _out_of_memory(device: torch.device, opts: TrainOptions, phase: str) -> TrainingError:
    return TrainingError(
        f"out of memory on {device} while {phase} (train.batch_size {opts.batch_size}): lower train.batch_size "
        f"(e.g. {max(1, opts.batch_size // 2)}) or the experiment's image_size"
        + (", or set train.amp: bf16" if device.type == "cuda" and opts.amp == "off" else "")
    )


# --------------------------------------------------------------------------- exponential moving average

class _Ema:
    """``ema_decay``: after each optimizer step, every float tensor of the state (parameters and buffers,
    BatchNorm's running statistics included) moves to ``decay * average + (1 - decay) * current``;
    integer buffers (BatchNorm's batch count) are copied. It starts at the weights training starts from."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._floats = [k for k, v in self.state.items() if v.is_floating_point()]
        self._others = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = module.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self._floats], [current[k].detach() for k in self._floats],
                             1.0 - self.decay)
        for k in self._others:
            self.state[k].copy_(current[k])

    def load(self, state: dict) -> None:
        for k, v in self.state.items():
            v.copy_(state[k])


@contextlib.contextmanager
def _scored_weights(setup: _Setup):
    """With ema_decay: the averaged weights in the trained module while the block runs, then the live ones back."""
    if setup.ema is None:
        yield
        return
    live = {k: v.detach().clone() for k, v in setup.trained.state_dict().items()}
    setup.trained.load_state_dict(setup.ema.state)
    try:
        yield
    finally:
        setup.trained.load_state_dict(live)


# --------------------------------------------------------------------------- best epoch, early stopping

@dataclass
class _Progress:
    """What the epochs so far leave: the resume state holds it, the next epoch continues it."""

    history: list[dict]
    best: dict              # "state" (of setup.trained, on the CPU), "metric", "epoch" (1-based; -1: none yet)
    since_best: int = 0     # epochs since the best one
    start_epoch: int = 0    # 0-based: the first epoch this call of fit trains


def _fresh_progress(setup: _Setup) -> _Progress:
    worst = -math.inf if _maximizes(setup.opts) else math.inf
    return _Progress(history=[], best={"state": copy.deepcopy(setup.trained.state_dict()), "metric": worst, "epoch": -1})


def _maximizes(opts: TrainOptions) -> bool:
    return opts.metric == "val_accuracy"


def _track_best(progress: _Progress, trained: nn.Module, row: dict, opts: TrainOptions) -> None:
    """Keep a CPU copy of the trained state if this epoch's metric is the best so far; else count one more epoch."""
    value, best = row[opts.metric], progress.best["metric"]
    if (value > best) if _maximizes(opts) else (value < best):
        progress.best = {"state": {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()},
                         "metric": value, "epoch": row["epoch"]}
        progress.since_best = 0
    else:
        progress.since_best += 1


def _stops_early(opts: TrainOptions, progress: _Progress, log: Callable[[str], None]) -> bool:
    if opts.early_stopping_patience is None or progress.since_best < opts.early_stopping_patience:
        return False
    log(f"early stopping: {opts.metric} did not improve for {progress.since_best} epoch(s); "
        f"best epoch {progress.best['epoch']}")
    return True


def _best_model_state(setup: _Setup, progress: _Progress) -> dict:
    """The whole model's state at the best epoch; with cached features the backbone as loaded, the best head."""
    best_state = progress.best["state"]
    if setup.trained is not setup.model:
        best_state = {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
        best_state.update({f"{setup.head_name}.{k}": v for k, v in progress.best["state"].items()})
    return best_state


# --------------------------------------------------------------------------- resume state

def _resume_state(setup: _Setup, progress: _Progress, epoch: int) -> dict:
    """All a rerun needs to continue after ``epoch`` (0-based) as if never stopped."""
    return {
        "epoch": epoch, "model": setup.trained.state_dict(), "optimizer": setup.optimizer.state_dict(),
        "scaler": setup.scaler.state_dict(), "shuffle": setup.shuffle.get_state(),
        "augment": setup.augment.get_state(), "mix": setup.mix.get_state(), "rng": rng_state(),
        "history": progress.history, "best": progress.best, "since_best": progress.since_best,
        **({"ema": setup.ema.state} if setup.ema is not None else {}),
    }


def _save_resume(path: Path, state: dict) -> None:
    torch_save(state, path)  # atomic: a failed write leaves the previous epoch's state as it was


def _restore_progress(setup: _Setup, resume_path: Path | None, log: Callable[[str], None]) -> _Progress | None:
    """Continue from the saved resume state, if there is a usable one: restore it into ``setup``."""
    state = _load_resume(resume_path, log) if resume_path is not None and resume_path.exists() else None
    if state is not None and set(state["model"]) != set(setup.trained.state_dict()):
        log(f"warning: resume state {resume_path} holds other parameters than this run trains; starting again from epoch 1")
        state = None
    if state is None:
        return None
    _restore_training_state(setup, state, resume_path, log)
    progress = _Progress(history=state["history"], best=state["best"], since_best=state["since_best"],
                         start_epoch=state["epoch"] + 1)
    log(f"resuming from {resume_path}: epoch {progress.start_epoch + 1} of {setup.opts.epochs}")
    return progress


def _restore_training_state(setup: _Setup, state: dict, resume_path: Path, log: Callable[[str], None]) -> None:
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
        setup.ema.load(state["ema"])
    set_rng_state(state["rng"])


def _load_resume(resume_path: Path, log: Callable[[str], None]) -> dict | None:
    """The saved resume state, or None (with a warning) when the file cannot be read."""
    try:
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError("not a resume state written by this training loop")
        return state
    except Exception as exc:  # a file from another torch version, or damaged outside this program
        log(f"warning: resume state {resume_path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
            "starting again from epoch 1 (it is overwritten after the first epoch)")
        return None


def _saved_state(resume_path: Path | None, history: list) -> str:
    """What a run stopped now leaves for the next one."""
    if resume_path is None:
        return "no resume state is kept (no --resume-dir): a rerun starts again from epoch 1"
    if not history:
        return "no epoch completed yet: a rerun starts again from epoch 1"
    return f"resume state of epoch {len(history)} kept in {resume_path}: a rerun continues with epoch {len(history) + 1}"


# --------------------------------------------------------------------------- L-BFGS, cached features

def _lbfgs_step(optimizer: torch.optim.LBFGS, head: nn.Module, decayed: list[nn.Parameter], criterion: nn.Module,
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


def _cached_features(model: nn.Module, train: Data, val: Data, prep: Preprocessing, device: torch.device,
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
