"""The data path: draft-mode decoding of large JPEGs, and splits decoded once into a file-backed array."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from finetune.errors import DataError
from finetune.images import load_image, load_preprocessed, preprocess, preprocess_stored
from finetune.store import open_decoded, prefetch, split_ranges, write_decoded
from faults import make_images
from helpers import FASHION_MNIST, REPO, TINY_CONFIG, jobs_run, run_snakemake, tiny_config


def photo(path, width, height, seed=0, orientation=None):
    """A smooth photo-like RGB image (gradients and waves plus a little noise), saved as ``path``;
    ``orientation``: the EXIF Orientation tag to store with it (a JPEG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x / 16 + 40 * np.sin(y / 50)) % 256, (y / 12) % 256, ((x + y) / 20) % 256], -1)
    pixels = np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
    extra = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(path, quality=92, **extra)
    return path


# The EXIF Orientation tag (0x0112): where the stored rows and columns go in the picture as it is meant
# to be seen, written out with numpy from the tag's definition (not with PIL's ImageOps).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                        # mirrored left-right
    3: lambda a: a[::-1, ::-1],                     # upside down
    4: lambda a: a[::-1, :],                        # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),              # row 0 is the left side, column 0 the top
    6: lambda a: np.rot90(a, k=-1),                 # row 0 is the right side, column 0 the top: turn clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # row 0 is the right side, column 0 the bottom
    8: lambda a: np.rot90(a, k=1),                  # row 0 is the left side, column 0 the bottom: anticlockwise
}


def as_stored(path, draft=None) -> np.ndarray:
    """The file's pixels as stored (PIL's plain open applies no orientation), optionally draft-scaled."""
    with Image.open(path) as img:
        if draft:
            img.draft("RGB", draft)
        return np.asarray(img.convert("RGB"))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_with_nearly_the_same_pixels(tmp_path):
    big = photo(tmp_path / "big.jpg", 2400, 1800)
    full = load_image(str(big))
    reduced = load_image(str(big), min_side=224)
    assert full.size == (2400, 1800)
    # DCT scaling by 1/2, 1/4 or 1/8: the smallest that keeps the shorter side >= 224 is 1/8 (225 px).
    assert reduced.size == (300, 225)
    assert load_image(str(big), min_side=226).size == (600, 450)
    fast = load_preprocessed(str(big), 256, 224).astype(int)
    slow = preprocess(full, 256, 224).astype(int)
    assert fast.shape == slow.shape == (224, 224, 3)
    assert np.abs(fast - slow).mean() < 1.5, "the reduced decode must show the same picture"


def test_a_multi_picture_jpeg_is_decoded_at_a_reduced_scale_like_a_plain_one(tmp_path):
    """MPO (a camera's multi-picture JPEG: the picture, then e.g. a second view) is its first picture's JPEG."""
    with Image.open(photo(tmp_path / "photo.jpg", 2400, 1800)) as picture:
        picture.load()
        picture.save(tmp_path / "camera.jpg", format="MPO", save_all=True, quality=92,
                     append_images=[picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
        plain = tmp_path / "plain.jpg"
        picture.save(plain, quality=92)  # the same picture, encoded alike, in a plain JPEG
    with Image.open(tmp_path / "camera.jpg") as check:
        assert check.format == "MPO" and check.n_frames == 2
    reduced = load_image(str(tmp_path / "camera.jpg"), min_side=224)
    assert reduced.size == (300, 225)
    assert np.array_equal(np.asarray(reduced), np.asarray(load_image(str(plain), min_side=224)))


def test_small_images_and_other_formats_decode_exactly_as_before(tmp_path):
    small = photo(tmp_path / "small.jpg", 300, 240)  # not 2x larger than 224: no reduced decode possible
    png = tmp_path / "big.png"
    Image.open(photo(tmp_path / "tmp.jpg", 1200, 900)).save(png)
    for path in (small, png):
        assert np.array_equal(load_preprocessed(str(path), 256, 224), preprocess(load_image(str(path)), 256, 224))


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_the_split_check_decodes_at_a_reduced_scale_yet_finds_every_broken_jpeg(tmp_path, progressive):
    """The check reads a large JPEG at 1/8 scale; its verdict on intact, cut-short and overwritten files
    is the one of a full-size decode with PIL."""
    from finetune.images import inspect_image

    big = tmp_path / "big.jpg"
    Image.open(photo(tmp_path / "src.jpg", 1600, 1200)).save(big, quality=90, progressive=progressive)
    raw = big.read_bytes()
    files = {"intact": big}
    for fraction in (0.3, 0.9, 0.999):
        files[f"cut at {fraction}"] = tmp_path / f"cut{fraction}.jpg"
        files[f"cut at {fraction}"].write_bytes(raw[: int(len(raw) * fraction)])
    broken = bytearray(raw)
    broken[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    files["overwritten"] = tmp_path / "broken.jpg"
    files["overwritten"].write_bytes(bytes(broken))

    def full_decode_fails(path) -> bool:
        try:
            with Image.open(path) as img:
                img.load()
        except OSError:
            return True
        return False

    verdicts = {name: inspect_image(str(path))[0] is not None for name, path in files.items()}
    assert verdicts == {name: full_decode_fails(path) for name, path in files.items()}
    assert verdicts["intact"] is False and verdicts["cut at 0.999"] is True


def bytes_read_by_this_process() -> int:
    """What this process has read through read() calls so far, from the page cache or the disk (/proc/self/io)."""
    with open("/proc/self/io") as handle:
        return int(next(line.split()[1] for line in handle if line.startswith("rchar")))


def test_the_split_check_reads_each_image_file_once(tmp_path):
    """The split stage decodes every image and hashes its file (duplicates): one read of the file's bytes for
    both, so a dataset on network storage is read once there, not twice. Counted by the kernel (rchar), the
    digests checked with hashlib, a truncated file still named."""
    import hashlib

    from finetune.data import inspect_images

    paths = [str(photo(tmp_path / f"{i}.jpg", 320, 240, seed=i)) for i in range(12)]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(Path(paths[0]).read_bytes()[:3000])
    paths.append(str(cut))
    inspect_images(paths[:1])  # PIL's JPEG plugin is imported on first use: its files are not the images
    before = bytes_read_by_this_process()
    results = inspect_images(paths, threads=2)
    read = bytes_read_by_this_process() - before
    total = sum(os.path.getsize(p) for p in paths)
    assert total <= read <= 1.1 * total, f"{read} bytes read for {total} bytes of files"
    assert [digest for _, digest, _ in results[:-1]] == [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths[:-1]]
    assert all(reason is None and thumb.shape == (384,) for reason, _, thumb in results[:-1])
    assert results[-1][0] is not None and results[-1][1:] == (None, None), results[-1]


def test_a_decode_that_runs_out_of_space_names_the_file_and_keeps_the_earlier_one(split_csv, tmp_path):
    """The images are written in order with plain writes (a memory map killed the job with SIGBUS on a
    full tmpfs): a write refused mid-file (here by the file size limit, EFBIG, as ENOSPC would be) is a
    clear error, the partial file is removed, and the earlier decoded pair stays byte for byte."""
    import resource

    from faults import snapshot, start_script
    from helpers import run_script

    out = tmp_path / "decoded"

    def args(size):
        return ["--split", str(split_csv), "--image-size", str(size), "--out-images", str(out / "d.npy"),
                "--out-info", str(out / "d.json")]

    assert run_script("decode", *args(32)).returncode == 0
    before = snapshot(out)
    limit = 2 * (out / "d.npy").stat().st_size  # the 64-px array is 4x larger: refused half-way

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = start_script("decode", *args(64), preexec_fn=limit_file_size)
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 1, stdout
    assert f"error: cannot write {out / 'd.npy'}: File too large (errno 27)" in stdout and "Traceback" not in stdout
    assert snapshot(out) == before, "no partial file beside the earlier pair, which is unchanged"


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_a_photo_is_decoded_upright_by_its_exif_orientation(tmp_path, orientation):
    """All eight EXIF orientations, at full size and through a reduced (draft) decode; ``none`` keeps
    the stored pixels (what a model exported before orientation was applied expects)."""
    small = photo(tmp_path / "small.jpg", 72, 48, seed=orientation, orientation=orientation)
    assert np.array_equal(np.asarray(load_image(str(small))), UPRIGHT[orientation](as_stored(small)))
    assert np.array_equal(np.asarray(load_image(str(small), orientation="none")), as_stored(small))
    big = photo(tmp_path / "big.jpg", 2400, 1800, orientation=orientation)
    reduced = np.asarray(load_image(str(big), min_side=224))
    assert np.array_equal(reduced, UPRIGHT[orientation](as_stored(big, draft=(300, 225))))
    assert reduced.shape[:2] == ((300, 225) if orientation >= 5 else (225, 300))


def test_the_decode_stage_stores_photos_upright(tmp_path):
    """The decoded squares are torchvision's Resize + CenterCrop of each picture turned upright by numpy."""
    from torchvision import transforms

    refs = [str(photo(tmp_path / f"{o}.jpg", 70, 46, seed=o, orientation=o)) for o in sorted(UPRIGHT)]
    split = tmp_path / "split.csv"
    pd.DataFrame({"path": refs, "label": 0, "class_name": "a", "split": "train"}).to_csv(split, index=False)
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split, 40, 32, npy, info, log=lambda _: None)
    assert json.loads(info.read_text())["orientation"] == "exif"
    centre = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32)])
    expected = np.stack([np.asarray(centre(Image.fromarray(UPRIGHT[o](as_stored(r))))) for o, r in zip(sorted(UPRIGHT), refs)])
    decoded = open_decoded(npy, info, split)
    assert np.array_equal(decoded.read(np.arange(len(refs)), 32), expected)
    decoded.handle.close()


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".webp"])
def test_a_file_of_several_frames_is_its_first_frame_in_training_and_predict(tmp_path, suffix):
    """docs/data-and-weights.md: an animated GIF or WebP, a multi-page TIFF is one image, its first frame, in the
    decoded file the jobs train and evaluate on and in predict's preprocessing alike (torchvision's Resize +
    CenterCrop of the frame as Pillow reads it on its own)."""
    from torchvision import transforms

    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (46, 70, 3), dtype=np.uint8)) for _ in range(2)]
    ref = tmp_path / f"frames{suffix}"
    frames[0].save(ref, save_all=True, append_images=frames[1:], **({"lossless": True} if suffix == ".webp" else {}))
    centre = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32)])

    def frame(index):
        with Image.open(ref) as img:
            assert img.n_frames == 2
            img.seek(index)
            return np.asarray(centre(img.convert("RGB")))

    assert not np.array_equal(frame(0), frame(1))
    split = tmp_path / "split.csv"
    pd.DataFrame({"path": [str(ref)], "label": 0, "class_name": "a", "split": "train"}).to_csv(split, index=False)
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split, 40, 32, npy, info, log=lambda _: None)
    decoded = open_decoded(npy, info, split)
    assert np.array_equal(decoded.read(np.arange(1), 32)[0], frame(0))
    decoded.handle.close()
    assert np.array_equal(load_preprocessed(str(ref), 40, 32), frame(0))


