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
