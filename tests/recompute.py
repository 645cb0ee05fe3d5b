"""Independent computations the tests compare the workflow's results with.

The test split's labels come from the split CSV, the model's outputs from running it here: the
exported ``model.onnx`` in a fresh onnxruntime session, or the ``model.pt`` checkpoint rebuilt with
torchvision and run by PyTorch. The metrics are counted here in plain Python. Nothing in this module
reads a figure or a verdict the workflow wrote (metrics.json, onnx_parity.json, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from finetune.images import load_image, normalize, preprocess, split_ref


def held_out(workdir: Path) -> pd.DataFrame:
    """The test split of a run folder's ``resources/splits/target.csv``, in file order."""
    split = pd.read_csv(Path(workdir) / "resources/splits/target.csv")
    return split[split["split"] == "test"].reset_index(drop=True)


def onnx_preprocessing(model_path: Path) -> dict:
    """The preprocessing a consumer reads from an ONNX model's metadata (onnxruntime only)."""
    import onnxruntime as ort

    meta = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return {"resize_size": int(meta["resize_size"]), "crop_size": int(meta["crop_size"]),
            "mean": json.loads(meta["mean"]), "std": json.loads(meta["std"]), "classes": json.loads(meta["classes"])}


def decode_as_documented(ref: str, resize_size: int):
    """An image as README's decode stage says it is read: a JPEG at least twice the resize size (shorter side)
    is decoded at a reduced scale (PIL's draft mode) that keeps its shorter side >= the resize size."""
    from PIL import Image

    path, index = split_ref(ref)
    if index is not None or not path.lower().endswith((".jpg", ".jpeg")):
        return load_image(ref)
    with Image.open(path) as img:
        width, height = img.size
        scale = resize_size / min(width, height)
        if scale <= 0.5:
            img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        return img.convert("RGB")


def model_inputs(refs, prep: dict) -> np.ndarray:
    """Decode image references and normalise them as a deployment would: float32 NCHW."""
    pixels = np.stack([preprocess(decode_as_documented(ref, prep["resize_size"]), prep["resize_size"], prep["crop_size"])
                       for ref in refs])
    return normalize(pixels, prep["mean"], prep["std"])


def onnx_logits(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of ``model_path`` on ``x`` from a fresh onnxruntime session (one call, batch = len(x))."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def torch_model(checkpoint_path: Path):
    """The trained model of a ``model.pt``, rebuilt with torchvision alone: (model in eval mode, checkpoint)."""
    import torch
    import torchvision

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = torchvision.models.get_model(checkpoint["arch"], weights=None, num_classes=checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def torch_logits(checkpoint_path: Path, x: np.ndarray) -> np.ndarray:
    import torch

    model, _ = torch_model(checkpoint_path)
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def run_logits(run_folder: Path, refs) -> np.ndarray:
    """PyTorch logits of a run's ``model.pt`` on ``refs``, preprocessed as its checkpoint says."""
    _, checkpoint = torch_model(Path(run_folder) / "model.pt")
    return torch_logits(Path(run_folder) / "model.pt", model_inputs(refs, checkpoint["preprocessing"]))


def class_metrics(true: list[str], predicted: list[str], classes: list[str]) -> dict:
    """Accuracy, confusion counts and per-class precision/recall/F1/support, counted one image at a time."""
    counts = {(t, p): 0 for t in classes for p in classes}
    for t, p in zip(true, predicted):
        counts[(t, p)] += 1
    per_class = {}
    for c in classes:
        tp = counts[(c, c)]
        actual = sum(counts[(c, p)] for p in classes)
        called = sum(counts[(t, c)] for t in classes)
        precision = tp / called if called else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = len(true)
    return {
        "n": n,
        "accuracy": sum(t == p for t, p in zip(true, predicted)) / n,
        "confusion": [[counts[(t, p)] for p in classes] for t in classes],
        "per_class": per_class,
        "macro_f1": sum(s["f1"] for s in per_class.values()) / len(classes),
        "weighted_f1": sum(s["f1"] * s["support"] for s in per_class.values()) / n,
    }


def probabilities(logits: np.ndarray) -> list[list[float]]:
    """Softmax of each row, in float64 Python arithmetic."""
    rows = []
    for row in np.asarray(logits, dtype=np.float64).tolist():
        top = max(row)
        e = [math.exp(v - top) for v in row]
        rows.append([v / sum(e) for v in e])
    return rows


def calibration(true_idx: list[int], probs: list[list[float]], n_bins: int) -> tuple[float, list[int]]:
    """ECE over ``n_bins`` equal-width confidence bins (low, high], and the number of images per bin."""
    members = [[] for _ in range(n_bins)]
    for t, row in zip(true_idx, probs):
        confidence = max(row)
        index = max(0, math.ceil(confidence * n_bins) - 1)
        members[index].append((confidence, row.index(confidence) == t))
    ece = 0.0
    for group in members:
        if group:
            accuracy = sum(ok for _, ok in group) / len(group)
            confidence = sum(c for c, _ in group) / len(group)
            ece += len(group) / len(true_idx) * abs(accuracy - confidence)
    return ece, [len(group) for group in members]


def wilson_bounds(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval by its definition, not its closed form: the proportions p for which the
    observed share lies within z standard errors of p, (correct/n - p)^2 = z^2 p (1 - p) / n, found by
    bisection on each side of the observed share (z from the normal distribution, not a constant)."""
    from statistics import NormalDist

    z, share = NormalDist().inv_cdf(0.5 + level / 2), correct / n

    def outside(p: float) -> bool:
        return (share - p) ** 2 > z * z * p * (1 - p) / n

    def root(low: float, high: float, low_outside: bool) -> float:
        for _ in range(200):
            middle = (low + high) / 2
            if outside(middle) == low_outside:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    return root(0.0, share, True) if correct else 0.0, root(share, 1.0, False) if correct < n else 1.0
