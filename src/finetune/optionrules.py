"""The cross-key rules of one run's options that its jobs check too: shared by the checks at the workflow's start
(:mod:`finetune.configcheck`) and the jobs (``TrainOptions``, the ONNX export), so that both refuse the same things.

Torch-free. The train, pretrain, lr_find and export_onnx jobs load this module (their inputs list it,
``RULE_MODULES`` in workflow/rules/common.smk): editing it reruns them. The start checks alone, and their messages,
live in :mod:`finetune.configcheck`, which no job loads.
"""

from __future__ import annotations


# torch's dynamo exporter writes opset 18 and later: asked for an older one it tries to convert
# and, where that fails (a ResNet's ReduceMean does), silently keeps 18.
DYNAMO_MIN_OPSET = 18
# The newest opset torch's torchscript exporter writes (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET;
# a test checks the two agree): asked for more, it stops with a traceback after training.
TORCHSCRIPT_MAX_OPSET = 20
# The newest opset the onnx package knows (onnx.defs.onnx_opset_version(); a test checks the two agree): the dynamo
# exporter converts to it, and asked for more it fails after training ("invalid version").
DYNAMO_MAX_OPSET = 28


def opset_problem(exporter: str, opset: int) -> str | None:
    """Why ``exporter`` cannot write ``opset`` (one line naming the config keys), or None."""
    if exporter == "dynamo" and isinstance(opset, int) and opset < DYNAMO_MIN_OPSET:
        return (
            f"export.opset: {opset} with export.exporter: dynamo: torch's dynamo exporter writes opset "
            f"{DYNAMO_MIN_OPSET} or later (asked for less it falls back to {DYNAMO_MIN_OPSET}); set export.opset "
            f">= {DYNAMO_MIN_OPSET}, or export.exporter: torchscript for an older opset"
        )
    if exporter == "dynamo" and isinstance(opset, int) and opset > DYNAMO_MAX_OPSET:
        return (f"export.opset: {opset}: the newest ONNX opset is {DYNAMO_MAX_OPSET} (onnx's, as installed); set "
                f"export.opset <= {DYNAMO_MAX_OPSET}")
    if exporter == "torchscript" and isinstance(opset, int) and opset > TORCHSCRIPT_MAX_OPSET:
        return (
            f"export.opset: {opset} with export.exporter: torchscript: torch's torchscript exporter writes opset "
            f"{TORCHSCRIPT_MAX_OPSET} at most; set export.opset <= {TORCHSCRIPT_MAX_OPSET}, or export.exporter: "
            "dynamo for a newer opset"
        )
    return None


def caches_features(strategy: str, cache_features: bool, augment: bool) -> bool:
    """Whether training computes the backbone's features once and trains the head on them.

    Here (torch-free) so the check at workflow start and ``TrainOptions`` share one rule.
    """
    return strategy == "feature_extract" and cache_features and not augment


def distributed_problems(options: dict) -> list[str]:
    """Why one run's training options cannot train in ``devices x nodes`` processes ([] when they can).

    Here (torch-free) so the check at workflow start and ``TrainOptions`` share one rule. ``options``:
    the run's `train` keys with their defaults.
    """
    devices, nodes = options.get("devices", 1), options.get("nodes", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (devices, nodes)):
        return [f"devices and nodes must be whole numbers >= 1, not {devices!r} and {nodes!r}"]
    world, batch = devices * nodes, options.get("batch_size")
    processes = f"{world} processes (devices {devices} x nodes {nodes})"
    cached = caches_features(options.get("strategy", "finetune"), options.get("cache_features", True),
                             options.get("augment", False))
    bn_frozen = options.get("bn", "auto") == "frozen" or (
        options.get("bn", "auto") == "auto" and options.get("strategy", "finetune") == "feature_extract")
    sync = options.get("sync_batchnorm", False)
    checks = [
        (not isinstance(batch, int) or batch % world == 0,
         f"batch_size {batch} does not divide among {processes}: each process takes batch_size / (devices x nodes) "
         f"examples of every batch; use a multiple of {world}"
         + (f", e.g. {max(world, round(batch / world) * world)}" if isinstance(batch, int) else "")),
        (world == 1 or not (cached or options.get("optimizer") == "lbfgs"),
         f"{processes}: strategy {options.get('strategy', 'finetune')} on cached backbone features (and optimizer "
         "lbfgs) trains the head on small tensors in one process; set devices 1 and nodes 1 (or cache_features "
         "false, to train on images in several processes)"),
        (world == 1 or not any((options.get(key) or 0) > 0 for key in ("mixup_alpha", "cutmix_alpha")),
         f"{processes}: mixup_alpha / cutmix_alpha pair images within a batch, and several processes would pair "
         "them within each process's part only; train the mixing runs with devices 1 and nodes 1"),
        (not sync or world > 1,
         "sync_batchnorm shares BatchNorm statistics among training processes: it needs devices x nodes > 1"),
        (not sync or not bn_frozen,
         f"sync_batchnorm needs BatchNorm in training mode, but it is frozen here (bn {options.get('bn', 'auto')}, "
         f"strategy {options.get('strategy', 'finetune')})"),
        (not sync or options.get("device", "auto") != "cpu",
         "sync_batchnorm runs on GPUs only (torch's SyncBatchNorm): with device cpu each process normalises over "
         "its own part of the batch; set sync_batchnorm false" + ("" if bn_frozen else ", or bn frozen")),
    ]
    return [message for ok, message in checks if not ok]


