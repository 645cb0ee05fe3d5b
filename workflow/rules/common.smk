# Shared by every rule: config validation, paths, the per-rule slices of the config, and every
# function the rules call (the other .smk files hold rules only).

import contextlib
import copy
import difflib
import functools
import json
import os
import re
import sys
import time
from pathlib import Path, PurePath
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

# This file's repository (workflow/rules/ is two below it), not workflow.basedir: used as a module of another
# workflow (`module finetune: snakefile: ...`), that is the other workflow's folder.
REPO = Path(workflow.current_basedir).parent.parent
SCRIPTS = REPO / "workflow" / "scripts"
PACKAGE = REPO / "src" / "finetune"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# The schema as a refusal of the config names it: from the working directory, which is not this repository's where the
# workflow is a module of another, or run with --directory elsewhere.
SCHEMA_SHOWN = (os.path.relpath(SCHEMA) if not os.path.relpath(SCHEMA).startswith(os.pardir) else str(SCHEMA))
# The same interpreter that runs Snakemake runs the scripts (also inside cluster jobs); every rule
# gets it as params.python. A Path, not a str: Snakemake leaves a value it cannot represent out of
# the params it compares between runs, so calling the same venv's python by another name
# (python, python3) reruns nothing, as before.
PYTHON = Path(sys.executable)


class Untracked:
    """A value a rule's ``params:`` hold that Snakemake leaves out of the params it compares between runs (it compares
    builtin types only, as PYTHON above): settings that change how fast a job runs, not what it makes
    (evaluate.batch_size and device, predict.batch_size), so that editing them reruns nothing, as threads do not;
    and the report's note on results older than the config. The shell command and the report get its text."""

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return str(self.value)

    def __bool__(self):
        return bool(self.value)


# Scripts import the `finetune` package from src/: first on PYTHONPATH, here and, through `envvars`
# (which also checks it is set), in jobs submitted to a cluster. A path with the separator of PYTHONPATH's entries
# would be split into two wrong ones, and the jobs would import another copy of the package, or none.
if os.pathsep in str(REPO / "src"):
    raise WorkflowError(f"this workflow's folder {REPO} has a {os.pathsep!r} in its path, which PYTHONPATH (how its jobs "
                        f"find its code) cannot hold: move or clone it to a path without one")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "src"), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO / "src"))]
)

# Snakemake 9.27 does not hand --replace-workflow-config on to the jobs it submits (Slurm): each job's Snakemake read
# the demo's config/config.yaml again under the user's files, and trained with settings other than those the run
# planned (the demo's backbone_lr_factor, warmup_epochs), recorded as planned. The choice of the Snakemake that plans
# the run reaches its jobs through the environment, and a job's Snakemake reads the user's config alone, as it did.
REPLACED_ENV = "FINETUNE_REPLACE_WORKFLOW_CONFIG"
if workflow.is_main_process:  # replaced only where a config is given (Snakemake's own rule: the flag alone keeps the demo's)
    os.environ[REPLACED_ENV] = ("1" if workflow.config_settings.replace_workflow_config
                                and workflow.config_settings.overwrite_config else "0")
elif os.environ.get(REPLACED_ENV) == "1" and not workflow.config_settings.replace_workflow_config \
        and len(workflow.modifier_stack) == 1:
    config.clear()
    update_config(config, copy.deepcopy(workflow.config_settings.overwrite_config))
REPLACES_WORKFLOW_CONFIG = os.environ.get(REPLACED_ENV) == "1"


envvars:
    "PYTHONPATH",
    REPLACED_ENV,


sys.path.insert(0, str(REPO / "src"))
# Two instances of this workflow in one host read from two checkouts (module fa: snakefile A, module fb: snakefile B):
# Python holds one `finetune` package, the first read, and PYTHONPATH names one src/ for every job: the other's jobs ran
# that checkout's code, and an edit of their own reran them without changing what they ran.
import finetune as _package

if Path(_package.__file__).resolve().parent != (REPO / "src" / "finetune").resolve():
    raise WorkflowError(
        f"module {getattr(workflow.modifier, 'namespace', None) or 'finetune'}: read from {REPO}, while the finetune "
        f"package this run holds already comes from {Path(_package.__file__).resolve().parent.parent.parent} (another "
        "instance of this workflow, or an import of your Snakefile's): one of them would run the other checkout's "
        "code. Load every instance from one checkout, and import finetune from it (docs/module.md)")
from finetune.configcheck import (RESULTS_FOLDERS, SOURCE_TEST_FRACTION, config_numbers_as_defaults, config_problems,
                                  earliest_stop, format_problems, job_options,
                                  model_arch, overridden_train_notes, range_test_options, schema_default, torchvision_weights_member,
                                  train_defaults)
from finetune.watch import dataset_walk, images_state, listed_files_state
from finetune.userconfig import (as_config_args, command_line_config, command_line_duplicates, written_texts,
                                 command_line_misread_numbers, misread_numbers,
                                 demo_source_for_own_images, duplicate_keys, expand_home, first_time, forced_to_run,
                                 has_option, inherited_for_another_optimizer, is_snakemake_command_line, keys_under,
                                 once, once_per, option_differences, own_sections, pending_jobs,
                                 profile_settings_replaced, profile_files, repeated_options, resource_value_problems,
                                 reruns_more_than_named, runs_no_job, runs_the_dag,
                                 schema_pretrain_note, schema_sections, snakemake_command_line, stray_configfiles,
                                 stray_configfiles_hint, train_keys_demo_experiments_keep, typed_command_line_config,
                                 where_written)
from finetune.sweeps import expand as expand_sweeps
from finetune import slurmchecks
from finetune.startchecks import (SAY_OPENING_FROM, ambiguous_class_numbers_problem, batchnorm_problems, chosen_listing, classes_at_start,
                                  cuda_graphs_on_cpu_note, cuda_only_options_note,
                                  damaged_onnx_problem, damaged_split_problem, leaderboard_runs_not_configured,
                                  new_dataset_images, new_images_problem,
                                  nvidia_driver_loaded, number_classes_note, outside_class_images_note,
                                  report_of_dataset, side_by_side_note, skipped_images_note, spacing_note,
                                  split_made_again, sync_batchnorm_on_cpu_problems, too_few_to_split_problem,
                                  uncached_bytecode_note, unread_predict_images_note, unreadable_line, with_hints,
                                  zero_backbone_lr_note, random_backbone_gradual_note, frozen_random_batchnorm_note,
                                  frozen_batchnorm_pretraining_note,
                                  damaged_checkpoint_problem, damaged_weights_problem, damaged_decoded_problem, damaged_json_problem,
                                  range_test_edge_line,
                                  TORCH_RULES)

# The command line of the Snakemake running this workflow (`snakemake ...`, `python -m snakemake ...`). Started from a
# program of the user's through Snakemake's Python API, sys.argv is that program's and says nothing of Snakemake's
# options: read as none given, and a damaged file found at start (below) is said, not refused, as the run's
# --forcerun and targets are not known.
COMMAND_KNOWN = is_snakemake_command_line(sys.argv)
ARGV = sys.argv if COMMAND_KNOWN else sys.argv[:1]

# A host's every `use rule ... from` statement reads this workflow again, with one config dict, which the first reading
# changed (the schema's defaults filled in, paths expanded): each reading starts from the config as it was written, or
# the second found every default "written" and refused keys nobody wrote.
_config_as_written = once_per(config, "as written", lambda: copy.deepcopy(config))
if config != _config_as_written:
    config.clear()
    config.update(copy.deepcopy(_config_as_written))
# A key written twice in one config file, or in the profile in use (a second `default-resources:` in an
# edited Slurm profile, say): YAML keeps the last without a word, so the first's settings would be
# ignored. Refused, naming the file, the key and both lines.
# Used as a module of another workflow (docs/module.md), the config is the host's:
# its `configfile:` files are read besides --configfile's (Snakemake skips this workflow's own `configfile:`).
_as_module = len(workflow.modifier_stack) > 1  # a module's rules are read under a modifier of their own
# Each note printed at start names the module it is about, where a host has several (`module fb: ...`).
INSTANCE = f"module {workflow.modifier.namespace}: " if _as_module and getattr(workflow.modifier, "namespace", None) else ""


_SAID = once_per(config, "notes said", set)  # a host's `use rule ... from` statements read the module again
STARTED_AT = time.time()  # when this run of Snakemake read the workflow: Slurm logs written since are its jobs'


@functools.cache
def loaded_schema():
    """The config's schema as a mapping, read once a start (do not change it)."""
    from snakemake.common.configfile import load_configfile

    return load_configfile(SCHEMA)


@functools.cache
def schema_sections_here():
    return schema_sections(loaded_schema())


def host_keys(text):
    """``text`` with this workflow's config keys (and its `--config` hints) as the host's config holds them, where it
    is a module given a part of the host's config (`config: config["fa"]`: `fa.train.lr`); as it is otherwise."""
    path = globals().get("_module_path")  # said before the module's place in the host's config is found: as it is
    return keys_under(text, path, schema_sections_here()) if _as_module and path else text


def refused(text):
    """The error that stops the run at start, naming the module and its keys where it is one (say's notes do too)."""
    return WorkflowError(f"{INSTANCE}{host_keys(text)}")


def say(text):
    """A note at start, on stderr: ``note: <module>: <text>``, its keys named as the host's config holds them
    (host_keys); once, however often a host reads the module."""
    line = f"note: {INSTANCE}{host_keys(text)}"  # two instances of one config dict: each says its own
    if line not in _SAID:
        _SAID.add(line)
        print(line, file=sys.stderr)


def note_resources_under_unprefixed_names():
    """As a module whose rules are renamed (`use rule * from finetune as a_*`), a `set-resources` or `set-threads` key
    (a profile's, or the command line's) that names one of them by its old name (`train`, not `a_train`) applies to nothing, and
    Snakemake says nothing of it (the job runs with the resources its rule asks, nor `* attempt` on a retry).
    Said here, once the rules are defined (a host's own rule of that name defined after its `use rule` is not
    known yet: the note then names a key that does reach that rule)."""
    given = (workflow.resource_settings.overwrite_resources or {}) if workflow.is_main_process else {}
    ours = {each.name for each in workflow.modifier.rules}
    defined = {each.name for each in workflow.rules}
    for name in sorted(given):
        renamed = workflow.modifier.avail_rulename(name)  # None for a rule this statement does not take
        if renamed not in (None, name) and renamed in ours and name not in defined:
            say(f"set-resources names {name}, which this module calls {renamed}; its settings "
                f"({', '.join(sorted(given[name]))}) apply to nothing. Name it {renamed} in your profile or command line")
    threads = (workflow.resource_settings.overwrite_threads or {}) if workflow.is_main_process else {}
    for name in sorted(threads):
        renamed = workflow.modifier.avail_rulename(name)  # None for a rule this statement does not take
        if renamed not in (None, name) and renamed in ours and name not in defined:
            say(f"set-threads names {name}, which this module calls {renamed}: its threads apply to nothing. Name it "
                f"{renamed} in your profile or command line")


# The resources Snakemake, its Slurm plugin or this workflow's rules read: a set-resources or default-resources key one
# letter off one of them (mem_mbb, slurm_partiton) sizes nothing, without a word (it could be a resource of the user's
# own, which Snakemake counts against --resources: said, not refused).
KNOWN_RESOURCES = {"mem", "mem_mb", "mem_mib", "disk", "disk_mb", "disk_mib", "runtime", "tmpdir", "gpu", "gpus",
                   "slurm_partition", "slurm_account", "slurm_extra", "slurm_cluster", "clusters", "constraint", "qos",
                   "cpus_per_task", "cpus_per_gpu", "mem_mb_per_cpu", "nodes", "tasks", "tasks_per_node",
                   "tasks_per_gpu", "gpu_model", "gres", "mpi", "cluster"}


def refuse_unknown_rule_settings():
    """A set-resources or set-threads entry (the profile's, or the command line's) naming no rule of this workflow (a
    typo, `trian:`): Snakemake applies it to nothing without a word, and the jobs ran with their rules' own sizes (no
    `* attempt` on a retry). Refused at start where this is the workflow itself (a host's own rules may take names a
    module does not have). A resource key one letter off one that is read (mem_mbb) is said."""
    if not workflow.is_main_process:
        return
    given = {"set-resources": dict(workflow.resource_settings.overwrite_resources or {}),
             "set-threads": dict(workflow.resource_settings.overwrite_threads or {})}
    rules = sorted(each.name for each in workflow.rules)
    problems = [] if _as_module else [
        f"{option} names {name}, which is no rule of this workflow"
        f"{''.join(f' (did you mean {close}?)' for close in difflib.get_close_matches(name, rules, n=1))}: "
        f"{'its settings' if option == 'set-resources' else 'its threads'} would apply to nothing; the rules are "
        f"{', '.join(rules)}" for option, entries in given.items() for name in sorted(entries) if name not in rules]
    if problems:
        raise WorkflowError("\n".join([*problems, "nothing ran, and every earlier result is kept (the profile in use: "
                                        f"{', '.join(map(str, PROFILE_FILES)) or 'none'}; or the command line)"]))
    defaults = workflow.resource_settings.default_resources
    keyed = [("default-resources", list(getattr(defaults, "keys", lambda: [])()) if defaults is not None else [])]
    keyed += [(f"set-resources {name}", list(dict(entries or {}))) for name, entries in sorted(given["set-resources"].items())]
    for where, keys in keyed:
        for key in keys:
            close = difflib.get_close_matches(str(key), sorted(KNOWN_RESOURCES), n=1, cutoff=0.8)
            if key not in KNOWN_RESOURCES and not str(key).startswith("_") and close \
                    and first_time(f"resource {where} {key}"):  # the profile's: said once, not by each instance
                print(f"note: {where}: {key} is no resource Snakemake or its Slurm plugin reads (did you mean "
                      f"{close[0]}?): it sizes nothing, and the job gets the default", file=sys.stderr)


# The profiles this run reads (the workflow's own, --profile, $SNAKEMAKE_PROFILE): read once.
PROFILE_FILES = profile_files(ARGV, os.environ, workflow.basedir, workflow.rundir)
# In the order Snakemake merges them (the last that writes a key wins): the host's, then --configfile's.
_cli_files = list(map(str, workflow.config_settings.configfiles))
_config_files = list(dict.fromkeys([*(str(f) for f in workflow.configfiles if _as_module and str(f) not in _cli_files),
                                    *_cli_files]))
# config/config.yaml (the demo's) is read only by the workflow run as itself, its config not replaced by the user's.
_checked_files = [*(["config/config.yaml"] if os.path.exists("config/config.yaml") and not _as_module
                    and not REPLACES_WORKFLOW_CONFIG else []), *_config_files,
                  *PROFILE_FILES]
_duplicates = [f"{file}: {problem}" for file in {os.path.abspath(f): f for f in _checked_files}.values()
               for problem in duplicate_keys(file)]
_duplicates += [f"--config: {problem}" for problem in command_line_duplicates(ARGV)]
if _duplicates:
    raise WorkflowError("a key is written twice in a config or profile file, or in --config (merge the two into one):\n"
                        + "\n".join(_duplicates))
_misread = [f"{file}: {problem}" for file in {os.path.abspath(f): f for f in _checked_files}.values()
            for problem in misread_numbers(file)]
_misread += [f"--config: {problem}" for problem in command_line_misread_numbers(ARGV)]
if _misread:
    raise WorkflowError("a number in a config or profile file, or in --config, that YAML reads otherwise than written "
                        "(nothing ran):\n" + "\n".join(_misread))
# `--configfile a.yaml --configfile b.yaml`: Snakemake reads b.yaml alone (each option taking a list keeps its last).
if workflow.is_main_process and repeated_options(ARGV):
    raise WorkflowError("an option is given twice on the command line: nothing ran\n" + "\n".join(repeated_options(ARGV)))
# `--resources mem_mb=8000` replaces the workflow profile's `resources:` (its gpu: 1) whole, not key by key.
if workflow.is_main_process:
    for _line in profile_settings_replaced(ARGV, PROFILE_FILES):
        say(_line)
# `runtime: "2:00:00"` (Slurm's format) or `mem_mb: 4GB` stopped the run at its first job, in a traceback naming this
# workflow's target `all`, not the profile: refused here, each named with its file, its rule and key, and what to write.
_unreadable = resource_value_problems(ARGV, PROFILE_FILES) if workflow.is_main_process else []
if _unreadable:
    raise WorkflowError("a resource value Snakemake cannot read (nothing ran):\n" + "\n".join(_unreadable))

# `--config 'train={lr: 0.01}' 'seeds=[0, 1]'`: Snakemake makes every nested value text ('0.01'). Each is read
# again from the command line as a config file reads it (0.01, and '7' quoted stays text), in the config and
# in what the user wrote (the notes below read it), and the jobs Snakemake spawns (Slurm) are given the
# values as JSON, which they read back the same way. Values not on the command line (a profile's `config:`,
# Snakemake's API) are read as YAML reads unquoted values.
# As a module, --config sets the host's config: the part of it that is the module's (`config: config`, or the usual
# `config: config["finetune"]`) is read again here, and the host's other keys are the host's.
def module_config_path():
    """Where this module's config lies in the host's: [] (the host's whole config, `config: config`; and outside a
    module), the keys down to it (`config: config["finetune"]`: ["finetune"]; `config["finetune"]["fa"]`: ["finetune",
    "fa"]), or None (another dict, which --config is not traced to)."""
    host = workflow.modifier_stack[0].globals.get("config") if _as_module else config

    def path_to(section, depth):
        if section is config:
            return []
        if not isinstance(section, dict) or depth > 4:
            return None
        for key, value in section.items():
            below = path_to(value, depth + 1) if isinstance(key, str) else None
            if below is not None:
                return [key, *below]
        return None

    return path_to(host, 0)


