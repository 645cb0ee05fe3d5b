"""Decoding and preprocessing of images, with PIL and numpy only (no torch).

The same functions serve training, evaluation and the torch-free ``predict`` script, so the
pixels a deployed ONNX model sees are exactly the pixels it was trained and checked on.

An image reference is either a file path or ``<idx-images-file>#<index>`` for one image inside an
IDX file (the format Fashion-MNIST ships in).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# Images above this many pixels are refused (cannot decode: named, with their size) before any pixel is
# decoded (:func:`_decode`): a possible decompression bomb (a 400 KB PNG of 20000x20000 pixels took 3 GB
# in the split job), or a scan too large to train on. Photographs from cameras (up to ~100 megapixels)
# stay below it. PIL's own check, which this replaces, warned above it without naming the file and
# refused only at twice it. (Every image of the project is opened by _decode.)
MAX_PIXELS = 300_000_000
Image.MAX_IMAGE_PIXELS = None

# The resize filters torchvision's classification weights use (their transforms' ``interpolation``),
# applied with PIL as torchvision's ``Resize`` does on PIL images (antialiased).
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resampling(interpolation: str) -> Image.Resampling:
    try:
        return RESAMPLING[interpolation]
    except (KeyError, TypeError):
        raise ConfigError(f"interpolation {interpolation!r} is not supported: use {' or '.join(RESAMPLING)}") from None


# The names of an ImageFolder's split folders (<root>/<split>/<class>/<image>), any letter case: the split each is.
SPLIT_NAMES = {"": "", "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def walk_folders(root, prune=None):
    """``(folder, file names)`` of ``root`` and every folder below it (folders in sorted order, names as
    listed: :func:`files_below` sorts the paths, the watched state needs none), as torchvision's ImageFolder
    walks them: folders reached through symlinks are followed (a symlink farm is a common
    way to make a subset), each real folder once (a symlink loop ends there); hidden folders and files
    (``.ipynb_checkpoints``, ``.DS_Store``) are left out. ``prune(folder)`` true: the folder is yielded with no
    names and not walked into, nor counted as seen (a folder linked from elsewhere is walked there)."""
    for folder, names, _ in walk_entries(root, prune):
        yield folder, names


def walk_entries(root, prune=None, _seen=None):
    """:func:`walk_folders` with a third item: the names that are symbolic links, from the same listing (one
    ``scandir`` a folder, no ``stat`` a file). A folder that cannot be listed is left out, as ``os.walk`` does."""
    seen = set() if _seen is None else _seen
    folder = os.fspath(root)
    if prune is not None and prune(folder):
        yield folder, [], []
        return
    real = os.path.realpath(folder)
    if real in seen:
        return
    try:
        with os.scandir(folder) as listing:
            entries = [entry for entry in listing if not entry.name.startswith(".")]
    except OSError:
        return
    seen.add(real)
    subfolders, names, links = [], [], []
    for entry in entries:
        try:
            is_folder = entry.is_dir()  # through a symlink too
        except OSError:
            is_folder = False
        if is_folder:
            subfolders.append(entry.name)
        else:
            names.append(entry.name)
            if entry.is_symlink():
                links.append(entry.name)
    yield folder, names, links
    for name in sorted(subfolders):
        yield from walk_entries(os.path.join(folder, name), prune, seen)


def files_below(root) -> list[Path]:
    """Every file below ``root`` (:func:`walk_folders`), sorted by path."""
    return sorted(Path(folder) / name for folder, names in walk_folders(root) for name in names)


def extension_counts(paths) -> dict[str, int]:
    """How many of ``paths`` have each (lower-cased) extension, sorted: what a listing left out, said in a line."""
    counts: dict[str, int] = {}
    for p in paths:
        suffix = Path(p).suffix.lower() or "(none)"
        counts[suffix] = counts.get(suffix, 0) + 1
    return dict(sorted(counts.items()))


def not_read_line(counts: dict[str, int]) -> str:
    """``counts`` (:func:`extension_counts`) of files left out, as the logs say it."""
    listed = ", ".join(f"{n} {ext}" for ext, n in counts.items())
    return f"ignored files that are not images of a format read here ({listed}); the formats read: {', '.join(IMAGE_EXTENSIONS)}"


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


_IDX_LOCK = threading.Lock()


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): uint8 images (N, H, W) or labels (N,); read once per process,
    however many threads ask at once (each would unpack its own 47 MB copy of Fashion-MNIST's training images:
    16 decode threads held 1.2 GB)."""
    with _IDX_LOCK:
        return _read_idx_once(path)


