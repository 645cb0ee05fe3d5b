"""Classification metrics as small pure numpy functions (no torch, no sklearn)."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def top_k_accuracy(labels: np.ndarray, logits: np.ndarray, k: int) -> float:
    """The share of images whose label is among the ``k`` classes of largest logit. Ranked by the logits, not by their
    softmax: a class whose logit is ~745 below the top one (~100 in float32) has a probability of exactly 0, and all
    such classes tie there, whatever their logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual.astype(int)}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE with equal-width confidence bins; also the bins for a reliability plot.

    Confidence is the top-1 probability; bin i holds (low, high], the first bin also 0 itself.
    ECE = sum over bins of (images in bin / all images) * |accuracy in bin - mean confidence in bin|.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, bins = 0.0, []
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high) if low > 0 else (confidence >= low) & (confidence <= high)
        count = int(in_bin.sum())
        if count:
            acc, conf = float(correct[in_bin].mean()), float(confidence[in_bin].mean())
            ece += count / len(labels) * abs(acc - conf)
        else:
            acc = conf = None  # JSON has no NaN
        bins.append({"low": float(low), "high": float(high), "count": count, "accuracy": acc, "confidence": conf})
    return float(ece), bins


def most_confused_pairs(cm: np.ndarray, class_names: list[str], n: int = 5) -> list[dict]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = []
    for flat in order:
        true, pred = np.unravel_index(flat, off.shape)
        if off[true, pred] == 0:
            break
        pairs.append({"true": class_names[true], "predicted": class_names[pred], "count": int(off[true, pred])})
    return pairs


Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95%


def wilson_interval(correct: float, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of the proportion ``correct / n`` (95% by default): the accuracies the
    same model could have on other test sets of this size and kind, given this one. It stays inside
    [0, 1] and is not empty at 0 or n correct, where the normal approximation's p ± z·sqrt(p(1-p)/n) is.
    None without images."""
    if n <= 0:
        return None
    p, zz = correct / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * np.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    # at 0 (or n) correct the bound is 0 (or 1) exactly, where centre - half leaves a rounding residue (1.4e-17)
    return [0.0 if correct <= 0 else float(max(0.0, centre - half)), 1.0 if correct >= n else float(min(1.0, centre + half))]


def classification_report(labels: np.ndarray, logits: np.ndarray, class_names: list[str], top_k: int = 2,
                          n_bins: int = 15) -> dict:
    probs = softmax(logits.astype(np.float64))
    preds = probs.argmax(axis=1)
    n = len(class_names)
    cm = confusion_matrix(labels, preds, n)
    scores = per_class_scores(cm)
    support = scores["support"]
    ece, bins = expected_calibration_error(labels, probs, n_bins)
    # With k classes or fewer, every image's class is among the top k: a top-k accuracy of 1.0 says nothing.
    scored_k = top_k if top_k < n else None
    return {
        "n_test": int(len(labels)),
        "accuracy": float((preds == labels).mean()),
        "accuracy_ci95": wilson_interval(int((preds == labels).sum()), len(labels)),
        "top_k": scored_k,
        **({f"top{scored_k}_accuracy": top_k_accuracy(labels, logits, scored_k)} if scored_k else {}),
        "macro_f1": float(scores["f1"].mean()),
        "weighted_f1": float((scores["f1"] * support).sum() / max(1, support.sum())),
        "ece": ece,
        "per_class": {
            name: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
                   "f1": float(scores["f1"][i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        # precision is 0/0 for these: reported as 0 and averaged as 0 (scikit-learn's zero_division default)
        "never_predicted": [name for i, name in enumerate(class_names) if cm[:, i].sum() == 0],
        "most_confused": most_confused_pairs(cm, class_names),
        "calibration_bins": bins,
        "confusion_matrix": cm.tolist(),
    }
