"""Issue 16 item 4, recipes: EMA of the weights, mixup / cutmix, layer-wise lr decay (training, on small
tensors), horizontal-flip test-time augmentation (evaluate and export, on the tiny real run)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from finetune import training
from finetune.errors import ConfigError
from finetune.mixing import _cutmix_box, draw_mixing, mix_batch
from finetune.tensors import Data, Preprocessing
from finetune.training import TrainOptions, fit

PLAIN = Preprocessing(8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalised input = pixel / 255
CLASSES = 3


class SmallNet(nn.Module):
    """A real, small convolutional classifier with BatchNorm (buffers the EMA must average too)."""

    def __init__(self, classes=CLASSES, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)  # draws from torch's global generator in training
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3))))


def small_data(n: int, seed: int) -> Data:
    """Images whose colour tells the class, with noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    base = torch.eye(3)[labels][:, :, None, None] * 160
    noise = torch.randint(0, 90, (n, 3, 8, 8), generator=g)
    return Data((base + noise).clamp(0, 255).to(torch.uint8), labels)


TRAIN, VAL = small_data(48, 1), small_data(24, 2)


def fit_small(log=lambda _: None, resume_path=None, dropout=0.0, net=None, **options):
    """fit a SmallNet (or the class ``net``, a SmallNet's subclass) of seed 0 on the small data."""
    torch.manual_seed(0)
    model = (net or SmallNet)(dropout=dropout)
    opts = TrainOptions.from_dict({"epochs": 3, "batch_size": 16, "lr": 0.05, "device": "cpu",
                                   "schedule": "constant", **options})
    result = fit(model, TRAIN, VAL, PLAIN, opts, num_classes=CLASSES, log=log, resume_path=resume_path)
    return result, model


def record_steps(monkeypatch) -> list[dict]:
    """The trained module's state after every optimizer step of the fits that follow."""
    states = []
    step = training._train_step

    def recording(setup, x, y, share=None):
        out = step(setup, x, y, share)
        states.append({k: v.detach().clone() for k, v in setup.trained.state_dict().items()})
        return out

    monkeypatch.setattr(training, "_train_step", recording)
    return states


