"""How training stops before its last epoch: on SIGTERM/SIGINT at a batch boundary (:class:`SignalGuard`),
or on a non-finite loss found at a bounded interval (:class:`DivergenceCheck`) or in validation
(:func:`check_validation_loss`); several processes agree on all of them at the same steps. The messages say
what a rerun continues from."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from . import distributed
from .cli import STOPPING, stop_signals
from .distributed import SINGLE, Ranks
from .errors import OTHER_RANKS_SIGNAL, Diverged, StopRequested
from .options import TrainOptions, key_name

if TYPE_CHECKING:
    from .training import _Setup


# Steps between two reads of the losses for a non-finite one (and at the end of every epoch): each read
# waits for the device, so a GPU runs this many steps ahead of Python at most.
DIVERGENCE_CHECK_STEPS = 32
# Several processes: they learn of a stop only at a check, so checks also come at most about this many seconds apart
# at the pace of the steps since the last one (slow steps: a CPU, large images), well within the wait torchrun
# (120 s) and Slurm (KillWait, 30 s by default) give a stopped job before they kill it.
CHECK_SECONDS = 5.0



class SignalGuard:
    """Turn SIGTERM/SIGINT/SIGHUP (:func:`finetune.cli.stop_signals`) into :class:`StopRequested` at the next batch boundary.

    Resume state is saved at the end of every epoch, so stopping between batches loses at most the
    epoch in progress.
    """

    def __init__(self):
        self.signum = None
        self.agreed = False  # several processes: some rank was asked to stop (seen at a divergence check)
        self.agreed_signum = None  # this rank's own signal when they agreed (a later one, e.g. torchrun's SIGTERM
        # after another rank's exit, does not change why it stopped)
        self._previous = {}

    def __enter__(self):
        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def check(self, where: Callable[[], str]):
        if self.signum is not None:
            raise StopRequested(f"{signal.Signals(self.signum).name} {where()}")

    def stop_now(self, where: Callable[[], str]):
        """Several processes, once they agreed to stop: named by this rank's signal as it was at the agreement."""
        signum = self.agreed_signum
        name = signal.Signals(signum).name if signum is not None else OTHER_RANKS_SIGNAL
        raise StopRequested(f"{name} {where()}")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, StopRequested):
            # Stopping already: a second signal (torchrun's SIGTERM to the ranks left once one has exited) must not
            # replace this stop's message with a traceback on its way out (finetune.cli's handler then does nothing).
            STOPPING.append(exc)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class DivergenceCheck:
    """Each step's loss, kept on the device until :meth:`check` reads them all at once.

    :meth:`check` raises :func:`diverged` naming the first non-finite step. It runs before the epoch
    ends, so the steps after a bad one never reach the resume state or the best epoch's copy.
    """

    def __init__(self, opts: TrainOptions, epoch: int, history: list, resume_path: Path | None,
                 ranks: Ranks = SINGLE, guard: "SignalGuard | None" = None):
        self.opts, self.epoch, self.history, self.resume_path = opts, epoch, history, resume_path
        self.ranks, self.guard = ranks, guard
        self.losses: list[torch.Tensor] = []
        self.first_step = 0  # 0-based step of the epoch of losses[0]
        # Steps until the next check: several processes check after the epoch's first step, then at the pace they
        # agree on (:meth:`_agree`); one process at every DIVERGENCE_CHECK_STEPS (it sees its own signal each step).
        self.interval = 1 if ranks.active else DIVERGENCE_CHECK_STEPS
        self._since = time.monotonic()

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        if len(self.losses) >= self.interval:
            self.check()

    def check(self) -> None:
        """Several processes: every rank calls it at the same steps; the ranks' losses are added up (a
        non-finite one on any rank stops all at the same step) and so are their stop requests."""
        if not self.losses and not self.ranks.active:
            return
        losses = torch.stack(self.losses).cpu() if self.losses else torch.zeros(0)  # the one wait per interval
        if self.ranks.active:
            losses = self._agree(losses, time.monotonic() - self._since)
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise diverged(f"loss became {losses[i].item()} at epoch {self.epoch + 1}, step {self.first_step + i + 1}",
                           self.opts, self.history, self.resume_path)
        self.first_step += len(self.losses)
        self.losses = []
        self._since = time.monotonic()

    def _agree(self, losses: torch.Tensor, seconds: float) -> torch.Tensor:
        """The losses summed over the ranks; marks the guard stopped if any rank was asked to stop; and the next
        interval, from the ranks' mean seconds since the last check (the same sum on every rank: the same interval)."""
        signum = self.guard.signum if self.guard is not None else None
        asked = signum is not None
        flags = torch.cat([losses.double(), torch.tensor([1.0 if asked else 0.0, seconds], dtype=torch.float64)])
        distributed.all_sum(flags, self.ranks, control=True)
        if self.guard is not None and flags[-2].item() > 0:
            self.guard.agreed, self.guard.agreed_signum = True, signum
        if len(losses):
            per_step = flags[-1].item() / self.ranks.world / len(losses)
            self.interval = max(1, min(DIVERGENCE_CHECK_STEPS, int(CHECK_SECONDS / max(per_step, 1e-9))))
        return flags[:-2]


