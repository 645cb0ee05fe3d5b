"""README promises about determinism and resuming, through the real `snakemake` on tiny real data (issue 12).

- "same config and seed on CPU give the same history and metrics" (### Training, `seed`, `deterministic`),
  and the split: "same seed => byte-identical" (### Derived inputs): two runs of the whole DAG (split,
  pretrain, weights, train, evaluate) in fresh working directories; another seed gives another history.
- "A training job killed mid-way (... SIGKILL) resumes on the next `snakemake` run from its last completed
  epoch: its resume state lives in `resources/resume/`, outside the rule's outputs (which Snakemake deletes
  when a job fails) ... and is removed when the job succeeds" (### Training), and "Training picks up where
  it stopped ... the log says `resuming from ...`" (### Walltime, failures and resuming): a `pretrain` job
  and then a `train` job are SIGKILLed mid-epoch under `snakemake`; the next runs resume them, and they end
  with exactly the history and weights of an uninterrupted run in another fresh directory. The state is
  "keyed by the run's parameters": a run with another lr starts afresh beside it; stopped by Ctrl-C (SIGINT,
  "exit cleanly ... after the last completed epoch") it keeps its own state, which the first config's
  resumed run leaves alone.

The expected values are never what the code under test wrote about itself: runs are compared with runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from faults import assert_same_state, job_pids
from helpers import REPO, jobs_run, run_snakemake, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

EPOCHS = 3  # pretrain and train: a kill after epoch 1 lands mid-run, with an epoch to spare
EXPERIMENT = "finetune"
RUN = f"results/{EXPERIMENT}/seed0"
# Wall-clock columns and fields: the only values allowed to differ between two runs.
HISTORY_TIMING_COLUMNS = ["img_per_s", "elapsed_s"]
METRICS_TIMING_FIELDS = ["eval_seconds"]
PATIENCE_S = 1800  # a loaded 2-core machine runs the tiny DAG in minutes; never assume it is fast


def behaviour_config(workdir: Path, name: str = "config.yaml", seeds=(0,), **train) -> Path:
    """The tiny config, one experiment, EPOCHS epochs of pretrain and of train (``train``: more train options)."""
    return tiny_config(workdir, name=name, pretrain={"train": {"epochs": EPOCHS}}, train={"epochs": EPOCHS, **train},
                       replace={"experiments": {EXPERIMENT: {"strategy": "finetune"}}, "seeds": list(seeds)})


def snakemake(workdir: Path, configfile: Path, *targets_and_options: str) -> subprocess.CompletedProcess:
    """The real snakemake, to the given targets (named before --configfile, which takes every argument after it)."""
    return run_snakemake(workdir, None, *targets_and_options, "--configfile", str(configfile), timeout=PATIENCE_S)


def history_without_timing(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    assert set(HISTORY_TIMING_COLUMNS) <= set(frame.columns)
    return frame.drop(columns=HISTORY_TIMING_COLUMNS)


def metrics_without_timing(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    for field in METRICS_TIMING_FIELDS:
        assert field in metrics
        del metrics[field]
    return metrics


def state_dict(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["state_dict"] if "state_dict" in state else state


def epochs_logged(log: str) -> list[int]:
    """Epoch numbers of the training loop's per-epoch lines ('epoch 2/3 train_loss ...')."""
    return [int(m.group(1)) for m in re.finditer(rf"^epoch (\d+)/{EPOCHS} ", log, flags=re.MULTILINE)]


# --------------------------------------------------------------------------- snakemake in the background

