"""Shared by the tests: a tiny real config and a way to run the real `snakemake` on it."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Debian's Fashion-MNIST files; FINETUNE_FASHION_MNIST points the tests (and the tiny config) elsewhere.
FASHION_MNIST = os.environ.get("FINETUNE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")

# A few real Fashion-MNIST images per class, one epoch, 32 px: the whole DAG in well under a minute.
TINY_CONFIG = {
    "dataset": {
        "format": "fashion-mnist", "path": FASHION_MNIST, "classes": [6, 7, 8, 9],
        "val_fraction": 0.2, "max_train_per_class": 8, "max_val_per_class": 4, "max_test_per_class": 6, "seed": 0,
    },
    "weights": {"source": "pretrain", "arch": "resnet18"},
    "pretrain": {
        "dataset": {
            "format": "fashion-mnist", "path": FASHION_MNIST, "classes": [0, 1, 2, 3, 4, 5],
            "val_fraction": 0.1, "max_train_per_class": 8, "max_val_per_class": 4,
        },
        "image_size": 32,
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.002, "device": "cpu"},
    },
    # device cpu: the tests recompute the runs' figures with CPU tensors, so the runs must not move to a GPU
    # where there is one (`auto`); the CUDA paths have their own tests (tests/test_gpu.py, `pytest -m gpu`).
    "train": {"epochs": 1, "batch_size": 8, "lr": 0.001, "device": "cpu"},
    "experiments": {
        "finetune": {"strategy": "finetune"},
        "feature_extract": {"strategy": "feature_extract", "lr": 0.01},
        "scratch": {"strategy": "finetune", "pretrained": False},
    },
    "seeds": [0],
    "threads": {"train": 2, "data": 1},
    "export": {"parity_batch": 4},
    "evaluate": {"device": "cpu"},
}


def deep_update(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_config(workdir: Path, name: str = "config.yaml", replace: dict | None = None, **overrides) -> Path:
    """Write the tiny config (deep-updated with ``overrides``; ``replace`` swaps whole keys) into ``workdir``."""
    config = deep_update(TINY_CONFIG, overrides)
    for key, value in (replace or {}).items():
        config[key] = value
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(workdir: Path, configfile: Path | None, *args: str, check: bool = True, timeout: float = 900,
                  env: dict | None = None, snakefile: Path = REPO / "Snakefile",
                  python: str = sys.executable, cores: int | None = 2) -> subprocess.CompletedProcess:
    """Run the real snakemake (the repo's Snakefile unless told) in ``workdir``; stdout+stderr as text. ``cores``:
    --cores (None: none given, as a run through the Slurm profile)."""
    cmd = [python, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
           *(["--cores", str(cores)] if cores is not None else [])]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(args)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-6000:]}")
    return result


def run_script(name: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one workflow script (the real entry point) as the rules do."""
    cmd = [sys.executable, str(REPO / "workflow" / "scripts" / f"{name}.py"), *args]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=environment)


def jobs_run(snakemake_output: str) -> list[str]:
    """Rule names of the jobs a snakemake run executed (from its 'rule X:' / 'localrule X:' lines)."""
    names = []
    for line in snakemake_output.splitlines():
        stripped = line.strip()
        for prefix in ("rule ", "localrule "):
            if stripped.startswith(prefix) and stripped.endswith(":"):
                names.append(stripped[len(prefix):-1])
    return names


def copy_of_the_workflow(folder: Path, with_config: bool = False) -> Path:
    """This repository's workflow copied into ``folder`` (modification times kept), its Snakefile returned. Without
    ``with_config`` no config/: a config of the test's own then stands alone, not merged over the demo's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "src", *(["config"] if with_config else []), "profiles"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))  # copy2: mtimes kept
        else:
            shutil.copy2(source, folder / name)
    return folder / "Snakefile"
