"""onnxruntime vs eager PyTorch inference on the CPU: ``onnx_infer_img_per_s_b1`` and ``_b64``."""

from __future__ import annotations

from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import SPIN, Sizes, median, row, spread, timed

import numpy as np
import torch

from finetune.data import read_split
from finetune.images import normalize as numpy_normalize
from finetune.stages import load_checkpoint
from finetune.tensors import Preprocessing, decode_images


def bench_onnx(checkpoint_path: Path, split_csv: Path, workdir: Path, sizes: Sizes, threads: int) -> list[dict]:
    """onnxruntime vs eager PyTorch on the CPU, same threads, same real inputs; batch 1 and 64."""
    import onnxruntime as ort

    from finetune.export import export_onnx

    model, checkpoint = load_checkpoint(checkpoint_path)
    prep = Preprocessing.from_dict(checkpoint["preprocessing"])
    onnx_path = workdir / "model.onnx"
    export_s, _ = timed(export_onnx, model, checkpoint, onnx_path)
    frame, _ = read_split(split_csv)
    refs = frame[frame["split"] == "test"]["path"].tolist()[:64]
    pixels = decode_images(refs, prep, threads).permute(0, 2, 3, 1).numpy()
    inputs = numpy_normalize(pixels, prep.mean, prep.std).astype(np.float32)
    while len(inputs) < 64:  # smoke sizes: repeat the few test images up to one batch
        inputs = np.concatenate([inputs, inputs])[:64]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for batch, calls in ((1, sizes.onnx_calls_b1), (64, sizes.onnx_calls_b64)):
        x = np.ascontiguousarray(inputs[:batch])
        xt = torch.from_numpy(x)

        def run_ort():
            for _ in range(calls):
                session.run(None, {name: x})

        def run_eager():
            with torch.inference_mode():
                for _ in range(calls):
                    model(xt)

        with torch.inference_mode():
            diff = float(np.abs(session.run(None, {name: x})[0] - model(xt).numpy()).max())
        for _ in range(2):  # warm-up
            run_ort(), run_eager()
        ours, base = [], []
        for _ in range(sizes.onnx_reps):
            ours.append(batch * calls / timed(run_ort)[0])
            base.append(batch * calls / timed(run_eager)[0])
        rows.append(row(f"onnx_infer_img_per_s_b{batch}", median(ours), median(base), "img/s", True,
                        f"{checkpoint['arch']} {prep.crop_size}px 4 classes, {threads} threads; onnxruntime "
                        f"{ort.__version__} {spread(ours)} vs torch eager (inference_mode) {spread(base)} img/s; "
                        f"max |diff| {diff:.2e}; export {export_s:.1f} s"))
    return rows

