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

Its parts live beside it: the options (:mod:`finetune.options`), the batch augmentation
(:mod:`finetune.augment`) and mixing (:mod:`finetune.mixing`), the moving average of the weights
(:mod:`finetune.ema`), stopping on a signal or a non-finite loss (:mod:`finetune.stopping`), the best
epoch and the resume state (:mod:`finetune.progress`), cached features and L-BFGS (:mod:`finetune.features`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import distributed
from .augment import augment_batch
from .distributed import SINGLE, Ranks
from .ema import Ema
from .errors import ConfigError, Diverged, TrainingError
from .features import cached_features, lbfgs_step
from .mixing import mix_batch
from .models import (backbone_stages, count_parameters, find_output_layer, freeze_batchnorm, parameter_depths,
                     set_batchnorm_eval)
from .options import TrainOptions, key_name
from .progress import (best_model_state, finished_state, fresh_progress, restore_progress, resume_state, save_resume,
                       stops_early, track_best)
from .stopping import DivergenceCheck, SignalGuard, check_validation_loss, stop_if_requested
from .store import StoredImages, prefetch
from .tensors import Data, Preprocessing, batched_forward, choose_device, normalization_constants, normalize  # noqa: F401  (Data, choose_device: imported from here too)

LBFGS_ITERATIONS = 20  # per epoch: torch's default max_iter; the validation metric is checked in between
GPU_RESIDENT_BYTES = 2 * 1024**3
PREFETCH_BATCHES = 2  # batches read ahead of the step when images stream from a decoded file


# --------------------------------------------------------------------------- small pure helpers

def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimisation ``step`` (0-based)."""
    if schedule == "onecycle":
        # torch's OneCycleLR (pct_start 0.3, cosine, div_factor 25, final_div_factor 1e4), step for step: a cosine
        # rise from lr/25 to lr that peaks at step 0.3 x total - 1, then a cosine fall to lr/25e4 at the last step.
        # (Until 2026-12-07 the fall was one step short, and a short run ended far above it: lr/15 after 8 steps.)
        peak, last = 0.3 * total_steps - 1, max(1, total_steps - 1)
        if step <= peak:
            return _cosine_between(1 / 25, 1.0, step / peak)
        return _cosine_between(1.0, 1 / 25e4, min(1.0, (step - peak) / (last - peak)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return _cosine_between(1.0, 0.0, min(1.0, progress))


def _cosine_between(start: float, end: float, progress: float) -> float:
    """From ``start`` (progress 0) to ``end`` (progress 1) along half a cosine, as torch's schedulers anneal."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * progress))


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
    epochs_window_unix_s: tuple[float, float] | None = None  # this process's epochs: first start, last end
    diverged: str | None = None             # on_divergence stop: where the loss went non-finite, ending the run


def fit(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions, *,
        num_classes: int, threads: int = 1, resume_path: Path | None = None, feature_cache: Path | None = None,
        log: Callable[[str], None] = print, ranks: Ranks = SINGLE) -> FitResult:
    """Train ``model`` (output layer already sized to ``num_classes``) and return its best state.

    ``ranks``: this process's place among several training processes (:mod:`finetune.distributed`);
    only rank 0 writes the resume state.
    """
    set_up_started = time.perf_counter()
    setup = _set_up(model, train, val, prep, opts, num_classes, feature_cache, log, ranks)
    set_up_s = time.perf_counter() - set_up_started
    _check_warmup(setup.steps, len(train.labels), opts, log)
    _check_class_weighting(train.labels, num_classes, opts, log)
    progress = restore_progress(setup, resume_path, log)
    if progress is None:
        progress = fresh_progress(setup)
    # Resumed after the epoch that stopped it early (its state is saved before that check) or after its last
    # epoch, a run stopped before its outputs were written trains no more: it ends as it would have.
    ended = progress.ended or {}
    stopped_early = ended.get("stopped_early", False) if progress.ended else (
        bool(progress.history) and progress.start_epoch < opts.epochs and stops_early(opts, progress, log))
    trainable, total = _parameter_counts(setup, progress.start_epoch - 1) if progress.history else (0, 0)
    started = time.perf_counter() - (progress.history[-1]["elapsed_s"] if progress.history else 0.0)
    epochs_started_at = time.time()
    diverged_at = ended.get("diverged")
    with SignalGuard() as guard:
        last = progress.start_epoch if stopped_early or progress.ended else opts.epochs
        for epoch in range(progress.start_epoch, last):
            trainable, total = _prepare_epoch(setup, epoch)
            if epoch == progress.start_epoch:
                log(f"trainable parameters: {trainable:,} of {total:,} ({opts.strategy}, "
                    f"bn {'frozen' if opts.bn_frozen else 'train'}); set up in {set_up_s:.1f} s ({_set_up_what(setup)})")
            try:
                _train_and_score_epoch(setup, epoch, guard, progress, resume_path, started, trainable, log)
            except Diverged as exc:
                if opts.on_divergence != "stop" or not progress.history:
                    raise
                diverged_at = exc.what
                log(f"{exc.what}: training diverged; the run ends with the best of its {len(progress.history)} epoch(s) "
                    f"done ({key_name('on_divergence')}: stop)")
                break
            if resume_path is not None and ranks.main:
                save_resume(resume_path, resume_state(setup, progress, epoch))
            if epoch + 1 < last and stops_early(opts, progress, log):  # after its last epoch a run stops anyway
                stopped_early = True
                break
    if resume_path is not None and ranks.main and progress.ended is None:  # ended: the state shrinks to what ends it
        save_resume(resume_path, finished_state(setup, progress, stopped_early, diverged_at))
    if opts.strategy == "gradual" and 0 < progress.best["epoch"] <= opts.unfreeze_epoch:
        log(f"best epoch {progress.best['epoch']} is a head-only one ({key_name('unfreeze_epoch')}: "
            f"{opts.unfreeze_epoch}): the model kept has the backbone it started with")
    return FitResult(
        best_state=best_model_state(setup, progress), best_epoch=progress.best["epoch"],
        best_metric=progress.best["metric"], history=progress.history, trainable_params=trainable,
        total_params=total, train_seconds=time.perf_counter() - started,
        used_cached_features=setup.inputs.cached, stopped_early=stopped_early, compile_seconds=setup.compile_seconds,
        epochs_window_unix_s=(epochs_started_at, time.time()), diverged=diverged_at,
    )


def _train_and_score_epoch(setup: "_Setup", epoch: int, guard: SignalGuard, progress, resume_path: Path | None,
                           started: float, trainable: int, log: Callable[[str], None]) -> None:
    """One epoch: train, validate, add its row to the history and keep the model if it is the best so far."""
    opts = setup.opts
    train_metrics = train_one_epoch(setup, epoch, guard, progress.history, resume_path)
    with _scored_weights(setup):  # with ema_decay: the averaged weights are validated and kept
        scores = evaluate(setup, epoch)
        check_validation_loss(scores["val_loss"], opts, epoch, progress.history, resume_path)
        row = _epoch_row(setup, epoch, train_metrics, scores, time.perf_counter() - started, trainable)
        progress.history.append(row)
        _log_epoch(row, opts, log)
        track_best(progress, setup.trained, row, opts)


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
    ema: "Ema | None"                      # ema_decay: the moving average of the trained weights
    ranks: Ranks = SINGLE                   # several processes: this one's rank (finetune.distributed)
    compile_seconds: float | None = None    # set by the first training step when train.compile is on
    ddp_trainable: tuple | None = None      # several processes: the parameters the DDP wrapper was built for
    dynamo_import_s: float | None = None    # torch._dynamo's import, which building the optimizer made (None: loaded)

    @property
    def lbfgs(self) -> bool:
        return self.opts.optimizer == "lbfgs"


def _set_up(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions, num_classes: int,
            feature_cache: Path | None, log: Callable[[str], None], ranks: Ranks = SINGLE) -> _Setup:
    place = _placement(opts, ranks)
    _check_last_batch(len(train.labels), opts, ranks)
    _check_batchnorm_batches(model, len(train.labels), opts, ranks)
    if opts.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(place.device)
    if place.channels_last:
        model.to(memory_format=torch.channels_last)
    stages = backbone_stages(model)
    _check_unfreeze_stages(stages, opts)
    groups = _param_groups(model, opts)
    head_name, head = find_output_layer(model)
    dynamo_s = _import_dynamo()
    optimizer, decayed = _make_optimizer(head, groups, opts, place.device)
    scaler = torch.amp.GradScaler("cuda", enabled=place.amp and place.amp_dtype == torch.float16)
    losses = _make_losses(train.labels, num_classes, opts, place.device)
    inputs = _prepare_inputs(model, head, train, val, prep, opts, place, feature_cache, log)
    steps = _steps(len(train.labels), opts)
    trained = head if inputs.cached else model
    return _Setup(
        opts=opts, prep=prep, place=place, model=model, head_name=head_name, head=head,
        trained=trained, stages=stages, groups=groups, optimizer=optimizer,
        decayed=decayed, scaler=scaler, losses=losses, inputs=inputs, train_labels=train.labels,
        val_labels=val.labels, steps=steps,
        shuffle=torch.Generator().manual_seed(opts.seed),
        augment=torch.Generator().manual_seed(augmentation_seed(opts.seed)),
        normalization=normalization_constants(prep, place.device), num_classes=num_classes,
        mix=torch.Generator().manual_seed(int(options_key("mix", opts.seed), 16)),
        ema=None if opts.ema_decay is None else Ema(trained, opts.ema_decay, opts.ema_warmup), ranks=ranks,
        dynamo_import_s=dynamo_s,
    )


def _check_last_batch(n_train: int, opts: TrainOptions, ranks: Ranks) -> None:
    """Several processes: every process needs an example of every batch, the epoch's last one included."""
    last = _smallest_batch(n_train, opts.batch_size)
    if ranks.active and last < ranks.world:
        raise ConfigError(
            f"{key_name('batch_size')}: {opts.batch_size} leaves {last} example(s) for the last batch of each epoch "
            f"({n_train} training images), fewer than the {ranks.world} training processes (devices {opts.devices} x nodes "
            f"{opts.nodes}): choose a batch_size that leaves at least {ranks.world} (or none) for the last batch")


def _check_unfreeze_stages(stages: list[nn.Module], opts: TrainOptions) -> None:
    """``unfreeze_stages`` above the backbone's stages would unfreeze all of them: refuse it, saying how many there
    are (the architecture is known only once its model is built, not at the workflow's start)."""
    if opts.strategy == "gradual" and opts.unfreeze_stages is not None and opts.unfreeze_stages > len(stages):
        raise ConfigError(
            f"{key_name('unfreeze_stages')}: {opts.unfreeze_stages}, but this architecture's backbone has "
            f"{len(stages)} stages (a ResNet's: the stem conv1 + bn1, then layer1 .. layer4): use at most "
            f"{len(stages)}, or null for all of them")


def _check_batchnorm_batches(model: nn.Module, n_train: int, opts: TrainOptions, ranks: Ranks) -> None:
    """BatchNorm in train mode normalises each batch by its own statistics, and cannot with one image
    ("Expected more than 1 value per channel when training"): refuse a run whose BatchNorm layers train on
    batches of one (batch_size 1, or one image a process without sync_batchnorm), naming the keys."""
    if opts.bn_frozen or opts.optimizer == "lbfgs" or not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    smallest = _smallest_batch(n_train, opts.batch_size)
    per_process = smallest if opts.sync_batchnorm or not ranks.active else smallest // ranks.world
    if per_process < 2:
        split = per_process != smallest
        need = 2 * ranks.world if split else 2
        where = f" per process ({ranks.world} processes, sync_batchnorm off)" if split else ""
        last = smallest < opts.batch_size  # the batch_size itself is large enough: the last batch is not
        gives = (f"leaves a last batch of {smallest} image(s) ({n_train} training images), which gives BatchNorm "
                 f"{per_process} image{where}" if last else f"gives BatchNorm batches of {per_process} image{where}")
        fix = (f"a batch_size that leaves at least {need} images (or none) for the last batch" if last else
               f"a batch_size of {need} or more")
        sync = ", or sync_batchnorm: true" if split and opts.device != "cpu" else ""  # it runs on GPUs only
        raise ConfigError(
            f"{key_name('batch_size')}: {opts.batch_size} {gives}, and BatchNorm cannot train on one image (strategy "
            f"{opts.strategy}, bn {opts.bn}): use {fix}{sync}, or bn: frozen (BatchNorm then keeps the source model's "
            "statistics)")


def augmentation_seed(seed: int) -> int:
    """The seed of the augmentation's own generator: derived from ``seed``, unrelated to the shuffle's."""
    return int(options_key("augment", seed), 16)


def _placement(opts: TrainOptions, ranks: Ranks = SINGLE) -> _Placement:
    device = choose_device(opts.device, key=key_name("device"))
    if opts.sync_batchnorm and device.type != "cuda":
        raise ConfigError(f"{key_name('sync_batchnorm')}: true runs on GPUs only (torch's SyncBatchNorm), and this run "
                          f"trains on {device} ({key_name('device')}: {opts.device}): set sync_batchnorm false or use bn frozen")
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
    # Nesterov's momentum; momentum 0 is plain SGD (torch refuses Nesterov without momentum: the job failed)
    return torch.optim.SGD(groups, lr=opts.lr, momentum=opts.momentum, nesterov=opts.momentum > 0, fused=fused), []


class SoftTargetLoss(nn.Module):
    """Cross-entropy on soft targets (mixup, cutmix) weighted per class as torch weights hard labels: the sum over
    examples and classes of ``w_c * t_ic * -log p_ic`` over the sum of ``w_c * t_ic``. For one-hot targets it is
    ``CrossEntropyLoss(weight=w)`` (whose mean divides by the batch's weights); torch's own soft-target loss
    divides by the batch size instead, so a class-weighted step's size would depend on whether it was mixed."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weighted = targets * self.weight
        return -(weighted * torch.log_softmax(logits, dim=1)).sum() / weighted.sum()


def _make_losses(labels: torch.Tensor, num_classes: int, opts: TrainOptions, device: torch.device) -> _Losses:
    weights = class_weights(labels, num_classes).to(device) if opts.class_weighting == "loss" else None
    sampling = class_weights(labels, num_classes)[labels] if opts.class_weighting == "sampler" else None
    return _Losses(train=nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing),
                   soft=nn.CrossEntropyLoss() if weights is None else SoftTargetLoss(weights),
                   eval=nn.CrossEntropyLoss(), sampling_weights=sampling,
                   train_sum=nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing, reduction="sum"),
                   example_weights=None if weights is None else weights.cpu())


def _prepare_inputs(model: nn.Module, head: nn.Module, train: Data, val: Data, prep: Preprocessing,
                    opts: TrainOptions, place: _Placement, feature_cache: Path | None,
                    log: Callable[[str], None]) -> _Inputs:
    if opts.uses_cached_features:
        return _feature_inputs(model, head, train, val, prep, opts, place.device, feature_cache, log)
    return _image_inputs(model, train, val, prep, opts, place, log)


def _feature_inputs(model: nn.Module, head: nn.Module, train: Data, val: Data, prep: Preprocessing,
                    opts: TrainOptions, device: torch.device, feature_cache: Path | None,
                    log: Callable[[str], None]) -> _Inputs:
    """One backbone pass per split instead of one per epoch; the head then trains on tensors."""
    try:
        train_features, val_features = cached_features(model, train, val, prep, device, feature_cache, log)
    except torch.OutOfMemoryError as exc:
        raise _out_of_memory(device, opts, "computing the backbone features") from exc
    eval_forward = lambda x: batched_forward(head, x, None, device, batch_size=1024)  # noqa: E731
    return _Inputs(train_features, val_features, train_forward=head, eval_forward=eval_forward, cached=True)


def _image_inputs(model: nn.Module, train: Data, val: Data, prep: Preprocessing, opts: TrainOptions,
                  place: _Placement, log: Callable[[str], None]) -> _Inputs:
    train_images = train.images
    if place.device.type == "cuda" and train_images.numel() <= GPU_RESIDENT_BYTES:
        # Small decoded datasets (uint8) live on the GPU: no host-to-device copy per batch.
        try:
            train_images, fits = _images_to(train_images, place.device), True
        except torch.OutOfMemoryError:  # they stay on the host and go to the GPU batch by batch, as a large split's do
            fits = False
        if not fits:  # (out of the except block: its traceback no longer holds the part-filled copy)
            torch.cuda.empty_cache()
            log(f"the {len(train_images):,} training images ({train_images.numel() / 1e9:.2f} GB) do not fit on "
                f"{place.device} beside the model: read batch by batch instead")
    eval_forward = lambda x: batched_forward(model, x, prep, place.device, channels_last=place.channels_last)  # noqa: E731
    train_forward = model if opts.compile == "off" else torch.compile(model, mode=opts.compile)
    return _Inputs(train_images, val.images, train_forward=train_forward, eval_forward=eval_forward, cached=False)


def _import_dynamo() -> float | None:
    """Import torch._dynamo, as building any torch.optim optimizer does (its methods are wrapped by
    torch._disable_dynamo): timed apart, seconds of a short run's set-up; None where it was loaded already."""
    if "torch._dynamo" in sys.modules:
        return None
    started = time.perf_counter()
    importlib.import_module("torch._dynamo")
    return time.perf_counter() - started


def _set_up_what(setup: _Setup) -> str:
    """What the set-up before the first epoch did, for its log line."""
    inputs = setup.inputs.train
    if setup.inputs.cached:
        what = f"the backbone's features of {len(setup.train_labels) + len(setup.val_labels):,} images"
    elif isinstance(inputs, torch.Tensor) and inputs.is_cuda:
        what = f"{len(inputs):,} training images, {inputs.numel() / 1e9:.2f} GB, copied to the GPU"
    else:
        where = "read from the decoded file batch by batch" if isinstance(inputs, StoredImages) else "in memory"
        what = f"{len(inputs):,} training images {where}"
    if setup.dynamo_import_s is None:
        return what
    return f"torch._dynamo, which torch.optim imports, {setup.dynamo_import_s:.1f} s; {what}"


def _stored_rows(images: StoredImages, index) -> torch.Tensor:
    """The rows ``index`` of a decoded file, read as stored ((N, H, W, 3), channels last) and viewed as (N, 3, H, W)
    without moving a byte: for a copy to the GPU, which makes them contiguous there at no cost to the host (a
    host-side permute took 11 ms a batch of 128 at 224 px on 2 cores: the reading thread's largest share)."""
    rows = images.rows[index.cpu().numpy() if isinstance(index, torch.Tensor) else index]
    return torch.from_numpy(images.store.read(rows, images.crop)).permute(0, 3, 1, 2)


RESIDENT_COPY_BYTES = 64 * 1024**2  # a decoded file goes to the GPU in parts of this size


def _images_to(images: torch.Tensor | StoredImages, device: torch.device) -> torch.Tensor:
    """All of a split's images on ``device``, contiguous (N, 3, H, W) as :class:`StoredImages` gives them on the
    host; from a decoded file, part by part: each part read as stored, copied, and laid out on the device, so
    neither the host nor the device holds more than the split and one part."""
    if not isinstance(images, StoredImages):
        return images.to(device)
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    rows = max(1, RESIDENT_COPY_BYTES // max(1, out[0].numel()))
    for start in range(0, len(images), rows):
        out[start : start + rows] = _stored_rows(images, slice(start, start + rows)).to(device)
    return out


def _steps(n_train: int, opts: TrainOptions) -> _Steps:
    batch_size = n_train if opts.optimizer == "lbfgs" else opts.batch_size  # L-BFGS is a full-batch method
    per_epoch = math.ceil(n_train / batch_size) - (1 if _lone_last(n_train, batch_size) else 0)
    # A warm-up of a fraction of an epoch is at least one step (rounded, never to none).
    warmup = max(1, int(round(opts.warmup_epochs * per_epoch))) if opts.warmup_epochs > 0 else 0
    return _Steps(batch_size=batch_size, per_epoch=per_epoch, total=per_epoch * opts.epochs, warmup=warmup)


def _check_warmup(steps: "_Steps", n_train: int, opts: TrainOptions, log: Callable[[str], None]) -> None:
    """Say where warmup_epochs comes to a warm-up of one optimizer step: its lr ramp, (step + 1) / steps, then starts
    at the full lr, so the warm-up written does nothing."""
    if (opts.warmup_epochs > 0 and steps.warmup == 1 and opts.optimizer != "lbfgs"
            and opts.schedule != "onecycle"):
        log(f"warning: {key_name('warmup_epochs')}: {opts.warmup_epochs:g} is one optimizer step here ({n_train} "
            f"training images at {key_name('batch_size')} {opts.batch_size}: {steps.per_epoch} step(s) an epoch), and a "
            "one-step warm-up starts at the full lr: it does nothing; raise warmup_epochs or lower batch_size")


def _check_class_weighting(labels: torch.Tensor, num_classes: int, opts: TrainOptions, log: Callable[[str], None]) -> None:
    """Say where class_weighting loss weights classes that are balanced already (the usual case under
    max_train_per_class): every weight is 1, and the run trains as it would without it."""
    if opts.class_weighting != "loss" or not len(labels):
        return
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == counts[0]).all()):
        log(f"warning: {key_name('class_weighting')}: loss does nothing here: every class has {int(counts[0])} training "
            "images, so every class weight is 1 and the run trains as with class_weighting none (it weights classes "
            "of unequal counts; max_train_per_class may have made them equal)")


