"""Build torchvision classifiers, find and replace their output layer, freeze per strategy."""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError, WeightsError
from .importing import import_torchvision


def available_architectures() -> list[str]:
    torchvision = import_torchvision()

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_architecture(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision classification model with ``num_classes`` outputs."""
    torchvision = import_torchvision()

    names = available_architectures()
    if arch not in names:
        import difflib

        close = difflib.get_close_matches(str(arch).lower(), names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown architecture {arch!r} (weights.arch){hint}; torchvision classification models are: {', '.join(names)}"
        )
    kwargs = {"num_classes": num_classes}
    if arch.startswith("inception") or arch.startswith("googlenet"):
        kwargs["aux_logits"] = False  # auxiliary heads are a training trick of the original paper
        kwargs["init_weights"] = True
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def find_output_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Return ``(qualified name, module)`` of the model's output layer.

    The output layer is the last ``nn.Linear`` registered in the model (``fc`` for ResNets,
    ``classifier.1`` for EfficientNet, ``heads.head`` for ViT ...). SqueezeNet has no Linear: its
    output layer is the last 1x1 ``nn.Conv2d``.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
                last = (name, module)
    if last is None:
        raise ConfigError(f"cannot find an output layer (nn.Linear) in {type(model).__name__}")
    return last


def replace_output_layer(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the output layer by a new, randomly initialised one with ``num_classes`` outputs."""
    name, old = find_output_layer(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    model.set_submodule(name, new)
    return model


# Image sizes offered when a model refuses the configured one (ViTs and MaxViT take 224 only, AlexNet
# and VGG at least 32, Inception v3 at least 75).
PROBE_SIZES = (32, 64, 96, 128, 160, 224, 256, 299, 384)


def input_size_error(model: nn.Module, size: int) -> str | None:
    """Why ``model`` cannot take ``size`` x ``size`` images (its own message), or None where it can.

    One forward of one zero image in eval mode without gradients: no parameter, buffer or random state
    changes, and the model's train/eval mode is restored.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    except (RuntimeError, AssertionError, ValueError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        model.train(was_training)
    return None


def check_input_size(model: nn.Module, arch: str, size: int, setting: str, key: str) -> None:
    """Refuse, before any training, an image size the architecture cannot take; name the setting and sizes it can."""
    problem = input_size_error(model, size)
    if problem is None:
        return
    fits = []
    for candidate in PROBE_SIZES:
        if input_size_error(model, candidate) is None:
            fits.append(candidate)
            if len(fits) == 3:
                break
    hint = f"; it takes e.g. {', '.join(map(str, fits))}: set {key} to one of them" if fits \
        else f"; none of {', '.join(map(str, PROBE_SIZES))} works either"
    raise ConfigError(f"{arch} cannot take {size}x{size} images ({setting}): {problem}{hint}")


def output_layer_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(find_output_layer(model)[1].parameters())


def _first(names, n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_source_state(model: nn.Module, state_dict: dict, origin: str, arch: str | None = None) -> None:
    """Load source weights strictly, turning key/shape mismatches into one readable error."""
    expected = model.state_dict()
    # BatchNorm's step counters: files of older torch or of conversions lack them; they start at 0, as torch starts
    # them for a file without its state_dict's version record (one with it, torch would refuse).
    counters = {k: v.new_zeros(()) for k, v in expected.items() if k not in state_dict and k.endswith(".num_batches_tracked")}
    if counters:
        state_dict = {**state_dict, **counters}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if reshaped:
        problems.append(f"{len(reshaped)} of another shape ({_first(reshaped, 2)})")
    name = arch or type(model).__name__
    if problems:
        raise WeightsError(
            f"the weights in {origin} are not a {name} state_dict: {'; '.join(problems)}. "
            "Set weights.arch to the architecture they were saved from"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first_lines = " ".join(str(exc).splitlines()[:3])
        raise WeightsError(f"the weights in {origin} do not fit {name}: {first_lines}") from exc


def build_target_model(arch: str, num_classes: int, source_state: dict | None, source_num_classes: int | None,
                       origin: str = "weights") -> nn.Module:
    """Steps 2-3 of the recipe: copy every source layer, then a new output layer for the target classes.

    ``source_state=None`` gives the same architecture with no pretrained weights (the scratch control).
    """
    if source_state is None:
        return build_architecture(arch, num_classes)
    model = build_architecture(arch, source_num_classes)
    load_source_state(model, source_state, origin)
    return replace_output_layer(model, num_classes)


def set_batchnorm_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def freeze_batchnorm(model: nn.Module) -> None:
    """Freeze BatchNorm's affine parameters (running statistics are frozen by :func:`set_batchnorm_eval`)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for p in module.parameters():
                p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages, in order: the units `gradual` unfreezes and the depths of ``layer_decay``.

    The stem is the top-level single layers before the first block (a ResNet's conv1 and bn1), held together;
    each following top-level child with parameters is one stage (a ResNet's layer1 .. layer4). So a ResNet has
    five stages, and its stem's BatchNorm unfreezes with the convolution it normalises.
    """
    return [stage[0] if len(stage) == 1 else nn.ModuleList(stage) for stage in _stage_children(model)]


def _stage_children(model: nn.Module) -> list[list[nn.Module]]:
    """The top-level children with parameters, output layer left out, grouped by stage (:func:`backbone_stages`)."""
    head_root = find_output_layer(model)[0].split(".")[0]
    stages: list[list[nn.Module]] = []
    in_stem = True
    for name, child in model.named_children():
        if name == head_root or not any(p.numel() for p in child.parameters()):
            continue
        is_single_layer = not any(True for _ in child.children())
        if in_stem and is_single_layer and stages:
            stages[0].append(child)
        else:
            stages.append([child])
        in_stem = in_stem and is_single_layer
    return stages


def strip_output_layer(model: nn.Module) -> nn.Module:
    """The model with its output layer replaced by identity: the backbone, giving features."""
    name, _ = find_output_layer(model)
    model.set_submodule(name, nn.Identity())
    return model



def parameter_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each backbone parameter's depth (``layer_decay``), and the output layer's (the largest).

    Depth 0 is the stem: the top-level single layers before the first block (a ResNet's conv1 and
    bn1); each following stage (:func:`backbone_stages`) is one deeper (a ResNet's layer1 .. layer4:
    1 .. 4); the output layer is one deeper still (a ResNet's fc: 5). A backbone without a stem of single
    layers starts at depth 1.
    """
    names = {id(child): name for name, child in model.named_children()}
    stages = _stage_children(model)
    has_stem = bool(stages) and not any(True for _ in stages[0][0].children())
    depths, depth = {}, 0
    for index, stage in enumerate(stages):
        depth = index if has_stem else index + 1
        for child in stage:
            for param_name, _ in child.named_parameters():
                depths[f"{names[id(child)]}.{param_name}"] = depth
    return depths, depth + 1


class HflipAverage(nn.Module):
    """Test-time augmentation: the mean of the model's logits on the image and on its mirror image."""

    def __init__(self, model: nn.Module, one_call: bool = False):
        super().__init__()
        self.model = model
        self.one_call = one_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_call:
            # For export: one call of the model on both, so that the graph holds each weight once (two calls made the
            # torchscript exporter share them through Identity nodes, which onnxruntime's int8 quantizer refuses).
            # Twice the batch at once: evaluate, whose batch_size is its memory, calls the model twice (and so
            # does the dynamo exporter's model: export_stage).
            plain, mirrored = self.model(torch.cat([x, x.flip(-1)])).chunk(2)
            return (plain + mirrored) / 2
        return (self.model(x) + self.model(x.flip(-1))) / 2
