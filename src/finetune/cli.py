"""Shared plumbing of the workflow's command-line entry points."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Callable

from .errors import FinetuneError


def json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


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


def _stop_requested() -> tuple[type[BaseException], ...]:
    """``training.StopRequested`` where the training loop is loaded, else nothing to catch.

    Looked up lazily so torch-free entry points (``predict``) never import torch through here:
    a script that never imported the training loop cannot raise its StopRequested.
    """
    training = sys.modules.get("finetune.training")
    return (training.StopRequested,) if training is not None else ()


def run(main: Callable[[], int | None]) -> None:
    """Run ``main``; print a FinetuneError as one clear line (no traceback) and exit 1.

    Exit status 143 (128 + SIGTERM) tells Slurm and Snakemake the job was stopped, not broken.
    """
    try:
        code = main()
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except _stop_requested() as exc:
        print(f"stopped by {exc}: resume state kept; the next run continues from the last completed epoch",
              file=sys.stderr, flush=True)
        sys.exit(143)
    except Exception:
        traceback.print_exc()
        sys.exit(2)
    sys.exit(code or 0)