# --------------------------------------------------------------------------- one epoch

def _parameter_counts(setup: _Setup, epoch: int) -> tuple[int, int]:
    """(trainable, total) parameters in ``epoch`` (0-based): what a run resumed after it reports."""
    _apply_freezing(setup.model, setup.groups, setup.opts, epoch, setup.stages)
    return count_parameters(setup.model)


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


def train_one_epoch(setup: _Setup, epoch: int, guard: "SignalGuard", history: list[dict],
                    resume_path: Path | None) -> dict:
    """One pass over the epoch's order; returns its train_loss, train_accuracy and img_per_s.

    Nothing here waits for the device per step: the loss and accuracy sums stay on it, and each step's
    loss is checked for divergence every ``DIVERGENCE_CHECK_STEPS`` steps and at the end of the epoch.
    """
    order = _epoch_order(setup)
    started = time.perf_counter()
    sums = _EpochSums.on(setup.place.device, setup.ranks)
    divergence = DivergenceCheck(setup.opts, epoch, history, resume_path, setup.ranks, guard)
    for step_in_epoch, (x, y, share) in enumerate(_read_batches(setup, order)):
        stop_if_requested(setup, guard, divergence, epoch, step_in_epoch, history, resume_path)
        if setup.opts.compile != "off" and setup.compile_seconds is None:
            _first_compiled_step(setup, epoch, step_in_epoch, x, y, share, sums, divergence)
        else:
            _one_step(setup, epoch, step_in_epoch, x, y, share, sums, divergence)
        _show_progress(f"\r  epoch {epoch + 1} {sums.seen}/{len(order)}")
    divergence.check()
    _show_progress("\r")
    return sums.metrics(time.perf_counter() - started)


