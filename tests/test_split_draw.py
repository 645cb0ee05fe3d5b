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
from helpers import FASHION_MNIST, REPO, run_snakemake, tiny_config


def split_of(out_dir: Path, root: Path) -> dict[str, str]:
    """{path below ``root``: split} of the split file the rule wrote."""
    frame = pd.read_csv(out_dir / "split.csv")
    return {Path(p).relative_to(root).as_posix(): s for p, s in zip(frame["path"], frame["split"])}


def documented_split(root: Path, seed: int, val_fraction: float, test_fraction: float, max_train: int | None) -> dict:
    """The README's rule, computed here from its words alone: per class folder, the images in the order of BLAKE2b
    with an 8-byte digest (read big-endian) of ``<seed>/<path below the dataset's folder>``; test takes the first
    round(n x test_fraction) (at least one), val the next round(n x val_fraction), train the rest (its first
    ``max_train``)."""
    expected = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        keys = sorted(f"{folder.name}/{f.name}" for f in folder.iterdir())
        order = sorted(keys, key=lambda key: int.from_bytes(
            hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "big"))
        n_test, n_val = (max(int(round(len(keys) * f)), 1) if f > 0 else 0 for f in (test_fraction, val_fraction))
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


def test_a_capped_given_test_split_keeps_the_first_images_in_draw_order(tmp_path):
    """A dataset with its own train/ and test/ folders, its test split capped by max_test_per_class: each class keeps
    the 2 test images first in the documented draw order (BLAKE2b of ``<seed>/test/<class>/<file>``, computed here),
    not the first 2 its folder lists; val is drawn from train/ alone."""
    root = tmp_path / "images"
    make_images(root / "train", {"ant": 8, "bee": 8})
    make_images(root / "test", {"ant": 6, "bee": 6}, seed=1)
    dataset = {"format": "imagefolder", "path": str(root), "seed": 5, "val_fraction": 0.25, "test_fraction": 0.2,
               "max_test_per_class": 2}
    assert run_split(dataset, tmp_path / "out").returncode == 0
    drawn = split_of(tmp_path / "out", root)
    rank = lambda key: int.from_bytes(hashlib.blake2b(f"5/{key}".encode(), digest_size=8).digest(), "big")  # noqa: E731
    for name in ("ant", "bee"):
        listed = sorted(f"test/{name}/{f.name}" for f in (root / "test" / name).iterdir())
        expected = sorted(listed, key=rank)[:2]
        assert sorted(k for k, s in drawn.items() if s == "test" and k.startswith(f"test/{name}/")) == sorted(expected)
        assert not any(k.startswith(f"test/{name}/") for k, s in drawn.items() if s != "test")
        train = sorted(f"train/{name}/{f.name}" for f in (root / "train" / name).iterdir())
        assert sorted(k for k, s in drawn.items() if s == "val" and k.startswith(f"train/{name}/")) \
            == sorted(sorted(train, key=rank)[:2])  # round(8 x 0.25), first in draw order
    # the premise: in some class the draw's first two are not the listing's first two
    assert any(sorted(sorted(listed, key=rank)[:2]) != listed[:2]
               for listed in ([f"test/{n}/{i:03d}.png" for i in range(6)] for n in ("ant", "bee")))


@pytest.mark.parametrize("written", [None, 0.3])
def test_the_source_dataset_draws_no_test_images_unless_its_test_fraction_is_written(tmp_path, written):
    """Nothing reads the source's test images (pretrain trains on train and chooses its epoch on val): drawn by the
    target's default of 0.2, a fifth of a user's own source images were taken from training for nothing."""
    source = tmp_path / "source"
    make_images(source, {"ant": 12, "bee": 9, "cow": 15})
    dataset = {"format": "imagefolder", "path": str(source), "classes": None, "seed": 3, "val_fraction": 0.25,
               "max_train_per_class": None, "max_val_per_class": None}
    config = tiny_config(tmp_path / "run", pretrain={"dataset": {
        **dataset, **({} if written is None else {"test_fraction": written})}})
    run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/source.csv")
    frame = pd.read_csv(tmp_path / "run/resources/splits/source.csv")
    drawn = {Path(p).relative_to(source).as_posix(): s for p, s in zip(frame["path"], frame["split"])}
    assert drawn == documented_split(source, 3, 0.25, written or 0, None)
    assert ("test" in drawn.values()) == (written is not None)


def test_dataset_classes_give_the_labels_in_the_order_written_by_name_or_index(tmp_path):
    """README, "Your own images": with dataset.classes, output i is the i-th class written (torchvision's ImageFolder
    sorts instead): each image's label is its class folder's place in the list as written, read here from the
    folder each path lies in."""
    root = tmp_path / "images"
    make_images(root, {"ant": 6, "bee": 6, "cow": 6})
    for written, names in ((["cow", "ant"], ["cow", "ant"]), ([2, 0, 1], ["cow", "ant", "bee"])):
        dataset = {"format": "imagefolder", "path": str(root), "classes": written}
        out = tmp_path / f"out{len(names)}"
        assert run_split(dataset, out).returncode == 0
        frame = pd.read_csv(out / "split.csv")
        assert sorted({Path(p).parent.name for p in frame["path"]}) == sorted(names)
        assert all(label == names.index(Path(p).parent.name) for p, label in zip(frame["path"], frame["label"]))


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