def equal_states(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def strip(history):
    return [{k: v for k, v in row.items() if k not in ("img_per_s", "elapsed_s")} for row in history]


# --------------------------------------------------------------------------- EMA

def fold_ema(start: dict, steps: list[dict], decay: float, warmup: bool = False) -> dict:
    """The moving average recomputed here, in float64: e <- d * e + (1 - d) * w per step, d = decay or, with
    the warm-up, TensorFlow's min(decay, (1 + n) / (10 + n)) at step n = 1, 2, ..."""
    ema = {k: v.double() if v.is_floating_point() else v.clone() for k, v in start.items()}
    for n, state in enumerate(steps, start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        for k, v in state.items():
            ema[k] = d * ema[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    return ema


def test_ema_checkpoint_is_the_moving_average_of_the_same_runs_weights(monkeypatch):
    torch.manual_seed(0)
    start = SmallNet().state_dict()
    plain_steps = record_steps(monkeypatch)
    plain, _ = fit_small()
    steps_per_epoch = len(plain_steps) // 3
    ema_steps_start = len(plain_steps)
    averaged, _ = fit_small(ema_decay=0.8, ema_warmup=False)
    ema_run_steps = plain_steps[ema_steps_start:]
    del plain_steps[ema_steps_start:]

    # The average does not change training itself: the same weights after every step, bit for bit.
    assert len(ema_run_steps) == len(plain_steps) == 9
    assert all(equal_states(a, b) for a, b in zip(plain_steps, ema_run_steps))
    # The checkpoint is the average of the weights up to the best epoch (chosen on the average's validation).
    expected = fold_ema(start, plain_steps[: averaged.best_epoch * steps_per_epoch], 0.8)
    assert set(averaged.best_state) == set(expected)
    for k, v in averaged.best_state.items():
        if v.is_floating_point():
            assert torch.allclose(v.double(), expected[k], atol=1e-6, rtol=0), k
        else:
            assert torch.equal(v, expected[k]), k
    assert any("running_mean" in k for k in expected)  # buffers averaged too
    assert not equal_states(averaged.best_state, plain.best_state)


def test_ema_warmup_averages_with_the_ramped_decay_and_forgets_the_start(monkeypatch):
    """ema_warmup (the default): the checkpoint is the average folded with min(decay, (1 + n) / (10 + n)); on a
    run far shorter than 1 / (1 - decay) steps it is close to the trained weights, not to the start."""
    torch.manual_seed(0)
    start = SmallNet().state_dict()
    steps = record_steps(monkeypatch)
    averaged, _ = fit_small(ema_decay=0.999, epochs=4, metric="val_loss")
    best = steps[: averaged.best_epoch * (len(steps) // 4)]
    expected = fold_ema(start, best, 0.999, warmup=True)
    for k, v in averaged.best_state.items():
        if v.is_floating_point():
            assert torch.allclose(v.double(), expected[k], atol=1e-6, rtol=0), k
    # Without the ramp, 0.999 over these few steps keeps about 99% of the start: the warm-up's average is
    # nearer the last trained weights than the start, the plain one the other way round.
    plain = fold_ema(start, best, 0.999)
    weights = "fc.weight"
    to_last = (expected[weights] - best[-1][weights].double()).norm()
    to_start = (expected[weights] - start[weights].double()).norm()
    assert to_last < to_start
    assert (plain[weights] - start[weights].double()).norm() < (plain[weights] - best[-1][weights].double()).norm()


def test_ema_validation_scores_the_averaged_weights(monkeypatch):
    """Each epoch's val_loss is that of the average: the one recomputed here from its state."""
    result, model = fit_small(ema_decay=0.8, metric="val_loss")
    model.load_state_dict(result.best_state)
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(VAL.images.float() / 255), VAL.labels).item()
    assert loss == pytest.approx(result.history[result.best_epoch - 1]["val_loss"], rel=1e-5)


class Interrupted(Exception):
    pass


def stop_in_epoch_3(line):
    if line.startswith("epoch 3/"):
        raise Interrupted


RECIPES = {"ema_decay": 0.7, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "label_smoothing": 0.1, "epochs": 4}


def test_a_resumed_run_with_ema_and_mixing_is_the_uninterrupted_run(tmp_path):
    reference, reference_model = fit_small(**RECIPES)
    resume = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        fit_small(log=stop_in_epoch_3, resume_path=resume, **RECIPES)
    saved = torch.load(resume, weights_only=False)
    assert "ema" in saved and "mix" in saved
    lines = []
    torch.manual_seed(123)  # fit must not depend on torch's global RNG
    resumed, resumed_model = fit_small(log=lines.append, resume_path=resume, **RECIPES)
    assert any(line.startswith("resuming from") for line in lines)
    assert strip(resumed.history) == strip(reference.history)
    assert equal_states(resumed.best_state, reference.best_state)
    assert equal_states(resumed_model.state_dict(), reference_model.state_dict())


def test_a_resumed_run_draws_dropout_s_masks_where_the_uninterrupted_run_did(tmp_path):
    """Dropout draws from torch's global generator: the resume state holds its state after epoch 2 and restores it,
    so the resumed epochs 3 and 4 drop the units the uninterrupted run dropped, whatever the global generator held
    when the resumed run started (seeded otherwise here)."""
    reference, reference_model = fit_small(dropout=0.5, epochs=4)
    resume = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        fit_small(log=stop_in_epoch_3, resume_path=resume, dropout=0.5, epochs=4)
    torch.manual_seed(123)
    model = SmallNet(dropout=0.5)  # the model's initial weights are replaced by the resume state's
    lines = []
    opts = TrainOptions.from_dict({"epochs": 4, "batch_size": 16, "lr": 0.05, "device": "cpu", "schedule": "constant"})
    resumed = fit(model, TRAIN, VAL, PLAIN, opts, num_classes=CLASSES, log=lines.append, resume_path=resume)
    assert any(line.startswith("resuming from") for line in lines)
    assert strip(resumed.history) == strip(reference.history)
    assert equal_states(model.state_dict(), reference_model.state_dict())
    # the premise: another global generator state gives other masks, and so another run
    torch.manual_seed(123)
    other = SmallNet(dropout=0.5)
    other.load_state_dict(reference_model.state_dict())
    other.train()
    x = TRAIN.images[:8].float() / 255
    torch.manual_seed(1)
    first = other(x)
    torch.manual_seed(2)
    assert not torch.equal(first, other(x))


class NoisyNet(SmallNet):
    """SmallNet whose training forward pass adds noise drawn from Python's and NumPy's global generators, as a
    user's layer may."""

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            out = out + float(np.random.standard_normal()) + random.random()
        return out


def test_a_resumed_run_draws_from_python_s_and_numpy_s_global_generators_where_the_uninterrupted_run_did(tmp_path):
    """The resume state holds Python's and NumPy's global generators too: a model drawing from them in its resumed
    epochs draws what the uninterrupted run drew there, whatever they held when the resumed run started."""
    random.seed(1), np.random.seed(1)
    reference, reference_model = fit_small(net=NoisyNet, epochs=4)
    resume = tmp_path / "resume.pt"
    random.seed(1), np.random.seed(1)
    with pytest.raises(Interrupted):
        fit_small(log=stop_in_epoch_3, resume_path=resume, net=NoisyNet, epochs=4)
    lines = []
    random.seed(2), np.random.seed(2)
    resumed, resumed_model = fit_small(log=lines.append, resume_path=resume, net=NoisyNet, epochs=4)
    assert f"resuming from {resume}: epoch 3 of 4" in lines, lines
    assert strip(resumed.history) == strip(reference.history)
    assert equal_states(resumed_model.state_dict(), reference_model.state_dict())
    # the premise: other draws give another run
    random.seed(2), np.random.seed(2)
    other, _ = fit_small(net=NoisyNet, epochs=4)
    assert strip(other.history) != strip(reference.history)


def test_label_smoothing_is_the_loss_training_minimises():
    """One epoch of one batch: its train_loss is the initial model's cross-entropy on the training images with the
    targets smoothed by 0.1, computed here with torch.nn.functional.cross_entropy (the BatchNorm in training mode, as
    the step runs it); without smoothing, the plain cross-entropy."""
    torch.manual_seed(0)
    initial = SmallNet().train()
    with torch.no_grad():
        logits = initial(TRAIN.images.float() / 255)
    for smoothing in (0.1, 0.0):
        result, _ = fit_small(epochs=1, batch_size=len(TRAIN.labels), label_smoothing=smoothing)
        expected = nn.functional.cross_entropy(logits, TRAIN.labels, label_smoothing=smoothing).item()
        assert result.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5), smoothing
    assert nn.functional.cross_entropy(logits, TRAIN.labels, label_smoothing=0.1).item() != pytest.approx(
        nn.functional.cross_entropy(logits, TRAIN.labels).item(), rel=1e-3)  # the premise: smoothing changes it


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1])
def test_ema_decay_out_of_range_is_refused_naming_key_and_value(value):
    with pytest.raises(ConfigError, match=f"ema_decay must be null .* not {value}"):
        TrainOptions.from_dict({"ema_decay": value})


# --------------------------------------------------------------------------- mixup, cutmix

def batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 10, generator=g), torch.randint(0, 5, (n,), generator=g)


