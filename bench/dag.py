"""Snakemake rows: ``noop_rerun_s`` (a finished DAG, nothing to do) and ``dag_build_20exp_s`` (dry runs).

Both run the tests' tiny config (tests/helpers.py), with TorchScript export: the no-op rerun does not
depend on the exporter, and TorchScript's is three times quicker to run once.
"""

from __future__ import annotations

from pathlib import Path

from common import REPO, Sizes, median, row, run_checked, say, snakemake_cmd, spread, timed

from helpers import TINY_CONFIG, tiny_config as write_tiny_config


def tiny_config(workdir: Path, experiments: dict, seeds: tuple = (0,)) -> Path:
    """The tiny config with these experiments and seeds, written to ``workdir/config.yaml``."""
    return write_tiny_config(workdir, replace={"experiments": experiments, "seeds": list(seeds)},
                             export={"exporter": "torchscript"})


# A 3 x 3 x 3 sweep over 3 seeds (81 runs): its dry run is timed beside the 20 experiments, in the note.
SWEEP = {"finetune": {"strategy": "finetune", "sweep": {"lr": [1.0e-3, 3.0e-4, 1.0e-4], "backbone_lr_factor": [0.1, 0.3, 1.0],
                                                        "weight_decay": [0.0, 1.0e-4, 1.0e-2]}}}


def bench_noop_rerun(workdir: Path, sizes: Sizes) -> tuple[dict, Path]:
    """Run a tiny DAG to completion, then time ``snakemake --cores 4`` on it (nothing to do) vs ``--version``."""
    experiments = dict(list(TINY_CONFIG["experiments"].items())[: sizes.tiny_experiments])
    config = tiny_config(workdir, experiments)
    base = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(config)]
    say(f"  running a tiny DAG ({len(experiments)} experiment(s)) to completion in {workdir} ...")
    seconds, _ = timed(run_checked, snakemake_cmd(*base, "--cores", "4"), "the tiny DAG")
    say(f"  done in {seconds:.1f} s")
    noop_cmd, version_cmd = snakemake_cmd(*base, "--cores", "4"), snakemake_cmd("--version")
    run_checked(version_cmd, "snakemake --version")  # warm-up: file cache, bytecode
    first = run_checked(noop_cmd, "the no-op rerun")
    if "Nothing to be done" not in first.stdout:
        raise SystemExit(f"bench: the finished DAG is not a no-op:\n{first.stdout[-3000:]}")
    ours, base_times = [], []
    for _ in range(sizes.snakemake_reps):
        ours.append(timed(run_checked, noop_cmd, "the no-op rerun")[0])
        base_times.append(timed(run_checked, version_cmd, "snakemake --version")[0])
    jobs = 2 + 2 + 2 + 3 * len(experiments) + 2  # split x2, decode x2, pretrain, weights, 3 per run, summary, all
    result = row("noop_rerun_s", median(ours), median(base_times), "s", False,
                 f"finished DAG of {jobs} jobs ({len(experiments)} experiment(s)); no-op {spread(ours)} s, "
                 f"--version {spread(base_times)} s")
    return result, workdir


def bench_dag_build(workdir: Path, sizes: Sizes) -> dict:
    """Dry-run time of 20 experiments vs 1 experiment (same empty working directory shape); the note adds
    a 3 x 3 x 3 sweep over 3 seeds."""
    one = {"finetune": {"strategy": "finetune"}}
    # gradual with 2 epochs: the tiny config's one epoch would leave it nothing after its head-only epoch (refused)
    strategies = ({"strategy": "finetune"}, {"strategy": "feature_extract"}, {"strategy": "gradual", "epochs": 2})
    twenty = {f"exp{i:02d}": {**strategies[i % 3], "lr": 0.001 * (1 + i)} for i in range(20)}
    cmds = {}
    for name, experiments, seeds in (("one", one, (0,)), ("twenty", twenty, (0,)), ("sweep", SWEEP, (0, 1, 2))):
        folder = workdir / name
        config = tiny_config(folder, experiments, seeds)
        cmds[name] = snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
                                   "--configfile", str(config), "--cores", "4", "-n", "-q")
    jobs = {}
    for name, cmd in cmds.items():  # warm-up, and a count of the jobs (the job stats that -q hides)
        out = run_checked([c for c in cmd if c != "-q"], f"dry run ({name})").stdout
        jobs[name] = next((line.split()[-1] for line in out.splitlines() if line.strip().startswith("total")), "?")
    ours, base_times, sweep = [], [], []
    for _ in range(min(3, sizes.snakemake_reps)):
        ours.append(timed(run_checked, cmds["twenty"], "dry run (20 experiments)")[0])
        base_times.append(timed(run_checked, cmds["one"], "dry run (1 experiment)")[0])
        sweep.append(timed(run_checked, cmds["sweep"], "dry run (3x3x3 sweep, 3 seeds)")[0])
    return row("dag_build_20exp_s", median(ours), median(base_times), "s", False,
               f"snakemake -n: 20 experiments ({jobs['twenty']} jobs) {spread(ours)} s; "
               f"1 experiment ({jobs['one']} jobs) {spread(base_times)} s; "
               f"3x3x3 sweep x 3 seeds ({jobs['sweep']} jobs) {spread(sweep)} s")

