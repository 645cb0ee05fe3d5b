"""The training loop's options (:class:`TrainOptions`): one field per `train` key, checked as the workflow's
schema and cross-key rules check them (the shared rules live in :mod:`finetune.optionrules`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .optionrules import caches_features, distributed_problems, recipe_problems
from .errors import ConfigError
from .selection import METRICS


# Where this job's `train` keys were written, for the messages that say what to change: `train.lr`, or
# `experiments.<name>.lr` (`...sweep.lr`) where the run's experiment sets it, or `pretrain.train.lr`. Set
# once by the job's script (:func:`name_keys`); a job started otherwise says `train.<key>`.
_KEY_NAMES: dict[str, str] = {}
_KEY_PREFIX = {"": "train"}


def name_keys(names: dict[str, str] | None = None, prefix: str = "train") -> None:
    """Say in messages that the keys of ``names`` were written there, and every other key under ``prefix``."""
    _KEY_NAMES.clear()
    _KEY_NAMES.update(names or {})
    _KEY_PREFIX[""] = prefix


def key_name(key: str) -> str:
    """The config key a user wrote for the training option ``key`` (:func:`name_keys`)."""
    return _KEY_NAMES.get(key, f"{_KEY_PREFIX['']}.{key}")


STRATEGIES = ("finetune", "feature_extract", "gradual")
COMPILE_MODES = ("off", "default", "reduce-overhead")  # torch.compile's mode for the training forward (or none)
OPTIMIZERS = ("adamw", "sgd", "lbfgs")


@dataclass
class TrainOptions:
    strategy: str = "finetune"
    epochs: int = 10
    batch_size: int = 32               # the schema's default (a script run alone without it trained at 64)
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
    metric: str = "val_accuracy"        # val_accuracy | val_balanced_accuracy (mean recall of the classes) | val_loss
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
    ema_warmup: bool = True             # the decay ramps up from 0.18 (finetune.ema.decay_at)
    mixup_alpha: float = 0.0            # mixup's Beta(alpha, alpha) (0: off); with cutmix too, one of them per batch
    cutmix_alpha: float = 0.0           # cutmix's Beta(alpha, alpha) (0: off)
    layer_decay: float | None = None    # finetune / gradual: a stage d stages below the head trains at lr * decay^d
    on_divergence: str = "fail"         # fail | stop: a non-finite loss fails the job, or ends the run at the epochs done

    @classmethod
    def from_dict(cls, cfg: dict) -> "TrainOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        wrong = [why for name, value in cfg.items() if (why := _type_problem(name, value, _FIELD_TYPES[name]))]
        if wrong:  # (the workflow's schema refuses these first: a script run alone met a TypeError deep in training)
            raise ConfigError(f"train: {'; '.join(wrong)}")
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
            *self._range_checks(),
            (self.schedule in ("cosine", "onecycle", "constant"), f"unknown schedule {self.schedule!r}"),
            (self.bn in ("auto", "frozen", "train"), f"bn must be auto, frozen or train, not {self.bn!r}"),
            (self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}"),
            (self.class_weighting in ("none", "loss", "sampler"), f"unknown class_weighting {self.class_weighting!r}"),
            (self.amp in ("off", "bf16", "fp16"), f"amp must be off, bf16 or fp16, not {self.amp!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {self.device!r}"),
            (self.compile in COMPILE_MODES, f"compile must be one of {COMPILE_MODES}, not {self.compile!r}"),
            (self.on_divergence in ("fail", "stop"), f"on_divergence must be fail or stop, not {self.on_divergence!r}"),
            *self._distributed_checks(),
            *self._recipe_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train: {message}")

    def _range_checks(self) -> list[tuple[bool, str]]:
        """The schema's bounds of the other numbers (the workflow's start refuses them first: a script run alone met
        torch's traceback for a label_smoothing of 1.5, and trained with a momentum of 2 or a negative warm-up)."""
        patience, stages = self.early_stopping_patience, self.unfreeze_stages
        return [
            (0 <= self.momentum <= 1, f"momentum must be between 0 and 1, not {self.momentum!r}"),
            (self.backbone_lr_factor >= 0, f"backbone_lr_factor must be >= 0, not {self.backbone_lr_factor!r}"),
            (self.unfreeze_epoch >= 0, f"unfreeze_epoch must be >= 0, not {self.unfreeze_epoch!r}"),
            (stages is None or stages >= 1, f"unfreeze_stages must be null (all) or >= 1, not {stages!r}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, not {self.warmup_epochs!r}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be >= 0 and below 1, not {self.label_smoothing!r}"),
            (patience is None or patience >= 1, f"early_stopping_patience must be null (off) or >= 1, not {patience!r}"),
            (self.seed >= 0, f"seed must be >= 0, not {self.seed!r}"),
        ]

    def _distributed_checks(self) -> list[tuple[bool, str]]:
        return [(False, why) for why in distributed_problems(dataclasses.asdict(self))]

    def _recipe_checks(self) -> list[tuple[bool, str]]:
        """ema_decay, mixup_alpha, cutmix_alpha, layer_decay: their values here; the strategies they make no
        sense with by the rule the workflow's start checks too (optionrules.recipe_problems)."""
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


_FIELD_TYPES = {field.name: str(field.type) for field in dataclasses.fields(TrainOptions)}
_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def _type_problem(name: str, value, annotation: str) -> str | None:
    """Why ``value`` is not of the option's type (``int``, ``float | None`` as the dataclass writes it), or None: a
    bool is no number here, an int is a float, and ``lr`` may be ``auto`` (its own check says what to do)."""
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None:
        return None if "None" in kinds else f"{name} must be {_KINDS.get(kinds[0], kinds[0])}, not null"
    if name == "lr" and value == "auto":
        return None
    if kinds == ["str"]:  # every word option is one of a few, which validate() lists
        return None
    from .cli import is_number, is_whole

    fits = {"int": is_whole(value), "float": is_number(value), "bool": isinstance(value, bool)}
    if any(fits.get(kind, True) for kind in kinds if kind != "None"):
        return None
    wanted = " or ".join(_KINDS.get(kind, kind) for kind in kinds if kind != "None")
    return f"{name} must be {wanted}{' or null' if 'None' in kinds else ''}, not {value!r}"