def _one_step(setup: _Setup, epoch: int, step_in_epoch: int, x: torch.Tensor, y: torch.Tensor, share: "_Share | None",
              sums: "_EpochSums", divergence: "DivergenceCheck") -> None:
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
                         share: "_Share | None", sums: "_EpochSums", divergence: "DivergenceCheck") -> None:
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
        y = labels[index]
        if not pin:
            return inputs[index], y, share
        # As stored (channels last), pinned: the copy to the GPU is one block, laid out there (_training_batch).
        x = _stored_rows(inputs, index) if isinstance(inputs, StoredImages) else inputs[index]
        return x.pin_memory(), y.pin_memory(), share

    batches = (read(index) for index in epoch_batches(order, setup.steps.batch_size))
    return prefetch(batches, depth=PREFETCH_BATCHES) if isinstance(inputs, StoredImages) else batches


def _lone_last(n: int, batch_size: int) -> bool:
    """Would an epoch of ``n`` examples end on a batch of one? BatchNorm cannot train on a single example
    ("Expected more than 1 value per channel when training")."""
    return n > batch_size and n % batch_size == 1


def _smallest_batch(n: int, batch_size: int) -> int:
    """The size of the smallest batch of an epoch of ``n`` examples, as :func:`epoch_batches` cuts it."""
    if n <= batch_size:
        return n
    if _lone_last(n, batch_size):  # the lone example joined the batch before it
        return batch_size if n > 2 * batch_size else n
    return n % batch_size or batch_size


