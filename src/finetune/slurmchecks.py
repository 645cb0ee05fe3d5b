"""What a run submitted to Slurm would ask of the cluster that it cannot give, found at the start from `sinfo`.

Each check refuses, before any job, what sbatch refused (or Slurm kept pending for ever) after Snakemake removed
the job's outputs, and again on the profile's retry: a partition that does not exist, a GPU in a partition without
one, more CPUs or memory than any node of the partition has. The workflow (workflow/rules/common.smk) walks the jobs
to submit and gathers what each asks for; the lines here say what is wrong with it. Loaded at the start only: no
rule's job loads it.
"""

from __future__ import annotations

import re
import subprocess

SINFO_FORMAT = "%P|%G|%c|%m|%l"  # partition (the default marked *), generic resources, CPUs a node, memory (MB) a node,
# the partition's time limit (MaxTime)


def read_sinfo() -> list[tuple[str, str, str, str]]:
    """`sinfo`'s lines here (:func:`parse_sinfo`); [] where sinfo does not answer."""
    try:
        listed = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_sinfo(listed.stdout) if listed.returncode == 0 else []


def parse_sinfo(text: str) -> list[tuple[str, str, str, str, str]]:
    """``sinfo -h -o '%P|%G|%c|%m|%l'``'s lines: [(partition, gres, cpus, memory, time limit)], one per partition and
    group of like nodes, the default partition marked * as sinfo marks it (a line of four fields: no time limit known)."""
    return [tuple((line.strip().split("|") + ["", "", "", ""])[:5]) for line in text.splitlines() if line.strip()]


def partitions_with_gpus(lines) -> tuple[dict[str, bool], str | None]:
    """{partition: whether a node of it has a GPU (a gpu GRES)} of sinfo's ``lines``, and the default partition's name
    (marked * there); ({}, None) for none."""
    partitions, default = {}, None
    for name, gres, *_ in lines:
        if name.endswith("*"):
            name = default = name[:-1]
        partitions[name] = partitions.get(name, False) or "gpu" in gres
    return partitions, default


def node_sizes(lines) -> dict[str, tuple[int | None, int | None]]:
    """{partition: (the most CPUs, the most memory in MB of a node of it)} of sinfo's ``lines``; a size that sinfo
    gives as a lower bound (`2+`: nodes of several sizes) or not at all is None (not checked)."""
    sizes = {}
    for name, _, cpus, memory, *_ in lines:
        exact = [int(size) if size.isdigit() else None for size in (cpus, memory)]
        known = sizes.get(name.rstrip("*"), exact)  # a partition of several node groups: the largest of each
        sizes[name.rstrip("*")] = tuple(None if a is None or b is None else max(a, b) for a, b in zip(known, exact))
    return sizes


def slurm_minutes(text: str) -> int | None:
    """A Slurm time limit as sinfo prints it (`infinite`, `30:00`, `8:00:00`, `2-00:00:00`, `1-12`) in minutes (seconds
    rounded up); None for none (`infinite`, `UNLIMITED`, `n/a`) or a form not known."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        return None
    days, first, second, third = match.groups()
    if days is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # hours:minutes:seconds
        hours, minutes, seconds = int(first), int(second), int(third)
    elif second is not None:  # minutes:seconds
        hours, minutes, seconds = 0, int(first), int(second)
    else:  # minutes
        hours, minutes, seconds = 0, int(first), 0
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def time_limits(lines) -> dict[str, int | None]:
    """{partition: its time limit (MaxTime) in minutes, None for none or not known} of sinfo's ``lines``."""
    limits = {}
    for name, *rest in lines:
        name, limit = name.rstrip("*"), slurm_minutes(rest[3]) if len(rest) > 3 else None
        known = limits.get(name, limit)  # a partition of several node groups: one unknown limit leaves it unknown
        limits[name] = None if known is None or limit is None else max(known, limit)
    return limits


def time_problems(asking: dict[str, dict], limits: dict, default: str | None) -> list[str]:
    """A line for each rule whose jobs ask for a walltime (``asking``: {rule: {"runtime", "partitions"}}, minutes)
    above the time limit of every partition they may go to (``limits``: :func:`time_limits`; no partitions named: the
    ``default``): Slurm keeps such a job pending for ever (reason PartitionTimeLimit), or refuses it where the cluster
    enforces partition limits."""
    problems = []
    for rule, entry in sorted(asking.items()):
        partitions = list(entry["partitions"]) or ([default] if default else [])
        if not partitions or any(name not in limits or limits[name] is None for name in partitions):
            continue
        largest = max(limits[name] for name in partitions)
        if entry["runtime"] <= largest:
            continue
        where = f"partition{'s' if len(partitions) > 1 else ''} {', '.join(partitions)}"
        problems.append(f"rule {rule} asks Slurm for a walltime of {entry['runtime']} minutes (runtime: the profile's "
                        f"set-resources or default-resources, or --set-resources), and the time limit of {where} is "
                        f"{largest} minutes (`sinfo -o %P,%l`): Slurm would keep it waiting for ever (reason "
                        f"PartitionTimeLimit) or refuse it; ask for at most {largest}, or name a partition of a longer "
                        "time limit")
    return problems


def named_partitions(slurm_partition) -> list[str]:
    """The partitions a job's slurm_partition names: several, comma-separated (Slurm starts it in the first that can)."""
    return [name.strip() for name in str(slurm_partition or "").split(",") if name.strip()]


