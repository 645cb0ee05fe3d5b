"""Shared plumbing of the workflow's command-line entry points."""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

from . import jobclock
from .errors import FinetuneError, StopRequested
from .fileio import json_kind


def is_number(value) -> bool:
    """A finite int or float of a JSON option, not a bool (JSON's true is no number here), nor NaN or infinity."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value) -> bool:
    """An int of a JSON option, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def json_arg(text: str) -> dict:
    """An option's JSON object (every JSON option of the scripts holds one: a config section, options by name)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{json_kind(value)}, where a JSON object is read ({{\"key\": value, ...}})")
    return value


def positive_int(text: str) -> int:
    """An option's whole number of 1 or more (a size in pixels, a number of threads)."""
    return _number_arg(text, int, "a whole number", lambda value: value >= 1, "must be 1 or more")


def positive_float(text: str) -> float:
    """An option's finite number above 0 (a time in seconds)."""
    return _number_arg(text, float, "a number", lambda value: 0 < value < float("inf"), "must be above 0")


def _number_arg(text: str, convert, kind: str, fits, bound: str):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if not fits(value):
        raise argparse.ArgumentTypeError(f"{text}: {bound}")
    return value


def parse_args(parser: argparse.ArgumentParser, outputs: tuple[str, ...] = (), json_paths: dict[str, str] | None = None,
               folders: tuple[str, ...] = (), inside: tuple[str, ...] = (),
               also_reads: Callable[[argparse.Namespace], dict] | None = None) -> argparse.Namespace:
    """``parser.parse_args()``, refusing (argparse's usage error, exit 2, before anything is read or written) an
    output path that names a file the script reads, or another of its outputs: the output would replace it (a
    script run by hand with a slip of the shell, ``--out-metrics`` given the split's path). The outputs are the
    options named ``--out...`` and those in ``outputs``; the inputs every other path option, the paths in JSON
    options that ``json_paths`` names (``{"dataset": "path"}``: the key ``path`` of ``--dataset``), and those
    ``also_reads(args)`` gives ({what names it: path}: the weights file a manifest names). An output that would replace
    a file inside a folder the script reads files of is refused so too: the options in ``inside`` (run folders) and a
    JSON path that is a folder (a dataset's).

    An input path option that names nothing, or a folder where a file is read (all but those in ``folders`` and
    ``inside``), and an output that is a folder are refused as well, naming the option (not a traceback of the first
    read or of the write); options named ``--...-dir`` are the job's own folders (resume state, a cache), made where
    missing."""
    args = parser.parse_args()
    is_output = {dest: dest.startswith("out") or dest in outputs for dest in vars(args)}
    read, within = {}, {}
    for dest, value in vars(args).items():
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if dest in inside and isinstance(path, (str, Path)):
                within.setdefault(_same(path), f"{_option(dest)}'s folder {path}")
            if isinstance(path, Path) and not is_output[dest]:
                read.setdefault(_same(path), _option(dest))
                if not dest.endswith("_dir"):
                    _check_input(parser, _option(dest), path, folder_too=dest in folders or dest in inside)
    for dest, key in (json_paths or {}).items():
        path = getattr(args, dest)
        path = path.get(key) if isinstance(path, dict) else None
        if isinstance(path, str) and path:
            read.setdefault(_same(path), f'the "{key}" of {_option(dest)}')
            if os.path.isdir(path):
                within.setdefault(_same(path), f'the "{key}" of {_option(dest)}, {path}')
    for named, path in (also_reads(args) if also_reads else {}).items():
        read.setdefault(_same(path), named)
    written = {}
    for dest, value in vars(args).items():
        if is_output[dest] and isinstance(value, Path):
            _check_output(parser, _option(dest), value, read, within, written)
            written[_same(value)] = _option(dest)
    return args


def _check_output(parser: argparse.ArgumentParser, option: str, path: Path, read: dict, within: dict,
                  written: dict) -> None:
    if path.is_dir():
        parser.error(f"{option} {path} is a folder: name the file to write in it")
    key = _same(path)
    if key in read:
        parser.error(f"{option} {path}: the same file as {read[key]} (an input): writing the output would replace "
                     "it; give the output another path")
    if key in written:
        parser.error(f"{option} {path}: the same file as {written[key]} (an output): give each output its own path")
    folder = next((name for found, name in within.items() if key.startswith(found.rstrip(os.sep) + os.sep)), None)
    if folder is not None and path.exists():
        parser.error(f"{option} {path} would replace a file inside {folder}, whose files are read: write the output "
                     "outside it")


