"""One model trained by two processes (torch.distributed, gloo on the CPU) through the real `train` rule.

What holds: two processes at global batch B draw the same epoch order and the same augmentation numbers
as one process at batch B, each takes half of every batch, and their losses are scaled so that DDP's
average gradient is the gradient of the whole batch's mean loss. What differs is the order of float
additions (each half summed, then the halves added by the all-reduce) and the CPU kernels' rounding on
batches of B/2 images instead of B: a few float32 ulp.

Where the network between the images and the trained weights is smooth, that stays a few ulp: the
head trained on a frozen backbone's live features (`feature_extract` without the cache, augmented
images) gives two-process histories and weights within 1e-5 of one process's (seen: ~1e-7).
Fine-tuning the whole network is not smooth that way: max-pooling routes each gradient to the largest
of tied activations (the images' flat background), and a rounding difference that flips a tie moves a
weight by ~1e-4 in one step, after which the runs part. One process with 1 thread and with 2 threads
part exactly the same way (seen: 3e-8 for two steps, then 1e-4), so that is a property of float
arithmetic, not of distributed training; the fine-tuning test therefore compares two-process runs with
each other: a run with a rank killed and resumed equals the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from faults import job_pids
from helpers import REPO, run_snakemake, tiny_config

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
# 60 training images per class: epochs long enough (~2 s with two processes) to kill one mid-epoch.
DATASET = {"max_train_per_class": 60, "max_val_per_class": 8, "max_test_per_class": 4}
TRAIN = {"epochs": 3, "batch_size": 10, "augment": True, "lr": 0.001}
HEAD = {"strategy": "feature_extract", "cache_features": False, "lr": 0.01}
EXPERIMENTS = {
    "head_one": HEAD,
    "head_two": {**HEAD, "devices": 2},
    "finetune_two": {"strategy": "finetune", "bn": "frozen", "devices": 2},
    "finetune_two_killed": {"strategy": "finetune", "bn": "frozen", "devices": 2},
    "finetune_two_stopped": {"strategy": "finetune", "bn": "frozen", "devices": 2},
    "finetune_two_launcher_killed": {"strategy": "finetune", "bn": "frozen", "devices": 2},
    "finetune_two_launcher_stopped": {"strategy": "finetune", "bn": "frozen", "devices": 2},
    "finetune_two_stopped_at_start": {"strategy": "finetune", "bn": "frozen", "devices": 2},
}


def _config(workdir: Path, **overrides) -> Path:
    # threads.train 1: each process of `two` gets one thread too (the job's threads are shared among its processes)
    return tiny_config(workdir, dataset=DATASET, train=TRAIN, threads={"train": 1, "data": 1},
                       replace={"experiments": EXPERIMENTS}, **overrides)


def _model(workdir: Path, experiment: str) -> Path:
    return workdir / "results" / experiment / "seed0" / "model.pt"


def _target(experiment: str) -> str:
    return f"results/{experiment}/seed0/model.pt"


def _history(workdir: Path, experiment: str) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / experiment / "seed0" / "history.csv")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted runs; and the module lists of the processes that ran `train`."""
    workdir = tmp_path_factory.mktemp("distributed")
    records = workdir / "modules"
    (workdir / "tmp").mkdir()  # the jobs' TMPDIR, where the launcher keeps its stop records and torchrun's logs
    # (A flag first: --configfile would take the targets for more config files.)
    run_snakemake(workdir, _config(workdir), "--printshellcmds", _target("head_one"), _target("head_two"),
                  _target("finetune_two"), env={"FINETUNE_RECORD_MODULES": str(records), **_tmpdir(workdir)})
    return workdir, records


HOST = socket.gethostname().replace("-", "_")  # as the launcher names its folder


def _tmpdir(workdir: Path) -> dict:
    return {"TMPDIR": str(workdir / "tmp")}


def _left_in_tmpdir(workdir: Path) -> list[str]:
    """What the jobs left in their TMPDIR (torch's compile cache aside, torchinductor_<user>: one for every run)."""
    return sorted(p.name for p in (workdir / "tmp").iterdir() if not p.name.startswith("torchinductor_"))


def _rerun(workdir: Path, experiment: str):
    return run_snakemake(workdir, workdir / "config.yaml", "--printshellcmds", _target(experiment),
                         env=_tmpdir(workdir))