def epoch_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The epoch's order cut into batches of ``batch_size``; a last batch of one example joins the batch
    before it (one batch of batch_size + 1), so that every example is trained on in every epoch."""
    batches = list(order.split(batch_size))
    if _lone_last(len(order), batch_size):
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


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
    x = x.to(device, non_blocking=True).contiguous()  # (read as stored: laid out here)
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
        return lbfgs_step(setup.optimizer, setup.head, setup.decayed, setup.losses.train, x, y,
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


def _show_progress(text: str) -> None:
    if sys.stderr.isatty():
        print(text, end="", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- validation, the epoch's row

def evaluate(setup: _Setup, epoch: int) -> dict[str, float]:
    """Validation loss (plain cross-entropy), accuracy and balanced accuracy of the model as it is now, in eval mode.

    Several processes: each scores its own part of the split, and the sums are added up.
    """
    setup.model.eval()
    try:
        if setup.ranks.active:
            return _evaluate_shared(setup)
        logits = setup.inputs.eval_forward(setup.inputs.val)
        loss = setup.losses.eval(logits, setup.val_labels).item()
        counts = _class_counts(logits, setup.val_labels, setup.num_classes)
    except torch.OutOfMemoryError as exc:
        raise _out_of_memory(setup.place.device, setup.opts,
                             f"evaluating the validation split (epoch {epoch + 1})") from exc
    return {"val_loss": loss, **_accuracies(counts)}


def _class_counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class, its validation images and those of them predicted right: (2, num_classes), float64."""
    right = logits.argmax(1) == labels
    return torch.stack([torch.bincount(labels, minlength=num_classes),
                        torch.bincount(labels[right], minlength=num_classes)]).double().cpu()