def test_names_in_decomposed_unicode_draw_the_split_of_their_composed_form(tmp_path):
    """A folder copied from a Mac names `é` in two code points (NFD): the same classes, and now the same split
    (36 of 60 images moved before), the one the documented rule gives for the names in composed form (NFC)."""
    import unicodedata

    splits = []
    for form in ("NFC", "NFD"):
        root = tmp_path / form
        for name in ("café", "thé"):
            folder = root / unicodedata.normalize(form, name)
            folder.mkdir(parents=True)
            for i in range(15):
                Image.new("RGB", (8, 8), (i * 16, len(name) * 20, 7)).save(
                    folder / unicodedata.normalize(form, f"photo_é_{i}.png"))
        dataset = {"format": "imagefolder", "path": str(root), "val_fraction": 0.2, "test_fraction": 0.2}
        assert run_split(dataset, tmp_path / f"out_{form}").returncode == 0
        splits.append({unicodedata.normalize("NFC", p): s for p, s in split_of(tmp_path / f"out_{form}", root).items()})
    assert splits[0] == splits[1]
    # and it is the documented draw of the composed names (keys hashed in NFC), default seed 0
    assert splits[0] == documented_split(tmp_path / "NFC", 0, 0.2, 0.2, None)


def test_a_manifest_s_absolute_rows_draw_the_same_split_wherever_the_manifest_is(tmp_path):
    """Rows written as absolute paths to images outside the manifest's folder were keyed relative to it
    (`../../data/a/0.png`): the same manifest in another project folder, or opened through a link, moved about half
    the images. Such a row is keyed by its absolute path."""
    data = tmp_path / "data"
    make_images(data, {"ant": 15, "bee": 15})
    text = "path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(data.glob("*/*.png")))
    places = [tmp_path / "project", tmp_path / "home" / "me" / "deep" / "project"]
    for place in places:
        place.mkdir(parents=True)
        (place / "manifest.csv").write_text(text)
    (tmp_path / "link").symlink_to(places[0])
    splits = []
    for i, manifest in enumerate([places[0] / "manifest.csv", places[1] / "manifest.csv", tmp_path / "link" / "manifest.csv"]):
        dataset = {"format": "csv", "path": str(manifest), "val_fraction": 0.2, "test_fraction": 0.2}
        assert run_split(dataset, tmp_path / f"out{i}").returncode == 0
        splits.append(split_of(tmp_path / f"out{i}", data))
    assert splits[0] == splits[1] == splits[2]


def test_the_copy_kept_and_a_file_listed_twice_do_not_depend_on_how_dataset_path_is_written(tmp_path, monkeypatch):
    """A manifest lists `<abs>/a/c.png` (absolute) and `a/000.png` (relative), byte copies of one image: the copy kept
    was the one with the shorter path as listed, which depends on whether dataset.path is written absolute or
    relative. And one file listed twice, once relative and once absolute, was refused with one spelling of
    dataset.path and taken for two identical files with the other."""
    from finetune.data import SplitSpec, make_split
    from finetune.errors import DataError

    data = tmp_path / "data"
    make_images(data, {"a": 10, "b": 10})
    shutil.copy(data / "a" / "000.png", data / "a" / "c.png")
    # the copy shorter below the folder (a/c.png) written absolute, the other (a/000.png) relative: as listed, with
    # dataset.path written relative, data/a/000.png is the shorter string
    rows = [f"{data / 'a' / 'c.png'},a", "a/000.png,a"] + [f"{p.parent.name}/{p.name},{p.parent.name}"
                                                         for p in sorted(data.glob("*/*.png")) if p.name not in ("000.png", "c.png") or p.parent.name == "b"]
    (data / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (data / "twice.csv").write_text("path,label\n" + "\n".join(rows + ["a/c.png,a"]) + "\n")
    monkeypatch.chdir(tmp_path)
    splits = []
    for path in (str(data / "m.csv"), "data/m.csv"):
        split, report = make_split(SplitSpec(format="csv", path=path, val_fraction=0.2, test_fraction=0.2))
        kept = [Path(item["same_as"]).name for item in report["duplicate_images"]]
        splits.append(({Path(p).resolve().relative_to(data).as_posix(): s for p, s in zip(split["path"], split["split"])}, kept))
        with pytest.raises(DataError, match="lists the same image more than once"):
            make_split(SplitSpec(format="csv", path=str(Path(path).with_name("twice.csv")), val_fraction=0.2, test_fraction=0.2))
    assert splits[0] == splits[1]
    assert splits[0][1] == ["c.png"]  # the shorter of the two paths below the manifest's folder: a/c.png, not a/000.png


def test_a_dataset_config_given_alone_holds_the_schema_s_bounds():
    """split.py --dataset run alone checks the values itself (a text val_fraction met a TypeError's traceback; a
    max_train_per_class of 0 wrote a split without training images): just outside each bound or choice of the schema's
    `dataset` keys (read from workflow/schemas/config.schema.yaml), a text for a number, a fraction for a count, each is
    refused naming the key; each bound itself passes."""
    import yaml

    from finetune.data import SplitSpec
    from finetune.errors import DataError

    keys = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["$defs"]["dataset"]["properties"]
    base = {"format": "fashion-mnist", "path": "/nonexistent"}
    checked = 0
    for key, spec in keys.items():
        outside, inside = [], []
        if "minimum" in spec:
            outside += [spec["minimum"] - 1, str(spec["minimum"])]
            inside.append(spec["minimum"])
        if "exclusiveMinimum" in spec:
            outside.append(spec["exclusiveMinimum"])
        if "exclusiveMaximum" in spec:
            outside.append(spec["exclusiveMaximum"])
        if "integer" in (spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")]):
            outside.append(2.5)
        if "enum" in spec and key not in ("format", "watch"):
            outside.append("nonesuch")
            inside += spec["enum"]
        for value in outside:
            with pytest.raises(DataError, match=f"dataset.{key}: must be"):
                SplitSpec.from_config({**base, key: value})
            checked += 1
        for value in inside:
            assert getattr(SplitSpec.from_config({**base, key: value}), key) == value
    assert checked >= 15
