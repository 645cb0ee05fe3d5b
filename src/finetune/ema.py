"""``train.ema_decay``: an exponential moving average of the trained weights (timm's ModelEma), with
``train.ema_warmup`` (TensorFlow's ExponentialMovingAverage with ``num_updates``)."""

from __future__ import annotations

import torch
from torch import nn

# ema_warmup: update n (1-based) uses min(decay, (1 + n) / (WARMUP_OFFSET + n)), TensorFlow's ramp.
WARMUP_OFFSET = 10


def decay_at(decay: float, update: int, warmup: bool) -> float:
    """The decay update number ``update`` (1, 2, ...) applies: ``decay``, or with ``warmup`` the smaller
    ``(1 + n) / (10 + n)`` early on (0.18 at the first update, 0.5 at the 8th, 0.9 at the 80th, 0.99 at the
    890th), so the average never weighs the weights training started from more than those it has made."""
    return min(decay, (1 + update) / (WARMUP_OFFSET + update)) if warmup else decay


class Ema:
    """``ema_decay``: after each optimizer step, every float tensor of the state (parameters and buffers,
    BatchNorm's running statistics included) moves to ``d * average + (1 - d) * current``, ``d`` given by
    :func:`decay_at`; integer buffers (BatchNorm's batch count) are copied. It starts at the weights training
    starts from."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._floats = [k for k, v in self.state.items() if v.is_floating_point()]
        self._others = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        current = module.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self._floats], [current[k].detach() for k in self._floats],
                             1.0 - decay_at(self.decay, self.updates, self.warmup))
        for k in self._others:
            self.state[k].copy_(current[k])

    def state_dict(self) -> dict:
        """What a resumed run needs: the average and how many updates made it (the warm-up's position)."""
        return {"average": self.state, "updates": self.updates}

    def load_state_dict(self, saved: dict) -> None:
        for k, v in self.state.items():
            v.copy_(saved["average"][k])
        self.updates = int(saved["updates"])
