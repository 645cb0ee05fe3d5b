"""The whole workflow through the real `snakemake` on tiny real data (issue: end to end)."""

import json

import onnx
import pandas as pd
import pytest


pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

RUNS = ["finetune/seed0", "feature_extract/seed0", "scratch/seed0"]


def test_every_output_is_there_and_sound(tiny_run):
    results = tiny_run / "results"
    for run in RUNS:
        folder = results / run
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n_test"] == 4 * 6
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert set(metrics["per_class"]) == {"Shirt", "Sneaker", "Bag", "Ankle boot"}
        cm = pd.read_csv(folder / "confusion_matrix.csv", index_col=0)
        assert cm.to_numpy().sum() == metrics["n_test"]
        parity = json.loads((folder / "onnx_parity.json").read_text())
        assert parity["passed"] is True
        assert parity["max_abs_diff"] <= parity["tolerance"]
        assert parity["input_shape"][0] == "batch", "the batch axis must be dynamic"
        onnx.checker.check_model(onnx.load(str(folder / "model.onnx")))
        history = pd.read_csv(folder / "history.csv")
        assert list(history["epoch"]) == [1]
        info = json.loads((folder / "train_info.json").read_text())
        assert info["classes"] == ["Shirt", "Sneaker", "Bag", "Ankle boot"]
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary["experiment"]) == {"finetune", "feature_extract", "scratch"}
    manifest = json.loads((tiny_run / "resources/weights/manifest.json").read_text())
    assert manifest["arch"] == "resnet18" and manifest["num_classes"] == 6
    assert manifest["source"]["kind"] == "pretrain"


def test_head_only_training_trains_only_the_head(tiny_run):
    info = json.loads((tiny_run / "results/feature_extract/seed0/train_info.json").read_text())
    assert info["trainable_params"] == 512 * 4 + 4
    assert info["cached_features"] is True
    full = json.loads((tiny_run / "results/finetune/seed0/train_info.json").read_text())
    assert full["trainable_params"] == full["total_params"]
