"""One model trained by several processes: ``torch.distributed`` data parallelism, as ``torchrun`` starts it.

``train.devices`` processes per node (GPUs, or CPU processes with ``device: cpu``) times ``train.nodes``
nodes. Every process holds the whole model and reads its own share of each global batch of
``batch_size`` examples from the decoded split (:func:`shard_bounds`); DistributedDataParallel averages the
gradients, and the losses are scaled so that the average is the global batch's (see
``training._train_step``). Every process draws the same epoch order and the same augmentation numbers
(the generators are seeded alike), so a run does not depend on how many processes share it, up to
float rounding. Rank 0 writes the checkpoint, history and resume state; every rank reads the resume state.

A single process (``devices`` and ``nodes`` 1) never touches ``torch.distributed``: :data:`SINGLE`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from .errors import ConfigError
from .options import key_name

# How long a collective waits for a rank that stopped answering before it fails (the job then fails,
# and torchrun names the rank that died first).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object = None  # a gloo process group for the host-side agreement (stop, divergence)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def start(options: dict, log=print) -> Ranks:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK); :data:`SINGLE` for one process.

    ``options``: the run's training options (``devices``, ``nodes``, ``device``, ``batch_size``). Refuses
    a world size other than the one they ask for: a job started by hand without torchrun, or a launcher
    that gave another number of processes, would otherwise train another run quietly.
    """
    devices, nodes = options.get("devices", 1), options.get("nodes", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (devices, nodes)):
        raise ConfigError(f"train: devices and nodes must be whole numbers >= 1, not {devices!r} and {nodes!r}")
    expected = devices * nodes
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != expected:
        raise ConfigError(
            f"{key_name('devices')} {devices} x {key_name('nodes')} {nodes} asks for {expected} training process(es), "
            f"but this one was started as one of {world} (WORLD_SIZE): start it with the workflow's train rule, "
            f"which launches them (python -m finetune.launch)")
    if expected == 1:
        return SINGLE
    die_with_launcher()
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    device = options.get("device", "auto")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.device_count() == 0:
        raise ConfigError(f"{key_name('device')} is cuda, but no CUDA device is available (set it to auto or cpu)")
    if cuda and devices > torch.cuda.device_count():  # every process says it (rather than wait for the ones that cannot start)
        raise ConfigError(f"{key_name('devices')} {devices}: {devices} training processes on the GPUs of this node "
                          f"({key_name('device')} {device}), but it has {torch.cuda.device_count()}: set "
                          f"{key_name('devices')} to {torch.cuda.device_count()} or fewer")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if cuda else dist.group.WORLD
    ranks = Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, control=control)
    if ranks.main:
        batch = options.get("batch_size")
        per_process = batch // ranks.world if isinstance(batch, int) else "batch_size / processes"
        log(f"distributed training: {ranks.world} processes ({devices} per node x {nodes} node(s)), "
            f"backend {'nccl' if cuda else 'gloo'}, {per_process} examples of each global batch per process")
    return ranks


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher() -> None:
    """Make this training process die (SIGKILL) when torchrun, its parent, dies.

    torchrun starts its workers in sessions of their own, so a SIGKILL to the job (to torchrun: the train
    job's process) reached none of them: they trained on, and wrote the outputs of a job Snakemake had
    already failed and cleaned up, which the next run then took as up to date. Now they die with it, as the
    one process of a single-process job does, and the next run resumes from the last saved epoch.
    Linux only (prctl), for processes torchrun started (TORCHELASTIC_RUN_ID); a process whose launcher died
    before this call (it has been handed to init, or to a subreaper started after it) ends here.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    parent = os.getppid()
    try:
        orphaned = parent == 1 or _start_time(parent) > _start_time(os.getpid())
    except (OSError, IndexError, ValueError):
        return  # not ours to read: leave it to the death signal
    if orphaned:
        print("error: torchrun, which started this training process, has ended: stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def _start_time(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (/proc/<pid>/stat, field 22)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19])  # fields after the command's ")" begin at field 3


def stop(ranks: Ranks) -> None:
    if ranks.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def remove_launcher_folders(ranks: Ranks) -> None:
    """After a run that succeeded, the folders torchrun made for its workers' logs on this node
    (``$TMPDIR/torchelastic_*/<run>_*/attempt_0/<local rank>/``, empty when nothing failed): removed by the
    node's local rank 0, empty folders only, so a worker's error file stays where torchrun wrote it.
    Without this every training of several processes left one such tree behind in the temporary folder."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not ranks.active or ranks.local_rank != 0 or not error_file:
        return
    root = next((folder for folder in Path(error_file).parents if folder.name.startswith("torchelastic_")), None)
    if root is None or not root.is_dir():
        return
    for folder, _, _ in os.walk(root, topdown=False):
        try:
            os.rmdir(folder)  # only an empty one
        except OSError:
            pass


def shard_bounds(n: int, ranks: Ranks) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous part of ``n`` examples (a global batch, or the validation split):
    the parts' sizes differ by one at most, the first ranks take the extra."""
    base, extra = divmod(n, ranks.world)
    start = ranks.rank * base + min(ranks.rank, extra)
    return start, start + base + (1 if ranks.rank < extra else 0)


def all_sum(tensor: torch.Tensor, ranks: Ranks, control: bool = False) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; returned). ``control``: over the host-side gloo group."""
    if ranks.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=ranks.control if control else None)
    return tensor


def ddp_threads(threads: int, local_world: int) -> int:
    """CPU threads per process when ``local_world`` processes share a job's ``threads``."""
    return max(1, threads // max(1, local_world))