def recipe_problems(options: dict) -> list[str]:
    """The training recipes (ema_decay, ema_warmup, mixup_alpha, cutmix_alpha, layer_decay, gradual's unfreeze_epoch)
    set where they make no sense."""
    strategy = options.get("strategy", "finetune")
    cached = caches_features(strategy, options.get("cache_features", True), options.get("augment", False))
    mixing = [f"{key}: {options[key]:g}" for key in ("mixup_alpha", "cutmix_alpha") if (options.get(key) or 0) > 0]
    problems = []
    if mixing and cached:
        problems.append(f"{' and '.join(mixing)} mix training images, but strategy: feature_extract with cache_features: "
                        "true and augment: false trains the head on cached backbone features, and mixing those is not "
                        "mixup of images; set cache_features: false or leave the mixing off")
    if options.get("pretrained") is False and strategy == "feature_extract":
        problems.append("pretrained: false with strategy: feature_extract: the backbone would start random and stay "
                        "frozen, so only a head on random features would train; to train from scratch set strategy: "
                        "finetune (in this experiment, or in train)")
    if options.get("layer_decay") is not None and strategy == "feature_extract":
        problems.append(f"layer_decay: {options['layer_decay']} scales the backbone stages' learning rates, but strategy: "
                        "feature_extract trains only the new head; use finetune or gradual, or leave layer_decay null")
    if options.get("ema_decay") is not None and options.get("optimizer") == "lbfgs":
        problems.append(f"ema_decay: {options['ema_decay']} averages the weights over optimizer steps; optimizer lbfgs "
                        "takes one step per epoch: leave ema_decay null")
    if options.get("class_weighting") == "sampler" and options.get("optimizer") == "lbfgs":
        problems.append("class_weighting: sampler draws each epoch's examples anew, with replacement, but optimizer lbfgs "
                        "solves the head on all of them at once, keeping its curvature from one epoch to the next: each "
                        "epoch would solve another objective; use class_weighting: loss (the same balance, by "
                        "inverse-frequency weights, on every example)")
    unfreeze, epochs = options.get("unfreeze_epoch", 1), options.get("epochs", 10)
    if strategy == "gradual" and isinstance(unfreeze, int) and isinstance(epochs, int) and unfreeze >= epochs:
        problems.append(f"unfreeze_epoch: {unfreeze} with epochs: {epochs}: strategy gradual trains the head alone for "
                        f"{unfreeze} epochs, so the backbone would never train; lower unfreeze_epoch below epochs, or use "
                        "strategy feature_extract")
    warmup = options.get("warmup_epochs", 0)
    if (is_number(warmup) and is_number(epochs) and warmup > epochs and options.get("optimizer") != "lbfgs"
            and options.get("schedule", "cosine") != "onecycle"):
        problems.append(f"warmup_epochs: {warmup:g} with epochs: {epochs}: the learning rate would still be warming up "
                        f"when training ends, below the lr written, and the schedule after the warm-up would never run; "
                        "lower warmup_epochs to at most epochs")
    if options.get("ema_warmup") is False and options.get("ema_decay") is None:
        problems.append("ema_warmup: false sets how the moving average of the weights starts, but ema_decay is null "
                        "(no average): set ema_decay (e.g. 0.999) or leave ema_warmup out")
    return problems


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
