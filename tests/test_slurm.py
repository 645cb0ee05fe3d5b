"""The workflow on a real one-node Slurm cluster, through profiles/slurm (issue 6: run on a cluster).

A session fixture installs Slurm where it can (root, Debian, apt-get: .ci/slurm/install-slurm.sh), starts
slurmctld, slurmd and a munged of their own in a temporary SLURM_DIR (.ci/slurm/start-slurm.sh) and always
stops them by PID afterwards (.ci/slurm/stop-slurm.sh), also when a test fails. Elsewhere the tests skip;
in CI (CI set) they fail instead (tests/prerequisites.py).

Each Slurm job costs ~12 s of overhead (a nested snakemake and the plugin's polling), so the tests use the
tiny config: 12 jobs through Slurm, 3 local ones, and one failing job.

Run them: python -m pytest tests/test_slurm.py -m slurm
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO, TINY_CONFIG, jobs_run, run_snakemake, tiny_config
from prerequisites import missing

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPTS = REPO / ".ci" / "slurm"
PROFILE = REPO / "profiles" / "slurm"
SLURM_COMMANDS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
# The rules declared `localrule: True` (downloads need the internet, which compute nodes often lack) and `all`.
LOCAL_RULES = {"weights", "summary", "all"}
# The tiny config's DAG: what must have gone through Slurm, job by job.
SLURM_JOBS = {"split": 2, "decode": 2, "pretrain": 1, "train": 3, "evaluate": 3, "export_onnx": 3}
RUNS = ["finetune/seed0", "feature_extract/seed0", "scratch/seed0"]

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
RULE_HEADER = re.compile(r"^(local)?rule (\w+):$")
JOBID_LINE = re.compile(r"^jobid: (\d+)$")


@dataclass(frozen=True)
class Cluster:
    slurm_dir: Path
    cpus: int
    mem_mb: int

    def snakemake_args(self) -> list[str]:
        """Through profiles/slurm, as a user would; plus settings for this one small, idle test node."""
        return [
            "--workflow-profile", str(PROFILE),
            # No --cores, as README's command has it: the profile's `jobs` caps the jobs in Slurm at once, and
            # Slurm queues them and starts each as soon as the node frees, without waiting for Snakemake's next
            # poll (run_snakemake's `--cores 2` would cap the cores asked at once: one training job at a time).
            # Threads stay the tiny config's (train 2, data 1).
            # The profile is sized for real cluster nodes: Snakemake lowers each job's memory request to this
            # node's memory (and keeps the jobs it has in Slurm at once within it).
            "--resources", f"mem_mb={self.mem_mb}",
            # This cluster answers at once: poll it 1 s after a submission (the profile waits 20 s).
            "--slurm-init-seconds-before-status-checks", "1",
        ]


def _why_no_slurm() -> str | None:
    """Why Slurm cannot be installed and started here, or None."""
    if not sys.platform.startswith("linux"):
        return f"a one-node Slurm cluster needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "starting a Slurm cluster needs root (SlurmUser=root, /etc/slurm/slurm.conf)"
    if not Path("/etc/debian_version").exists():
        return "not Debian: .ci/slurm/install-slurm.sh installs Debian's slurm packages"
    missing = [cmd for cmd in SLURM_COMMANDS if shutil.which(cmd) is None]
    if missing and shutil.which("apt-get") is None:
        return f"{', '.join(missing)} missing and no apt-get to install them"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.is_symlink():
        return f"{conf} is a real file (a Slurm installation): the test cluster would replace it"
    return None


def _node() -> tuple[int, int]:
    """CPUs and memory (MB) of the cluster's one node."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True, check=True)
    cpus, mem = out.stdout.split()[:2]
    return int(cpus), int(mem)


@pytest.fixture(scope="session")
def slurm_cluster(request) -> Cluster:
    """A one-node Slurm cluster for the session; its daemons are stopped by PID at the end, always."""
    reason = _why_no_slurm()
    if reason:
        missing(reason)
    installed = subprocess.run(["bash", str(SCRIPTS / "install-slurm.sh")], capture_output=True, text=True,
                               timeout=900)
    if installed.returncode == 2:
        missing(installed.stderr.strip())
    if installed.returncode != 0:
        pytest.fail(f"installing Slurm failed:\n{installed.stdout}\n{installed.stderr}")

    # Under /tmp, not pytest's private tmp dir: munged runs as user `munge` and must reach its socket.
    slurm_dir = Path(tempfile.mkdtemp(prefix="finetune-slurm-", dir="/tmp"))
    env = {**os.environ, "SLURM_DIR": str(slurm_dir)}

    def stop():
        stopped = subprocess.run(["bash", str(SCRIPTS / "stop-slurm.sh")], env=env, capture_output=True,
                                 text=True, timeout=120)
        print(stopped.stdout, stopped.stderr, sep="", end="")
        if request.session.testsfailed:
            print(f"Slurm state and logs kept for inspection: {slurm_dir}/log")
        else:
            shutil.rmtree(slurm_dir, ignore_errors=True)

    # Registered before starting: a half-started cluster is stopped too.
    request.addfinalizer(stop)
    started = subprocess.run(["bash", str(SCRIPTS / "start-slurm.sh")], env=env, capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"starting the Slurm cluster failed:\n{started.stdout}\n{started.stderr}")
    cpus, mem_mb = _node()
    if cpus < 2:
        missing(f"the tiny config's training jobs take 2 CPUs; this node has {cpus}")
    return Cluster(slurm_dir, cpus, mem_mb)