def _differences(workdir: Path, experiment: str, reference: str) -> tuple[dict, float]:
    """{history column: largest difference}, largest weight difference between two runs' results."""
    ours, theirs = _history(workdir, experiment), _history(workdir, reference)
    assert len(ours) == len(theirs) == TRAIN["epochs"]
    columns = {c: float((ours[c] - theirs[c]).abs().max())
               for c in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr")}
    a = torch.load(_model(workdir, experiment), weights_only=False)["state_dict"]
    b = torch.load(_model(workdir, reference), weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    return columns, max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_gloo_processes_through_the_train_rule_train_the_run_of_one(runs):
    workdir, records = runs
    columns, weights = _differences(workdir, "head_two", "head_one")
    assert max(columns.values()) < TOLERANCE and weights < TOLERANCE, (columns, weights)
    # and training moved the head by far more than that
    trained = torch.load(_model(workdir, "head_one"), weights_only=False)["state_dict"]["fc.weight"]
    assert _history(workdir, "head_one")["train_loss"].iloc[-1] < _history(workdir, "head_one")["train_loss"].iloc[0]
    assert trained.abs().max() > 1000 * TOLERANCE
    # Five training processes wrote their module lists: one for head_one, two (other pids) for each other run.
    assert len(sorted(records.glob("train.*.txt"))) == 5, sorted(records.glob("train.*.txt"))
    log = (workdir / "results" / "logs" / "train" / "head_two" / "seed0.log").read_text()
    assert "torch.distributed.run --nproc-per-node=2" in log
    # Rank 0 alone wrote the log's epoch lines (each epoch once).
    assert sum(line.startswith("epoch 1/") for line in log.splitlines()) == 1, log
    assert sum(line.startswith("time: ") for line in log.splitlines()) == 1, log  # and the one time line
    # The memory the job needs: both training processes and torchrun, which holds torch too (the launcher's process).
    peak = re.search(r"^peak memory: ([\d,]+) MB \(resident\) in this one of the job's 2 training processes on this "
                     r"machine, each holding about as much, and ([\d,]+) MB in torchrun, which started them: the job "
                     r"needs about ([\d,]+) MB; ", log, re.M)
    assert peak, log[-3000:]
    rank, launcher, total = (int(group.replace(",", "")) for group in peak.groups())
    assert launcher > 100 and abs(2 * rank + launcher - total) <= 2, peak.group(0)
    # The launcher kept its stop records and torchrun its workers' log folders in the jobs' TMPDIR; the runs
    # succeeded, so nothing of theirs is left there.
    assert _left_in_tmpdir(workdir) == []


def _signal_rank_after_epoch_one(workdir: Path, experiment: str, rank: int | None, signum: int) -> tuple[int, str, int]:
    """Run `experiment` through snakemake; once its first epoch is saved, send ``signum`` to its rank ``rank``
    (None: to torchrun, the job's own process). Returns (the process signalled, snakemake's output, its exit status)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", _target(experiment), "--configfile", str(workdir / "config.yaml")]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, **_tmpdir(workdir)})
    resume_dir = workdir / "resources" / "resume" / experiment / "seed0"
    deadline = time.monotonic() + 600
    signalled = None
    while signalled is None and job.poll() is None and time.monotonic() < deadline:
        if list(resume_dir.glob("*.pt")):  # epoch 1 done: the next one is under way
            pids = _torchrun(workdir) if rank is None else job_pids(workdir, "train.py", env=f"RANK={rank}")
            if pids:
                os.kill(pids[0], signum)
                signalled = pids[0]
        time.sleep(0.05)
    out, _ = job.communicate(timeout=600)
    assert signalled is not None, f"no rank-{rank} process found after epoch 1:\n{out[-3000:]}"
    return signalled, out, job.returncode


def _torchrun(workdir: Path) -> list[int]:
    """torchrun's own process (the agent: the launcher, which runs it in its process) of the train job running in
    ``workdir``."""
    return [pid for pid in job_pids(workdir, "train.py")
            if b"finetune.launch" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _ranks(workdir: Path) -> list[int]:
    """The training processes of the train job running in ``workdir`` (torchrun's workers: RANK in their
    environment), zombies left out."""
    return [pid for rank in (0, 1) for pid in job_pids(workdir, "train.py", env=f"RANK={rank}") if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_killed_rank_fails_the_job_naming_it_and_the_next_run_resumes(runs):
    workdir, _ = runs
    killed, out, returncode = _signal_rank_after_epoch_one(workdir, "finetune_two_killed", 1, signal.SIGKILL)
    assert returncode != 0, out[-3000:]
    log = (workdir / "results" / "logs" / "train" / "finetune_two_killed" / "seed0.log").read_text()
    # torchrun's summary names the process that failed first: rank 1, killed by signal 9.
    assert "rank      : 1 (local_rank: 1)" in log, log[-3000:]
    assert f"Signal 9 (SIGKILL) received by PID {killed}" in log, log[-3000:]
    # A failure (exit 1), with torchrun's summary and no traceback: rank 0, whose collective lost its peer, says so
    # in one line (its traceback and exit status 2 read as a bug of ours).
    assert "exit status 1" in out and "Traceback" not in log and "exitcode  : 2" not in log, log[-3000:]
    assert not _model(workdir, "finetune_two_killed").exists()

    assert _left_in_tmpdir(workdir) == []  # no error file: rank 1 was killed, rank 0 exited with its one line
    rerun = _rerun(workdir, "finetune_two_killed")
    log = (workdir / "results" / "logs" / "train" / "finetune_two_killed" / "seed0.log").read_text()
    assert "resuming from" in log, (log[-3000:], rerun.stdout[-2000:])
    # The resumed run is the uninterrupted one, exactly.
    columns, weights = _differences(workdir, "finetune_two_killed", "finetune_two")
    assert max(columns.values()) == 0.0 and weights == 0.0, (columns, weights)


def test_a_killed_torchrun_takes_its_training_processes_with_it_and_the_next_run_resumes(runs):
    """SIGKILL to the job's process, torchrun (a walltime kill, an OOM killer, `kill -9` of the job): its
    workers run in sessions of their own, and once trained on to write the outputs of the failed job."""
    workdir, _ = runs
    experiment = "finetune_two_launcher_killed"
    killed, out, returncode = _signal_rank_after_epoch_one(workdir, experiment, None, signal.SIGKILL)
    assert returncode != 0, out[-3000:]
    deadline = time.monotonic() + 30
    while _ranks(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ranks(workdir) == [], f"training processes outlived torchrun ({killed}): {_ranks(workdir)}"
    assert not _model(workdir, experiment).exists()
    assert list((workdir / "resources" / "resume" / experiment / "seed0").glob("*.pt")), "the resume state went"
    # Killed, the launcher could not remove its folder; the next launch on the machine does.
    assert _left_in_tmpdir(workdir) == [name for name in _left_in_tmpdir(workdir)
                                        if name.startswith(f"finetune-launch-{HOST}-{killed}-")] != []

    _rerun(workdir, experiment)
    assert _left_in_tmpdir(workdir) == []
    log = (workdir / "results" / "logs" / "train" / experiment / "seed0.log").read_text()
    assert "resuming from" in log, log[-3000:]
    columns, weights = _differences(workdir, experiment, "finetune_two")
    assert max(columns.values()) == 0.0 and weights == 0.0, (columns, weights)


@pytest.mark.parametrize("experiment, message", [
    ({"strategy": "finetune", "devices": 2, "batch_size": 9},
     "experiments.bad: batch_size 9 does not divide among 2 processes (devices 2 x nodes 1)"),
    ({"strategy": "feature_extract", "devices": 2},
     "experiments.bad: 2 processes (devices 2 x nodes 1): strategy feature_extract on cached backbone features"),
    ({"strategy": "finetune", "devices": 2, "sync_batchnorm": True, "device": "cpu"},
     "experiments.bad: sync_batchnorm runs on GPUs only"),
    ({"strategy": "finetune", "sync_batchnorm": True, "device": "cuda"},
     "experiments.bad: sync_batchnorm shares BatchNorm statistics among training processes: it needs devices x nodes > 1"),
])
def test_settings_several_processes_cannot_train_are_refused_before_any_job(tmp_path, experiment, message):
    config = tiny_config(tmp_path, replace={"experiments": {"bad": experiment}})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]


def test_more_training_processes_than_threads_on_the_cpu_is_said_at_start(tmp_path):
    """Each process gets one thread at least: the job then uses more cores than Snakemake (or Slurm) gave it."""
    config = tiny_config(tmp_path, threads={"train": 1, "data": 1},
                         replace={"experiments": {"two": {"strategy": "finetune", "bn": "frozen", "devices": 2}}})
    result = run_snakemake(tmp_path, config, "-n")
    assert ("note: two: devices 2 on the CPU (device cpu), more training processes than the train job's threads (1: "
            "threads.train, or --cores where fewer): each gets one thread, so the job uses more cores than it holds") \
        in result.stdout, result.stdout[-3000:]
    config = tiny_config(tmp_path, threads={"train": 2, "data": 1},
                         replace={"experiments": {"two": {"strategy": "finetune", "bn": "frozen", "devices": 2}}})
    assert "more training processes than" not in run_snakemake(tmp_path, config, "-n").stdout
    # on several nodes (a Slurm allocation, where each node's processes have the node's CPUs): not said
    config = tiny_config(tmp_path, threads={"train": 1, "data": 1}, replace={
        "experiments": {"two": {"strategy": "finetune", "bn": "frozen", "devices": 2, "nodes": 2}}})
    assert "more training processes than" not in run_snakemake(tmp_path, config, "-n").stdout


def test_the_launcher_shares_the_jobs_math_library_threads_among_its_processes(tmp_path):
    # Snakemake sets OMP_NUM_THREADS and its kin to the job's threads; each of two processes got all of them (a job
    # of 16 threads started two pools of 16), where torch's own threads were shared.
    script = tmp_path / "threads.py"
    script.write_text("import json, os, sys, torch\n"
                      "names = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS')\n"
                      "seen = {name: os.environ.get(name) for name in names} | {'torch': torch.get_num_threads()}\n"
                      "open(sys.argv[1] + os.environ['RANK'], 'w').write(json.dumps(seen))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMEXPR_NUM_THREADS", "MKL_NUM_THREADS")} | {
        "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "5", "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "4"}
    result = subprocess.run([sys.executable, "-m", "finetune.launch", "--devices", "2", "--", str(script),
                             str(tmp_path / "rank")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}").read_text())
        assert seen == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1",
                        "NUMEXPR_NUM_THREADS": None, "torch": 2}, seen


def test_several_nodes_outside_a_slurm_allocation_is_refused_by_the_launcher(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-m", "finetune.launch", "--devices", "2", "--nodes", "2", "--",
                             str(REPO / "workflow" / "scripts" / "train.py")], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "train.nodes 2: training on several nodes runs inside a Slurm allocation of 2 nodes" in result.stderr
    # The workflow says where nodes is written: an experiment's key named as such (it said train.nodes); at the start
    # of the run, before any job (the launcher's refusal came after Snakemake removed the outputs it would replace)
    config = tiny_config(tmp_path, replace={"experiments": {"nd": {"strategy": "finetune", "bn": "frozen", "nodes": 2}}})
    run = run_snakemake(tmp_path, config, "--printshellcmds", "results/nd/seed0/model.pt", check=False,
                        env={k: "" for k in os.environ if k.startswith("SLURM_")})
    assert run.returncode != 0 and ("experiments.nd.nodes 2: training on several nodes runs inside a Slurm allocation of "
                                    "2 nodes, and this is no Slurm job") in run.stdout \
        and "or set experiments.nd.nodes 1" in run.stdout, run.stdout[-3000:]
    assert not (tmp_path / "results/logs/train/nd").exists() and not (tmp_path / "resources").exists()


def test_sigterm_to_one_rank_stops_every_rank_cleanly_and_the_run_resumes(runs):
    workdir, _ = runs
    _, out, returncode = _signal_rank_after_epoch_one(workdir, "finetune_two_stopped", 1, signal.SIGTERM)
    assert returncode != 0, out[-3000:]
    log = (workdir / "results" / "logs" / "train" / "finetune_two_stopped" / "seed0.log").read_text()
    # Both ranks stopped at the same step, through the training loop's clean stop (exit status 143), rank 1 for
    # its own signal and rank 0 because rank 1 was asked; neither was killed.
    stops = re.findall(r"^(?:rank 1: )?stopped by (SIGTERM|a signal to another training process) at epoch (\d+), step (\d+)",
                       log, re.M)
    assert re.search(r"^rank 1: stopped by SIGTERM at epoch", log, re.M), log[-3000:]  # each line says whose it is
    assert sorted(set(kind for kind, *_ in stops)) == ["SIGTERM", "a signal to another training process"], log[-3000:]
    assert len({tuple(where) for _, *where in stops}) == 1, stops
    # The job ends as one process's stop does: status 143 (not torchrun's failure, 1), the stop's line last.
    # (torchrun names whichever rank it saw end first, each with 143)
    assert re.search(r"failed \(exitcode: 143\) local_rank: [01]", log) and "Signal 9" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert re.match(r"stopped by SIGTERM at epoch \d+, step \d+ \(all 2 processes\)", log.strip().splitlines()[-1]), \
        log[-3000:]  # the stop's own signal, not rank 0's "a signal to another training process"
    assert "exit status 143" in out, out[-3000:]
    assert not _model(workdir, "finetune_two_stopped").exists()
    assert _left_in_tmpdir(workdir) == []

    _rerun(workdir, "finetune_two_stopped")
    log = (workdir / "results" / "logs" / "train" / "finetune_two_stopped" / "seed0.log").read_text()
    assert "resuming from" in log, log[-3000:]
    columns, weights = _differences(workdir, "finetune_two_stopped", "finetune_two")
    assert max(columns.values()) == 0.0 and weights == 0.0, (columns, weights)


def test_sigterm_to_the_job_stops_every_rank_with_status_143_and_the_run_resumes(runs):
    """SIGTERM to the job's process (Slurm's walltime, Snakemake stopping its jobs): torchrun, in that process, passes
    it on; every rank stops at the same step, and the job ends with 143 and the stop's line, without a traceback."""
    workdir, _ = runs
    experiment = "finetune_two_launcher_stopped"
    _, out, returncode = _signal_rank_after_epoch_one(workdir, experiment, None, signal.SIGTERM)
    log = (workdir / "results" / "logs" / "train" / experiment / "seed0.log").read_text()
    assert returncode != 0 and "exit status 143" in out, out[-3000:]
    assert "Traceback" not in log and "Signal 9" not in log, log[-3000:]
    assert re.match(r"stopped by SIGTERM at epoch \d+, step \d+ \(all 2 processes\)", log.strip().splitlines()[-1]), log[-3000:]
    assert _left_in_tmpdir(workdir) == []
    _rerun(workdir, experiment)
    log = (workdir / "results" / "logs" / "train" / experiment / "seed0.log").read_text()
    assert "resuming from" in log, log[-3000:]
    columns, weights = _differences(workdir, experiment, "finetune_two")
    assert max(columns.values()) == 0.0 and weights == 0.0, (columns, weights)


def test_sigterm_to_the_job_while_it_starts_stops_it_with_status_143(runs):
    """Before torchrun's processes train (torch still importing, or the processes starting): the job ends at once,
    cleanly, and the next run trains the run from its start."""
    workdir, _ = runs
    experiment = "finetune_two_stopped_at_start"
    log_file = workdir / "results" / "logs" / "train" / experiment / "seed0.log"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", _target(experiment), "--configfile", str(workdir / "config.yaml")]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, **_tmpdir(workdir)})
    deadline, signalled = time.monotonic() + 300, None
    while signalled is None and job.poll() is None and time.monotonic() < deadline:
        if log_file.exists() and "launch: " in log_file.read_text() and _torchrun(workdir):
            os.kill(_torchrun(workdir)[0], signal.SIGTERM)
            signalled = True
        time.sleep(0.02)
    out, _ = job.communicate(timeout=600)
    log = log_file.read_text()
    assert signalled and job.returncode != 0 and "exit status 143" in out, out[-3000:]
    assert "Traceback" not in log and log.strip().splitlines()[-1].startswith("stopped by SIGTERM"), log[-3000:]
    _rerun(workdir, experiment)
    assert _left_in_tmpdir(workdir) == []
    columns, weights = _differences(workdir, experiment, "finetune_two")
    assert max(columns.values()) == 0.0 and weights == 0.0, (columns, weights)


# Two gloo processes (RANK 0 and 1) meeting at the file argv[1], finetune's src at argv[2]: each with its Ranks and
# SignalGuard, as the training loop holds them.
_GLOO_PAIR = """
import os, signal, sys, time
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from finetune.distributed import Ranks
from finetune.errors import StopRequested
from finetune.options import TrainOptions
from finetune.stopping import DivergenceCheck, SignalGuard
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=rank, world_size=2)
ranks = Ranks(rank=rank, world=2, control=dist.new_group(backend="gloo"))
guard = SignalGuard()
"""

_AGREE_THEN_LATE_SIGNAL = _GLOO_PAIR + """
if rank == 1:
    guard.signum = signal.SIGTERM  # this rank's own signal, before the two agree
DivergenceCheck(TrainOptions(), 0, [], None, ranks, guard).check()
dist.barrier()
guard.signum = signal.SIGTERM  # rank 0: the launcher's SIGTERM once rank 1 has gone, after the agreement
try:
    guard.stop_now(lambda: "at step 1")
except StopRequested as exc:
    print(exc)
dist.destroy_process_group()
"""


def test_a_rank_stopped_for_another_ranks_signal_says_so_even_if_the_launcher_signals_it_afterwards(tmp_path):
    """torchrun sends SIGTERM to the ranks still running once one has exited: rank 0, stopping because rank 1
    was asked, may get it between the ranks' agreement and its own message. Its message names the reason as
    it stood at the agreement (the CI run that saw the race reported SIGTERM for both)."""
    procs = [subprocess.Popen([sys.executable, "-c", _AGREE_THEN_LATE_SIGNAL, str(tmp_path / "store"), str(REPO / "src")],
                              env={**os.environ, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert outs[0].strip() == "a signal to another training process at step 1", outs
    assert outs[1].strip() == "SIGTERM at step 1", outs


_SLOW_STEPS_THEN_SIGNAL = _GLOO_PAIR + """
check = DivergenceCheck(TrainOptions(), 0, [], None, ranks, guard)
for step in range(1, 100):
    time.sleep(float(sys.argv[3]))  # a slow training step
    if rank == 1 and step == 2:
        guard.signum = signal.SIGTERM  # rank 1 is asked to stop during step 2
    check.add(torch.tensor(1.0))
    if guard.agreed:
        print(step)
        break
dist.destroy_process_group()
"""


def test_several_processes_agree_on_a_stop_within_seconds_of_slow_steps(tmp_path):
    """Steps of 0.3 s (a CPU, large images): the ranks check at a pace of about CHECK_SECONDS (5 s), not every 32
    steps (10 s here, minutes on slower steps: past Slurm's 30 s KillWait), and both agree at the same step. The
    first check follows the first step; from it the interval is at most 5 / 0.3 = 16 steps."""
    from finetune.stopping import CHECK_SECONDS

    step_s = 0.3
    procs = [subprocess.Popen([sys.executable, "-c", _SLOW_STEPS_THEN_SIGNAL, str(tmp_path / "store"), str(REPO / "src"),
                               str(step_s)], env={**os.environ, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    steps = [int(out.strip().splitlines()[-1]) for out in outs]
    assert steps[0] == steps[1] and 2 <= steps[0] <= 1 + int(CHECK_SECONDS / step_s), steps


def test_the_launcher_sweeps_only_its_own_machines_folders_of_launches_that_are_gone(tmp_path):
    """A folder of a killed launch on this machine goes (its empty folders and stop records; a worker's error file
    stays); a live launch's, another machine's (a temporary folder shared by nodes) and a link are left alone."""
    from finetune.launch import remove_stale_folders

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, live = gone.pid, os.getpid()
    target = tmp_path / "elsewhere" / "empty"
    target.mkdir(parents=True)
    root = tmp_path / "tmp"
    folders = {name: root / name for name in (f"finetune-launch-{HOST}-{dead}-a", f"finetune-launch-{HOST}-{dead}-b",
                                              f"finetune-launch-{HOST}-{live}-c", f"finetune-launch-other_node-{dead}-d")}
    for folder in folders.values():
        (folder / "stops").mkdir(parents=True)
        (folder / "stops" / "rank0").write_text("SIGTERM at epoch 1, step 3")
        (folder / "torchrun" / "run_x" / "attempt_0" / "0").mkdir(parents=True)
    error = folders[f"finetune-launch-{HOST}-{dead}-b"] / "torchrun" / "run_x" / "attempt_0" / "0" / "error.json"
    error.write_text("{}")
    (root / f"finetune-launch-{HOST}-{dead}-e").symlink_to(tmp_path / "elsewhere")
    remove_stale_folders(root)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == sorted([
        *(f"finetune-launch-{HOST}-{dead}-b/{p}" for p in ("torchrun", "torchrun/run_x", "torchrun/run_x/attempt_0",
                                                          "torchrun/run_x/attempt_0/0", "torchrun/run_x/attempt_0/0/error.json")),
        f"finetune-launch-{HOST}-{dead}-b",
        *(f"{name}/{p}" for name in (f"finetune-launch-{HOST}-{live}-c", f"finetune-launch-other_node-{dead}-d")
          for p in ("stops", "stops/rank0", "torchrun", "torchrun/run_x", "torchrun/run_x/attempt_0", "torchrun/run_x/attempt_0/0")),
        f"finetune-launch-{HOST}-{live}-c", f"finetune-launch-other_node-{dead}-d", f"finetune-launch-{HOST}-{dead}-e",
    ]), left
    assert target.is_dir()


def test_settings_this_machine_cannot_run_are_refused_at_start_keeping_the_trained_model(runs):
    """A trained run's `nodes` raised to 2 on a machine outside Slurm, its `device` set to cuda where there is no
    GPU, or sync_batchnorm on device auto there: each failed in the train job, after Snakemake had removed the model trained before (setting it back meant
    training again). They are refused at the start of the run now, before any job, and the model is kept byte for
    byte. A dry run says nothing (it may plan a run for a cluster, whose nodes have what this machine lacks)."""
    workdir, _ = runs
    model = _model(workdir, "head_one")
    before = model.read_bytes()
    # no GPU to torch, even on a machine with one; no Slurm allocation, even inside one
    env = {**_tmpdir(workdir), "CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_ID": ""}
    for name, setting, message in (
            ("nodes", {"nodes": 2}, "experiments.head_one.nodes 2: training on several nodes runs inside a Slurm "
                                    "allocation of 2 nodes, and this is no Slurm job"),
            ("cuda", {"device": "cuda"}, "experiments.head_one.device is cuda, but no CUDA device is available on "
                                         "this machine"),
            # device auto on no GPU trains on the CPU, where SyncBatchNorm does not run (the job failed after torchrun)
            ("sync", {"strategy": "finetune", "bn": "train", "devices": 2, "sync_batchnorm": True, "device": "auto"},
             "experiments.head_one.sync_batchnorm true (head_one): SyncBatchNorm runs on GPUs only, and this machine "
             "has no GPU that torch sees")):
        config = tiny_config(workdir, f"{name}.yaml", dataset=DATASET, train=TRAIN, threads={"train": 1, "data": 1},
                             replace={"experiments": {**EXPERIMENTS, "head_one": {**HEAD, **setting}}})
        planned = run_snakemake(workdir, config, "-n", _target("head_one"), env=env)
        assert "rule train:" in planned.stdout and message not in planned.stdout, planned.stdout[-3000:]
        result = run_snakemake(workdir, config, "--printshellcmds", _target("head_one"), env=env, check=False)
        assert result.returncode != 0
        assert message in result.stdout and "nothing ran, and every earlier result is kept" in result.stdout, \
            result.stdout[-3000:]
        assert "rule train:" not in result.stdout, result.stdout[-3000:]
        assert model.read_bytes() == before


@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
def test_device_settings_a_machine_cannot_run_follow_from_its_gpu_count(gpus):
    """The check at start (local_run_problems) for each GPU count a machine may have, the rule written out here:
    cuda needs a GPU and one per process; auto takes the GPUs where there are some, one per process, else the CPU;
    cpu needs none."""
    from finetune.launch import device_problems, needs_gpus

    settings = {"experiments.one.device": ("cuda", 1, "experiments.one.devices"),
                "experiments.two.device": ("cuda", 2, "experiments.two.devices"),
                "experiments.auto_two.device": ("auto", 2, "experiments.auto_two.devices"),
                "experiments.auto_one.device": ("auto", 1, "experiments.auto_one.devices"),
                "experiments.cpu_four.device": ("cpu", 4, "experiments.cpu_four.devices"),
                "evaluate.device": ("cuda", 1, None)}
    refused = {key for key, (device, processes, _) in settings.items()
               if (device == "cuda" and gpus < processes) or (device == "auto" and 0 < gpus < processes)}
    problems = device_problems(settings, gpus)
    assert {problem.split(" ")[0] if " is cuda" in problem else problem.split(" with ")[1].split(" ")[0]
            for problem in problems} == refused, problems
    assert len(problems) == len(refused)
    for problem in problems:
        if gpus == 0:
            assert "is cuda, but no CUDA device is available on this machine" in problem
        else:
            assert f"but it has {gpus}: set" in problem
    assert needs_gpus(settings) and not needs_gpus({"k": ("cpu", 4, "d"), "a": ("auto", 1, "d")})
    assert needs_gpus({"a": ("auto", 2, "d")})  # auto in 2 processes takes 2 GPUs where there are some: counted


TWO_RUNS = {"train": 2, "evaluate": 2, "export_onnx": 2, "split": 2, "pretrain": 1, "summary": 1}
ONE_RUN = {"train": 1, "evaluate": 1, "export_onnx": 1, "lr_find": 1, "decode": 1}


@pytest.mark.parametrize("case", [
    # cores, (threads.train, threads.data), jobs, on the GPU, taking the whole gpu resource: the pairs that wait
    (16, (16, 16), TWO_RUNS, {"train", "evaluate"}, set(),
     ["train and train", "train and evaluate", "train and export_onnx", "evaluate and evaluate",
      "evaluate and export_onnx"]),
    (16, (8, 8), TWO_RUNS, {"train", "evaluate"}, set(), []),
    (16, (12, 8), TWO_RUNS, {"train"}, set(), ["train and train", "train and evaluate", "train and export_onnx"]),
    (16, (16, 1), TWO_RUNS, {"train"}, {"train"}, ["train and evaluate", "train and export_onnx"]),
    (16, (16, 1), TWO_RUNS, {"train", "evaluate"}, {"train", "evaluate"}, ["train and export_onnx"]),
    (4, (4, 4), ONE_RUN, {"train"}, set(), []),  # evaluate on the CPU: its export beside it is no GPU's wait
    (4, (4, 4), ONE_RUN, {"train", "evaluate"}, set(), ["evaluate and export_onnx"]),
    (4, (4, 4), {"train": 1, "lr_find": 1}, {"train"}, set(), []),  # lr_find comes before its run's train job
    (4, (4, 4), TWO_RUNS, set(), set(), []),  # nothing on the GPU
    (None, (4, 4), TWO_RUNS, {"train"}, set(), []),  # no --cores (a cluster's run)
    (1, (4, 4), TWO_RUNS, {"train"}, set(), []),
], ids=lambda case: "-".join(map(str, case[:2])) + f"-{sorted(case[3])}-{sorted(case[4])}")
def test_the_note_on_jobs_that_cannot_run_beside_a_gpu_job_names_those_pairs_and_the_threads_to_halve(case):
    """side_by_side_note (said at start on a machine whose GPU this run's jobs use), against cases worked out here:
    two jobs that could run at once (two runs' trains; a train and another run's evaluate or export; evaluate and
    export), one on the GPU, not both holding the whole gpu resource, whose threads add up to more than --cores."""
    from finetune.startchecks import side_by_side_note

    cores, (train, data), scheduled, on_gpu, whole_gpu, waiting = case
    threads = {"train": train, "data": data}
    note = side_by_side_note(cores, threads, scheduled, on_gpu, whole_gpu)
    if not waiting:
        assert note is None, note
        return
    key_of = {"train": "train", "evaluate": "data", "export_onnx": "data"}
    involved = {key_of[rule] for pair in waiting for rule in pair.split(" and ")}
    # the keys to lower: those of the waiting pairs above half the cores (one at half or below leaves room already)
    halve = [key for key in ("train", "data") if key in involved and min(threads[key], cores) > cores // 2]
    assert note.startswith(" and ".join(f"threads.{key} {threads[key]}" for key in halve) + f" on --cores {cores}:")
    assert f"could run at once ({', '.join(waiting)}) run one at a time" in note, note
    assert f"with {' and '.join(f'threads.{key}' for key in halve)} {cores // 2} (half the cores)" in note, note


def test_the_note_on_uncached_bytecode_is_said_only_where_every_torch_job_would_compile_torch_again(tmp_path):
    """uncached_bytecode_note (said at start): PYTHONDONTWRITEBYTECODE set, torch's folder without __pycache__, no
    PYTHONPYCACHEPREFIX and a job that imports torch; any one of them missing, nothing is said."""
    from finetune.startchecks import uncached_bytecode_note

    bare, compiled = tmp_path / "bare" / "torch", tmp_path / "compiled" / "torch"
    bare.mkdir(parents=True)
    (compiled / "__pycache__").mkdir(parents=True)
    note = uncached_bytecode_note({"PYTHONDONTWRITEBYTECODE": "1"}, bare, 5)
    assert note.startswith(f"PYTHONDONTWRITEBYTECODE is set and torch ({bare}) holds no compiled bytecode") and \
        "each of the 5 job(s) of this run that import torch" in note and "unset PYTHONDONTWRITEBYTECODE" in note
    assert uncached_bytecode_note({"PYTHONDONTWRITEBYTECODE": ""}, bare, 5) is None  # empty: Python writes bytecode
    assert uncached_bytecode_note({}, bare, 5) is None
    assert uncached_bytecode_note({"PYTHONDONTWRITEBYTECODE": "1"}, compiled, 5) is None
    assert uncached_bytecode_note({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path)}, bare, 5) is None
    assert uncached_bytecode_note({"PYTHONDONTWRITEBYTECODE": "1"}, bare, 0) is None
    assert uncached_bytecode_note({"PYTHONDONTWRITEBYTECODE": "1"}, None, 5) is None