def weights_file_named(args: argparse.Namespace) -> dict:
    """{what names it: the weights file} that ``--manifest`` names (a weights manifest: its ``file``, beside it),
    read by the script through the manifest; {} where there is none or it does not read (said where it is read)."""
    manifest = getattr(args, "manifest", None)
    try:
        file = json.loads(Path(manifest).read_text(encoding="utf-8")).get("file") if manifest else None
    except (OSError, ValueError, AttributeError):
        return {}
    return {f"the weights file --manifest names ({file})": Path(manifest).parent / file} if isinstance(file, str) and file else {}


def _check_input(parser: argparse.ArgumentParser, option: str, path: Path, folder_too: bool) -> None:
    if not path.exists():
        parser.error(f"{option} {path}: no such {'file or folder' if folder_too else 'file'}"
                     + (" (a link to a path that is gone)" if path.is_symlink() else ""))
    if path.is_dir() and not folder_too:
        parser.error(f"{option} {path} is a folder: name the file to read")


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _same(path) -> str:
    """``path`` as the file it names (links and ``..`` resolved), for comparing paths written differently."""
    return os.path.realpath(str(path))


def usable_cpus() -> int:
    """CPUs this process may run on (a Slurm allocation or taskset, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_torch_threads(threads: int) -> int:
    """Use the rule's ``threads`` for torch, never more than the CPUs we may run on."""
    import torch

    n = max(1, min(threads, usable_cpus()))
    torch.set_num_threads(n)
    return n


RECORD_MODULES = "FINETUNE_RECORD_MODULES"


def record_loaded_modules() -> None:
    """With FINETUNE_RECORD_MODULES=<folder> set, write the ``finetune`` modules this process loaded
    to ``<folder>/<script>.<pid>.txt``, one a line. The tests compare them with the modules each rule
    lists as its inputs (RULE_MODULES in workflow/rules/common.smk)."""
    folder = os.environ.get(RECORD_MODULES)
    if not folder:
        return
    names = sorted(name for name in sys.modules if name == "finetune" or name.startswith("finetune."))
    os.makedirs(folder, exist_ok=True)
    script = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    with open(os.path.join(folder, f"{script}.{os.getpid()}.txt"), "w") as out:
        out.write("".join(f"{name}\n" for name in names))


# Set once a stop is on its way out (finetune.stopping.SignalGuard): a later signal then changes nothing, so it cannot
# turn the stop's message into a traceback (torchrun's closing SIGTERM, a second Ctrl-C).
STOPPING = []


def _stop_now(signum, frame):
    if STOPPING:
        return
    STOPPING.append(signum)  # the process ends with this stop: a second signal is not a second stop
    raise StopRequested(f"{signal.Signals(signum).name}: stopped at once; files being written were discarded, "
                        "earlier results and resume state are kept")


# What stops a job cleanly: SIGTERM (Slurm's walltime, Snakemake), SIGINT (Ctrl-C) and SIGHUP (the terminal or ssh
# session that ran Snakemake closed, which killed the job where it stood).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_signals() -> tuple[signal.Signals, ...]:
    """:data:`STOP_SIGNALS` less those the process ignores: under `nohup` SIGHUP is ignored, and a job started
    so must go on when the terminal closes (a handler of ours would replace the ignore)."""
    return tuple(sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN)