def _jobs_by_kind(output: str) -> tuple[dict[int, str], dict[int, str]]:
    """Snakemake job id -> rule name, for the jobs it ran remotely (`rule X:`) and locally (`localrule X:`)."""
    remote, local = {}, {}
    header = None
    for line in output.splitlines():
        line = line.strip()
        if match := RULE_HEADER.match(line):
            header = match
        elif header and (match := JOBID_LINE.match(line)):
            (local if header.group(1) else remote)[int(match.group(1))] = header.group(2)
            header = None
    return remote, local


def _squeue_rows(fields: str, *, run_id: str | None = None, job: str | None = None) -> list[list[str]]:
    """squeue's fields (its `-o` codes, e.g. '%i|%T') of every job of one Snakemake run (named by its run id) or of
    one Slurm job, finished ones included: a row of strings a job."""
    selector = ["--name", run_id] if run_id is not None else ["-j", job]
    out = subprocess.run(["squeue", "--states=all", "-h", *selector, "-o", fields], capture_output=True, text=True,
                         check=True)
    return [[field.strip() for field in line.split("|", fields.count("|"))] for line in out.stdout.splitlines()]


def _squeue(run_id: str) -> dict[str, tuple[str, str]]:
    """Slurm job id -> (state, comment) of every job of one Snakemake run, finished ones included."""
    return {job_id: (state, comment) for job_id, state, comment in _squeue_rows("%i|%T|%k", run_id=run_id)}


def _slurm_cpus(run_id: str) -> dict[str, int]:
    """Slurm job id -> the CPUs Slurm allocated to it, for every job of one Snakemake run, finished ones included."""
    return {job_id: int(cpus) for job_id, cpus in _squeue_rows("%i|%C", run_id=run_id)}


def _job_threads(output: str) -> dict[int, int]:
    """Snakemake job id -> the threads Snakemake gave the job (its `threads:` line; 1 where it prints none)."""
    threads, job = {}, None
    for line in output.splitlines():
        line = line.strip()
        if match := JOBID_LINE.match(line):
            job = int(match.group(1))
            threads[job] = 1
        elif job is not None and (match := re.fullmatch(r"threads: (\d+)", line)):
            threads[job] = int(match.group(1))
        elif RULE_HEADER.match(line):
            job = None
    return threads


def _run_id(output: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, output[-3000:]
    return match.group(1)


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# A value given on the command line reaches every job Snakemake submits as the number it is (Snakemake alone
# would pass the jobs the text '15', which the schema refuses there); 15 is the default: the same outputs.
ON_THE_COMMAND_LINE = ("--config", "evaluate={calibration_bins: 15}")


@pytest.mark.fashion_mnist
def test_pipeline_runs_through_slurm(slurm_cluster, tiny_run, tmp_path):
    workdir = tmp_path / "slurm_run"
    result = run_snakemake(workdir, tiny_config(workdir), *slurm_cluster.snakemake_args(), *ON_THE_COMMAND_LINE,
                           cores=None)
    out = result.stdout
    assert "Using workflow specific profile" in out and str(PROFILE) in out

    # Every job but the declared localrules went through Slurm, each with its own Slurm job id.
    remote, local = _jobs_by_kind(out)
    assert set(local.values()) == LOCAL_RULES, out[-3000:]
    assert Counter(remote.values()) == Counter(SLURM_JOBS), out[-3000:]
    submitted = {int(job): (slurm_id, log) for job, slurm_id, log in SUBMITTED.findall(out)}
    assert set(submitted) == set(remote), "a job ran without a Slurm submission (or was submitted twice)"
    slurm_ids = {slurm_id for slurm_id, _ in submitted.values()}
    assert len(slurm_ids) == len(submitted)
    for job, (_, log) in submitted.items():
        assert Path(log).is_relative_to(workdir / ".snakemake" / "slurm_logs" / f"rule_{remote[job]}"), log

    # Slurm knows them all, as this run's jobs, finished; and none other.
    in_slurm = _squeue(_run_id(out))
    assert set(in_slurm) == slurm_ids
    for job, (slurm_id, _) in submitted.items():
        state, comment = in_slurm[slurm_id]
        assert state == "COMPLETED", (slurm_id, state)
        assert comment == f"rule_{remote[job]}" or comment.startswith(f"rule_{remote[job]}_wildcards_"), comment
    # Slurm reserved for each job the CPUs it runs on: the threads Snakemake gave it (the profile's cpus_per_task:
    # threads), the training jobs the tiny config's threads.train.
    threads, cpus = _job_threads(out), _slurm_cpus(_run_id(out))
    for job, (slurm_id, _) in submitted.items():
        assert cpus[slurm_id] == threads[job], (remote[job], cpus[slurm_id], threads[job])
    assert {threads[job] for job, rule in remote.items() if rule in ("train", "pretrain")} == \
        {TINY_CONFIG["threads"]["train"]}, out[-3000:]

    # Same outputs as the local run of the same config, and sound ones.
    assert _files_under(workdir / "results") == _files_under(tiny_run / "results")
    for run in RUNS:
        parity = json.loads((workdir / "results" / run / "onnx_parity.json").read_text())
        assert parity["passed"] is True, (run, parity)
    # Nothing left incomplete: a second run has nothing to do.
    assert jobs_run(run_snakemake(workdir, workdir / "config.yaml", *slurm_cluster.snakemake_args(),
                                  *ON_THE_COMMAND_LINE, cores=None).stdout) == []


def test_failing_job_fails_the_run_and_names_its_slurm_log(slurm_cluster, tmp_path):
    empty = tmp_path / "no_images"
    for name in ("cat", "dog"):  # class folders of files that are no images: the split job fails, opening them (an
        (empty / name).mkdir(parents=True)  # empty root or class folder is refused at start, before any job)
        (empty / name / "a.png").write_text("not an image")
    workdir = tmp_path / "failing_run"
    config = tiny_config(workdir, replace={"dataset": {"format": "imagefolder", "path": str(empty)}})
    # Only the target split, one attempt (not the profile's `retries: 1`: a second ~30 s failure shows nothing
    # new). The target goes last: `--configfile` takes every word up to the next option.
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), "--retries", "0",
                           "resources/splits/target.csv", check=False, cores=None)
    out = result.stdout
    assert result.returncode != 0, out[-3000:]

    # The job went through Slurm, failed there, and the report names its Slurm log.
    submitted = SUBMITTED.findall(out)
    assert len(submitted) == 1, out[-3000:]
    in_slurm = _squeue(_run_id(out))
    for _, slurm_id, log in submitted:
        assert in_slurm[slurm_id][0] == "FAILED", in_slurm
        assert f"SLURM-job '{slurm_id}' failed" in out
        # The error report lists the job's logs: the rule's own log and the job's Slurm log.
        assert re.search(rf"^    log: .*{re.escape(log)} \(check log file\(s\) for error details\)$", out, re.M), log
        slurm_log = Path(log)
        assert slurm_log.is_relative_to(workdir / ".snakemake" / "slurm_logs" / "rule_split"), log
        assert "Error in rule split" in slurm_log.read_text()
    # `show-failed-logs` puts both logs in the output: the Slurm log, and the rule's log saying what went wrong.
    assert f"Logfile {submitted[0][2]}:" in out
    assert f"2 unreadable image(s) in {empty}" in out, out[-3000:]