def test_a_model_without_orientation_metadata_gets_its_images_as_stored():
    """Models exported before orientation was recorded were trained on stored pixels; an unknown value is refused."""
    from finetune.deploy import ModelError, decode_metadata

    meta = {"classes": '["a", "b"]', "resize_size": "40", "crop_size": "32", "mean": "[0, 0, 0]", "std": "[1, 1, 1]"}
    assert decode_metadata(dict(meta))["orientation"] == "none"
    assert decode_metadata({**meta, "orientation": "exif"})["orientation"] == "exif"
    with pytest.raises(ModelError, match="metadata orientation='sideways' is not supported \\(only exif or none\\)"):
        decode_metadata({**meta, "orientation": "sideways"})


@pytest.fixture
def split_csv(tmp_path):
    """A split file of 24 real-looking JPEGs of two sizes: 12 train, 6 val, 6 test."""
    refs = [str(photo(tmp_path / f"{i}.jpg", 64 + 8 * (i % 3), 48 + 4 * (i % 5), seed=i)) for i in range(24)]
    frame = pd.DataFrame({"path": refs, "label": [i % 2 for i in range(24)],
                          "class_name": [("cat", "dog")[i % 2] for i in range(24)],
                          "split": ["train"] * 12 + ["val"] * 6 + ["test"] * 6})
    path = tmp_path / "split.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("stream", [False, True])
def test_a_split_read_uncropped_is_the_stored_squares_and_the_others_the_centre_crops(split_csv, tmp_path, stream):
    """What training with augment reads (train uncropped): train's images are the stored squares at the resize size
    (random resized crops draw from them), the val images the centre crops at the crop size; with no split
    uncropped, both are the centre crops. Against the images decoded here from the photos with torchvision's
    Resize (and CenterCrop)."""
    from torchvision import transforms

    from finetune.stages import load_split_tensors
    from finetune.tensors import Preprocessing

    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 40, 32, npy, info, log=lambda _: None)
    prep = Preprocessing(40, 32, (0.5,) * 3, (0.25,) * 3)
    frame = pd.read_csv(split_csv)

    def expected(split, crop):
        steps = [transforms.Resize(40), transforms.CenterCrop(crop)]
        return np.stack([np.asarray(transforms.Compose(steps)(Image.open(p).convert("RGB")))
                         for p in frame[frame["split"] == split]["path"]]).transpose(0, 3, 1, 2)

    for uncropped, train_size in (((), 32), (("train",), 40)):
        data = load_split_tensors(split_csv, prep, 1, splits=("train", "val"), decoded=(npy, info), stream=stream,
                                  uncropped=uncropped)[0]
        train = np.asarray(data["train"].images[0 : len(data["train"].labels)])
        val = np.asarray(data["val"].images[0 : len(data["val"].labels)])
        assert np.array_equal(train, expected("train", train_size)), uncropped
        assert np.array_equal(val, expected("val", 32)), uncropped


@pytest.mark.parametrize("resize, crop", [(256, 224), (37, 32), (36, 33), (32, 32), (8, 7)])
def test_the_stored_squares_centre_is_the_evaluation_crop_for_every_aspect_ratio(resize, crop):
    """The evaluation crop is torchvision's Resize + CenterCrop, pixel for pixel (their rounding of the
    longer side and of the crop's position included), and the stored square's centre holds it."""
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop)])
    rng = np.random.default_rng(resize)
    for width in range(crop, crop + 23):
        for height in (crop, crop + 1, crop + 2, 2 * crop + 1, 3 * crop):
            img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            for w, h, image in ((width, height, img), (height, width, img.transpose(Image.Transpose.TRANSPOSE))):
                square = preprocess_stored(image, resize, crop)
                start = int(round((resize - crop) / 2))  # CenterCrop's position in a resize x resize square
                assert square.shape == (resize, resize, 3), (w, h)
                evaluation = preprocess(image, resize, crop)
                assert np.array_equal(evaluation, np.asarray(reference(image))), (w, h)
                assert np.array_equal(square[start : start + crop, start : start + crop], evaluation), (w, h)


STRIP_PROBE = """
import sys
from finetune.images import load_stored
load_stored(sys.argv[1], 64, 56)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))  # kB
"""


