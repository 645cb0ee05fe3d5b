"""Export a trained model to ONNX with a dynamic batch axis, embed its metadata, and gate on parity."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from . import __version__
from .optionrules import opset_problem
from .errors import ConfigError, FinetuneError
from .fileio import atomic_path

# export.rtol's default: the part of the tolerance that grows with an image's largest |logit|. Seen between
# onnxruntime and PyTorch (fp32, CPU): ~1e-7 of it, from logits of ~3 to ~1e5.
DEFAULT_RTOL = 1e-5


class ParityError(FinetuneError):
    """onnxruntime's logits differ from PyTorch's by more than the tolerance."""


class ExportError(FinetuneError):
    """The exporter wrote something other than what was asked for."""


def default_opset(proto) -> int | None:
    """The version of the default ONNX domain a model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def onnx_metadata(checkpoint: dict, tta: bool = False) -> dict[str, str]:
    """Everything a consumer needs to use the model, as ONNX ``metadata_props`` (strings).

    ``tta``: only when the exported graph itself averages over the horizontal flip, ``tta: hflip``.
    """
    prep = checkpoint["preprocessing"]
    return {
        "classes": json.dumps(checkpoint["classes"]),
        "input_size": json.dumps([3, prep["crop_size"], prep["crop_size"]]),
        "resize_size": str(prep["resize_size"]),
        "crop_size": str(prep["crop_size"]),
        "mean": json.dumps(prep["mean"]),
        "std": json.dumps(prep["std"]),
        "interpolation": str(prep.get("interpolation", "bilinear")),
        "orientation": "exif",  # files are turned upright by their EXIF tag first (finetune.images.ORIENTATIONS)
        "channel_order": "RGB",
        "layout": "NCHW",
        "pixel_scale": "1/255 then (x - mean) / std",
        "arch": checkpoint["arch"],
        "source_weights_sha256": str(checkpoint.get("weights_sha256")),
        "finetune_version": __version__,
        **({"tta": "hflip"} if tta else {}),
    }


def export_onnx(model, checkpoint: dict, out_path: Path, opset: int = 18, dynamo: bool = True, tta: bool = False) -> None:
    """Write ``model`` as ONNX at exactly ``opset`` with a dynamic batch axis and its metadata (atomically).

    ``tta``: ``model`` averages over the horizontal flip itself (:class:`finetune.models.HflipAverage`);
    the metadata says so.
    """
    import onnx
    import torch

    exporter = "dynamo" if dynamo else "torchscript"
    problem = opset_problem(exporter, opset)
    if problem:
        raise ConfigError(problem)
    size = checkpoint["preprocessing"]["crop_size"]
    example = torch.zeros(2, 3, size, size)
    with atomic_path(out_path) as tmp:
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, opset_version=opset,
                              input_names=["x"], output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(str(tmp))
        if default_opset(proto) != opset:
            raise ExportError(
                f"export.opset: {opset}: the {exporter} exporter wrote ONNX opset {default_opset(proto)} instead; "
                f"choose an opset this torch {torch.__version__} exports, or the other export.exporter"
            )
        for key, value in onnx_metadata(checkpoint, tta=tta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"{checkpoint['arch']} fine-tuned by finetune {__version__}"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))


def read_metadata(onnx_path: str | Path) -> dict:
    """Read a model's metadata with onnxruntime alone, decoding the JSON-valued entries."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    for key in ("classes", "input_size", "mean", "std"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


# Images per forward pass of the parity check's top-1 agreement, on either side: 256 at once held 3.2 GB in an
# export job at 224 px (ResNet18), over the rule's mem_mb; logits do not depend on the batch beyond float rounding.
PARITY_CHUNK = 64


def parity_check(model, onnx_path: Path, inputs: np.ndarray, batch_n: int, tolerance: float,
                 rtol: float = DEFAULT_RTOL) -> dict:
    """Compare onnxruntime with PyTorch on real inputs at batch 1, at batch ``batch_n``, and on all of them (by
    chunks of :data:`PARITY_CHUNK`), each logit held to the tolerance; and their top-1 agreement.

    A logit passes where ``|onnxruntime - PyTorch| <= tolerance + rtol * scale``, ``scale`` the largest
    |logit| PyTorch gives that image: float rounding grows with the logits' size, so a model whose logits
    reach 1e5 (a badly trained run of a sweep, say) differs by ~1e-2 from its faithful export.

    PyTorch's logits are computed once per chunk of :data:`PARITY_CHUNK` images and each onnxruntime run (batch 1, batch
    ``batch_n``, every chunk) is compared with those of the same images: PyTorch's logits of an image do
    not depend on the batch it is in beyond float rounding, far below any tolerance worth setting.
    """
    import onnxruntime as ort
    import torch

    # As many threads as PyTorch's side (the job's --threads), and no spinning: a spinning pool
    # held the cores PyTorch's forward needed next.
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batch_n = max(2, min(batch_n, len(inputs)))
    # PyTorch's side in NHWC: ResNet inference on CPU ran ~1.7x faster so (see tensors.batched_forward);
    # the logits differ from NCHW's by float rounding only, far below any tolerance worth setting.
    reference = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    chunks = PARITY_CHUNK
    expected_all = []
    with torch.inference_mode():
        for start in range(0, len(inputs), chunks):
            x = torch.from_numpy(inputs[start : start + chunks]).contiguous(memory_format=torch.channels_last)
            expected_all.append(reference(x).numpy())
    expected_all = np.concatenate(expected_all) if expected_all else np.zeros((0, 0), np.float32)

    def onnx_run(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return expected_all[start:stop], session.run(None, {input_name: inputs[start:stop]})[0]

    def compared(label: str, expected: np.ndarray, actual: np.ndarray, batch: int) -> dict:
        if actual.shape != expected.shape:
            raise ParityError(f"{onnx_path}: onnxruntime output shape {actual.shape} != PyTorch {expected.shape} at {label}")
        diff = np.abs(actual - expected)
        scale = np.abs(expected).max(axis=1, keepdims=True)
        return {"batch": batch, "images": len(actual), "max_abs_diff": float(diff.max()),
                "max_logit": float(scale.max()), "passed": bool((diff <= tolerance + rtol * scale).all())}

    figures = {}
    for label, stop in (("batch_1", 1), (f"batch_{batch_n}", batch_n)):
        figures[label] = compared(label, *onnx_run(0, stop), batch=stop)
    # Every image of the sample, by chunks: held to the same tolerance (an export wrong on images past the first
    # batch_n passed before), and their top-1 agreement.
    pairs = [onnx_run(start, start + chunks) for start in range(0, len(inputs), chunks)]
    if pairs:
        figures[f"all_{len(inputs)}"] = compared(f"all {len(inputs)} images", np.concatenate([e for e, _ in pairs]),
                                                  np.concatenate([a for _, a in pairs]), batch=min(chunks, len(inputs)))
    agree = sum(int((expected.argmax(1) == actual.argmax(1)).sum()) for expected, actual in pairs)
    worst = max(f["max_abs_diff"] for f in figures.values())
    report = {
        "tolerance": tolerance,
        "rtol": rtol,
        "max_abs_diff": worst,
        "max_logit": max(f["max_logit"] for f in figures.values()),
        "checks": figures,
        "top1_agreement": agree / max(1, len(inputs)),
        "n_images": int(len(inputs)),
        "input_shape": [d if isinstance(d, int) else str(d) for d in session.get_inputs()[0].shape],
        "passed": all(f["passed"] for f in figures.values()),
    }
    return report