def test_a_job_slurm_kills_for_memory_is_said_to_be_so_at_the_end_of_the_run(slurm_cluster, tmp_path):
    """A job past its mem_mb is killed by Slurm (the test cluster enforces --mem as a cluster without cgroups does),
    before its rule's log has a line: Snakemake's report stops at that empty log and leaves out the Slurm log after it,
    the one that says why. The end of the run says it, with Slurm's own line and the log it is in."""
    workdir = tmp_path / "small_mem"
    config = tiny_config(workdir)
    # a Slurm log an earlier run kept (a job of its that Slurm ended): not this run's, so not said
    earlier = workdir / ".snakemake" / "slurm_logs" / "rule_split" / "1.log"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("slurmstepd: error: *** JOB 1 ON node CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***\n")
    os.utime(earlier, (time.time() - 3600, time.time() - 3600))  # (the plugin removes logs 10 days old)
    # (the target before --set-resources, which takes every word after it)
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), "--retries", "0",
                           "resources/splits/target.csv", "--set-resources", "split:mem_mb=50", check=False, cores=None)
    out = result.stdout
    assert result.returncode != 0, out[-3000:]
    [(_, slurm_id, log)] = SUBMITTED.findall(out)
    assert _squeue(_run_id(out))[slurm_id][0] in ("FAILED", "OUT_OF_MEMORY"), out[-3000:]
    # the limit Slurm enforced is mem_mb in MiB (what the plugin passes to --mem): 50 x 2^20 bytes
    killed = re.search(rf"^note: Slurm ended a job \({re.escape(log)}\): slurmstepd\S*: error: .*exceeded memory "
                       rf"limit \(\d+ > {50 * 2 ** 20}\), being killed", out, re.M)
    assert killed, out[-3000:]
    assert killed.group(0).split("): ", 1)[1] in Path(log).read_text()
    # and what to raise: the rule's mem_mb, with what Slurm counted (bytes, in MiB as --mem reads mem_mb)
    used = int(re.search(r"exceeded memory limit \((\d+) > ", killed.group(0)).group(1))
    note = next(line for line in out.splitlines() if line.startswith(killed.group(0)))
    assert note.endswith(f" (it went past its memory, {-(-used // 2 ** 20):,} MiB used of the 50 allowed: raise rule "
                         "split's mem_mb in the profile's set-resources)"), note
    assert "DUE TO TIME LIMIT" not in out and len(re.findall("^note: Slurm ended a job", out, re.M)) == 1, out[-3000:]
    assert not (workdir / "resources/splits/target.csv").exists()


def test_a_run_of_two_processes_is_one_slurm_job_and_trains_as_one_process_does(slurm_cluster, tmp_path):
    # The head on a frozen backbone's live features: smooth, so two processes train one's run to ~1e-7
    # (tests/test_distributed.py says why fine-tuning the whole network is compared otherwise).
    head = {"strategy": "feature_extract", "cache_features": False, "augment": True, "lr": 0.01, "epochs": 2}
    target = "results/head/seed0/model.pt"
    runs = {}
    for name, extra in (("local", {}), ("slurm", {"devices": 2})):
        workdir = tmp_path / name
        config = tiny_config(workdir, replace={"experiments": {"head": {**head, **extra}}})
        args = slurm_cluster.snakemake_args() if name == "slurm" else []
        # (A flag first: --configfile would take the target for another config file.)
        result = run_snakemake(workdir, config, *args, "--printshellcmds", target,
                               env={"FINETUNE_RECORD_MODULES": str(workdir / "modules")},
                               cores=None if name == "slurm" else 2)
        runs[name] = (workdir, result.stdout)

    workdir, out = runs["slurm"]
    remote, _ = _jobs_by_kind(out)
    train_jobs = [job for job, rule in remote.items() if rule == "train"]
    assert len(train_jobs) == 1, out[-3000:]
    submitted = {int(job): slurm_id for job, slurm_id, _ in SUBMITTED.findall(out)}
    assert train_jobs[0] in submitted, "the train job ran without a Slurm submission"
    in_slurm = _squeue(_run_id(out))
    assert in_slurm[submitted[train_jobs[0]]][0] == "COMPLETED"
    # One Slurm job, two training processes (two module lists from train.py, other pids).
    assert len(list((workdir / "modules").glob("train.*.txt"))) == 2
    assert "torch.distributed.run --nproc-per-node=2" in (workdir / "results/logs/train/head/seed0.log").read_text()

    import pandas as pd
    import torch

    local, slurm = (pd.read_csv(runs[n][0] / "results/head/seed0/history.csv") for n in ("local", "slurm"))
    for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        assert (local[column] - slurm[column]).abs().max() < 1e-5, (column, local[column], slurm[column])
    a, b = (torch.load(runs[n][0] / target, weights_only=False)["state_dict"] for n in ("local", "slurm"))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-5