def decode_peak_mb(image: Path) -> float:
    """The peak resident memory of a fresh process that decodes ``image`` as the decode stage does (MB)."""
    out = subprocess.run([sys.executable, "-c", STRIP_PROBE, str(image)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
    return int(out.stdout.split()[-1]) / 1024


def test_an_extreme_strip_is_resized_in_bounded_memory_with_nearly_torchvision_s_pixels(tmp_path):
    """A 6000x1 PNG (a few hundred bytes) resized to 64 px would be 384,000x64 pixels, about 100 MB as PIL holds
    them: only the square kept is resampled, within a grey level of torchvision's Resize + CenterCrop."""
    from torchvision import transforms

    rng = np.random.default_rng(7)
    strip = Image.fromarray(rng.integers(0, 256, (1, 6000, 3), dtype=np.uint8))
    strip.save(tmp_path / "strip.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    peaks = {name: decode_peak_mb(tmp_path / f"{name}.png") for name in ("strip", "small")}
    assert peaks["strip"] - peaks["small"] < 40, peaks
    noise = Image.fromarray(rng.integers(0, 256, (2000, 20, 3), dtype=np.uint8))  # tall and more than a pixel wide
    for interpolation, mode in (("bilinear", transforms.InterpolationMode.BILINEAR),
                                ("bicubic", transforms.InterpolationMode.BICUBIC)):
        reference = transforms.Compose([transforms.Resize(64, interpolation=mode), transforms.CenterCrop(56)])
        for image in (strip, strip.transpose(Image.Transpose.TRANSPOSE), strip.crop((0, 0, 300, 1)), noise,
                      noise.transpose(Image.Transpose.TRANSPOSE)):
            evaluation = preprocess(image, 64, 56, interpolation)
            assert np.abs(evaluation.astype(int) - np.asarray(reference(image))).max() <= 1, (interpolation, image.size)
            # predict's crop is the centre of the square training and evaluation read, pixel for pixel
            assert np.array_equal(preprocess_stored(image, 64, 56, interpolation)[4:60, 4:60], evaluation), image.size


def test_a_large_png_is_held_once_while_it_is_decoded(tmp_path):
    """A PNG (or TIFF) has no reduced-scale decoding, so a 4000x3000 one is 36 MB decoded; converting it to RGB made a
    copy even when it was RGB already, holding it twice (per data thread: 1.5 GB at 4 threads for 48-megapixel scans).
    The peak above a small image's is now about the image once, not twice and more."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(tmp_path / "large.png", compress_level=1)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    peaks = {name: decode_peak_mb(tmp_path / f"{name}.png") for name in ("large", "small")}
    decoded = 4000 * 3000 * 4 / 2**20  # PIL holds RGB at 4 bytes a pixel
    assert peaks["large"] - peaks["small"] < 1.5 * decoded, (peaks, decoded)


@pytest.mark.fashion_mnist
def test_an_idx_file_is_unpacked_once_however_many_decode_threads_ask_at_once(tmp_path):
    """Each of 16 threads missed the cache at once and unpacked its own 47 MB copy (the decode job held 1.2 GB)."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    from finetune.images import read_idx

    path = tmp_path / "train-images-idx3-ubyte.gz"
    shutil.copy(f"{FASHION_MNIST}/train-images-idx3-ubyte.gz", path)  # a path no earlier test read
    with ThreadPoolExecutor(16) as pool:
        arrays = list(pool.map(lambda _: read_idx(str(path)), range(16)))
    assert all(array is arrays[0] for array in arrays)
    raw = gzip.decompress(path.read_bytes())
    assert np.array_equal(arrays[0], np.frombuffer(raw, np.uint8, offset=16).reshape(60000, 28, 28))


def test_decoded_split_holds_every_image_as_decoded_one_by_one(split_csv, tmp_path):
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 40, 32, npy, info, threads=2, log=lambda _: None)
    decoded = open_decoded(npy, info, split_csv, (40, 32))
    frame = pd.read_csv(split_csv)
    expected = np.stack([preprocess(Image.open(p).convert("RGB"), 40, 32) for p in frame["path"]])
    rows = np.array([7, 0, 23, 12, 12, 5])
    assert np.array_equal(decoded.read(rows, 32), expected[rows])
    assert np.array_equal(decoded.read(np.arange(24), 32), expected)
    # Stored: the 40 x 40 square of the resized image (torchvision's Resize) around that centre crop (where
    # torchvision's CenterCrop puts it), 4 px of margin on each side.
    from torchvision import transforms

    squares = decoded.read(np.arange(24))
    for path, square in zip(frame["path"], squares):
        resized = np.asarray(transforms.Resize(40)(Image.open(path).convert("RGB")))
        top, left = (int(round((length - 32) / 2)) - 4 for length in resized.shape[:2])
        assert np.array_equal(square, resized[top : top + 40, left : left + 40])
    assert list(decoded.rows("val")) == list(range(12, 18))
    assert list(decoded.labels) == list(frame["label"])


def test_a_stale_decoded_file_is_refused_naming_it_and_kept(split_csv, tmp_path):
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    before = npy.read_bytes(), info.read_bytes()
    with pytest.raises(DataError, match=f"{npy}.*40 and 32 are needed"):
        open_decoded(npy, info, split_csv, (40, 32))
    frame = pd.read_csv(split_csv)
    frame.iloc[::-1].to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match="another version"):
        open_decoded(npy, info, tmp_path / "other.csv")
    assert (npy.read_bytes(), info.read_bytes()) == before  # intact, only made for something else: left alone


def test_a_decoded_file_of_another_version_s_format_is_refused_naming_both_and_kept(split_csv, tmp_path):
    """A pair an earlier version wrote (its record's format finetune-decoded/2), read by this one (a run with
    `--rerun-triggers mtime`, a script run by hand): called "damaged" and removed, though intact."""
    from finetune.store import STORE_FORMAT

    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    record = json.loads(info.read_text())
    record["format"] = "finetune-decoded/2"
    info.write_text(json.dumps(record))
    before = npy.read_bytes(), info.read_bytes()
    with pytest.raises(DataError) as error:
        open_decoded(npy, info, split_csv, (32, 32))
    message = str(error.value)
    assert "finetune-decoded/2" in message and STORE_FORMAT in message and "damaged" not in message, message
    assert f"snakemake --forcerun {npy}" in message and "nothing was removed" in message
    assert (npy.read_bytes(), info.read_bytes()) == before


def _truncate(npy, info):
    with open(npy, "r+b") as handle:
        handle.truncate(npy.stat().st_size - 100)


def _spoil_header(npy, info):
    with open(npy, "r+b") as handle:
        handle.write(b"garbage!")


def _spoil_record(npy, info):
    info.write_text(info.read_text()[:20])


def _foreign_record(npy, info):
    """Valid JSON in the record's place, but not a record of decoded images (another tool's file, say)."""
    info.write_text(json.dumps({"images": 18, "note": "not written by the decode job"}))


def _other_shape(npy, info):
    record = json.loads(info.read_text())
    record["shape"][0] += 1
    info.write_text(json.dumps(record))


def _moved_ranges(npy, info):
    """The record's split ranges edited, their total kept: validation would have been scored on test rows, and
    evaluate's labels (from the split file) would not have matched the images read."""
    record = json.loads(info.read_text())
    (_, val), (_, test) = ((name, record["splits"][name]) for name in ("val", "test"))
    val[1] -= 1
    test[0] -= 1
    info.write_text(json.dumps(record))


def _overwrite_pixels(npy, info):
    """Pixels written over in place a while after the pair was written, the file's size unchanged (a stray
    `dd conv=notrunc`, a program writing into the wrong file)."""
    earlier = time.time_ns() - 60 * 10**9  # the pair as written a minute ago
    for path in (npy, info):
        os.utime(path, ns=(earlier, earlier))
    with open(npy, "r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        old = handle.read(64)
        handle.seek(-64, os.SEEK_END)
        handle.write(bytes(255 - b for b in old))


def _fortran_order(npy, info):
    """The same pixels in Fortran order (columns first), header and size as valid, the times as written: read as
    C order they would be other images."""
    times = [(p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (npy, info)]
    pixels = np.load(npy)
    with open(npy, "wb") as handle:
        np.save(handle, np.asfortranarray(pixels))
    for path, ns in zip((npy, info), times):
        os.utime(path, ns=ns)


@pytest.mark.parametrize("damage, why", [(_truncate, "cut short"), (_spoil_header, "not a readable .npy"),
                                         (_fortran_order, "Fortran-ordered"),
                                         (_foreign_record, "is not a record of decoded images"),
                                         (_spoil_record, "cannot be read"), (_other_shape, "its record says"),
                                         (_overwrite_pixels, "its bytes changed after it was written"),
                                         (_moved_ranges, "its record gives the splits' rows as")])
def test_a_damaged_decoded_file_is_never_read_and_is_removed_to_be_decoded_again(split_csv, tmp_path, damage, why):
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    damage(npy, info)
    with pytest.raises(DataError, match=f"{npy}.*{why}.*removed .*snakemake --forcerun {npy}"):
        open_decoded(npy, info, split_csv, (32, 32))
    assert not npy.exists() and not info.exists()


def test_a_decoded_file_cut_short_after_it_was_opened_stops_the_read_naming_the_row(split_csv, tmp_path):
    """Rows are read from the file checked when it was opened: one cut short since (truncated by another process)
    stops the read at a row past the cut, naming it, never handing on what was not read. A split the file does not
    hold is named beside those it does."""
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, splits=("train", "val"), log=lambda _: None)
    expected = np.load(npy)
    decoded = open_decoded(npy, info, split_csv, (32, 32))
    try:
        last = len(expected) - 1  # 12 train and 6 val rows
        os.truncate(npy, npy.stat().st_size - 32 * 32 * 3)  # its last row gone
        np.testing.assert_array_equal(decoded.read(np.arange(last)), expected[:last])
        with pytest.raises(DataError, match=f"{npy}: row {last} is cut short"):
            decoded.read(np.array([0, last]))
        with pytest.raises(DataError, match=rf"{npy} holds no 'test' images \(it holds train, val\)"):
            decoded.rows("test")
    finally:
        decoded.handle.close()


def test_a_decoded_file_touched_or_copied_without_its_times_is_read_as_it_is(split_csv, tmp_path):
    """Another modification time alone (`touch`, `snakemake --touch`, a copy that does not keep times) is no damage:
    the bytes are checked, found as written, and read."""
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    expected = np.load(npy)
    os.utime(npy, ns=(npy.stat().st_atime_ns, info.stat().st_mtime_ns + 10 * 10**9))  # touched later than its record
    rows = np.arange(len(expected))
    np.testing.assert_array_equal(open_decoded(npy, info, split_csv, (32, 32)).read(rows), expected)
    copied = tmp_path / "copy"
    copied.mkdir()
    shutil.copyfile(info, copied / "d.json")  # the record first: the array is then the later of the two
    shutil.copyfile(npy, copied / "d.npy")
    os.utime(copied / "d.npy", ns=(time.time_ns(), time.time_ns() + 10 * 10**9))
    np.testing.assert_array_equal(open_decoded(copied / "d.npy", copied / "d.json", split_csv, (32, 32)).read(rows), expected)


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_decoded_files_as_snakemake_leaves_them_are_opened_without_a_pass_over_their_bytes(tiny_run, monkeypatch):
    """Snakemake touches a job's outputs when it is done: the decoded array and then its record. Opening them must not
    take that for a change and read the whole array through (every job after decode would)."""
    import finetune.store

    def no_full_read(handle, chunk=0):
        raise AssertionError("the whole array was read to check it")

    monkeypatch.setattr(finetune.store, "_sha256_of_open", no_full_read)
    folders = sorted((tiny_run / "resources/decoded").glob("*/*/"))
    assert folders
    for folder in folders:
        store = open_decoded(folder / "images.npy", folder / "info.json")
        assert store.read(np.arange(1)).shape[0] == 1


def test_an_image_broken_after_the_split_stops_the_decode_saying_how_to_check_the_images_again(split_csv, tmp_path):
    first = pd.read_csv(split_csv)["path"][0]
    Path(first).write_bytes(Path(first).read_bytes()[:300])  # overwritten in place, cut short
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    with pytest.raises(DataError) as caught:
        write_decoded(split_csv, 40, 32, npy, info, threads=2, log=lambda _: None)
    message = str(caught.value)
    assert message.startswith(f"cannot decode image {first}: ")
    assert f"snakemake --forcerun {split_csv}" in message and "and set dataset.watch: files" in message
    assert not npy.exists() and not info.exists() and list(tmp_path.glob("*.npy*")) == []
    source = shutil.copy(split_csv, tmp_path / "source.csv")  # the source dataset's split, read by pretrain: its keys
    with pytest.raises(DataError) as caught:
        write_decoded(source, 40, 32, npy, info, threads=2, log=lambda _: None)
    assert "(pretrain.dataset.on_bad_image says" in str(caught.value)
    assert "set pretrain.dataset.watch: files" in str(caught.value)


def test_a_wrong_record_path_is_refused_without_removing_anything(split_csv, tmp_path):
    # A mistyped record name, or the record of another decoded split (another folder), is a wrong path,
    # not damage: both files stay byte for byte as they were.
    npy, info = tmp_path / "a" / "images.npy", tmp_path / "a" / "info.json"
    other_npy, other_info = tmp_path / "b" / "images.npy", tmp_path / "b" / "info.json"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    write_decoded(split_csv, 48, 48, other_npy, other_info, log=lambda _: None)
    before = {path: path.read_bytes() for path in (npy, info, other_npy, other_info)}
    with pytest.raises(DataError, match=f"record {tmp_path / 'a' / 'images.json'} does not exist.*nothing was removed"):
        open_decoded(npy, tmp_path / "a" / "images.json", split_csv, (32, 32))
    with pytest.raises(DataError, match=f"{npy} do not match the record {other_info}.*another folder.*nothing was removed"):
        open_decoded(npy, other_info, split_csv, (32, 32))
    assert {path: path.read_bytes() for path in before} == before
    assert open_decoded(npy, info, split_csv, (32, 32)).read(np.arange(2)).shape == (2, 32, 32, 3)


def test_files_given_as_decoded_images_that_are_not_a_pair_are_refused_without_removing_them(split_csv, tmp_path):
    """`--decoded NPY JSON` of a script run by hand, given the pair swapped, or a run's model.pt and metrics.json by
    mistake: every check failed as "damaged" and both files were removed (the workflow's decoded images, or a trained
    model). Refused now, naming the order, both files byte for byte as they were; a real pair, damaged, is still
    removed, so that the next run decodes it again."""
    folder = tmp_path / "run"
    folder.mkdir()
    npy, info = folder / "images.npy", folder / "info.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    model, metrics = folder / "model.pt", folder / "metrics.json"
    model.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # a zip archive's start, as torch.save writes
    metrics.write_text(json.dumps({"accuracy": 0.9}))
    before = {path: path.read_bytes() for path in (npy, info, model, metrics)}
    for given in ((info, npy), (model, metrics), (model, info), (metrics, npy)):
        with pytest.raises(DataError, match="do not read as decoded images and their record.*--decoded takes the "
                                            "images \\(.npy\\) first.*nothing was removed"):
            open_decoded(*given, split_csv, (32, 32))
        assert {path: path.read_bytes() for path in before} == before, given
    assert open_decoded(npy, info, split_csv, (32, 32)).read(np.arange(2)).shape == (2, 32, 32, 3)
    # The record cut short (no JSON at all): damage, removed as before.
    info.write_bytes(info.read_bytes()[:20])
    with pytest.raises(DataError, match="were damaged.*removed"):
        open_decoded(npy, info, split_csv, (32, 32))
    assert not npy.exists() and not info.exists()


def test_rows_come_from_the_file_that_was_checked_even_if_its_name_is_replaced(split_csv, tmp_path):
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    expected = np.load(npy)
    decoded = open_decoded(npy, info, split_csv, (32, 32))
    npy.unlink()
    npy.write_bytes(b"something else entirely")
    assert np.array_equal(decoded.read(np.arange(len(expected))), expected)


def test_a_decode_killed_mid_write_leaves_no_file_under_the_final_name(tmp_path):
    refs = [f"{tmp_path / 'big.jpg'}"] * 400
    photo(tmp_path / "big.jpg", 1600, 1200)
    pd.DataFrame({"path": refs, "label": 0, "class_name": "a", "split": "train"}).to_csv(tmp_path / "s.csv", index=False)
    npy = tmp_path / "out" / "d.npy"
    code = ("import sys; from pathlib import Path; from finetune.store import write_decoded; "
            "write_decoded(Path(sys.argv[1]), 256, 224, Path(sys.argv[2]), Path(sys.argv[3]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.csv"), str(npy), str(npy.with_suffix(".json"))],
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 120
    while not any((tmp_path / "out").glob(".d.npy.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the decode of 400 large JPEGs
    assert proc.poll() is None, "the decode finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not npy.exists() and not npy.with_suffix(".json").exists()


def test_prefetch_keeps_order_and_hands_on_the_producers_error():
    assert list(prefetch(iter(range(10)), depth=3)) == list(range(10))

    def broken():
        yield 1
        raise DataError("row 7 is cut short")

    stream = prefetch(broken())
    assert next(stream) == 1
    with pytest.raises(DataError, match="row 7"):
        next(stream)


def test_prefetch_reads_at_most_depth_batches_ahead_of_the_consumer():
    """The batches a slow consumer has not taken are at most ``depth`` in the queue and one in the producer's
    hand: a reader of 100 batches is 5 ahead of one taken, not all 100 read into memory."""
    produced = []

    def batches():
        for i in range(100):
            produced.append(i)
            yield i

    stream = prefetch(batches(), depth=3)
    assert next(stream) == 0
    time.sleep(0.5)  # ample time for an unbounded reader to read them all
    assert len(produced) <= 1 + 3 + 1, produced
    assert list(stream) == list(range(1, 100))


def test_decoded_images_larger_than_the_free_space_are_said_before_decoding(tmp_path):
    """A decode whose array will not fit in the free space of its folder warns at the start, with both sizes: here
    1000 images of 50,000 px squares, 7,500 GB, more than any disk the tests run on; the decode then stops at the
    first image (a missing file), nothing left."""
    rows = [{"path": str(tmp_path / f"missing{i}.png"), "label": i % 2, "class_name": ("cat", "dog")[i % 2],
             "split": "train"} for i in range(1000)]
    split_csv = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    needed = 1000 * 50_000 * 50_000 * 3
    free = shutil.disk_usage(tmp_path).free
    assert free < needed  # the premise
    lines = []
    with pytest.raises(DataError, match="missing0.png"):
        write_decoded(split_csv, 50_000, 50_000, tmp_path / "out" / "images.npy", tmp_path / "out" / "info.json",
                      splits=("train",), log=lines.append)
    [warning] = lines
    said = re.fullmatch(rf"warning: the decoded images need {needed / 1e9:.1f} GB and {tmp_path} has ([\d.]+) (GB|MB) "
                        "free", warning)
    assert said and abs(float(said.group(1)) * {"GB": 1e9, "MB": 1e6}[said.group(2)] - free) < 1e9, warning
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def decode_outputs(dry_run_output: str) -> list[str]:
    """The decoded-images files a (dry) snakemake run makes, one per decode job."""
    return sorted(line.split("output:", 1)[1].split(",")[0].strip() for line in dry_run_output.splitlines()
                  if line.strip().startswith("output: resources/decoded/"))


def test_one_decode_job_per_split_file_and_size_for_many_experiments_and_seeds(tmp_path):
    experiments = {"finetune": {"strategy": "finetune"}, "feature_extract": {"strategy": "feature_extract"},
                   "scratch": {"strategy": "finetune", "pretrained": False},
                   "larger": {"strategy": "finetune", "image_size": 48}}
    config = tiny_config(tmp_path, replace={"experiments": experiments, "seeds": [0, 1, 2]})
    dry = run_snakemake(tmp_path, config, "-n")
    assert decode_outputs(dry.stdout) == [
        "resources/decoded/source/32/images.npy",   # pretrain.image_size
        "resources/decoded/target/48/images.npy",   # the experiment with its own image_size
        "resources/decoded/target/native/images.npy",  # the weights' own size: every other experiment
    ], dry.stdout[-3000:]


@pytest.mark.fashion_mnist
def test_image_size_at_the_weights_own_crop_is_said_to_decode_the_same_pixels_again(tmp_path):
    """image_size 32 with weights pretrained at 32: decoded into a folder of its own, pixel for pixel the weights' own
    (native) array, as the start's note says; a run at another size gets no note."""
    experiments = {"at_crop": {"image_size": 32}, "own": {}, "larger": {"image_size": 48}}
    config = tiny_config(tmp_path, replace={"experiments": experiments})
    run = run_snakemake(tmp_path, config, "--printshellcmds", "resources/decoded/target/native/images.npy",
                        "resources/decoded/target/32/images.npy")
    notes = [line for line in run.stdout.splitlines() if line.startswith("note: image_size")]
    assert notes == ["note: image_size 32 in at_crop is the weights' own crop size (pretrain.image_size): those runs "
                     "read images decoded again at that size, the same pixels as own read (image_size null, the "
                     "default, the weights' own); with image_size null in every run they are decoded once"], \
        run.stdout[-3000:]
    decoded = tmp_path / "resources" / "decoded" / "target"
    assert np.array_equal(np.load(decoded / "32" / "images.npy"), np.load(decoded / "native" / "images.npy"))
    # Every run at 32 (none at null): the target decoded once, at 32, and nothing to say.
    all_32 = tmp_path / "all_32"
    config = tiny_config(all_32, replace={"experiments": {"at_crop": {"image_size": 32}, "other": {"image_size": 32}}})
    dry = run_snakemake(all_32, config, "-n")
    assert not [line for line in dry.stdout.splitlines() if line.startswith("note: image_size")], dry.stdout[-3000:]
    assert decode_outputs(dry.stdout) == ["resources/decoded/source/32/images.npy",
                                         "resources/decoded/target/32/images.npy"], dry.stdout[-3000:]


@pytest.mark.fashion_mnist
def test_the_target_decoded_at_a_size_of_its_own_is_not_decoded_again_when_pretrain_image_size_changes(tmp_path):
    """Weights pretrained here are resized and cropped to pretrain.image_size alike: a run's own image_size then fixes
    every decoded pixel. The target's decode at that size reran when pretrain.image_size changed; now it does not,
    and decoding it again (forced) gives the same pixels."""
    config = tiny_config(tmp_path, replace={"experiments": {"sized": {"image_size": 40}}})
    target = "resources/decoded/target/40/images.npy"
    run_snakemake(tmp_path, config, "--printshellcmds", target)
    before = np.load(tmp_path / target)
    changed = tiny_config(tmp_path, "changed.yaml", replace={"experiments": {"sized": {"image_size": 40}}},
                          pretrain={"image_size": 36})
    dry = run_snakemake(tmp_path, changed, "-n", target)
    assert decode_outputs(dry.stdout) == [], dry.stdout[-3000:]
    run_snakemake(tmp_path, changed, "--forcerun", "decode", "--printshellcmds", target)
    assert np.array_equal(np.load(tmp_path / target), before)


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_decoded_once_per_dag_and_not_again_when_an_experiment_changes(tiny_run_copy):
    workdir = tiny_run_copy
    logs = sorted(p.relative_to(workdir / "results/logs/decode").as_posix()
                  for p in (workdir / "results/logs/decode").rglob("*.log"))
    assert logs == ["source/32.log", "target/native.log"]
    tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "lr": 0.0005}})
    dry = run_snakemake(workdir, workdir / "config.yaml", "-n")
    assert "train" in dry.stdout and decode_outputs(dry.stdout) == [], dry.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_a_damaged_decoded_file_fails_the_job_naming_it_and_the_next_run_rebuilds_it(tiny_run_copy):
    """Decoded images cut short after the run (a disk filling up, a copy interrupted): refused as the run starts,
    naming the file and how to decode it again; that command decodes again and ends with the same metrics as the
    first run."""
    workdir = tiny_run_copy
    npy = workdir / "resources/decoded/target/native/images.npy"
    metrics = workdir / "results/finetune/seed0/metrics.json"
    first = json.loads(metrics.read_text())
    with open(npy, "r+b") as handle:
        handle.truncate(npy.stat().st_size // 2)
    target = "results/finetune/seed0/metrics.json"
    # The target before --configfile (which takes every word after it as a config file).
    # Refused as the run starts (the jobs that would read them check them too, but only once Snakemake has removed
    # their outputs), naming the file and the command that decodes it again; the job's own check, which removes the
    # pair, is tested above.
    failed = run_snakemake(workdir, None, target, "--configfile", str(workdir / "config.yaml"), check=False)
    assert failed.returncode != 0 and jobs_run(failed.stdout) == [], failed.stdout[-3000:]
    assert f"decoded images {npy.relative_to(workdir)}: it has " in failed.stdout, failed.stdout[-3000:]
    assert json.loads(metrics.read_text()) == first  # nothing was removed
    command = f"snakemake --forcerun {npy.relative_to(workdir)}"
    assert f"make it again with --forcerun {npy.relative_to(workdir)}" in failed.stdout
    again = run_snakemake(workdir, None, target, *command.split()[1:], "--configfile", str(workdir / "config.yaml"))
    assert "decode" in jobs_run(again.stdout), again.stdout[-3000:]
    second = json.loads(metrics.read_text())
    timing = {"eval_seconds"}
    assert {k: v for k, v in second.items() if k not in timing} == {k: v for k, v in first.items() if k not in timing}


def head_config(workdir, weights_file):
    """feature_extract on cached features over an ImageFolder of ``workdir``, two seeds, weights from a file."""
    config = {
        "dataset": {"format": "imagefolder", "path": "photos", "val_fraction": 0.25, "test_fraction": 0.25},
        "weights": {"source": "path", "path": str(weights_file), "arch": "resnet18",
                    "preprocessing": {"resize_size": 32, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "device": "cpu"},
        "experiments": {"head": {"strategy": "feature_extract"}},
        # train: 2 threads of the 2 cores: the seeds train one after the other, the second reading the cache
        "seeds": [0, 1], "threads": {"train": 2, "data": 1}, "evaluate": {"device": "cpu"},
    }
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_cached_features_are_not_reused_once_the_images_are_decoded_anew(tmp_path):
    """The README's advice after editing an image in place: --forcerun split. The split file comes out the same
    (same names), the decode gives the new pixels, and the head must train on the new image's features, not on
    features cached from the old pixels: its model equals that of a fresh folder holding the edited images."""
    import torch
    import torchvision

    torch.manual_seed(0)
    weights_file = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights_file)
    models = [f"results/head/seed{seed}/model.pt" for seed in (0, 1)]
    work, fresh = tmp_path / "work", tmp_path / "fresh"
    make_images(work / "photos", {"a": 8, "b": 8})
    run_snakemake(work, head_config(work, weights_file), "--printshellcmds", *models)
    logs = [(work / f"results/logs/train/head/seed{seed}.log").read_text() for seed in (0, 1)]
    assert any("backbone features computed once" in log for log in logs), logs
    assert any("backbone features read from cache" in log for log in logs), "the seeds shared no cache"
    split_before = (work / "resources/splits/target.csv").read_bytes()

    edited = sorted((work / "photos" / "a").iterdir())[0]  # in place, same name: no folder changes
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(edited)
    again = run_snakemake(work, head_config(work, weights_file), "--forcerun", "split", "--printshellcmds", *models)
    assert {"split", "decode", "train"} <= set(jobs_run(again.stdout)), again.stdout[-3000:]
    assert (work / "resources/splits/target.csv").read_bytes() == split_before, "the split file was meant to stay"

    shutil.copytree(work / "photos", fresh / "photos")
    run_snakemake(fresh, head_config(fresh, weights_file), "--printshellcmds", *models)
    for model in models:
        ours, theirs = (torch.load(root / model, weights_only=False)["state_dict"] for root in (work, fresh))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), f"{model}: trained on stale cached features"