@lru_cache(maxsize=8)
def _read_idx_once(path: str) -> np.ndarray:
    file = Path(path)
    try:
        with _open_maybe_gzip(file) as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {file}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"{file} is not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{file} is not a uint8 IDX file of labels or images (header {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{file} is truncated: header promises {expected} values, file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


IDX_SUFFIXES = ("-ubyte", "-ubyte.gz")  # Fashion-MNIST's IDX files (train-images-idx3-ubyte.gz): no stat per image


def split_ref(ref: str) -> tuple[str, int | None]:
    """``'file.gz#12'`` -> ``('file.gz', 12)``; a plain path -> ``(path, None)``. A file whose own name ends in
    ``#<digits>`` (``scan#0``, in a CSV manifest or a predict list) is that file, not an image inside ``scan``."""
    head, sep, tail = ref.rpartition("#")
    if sep and tail.isdigit() and head and (head.endswith(IDX_SUFFIXES) or not os.path.lexists(ref)):
        return head, int(tail)
    return ref, None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB consistently: a pixel value always maps to the same 8-bit value.

    - 16-bit (and 32-bit integer) grayscale: the 16-bit range 0..65535 maps onto 0..255 (value / 257,
      rounded), as image viewers show it; never a per-image stretch, so a dark image stays dark.
      (PIL itself opens 16-bit RGB files as 8-bit RGB.)
    - float grayscale: 0.0..1.0 maps onto 0..255, values outside are clipped.
    - transparency (RGBA, LA, PA, palette with a transparent colour, a colour key): composited over black.
      A 16-bit RGB PNG's colour key matches on the 8 high bits PIL keeps of each value (the 16-bit values
      are gone), so a colour within 1/256 of the key is transparent too.
    - everything else (L, 1, P, CMYK, YCbCr, ...): PIL's own conversion to RGB.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        gray = Image.fromarray(np.rint(np.clip(array, 0, 65535) / 257.0).astype(np.uint8), mode="L")
        key = img.info.get("transparency")  # a PNG's colour key (tRNS), in the file's own 16-bit values
        if isinstance(key, int):
            img = Image.merge("LA", (gray, Image.fromarray(np.where(array == key, 0, 255).astype(np.uint8), mode="L")))
        else:
            img = gray
    elif img.mode == "F":
        array = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        img = Image.fromarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        # Composite over black: a transparent pixel becomes black and a half-transparent one darker (alpha 128:
        # half its colour), where a plain convert("RGB") would drop the alpha and keep the colour (README,
        # "Predict on new images", says so for deployments that decode themselves).
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    # convert makes a copy even to the same mode: a 48-megapixel PNG held twice over (~190 MB more per data thread)
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``, normalise with mean/std."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # the resize filter: a key of RESAMPLING

    def __post_init__(self):
        resampling(self.interpolation)

    @classmethod
    def raw(cls, size: int) -> "Preprocessing":
        """Resize and crop to ``size``, no normalisation: the pixels before any mean/std is known."""
        return cls(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @classmethod
    def from_dict(cls, d: dict, image_size: int | None = None) -> "Preprocessing":
        """From a manifest's ``preprocessing``; ``image_size`` overrides the crop, scaling the resize with it.

        A record without ``interpolation`` (written before it was kept) means bilinear, as then.
        """
        resize, crop = int(d["resize_size"]), int(d["crop_size"])
        if image_size and image_size != crop:
            resize, crop = int(round(image_size * resize / crop)), int(image_size)
        return cls(resize, crop, tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                   str(d.get("interpolation", "bilinear")))

    def to_dict(self) -> dict:
        return {"resize_size": self.resize_size, "crop_size": self.crop_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation, "channels": "RGB"}


class _Undecodable(Exception):
    """Why a file is no image, without its path (the caller names the file)."""


def _draft_for(img: Image.Image, min_side: int | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT-domain scaling) where its shorter side stays >= ``min_side``.

    A 12-megapixel photo resized to 256 px decoded in 28-30 ms this way instead of 141-153 ms (one
    core); PIL picks the smallest scale whose size is still at least the one asked for.
    """
    if not min_side or img.format not in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG, its first picture
        return
    width, height = img.size
    scale = min_side / min(width, height)
    if scale <= 0.5:  # only where a reduced decode is possible at all
        img.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


# How a decoded file is turned upright: "exif" applies the EXIF Orientation tag (a phone photo taken
# upright but stored sideways shows upright, as every image viewer shows it); "none" keeps the stored
# pixels (what models exported before the tag was applied saw; torchvision's ImageFolder does the same).
ORIENTATIONS = ("exif", "none")


# How a photo's EXIF Orientation tag (2-8) says its stored pixels are turned upright (PIL's ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def turn_upright(img: Image.Image) -> Image.Image:
    """``img`` turned by its EXIF Orientation tag, as every image viewer shows it (a new image; ``img`` itself where the
    tag is 1 or absent). Where the EXIF block does not read (damaged: a WebP's TIFF header cut), ``img`` as stored, as
    a viewer that cannot read the block shows it (the orientation is not known; torchvision's ImageFolder never reads
    it): the image decodes. The same pixels as ImageOps.exif_transpose, which also writes the block again without the
    tag, and failed there on a block it read (a rational of 0/0) after the pixels were turned."""
    try:
        turn = _UPRIGHT.get(img.getexif().get(0x0112, 1))  # a tag of another type read as 6.0 turns too, as there
    except Exception:  # noqa: BLE001 - any reason the block does not read: SyntaxError, struct.error, ValueError, ...
        return img
    return img.transpose(turn) if turn is not None else img


def _decode(path: str, min_side: int | None = None, orientation: str = "exif", data: bytes | None = None) -> Image.Image:
    """``path`` decoded (from ``data``, its bytes, where the caller has read them already)."""
    if data is None and os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        # opening a named pipe waits for a writer, forever (and a stop signal waits with it)
        raise _Undecodable("not a regular file (a named pipe, socket or device)")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            width, height = img.size
            _draft_for(img, min_side)
            if img.size[0] * img.size[1] > MAX_PIXELS:  # before any pixel is decoded (a JPEG: at its draft scale)
                raise _Undecodable(f"{width}x{height} pixels ({width * height:,}), above the {MAX_PIXELS:,} "
                                   f"decoded here (a decompression bomb, or a "
                                   "picture too large to train on): make it smaller")
            sixteen_bit_rgb = img.format == "PNG" and img.mode == "RGB" and bool(img.tile) and \
                str(img.tile[0][3]).startswith("RGB;16")
            img.load()
            if sixteen_bit_rgb and isinstance(img.info.get("transparency"), tuple):  # a tRNS key in 16-bit units
                img.info["transparency"] = tuple(int(value) >> 8 for value in img.info["transparency"])
            return _to_rgb(turn_upright(img) if orientation == "exif" else img)
    except FileNotFoundError:
        raise
    except IsADirectoryError as exc:
        raise _Undecodable("a folder, not an image file") from exc
    except Image.UnidentifiedImageError as exc:
        raise _Undecodable("not an image, or a format PIL cannot read") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).replace(f"'{path}'", "").replace(str(path), "").split()) or type(exc).__name__
        raise _Undecodable(reason) from exc


def load_image(ref: str, min_side: int | None = None, orientation: str = "exif") -> Image.Image:
    """Open an image reference as an RGB PIL image, upright as ``orientation`` says (see
    :data:`ORIENTATIONS`); raise DataError naming the file on failure.

    ``min_side``: the image is only needed with its shorter side at least this long; a JPEG much
    larger than that is decoded at a reduced scale (see :func:`_draft_for`).
    """
    path, index = split_ref(ref)
    if index is not None:
        images = read_idx(path)
        if images.ndim != 3 or index >= len(images):
            raise DataError(f"{ref}: no image {index} in {path} ({len(images)} images)")
        return Image.fromarray(images[index], mode="L").convert("RGB")
    try:
        return _decode(path, min_side, orientation)
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {path}") from exc
    except _Undecodable as exc:
        empty = os.path.isfile(path) and os.path.getsize(path) == 0  # said as the split's check says it
        raise DataError(f"cannot decode image {path}: {'empty file (0 bytes)' if empty else exc}") from exc


def inspect_image(ref: str, data: bytes | None = None) -> tuple[str | None, np.ndarray | None]:
    """(None, the image's :func:`thumbnail`) if the reference decodes, else (a one-line reason without the
    path, None). ``data``: the file's bytes, where the caller has read them already (the split stage hashes
    the same bytes: one read per file)."""
    path, index = split_ref(ref)
    if index is not None:
        try:
            return None, thumbnail(load_image(ref))
        except DataError as exc:
            return str(exc), None
    if data is None and not os.path.exists(path):
        return "file does not exist", None
    if (len(data) if data is not None else os.path.getsize(path)) == 0:
        return "empty file (0 bytes)", None
    try:
        # A large JPEG at a reduced scale (down to 1/8): its whole bitstream is still read, so a truncated
        # or broken file fails as at full size, in a fraction of the time (the split stage checks every
        # file). Not below 4 pixels a thumbnail cell (64 px a side): a 56-px JPEG at 1/8 (7x7) left too few
        # to compare, and its copies went unseen (thumbnails of scenes 48-480 px high: up to 23 gray levels
        # RMS from the full decode's at 1/8, at most 1.5 at 64 px, 4.3 at 32). Turned upright as the decode
        # stage will, so a file that passes here decodes there.
        image = _decode(path, min_side=4 * THUMBNAIL_SIDE, data=data)
    except FileNotFoundError:
        return "file does not exist", None
    except _Undecodable as exc:
        return f"cannot decode: {exc}", None
    return None, thumbnail(image)


THUMBNAIL_SIDE = 16  # gray levels (luma, Y) in 16x16 cells
CHROMA_SIDE = 8  # colour (Cb and Cr) in 8x8 cells
THUMBNAIL_SIZE = THUMBNAIL_SIDE ** 2 + 2 * CHROMA_SIDE ** 2  # 384 values


def thumbnail(image: Image.Image) -> np.ndarray:
    """What the split compares to find an image's re-encoded or resized copies (finetune.nearduplicates),
    as uint8, flat: the image's luma (Y) in 16x16 cells, then its Cb and Cr in 8x8 cells (128 where it is
    gray), each cell the mean of the area it covers. Exact area means, so that a JPEG decoded at 1/8 scale
    (the mean of each 8x8 block) gives the same figures as at full size within a level or so (PIL's BOX
    filter takes whole pixels, and does not). The colour tells apart pictures with the same gray levels
    (a red and a green T-shirt)."""
    ycbcr = image.convert("YCbCr")
    if min(ycbcr.size) >= 256:  # block means first (exact, and fast in PIL), at least 8 per cell left
        ycbcr = ycbcr.reduce(min(ycbcr.size) // (8 * THUMBNAIL_SIDE))
    planes = np.asarray(ycbcr, dtype=np.float32)
    return np.concatenate([_area_means(planes[..., 0], THUMBNAIL_SIDE),
                           *(_area_means(planes[..., c], CHROMA_SIDE) for c in (1, 2))])


def _area_means(plane: np.ndarray, cells: int) -> np.ndarray:
    rows, columns = (_area_weights(n, cells) for n in plane.shape)
    return np.clip(np.rint(rows @ plane @ columns.T), 0, 255).astype(np.uint8).reshape(-1)


def idx_thumbnails(path: str, indices) -> np.ndarray:
    """:func:`thumbnail` of images ``indices`` of the IDX file ``path`` (gray: no colour), all at once; the
    luma within one level of thumbnail's (PIL's YCbCr conversion rounds a gray level by one now and then)."""
    images = read_idx(path)[np.asarray(indices, dtype=np.int64)].astype(np.float32)
    rows, columns = (_area_weights(n, THUMBNAIL_SIDE) for n in images.shape[1:])
    cells = np.einsum("ih,nhw,jw->nij", rows, images, columns, optimize=True)
    luma = np.clip(np.rint(cells), 0, 255).astype(np.uint8).reshape(len(images), -1)
    return np.concatenate([luma, np.full((len(images), 2 * CHROMA_SIDE ** 2), 128, dtype=np.uint8)], axis=1)


@lru_cache(maxsize=64)
def _area_weights(size: int, cells: int) -> np.ndarray:
    """(cells, size) weights: the share of each of ``size`` pixels in each of ``cells`` equal cells, each
    row summing to 1."""
    edges = np.arange(cells + 1) * (size / cells)
    pixels = np.arange(size)
    overlap = np.minimum(edges[1:, None], pixels[None, :] + 1) - np.maximum(edges[:-1, None], pixels[None, :])
    return (np.clip(overlap, 0, None) * (cells / size)).astype(np.float32)


def resized_size(size: tuple[int, int], resize_size: int, at_least: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resize_size``, as torchvision's ``Resize(int)``
    computes it (the longer side truncated: 80x48 to 40 gives 66x40), each side at least ``at_least``."""
    width, height = size
    short, long = sorted((width, height))
    new_long = int(resize_size * long / short)
    new_width, new_height = (resize_size, new_long) if width <= height else (new_long, resize_size)
    return max(at_least, new_width), max(at_least, new_height)


