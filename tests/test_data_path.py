"""The data path: draft-mode decoding of large JPEGs, and splits decoded once into a file-backed array."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from finetune.errors import DataError
from finetune.images import load_image, load_preprocessed, preprocess
from finetune.store import open_decoded, prefetch, write_decoded
from helpers import REPO


def photo(path, width, height, seed=0):
    """A smooth photo-like RGB image (gradients and waves plus a little noise), saved as ``path``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x / 16 + 40 * np.sin(y / 50)) % 256, (y / 12) % 256, ((x + y) / 20) % 256], -1)
    pixels = np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=92)
    return path


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


def test_small_images_and_other_formats_decode_exactly_as_before(tmp_path):
    small = photo(tmp_path / "small.jpg", 300, 240)  # not 2x larger than 224: no reduced decode possible
    png = tmp_path / "big.png"
    Image.open(photo(tmp_path / "tmp.jpg", 1200, 900)).save(png)
    for path in (small, png):
        assert np.array_equal(load_preprocessed(str(path), 256, 224), preprocess(load_image(str(path)), 256, 224))


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


def test_decoded_split_holds_every_image_as_decoded_one_by_one(split_csv, tmp_path):
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 40, 32, npy, info, threads=2, log=lambda _: None)
    decoded = open_decoded(npy, info, split_csv, (40, 32))
    frame = pd.read_csv(split_csv)
    expected = np.stack([preprocess(Image.open(p).convert("RGB"), 40, 32) for p in frame["path"]])
    rows = np.array([7, 0, 23, 12, 12, 5])
    assert np.array_equal(decoded.read(rows), expected[rows])
    assert np.array_equal(decoded.read(np.arange(24)), expected)
    assert list(decoded.rows("val")) == list(range(12, 18))
    assert list(decoded.labels) == list(frame["label"])


def test_a_truncated_or_stale_decoded_file_is_refused_naming_it(split_csv, tmp_path):
    npy, info = tmp_path / "d.npy", tmp_path / "d.json"
    write_decoded(split_csv, 32, 32, npy, info, log=lambda _: None)
    with pytest.raises(DataError, match="32 and 32 are needed|are needed"):
        open_decoded(npy, info, split_csv, (40, 32))
    frame = pd.read_csv(split_csv)
    frame.iloc[::-1].to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match="another version"):
        open_decoded(npy, info, tmp_path / "other.csv")
    with open(npy, "r+b") as handle:
        handle.truncate(npy.stat().st_size - 100)
    with pytest.raises(DataError, match=f"{npy}.*cut short"):
        open_decoded(npy, info, split_csv)


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