@pytest.mark.fashion_mnist
def test_a_config_that_replaces_the_demo_s_is_the_config_of_every_slurm_job(slurm_cluster, tmp_path):
    """--replace-workflow-config: the user's config alone, not merged over config/config.yaml (the demo's, in the
    working directory). Snakemake 9.27 does not pass the flag on to the jobs it submits, whose Snakemake read the demo
    under the user's config again: the split job drew 10 training images per class (the demo's cap) where the user's
    config has none. Through Slurm, the split is the one a local run of the same command makes."""
    dataset = {key: value for key, value in TINY_CONFIG["dataset"].items() if key != "max_train_per_class"}
    splits = {}
    for name in ("local", "slurm"):
        workdir = tmp_path / name
        (workdir / "config").mkdir(parents=True)
        shutil.copy(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
        config = tiny_config(workdir, name="mine.yaml", replace={"dataset": dataset})
        args = [*slurm_cluster.snakemake_args(), "--retries", "0"] if name == "slurm" else []
        result = run_snakemake(workdir, config, "--replace-workflow-config", *args, "resources/splits/target.csv",
                               cores=None if name == "slurm" else 2)
        if name == "slurm":
            assert len(SUBMITTED.findall(result.stdout)) == 1, result.stdout[-3000:]
        splits[name] = (workdir / "resources/splits/target.csv").read_bytes()
    import io

    import pandas as pd

    split = pd.read_csv(io.BytesIO(splits["slurm"]))
    train = split[split["split"] == "train"].groupby("class_name").size()
    # Fashion-MNIST has 6,000 training images per class: all but the validation images drawn train.
    assert len(train) == 4 and (train > 100).all(), train.to_dict()
    assert splits["slurm"] == splits["local"]


def test_a_job_reads_its_allocation_from_slurm_without_the_slurm_variables(slurm_cluster, tmp_path):
    """The plugin's jobstep starts a job's command without the SLURM_ variables but the job's id (plugin-slurm-jobstep
    0.6.1): a train job of several nodes read no node count ("a Slurm job of None node(s)") in an allocation of the
    nodes asked. The launcher asks Slurm then (`scontrol show job`): in a real job, its environment stripped as the
    jobstep strips it, it reads the allocation squeue shows."""
    probe = ("import os, sys; sys.path.insert(0, sys.argv[1]); from finetune.launch import slurm_allocation; "
             "env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_') or k == 'SLURM_JOB_ID'}; "
             "print(*slurm_allocation(env), sep='|')")
    out = tmp_path / "probe.out"
    submitted = subprocess.run(["sbatch", "--parsable", "--wait", "-o", str(out), "--wrap",
                                f"{sys.executable} -c \"{probe}\" {REPO / 'src'}"],
                               capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    [allocation] = _squeue_rows("%D|%N", job=job)
    shown = "|".join(allocation)
    assert out.read_text().strip() == shown, (out.read_text(), shown)
    assert shown.split("|")[0] == "1"


@pytest.mark.fashion_mnist
def test_several_nodes_without_the_profile_s_allocation_are_refused_before_any_submission(slurm_cluster, tiny_run_copy):
    """nodes: 2 with the profile as shipped (one node a job, no mpi resource): the train job, submitted, refused to
    train, after Snakemake removed its outputs (twice: the profile retries). Refused at start now: nothing is
    submitted."""
    workdir = tiny_run_copy
    before = (workdir / "results/finetune/seed0/model.pt").read_bytes()
    config = tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "nodes": 2}})
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), check=False, cores=None)
    assert result.returncode != 0
    assert ("experiments.finetune.nodes 2: the train job asks Slurm for 1 node(s) and has no mpi resource; training on "
            "2 nodes needs the train rule's `nodes: 2`, `tasks: 2`, `tasks_per_gpu: 0` and `mpi: \"srun\"` in the profile's "
            "set-resources") in result.stdout, result.stdout[-3000:]
    assert "nothing ran, and every earlier result is kept" in result.stdout
    assert SUBMITTED.findall(result.stdout) == []
    # the nodes asked of Slurm, but not the mpi resource that starts a process on each: refused alike
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), "--set-resources", "train:nodes=2",
                           check=False, cores=None)
    assert result.returncode != 0 and SUBMITTED.findall(result.stdout) == []
    assert ("experiments.finetune.nodes 2: the train job asks Slurm for 2 node(s) and has no mpi resource"
            in result.stdout), result.stdout[-3000:]
    assert (workdir / "results/finetune/seed0/model.pt").read_bytes() == before