class Snakemake:
    """The real snakemake in its own session (so a failing test can end it and its jobs), output to a file."""

    def __init__(self, workdir: Path, configfile: Path, *targets: str, name: str):
        self.workdir = workdir
        self.output_file = workdir.parent / f"{workdir.name}.{name}.out"
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", *targets, "--configfile", str(configfile)]
        # As a user's shell has it: the jobs' logs must show each epoch as it ends, not only when the job exits.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        with open(self.output_file, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                         start_new_session=True)

    @property
    def output(self) -> str:
        return self.output_file.read_text()

    def wait(self, timeout: float = PATIENCE_S) -> int:
        return self.proc.wait(timeout=timeout)

    def end(self) -> None:
        """Kill what is left of this run (its own process group), if anything."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def logged(log: Path) -> str:
    """The job log's text so far; "" where there is none (Snakemake removes a copied run's old log as the job starts,
    between a check that it exists and its read)."""
    try:
        return log.read_text()
    except FileNotFoundError:
        return ""


def wait_until(condition, run: Snakemake, what: str, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({run.proc.returncode}) before {what}:\n{run.output[-6000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s:\n{run.output[-6000:]}")
        time.sleep(0.05)


def stop_job_after_epoch_1(run: Snakemake, script: str, log: Path, resume_dir: Path, ctrl_c: bool = False,
                           earlier: tuple[Path, ...] = ()) -> SimpleNamespace:
    """Once the job has logged epoch 1 and saved its resume state: SIGKILL its python process (a walltime kill,
    a power cut: no chance to clean up), or with ``ctrl_c`` send SIGINT to snakemake and its jobs, as a
    terminal does on Ctrl-C. Snakemake then fails. ``earlier``: resume files there before this run."""
    def new_files() -> list[Path]:
        return [p for p in resume_dir.glob("*.pt") if p not in earlier]

    wait_until(lambda: "epoch 1/" in logged(log) and new_files(), run,
               f"epoch 1 of {script} logged and its resume state in {resume_dir}")
    pids = job_pids(run.workdir, script)
    assert len(pids) == 1, f"expected one {script} process in {run.workdir}, found {pids}"
    if ctrl_c:
        os.killpg(run.proc.pid, signal.SIGINT)  # snakemake leads its own process group (start_new_session)
    else:
        os.kill(pids[0], signal.SIGKILL)
    status = run.wait()
    # The resume state the stop left behind says how many epochs were complete: a rerun must start after them.
    files = new_files()
    assert len(files) == 1, files
    completed = torch.load(files[0], map_location="cpu", weights_only=False)["epoch"] + 1
    return SimpleNamespace(status=status, output=run.output, log=log.read_text(), resume_file=files[0],
                           completed=completed)


def assert_resumed(log: str, killed: SimpleNamespace, workdir: Path, resume_dir: Path) -> None:
    assert 1 <= killed.completed < EPOCHS, f"the kill did not land mid-run: {killed.completed} epoch(s) were complete"
    relative = killed.resume_file.relative_to(workdir)  # the rules name resume state relative to the working directory
    assert f"resuming from {relative}: epoch {killed.completed + 1} of {EPOCHS}" in log, log
    # The completed epochs are not trained again; the rest are, once each.
    assert epochs_logged(log) == list(range(killed.completed + 1, EPOCHS + 1)), log
    assert not killed.resume_file.exists(), "resume state must be removed when the job succeeds"


# --------------------------------------------------------------------------- the runs

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the whole DAG up to the test metrics, in a fresh working directory."""
    workdir = tmp_path_factory.mktemp("reference")
    snakemake(workdir, behaviour_config(workdir), f"{RUN}/metrics.json")
    return workdir


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> SimpleNamespace:
    """Another fresh directory: `pretrain` SIGKILLed mid-run, snakemake rerun (pretrain resumes, then `train`
    is SIGKILLed mid-run), snakemake rerun with another lr (which must start afresh) and stopped by Ctrl-C after
    its epoch 1, then snakemake with the first config again, to the end."""
    workdir = tmp_path_factory.mktemp("resumed") / "run"
    config = behaviour_config(workdir)
    target = f"{RUN}/model.pt"
    runs = []
    try:
        runs.append(Snakemake(workdir, config, target, name="1"))
        pretrain = stop_job_after_epoch_1(runs[-1], "pretrain.py", workdir / "results/logs/pretrain.log",
                                          workdir / "resources/resume/pretrain")
        pretrain_outputs_after_kill = [p.name for p in (workdir / "resources/pretrain").glob("*")]

        runs.append(Snakemake(workdir, config, target, name="2"))
        train_log, train_resume = workdir / f"results/logs/train/{EXPERIMENT}/seed0.log", workdir / f"resources/resume/{EXPERIMENT}/seed0"
        train = stop_job_after_epoch_1(runs[-1], "train.py", train_log, train_resume)
        train_outputs_after_kill = [p.name for p in (workdir / RUN).glob("*")]

        other_config = behaviour_config(workdir, name="other_lr.yaml", lr=0.0005)
        runs.append(Snakemake(workdir, other_config, target, name="3"))
        other_lr = stop_job_after_epoch_1(runs[-1], "train.py", train_log, train_resume, ctrl_c=True,
                                          earlier=(train.resume_file,))

        final = snakemake(workdir, config, target)
    finally:
        for run in runs:
            run.end()
    return SimpleNamespace(workdir=workdir, config=config, pretrain=pretrain, train=train, other_lr=other_lr, final=final,
                           pretrain_outputs_after_kill=pretrain_outputs_after_kill,
                           train_outputs_after_kill=train_outputs_after_kill)