def stop_if_requested(setup: _Setup, guard: "SignalGuard", divergence: DivergenceCheck, epoch: int,
                       step_in_epoch: int, history: list, resume_path: Path | None) -> None:
    """Raise StopRequested after SIGTERM/SIGINT; a loss that already went non-finite is reported first.

    Several processes stop together: a signal to any rank is seen by all at the next divergence check
    (within ``DIVERGENCE_CHECK_STEPS`` steps and about :data:`CHECK_SECONDS`, or the epoch's end), and every rank
    stops there.
    """
    if setup.ranks.active:
        if guard.agreed:
            guard.stop_now(lambda: f"at epoch {epoch + 1}, step {step_in_epoch + 1} (all {setup.ranks.world} "
                                   f"processes): {saved_state(resume_path, history)}")
        return
    if guard.signum is not None:
        divergence.check()
    guard.check(lambda: f"at epoch {epoch + 1}, step {step_in_epoch + 1}: {saved_state(resume_path, history)}")


def diverged(what: str, opts: TrainOptions, history: list, resume_path: Path | None) -> Diverged:
    """``what`` went non-finite (``loss became nan at epoch 2, step 5``): the error, with the last good state.
    With ``on_divergence: stop`` and an epoch done, :func:`finetune.training.fit` ends the run there instead."""
    if history and resume_path is not None:
        where = f"resume state of epoch {len(history)} kept in {resume_path}"
    else:
        where = "none saved yet" if resume_path is not None else "none kept (no --resume-dir)"
    keep = (f" ({key_name('on_divergence')}: stop keeps the best epoch before it instead, where one is done)"
            if opts.on_divergence == "fail" else f" ({key_name('on_divergence')} is stop, but no epoch was done before it)")
    warmup = (f"raise {key_name('warmup_epochs')} (now {opts.warmup_epochs:g})" if opts.warmup_epochs
              else f"use {key_name('warmup_epochs')}")
    return Diverged(f"{what}: training diverged; lower {key_name('lr')} (now {opts.lr:g}) or {warmup}{keep}. "
                    f"Last good state: {where}", what)


def check_validation_loss(val_loss: float, opts: TrainOptions, epoch: int, history: list,
                          resume_path: Path | None) -> None:
    """A non-finite validation loss with finite training losses: the weights grew until the model's outputs
    overflow (inf or nan logits), so neither this epoch nor its model can be kept."""
    if not math.isfinite(val_loss):
        raise diverged(f"validation loss became {val_loss} at epoch {epoch + 1} (the model's outputs are no "
                       "longer finite numbers)", opts, history, resume_path)


def saved_state(resume_path: Path | None, history: list) -> str:
    """What a run stopped now leaves for the next one."""
    if resume_path is None:
        return "no resume state is kept (no --resume-dir): a rerun starts again from epoch 1"
    if not history:
        return "no epoch completed yet: a rerun starts again from epoch 1"
    return f"resume state of epoch {len(history)} kept in {resume_path}: a rerun continues with epoch {len(history) + 1}"
