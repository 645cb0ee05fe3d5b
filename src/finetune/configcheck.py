"""Readable config validation: every problem in one line, naming its key path and what is allowed.

Snakemake's own ``validate`` stops at the first problem and prints the whole sub-schema; the
workflow calls :func:`config_problems` first (``workflow/rules/common.smk``) and refuses to start
with one line per problem, e.g.::

    train.lr: -0.1 is too small: it must be > 0
    train.lrr: unknown key (did you mean lr?); allowed keys: augment, backbone_lr_factor, ...

Also checked here, because JSON Schema cannot say them: fractions that leave no training images,
the keys each ``weights.source`` needs, ``optimizer: lbfgs`` only where features are cached,
``pretrain.train`` keys that pretraining would ignore, an ``export.opset`` the chosen
``export.exporter`` can write, and sweeps (``experiments.<name>.sweep``): each swept value is checked
against its ``train`` key's own schema, e.g.::

    experiments.finetune.sweep.lr.1: 'fast' is not a number
    experiments.finetune.lr: is also swept (experiments.finetune.sweep.lr); set it in one place ...

No job loads this module (workflow/rules/common.smk's RULE_MODULES list the modules each job loads, and its
inputs): its checks and messages can change without rerunning anything. The rules the jobs check too (a run's
recipes, its processes, the export's opset) are in :mod:`finetune.optionrules`, which they load.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import importlib.util
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .optionrules import DYNAMO_MIN_OPSET, caches_features, distributed_problems, is_number, opset_problem, recipe_problems
from .weights import URL_SCHEMES, WEIGHTS_KEYS, WEIGHTS_REQUIRED


_TYPE_NAMES = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping (key: value)", "null": "null"}
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# The folders of results/ that are not runs: an experiment (or a sweep's run) of such a name would put its
# model among them (results/logs/seed0/model.pt), where clearing the logs deletes it.
RESULTS_FOLDERS = {"logs": "the jobs' logs", "benchmarks": "the jobs' benchmark files",
                   "lr_find": "the learning-rate finder's curves", "predictions": "the predictions of new images",
                   "bench": "make bench's results"}


# A recipe key's values that ask for nothing (off).
_RECIPE_OFF = {"layer_decay": (None,), "ema_decay": (None,), "ema_warmup": (True,), "mixup_alpha": (0, 0.0),
               "cutmix_alpha": (0, 0.0)}


def inert_recipes(options: dict) -> dict[str, str]:
    """The recipe keys set (not off) that a run with these options cannot act on, each with the reason: layer_decay
    with feature_extract, ema_decay (and its ema_warmup) with lbfgs, ema_warmup without ema_decay, mixing on cached
    features. Written for the run
    (in its experiment or sweep) they are refused (:func:`recipe_problems`); taken from `train`, where another
    experiment acts on them, the run goes without them (:func:`run_options`)."""
    strategy, optimizer = options.get("strategy", "finetune"), options.get("optimizer", "adamw")
    inert = {}
    if strategy == "feature_extract":
        inert["layer_decay"] = "strategy feature_extract trains only the new head: no backbone stage's lr to scale"
    if options.get("ema_decay") is None:
        inert["ema_warmup"] = "ema_decay is null (no moving average of the weights to start)"
    if optimizer == "lbfgs":
        inert["ema_decay"] = inert["ema_warmup"] = "optimizer lbfgs takes one step per epoch: no steps to average"
    if caches_features(strategy, options.get("cache_features", True), options.get("augment", False)):
        inert["mixup_alpha"] = inert["cutmix_alpha"] = "the head trains on cached backbone features, not images to mix"
    return {key: why for key, why in inert.items() if options.get(key) not in _RECIPE_OFF[key]}


def run_options(train: dict, overrides: dict) -> dict:
    """One run's training keys: `train`'s, overridden by its experiment's (``overrides``), less the recipe keys it
    takes from `train` and cannot act on (:func:`inert_recipes`: `train.layer_decay` shared by a finetune and a
    feature_extract experiment trains the first with it and the second without)."""
    options = {**train, **overrides}
    for key in inert_recipes(options):
        if key not in overrides:
            options.pop(key, None)
    return options


def job_options(train: dict, overrides: dict, defaults: dict, arch: str | None = None) -> dict:
    """The options a run's jobs get: `train`'s, overridden by its experiment's (``overrides``: a sweep's run
    included), with every key the run does not act on (:func:`ignored_options`, :func:`inert_recipes`) at its
    default (``defaults``: the schema's), so that changing such a key (`train.layer_decay` for a feature_extract
    experiment, `backbone_lr_factor` for a sweep's feature_extract runs) reruns only the runs that act on it,
    and their train_info.json shows what they trained with. A value that trains as the default does
    (:func:`same_as_default`: `bn: train` with finetune, `layer_decay: 1.0`; ``arch``: the model's architecture,
    :func:`model_arch`) is the default too: writing it is the same run, not a second one."""
    options = {**train, **overrides}
    for key in {**ignored_options({**defaults, **options}), **inert_recipes({**defaults, **options})}:
        if key in defaults:
            options[key] = defaults[key]
        else:
            options.pop(key, None)
    for key in same_as_default({**defaults, **options}, arch):
        options[key] = defaults[key]
    if earliest_stop({**defaults, **options}) is not None:  # a patience the run cannot reach stops nothing
        options["early_stopping_patience"] = defaults.get("early_stopping_patience")
    return numbers_as_defaults(options, defaults)


def earliest_stop(options: dict) -> tuple[int, int] | None:
    """(the epoch the patience starts counting after, the earliest epoch early stopping could end the run after) where
    that is not before the run's last epoch, so that its early_stopping_patience stops nothing; None where it can stop
    the run (or has no patience). The first epoch is the first best (gradual: the unfreeze epoch, the count starting
    again there), so the earliest stop is after that epoch + the patience."""
    patience, epochs = options.get("early_stopping_patience"), options.get("epochs")
    if not patience or not is_number(patience) or not is_number(epochs):  # no epochs: not known to be unreachable
        return None
    first = max(1, options.get("unfreeze_epoch", 1)) if options.get("strategy", "finetune") == "gradual" else 1
    return (first, first + patience) if first + patience >= epochs else None


def numbers_as_defaults(options: dict, defaults: dict) -> dict:
    """``options`` with each number equal to its key's default written as the default is (`label_smoothing: 0` as
    0.0): Snakemake compares a job's params as text, so that `0` and `0.0` were two runs, and writing a key at its
    default trained again."""
    return {key: defaults[key] if is_number(value) and is_number(defaults.get(key)) and value == defaults[key]
            else value for key, value in options.items()}


def config_numbers_as_defaults(config: dict, schema: dict) -> None:
    """:func:`numbers_as_defaults` through every section of ``config`` (in place) whose keys the schema gives
    defaults (`$ref`s followed): `lr_find.diverge_factor: 4` as the default 4.0, `export.rtol: 0` as 0.0."""
    def resolved(node):
        while isinstance(node, dict) and "$ref" in node:
            node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return node if isinstance(node, dict) else {}

    def walk(section: dict, node: dict) -> None:
        properties = resolved(node).get("properties") or {}
        defaults = {key: resolved(rule).get("default") for key, rule in properties.items()}
        section.update(numbers_as_defaults({key: section[key] for key in properties if key in section}, defaults))
        for key, rule in properties.items():
            if isinstance(section.get(key), dict):
                walk(section[key], rule)

    walk(config, schema)


def same_as_default(options: dict, arch: str | None = None) -> dict[str, str]:
    """The `train` keys whose value trains exactly as the schema's default does, given the run's other options, each
    with why: `bn: train` where `auto` trains BatchNorm too (every strategy but feature_extract), `layer_decay: 1.0`
    (every stage's lr times 1.0: no decay, as null), `unfreeze_stages` of all the stages of a ResNet (``arch``; as
    null, all of them)."""
    strategy = options.get("strategy", "finetune")
    same = {}
    if options.get("bn") == "train" and strategy != "feature_extract":
        same["bn"] = f"auto trains BatchNorm with strategy {strategy}, as train does"
    if options.get("layer_decay") == 1 and is_number(options.get("layer_decay")):
        same["layer_decay"] = "1.0 scales every stage's lr by 1.0: no decay, as null"
    stages = options.get("unfreeze_stages")
    if strategy == "gradual" and is_resnet(arch) and is_number(stages) and stages == RESNET_STAGES:
        same["unfreeze_stages"] = (f"a {arch}'s backbone has {RESNET_STAGES} stages: {stages} unfreezes all of them, as "
                                   "null does")
    return same


def is_resnet(arch: str | None) -> bool:
    """Whether ``arch`` is one of torchvision's ResNets (ResNeXt and Wide ResNet too): :data:`RESNET_STAGES` stages."""
    return isinstance(arch, str) and arch.startswith(("resnet", "resnext", "wide_resnet"))