def run(main: Callable[[], int | None], fast_exit: bool = False) -> None:
    """Run ``main``; print a FinetuneError as one clear line (no traceback) and exit 1.

    SIGTERM, SIGINT or SIGHUP (a closed terminal; not where it is ignored, under nohup) end the run cleanly with exit status 143 (128 + SIGTERM), which tells Slurm
    and Snakemake the job was stopped, not broken: during training at the next batch boundary
    (resume state of the last completed epoch kept), elsewhere at once, with any half-written
    result removed.

    ``fast_exit``: once ``main`` has returned, run the ``atexit`` handlers, flush stdout and stderr
    and end the process with ``os._exit``, skipping the interpreter's teardown of every module and
    object. After the dynamo exporter (torch._dynamo, sympy, onnxscript loaded) that teardown took
    2.4-3.5 s of a 15-18 s export job on 2 busy cores, and wrote nothing. Only for scripts whose
    outputs are all closed when ``main`` returns (files written with ``fileio.atomic_path``).
    """
    # The rules send stdout to their log file, where Python buffers it in blocks: without this, a job's log
    # showed no epoch until the job ended, and a job killed (SIGKILL, walltime) lost every line it printed.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    previous = {sig: signal.signal(sig, _stop_now) for sig in stop_signals()}
    jobclock.start()
    try:
        code = main()
    except FinetuneError as exc:
        _ending(previous)
        sys.stderr.write(f"{_rank_prefix()}error: {exc}\n")  # one write: the lines of several processes in one log stay whole
        sys.stderr.flush()
        sys.exit(1)
    except StopRequested as exc:
        _stopped(previous, exc)
    except Exception as exc:
        _ending(previous)
        stop = _stop_within(exc)
        if stop is not None:  # a library caught the stop and raised its own error from it
            _stopped(previous, stop)
        if _peer_gone(exc):
            _peer_gone_exit(exc)
        traceback.print_exc()
        sys.exit(2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        record_loaded_modules()
    timing = jobclock.summary()
    if timing and os.environ.get("RANK", "0") == "0":  # several training processes: rank 0's, as its other lines
        memory = jobclock.peak_memory(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        if memory:
            print(memory, flush=True)
        print(timing, flush=True)
    if fast_exit:
        _exit_now(code or 0)
    sys.exit(code or 0)


# What a collective (gloo, NCCL) raises in the training processes left when another one died (killed, out of memory).
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Read error", "Write error",
              "NCCL communicator was aborted")


def _peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another training process of the job ended."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return False
    return type(exc).__name__ == "DistBackendError" or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in _PEER_GONE))


def _chain(exc: BaseException | None):
    """``exc``, then the exceptions it was raised from or while handling, each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def _stopped(handlers: dict, stop: StopRequested) -> None:
    """End a stopped run, unless the stop came while a lost peer's error was on its way out of ``main`` (through a
    ``finally`` or a context manager's exit: torchrun's SIGTERM to the processes left): that error is why it ends."""
    lost = next((exc for exc in _chain(stop.__context__) if _peer_gone(exc)), None)
    if lost is not None:
        _ending(handlers)
        _peer_gone_exit(lost)
    stopping(handlers, stop)


def _peer_gone_exit(exc: BaseException) -> None:
    sys.stderr.write(f"{_rank_prefix()}error: another training process of this job ended, and this one cannot "
                     f"go on without it (torchrun's summary names it and why): {type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:300]}\n")
    sys.exit(1)


def _ending(handlers: dict) -> None:
    """The job ends with the error in hand: a stop signal from now on (torchrun's SIGTERM to the processes left once
    one has ended, Snakemake's to the jobs left once one failed) must not raise a stop inside the error's handling and
    replace its one line with a traceback. Among several training processes, signals are ignored until the process
    has ended (torchrun's second SIGTERM must not kill it on its way out, changing its exit status)."""
    STOPPING.append("ending")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)
        handlers.clear()  # run's finally restores none: the process ends here


def _rank_prefix() -> str:
    """``rank 1: `` before the error and stop lines of a training process other than the first (several write to one
    log: rank 0's lines are the job's, as its other lines are)."""
    rank = os.environ.get("RANK")
    return f"rank {rank}: " if rank not in (None, "", "0") and os.environ.get("WORLD_SIZE", "1") != "1" else ""


def stopping(handlers: dict, stop: StopRequested) -> None:
    """End a stopped run: exit status 143 and a ``stopped by ...`` line. Among several training processes, signals
    that come meanwhile are ignored (torchrun sends SIGTERM to the processes left once one has exited: it must not
    kill this one on its way out) and the stop is recorded for the launcher (:mod:`finetune.launch`)."""
    STOPPING.append(stop)
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # torchrun's closing SIGTERM must not kill this process
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)
        handlers.clear()  # run's finally restores none: the process ends here
    record = os.environ.get("FINETUNE_STOP_RECORD")
    if record and os.environ.get("RANK") is not None:
        try:
            (Path(record) / f"rank{os.environ['RANK']}").write_text(str(stop))
        except OSError:
            pass  # the launcher then reports torchrun's own outcome
    sys.stderr.write(f"{_rank_prefix()}stopped by {stop}\n")
    sys.stderr.flush()
    sys.exit(143)


def _stop_within(exc: BaseException) -> StopRequested | None:
    """The StopRequested among ``exc``'s causes and contexts: torch's dynamo exporter, for one, catches what the
    traced code raises and raises its own error from it."""
    return next((found for found in _chain(exc) if isinstance(found, StopRequested)), None)


def _exit_now(code: int) -> None:
    """End the process as ``sys.exit`` would, less the interpreter's teardown (see ``run``)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)