def job_size(resources, threads: int) -> tuple[int, int | None]:
    """(CPUs, MB of memory) a job asks Slurm for, as the plugin asks: --cpus-per-task of cpus_per_task, else of the
    threads (none where cpus_per_task < 0); --mem-per-cpu of mem_mb_per_cpu where given, else --mem of mem_mb."""
    cpus = resources.get("cpus_per_task")
    cpus = (0 if cpus < 0 else cpus) if isinstance(cpus, int) and cpus != 0 else threads
    per_cpu = resources.get("mem_mb_per_cpu")
    memory = per_cpu * max(cpus, 1) if isinstance(per_cpu, int) and per_cpu > 0 else resources.get("mem_mb")
    return cpus, memory if isinstance(memory, int) else None


def partition_problems(asking: dict[tuple[str, str], set[str]], partitions: dict[str, bool]) -> list[str]:
    """A line for each partition named that sinfo does not list; ``asking``: {(partition, where it is set): rules}."""
    return [f"slurm_partition {name} (rule{'s' if len(rules) > 1 else ''} {', '.join(sorted(rules))}, from the "
            f"{source}): this cluster has no such partition (`sinfo` lists {', '.join(sorted(partitions))}): name one "
            "of those, or leave slurm_partition out for the default"
            for (name, source), rules in sorted(asking.items()) if partitions and name not in partitions]


def size_problems(asking: dict[str, dict], sizes: dict, default: str | None) -> list[str]:
    """A line for each rule and size where the most a job of it asks for (``asking``: {rule: {"cpus", "mem_mb",
    "partitions"}}) is more than the largest node of its partitions has (``sizes``: :func:`node_sizes`); no partitions
    named: the ``default``. Partitions sinfo does not list are left to :func:`partition_problems`."""
    problems = []
    for rule, entry in sorted(asking.items()):
        partitions = list(entry["partitions"]) or ([default] if default else [])
        if not partitions or any(name not in sizes for name in partitions):
            continue
        where = f"partition{'s' if len(partitions) > 1 else ''} {', '.join(partitions)}"
        for index, (what, unit, setting) in enumerate((
                ("cpus", "CPUs", "its threads: set-threads in the profile, --set-threads, or threads in the config"),
                ("mem_mb", "MB of memory", "mem_mb: the profile's set-resources or default-resources, or --set-resources"))):
            largest = [sizes[name][index] for name in partitions]
            if None in largest or entry[what] <= max(largest):
                continue
            problems.append(f"rule {rule} asks Slurm for {entry[what]} {unit} a job ({setting}), and the largest node "
                            f"of {where} has {max(largest)} (`sinfo -o %c,%m`): Slurm would keep it waiting for ever "
                            f"or refuse it; ask for at most {max(largest)}, or name a partition of larger nodes")
    return problems


def gpu_problems(asking: dict[str | None, set[str]], partitions: dict[str, bool], default: str | None) -> list[str]:
    """A line for each partition without a GPU that jobs asking for one go to; ``asking``: {the jobs' slurm_partition
    (None: the ``default``): the config keys that put them on a GPU}."""
    problems = []
    for partition, keys in sorted(asking.items(), key=lambda item: str(item[0])):
        name = partition or default
        if name in partitions and not partitions[name]:
            problems.append(
                f"{', '.join(sorted(keys))} cuda: the jobs ask Slurm for a GPU, and partition {name}"
                f"{'' if partition else ' (the default)'} has no node with one (`sinfo -o %G` lists no gpu GRES): give "
                f"those rules a GPU partition (slurm_partition in the profile's set-resources; docs/slurm.md, \"GPUs\"), "
                f"or set {', '.join(sorted(keys))} to auto or cpu")
    return problems


def limit_hint(rule: str | None, lines: list[str], each_time: bool = False) -> str:
    """What to raise where Slurm ended a job of ``rule`` at one of its limits (``lines``: slurmstepd's, from the job's
    Slurm log): its memory (``exceeded memory limit (used > allowed)``, in bytes, where Slurm polls it; an ``oom_kill
    event`` where cgroups enforce it) or its walltime (``DUE TO TIME LIMIT``); "" for another end (a node failure, a
    cancel by hand). ``each_time``: the profile's retry then finished (said for a
    run that fails so each time). Named in the profile's set-resources alone: --set-resources on the command line
    replaces the profile's whole map (every other rule's sizes and the `* attempt` of a retry)."""
    text = " ".join(lines)
    memory = re.search(r"exceeded memory limit \((\d+) > (\d+)\)", text)
    if memory:
        used, allowed = (-(-int(n) // 2**20) for n in memory.groups())  # MiB: Slurm reads mem_mb (--mem) as MiB
        key, why = "mem_mb", f"it went past its memory, {used:,} MiB used of the {allowed:,} allowed"
    elif re.search(r"oom.kill|out of memory", text, re.I):
        key, why = "mem_mb", "it went past its memory"
    elif "DUE TO TIME LIMIT" in text:
        key, why = "runtime", "it ran past its walltime"
    else:  # a node failure, a preemption: no limit of the rule's to raise
        return ""
    named = f"rule {rule}'s {key}" if rule else f"the rule's {key}"
    return f" ({'where it is ended each time, ' if each_time else ''}{why}: raise {named} in the profile's set-resources)"
