"""Near duplicates across splits (finetune.nearduplicates): the same picture saved again, resized or
converted, in two splits. Found pairs are checked against a plain pairwise computation, and on
Fashion-MNIST against the full-size images: a thumbnail is a mean of blocks, and a mean never spreads
two images further apart than they are (Jensen), so every pair of images within MAX_RMS - 1 gray levels
(RMS) at full size must be found, whatever the thumbnails' rounding."""

import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from finetune.data import SplitSpec, make_split, read_idx, split_ref
from finetune.errors import DataError
from finetune.images import idx_thumbnails, inspect_image, load_image, thumbnail
from finetune.nearduplicates import MAX_RMS, find_near_duplicates
from helpers import FASHION_MNIST, REPO


def scene(path, seed: int, size=(320, 240)):
    """A picture of its own: a background and a few shapes, colours and places drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 60))
        w, h = int(rng.integers(30, 120)), int(rng.integers(30, 120))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image.save(path, quality=92)
    return path


def copies_of(original, folder):
    """The ways the same picture comes back under other bytes: saved again at a lower JPEG quality, at
    half the size as PNG, in gray levels."""
    image = Image.open(original)
    image.save(folder / f"{original.stem}_q70.jpg", quality=70)
    image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(folder / f"{original.stem}_half.png")
    image.convert("L").save(folder / f"{original.stem}_gray.jpg", quality=90)
    return [folder / f"{original.stem}_{kind}" for kind in ("q70.jpg", "half.png", "gray.jpg")]


def pairwise(split: pd.DataFrame, thumbnails: np.ndarray) -> dict:
    """Each row's nearest row in each other split it must not share an image with, where within MAX_RMS:
    {(path in the earlier split, path in the later): rms}, by a loop over every pair. The difference counts
    the 128 colour cells only where both images have colour (a colour cell more than 2 levels from 128)."""
    order = {"train": 0, "val": 1, "test": 2}
    values = thumbnails.astype(float)
    coloured = [bool((np.abs(v[256:] - 128) > 2).any()) for v in values]
    nearest = {}
    for i, j in product(range(len(split)), repeat=2):
        a, b = split.iloc[i], split.iloc[j]
        if a["split"] != b["split"]:
            cells = slice(None) if coloured[i] and coloured[j] else slice(0, 256)
            rms = float(np.sqrt(np.mean((values[i][cells] - values[j][cells]) ** 2)))
            key = (a["path"], b["split"])
            if rms <= MAX_RMS and rms < nearest.get(key, (None, np.inf))[1]:
                nearest[key] = (b["path"], rms)
    paths = dict(zip(split["path"], split["split"]))
    oriented = {}
    for (path, _), (copy, rms) in nearest.items():
        oriented[(path, copy) if order[paths[path]] < order[paths[copy]] else (copy, path)] = rms
    return oriented


def exact_luma_cells(image) -> np.ndarray:
    """The 16x16 luma cells of ``image`` (a PIL image, or its luma as an array) as exact area means, worked out
    another way than the code's: each pixel repeated 16 times down, then across, so that the 16 equal cells cut
    whole (repeated) pixels and each is a plain mean (down first, then across: a mean of means of equal parts)."""
    y = np.asarray(image.convert("YCbCr"), dtype=np.float64)[..., 0] if isinstance(image, Image.Image) else \
        np.asarray(image, dtype=np.float64)
    h, w = y.shape
    rows = np.repeat(y, 16, axis=0).reshape(16, h, w).mean(axis=1)  # (16, w)
    return np.repeat(rows, 16, axis=1).reshape(16, 16, w).mean(axis=2).reshape(-1)


@pytest.mark.parametrize("size", [(300, 260), (517, 389), (640, 480), (259, 1000)])
def test_a_large_picture_s_thumbnail_is_the_area_means_of_its_cells(tmp_path, size):
    """A picture large enough to be block-averaged first (256 px and more) still gets each cell's mean of the area
    it covers: within 1.5 gray levels RMS of the exact means (the blocks at the edge, where the block size does not
    divide the picture, put single cells a few levels off; a coarser first pass put them 10-30 off)."""
    for seed in range(3):
        image = Image.open(scene(tmp_path / f"scene{seed}.png", seed, size=size))
        difference = thumbnail(image)[:256].astype(float) - exact_luma_cells(image)
        assert np.sqrt(np.mean(difference ** 2)) <= 1.5, (size, seed)


def test_the_split_check_s_thumbnail_of_a_jpeg_is_nearly_the_full_decode_s(tmp_path):
    """The check decodes a JPEG at a reduced scale, but never so far that the thumbnail's cells lack pixels: for
    JPEGs 48 to 480 px high, its thumbnail is within 2 gray levels RMS of the thumbnail of the full decode (at 1/8
    scale, 56-200 px pictures came out 2-9 levels off, as far as a copy may be from its original)."""
    for height in (48, 64, 100, 150, 200, 300, 480):
        for seed in range(3):
            picture = Image.open(scene(tmp_path / f"scene{seed}.jpg", seed, size=(640, 480)))
            path = tmp_path / f"small{seed}_{height}.jpg"
            picture.resize((height * 4 // 3, height), Image.Resampling.LANCZOS).save(path, quality=90)
            full = thumbnail(Image.open(path).convert("RGB")).astype(float)
            checked = inspect_image(str(path))[1].astype(float)
            assert np.sqrt(np.mean((checked[:256] - full[:256]) ** 2)) <= 2.0, (height, seed)


@pytest.mark.fashion_mnist
def test_fashion_mnist_thumbnails_made_a_file_at_once_are_those_of_each_image_decoded_alone():
    """The split makes Fashion-MNIST's thumbnails a whole IDX file at once: each is the thumbnail of the image
    decoded alone (luma within a level), gray (every colour cell 128, so that two gray images are compared on
    their luma alone), and its luma the exact area means of the 28x28 pixels."""
    path = str(Path(FASHION_MNIST) / "t10k-images-idx3-ubyte.gz")
    indices = [0, 1, 7, 123, 4567, 9999]
    together = idx_thumbnails(path, indices)
    for row, index in zip(together, indices):
        alone = thumbnail(load_image(f"{path}#{index}"))
        assert np.abs(row[:256].astype(int) - alone[:256]).max() <= 1, index
        assert (row[256:] == 128).all() and (alone[256:] == 128).all(), index
        exact = exact_luma_cells(read_idx(path)[index])  # a gray image's luma is its gray level
        assert np.abs(row[:256] - exact).max() <= 0.5 + 1e-9, index


def test_a_picture_saved_again_resized_or_in_gray_is_found_in_another_split_and_other_pictures_are_not(tmp_path):
    originals = [scene(tmp_path / f"photo{i}.jpg", seed=i) for i in range(6)]
    copies = {o: copies_of(o, tmp_path) for o in originals[:2]}
    rows = [(str(originals[0]), "test"), (str(originals[1]), "val"), *((str(o), "train") for o in originals[2:4]),
            *((str(o), "test") for o in originals[4:])]
    rows += [(str(c), "train") for c in copies[originals[0]]] + [(str(copies[originals[1]][0]), "train"),
                                                                 (str(copies[originals[1]][1]), "val")]  # same split: no leak
    split = pd.DataFrame(rows, columns=["path", "split"]).assign(class_name="any")
    thumbnails = np.stack([inspect_image(p)[1] for p in split["path"]])

    found = find_near_duplicates(split, thumbnails)

    expected = {(str(c), str(originals[0])) for c in copies[originals[0]]} | {(str(copies[originals[1]][0]), str(originals[1]))}
    assert {(f["path"], f["copy_of"]) for f in found} >= expected
    independent = pairwise(split, thumbnails)
    assert {(f["path"], f["copy_of"]): f["rms"] for f in found} == pytest.approx({k: round(v, 2) for k, v in independent.items()}, abs=0.011)
    assert all(f["split"] != f["copy_split"] for f in found)


def test_copies_of_small_pictures_saved_as_jpeg_are_found(tmp_path):
    """A 40x30 picture and its copies as JPEG, at the same size and at twice it: a JPEG decoded at 1/8 scale would
    be 5x4 or 10x8 pixels, fewer than the 16x16 cells compared, and its copies would go unseen."""
    originals = []
    for i in range(4):
        small = Image.open(scene(tmp_path / f"big{i}.jpg", seed=10 + i)).resize((40, 30), Image.Resampling.LANCZOS)
        small.save(tmp_path / f"small{i}.png")
        originals.append(tmp_path / f"small{i}.png")
    copies = []
    for original in originals[:2]:
        image = Image.open(original)
        image.save(tmp_path / f"{original.stem}_q85.jpg", quality=85)
        image.resize((80, 60), Image.Resampling.BICUBIC).save(tmp_path / f"{original.stem}_double.jpg", quality=85)
        copies += [(tmp_path / f"{original.stem}_q85.jpg", original), (tmp_path / f"{original.stem}_double.jpg", original)]
    rows = [(str(o), "test") for o in originals] + [(str(c), "train") for c, _ in copies]
    split = pd.DataFrame(rows, columns=["path", "split"]).assign(class_name="any")
    thumbnails = np.stack([inspect_image(p)[1] for p in split["path"]])

    found = find_near_duplicates(split, thumbnails)

    assert {(f["path"], f["copy_of"]) for f in found} == {(str(c), str(o)) for c, o in copies}
    independent = pairwise(split, thumbnails)
    assert {(f["path"], f["copy_of"]): f["rms"] for f in found} == pytest.approx({k: round(v, 2) for k, v in independent.items()}, abs=0.011)


def test_a_gray_copy_with_a_faint_colour_cast_is_still_a_gray_copy(tmp_path):
    """A colour picture and its gray copy with a faint cast (red +1, blue -1 on every pixel: a print scanned back,
    say), whose colour cells are a level from gray's 128: gray within the 2 levels allowed, so compared on luma
    alone and found; counted as colour, its colour cells would put it tens of levels from the original."""
    originals = [scene(tmp_path / f"photo{i}.jpg", seed=i) for i in range(3)]
    gray = np.asarray(Image.open(originals[0]).convert("L"), dtype=np.int16)
    cast = np.stack([gray + 1, gray, gray - 1], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(cast).save(tmp_path / "cast.png")
    split = pd.DataFrame({"path": [str(p) for p in originals] + [str(tmp_path / "cast.png")],
                          "split": ["test"] * 3 + ["train"], "class_name": "any"})
    thumbnails = np.stack([inspect_image(p)[1] for p in split["path"]])
    assert 1 <= np.abs(thumbnails[3, 256:].astype(int) - 128).max() <= 2  # not quite gray, as meant
    found = find_near_duplicates(split, thumbnails)
    assert [(f["path"], f["copy_of"]) for f in found] == [(str(tmp_path / "cast.png"), str(originals[0]))]
    assert {(f["path"], f["copy_of"]): f["rms"] for f in found} == pytest.approx(pairwise(split, thumbnails), abs=0.011)


def test_pictures_alike_but_for_the_colour_of_a_small_patch_are_not_paired(tmp_path):
    """The same gray picture with a small patch of one colour or of another of the same luma: the same in gray,
    and colour in a few cells only (most cells gray): still colour pictures, compared on their colour too."""
    def patched(path, colour):
        image = Image.new("RGB", (256, 256), (120, 120, 120))
        ImageDraw.Draw(image).rectangle([96, 96, 143, 143], fill=colour)
        image.save(path)
        return str(path)

    red = (200, 60, 90)
    y = 0.299 * red[0] + 0.587 * red[1] + 0.114 * red[2]
    green = (40, int(round((y - 0.299 * 40 - 0.114 * 200) / 0.587)), 200)  # the same luma (ITU-R 601)
    split = pd.DataFrame({"path": [patched(tmp_path / "red.png", red), patched(tmp_path / "green.png", green)],
                          "split": ["test", "train"], "class_name": "any"})
    thumbnails = np.stack([inspect_image(p)[1] for p in split["path"]])
    assert np.abs(thumbnails[0, :256].astype(int) - thumbnails[1, :256]).max() <= 2  # the same in gray
    assert find_near_duplicates(split, thumbnails) == [] and pairwise(split, thumbnails) == {}


def test_pictures_of_the_same_gray_levels_in_other_colours_are_not_paired(tmp_path):
    """A red circle on green and a circle of another colour on another background, of the same luma cell for
    cell: the same in gray, two pictures in colour (a T-shirt in two colours, say)."""
    def circle(path, background, disc):
        image = Image.new("RGB", (300, 300), background)
        ImageDraw.Draw(image).ellipse([60, 60, 240, 240], fill=disc)
        image.save(path, quality=95)
        return str(path)

    def same_luma(rgb, red):  # another colour with the same Y (ITU-R 601), by solving for its green
        y = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        blue = 255 - rgb[2]
        return red, int(round((y - 0.299 * red - 0.114 * blue) / 0.587)), blue

    one = circle(tmp_path / "one.jpg", (150, 200, 40), (220, 120, 90))
    other = circle(tmp_path / "other.jpg", same_luma((150, 200, 40), 200), same_luma((220, 120, 90), 90))
    gray = tmp_path / "one_gray.png"
    Image.open(one).convert("L").save(gray)
    split = pd.DataFrame({"path": [one, other, str(gray)], "split": ["test", "train", "train"], "class_name": "circle"})
    thumbnails = np.stack([inspect_image(p)[1] for p in split["path"]])
    assert np.abs(thumbnails[0, :256].astype(int) - thumbnails[1, :256]).max() <= 3  # the same in gray
    found = find_near_duplicates(split, thumbnails)
    assert [(f["path"], f["copy_of"]) for f in found] == [(str(gray), one)]  # the gray copy only
    assert {(f["path"], f["copy_of"]): f["rms"] for f in found} == pytest.approx(pairwise(split, thumbnails), abs=0.011)


def test_the_split_report_lists_them_and_leave_out_removes_the_train_copy_keeping_test_as_given(tmp_path):
    """Through the split job's own script, from a CSV manifest whose split column puts a picture in test
    and its copies in the training pool."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = ["path,label,split"]
    for name, seeds in (("cats", range(0, 8)), ("dogs", range(10, 18))):
        for seed in seeds:
            lines.append(f"{scene(folder / f'{name}{seed}.jpg', seed).name},{name},{'test' if seed in (0, 10) else ''}")
    leaked = copies_of(folder / "cats0.jpg", folder)[:2]
    lines += [f"{c.name},cats," for c in leaked]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")

    def split_job(mode):
        dataset = {"format": "csv", "path": str(folder / "manifest.csv"), "val_fraction": 0.2, "near_duplicates": mode}
        out = tmp_path / str(mode)
        result = subprocess.run([sys.executable, str(REPO / "workflow/scripts/split.py"), "--dataset", json.dumps(dataset),
                                 "--out", str(out / "split.csv"), "--report", str(out / "report.json")],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return pd.read_csv(out / "split.csv"), json.loads((out / "report.json").read_text()), result.stdout

    split, report, log = split_job("report")
    leaking = split[split["path"].isin({str(c) for c in leaked}) & (split["split"] != "test")]
    assert len(leaking) == 2  # both copies are in the training pool (train or val)
    pairs = {(p["path"], p["copy_of"]) for p in report["near_duplicates"]["pairs"]}
    assert pairs == {(str(c), str(folder / "cats0.jpg")) for c in leaked}
    assert "near duplicates across splits: 2 image(s)" in log and leaked[0].name in log and "leave_out" in log

    split, report, log = split_job("leave_out")
    assert not split["path"].isin({str(c) for c in leaked}).any()
    test = set(split.loc[split["split"] == "test", "path"])
    assert test == {str(folder / "cats0.jpg"), str(folder / "dogs10.jpg")}  # the manifest's test rows, unchanged
    assert report["near_duplicates"]["left_out"] and len(report["near_duplicates"]["pairs"]) == 2
    assert sum(report["counts"]["cats"].values()) == 8 and sum(report["counts"]["dogs"].values()) == 8

    split, report, log = split_job(False)
    assert split["path"].isin({str(c) for c in leaked}).sum() == 2
    assert report["near_duplicates"] == {"checked": False, "pairs": []}
    assert "not checked (dataset.near_duplicates: false)" in log


def test_a_near_copy_under_another_label_is_said_apart_in_the_split_s_log(tmp_path):
    """A picture saved again under another label (a dog's photo filed as a cat) was listed among the ordinary pairs
    only; identical files under two labels stop the split. The log says such pairs apart, naming both labels."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = ["path,label"] + [f"{scene(folder / f'{name}{seed}.jpg', seed).name},{name}"
                              for name, seeds in (("cats", range(0, 8)), ("dogs", range(10, 18))) for seed in seeds]
    misfiled = copies_of(folder / "dogs12.jpg", folder)[0]
    lines.append(f"{misfiled.name},cats")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    dataset = {"format": "csv", "path": str(folder / "m.csv"), "val_fraction": 0.25, "test_fraction": 0.25, "seed": 1}
    result = subprocess.run([sys.executable, str(REPO / "workflow/scripts/split.py"), "--dataset", json.dumps(dataset),
                             "--out", str(tmp_path / "split.csv"), "--report", str(tmp_path / "report.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    split = pd.read_csv(tmp_path / "split.csv").set_index("path")["split"]
    original, copy = str(folder / "dogs12.jpg"), str(misfiled)
    assert split[original] != split[copy], "the case: the two in different splits"
    earlier, later = sorted((original, copy), key=lambda p: ["train", "val", "test"].index(split[p]))
    label = {original: "dogs", copy: "cats"}
    assert (f"of them, 1 pair(s) under two labels, one of each likely mislabelled (identical files under two labels "
            f"stop the split; near copies may be two pictures alike): {earlier} ({label[earlier]}) and {later} "
            f"({label[later]})") in result.stdout, result.stdout


def test_leave_out_removes_the_earlier_copies_and_moves_nothing_else(tmp_path):
    """No split given: the split is drawn. leave_out drew it again without the copies, which drew another test
    split (and new pairs with it): `report` and `leave_out` runs were scored on different test images. Now
    leave_out's split is report's without the earlier copy of each pair, row for row."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = ["path,label"] + [f"{scene(folder / f'{name}{seed}.jpg', seed).name},{name}"
                              for name, seeds in (("cats", range(0, 12)), ("dogs", range(20, 32))) for seed in seeds]
    lines += [f"{c.name},cats" for c in copies_of(folder / "cats3.jpg", folder)]
    lines += [f"{c.name},dogs" for c in copies_of(folder / "dogs25.jpg", folder)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    dataset = {"format": "csv", "path": str(folder / "m.csv"), "val_fraction": 0.2, "test_fraction": 0.25, "seed": 3}
    reported, report = make_split(SplitSpec.from_config({**dataset, "near_duplicates": "report"}))
    earlier = {p["path"] for p in report["near_duplicates"]["pairs"]}
    assert earlier, "the case: copies across splits"
    left, _ = make_split(SplitSpec.from_config({**dataset, "near_duplicates": "leave_out"}))
    expected = reported[~reported["path"].isin(earlier)].reset_index(drop=True)
    pd.testing.assert_frame_equal(left, expected)
    # and none is left: no image of a split has a near copy in another (compared pair by pair here)
    assert pairwise(left, np.stack([inspect_image(p)[1] for p in left["path"]])) == {}


@pytest.mark.fashion_mnist
def test_every_fashion_mnist_pair_close_at_full_size_is_found_in_the_demo_s_source_split():
    import yaml

    demo = yaml.safe_load((REPO / "config/config.yaml").read_text())["pretrain"]["dataset"]
    spec = SplitSpec.from_config({"format": "fashion-mnist", "path": str(FASHION_MNIST), **demo})
    split, report = make_split(spec, threads=2)
    assert report["near_duplicates"]["checked"]
    reported = {(p["path"], p["copy_of"]) for p in report["near_duplicates"]["pairs"]}

    pixels = np.stack([read_idx(split_ref(p)[0])[split_ref(p)[1]] for p in split["path"]]).reshape(len(split), -1)
    values = pixels.astype(np.float64)
    norms = (values ** 2).sum(1)
    close = set()
    for later, earlier in (("train", "test"), ("val", "test"), ("train", "val")):
        a, b = np.flatnonzero(split["split"] == later), np.flatnonzero(split["split"] == earlier)
        rms = np.sqrt(np.maximum(norms[a, None] + norms[None, b] - 2 * values[a] @ values[b].T, 0) / values.shape[1])
        close |= {(split["path"].iloc[a[i]], split["path"].iloc[b[j]]) for i, j in zip(*np.nonzero(rms <= MAX_RMS - 1))}
    assert close, "the demo's source split has pictures within 4 gray levels of one in another split"
    assert close <= reported
    for path, copy_of in reported:  # and what is reported is the same picture: at most a few gray levels apart
        one, other = (read_idx(split_ref(p)[0])[split_ref(p)[1]].astype(float) for p in (path, copy_of))
        assert np.abs(one - other).mean() <= 3, (path, copy_of)


def test_a_split_of_near_blank_images_lists_each_image_once_not_every_pair():
    """300 train and 300 test images all within a gray level of each other: 90,000 close pairs, but each
    image is listed with its nearest image of the other split only."""
    rng = np.random.default_rng(0)
    thumbnails = np.concatenate([100 + rng.integers(0, 2, (600, 256)), np.full((600, 128), 128)], axis=1).astype(np.uint8)
    split = pd.DataFrame({"path": [f"img{i}.png" for i in range(600)], "class_name": "blank",
                          "split": ["train"] * 300 + ["test"] * 300})
    found = find_near_duplicates(split, thumbnails)
    assert 300 <= len(found) <= 600
    assert {f["path"] for f in found} == {f"img{i}.png" for i in range(300)}
    assert {f["copy_of"] for f in found} == {f"img{i}.png" for i in range(300, 600)}
    luma = thumbnails[:, :256].astype(float)
    for f in found:  # the nearest, of one of the two: no image of the other split is closer to it
        i, j = int(f["path"][3:-4]), int(f["copy_of"][3:-4])
        from_train = np.sqrt(((luma[300:] - luma[i]) ** 2).mean(1)).min()
        from_test = np.sqrt(((luma[:300] - luma[j]) ** 2).mean(1)).min()
        assert abs(f["rms"] - from_train) <= 0.006 or abs(f["rms"] - from_test) <= 0.006, (f, from_train, from_test)


def test_a_test_image_whose_copy_is_nearer_another_test_image_is_still_listed():
    """One train picture, saved twice into test: once as it is, once a little changed. The train image's
    nearest test image is the first; the second test image must be listed too, with the train image as its
    copy, since evaluation leaves every test image with a copy out of its figure without copies."""
    rng = np.random.default_rng(1)
    original = rng.integers(40, 200, 256)
    changed = original + rng.choice([-3, 3], 256)  # 3 levels RMS
    other = rng.integers(40, 200, 256)
    luma = np.stack([original, original, changed, other])
    thumbnails = np.concatenate([luma, np.full((4, 128), 128)], axis=1).astype(np.uint8)
    split = pd.DataFrame({"path": ["train.png", "test_same.png", "test_changed.png", "test_other.png"],
                          "split": ["train", "test", "test", "test"], "class_name": "any"})
    found = find_near_duplicates(split, thumbnails)
    assert [(f["path"], f["copy_of"], f["rms"]) for f in found] == [("train.png", "test_same.png", 0.0),
                                                                     ("train.png", "test_changed.png", 3.0)]
    assert {(f["path"], f["copy_of"]): f["rms"] for f in found} == pytest.approx(pairwise(split, thumbnails), abs=0.011)


def test_a_class_left_too_small_by_leave_out_names_each_file_left_out_once(tmp_path):
    """A picture in test and two copies of it in the pool, drawn into train and val: three pairs (the train
    copy is near both others), two files left out, which leave a split without an image of the class. The
    message counts and names files, not pairs."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = ["path,label,split"] + [f"{scene(folder / f'cats{seed}.jpg', seed).name},cats,{'test' if seed == 0 else ''}"
                                    for seed in range(8)]
    picture = scene(folder / "rare_p.jpg", 50)
    Image.open(picture).resize((160, 120)).save(folder / "rare_half.png")
    Image.open(picture).convert("L").save(folder / "rare_gray.jpg", quality=90)
    scene(folder / "rare_q.jpg", 51)
    lines += ["rare_p.jpg,rare,test", "rare_half.png,rare,", "rare_gray.jpg,rare,", "rare_q.jpg,rare,"]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    dataset = {"format": "csv", "path": str(folder / "m.csv"), "val_fraction": 0.3, "seed": 0}
    split, report = make_split(SplitSpec.from_config({**dataset, "near_duplicates": "report"}))
    pairs = report["near_duplicates"]["pairs"]
    left = {p["path"] for p in pairs if p["class_name"] == "rare"}
    assert left == {str(folder / "rare_half.png"), str(folder / "rare_gray.jpg")} and len(pairs) == 3  # the case
    rare = split[(split["class_name"] == "rare") & ~split["path"].isin(left)]
    emptied = [which for which in ("train", "val") if which not in set(rare["split"])]
    assert emptied, "the case: a split of the class holds only copies"
    with pytest.raises(DataError) as refused:
        make_split(SplitSpec.from_config({**dataset, "near_duplicates": "leave_out"}))
    message = str(refused.value)
    assert all(f"class 'rare' has no {which} image left once its near duplicates" in message for which in emptied), message
    assert "(dataset.near_duplicates: leave_out): 2 of its files were left out: " in message, message
    assert all(message.count(f"{path} (a near duplicate of") == 1 for path in left), message