def model_arch(weights: dict) -> str | None:
    """The architecture the runs train, from the config's ``weights`` section: the one torchvision weights belong to
    (their enum names it, weights.arch left out), else weights.arch (the schema's default, resnet18, where not
    written). None where torchvision's weights are not known here."""
    if weights.get("source", "pretrain") == "torchvision":
        known = torchvision_weights_names() or {}
        return known.get(weights.get("torchvision", "ResNet18_Weights.IMAGENET1K_V1"))
    return str(weights.get("arch", "resnet18"))


# What lr_find's range test does not read of a run's options: how long and how the run trains after its first
# steps (the test sets each step's lr itself, and keeps no model), and with gradual what the first epoch, the head
# alone, leaves frozen (unfreeze_epoch 0 trains everything from the start: then they are read). At their defaults in the range test's options: changing them reruns train, not lr_find.
RANGE_TEST_UNREAD = ("epochs", "early_stopping_patience", "metric", "on_divergence", "schedule", "warmup_epochs",
                     "ema_decay", "ema_warmup")
GRADUAL_HEAD_ALONE = ("unfreeze_epoch", "unfreeze_stages", "backbone_lr_factor", "layer_decay")


def range_test_options(options: dict, defaults: dict) -> dict:
    """A run's options (:func:`job_options`) as lr_find's range test gets them: the keys it does not read at their
    defaults, so that editing one (a run's epochs, its patience) does not run the range test again."""
    head_alone = options.get("strategy") == "gradual" and (options.get("unfreeze_epoch") or 0) >= 1  # 0: all from the start
    unread = RANGE_TEST_UNREAD + (GRADUAL_HEAD_ALONE if head_alone else ())
    return {**options, **{key: defaults[key] for key in unread if key in defaults}}


def train_defaults(schema_file: str | Path) -> dict:
    """Every `train` key's default, as the schema writes it."""
    return _defaults_of(yaml.safe_load(Path(schema_file).read_text())["$defs"]["train"])


def _defaults_of(section: dict) -> dict:
    return {key: rule["default"] for key, rule in section["properties"].items() if isinstance(rule, dict) and "default" in rule}


RESNET_STAGES = 5  # finetune.models.backbone_stages of torchvision's ResNets (ResNeXt, Wide ResNet): stem, layer1-4


# Values of a `train` key that ask for nothing: written where the key does not apply, they are not refused.
_NO_EFFECT = {"cache_features": (False,), "bn": ("auto", "frozen"), "amp": ("off",), "channels_last": (False,),
              "warmup_epochs": (0,), "unfreeze_stages": (None,), "compile": ("off",)}


def unread_options(options: dict) -> dict[str, str]:
    """The `train` keys one run's training does not act on, given its other options, each with the reason, but
    those at a value that asks for nothing (:data:`_NO_EFFECT`: `cache_features: false` where nothing is cached).

    ``options``: the run's keys with their defaults. A key written for such a run is refused at start
    (:func:`_unread_problems`) rather than silently ignored.
    """
    return {key: why for key, why in ignored_options(options).items() if options.get(key) not in _NO_EFFECT.get(key, ())}