_module_path = module_config_path()
_module_key = ".".join(_module_path) if _module_path is not None else None  # as a message names it: finetune.fa


def module_part(given):
    """The part of the host's ``--config`` values ``given`` that sets this module's config (all of them outside a module)."""
    if _module_path is None:
        return {}
    for key in _module_path:
        given = given.get(key) if isinstance(given, dict) else None
    return given if isinstance(given, dict) else {}


if workflow.config_settings.config:
    _typed_cli = typed_command_line_config(workflow.config_settings.config)
    update_config(_typed_cli, command_line_config(ARGV) or {})
    update_config(config, module_part(_typed_cli))
    if _module_key is None:
        say("--config sets the host's config, and this module's config (its module block's `config:`) is "
            "neither the host's config nor one of its keys: the values given there reach the module only where your "
            "Snakefile builds its config from them, and then as Snakemake leaves them, nested numbers as text (a copy "
            "of a key); write `config: config[\"<key>\"]`, or give them in a config file")
    update_config(workflow.config_settings.overwrite_config, _typed_cli)
    workflow.config_settings.config_args = as_config_args(_typed_cli)

# A config of the user's own (--configfile) is merged key by key over config/config.yaml, the demo's,
# where that file is found. A section that describes something else (another dataset, another source of
# weights, experiments of other names) replaces the demo's instead of inheriting its choices, such as
# Fashion-MNIST's classes 6-9 and 10 training images per class; each replacement is said at start.
# Used as a module of another workflow (docs/module.md) the config is the host's alone,
# whatever its working directory's config/config.yaml holds (the host's own config, likely).
_merged_over_the_demo = (os.path.exists("config/config.yaml") and not REPLACES_WORKFLOW_CONFIG
                         and not _as_module)
if _merged_over_the_demo:
    from snakemake.common.configfile import load_configfile

    _demo, _user = load_configfile("config/config.yaml"), workflow.config_settings.overwrite_config or {}
    for _note in (own_sections(config, _demo, _user) + inherited_for_another_optimizer(config, _demo, _user)
                  + demo_source_for_own_images(config, _demo, _user)
                  + train_keys_demo_experiments_keep(config, _demo, _user)):
        say(_note)
# The workflow passes it on itself (REPLACED_ENV) where it is the main Snakefile, not as a module: said where jobs are
# submitted (a cluster's executor: known here from the command line and profiles alone).
LOCAL_EXECUTORS = (None, "local", "dryrun", "touch")
if (_as_module and workflow.is_main_process and workflow.config_settings.replace_workflow_config
        and workflow.config_settings.overwrite_config
        and getattr(snakemake_command_line(ARGV, PROFILE_FILES), "executor", None) not in LOCAL_EXECUTORS):
    say("--replace-workflow-config does not reach the jobs Snakemake submits (Snakemake 9.27 drops it): each job's "
        "Snakemake merges your Snakefile's configfile again under --configfile, and trains with the keys only that file "
        "writes; leave `configfile:` out of your Snakefile and name your config with --configfile, or write every key "
        "in the file your Snakefile reads (docs/module.md)")
# A `pretrain` section the user wrote is read only with weights.source: pretrain: say so where it is not.
_written = (workflow.config_settings.overwrite_config or {}) if _merged_over_the_demo else config
# A config used alone without `pretrain` (said below, once the schema's defaults are known, where none was made yet).
_schema_pretrain = not _merged_over_the_demo and "pretrain" not in _written
_dataset_written = "dataset" in _written
if "pretrain" in _written and (config.get("weights") or {}).get("source", "pretrain") != "pretrain":
    say(f"pretrain: not used with weights.source: {config['weights']['source']} (only the `pretrain` source "
        "trains a source model)")
# The `lr_find` keys written, before the schema's defaults fill the section (noted below where no run uses them).
_lr_find_written = list(_written["lr_find"]) if isinstance(_written.get("lr_find"), dict) else []
# The top_k values written (noted below, where the classes are known, if at or above their number).
_top_k_written = {section: _written[section]["top_k"] for section in ("evaluate", "predict")
                  if isinstance(_written.get(section), dict) and isinstance(_written[section].get("top_k"), int)}
# A `predict` section without images: its other keys choose the model and the columns of predictions that
# are not made.
_predict_written = [key for key in (_written.get("predict") or {}) if key != "images"] if isinstance(_written.get("predict"), dict) else []
if _predict_written and (config.get("predict") or {}).get("images") is None:
    say(f"predict: {', '.join(f'predict.{key}' for key in _predict_written)} not used: predict.images is "
        "null, so nothing is classified (set it to a folder of images or a CSV with a path column)")

def config_sources():
    """{name: the config it gives} of each source of the config, in the order Snakemake merges them: the demo's
    config/config.yaml where yours is merged over it, each --configfile, --config (finetune.userconfig.where_written)."""
    from snakemake.common.configfile import load_configfile

    return {**({"config/config.yaml": load_configfile("config/config.yaml")} if _merged_over_the_demo else {}),
            **{f: load_configfile(f) for f in _config_files},
            **({"--config": module_part(dict(workflow.config_settings.config))} if workflow.config_settings.config else {})}


def with_sources(problems):
    """A refusal's ``problems`` (``key.path: why`` each) naming the source that writes each key where several give the
    config (finetune.userconfig.where_written); as they are in a module."""
    return problems if _as_module else where_written(problems, config_sources(), demo="config/config.yaml")


# Every problem at once, one line each with its key path (Snakemake's own message shows only the
# first, buried in a dump of the schema); nothing runs with a config that fails here.
_problems = config_problems(config, SCHEMA, written_train=_written.get("train") if isinstance(_written.get("train"), dict) else {})
_problems = list(dict.fromkeys(_problems))  # once each: a sweep's runs may share one (a run name too long, cut short)
if _problems:
    # Several files (or --config) give the config: each problem says which of them writes its key.
    _sources = config_sources()
    _strays = stray_configfiles({f: _sources[f] for f in _config_files}, loaded_schema()["properties"], os.getcwd())
    # A target read as a config file: its keys (all unknown) are not the config's mistakes, and said one by one they
    # buried the line that says what happened; the config's own problems are still listed.
    _stray_keys = {_key for _stray in _strays for _key in _sources[_stray]}
    _problems = [_problem for _problem in _problems if re.split(r"[.:]", _problem, maxsplit=1)[0] not in _stray_keys]
    if _as_module and _module_key:  # the module's keys lie under the host's key: named so, and traced in the host's files
        _problems = [f"{_module_key}.{_problem}" for _problem in _problems]
        if workflow.config_settings.config:
            _sources["--config"] = dict(workflow.config_settings.config)
    _listed = format_problems(with_hints(where_written(_problems, _sources, demo="config/config.yaml")), SCHEMA_SHOWN)
    if len(_sources) == 1 and "--config" not in _sources:  # one file: named once, as several are on each line
        _listed = _listed.replace("invalid configuration (", f"invalid configuration in {os.path.normpath(next(iter(_sources)))} (", 1)
    raise WorkflowError("\n".join([*([stray_configfiles_hint(_strays)] if _strays else []),
                                   *([INSTANCE + host_keys(_listed)] if _problems else [])]))

for _note in overridden_train_notes(config, _written.get("train") if isinstance(_written.get("train"), dict) else {}):
    say(_note.removeprefix("note: "))

# Experiments override `train`, so they must not get the schema's defaults filled in: validate
# them as written, and let `train` supply every key an experiment leaves out. Without an
# `experiments` section the one experiment is the schema's default, `finetune`, with no settings of
# its own: every `train` key (train.strategy included) reaches its jobs.
_experiments_as_written = copy.deepcopy(config.get("experiments", schema_default(SCHEMA, "experiments")))
_arch_as_written = (config.get("weights") or {}).get("arch")
_source_test_written = "test_fraction" in (((config.get("pretrain") or {}).get("dataset")) or {})
# The fractions written of each dataset (in a config file or --config, before the schema's defaults fill them in): one
# written for a split the dataset gives itself is refused at start (below, where the data is looked at).
_fractions_written = {
    key: [name for name in ("val_fraction", "test_fraction") if isinstance(section, dict) and name in section]
    for key, section in (("dataset", config.get("dataset")),
                         ("pretrain.dataset", (config.get("pretrain") or {}).get("dataset")
                          if isinstance(config.get("pretrain"), dict) else None))}
validate(config, "../schemas/config.schema.yaml")
# A number written as its key's default is the default (`label_smoothing: 0`, default 0.0): the jobs' params, compared as
# text, then are the same as with the key left out, and writing a default runs nothing again.
config_numbers_as_defaults(config, loaded_schema())
# The source dataset's test images are read by nothing (pretrain trains on its train images and chooses its best
# epoch on its val ones), so where pretrain.dataset.test_fraction is not written none are drawn: every image of an
# ImageFolder or a CSV manifest but the val ones trains the source model. Fashion-MNIST's test split is its own file.
if not _source_test_written and config["pretrain"]["dataset"]["format"] != "fashion-mnist":
    config["pretrain"]["dataset"]["test_fraction"] = SOURCE_TEST_FRACTION
config["experiments"] = _experiments_as_written
expand_home(config)  # dataset.path: ~/photos is the home folder's photos, as torchvision reads it
# torchvision weights name their own architecture: weights.arch is only a check there, where written
# (the schema's default, resnet18, would refuse every other enum).
if config["weights"]["source"] == "torchvision":
    config["weights"]["arch"] = _arch_as_written

# A run per experiment, or per combination of its `sweep` (src/finetune/sweeps.py names them):
# EXPERIMENTS maps each run's name (the {experiment} wildcard) to its train overrides, SWEEP_OF
# each run's name to the experiment as written (the leaderboard selects one run per experiment).
EXPERIMENTS, SWEEP_OF = expand_sweeps(config["experiments"])
SEEDS = config["seeds"]
RUNS = [f"{experiment}/seed{seed}" for experiment in EXPERIMENTS for seed in SEEDS]
# BatchNorm batches of one image: refused here, not by the train job after Snakemake removed the run's model.pt
# (under Slurm after two submissions). A check of finetune.startchecks, which no job loads.
_problems = batchnorm_problems(config, EXPERIMENTS, SWEEP_OF)
if _problems:
    raise refused(format_problems(with_sources(_problems), SCHEMA_SHOWN))
# Several training processes on the CPU share the train job's threads (threads.train, or fewer where --cores gives
# fewer), one at least each: more processes than threads use more cores than the job holds (said, not refused: it
# trains the same run, only more slowly). device: auto trains on the CPU where no GPU is found.
def given_cores():
    """--cores, or None where none is given (the Slurm profile's run: jobs: caps the jobs, Slurm the cores)."""
    try:
        return workflow.cores
    except WorkflowError:  # Snakemake raises rather than answer None
        return None


_train_threads = min(config["threads"]["train"], given_cores() or config["threads"]["train"])
_crowded = {run: {**config["train"], **own} for run, own in EXPERIMENTS.items()}
_crowded = {run: cfg for run, cfg in _crowded.items() if cfg["device"] in ("cpu", "auto") and cfg["nodes"] == 1
            and cfg["devices"] > _train_threads}
if _crowded:
    say(f"{', '.join(_crowded)}: devices {max(cfg['devices'] for cfg in _crowded.values())} on the CPU (device "
        f"{' or '.join(sorted({cfg['device'] for cfg in _crowded.values()}))}"
        f"{', where no GPU is found' if any(cfg['device'] == 'auto' for cfg in _crowded.values()) else ''}), more "
        f"training processes than the train job's threads ({_train_threads}: threads.train, or --cores where fewer): "
        "each gets one thread, so the job uses more cores than it holds; raise threads.train (and --cores) to "
        "devices or more")

# Whose model classifies predict.images for the `all` target, if any: one named run and seed
# (rule predict), or, where predict.experiment names a sweep or is null or predict.seed is null, the
# run selected by validation metric among PREDICT_CANDIDATES (rule predict_selected; the choice is
# made in the job, from the runs' train_info.json, so the DAG stays static).
PREDICT = config["predict"]
PREDICT_TARGET, PREDICT_CANDIDATES = None, []
PREDICT_PROBLEM = None  # why predict.images cannot be classified, where found at start


def runs_named(name):
    """The run names an experiment name stands for: a sweep's runs, or the one run of that name."""
    return [run for run, experiment in SWEEP_OF.items() if experiment == name] or ([name] if name in EXPERIMENTS else [])


def predict_inherited(key):
    """Where a predict key the user did not write comes from: config/config.yaml (the demo's run to classify with)."""
    if not _merged_over_the_demo or key in _predict_written:
        return ""
    return (f" (set in config/config.yaml, the demo's; set predict.{key} in your config: null for the selected run"
            f"{'' if key == 'experiment' else ' and its best seed'})")


def predict_refused(line, key):
    """A refusal of predict.<key>, saying where the key is written: the demo's (with the hint to set it), or yours."""
    inherited = predict_inherited(key)
    return refused(line + inherited if inherited else with_sources([line])[0])


def predict_choice(experiment, seed):
    """(target, candidate run names): a named run and seed, or the selected run among candidates."""
    candidates = list(EXPERIMENTS) if experiment is None else runs_named(experiment)
    if not candidates:
        raise predict_refused(f"predict.experiment: {experiment!r} is not an experiment or run of this config "
                              f"({', '.join(dict.fromkeys([*config['experiments'], *EXPERIMENTS]))})", "experiment")
    if seed is not None and seed not in SEEDS:
        raise predict_refused(f"predict.seed: {seed} is not in seeds {SEEDS}", "seed")
    if len(candidates) == 1 and seed is not None:
        return f"results/predictions/{candidates[0]}/seed{seed}/predictions.csv", []
    metrics = {run: experiment_config(run)["metric"] for run in candidates}
    if len(set(metrics.values())) > 1:
        raise refused(with_sources(["predict.experiment: the runs to select among have different train.metric ("
                                    + ", ".join(f"{r}: {m}" for r, m in metrics.items()) + "); set predict.experiment"])[0])
    return "results/predictions/selected/predictions.csv", candidates


# Without predict.images the key is not used (said above): nothing to refuse.
if PREDICT["model"] == "int8" and not config["export"]["quantize"] and PREDICT["images"] is not None:
    raise refused(with_sources(["predict.model: int8 needs export.quantize: true (the int8 model is not made otherwise)"])[0])

# Settings of an experiment that are not options of the training loop.
NOT_LOOP_OPTIONS = ("pretrained", "image_size")


PER_RUN_FOLDERS = ("lr_find", "predictions")  # results/<folder>/<run>/seed<N>/...


def run_of_target(target):
    """Where a target under results/ names a run: (folder, name, parts, at) for results/<name>/... and for a run's
    folder of results/lr_find/ and results/predictions/ (not their selected/), parts[at] being <name>; None for any
    other path (results/<folder the workflow writes>/... included)."""
    parts = Path(target).parts
    if len(parts) < 3 or parts[0] != "results":
        return None
    if parts[1] in PER_RUN_FOLDERS:
        return (f"results/{parts[1]}/", parts[2], parts, 2) if len(parts) >= 4 and parts[2] != "selected" else None
    return None if parts[1] in RESULTS_FOLDERS else ("results/", parts[1], parts, 1)


def unknown_run_targets(targets):
    """A line for each target under results/<name>/ (or a run's folder of results/lr_find/ and results/predictions/)
    whose <name> is no experiment (nor sweep) of this config: Snakemake says only that no rule produces it."""
    import difflib

    lines = []
    for target in targets:
        found = run_of_target(target)
        if found is None or found[1] in EXPERIMENTS:
            continue
        folder, name = found[:2]
        runs = runs_named(name)
        if runs:
            lines.append(f"{target}: {name} is a sweep; its runs are {folder}<run>/ for the runs "
                         f"{', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''}")
            continue
        close = ([each for each in EXPERIMENTS if each.casefold() == name.casefold()]
                 or difflib.get_close_matches(name, list(EXPERIMENTS), n=1))
        lines.append(f"{target}: no experiment named {name!r} in this config (experiments: "
                     f"{', '.join(EXPERIMENTS) or 'none'})" + (f"; did you mean {folder}{close[0]}/...?" if close else ""))
    return lines


def unlisted_seed_targets(targets):
    """A line for each target of a run's seed folder (results/<run>/seed<N>/..., and the same under results/lr_find/
    and results/predictions/) whose seed is not in `seeds`: it trains, but the leaderboard counts only `seeds`."""
    lines = []
    for target in targets:
        found = run_of_target(target)
        if found is None or found[1] not in EXPERIMENTS:
            continue
        parts, at = found[2:]
        seed = re.fullmatch(r"seed(\d+)", parts[at + 1]) if len(parts) > at + 1 else None
        if seed and int(seed.group(1)) not in SEEDS:
            lines.append(f"{target}: seed {int(seed.group(1))} is not in seeds {SEEDS}: its run trains as asked, but "
                         "the leaderboard (results/summary.csv) and the selection count only the seeds listed; add it to "
                         "seeds to have it counted")
    return lines


def lbfgs_curve_targets(targets):
    """The targets of a range test (results/lr_find/<run>/...) of a run whose optimizer is lbfgs, which has no lr to
    find (its line search chooses each step): refused at start, naming where the optimizer is written, not by the job."""
    lines = []
    for target in targets:
        found = run_of_target(target)
        if found is None or found[0] != "results/lr_find/" or found[1] not in EXPERIMENTS:
            continue
        if experiment_config(found[1]).get("optimizer") == "lbfgs":
            key = train_key_names(found[1]).get("optimizer", "train.optimizer")
            lines.append(f"{target}: {key} is lbfgs, whose line search chooses each step: the run has no lr to find "
                         "(ask for the curve of a run with optimizer sgd or adamw)")
    return lines