def expected_targets(y, perm, lam, classes, smoothing):
    """timm's targets, written out: lam * smooth(onehot(y)) + (1 - lam) * smooth(onehot(y[perm]))."""
    targets = torch.full((len(y), classes), smoothing / classes, dtype=torch.float64)
    for i in range(len(y)):
        targets[i, y[i]] += lam * (1 - smoothing)
        targets[i, y[perm[i]]] += (1 - lam) * (1 - smoothing)
    return targets


def test_a_cutmix_box_has_sides_sqrt_1_minus_lam_of_the_image_s():
    """timm's rand_bbox: with lam 0.75 the pasted box covers a quarter of the image, sides 100 x sqrt(0.25) = 50 of
    100, wherever it is not cut off by the image's edge."""
    whole = 0
    for seed in range(80):
        top, bottom, left, right = _cutmix_box(100, 100, 0.75, torch.Generator().manual_seed(seed))
        if 0 < top and bottom < 100:
            assert bottom - top == 50, (top, bottom)
        if 0 < left and right < 100:
            assert right - left == 50, (left, right)
            whole += 0 < top and bottom < 100
    assert whole > 10  # enough boxes lay wholly inside to say so
    # A cut of an odd number of pixels (102 x 0.5 = 51): timm's box reaches cut // 2 either side of its centre, 50.
    inside = 0
    for seed in range(40):
        top, bottom, left, right = _cutmix_box(102, 102, 0.75, torch.Generator().manual_seed(seed))
        assert (0 < top and bottom < 102) <= (bottom - top == 50) and (0 < left and right < 102) <= (right - left == 50)
        inside += 0 < top and bottom < 102 and 0 < left and right < 102
    assert inside > 5


def test_a_cutmix_box_s_centre_is_any_pixel_of_the_image():
    """timm draws the centre uniformly over every row and column (randint(H), randint(W)): with lam near 1 the box
    is empty and sits at its centre, which reaches each of the 4 x 4 pixels, the last row and column too."""
    corners = {_cutmix_box(4, 4, 0.99, torch.Generator().manual_seed(seed))[::2] for seed in range(300)}
    assert corners == {(row, column) for row in range(4) for column in range(4)}


def test_mixup_draws_lam_from_beta_alpha_alpha():
    """mixup_alpha 0.4: lam ~ Beta(0.4, 0.4), mean 1/2 and standard deviation sqrt(1 / (4 (2 x 0.4 + 1))) = 0.3727;
    2,000 draws hold both within ~4 standard errors."""
    g = torch.Generator().manual_seed(0)
    lams = np.array([draw_mixing(4, 8, 8, 0.4, 0.0, g).lam for _ in range(2000)])
    assert abs(lams.mean() - 0.5) < 0.035 and abs(lams.std() - (1 / (4 * 1.8)) ** 0.5) < 0.03, (lams.mean(), lams.std())