@pytest.mark.slow
def test_jobs_after_decode_never_open_an_image_file(tmp_path):
    """Once decoded, train, evaluate and export read only the decoded array: with every image file
    overwritten in place by bytes that are no image (same names, so the folders the split watches are
    unchanged) they still run, and give the same results as before."""
    images = tmp_path / "images"
    make_images(images / "target", {"circle": 12, "square": 12, "cross": 12})
    make_images(images / "source", {"a": 10, "b": 10, "c": 10}, seed=1)
    config = tiny_config(
        tmp_path / "run",
        dataset={"format": "imagefolder", "path": str(images / "target"), "classes": None, "val_fraction": 0.25,
                 "test_fraction": 0.25, "max_train_per_class": None, "max_val_per_class": None, "max_test_per_class": None},
        pretrain={"dataset": {"format": "imagefolder", "path": str(images / "source"), "classes": None,
                              "max_train_per_class": None, "max_val_per_class": None}},
        replace={"experiments": {"finetune": {"strategy": "finetune"}}},
    )
    run_snakemake(tmp_path / "run", config)
    first = json.loads((tmp_path / "run/results/finetune/seed0/metrics.json").read_text())
    for image in [p for p in images.rglob("*") if p.is_file()]:
        image.write_bytes(b"no longer an image")
    again = run_snakemake(tmp_path / "run", config, "--forcerun", "pretrain", "train")
    ran = sorted(set(jobs_run(again.stdout)))
    assert ran == ["all", "evaluate", "export_onnx", "pretrain", "summary", "train", "weights"], again.stdout[-3000:]
    second = json.loads((tmp_path / "run/results/finetune/seed0/metrics.json").read_text())
    assert second["n_test"] == first["n_test"] == 3 * 3


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("strategy", ["finetune", "feature_extract"])
def test_streaming_from_the_decoded_file_trains_exactly_like_the_in_memory_path(tiny_run, strategy):
    import torch

    from finetune.models import build_target_model
    from finetune.stages import load_split_tensors
    from finetune.store import StoredImages
    from finetune.tensors import Preprocessing
    from finetune.training import TrainOptions, fit
    from finetune.weights import load_state_dict, read_manifest

    manifest = read_manifest(tiny_run / "resources/weights/manifest.json")
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    split = tiny_run / "resources/splits/target.csv"
    decoded = (tiny_run / "resources/decoded/target/native/images.npy", tiny_run / "resources/decoded/target/native/info.json")
    in_memory, classes, _ = load_split_tensors(split, prep, 1, splits=("train", "val"))  # decoded here, from the images
    streamed, _, _ = load_split_tensors(split, prep, 1, splits=("train", "val"), decoded=decoded, stream=True)
    assert isinstance(streamed["train"].images, StoredImages)
    assert torch.equal(streamed["train"].images[torch.arange(len(streamed["train"].images))], in_memory["train"].images)
    source = load_state_dict(manifest["path"])
    opts = TrainOptions.from_dict({"strategy": strategy, "epochs": 2, "batch_size": 8, "lr": 0.01, "device": "cpu",
                                   "augment": strategy == "finetune"})
    results = []
    for data in (in_memory, streamed):
        torch.manual_seed(0)
        model = build_target_model("resnet18", len(classes), source, manifest["num_classes"])
        results.append(fit(model, data["train"], data["val"], prep, opts, num_classes=len(classes), log=lambda _: None))
    timing = {"img_per_s", "elapsed_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in results[0].history] == \
           [{k: v for k, v in r.items() if k not in timing} for r in results[1].history]
    for key, value in results[0].best_state.items():
        assert torch.equal(value, results[1].best_state[key]), key


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("augment", [False, True], ids=["crops", "stored_squares"])
def test_rows_read_for_the_gpu_are_the_decoded_images_viewed_as_stored_without_a_host_copy(tiny_run, augment,
                                                                                             monkeypatch):
    """What training copies to a GPU from a decoded file (finetune.training._stored_rows, _images_to), against the
    images decoded here from the image files: the same pixels, as a view of the rows as stored (channels last; the
    GPU lays them out), or contiguous where a whole split is moved."""
    import torch

    from finetune.stages import load_split_tensors
    from finetune.tensors import Preprocessing
    from finetune import training
    from finetune.training import _images_to, _stored_rows
    from finetune.weights import read_manifest

    prep = Preprocessing.from_dict(read_manifest(tiny_run / "resources/weights/manifest.json")["preprocessing"])
    split = tiny_run / "resources/splits/target.csv"
    decoded = (tiny_run / "resources/decoded/target/native/images.npy", tiny_run / "resources/decoded/target/native/info.json")
    uncropped = ("train",) if augment else ()
    in_memory = load_split_tensors(split, prep, 1, splits=("train",), decoded=decoded, uncropped=uncropped)[0]["train"]
    streamed = load_split_tensors(split, prep, 1, splits=("train",), decoded=decoded, stream=True,
                                  uncropped=uncropped)[0]["train"]
    if not augment:  # the centre crops: decoded here from the image files, not from the decoded file
        assert torch.equal(in_memory.images, load_split_tensors(split, prep, 1, splits=("train",))[0]["train"].images)
    index = torch.tensor([3, 0, 5, 1, 5])
    rows = _stored_rows(streamed.images, index)
    assert torch.equal(rows, in_memory.images[index])
    assert not rows.is_contiguous() and rows.permute(0, 2, 3, 1).is_contiguous(), rows.stride()
    # moved whole in parts of 3 images (the last one shorter): each laid out in place
    assert len(in_memory.images) % 3
    monkeypatch.setattr(training, "RESIDENT_COPY_BYTES", 3 * in_memory.images[0].numel())
    whole = _images_to(streamed.images, torch.device("cpu"))
    assert whole.is_contiguous() and torch.equal(whole, in_memory.images)


MEMORY_PROBE = """
import sys, torch
from pathlib import Path
from finetune.stages import load_split_tensors
from finetune.tensors import Preprocessing
split, npy, info, stream = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "stream"
data, _, _ = load_split_tensors(split, Preprocessing(64, 64, (0.5,) * 3, (0.25,) * 3), 1, splits=("train",),
                                decoded=(npy, info), stream=stream)
images, total = data["train"].images, 0
for index in torch.randperm(len(images)).split(64):  # one epoch in random order, as fit reads it
    total += int(images[index].float().mean() > 0)
# This process's own peak (VmHWM, in kB): ru_maxrss would carry over the parent's peak through fork + exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_memory_of_an_epoch_read_from_the_decoded_file_does_not_grow_with_the_images(tmp_path):
    """Peak memory of a process that reads one epoch of 4,000 and of 16,000 images (64 px: 49 and 197 MB
    decoded): streamed, nearly the same; held in memory (the control, so this test can fail), not."""
    import subprocess as sp

    peaks = {}
    for n in (4000, 16000):
        refs = [f"{FASHION_MNIST}/train-images-idx3-ubyte.gz#{i}" for i in range(n)]
        split = tmp_path / f"split{n}.csv"
        pd.DataFrame({"path": refs, "label": 0, "class_name": "a", "split": "train"}).to_csv(split, index=False)
        npy, info = tmp_path / f"d{n}.npy", tmp_path / f"d{n}.json"
        write_decoded(split, 64, 64, npy, info, threads=2, log=lambda _: None)
        for mode in ("stream", "memory"):
            out = sp.run([sys.executable, "-c", MEMORY_PROBE, str(split), str(npy), str(info), mode], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
            peaks[mode, n] = int(out.stdout.split()[-1]) / 1024  # MB
    assert peaks["stream", 16000] / peaks["stream", 4000] <= 1.1, peaks
    assert peaks["memory", 16000] - peaks["memory", 4000] >= 100, peaks  # the 148 MB more are really held there


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_weights_resize_filter_gives_torchvision_s_pixels_and_is_recorded(tmp_path, split_csv, interpolation):
    """The pixels of torchvision's own eval transform (Resize with the weights' filter on the PIL image,
    CenterCrop), one by one and in the decoded file; a file decoded with another filter is refused."""
    from torchvision import transforms

    from finetune.images import Preprocessing

    mode = transforms.InterpolationMode(interpolation)
    reference = transforms.Compose([transforms.Resize(64, interpolation=mode), transforms.CenterCrop(56)])
    img_path = photo(tmp_path / "p.png", 300, 200)  # 300x200 -> 96x64: both round the long side alike
    expected = np.asarray(reference(Image.open(img_path).convert("RGB")))
    assert np.array_equal(load_preprocessed(str(img_path), 64, 56, interpolation), expected)
    other = "bicubic" if interpolation == "bilinear" else "bilinear"
    assert not np.array_equal(load_preprocessed(str(img_path), 64, 56, other), expected), "the filter took no effect"
    assert Preprocessing.from_dict({"resize_size": 64, "crop_size": 56, "mean": [0] * 3, "std": [1] * 3,
                                    "interpolation": interpolation}).to_dict()["interpolation"] == interpolation

    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 40, 32, npy, info, log=lambda _: None, interpolation=interpolation)
    assert json.loads(info.read_text())["interpolation"] == interpolation
    frame = pd.read_csv(split_csv)
    centre = transforms.Compose([transforms.Resize(40, interpolation=mode), transforms.CenterCrop(32)])
    expected = np.stack([np.asarray(centre(Image.open(p).convert("RGB"))) for p in frame["path"]])
    decoded = open_decoded(npy, info, split_csv, (40, 32), interpolation)
    assert np.array_equal(decoded.read(np.arange(len(frame)), 32), expected)
    decoded.handle.close()
    with pytest.raises(DataError, match=f"{npy}.*resized with {interpolation} interpolation, {other} is needed"):
        open_decoded(npy, info, split_csv, (40, 32), other)


def test_a_preprocessing_record_without_a_filter_is_read_as_bilinear_as_it_was_made(tmp_path):
    """A weights manifest written before the resize filter was kept has no ``interpolation``: its images were all
    resized bilinear then, and are still (torchvision's Resize with BILINEAR, then CenterCrop)."""
    from torchvision import transforms

    from finetune.images import Preprocessing

    old = Preprocessing.from_dict({"resize_size": 64, "crop_size": 56, "mean": [0.5] * 3, "std": [0.25] * 3})
    img_path = photo(tmp_path / "p.png", 300, 200)
    reference = transforms.Compose([transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR),
                                    transforms.CenterCrop(56)])
    expected = np.asarray(reference(Image.open(img_path).convert("RGB")))
    assert np.array_equal(load_preprocessed(str(img_path), old.resize_size, old.crop_size, old.interpolation), expected)