def children_running(pid: int, script: str) -> list[int]:
    """The processes whose parent is ``pid`` and whose command line holds ``script``: what Snakemake started for a job."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and script.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def train_again_to_epoch_1(reference: Path, tmp_path: Path, name: str) -> tuple[Path, Path, Path, Snakemake]:
    """A copy of the reference run whose train job snakemake runs again (--forcerun) in the background, returned once
    the job has logged epoch 1 and saved its resume state: (its folder, the job's log, its resume folder, the run)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, symlinks=True)
    log, resume = workdir / f"results/logs/train/{EXPERIMENT}/seed0.log", workdir / f"resources/resume/{EXPERIMENT}/seed0"
    run = Snakemake(workdir, behaviour_config(workdir), f"{RUN}/model.pt", "--forcerun", "train", name=name)
    try:
        wait_until(lambda: "epoch 1/" in logged(log) and any(resume.glob("*.pt")), run,
                   "epoch 1 of train logged and its resume state saved")
    except BaseException:
        run.end()
        raise
    return workdir, log, resume, run


def test_sigterm_to_the_process_snakemake_started_for_a_job_stops_its_training(reference, tmp_path):
    """`kill` of a job's process as Snakemake started it (the first `ps` shows; what a scheduler signals): the training
    itself gets the SIGTERM and stops cleanly, resume state kept; it must not run on orphaned behind a shell that died,
    after Snakemake has called the job failed, and write its outputs into what the next run finds."""
    workdir, log, resume, run = train_again_to_epoch_1(reference, tmp_path, "sigterm")
    try:
        started = children_running(run.proc.pid, "train.py")
        assert len(started) == 1, started
        os.kill(started[0], signal.SIGTERM)
        assert run.wait() != 0
        deadline = time.monotonic() + PATIENCE_S
        while job_pids(workdir, "train.py") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not job_pids(workdir, "train.py")
    finally:
        run.end()
    assert re.search(r"stopped by SIGTERM at epoch \d, step \d+: resume state of epoch \d kept in ", log.read_text()), \
        log.read_text()[-3000:]
    assert not (workdir / RUN / "model.pt").exists() and any(resume.glob("*.pt"))


def test_sigint_to_snakemake_alone_keeps_the_finished_state_and_the_rerun_writes_the_run_from_it(reference, tmp_path):
    """SIGINT to Snakemake's process only (`kill -INT`, a wrapper's signal; a terminal's Ctrl-C signals the whole
    group): the job runs on to its end and writes its outputs, which Snakemake then marks incomplete. Its onerror
    removed the finished state because the outputs were there, so the rerun (rerun-incomplete) trained the run again
    from epoch 1. The state stays until a run of Snakemake succeeds: the rerun writes the same model from it at once,
    and its success removes the state, with the files saves killed while writing left (said, with their size)."""
    workdir, log, resume, run = train_again_to_epoch_1(reference, tmp_path, "sigint")
    try:
        os.kill(run.proc.pid, signal.SIGINT)
        assert run.wait() != 0, run.output[-3000:]
    finally:
        run.end()
    assert epochs_logged(log.read_text()) == list(range(1, EPOCHS + 1)), "the job was to run on to its end"
    [finished] = [p for p in resume.glob("*.pt") if p.name.endswith(".done.pt")] or [None]
    assert finished is not None and list(resume.glob("*.pt")) == [finished], list(resume.iterdir())
    # Saves of other settings killed while writing (SIGKILL: nothing removes its own temporary file): of this host by
    # a process that no longer runs, of another host (a Slurm node) untouched for two hours, and one written now.
    gone = subprocess.Popen(["true"])
    gone.wait()
    from finetune.fileio import _HOST
    dead = resume / f".0123456789abcdef.pt.{_HOST}-{gone.pid}.x1y2z3.tmp"
    old = resume / ".0123456789abcdef.pt.node-7-12345.a1b2c3.tmp"
    fresh = resume / ".fedcba9876543210.pt.node-7-12346.d4e5f6.tmp"
    for path, size in ((dead, 3_000_000), (old, 1_000_000), (fresh, 1_000)):
        path.write_bytes(bytes(size))
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    size = finished.stat().st_size
    again = snakemake(workdir, behaviour_config(workdir), f"{RUN}/model.pt")
    assert "Forced execution" in again.stdout or "Incomplete" in again.stdout or "incomplete" in again.stdout, again.stdout[-3000:]
    text = log.read_text()
    assert f"the run had ended after {EPOCHS} epoch(s); writing its outputs" in text and epochs_logged(text) == [], text
    assert_same_state(state_dict(workdir / RUN / "model.pt"), state_dict(reference / RUN / "model.pt"))
    assert not list(resume.glob("*.pt")), "the run of Snakemake succeeded: its finished state is removed"
    assert sorted(resume.iterdir()) == [fresh], "the abandoned temporary files go too, not one another host may write"
    assert (f"note: resources/resume: removed, as this run of Snakemake succeeded: 1 finished resume state(s) of runs "
            f"whose outputs are written ({size / 1e6:,.0f} MB); and 2 file(s) a save killed while writing left "
            "half-written (4 MB: ") in again.stdout, again.stdout[-3000:]


# --------------------------------------------------------------------------- determinism

def test_same_config_and_seed_give_the_same_split_history_and_metrics(reference, tmp_path):
    again = tmp_path / "again"
    snakemake(again, behaviour_config(again), f"{RUN}/metrics.json")

    # Upstream first, so a difference is reported where it starts.
    for split in ("target", "source"):
        assert (again / f"resources/splits/{split}.csv").read_bytes() == \
            (reference / f"resources/splits/{split}.csv").read_bytes(), f"{split} split differs"
    pd.testing.assert_frame_equal(history_without_timing(again / "resources/pretrain/history.csv"),
                                  history_without_timing(reference / "resources/pretrain/history.csv"), check_exact=True)
    assert_same_state(state_dict(again / "resources/weights/weights.pth"),
                      state_dict(reference / "resources/weights/weights.pth"))
    history = history_without_timing(reference / f"{RUN}/history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    pd.testing.assert_frame_equal(history_without_timing(again / f"{RUN}/history.csv"), history, check_exact=True)
    assert_same_state(state_dict(again / f"{RUN}/model.pt"), state_dict(reference / f"{RUN}/model.pt"))
    assert metrics_without_timing(again / f"{RUN}/metrics.json") == metrics_without_timing(reference / f"{RUN}/metrics.json")

    # Another seed: another training run (same split and weights: only `seeds` changed).
    other = behaviour_config(again, name="seed1.yaml", seeds=(1,))
    seed1_run = snakemake(again, other, f"results/{EXPERIMENT}/seed1/history.csv")
    assert jobs_run(seed1_run.stdout) == ["train"], seed1_run.stdout[-3000:]
    assert (again / "resources/splits/target.csv").read_bytes() == (reference / "resources/splits/target.csv").read_bytes()
    seed1 = history_without_timing(again / f"results/{EXPERIMENT}/seed1/history.csv")
    assert list(seed1["epoch"]) == list(history["epoch"])
    assert not seed1["train_loss"].equals(history["train_loss"]), "seed 1 trained exactly like seed 0"


# --------------------------------------------------------------------------- resume after SIGKILL

def test_pretrain_killed_mid_run_resumes_and_ends_like_an_uninterrupted_run(killed_and_resumed, reference):
    run = killed_and_resumed
    killed = run.pretrain
    assert killed.status != 0 and "Error in rule pretrain" in killed.output, killed.output[-3000:]
    # The rule execs its script: Snakemake sees the signal itself (no shell to turn it into exit status 137).
    assert "died with <Signals.SIGKILL: 9>" in killed.output, killed.output[-3000:]  # killed, not stopped
    assert epochs_logged(killed.log)[:1] == [1] and len(epochs_logged(killed.log)) < EPOCHS, killed.log
    assert "model.pth" not in run.pretrain_outputs_after_kill
    resume_dir = run.workdir / "resources/resume/pretrain"
    assert_resumed((run.workdir / "results/logs/pretrain.log").read_text(), killed, run.workdir, resume_dir)

    pd.testing.assert_frame_equal(history_without_timing(run.workdir / "resources/pretrain/history.csv"),
                                  history_without_timing(reference / "resources/pretrain/history.csv"), check_exact=True)
    assert_same_state(state_dict(run.workdir / "resources/pretrain/model.pth"),
                      state_dict(reference / "resources/pretrain/model.pth"))


def test_train_killed_mid_run_resumes_and_ends_like_an_uninterrupted_run(killed_and_resumed, reference):
    run = killed_and_resumed
    killed = run.train
    assert killed.status != 0 and "Error in rule train" in killed.output, killed.output[-3000:]
    assert "died with <Signals.SIGKILL: 9>" in killed.output, killed.output[-3000:]
    assert "rule pretrain" in killed.output and "rule train" in killed.output  # run 2: pretrain finished, then train
    assert epochs_logged(killed.log)[:1] == [1] and len(epochs_logged(killed.log)) < EPOCHS, killed.log
    assert "model.pt" not in run.train_outputs_after_kill
    resume_dir = run.workdir / f"resources/resume/{EXPERIMENT}/seed0"
    assert_resumed((run.workdir / f"results/logs/train/{EXPERIMENT}/seed0.log").read_text(), killed, run.workdir,
                   resume_dir)
    assert jobs_run(run.final.stdout) == ["train"], "only the failed job runs again"

    pd.testing.assert_frame_equal(history_without_timing(run.workdir / f"{RUN}/history.csv"),
                                  history_without_timing(reference / f"{RUN}/history.csv"), check_exact=True)
    assert_same_state(state_dict(run.workdir / f"{RUN}/model.pt"), state_dict(reference / f"{RUN}/model.pt"))

    # Afterwards nothing is stale.
    dry = snakemake(run.workdir, run.config, f"{RUN}/model.pt", "-n")
    assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]


def test_resume_state_is_keyed_by_the_run_parameters_and_kept_on_ctrl_c(killed_and_resumed):
    run = killed_and_resumed
    stopped = run.other_lr
    # Another lr is another run: it started at epoch 1 although the killed run's state (of the first lr) was there.
    assert "resuming from" not in stopped.log, stopped.log
    assert jobs_run(stopped.output) == ["train"], "a training option reruns train, not split, pretrain or weights"
    assert epochs_logged(stopped.log)[:1] == [1], stopped.log
    assert stopped.resume_file.name != run.train.resume_file.name
    # Its log names the other state kept beside its own, and its size (which only deleting it frees).
    assert re.search(rf"^note: 1 resume state\(s\) of other settings or code of this run are kept in .*\(\d[\d,]* MB: "
                     rf"{re.escape(run.train.resume_file.name)}\)", stopped.log, re.M), stopped.log
    # Ctrl-C: the job stops at the next batch boundary, saying which state it kept; snakemake fails.
    assert stopped.status != 0, stopped.output[-3000:]
    assert "exit status 143" in stopped.output, "SIGINT: a clean stop (128 + SIGTERM), not a crash"
    assert 1 <= stopped.completed < EPOCHS
    relative = stopped.resume_file.relative_to(run.workdir)
    assert re.search(rf"^stopped by SIGINT at epoch {stopped.completed + 1}, step \d+: resume state of epoch "
                     rf"{stopped.completed} kept in {re.escape(str(relative))}", stopped.log, flags=re.MULTILINE), stopped.log
    # The first config then resumed its own state (its history equals the uninterrupted run's: see the test
    # above) and removed it; the other lr's state is still there for that config's next run.
    assert sorted((run.workdir / f"resources/resume/{EXPERIMENT}/seed0").glob("*.pt")) == [stopped.resume_file]
    assert torch.load(stopped.resume_file, map_location="cpu", weights_only=False)["epoch"] + 1 == stopped.completed