@pytest.mark.fashion_mnist
def test_gpu_jobs_for_a_partition_without_gpus_are_refused_before_any_submission(slurm_cluster, tiny_run_copy):
    """device cuda asks Slurm for a GPU (sbatch --gpus=1); this cluster's one partition has no GPU (no gpu GRES, as
    sinfo says). sbatch refused each job, after Snakemake removed its outputs, then again on the profile's retry,
    leaving an empty log. Now refused at start, naming the key and the partition: nothing is submitted."""
    workdir = tiny_run_copy
    gres = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, check=True).stdout.split()
    assert gres and not any("gpu" in line for line in gres), gres
    partition = next(line.split("|")[0][:-1] for line in gres if line.split("|")[0].endswith("*"))
    before = (workdir / "results/finetune/seed0/model.pt").read_bytes()
    config = tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "device": "cuda"}})
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), check=False, cores=None)
    assert result.returncode != 0
    assert (f"experiments.finetune.device cuda: the jobs ask Slurm for a GPU, and partition {partition} (the default) "
            "has no node with one") in result.stdout, result.stdout[-3000:]
    assert "nothing ran, and every earlier result is kept" in result.stdout
    assert SUBMITTED.findall(result.stdout) == []
    assert (workdir / "results/finetune/seed0/model.pt").read_bytes() == before


@pytest.mark.fashion_mnist
def test_a_job_larger_than_any_node_is_refused_before_any_submission(slurm_cluster, tiny_run_copy):
    """`--set-threads train=N` above the node's CPUs: Slurm kept the job pending for ever (reason PartitionConfig),
    nothing said. Refused at start now, naming the rule, the CPUs asked and the node's (from `scontrol`, not the
    sinfo the check reads). (Jobs within the node's, with the profile's memory lowered to the node's by --resources,
    go through: every other test here.)"""
    workdir = tiny_run_copy
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True, check=True).stdout
    cpus = int(re.search(r"\bCPUTot=(\d+)", node).group(1))
    before = (workdir / "results/finetune/seed0/model.pt").read_bytes()
    config = tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "epochs": 2}})
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), "--set-threads", f"train={cpus + 1}",
                           check=False, cores=None)
    assert result.returncode != 0 and (f"rule train asks Slurm for {cpus + 1} CPUs a job (its threads: ") in result.stdout \
        and f"has {cpus} (`sinfo -o %c,%m`)" in result.stdout, result.stdout[-3000:]
    assert "rule evaluate asks" not in result.stdout and "MB of memory a job" not in result.stdout, result.stdout[-3000:]
    assert SUBMITTED.findall(result.stdout) == []
    assert (workdir / "results/finetune/seed0/model.pt").read_bytes() == before


@pytest.mark.fashion_mnist
def test_a_walltime_past_the_partitions_time_limit_or_a_gpu_model_without_a_gpu_is_refused_before_any_submission(
        slurm_cluster, tiny_run_copy):
    """A runtime above the partition's MaxTime (a cluster of 4 h partitions, the profile's train asking 8 h): Slurm
    kept the job pending for ever (reason PartitionTimeLimit), and Snakemake waited without a word. The profile's
    advice `gpu_model: "a100"` under train with the experiments' device auto: the plugin submitted `--gpus=a100:0`, a
    job of no GPU, trained on the CPU of a GPU node. Both refused at start, naming the rule, what it asks and the limit
    (read here from `scontrol`, not the sinfo the check reads) or the key; nothing is submitted."""
    workdir = tiny_run_copy
    shown = subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True, text=True, check=True).stdout
    days, hours, minutes, seconds = map(int, re.search(r"\bMaxTime=(\d+)-(\d+):(\d+):(\d+)", shown).groups())
    limit = days * 1440 + hours * 60 + minutes + (seconds > 0)
    partition = re.search(r"\bPartitionName=(\S+)", shown).group(1)
    before = (workdir / "results/finetune/seed0/model.pt").read_bytes()
    config = tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "epochs": 2}})
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), "--set-resources",
                           f"train:runtime={limit + 1}", check=False, cores=None)
    assert result.returncode != 0 and (
        f"rule train asks Slurm for a walltime of {limit + 1} minutes (runtime: the profile's set-resources or "
        f"default-resources, or --set-resources), and the time limit of partition {partition} is {limit} minutes"
    ) in result.stdout and "nothing ran, and every earlier result is kept" in result.stdout, result.stdout[-3000:]
    assert "rule evaluate asks" not in result.stdout and SUBMITTED.findall(result.stdout) == []
    config = tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "epochs": 2, "device": "auto"}})
    result = run_snakemake(workdir, config, *slurm_cluster.snakemake_args(), "--set-resources", "train:gpu_model=a100",
                           check=False, cores=None)
    assert result.returncode != 0 and (
        "gpu_model a100 is given to the train jobs (the profile's set-resources or --set-resources), and they ask "
        "Slurm for no GPU (experiments.finetune.device is auto, not cuda): the plugin would submit them with --gpus=a100:0, "
        "no GPU; set experiments.finetune.device cuda, or leave gpu_model out") in result.stdout, result.stdout[-3000:]
    assert SUBMITTED.findall(result.stdout) == []
    assert (workdir / "results/finetune/seed0/model.pt").read_bytes() == before