def ignored_options(options: dict) -> dict[str, str]:
    """Every `train` key one run's training does not act on, whatever its value: :func:`job_options` gives each
    its default, so that writing it (`cache_features: false` for an augmented run) or not is the same run."""
    strategy, optimizer = options.get("strategy", "finetune"), options.get("optimizer", "adamw")
    cached = caches_features(strategy, options.get("cache_features", True), options.get("augment", False))
    unread = {}
    if strategy != "gradual":
        unread["unfreeze_epoch"] = unread["unfreeze_stages"] = (
            f"only strategy gradual unfreezes the backbone in stages, and this is strategy {strategy}")
    if strategy == "feature_extract":
        unread["backbone_lr_factor"] = "strategy feature_extract trains only the new head; the backbone does not train"
        unread["bn"] = "strategy feature_extract keeps the whole backbone in eval mode: its BatchNorm layers never train"
    if optimizer != "sgd":
        unread["momentum"] = f"only optimizer sgd has momentum, and this is optimizer {optimizer}"
    if cached:
        unread["compile"] = "on cached features the head trains on feature vectors, uncompiled"
        unread["channels_last"] = "on cached features the head trains on feature vectors, which have no memory format"
    if optimizer == "lbfgs":
        unread["schedule"] = unread["warmup_epochs"] = (
            "optimizer lbfgs's line search chooses each step: no learning-rate schedule applies")
        unread["batch_size"] = "optimizer lbfgs is full-batch: each step takes every training image"
        unread["amp"] = "optimizer lbfgs solves the head in full precision"
    elif options.get("schedule", "cosine") == "onecycle":
        unread["warmup_epochs"] = "schedule onecycle warms up over its first 30% of steps itself"
    if strategy != "feature_extract" or options.get("augment", False):
        unread["cache_features"] = ("backbone features are cached only for strategy feature_extract without augment, "
                                    f"and this is strategy {strategy}, augment {str(options.get('augment', False)).lower()}")
    if options.get("device", "auto") == "cpu":
        unread["amp"] = unread["channels_last"] = "autocast and channels-last apply on CUDA only, and this is device cpu"
    return unread


def _unread_problems(experiments: dict, runs: dict, experiment_of: dict, train: dict, defaults: dict,
                     written_train: dict) -> list[str]:
    """Keys written in an experiment (or its sweep) that none of its runs act on, and keys of `train` that no
    run taking them from there acts on: refused, naming the key and why (``unread_options``)."""
    unread = {name: unread_options({**defaults, **train, **overrides}) for name, overrides in runs.items()}
    problems = []
    for experiment, spec in experiments.items():
        if not isinstance(spec, dict):
            continue
        names = [name for name, of in experiment_of.items() if of == experiment]
        swept = spec.get("sweep") or {}
        for key in [*(k for k in spec if k != "sweep"), *swept]:
            reasons = [unread[name].get(key) for name in names]
            if names and all(reasons):
                where = f"experiments.{experiment}.{'sweep.' if key in swept else ''}{key}"
                problems.append(f"{where}: not used: {reasons[0]}; remove it")
    for key in written_train:
        inheriting = [name for name, overrides in runs.items() if key not in overrides]
        reasons = [unread[name].get(key) or inert_recipes(
                       {**defaults, **train, **(runs[name] if isinstance(runs[name], dict) else {})}).get(key)
                   for name in inheriting]
        if inheriting and all(reasons):
            problems.append(f"train.{key}: not used by any experiment that takes it from train: "
                            f"{_each_reason(dict(zip(inheriting, reasons)), experiment_of)}; remove it")
    return problems


def _each_reason(reasons: dict[str, str], experiment_of: dict[str, str]) -> str:
    """Why the runs (``reasons``, by run name) do not act on a key: the one reason where all share it, or else
    each reason followed by the experiments whose runs it is given for."""
    experiments: dict[str, list[str]] = {}
    for name, why in reasons.items():
        named = experiments.setdefault(why, [])
        if experiment_of[name] not in named:
            named.append(experiment_of[name])
    if len(experiments) == 1:
        return next(iter(experiments))
    return "; ".join(f"{why} ({'experiments' if len(named) > 1 else 'experiment'} {', '.join(named)})"
                     for why, named in experiments.items())


def _same_run_problems(experiments: dict, runs: dict, experiment_of: dict, train: dict, defaults: dict,
                       refused: list[str], arch: str | None = None) -> list[str]:
    """Runs of one sweep that would train the same (their jobs get the same options, :func:`job_options`): a swept
    value the run does not act on at one value, and asks for nothing at another (`warmup_epochs: [0, 1]` with
    schedule onecycle, `bn: [frozen, train]` with feature_extract), or at two values that train alike (`bn: [auto,
    train]` with finetune: :func:`same_as_default`), made two names for one run. Refused, naming the keys, unless
    ``refused`` (the problems found already) names them all."""
    problems = []
    for experiment, spec in experiments.items():
        swept = spec.get("sweep") if isinstance(spec, dict) else None
        if not isinstance(swept, dict):
            continue
        first_of: dict[str, str] = {}
        said = set()
        for name in (name for name, of in experiment_of.items() if of == experiment):
            overrides = runs[name] if isinstance(runs[name], dict) else {}
            same = first_of.setdefault(repr(sorted(job_options(train, overrides, defaults, arch).items())), name)
            if same == name:
                continue
            keys = [key for key in swept if runs[same].get(key) != overrides.get(key)]
            wheres = [f"experiments.{experiment}.sweep.{key}" for key in keys]
            if tuple(keys) in said or all(any(problem.startswith(f"{where}:") for problem in refused) for where in wheres):
                continue
            said.add(tuple(keys))  # one pair of runs says it
            options = {**defaults, **train, **overrides}
            first = {**defaults, **train, **(runs[same] if isinstance(runs[same], dict) else {})}
            ignored = {**same_as_default(first, arch), **same_as_default(options, arch), **inert_recipes(options),
                       **ignored_options(options)}
            stop = earliest_stop(options) or earliest_stop(first)
            if stop:
                ignored["early_stopping_patience"] = (f"with epochs {options.get('epochs')} neither can stop early: the "
                                                      f"earliest stop is after epoch {stop[0]} + the patience")
            why = "; ".join(f"{key}: {ignored[key]}" for key in keys if key in ignored)
            problems.append(f"{', '.join(wheres)}: runs {same} and {name} would train the same run"
                            f"{f' ({why})' if why else ''}; sweep only values that change the run")
    return problems


def overridden_train_notes(config: dict, written_train: dict) -> list[str]:
    """Notes for the `train` keys the user wrote that every run sets for itself (in its experiment or sweep): the
    value under `train` reaches no job. Said, not refused: a `train` section of common settings is a usual base."""
    from .sweeps import expand

    experiments = config.get("experiments")
    if not isinstance(experiments, dict) or not experiments or not isinstance(written_train, dict):
        return []
    runs, experiment_of = expand(experiments)
    notes = []
    for key in written_train:
        if runs and all(isinstance(own, dict) and key in own for own in runs.values()):
            named = ", ".join(dict.fromkeys(experiment_of.get(name, name) for name in runs))
            notes.append(f"note: train.{key}: not used: every experiment sets its own {key} ({named})")
    return notes