def test_an_image_index_past_the_end_of_an_idx_file_is_refused_naming_it(tmp_path):
    """``<file>#<index>`` reads image ``index`` of an IDX file (gray, as RGB); one past its last image is refused
    with the file and its count, not an IndexError from numpy."""
    import struct

    pixels = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    path = tmp_path / "few-images-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB3I", 0, 0x08, 3, 3, 2, 2) + pixels.tobytes())
    assert np.array_equal(np.asarray(load_image(f"{path}#2")), np.repeat(pixels[2][..., None], 3, axis=2))
    with pytest.raises(DataError, match=rf"{path}#3: no image 3 in {path} \(3 images\)"):
        load_image(f"{path}#3")


def test_an_unsupported_resize_filter_is_refused_naming_it():
    from finetune.errors import ConfigError
    from finetune.images import Preprocessing

    with pytest.raises(ConfigError, match="interpolation 'lanczos' is not supported: use bilinear or bicubic"):
        Preprocessing.from_dict({"resize_size": 40, "crop_size": 32, "mean": [0] * 3, "std": [1] * 3,
                                 "interpolation": "lanczos"})


@pytest.mark.slow
def test_bicubic_weights_are_decoded_exported_and_predicted_bicubic(tmp_path):
    """Weights whose preprocessing says bicubic (as torchvision's EfficientNet and Swin weights do): the
    decoded images, the ONNX metadata and `predict` all use it; back to bilinear, the images decode again."""
    import onnxruntime as ort
    from torchvision import transforms

    from faults import save_state_dict
    from finetune.images import load_image, normalize
    from recompute import probabilities

    source = tmp_path / "source.pth"
    save_state_dict(source, "resnet18", 3)
    prep = {"resize_size": 40, "crop_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "interpolation": "bicubic"}
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    photos = [photo(incoming / f"{i}.png", 90 + 7 * i, 61 + 5 * i, seed=i) for i in range(3)]
    sideways = photo(incoming / "sideways.jpg", 88, 60, seed=9, orientation=6)  # a phone photo taken upright
    weights = {"source": "path", "path": str(source), "arch": "resnet18", "preprocessing": prep}
    config = tiny_config(tmp_path, weights=weights, replace={"experiments": {"finetune": {"strategy": "finetune"}}},
                         predict={"images": str(incoming), "experiment": "finetune", "seed": 0})
    run_snakemake(tmp_path, config)

    bicubic = transforms.Compose([transforms.Resize(40, interpolation=transforms.InterpolationMode.BICUBIC),
                                  transforms.CenterCrop(32)])
    info = json.loads((tmp_path / "resources/decoded/target/native/info.json").read_text())
    assert info["interpolation"] == "bicubic"
    decoded = open_decoded(tmp_path / "resources/decoded/target/native/images.npy",
                           tmp_path / "resources/decoded/target/native/info.json")
    frame = pd.read_csv(tmp_path / "resources/splits/target.csv")
    rows = decoded.rows("test")[:5]
    expected = np.stack([np.asarray(bicubic(load_image(ref))) for ref in frame["path"].iloc[rows]])
    assert np.array_equal(decoded.read(rows, 32), expected)
    decoded.handle.close()

    model = tmp_path / "results/finetune/seed0/model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert (metadata["interpolation"], metadata["orientation"]) == ("bicubic", "exif")
    # resized to 40, then cropped: the input the model takes (its graph's own shape) is the 32-px crop
    assert (metadata["resize_size"], metadata["crop_size"]) == ("40", "32")
    assert json.loads(metadata["input_size"]) == session.get_inputs()[0].shape[1:] == [3, 32, 32]
    upright = [Image.open(p).convert("RGB") for p in photos] + [Image.fromarray(UPRIGHT[6](as_stored(sideways)))]
    pixels = np.stack([np.asarray(bicubic(img)) for img in upright])
    logits = session.run(None, {session.get_inputs()[0].name: normalize(pixels, prep["mean"], prep["std"])})[0]
    table = pd.read_csv(tmp_path / "results/predictions/finetune/seed0/predictions.csv").set_index("path")
    for path, p in zip([*photos, sideways], probabilities(logits)):
        assert float(table.loc[str(path), "probability"]) == pytest.approx(max(p), abs=1e-5), path

    bilinear = tiny_config(tmp_path, weights={**weights, "preprocessing": {**prep, "interpolation": "bilinear"}},
                           replace={"experiments": {"finetune": {"strategy": "finetune"}}},
                           predict={"images": str(incoming), "experiment": "finetune", "seed": 0})
    assert {"decode", "train"} <= set(jobs_run(run_snakemake(tmp_path, bilinear, "-n").stdout))


@pytest.mark.parametrize("enum_name", ["EfficientNet_B0_Weights.IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V2"])
def test_the_decode_job_takes_torchvision_weights_sizes_and_filter_from_the_enum_alone(split_csv, tmp_path, enum_name):
    """No weights file needed: the enum's own transforms give the resize, crop and filter (no download)."""
    import torchvision

    from finetune.stages import decode_stage

    transform = torchvision.models.get_weight(enum_name).transforms()
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    decode_stage(split_csv, npy, info, threads=1, image_size=48, log=lambda _: None,
                 weights_sizes={"weights": "torchvision", "sizes": enum_name, "image_size": 48})
    record = json.loads(info.read_text())
    # image_size 48 replaces the crop and scales the resize with it (232/224 for ResNet50 V2, 256/224 else).
    expected_resize = round(48 * transform.resize_size[0] / transform.crop_size[0])
    assert (record["resize_size"], record["crop_size"]) == (expected_resize, 48)
    assert record["interpolation"] == transform.interpolation.value
    assert not list(tmp_path.glob("*.pth")), "nothing was downloaded"


def test_channel_stats_are_the_mean_and_sample_std_of_the_pixels_over_255():
    """Against numpy in float64 (ddof=1: the sample standard deviation), the pixels added in two parts; two pixels
    0 and 255 in a channel: mean 0.5, sample std sqrt(0.5) (the population's would be 0.5)."""
    from finetune.store import ChannelStats

    pixels = np.random.default_rng(0).integers(0, 256, (2, 7, 5, 3), dtype=np.uint8)
    stats = ChannelStats()
    for part in pixels:
        stats.add(part)
    mean, std = stats.result()
    flat = pixels.reshape(-1, 3).astype(np.float64) / 255
    assert mean == pytest.approx(flat.mean(axis=0).tolist(), rel=1e-12)
    assert std == pytest.approx(flat.std(axis=0, ddof=1).tolist(), rel=1e-9)
    two = ChannelStats()
    two.add(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))
    assert two.result() == (pytest.approx([0.5] * 3), pytest.approx([0.5 ** 0.5] * 3))


