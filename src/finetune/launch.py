"""Start a training script as several processes: torchrun on one node, srun + torchrun on several (rule `train`).

    python -m finetune.launch --devices D --nodes N -- SCRIPT [ARGS...]

- ``D x N == 1``: SCRIPT runs as it is, in this process (no torch.distributed).
- one node: ``torchrun --standalone --nproc-per-node D`` (a free local port, no restarts: a failed
  process fails the job, and Snakemake or Slurm's retry resumes it from its resume state).
- ``N`` nodes, inside a Slurm allocation of ``N`` nodes (the profile's ``set-resources`` for `train`,
  docs/gpu.md, "Several GPUs and nodes"): ``srun`` starts one torchrun per node, which meet at the first
  node of the allocation (c10d rendezvous, id = the Slurm job id) and start ``D`` processes each.

When one process fails, torchrun stops the others and ends with a summary naming the first rank that
failed, its exit code or signal; the job's log has it. On one node torchrun runs in this process (the job's), so
that a stop (SIGTERM, SIGINT, SIGHUP: every process stopped at the same step, resume state kept) ends the job as a
single process's does: its ``stopped by ...`` line last and exit status 143, not torchrun's failure (status 1).
Its folder for the stop records and torchrun's worker logs (``$TMPDIR/finetune-launch-<host>-<pid>-*``) is
removed when it ends, however it ends, except for a failed worker's error file; one left by a launcher that was
killed (SIGKILL) is removed by the next launch on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from .cli import stop_signals
from .errors import OTHER_RANKS_SIGNAL

# Where each training process of this node writes why it stopped (finetune.cli.run), for the launcher to tell a
# stop of every process from a failure.
STOP_RECORD = "FINETUNE_STOP_RECORD"


class LaunchError(Exception):
    pass


def command(python: str, devices: int, nodes: int, script_args: list[str], env: dict,
            nodes_key: str = "train.nodes") -> list[str]:
    """The command that starts ``devices x nodes`` processes of ``script_args`` (a script and its arguments)."""
    if devices < 1 or nodes < 1:
        raise LaunchError(f"train.devices and train.nodes must be >= 1, not {devices} and {nodes}")
    if devices * nodes == 1:
        return [python, *script_args]
    torchrun = [python, "-m", "torch.distributed.run", f"--nproc-per-node={devices}", "--max-restarts=0"]
    if nodes == 1:
        return [*torchrun, "--standalone", "--nnodes=1", *script_args]
    problem = allocation_problem(nodes, env, nodes_key)
    if problem:
        raise LaunchError(problem)
    job = env["SLURM_JOB_ID"]
    head = subprocess.run(["scontrol", "show", "hostnames", slurm_allocation(env)[1]], check=True,
                          capture_output=True, text=True).stdout.split()[0]
    port = 20000 + int(job) % 20000  # one port per job: two jobs sharing a node do not meet
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *torchrun,
            f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}", f"--rdzv-id={job}",
            *script_args]


# What Snakemake sets to a job's threads (snakemake.shell) for the math libraries' thread pools (OpenMP, OpenBLAS,
# MKL, ...), which each process of the job would otherwise start in full.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def share_threads(env, local_world: int) -> None:
    """The job's threads shared among the ``local_world`` processes it starts on each node: each thread variable of
    ``env`` divided by it (at least 1), as the training script shares torch's threads (finetune.distributed.ddp_threads),
    so that two processes of a job of 16 threads start no pool of 16 threads each."""
    for name in THREAD_VARIABLES:
        value = env.get(name, "")
        if local_world > 1 and value.isdigit():
            env[name] = str(max(1, int(value) // local_world))


def slurm_allocation(env: dict) -> tuple[int | None, str | None]:
    """The node count and node list of the Slurm job ``env`` is in ((None, None) outside one): from
    SLURM_JOB_NUM_NODES and SLURM_JOB_NODELIST, or where they are not set, from `scontrol show job` of SLURM_JOB_ID.
    The Slurm plugin's jobstep (snakemake-executor-plugin-slurm-jobstep 0.6) removes every SLURM_ variable but the
    job's id before it starts a job's command, so a train job of several nodes saw none ("a Slurm job of None
    node(s)", in an allocation of the nodes asked). None where neither says."""
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job:
        return None, None
    count, nodelist = env.get("SLURM_JOB_NUM_NODES"), env.get("SLURM_JOB_NODELIST")
    if not (count and nodelist):
        try:
            shown = subprocess.run(["scontrol", "show", "job", "--oneliner", str(job)], capture_output=True, text=True,
                                   timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            shown = ""
        fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
        count, nodelist = count or fields.get("NumNodes"), nodelist or fields.get("NodeList")
    number = re.match(r"\d+", count or "")
    return (int(number.group()) if number else None), (nodelist if nodelist not in (None, "", "(null)") else None)


def allocation_problem(nodes: int, env: dict, nodes_key: str = "train.nodes") -> str | None:
    """Why ``nodes`` (> 1) nodes cannot train where ``env`` is (no Slurm allocation of that many nodes), or None.
    Asked by the job, and at the start of a run on this machine (workflow/rules/common.smk) before any job removes
    the outputs it would replace."""
    if nodes <= 1:
        return None
    allocated, nodelist = slurm_allocation(env)
    if allocated == nodes and nodelist:
        return None
    where = ("no Slurm job" if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")) else
             f"a Slurm job of {allocated} node(s) whose node list `scontrol show job` did not give" if allocated == nodes
             else f"a Slurm job of {allocated} node(s)" if allocated else
             f"a Slurm job ({env.get('SLURM_JOB_ID') or env.get('SLURM_JOBID')}) whose nodes `scontrol show job` did "
             "not say")
    return (f"{nodes_key} {nodes}: training on several nodes runs inside a Slurm allocation of {nodes} nodes, and this "
            f"is {where}; run the workflow with the Slurm profile and give rule train `nodes: {nodes}` (docs/gpu.md, "
            f"\"Several GPUs and nodes\"), or set {nodes_key} 1")


def needs_gpus(devices: dict) -> bool:
    """Whether :func:`device_problems` has anything to check in ``devices`` (so whether to count the GPUs)."""
    return any(device == "cuda" or (device == "auto" and processes > 1) for device, processes, _ in devices.values())


def device_problems(devices: dict, gpus: int) -> list[str]:
    """Why the jobs' device settings cannot run on a machine of ``gpus`` GPUs. ``devices``: {device key: (device,
    processes per node, devices key)}. device cuda needs a GPU, and one per process; device auto trains on the GPUs
    where there are some, so several processes a node then need as many (on a machine without, the CPU)."""
    problems = []
    for key, (device, processes, devices_key) in sorted(devices.items()):
        if device == "cuda" and gpus == 0:
            problems.append(f"{key} is cuda, but no CUDA device is available on this machine (set it to auto or cpu, "
                            "or run the workflow where there is a GPU: the Slurm profile)")
        elif device in ("cuda", "auto") and 0 < gpus < processes:
            problems.append(f"{devices_key} {processes} with {key} {device}: {processes} training processes on the "
                            f"GPUs of this machine, but it has {gpus}: set {devices_key} to {gpus} or fewer"
                            f"{f', or {key} to cpu' if device == 'auto' else ''}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1, help="processes per node (train.devices)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (train.nodes)")
    parser.add_argument("--nodes-key", default="train.nodes", help="where nodes is written, for messages")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    args = parser.parse_args(argv)
    script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    if not script_args:
        parser.error("give the script to start after --")
    try:
        cmd = command(sys.executable, args.devices, args.nodes, script_args, dict(os.environ), args.nodes_key)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    share_threads(os.environ, args.devices)
    print(f"launch: {' '.join(cmd)}", flush=True)
    if cmd[1:3] != ["-m", "torch.distributed.run"]:  # one process, or srun on several nodes
        os.execvp(cmd[0], cmd)  # it takes this process's place: signals reach it directly
    # Until torchrun puts in its own handlers (once its processes start), a stop ends the job at once, cleanly.
    for sig in stop_signals():
        signal.signal(sig, _stop_at_once)
    try:
        code = run_torchrun(cmd[3:], args.devices)
    except _Stopped as exc:
        print(f"stopped by {exc}: stopped at once, before the training processes started; earlier results and "
              "resume state are kept", file=sys.stderr, flush=True)
        code = 143
    sys.exit(code)


# Seconds torchrun waits, once asked to stop, for its processes to stop at their next check (at most 32 steps, about
# 5 s apart with slow steps: finetune.stopping.CHECK_SECONDS) before it kills them (torch's default, 30 s, leaves less
# room for an epoch's last steps and its end). TORCH_ELASTIC_SHUTDOWN_TIMEOUT
# in the environment sets another.
SHUTDOWN_TIMEOUT_S = 120


def _first_signal_only(handler):
    """torchrun's signal handler, for the first signal only: a second one (Slurm's and Snakemake's SIGTERM both) raised
    again inside torchrun's wait for its processes, which then were killed before they stopped."""
    seen = []

    def once(signum, frame):
        if seen:
            return
        seen.append(signum)
        handler(signum, frame)

    return once


FOLDER_PREFIX = "finetune-launch-"


def tidy(folder: Path) -> None:
    """``folder`` (a launch's) without its stop records and empty folders: what is left is a failed worker's error
    file, which torchrun's failure summary names."""
    shutil.rmtree(folder / "stops", ignore_errors=True)
    for path, _, _ in os.walk(folder, topdown=False):
        try:
            os.rmdir(path)  # an empty one only
        except OSError:
            pass


def _own_prefix() -> str:
    """Launch folders of this machine: a temporary folder shared by several nodes holds other machines' too, whose
    processes this one cannot see."""
    return f"{FOLDER_PREFIX}{socket.gethostname().replace('-', '_')}-"


def remove_stale_folders(root: Path) -> None:
    """The folders of this user's launches on this machine whose process is gone (killed: nothing of theirs ran at
    the end); never a link, nor another's folder."""
    prefix = _own_prefix()
    for folder in root.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        try:
            info = folder.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and pid.isdigit() and not _running(int(pid)):
            tidy(folder)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class _Stopped(BaseException):
    """A stop before torchrun's handlers are in. A BaseException, as StopRequested: raised wherever the signal finds
    the launcher, inside torch's imports too, where an `except Exception` would take it and the stop be lost (the job
    then trained on to its end, exit 0)."""


def _stop_at_once(signum, frame):
    raise _Stopped(signal.Signals(signum).name)


def run_torchrun(torchrun_args: list[str], local_world: int) -> int:
    """torchrun with ``torchrun_args``, in this process; 143 with the stop's message where every one of the
    ``local_world`` processes stopped on a signal, else torchrun's own outcome (its failure summary, status 1)."""
    from torch.distributed.elastic.multiprocessing import SignalException, api
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    remove_stale_folders(Path(tempfile.gettempdir()))
    folder = Path(tempfile.mkdtemp(prefix=f"{_own_prefix()}{os.getpid()}-"))
    record = folder / "stops"
    record.mkdir()
    os.environ[STOP_RECORD] = str(record)
    # torchrun passes on the stop signals this job does not ignore (under nohup, SIGHUP goes on being ignored), and
    # waits this long for its processes to reach a step where they stop together before it kills them.
    os.environ["PET_SIGNALS_TO_HANDLE"] = ",".join(sig.name for sig in stop_signals())
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    api._terminate_process_handler = _first_signal_only(api._terminate_process_handler)
    try:
        torchrun(["--log-dir", str(folder / "torchrun"), *torchrun_args])
        return 0
    except (ChildFailedError, SignalException) as exc:
        stops = {p.name: p.read_text() for p in sorted(record.glob("rank*"))}
        signalled = isinstance(exc, SignalException)  # this job was asked to stop: torchrun stopped its processes
        if len(stops) < local_world and not signalled:
            # a process failed: torchrun's summary (which rank failed first, its exit code or signal), not a traceback
            print(str(exc), file=sys.stderr, flush=True)
            return 1
        # The stop's own signal first (a rank stopped for another's says less), rank 0's among equals.
        ranked = sorted(stops, key=lambda name: (stops[name].startswith(OTHER_RANKS_SIGNAL), name != "rank0"))
        if ranked:
            message = stops[ranked[0]] + ("" if len(stops) == local_world else
                                          f" ({local_world - len(stops)} other process(es) ended without a stop of "
                                          "their own: done already, still starting, or killed after torchrun's wait)")
        else:
            message = (f"{signal.Signals(exc.sigval).name}: the training processes were stopped before they reached a "
                       "step where they stop together (during their start-up, or killed after torchrun's wait of "
                       f"{os.environ['TORCH_ELASTIC_SHUTDOWN_TIMEOUT']} s); earlier results and the resume state of the "
                       "last completed epoch are kept")
        print(f"stopped by {message}", file=sys.stderr, flush=True)
        return 143
    finally:
        tidy(folder)


if __name__ == "__main__":
    main()