def test_mixup_mixes_each_image_with_its_partner_and_the_targets_alike():
    x, y = batch()
    mixed, targets, m = mix_batch(x, y, 5, 0.4, 0.0, 0.1, torch.Generator().manual_seed(3))
    assert m.kind == "mixup" and 0 < m.lam < 1 and sorted(m.perm.tolist()) == list(range(6))
    assert torch.allclose(mixed, m.lam * x + (1 - m.lam) * x[m.perm], atol=1e-6)
    assert torch.allclose(targets.double(), expected_targets(y, m.perm, m.lam, 5, 0.1), atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(6))


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_the_targets_by_its_area():
    x, y = batch()
    for seed in range(20):
        mixed, targets, m = mix_batch(x, y, 5, 0.0, 1.0, 0.0, torch.Generator().manual_seed(seed))
        top, bottom, left, right = m.box
        inside = torch.zeros(8, 10, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert m.kind == "cutmix"
        assert torch.equal(mixed[:, :, inside], x[m.perm][:, :, inside])
        assert torch.equal(mixed[:, :, ~inside], x[:, :, ~inside])
        assert m.lam == pytest.approx(1 - inside.sum().item() / 80)
        assert torch.allclose(targets.double(), expected_targets(y, m.perm, m.lam, 5, 0.0), atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(6))


def test_with_both_alphas_each_batch_takes_one_about_half_the_time_reproducibly():
    x, y = batch()
    kinds = []
    for generator in (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)):
        kinds.append([mix_batch(x, y, 5, 0.4, 1.0, 0.0, generator)[2].kind for _ in range(400)])
    assert kinds[0] == kinds[1]
    assert 0.4 < kinds[0].count("cutmix") / 400 < 0.6  # 0.5 give or take 4 standard deviations (0.025)


def record_training_inputs(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen = []
    batch_of = training._training_batch

    def recording(setup, x, y, share=None):
        out = batch_of(setup, x, y, share)
        seen.append((out[0].clone(), out[1].clone()))
        return out

    monkeypatch.setattr(training, "_training_batch", recording)
    return seen


def test_fit_trains_on_the_plain_batches_mixed_by_a_generator_of_the_run_seed(monkeypatch):
    """The batches a run with mixup and cutmix trains on are its plain batches (same order) mixed by
    mix_batch with a generator seeded from the run's seed alone: recomputed here, equal bit for bit."""
    seen = record_training_inputs(monkeypatch)
    plain, _ = fit_small(epochs=2, seed=4)
    plain_batches, seen[:] = list(seen), []
    mixed, _ = fit_small(epochs=2, seed=4, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    generator = torch.Generator().manual_seed(int(training.options_key("mix", 4), 16))
    assert len(seen) == len(plain_batches) == 6
    kinds = set()
    for (x, y), (mixed_x, targets) in zip(plain_batches, seen):
        assert y.dtype == torch.long and targets.dtype == torch.float32
        expected_x, expected_targets, m = mix_batch(x, y, CLASSES, 0.4, 1.0, 0.1, generator)
        kinds.add(m.kind)
        assert torch.equal(mixed_x, expected_x) and torch.equal(targets, expected_targets)
    assert kinds == {"mixup", "cutmix"}
    assert mixed.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_class_weighted_soft_targets_are_normalised_as_hard_labels_are():
    """class_weighting: loss with mixing: one-hot soft targets give torch's weighted cross-entropy of the labels
    (divided by the batch's weights, not its size), and mixed ones the weighted sum over the same normaliser."""
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=gen), torch.tensor([0, 0, 0, 1, 2, 2])
    weights = training.class_weights(labels, 3)
    loss = training.SoftTargetLoss(weights)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert loss(logits, one_hot).item() == pytest.approx(torch.nn.CrossEntropyLoss(weight=weights)(logits, labels).item(),
                                                         rel=1e-6)
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    by_hand = sum(-float(weights[c]) * float(mixed[i, c]) * float(torch.log_softmax(logits[i], 0)[c])
                  for i in range(6) for c in range(3)) / float((mixed * weights).sum())
    assert loss(logits, mixed).item() == pytest.approx(by_hand, rel=1e-6)


def test_train_accuracy_with_soft_targets_counts_the_label_with_the_larger_share():
    sums = training._EpochSums.on(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    sums.add(logits, torch.tensor(1.0), torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]))
    assert sums.metrics(1.0)["train_accuracy"] == 0.5


def test_mixing_cached_features_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="mixup_alpha: 0.2 mix training images.*cached backbone features.*not mixup of images"):
        TrainOptions.from_dict({"strategy": "feature_extract", "mixup_alpha": 0.2})
    with pytest.raises(ConfigError, match="cutmix_alpha: 1 mix"):
        TrainOptions.from_dict({"strategy": "feature_extract", "cutmix_alpha": 1.0})
    TrainOptions.from_dict({"strategy": "feature_extract", "cache_features": False, "mixup_alpha": 0.2})
    with pytest.raises(ConfigError, match="mixup_alpha must be >= 0"):
        TrainOptions.from_dict({"mixup_alpha": -1})