def _non_finite_problems(value, path: tuple = ()) -> list[str]:
    """A NaN or infinity anywhere in the config (YAML's .nan, .inf): every range check passes a NaN (each
    comparison with it is false), so such a value reached the jobs, which failed there or misbehaved."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _non_finite_problems(item, (*path, key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _non_finite_problems(item, (*path, i))]
    if isinstance(value, float) and not math.isfinite(value):
        text = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
        return [f"{_where(path)}: {text} is not a finite number; write a number"]
    return []


def _key_path(path) -> str:
    return ".".join(str(p) for p in path)


def _section_keys(schema: dict, section: str) -> set[str]:
    """The keys of a top-level section of the config's ``schema`` (one given by a ``$ref`` to ``$defs`` too)."""
    entry = (schema.get("properties") or {}).get(section) or {}
    ref = entry.get("$ref", "")
    if ref.startswith("#/$defs/"):
        entry = (schema.get("$defs") or {}).get(ref.removeprefix("#/$defs/")) or {}
    return set(entry.get("properties") or {})


def _yaml_text(value) -> str:
    """``value`` as a flow-style YAML scalar or collection, one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _where(path) -> str:
    return _key_path(path) or "the top level"


def _other_sections_hint(key: str, root: dict, section: str) -> str:
    """`` (opset is a key of export: export.opset)`` for a key written in ``section`` that another top-level section of
    the ``root`` schema has; "" where none has it."""
    others = [name for name in root.get("properties") or {} if name != section and key in _section_keys(root, name)]
    return f" ({key} is a key of {', '.join(others)}: {others[0]}.{key})" if others else ""


def _describe(error, top_level: tuple[str, ...] = (), root: dict | None = None) -> list[str]:
    """One or more lines for a jsonschema ValidationError; ``top_level``: the config's top-level keys (a key
    of theirs written in a section, `experiments.a.seeds`, is named as such); ``root``: the config's schema (a key
    of another section written in one, `evaluate.opset`, is named where it goes: export.opset)."""
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        lines = _unknown_key_lines(error, top_level, root)
        if lines:
            return lines
    describe = _DESCRIBERS.get(error.validator)
    line = describe(error, where) if describe else None
    return [line or f"{where}: {error.message}"]


def _unknown_key_lines(error, top_level: tuple[str, ...], root: dict | None) -> list[str]:
    """A line for each key a mapping may not hold, with the keys it may and a guess at the one meant."""
    path = list(map(str, error.absolute_path))
    allowed = sorted(error.schema.get("properties", {}))
    unknown = [k for k in error.instance if k not in allowed]
    if path == ["pretrain", "train"]:  # the list a user picks from: not those refused there
        allowed = [k for k in allowed if k not in _NOT_PRETRAIN_OPTIONS]
    if path[::2] == ["experiments", "sweep"]:  # experiments.<name>.sweep
        from .sweeps import NOT_SWEPT

        allowed = [k for k in allowed if k not in NOT_SWEPT]
    return [f"{_key_path([*error.absolute_path, key])}: unknown key{_unknown_key_guess(error, key, allowed, top_level, root)}; "
            f"allowed keys: {', '.join(allowed)}" for key in unknown]


def _unknown_key_guess(error, key, allowed: list[str], top_level: tuple[str, ...], root: dict | None) -> str:
    """`` (did you mean ...?)``, or where ``key`` belongs, for an unknown key of the mapping ``error`` is about."""
    path = list(map(str, error.absolute_path))
    if ":" in str(key) and str(key).split(":", 1)[0].strip() in allowed:
        name, value_text = (part.strip() for part in str(key).split(":", 1))
        return f" (YAML reads '{key}' as one key: write a space after the colon, '{name}: {value_text}')"
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if path == ["pretrain", "train"] and key in ("dataset", "image_size"):
        return f" ({key} is a key of pretrain, not of pretrain.train)"
    if key == "sweep" and path in ([], ["train"]):
        return " (sweep is a key of an experiment, experiments.<name>.sweep: it trains that experiment once per value)"
    if path and key in top_level:
        return f" ({key} is a key of the config's top level, not of {_key_path(error.absolute_path)})"
    if not path and key in _section_keys(error.schema, "train"):
        return (f" ({key} is a key of train: write it under train:, or on the command line "
                f"--config 'train={{{key}: {_yaml_text(error.instance[key])}}}')")
    if not close and path and root is not None and key != "seed":  # seed: startchecks.seed_hint
        return _other_sections_hint(str(key), root, path[0])
    return f" (did you mean {close[0]}?)" if close else ""


def _type_line(error, where: str) -> str:
    value, types = error.instance, error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    if "integer" in types and isinstance(value, float) and value.is_integer():
        return f"{where}: {value!r} is not {wanted}: write it without the decimal point, {int(value)}"
    if value is None and ("object" in types or "array" in types):  # `finetune:` or `seeds:` with nothing after it
        key = str(list(error.absolute_path)[-1]) if error.absolute_path else "key"
        default = error.schema.get("default")
        empty = (f"write `{key}: {{}}` for none of its keys" if "object" in types and not error.schema.get("minProperties")
                 else f"write `{key}: []` for none" if "object" not in types and not error.schema.get("minItems")
                 else f"leave `{key}:` out for the default, {_yaml_text(default)}{_MERGED}" if default  # `{}` refused too
                 else f"leave `{key}:` out for none{' (the experiment trains once)' if key == 'sweep' else ''}")
        return f"{where}: empty (YAML reads a key with nothing after it as null), and it must be {wanted}: {empty}"
    if isinstance(value, (datetime.date, datetime.datetime)) and "string" in types:  # `path: 2024-05-01`, unquoted
        return (f"{where}: YAML reads {value.isoformat()} as a date, not as text: put it in quotes, "
                f"'{value.isoformat()}'")
    shown = _yaml_text(value) if value is None or isinstance(value, bool) else repr(value)  # null, true: as YAML writes them
    return f"{where}: {shown} is not {wanted}{_number_text_hint(value, types)}"


def _pattern_line(error, where: str) -> str:
    value, expected = error.instance, error.validator_value
    if expected == "^auto$":  # lr: a number or the one word auto (not in a sweep: swept lrs are numbers)
        hint = _number_text_hint(value, ["number"])
        if list(map(str, error.absolute_path))[2:3] == ["sweep"]:  # experiments.<name>.sweep.lr.<i>
            return f"{where}: {value!r} is not a number{hint}"
        return (f"{where}: {value!r} is not a number{hint + '; the one text allowed is auto' if hint else ' or auto'}"
                f"{_case_hint(value, ['auto'])}")
    what = "64 hex digits (a sha256)" if "64" in str(expected) else f"the pattern {expected}"
    return f"{where}: {value!r} must be {what}"


def _enum_line(error, where: str) -> str:
    value, expected = error.instance, error.validator_value
    hint = (" (YAML reads an unquoted off, no or false as false: write 'off', quoted)"
            if value is False and "off" in expected else "")
    allowed = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in expected)  # YAML's false
    return f"{where}: {value!r} is not allowed; use one of {allowed}{hint}{_case_hint(value, expected)}"


def _bound_line(error, where: str) -> str:
    op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[error.validator]
    size = "small" if "inimum" in error.validator else "large"
    return f"{where}: {error.instance!r} is too {size}: it must be {op} {error.validator_value}"


# A key left out of a config merged over another (config/config.yaml, the demo's) takes that config's value.
_MERGED = " (or that of a config yours is merged over)"


def _min_properties_line(error, where: str) -> str:
    default = error.schema.get("default")
    once = " (the experiment trains once)" if list(map(str, error.absolute_path))[-1:] == ["sweep"] else ""
    hint = (f": write one, or leave the key out for the default, {_yaml_text(default)}{_MERGED}"
            if isinstance(default, dict) and default else f": write one, or leave the key out for none{once}")
    return f"{where}: needs at least {error.validator_value} entry(ies){hint}"


# A line for a jsonschema error, by its validator (others: jsonschema's own message, after the key's path).
_DESCRIBERS = {
    "type": _type_line,
    "pattern": _pattern_line,
    "enum": _enum_line,
    **dict.fromkeys(("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"), _bound_line),
    "minItems": lambda error, where: f"{where}: needs at least {error.validator_value} item(s), has {len(error.instance)}",
    "minProperties": _min_properties_line,
}


def _number_text_hint(value, types) -> str:
    """Why a text is not the number, integer or boolean wanted: quoted (write it without quotes), or an exponent YAML
    1.1 reads as text (1e-3)."""
    if not isinstance(value, str):
        return ""
    if ("integer" in types or "boolean" in types) and _quoted_as(value, types):
        return f" (it is quoted, so YAML reads it as text: write {value.strip()} without quotes)"
    if not (_NUMBER_TEXT.match(value.strip()) and "number" in types):
        return ""
    if isinstance(yaml.safe_load(value.strip()), (int, float)):  # a number to YAML, so it was quoted
        return f" (it is quoted, so YAML reads it as text: write {value.strip()} without quotes)"
    return (f" (YAML reads {value} as text: write it with a decimal point and a signed exponent, "
            f"e.g. {float(value):.1e})")


def _quoted_as(value: str, types) -> bool:
    """Whether YAML reads ``value`` unquoted as an integer or boolean of ``types`` ("3", "false")."""
    try:
        read = yaml.safe_load(value.strip())
    except yaml.YAMLError:
        return False
    if isinstance(read, bool):
        return "boolean" in types
    return isinstance(read, int) and ("integer" in types or "number" in types)


def _case_hint(value, allowed) -> str:
    """`` (write sgd, in lower case)`` for a text that is an allowed value but for its case (SGD, Auto); else
    `` (did you mean adamw?)`` for one close to an allowed value (Adam)."""
    if not isinstance(value, str):
        return ""
    texts = [a for a in allowed if isinstance(a, str)]
    same = [a for a in texts if a.lower() == value.strip().lower() and a != value]
    if same:
        return f" (write {same[0]}, in lower case)"
    close = difflib.get_close_matches(value.strip().lower(), texts, n=1)
    return f" (did you mean {close[0]}?)" if close and len(texts) > 1 else ""


# Keys of the `train` schema that pretraining has no use for: it always starts from random weights
# and trains at pretrain.image_size.
_NOT_PRETRAIN_OPTIONS = {
    "pretrained": "pretraining always starts from random weights; remove it",
    "image_size": "pretraining trains at pretrain.image_size; set that instead",
    "devices": "pretraining runs in one process (several processes train the experiments: set devices there)",
    "nodes": "pretraining runs in one process (several processes train the experiments: set nodes there)",
    "sync_batchnorm": "pretraining runs in one process; sync_batchnorm is for experiments with devices x nodes > 1",
}


def schema_default(schema_file: str | Path, key: str):
    """The default of a top-level key as the schema writes it (before defaults are filled into it)."""
    return yaml.safe_load(Path(schema_file).read_text())["properties"][key]["default"]


def _pretrain_train_problems(config: dict) -> list[str]:
    train = (config.get("pretrain") or {}).get("train")
    if not isinstance(train, dict):
        return []
    problems = [f"pretrain.train.{key}: {why}" for key, why in _NOT_PRETRAIN_OPTIONS.items() if key in train]
    problems += [f"pretrain.train: {why}" for why in from_scratch_advice(recipe_problems(train))]
    if train.get("lr") == "auto":
        problems.append("pretrain.train.lr: auto is not available for pretraining (the learning-rate finder runs "
                        "for experiments); set a number")
    if train.get("strategy") == "feature_extract":
        problems.append("pretrain.train.strategy: feature_extract trains only the output layer, and pretraining starts "
                        "from random weights: the source model's backbone would stay random; use finetune (the default)")
    return problems


def _lr_auto_problems(experiments: dict, runs: dict, experiment_of: dict, train: dict) -> list[str]:
    """`lr: auto` where the learning-rate finder cannot serve it: swept, or with optimizer lbfgs."""
    problems = [f"experiments.{name}.sweep.lr: auto cannot be swept (one lr_find runs per experiment run); "
                "set lr: auto in the experiment itself, or sweep numbers"
                for name, spec in experiments.items()
                if isinstance(spec, dict) and "auto" in ((spec.get("sweep") or {}).get("lr") or [])]
    for name, overrides in runs.items():
        options = {**train, **(overrides if isinstance(overrides, dict) else {})}
        if options.get("lr") == "auto" and options.get("optimizer") == "lbfgs":
            where = f"experiments.{experiment_of[name]}.lr" if "lr" in overrides else "train.lr"
            problems.append(f"{where}: auto needs a learning rate to find, but experiment run {name} uses optimizer "
                            "lbfgs (its line search chooses the step); set a number")
    return problems


# The source dataset's test_fraction where not written (ImageFolder, CSV): nothing reads the source's test images
# (pretrain trains on its train images and chooses its best epoch on its val ones), so none are drawn (common.smk).
SOURCE_TEST_FRACTION = 0.0

# The dataset keys a format does not read: written, they are refused rather than silently ignored.
_DOWNLOAD_KEYS = dict.fromkeys(("download_dir", "download_timeout_s"), "only fashion-mnist is downloaded")
DATASET_KEYS_NOT_READ = {
    "fashion-mnist": {"test_fraction": "its official test split is the test set (max_test_per_class caps it)",
                      "on_bad_image": "its IDX files are checked whole"},
    "imagefolder": _DOWNLOAD_KEYS,
    "csv": _DOWNLOAD_KEYS,
}


def _dataset_problems(prefix: str, dataset: dict) -> list[str]:
    fmt = dataset.get("format", "fashion-mnist")
    problems = [f"{prefix}.{key}: not used with {prefix}.format: {fmt} ({why}); remove it"
                for key, why in DATASET_KEYS_NOT_READ.get(fmt, {}).items() if dataset.get(key) is not None]
    classes = dataset.get("classes")
    if fmt == "fashion-mnist" and classes:  # its classes are known now: as the split would resolve them
        from .data import FASHION_MNIST_CLASSES, select_classes
        from .errors import DataError

        try:
            select_classes(FASHION_MNIST_CLASSES, classes, where="Fashion-MNIST")
        except DataError as exc:
            problems.append(str(exc).replace("dataset.classes", f"{prefix}.classes", 1))
    elif classes and len({repr(c) for c in classes}) < len(classes):
        problems.append(f"{prefix}.classes: {classes} names a class twice")
    return problems


@functools.lru_cache(maxsize=None)
def _torchvision_model_sources() -> tuple[str, ...] | None:
    """The text of each of torchvision's ``models/*.py`` (its classification models), read once per start; None where
    torchvision is not installed or a file cannot be read."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return tuple(file.read_text(encoding="utf-8")
                     for file in sorted((Path(next(iter(spec.submodule_search_locations))) / "models").glob("*.py")))
    except (OSError, UnicodeDecodeError):
        return None


