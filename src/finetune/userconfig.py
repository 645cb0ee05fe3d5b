"""A user's config (``--configfile``) over the workflow's own ``config/config.yaml`` (the demo's).

Snakemake merges the two key by key. Loaded by ``workflow/rules/common.smk`` only (no job imports
it, so editing it reruns nothing).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

from .options import OPTIMIZERS


# Sections of a user's config that replace the workflow's own config/config.yaml (the demo), rather than
# update it key by key, where they describe something else: (key path, the keys that say what it is).
OWN_SECTIONS = ((("dataset",), ("format", "path")), (("pretrain", "dataset"), ("format", "path")), (("weights",), ("source",)))


def _at(config: dict, path: tuple[str, ...]):
    for key in path:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _another(key: str, mine: dict, theirs: dict) -> bool:
    """Does ``mine``'s ``key`` name another thing than ``theirs``? Another path to Fashion-MNIST is a copy
    of the same published dataset, not another one."""
    if key not in mine or mine[key] == theirs.get(key):
        return False
    return not (key == "path" and mine.get("format", theirs.get("format")) == theirs.get("format") == "fashion-mnist")


# The config's paths to files and folders of the user's (key path under the config).
PATH_KEYS = (("dataset", "path"), ("dataset", "download_dir"), ("pretrain", "dataset", "path"),
             ("pretrain", "dataset", "download_dir"), ("weights", "path"), ("predict", "images"))


def expand_home(config: dict) -> None:
    """``~`` at the start of a path key means the home folder, as torchvision's datasets and pandas read it:
    replaced in ``config`` itself, so every job and the watched folder state see the real path."""
    for path in PATH_KEYS:
        section = _at(config, path[:-1])
        value = section.get(path[-1]) if isinstance(section, dict) else None
        if isinstance(value, str) and value.startswith("~"):
            section[path[-1]] = os.path.expanduser(value)


def own_sections(config: dict, workflow_file: dict, user: dict) -> list[str]:
    """Put back, in the merged ``config``, each section of ``user`` (the ``--configfile`` / ``--config``
    layer) that describes another thing than ``workflow_file``'s as the user wrote it: another dataset
    (``format``, or ``path`` but to a copy of Fashion-MNIST), another ``weights.source``, or experiments none of whose names are the
    workflow file's. The schema's defaults then fill it, not the demo's choices (Fashion-MNIST's classes
    6-9, 10 images per class). Returns one line per section replaced where keys would have been inherited."""
    notes = []
    for path, identity in OWN_SECTIONS:
        mine, theirs = _at(user, path), _at(workflow_file, path)
        if not (isinstance(mine, dict) and isinstance(theirs, dict)):
            continue
        other = [f"{key} {mine[key]!r}" for key in identity if _another(key, mine, theirs)]
        inherited = sorted(set(theirs) - set(mine))
        if other and inherited:
            _at(config, path[:-1])[path[-1]] = copy.deepcopy(mine)
            notes.append(f"{'.'.join(path)}: your config names another {' and '.join(other)}, so its section replaces "
                         f"config/config.yaml's: {', '.join(inherited)} from there do not apply (the schema's defaults do)")
    mine, theirs = user.get("experiments"), workflow_file.get("experiments")
    if isinstance(mine, dict) and isinstance(theirs, dict) and mine and not set(mine) & set(theirs):
        config["experiments"] = copy.deepcopy(mine)
        notes.append(f"experiments: yours ({', '.join(map(str, mine))}) replace config/config.yaml's ({', '.join(theirs)}), "
                     "none of whose names you use")
    elif isinstance(mine, dict) and isinstance(theirs, dict) and set(mine) - set(theirs) and set(theirs) - set(mine):
        # experiments of your own beside a demo name (a tweak of the demo's alone, `finetune: {lr: ...}`, is a merge)
        kept = [str(name) for name in theirs if name not in mine]
        notes.append(f"experiments: yours ({', '.join(map(str, mine))}) share the name"
                     f"{'s' if len(set(mine) & set(theirs)) > 1 else ''} {', '.join(str(n) for n in mine if n in theirs)} "
                     f"with config/config.yaml's, so they are merged with its experiments: its {', '.join(kept)} run "
                     "too; name yours all otherwise (they then replace the demo's), or run with "
                     "--replace-workflow-config to use your config alone")
    elif isinstance(mine, dict) and not mine and theirs:  # a merge of nothing: not "no experiments"
        notes.append(f"experiments: yours is empty, which adds nothing to config/config.yaml's ({', '.join(theirs)}): "
                     "they all run; name experiments of your own (they then replace the demo's), or run with "
                     "--replace-workflow-config to use your config alone")
    return notes


def demo_source_for_own_images(config: dict, workflow_file: dict, user: dict) -> list[str]:
    """Where ``user`` (the ``--configfile`` / ``--config`` layer) names a dataset of its own images (an ImageFolder or
    a CSV manifest) and neither a ``weights.source`` nor a ``pretrain.dataset``, so that its images are trained from
    the source model of ``workflow_file`` (the demo's ``pretrain``: a ResNet18 trained here on Fashion-MNIST's 28-px
    grayscale images at 32 px) and, with no ``image_size`` written, at that model's size: one line saying so. The
    README's example for one's own images, run in the repository, trained colour photos at 32 px, nothing said but
    that the dataset section was replaced."""
    weights, pretrain = user.get("weights"), user.get("pretrain")
    own_images = (isinstance(user.get("dataset"), dict)
                  and (config.get("dataset") or {}).get("format") in ("imagefolder", "csv"))
    if (not own_images or (isinstance(weights, dict) and "source" in weights)
            or (isinstance(pretrain, dict) and "dataset" in pretrain)
            or (config.get("weights") or {}).get("source") != "pretrain" or "pretrain" not in workflow_file):
        return []
    source = (config.get("pretrain") or {}).get("dataset") or {}
    size = (config.get("pretrain") or {}).get("image_size")
    described = ("Fashion-MNIST's 28-px grayscale images" if source.get("format") == "fashion-mnist" else
                 f"the {source.get('format')} dataset {source.get('path')}")
    if source.get("classes") is not None:
        described += f" of classes {source['classes']}"
    experiments = user.get("experiments") if isinstance(user.get("experiments"), dict) else {}
    sections = [user.get("train"), *experiments.values()]
    sized = any(isinstance(section, dict) and section.get("image_size") is not None for section in sections)
    return [f"weights.source: pretrain is config/config.yaml's (your config names no source): your images are trained "
            f"from a {(config.get('weights') or {}).get('arch')} pretrained here on {described} at pretrain.image_size "
            f"{size} px" + ("" if sized else f", and at {size} px themselves (train.image_size null takes the source "
                                             "model's size)")
            + "; for photos, write weights.source: torchvision (docs/data-and-weights.md, \"ImageNet weights from "
              "torchvision\")"
            + ("" if sized else " or set train.image_size")]


FASHION_MNIST_TRAIN_PER_CLASS = 6000  # Fashion-MNIST's official train images of each of its ten classes


def schema_pretrain_note(pretrain: dict, arch: str, epochs: int, dataset_written: bool,
                         as_module: bool = False) -> str | None:
    """Where a config used alone (no config/config.yaml under it) leaves out `pretrain` with weights.source: pretrain,
    one line: the schema's defaults pretrain the source model on every train image of Fashion-MNIST's ten classes for
    ``epochs`` epochs, a long job on CPUs where the demo's pretrain takes about a minute; nothing said, a user who
    copied the README's sweep example got it silently. ``dataset_written``: whether the config gives `dataset`
    (without it the target is every Fashion-MNIST image too); ``as_module``: the config is a module's, the host's
    alone."""
    source = pretrain.get("dataset") or {}
    if source.get("format") != "fashion-mnist":
        return None
    classes = source.get("classes") or list(range(10))
    per_class = source.get("max_train_per_class") or round(FASHION_MNIST_TRAIN_PER_CLASS * (1 - source["val_fraction"]))
    images = per_class * len(classes)
    demo = 1000 * 6 * 3  # config/config.yaml's: 1,000 images of each of classes 0-5, 3 epochs
    alone = ("the module's config is the host's alone" if as_module else
             "--replace-workflow-config, or no config/config.yaml where it runs")
    return (f"pretrain: not in your config, which is used alone ({alone}), so the schema's defaults pretrain the "
            f"source {arch} on {images:,} Fashion-MNIST images ({len(classes)} classes) for {epochs} epochs at {pretrain.get('image_size')} px: {images * epochs / demo:.0f} "
            "times the demo's pretrain (1,000 images of each of classes 0-5, 3 epochs: about a minute on 2 CPU cores)"
            + ("" if dataset_written else ", and with no `dataset` your target is every Fashion-MNIST image too")
            + "; copy the pretrain section of config/config.yaml into your config for the demo's, or set weights.source")


# An experiment's keys that the demo's config set for the optimizer it gives that experiment (feature_extract's lr 1.0,
# L-BFGS's line-search scale, and its L2 strength weight_decay 0.1).
OPTIMIZER_KEYS = ("lr", "weight_decay", "momentum")


def inherited_for_another_optimizer(config: dict, workflow_file: dict, user: dict) -> list[str]:
    """One note per experiment of ``workflow_file`` (the demo's) that ``user`` gives another optimizer while it keeps
    the demo's :data:`OPTIMIZER_KEYS` of that experiment, set there for the demo's optimizer: AdamW at L-BFGS's lr 1.0
    trained with a loss rising every epoch, and nothing said. The same for those it keeps of the demo's ``train``, set
    there for train's optimizer (SGD at AdamW's lr): said once for every experiment of ``train.optimizer`` yours."""
    notes = []
    demo_train, user_train = workflow_file.get("train") or {}, user.get("train") or {}
    demo_runs, user_runs = workflow_file.get("experiments") or {}, user.get("experiments") or {}
    kept = config.get("experiments") or {}
    if not (isinstance(demo_runs, dict) and isinstance(user_runs, dict) and isinstance(user_train, dict)
            and isinstance(demo_train, dict)):
        return notes
    for name, demo in demo_runs.items():
        mine = user_runs.get(name) or {}
        if name not in kept or not isinstance(demo, dict) or not isinstance(mine, dict):
            continue
        was = demo.get("optimizer", demo_train.get("optimizer"))
        now = mine.get("optimizer", demo.get("optimizer", user_train.get("optimizer", was)))
        where = f"experiments.{name}.optimizer" if "optimizer" in mine else "train.optimizer"
        inherited = {key: demo[key] for key in OPTIMIZER_KEYS if key in demo and key not in mine}
        if now not in OPTIMIZERS:  # a misspelled one (Adam): refused by the schema, nothing to advise on it
            continue
        if now != was and inherited:
            keys = ", ".join(f"{key} {value!r}" for key, value in inherited.items())
            notes.append(f"{where} {now} (your config) keeps {keys} of config/config.yaml's experiments.{name}, set "
                         f"there for optimizer {was}: write {' and '.join(inherited)} for {now} under experiments.{name}")
        from_train = {key: demo_train[key] for key in OPTIMIZER_KEYS
                      if key in demo_train and key not in demo and key not in mine and key not in user_train}
        if now != demo_train.get("optimizer") and from_train:
            keys = ", ".join(f"{key} {value!r}" for key, value in from_train.items())
            under = "train" if where == "train.optimizer" else f"experiments.{name}"
            notes.append(f"{where} {now} (your config) keeps {keys} of config/config.yaml's train, set there for "
                         f"optimizer {demo_train.get('optimizer')}: write {' and '.join(from_train)} for {now} under "
                         f"{under}")
    return list(dict.fromkeys(notes))


def train_keys_demo_experiments_keep(config: dict, workflow_file: dict, user: dict) -> list[str]:
    """One note per ``train`` key of ``user`` (the ``--configfile`` / ``--config`` layer) that some of the kept
    experiments of ``workflow_file`` (the demo's) set for themselves, to another value: an experiment's own key wins
    over ``train``'s, and the demo's are not in the user's file (``train: {epochs: 2}`` ran the demo's feature_extract
    for its 25 epochs, nothing said). Keys that every run sets have their own note
    (configcheck.overridden_train_notes)."""
    user_train, demo_runs = user.get("train"), workflow_file.get("experiments")
    user_runs, kept = user.get("experiments") or {}, config.get("experiments") or {}
    if not (isinstance(user_train, dict) and isinstance(demo_runs, dict) and isinstance(user_runs, dict)
            and isinstance(kept, dict)):
        return []
    notes = []
    for key, value in user_train.items():
        keeping = {name: demo[key] for name, demo in demo_runs.items()
                   if name in kept and isinstance(demo, dict) and key in demo and demo[key] != value
                   and not (isinstance(user_runs.get(name), dict) and key in user_runs[name])}
        every = all(isinstance(run, dict) and (key in run or key in (run.get("sweep") or {})) for run in kept.values())
        if not keeping or every:
            continue
        if len(keeping) == 1:
            (name, theirs), = keeping.items()
            runs, sets, write = f"experiment {name}", f"its {key} to {theirs!r}", f"experiments.{name}.{key}"
        else:
            runs = f"experiments {', '.join(keeping)}"
            sets = f"their {key} ({', '.join(f'{name} {theirs!r}' for name, theirs in keeping.items())})"
            write = f"experiments.<name>.{key}"
        notes.append(f"train.{key} {value!r} (your config) does not reach {runs}: config/config.yaml sets {sets}, "
                     f"and an experiment's own key wins over train's (write {write} in your config to change it)")
    return notes


def duplicate_keys(path: str | os.PathLike) -> list[str]:
    """Keys written twice in one mapping of a YAML (or JSON) config file, one line each with the key's path
    and both lines. YAML and JSON loaders keep the last silently, so the settings under the first would be
    ignored without a word (two `train:` sections, say). Not YAML at all: nothing here (Snakemake says so)."""
    found: list[str] = []
    _walk(_composed(path), (), found)
    return found


def _composed(path: str | os.PathLike):
    """A YAML file's node tree (comments and lines kept); None where it does not read as YAML."""
    import yaml

    try:
        return yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _children(node, where: tuple[str, ...], merges: bool = False):
    """The items of a YAML sequence or mapping node: (the key path of each, its key's node or None, its value's node).
    A mapping's keys that are not plain keys are left out; ``merges``: a `<<` (YAML's merge) is given as an item
    with no key node (its value may be a mapping written there, `<<: {epochs: 010}`, not only an alias)."""
    import yaml

    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield ((*where[:-1], f"{where[-1]}[{i}]") if where else (f"[{i}]",)), None, item
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                yield (*where, key.value), key, value
            elif merges and isinstance(key, yaml.ScalarNode):
                yield (*where, key.value), None, value