def _accuracies(counts: torch.Tensor) -> dict[str, float]:
    """Accuracy and balanced accuracy (the mean of the classes' recalls, over the classes the split holds) from
    :func:`_class_counts`. Both from integer counts: the exact share (42 of 50: 0.84), not a float32 mean
    (0.8399999737739563)."""
    images, right = ([int(x) for x in row.tolist()] for row in counts)
    recalls = [Fraction(r, n) for r, n in zip(right, images) if n > 0]  # exact: one share, one float, however summed
    return {"val_accuracy": sum(right) / sum(images), "val_balanced_accuracy": float(sum(recalls) / len(recalls))}


def _evaluate_shared(setup: _Setup) -> dict[str, float]:
    n = len(setup.val_labels)
    start, stop = distributed.shard_bounds(n, setup.ranks)
    images = setup.inputs.val
    part = StoredImages(images.store, images.rows[start:stop], images.crop) if isinstance(images, StoredImages) \
        else images[start:stop]
    labels = setup.val_labels[start:stop]
    loss = torch.zeros(1, dtype=torch.float64)
    counts = torch.zeros(2, setup.num_classes, dtype=torch.float64)
    if stop > start:
        logits = setup.inputs.eval_forward(part)
        loss[0] = nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        counts = _class_counts(logits, labels, setup.num_classes)
    sums = torch.cat([loss, counts.flatten()])
    distributed.all_sum(sums, setup.ranks, control=True)
    return {"val_loss": sums[0].item() / n, **_accuracies(sums[1:].view(2, -1))}


