"""bench/bench.py --smoke runs every row at tiny sizes and writes the CSV `make bench` writes (issue 7)."""

import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

ROWS = [
    "train_img_per_s", "feature_extract_25ep_s", "noop_rerun_s", "dag_build_20exp_s",
    "onnx_infer_img_per_s_b1", "onnx_infer_img_per_s_b64", "transfer_acc_finetune", "transfer_acc_feature_extract",
]
COLUMNS = ["metric", "ours", "baseline", "ratio", "unit", "higher_is_better", "note"]


def test_bench_smoke_writes_every_row(tmp_path):
    out = tmp_path / "bench.csv"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench.py"), "--smoke", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert list(table["metric"]) == ROWS
    for r in table.itertuples():
        assert r.ours > 0 and r.baseline > 0, r
        assert r.ratio == pytest.approx(r.ours / r.baseline, rel=1e-3), r
        assert isinstance(r.note, str) and r.note, r
    assert table["higher_is_better"].dtype == bool
    # The table is printed too, and the work files are cleaned up (only the CSV and its JSON remain).
    assert "ratio" in result.stdout and "onnx_infer_img_per_s_b1" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.csv", "bench.json"]


def test_gpu_mode_explains_itself_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --gpu would run the GPU benchmark")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench.py"), "--gpu", "--out", str(tmp_path / "g.csv")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 2
    assert "needs a CUDA device" in result.stdout
    assert not (tmp_path / "g.csv").exists()
