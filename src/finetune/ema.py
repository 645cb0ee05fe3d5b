"""``train.ema_decay``: an exponential moving average of the trained weights (timm's ModelEma)."""

from __future__ import annotations

import torch
from torch import nn


class Ema:
    """``ema_decay``: after each optimizer step, every float tensor of the state (parameters and buffers,
    BatchNorm's running statistics included) moves to ``decay * average + (1 - decay) * current``;
    integer buffers (BatchNorm's batch count) are copied. It starts at the weights training starts from."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._floats = [k for k, v in self.state.items() if v.is_floating_point()]
        self._others = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = module.state_dict()
        torch._foreach_lerp_([self.state[k] for k in self._floats], [current[k].detach() for k in self._floats],
                             1.0 - self.decay)
        for k in self._others:
            self.state[k].copy_(current[k])

    def load(self, state: dict) -> None:
        for k, v in self.state.items():
            v.copy_(state[k])
