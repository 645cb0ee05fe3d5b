"""The Snakemake profiles stay in step with the workflow (quick; the Slurm run itself: test_slurm.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from helpers import REPO

SLURM = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def workflow_rules() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--list-rules",
                          "--workflow-profile", "none"], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_slurm_profile_sizes_every_rule_and_only_real_ones(workflow_rules):
    # A renamed rule would silently fall back to the defaults on the cluster.
    assert set(SLURM["set-resources"]) == workflow_rules - {"all"}


def test_slurm_profile_settings():
    assert SLURM["executor"] == "slurm"
    assert SLURM["slurm-status-command"] == "squeue"  # sacct fails where Slurm accounting is off
    defaults = SLURM["default-resources"]
    assert {"runtime", "mem_mb", "cpus_per_task"} <= set(defaults)
    # Plugin issue #459: `tasks` turns into --ntasks-per-gpu for GPU jobs, which then run N times.
    assert not {"tasks", "tasks_per_gpu", "gpu", "gres"} & set(defaults)
    for rule, resources in SLURM["set-resources"].items():
        assert not {"gpu", "gres"} <= set(resources), f"{rule}: never both gpu and gres (plugin issue #373)"
        assert "tasks" not in resources, rule


def test_default_profile_limits_gpu_jobs_to_the_gpus():
    assert DEFAULT["resources"]["gpu"] >= 1
    assert "executor" not in DEFAULT


def test_a_key_written_twice_in_the_profile_in_use_is_refused_naming_it(tmp_path):
    """A second `default-resources:` appended to an edited copy of the Slurm profile: Snakemake would keep
    only the last (the runtime here) and drop the partition and memory of the first without a word. The
    workflow refuses to start, naming the profile file, the key and both lines (counted here); the shipped
    profiles have no such key."""
    from helpers import run_snakemake, tiny_config
    from finetune.userconfig import duplicate_keys, profile_files

    for name in ("slurm", "default"):
        assert duplicate_keys(REPO / "profiles" / name / "config.yaml") == [], name
    profile = tmp_path / "myslurm"
    profile.mkdir()
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text() + "default-resources:\n  runtime: 60\n"
    (profile / "config.yaml").write_text(text)
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("default-resources:")]
    assert len(lines) == 2
    config = tiny_config(tmp_path / "run")
    for option in (["--workflow-profile", str(profile)], [f"--workflow-profile={profile}"], ["--profile", str(profile)]):
        result = run_snakemake(tmp_path / "run", config, "-n", *option, check=False, timeout=120)
        assert result.returncode != 0, result.stdout
        assert (f"{profile / 'config.yaml'}: default-resources is written twice (lines {lines[0]} and {lines[1]})"
                in result.stdout), (option, result.stdout[-2000:])
    assert not (tmp_path / "run" / "results").exists()
    # Which profile files a command line uses, as Snakemake picks them.
    assert profile_files(["snakemake", "-n"], {}, REPO) == [REPO / "profiles" / "default" / "config.yaml"]
    assert profile_files(["snakemake", "--workflow-profile", "none"], {}, REPO) == []
    assert profile_files(["snakemake", "--workflow-profile", "none"], {"SNAKEMAKE_PROFILE": str(profile)}, REPO) == [
        profile / "config.yaml"]