SELECTED_PREDICTION_TARGETS = []  # the command line's targets of the selected run's predictions
if workflow.is_main_process:
    from finetune.userconfig import command_line_targets

    # Predictions asked for by name without predict.images: refused here, not by an input function's traceback. As a
    # module, those below its prefix (runs/a/results/predictions/...), or its rule by its name in the host
    # (fa_predict_selected).
    _results_folder = os.path.normpath(workflow.modifier.path_modifier.replace_prefix("results"))
    _targets = [os.path.normpath(t) for t in command_line_targets(ARGV, _results_folder)]  # Snakemake's parser built once
    _predictions_folder = Path(_results_folder, "predictions")
    _predict_selected = workflow.modifier.modify_rulename("predict_selected")
    _prediction_targets = [t for t in _targets
                           if Path(t).parts[:len(_predictions_folder.parts)] == _predictions_folder.parts]
    _prediction_targets += [_predict_selected] if _predict_selected in ARGV[1:] else []
    if _prediction_targets and PREDICT["images"] is None:
        raise refused(f"{', '.join(_prediction_targets)}: predictions need predict.images (a folder of images "
                      "or a CSV with a `path` column), which is null: nothing ran. Set it in your config or "
                      "on the command line: --config 'predict={images: my_images}'")
    # The selected run's predictions asked for: refused below where the config names one run and seed.
    SELECTED_PREDICTION_TARGETS = [
        t for t in _prediction_targets if t == _predict_selected
        or Path(t).parts[:len(_predictions_folder.parts) + 1] == (*_predictions_folder.parts, "selected")]
if workflow.is_main_process and not _as_module:  # a host's targets may be its own files, under results/ too
    for _line in unknown_run_targets(_targets):
        say(_line)
    for _line in unlisted_seed_targets(_targets):
        say(_line)
    # `--configfile=a.yaml b.yaml` gives one config file and a target b.yaml: Snakemake would say only that no rule
    # makes b.yaml. The file is looked for where Snakemake was started too ($PWD), as it reads --configfile from there.
    if any(arg.endswith((".yaml", ".yml")) and not arg.startswith("-") for arg in ARGV[1:]):
        _yaml_targets = [each for each in getattr(snakemake_command_line(ARGV), "targets", None) or []
                         if each.endswith((".yaml", ".yml")) and (
                             os.path.isfile(each) or os.path.isfile(os.path.join(os.environ.get("PWD", ""), each)))]
        if _yaml_targets:
            raise WorkflowError(f"{', '.join(_yaml_targets)}: given as a target (a file to make), not as a config file: "
                                "nothing ran. --configfile=a.yaml takes one file; give several after one "
                                f"--configfile without '=': --configfile a.yaml {' '.join(_yaml_targets)}")


wildcard_constraints:
    experiment="|".join(map(re.escape, EXPERIMENTS)) or "NONE",
    seed=r"\d+",
    dataset="target|source",
    size=r"native|\d+",


# --------------------------------------------------------------------------- code a rule runs

# The `finetune` modules each rule's script loads: the script's imports and what its stage function
# imports lazily (a static scan of stages.py would make every rule depend on every module). They are
# inputs like the scripts, so editing one reruns exactly the jobs that run it and what follows.
# Snakemake keeps checksums of small inputs: a touch or a checkout that leaves a file's text as it
# was reruns nothing. tests/test_reruns.py checks this table against what the jobs actually load.
_STAGES = ["__init__", "cli", "data", "errors", "fileio", "images", "jobclock", "stages", "weights"]  # finetune.stages and its imports
_DEPLOY = ["__init__", "cli", "deploy", "errors", "fileio", "images", "jobclock", "metrics"]  # finetune.deploy: no torch
# finetune.training and its parts
_TRAINING = ["augment", "distributed", "ema", "features", "importing", "mixing", "models", "optionrules", "options",
             "progress", "selection", "stopping", "store", "tensors", "training"]
_path_modifier = workflow.modifier.path_modifier  # as the rules are read: a module's own


def output_path(path):
    """``path`` (under results/ or resources/) where the rules' files go: a module's `prefix:` (or `replace_prefix:`)
    moves their inputs, outputs and logs, not their params, so a param naming such a folder or file takes it from here."""
    return str(_path_modifier.replace_prefix(path))


# Where train and pretrain keep their resume state (their params.resume_dir), outside their outputs.
RESUME_FOLDER = Path(output_path("resources/resume"))
FEATURE_FOLDER = output_path("resources/features")  # feature_extract's cached backbone features (train, lr_find)
TRAIN_DEFAULTS = train_defaults(SCHEMA)  # the schema's train section: what a key left out of train and experiments is
MODEL_ARCH = model_arch(config["weights"])  # the architecture every run trains (weights.arch, or the torchvision enum's)