def _walk(node, where: tuple[str, ...], found: list[str], lines: bool = True) -> None:
    """``lines``: name the lines of both (a file's; a --config value is one line)."""
    first: dict[tuple[str, str], int] = {}  # this mapping's keys
    for path, key, value in _children(node, where):
        if key is not None:
            line = key.start_mark.line + 1
            earlier = first.get((key.tag, key.value))
            if earlier is None:
                first[(key.tag, key.value)] = line
            else:
                at = (f" (lines {earlier} and {line})" if earlier != line else f" (both on line {line})") if lines else ""
                found.append(f"{'.'.join(path)} is written twice{at}: only the last is read, so what the first "
                             f"sets would be ignored")
        _walk(value, path, found, lines)


# Plain numbers YAML 1.1 (PyYAML's, Snakemake's reader) reads as no one writing them means: 010 as 8 (octal, a
# leading zero), 1:30 as 90 and 2:00:00 as 7200 (base 60: a Slurm walltime unquoted).
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


def misread_numbers(path: str | os.PathLike, classes: bool = False) -> list[str]:
    """The plain numbers of a YAML config file that YAML reads otherwise than written (:data:`_OCTAL`,
    :data:`_BASE_60`), one line each with the key's path, the line and what to write. Not YAML: nothing here.
    ``classes``: those of a `classes` list alone (`[6, 010]`), which are left out otherwise: a number there is an
    index, or stands for a class named by digits, which the checks at start of the dataset's names say more of
    (finetune.startchecks.ambiguous_class_numbers_problem)."""
    found: list[tuple[bool, str]] = []
    _numbers(_composed(path), (), found)
    return [line for of_classes, line in found if of_classes == classes]