@pytest.mark.fashion_mnist
def test_a_partition_the_cluster_lacks_is_refused_before_any_submission(slurm_cluster, tiny_run_copy, tmp_path):
    """The profile edited as its EDIT ME asks, rule train sent to a partition this cluster does not have: sbatch
    refused the job ("invalid partition specified"), after Snakemake removed its outputs, then again on the profile's
    retry, and the failure showed the rule's log of the earlier run as this job's. Refused at start now, naming the
    partition, where it is set and the ones `sinfo` lists: nothing is submitted, and a partition the cluster has goes
    through."""
    workdir = tiny_run_copy
    listed = sorted(name.rstrip("*") for name in subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True,
                                                                 text=True, check=True).stdout.split())
    assert listed and "nosuch" not in listed, listed
    profile = tmp_path / "profile"
    shutil.copytree(PROFILE, profile)
    shipped = (profile / "config.yaml").read_text()
    train = "  train:               # one job per experiment and seed; resumes on resubmission\n"
    assert shipped.count(train) == 1
    args = [profile if arg == str(PROFILE) else arg for arg in slurm_cluster.snakemake_args()]
    assert args != slurm_cluster.snakemake_args()
    before = (workdir / "results/finetune/seed0/model.pt").read_bytes()
    config = tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "epochs": 2}})
    # alone, or in a list of partitions (Slurm starts the job in the first that can; sbatch refuses a list naming
    # one it lacks): the one missing is named
    for partitions in ("nosuch", f"{listed[0]},nosuch"):
        (profile / "config.yaml").write_text(shipped.replace(train, train + f"    slurm_partition: \"{partitions}\"\n"))
        result = run_snakemake(workdir, config, *map(str, args), check=False, cores=None)
        assert result.returncode != 0
        assert (f"slurm_partition nosuch (rule train, from the profile's set-resources or --set-resources): this "
                f"cluster has no such partition (`sinfo` lists {', '.join(listed)})") in result.stdout, result.stdout[-3000:]
        assert "nothing ran, and every earlier result is kept" in result.stdout
        assert SUBMITTED.findall(result.stdout) == []
        assert (workdir / "results/finetune/seed0/model.pt").read_bytes() == before
    # in default-resources (where the profile's EDIT ME puts it): said so, naming the rules submitted, not those
    # Snakemake runs itself (summary, all)
    edit_me = '  # slurm_partition: "EDIT_ME"\n'
    assert shipped.count(edit_me) == 1
    (profile / "config.yaml").write_text(shipped.replace(edit_me, '  slurm_partition: "nosuch"\n'))
    result = run_snakemake(workdir, config, *map(str, args), check=False, cores=None)
    assert result.returncode != 0 and ("slurm_partition nosuch (rules evaluate, export_onnx, train, from the profile's "
                                       "default-resources or --default-resources): this cluster has no such "
                                       "partition") in result.stdout, result.stdout[-3000:]
    assert SUBMITTED.findall(result.stdout) == []
    # the cluster's own partition, named the same way, is no problem: the job is submitted there and trains
    (profile / "config.yaml").write_text(shipped.replace(train, train + f"    slurm_partition: \"{listed[0]}\"\n"))
    result = run_snakemake(workdir, config, *map(str, args), check=False, cores=None)
    assert result.returncode == 0 and "no such partition" not in result.stdout, result.stdout[-3000:]
    trained = [slurm_id for _, slurm_id, log in SUBMITTED.findall(result.stdout) if "/rule_train/" in log]
    assert len(trained) == 1, result.stdout[-3000:]
    assert _squeue_rows("%P", job=trained[0]) == [[listed[0]]]
    assert json.loads((workdir / "results/finetune/seed0/train_info.json").read_text())["epochs_run"] == 2


def _slurm_request(slurm_id: str) -> tuple[str, str]:
    """The time limit and memory Slurm holds for a job, as squeue prints them (e.g. '8:00:00', '8000M')."""
    [(limit, mem)] = _squeue_rows("%l|%m", job=slurm_id)
    return limit, mem


def _minutes(limit: str) -> int:
    """squeue's time limit ('[days-]hours:minutes:seconds' or 'minutes:seconds') in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    assert seconds == 0, limit
    return (int(days or 0) * 24 + hours) * 60 + minutes


def _mb(mem: str) -> int:
    assert mem.endswith("M"), mem
    return int(mem[:-1])


def _wait_for(condition, run: subprocess.Popen, output: Path, timeout: float = 600) -> None:
    """Until ``condition()`` holds; an error with the end of the run's output where Snakemake ends first or it takes
    longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, output.read_text()[-3000:]
        time.sleep(0.05)


# The longer training of the stopped and resumed runs below: only the train job of the tiny run's finetune is to do.
LONGER, LONGER_EPOCHS = "results/finetune/seed0", 10  # (epochs of ~0.3 s: time to pause it after the first)
LONGER_LOG, LONGER_RESUME = "results/logs/train/finetune/seed0.log", "resources/resume/finetune/seed0"


def _longer_run(tiny_run: Path, workdir: Path) -> Path:
    """A copy of the tiny run with the config of the longer training (not trained yet)."""
    shutil.copytree(tiny_run, workdir, symlinks=True)
    return tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "epochs": LONGER_EPOCHS}})


@pytest.fixture(scope="module")
def longer_run_uninterrupted(tiny_run, tmp_path_factory) -> Path:
    """The longer training run on this machine from start to end: what a stopped and resumed run must end with."""
    workdir = tmp_path_factory.mktemp("longer") / "run"
    # (a flag before the target: --configfile would take it for another config file)
    local = run_snakemake(workdir, _longer_run(tiny_run, workdir), "--printshellcmds", f"{LONGER}/model.pt")
    assert jobs_run(local.stdout) == ["train"], local.stdout[-3000:]
    return workdir


@dataclass
class _Paused:
    """A Slurm run of the longer training whose training process is paused once it has finished an epoch."""
    run: subprocess.Popen
    output: Path
    slurm_id: str  # the train job's
    state: Path  # its resume state
    completed: int  # the epochs that state holds