def pretrained_otherwise(pretrain, epochs):
    """Whether the source model made before (its record, resources/pretrain/info.json) was trained on another number of
    classes or epochs than ``pretrain`` gives: made again by this run. False where none was made, or its record does
    not read (a model made before, of unknown settings)."""
    try:
        made = json.loads(Path(output_path("resources/pretrain/info.json")).read_text())
        classes, made_epochs = len(made["classes"]), made["options"]["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return classes != len(pretrain["dataset"].get("classes") or range(10)) or made_epochs != epochs


_pretrain_epochs = config["pretrain"]["train"].get("epochs", TRAIN_DEFAULTS["epochs"])
if (_schema_pretrain and workflow.is_main_process and config["weights"]["source"] == "pretrain"
        and (not os.path.exists(output_path("resources/pretrain/model.pth"))
             or pretrained_otherwise(config["pretrain"], _pretrain_epochs))):
    _note = schema_pretrain_note(config["pretrain"], config["weights"]["arch"], _pretrain_epochs, _dataset_written,
                                 as_module=_as_module)
    if _note:
        say(_note)

RULE_MODULES = {
    "split": [*_STAGES, "nearduplicates"],
    "decode": [*_STAGES, "store"],
    "pretrain": [*_STAGES, *_TRAINING],
    # Weights from pretrain are published as pretrain saved them (no model built): models only for the others.
    "weights": [*_STAGES, *(["importing", "models"] if config["weights"]["source"] != "pretrain" else [])],
    "scratch_manifest": ["__init__", "cli", "errors", "fileio", "images", "jobclock", "weights"],
    "train": [*_STAGES, *_TRAINING],
    "lr_find": [*_STAGES, *_TRAINING, "lrfind", "plots"],
    "evaluate": [*_STAGES, "importing", "metrics", "models", "nearduplicates", "plots", "selection", "store", "tables", "tensors"],
    "export_onnx": [*_STAGES, "export", "importing", "models", "optionrules", "store", "tensors"],
    "quantize_onnx": [*_DEPLOY, "data"],
    "predict": _DEPLOY,
    "predict_selected": [*_DEPLOY, "selection"],
    "summary": [*_STAGES, "leaderboard", "metrics", "nearduplicates", "selection", "tables"],
}


def as_input(path):
    """A file of this repository as an input: relative to the working directory where it lies below it, else absolute.
    Snakemake records each job's set of input paths: with absolute ones, a project folder moved or renamed would
    rerun every job, pretraining included. Resolved (a repository reached through a symlink is the same files),
    and `local`: a module's `prefix:` (or a default storage provider) must not take a relative one for a file of
    its own."""
    relative = below_workdir(path)
    return local(relative) if relative is not None else str(path)


def relative_to_workdir(path):
    """`` (relative to the working directory <cwd>)`` where ``path`` is relative; "" where it is absolute."""
    return "" if os.path.isabs(os.path.expanduser(str(path))) else f" (relative to the working directory {os.getcwd()})"


def below_workdir(path):
    """``path`` resolved (links followed), relative to the working directory where it lies below it; else None."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return None


def script(rule):
    """A rule's script (workflow/scripts/<rule>.py), one of its inputs."""
    return as_input(SCRIPTS / f"{rule}.py")


def package_modules(rule):
    """The source files of the finetune modules a rule's script loads, inputs of the rule."""
    return [as_input(PACKAGE / f"{module}.py") for module in RULE_MODULES[rule]]


# --------------------------------------------------------------------------- config slices

def as_json(value):
    return json.dumps(value, sort_keys=True)


def experiment_config(experiment):
    return {**config["train"], **EXPERIMENTS[experiment]}


def loop_options(train_config):
    return {k: v for k, v in train_config.items() if k not in NOT_LOOP_OPTIONS}


def train_key_names(experiment):
    """Where the run's own keys are written (experiments.<name>.<key>, or ...sweep.<key>), for the messages
    of its train job; the keys it takes from `train` are named train.<key> there."""
    written = config["experiments"][SWEEP_OF[experiment]] or {}
    swept = written.get("sweep") or {}
    return {key: f"experiments.{SWEEP_OF[experiment]}.{'sweep.' if key in swept else ''}{key}"
            for key in EXPERIMENTS[experiment]}


def job_key_names(experiment):
    """:func:`train_key_names` for the messages of a run's train and lr_find jobs, which name every other key train.<key>:
    as a module given a part of the host's config, every key as the host's config holds it (fa.train.device; the job
    said train.device)."""
    names = train_key_names(experiment)
    if not (_as_module and _module_key):
        return names
    return {**{key: host_key(f"train.{key}") for key in TRAIN_DEFAULTS}, **{key: host_key(name) for key, name in names.items()}}


def train_options(experiment, seed):
    """The training loop's options for one run: `train`, overridden by the experiment, the keys the run does not act
    on at their defaults, and values that train as the default does at the default (configcheck.job_options), plus
    the seed."""
    return loop_options(job_options(config["train"], EXPERIMENTS[experiment], TRAIN_DEFAULTS, MODEL_ARCH)) | {
        "seed": int(seed)}


# lr_find's suggestion for an experiment run: the lr of its train jobs where the run has `lr: auto`.
LR_SUGGESTION = "results/lr_find/{experiment}/suggestion.json"


# The range test runs in one process at the run's global batch size, whatever its `devices` and `nodes`: at their
# defaults in its options, so that changing them reruns the train jobs, not the test (whose record named them).
LR_FIND_ONE_PROCESS = ("devices", "nodes", "sync_batchnorm")  # (BatchNorm statistics shared among processes)


def lr_find_options(experiment):
    """The range test's options: the run's training options, seeded by `lr_find.seed` (not one of `seeds`: reordering
    them tested and trained again), with the keys it does not read at their defaults (configcheck.range_test_options:
    a run's epochs, say; LR_FIND_ONE_PROCESS), and its lr `auto` whatever the run's (the test sets each step's lr
    itself: a curve asked for by name ran again when the run's lr was set to auto, or to another number)."""
    options = range_test_options(train_options(experiment, config["lr_find"]["seed"]), TRAIN_DEFAULTS)
    return {**options, **{key: TRAIN_DEFAULTS[key] for key in LR_FIND_ONE_PROCESS if key in options}, "lr": "auto"}


def lr_is_auto(experiment):
    return experiment_config(experiment)["lr"] == "auto"


# `lr_find` settings run the range test of the runs with `lr: auto`; where there is none, only a curve asked for
# by name uses them: say so rather than leave them silently unused.
if _lr_find_written and not any(map(lr_is_auto, EXPERIMENTS)):
    say(f"lr_find: no experiment run has lr: auto, so {', '.join(f'lr_find.{key}' for key in _lr_find_written)} "
        f"set only the curves asked for by name (snakemake {output_path('results/lr_find/<run>/lr_find.png')})")


# The range test of an L-BFGS run asked for by name: refused here (train_key_names names where the optimizer is written).
_lbfgs_curves = lbfgs_curve_targets(_targets) if workflow.is_main_process and not _as_module else []
if _lbfgs_curves:
    raise WorkflowError("\n".join([*_lbfgs_curves, "nothing ran"]))


def lr_suggestion_input(wildcards):
    """train's input: lr_find's suggestion, for a run with `lr: auto` only."""
    return {"lr_suggestion": LR_SUGGESTION.format(experiment=wildcards.experiment)} if lr_is_auto(wildcards.experiment) else {}


def lr_from_arg(wildcards, input):
    return f"--lr-from {input.lr_suggestion}" if lr_is_auto(wildcards.experiment) else ""


def uses_gpu(experiment):
    return experiment_config(experiment)["device"] == "cuda"


def train_launcher(experiment):
    """How the train jobs start their script: as it is (one process), or through finetune.launch (torchrun:
    devices x nodes processes). Without the interpreter's path, which is no parameter of the run."""
    cfg = experiment_config(experiment)
    if cfg["devices"] * cfg["nodes"] == 1:
        return ""
    # where nodes is written, for the launcher's message outside a Slurm allocation of that many nodes
    key = f" --nodes-key {train_key_names(experiment).get('nodes', 'train.nodes')}" if cfg["nodes"] > 1 else ""
    return f"-m finetune.launch --devices {cfg['devices']} --nodes {cfg['nodes']}{key} --"


def dataset_config(dataset):
    """The split rule's dataset: the target dataset, or the source dataset of `pretrain`."""
    return config["dataset"] if dataset == "target" else config["pretrain"]["dataset"]


def dataset_key(dataset):
    """Where the config holds that dataset, as the split job's messages name its keys (under the host's key as a module
    given a part of the host's config: `fa.dataset`)."""
    return host_key("dataset" if dataset == "target" else "pretrain.dataset")


# How Fashion-MNIST is fetched where it is not at dataset.path, not which data: the split job reads them, but another
# download folder or timeout reruns nothing (the same files come from either).
DATASET_FETCH_KEYS = ("download_dir", "download_timeout_s")


def plain_path(path):
    """A path in its plain form: `data/`, `data//` and `./data` are `data`, `//srv/data` is `/srv/data` (POSIX leaves
    two leading slashes to the system, and Linux reads them as one; Python keeps them); `..` is kept, as a link
    makes it another folder."""
    plain = str(PurePath(path))
    leading = len(plain) - len(plain.lstrip(os.sep))
    return plain[leading - 1:] if leading > 1 else plain


def split_dataset_config(dataset):
    """The dataset config the split job reads: all but `watch`, which is Snakemake's (dataset_state), and the
    fetch keys (split_dataset_fetch); its path in its plain form (plain_path: the same folder written another way
    reruns nothing)."""
    cfg = {k: v for k, v in dataset_config(dataset).items() if k != "watch" and k not in DATASET_FETCH_KEYS}
    if isinstance(cfg.get("path"), str) and cfg["path"]:
        cfg["path"] = plain_path(cfg["path"])
    return cfg


def download_dir(cfg):
    """Where Fashion-MNIST missing at dataset.path is downloaded to: dataset.download_dir, below a module's `prefix:`
    where relative, as every file the rules make."""
    folder = cfg.get("download_dir", "resources/datasets")
    return folder if os.path.isabs(folder) else output_path(folder)


def split_dataset_fetch(dataset):
    cfg = dataset_config(dataset)
    return NotARerunTrigger(as_json({**{k: v for k, v in cfg.items() if k in DATASET_FETCH_KEYS},
                                     "download_dir": download_dir(cfg)}))


# What Snakemake watches of a dataset, so that its split reruns when the data changes: a CSV manifest
# is an input (its text); the rest is a param, a digest of the tree's folders (and with `watch: files`
# of every image file's size and modification time), so that thousands of files are not listed as
# inputs in every job line (finetune.watch). A path that does not exist is left to the split job, whose
# message names the key.


def dataset_inputs(wildcards):
    """A CSV manifest (its text counts), or the folder or manifest one of the host's rules makes (as a module: the
    split waits for it). `local`: a user's path is read where written, a module's prefix: or not."""
    cfg = dataset_config(wildcards.dataset)
    if made_by_a_host_rule(cfg.get("path")):  # as the rule's output matched it (made_by_a_rule): /abs/data is data
        return [local(resolved(cfg["path"]))]
    return [local(plain_path(cfg["path"]))] if cfg["format"] == "csv" and Path(cfg["path"]).is_file() else []


def dataset_state(wildcards):
    cfg = dataset_config(wildcards.dataset)
    if made_by_a_host_rule(cfg.get("path")):  # read when the job starts, once made; not the walk done at start
        return dataset_walk(cfg)[0] if os.path.lexists(cfg["path"]) else "to be made"
    return watched_state(cfg)


def decoded_data_state(wildcards):
    """The state of the dataset's images, compared between runs as the split's is (dataset_state, the same digest with
    `watch: folders` or `files`, so that turning `files` on or off reruns nothing where no image changed): an image
    overwritten in place under its name leaves the split file as it was (its paths and labels), so where the split ran
    alone (`snakemake resources/splits/target.csv`, `--until split`, a run stopped between the two), nothing else would
    tell decode that the pixels changed. The price: after a split made alone, any change it saw decodes again (and
    retrains, the decoded file being compared by time), one that left the split file as it was too (an image added
    past a max_train_per_class cap). A CSV manifest's images in another order are the same images. Not compared (a
    NotARerunTrigger) for a dataset the host makes, whose state is read when the split starts."""
    cfg = dataset_config(wildcards.dataset)
    if made_by_a_host_rule(cfg.get("path")):
        return NotARerunTrigger("")
    if cfg["format"] == "csv":  # once per run of Snakemake: each image size's decode asks
        watch = cfg.get("watch", "folders")
        if (cfg["path"], watch) not in _LISTED_ANY_ORDER:
            _LISTED_ANY_ORDER[cfg["path"], watch] = listed_files_state(cfg["path"], watch, in_order=False)
        return _LISTED_ANY_ORDER[cfg["path"], watch]
    return watched_state(cfg)


_LISTED_ANY_ORDER = {}
_WATCHED = {}


def watched_state(cfg):
    """finetune.watch.dataset_state of a dataset config, once per run of Snakemake: the check at start and the split's
    params ask for the same state, which with `watch: files` stats every image file."""
    return _dataset_walk(cfg)[0]


def unread_image_formats(cfg):
    """The files of a camera's or phone's image format that the split does not read (.heic, .dng, ...) in an
    ImageFolder, per extension, from the same walk as its state (finetune.watch.dataset_walk)."""
    return _dataset_walk(cfg)[1]


def _dataset_walk(cfg):
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in _WATCHED:
        _WATCHED[key] = dataset_walk(cfg)
    return _WATCHED[key]


def weights_inputs(wildcards):
    """The weights rule's inputs: the published `pretrain` model is one only with weights.source: pretrain; the
    file of weights.source: path is one, so that a file replaced at that path reruns the weights and what follows."""
    inputs = {"script": script("weights"), "modules": package_modules("weights")}
    if config["weights"]["source"] == "pretrain":
        inputs |= {"pretrained_weights": rules.pretrain.output.weights, "pretrained_info": rules.pretrain.output.info}
    if config["weights"]["source"] == "path":  # the file itself: the path written another way, or a link to it, is it
        inputs["weights_file"] = local(resolved(config["weights"]["path"]))
    return inputs


def resolved(path):
    """A file as itself: links resolved, relative to the working directory where it lies below it (a project folder
    moved or renamed is the same files, as_input), else absolute."""
    return below_workdir(path) or str(Path(path).resolve())


class NotARerunTrigger:
    """A param Snakemake passes on to the job's command but does not compare between runs (it compares only
    the values it can represent: texts, numbers, lists, ...), for settings that cannot change the outputs."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


# How the weights are fetched, not which: the file is pinned by weights.sha256 (required with a url; with a
# torchvision mirror, the sha256 or torchvision's hash prefix), so a longer timeout or another mirror of the
# same file reruns nothing.
WEIGHTS_FETCH_KEYS = ("timeout_s", "mirror", "url")


def weights_file_state():
    """With weights.source: path, the file there (symlinks resolved) by inode, size and time: another file at the
    path reruns the weights even where it is older than their outputs (a symlink switched back to an older
    checkpoint), which the file as an input alone would not."""
    if config["weights"]["source"] != "path":
        return ""
    try:
        stat = os.stat(config["weights"]["path"])
    except OSError:
        return "missing"
    return f"{resolved(config['weights']['path'])} {stat.st_ino} {stat.st_size} {stat.st_mtime_ns}"


# weights.preprocessing's keys left out, as the schema describes them (finetune.images.Preprocessing reads them so):
# written or not, the same preprocessing.
PREPROCESSING_DEFAULTS = {"interpolation": "bilinear", "channels": "RGB"}


def weights_identity():
    """The weights job's config but how they are fetched: what fixes the weights (a param: when it changes, the job
    runs again). The same weights written in other words are the same: torchvision's alias (`DEFAULT`) as the member
    it names, its weights.arch (only a check, made at start) left out, the preprocessing's filter and channels
    written as their defaults or not."""
    weights = {k: v for k, v in config["weights"].items() if k not in WEIGHTS_FETCH_KEYS}
    if weights["source"] == "torchvision":
        weights["torchvision"] = torchvision_weights_member(weights["torchvision"])
        weights.pop("arch", None)  # passed with the fetch keys (weights_fetch): the job checks it too
    if isinstance(weights.get("preprocessing"), dict):
        weights["preprocessing"] = {**PREPROCESSING_DEFAULTS, **weights["preprocessing"]}
    if weights.get("sha256"):
        weights["sha256"] = str(weights["sha256"]).lower()  # hex digits: one hash in either case
    if weights["source"] == "path":  # the file is pinned by its state (weights_file_state), however the path is written
        weights.pop("path")
    return as_json(weights)


def weights_fetch():
    """How the weights are fetched, and with torchvision's their weights.arch where written: a check, made at start
    and again by the job (where torchvision's source could not be read at start), that does not fix the weights."""
    fetch = {k: v for k, v in config["weights"].items() if k in WEIGHTS_FETCH_KEYS}
    if config["weights"]["source"] == "path":  # as written, for the job's messages and manifest: weights_identity
        fetch["path"] = config["weights"]["path"]
    if config["weights"]["source"] == "torchvision" and config["weights"].get("arch"):
        fetch["arch"] = config["weights"]["arch"]
    return NotARerunTrigger(as_json(fetch))


def scratch_from_source(wildcards):
    """A scratch run with weights from pretrain: built from the source's decoded images' record, not the weights."""
    return not experiment_config(wildcards.experiment)["pretrained"] and config["weights"]["source"] == "pretrain"


def scratch_from_config(wildcards):
    """A scratch run with weights from a url or a file: built from what the config gives those weights (rule
    scratch_manifest), not from the weights job's manifest."""
    return not experiment_config(wildcards.experiment)["pretrained"] and config["weights"]["source"] in ("url", "path")


def scratch_identity():
    """What a scratch run takes of the weights config (the scratch_manifest rule's param), the architecture and
    preprocessing, its filter and channels written as their defaults or not."""
    weights = config["weights"]
    if weights["source"] not in ("url", "path"):
        return ""
    return as_json({"arch": weights["arch"],  # not the source: the same from a url or a file
                    "preprocessing": {**PREPROCESSING_DEFAULTS, **(weights.get("preprocessing") or {})}})


def weights_used():
    """Whether a run builds its model from the weights job's output: not where every run is a scratch run from the
    source's record or the config (then neither pretrain nor the weights job has a run to serve)."""
    return any(not (scratch_from_source(run) or scratch_from_config(run))
               for run in (SimpleNamespace(experiment=name) for name in EXPERIMENTS))


# `pretrain.train` trains the source model, which only a pretrained run starts from: where every run is a scratch run,
# say so rather than leave it silently unused.
if (config["weights"]["source"] == "pretrain" and isinstance(_written.get("pretrain"), dict)
        and "train" in _written["pretrain"] and not weights_used()):
    say("pretrain.train: not used: every experiment run is pretrained: false, so no source model is trained "
        "(pretrain.dataset and pretrain.image_size still give the scratch runs their mean and std)")


def run_weights_inputs(wildcards):
    """What a train or lr_find job builds its model from: the weights and their manifest; for a scratch run with
    weights from pretrain, the source's decoded images' record instead (the mean and std pretrain publishes, and
    none of pretrain's training: a change of pretrain.train reruns no scratch run); with weights from a url or a file,
    the architecture and preprocessing the config gives them (the scratch_manifest rule; other weights there retrain no
    scratch run). A scratch run with torchvision's weights reads their manifest alone, never the weights file: a
    weights.pth rewritten with the same bytes (newer, and too large for Snakemake's checksum) retrained it."""
    if scratch_from_source(wildcards):
        return {"source_info": source_decoded()["decoded_info"]}
    if scratch_from_config(wildcards):
        return {"manifest": rules.scratch_manifest.output.manifest}
    if not experiment_config(wildcards.experiment)["pretrained"]:
        return {"manifest": rules.weights.output.manifest}
    return {"manifest": rules.weights.output.manifest, "weights": rules.weights.output.weights}


def run_weights_args(wildcards):
    """The arguments that say so (a param, compared between runs: a function of the wildcards alone, as Snakemake
    leaves a param made from the job's input out of that comparison): whether the run is pretrained, and for a
    scratch run from the source's record the architecture, which it gets nowhere else."""
    if scratch_from_source(wildcards):
        return f"--source-info {output_path(source_decoded()['decoded_info'])} --arch {config['weights']['arch']} --scratch"
    if scratch_from_config(wildcards):
        return f"--manifest {rules.scratch_manifest.output.manifest} --scratch"
    scratch = "" if experiment_config(wildcards.experiment)["pretrained"] else " --scratch"
    return f"--manifest {rules.weights.output.manifest}{scratch}"


def pretrained_args(wildcards, input):
    if config["weights"]["source"] != "pretrain":
        return ""
    return f"--pretrained-weights {input.pretrained_weights} --pretrained-info {input.pretrained_info}"


def run_labels(figure):
    """The labels of one run's figure (evaluate rule) in the report."""
    return {"experiment": "{experiment}", "seed": "{seed}", "figure": figure}


def predict_images(wildcards):
    if config["predict"]["images"] is None:
        raise refused("the predict rule needs predict.images (a folder of images or a CSV with a `path` column)")
    return config["predict"]["images"]


def predict_images_input(wildcards):
    """predict.images as an input where it is a file (an image, or a CSV list whose text counts), or where a rule of
    the host makes it (as a module: the predictions wait for that rule). A folder is otherwise watched by its state
    (predict_images_state), not its own modification time, which a .DS_Store changes."""
    images = predict_images(wildcards)
    if made_by_a_host_rule(images):
        return {"images": local(resolved(images))}
    return {} if os.path.isdir(images) else {"images": local(images)}


def predict_images_state(wildcards):
    """predict.images, a folder searched recursively or a CSV list: the state of its images
    (finetune.watch.images_state, at the depth predict.watch asks for) reruns the predictions when one
    is added, removed or renamed (with `watch: files`, also overwritten in place)."""
    images = predict_images(wildcards)
    if made_by_a_host_rule(images) and not os.path.lexists(images):
        return "to be made"
    return images_state(images, config["predict"]["watch"])


def predict_model_name():
    return "model.int8.onnx" if config["predict"]["model"] == "int8" else "model.onnx"


def predict_model(wildcards):
    return f"results/{wildcards.experiment}/seed{wildcards.seed}/{predict_model_name()}"


def selected_seeds():
    return SEEDS if config["predict"]["seed"] is None else [config["predict"]["seed"]]


def predict_selected_inputs(wildcards):
    """Every candidate run's train_info.json and history.csv (all seeds: runs are selected by their mean; a tie
    by the best epochs' val_loss) and models."""
    return {
        "infos": [f"results/{run}/seed{seed}/train_info.json" for run in PREDICT_CANDIDATES for seed in SEEDS],
        "histories": [f"results/{run}/seed{seed}/history.csv" for run in PREDICT_CANDIDATES for seed in SEEDS],
        "models": [f"results/{run}/seed{seed}/{predict_model_name()}" for run in PREDICT_CANDIDATES for seed in selected_seeds()],
    }


def weights_label():
    """The pretrained weights as the leaderboard (summary rule) names them."""
    weights = config["weights"]
    source = weights["source"]
    pin = str(weights.get("sha256") or "").lower()[:12]
    if source == "torchvision":
        member = torchvision_weights_member(weights["torchvision"])  # DEFAULT: the member it names
        # a sha256 pins a mirror's own file under the official name (docs/data-and-weights.md): not the weights the enum names
        return f"torchvision:{member}" + (f"@sha256:{pin}" if pin else "")
    if source == "url" and pin:
        # by the file (weights.sha256), not where it is fetched from: another url of the same pin fetches nothing
        return f"url:sha256:{pin}"
    if source == "path" and weights.get("path"):
        # the path (two checkpoints of one name in two folders are two weights), with its pin where given
        return f"path:{os.path.normpath(str(weights['path']))}" + (f"@sha256:{pin}" if pin else "")
    return source


def decoded(dataset, size):
    """The decode rule's outputs for a split file at an image size (None: the weights' own)."""
    folder = f"resources/decoded/{dataset}/{'native' if size is None else size}"
    return {"decoded_images": f"{folder}/images.npy", "decoded_info": f"{folder}/info.json"}


def target_decoded(experiment):
    return decoded("target", experiment_config(experiment)["image_size"])


def onnx_to_score(wildcards):
    """evaluate.onnx: the run's exported model, scored by evaluate besides the PyTorch checkpoint."""
    if not config["evaluate"]["onnx"]:
        return {}
    return {"onnx": f"results/{wildcards.experiment}/seed{wildcards.seed}/model.onnx"}


def source_decoded():
    return decoded("source", config["pretrain"]["image_size"])


def decode_sizes_key(size):
    """What fixes the sizes and filter of the target's decoded images, from the config (the decode job's
    --weights-sizes, a param: when it changes, the job reruns). The source's: pretrain.image_size alone. Weights
    pretrained here are resized and cropped to pretrain.image_size alike, so at another `size` it is not part of
    the key (the decode would rerun on a change of it, for the same pixels)."""
    weights = config["weights"]
    source = weights["source"]
    if source == "pretrain":  # resized and cropped alike: an image_size of its own fixes every pixel
        sizes = config["pretrain"]["image_size"] if size == "native" else int(size)
    elif source == "torchvision":
        sizes = torchvision_weights_member(weights["torchvision"])  # DEFAULT: the member it names
    else:  # url and path alike: the same file from a path or a url (and its preprocessing) is not decoded again
        source = "preprocessing"
        sizes = {k: v for k, v in {**PREPROCESSING_DEFAULTS, **(weights["preprocessing"] or {})}.items()
                 if k in ("resize_size", "crop_size", "interpolation")}
    return as_json({"weights": source, "sizes": sizes, "image_size": size})


# --------------------------------------------------------------------------- predict's run

# The test figures with test-time augmentation, the shipped model.onnx without (or the reverse): the leaderboard
# would score another model than the one deployed.
_evaluate_tta, _export_tta = config["evaluate"]["tta"], "hflip" if config["export"]["tta"] else "none"
if _evaluate_tta != _export_tta:
    say(f"evaluate.tta is {_evaluate_tta} but export.tta is {str(config['export']['tta']).lower()}: the test figures "
        f"(and the leaderboard) score the model with test-time augmentation {_evaluate_tta}, the exported model.onnx "
        f"runs with {_export_tta}; set both alike to score what is shipped (evaluate.onnx: true scores model.onnx "
        "too)")

# early_stopping_patience that no run of its length can reach: accepted (a patience in `train` serves its longer
# runs), but said, since it stops nothing there (its jobs get the default, configcheck.job_options: writing it reruns
# nothing). Two runs of one sweep that differ only in such a patience (or none) train the same run: refused by
# finetune.configcheck's same-run check, as a sweep of any other value that changes nothing.
def unreachable_patience_note(cfg, key, what):
    """`<key> 3 with epochs 4: <what> cannot stop early (...)` where ``cfg``'s patience stops nothing
    (configcheck.earliest_stop), else None."""
    stop = earliest_stop(cfg)
    if not stop:
        return None
    patience, (first, earliest) = cfg["early_stopping_patience"], stop
    return (f"{key} {patience} with epochs {cfg['epochs']}: {what} cannot stop early (the earliest stop is after epoch "
            f"{earliest}: {patience} epochs without a better {cfg['metric']} after epoch {first})")


for _run in EXPERIMENTS:
    _experiment = SWEEP_OF[_run]
    _key = train_key_names(_run).get("early_stopping_patience", "train.early_stopping_patience")
    _note = unreachable_patience_note(experiment_config(_run), _key.removeprefix(f"experiments.{_experiment}."),
                                      "the run")  # its own key (or its sweep's), or train's
    if _note:
        say(f"experiments.{_experiment}" + (f" (its run {_run})" if _experiment != _run else "") + f": {_note}")
# pretrain.train's too (its job gets none as well, configcheck.job_options), where a source model is trained
if config["weights"]["source"] == "pretrain" and weights_used():
    _note = unreachable_patience_note({**TRAIN_DEFAULTS, **config["pretrain"]["train"]},
                                      "pretrain.train.early_stopping_patience", "pretraining")
    if _note:
        say(_note)

# image_size written at the weights' own crop size: the same pixels as image_size null (the default), but the
# decoded images of another folder, made again, and a run of its own. Said, not refused: it trains correctly. Only
# beside a run at image_size null: with none, the images are decoded once all the same.
_weights_crop = (("pretrain.image_size", config["pretrain"]["image_size"]) if config["weights"]["source"] == "pretrain"
                 else ("weights.preprocessing.crop_size", (config["weights"].get("preprocessing") or {}).get("crop_size"))
                 if config["weights"]["source"] in ("url", "path") else (None, None))
_at_crop = [_run for _run in EXPERIMENTS if _weights_crop[1] is not None
            and experiment_config(_run)["image_size"] == _weights_crop[1]]
_at_native = [_run for _run in EXPERIMENTS if experiment_config(_run)["image_size"] is None]
if _at_crop and _at_native and workflow.is_main_process:
    say(f"image_size {_weights_crop[1]} in {', '.join(_at_crop)} is the weights' own crop size "
        f"({_weights_crop[0]}): those runs read images decoded again at that size, the same pixels as "
        f"{', '.join(_at_native[:3])}{', ...' if len(_at_native) > 3 else ''} read (image_size null, the default, the "
        "weights' own); with image_size null in every run they are decoded once")

# `--report` describes the results with the config given now: where that is not the config a run was trained with
# (another --configfile, or none in a folder of the user's own), the report's configuration would stand beside
# results it did not make. Said, run by run, before the report is made. Results older than the config, data or code
# (a sweep value added back, an image added: the leaderboard or the runs would be made again) are said too, from a
# dry run of the same command line. Not with --report-after-run: the workflow runs first.
# The rules with outputs marked for the report (`report(...)`): a missing one stops `--report`.
REPORT_RULES = ("evaluate", "lr_find", "summary")
_making_report = (workflow.is_main_process and has_option(ARGV, ("--report",))
                  and not has_option(ARGV, ("--report-after-run",)))
# What the notes below say, also written into the report (above its leaderboard), where the reader sees it.
REPORT_NOTES = []
# One dry run covers every instance where this workflow is a module of another, said once for all of them; each
# instance's report note counts the jobs of its own rules (`fb_split`, not `fa_split`), as its leaderboard shows its
# runs.
_pending = once("report dry run", lambda: pending_jobs(ARGV, os.getcwd(), REPORT_RULES)) if _making_report else None
if _making_report and not isinstance(_pending, str):  # predictions are not in the report, nor made into what it shows
    _pending = _pending._replace(jobs={_rule: _n for _rule, _n in _pending.jobs.items() if "predict" not in _rule})
    _ours = {workflow.modifier.modify_rulename(_rule) for _rule in RULE_MODULES}
    _jobs_here = {_rule: _n for _rule, _n in _pending.jobs.items() if _rule in _ours}
    if _jobs_here:
        REPORT_NOTES.append(f"``snakemake -n`` with the command line that made this report would run "
                            f"{sum(_jobs_here.values())} job(s) "
                            f"({', '.join(f'{_step} {_count}' for _step, _count in _jobs_here.items())}): the "
                            "results shown are older than the latest changes to the config, data or code, or were "
                            "left unfinished by a run that failed.")
if _making_report and first_time("report"):
    if isinstance(_pending, str):
        print(f"note: could not check whether the results the report shows are up to date: {_pending}; "
              "`snakemake -n` with the same options says", file=sys.stderr)
    elif _pending.jobs:
        print(f"note: `snakemake -n` with this command line would run {sum(_pending.jobs.values())} job(s) that make "
              f"what the report shows ({', '.join(f'{_step} {_count}' for _step, _count in _pending.jobs.items())}; "
              "predictions and `all` aside): "
              + (f"{sum(_pending.new.values())} of them make files that do not exist yet "
                 f"({', '.join(f'{_step} {_count}' for _step, _count in _pending.new.items())}), so the report cannot "
                 "be made before they have run (Snakemake stops on a file marked for the report that does not exist)"
                 if _pending.new else
                 "the report shows the results as they are, older than the latest changes to the config, data or "
                 "code, or left unfinished by a run that failed")
              + "; run the workflow first, or add --report-after-run to make the report once it has run",
              file=sys.stderr)
if _making_report:  # each instance's own runs
    _differ = {}
    for _experiment in EXPERIMENTS:
        for _seed in SEEDS:
            _info_file = output_path(f"results/{_experiment}/seed{_seed}/train_info.json")
            try:
                _recorded = json.loads(Path(_info_file).read_text())["options"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not made yet, or not readable: the report leaves it out or Snakemake names it
            _found = option_differences(train_options(_experiment, _seed), _recorded)
            if _found:
                _differ[_info_file] = _found
    if _differ:
        _shown = "; ".join(f"{f}: {', '.join(d[:4])}{' ...' if len(d) > 4 else ''}" for f, d in list(_differ.items())[:4])
        REPORT_NOTES.append(f"{len(_differ)} run(s) were trained with settings other than the configuration shown "
                            f"with this report ({_shown}{' ...' if len(_differ) > 4 else ''}).")
        say(f"the report's configuration is the config given now, and {len(_differ)} run(s) were trained with "
            f"other settings ({_shown}{' ...' if len(_differ) > 4 else ''}): make the report with the config the runs "
            "were made with (its --configfile), or run the workflow with this one first (`snakemake -n` lists what it "
            "would make again)")
    _not_configured = leaderboard_runs_not_configured(output_path("results/summary.csv"), EXPERIMENTS)
    if _not_configured:
        _named = f"{', '.join(_not_configured[:6])}{' ...' if len(_not_configured) > 6 else ''}"
        REPORT_NOTES.append(f"The leaderboard shows {len(_not_configured)} run(s) this configuration does not have "
                            f"({_named}): it was made with another configuration.")
        say(f"the leaderboard the report would show ({output_path('results/summary.csv')}) ranks "
            f"{len(_not_configured)} run(s) the config given now does not have ({_named}): it was made with another "
            "config; run the workflow with this one first, or make the report with the config that made it")

# Where the user runs the workflow (not again in each job Snakemake spawns, which may not see the same files), and
# not for a command that runs no job (`--unlock` after a crash, with the data's file system not mounted yet).
CHECK_FILES = workflow.is_main_process and not runs_no_job(ARGV)


def made_by_a_rule(path):
    """Of the workflow's rules read so far, the one that makes ``path`` (another module's, above this one in the
    host; one instance's weights as another's), or None."""
    target = resolved(path)
    for each in workflow.rules:
        try:
            if each.is_producer(target):
                return each
        except Exception:  # noqa: BLE001 - outputs that cannot be matched make nothing checked here
            continue
    return None


def _host_made_paths():
    """Of dataset.path, pretrain.dataset.path (ImageFolder or CSV) and predict.images, those that a rule of the host
    read above this module makes, with that rule's name: {plain path: rule name}. Looked up once, here, before this
    workflow's own rules are read: a host rule declared below the module is not seen (as for weights.path). A rule of
    wildcards whose pattern matches the path (`{name}.csv` from `{name}.tsv`) is not taken as making it: the file may
    be the user's own, checked at start as before (its check keeps the earlier predictions)."""
    paths = [config["predict"]["images"]]
    paths += [dataset_config(each)["path"] for each in ("target", "source") if (each == "target" or config["weights"][
        "source"] == "pretrain") and dataset_config(each)["format"] in ("imagefolder", "csv")]
    made = {}
    for path in paths:
        maker = made_by_a_rule(path) if _as_module and isinstance(path, str) and path else None
        if maker is not None and not maker.has_wildcards():
            made[plain_path(path)] = maker.name
    return made


HOST_MADE = _host_made_paths()


def made_by_a_host_rule(path):
    """The name of the host's rule that makes this dataset.path or predict.images (_host_made_paths), else None."""
    return HOST_MADE.get(plain_path(path)) if isinstance(path, str) and path else None


def made_by_the_host(path):
    """A dataset.path or predict.images that the host makes: the job that reads it checks its files, not the start,
    which would check what an earlier run of the host's rule left (one that failed the job, say), not what the rule
    makes again from its fixed source, and refuse every command, that rule's too. Said at each start while it is not
    there."""
    maker = made_by_a_host_rule(path)
    if maker is None:
        return False
    if not os.path.lexists(path):
        say(f"{path} is made in this run by {maker}, a rule of your workflow; its images are checked by the job that "
            "reads them, not at start")
    return True


if CHECK_FILES and config["weights"]["source"] == "path" and not os.path.isfile(config["weights"]["path"]) \
        and not (not os.path.lexists(config["weights"]["path"]) and made_by_a_rule(config["weights"]["path"])):
    _path = config["weights"]["path"]
    _what = ("is a folder, not a file" if os.path.isdir(_path) else
             f"is a symbolic link to {os.readlink(_path)}, which leads to no file (missing, or a loop of links)"
             if os.path.islink(_path) else "does not exist")
    raise refused(f"weights.path: {config['weights']['path']} {_what}{relative_to_workdir(_path)}: name the "
                  "weights file (.pth, .pt) to start from"
                  + (", or the output of a rule of the host read above this module (another module declared before "
                     "it)" if _as_module and _what == "does not exist" else ""))

def manifest_changed(manifest, classes, split_file):
    """Whether a CSV manifest's text or dataset.classes differ from those its split (``split_file``) was made from, as
    its report records them (a sha256 of the manifest: one read of it, no image looked at); no split or record: yes."""
    from finetune.fileio import sha256_of

    try:
        return split_report(split_file)["manifest"] != {"sha256": sha256_of(manifest), "classes": classes}
    except (OSError, KeyError):
        return True


def given_splits(cfg, split_file):
    """The splits (of val, test) an ImageFolder's split folders or an unchanged CSV manifest's split column give
    (the manifest's from its split's report); () where not known here."""
    if cfg["format"] == "imagefolder":
        from finetune.data import GIVEN_SPLITS, split_folders

        try:
            return tuple(split for split in GIVEN_SPLITS if split in split_folders(Path(cfg["path"])).values())
        except Exception:  # noqa: BLE001 - a layout the split job refuses, naming what is wrong
            return ()
    try:
        return tuple(split_report(split_file)["official_splits"])
    except (KeyError, TypeError):
        return ()


def split_report(split_file):
    """The report of the split made before ({} where there is none, or it does not read)."""
    try:
        found = json.loads(Path(split_file).with_suffix(".report.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def refused_at_start(problem, key, split_file, cfg=None):
    """The error that stops a run at start for a dataset's ``problem`` (its keys named under ``key``, where the config
    holds the dataset), saying what is kept: the split made before, where there is one (``cfg``, the dataset's
    config: of another dataset, said so)."""
    from finetune.data import named_under

    other = split_of_another_dataset(cfg, split_file) if cfg else None
    kept = ("no split was made from it" if not os.path.exists(split_file) else
            f"the split made before, of another dataset ({other}), is kept" if other else "the split made before is kept")
    # not `classes.: nothing`; the file that sets the key, where several give the config
    return WorkflowError(f"{with_sources([named_under(problem, key).rstrip('.')])[0]}: nothing ran, and {kept}")


def split_of_another_dataset(cfg, split_file):
    """The dataset (its path) the split made before was drawn from, where it is not ``cfg``'s (the config now names
    other images: its checks then say so, not "images new since the split"); None where it is, or is not known."""
    made_from = split_report(split_file).get("dataset")
    if not isinstance(made_from, dict) or not isinstance(made_from.get("path"), str):
        return None
    same = (made_from.get("format") == cfg["format"]
            and os.path.realpath(os.path.expanduser(made_from["path"])) == os.path.realpath(os.path.expanduser(str(cfg["path"]))))
    return None if same else made_from["path"]


# The state (finetune.watch) of each ImageFolder as it last passed the check at start, by folder, classes and watch
# depth: the check lists every image, so it runs only where the folder changed since.
IMAGE_FOLDERS_CHECKED = Path(".snakemake") / "finetune-checked-folders.json"
CHECKED_FOLDERS_KEPT = 16


def _image_folder_key(cfg, split_file):
    """The folder, classes and watch depth of a check, and the split it protects: two instances of the workflow in one
    host (`prefix:`) share .snakemake/, and one with no split yet passed the folder without the checks a split asks
    for (its images new since), so that the other's run then skipped them."""
    return json.dumps([os.path.realpath(cfg["path"]), cfg.get("classes"), cfg.get("watch", "folders"),
                       os.path.abspath(split_file)])


def _checked_folders():
    try:
        checked = json.loads(IMAGE_FOLDERS_CHECKED.read_text())
        return checked if isinstance(checked, dict) else {}
    except (OSError, ValueError):
        return {}


def image_folder_unchecked(cfg, split_file):
    """An ImageFolder's state where it changed since it last passed the check at start (or never passed it here);
    None where it did not."""
    state = watched_state(cfg)
    return None if _checked_folders().get(_image_folder_key(cfg, split_file)) == state else state


def image_folder_checked(cfg, split_file, state):
    """Record that the ImageFolder, in ``state``, passed (a record not written only means the check runs again)."""
    from finetune.errors import FinetuneError
    from finetune.fileio import atomic_path

    try:
        IMAGE_FOLDERS_CHECKED.parent.mkdir(exist_ok=True)
        # the last few folders (and classes, watch, split) checked: the others looked at again
        key = _image_folder_key(cfg, split_file)
        kept = [(k, v) for k, v in _checked_folders().items() if k != key][-(CHECKED_FOLDERS_KEPT - 1):]
        with atomic_path(IMAGE_FOLDERS_CHECKED) as tmp:
            Path(tmp).write_text(json.dumps({**dict(kept), key: state}))
    except (OSError, FinetuneError):
        pass


def refuse_missing_dataset(key, cfg, split_file):
    """An ImageFolder or CSV manifest missing (moved away, a file system not mounted) stops the run here: the split job
    would fail on it, and Snakemake would remove its split file, so that the next run, with the data back, retrained
    everything from a split the same as before. Where no split was made yet, there is nothing to keep: said so."""
    path, folder = cfg["path"], cfg["format"] == "imagefolder"
    what = ("does not exist" if not os.path.exists(path) else
            "is empty (a file system not mounted leaves its mount point so)" if folder and os.path.isdir(path)
            and not any(os.scandir(path)) else
            "is a file, not a folder" if folder and not os.path.isdir(path) else
            "is a folder, not a CSV file" if not folder and os.path.isdir(path) else None)
    other_format = what in ("is a folder, not a CSV file", "is a file, not a folder") and (
        not folder or path.lower().endswith((".csv", ".txt")))  # a path of the other format's kind: that format meant
    if what:
        raise WorkflowError(
            f"{key}.path: {path} ({cfg['format']}) {what}{relative_to_workdir(path)}: "
            f"nothing ran, and {'what was made from it is kept' if os.path.exists(split_file) else 'no split was made'}; "
            + (f"set {key}.format: {'csv' if folder else 'imagefolder'} for it, or name " if other_format
               else "mount it or put it back, or name ")
            + f"{'the folder of class folders' if folder else 'the CSV manifest'}"
            + (", or make it with a rule of your workflow declared above this module" if _as_module
               and not os.path.lexists(path) else ""))


def refuse_bad_new_images(key, cfg, split_file, listing):
    """Images added to a dataset since its split was made (finetune.startchecks.new_images) that do not decode, or that
    are a copy of an image of another class, stop the run here, as the split job would stop, but before Snakemake
    removes the split made before: with the files deleted, the same images give the same split, and nothing after
    it runs again."""
    if cfg.get("on_bad_image") == "skip":
        return
    from finetune.data import DataError, named_under

    try:
        paths = new_dataset_images(cfg, split_file, listing)
        other = split_of_another_dataset(cfg, split_file)
        if len(paths) >= SAY_OPENING_FROM:
            which = (f"its {len(paths)} images (the split made before is of another dataset, {other})" if other else
                     f"the {len(paths)} images new since the split was made")
            say(f"{key}.path: opening {which}, before any job (one that cannot be read would fail the split job, "
                "which removes the split made before)")
        problem = new_images_problem(cfg, paths, config["threads"]["data"], listing, other_dataset=other)
    except (DataError, OSError):  # the split job says what is wrong
        return
    if problem:
        raise WorkflowError(named_under(problem, key))


def refuse_new_faults(key, cfg, split_file):
    """What the split job would refuse of a dataset changed since its split was made, checked here on one listing of
    its chosen classes, before Snakemake removes the split made before (with the fault put right, nothing reruns): a
    class with too few images for the splits drawn from it (a folder of one photo added, a manifest's rows of a new
    label), and the images new since the split that do not decode or are a copy of an image of another class. With no
    split made yet, the split job says so (nothing is lost)."""
    from finetune.data import DataError

    if not os.path.exists(split_file):
        return
    try:
        listing = chosen_listing(cfg)
    except (DataError, OSError):  # the split job says what is wrong
        return
    problem = too_few_to_split_problem(cfg, listing)
    if problem:
        raise refused_at_start(problem, key, split_file, cfg)
    refuse_bad_new_images(key, cfg, split_file, listing)


def mac_archive_hint(path, problem):
    """Where a refusal names a folder __MACOSX: what it is (the AppleDouble files a zip made on macOS carries, one
    ._<name> per file, which unzip writes as folders beside the classes) and that deleting it is the fix."""
    found = sorted({str(p) for p in Path(path).glob("**/__MACOSX") if p.is_dir()}) if "__MACOSX" in problem else []
    if not found:
        return ""
    return (f"; {', '.join(found[:3])}{', ...' if len(found) > 3 else ''} is no class but the metadata a zip made on "
            "macOS carries (delete it, or unzip with -x '__MACOSX/*')")


def check_image_folder_at_start(key, cfg, split_file):
    """What the split job checks of an ImageFolder without opening an image, checked where the folder (or its
    dataset.classes) changed since it last passed: an image or a class folder added, removed, renamed (a class of
    dataset.classes misspelt, an empty class folder, a layout mixing split and class folders, a class written two ways,
    names not UTF-8), and the images new since the split was made opened; then the notes on its layout, and
    dataset.classes' indices that moved since the split."""
    from finetune.data import DataError, check_image_folder, image_folder_classes, image_folder_notes, moved_indices_line

    state = image_folder_unchecked(cfg, split_file)
    if state is not None:
        try:
            check_image_folder(cfg["path"], cfg.get("classes"))
        except (DataError, OSError) as exc:
            raise refused_at_start(str(exc) + mac_archive_hint(cfg["path"], str(exc)), key, split_file, cfg)
        refuse_new_faults(key, cfg, split_file)
        image_folder_checked(cfg, split_file, state)
    # split folders named otherwise (seg_train/, seg_test/) train a classifier of those names: said here, where it is
    # seen, not only in the split job's log (from the folder names, and each class folder's own files)
    for note in image_folder_notes(cfg["path"]):
        say(f"{key}.path: {note}")
    formats = unread_image_formats(cfg)
    if formats:  # said at each start while they are there: the split job's log alone said so
        from finetune.images import IMAGE_EXTENSIONS

        listed = ", ".join(f"{count} {extension}" for extension, count in formats.items())
        say(f"{key}.path: {sum(formats.values())} file(s) of an image format not read here ({listed}) are left out "
            f"of the dataset: to train on them, convert them to one read here ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        spaced = spacing_note(image_folder_classes(cfg["path"]))
    except (DataError, OSError):  # a folder the checks above refuse, saying why
        spaced = None
    if spaced:
        say(f"{key}.path: {spaced}")
    if cfg.get("classes") and os.path.exists(split_file):
        line = moved_indices_line(key, cfg, split_report(split_file))
        if line:
            raise refused_at_start(line, key, split_file, cfg)


def check_manifest_at_start(key, cfg, split_file):
    """A manifest (or dataset.classes) other than its split was made from: its rows are checked here (a missing file, a
    row twice, a split value or label misspelt, a class of dataset.classes it lacks) rather than by the split job, whose
    failure would remove the split, so that the run after the fix trained everything again, and the images of rows new
    since the split was made are opened (the split job opens every image). Returned: the splits its split column
    gives (as given_splits), and whether it changed (no split yet counts)."""
    if not manifest_changed(cfg["path"], cfg.get("classes"), split_file):
        return given_splits(cfg, split_file), False
    from finetune.data import DataError, check_csv_manifest
    from finetune.startchecks import other_unicode_form_hint

    try:
        given = check_csv_manifest(cfg["path"], cfg.get("classes"))
    except DataError as exc:
        raise refused_at_start(f"{exc}{other_unicode_form_hint(cfg['path'])}", key, split_file, cfg)
    refuse_new_faults(key, cfg, split_file)
    return given, True


def host_key(key):
    """A key of this workflow's config as the user wrote it: under the host's key as a module given a part of the host's
    config (`config: config["fb"]`: `fb.dataset`), as it is otherwise."""
    return f"{_module_key}.{key}" if _as_module and _module_key else key


def refuse_fashion_mnist_nowhere(key, cfg, split_file):
    """Fashion-MNIST at another dataset.path than the split made before was made from, its files neither there nor in
    dataset.download_dir: the split job would download them (torchvision, over the network) after Snakemake removed
    that split, and a failed download (a mistyped path, no network) left it gone, every run made from it to train
    again once the path was put right. Refused here; a first split (none made yet) goes on to the download."""
    made = split_report(split_file)
    if not made or report_of_dataset(made, cfg["path"]):
        return
    from finetune.data import FASHION_MNIST_FILES, _find_fashion_mnist_file

    raw = Path(download_dir(cfg)) / "FashionMNIST" / "raw"
    missing = [stem for stem in FASHION_MNIST_FILES.values()
               if not _find_fashion_mnist_file(Path(cfg["path"]), stem) and not _find_fashion_mnist_file(raw, stem)]
    if missing:
        what = (f"holds no Fashion-MNIST files ({', '.join(missing)} missing)" if os.path.isdir(cfg["path"]) else
                "is a file, not a folder" if os.path.exists(cfg["path"]) else "does not exist")
        raise refused(
            f"{key}.path: {cfg['path']} {what}{relative_to_workdir(cfg['path'])}, and {key}.download_dir "
            f"({raw}) holds none of the files either; the split made before was made from "
            f"{(made.get('dataset') or {}).get('path')}: nothing ran, and that split and the runs made from it are kept. "
            f"Point {key}.path at the folder of the four *-ubyte.gz files (`apt-get install dataset-fashion-mnist` puts "
            f"them in /usr/share/datasets/fashion-mnist); to download them instead (torchvision, over the network), remove "
            f"{split_file} first")


def check_dataset_at_start(key, dataset):
    """The checks at start of an ImageFolder's or a CSV manifest's files (``key`` where the config holds it): what
    the split job would fail on, refused before Snakemake removes the split made before. As a module, its keys are
    named as the host's config holds them, and a refusal names the module (two instances may read two folders)."""
    cfg = dataset_config(dataset)
    named = host_key(key)
    split_file = output_path(f"resources/splits/{dataset}.csv")
    if cfg["format"] in ("imagefolder", "csv") and made_by_the_host(cfg["path"]):
        return
    if cfg["format"] == "fashion-mnist":
        refuse_fashion_mnist_nowhere(named, cfg, split_file)
    if cfg["format"] not in ("imagefolder", "csv"):
        return
    try:
        refuse_missing_dataset(named, cfg, split_file)
        if cfg["format"] == "imagefolder":
            check_image_folder_at_start(named, cfg, split_file)
            given, manifest_new = given_splits(cfg, split_file), False
        else:
            given, manifest_new = check_manifest_at_start(named, cfg, split_file)
    except WorkflowError as exc:
        raise (refused(exc.args[0]) if INSTANCE and exc.args else exc) from None
    made = report_of_dataset(split_report(split_file), cfg["path"])
    made_path = str(Path(split_file).with_suffix(".report.json"))
    if cfg.get("on_bad_image") == "skip":  # said at each start while the split leaves them out: its log alone said so
        skipped = skipped_images_note(made, made_path, cfg.get("watch", "folders"))
        if skipped:
            say(f"{named}.{skipped}")
    outside = outside_class_images_note(cfg["path"], made_path) if cfg["format"] == "imagefolder" else None
    if outside:
        say(f"{named}: {outside}")
    # every class (a split's report holds those chosen): a manifest read where dataset.classes holds a number
    indexed = any(isinstance(item, int) and not isinstance(item, bool) for item in cfg.get("classes") or [])
    names = classes_at_start(cfg, made, manifest_new or indexed)
    # the config files read again only where dataset.classes holds a number: each item as written (010, not 8)
    texts = written_texts([*(["config/config.yaml"] if _merged_over_the_demo else []), *_config_files], ARGV,
                          (*(_module_path or []), *key.split("."), "classes")) if indexed else None
    ambiguous = ambiguous_class_numbers_problem(names, cfg.get("classes"), named, texts)
    if ambiguous:
        raise refused(f"{ambiguous}: nothing ran")
    numbers = cfg.get("classes") is None and number_classes_note(names, None, named)  # each start (no split yet too)
    if numbers:
        say(f"{named}: {numbers}")
    # A fraction written for a split the dataset gives itself (its val/ or test/ folder, its manifest's split column)
    # would be ignored by the split job (its log said so), and editing it reran the split and all after it.
    if _fractions_written.get(key) and given:
        from finetune.data import given_splits_line

        line = given_splits_line(named, cfg, _fractions_written[key], given)
        if line:
            raise refused(f"{line}: nothing ran")


if CHECK_FILES:
    check_dataset_at_start("dataset", "target")
    if config["weights"]["source"] == "pretrain":
        check_dataset_at_start("pretrain.dataset", "source")
# A class number written with a leading zero that the checks above, which know the classes' names, did not refuse
# (`classes: [6, 010]` over Fashion-MNIST or folders not named by digits): YAML read it as octal, another index.
_misread = [f"{file}: {problem}" for file in {os.path.abspath(f): f for f in _checked_files}.values()
            for problem in misread_numbers(file, classes=True)]
_misread += [f"--config: {problem}" for problem in command_line_misread_numbers(ARGV, classes=True)]
if _misread:
    raise WorkflowError("a class number in a config file, or in --config, that YAML reads otherwise than written "
                        "(nothing ran):\n" + "\n".join(_misread))


# A split file cut short or edited since its job wrote it (a full disk, a copy, an editor): the jobs after it would read
# it without a word and evaluate on fewer test images; a model.onnx cut short since its export checked its parity,
# Snakemake would keep as done. Checked where the command line runs the DAG (or shows what it would run), each file
# once per state (modification time and size); --touch declares the files as they are made (their sizes kept).
FILES_CHECKED = Path(".snakemake") / "finetune-checked-files.json"
FILES_CHECKED_KEPT = 256


def read_files_checked():
    """{absolute path: [[mtime_ns, size] per file] or {"touched": [size per file]}} of the files found sound before,
    those no longer there left out."""
    try:
        checked = json.loads(FILES_CHECKED.read_text())
    except (OSError, ValueError):
        return {}
    return {key: state for key, state in checked.items() if os.path.exists(key)} if isinstance(checked, dict) else {}


def write_files_checked(checked, kept):
    """The newest ``kept`` entries of ``checked`` (its order: the last found sound last)."""
    try:
        FILES_CHECKED.parent.mkdir(exist_ok=True)
        FILES_CHECKED.write_text(json.dumps(dict(list(checked.items())[-kept:])))
    except OSError:  # a read-only working directory: checked again next time
        pass


def file_states(files):
    """[[mtime_ns, size] per file]; None where one is missing (its job makes it again)."""
    try:
        return [[os.stat(each).st_mtime_ns, os.stat(each).st_size] for each in files]
    except OSError:
        return None


def refuse_damaged_files(checks, command):
    """``checks``: (rule, file, the files whose state it is checked in, check -> problem or None). Refused at start,
    naming each file that fails its check and the command that makes it again; a file passing is not read again until
    one of its files changes. Under --touch the files are declared sound as they are."""
    checked = read_files_checked()
    problems, splits = [], False
    for rule, path, files, check in checks:
        state = file_states(files)
        key = os.path.abspath(path)
        if state is None or forced_to_run(command, workflow.modifier.modify_rulename(rule), path):
            continue
        known = checked.pop(key, None)
        if command is not None and command.touch:  # `--touch -n` touches nothing, and declares nothing sound
            if not workflow.output_settings.dryrun:
                checked[key] = {"touched": [size for _, size in state]}
            elif known is not None:
                checked[key] = known
            continue
        if known == state or known == {"touched": [size for _, size in state]}:
            checked[key] = state
            continue
        problem = check(path)
        if problem:
            problems.append(f"{problem}: make it again with --forcerun {path}")
            splits = splits or rule == "split"
        else:
            checked[key] = state
    if problems and not COMMAND_KNOWN:
        for problem in problems:
            say(f"{problem} (a file made before, cut short or changed since its job wrote it: started from Python, "
                "this run's --forcerun and targets are not known here, so it is not refused; every job after it "
                "reruns once it is made again)")
    elif problems:
        raise refused("a file made before was cut short or changed since its job wrote it: nothing ran, and "
                      "nothing was removed\n" + "\n".join(problems) + "\n(every job after it reruns" +
                      ("; if you edited a split on purpose, give your split as the split column of a CSV "
                       "manifest, dataset.format: csv)" if splits else ")"))
    write_files_checked(checked, max(FILES_CHECKED_KEPT, 2 * len(checks)))


WEIGHTS_PUBLISHED = ("resources/weights/weights.pth", "resources/weights/manifest.json")
RUN_RECORDS = {"metrics.json": "evaluate", "train_info.json": "train"}  # a run's JSON records, and the rule writing each


def damage_check(path):
    """The check of :func:`refuse_damaged_files` for a model.pt, the published weights, decoded images or a run's JSON
    records at ``path`` (rule, path, the files its state is read from, check); None for any other file."""
    weights, manifest = (os.path.normpath(output_path(each)) for each in WEIGHTS_PUBLISHED)
    under = lambda folder: os.path.normpath(path).startswith(os.path.normpath(output_path(folder)) + os.sep)
    if os.path.normpath(path) == weights:
        return "weights", path, [path, manifest], lambda file: damaged_weights_problem(file, manifest)
    if os.path.basename(path) == "model.pt" and under("results"):  # not a weights.path of the user's so named
        return "train", path, [path], damaged_checkpoint_problem
    if os.path.basename(path) == "images.npy" and under("resources/decoded"):
        info = os.path.join(os.path.dirname(path), "info.json")
        return "decode", path, [path, info], lambda file: damaged_decoded_problem(file, info)
    if os.path.basename(path) in RUN_RECORDS and under("results"):
        return RUN_RECORDS[os.path.basename(path)], path, [path], damaged_json_problem
    return None


def refuse_damaged_inputs():
    """At the start of a run that runs jobs: the model.pt, published weights and decoded images that a job of the DAG
    reads and no job of it makes again, checked as at parse time (:func:`refuse_damaged_files`, each file once per
    state). The check there leaves out what the targets do not name or a --forcerun, --until or --omit-from may make
    again; a target built from one of them (`snakemake results/<run>/metrics.json` after the run's model.pt was cut
    short) then ran its evaluate job, which failed only once Snakemake had removed its outputs."""
    if not CHECK_FILES or _COMMAND is None:
        return
    jobs = list(workflow.dag.needrun_jobs())
    made = {os.path.normpath(str(each)) for job in jobs for each in job.output}
    read = dict.fromkeys(os.path.normpath(str(each)) for job in jobs for each in job.input)
    checks = [damage_check(path) for path in read if path not in made]
    refuse_damaged_files([check for check in checks if check], _COMMAND)


def onnx_checked(command, path):
    """Whether the model.onnx at ``path`` is checked at start: not where the command line may export it again without
    naming it (--forcerun of a rule before it, --until, --omit-from), nor where its targets do not ask for it."""
    if reruns_more_than_named(command):
        return False
    targets = {os.path.normpath(each) for each in (command.targets or ())} if command is not None else set()
    return not targets or "all" in targets or os.path.normpath(path) in targets


_COMMAND = snakemake_command_line(ARGV, PROFILE_FILES) if CHECK_FILES else None
if CHECK_FILES and (runs_the_dag(_COMMAND) or (_COMMAND is not None and _COMMAND.touch)):
    _splits = ["target", *(["source"] if config["weights"]["source"] == "pretrain" else [])]
    _splits = [output_path(f"resources/splits/{each}.csv") for each in _splits
               if not split_made_again(output_path(f"resources/splits/{each}.csv"), split_dataset_config(each))]
    # under --touch, those its targets name (or all, with none): a touch of another run's model declares this one
    # sound no more than it touches it
    _onnx = [each for each in (output_path(f"results/{run}/model.onnx") for run in RUNS)
             if onnx_checked(_COMMAND, each)]
    # model.pt, the published weights and the decoded images the same way: the jobs after them check them too, but
    # only once Snakemake has removed those jobs' outputs (a run's model.onnx and metrics.json, or its model.pt)
    _inputs = [*(output_path(f"results/{run}/model.pt") for run in RUNS),
               *([output_path(WEIGHTS_PUBLISHED[0])] if weights_used() else []),
               *(output_path(pair["decoded_images"])
                 for pair in [*(target_decoded(experiment) for experiment in EXPERIMENTS),
                              *([source_decoded()] if config["weights"]["source"] == "pretrain" else [])]),
               # a run's JSON records are checked as a run starts (refuse_damaged_inputs), where the summary reads
               # them: --touch declares them sound as they are here, as the other files
               *(output_path(f"results/{run}/{name}") for run in RUNS for name in RUN_RECORDS if _COMMAND.touch)]
    refuse_damaged_files([*(("split", each, [each, str(Path(each).with_suffix(".report.json"))], damaged_split_problem)
                            for each in _splits),
                          *(("export_onnx", each, [each], damaged_onnx_problem) for each in _onnx),
                          *(damage_check(each) for each in dict.fromkeys(_inputs) if onnx_checked(_COMMAND, each))],
                         _COMMAND)

def target_class_count():
    """How many classes the target model has, where known without reading images: dataset.classes as written,
    Fashion-MNIST's ten, or the classes of the split made before; None otherwise."""
    cfg = dataset_config("target")
    if cfg.get("classes"):
        return len(cfg["classes"])
    if cfg["format"] == "fashion-mnist":
        return 10
    classes = split_report(output_path("resources/splits/target.csv")).get("classes")
    return len(classes) if isinstance(classes, list) and classes else None


# A top_k written at or above the number of classes changes nothing the user sees (evaluate leaves top-k out, where it
# would be 1.0; predict lists every class): said at start rather than only in a job's log.
if CHECK_FILES:
    _n_classes = target_class_count()
    for _section, _too_many in (("evaluate", lambda k, n: k >= n), ("predict", lambda k, n: k > n)):
        _k = _top_k_written.get(_section)
        if _n_classes and _k is not None and _too_many(_k, _n_classes) and \
                (_section == "evaluate" or config["predict"]["images"] is not None):
            say(f"{_section}.top_k: {_k} with {_n_classes} classes: "
                + (f"each image lists all {_n_classes} classes" if _section == "predict" else
                   "top-k accuracy is left out of the metrics (it would be 1.0); set it below the number of classes"
                   if _n_classes > 2 else "top-k accuracy is left out of the metrics (it would be 1.0; with 2 "
                   "classes, top-1 accuracy is the only one)"))

# A phone's photos in predict.images (.heic) get no row: said at each start while they are there (the job's log alone
# said so, and adding them reruns nothing).
PREDICT_IMAGES_MADE = CHECK_FILES and config["predict"]["images"] is not None and made_by_the_host(
    config["predict"]["images"])
if CHECK_FILES and config["predict"]["images"] is not None and not PREDICT_IMAGES_MADE:
    _unread = unread_predict_images_note(config["predict"]["images"])
    if _unread:
        say(_unread)

# pretrain.dataset left as the schema gives it (all of Fashion-MNIST) under a target of Fashion-MNIST's classes, or one
# ImageFolder for both: the source model would be trained on the target's classes, from the images its splits are drawn
# from, and the transfer figures would not measure transfer.
if CHECK_FILES and config["weights"]["source"] == "pretrain":
    from finetune.data import shared_classes

    _shared = shared_classes(config["dataset"], config["pretrain"]["dataset"])
    if _shared:
        _held = ("its train and val images likely among them (both drawn from Fashion-MNIST's official train images; its "
                 "test images, the official test set, are not pretrained on)"
                 if config["dataset"]["format"] == "fashion-mnist" else "its test images possibly among them (each "
                 "dataset's split is drawn on its own)")
        say(f"pretrain.dataset.path and dataset.path are one dataset and share the class(es) {', '.join(map(repr, _shared))}: the "
            f"source model is pretrained on the target's classes, {_held}, so the transfer runs' figures do not "
            "measure transfer to new classes. Leave them out with pretrain.dataset.classes (the demo's config "
            "pretrains on classes 0-5 and fine-tunes on 6-9)")

# weights.url edited, weights.sha256 not: the pin says the file is the one fetched before, so nothing is fetched
# (a mirror of the same file); a user who meant other weights is told, rather than left with the earlier ones.
_manifest = output_path("resources/weights/manifest.json")
if CHECK_FILES and config["weights"]["source"] == "url" and os.path.isfile(_manifest):
    try:
        _fetched = json.loads(Path(_manifest).read_text())
    except (OSError, ValueError):
        _fetched = {}
    _fetched_url = (_fetched.get("source") or {}).get("url") if isinstance(_fetched, dict) else None
    if _fetched_url and _fetched_url != config["weights"]["url"] and \
            str(_fetched.get("sha256", "")).lower() == str(config["weights"]["sha256"]).lower():
        say(f"weights.url is {config['weights']['url']}, but weights.sha256 is that of the weights fetched from "
            f"{_fetched_url}: it pins the same file, so a change of url alone fetches nothing and trains nothing "
            "again; for other weights, set weights.sha256 to their file's")

# A file where the workflow makes a folder (`results/ft2` written by hand, a run's name then used as an experiment):
# Snakemake stopped on it with a traceback of its own (NotADirectoryError) before any job could say which path.
OUTPUT_FOLDERS = ["results/logs", "results/benchmarks", "results/lr_find", "results/predictions", "resources/splits",
                  "resources/decoded", "resources/weights", "resources/pretrain", "resources/features",
                  "resources/resume", *(f"results/{run}" for run in RUNS)]
if CHECK_FILES:
    _blocked = sorted({str(folder) for path in OUTPUT_FOLDERS for folder in (Path(output_path(path)),
                                                                        *Path(output_path(path)).parents)
                       if str(folder) != "." and os.path.lexists(folder) and not os.path.isdir(folder)})
    if _blocked:
        raise refused("\n".join(
            f"{folder}: a symbolic link to {os.readlink(folder)}, which does not exist (a file system not mounted?), where "
            f"the workflow writes its outputs: nothing ran; mount it, or point the link at a folder"
            if os.path.islink(folder) else
            f"{folder}: a file, not a folder, where the workflow writes its outputs (relative to the working directory "
            f"{os.getcwd()}): nothing ran; move it away" for folder in _blocked))


def predict_images_clash(images):
    """Why predict.images cannot be read beside this workflow's outputs, or None.

    A file under results/predictions/ (a run's predictions.csv, selection.json) is one the predict rules write: the
    job read what it replaced. Snakemake printed "CyclicGraphException ... Cyclic dependency on rule predict" and kept
    the old predictions ("Nothing to be done", exit 0), or, for predict_selected, removed them and selection.json and
    failed on "Missing files after 5 seconds". A folder holding the workflow's outputs (`.`, the working directory)
    classified its figures, and its predictions went stale whenever one was drawn again."""
    real = os.path.realpath(images)
    predictions = os.path.realpath(output_path("results/predictions"))
    if os.path.commonpath([real, predictions]) == predictions:
        return ("is under results/predictions/, where the predict rules write: the job would read the file it "
                "replaces; nothing ran, and the earlier predictions are kept. Copy the file out of results/predictions/ "
                "and name the copy (a list's `path` column is read relative to the list's folder)")
    within = next((folder for folder in OUTPUT_FOLDERS
                   if os.path.commonpath([os.path.realpath(output_path(folder)), real])
                   == os.path.realpath(output_path(folder))), None)
    if within and os.path.isdir(images):  # results/lr_find/<name>/: the workflow's figures, redrawn by its jobs
        return (f"is in the workflow's outputs ({within}/): their figures would be classified as images, and the "
                "predictions made again whenever one is drawn; nothing ran. Name the folder of your images")
    if not os.path.isdir(images):
        return None
    inside = sorted({folder.split("/")[0] for folder in OUTPUT_FOLDERS
                     if os.path.commonpath([os.path.realpath(output_path(folder)), real]) == real})
    if inside:
        return (f"holds the workflow's outputs ({' and '.join(f'{name}/' for name in inside)}): their figures would be "
                "classified as images, and the predictions made again whenever one is drawn; nothing ran. Name the "
                "folder of your images")
    return None


def yaml_scalar(value):
    """A config value as the config's YAML writes it: null, not Python's None."""
    return "null" if value is None else value


if PREDICT["images"] is not None:
    PREDICT_TARGET, PREDICT_CANDIDATES = predict_choice(PREDICT["experiment"], PREDICT["seed"])
    if SELECTED_PREDICTION_TARGETS and not PREDICT_CANDIDATES:  # nothing to select among: the job would start with an
        raise refused(  # empty --choose-from and stop on it
            f"{', '.join(SELECTED_PREDICTION_TARGETS)}: predict.experiment {yaml_scalar(PREDICT['experiment'])} with "
            f"predict.seed {yaml_scalar(PREDICT['seed'])} names one run, whose predictions are {PREDICT_TARGET}: "
            "nothing ran. Ask for that file, or set predict.seed: null (or predict.experiment to a sweep, or null) to predict with the run selected by "
            "validation metric")
    _problem = predict_images_clash(PREDICT["images"])
    if _problem:
        raise refused(with_sources([f"predict.images: {PREDICT['images']} {_problem}"])[0])
    if CHECK_FILES and not PREDICT_IMAGES_MADE and not os.path.exists(PREDICT["images"]):
        raise refused(with_sources([  # the demo's images are null: the key is the user's (a file, or --config)
            f"predict.images: {PREDICT['images']} does not exist{relative_to_workdir(PREDICT['images'])}: "
            "name a folder of images, one image file, or a CSV file with a `path` column, or set it to null"
            + (" (or make it with a rule of your workflow declared above this module)" if _as_module else "")])[0])
    # A folder without images (or a list without paths, or of which no image opens) stops a run that makes the
    # predictions (onstart), not the job, which would start by removing the earlier ones. Other targets (train, a
    # report) run: a dry run or one of them gets a note only.
    if CHECK_FILES and not PREDICT_IMAGES_MADE:
        from finetune.deploy import check_one_opens, list_images
        from finetune.errors import DataError

        try:
            check_one_opens(list_images(PREDICT["images"])[0], PREDICT["images"])
        except DataError as exc:
            PREDICT_PROBLEM = f"predict.images: {str(exc).removesuffix('; the earlier predictions are kept')}"
            if _as_module:  # a module's onstart is not run (Snakemake keeps the host's): refused here, as before
                raise refused(f"{PREDICT_PROBLEM}; the earlier predictions are kept") from None
            say(f"{PREDICT_PROBLEM}: a run that makes the predictions stops at start (the earlier ones are kept); "
                "other targets run. Set predict.images to null (--config 'predict={images: null}') to classify nothing")


# --------------------------------------------------------------------------- finished resume states



def intermediate_outputs():
    """What the target all asks for besides the results: every file the results are made from (splits, decoded images,
    weights, lr_find's suggestions, each run's model.pt, history.csv and train_info.json).

    A job that fails, or is stopped, leaves no output. Snakemake makes a missing file again only where something
    asked for needs it, so without these a failed train job (say, of new settings) would leave the results of the
    old ones standing, and the next run would end with "Nothing to be done" and those results as if current."""
    files = [path.format(dataset="target") for path in rules.split.output]
    used = weights_used()
    if used:
        files += [*rules.weights.output]
    if any(scratch_from_config(SimpleNamespace(experiment=name)) for name in EXPERIMENTS):
        files.append(rules.scratch_manifest.output.manifest)
    if config["weights"]["source"] == "pretrain":
        files += [path.format(dataset="source") for path in rules.split.output]
        files += [*source_decoded().values(), *(rules.pretrain.output if used else [])]
    for experiment in EXPERIMENTS:
        files += target_decoded(experiment).values()
        if lr_is_auto(experiment):
            files.append(LR_SUGGESTION.format(experiment=experiment))
    files += expand(list(rules.train.output), experiment=EXPERIMENTS, seed=SEEDS)
    return list(dict.fromkeys(files))


def side_outputs():
    """What the target all asks for besides the results and :func:`intermediate_outputs`: every other output of the jobs
    it runs (each run's figures, metrics.html, confusion_matrix.csv, the int8 model, the leaderboard's HTML and
    selected.json, predict's selection.json). Snakemake runs a job again only for a missing output something asks for,
    so that one deleted by hand stayed missing (`Nothing to be done`), and `--report` then failed on it. Not the range
    test's curve (lr_find.csv, .png): made again, its suggestion.json would be new, and every run of `lr: auto` would
    train again for a figure."""
    files = expand(list(rules.evaluate.output), experiment=EXPERIMENTS, seed=SEEDS) + list(rules.summary.output)
    if config["export"]["quantize"]:
        files += expand(list(rules.quantize_onnx.output), experiment=EXPERIMENTS, seed=SEEDS)
    if PREDICT_TARGET and PREDICT_TARGET == rules.predict_selected.output.csv:
        files += list(rules.predict_selected.output)
    return list(dict.fromkeys(files))


def selected_models_missing():
    """After a failed run: the models results/selected.json names that are not there (the leaderboard is made
    before the exports, which this run did not finish)."""
    try:
        chosen = json.loads(Path(rules.summary.output.selected).read_text())
        missing = [entry["model"] for entry in chosen.values() if not os.path.exists(entry["model"])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    if not missing:
        return []
    return [f"note: {rules.summary.output.selected} names {len(missing)} model(s) not there now ({', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}): their export did not finish in this run; the next run that succeeds "
            "makes them"]


def removed_models_note():
    """After a failed run: the runs whose model.pt is gone while files made from it are still there (model.onnx,
    metrics.json): Snakemake removed it when the run's train job started (other settings, code or data, --forcerun), and
    that job did not finish. The files beside it are of the model removed; the same settings resume from a kept state,
    the earlier settings train it again."""
    gone = [run for run in RUNS if not os.path.exists(output_path(f"results/{run}/model.pt"))
            and any(os.path.exists(output_path(f"results/{run}/{name}")) for name in ("model.onnx", "metrics.json"))]
    if not gone:
        return []
    shown = ", ".join(output_path(f"results/{run}/model.pt") for run in gone[:4]) + (" ..." if len(gone) > 4 else "")
    return [f"note: {len(gone)} run(s) lost their model.pt ({shown}): Snakemake removes a job's outputs when it starts, "
            "and their train jobs, started for other settings, code or data (or by --forcerun), did not finish; the "
            "model.onnx and metrics.json beside them are of the model removed. The next run with these settings "
            "resumes from the last epoch a stopped job kept (its log says `resuming from`); going back to earlier "
            "settings trains their model again (copy a run's folder before a change you may undo: "
            "docs/troubleshooting.md)"]


def earlier_results_note():
    """After a failed run: the files under results/ still there whose jobs were to run and did not (a run's metrics,
    model.onnx, summary.md): they are an earlier run's, not this one's; and the selected models not there
    (:func:`selected_models_missing`)."""
    try:
        jobs = list(workflow.dag.needrun_jobs())
    except Exception:  # Snakemake's DAG is internal: without it, no note rather than a second error
        return []
    results = output_path("results/")
    earlier = sorted({str(f) for job in jobs for f in job.output if str(f).startswith(results) and os.path.exists(f)})
    missing = selected_models_missing()
    if not earlier:
        return missing
    shown = ", ".join(earlier[:6]) + (f" and {len(earlier) - 6} more" if len(earlier) > 6 else "")
    notes = [f"note: {len(earlier)} file(s) under {results} were to be made again by this run and were not finished by "
             "it (changed settings, code or data, or --forcerun): they are an earlier run's, or a job's that this run "
             f"stopped following ({shown}); the next run that succeeds makes them again (`snakemake -n` lists them)"]
    leaderboard = {str(f) for f in rules.summary.output}
    summary = [f for f in earlier if f in leaderboard]
    if summary:
        notes.append(f"note: the leaderboard ({', '.join(summary)}) is an earlier run's: it is made once every run "
                     "has finished, so it does not show this run's changes, and the runs it names may since hold "
                     "other models")
    return notes + missing


# After a run that succeeded, a job Slurm ended was submitted again and finished: said, as it will be on every run.
RAN_AGAIN = "; the profile's `retries` submitted it again, and that attempt finished"


def slurm_kill_notes(folder=".snakemake/slurm_logs", after="", each_time=False):
    """Slurm's own lines on the jobs of this run it ended (``slurmstepd...: error: ... exceeded memory limit ..., being
    killed``, ``CANCELLED ... DUE TO TIME LIMIT``), from the Slurm logs written by this run that the executor kept (it
    keeps a failed job's, removes the others); each note ends with ``after``, and where Slurm ended the job at a limit
    (not cancelled by hand) what to raise (finetune.slurmchecks.limit_hint; ``each_time``: its retry finished). After a failed run: Snakemake's report prints a failed job's logs up to the first
    empty one only, so the rule's log of a job killed before it wrote a line hid the Slurm log that says why. After a run that succeeded: the attempt that failed was said mid-run only, among
    the other jobs' lines."""
    notes = []
    for log in sorted(Path(folder).glob("**/*.log")):
        try:
            if log.stat().st_mtime < STARTED_AT:
                continue
            lines = list(dict.fromkeys(line.strip() for line in log.read_text(errors="replace").splitlines()
                                       if line.startswith("slurmstepd")))
        except OSError:
            continue
        if lines:
            # CANCELLED with no DUE TO: scancel, or the executor cancelling its jobs on Ctrl-C; not a limit of Slurm's
            cancelled = all(" CANCELLED AT " in line and " DUE TO " not in line for line in lines)
            what = ("a job was cancelled (by scancel, or by Snakemake stopping its jobs on Ctrl-C)" if cancelled
                    else "Slurm ended a job")
            named = next((part[len("rule_"):] for part in log.relative_to(folder).parts if part.startswith("rule_")), None)
            notes.append(f"note: {what} ({os.path.abspath(log)}): {' | '.join(lines[-3:])}{after}"
                         f"{'' if cancelled else slurmchecks.limit_hint(named, lines, each_time)}")
    return notes[:10]


def remove_finished_states():
    """The finished resume states whose outputs are there, removed once a run of Snakemake succeeds
    (finetune.stages.remove_finished_states, with this workflow's resume folder and outputs), and the states a killed
    save left half-written (abandoned_writes); a line says what went, and how much. Not after a failed
    run: outputs still there may be ones Snakemake marked incomplete (a job that ran on to its end after Snakemake
    was interrupted), which the rerun writes again, from the finished state rather than by training again."""
    from finetune.stages import FINISHED_SUFFIX, remove_finished_states as remove

    sizes = {path: size_of(path) for path in RESUME_FOLDER.glob(f"**/*{FINISHED_SUFFIX}")}
    abandoned = {path: size_of(path) for path in abandoned_writes(RESUME_FOLDER)}
    for path in abandoned:  # first, so that the folders they were in can go with the finished states
        with contextlib.suppress(OSError):
            path.unlink()
    finished = remove(RESUME_FOLDER, rules.pretrain.output.weights, rules.train.output.checkpoint)
    parts = [f"{len(finished)} finished resume state(s) of runs whose outputs are written "
             f"({sum(sizes.get(p, 0) for p in finished) / 1e6:,.0f} MB)"] if finished else []
    parts += [f"{len(abandoned)} file(s) a save killed while writing left half-written ({sum(abandoned.values()) / 1e6:,.0f} "
              f"MB: {', '.join(p.name for p in list(abandoned)[:2])}{' ...' if len(abandoned) > 2 else ''})"] if abandoned else []
    if parts:
        print(f"note: {RESUME_FOLDER}: removed, as this run of Snakemake succeeded: {'; and '.join(parts)}", file=sys.stderr)


def size_of(path):
    try:
        return path.stat().st_size
    except OSError:
        return 0


# A save writes its file within seconds: another host's temporary file (a Slurm node's) untouched this long is abandoned.
ABANDONED_AFTER_S = 3600


def abandoned_writes(folder):
    """The temporary files of atomic writes (finetune.fileio.atomic_path: ``.<name>.<host>-<pid>.<random>.tmp``)
    under ``folder`` whose writer no longer runs: of this host, where its pid runs no more (a save killed by SIGKILL or
    a walltime, which the next save of the same file alone would remove); of another host, where untouched for
    ABANDONED_AFTER_S."""
    from finetune.fileio import _HOST, _running

    pattern = re.compile(r"\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp")
    found = []
    for path in Path(folder).glob("**/.*.tmp"):
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        try:
            stale = (not _running(int(match["pid"])) if match["host"] == _HOST else
                     time.time() - path.stat().st_mtime > ABANDONED_AFTER_S)
        except OSError:
            continue
        if stale:
            found.append(path)
    return found


def scheduled_device_keys():
    """The device settings of the jobs this run starts that train or evaluate on a device: {device key: (device,
    processes per node, devices key)}, and the nodes of those training on several: {nodes key: nodes}."""
    devices, nodes = {}, {}
    for job in workflow.dag.needrun_jobs():
        if job.rule.name in ("train", "lr_find"):
            cfg, names = experiment_config(job.wildcards.experiment), train_key_names(job.wildcards.experiment)
            processes = cfg["devices"] if job.rule.name == "train" else 1
            key = names.get("device", "train.device")
            if processes >= devices.get(key, (None, 0, None))[1]:
                devices[key] = (cfg["device"], processes, names.get("devices", "train.devices"))
            if job.rule.name == "train" and cfg["nodes"] > 1:
                nodes[names.get("nodes", "train.nodes")] = cfg["nodes"]
        elif job.rule.name == "pretrain":
            devices["pretrain.train.device"] = (config["pretrain"]["train"]["device"], 1, None)
        elif job.rule.name == "evaluate":
            devices["evaluate.device"] = (config["evaluate"]["device"], 1, None)
    return devices, nodes


@functools.lru_cache(maxsize=1)
def visible_gpus():
    """The CUDA devices the jobs of this machine would see, asked of torch in a process of its own (this one stays
    without torch: a run with nothing to do starts in a fraction of a second); None where torch does not answer (it
    does not import, a driver hangs): the jobs then say what is wrong. Asked once a run."""
    import subprocess

    try:
        asked = subprocess.run([str(PYTHON), "-c", "import torch; print(torch.cuda.device_count())"],
                               capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    answer = asked.stdout.strip()
    return int(answer) if asked.returncode == 0 and answer.isdigit() else None


def side_by_side_note_here():
    """side_by_side_note for the jobs this run starts on this machine. A job on device auto counts as on the GPU where
    torch sees one (asked only where NVIDIA's driver is loaded and a note would follow: no start-up cost on the CPU);
    a job asking for as many of the `gpu` resource as the run has (the local profile's gpu: 1, a train job with
    device cuda) runs beside no other such job, whatever its threads."""
    limit = workflow.global_resources.get("gpu")
    limit = getattr(limit, "value", limit)
    scheduled, devices, whole_gpu = {}, {}, set()
    for job in workflow.dag.needrun_jobs():
        name = job.rule.name
        scheduled[name] = scheduled.get(name, 0) + 1
        if name in ("train", "evaluate"):
            device = (experiment_config(job.wildcards.experiment)["device"] if name == "train"
                      else config["evaluate"]["device"])
            devices.setdefault(name, set()).add(device)
        gpus = job.resources.get("gpu", 0) or 0
        if gpus and isinstance(limit, int) and limit < 2 * gpus:
            whole_gpu.add(name)
    cuda = {side for side, kinds in devices.items() if "cuda" in kinds}
    auto = {side for side, kinds in devices.items() if "auto" in kinds}
    note = lambda on_gpu: side_by_side_note(given_cores(), config["threads"], scheduled, on_gpu, whole_gpu)  # noqa: E731
    if note(cuda | auto) is None:
        return None
    gpu_here = bool(auto) and gpu_seen_here()
    return note(cuda | (auto if gpu_here else set()))


def gpu_seen_here():
    """Whether torch would see a GPU on this machine (NVIDIA's driver loaded, and at least one device visible)."""
    return nvidia_driver_loaded() and (visible_gpus() or 0) > 0


def cuda_only_options_note_here(runs, keys):
    """cuda_only_options_note for the train jobs this run starts on this machine (``runs``, their keys as written:
    ``keys``), where torch sees no GPU (asked only where a run on device auto sets amp or channels_last)."""
    note = cuda_only_options_note(runs, keys)
    return None if note is None or gpu_seen_here() else note


def cuda_graphs_on_cpu_note_here(runs, keys):
    """cuda_graphs_on_cpu_note for the train jobs this run starts (device auto counted as the CPU only where this
    machine, running them itself, has no GPU that torch sees)."""
    if not any(options.get("compile") == "reduce-overhead" for options in runs.values()):
        return None
    return cuda_graphs_on_cpu_note(runs, keys, not workflow.local_exec or gpu_seen_here())


def starting_train_runs():
    """{run: its experiment config} for the runs (a sweep's each) whose train jobs this run of Snakemake starts."""
    return {job.wildcards.experiment: experiment_config(job.wildcards.experiment)
            for job in workflow.dag.needrun_jobs() if job.rule.name == "train"}


def starting_pretrain():
    """{"pretrain": its options} where this run of Snakemake starts the pretrain job; else {}."""
    starts = any(job.rule.name == "pretrain" for job in workflow.dag.needrun_jobs())
    return {"pretrain": {**TRAIN_DEFAULTS, **config["pretrain"]["train"]}} if starts else {}


# Where pretraining's options are written, for the notes that name them.
PRETRAIN_KEYS = {"pretrain": {key: f"pretrain.train.{key}" for key in ("amp", "channels_last", "compile")}}


def uncached_bytecode_note_here():
    """uncached_bytecode_note for this run's jobs (torch's folder found without importing it: no start-up cost)."""
    import importlib.util

    torch_jobs = sum(1 for job in workflow.dag.needrun_jobs() if job.rule.name in TORCH_RULES)
    if not torch_jobs or not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return None
    spec = importlib.util.find_spec("torch")
    folder = os.path.dirname(spec.origin) if spec is not None and spec.origin else None
    return uncached_bytecode_note(os.environ, folder, torch_jobs)


def local_run_problems():
    """What the jobs of a run on this machine (Snakemake's local executor, not a cluster's) cannot do here: device
    cuda where there is no GPU or fewer than the devices asked for, several nodes outside a Slurm allocation of that
    many. Found in the job, each failed only after Snakemake removed the outputs it would replace (an earlier model,
    trained under other settings); found here, nothing ran and they are kept."""
    from finetune.launch import allocation_problem, device_problems, needs_gpus

    devices, nodes = scheduled_device_keys()
    problems = [allocation_problem(count, os.environ, key) for key, count in sorted(nodes.items())]
    gpus = visible_gpus() if needs_gpus(devices) else None
    problems += [] if gpus is None else device_problems(devices, gpus)
    return [problem for problem in problems if problem] + sync_batchnorm_on_cpu_problems_here()


def sync_batchnorm_on_cpu_problems_here():
    """sync_batchnorm_on_cpu_problems for the train jobs this run starts here, where torch sees no GPU (asked only
    where a run on device auto sets sync_batchnorm)."""
    runs = {run: options for run, options in starting_train_runs().items()
            if options["sync_batchnorm"] and options["device"] == "auto"}
    if not runs or gpu_seen_here():
        return []
    return sync_batchnorm_on_cpu_problems(runs, {run: train_key_names(run) for run in runs})


def unwritable_folder_problems():
    """The folders this run's jobs write into (outputs, logs, benchmarks: the nearest folder of each that exists) that
    cannot be written here: a read-only file system, or one this user may not write. Snakemake failed such a job
    ("Failed to create output directory", or a traceback of its own where it removed an output to replace it), after
    the jobs before it had run. One line per folder, naming the rules that write below it."""
    blocked, verdicts = {}, {}
    for job in workflow.dag.needrun_jobs():
        for file in map(str, [*job.output, *job.log, *([job.benchmark] if job.benchmark else []),
                              *folders_written_besides_outputs(job)]):
            folder = os.path.dirname(os.path.normpath(file)) or "."
            while not os.path.isdir(folder) and folder not in ("", ".", os.sep):
                folder = os.path.dirname(folder) or "."
            if folder not in verdicts:
                verdicts[folder] = unwritable_reason(folder)
            if verdicts[folder]:
                blocked.setdefault(folder, set()).add(job.rule.name)
    return [f"{os.getcwd() if folder == '.' else folder}: {verdicts[folder]}"
            f"{'' if folder == '.' else relative_to_workdir(folder)}, and rule{'s' if len(rules) > 1 else ''} "
            f"{', '.join(sorted(rules))} write{'' if len(rules) > 1 else 's'} below it: make it writable, or run in a "
            "folder you can write (--directory)" for folder, rules in sorted(blocked.items())]


def folders_written_besides_outputs(job):
    """A file in the folder a training job writes its resume state to, every epoch, which is none of its outputs: one
    that cannot be written failed the job at its first epoch, after Snakemake had removed the run's model.pt. (The
    feature cache of feature_extract is not: where it cannot be written, the job warns and trains on.)"""
    step = {workflow.modifier.modify_rulename(name): name for name in ("train", "pretrain")}.get(job.rule.name)
    if step == "pretrain":
        return [os.path.join(str(RESUME_FOLDER), "pretrain", "state")]
    if step == "train":
        return [os.path.join(str(RESUME_FOLDER), job.wildcards.get("experiment"), f"seed{job.wildcards.get('seed')}",
                             "state")]
    return []


def unwritable_reason(folder):
    """Why ``folder`` cannot be written here, or None where it can (or cannot be asked)."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "on a read-only file system"
    except OSError:
        return None
    return None if os.access(folder, os.W_OK | os.X_OK) else "not writable by this user (its permissions)"


def cluster_run_problems():
    """What the train jobs of a run submitted to a cluster (Slurm) cannot do there: several nodes where the profile
    does not give rule train an allocation of that many, with the `mpi` resource (docs/slurm.md,
    "GPUs"). The job found it, after Snakemake removed its outputs, and after the profile's retry too."""
    problems = {}
    for job in workflow.dag.needrun_jobs():
        if job.rule.name != "train":
            continue
        nodes = experiment_config(job.wildcards.experiment)["nodes"]
        asked = job.resources.get("nodes", 1)
        if nodes > 1 and (asked != nodes or not job.resources.get("mpi")):
            key = train_key_names(job.wildcards.experiment).get("nodes", "train.nodes")
            problems[key] = (
                f"{key} {nodes}: the train job asks Slurm for {asked} node(s)"
                f"{'' if job.resources.get('mpi') else ' and has no mpi resource'}; training on {nodes} nodes needs "
                f"the train rule's `nodes: {nodes}`, `tasks: {nodes}`, `tasks_per_gpu: 0` and `mpi: \"srun\"` in the profile's "
                f"set-resources (docs/slurm.md, \"GPUs\"), or set {key} 1")
    return [problems[key] for key in sorted(problems)]


@functools.lru_cache(maxsize=None)
def sinfo_lines():
    """`sinfo`'s lines here (finetune.slurmchecks.parse_sinfo), asked once a start: the partition, GPU and size
    checks all read them."""
    return slurmchecks.read_sinfo()


def slurm_checked_jobs():
    """The jobs to submit whose partition `sinfo` here can tell. Where the plugin chooses a job's partition itself (a
    partition file: --slurm-partition-config or SNAKEMAKE_SLURM_PARTITIONS, by what each job asks for, GPUs
    included), or sends it to another cluster, sinfo here cannot say where it goes: only partitions named by the
    job's own slurm_partition are checked then."""
    chosen_by_plugin = bool(getattr(workflow.executor_settings, "partition_config", None)
                            or os.environ.get("SNAKEMAKE_SLURM_PARTITIONS"))
    return [job for job in workflow.dag.needrun_jobs()
            if not (job.resources.get("clusters") or job.resources.get("slurm_cluster")
                    or (chosen_by_plugin and not job.resources.get("slurm_partition")))]


def slurm_partition_problems():
    """The partitions the jobs name (slurm_partition, from the profile or --set-resources) that `sinfo` does not list:
    sbatch refused each job ("invalid partition specified"), after Snakemake removed its outputs, then again on the
    profile's retry, and the failure showed the rule's log of an earlier run as the job's."""
    asking = {}
    for job in slurm_checked_jobs():
        if job.is_local:  # run by Snakemake itself (all, summary, weights): no partition of theirs is asked
            continue
        for name in slurmchecks.named_partitions(job.resources.get("slurm_partition")):
            asking.setdefault((name, partition_source(job.rule.name)), set()).add(job.rule.name)
    partitions = slurmchecks.partitions_with_gpus(sinfo_lines())[0] if asking else {}
    return slurmchecks.partition_problems(asking, partitions)


def partition_source(rule):
    """Where a rule's slurm_partition is set: its own entry of set-resources, or default-resources."""
    own = workflow.resource_settings.overwrite_resources.get(rule) or {}
    return ("profile's set-resources or --set-resources" if "slurm_partition" in own
            else "profile's default-resources or --default-resources")


def slurm_size_problems():
    """The jobs to submit that ask for more CPUs (their threads, or cpus_per_task) or memory (mem_mb) than any node of
    their partitions has: Slurm left such a job pending for ever (reason PartitionConfig: `--set-threads train=16` on
    nodes of 2 CPUs) or sbatch refused it after Snakemake removed its outputs. One line per rule and size."""
    asking = {}
    for job in slurm_checked_jobs():
        if job.is_local:
            continue
        cpus, memory = slurmchecks.job_size(job.resources, job.threads)
        entry = asking.setdefault(job.rule.name, {"cpus": 0, "mem_mb": 0, "partitions": tuple(
            slurmchecks.named_partitions(job.resources.get("slurm_partition")))})
        entry["cpus"] = max(entry["cpus"], cpus)
        entry["mem_mb"] = max(entry["mem_mb"], memory or 0)
    if not asking:
        return []
    return slurmchecks.size_problems(asking, slurmchecks.node_sizes(sinfo_lines()),
                                     slurmchecks.partitions_with_gpus(sinfo_lines())[1])


def slurm_time_problems():
    """The jobs to submit that ask for a walltime (runtime) above the time limit of every partition they may go to:
    Slurm kept such a job pending for ever (reason PartitionTimeLimit: train's 480 minutes in a partition of 1 hour),
    and Snakemake waited with it. One line per rule (the first attempt's; a retry's `* attempt` is not checked)."""
    asking = {}
    for job in slurm_checked_jobs():
        runtime = job.resources.get("runtime")
        if job.is_local or not isinstance(runtime, int):
            continue
        entry = asking.setdefault(job.rule.name, {"runtime": 0, "partitions": tuple(
            slurmchecks.named_partitions(job.resources.get("slurm_partition")))})
        entry["runtime"] = max(entry["runtime"], runtime)
    if not asking:
        return []
    return slurmchecks.time_problems(asking, slurmchecks.time_limits(sinfo_lines()),
                                     slurmchecks.partitions_with_gpus(sinfo_lines())[1])


def slurm_gpu_model_problems():
    """A gpu_model given to jobs that ask for no GPU (train, lr_find, pretrain and evaluate declare gpu 0 where their
    device is not cuda): the plugin turned gpu_model a100 with gpu 0 into `--gpus=a100:0`, and the job trained on the
    CPU of a GPU node, without a word. (Jobs of a rule declaring no gpu get one GPU of the model.)"""
    problems = {}
    for job in slurm_checked_jobs():
        model = job.resources.get("gpu_model")
        if job.is_local or not model or job.resources.get("gpu") != 0:
            continue
        key, device = job_device_setting(job)
        problems.setdefault((job.rule.name, key), (
            f"gpu_model {model} is given to the {job.rule.name} jobs (the profile's set-resources or --set-resources), "
            f"and they ask Slurm for no GPU ({f'{key} is {device}, not cuda' if key else 'gpu: 0'}): the plugin would "
            f"submit them with --gpus={model}:0, no GPU; {f'set {key} cuda, or ' if key else ''}leave gpu_model out"))
    return [problems[key] for key in sorted(problems)]


def job_device_setting(job):
    """The config key that sets the device of a train, lr_find, pretrain or evaluate job, and its value; (None, None)
    for another rule's."""
    if job.rule.name in ("train", "lr_find"):
        key = train_key_names(job.wildcards.experiment).get("device", "train.device")
        return key, experiment_config(job.wildcards.experiment)["device"]
    if job.rule.name == "pretrain":
        return "pretrain.train.device", config["pretrain"]["train"]["device"]
    if job.rule.name == "evaluate":
        return "evaluate.device", config["evaluate"]["device"]
    return None, None


def slurm_gpu_problems():
    """The device settings of a run submitted to Slurm whose jobs ask for a GPU (`gpu`) in a partition without one:
    sbatch refused each ("Invalid generic resource (gres) specification"), after Snakemake removed the job's outputs,
    and again on the profile's retry."""
    asking = {}
    for job in slurm_checked_jobs():
        if job.resources.get("gpu", 0) and job.rule.name in ("train", "lr_find", "pretrain", "evaluate"):
            key = (train_key_names(job.wildcards.experiment).get("device", "train.device")
                   if job.rule.name in ("train", "lr_find") else
                   "pretrain.train.device" if job.rule.name == "pretrain" else "evaluate.device")
            asking.setdefault(job.resources.get("slurm_partition"), set()).add(key)
    return slurmchecks.gpu_problems(asking, *slurmchecks.partitions_with_gpus(sinfo_lines())) if asking else []


def scheduled_predict_problems():
    """PREDICT_PROBLEM, where this run is to make predictions."""
    predicts = PREDICT_PROBLEM and any(job.rule.name in ("predict", "predict_selected")
                                       for job in workflow.dag.needrun_jobs())
    return [PREDICT_PROBLEM] if predicts else []


onstart:
    if not workflow.touch:
        refuse_damaged_inputs()
        _problems = [*scheduled_predict_problems(), *unwritable_folder_problems(),
                     *(local_run_problems() if workflow.local_exec else
                       cluster_run_problems() + slurm_partition_problems() + slurm_gpu_problems()
                       + slurm_gpu_model_problems() + slurm_size_problems() + slurm_time_problems())]
        if _problems:
            raise WorkflowError("\n".join([*_problems, "nothing ran, and every earlier result is kept"]))
        _side_by_side = side_by_side_note_here() if workflow.local_exec else None
        if _side_by_side:
            say(_side_by_side)
        _runs = starting_train_runs()  # one walk of the jobs for the notes on the train runs
        _keys = {_run: train_key_names(_run) for _run in _runs}
        _pretrain = starting_pretrain()  # its options too, for the notes on options the CPU does not act on
        _cuda_only = (cuda_only_options_note_here({**_runs, **_pretrain}, {**_keys, **PRETRAIN_KEYS})
                      if workflow.local_exec else None)
        if _cuda_only:
            say(_cuda_only)
        _uncached = uncached_bytecode_note_here()
        if _uncached:
            say(_uncached)
        _zero_lr = zero_backbone_lr_note(_runs, _keys)
        if _zero_lr:
            say(_zero_lr)
        _random_gradual = random_backbone_gradual_note(_runs, _keys)
        if _random_gradual:
            say(_random_gradual)
        for _frozen_random in (frozen_random_batchnorm_note(_runs, _keys), frozen_batchnorm_pretraining_note(_pretrain)):
            if _frozen_random:
                say(_frozen_random)
        _graphs = cuda_graphs_on_cpu_note_here({**_runs, **_pretrain}, {**_keys, **PRETRAIN_KEYS})
        if _graphs:
            say(_graphs)


def unreadable_predictions_notes():
    """After a run that succeeded: a note for each predictions file it made where images could not be read (the job
    classifies the others and succeeds; its log alone said so)."""
    try:
        jobs = list(workflow.dag.needrun_jobs(exclude_finished=False))
    except Exception:  # Snakemake's DAG is internal: without it, no note rather than an error after a run that succeeded
        return []
    made = [str(job.output[0]) for job in jobs if job.rule.name in ("predict", "predict_selected")]
    return [f"note: {line}" for line in map(unreadable_line, made) if line]


def range_test_edge_notes():
    """At the end of a run: a note for each range test it ran (and finished: a run that failed elsewhere too, whose next
    run would not make the curve again) whose loss was still falling at the top of its range (its job's log alone
    showed the curve)."""
    try:
        jobs = [job for job in workflow.dag.needrun_jobs(exclude_finished=False) if workflow.dag.finished(job)]
    except Exception:  # Snakemake's DAG is internal: without it, no note rather than an error at the end of a run
        return []
    tests = [(str(job.output.csv), str(job.output.suggestion)) for job in jobs
             if job.rule.name == workflow.modifier.modify_rulename("lr_find")]
    return [f"note: {line}" for line in (range_test_edge_line(*paths) for paths in tests) if line]


onsuccess:
    remove_finished_states()
    for _line in [*slurm_kill_notes(after=RAN_AGAIN, each_time=True), *unreadable_predictions_notes(),
                  *range_test_edge_notes()]:
        print(_line, file=sys.stderr)


onerror:
    for _line in [*slurm_kill_notes(), *earlier_results_note(), *removed_models_note(), *range_test_edge_notes()]:
        print(_line, file=sys.stderr)