def test_soft_target_loss_with_class_weights_is_the_weighted_soft_cross_entropy():
    """class_weighting: loss with mixing: -sum_i sum_c w_c t_ic log p_ic over sum_i sum_c w_c t_ic (the batch's
    weights, as torch's weighted mean of hard labels divides by them), through the losses the loop builds."""
    logits, targets = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), 1)
    labels = torch.tensor([0, 1, 2, 2])
    weights = training.class_weights(labels, 3)
    assert torch.allclose(weights, torch.tensor([4 / 3, 4 / 3, 2 / 3]))
    losses = training._make_losses(labels, 3, TrainOptions(class_weighting="loss", mixup_alpha=0.2), torch.device("cpu"))
    expected = -(weights * targets * torch.log_softmax(logits, 1)).sum() / (weights * targets).sum()
    assert losses.soft(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- layer-wise lr decay

def resnet_setup(**options):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    opts = TrainOptions.from_dict({"lr": 0.01, "device": "cpu", "schedule": "constant", **options})
    data = Data(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4))
    return training._set_up(model, data, data, PLAIN, opts, 4, None, lambda _: None), model


def learning_rates(setup, model, epoch=0) -> dict[str, float]:
    training._prepare_epoch(setup, epoch)
    training._set_learning_rates(setup, 0)
    lr_of = {id(p): group["lr"] for group in setup.optimizer.param_groups for p in group["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters()}


def expected_lr(name: str, lr: float, decay: float, factor: float) -> float:
    """ResNet18: stem (conv1, bn1) 0, layer1..layer4 1..4, fc 5."""
    stage = name.split(".")[0]
    if stage == "fc":
        return lr
    depth = int(stage[-1]) if stage.startswith("layer") else 0
    return lr * factor * decay ** (5 - depth)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_layer_decay_gives_every_resnet18_parameter_its_depths_lr(factor):
    setup, model = resnet_setup(layer_decay=0.7, backbone_lr_factor=factor)
    lrs = learning_rates(setup, model)
    assert len(lrs) == len(list(model.parameters())) == 62
    for name, lr in lrs.items():
        assert lr == pytest.approx(expected_lr(name, 0.01, 0.7, factor), rel=1e-12), name
    # weight decay still only on weights of more than one dimension
    for group in setup.optimizer.param_groups:
        assert all((p.ndim > 1) == (group["weight_decay"] > 0) for p in group["params"])


def test_layer_decay_in_gradual_applies_once_the_backbone_trains():
    setup, model = resnet_setup(strategy="gradual", unfreeze_epoch=1, layer_decay=0.5)
    before = learning_rates(setup, model, epoch=0)
    assert all(lr == (0.01 if name.startswith("fc.") else 0.0) for name, lr in before.items())
    after = learning_rates(setup, model, epoch=1)
    assert all(lr == pytest.approx(expected_lr(name, 0.01, 0.5, 1.0)) for name, lr in after.items())


def test_without_layer_decay_the_groups_are_as_before():
    setup, model = resnet_setup(backbone_lr_factor=0.3)
    assert [(g["part"], g["weight_decay"] > 0) for g in setup.optimizer.param_groups] == [
        ("head", True), ("head", False), ("backbone", True), ("backbone", False)]
    lrs = learning_rates(setup, model)
    assert all(lr == pytest.approx(0.01 if name.startswith("fc.") else 0.003) for name, lr in lrs.items())


@pytest.mark.parametrize("options", [
    {"strategy": "gradual", "unfreeze_epoch": 2},
    {"strategy": "gradual", "unfreeze_epoch": 2, "layer_decay": 0.5},
    {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0},  # its optimizer's group is not setup.groups
], ids=["gradual", "gradual-layer_decay", "lbfgs"])
def test_gradual_resumed_before_its_unfreeze_epoch_is_the_uninterrupted_run(tmp_path, options):
    """Stopped in the head-only epochs, resumed: the backbone (with layer_decay, each stage at its lr) trains
    from the unfreeze epoch as it would have (the resumed optimizer's groups get the lr scales)."""
    options = {**options, "epochs": 4}
    reference, _ = fit_small(**options)
    resume = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        fit_small(log=stop_in_epoch_3, resume_path=resume, **options)
    resumed, _ = fit_small(resume_path=resume, **options)
    assert strip(resumed.history) == strip(reference.history)
    assert equal_states(resumed.best_state, reference.best_state)


def test_layer_decay_is_refused_for_feature_extract_and_out_of_range():
    with pytest.raises(ConfigError, match="layer_decay: 0.7 .* strategy: feature_extract trains only the new head"):
        TrainOptions.from_dict({"strategy": "feature_extract", "layer_decay": 0.7})
    with pytest.raises(ConfigError, match="layer_decay must be null .* not 1.5"):
        TrainOptions.from_dict({"layer_decay": 1.5})


# --------------------------------------------------------------------------- test-time augmentation (tiny real run)

RUN = "results/finetune/seed0"


def flip_averaged_logits(checkpoint_path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(plain, hflip-averaged) logits of the checkpoint rebuilt with torchvision, on ``x`` and its mirror image."""
    from recompute import torch_model

    model, _ = torch_model(checkpoint_path)
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
        mirrored = model(torch.from_numpy(np.ascontiguousarray(x[..., ::-1]))).numpy()
    return plain, (plain + mirrored) / 2


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_evaluate_with_hflip_tta_scores_the_mean_logits_of_image_and_mirror_image(tiny_run, tmp_path):
    import json

    import pandas as pd

    from helpers import run_script
    from recompute import held_out, model_inputs

    folder, decoded = tiny_run / RUN, tiny_run / "resources/decoded/target/native"
    out = run_script("evaluate", "--checkpoint", str(folder / "model.pt"), "--split", str(tiny_run / "resources/splits/target.csv"),
                     "--decoded", str(decoded / "images.npy"), str(decoded / "info.json"), "--onnx", str(folder / "model.onnx"),
                     "--out-metrics", str(tmp_path / "m.json"), "--out-confusion", str(tmp_path / "c.csv"),
                     "--out-predictions", str(tmp_path / "p.csv"), "--device", "cpu", "--tta", "hflip")
    assert out.returncode == 0, out.stdout[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    predictions = pd.read_csv(tmp_path / "p.csv")
    checkpoint = torch.load(folder / "model.pt", weights_only=True)
    test = held_out(tiny_run)
    plain, averaged = flip_averaged_logits(folder / "model.pt", model_inputs(test["path"], checkpoint["preprocessing"]))
    truth = np.array([checkpoint["classes"].index(c) for c in test["class_name"]])
    probs = softmax(averaged.astype(np.float64))
    assert metrics["tta"] == "hflip"
    assert metrics["accuracy"] == pytest.approx(float((averaged.argmax(1) == truth).mean()), abs=1e-12)
    assert list(predictions["predicted"]) == [checkpoint["classes"][i] for i in probs.argmax(1)]
    assert np.allclose(predictions["probability"], probs.max(1), atol=1e-5)
    assert not np.allclose(predictions["probability"], softmax(plain.astype(np.float64)).max(1), atol=1e-4)
    # The exported model of the tiny run does not flip: it is compared with the plain PyTorch model.
    assert metrics["onnx"]["tta"] == "none" and metrics["onnx"]["max_abs_logit_diff"] < 1e-3


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("exporter, opset", [("dynamo", "18"), ("torchscript", "17")])
def test_export_with_tta_exports_the_flip_average_and_says_so_only_then(tiny_run, tmp_path, exporter, opset):
    import json

    from finetune.deploy import quantize_int8
    from finetune.export import read_metadata
    from helpers import run_script
    from recompute import held_out, model_inputs, onnx_logits

    assert "tta" not in read_metadata(tiny_run / RUN / "model.onnx")  # export.tta false (default): no key
    out = tmp_path / "out"
    result = run_script("export_onnx", "--checkpoint", str(tiny_run / RUN / "model.pt"),
                        "--split", str(tiny_run / "resources/splits/target.csv"), "--out-onnx", str(out / "model.onnx"),
                        "--out-parity", str(out / "onnx_parity.json"), "--parity-batch", "4", "--tta", "hflip",
                        "--exporter", exporter, "--opset", opset)
    assert result.returncode == 0, result.stdout[-3000:]
    meta = read_metadata(out / "model.onnx")
    assert meta["tta"] == "hflip"
    assert json.loads((out / "onnx_parity.json").read_text())["tta"] == "hflip"
    x = model_inputs(held_out(tiny_run)["path"][:8], {k: meta[k] if k in ("mean", "std") else int(meta[k])
                                                        for k in ("resize_size", "crop_size", "mean", "std")})
    plain, averaged = flip_averaged_logits(tiny_run / RUN / "model.pt", x)
    for batch in (x[:1], x):
        actual = onnx_logits(out / "model.onnx", batch)
        assert np.abs(actual - averaged[: len(batch)]).max() <= 1e-4
    assert np.abs(onnx_logits(out / "model.onnx", x) - plain).max() > 1e-3  # it does flip
    # export.quantize: the int8 model of it (the torchscript exporter's graph of two model calls shared each weight
    # through an Identity node, which the quantizer refused), one image at a time as predict runs it.
    quantize_int8(out / "model.onnx", out / "model.int8.onnx")
    int8 = np.concatenate([onnx_logits(out / "model.int8.onnx", x[i : i + 1]) for i in range(len(x))])
    assert np.abs(int8 - averaged).max() <= 0.1 * np.abs(averaged).max(), (int8, averaged)


# --------------------------------------------------------------------------- the config, before anything runs

@pytest.mark.parametrize("overrides, expected", [
    ({"strategy": "feature_extract", "layer_decay": 0.7},
     "experiments.probe: layer_decay: 0.7 scales the backbone stages' learning rates, but strategy: feature_extract"),
    ({"strategy": "feature_extract", "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
     "experiments.probe: mixup_alpha: 0.2 and cutmix_alpha: 1 mix training images"),
    ({"strategy": "feature_extract", "optimizer": "lbfgs", "ema_decay": 0.99},
     "experiments.probe: ema_decay: 0.99 averages the weights over optimizer steps; optimizer lbfgs"),
    # each epoch another resample of the examples: L-BFGS's curvature from one objective applied to the next
    ({"strategy": "feature_extract", "optimizer": "lbfgs", "class_weighting": "sampler"},
     "experiments.probe: class_weighting: sampler draws each epoch's examples anew"),
])
def test_the_workflow_refuses_a_recipe_where_it_makes_no_sense_before_running(overrides, expected):
    from finetune.configcheck import config_problems
    from helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    problems = config_problems({"experiments": {"probe": overrides}}, schema)
    assert any(p.startswith(expected) for p in problems), problems
    allowed = {**overrides, "strategy": "gradual", "optimizer": "adamw"}
    assert config_problems({"experiments": {"probe": allowed}}, schema) == []
    assert any(p.startswith("pretrain.train: ") for p in config_problems({"pretrain": {"train": overrides}}, schema))


def test_a_recipe_in_train_that_one_experiment_cannot_act_on_trains_the_others_with_it_and_that_one_without():
    """train.layer_decay, ema_decay (with ema_warmup: false) and mixup_alpha shared by a finetune experiment, which
    acts on all three, and an L-BFGS head on cached features, which can act on none: accepted; the head's run
    goes without them (its options build, and equal the run's without those keys written); where no experiment
    acts on one, it is refused as a train key, naming it."""
    from finetune.configcheck import config_problems, run_options
    from helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    shared = {"layer_decay": 0.7, "ema_decay": 0.99, "ema_warmup": False, "mixup_alpha": 0.2}
    head = {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0, "weight_decay": 0.1}
    config = {"train": shared, "experiments": {"ft": {"strategy": "finetune"}, "fe": head}}
    assert config_problems(config, schema) == []
    assert run_options(shared, head) == head
    assert run_options(shared, {"strategy": "finetune"}) == {**shared, "strategy": "finetune"}
    TrainOptions.from_dict(run_options(shared, head))
    alone = config_problems({"train": shared, "experiments": {"fe": head}}, schema)
    assert sorted(p.split(":")[0] for p in alone) == [f"train.{key}" for key in sorted(shared)], alone
    # written in the experiment itself, the same key is refused there
    assert any(p.startswith("experiments.fe: layer_decay: 0.7 scales") for p in config_problems(
        {"experiments": {"ft": {"strategy": "finetune"}, "fe": {**head, "layer_decay": 0.7}}}, schema))


def test_ema_warmup_without_an_average_is_refused_naming_both_keys():
    from finetune.configcheck import config_problems
    from helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    problems = config_problems({"experiments": {"probe": {"ema_warmup": False}}}, schema)
    assert any(p.startswith("experiments.probe: ema_warmup: false sets how the moving average") and "ema_decay is null"
               in p for p in problems), problems
    assert config_problems({"experiments": {"probe": {"ema_warmup": False, "ema_decay": 0.99}}}, schema) == []
    assert config_problems({"train": {"ema_decay": 0.99}, "experiments": {"probe": {"ema_warmup": False}}}, schema) == []
    with pytest.raises(ConfigError, match="ema_warmup: false .* ema_decay is null"):
        TrainOptions.from_dict({"ema_warmup": False})


def test_ema_warmup_in_train_goes_with_ema_decay_to_the_experiments_that_average_and_no_further():
    """train.ema_decay with ema_warmup: false, and one experiment that turns the average off (ema_decay: null):
    accepted. That run goes without ema_warmup (nothing to start) and the averaging run keeps it; with no run
    averaging at all, train.ema_warmup is refused as a train key, naming it and why."""
    from finetune.configcheck import config_problems, job_options, run_options, train_defaults
    from helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    shared = {"ema_decay": 0.99, "ema_warmup": False}
    config = {"train": shared, "experiments": {"avg": {}, "plain": {"ema_decay": None}}}
    assert config_problems(config, schema) == []
    assert run_options(shared, {"ema_decay": None}) == {"ema_decay": None}
    assert run_options(shared, {}) == shared
    TrainOptions.from_dict(run_options(shared, {"ema_decay": None}))
    defaults = train_defaults(schema)
    plain = job_options(shared, {"ema_decay": None}, defaults)
    assert plain["ema_warmup"] is defaults["ema_warmup"] is True  # the job trains as if ema_warmup were not written
    assert {**job_options({}, {"ema_decay": None}, defaults), "ema_warmup": True} == plain
    alone = config_problems({"train": {"ema_warmup": False}, "experiments": {"plain": {}}}, schema)
    assert len(alone) == 1 and alone[0].startswith("train.ema_warmup: not used") and "ema_decay is null" in alone[0], alone


def test_a_problem_is_train_s_only_for_the_runs_that_take_its_keys_from_train():
    """train: {epochs: 2, warmup_epochs: 5} warms up past the end of every run that takes both from train: said once
    as train.warmup_epochs, naming the experiments where only some runs have it. A run that writes one of the keys
    itself (in its experiment or sweep) has the problem as its own, even with train's value: said under it."""
    from finetune.configcheck import config_problems
    from helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    train = {"epochs": 2, "warmup_epochs": 5}

    def lines(experiments):
        return [p for p in config_problems({"train": train, "experiments": experiments}, schema) if "warmup_epochs" in p]

    assert [p.split(": 5 with")[0] for p in lines({"a": {}, "b": {}})] == ["train.warmup_epochs"]
    assert [p.split(": 5 with")[0] for p in lines({"a": {}, "b": {"epochs": 20}, "c": {"schedule": "onecycle"}})] == [
        "train.warmup_epochs (experiments a)"]
    assert [p.split(": warmup")[0] for p in lines({"a": {"warmup_epochs": 5}, "b": {"epochs": 20}})] == ["experiments.a"]
    swept = lines({"s": {"sweep": {"warmup_epochs": [5, 1]}}})
    assert len(swept) == 1 and swept[0].startswith("experiments.s (its sweep's run(s) "), swept


@pytest.mark.parametrize("key, value", [("ema_decay", 1.0), ("mixup_alpha", -0.5), ("layer_decay", 0), ("layer_decay", 1.2)])
def test_the_schema_refuses_recipe_values_out_of_range(key, value):
    from finetune.configcheck import config_problems
    from helpers import REPO

    problems = config_problems({"train": {key: value}}, REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert any(f"train.{key}" in p for p in problems), problems


# --------------------------------------------------------------------------- a run stopped before its outputs

@pytest.mark.parametrize("options", [
    {"early_stopping_patience": 1, "metric": "val_loss", "lr": 2.0, "epochs": 8},  # stops after epoch 5
    {"strategy": "gradual", "unfreeze_stages": 1, "epochs": 2},
], ids=["stopped-early", "after-its-last-epoch"])
def test_a_run_stopped_before_its_outputs_were_written_ends_as_it_would_have(tmp_path, options):
    """A finished fit leaves its resume state until the train job has written its outputs (a kill in that
    window leaves exactly this file). Fitting again ends as the run did: no epochs past its early stop,
    the same history, best state and parameter counts (before, a rerun trained on past the early stop, and
    one resumed after its last epoch reported 0 trainable parameters)."""
    resume = tmp_path / "resume.pt"
    done, _ = fit_small(resume_path=resume, **options)
    assert resume.exists()
    if "early_stopping_patience" in options:
        assert done.stopped_early and len(done.history) < options["epochs"], "the case: the run stops early"
    lines = []
    again, _ = fit_small(log=lines.append, resume_path=resume, **options)
    assert strip(again.history) == strip(done.history)
    assert (again.best_epoch, again.stopped_early, again.trainable_params, again.total_params) == \
        (done.best_epoch, done.stopped_early, done.trainable_params, done.total_params)
    assert done.trainable_params > 0 and equal_states(again.best_state, done.best_state)
    assert not any(line.startswith("epoch ") for line in lines), lines  # no epoch trained again


def test_sgd_takes_nesterov_momentum_steps():
    """`optimizer: sgd` is Nesterov's (docs/training.md): with a constant gradient g, momentum m and lr, the first two
    steps move a weight by lr(1 + m)g and lr(1 + m + m^2)g (plain momentum: lr g, then lr(1 + m)g), worked out here."""
    head = torch.nn.Linear(3, 2)
    g = torch.randn(2, 3)
    opts = TrainOptions.from_dict({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    optimizer, _ = training._make_optimizer(head, [{"params": [head.weight], "lr": 0.1}], opts, torch.device("cpu"))
    start, lr, m = head.weight.detach().clone(), 0.1, 0.9
    moved = []
    for _ in range(2):
        optimizer.zero_grad()
        (head.weight * g).sum().backward()
        optimizer.step()
        moved.append(head.weight.detach().clone())
    assert torch.allclose(moved[0], start - lr * (1 + m) * g, atol=1e-6)
    assert torch.allclose(moved[1], moved[0] - lr * (1 + m + m * m) * g, atol=1e-6)


def test_sgd_with_momentum_0_is_plain_sgd():
    """`momentum: 0` (the schema allows it): plain SGD, each step lr g. torch refuses Nesterov without momentum, and
    the train job failed with its ValueError after Snakemake had removed the run's earlier outputs."""
    head = torch.nn.Linear(3, 2)
    g = torch.randn(2, 3)
    opts = TrainOptions.from_dict({"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    optimizer, _ = training._make_optimizer(head, [{"params": [head.weight], "lr": 0.1}], opts, torch.device("cpu"))
    previous = head.weight.detach().clone()
    for _ in range(2):
        optimizer.zero_grad()
        (head.weight * g).sum().backward()
        optimizer.step()
        assert torch.allclose(head.weight.detach(), previous - 0.1 * g, atol=1e-6)
        previous = head.weight.detach().clone()
