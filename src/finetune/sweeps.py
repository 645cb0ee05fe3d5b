"""Sweeps: an experiment's ``sweep:`` (lists of values for ``train`` keys) as one run per combination.

Torch-free: the workflow expands the config with it when it starts (``workflow/rules/common.smk``),
and ``configcheck`` checks the expanded runs. A run's name is the experiment's, then ``-<key><value>``
per swept key in the order the sweep writes them, e.g. ``finetune-lr3e-4-backbone_lr_factor0.3``:
the same config always gives the same names (and so the same result folders).
"""

from __future__ import annotations

import itertools
import re

# What a run name may hold: it is a folder name and a Snakemake wildcard value.
RUN_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
# The longest run name: it names a folder, and files beside a temporary copy of theirs (``.<name>.tsv.<host>-<pid>
# .<random>.tmp``), within the 255 bytes a file name may have.
MAX_RUN_NAME = 100
# A name that ends in one piece repeated 20 times or more: Snakemake refuses it as a wildcard's value (io.py,
# PeriodicityDetector), taking it for a rule that makes its own input.
PERIODIC = re.compile(r"((.+?)\2{19,})$")

# `train` keys a sweep may not vary, and why (the message names the key path).
NOT_SWEPT = {
    "metric": "the runs of a sweep are compared on one validation metric: set metric in the experiment or in train",
}


def _scientific(value: float) -> str:
    """The shortest x.yyye<n> text that reads back as ``value``: 0.0003 -> 3e-4, 1500.0 -> 1.5e3."""
    for digits in range(17):
        text = f"{value:.{digits}e}"
        if float(text) == value:
            break
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def value_text(value) -> str:
    """A swept value as it appears in a run name: the shorter of plain and scientific for floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        plain = repr(value).removesuffix(".0")
        scientific = _scientific(value)
        return scientific if len(scientific) < len(plain) else plain
    return str(value)


def combinations(sweep: dict) -> list[list[tuple]]:
    """Every combination of the sweep's values, as [(key, value), ...] in the sweep's key order."""
    keys = list(sweep)
    return [list(zip(keys, values)) for values in itertools.product(*(sweep[key] for key in keys))]


def run_name(experiment: str, combination: list[tuple]) -> str:
    return "-".join([experiment, *(f"{key}{value_text(value)}" for key, value in combination)])


def expand(experiments: dict) -> tuple[dict, dict]:
    """The runs of the experiments as written: ({run name: train overrides}, {run name: experiment}).

    An experiment without ``sweep`` is one run of its own name; with one, a run per combination,
    each with the experiment's overrides plus the combination's values.
    """
    runs, groups = {}, {}
    for experiment, overrides in experiments.items():
        overrides = dict(overrides or {})
        sweep = overrides.pop("sweep", None)
        if not sweep:
            runs[experiment], groups[experiment] = overrides, experiment
            continue
        for combination in combinations(sweep):
            name = run_name(experiment, combination)
            runs[name], groups[name] = {**overrides, **dict(combination)}, experiment
    return runs, groups


def sweep_problems(experiments: dict) -> list[str]:
    """What the schema cannot say about sweeps: keys set twice, keys not to sweep, run names."""
    problems = []
    for experiment, overrides in experiments.items():
        sweep = (overrides or {}).get("sweep") or {}
        for key in sweep:
            where = f"experiments.{experiment}.sweep.{key}"
            if key in overrides:  # named by the plain key: the file that wrote it (the demo's, say) is the one named
                problems.append(f"experiments.{experiment}.{key}: is also swept ({where}); set it in one place (a "
                                "file merged over another may inherit it: remove it there, or name the experiment "
                                "otherwise)")
            if key in NOT_SWEPT:
                problems.append(f"{where}: {NOT_SWEPT[key]}")
    if problems:
        return problems
    seen: dict[str, str] = {}
    folded: dict[str, str] = {}
    for experiment, overrides in experiments.items():
        swept = bool((overrides or {}).get("sweep"))
        where = f"experiments.{experiment}{'.sweep' if swept else ''}"
        names = [run_name(experiment, c) for c in combinations((overrides or {}).get("sweep") or {})] or [experiment]
        for name in names:
            if not RUN_NAME.match(name):
                problems.append(f"experiments.{experiment}.sweep: run name {name!r} is not a valid folder name")
            elif name in seen:
                problems.append(f"experiments.{experiment}: run name {name!r} is also a run of experiments.{seen[name]}")
            elif name.casefold() in folded:
                problems.append(f"experiments.{experiment}: run name {name!r} differs only in letter case from "
                                f"{folded[name.casefold()]!r}, and a file system that ignores case (macOS's, Windows') "
                                "holds both in one folder: name the experiment otherwise")
            elif len(name) > MAX_RUN_NAME:
                problems.append(f"{where}: run name {name[:40]}... is {len(name)} characters long, at most "
                                f"{MAX_RUN_NAME}: it names folders and files, whose names the file system limits; "
                                f"shorten the experiment's name{' (a sweep adds its keys and values)' if swept else ''}")
            elif periodic := PERIODIC.search(name):
                problems.append(f"{where}: run name {name!r} ends in {periodic.group(2)!r} repeated "
                                f"{len(periodic.group(1)) // len(periodic.group(2))} times, "
                                "which Snakemake refuses (PeriodicWildcardError: it takes such a name for a rule that "
                                "makes its own input): name it otherwise")
            seen.setdefault(name, experiment)
            folded.setdefault(name.casefold(), name)
    return problems