def test_channel_stats_of_images_in_memory_are_those_of_their_pixels_read_in_chunks():
    """What pretrain run alone (no decoded file) normalises with: the same figures of (N, 3, H, W) uint8
    images, read a few at a time, against numpy over every pixel of each channel at once."""
    import torch

    from finetune.stages import channel_stats

    images = np.random.default_rng(1).integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    images[:, 2] //= 3  # channels of other means
    mean, std = channel_stats(torch.from_numpy(images), chunk=2)
    flat = images.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64) / 255
    assert mean == pytest.approx(flat.mean(axis=0).tolist(), rel=1e-12)
    assert std == pytest.approx(flat.std(axis=0, ddof=1).tolist(), rel=1e-9)


def test_the_decode_records_the_channel_stats_of_the_train_images_centre_crops_alone(tmp_path):
    """The decode's channel_stats (pretrain and the scratch control normalise with them) are those of the train
    images' 8-px centre crops (torchvision's Resize and CenterCrop, here), not of the stored 10-px squares, nor of
    the val images (darker here). 300 images: the train rows run past the 256 a chunk of the decode holds."""
    from torchvision import transforms

    from finetune.store import CHUNK_IMAGES

    rng = np.random.default_rng(7)
    rows, crops = [], []
    crop = transforms.Compose([transforms.Resize(10), transforms.CenterCrop(8)])
    for i in range(300):
        split = "val" if i < 200 else "train"
        low, high = (0, 120) if split == "val" else (60, 256)
        pixels = rng.integers(low, high, (11 + i % 4, 13 + i % 3, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"path": str(path), "label": i % 2, "class_name": ("cat", "dog")[i % 2], "split": split})
        if split == "train":
            crops.append(np.asarray(crop(Image.fromarray(pixels))))
    assert 200 < CHUNK_IMAGES < 300  # the premise: the train rows span two chunks
    split_csv = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    info = write_decoded(split_csv, 10, 8, tmp_path / "images.npy", tmp_path / "info.json", channel_stats_of="train",
                         log=lambda _: None)
    flat = np.concatenate([c.reshape(-1, 3) for c in crops]).astype(np.float64) / 255
    stats = json.loads((tmp_path / "info.json").read_text())["channel_stats"]
    assert stats == info["channel_stats"] and (stats["split"], stats["crop_size"]) == ("train", 8)
    assert stats["mean"] == pytest.approx(flat.mean(axis=0).tolist(), rel=1e-9)
    assert stats["std"] == pytest.approx(flat.std(axis=0, ddof=1).tolist(), rel=1e-9)

    # A split file without train images has none to take them from: said, naming the file and the key
    val_only = tmp_path / "val_only.csv"
    pd.DataFrame(rows[:200]).to_csv(val_only, index=False)
    with pytest.raises(DataError, match=f"{val_only} has no train images: check dataset.classes and dataset.path"):
        write_decoded(val_only, 10, 8, tmp_path / "v.npy", tmp_path / "v.json", channel_stats_of="train",
                      log=lambda _: None)
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / "v.json").exists()


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("key", ["dataset", "pretrain.dataset"])
def test_a_split_without_val_images_stops_the_decode_naming_the_key_that_would_give_some(tmp_path, key):
    """An ImageFolder without a val/ folder and `val_fraction: 0` gives a split file without val images, which
    training needs: the decode job says so, naming the split file and the key (the target's or the source's of
    pretraining), and leaves no decoded images."""
    make_images(tmp_path / "data", {"cat": 6, "dog": 6})
    folder = {"format": "imagefolder", "path": str(tmp_path / "data"), "val_fraction": 0, "seed": 0}
    if key == "dataset":
        config = tiny_config(tmp_path, replace={"dataset": folder})
        split_csv, target = "resources/splits/target.csv", "resources/decoded/target/native/images.npy"
    else:
        config = tiny_config(tmp_path, replace={"pretrain": {**TINY_CONFIG["pretrain"], "dataset": folder}})
        split_csv, target = "resources/splits/source.csv", "resources/decoded/source/32/images.npy"
    result = run_snakemake(tmp_path, None, target, "--configfile", str(config), check=False)
    assert result.returncode != 0, result.stdout[-3000:]
    split = pd.read_csv(tmp_path / split_csv)
    assert "val" not in set(split["split"]) and len(split) == 12  # the premise
    assert (f"error: {split_csv} has no val images, and the jobs after decode need them (training chooses its best "
            f"epoch on them): {key}.val_fraction is 0") in result.stdout, result.stdout[-3000:]
    assert not list((tmp_path / "resources").glob("decoded/**/*.npy"))


