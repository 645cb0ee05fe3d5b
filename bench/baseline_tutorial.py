"""The baseline: the loop a user would otherwise write, in the style of the PyTorch transfer-learning
tutorial's ``train_model`` (ImageFolder + PIL transforms + DataLoader), written here in our own words.

What makes it the baseline, on purpose:
- every epoch decodes every image file again with PIL and runs the transforms image by image;
- for head-only training ("ConvNet as fixed feature extractor") the whole model still runs forward on
  every batch of every epoch, in both phases, although the frozen backbone gives the same features
  each time.

Where it departs from the tutorial, so that the benchmark compares the data path and the loop, not
the recipe (see docs/bench.md):
- no augmentation (the tutorial's RandomResizedCrop + flip): our side runs with ``augment: false``,
  the demo's setting, so both apply the same eval transform (Resize + CenterCrop) to every split;
- the caller passes the optimizer and scheduler (the bench gives both sides the same AdamW and the same
  per-step learning-rate schedule) and says whether the scheduler steps per batch or per epoch;
- ``freeze_bn=True`` keeps BatchNorm in eval mode while training, as our ``feature_extract`` does (the
  tutorial leaves the frozen backbone's BatchNorm in training mode, so its statistics drift); with it,
  both sides train the same function and their accuracies differ by the caching alone;
- the best weights are kept in memory (``copy.deepcopy``) instead of a temporary file.

The tutorial's recipe itself (``recipe_acc_vs_tutorial``, bench/recipe.py) adds back what the rows above
leave out: its train transform (``train_transforms``: RandomResizedCrop + RandomHorizontalFlip), and
``tutorial_recipe``: SGD lr 0.001 momentum 0.9 over the whole network, StepLR(step_size=7, gamma=0.1)
stepped per epoch, CrossEntropyLoss, 25 epochs, batch 4 (``TUTORIAL_RECIPE``).
"""

from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def data_transforms(image_size: int, mean, std, resize_size: int | None = None) -> transforms.Compose:
    """The tutorial's val transform at ``image_size``: Resize (``resize_size``, default ``image_size``), CenterCrop,
    ToTensor, Normalize."""
    return transforms.Compose([
        transforms.Resize(resize_size or image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(list(mean), list(std)),
    ])


def train_transforms(image_size: int, mean, std) -> transforms.Compose:
    """The tutorial's train transform at ``image_size``: RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(list(mean), list(std)),
    ])


# The tutorial's "finetuning the ConvNet" recipe: every parameter trained.
TUTORIAL_RECIPE = {"lr": 0.001, "momentum": 0.9, "step_size": 7, "gamma": 0.1, "epochs": 25, "batch_size": 4}


def tutorial_recipe(model: nn.Module, recipe: dict = TUTORIAL_RECIPE):
    """(criterion, optimizer, scheduler) as the tutorial builds them: CrossEntropyLoss, SGD with momentum over
    every parameter, StepLR stepped once per epoch."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe["step_size"], gamma=recipe["gamma"])
    return criterion, optimizer, scheduler


def make_dataloaders(data_dir: str, image_size: int, mean, std, batch_size: int, num_workers: int = 0,
                     phases=("train", "val"), resize_size: int | None = None,
                     train_transform: transforms.Compose | None = None) -> tuple[dict, dict]:
    """``data_dir/<phase>/<class>/<image>`` -> ImageFolder datasets and DataLoaders (shuffled for train).

    Every phase gets the eval transform (Resize ``resize_size``, default ``image_size``, + CenterCrop), but the
    train phase gets ``train_transform`` where one is given."""
    transform = data_transforms(image_size, mean, std, resize_size)
    image_datasets = {x: datasets.ImageFolder(os.path.join(data_dir, x),
                                              train_transform if x == "train" and train_transform else transform)
                      for x in phases}
    dataloaders = {
        x: DataLoader(image_datasets[x], batch_size=batch_size, shuffle=(x == "train"), num_workers=num_workers)
        for x in phases
    }
    return image_datasets, dataloaders


def _freeze_batchnorm_stats(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_model(model: nn.Module, criterion, optimizer, scheduler, dataloaders: dict, num_epochs: int = 25,
                scheduler_step: str = "epoch", freeze_bn: bool = False, log=None) -> tuple[nn.Module, list[dict]]:
    """Train and validate every epoch; return the model with the weights of its best val epoch, and the history."""
    since = time.perf_counter()
    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc = -1.0
    history = []

    for epoch in range(num_epochs):
        row = {"epoch": epoch + 1}
        for phase in ["train", "val"]:
            if phase == "train":
                model.train()  # Set model to training mode
                if freeze_bn:
                    _freeze_batchnorm_stats(model)
            else:
                model.eval()  # Set model to evaluate mode

            running_loss = 0.0
            running_corrects = 0
            seen = 0
            for inputs, labels in dataloaders[phase]:
                optimizer.zero_grad()
                # track history only in train
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                        if scheduler is not None and scheduler_step == "batch":
                            scheduler.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data).item()
                seen += inputs.size(0)
            if phase == "train" and scheduler is not None and scheduler_step == "epoch":
                scheduler.step()

            epoch_loss = running_loss / max(1, seen)
            epoch_acc = running_corrects / max(1, seen)
            row[f"{phase}_loss"], row[f"{phase}_accuracy"] = epoch_loss, epoch_acc
            # deep copy the model
            if phase == "val" and epoch_acc > best_acc:
                best_acc = epoch_acc
                best_model_wts = copy.deepcopy(model.state_dict())
        row["elapsed_s"] = time.perf_counter() - since
        history.append(row)
        if log is not None:
            log(f"  epoch {epoch + 1}/{num_epochs} train_loss {row['train_loss']:.4f} val_acc {row['val_accuracy']:.4f}")

    # load best model weights
    model.load_state_dict(best_model_wts)
    return model, history


@torch.no_grad()
def test_accuracy(model: nn.Module, dataloader: DataLoader) -> float:
    """Top-1 accuracy over a DataLoader, the tutorial's way (eval mode, batch by batch)."""
    model.eval()
    correct, seen = 0, 0
    for inputs, labels in dataloader:
        correct += (model(inputs).argmax(1) == labels).sum().item()
        seen += labels.numel()
    return correct / max(1, seen)
