"""Use an exported model the way a deployment does: onnxruntime, Pillow and numpy only (never torch).

Everything needed to feed the model is read from the ONNX file's own metadata (written by
:func:`finetune.export.onnx_metadata`): class names, resize and crop sizes, mean/std, channel
order and layout. Pixels go through :mod:`finetune.images`, the functions training and
evaluation use too, so a deployed model sees exactly the pixels it was checked on.

Also here: dynamic INT8 quantization with onnxruntime and its report (size, speed, accuracy).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError, DataError, FinetuneError
from .fileio import atomic_path, read_text_table, write_json
from .images import (IMAGE_EXTENSIONS, MAX_PIXELS, ORIENTATIONS, RESAMPLING, extension_counts, files_below, load_image,
                     load_preprocessed, normalize, not_read_line, split_ref)
from .metrics import softmax

JSON_METADATA = ("classes", "input_size", "mean", "std")
REQUIRED_METADATA = ("classes", "resize_size", "crop_size", "mean", "std")


class ModelError(FinetuneError):
    """The ONNX file cannot be loaded or lacks the metadata needed to preprocess its inputs."""


def decode_metadata(raw: dict[str, str], origin: str = "model") -> dict:
    """ONNX ``metadata_props`` (strings) -> values; checks what preprocessing needs is there and supported."""
    meta = dict(raw)
    for key in JSON_METADATA:
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError as exc:
                raise ModelError(f"{origin}: metadata {key!r} is not valid JSON ({meta[key]!r})") from exc
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise ModelError(
            f"{origin} lacks the metadata {', '.join(missing)} needed to preprocess images: "
            "export it with the workflow's export_onnx rule"
        )
    for key in ("resize_size", "crop_size"):
        try:
            meta[key] = int(meta[key])
        except ValueError:
            raise ModelError(f"{origin}: metadata {key}={meta[key]!r} is not a whole number of pixels") from None
    for key, supported in (("channel_order", ("RGB",)), ("layout", ("NCHW",)), ("interpolation", tuple(RESAMPLING)),
                           ("orientation", ORIENTATIONS)):
        if key in meta and meta[key] not in supported:
            raise ModelError(f"{origin}: metadata {key}={meta[key]!r} is not supported (only {' or '.join(supported)})")
    # Models exported before these were recorded: resized bilinearly, EXIF orientation not applied.
    meta.setdefault("interpolation", "bilinear")
    meta.setdefault("orientation", "none")
    if len(meta["mean"]) != 3 or len(meta["std"]) != 3:
        raise ModelError(f"{origin}: mean and std must have 3 values (RGB), not {meta['mean']} / {meta['std']}")
    # a std of 0 divided every pixel by zero: probabilities of NaN written, "classified 8 of 8"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (*meta["mean"], *meta["std"])) or min(meta["std"]) <= 0:
        raise ModelError(f"{origin}: metadata mean {meta['mean']} and std {meta['std']} must be finite numbers, the std "
                         "above 0: export it again with the workflow's export_onnx rule")
    if not 1 <= meta["crop_size"] <= meta["resize_size"]:
        raise ModelError(f"{origin}: metadata crop_size {meta['crop_size']} must be at least 1 and at most its "
                         f"resize_size {meta['resize_size']}")
    return meta


def new_session(path: str | Path, threads: int | None = None):
    """A fresh onnxruntime CPU session of ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise ModelError(f"ONNX model {path} {what} (relative to the working directory {Path.cwd()})")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        if _is_torch_checkpoint(path):
            raise ModelError(f"cannot load ONNX model {path}: it is a PyTorch checkpoint (model.pt, a .pth), not an ONNX "
                             "model; give the run's model.onnx (rule export_onnx writes it beside model.pt)") from exc
        raise ModelError(f"cannot load ONNX model {path}: {exc}. Cut short or damaged? One the workflow wrote is written "
                         f"again by `snakemake --forcerun {path}`") from exc