def test_predict_lists_a_folder_s_images_sorted_by_path_hidden_ones_left_out(tmp_path):
    """predict.images as a folder: every image file below it, ordered by its path compared folder name by folder name
    (code points: uppercase before lowercase; `a/z.png` before `a.png`, as the folder `a` sorts before the file
    `a.png`), computed here with Python's tuple order; hidden files and folders and files of other formats left out
    (the others counted by extension)."""
    from finetune.deploy import list_images

    images = ["B.png", "a/z.png", "a.png", "b/c.png", "b/d/e.JPG"]
    for name in [*images, ".h/x.png", ".y.png", "b/.z.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not read here")
    listed, others = list_images(tmp_path)
    expected = sorted(images, key=lambda name: tuple(name.split("/")))
    assert [Path(ref).relative_to(tmp_path).as_posix() for ref, _ in listed] == expected
    assert expected[:4] == ["B.png", "a/z.png", "a.png", "b/c.png"]  # the order docs/predict.md shows
    assert others == {".txt": 1}


def test_each_split_s_rows_are_one_range_and_a_split_file_that_interleaves_them_is_refused():
    """The decoded file stores each split as one range of rows, [start, stop), from the split file's order; a split
    file whose rows of one split are not together (hand-made, or sorted by another column) would give a range that
    holds the other split's images: refused, naming the split."""
    names = ["train"] * 3 + ["val"] * 2 + ["test"]
    assert split_ranges(names) == {split: [names.index(split), len(names) - names[::-1].index(split)]
                                   for split in ("train", "val", "test")}
    with pytest.raises(DataError, match="the rows of split 'train' are not contiguous"):
        split_ranges(["train", "val", "train"])