def _epoch_row(setup: _Setup, epoch: int, train_metrics: dict, scores: dict, elapsed_s: float,
               trainable: int) -> dict:
    """The epoch's line of the history (its keys are history.csv's columns, in order)."""
    return {
        "epoch": epoch + 1,
        "train_loss": train_metrics["train_loss"],
        "train_accuracy": train_metrics["train_accuracy"],
        "val_loss": scores["val_loss"],
        "val_accuracy": scores["val_accuracy"],
        "val_balanced_accuracy": scores["val_balanced_accuracy"],
        "lr": setup.optimizer.param_groups[0]["lr"],
        "img_per_s": train_metrics["img_per_s"],
        "elapsed_s": elapsed_s,
        "trainable_params": trainable,
    }


def _log_epoch(row: dict, opts: TrainOptions, log: Callable[[str], None]) -> None:
    balanced = f" val_bal_acc {row['val_balanced_accuracy']:.4f}" if opts.metric == "val_balanced_accuracy" else ""
    log(
        f"epoch {row['epoch']}/{opts.epochs} train_loss {row['train_loss']:.4f} train_acc {row['train_accuracy']:.4f} "
        f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f}{balanced} lr {row['lr']:.2e} "
        f"img/s {row['img_per_s']:.1f} elapsed {row['elapsed_s']:.1f}s"
    )


def _out_of_memory(device: torch.device, opts: TrainOptions, phase: str) -> TrainingError:
    return TrainingError(
        f"out of memory on {device} while {phase} ({key_name('batch_size')} {opts.batch_size}): lower "
        f"{key_name('batch_size')} (e.g. {max(1, opts.batch_size // 2)}) or the experiment's image_size"
        + (f", or set {key_name('amp')}: bf16" if device.type == "cuda" and opts.amp == "off" else "")
    )


# --------------------------------------------------------------------------- exponential moving average

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

