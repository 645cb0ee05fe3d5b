"""The learning-rate range test (finetune.lrfind) on a tiny synthetic problem, on train's own loop."""

import math

import torch
from torch import nn

from finetune.lrfind import find_lr
from finetune.tensors import Data, Preprocessing
from finetune.training import TrainOptions

PLAIN = Preprocessing(8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalised input = pixel / 255
BETA = 0.98
FACTOR = 4.0


class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Linear(3, 8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.features(x.mean(dim=(2, 3)))))


def synthetic(n=600, classes=3, seed=0):
    """Images whose colour channel says the label, with noise: learnable, not trivially."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.randint(0, 120, (n, 3, 8, 8), generator=g)
    images[torch.arange(n), labels] += 100
    return Data(images.to(torch.uint8), labels)


def run_range_test(max_lr, steps=150):
    torch.manual_seed(0)
    opts = TrainOptions.from_dict({"batch_size": 32, "device": "cpu", "optimizer": "sgd", "momentum": 0.9})
    return find_lr(TinyNet(), synthetic(), synthetic(90, seed=1), PLAIN, opts, num_classes=3, min_lr=1e-4,
                   max_lr=max_lr, steps=steps, smoothing=BETA, diverge_factor=FACTOR, log=lambda _: None)


def recompute_smoothing(losses):
    """Bias-corrected exponential moving average, written out again here from the recorded raw losses."""
    out, avg = [], 0.0
    for step, loss in enumerate(losses, start=1):
        avg = BETA * avg + (1 - BETA) * loss
        out.append(avg / (1 - BETA**step))
    return out


def test_suggested_lr_lies_where_the_smoothed_loss_falls_and_the_curve_stops_after_divergence():
    curve = run_range_test(max_lr=1e4)
    smoothed = recompute_smoothing(curve.loss)
    assert all(math.isclose(a, b, rel_tol=1e-9) or not math.isfinite(a) for a, b in zip(smoothed, curve.smoothed))
    falling = [curve.lr[i] for i in range(1, len(smoothed)) if smoothed[i] < smoothed[i - 1]]
    assert curve.method == "steepest" and curve.suggestion in falling
    assert curve.lr.index(curve.suggestion) <= min(range(len(smoothed)), key=smoothed.__getitem__)
    # it fell overall from the first step to the suggestion: the suggestion is not noise before a rise
    assert smoothed[curve.lr.index(curve.suggestion)] < smoothed[0]
    # divergence: the run ends at the first step whose smoothed loss passes FACTOR x the minimum so far
    passed = [i for i in range(len(smoothed))
              if not math.isfinite(smoothed[i]) or smoothed[i] > FACTOR * min(smoothed[: i + 1])]
    assert curve.diverged and passed and len(curve.loss) == passed[0] + 1 < 150


def test_lrs_rise_exponentially_from_min_lr():
    curve = run_range_test(max_lr=1e-1, steps=40)
    ratios = [b / a for a, b in zip(curve.lr, curve.lr[1:])]
    assert math.isclose(curve.lr[0], 1e-4) and all(math.isclose(r, ratios[0]) for r in ratios)
    assert not curve.diverged and len(curve.loss) == 40 and math.isclose(curve.lr[-1], 1e-1)
