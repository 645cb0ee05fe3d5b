"""How the split rule draws (README, "How the split is drawn"): each image's place in the draw is a hash of the
seed and its path below the dataset's folder, so an image's split does not depend on the other classes, on
where the dataset lies, or on the images added beside it (beyond the edges the fractions move)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from faults import make_images, run_split
from helpers import FASHION_MNIST


def split_of(out_dir: Path, root: Path) -> dict[str, str]:
    """{path below ``root``: split} of the split file the rule wrote."""
    frame = pd.read_csv(out_dir / "split.csv")
    return {Path(p).relative_to(root).as_posix(): s for p, s in zip(frame["path"], frame["split"])}


def documented_split(root: Path, seed: int, val_fraction: float, test_fraction: float, max_train: int | None) -> dict:
    """The README's rule, computed here from its words alone: per class folder, the images in the order of the first
    8 bytes (big-endian) of BLAKE2b of ``<seed>/<path below the dataset's folder>``; test takes the first
    round(n x test_fraction) (at least one), val the next round(n x val_fraction), train the rest (its first
    ``max_train``)."""
    expected = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        keys = sorted(f"{folder.name}/{f.name}" for f in folder.iterdir())
        order = sorted(keys, key=lambda key: int.from_bytes(
            hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "big"))
        n_test, n_val = (max(int(round(len(keys) * f)), 1) for f in (test_fraction, val_fraction))
        train = order[n_test + n_val:]
        expected.update({key: "test" for key in order[:n_test]})
        expected.update({key: "val" for key in order[n_test:n_test + n_val]})
        expected.update({key: "train" for key in (train if max_train is None else train[:max_train])})
    return expected


def test_each_image_s_split_is_the_one_the_documented_rule_gives(tmp_path):
    root = tmp_path / "images"
    make_images(root, {"ant": 23, "bee": 11, "cow": 7})
    dataset = {"format": "imagefolder", "path": str(root), "seed": 5, "val_fraction": 0.2, "test_fraction": 0.25,
               "max_train_per_class": 6}
    assert run_split(dataset, tmp_path / "out").returncode == 0
    assert split_of(tmp_path / "out", root) == documented_split(root, 5, 0.2, 0.25, 6)


def moved(before: dict[str, str], after: dict[str, str], prefix: str) -> dict[str, tuple[str, str]]:
    return {p: (s, after[p]) for p, s in before.items() if p.startswith(prefix) and p in after and after[p] != s}


def test_adding_or_removing_an_image_leaves_the_other_classes_as_they_were_and_its_own_nearly(tmp_path):
    """One random sequence ran through the classes in order: one image added to a class drew that class and every
    class after it again (about 60% of their images moved). Now the other classes keep every image's split, and
    in its own class an image moves only across an edge the counts moved, to the neighbouring split."""
    root = tmp_path / "images"
    make_images(root, {"ant": 30, "bee": 30, "cow": 30})
    dataset = {"format": "imagefolder", "path": str(root), "val_fraction": 0.2, "test_fraction": 0.2}
    assert run_split(dataset, tmp_path / "before").returncode == 0
    before = split_of(tmp_path / "before", root)

    shutil.copy(root / "ant" / "000.png", tmp_path / "spare.png")
    Image.open(root / "cow" / "000.png").rotate(90).save(root / "bee" / "new.png")
    (root / "ant" / "007.png").unlink()
    assert run_split(dataset, tmp_path / "after").returncode == 0
    after = split_of(tmp_path / "after", root)

    assert {p: s for p, s in after.items() if p.startswith("cow/")} == {p: s for p, s in before.items() if p.startswith("cow/")}
    assert "bee/new.png" in after and "ant/007.png" not in after
    for name in ("ant/", "bee/"):
        changes = moved(before, after, name)
        assert len(changes) <= 2, changes
        assert all({was, now} in ({"test", "val"}, {"val", "train"}) for was, now in changes.values()), changes


def test_the_split_stays_when_the_dataset_moves_with_its_manifest(tmp_path):
    """The draw reads paths below the dataset's folder (the manifest's, for a CSV manifest): a dataset copied or
    moved elsewhere as a whole gives every image the split it had."""
    first = tmp_path / "first" / "images"
    make_images(first, {"ant": 12, "bee": 12})
    lines = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(first.glob("*/*.png"))]
    (first / "manifest.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    second = tmp_path / "elsewhere" / "deeper" / "images"
    shutil.copytree(first, second)
    for fmt, path in (("imagefolder", ""), ("csv", "manifest.csv")):
        splits = []
        for root in (first, second):
            out = tmp_path / "out" / fmt / root.parent.name
            dataset = {"format": fmt, "path": str(root / path), "val_fraction": 0.25, "test_fraction": 0.25}
            assert run_split(dataset, out).returncode == 0
            splits.append(split_of(out, root))
        assert splits[0] == splits[1], fmt
        assert set(splits[0].values()) == {"train", "val", "test"}


@pytest.mark.fashion_mnist
def test_fashion_mnist_draws_the_same_images_from_its_files_gzipped_or_not(tmp_path):
    """The Debian package's files are gzipped; torchvision's download leaves them unpacked. Both give one split
    (the test split capped, so drawn too)."""
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    for packed in Path(FASHION_MNIST).glob("*-ubyte.gz"):
        with gzip.open(packed) as source, open(unpacked / packed.name[:-3], "wb") as target:
            shutil.copyfileobj(source, target)
    splits = []
    for folder in (Path(FASHION_MNIST), unpacked):
        dataset = {"format": "fashion-mnist", "path": str(folder), "classes": [6, 8], "val_fraction": 0.1,
                   "max_train_per_class": 10, "max_val_per_class": 20, "max_test_per_class": 30}
        out = tmp_path / "out" / folder.name
        assert run_split(dataset, out).returncode == 0
        frame = pd.read_csv(out / "split.csv")
        splits.append({Path(p).name.replace(".gz#", "#"): s for p, s in zip(frame["path"], frame["split"])})
    assert splits[0] == splits[1]
    assert sorted(pd.Series(list(splits[0].values())).value_counts().items()) == [("test", 60), ("train", 20), ("val", 40)]