def torchvision_architectures() -> list[str] | None:
    """The classification models torchvision registers (``torchvision.models.list_models(module=torchvision.models)``),
    read from its source: importing it (and torch) would add 1-2 s to every start of Snakemake. None where
    torchvision is not installed, or its source says nothing of the kind (the train job then checks)."""
    texts = _torchvision_model_sources()
    return sorted({name for text in texts for name in _REGISTERED.findall(text)}) or None if texts else None


# `@register_model()`, maybe more decorators, then the builder: `def resnet18(`.
_REGISTERED = re.compile(r"@register_model\([^)]*\)\s*(?:@[^\n]*\n\s*)*def (\w+)\(")


@functools.lru_cache(maxsize=None)
def _torchvision_weights_enums() -> dict[str, tuple[str | None, dict[str, str]]]:
    """{weights enum: (the registered architecture its builder takes, {member: what it is set to})} of torchvision's
    classification models, read from their source (:func:`_torchvision_model_sources`)."""
    texts = _torchvision_model_sources() or ()
    builders = {enum: arch for text in texts for arch, enum in _BUILDER.findall(text)}
    registered = set(torchvision_architectures() or ())
    return {enum: (builders.get(enum) if builders.get(enum) in registered else None, dict(_MEMBER.findall(body)))
            for text in texts for enum, body in _WEIGHTS_ENUM.findall(text)}