def preprocess(img: Image.Image, resize_size: int, crop_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize the shorter side to ``resize_size`` (``interpolation``, antialiased), centre-crop ``crop_size``.

    Returns uint8 (crop_size, crop_size, 3): torchvision's eval transform for classification
    weights (Resize + CenterCrop), before normalisation.
    """
    # The centre of the stored square (an identical crop of the same resized image): predict, evaluate and training
    # get the same pixels whichever way an image is resized (:func:`_resized_square`).
    inner = centre_offset(stored_size(resize_size, crop_size), crop_size)
    square = preprocess_stored(img, resize_size, crop_size, interpolation)
    return np.ascontiguousarray(square[inner : inner + crop_size, inner : inner + crop_size])


# An image resized in whole, then cropped, has torchvision's pixels exactly. One whose resized size is far larger
# than the square kept (an 8000x1 strip resized to 256 px: 2,048,000x256, 2 GB of memory and seconds) has only
# that square resampled, in PIL's own two passes (across, then down) each over its source box: the same filter at
# the same places, within a grey level. (One call of resize with a box was up to 20 grey levels off, bicubic, on
# tall images.)
MAX_RESIZED_OVER_KEPT = 64


def _resized_square(img: Image.Image, new_size: tuple[int, int], left: int, top: int, side: int,
                    interpolation: str) -> Image.Image:
    """The ``side`` square at (``left``, ``top``) of ``img`` resized to ``new_size``."""
    if new_size == img.size:
        return img.crop((left, top, left + side, top + side))
    if new_size[0] * new_size[1] <= MAX_RESIZED_OVER_KEPT * side * side:
        return img.resize(new_size, resampling(interpolation)).crop((left, top, left + side, top + side))
    width, height = img.size
    x_scale, y_scale = width / new_size[0], height / new_size[1]
    across = img.resize((side, height), resampling(interpolation),
                        box=(left * x_scale, 0, min(width, (left + side) * x_scale), height))
    return across.resize((side, side), resampling(interpolation),
                         box=(0, top * y_scale, side, min(height, (top + side) * y_scale)))


def stored_size(resize_size: int, crop_size: int) -> int:
    """Side of the square a decoded file keeps per image: the resized image's centre, crop included."""
    return max(resize_size, crop_size)


def centre_offset(length: int, crop_size: int) -> int:
    """Where a centre crop starts along a side of ``length`` pixels: torchvision's ``CenterCrop``
    rounding (``round((length - crop) / 2)``, half to even), in images and stored squares alike."""
    return int(round((length - crop_size) / 2.0))


def preprocess_stored(img: Image.Image, resize_size: int, crop_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Like :func:`preprocess`, but keep the ``stored_size`` square around the centre crop, so random
    crops for augmentation have the resized image's margin to draw from.

    The square is placed so that its centre crop (:func:`centre_offset`) is exactly the pixels
    :func:`preprocess` returns, whatever the image's aspect ratio.
    """
    side = stored_size(resize_size, crop_size)
    new_size = resized_size(img.size, resize_size, side)
    inner = centre_offset(side, crop_size)
    left = centre_offset(new_size[0], crop_size) - inner
    top = centre_offset(new_size[1], crop_size) - inner
    return np.asarray(_resized_square(img, new_size, left, top, side, interpolation), dtype=np.uint8)


def load_stored(ref: str, resize_size: int, crop_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """One image reference -> uint8 (S, S, 3), S = :func:`stored_size`: what the decode stage keeps
    (upright by its EXIF tag)."""
    return preprocess_stored(load_image(ref, min_side=resize_size), resize_size, crop_size, interpolation)


def load_preprocessed(ref: str, resize_size: int, crop_size: int, interpolation: str = "bilinear",
                      orientation: str = "exif") -> np.ndarray:
    """One image reference -> uint8 (crop_size, crop_size, 3): the pixels training, evaluation and
    ``predict`` all feed the model (large JPEGs decoded at a reduced scale first)."""
    return preprocess(load_image(ref, min_side=resize_size, orientation=orientation), resize_size, crop_size, interpolation)


def normalize(batch_hwc_uint8: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) normalised with per-channel mean/std."""
    x = batch_hwc_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
