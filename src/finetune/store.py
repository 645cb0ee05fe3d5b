"""Decode once, stream many times: a split's images as one file-backed uint8 array.

In the spirit of FFCV: every image of a split file is decoded and preprocessed once into an
``.npy`` file (uint8, ``(N, S, S, 3)``, the split file's row order), beside a small JSON record
written last. ``S`` is the resize size, not the crop: each image keeps the square around its centre
crop (:func:`finetune.images.preprocess_stored`), so evaluation reads the centre crop and training
with ``augment`` draws random resized crops from the whole square, without decoding again. Jobs then read batches from the file instead of decoding again, with memory bounded
by the batch (rows are read with ``pread`` into a fresh buffer, not through a memory map whose
pages would count towards the job's resident memory as the epoch touches them).

A file written by a killed job never takes the final name (it is written beside it and renamed
when complete), and :func:`open_decoded` checks the array against its record, so a truncated or
foreign file is never read as data: a damaged pair (unreadable record or header, wrong shape or
size; the two in one folder, as the decode job writes them) is removed with a message naming it and
the command that decodes it again; a missing record removes nothing; a pair
that is intact but belongs to another split file or size is refused and left alone. The check
covers structure and size, and the bytes of an array modified after its record was written (pixels
written over in place), against the sha256 the record holds: a pass over the whole file only then,
as the record is written after the array and Snakemake touches the two in that order.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

import numpy as np

from .data import SPLITS, read_split
from .errors import DataError
from .fileio import atomic_path, read_json, sha256_of, write_json
from .images import centre_offset, load_stored, stored_size
from .jobclock import lap

if TYPE_CHECKING:
    import pandas as pd

# /2: squares at the resize size (/1 held the crop); /3: torchvision's resize and centre-crop rounding, the filter recorded;
# /4: images turned upright by their EXIF orientation
STORE_FORMAT = "finetune-decoded/4"
CHUNK_IMAGES = 256  # images decoded between two writes: bounds the decode stage's memory


def split_ranges(split_names: list[str]) -> dict[str, list[int]]:
    """``{split: [start, stop]}`` of each split's rows; the split rule writes each split's rows together."""
    ranges: dict[str, list[int]] = {}
    for i, name in enumerate(split_names):
        if name in ranges and ranges[name][1] != i:
            raise DataError(f"the rows of split {name!r} are not contiguous in the split file")
        ranges.setdefault(name, [i, i])[1] = i + 1
    return ranges


def _chosen_rows(split_csv: Path, splits) -> tuple["pd.DataFrame", list[str]]:
    frame, classes = read_split(split_csv)
    return frame[frame["split"].isin(list(splits))].reset_index(drop=True), classes


# What the jobs after decode do with each split's images (named when a split file has none).
SPLIT_USES = {"val": "training chooses its best epoch on them", "test": "evaluate and export_onnx score the model on them"}


def missing_split_message(split_csv: Path, split: str) -> str:
    """Why a split file without ``split`` images cannot go on, and the key that decides it: the workflow's
    ``resources/splits/source.csv`` is drawn by ``pretrain.dataset``, any other split file by ``dataset``."""
    prefix = "pretrain.dataset" if split_csv.stem == "source" else "dataset"
    if split == "train":
        return f"{split_csv} has no train images: check {prefix}.classes and {prefix}.path"
    return (f"{split_csv} has no {split} images, and the jobs after decode need them ({SPLIT_USES[split]}): "
            f"{prefix}.{split}_fraction is 0 and the dataset gives no {split} split of its own (a {split}/ folder beside "
            f"train/ in an ImageFolder, or a CSV manifest's split column); set {prefix}.{split}_fraction above 0 (e.g. 0.1)")


def _warn_if_short_of_space(target: Path, needed: int, log: Callable[[str], None]) -> None:
    """Say at the start, not after hours of decoding, when the images will not fit (a compressing file
    system may still hold them, so this only warns; a write that fails names the file and removes it)."""
    import shutil

    folder = next((p for p in (target.parent, *target.parents) if p.exists()), None)
    if folder is None:
        return
    free = shutil.disk_usage(folder).free
    if free < needed:
        log(f"warning: the decoded images need {_megabytes(needed)} and {folder} has {_megabytes(free)} free")


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _load_checked(ref: str, split_csv: Path, resize_size: int, crop_size: int, interpolation: str):
    """:func:`load_stored`; an image the split found readable and that is not now says what to do."""
    try:
        return load_stored(ref, resize_size, crop_size, interpolation)
    except DataError as exc:
        key = "pretrain.dataset" if Path(split_csv).name == "source.csv" else "dataset"  # the workflow's split files
        raise DataError(
            f"{exc}; the split ({split_csv}) read it, so it changed since (an image overwritten in place is not "
            f"seen by default): run `snakemake --forcerun {split_csv}` to check the images again ({key}.on_bad_image "
            f"says what becomes of one that is bad), and set {key}.watch: files to have such edits seen") from exc


class ChannelStats:
    """Per-channel mean and sample standard deviation of uint8 RGB pixels scaled to 0..1, from exact integer sums
    (the same figures whatever the order or grouping of the pixels added)."""

    def __init__(self):
        self.count, self.total, self.squares = 0, [0, 0, 0], [0, 0, 0]

    def add_sums(self, count: int, total, squares) -> None:
        """``count`` pixels whose per-channel sums of values and of squared values are ``total`` and ``squares``."""
        self.count += int(count)
        self.total = [a + int(b) for a, b in zip(self.total, total)]
        self.squares = [a + int(b) for a, b in zip(self.squares, squares)]

    def add(self, pixels: np.ndarray) -> None:
        """uint8 pixels, channels last (H, W, 3)."""
        flat = pixels.reshape(-1, 3).astype(np.int64)
        self.add_sums(len(flat), flat.sum(axis=0), (flat * flat).sum(axis=0))

    def result(self) -> tuple[list[float], list[float]]:
        n = self.count
        if n == 0:
            raise DataError("no pixels to take the channels' mean and standard deviation of")
        mean = [t / (255 * n) for t in self.total]
        var = [(q * n - t * t) / (n * max(1, n - 1) * 255 * 255) for t, q in zip(self.total, self.squares)]
        return mean, [math.sqrt(max(0.0, v)) for v in var]


def write_decoded(split_csv: Path, resize_size: int, crop_size: int, out_npy: Path, out_info: Path,
                  splits=SPLITS, threads: int = 1, log: Callable[[str], None] = print,
                  interpolation: str = "bilinear", require_every_split: bool = False,
                  channel_stats_of: str | None = None) -> dict:
    """Decode the images of ``split_csv`` in ``splits`` once into ``out_npy`` (the split file's row
    order); its record goes to ``out_info``, written last. ``require_every_split`` (the decode job, whose
    ``splits`` are those the jobs after it read): a split of them without images is refused, naming the key.
    ``channel_stats_of`` (a split, ``train``): the record keeps the mean and standard deviation per channel of
    that split's centre crops (:class:`ChannelStats`), the normalisation a model trained from scratch on them uses."""
    frame, classes = _chosen_rows(split_csv, splits)
    if require_every_split:
        present = set(frame["split"])
        missing = [split for split in splits if split not in present]
        if missing:
            raise DataError(missing_split_message(Path(split_csv), missing[0]))
    refs = frame["path"].tolist()
    side = stored_size(resize_size, crop_size)
    stats = ChannelStats() if channel_stats_of else None
    counted = (frame["split"] == channel_stats_of).to_numpy() if stats else None
    if stats is not None and not counted.any():
        raise DataError(missing_split_message(Path(split_csv), channel_stats_of))
    offset = centre_offset(side, crop_size)
    shape = (len(refs), side, side, 3)
    _warn_if_short_of_space(Path(out_npy), len(refs) * side * side * 3, log)
    started = time.perf_counter()
    # Written in order with plain writes, not through a memory map: a full disk is then an OSError
    # (a clear message, the partial file removed), where a page of a map that cannot be stored
    # kills the process with SIGBUS.
    # The file's sha256, taken as it is written, goes into its record: a reader that finds the file modified after
    # its record checks its bytes against it, so that pixels written over in place are never used.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    digest = hashlib.sha256(header.getvalue())
    with atomic_path(out_npy) as tmp, open(tmp, "wb") as handle:
        handle.write(header.getvalue())
        pool = ThreadPoolExecutor(max_workers=max(1, threads))
        try:
            for start in range(0, len(refs), CHUNK_IMAGES):
                chunk = refs[start : start + CHUNK_IMAGES]
                images = pool.map(lambda r: _load_checked(r, split_csv, resize_size, crop_size, interpolation), chunk)
                for index, pixels in enumerate(images, start):
                    if stats is not None and counted[index]:
                        stats.add(pixels[offset : offset + crop_size, offset : offset + crop_size])
                    row = np.ascontiguousarray(pixels, dtype=np.uint8).data
                    digest.update(row)
                    handle.write(row)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        decoded_at = time.perf_counter()
        lap("decode")
    lap("flush to disk")  # atomic_path's fsync: what of the file the page cache still holds
    finished = time.perf_counter()
    seconds, decoding, flushing = finished - started, decoded_at - started, finished - decoded_at
    info = {
        "format": STORE_FORMAT, "split": str(split_csv), "split_sha256": sha256_of(split_csv),
        "shape": list(shape), "dtype": "uint8", "resize_size": resize_size, "crop_size": crop_size,
        "interpolation": interpolation, "orientation": "exif", "bytes": out_npy.stat().st_size,
        "sha256": digest.hexdigest(),
        "splits": split_ranges(frame["split"].tolist()), "classes": classes,
        "images_decoded": len(refs), "decode_seconds": round(seconds, 2),
    }
    if stats is not None:
        mean, std = stats.result()
        info["channel_stats"] = {"split": channel_stats_of, "crop_size": crop_size, "mean": mean, "std": std}
    write_json(out_info, info)
    log(f"decoded {len(refs)} images to {out_npy} ({shape[1]}x{shape[2]} px, {info['bytes'] / 1e6:.1f} MB) "
        f"in {seconds:.1f}s with {threads} thread(s): {decoding:.1f} s decoding, {flushing:.1f} s flushing it to disk")
    return info