def test_decode_run_alone_refuses_sizes_it_would_not_decode_at(tmp_path):
    """decode.py run alone: --weights-sizes with a key one letter off, pretrain's size as a text, an image_size other than
    --image-size's, a size below the schema's 8, or no size at all: each refused naming what to give (a key one letter off
    decoded at the weights' own size without a word; neither given blamed the source dataset's pretrain.image_size)."""
    from finetune.errors import ConfigError
    from finetune.stages import decode_stage

    split = tmp_path / "split.csv"
    split.write_text("path,label,split\n")
    cases = [({"weights": "pretrain", "sizes": 32, "imagesize": 48}, 48, "unknown key(s) imagesize"),
             ({"weights": "pretrain", "sizes": "32"}, None, "sizes is pretrain.image_size, a whole number, at least 8, not '32'"),
             ({"weights": "pretrain", "sizes": 32, "image_size": "48"}, None, "names image_size '48', and --image-size is not given"),
             (None, 4, "--image-size 4: at least 8 pixels"),
             (None, None, "the sizes to decode at are not given: --manifest or --weights-sizes")]
    for weights_sizes, image_size, said in cases:
        with pytest.raises(ConfigError, match=re.escape(said)):
            decode_stage(split, tmp_path / "x.npy", tmp_path / "x.json", 1, image_size=image_size,
                         weights_sizes=weights_sizes, log=lambda _: None)
        assert not (tmp_path / "x.npy").exists()
    # weights' own preprocessing may crop below 8 (the schema's image_size minimum is not theirs): not refused for it
    small = {"weights": "preprocessing", "sizes": {"resize_size": 6, "crop_size": 6}, "image_size": "native"}
    with pytest.raises(Exception) as other:
        decode_stage(split, tmp_path / "x.npy", tmp_path / "x.json", 1, weights_sizes=small, log=lambda _: None)
    assert "at least 8" not in str(other.value), other.value


def test_an_exif_block_that_reads_turns_the_photo_and_one_that_does_not_leaves_it_as_stored(tmp_path):
    """Two WebPs of a red-left, blue-right picture tagged Orientation 6: one whose EXIF block also holds a rational of
    0/0 (ImageOps.exif_transpose turned the pixels, then failed writing the block again: the decode had kept them
    turned while saying it took the image as stored), one whose block's TIFF header is cut (no tag reads). The first
    decodes turned, the second as stored: each against PIL's own transpose of the stored pixels."""
    import struct
    from io import BytesIO

    from finetune.images import load_image

    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:, :20] = (200, 10, 10)
    stored[:, 20:] = (10, 10, 200)
    tiff = (b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
            + struct.pack("<HHII", 0x9000, 5, 3, 38) + struct.pack("<I", 0) + b"\x00" * 24)  # 3 rationals of 0/0
    for name, block in (("nan.webp", tiff), ("cut.webp", b";" + tiff[1:])):
        data = BytesIO()
        Image.fromarray(stored).save(data, "WEBP", exif=b"Exif\x00\x00" + block, lossless=True)
        (tmp_path / name).write_bytes(data.getvalue())
    # and an Orientation written as a rational, 6/1 (PIL reads 6.0, and exif_transpose turns by it)
    rational = (b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 5, 1, 26) + struct.pack("<I", 0)
                + struct.pack("<II", 6, 1))
    data = BytesIO()
    Image.fromarray(stored).save(data, "WEBP", exif=b"Exif\x00\x00" + rational, lossless=True)
    (tmp_path / "rational.webp").write_bytes(data.getvalue())
    turned = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "nan.webp"))), turned)
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "rational.webp"))), turned)
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "cut.webp"))), stored)