def _start_the_longer_run(cluster: Cluster, workdir: Path, output: Path) -> subprocess.Popen:
    """Snakemake through the profile in its own session (so that the test can end it and signal it as a terminal
    does), until the train job has saved its state after its first epoch."""
    log, resume = workdir / LONGER_LOG, workdir / LONGER_RESUME
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *cluster.snakemake_args(), "--printshellcmds",
           f"{LONGER}/model.pt"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a user's shell: the log shows each epoch
    with open(output, "w") as out:
        run = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        _wait_for(lambda: list(resume.glob("*.pt")) and log.exists()
                  and re.search(rf"^epoch 1/{LONGER_EPOCHS} ", log.read_text(), re.M), run, output)
    except BaseException:
        _end(run)
        raise
    return run


def _start_and_pause_the_longer_run(cluster: Cluster, workdir: Path, output: Path) -> _Paused:
    """The longer run through the profile, its training process paused once it has finished an epoch and saved its
    state, as in an epoch that outlasts what the job has left."""
    import torch
    from faults import job_pids

    run = _start_the_longer_run(cluster, workdir, output)
    try:
        [trainer] = job_pids(workdir, "train.py")
        os.kill(trainer, signal.SIGSTOP)
        [slurm_id] = [job for _, job, path in SUBMITTED.findall(output.read_text()) if "/rule_train/" in path]
        in_job = subprocess.run(["scontrol", "listpids", slurm_id], capture_output=True, text=True, check=True).stdout
        assert str(trainer) in in_job.split(), (trainer, in_job)  # the training process is the Slurm job's
        [state] = (workdir / LONGER_RESUME).glob("*.pt")
        completed = torch.load(state, map_location="cpu", weights_only=False)["epoch"] + 1
        assert 1 <= completed < LONGER_EPOCHS, completed
    except BaseException:
        _end(run)
        raise
    return _Paused(run, output, slurm_id, state, completed)


def _end(run: subprocess.Popen) -> None:
    """Kill what is left of a run of Snakemake (its own session), if anything."""
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()


def _wait(run: subprocess.Popen, output: Path) -> tuple[int, str]:
    """The exit status and output of a run of Snakemake, once it has ended (killed after 15 minutes)."""
    try:
        status = run.wait(timeout=900)
    finally:
        _end(run)
    return status, output.read_text()


def _epochs_logged(workdir: Path) -> tuple[str, list[int]]:
    """The longer run's train log, and the epochs it says were trained, in order."""
    text = (workdir / LONGER_LOG).read_text()
    return text, [int(n) for n in re.findall(rf"^epoch (\d+)/{LONGER_EPOCHS} ", text, re.M)]


def _assert_stopped_cleanly(paused: _Paused, workdir: Path, out: str) -> None:
    """Slurm's SIGTERM reached the paused training (Slurm sends SIGCONT first), which stopped at once, keeping the state
    of the epochs it had finished (the job's log, which a retry's replaces, is in Snakemake's error report)."""
    assert (f"stopped by SIGTERM at epoch {paused.completed + 1}, step " in out
            and f"resume state of epoch {paused.completed} kept in {paused.state.relative_to(workdir)}" in out), \
        out[-3000:]


def _assert_resumed_to(workdir: Path, paused: _Paused, uninterrupted: Path) -> None:
    """The run in ``workdir`` went on from the epochs the paused job finished (not trained again), to the very model
    the uninterrupted run trained; its resume state is gone, as the run of Snakemake succeeded."""
    text, trained = _epochs_logged(workdir)
    assert (f"resuming from {paused.state.relative_to(workdir)}: epoch {paused.completed + 1} of {LONGER_EPOCHS}"
            in text), text
    assert trained == list(range(paused.completed + 1, LONGER_EPOCHS + 1)), text
    _assert_trained_alike(workdir, uninterrupted)
    assert not paused.state.exists(), "the run succeeded: its resume state is removed"