def torchvision_weights_names() -> dict[str, str] | None:
    """{weights enum member (aliases such as ``ResNet18_Weights.DEFAULT`` included): the architecture it belongs to}
    of torchvision's classification models, read from torchvision's source as :func:`torchvision_architectures`
    reads the models (importing it would add 1-2 s to every start). None where that source says nothing of the
    kind (the weights job then checks)."""
    return {f"{enum}.{member}": arch for enum, (arch, members) in _torchvision_weights_enums().items() if arch
            for member in members} or None


def torchvision_weights_member(name: str) -> str:
    """``ResNet18_Weights.DEFAULT`` -> ``ResNet18_Weights.IMAGENET1K_V1`` (the member an alias names), read from
    torchvision's source; other names as given."""
    enum, _, member = name.partition(".")
    value = _torchvision_weights_enums().get(enum, (None, {}))[1].get(member, "")
    return f"{enum}.{value}" if re.fullmatch(r"[A-Z][A-Z0-9_]*", value) else name


# `class ResNet18_Weights(WeightsEnum):` and its indented body; in it `    IMAGENET1K_V1 = Weights(` and
# `    DEFAULT = IMAGENET1K_V1`; the builder `def resnet18(*, weights: Optional[ResNet18_Weights] = None, ...`.
_WEIGHTS_ENUM = re.compile(r"^class (\w+)\(WeightsEnum\):\n((?:[ \t]+.*\n|[ \t]*\n)*)", re.M)
_MEMBER = re.compile(r"^    ([A-Z][A-Z0-9_]*) = (\w+\(?)", re.M)
_BUILDER = re.compile(r"^def (\w+)\(\s*\*,\s*weights: Optional\[(\w+)\]", re.M)


