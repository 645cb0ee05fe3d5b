"""Where a job's time went: one line at the end of its log.

A job's wall time (its ``benchmark:`` file) is more than its work: the interpreter and the imports
before the script's ``main`` runs, reading its inputs, starting CUDA, writing (and flushing to disk)
its outputs. The stages mark where each part ends (:func:`lap`); :func:`finetune.cli.run` prints

    time: start-up 3.0 s, inputs 0.4 s, CUDA start 1.1 s, fit 4.7 s, outputs 0.5 s; 9.7 s in all

after a line with the job's peak memory (:func:`peak_memory`). "start-up" runs from the process's start (Linux:
``/proc/self/stat``) to ``run``; elsewhere it is left out.
"""

from __future__ import annotations

import os
import time

_laps: list[tuple[str, float]] = []
_last = time.perf_counter()


def seconds_since_process_start() -> float | None:
    """Seconds since this process started (its start time in ``/proc/self/stat``, in clock ticks since boot,
    against the boot-time clock); None where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the line: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def start() -> None:
    """Called when the script's ``main`` is about to run: what came before is the start-up."""
    global _last
    _laps.clear()
    startup = seconds_since_process_start()
    if startup is not None:
        _laps.append(("start-up", startup))
    _last = time.perf_counter()


def lap(name: str) -> float:
    """End the part of the job called ``name`` (it ran since the previous lap); its seconds."""
    global _last
    now = time.perf_counter()
    seconds = now - _last
    _laps.append((name, seconds))
    _last = now
    return seconds


def summary() -> str | None:
    """``time: <part> <s> s, ...; <total> s in all``, the rest since the last lap as ``other``; None without laps."""
    rest = time.perf_counter() - _last
    laps = _laps + ([("other", rest)] if rest >= 0.05 else [])
    if not any(name != "start-up" for name, _ in _laps):
        return None
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in laps)
    return f"time: {parts}; {sum(seconds for _, seconds in laps):.1f} s in all"


SNAKEMAKE_MB = 200  # the Snakemake process of a cluster job (70-120 MB resident on Slurm here) with room to spare


def peak_memory(processes: int = 1) -> str | None:
    """``peak memory: <MB> MB ...``: the most of the machine's memory this process held at once (Linux's VmHWM),
    what a cluster's memory limit (Slurm's --mem) is held against, in its unit: MB of 2^20 bytes. Snakemake's
    benchmark files sample the job's memory now and then, and missed the peak of short jobs (an export job: 870 MB
    there, 1,406 here).
    ``processes``: the job's training processes on this machine (torchrun's), each holding about as much. None
    where it cannot be read."""
    kilobytes = _peak_kilobytes("self")
    if kilobytes is None:
        return None
    margin = f"a cluster job also holds the Snakemake process that runs it: give mem_mb about {SNAKEMAKE_MB} MB more"
    if processes > 1:
        # torchrun, which started them (the launcher's process, finetune.launch), holds torch too: ~500 MB
        launcher = _peak_kilobytes(str(os.getppid())) if "TORCHELASTIC_RUN_ID" in os.environ else None
        total = processes * kilobytes + (launcher or 0)
        return (f"peak memory: {kilobytes / 1024:,.0f} MB (resident) in this one of the job's {processes} training "
                f"processes on this machine, each holding about as much"
                + (f", and {launcher / 1024:,.0f} MB in torchrun, which started them" if launcher else "")
                + f": the job needs about {total / 1024:,.0f} MB; {margin}")
    # A cluster job holds this script and the Snakemake process that starts it (on Slurm, ~70-120 MB more, killed
    # at 1,108 MB with this line saying 1,039): the margin is said here, where mem_mb is sized from it.
    return f"peak memory: {kilobytes / 1024:,.0f} MB (resident, this script; {margin})"


def _peak_kilobytes(pid: str) -> int | None:
    """The most memory process ``pid`` (or ``self``) held at once (Linux's VmHWM), in KB; None where unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