def _assert_trained_alike(workdir: Path, uninterrupted: Path) -> None:
    """The longer run in ``workdir`` has the very history (timings aside) and model of the uninterrupted one."""
    import pandas as pd
    import torch
    from faults import assert_same_state

    history = [pd.read_csv(folder / LONGER / "history.csv").drop(columns=["img_per_s", "elapsed_s"])
               for folder in (workdir, uninterrupted)]
    pd.testing.assert_frame_equal(*history, check_exact=True)
    assert_same_state(*(torch.load(folder / LONGER / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
                        for folder in (workdir, uninterrupted)))


@pytest.mark.fashion_mnist
def test_a_train_job_slurm_ends_at_its_walltime_is_submitted_again_with_twice_the_time_and_resumes(
        slurm_cluster, tiny_run, longer_run_uninterrupted, tmp_path):
    """The profile's promise for long training runs: a train job Slurm ends at its walltime is submitted again
    (`retries: 1`) asking twice the time and memory (`480 * attempt`, `8000 * attempt`), and continues from the
    epochs the first one finished, to the very state an uninterrupted run reaches; the end of the run says what Slurm
    ended. The walltime is the test's: once the job has finished an epoch, its training process is paused (the rest
    of the run outlasts the job's time) and the job's time limit lowered to Slurm's least, one minute; Slurm itself
    then ends the job at that limit."""
    workdir = tmp_path / "run"
    _longer_run(tiny_run, workdir)
    paused = _start_and_pause_the_longer_run(slurm_cluster, workdir, tmp_path / "slurm.out")
    first = paused.slurm_id
    asked = _slurm_request(first)
    subprocess.run(["scontrol", "update", f"JobId={first}", "TimeLimit=1"], check=True)
    status, out = _wait(paused.run, paused.output)
    assert status == 0, out[-3000:]

    # Two submissions of the train job: the first ended by Slurm at its time limit, the second finished.
    trained = {slurm_id: Path(path) for _, slurm_id, path in SUBMITTED.findall(out) if "/rule_train/" in path}
    assert len(trained) == 2 and list(trained)[0] == first, out[-3000:]
    second = list(trained)[1]
    in_slurm = _squeue(_run_id(out))
    assert [in_slurm[job][0] for job in trained] == ["TIMEOUT", "COMPLETED"], in_slurm
    assert f"SLURM-job '{first}' failed, SLURM status is: 'TIMEOUT'" in out, out[-3000:]
    _assert_stopped_cleanly(paused, workdir, out)
    # The second asked twice what the first asked (its memory within the node's, as --resources caps it).
    again = _slurm_request(second)
    assert _minutes(again[0]) == 2 * _minutes(asked[0]), (asked, again)
    assert _mb(again[1]) == min(2 * _mb(asked[1]), slurm_cluster.mem_mb), (asked, again)
    # The end of the run says it, with Slurm's lines from the first attempt's Slurm log (kept, as that job failed).
    ended = re.findall(r"^note: Slurm ended a job \((.*?)\): (.*)$", out, re.M)
    assert [Path(path) for path, _ in ended] == [trained[first]], out[-3000:]
    said = list(dict.fromkeys(line for line in trained[first].read_text().splitlines()
                              if line.startswith("slurmstepd")))
    assert any(f"*** JOB {first} ON " in line and line.endswith(" DUE TO TIME LIMIT ***") for line in said), said
    assert ended[0][1] == (" | ".join(said[-3:]) + "; the profile's `retries` submitted it again, and that attempt "
                           "finished (where it is ended each time, it ran past its walltime: raise rule train's runtime "
                           "in the profile's set-resources)"), out[-3000:]
    _assert_resumed_to(workdir, paused, longer_run_uninterrupted)


@pytest.mark.fashion_mnist
def test_ctrl_c_cancels_the_run_s_slurm_jobs_and_the_next_run_resumes_where_training_stopped(
        slurm_cluster, tiny_run, longer_run_uninterrupted, tmp_path):
    """docs/slurm.md's way to stop a run on Slurm: Ctrl-C to Snakemake (SIGINT to its process group, as a terminal
    sends it). The plugin cancels the jobs it submitted, whose training stops at once keeping its resume state; no
    job is submitted again, and the next run of the same command resumes, to the uninterrupted run's model."""
    workdir = tmp_path / "run"
    _longer_run(tiny_run, workdir)
    paused = _start_and_pause_the_longer_run(slurm_cluster, workdir, tmp_path / "stopped.out")
    os.killpg(paused.run.pid, signal.SIGINT)
    status, out = _wait(paused.run, paused.output)
    assert status != 0, out[-3000:]
    submitted = [slurm_id for _, slurm_id, _ in SUBMITTED.findall(out)]
    assert submitted == [paused.slurm_id], out[-3000:]  # one submission: a cancelled job is not a failed one
    deadline = time.monotonic() + 120  # (COMPLETING until its processes are gone, within Slurm's KillWait)
    while (state := _squeue(_run_id(out))[paused.slurm_id][0]) == "COMPLETING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state == "CANCELLED", state
    # said as a cancel, not as Slurm ending the job for a limit of its own (the job's line, or its step's)
    assert re.search(r"^note: a job was cancelled \(by scancel, or by Snakemake stopping its jobs on Ctrl-C\) \(.*\): "
                     r"slurmstepd\S*: error: \*\*\* (JOB|STEP) [\d.]+ ON \S+ CANCELLED AT \S+ \*\*\*", out, re.M), out[-3000:]
    assert "note: Slurm ended a job" not in out, out[-3000:]
    assert not (workdir / LONGER / "model.pt").exists()
    assert paused.state.exists(), "the stop kept the resume state"
    _assert_stopped_cleanly(paused, workdir, (workdir / LONGER_LOG).read_text())

    again = run_snakemake(workdir, workdir / "config.yaml", *slurm_cluster.snakemake_args(), "--printshellcmds",
                          f"{LONGER}/model.pt", cores=None)
    assert jobs_run(again.stdout) == ["train"], again.stdout[-3000:]
    assert len(SUBMITTED.findall(again.stdout)) == 1, again.stdout[-3000:]
    _assert_resumed_to(workdir, paused, longer_run_uninterrupted)


@pytest.mark.fashion_mnist
def test_sigterm_to_snakemake_cancels_nothing_and_what_the_job_finishes_is_kept(
        slurm_cluster, tiny_run, longer_run_uninterrupted, tmp_path):
    """docs/slurm.md: a plain `kill` (SIGTERM) of Snakemake cancels nothing: the submitted job runs to its end,
    Snakemake then exits saying that a job did not complete, and what the job finished is kept: the next run has
    nothing to do."""
    workdir = tmp_path / "run"
    _longer_run(tiny_run, workdir)
    run = _start_the_longer_run(slurm_cluster, workdir, tmp_path / "terminated.out")
    os.kill(run.pid, signal.SIGTERM)
    status, out = _wait(run, tmp_path / "terminated.out")
    assert status != 0 and "At least one job did not complete successfully" in out, out[-3000:]
    [(_, slurm_id, _)] = SUBMITTED.findall(out)
    assert _squeue(_run_id(out))[slurm_id][0] == "COMPLETED"
    log, trained = _epochs_logged(workdir)
    assert trained == list(range(1, LONGER_EPOCHS + 1)), log
    _assert_trained_alike(workdir, longer_run_uninterrupted)

    again = run_snakemake(workdir, workdir / "config.yaml", *slurm_cluster.snakemake_args(), "--printshellcmds",
                          f"{LONGER}/model.pt", cores=None)
    assert "Nothing to be done" in again.stdout and SUBMITTED.findall(again.stdout) == [], again.stdout[-3000:]