def _weights_problems(weights: dict) -> list[str]:
    source = weights.get("source", "pretrain")
    if source not in WEIGHTS_KEYS:
        return []  # the schema names it
    problems = [f"weights.{key}: required with weights.source: {source}"
                for key in WEIGHTS_REQUIRED.get(source, ()) if not weights.get(key)]
    read = WEIGHTS_KEYS[source]
    for key, value in weights.items():
        if key != "source" and key not in read and value is not None:
            problems.append(f"weights.{key}: not used with weights.source: {source}, which reads {', '.join(read)}; "
                            "remove it (or choose the source that reads it)")
    problems += _torchvision_weights_problems(weights) if source == "torchvision" else []
    for key in ("url", "mirror"):
        value = weights.get(key)
        if key in read and isinstance(value, str) and value and urlsplit(value).scheme not in URL_SCHEMES:
            problems.append(f"weights.{key}: {value!r} is not a URL the downloader reads: begin it with http://, "
                            "https:// or file://")
    arch, names = weights.get("arch"), torchvision_architectures()
    if isinstance(arch, str) and names and arch not in names:
        close = difflib.get_close_matches(arch.lower(), names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        problems.append(f"weights.arch: unknown architecture {arch!r}{hint}; torchvision's classification models are: "
                        f"{', '.join(names)}")
    prep = weights.get("preprocessing")
    if isinstance(prep, dict) and isinstance(prep.get("resize_size"), int) and isinstance(prep.get("crop_size"), int) \
            and prep["crop_size"] > prep["resize_size"]:
        problems.append(f"weights.preprocessing: crop_size {prep['crop_size']} is larger than resize_size "
                        f"{prep['resize_size']}: a centre crop cannot be larger than the image it is cut from; set "
                        f"resize_size >= crop_size (torchvision's convention: resize 256, crop 224)")
    return problems


def _torchvision_weights_problems(weights: dict) -> list[str]:
    """weights.torchvision a member of torchvision's weights enums, and weights.arch, where written, its architecture:
    found at start, not by the weights job after Snakemake had removed the earlier weights (and decoded images)."""
    name, known = weights.get("torchvision", "ResNet18_Weights.IMAGENET1K_V1"), torchvision_weights_names()
    if not isinstance(name, str) or not known:
        return []
    if name not in known:
        # The enum written right (ResNet18_Weights.IMAGENET1K_V3): its own members, the closest first; were all
        # enums' members compared, other architectures' came up (ResNet152_Weights.IMAGENET1K_V2).
        members = [member for member in known if member.split(".", 1)[0] == name.split(".", 1)[0]]
        close = (difflib.get_close_matches(name, members, n=3, cutoff=0.0) if members
                 else difflib.get_close_matches(name, list(known), n=3))
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return [f"weights.torchvision: unknown torchvision weights {name!r}{hint}: a classification model's weights "
                "enum and member, as ResNet50_Weights.IMAGENET1K_V2 (torchvision.models.get_model_weights(name))"]
    arch = weights.get("arch")
    if isinstance(arch, str) and arch in set(known.values()) and arch != known[name]:
        return [f"weights.arch: {arch!r}, but {name} belongs to {known[name]!r}: leave weights.arch out (torchvision "
                "weights name their architecture) or fix it"]
    return []


def _semantic_problems(config: dict, default_experiments: dict, train_defaults: dict | None = None,
                       range_defaults: dict | None = None, written_train: dict | None = None) -> list[str]:
    """Rules across keys, checked only where the schema found nothing wrong with the keys involved.

    ``written_train``: the `train` keys the user wrote (default: all of ``config``'s)."""
    problems = _pretrain_train_problems(config)
    pretrain_train = (config.get("pretrain") or {}).get("train")
    if isinstance(pretrain_train, dict):
        unread = unread_options({**(train_defaults or {}), **pretrain_train})
        problems += [f"pretrain.train.{key}: not used: {unread[key]}; remove it" for key in pretrain_train if key in unread]
    for prefix, dataset in (("dataset", config.get("dataset")), ("pretrain.dataset", (config.get("pretrain") or {}).get("dataset"))):
        if isinstance(dataset, dict):
            problems += _dataset_problems(prefix, dataset) + _split_fraction_problems(prefix, dataset)
    if isinstance(config.get("weights"), dict):
        problems += _weights_problems(config["weights"])
    problems += _lr_range_problems(config, range_defaults or {})
    problems += _experiments_problems(config, default_experiments, train_defaults or {}, written_train, problems)
    export = config.get("export") if isinstance(config.get("export"), dict) else {}
    problem = opset_problem(export.get("exporter", "dynamo"), export.get("opset", DYNAMO_MIN_OPSET))
    return problems + ([problem] if problem else [])


def _split_fraction_problems(prefix: str, dataset: dict) -> list[str]:
    """What the split of ``dataset`` (at the config key ``prefix``) cannot do with its fractions and limits."""
    problems = []
    if prefix == "pretrain.dataset" and dataset.get("max_test_per_class") is not None:
        problems.append("pretrain.dataset.max_test_per_class: not used: pretrain trains and validates on the source's "
                        "train and val images, and its test images are never read; remove it")
    if dataset.get("format", "fashion-mnist") == "fashion-mnist":  # an official test split: test_fraction is ignored
        if dataset.get("val_fraction") == 0:
            problems.append(f"{prefix}.val_fraction is 0: Fashion-MNIST gives no val split, so there would be no "
                            "validation images, on which training chooses its best epoch; set it above 0 (default 0.2)")
        return problems
    val, test = dataset.get("val_fraction", 0.2), dataset.get("test_fraction", 0.2 if prefix == "dataset" else SOURCE_TEST_FRACTION)
    if isinstance(val, (int, float)) and isinstance(test, (int, float)) and val + test >= 1:
        problems.append(f"{prefix}.val_fraction + {prefix}.test_fraction is {val + test:g}: it must be < 1 to leave "
                        "training images")
    return problems


def _lr_range_problems(config: dict, range_defaults: dict) -> list[str]:
    range_test = {**range_defaults, **(config.get("lr_find") if isinstance(config.get("lr_find"), dict) else {})}
    min_lr, max_lr = range_test.get("min_lr"), range_test.get("max_lr")
    if min_lr is not None and max_lr is not None and min_lr >= max_lr:
        return [f"lr_find.min_lr: {min_lr:g} must be below lr_find.max_lr ({max_lr:g}): the range test raises the lr "
                "from one to the other"]
    return []


def _experiments_problems(config: dict, default_experiments: dict, train_defaults: dict, written_train: dict | None,
                          found_before: list[str]) -> list[str]:
    """What the experiments' runs cannot train: sweeps, names, lr auto, options unread, the same run twice, and
    each run's options together (``found_before``: the problems of the other sections, found already)."""
    from .sweeps import expand, sweep_problems  # here: the jobs that load this module never read sweeps

    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    experiments = config.get("experiments", default_experiments)
    experiments = experiments if isinstance(experiments, dict) else {}
    swept = sweep_problems(experiments)
    if swept:
        return swept
    runs, experiment_of = expand(experiments)
    problems = [f"experiments.{experiment_of[name]}: the run name {name} names the folder results/{name.lower()}/ "
                f"(letter case aside), which holds {RESULTS_FOLDERS[name.lower()]}: rename the experiment" for name in runs
                if name.lower() in RESULTS_FOLDERS]
    problems += _lr_auto_problems(experiments, runs, experiment_of, train)
    problems += _unread_problems(experiments, runs, experiment_of, train, train_defaults,
                                 train if written_train is None else written_train)
    arch = model_arch(config.get("weights") if isinstance(config.get("weights"), dict) else {})
    problems += _same_run_problems(experiments, runs, experiment_of, train, train_defaults, found_before + problems, arch)
    found = {name: _run_problems(run_options(train, overrides if isinstance(overrides, dict) else {}), arch,
                                 train_defaults) for name, overrides in runs.items()}
    problems += _train_s_own(found, _run_problems(run_options(train, {}), arch, train_defaults), runs, experiment_of,
                             train_defaults)
    return problems + _by_experiment(found, experiment_of)


def with_sweep_items(schema: dict) -> dict:
    """The schema with each sweep key's values checked against that `train` key's own schema."""
    sweep = schema["$defs"]["experiment"]["properties"]["sweep"]
    listed = sweep["additionalProperties"]
    sweep["properties"] = {key: {**listed, "items": rule} for key, rule in schema["$defs"]["train"]["properties"].items()}
    sweep["additionalProperties"] = False
    return schema


# optionrules' advice for gradual's unfreeze_epoch, where strategy feature_extract is itself refused (a source model
# that pretrain trains, a run with pretrained: false): put right here, not there, which the train jobs load (an edit
# of it would train every run again).
_GRADUAL_ADVICE = "lower unfreeze_epoch below epochs, or use strategy feature_extract"


def from_scratch_advice(problems: list[str]) -> list[str]:
    """``problems`` of a model that starts from random weights, advising finetune where they advise feature_extract."""
    return [problem.replace(_GRADUAL_ADVICE, "lower unfreeze_epoch below epochs, or use strategy finetune (the backbone "
                                             "starts random: feature_extract would never train it)")
            for problem in problems]


def _run_problems(options: dict, arch: str | None, defaults: dict) -> list[str]:
    """What one run's options (train and its experiment's, a sweep's values in) cannot train."""
    problems = []
    stages = options.get("unfreeze_stages")
    if options.get("strategy") == "gradual" and is_number(stages) and stages > RESNET_STAGES and is_resnet(arch):
        problems.append(f"unfreeze_stages: {stages}, but a {arch}'s backbone has {RESNET_STAGES} stages (the stem conv1 "
                        f"+ bn1, then layer1 .. layer4): use at most {RESNET_STAGES}, or null for all of them")
    problems += distributed_problems({**defaults, **options})
    recipes = recipe_problems(options)
    problems += from_scratch_advice(recipes) if options.get("pretrained") is False else recipes
    if options.get("optimizer") == "lbfgs" and not caches_features(
            options.get("strategy", "finetune"), options.get("cache_features", True), options.get("augment", False)):
        problems.append(
            "optimizer lbfgs (set here or in train) solves the new head on cached backbone features; it needs "
            f"strategy: feature_extract, cache_features: true and augment: false (here strategy: "
            f"{options.get('strategy', 'finetune')}, cache_features: {str(options.get('cache_features', True)).lower()}, "
            f"augment: {str(options.get('augment', False)).lower()})")
    return problems


def _train_s_own(found: dict[str, list[str]], of_train: list[str], runs: dict, experiment_of: dict[str, str],
                 defaults: dict) -> list[str]:
    """The problems that `train` alone has too (the same line) and that runs have which write none of the keys the
    line names (``key: value``): those runs take them from train. Said once under ``train.<the line's first key>``
    (naming the experiments where not every run has it) and taken out of those runs' lines in ``found``, not said per
    experiment, credited to the file that writes the experiment. A run that writes one of the keys keeps its line."""
    said = []
    for why in of_train:
        first = why.split(":", 1)[0]
        if first not in defaults:  # a line that does not start with a key (`optimizer lbfgs (set here or in train)`)
            continue
        keys = set(re.findall(r"(?<![\w.])(\w+): ", why)) & set(defaults)
        taking = [name for name, whys in found.items() if why in whys
                  and not keys & set(runs[name] if isinstance(runs[name], dict) else {})]
        if not taking:
            continue
        for name in taking:
            found[name].remove(why)
        experiments = list(dict.fromkeys(experiment_of[name] for name in taking))
        which = "" if len(taking) == len(found) else f" (experiments {', '.join(experiments)})"
        said.append(f"train.{why.replace(': ', f'{which}: ', 1)}")
    return said


def _by_experiment(found: dict[str, list[str]], experiment_of: dict[str, str]) -> list[str]:
    """Each run's problems under its experiment's key path (a sweep's run names are no key of the config), once for
    the runs of a sweep that share it, naming them (or saying every run has it)."""
    runs_of: dict[str, list[str]] = {}
    for name in found:
        runs_of.setdefault(experiment_of[name], []).append(name)
    problems = []
    for experiment, names in runs_of.items():
        for why in dict.fromkeys(why for name in names for why in found[name]):
            having = [name for name in names if why in found[name]]
            if names == [experiment]:
                problems.append(f"experiments.{experiment}: {why}")
            else:
                which = "every run of its sweep" if having == names else f"its sweep's run(s) {', '.join(having)}"
                problems.append(f"experiments.{experiment} ({which}): {why}")
    return problems


def config_problems(config: dict, schema_file: str | Path, written_train: dict | None = None) -> list[str]:
    """Every problem of ``config`` against the workflow's schema (and cross-key rules), one line each.

    ``written_train``: the `train` keys the user wrote, where ``config`` also holds the workflow's own file's
    (a `train` key no experiment acts on is refused only where the user wrote it); default: all of them."""
    import jsonschema

    schema = with_sweep_items(yaml.safe_load(Path(schema_file).read_text()))
    experiments = config.get("experiments")
    unquoted = [name for name in experiments if not isinstance(name, str)] if isinstance(experiments, dict) else []
    if unquoted:  # YAML reads `1:` or `2024:` as a number; the names are folders and wildcards, texts
        kinds = {bool: "true or false", type(None): "null"}
        return [f"experiments.{name}: YAML reads this name as {kinds.get(type(name), 'a number or a date')}, not as "
                "text: put it in quotes as you wrote it" for name in unquoted]
    validator_class = jsonschema.validators.validator_for(schema)
    # An integer key takes whole numbers as written: JSON Schema counts 1.0 as an integer, and it reached the jobs as
    # a float (range(1.0) in training, a wildcard seed1.0 that no rule makes) after they had removed earlier results.
    whole = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
    validator = jsonschema.validators.extend(validator_class, type_checker=whole)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    problems: list[str] = _non_finite_problems(config)
    for error in errors:
        for line in _describe(error, tuple(schema["properties"]), schema):
            if line not in problems:
                problems.append(line)
    if not problems:
        defaults = _defaults_of(schema["$defs"]["train"])
        range_defaults = {key: rule["default"] for key, rule in schema["properties"]["lr_find"]["properties"].items()}
        problems = _semantic_problems(config, schema["properties"]["experiments"]["default"], defaults,
                                      range_defaults, written_train)
    return problems


def format_problems(problems: list[str], schema: str = "workflow/schemas/config.schema.yaml") -> str:
    """The refusal of a config: its ``problems``, one a line, under a header naming the ``schema`` file (as the
    user finds it from the working directory)."""
    return (
        f"invalid configuration ({len(problems)} problem(s); every key, its type and default: "
        f"{schema}):\n" + "\n".join(f"  {p}" for p in problems)
    )