def _is_torch_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` begins as torch.save's files do: a zip archive holding ``data.pkl``, or a bare pickle."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return (head.startswith(b"PK\x03\x04") and b"data.pkl" in head) or head[:1] == b"\x80"


@dataclass
class OnnxClassifier:
    """An exported classifier: its onnxruntime session and the preprocessing from its metadata."""

    path: Path
    session: object
    metadata: dict
    input_name: str = field(init=False)

    def __post_init__(self):
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> "OnnxClassifier":
        session = new_session(path, threads)
        metadata = decode_metadata(session.get_modelmeta().custom_metadata_map, origin=str(path))
        scores = session.get_outputs()[0].shape[-1]
        if isinstance(scores, int) and "classes" in metadata and len(metadata["classes"]) != scores:
            # a label for each score, or the labels would be those of other scores (or an IndexError)
            raise ModelError(f"{path}: its metadata 'classes' names {len(metadata['classes'])} classes, but the model "
                             f"outputs {scores} scores: export it again with the workflow's export_onnx rule")
        height, width = (session.get_inputs()[0].shape[-2:] + [None, None])[:2]
        if any(isinstance(side, int) and side != metadata["crop_size"] for side in (height, width)):
            # onnxruntime's INVALID_ARGUMENT traceback at the first batch, naming neither the file nor the key
            raise ModelError(f"{path}: its metadata crop_size {metadata['crop_size']} is not the model's input size "
                             f"{height}x{width}: export it again with the workflow's export_onnx rule")
        return cls(Path(path), session, metadata)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    def pixels(self, ref: str) -> np.ndarray:
        """One image reference -> uint8 (crop, crop, 3), as the model's metadata says."""
        meta = self.metadata
        return load_preprocessed(ref, meta["resize_size"], meta["crop_size"], meta["interpolation"], meta["orientation"])

    def decode(self, refs: list[str], threads: int = 1) -> tuple[np.ndarray, dict[int, str]]:
        """Decode ``refs`` in parallel: uint8 (n_ok, crop, crop, 3) of those that decode, and
        ``{index in refs: reason}`` for those that do not."""
        def one(ref: str):
            try:
                return self.pixels(ref), None
            except DataError as exc:
                return None, str(exc)
            except (OSError, ValueError) as exc:  # e.g. a degenerate image PIL opens but cannot resize
                return None, f"cannot decode image {ref}: {exc}"

        crop = self.metadata["crop_size"]
        arrays, errors = [], {}
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for i, (array, error) in enumerate(pool.map(one, refs)):
                if error is None:
                    arrays.append(array)
                else:
                    errors[i] = error
        stacked = np.stack(arrays) if arrays else np.empty((0, crop, crop, 3), dtype=np.uint8)
        return stacked, errors

    def inputs(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> the float32 NCHW tensor the model takes."""
        return normalize(pixels, self.metadata["mean"], self.metadata["std"])

    @property
    def batch_dependent(self) -> bool:
        """Dynamic quantization (model.int8.onnx) quantizes each activation with a scale taken from the whole input
        tensor, so an image's logits depend on the other images of its batch (2 of 200 test images changed class
        between batch 1 and 64): such a model runs one image at a time (:meth:`logits`)."""
        return str(self.metadata.get("quantization", "")).startswith("dynamic")

    def logits(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Run the model over uint8 pixels in batches (one image at a time for a :attr:`batch_dependent` model, so
        an image's result never depends on what else is classified with it): float32 (N, classes)."""
        if self.batch_dependent:
            batch_size = 1
        outputs = []
        for start in range(0, len(pixels), batch_size):
            x = self.inputs(pixels[start : start + batch_size])
            outputs.append(self.session.run(None, {self.input_name: x})[0])
        if not outputs:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(outputs)


# --------------------------------------------------------------------------- predict

def list_images(source: str | Path) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """What to classify: ``(reference as the user wrote it, path to open)`` pairs, and the files of a
    folder left out for their format, counted by extension (:func:`finetune.images.extension_counts`).

    ``source`` is a folder (every image file under it, recursively, by extension, sorted; hidden files
    and folders left out), one image file (by its extension), or a CSV file with a ``path`` column (relative
    paths are relative to the CSV's folder).
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
        return [(str(source), str(source))], {}
    if source.is_dir():
        found = files_below(source)
        files = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise DataError(f"no image files in {source} (extensions read: {', '.join(IMAGE_EXTENSIONS)})")
        return [(str(p), str(p)) for p in files], extension_counts(p for p in found if p.suffix.lower() not in IMAGE_EXTENSIONS)
    if source.is_file():
        try:
            import pandas as pd
        except ImportError:
            raise DataError(f"{source}: a list of images (a CSV file with a `path` column) is read with pandas, which "
                            "is not installed: `pip install pandas`, or name a folder of images") from None

        try:
            frame = read_text_table(source)  # `note, path` too
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot parse image list {source}: {exc}; a file that is not an image "
                            f"({', '.join(IMAGE_EXTENSIONS)}) is read as a CSV list of images") from exc
        if "path" not in frame.columns:
            raise DataError(f"image list {source} has no `path` column (columns: {', '.join(frame.columns) or 'none'}): a "
                            f"file that is not an image ({', '.join(IMAGE_EXTENSIONS)}) is read as a CSV list of images")
        if "path.1" in frame.columns:  # pandas' name for a second `path` column: the first alone was read
            raise DataError(f"image list {source} has more than one `path` column: which one names the images is not "
                            "known; keep one")
        refs = [p.strip() for p in frame["path"] if p.strip()]
        if not refs:
            raise DataError(f"image list {source} names no images")
        return [(ref, ref if os.path.isabs(ref) else str(source.parent / ref)) for ref in refs], {}
    raise DataError(f"images to classify not found: {source} is not a folder, an image file or a CSV list of images")


def check_one_opens(pairs: list[tuple[str, str]], source: str | Path) -> None:
    """Raise DataError where none of ``pairs`` (:func:`list_images`) decodes as an image (a JPEG at a reduced scale; no
    more pixels than the job decodes, :data:`finetune.images.MAX_PIXELS`, checked before any is read), naming the first
    one's problem. The workflow checks it at start: the predict job would fail on them, and a failed job's outputs, the
    earlier predictions, are removed. The first image that decodes ends the check. Its pixels are not converted as the
    job converts them (a large 16-bit image: gigabytes, at every start), and an IDX reference (``file.gz#3``) is read
    as the job reads it."""
    from PIL import Image

    first = None
    for ref, path in pairs:
        try:
            if split_ref(path)[1] is not None or not os.path.isfile(path):  # an IDX image; a pipe would block an open
                load_image(path, min_side=64)
                return
            with Image.open(path) as image:
                image.draft("RGB", (64, 64))  # a JPEG decoded at a reduced scale: all its data read, cheaply
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"{width}x{height} pixels ({width * height:,}), above the {MAX_PIXELS:,} decoded here "
                                    "(a decompression bomb, or a picture too large): make it smaller")
                image.load()  # (its EXIF block is not read: one that does not read leaves the image as stored)
                return
        except DataError as exc:
            first = first or f"{ref}: {str(exc).removeprefix(f'cannot decode image {path}: ')}"
        except Exception as exc:  # any reason an image does not decode is one to report here
            first = first or f"{ref}: {exc}"
    raise DataError(f"none of the {len(pairs)} image file(s) of {source} can be read as an image (the first: {first}); "
                    "the earlier predictions are kept")


def prediction_columns(top_k: int) -> list[str]:
    columns = ["path", "predicted", "probability"]
    for i in range(1, top_k + 1):
        columns += [f"top{i}_class", f"top{i}_probability"]
    return columns + ["error"]


def predict_images(model_path: str | Path, source: str | Path, out_csv: str | Path, top_k: int = 3,
                   batch_size: int = 64, threads: int = 1, log: Callable[[str], None] | None = None) -> dict:
    """Classify every image of ``source`` with the ONNX model; write one CSV row per image.

    An image that cannot be read gets a row with an empty prediction and the reason in ``error``,
    and a line on ``log`` (stderr by default); the others are classified regardless.
    Returns counts: ``{"images", "classified", "failed"}``.
    """
    import csv

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    model = OnnxClassifier.load(model_path, threads)
    classes = model.classes
    k = max(1, min(top_k, len(classes)))
    if top_k > k:  # said, not taken silently (the workflow says it at start too)
        log(f"note: top-k {top_k}: the model has {len(classes)} classes, so each row lists all {k}")
    listed, ignored = list_images(source)
    if ignored:
        log(f"warning: {not_read_line(ignored)}")
    if model.batch_dependent and batch_size > 1:
        log(f"note: {model_path} is quantized dynamically (int8), so an image's logits would depend on the other "
            f"images of its batch: it runs one image at a time; batch size {batch_size} is how many are decoded at once")
    columns = prediction_columns(k)
    rows, failed, escaped = [], 0, 0
    for start in range(0, len(listed), batch_size):
        chunk = listed[start : start + batch_size]
        pixels, errors = model.decode([opened for _, opened in chunk], threads)
        logits = model.logits(pixels, batch_size).astype(np.float64)
        probs = softmax(logits)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # by logit: probabilities far below the top tie at 0
        decoded = iter(range(len(pixels)))
        for i, (ref, _) in enumerate(chunk):
            row = dict.fromkeys(columns, "")
            row["path"] = writable_name(ref)
            escaped += row["path"] != ref
            if i in errors:
                failed += 1
                row["error"] = writable_name(errors[i])  # names the file, whose name may not be UTF-8
                log(f"warning: unreadable image {ref}: {errors[i]}")
            else:
                j = next(decoded)
                best = order[j]
                row["predicted"], row["probability"] = classes[best[0]], f"{probs[j, best[0]]:.6f}"
                for rank, c in enumerate(best, start=1):
                    row[f"top{rank}_class"], row[f"top{rank}_probability"] = classes[c], f"{probs[j, c]:.6f}"
            rows.append(row)
    if rows and failed == len(rows):  # an earlier file of good predictions stays as it was
        raise DataError(f"none of the {len(rows)} image(s) could be read: the warning lines above say why, one per "
                        f"image; {out_csv} was not written")
    if escaped:
        log(f"warning: {escaped} file name(s) not UTF-8 (an old archive's encoding): the predictions name them with "
            "\\x escapes for the bytes that are not (rename them: `convmv -f latin1 -t utf8 -r --notest <folder>`)")
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return {"images": len(rows), "classified": len(rows) - failed, "failed": failed}


def writable_name(path: str) -> str:
    """``path`` as UTF-8 text can hold it: a file name whose bytes are not UTF-8 (Python keeps them as surrogates) with
    those bytes as ``\\xff`` escapes. Writing it as it was failed the whole job after every image was classified, and
    Snakemake removed the earlier predictions."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- accuracy and speed

def throughput(session, x: np.ndarray, batch: int, min_seconds: float = 1.0, min_repeats: int = 3,
               max_repeats: int = 200) -> float:
    """Images per second of ``session`` at ``batch`` (median over repeats, after one warm-up run)."""
    name = session.get_inputs()[0].name
    if len(x) < batch:
        x = np.concatenate([x] * (batch // max(1, len(x)) + 1))
    x = np.ascontiguousarray(x[:batch])
    session.run(None, {name: x})
    rates, spent = [], 0.0
    while len(rates) < min_repeats or (spent < min_seconds and len(rates) < max_repeats):
        started = time.perf_counter()
        session.run(None, {name: x})
        elapsed = time.perf_counter() - started
        spent += elapsed
        rates.append(batch / max(elapsed, 1e-9))
    return float(np.median(rates))


# --------------------------------------------------------------------------- INT8 quantization

def quantize_stage(onnx_path: str | Path, split_csv: str | Path, out_onnx: str | Path, out_report: str | Path,
                   threads: int = 1, batches: tuple[int, ...] = (1, 64), min_seconds: float = 1.0,
                   log: Callable[[str], None] = print) -> dict:
    """Dynamic INT8 quantization (weights int8 ahead of time, activations quantized on the fly) with
    onnxruntime, and a report of what it buys and costs: file size, img/s at each batch size and
    test accuracy, int8 against fp32 on the same images."""
    import onnxruntime

    onnx_path, out_onnx = Path(onnx_path), Path(out_onnx)
    fp32 = OnnxClassifier.load(onnx_path, threads)  # a damaged model is named here, not in the quantizer's traceback
    if fp32.batch_dependent:  # its report would compare int8 with int8, as if with fp32
        raise ModelError(f"{onnx_path} is quantized already (its metadata: quantization "
                         f"{fp32.metadata['quantization']}): give the fp32 model.onnx export_onnx wrote")
    quantize_seconds = quantize_int8(onnx_path, out_onnx)
    int8 = OnnxClassifier.load(out_onnx, threads)
    accuracy, pixels = _compare_accuracy(fp32, int8, split_csv, threads, keep=max(batches))
    size32, size8 = onnx_path.stat().st_size, out_onnx.stat().st_size
    report = {
        "method": "onnxruntime.quantization.quantize_dynamic, weight_type QInt8",
        "fp32_model": str(onnx_path), "int8_model": str(out_onnx),
        "size_bytes": {"fp32": size32, "int8": size8, "ratio": round(size8 / size32, 4)},
        "speed": _compare_speed(fp32, int8, fp32.inputs(pixels[: max(batches)]), batches, min_seconds, log),
        "threads": threads,
        "test_accuracy": accuracy,
        "quantize_seconds": round(quantize_seconds, 2),
        "onnxruntime": onnxruntime.__version__,
        "note": ("img/s are wall-clock medians on this machine's CPU with the threads above; dynamic "
                 "quantization turns Conv into ConvInteger, which onnxruntime's CPU kernels may run slower "
                 "than fp32 Conv: compare the figures before deploying the int8 model"),
    }
    write_json(out_report, report)
    slower = slower_everywhere_warning(report["speed"], size8 / size32)
    if slower:
        log(f"warning: {slower}")
    return report


def slower_everywhere_warning(speed: dict, size_ratio: float) -> str | None:
    """Where the int8 model was slower than fp32 at every batch size measured (``speed``: the report's, each batch's
    ``speedup`` int8 over fp32), what that means for deploying it; None where it was faster at one of them at least."""
    speedups = [figures["speedup"] for figures in speed.values()]
    if not speedups or max(speedups) >= 1:
        return None
    return (f"the int8 model is slower than fp32 on this CPU at every batch size measured "
            f"({min(speedups):.2f}-{max(speedups):.2f}x the speed; onnxruntime runs its ConvInteger kernels "
            f"slower than fp32 Conv here): it saves size ({size_ratio:.2f} of the file), not time; deploy "
            "model.onnx (predict.model: fp32) unless the size matters, or measure on the machine that will run it")


def quantize_int8(onnx_path: Path, out_onnx: Path) -> float:
    """``onnx_path`` quantized (dynamic int8 weights) into ``out_onnx`` with its metadata kept; the seconds it took."""
    import logging

    try:
        import onnx  # onnxruntime's quantization reads and writes the model with it
    except ImportError as exc:
        raise ConfigError(f"quantizing needs the onnx package besides onnxruntime, which cannot be imported ({exc}): "
                          "`pip install onnx`") from None
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    with atomic_path(out_onnx) as tmp:
        # onnxruntime logs advice to run its shape-inference pre-pass on every call (as a root-logger
        # warning); the exported graph is already shape-inferred, so keep it out of the log.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        # Keep the metadata a consumer needs (quantize_dynamic copies it in some versions, not in others).
        source_meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        proto = onnx.load(str(tmp))
        present = {p.key for p in proto.metadata_props}
        for key, value in source_meta.items():
            if key not in present:
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
        entry = proto.metadata_props.add()
        entry.key, entry.value = "quantization", (f"dynamic int8 weights (onnxruntime {onnxruntime.__version__}): "
                                                  "run one image at a time, as an image's logits depend on the other "
                                                  "images of its batch")
        onnx.save(proto, str(tmp))
    return time.perf_counter() - started


# Test images decoded and scored at a time by quantize_onnx: its memory does not grow with the test set (all of
# it at once took 330 KB an image at 224 px, 3.3 GB for 10,000 test images).
QUANTIZE_CHUNK = 256


def _compare_accuracy(fp32: "OnnxClassifier", int8: "OnnxClassifier", split_csv, threads: int,
                      keep: int) -> tuple[dict, np.ndarray]:
    """Test accuracy of both models on the split file's test images, decoded as ``fp32`` expects them a chunk at a
    time (a DataError if any does not decode), and the first ``keep`` images' pixels (for the speed figures)."""
    from .data import read_split

    frame, classes = read_split(split_csv)
    if classes != fp32.classes:
        raise ConfigError(f"{fp32.path} classifies {fp32.classes}, {split_csv} has classes {classes}")
    rows = frame[frame["split"] == "test"]
    if rows.empty:
        raise DataError(f"{split_csv} has no test images: the int8 model cannot be scored against the fp32 one")
    refs, labels = rows["path"].tolist(), rows["label"].to_numpy()
    correct32 = correct8 = agree = 0
    kept = []
    for start in range(0, len(refs), QUANTIZE_CHUNK):
        pixels, errors = fp32.decode(refs[start : start + QUANTIZE_CHUNK], threads)
        if errors:
            raise DataError(f"{len(errors)} test image(s) of {split_csv} do not decode, e.g. {next(iter(errors.values()))}")
        predicted32, predicted8 = fp32.logits(pixels).argmax(1), int8.logits(pixels).argmax(1)
        chunk_labels = labels[start : start + QUANTIZE_CHUNK]
        correct32 += int((predicted32 == chunk_labels).sum())
        correct8 += int((predicted8 == chunk_labels).sum())
        agree += int((predicted32 == predicted8).sum())
        if start < keep:  # the chunks before this one were whole: ``start`` images kept so far
            kept.append(pixels[: keep - start].copy())
    n = len(refs)
    accuracy = {"n_images": n, "fp32": correct32 / n, "int8": correct8 / n, "change": (correct8 - correct32) / n,
                "top1_agreement": agree / n}
    return accuracy, np.concatenate(kept)


def _compare_speed(fp32: "OnnxClassifier", int8: "OnnxClassifier", x, batches, min_seconds: float, log) -> dict:
    speed = {}
    for batch in batches:
        rate32 = throughput(fp32.session, x, batch, min_seconds=min_seconds)
        rate8 = throughput(int8.session, x, batch, min_seconds=min_seconds)
        speed[f"batch_{batch}"] = {"fp32_img_per_s": round(rate32, 1), "int8_img_per_s": round(rate8, 1),
                                   "speedup": round(rate8 / rate32, 3)}
        log(f"batch {batch}: fp32 {rate32:.1f} img/s, int8 {rate8:.1f} img/s")
    return speed