@dataclass
class DecodedSplit:
    """A decoded split file: rows are read on demand from ``path`` (never all held in memory).

    The file stays open from the check in :func:`open_decoded` on, so rows are read from the very
    file that was checked, even if the name is removed or replaced meanwhile.
    """

    path: Path
    info: dict
    labels: np.ndarray | None  # int64 (N,) of the stored rows (None when opened without the split file)
    data_offset: int          # where the array's bytes start in the .npy file
    handle: BinaryIO          # the checked file, open for reading

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["shape"][1:])

    @property
    def row_bytes(self) -> int:
        h, w, c = self.row_shape
        return h * w * c

    def rows(self, split: str) -> np.ndarray:
        """Row numbers (in the stored array) of one split: ``train``, ``val`` or ``test``."""
        if split not in self.info["splits"]:
            raise DataError(f"{self.path} holds no {split!r} images (it holds {', '.join(self.info['splits']) or 'none'})")
        start, stop = self.info["splits"][split]
        return np.arange(start, stop)

    def read(self, rows: np.ndarray, crop: int | None = None) -> np.ndarray:
        """uint8 (len(rows), S, S, 3) of the given rows, in that order; with ``crop``, their centre crops."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.row_shape), dtype=np.uint8)
        flat, fd = out.reshape(len(rows), -1), self.handle.fileno()
        for i in np.argsort(rows, kind="stable"):  # ascending offsets: sequential where rows are
            got = os.preadv(fd, [memoryview(flat[i])], self.data_offset + int(rows[i]) * self.row_bytes)
            if got != self.row_bytes:
                raise DataError(f"{self.path}: row {rows[i]} is cut short (file truncated after it was checked)")
        if crop is None or crop == self.row_shape[0]:
            return out
        start = centre_offset(self.row_shape[0], crop)
        return np.ascontiguousarray(out[:, start : start + crop, start : start + crop])


class StoredImages:
    """One split of a decoded file as a read-on-demand uint8 tensor ``(N, 3, H, W)``: the centre
    crops of side ``crop``, or (``crop=None``) the stored squares, for random crops.

    Indexing (a slice, or a tensor/array of positions) reads just those rows from the file, so a
    training loop holds one batch of images at a time, whatever the dataset's size; ``to(device)``
    reads them all (for a small dataset that can sit on the GPU whole).
    """

    def __init__(self, store: DecodedSplit, rows: np.ndarray, crop: int | None = None):
        self.store, self.rows, self.crop = store, np.asarray(rows, dtype=np.int64), crop
        h, w, c = store.row_shape
        self.shape = (len(self.rows), c, crop or h, crop or w)

    def __len__(self) -> int:
        return len(self.rows)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, index):
        import torch

        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        pixels = self.store.read(self.rows[index], self.crop)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    def to(self, device, non_blocking: bool = False):
        return self[:].to(device, non_blocking=non_blocking)


def _array_header(handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(handle)
    if fortran:
        raise ValueError("Fortran-ordered array")
    return tuple(shape), dtype, handle.tell()


MODIFIED_AFTER_NS = 1_000_000_000  # an array modified this much after its record has its bytes checked


def _damage(handle: BinaryIO, npy: Path, info_json: Path) -> tuple[str | None, dict, int]:
    """(what is wrong with the pair, or None; its record; where the array's bytes start). A record of another
    version's format raises DataError: the pair is intact, not damaged."""
    try:
        info = read_json(info_json)
    except (OSError, ValueError) as exc:
        return f"its record {info_json} cannot be read ({exc})", {}, 0
    found = info.get("format") if isinstance(info, dict) else None
    if isinstance(found, str) and found.startswith("finetune-decoded/") and found != STORE_FORMAT:
        # intact, only written by another version: refused and left alone, not removed as damaged
        raise DataError(f"decoded images {npy} were written by another version of finetune (format {found}; this "
                        f"version reads {STORE_FORMAT}): decode them again with `snakemake --forcerun {npy}` "
                        "(nothing was removed)")
    if found != STORE_FORMAT:
        return f"{info_json} is not a record of decoded images ({STORE_FORMAT})", {}, 0
    try:
        shape, dtype, offset = _array_header(handle)
    except (OSError, ValueError) as exc:
        return f"it is not a readable .npy array ({exc})", info, 0
    size = os.fstat(handle.fileno()).st_size
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if list(shape) != info.get("shape") or dtype != np.uint8:
        return f"it holds {dtype} {list(shape)}, its record says uint8 {info.get('shape')}", info, offset
    if size != expected or size != info.get("bytes"):
        return f"it has {size} bytes, {expected} expected: it was cut short or changed after it was written", info, offset
    # The record is written after the array, and Snakemake touches the two in that order once the job is done: an
    # array modified later than its record (by more than a second) was written over in place (the same size), or
    # only touched or copied: its bytes tell which. (Records written before 2026-11-30 have no sha256.)
    if "sha256" in info and os.fstat(handle.fileno()).st_mtime_ns > os.stat(info_json).st_mtime_ns + MODIFIED_AFTER_NS:
        actual = _sha256_of_open(handle)
        if actual != info["sha256"]:
            return (f"its bytes changed after it was written: sha256 {actual}, its record says {info['sha256']}"), info, offset
    return None, info, offset


def _sha256_of_open(handle: BinaryIO, chunk: int = 1 << 23) -> str:
    """The sha256 of the whole file ``handle`` has open (read by offset: its position is left alone)."""
    digest, fd, at = hashlib.sha256(), handle.fileno(), 0
    while True:
        block = os.pread(fd, chunk, at)
        if not block:
            return digest.hexdigest()
        digest.update(block)
        at += len(block)


def _remove_damaged(npy: Path, info_json: Path, why: str) -> DataError:
    """Remove a damaged pair (so the workflow's next run decodes it again); the error to raise."""
    for path in (npy, info_json):
        path.unlink(missing_ok=True)
    return DataError(f"decoded images {npy} were damaged ({why}): removed {npy} and {info_json}; decode them "
                     f"again with `snakemake --forcerun {npy}` (a plain rerun can take the results made before the "
                     "damage as up to date and do nothing)")


def _reads_as_a_pair(handle: BinaryIO, npy: Path, info_json: Path) -> bool:
    """Whether two files are decoded images and their record, be they damaged: a .npy file and a .json file, one of
    which at least is what the decode job writes (the .npy begins as NumPy writes one, or the .json is the job's
    record). Files that are something else (the pair swapped, a run's model.pt given by mistake) are not removed as
    damaged."""
    if npy.suffix != ".npy" or info_json.suffix != ".json":
        return False
    if os.pread(handle.fileno(), 6, 0) == b"\x93NUMPY":
        return True
    try:
        record = read_json(info_json)
    except (OSError, ValueError):
        return False
    found = record.get("format") if isinstance(record, dict) else None
    return isinstance(found, str) and found.startswith("finetune-decoded/")


def open_decoded(npy: Path, info_json: Path, split_csv: Path | None = None,
                 sizes: tuple[int, int] | None = None, interpolation: str | None = None) -> DecodedSplit:
    """Open a decoded split after checking it is complete and belongs to ``split_csv`` / ``sizes``.

    A damaged pair is removed (:func:`_remove_damaged`); one made for another split file or size, or written by
    another version (:func:`_damage` says which), is refused.
    Nothing is removed where the record is missing or in another folder than the images: that is a wrong
    path more likely than damage, and the images may be intact.
    """
    npy, info_json = Path(npy), Path(info_json)
    try:
        handle = open(npy, "rb")
    except OSError as exc:
        raise DataError(f"cannot open decoded images {npy}: {exc}; run the workflow (its decode job writes them)") from exc
    try:
        if not info_json.exists():
            raise DataError(f"decoded images {npy}: their record {info_json} does not exist (the decode job writes "
                            "it beside them, as info.json); nothing was removed. If the record was lost, decode "
                            f"them again with `snakemake --forcerun {npy}`")
        why, info, offset = _damage(handle, npy, info_json)
        if why is not None and npy.resolve().parent != info_json.resolve().parent:
            raise DataError(f"decoded images {npy} do not match the record {info_json} ({why}), which is in another "
                            "folder: they are not a pair written by one decode job; nothing was removed")
        if why is not None and not _reads_as_a_pair(handle, npy, info_json):
            raise DataError(f"{npy} and {info_json} do not read as decoded images and their record ({why}): "
                            "--decoded takes the images (.npy) first, then their record (.json), as the decode job "
                            "writes them; nothing was removed (where they are the workflow's, decode them again with "
                            f"`snakemake --forcerun {npy}`)")
        if why is not None:
            raise _remove_damaged(npy, info_json, why)
        _check_belongs(npy, info, split_csv, sizes, interpolation)
        labels = None
        if split_csv is not None:
            frame, _ = _chosen_rows(split_csv, info["splits"])
            labels = frame["label"].to_numpy(dtype=np.int64)
            ranges = split_ranges(list(frame["split"]))
            if {name: list(rows) for name, rows in info["splits"].items()} != ranges:  # the labels would be others'
                raise _remove_damaged(npy, info_json, f"its record gives the splits' rows as {info['splits']}, the "
                                      f"split file's are {ranges}")
    except BaseException:
        handle.close()
        raise
    return DecodedSplit(npy, info, labels, offset, handle)


def _check_belongs(npy: Path, info: dict, split_csv: Path | None, sizes: tuple[int, int] | None,
                   interpolation: str | None) -> None:
    problems = []
    if split_csv is not None and sha256_of(split_csv) != info["split_sha256"]:
        problems.append(f"it was decoded from another version of {split_csv}")
    if sizes is not None and (info["resize_size"], info["crop_size"]) != tuple(sizes):
        problems.append(f"it holds images resized to {info['resize_size']} and cropped to {info['crop_size']}, "
                        f"{sizes[0]} and {sizes[1]} are needed")
    if interpolation is not None and info["interpolation"] != interpolation:
        problems.append(f"it holds images resized with {info['interpolation']} interpolation, {interpolation} is needed")
    if problems:
        raise DataError(f"decoded images {npy} cannot be used: {'; '.join(problems)}; decode them again for the "
                        f"split file and size its jobs need with `snakemake --forcerun {npy}` (a plain rerun takes the "
                        "file, newer than the split, as up to date)")


def prefetch(batches: Iterator, depth: int = 2) -> Iterator:
    """Run ``batches`` in a background thread, up to ``depth`` ahead of the consumer.

    Reading rows (``pread``) and pinning/copying release the GIL, so the next batch is read while
    the current one trains. An exception in the producer is raised in the consumer.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed to the consumer
            slots.put(exc)

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