def command_line_misread_numbers(argv: list[str], classes: bool = False) -> list[str]:
    """:func:`misread_numbers` of the ``--config`` items of a command line (read as a config file reads them)."""
    import yaml

    found: list[tuple[bool, str]] = []
    for item in _config_items(argv):
        key, _, text = item.partition("=")
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            continue
        _numbers(root, (key,), found, lines=False)
    return [line for of_classes, line in found if of_classes == classes]


def _numbers(node, where: tuple[str, ...], found: list[tuple[bool, str]], lines: bool = True) -> None:
    """(whether it is an item of a `classes` list, the line) for each misread number below ``node``."""
    import yaml

    for path, _, value in _children(node, where, merges=True):
        _numbers(value, path, found, lines)
    if (isinstance(node, yaml.ScalarNode) and node.style is None
            and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")):
        read = yaml.safe_load(node.value)
        at = f" (line {node.start_mark.line + 1})" if lines else ""
        name = ".".join(where) or "the value"
        decimal = node.value.replace("_", "")
        of_classes = bool(where) and bool(re.fullmatch(r"classes\[\d+\]", where[-1]))
        if _OCTAL.fullmatch(node.value) and read != int(decimal, 10) and of_classes:
            found.append((True, f"{name}: YAML reads {node.value} as {read}, an octal number (its leading zero){at}, "
                                f"the class at index {read}: write {int(decimal, 10)} for the class at index "
                                f"{int(decimal, 10)}, or a class's name in quotes ('{node.value}')"))
        elif _OCTAL.fullmatch(node.value) and read != int(decimal, 10):  # 07 is 7 either way
            found.append((False, f"{name}: YAML reads {node.value} as {read}, an octal number (its leading zero){at}: "
                                 f"write {int(decimal, 10)}, without the zero"))
        elif _BASE_60.fullmatch(node.value) and where[-1:] == ("runtime",) and _resource_problem("runtime", node.value):
            found.append((False, f"{name}: YAML reads {node.value} as {read}, a number in base 60{at}, which Snakemake "
                                 f"would take as {read} minutes; {_resource_problem('runtime', node.value)}"))
        elif _BASE_60.fullmatch(node.value):
            found.append((False, f"{name}: YAML reads {node.value} as {read}, a number in base 60{at}: write the number "
                                 f"meant ({read}, if so), or put it in quotes for text ('{node.value}')"))


PROFILE_FILES = ("config.v9+.yaml", "config.yaml")  # the file Snakemake 9 reads in a profile folder, first found


def profile_files(argv: list[str], environ: dict, workflow_dir: str | os.PathLike,
                  rundir: str | os.PathLike = ".") -> list[Path]:
    """The profile config files of this Snakemake run, from its command line: ``--profile`` (or
    $SNAKEMAKE_PROFILE) and ``--workflow-profile`` (without it, the workflow's profiles/default, as Snakemake
    takes it; ``none``: none). A relative path is taken from ``rundir``, the directory Snakemake started in (before
    ``--directory`` changed it); a profile named rather than a folder is looked up in ~/.config/snakemake/<name>, and
    a workflow profile named in profiles/<name> there or beside the Snakefile, as Snakemake does."""
    def value(option: str) -> str | None:
        for i, arg in enumerate(argv):
            if arg == option and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(option + "="):
                return arg.split("=", 1)[1]
        return None

    rundir = Path(rundir).absolute()

    def first_existing(*candidates: Path) -> Path | None:
        return next((path for path in candidates if path.exists()), None)

    places = []
    profile = value("--profile") or environ.get("SNAKEMAKE_PROFILE")
    if profile and profile != "none":
        places.append(first_existing(rundir / profile, Path.home() / ".config" / "snakemake" / profile))
    workflow_profile = value("--workflow-profile")
    if workflow_profile != "none":
        name = Path(workflow_profile or "default")
        places.append(first_existing(rundir / name, rundir / "profiles" / name,
                                     Path(workflow_dir) / "profiles" / name))
    found = []
    for place in filter(None, places):
        file = place if place.is_file() else next(
            (place / name for name in PROFILE_FILES if (place / name).is_file()), None)
        if file is not None:
            found.append(file)
    return found


# Snakemake commands that read the workflow but run no job and look at no input: the checks of the data at start
# (dataset.path, weights.path, predict.images) must not stand in their way. `--unlock` after a crash, above all,
# with the data's file system not mounted yet.
RUNS_NO_JOB = ("--unlock", "--cleanup-metadata", "--cm", "--cleanup-shadow", "--list-rules", "--list", "-l",
               "--list-target-rules", "--lt", "--lint")


def has_option(argv: list[str], names) -> bool:
    """Whether a Snakemake command line gives one of the options ``names`` (``--report`` or ``--report=x.html``)."""
    return any(arg.split("=", 1)[0] in names for arg in argv[1:])


def option_differences(expected: dict, recorded: dict) -> list[str]:
    """The training options a run recorded (its train_info.json's ``options``) that the config now gives otherwise:
    ``epochs 1 (the config: 7)``, one per key both hold."""
    import json

    return [f"{key} {json.dumps(recorded[key])} (the config: {json.dumps(expected[key])})"
            for key in sorted(expected) if key in recorded and recorded[key] != expected[key]]


def without_report_options(argv: list[str]) -> list[str]:
    """A Snakemake command line's arguments (``argv[1:]``) without the options that make a report: ``--report
    [FILE]``, ``--report-after-run``, ``--reporter PLUGIN`` and every ``--report-<setting> VALUE``."""
    args, rest = [], list(argv[1:])
    while rest:
        arg = rest.pop(0)
        name, given = arg.split("=", 1)[0], "=" in arg
        if name == "--report":
            if not given and rest and not rest[0].startswith("-"):
                rest.pop(0)  # its file (argparse takes the next word as it: nargs="?")
        elif name == "--reporter" or (name.startswith("--report-") and name != "--report-after-run"):
            if not given and rest:
                rest.pop(0)
        elif name != "--report-after-run":
            args.append(arg)
    return args


def started_in(argv: list[str], workdir: str | os.PathLike) -> str | None:
    """The folder this Snakemake command line was started in: the working directory itself, or, with
    ``--directory`` (Snakemake changes into it before it reads the workflow), the shell's $PWD where that folder
    with the command line's --directory is the working directory; None where it cannot be told."""
    rest = list(argv[1:])
    directory = None
    while rest:
        arg = rest.pop(0)
        name, _, value = arg.partition("=")
        if name in ("-d", "--directory"):
            directory = value or (rest.pop(0) if rest else None)
    if directory is None:
        return str(workdir)
    shell = os.environ.get("PWD")
    if shell and Path(shell, os.path.expanduser(directory)).resolve() == Path(workdir).resolve():
        return shell
    return None


_CHECKED: set[str] = set()


def first_time(what: str) -> bool:
    """True the first time it is asked about ``what`` in this process: a check the workflow's start makes once,
    where a host workflow uses this one as several modules (each runs the workflow's start)."""
    if what in _CHECKED:
        return False
    _CHECKED.add(what)
    return True


_ONCE: dict[tuple[int, str], object] = {}
_ONCE_IN_PROCESS: dict[str, object] = {}


def once(what: str, compute):
    """``compute()`` the first time ``what`` is asked in this process, that answer after: a check made once for every
    instance where a host workflow uses this one as several modules (each runs the workflow's start)."""
    if what not in _ONCE_IN_PROCESS:
        _ONCE_IN_PROCESS[what] = compute()
    return _ONCE_IN_PROCESS[what]


def once_per(config: dict, what: str, compute):
    """``compute()`` the first time ``what`` is asked of this ``config`` object, that answer after: a host's every
    `use rule ... from` statement reads the workflow again with one config dict, which the first reading validated
    (the schema's defaults filled in), so what was written is known only then."""
    key = (id(config), what)
    if key not in _ONCE:
        _ONCE[key] = compute()
    return _ONCE[key]


class Pending(NamedTuple):
    """What a dry run would run: ``jobs``, rule: count (``all`` left out); ``new``, of those the jobs of a rule in
    ``report_rules`` whose outputs are missing (files the report would show that do not exist yet)."""

    jobs: dict[str, int]
    new: dict[str, int]


def failure_message(output: str) -> str:
    """What a failed Snakemake run said: the lines of its error (`WorkflowError in file ...:` and what follows, up to
    the traceback's first frame), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if re.match(r"^\w*(Error|Exception)\b", line)), None)
    if start is not None:
        said = lines[start + 1:]
        said = said[:next((i for i, line in enumerate(said) if line.startswith("File \"")), len(said))]
        if said:
            return " ".join(said[:4]) + (" ..." if len(said) > 4 else "")
    return lines[-1] if lines else ""


def pending_jobs(argv: list[str], workdir: str | os.PathLike, report_rules: tuple[str, ...] = (),
                 timeout: float = 120) -> Pending | str:
    """The jobs a dry run of this command line, report options left out, would run: what `--report` would show out
    of date. Run where the command line was (its relative paths read as the user's). A rule is in ``report_rules``
    where its name holds one of them (a module's rules are renamed: ``fa_evaluate``; a host's own rule
    ``evaluate_baseline`` counts too); its job is new where one of its outputs does not exist (whatever the reason
    the dry run gives: `Forced execution` after a kill, too). Where it cannot tell, the reason, in a few words."""
    import subprocess
    import sys

    where = started_in(argv, workdir)
    if where is None:
        return "the folder Snakemake was started in is not known (its --directory, and $PWD)"
    try:
        result = subprocess.run([sys.executable, "-m", "snakemake", *without_report_options(argv), "--dry-run"],
                                capture_output=True, text=True, timeout=timeout, cwd=where)
    except subprocess.TimeoutExpired:
        return f"its dry run took more than {timeout:g} s"
    except OSError as exc:
        return f"its dry run did not start: {exc}"
    if result.returncode != 0:
        return f"its dry run failed: {failure_message(result.stderr + result.stdout)}"
    if "Nothing to be done" in result.stdout + result.stderr:
        return Pending({}, {})
    lines = result.stdout.splitlines()
    if "Job stats:" not in lines:
        return "its dry run printed no table of jobs (a `quiet` setting?)"
    counts: dict[str, int] = {}
    for line in lines[lines.index("Job stats:") + 3:]:  # the header, its rule, then one row a rule
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or fields[0] == "total":
            break
        if fields[0] != "all":
            counts[fields[0]] = int(fields[1])
    new: dict[str, int] = {}
    rule = None
    for line in lines:  # each job: `rule <name>:` (`localrule`, `checkpoint`), then indented lines, `output:` among them
        found = re.fullmatch(r"(?:local)?(?:rule|checkpoint) (\S+):", line.strip())
        if found:
            rule = found.group(1)
        elif rule and any(name in rule for name in report_rules) and line.strip().startswith("output:"):
            outputs = line.strip()[len("output:"):].split(", ")
            if not all(os.path.exists(os.path.join(workdir, path.strip())) for path in outputs):  # the workflow's folder
                new[rule] = new.get(rule, 0) + 1
            rule = None  # one count a job
    return Pending(counts, new)


def command_line_targets(argv: list[str], results: str = "results") -> list[str]:
    """The targets a Snakemake command line names, as Snakemake's own parser reads them (a target written after
    ``--config`` is one of its items there too); [] where no argument names a path under the ``results`` folder
    (a module's below its prefix: runs/a/results), as the parser is not built then."""
    if not any(arg.startswith((f"{results}/", f"./{results}/")) for arg in argv[1:]):
        return []
    from snakemake.cli import get_argument_parser

    try:
        return list(get_argument_parser().parse_known_args(argv[1:])[0].targets or [])
    except SystemExit:  # a command line Snakemake itself refuses, saying why
        return []


def is_snakemake_command_line(argv: list[str]) -> bool:
    """Whether ``argv`` (sys.argv) is the command line of the Snakemake running the workflow: the `snakemake` command,
    or `python -m snakemake`; not that of a program of the user's calling Snakemake's Python API (snakemake.cli.main,
    snakemake.api), which says nothing of the options Snakemake was given."""
    first = os.path.normpath(argv[0]) if argv and argv[0] else ""
    return (os.path.basename(first) in ("snakemake", "snakemake.exe")
            or first.endswith(os.path.join("snakemake", "__main__.py")))


def runs_no_job(argv: list[str]) -> bool:
    """Whether this Snakemake command line only unlocks, cleans up metadata, lists rules or lints."""
    return has_option(argv, RUNS_NO_JOB)


def command_line_config(argv: list[str]) -> dict | None:
    """The ``--config key=value ...`` items of a Snakemake command line, each value read as YAML reads it in a
    config file (``'train={lr: 0.01}'`` -> 0.01, ``'dataset={classes: ["7"]}'`` -> the text '7'), or as JSON
    where it is JSON; None where the command line has none. Snakemake's own parse makes every nested scalar
    text, losing what quotes said."""
    import yaml

    items = _config_items(argv)
    if not items:
        return None
    config: dict = {}
    for item in items:
        key, text, value, _ = _config_item(item, yaml.SafeLoader)
        config[key] = text if value is _UNREAD else value
    return config


def written_texts(files: list, argv: list[str], path: tuple[str, ...]) -> list | None:
    """The list at ``path`` (("dataset", "classes")) as its items are written, each a text (``010``, not the 8 YAML reads
    it as), from the last of the config ``files`` (in the order Snakemake merges them) and the command line's
    ``--config`` items that writes it (a list is replaced whole, not merged); None where none does, or it is no list
    (a module's config given as a dict of the host's Snakefile)."""
    import json

    import yaml

    def at(node):
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    found = None
    for file in files:
        try:
            node = at(yaml.load(Path(file).read_text(encoding="utf-8"), Loader=yaml.BaseLoader))  # every scalar a text
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        found = node if node is not None else found
    for item in _config_items(argv):
        key, _, value, as_json = _config_item(item, yaml.BaseLoader)
        if key != path[0] or value is _UNREAD:
            continue
        node = at({key: value})
        if as_json and isinstance(node, list):  # JSON's numbers as written: as read
            node = [json.dumps(each) if not isinstance(each, str) else each for each in node]
        found = node if node is not None else found
    return found if isinstance(found, list) else None


_UNREAD = object()  # a --config value neither JSON nor YAML reads


def _config_item(item: str, loader) -> tuple[str, str, object, bool]:
    """One ``--config`` item ``key=value``: its key, its value's text, its value and whether JSON read it. JSON is read
    first: what the jobs are given (:func:`as_config_args`; YAML would read 2e-05 as text); else YAML with ``loader``
    (SafeLoader as a config file reads it; BaseLoader: every scalar a text as written); ``_UNREAD`` where neither reads
    it."""
    import json

    import yaml

    key, _, text = item.partition("=")
    if not text:
        return key, text, None, False
    try:
        return key, text, json.loads(text), True
    except ValueError:
        pass
    try:
        return key, text, yaml.load(text, Loader=loader), False
    except yaml.YAMLError:
        return key, text, _UNREAD, False


def _config_items(argv: list[str]) -> list[str]:
    """The ``key=value`` items after ``--config`` (or ``-C``) on a Snakemake command line."""
    items: list[str] = []
    taking = False
    for arg in argv[1:]:
        if arg in ("--config", "-C"):
            taking = True
        elif arg.startswith("--config="):
            taking = True
            items.append(arg[len("--config="):])
        elif arg.startswith("-") and not arg[1:2].isdigit():
            taking = False
        elif taking:
            items.append(arg)
    return items


# Snakemake options that take a list of words (argparse's nargs "+" or "*"): given twice, the second replaces the first
# without a word (`--configfile a.yaml --configfile b.yaml` reads b.yaml alone). Each spelling of one option, together.
LIST_OPTIONS = (("--configfile", "--configfiles"), ("--resources", "--res"), ("--set-threads",), ("--set-resources",),
                ("--default-resources", "--default-res"), ("--set-scatter",), ("--set-resource-scopes",),
                ("--forcerun", "-R"), ("--until", "-U"), ("--omit-from", "-O"))


def repeated_options(argv: list[str]) -> list[str]:
    """The options of :data:`LIST_OPTIONS` a Snakemake command line gives more than once, one line each (spelt in full
    or abbreviated, alone or clustered: ``--forcer``, ``-nR``): Snakemake keeps only the last one's words, so what
    the first ones set would be ignored. (``--config`` given twice is read whole here, :func:`command_line_config`.)"""
    if sum(arg.startswith("-") for arg in argv[1:]) < 2:  # no option given twice: the parser is not built
        return []
    given = given_options(argv)
    found = []
    for names in LIST_OPTIONS:
        dest = _snakemake_parser()._option_string_actions[names[0]].dest
        spelt = [written for each, written in given if each == dest]
        if len(spelt) > 1:
            words = {"--configfile": "files", "--forcerun": "rules or files", "--until": "rules or files",
                     "--omit-from": "rules or files"}.get(names[0], "settings")
            found.append(f"{names[0]} is given {len(spelt)} times ({', '.join(spelt)}): Snakemake reads only the last "
                         f"one's {words}, so those of the first would be ignored. Give them all after one {names[0]}")
    return found


@functools.lru_cache(maxsize=4)
def _snakemake_parser(profiles: tuple[str, ...] = ()):
    """Snakemake's own argument parser; with ``profiles`` (their files), their settings as its defaults, as Snakemake
    reads them (the last, the workflow's profile, winning key by key)."""
    from snakemake.cli import get_argument_parser

    return get_argument_parser(profiles=list(profiles) or None)


def given_options(argv: list[str]) -> list[tuple[str, str]]:
    """(Snakemake's name of the option, the option as written) for each option of a command line, read as Snakemake's
    parser reads them: a long option abbreviated to a prefix of one option alone, short options clustered (``-nR``:
    -n, then -R, whose value the rest of the word is, if any)."""
    actions = _snakemake_parser()._option_string_actions
    given = []
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            matches = {id(action): action for option, action in actions.items()
                       if option.startswith("--") and option.startswith(name)}
            action = actions.get(name) or (next(iter(matches.values())) if len(matches) == 1 else None)
            if action is not None:
                given.append((action.dest, name))
        elif arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            for char in arg[1:]:
                action = actions.get(f"-{char}")
                if action is None:
                    break
                given.append((action.dest, f"-{char}"))
                if action.nargs != 0:  # the rest of the word is its value
                    break
    return given


# The settings of a profile that a command line's option of the same name replaces whole rather than entry by entry
# (Snakemake's profile gives its options' defaults): {option: (how an entry is named, what the option sets)}.
REPLACED_WHOLE = {"--resources": "resources", "--set-resources": "set-resources", "--set-threads": "set-threads",
                  "--default-resources": "default-resources"}
_ALIASES = {"--res": "--resources", "--default-res": "--default-resources"}


def _option_words(argv: list[str], option: str) -> list[str] | None:
    """The words a command line gives ``option`` (or an alias of it); None where it does not give it."""
    words, taking, given = [], False, False
    for arg in argv[1:]:
        name, eq, value = arg.partition("=")
        if _ALIASES.get(name, name) == option:
            taking, given = not eq, True
            if eq:
                words.append(value)
        elif arg.startswith("-") and not arg[1:2].isdigit():
            taking = False
        elif taking:
            words.append(arg)
    return words if given else None


def snakemake_command_line(argv: list[str], profiles: list = ()):
    """A Snakemake command line as Snakemake's own parser reads it (abbreviated options such as ``--forcer``, clustered
    short ones such as ``-nR train``), with the settings of ``profiles`` (their files, :func:`profile_files`) where
    the command line does not give them (a profile's `forcerun: [split]`); None where it does not parse (Snakemake
    itself then says why). A profile that does not parse here is left out."""
    import contextlib
    import io

    for each in ([tuple(map(str, profiles))] if profiles else []) + [()]:
        try:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                return _snakemake_parser(each).parse_known_args(argv[1:])[0]
        except SystemExit:
            continue
    return None


# What a Snakemake command line does instead of running the DAG as it stands, or showing what that run would do
# (Snakemake's parser's names): the files made before are not checked at start then.
NOT_A_RUN = ("summary", "detailed_summary", "list_changes", "list_untracked", "list_input_changes", "list_params_changes",
             "list_conda_envs", "conda_create_envs_only", "conda_cleanup_envs", "dag", "rulegraph", "filegraph", "d3dag",
             "delete_all_output", "delete_temp_output", "report", "containerize", "archive", "generate_unit_tests",
             "print_compilation", "export_cwl", "unlock", "cleanup_metadata", "cleanup_shadow", "list_rules",
             "list_target_rules", "lint")


def runs_the_dag(command) -> bool:
    """Whether a command line (:func:`snakemake_command_line`) runs the DAG's jobs, or shows those it would run
    (``-n``); not a summary, a graph, a clean-up or ``--touch``."""
    return command is not None and not command.touch and not any(getattr(command, name, None) for name in NOT_A_RUN)


def forced_to_run(command, rule: str, path: str) -> bool:
    """Whether a command line (:func:`snakemake_command_line`) makes ``path`` (of ``rule``) again whatever it holds:
    --forceall, --forcerun naming the rule or the file, or --force with the file a target."""
    if command is None:
        return False
    named = {os.path.normpath(word) for word in command.forcerun or ()}
    targets = {os.path.normpath(word) for word in command.targets or ()}
    return bool(command.forceall or rule in named or os.path.normpath(path) in named
                or (command.force and os.path.normpath(path) in targets))


def reruns_more_than_named(command) -> bool:
    """Whether a command line may make files again that it does not name: --forcerun (each job after a forced one
    reruns), --until or --omit-from (the DAG is cut)."""
    return command is not None and bool(command.forcerun or command.until or command.omit_from)


def _entry_names(option: str, value) -> list[str]:
    """The entries a profile's value (a mapping, or a list of words as on a command line) or a command line's words
    set for ``option``: resource names (``gpu``), ``rule:resource`` for set-resources, rule names for set-threads."""
    if isinstance(value, dict):
        if option == "--set-resources":
            return [f"{rule}:{name}" for rule, names in value.items() for name in (names or {})]
        return [str(key) for key in value]
    words = [str(value)] if isinstance(value, str) else [str(word) for word in (value or [])]
    return [word.split("=", 1)[0] for word in words]


_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+(?::\d{1,2}){0,2})")  # sbatch -t's M:S, H:M:S, D-H, D-H:M, D-H:M:S


def slurm_time_minutes(text: str) -> int | None:
    """The minutes (rounded up) of a walltime in Slurm's format (``2:00:00``, ``1-12``; ``90:00`` is 90 minutes: two
    parts are minutes and seconds), or None where ``text`` is not one (a plain number of minutes among them)."""
    found = _SLURM_TIME.fullmatch(text)
    if not found or (found.group(1) is None and ":" not in text):
        return None
    parts = [int(part) for part in found.group(2).split(":")]
    if found.group(1) is not None:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        hours, minutes, seconds = ([0] + parts)[-3:]
    return max(1, -(-(int(found.group(1) or 0) * 86400 + hours * 3600 + minutes * 60 + seconds) // 60))


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT])(i?)B?$", re.IGNORECASE)


def _resource_entries(option: str, value) -> list[tuple[str, str, object]]:
    """(rule or "", resource name, value) of a profile's default-resources or set-resources (a mapping, or a list of
    words as on a command line) or a command line's words for that option."""
    if isinstance(value, dict):
        if option == "--set-resources":
            return [(str(rule), str(name), each) for rule, names in value.items() if isinstance(names, dict)
                    for name, each in names.items()]
        return [("", str(name), each) for name, each in value.items()]
    entries = []
    for word in [value] if isinstance(value, str) else list(value or []):
        head, eq, each = str(word).partition("=")
        rule, _, name = head.rpartition(":") if option == "--set-resources" else ("", "", head)
        if eq:
            entries.append((rule, name, each))
    return entries


def _resource_problem(name: str, value) -> str | None:
    """Why Snakemake would stop on this resource value when it sizes the first job (a value it cannot read as
    minutes or MB, said in a traceback naming a rule and a line of this workflow), with the value to write."""
    text = value.strip().strip("'\"") if isinstance(value, str) else None
    if text is None:
        return None
    minutes = slurm_time_minutes(text) if name == "runtime" else None
    if minutes is not None:
        two_parts = "-" not in text and text.count(":") == 1  # sbatch's M:S, which reads 12:00 as 12 minutes
        return (f"{text!r} is Slurm's time format, which Snakemake does not take as a walltime (it reads minutes, or a "
                f"duration such as 2h or 90m): write the minutes, {minutes}"
                + (" (Slurm reads two parts as minutes:seconds; for hours write them as 2h)" if two_parts else ""))
    minutes = compound_duration_minutes(text) if name == "runtime" else None
    if minutes is not None:
        return (f"{text!r}: Snakemake reads one number and unit as a walltime (2h, 90m), not several: write the "
                f"minutes, {minutes}")
    suffix = next((each for each in ("_mb", "_mib") if name.endswith(each)), None)
    if suffix and _SIZE.match(text):
        number, unit, binary = _SIZE.match(text).groups()
        power = "KMGT".index(unit.upper()) + 1
        size = float(number) * (1024 if binary else 1000) ** power / (1e6 if suffix == "_mb" else 1024 ** 2)
        return (f"{text!r}: {name} is a number of {'megabytes' if suffix == '_mb' else 'mebibytes'}: write "
                f"{max(1, round(size))}")
    return None


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(min|d|h|m|s)\s*", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1}


def compound_duration_minutes(text: str) -> int | None:
    """The minutes (rounded up) of a walltime of several parts (``2h30m``, ``1d 12h``), which Snakemake's parser
    refuses (it reads one number and unit); None where ``text`` is not one."""
    parts = _DURATION_PART.findall(text)
    if len(parts) < 2 or _DURATION_PART.sub("", text):
        return None
    seconds = sum(float(number) * _SECONDS[unit.lower()] for number, unit in parts)
    return max(1, -(-int(seconds) // 60))


def _profile_settings(profiles: list) -> list[tuple[object, dict]]:
    """(profile file, its settings) of each profile that reads as a YAML mapping; the others left out (Snakemake
    says why where it reads them)."""
    import yaml

    settings = []
    for profile in profiles:
        try:
            loaded = yaml.safe_load(Path(profile).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            settings.append((profile, loaded))
    return settings


def resource_value_problems(argv: list[str], profiles: list) -> list[str]:
    """The resource values of the profiles in use and of the command line (default-resources, set-resources) that
    Snakemake cannot read, each named with its file (or option), its rule and key: `runtime: "2:00:00"` (Slurm's
    format) and `mem_mb: 4GB` stopped the run at its first job with a traceback naming this workflow's rule `all`."""
    sources = []
    for profile, loaded in _profile_settings(profiles):
        for option in ("--default-resources", "--set-resources"):
            key = option.removeprefix("--")
            value = loaded.get(key, loaded.get(key.replace("-", "_")))
            if value is not None and _option_words(argv, option) is None:  # the command line's replaces it whole
                sources.append((f"{profile}: {key}", option, value))
    for option in ("--default-resources", "--set-resources"):
        words = _option_words(argv, option)
        if words is not None:
            sources.append((option, option, words))
    problems = []
    for where, option, value in sources:
        for rule, name, each in _resource_entries(option, value):
            problem = _resource_problem(name, each)
            if problem:
                problems.append(f"{where}: {f'{rule}: ' if rule else ''}{name}: {problem}")
    return problems


def profile_settings_replaced(argv: list[str], profiles: list) -> list[str]:
    """One line for each option of :data:`REPLACED_WHOLE` that both this command line and a profile in use give: the
    command line's replaces the profile's whole, so the profile's entries it does not give again no longer apply
    (``--resources mem_mb=8000`` drops the default profile's ``gpu: 1``, and the GPU jobs then run side by side)."""
    lines = []
    for profile, loaded in _profile_settings(profiles):
        for option, key in REPLACED_WHOLE.items():
            words = _option_words(argv, option)
            value = loaded.get(key, loaded.get(key.replace("-", "_")))
            if words is None or value is None:
                continue
            given = set(_entry_names(option, words))
            dropped = [name for name in _entry_names(option, value) if name not in given]
            if dropped:
                lines.append(f"{option} on the command line replaces the {key} of the profile {profile} whole: its "
                             f"{', '.join(dropped)} no longer appl{'ies' if len(dropped) == 1 else 'y'}; give "
                             f"{'it' if len(dropped) == 1 else 'them'} on the command line too, where still meant")
    return lines


def command_line_duplicates(argv: list[str]) -> list[str]:
    """Keys written twice in the ``--config`` items of a command line: a key given twice (``train=... train=...``),
    or twice in one mapping of a value (``'train={epochs: 1, epochs: 2}'``). Only the last is read, as in a
    config file (:func:`duplicate_keys`), so the first's setting would be ignored without a word."""
    import yaml

    found: list[str] = []
    seen: set[str] = set()
    for item in _config_items(argv):
        key, _, text = item.partition("=")
        if key in seen:
            found.append(f"{key} is given twice: only the last is read, so what the first sets would be ignored")
        seen.add(key)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            continue
        if root is not None:
            _walk(root, (key,), found, lines=False)
    return found


def as_config_args(config: dict) -> list[str]:
    """``config`` as ``--config`` items that :func:`command_line_config` reads back to the same values (JSON is
    YAML): what the jobs Snakemake spawns on a cluster are given."""
    import json

    return [f"{key}={json.dumps(value)}" for key, value in config.items()]


def typed_command_line_config(given) -> dict:
    """``--config`` values as a config file gives them. Snakemake reads a nested value
    (``--config 'train={lr: 0.01}' 'seeds=[0, 1]'``) with YAML's BaseLoader, which makes every scalar text
    ('0.01', '0'), and passes them to the jobs it spawns (Slurm) as the repr of that text: each such text is
    read again as YAML reads an unquoted scalar (0.01, 0, true, null); other texts stay text."""
    import yaml

    def typed(value):
        if isinstance(value, dict) or hasattr(value, "items"):
            return {key: typed(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [typed(item) for item in value]
        if isinstance(value, str):
            try:
                read = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return read if read is None or isinstance(read, (bool, int, float)) else value
        return value

    return typed(dict(given or {}))


def _writes(config, path: list[str]) -> bool:
    for key in path:
        if isinstance(config, dict) and key in config:
            config = config[key]
        elif isinstance(config, list) and key.isdigit() and int(key) < len(config):
            config = config[int(key)]
        else:
            return False
    return True


def stray_configfiles(sources: dict[str, dict], known_keys, workdir: str | os.PathLike) -> list[str]:
    """The config files given that set none of the config's keys and look like a workflow's output (under the working
    directory's results/ or resources/, or not .yaml/.yml/.json): most likely a target written after ``--configfile``,
    which takes every word after it as one more config file (``results/.../metrics.json``). A config file of
    unknown keys only (``lr: 0.01``, not under ``train:``) is not one."""
    known = set(known_keys)

    def output_like(name: str) -> bool:
        path = Path(workdir, name).resolve()
        under = any(path.is_relative_to(Path(workdir, top).resolve()) for top in ("results", "resources"))
        return under or path.suffix.lower() not in (".yaml", ".yml", ".json")

    return [name for name, loaded in sources.items()
            if isinstance(loaded, dict) and loaded and not known & set(loaded) and output_like(name)]


def stray_configfiles_hint(strays: list[str]) -> str:
    return (f"{', '.join(strays)}: read as a config file but {'sets' if len(strays) == 1 else 'set'} none of the "
            "config's keys. `--configfile` takes every word after it as a config file: name targets before it "
            "(snakemake results/x.json --configfile my.yaml), or put a flag between")


def where_written(problems: list[str], sources: dict[str, dict], demo: str | None = None) -> list[str]:
    """Each problem (``key.path: why``) with the source its key's value comes from, where there are several
    (``sources``: {name: the config it gives}, in the order Snakemake merges them, so the last that writes
    the key wins): ``train.lr: ... (set in my.yaml)``. A problem whose key no source writes (a default) is
    unchanged. ``demo``: the source the others are merged over (config/config.yaml), whose keys a file merged over it
    cannot unset: where it is the one that writes the key, how else to be rid of it."""
    if len(sources) < 2:
        return problems
    named = []
    for problem in problems:
        # the key path ends at ": " (a key may hold a colon itself: `--config 'export={quantize:true}'`), or at " ("
        # (`experiments.ft (every run of its sweep): ...`, whose run names hold dots: `ft-lr0.1`)
        # (`dataset.val_fraction is 0: ...`: the key path is its first word; no key of the config holds a space)
        path = problem.split(": ", 1)[0].split(" (", 1)[0].split(" ", 1)[0].split(".")
        files = [name for name, config in sources.items() if _writes(config, path)]
        if not files:
            named.append(problem)
            continue
        head, allowed, tail = problem.partition("; allowed keys:")  # said before the (long) list of keys
        also = _train_keys_from_elsewhere(problem, path, sources, files[-1])
        # a demo's experiment faulted for a train key of yours: that key is what to change, not the experiment
        inherited = (", the demo's config yours is merged over" if files[-1] == demo and also else
                     ", the demo's config yours is merged over: a file of yours cannot unset its keys; name the "
                     "experiment otherwise, or run with --replace-workflow-config to use your config alone"
                     if files[-1] == demo and path[0] == "experiments" else
                     ", the demo's config yours is merged over: a file of yours cannot unset its keys; run with "
                     "--replace-workflow-config to use your config alone" if files[-1] == demo else "")
        named.append(f"{head} (set in {os.path.normpath(files[-1])}{inherited}{also}){allowed}{tail}")  # not /a/p/../my.yaml
    return named


def _train_keys_from_elsewhere(problem: str, path: list[str], sources: dict[str, dict], experiment_file: str) -> str:
    """For a problem of one experiment (``experiments.fe: ... augment: true ...``, ``sync_batchnorm shares ...``): the
    keys it names (as words: ``key: value``, ``key value``) that the experiment takes from ``train`` written in another
    source than the experiment's (``; train.augment in --config``), where the value it names came from; "" for any
    other problem."""
    if len(path) != 2 or path[0] != "experiments":
        return ""
    def section(config, key) -> dict:
        value = config.get(key) if isinstance(config, dict) else None
        return value if isinstance(value, dict) else {}

    own, last_writer = set(), {}
    for name, config in sources.items():
        spec = section(section(config, "experiments"), path[1])
        own |= set(spec) | set(section(spec, "sweep"))
        last_writer.update({key: name for key in section(config, "train")})
    named = [f"train.{key} in {os.path.normpath(name)}" for key, name in last_writer.items()
             if key not in own and name != experiment_file and re.search(rf"(?<![\w.]){re.escape(key)}(?!\w|\.\w)", problem)]
    return "".join(f"; {item}" for item in named)


def schema_sections(schema: dict) -> dict[str, set[str] | None]:
    """The config's top-level keys and the keys of each: None for a section of any names (``experiments``), an empty
    set for a value (``seeds``)."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    sections = {}
    for name, entry in (schema.get("properties") or {}).items():
        ref = entry.get("$ref", "") if isinstance(entry, dict) else ""
        entry = definitions.get(ref.rsplit("/", 1)[-1], entry) if ref else entry
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("additionalProperties"), dict) or entry.get("patternProperties"):
            sections[name] = None
        else:
            sections[name] = set(entry.get("properties") or ())
    return sections


def keys_under(text: str, path: list[str] | None, sections: dict[str, set[str] | None]) -> str:
    """``text`` (a message of this workflow) as the host's config would say it where it holds this workflow's config
    under ``path`` (a module given ``config: config["fa"]``: ["fa"]): each key it names, a section and one of its keys
    (``train.lr``, ``pretrain.dataset.classes``), under the host's (``fa.train.lr``), and each ``--config
    'train={lr: 1}'`` it suggests as the host's --config sets it (``--config 'fa={train: {lr: 1}}'``), and the key a
    message begins with (``seeds: ...``). A key named so already, a file (``weights.pth``) or a path
    (``results/train.log``) is left as it is."""
    if not path:
        return text
    names = "|".join(sorted(map(re.escape, sections), key=len, reverse=True))

    def key(match: re.Match) -> str:
        keys = sections[match[1]]
        return f"{'.'.join(path)}.{match[0]}" if keys is None or match[2] in keys else match[0]

    def command_line(match: re.Match) -> str:
        value = f"{{{match[2]}: {match[3]}}}"
        for outer in reversed(path[1:]):
            value = f"{{{outer}: {value}}}"
        return f"--config {match[1]}{path[0]}={value}{match[1]}"

    text = re.sub(r"--config (['\"])(\w+)=(.*?)\1", command_line, text)
    text = re.sub(rf"^({names})(?=: )", lambda match: f"{'.'.join(path)}.{match[0]}", text)  # a message about a key
    return re.sub(rf"(?<![\w/.={{-])({names})\.(\w+)", key, text)
