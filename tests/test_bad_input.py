"""Bad data and bad config (issue 5): each case through the real entry point, a clear message naming
the culprit, and no earlier good result lost."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from faults import (BOMB_SIDE, PREPROCESSING_32, make_bad_images, make_images, run_split, save_state_dict,
                    silent_server, snapshot, train_args)
from helpers import REPO, TINY_CONFIG, copy_of_the_workflow, jobs_run, run_script, run_snakemake, tiny_config

from finetune.configcheck import config_problems

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"

TRAIN_OPTIONS = {"epochs": 1, "batch_size": 4, "lr": 0.001, "device": "cpu"}


def imagefolder(root: Path, **extra) -> dict:
    return {"format": "imagefolder", "path": str(root), "seed": 0, **extra}


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    """Random-init resnet18 weights (3 source classes) and their manifest, for the training checks."""
    from finetune.weights import write_manifest

    folder = tmp_path_factory.mktemp("weights")
    digest = save_state_dict(folder / "weights.pth", "resnet18", 3)
    write_manifest(folder / "manifest.json", weights_file=folder / "weights.pth", arch="resnet18", num_classes=3,
                   classes=[], preprocessing=PREPROCESSING_32, sha256=digest, source={"kind": "test"})
    return folder / "manifest.json"


# --------------------------------------------------------------------------- unreadable images

def test_a_dataset_of_unreadable_files_only_is_refused_listing_them_not_with_a_traceback(tmp_path):
    """Every file unreadable (git-LFS pointers, say): the check of identical files met an empty listing and stopped
    with pandas' `Can only use .str accessor with string values`, before the message that lists the files."""
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        for i in range(3):
            (data / name / f"{i}.png").write_text("version https://git-lfs.github.com/spec/v1\n")
    result = run_split(imagefolder(data), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    assert f"error: 6 unreadable image(s) in {data}" in result.stdout, result.stdout


def test_unreadable_images_fail_the_split_listing_every_one(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    make_images(data, {"cat": 6, "dog": 6})
    first = run_split(imagefolder(data), out)
    assert first.returncode == 0, first.stdout
    before = snapshot(out)

    bad = make_bad_images(data / "cat")
    result = run_split(imagefolder(data), out)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    assert f"error: {len(bad)} unreadable image(s) in {data}" in result.stdout
    assert "dataset.on_bad_image: skip" in result.stdout
    for kind, path in bad.items():
        assert str(path) in result.stdout, f"{kind} ({path}) not named:\n{result.stdout}"
    assert "empty file (0 bytes)" in result.stdout
    assert f"{bad['not_an_image']}: cannot decode: not an image" in result.stdout
    assert f"{bad['truncated_png']}: cannot decode: image file is truncated" in result.stdout
    side = BOMB_SIDE
    assert (f"{bad['decompression_bomb']}: cannot decode: {side}x{side} pixels (306,250,000), "
            "above the 300,000,000 decoded here") in result.stdout, result.stdout
    assert side * side == 306_250_000
    assert "DecompressionBombWarning" not in result.stdout
    assert f"{bad['named_pipe']}: not a regular file (a named pipe, socket or device)" in result.stdout
    # The earlier good split is untouched, and no half-written file is left beside it.
    assert snapshot(out) == before


def test_a_symbolic_link_to_a_file_that_is_gone_is_named_so(tmp_path):
    """A link whose target went (a file system not mounted, a file moved) was `file does not exist`, beside a name
    that `ls` shows: the message names the link and where it points."""
    data = tmp_path / "data"
    make_images(data, {"cat": 4, "dog": 4})
    target = tmp_path / "elsewhere" / "photo.png"
    (data / "cat" / "linked.png").symlink_to(target)
    result = run_split(imagefolder(data), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert (f"{data / 'cat' / 'linked.png'}: a symbolic link to {target}, which does not exist"
            in result.stdout), result.stdout


def test_unreadable_images_skipped_and_reported_then_training_works(tmp_path, tiny_manifest):
    data, out = tmp_path / "data", tmp_path / "out"
    good = make_images(data, {"cat": 6, "dog": 6})
    bad = make_bad_images(data / "dog")
    result = run_split(imagefolder(data, on_bad_image="skip"), out)
    assert result.returncode == 0, result.stdout
    assert f"skipped {len(bad)} image(s) (dataset.on_bad_image: skip)" in result.stdout
    report = json.loads((out / "split.report.json").read_text())
    assert {item["path"] for item in report["skipped_images"]} == {str(p) for p in bad.values()}
    assert all(item["reason"] for item in report["skipped_images"])
    split = pd.read_csv(out / "split.csv")
    assert set(split["path"]) == {str(p) for paths in good.values() for p in paths}

    trained = run_script("train", *train_args(out / "split.csv", tiny_manifest, tmp_path / "run", TRAIN_OPTIONS))
    assert trained.returncode == 0, trained.stdout
    assert (tmp_path / "run" / "model.pt").is_file()


# --------------------------------------------------------------------------- folder layout

def digest_groups(paths) -> dict[str, list[str]]:
    """Paths grouped by their files' bytes (md5, computed here apart from the code under test)."""
    import hashlib

    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(hashlib.md5(Path(p).read_bytes()).hexdigest(), []).append(str(p))
    return groups


def test_identical_files_in_a_class_are_kept_once_so_no_image_is_in_two_splits(tmp_path):
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    made = make_images(data, {"cat": 8, "dog": 8})
    for i in range(4):  # copies with other names, one in a subfolder, one of them twice
        shutil.copy(made["cat"][i], data / "cat" / f"copy{i}.png")
    (data / "dog" / "again").mkdir()
    shutil.copy(made["dog"][0], data / "dog" / "again" / "000.png")
    shutil.copy(made["dog"][0], data / "dog" / "000-1.png")
    result = run_split(imagefolder(data, val_fraction=0.25, test_fraction=0.25), out)
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(out / "split.csv")
    groups = digest_groups(p for p in data.rglob("*.png"))
    assert len(split) == len(groups) == 16, "one copy of each image"
    assert all(sum(p in set(split["path"]) for p in paths) == 1 for paths in groups.values())
    assert all(min(paths, key=len) in set(split["path"]) for paths in groups.values()), "the original name is kept"
    report = json.loads((out / "split.report.json").read_text())
    left_out = {item["path"]: item["same_as"] for item in report["duplicate_images"]}
    assert len(left_out) == 6 and set(left_out.values()) <= set(split["path"])
    assert all(left_out[p] in paths for paths in groups.values() for p in paths if p in left_out)
    assert "left out 6 copy(ies) of images found more than once in a class" in result.stdout


def test_a_copy_of_an_official_test_image_is_left_out_of_the_pool(tmp_path):
    """A manifest whose test rows have byte-identical copies among its train rows: the test copy stays."""
    import shutil

    made = make_images(tmp_path / "images", {"cat": 6, "dog": 6})
    rows = [f"{name}/{i:03d}.png,{name},{'test' if i < 2 else 'train'}" for name in ("cat", "dog") for i in range(6)]
    for name in ("cat", "dog"):
        shutil.copy(made[name][0], tmp_path / "images" / name / "dup.png")
        rows.append(f"{name}/dup.png,{name},train")
    manifest = tmp_path / "images" / "manifest.csv"
    manifest.write_text("\n".join(["path,label,split", *rows]) + "\n")
    result = run_split({"format": "csv", "path": str(manifest), "val_fraction": 0.25}, tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    assert set(split.loc[split["split"] == "test", "path"]) == {str(made[n][i]) for n in ("cat", "dog") for i in (0, 1)}
    assert not any(p.endswith("dup.png") for p in split["path"])


def test_of_identical_copies_in_official_test_and_val_rows_the_test_copy_stays_then_the_val_copy(tmp_path):
    """A manifest's own test and val rows, with a copy of a test image among the val rows and a copy of a val image
    among the train rows: the test set keeps its images (the val copy goes), val keeps its own (the train copy goes)."""
    import shutil

    made = make_images(tmp_path / "images", {"cat": 8, "dog": 8})
    given = {0: "test", 1: "test", 2: "val", 3: "val"}
    rows = [f"{name}/{i:03d}.png,{name},{given.get(i, 'train')}" for name in ("cat", "dog") for i in range(8)]
    for name in ("cat", "dog"):
        shutil.copy(made[name][0], tmp_path / "images" / name / "a_test_copy.png")
        shutil.copy(made[name][2], tmp_path / "images" / name / "a_val_copy.png")
        rows += [f"{name}/a_test_copy.png,{name},val", f"{name}/a_val_copy.png,{name},train"]
    manifest = tmp_path / "images" / "manifest.csv"
    manifest.write_text("\n".join(["path,label,split", *rows]) + "\n")
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    for kind, indices in (("test", (0, 1)), ("val", (2, 3))):
        assert set(split.loc[split["split"] == kind, "path"]) == {str(made[n][i]) for n in ("cat", "dog") for i in indices}
    assert not any("copy" in p for p in split["path"])


def test_unreadable_images_and_images_under_two_labels_are_refused_in_one_message(tmp_path):
    """Every bad file at once, whatever its kind: one round of fixes, not one per kind."""
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    made = make_images(data, {"cat": 6, "dog": 6})
    shutil.copy(made["dog"][2], data / "cat" / "looks-like-a-dog.png")
    (data / "dog" / "empty.png").write_bytes(b"")
    result = run_split(imagefolder(data), out)
    assert result.returncode == 1, result.stdout
    assert (f"error: 1 unreadable image(s) and 2 image(s) found under two labels (identical files) in {data}: fix or "
            "delete them") in result.stdout, result.stdout
    for path in (data / "dog" / "empty.png", data / "cat" / "looks-like-a-dog.png", made["dog"][2]):
        assert f"  {path}: " in result.stdout
    assert not (out / "split.csv").exists()


def test_an_image_under_two_labels_is_refused_naming_every_copy(tmp_path):
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    made = make_images(data, {"cat": 6, "dog": 6})
    shutil.copy(made["dog"][2], data / "cat" / "looks-like-a-dog.png")
    result = run_split(imagefolder(data), out)
    assert result.returncode == 1, result.stdout
    assert f"error: 2 image(s) found under two labels (identical files) in {data}" in result.stdout
    assert (f"{data / 'cat' / 'looks-like-a-dog.png'}: labelled 'cat', but the same image (identical bytes) is "
            f"{made['dog'][2]} (dog)") in result.stdout
    assert not (out / "split.csv").exists()
    result = run_split(imagefolder(data, on_bad_image="skip"), out)
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(out / "split.csv")
    both = {str(data / "cat" / "looks-like-a-dog.png"), str(made["dog"][2])}
    assert not both & set(split["path"]) and len(split) == 11
    report = json.loads((out / "split.report.json").read_text())
    assert {item["path"] for item in report["skipped_images"]} == both


def test_files_in_a_format_not_read_are_counted_not_silently_left_out(tmp_path):
    """An iPhone's .heic photos beside .jpg ones: the split reads the others, and says what it left out."""
    data, out = tmp_path / "data", tmp_path / "out"
    made = make_images(data, {"cat": 6, "dog": 6})
    for name in ("IMG_1.heic", "IMG_2.HEIC", "nested/IMG_3.heic"):
        (data / "cat" / name).parent.mkdir(exist_ok=True)
        (data / "cat" / name).write_bytes(b"\x00\x00\x00\x18ftypheic")
    (data / "dog" / "notes.txt").write_text("to label\n")
    (data / "dog" / ".DS_Store").write_bytes(b"\x00")  # hidden: not counted
    result = run_split(imagefolder(data), out)
    assert result.returncode == 0, result.stdout
    assert sorted(pd.read_csv(out / "split.csv")["path"]) == sorted(str(p) for paths in made.values() for p in paths)
    assert json.loads((out / "split.report.json").read_text())["ignored_files"] == {".heic": 3, ".txt": 1}
    assert "ignored files that are not images of a format read here (3 .heic, 1 .txt)" in result.stdout


def test_a_class_left_too_small_by_skipped_images_names_them(tmp_path):
    """on_bad_image: skip leaves out a class's unreadable files; where too few are left, the message names the
    files left out (the split report that would list them is not written) and how to drop the class."""
    data = tmp_path / "data"
    make_images(data, {"cat": 6, "dog": 6})
    bad = make_bad_images(data / "bird")
    result = run_split(imagefolder(data, val_fraction=0.2, test_fraction=0.2, on_bad_image="skip"), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    message = next(line for line in result.stdout.splitlines() if line.startswith("error: "))
    assert message.startswith("error: class 'bird' has 0 image(s): too few to stratify"), message
    assert f"{len(bad)} more of its files were left out: " in message
    assert all(str(path) in message for path in sorted(bad.values())[:5]), message
    assert message.endswith("or leave the class out with dataset.classes."), message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("fmt", ["imagefolder", "csv"])
def test_a_dataset_of_one_class_is_refused(tmp_path, fmt):
    """A classifier of one class learns nothing (its accuracy is 1 whatever it does): refused before any split."""
    made = make_images(tmp_path / "data", {"cat": 6})
    path = tmp_path / "data"
    if fmt == "csv":
        path = tmp_path / "data" / "manifest.csv"
        path.write_text("path,label\n" + "".join(f"cat/{p.name},cat\n" for p in made["cat"]))
    result = run_split({"format": fmt, "path": str(path)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: {path} has one class only ('cat'): a classifier needs at least two" in result.stdout
    assert not (tmp_path / "out" / "split.csv").exists()


def test_results_take_the_permissions_the_umask_gives_and_keep_their_own(tmp_path):
    """Results are written to a temporary file (mkstemp: 0600) and renamed: they must still be readable
    by whom the user's umask allows (a group on a shared cluster), and a file rewritten keeps its mode."""
    import os
    import stat
    import subprocess
    import sys

    from helpers import REPO

    data, out = tmp_path / "data", tmp_path / "out"
    make_images(data, {"cat": 6, "dog": 6})

    def split_with_umask(mask):
        args = ["--dataset", json.dumps(imagefolder(data)), "--out", str(out / "split.csv"),
                "--report", str(out / "split.report.json")]
        return subprocess.run([sys.executable, str(REPO / "workflow/scripts/split.py"), *args], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, preexec_fn=lambda: os.umask(mask))

    assert split_with_umask(0o027).returncode == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"split.csv": 0o640, "split.report.json": 0o640}
    os.chmod(out / "split.csv", 0o604)
    assert split_with_umask(0o077).returncode == 0
    assert stat.S_IMODE((out / "split.csv").stat().st_mode) == 0o604
    assert stat.S_IMODE((out / "split.report.json").stat().st_mode) == 0o640


def test_symlinked_folders_are_followed_hidden_ones_skipped_and_a_loop_walked_once(tmp_path):
    """As torchvision's ImageFolder finds images (os.walk with followlinks): a class folder that is a
    symlink, a symlinked folder inside one, a symlink loop (walked once), a hidden .ipynb_checkpoints."""
    import os

    real = make_images(tmp_path / "real", {"cats": 6, "dogs": 5})
    data = tmp_path / "data"
    (data / "dog").mkdir(parents=True)
    os.symlink(tmp_path / "real" / "cats", data / "cat")
    os.symlink(tmp_path / "real" / "dogs", data / "dog" / "linked")
    os.symlink(data / "dog", data / "dog" / "loop")
    own = make_images(tmp_path / "own", {"dog": 1}, seed=3)["dog"][0]
    own.rename(data / "dog" / "own.png")
    make_images(data / "dog" / ".ipynb_checkpoints", {"stale": 2}, seed=4)
    result = run_split(imagefolder(data, val_fraction=0.2, test_fraction=0.2), tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    expected = {str(data / "cat" / p.name): "cat" for p in real["cats"]}
    expected |= {str(data / "dog" / "linked" / p.name): "dog" for p in real["dogs"]}
    expected[str(data / "dog" / "own.png")] = "dog"
    assert dict(zip(split["path"], split["class_name"])) == expected


def test_empty_class_folder_is_named(tmp_path):
    data = tmp_path / "data"
    make_images(data, {"cat": 6, "dog": 6})
    (data / "zebra").mkdir()
    (data / "zebra" / "README.txt").write_text("images to come\n")
    result = run_split(imagefolder(data), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: class folder(s) with no images in {data}: zebra" in result.stdout
    assert "dataset.classes" in result.stdout
    assert not (tmp_path / "out" / "split.csv").exists()


@pytest.mark.parametrize("chosen", [["cat", "dog"], [1, 2]], ids=["by-name", "by-index"])
def test_empty_class_folder_left_out_with_dataset_classes_is_no_problem(tmp_path, chosen):
    # `ant` sorts first: an index into the class list still counts it (indices do not shift when a
    # folder is empty), so [1, 2] means cat and dog.
    data, out = tmp_path / "data", tmp_path / "out"
    made = make_images(data, {"cat": 6, "dog": 6})
    (data / "ant").mkdir()
    result = run_split(imagefolder(data, classes=chosen), out)
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(out / "split.csv")
    assert sorted(split["path"]) == sorted(str(p) for paths in made.values() for p in paths)
    assert dict(zip(split["class_name"], split["label"])) == {"cat": 0, "dog": 1}


def test_empty_class_folder_chosen_with_dataset_classes_is_named(tmp_path):
    data = tmp_path / "data"
    make_images(data, {"cat": 6, "dog": 6})
    (data / "ant").mkdir()
    result = run_split(imagefolder(data, classes=["ant", "dog"]), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: class folder(s) with no images in {data}: ant " in result.stdout
    assert not (tmp_path / "out" / "split.csv").exists()


def test_a_number_that_is_a_class_name_and_another_class_s_index_is_refused(tmp_path):
    """Folders named 1, 2, 3: `classes: [1, 2]` could mean folders 1 and 2 or (by index) 2 and 3."""
    data, out = tmp_path / "data", tmp_path / "out"
    made = make_images(data, {"1": 6, "2": 6, "3": 6})
    result = run_split(imagefolder(data, classes=[1, 2]), out)
    assert result.returncode == 1, result.stdout
    assert (f"error: dataset.classes: 1 is ambiguous: {data} has a class named '1', and the class at index 1 is '2'. "
            "Quote it ('1') to choose the class named 1") in result.stdout
    assert not (out / "split.csv").exists()
    result = run_split(imagefolder(data, classes=["1", "2"]), out)  # quoted: the names
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(out / "split.csv", dtype={"class_name": str})
    assert sorted(split["path"]) == sorted(str(p) for name in ("1", "2") for p in made[name])
    assert dict(zip(split["class_name"], split["label"])) == {"1": 0, "2": 1}


def test_class_too_small_to_stratify_names_class_and_counts(tmp_path):
    data = tmp_path / "data"
    make_images(data, {"cat": 6, "dog": 2, "eel": 1})
    result = run_split(imagefolder(data, val_fraction=0.2, test_fraction=0.2), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert "error: class 'dog' has 2 image(s): too few to stratify" in result.stdout
    assert "needs 1 test + 1 val + at least 1 train" in result.stdout
    # lowering the fractions cannot help a class of 2: each split needs one image
    assert "Give the class at least 3 images (one for each split drawn from them), or leave the class out with " \
           "dataset.classes" in result.stdout
    # every class too small is named at once, not one per run
    assert "class 'eel' has 1 image(s): too few to stratify" in result.stdout
    assert "class 'cat'" not in result.stdout
    assert not (tmp_path / "out" / "split.csv").exists()


def test_a_class_with_one_image_a_split_still_too_small_is_told_to_lower_the_fractions(tmp_path):
    """3 images, test_fraction 0.5 and val_fraction 0.2: round(1.5) = 2 test + 1 val leave none to train, though 3 is
    one image for each split; lower fractions would do, so the message says so, not to give it 3 images."""
    data = tmp_path / "data"
    make_images(data, {"ant": 3, "bee": 10})
    result = run_split(imagefolder(data, val_fraction=0.2, test_fraction=0.5), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert ("error: class 'ant' has 3 image(s): too few to stratify into train/val/test (needs 2 test + 1 val + at "
            "least 1 train). Add images or lower dataset.val_fraction / dataset.test_fraction, or leave the class out "
            "with dataset.classes.") in result.stdout, result.stdout
    assert "Give the class at least" not in result.stdout and "class 'bee'" not in result.stdout


@pytest.mark.parametrize("fmt", ["imagefolder", "csv"])
def test_dataset_path_that_does_not_exist(tmp_path, fmt):
    missing = tmp_path / ("no-such-folder" if fmt == "imagefolder" else "no-such-manifest.csv")
    result = run_split({"format": fmt, "path": str(missing)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert str(missing) in result.stdout and "does not exist" in result.stdout
    assert "check dataset.path" in result.stdout


# --------------------------------------------------------------------------- CSV manifests

def write_manifest_csv(tmp_path: Path, rows: list[str], header: str = "path,label") -> Path:
    make_images(tmp_path / "images", {"cat": 4, "dog": 4})
    manifest = tmp_path / "images" / "manifest.csv"
    manifest.write_text("\n".join([header, *rows]) + "\n")
    return manifest


def good_rows(n: int = 4) -> list[str]:
    return [f"{name}/{i:03d}.png,{name}" for name in ("cat", "dog") for i in range(n)]


def test_csv_missing_column(tmp_path):
    manifest = write_manifest_csv(tmp_path, [r.split(",")[0] + ",x" for r in good_rows()], header="path,class")
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: CSV manifest {manifest} lacks column(s) label; it has path, class" in result.stdout


def test_a_manifest_path_stored_in_another_unicode_form_is_named_with_both_forms_at_start(tmp_path):
    """A manifest written with 'é' as one character, of files copied from a Mac (its names 'e' and a combining
    accent): the files are there, but not under the names written. The refusal at start says which rows, with both
    forms in the characters' codes (they look alike), rather than only that the files do not exist."""
    import unicodedata

    made = make_images(tmp_path / "images", {"cat": 4, "dog": 4})
    root = tmp_path / "images"
    (root / "cat" / "001.png").rename(root / "cat" / unicodedata.normalize("NFD", "café.png"))
    (root / "dog").rename(root / unicodedata.normalize("NFD", "dóg"))
    rows = [f"cat/{p.name},cat" for p in made["cat"] if p.name != "001.png"] + ["cat/café.png,cat"]
    rows += [f"dóg/{p.name},dog" for p in made["dog"]] + ["cat/lost.png,cat"]
    manifest = root / "manifest.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    config = tiny_config(tmp_path / "run", replace={"dataset": {"format": "csv", "path": str(manifest)}})
    result = run_snakemake(tmp_path / "run", config, "-n", check=False)
    assert result.returncode != 0 and "names 6 image(s) that do not exist" in result.stdout, result.stdout[-3000:]
    assert (". 5 row(s) name a file that is there with a name in another Unicode form" in result.stdout
            and f"line 5: {ascii(str(root / 'cat' / 'café.png'))} in the manifest, "
                f"{ascii(str(root / 'cat' / unicodedata.normalize('NFD', 'café.png')))} on disk" in result.stdout
            and f"line 6: {ascii(str(root / 'dóg' / '000.png'))} in the manifest, "
                f"{ascii(str(root / unicodedata.normalize('NFD', 'dóg') / '000.png'))} on disk" in result.stdout
            and "lost.png' in the manifest" not in result.stdout), result.stdout[-3000:]
    assert "nothing ran, and no split was made from it" in result.stdout


def test_csv_path_that_does_not_exist(tmp_path):
    manifest = write_manifest_csv(tmp_path, good_rows() + ["cat/lost.png,cat", "dog/gone.png,dog"])
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert "names 2 image(s) that do not exist" in result.stdout
    assert f"{manifest.parent / 'cat/lost.png'} (line 10)" in result.stdout
    assert f"{manifest.parent / 'dog/gone.png'} (line 11)" in result.stdout


def test_csv_messages_name_the_files_own_lines_blank_and_quoted_multiline_ones_counted(tmp_path):
    """pandas skips blank lines; the lines named were its row numbers + 2, so a blank line shifted every one after it."""
    make_images(tmp_path / "images", {"cat": 4, "dog": 4})
    manifest = tmp_path / "images" / "manifest.csv"
    text = ["\ufeffpath,label,note", "", *[f"{r},x" for r in good_rows()[:4]], "   ", '\t', 'dog/gone.png,dog,"two',
            'lines"', "dog/001.png,dog,", "", "cat/lost.png,cat,", "dog/002.png,dog,tests"]
    manifest.write_text("\r\n".join(text) + "\r\n")
    expected = {line: number for number, line in enumerate(text, start=1)}
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"{manifest.parent / 'cat/lost.png'} (line {expected['cat/lost.png,cat,']})" in result.stdout
    # a record over two lines is named by the first (where its path is), not the line its quote closes on
    two_lines = expected['dog/gone.png,dog,"two']
    assert f"{manifest.parent / 'dog/gone.png'} (line {two_lines})" in result.stdout, result.stdout
    # and the misspelt split value on the last line:
    text = [line.replace("cat/lost.png", "dog/003.png").replace("dog/gone.png", "dog/000.png").replace(",note", ",split")
            for line in text]
    manifest.write_text("\r\n".join(text) + "\r\n")
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"'tests' (line(s) {len(text)})" in result.stdout, result.stdout
    assert not (tmp_path / "out" / "split.csv").exists()


def test_csv_spaces_around_a_path_are_not_part_of_it(tmp_path):
    """`cat/1.png , cat`: the label was stripped and the path not, so an existing image was called missing. The
    header written so too, `path , label `: its column names are path and label."""
    manifest = write_manifest_csv(tmp_path, [f" {path} , {label}" for path, label in (r.split(",") for r in good_rows())],
                                  header=" path , label ")
    result = run_split({"format": "csv", "path": str(manifest), "val_fraction": 0.25, "test_fraction": 0.25},
                       tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    assert sorted(split["path"]) == sorted(str(manifest.parent / r.split(",")[0]) for r in good_rows())


def test_a_class_folder_named_in_decomposed_unicode_is_the_class_typed_composed(tmp_path):
    """A folder copied from a Mac names 'Shirt ü' as 'u' + a combining diaeresis; dataset.classes typed on a
    keyboard has the one character 'ü'. They looked alike in a message that refused the class; and the same class
    as a decomposed train/ folder and a composed test/ one would have been two classes."""
    import unicodedata

    composed = "Shirt \u00fc"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    make_images(tmp_path / "images" / "train", {decomposed: 6, "bag": 6})
    make_images(tmp_path / "images" / "test", {composed: 2, "bag": 2}, seed=1)
    result = run_split({"format": "imagefolder", "path": str(tmp_path / "images"), "classes": [composed, "bag"],
                        "val_fraction": 0.34}, tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    counts = split.groupby(["class_name", "split"]).size().to_dict()
    assert counts == {(composed, "train"): 4, (composed, "val"): 2, (composed, "test"): 2,
                      ("bag", "train"): 4, ("bag", "val"): 2, ("bag", "test"): 2}, counts
    # The classes' order (their labels, the model's outputs) is the composed names', as a CSV of the same names
    # gives it: decomposed, 'e' + an accent sorted before 'fig'; composed, 'é' after it.
    eclair = "\u00e9clair"
    make_images(tmp_path / "sorted", {unicodedata.normalize("NFD", eclair): 5, "fig": 5})
    result = run_split({"format": "imagefolder", "path": str(tmp_path / "sorted")}, tmp_path / "out2")
    assert result.returncode == 0, result.stdout
    labels = pd.read_csv(tmp_path / "out2" / "split.csv").groupby("class_name")["label"].unique().to_dict()
    assert {name: list(values) for name, values in labels.items()} == {"fig": [0], eclair: [1]}, labels


def test_csv_duplicate_path(tmp_path):
    manifest = write_manifest_csv(tmp_path, good_rows() + ["cat/001.png,dog"])
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert "lists the same image more than once" in result.stdout
    assert f"{manifest.parent / 'cat/001.png'} (lines 3, 10: labelled 'cat' and 'dog')" in result.stdout


def test_csv_class_list_names_a_label_not_in_the_manifest(tmp_path):
    manifest = write_manifest_csv(tmp_path, good_rows())
    result = run_split({"format": "csv", "path": str(manifest), "classes": ["cat", "unicorn"]}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: dataset.classes: 'unicorn' is not a class of {manifest}; its classes are ['cat', 'dog']" in result.stdout


def test_csv_labels_that_differ_only_in_case_are_refused_naming_the_rarer_spelling_s_lines(tmp_path):
    """`Bag` on one row of a `bag` class: as a class of its own it failed for want of a test image ("give it test
    images there"), a message that never said the label was misspelt nor where."""
    manifest = write_manifest_csv(tmp_path, good_rows() + ["dog/004.png,Dog"])
    make_images(tmp_path / "extra", {"dog": 5})
    (tmp_path / "images/dog/004.png").write_bytes((tmp_path / "extra/dog/004.png").read_bytes())
    for classes in (None, ["cat", "dog"]):  # the typo left out of the classes chosen was dropped without a word
        result = run_split({"format": "csv", "path": str(manifest), "classes": classes}, tmp_path / "out")
        assert result.returncode == 1, result.stdout
        assert (f"CSV manifest {manifest}: label(s) that differ only in case, one class written two ways: 'dog' (4 row(s): "
                "line(s) 6, 7, 8, 9) and 'Dog' (1 row(s): line(s) 10)") in result.stdout, result.stdout


def test_csv_rows_of_labels_not_chosen_are_counted_in_the_log_and_the_report(tmp_path):
    """A misspelt label (`dgo`) on a row whose class is chosen left its image out without a word: the split's counts
    changed by one, or not at all under a cap."""
    make_images(tmp_path / "extra", {"dog": 6})
    manifest = write_manifest_csv(tmp_path, good_rows() + ["dog/004.png,dgo", "dog/005.png,bird"])
    for name in ("004", "005"):
        (tmp_path / f"images/dog/{name}.png").write_bytes((tmp_path / f"extra/dog/{name}.png").read_bytes())
    result = run_split({"format": "csv", "path": str(manifest), "classes": ["cat", "dog"], "val_fraction": 0.25,
                        "test_fraction": 0.25}, tmp_path / "out")
    assert result.returncode == 0, result.stdout
    report = json.loads((tmp_path / "out/split.report.json").read_text())
    assert report["rows_of_other_labels"] == {"bird": 1, "dgo": 1}
    assert (f"left out 2 row(s) of CSV manifest {manifest} whose label is not in dataset.classes (label and rows: "
            "'bird' 1, 'dgo' 1)") in result.stdout, result.stdout
    assert len(pd.read_csv(tmp_path / "out/split.csv")) == 8


def test_csv_unreadable_images_are_named_with_their_manifest_lines(tmp_path):
    manifest = write_manifest_csv(tmp_path, good_rows() + ["cat/broken.png,cat"])
    (tmp_path / "images/cat/broken.png").write_text("not an image")
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"  {manifest.parent / 'cat/broken.png'} (line 10): cannot decode" in result.stdout, result.stdout


def test_an_empty_csv_manifest_says_so(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"")
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: CSV manifest {manifest} is empty: check dataset.path (a CSV file with a header line path,label" \
        in result.stdout, result.stdout


def test_csv_manifest_that_works(tmp_path):
    """The control: the same manifest without the faults splits fine (relative paths, label column)."""
    manifest = write_manifest_csv(tmp_path, good_rows())
    result = run_split({"format": "csv", "path": str(manifest), "val_fraction": 0.25, "test_fraction": 0.25},
                       tmp_path / "out")
    assert result.returncode == 0, result.stdout
    assert len(pd.read_csv(tmp_path / "out" / "split.csv")) == 8


def test_the_split_of_a_csv_manifest_does_not_depend_on_the_order_of_its_lines(tmp_path):
    """The same images listed in another order (a manifest exported again from a database, sorted in a spreadsheet)
    drew another split: 42 of 72 images moved, test images into train. The lines are taken in the order of their
    paths: the same split file, byte for byte."""
    import random

    make_images(tmp_path / "images", {"cat": 9, "dog": 9, "owl": 9})
    rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((tmp_path / "images").glob("*/*.png"))]
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert shuffled != rows
    dataset = {"format": "csv", "val_fraction": 0.25, "test_fraction": 0.25}
    for name, lines in (("sorted", rows), ("shuffled", shuffled)):
        manifest = tmp_path / "images" / f"{name}.csv"
        manifest.write_text("path,label\n" + "\n".join(lines) + "\n")
        result = run_split({**dataset, "path": str(manifest)}, tmp_path / name)
        assert result.returncode == 0, result.stdout
    drawn = (tmp_path / "sorted" / "split.csv").read_bytes()
    assert drawn == (tmp_path / "shuffled" / "split.csv").read_bytes()
    assert {"train", "val", "test"} <= set(pd.read_csv(tmp_path / "sorted" / "split.csv")["split"])


def marked_manifest(tmp_path: Path, marks: dict[str, list[str]]) -> Path:
    """A manifest with a split column: ``marks[class]`` is each of its images' mark, in file order."""
    make_images(tmp_path / "images", {name: len(m) for name, m in marks.items()})
    manifest = tmp_path / "images" / "manifest.csv"
    rows = [f"{name}/{i:03d}.png,{name},{mark}" for name, m in marks.items() for i, mark in enumerate(m)]
    manifest.write_text("\n".join(["path,label,split", *rows]) + "\n")
    return manifest


def rows_marked(manifest: Path, *marks: str) -> set[str]:
    """The manifest's images whose split column, stripped and lower-cased, is one of ``marks``: read
    with the csv module, apart from the code under test."""
    import csv

    with open(manifest, newline="") as handle:
        return {str(manifest.parent / r["path"]) for r in csv.DictReader(handle) if r["split"].strip().lower() in marks}


def test_csv_split_column_keeps_its_val_and_test_rows(tmp_path):
    """Rows marked test or val (any case) are exactly that split; the train and unmarked rows are all training."""
    marks = {"cat": ["Test", "test", "VAL", " val ", "train", "", "train", ""],
             "dog": ["test", "Valid", "validation", "train", "train", "", "", "train"]}
    manifest = marked_manifest(tmp_path, marks)
    result = run_split({"format": "csv", "path": str(manifest), "val_fraction": 0.3, "test_fraction": 0.3}, tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    got = {s: set(split.loc[split["split"] == s, "path"]) for s in ("train", "val", "test")}
    assert got == {"test": rows_marked(manifest, "test"), "val": rows_marked(manifest, "val", "valid", "validation"),
                   "train": rows_marked(manifest, "train", "")}
    assert json.loads((tmp_path / "out" / "split.report.json").read_text())["official_splits"] == ["val", "test"]


def canonical_split(folder: str) -> str:
    return {"valid": "val", "validation": "val", "training": "train", "testing": "test"}.get(folder.lower(), folder.lower())


@pytest.mark.parametrize("names", [("train", "val", "test"), ("Train", "valid", "test"), ("train", "validation"),
                                   ("Training", "Testing")])
def test_an_image_folder_already_split_into_split_folders_keeps_its_splits(tmp_path, names):
    """`<root>/<split>/<class>/<image>` (torchvision's references, Kaggle and Roboflow exports): each image
    stays in its folder's split, classes are the class folders of every split, and a split it lacks is
    drawn from train. Before, train/ and val/ were taken for two classes named train and val."""
    data, out = tmp_path / "data", tmp_path / "out"
    made = {name: make_images(data / name, {"cat": 6, "dog": 5}, seed=i) for i, name in enumerate(names)}
    result = run_split(imagefolder(data, val_fraction=0.2, test_fraction=0.2), out)
    assert result.returncode == 0, result.stdout
    for given in sorted({canonical_split(name) for name in names} - {"train"}):  # the log says the fraction is not used
        assert f"{given}: the dataset's own {given} split" in result.stdout and f"dataset.{given}_fraction does not apply" \
            in result.stdout, result.stdout
    split = pd.read_csv(out / "split.csv")
    assert sorted(split["class_name"].unique()) == ["cat", "dog"]
    for folder, paths in made.items():
        for name, files in paths.items():
            rows = split[split["path"].isin([str(p) for p in files])]
            assert (rows["class_name"] == name).all() and len(rows) == len(files)
            if canonical_split(folder) != "train":
                assert (rows["split"] == canonical_split(folder)).all(), folder
    if names == ("train", "validation"):  # no test folder: test drawn from train, a fifth of each class
        test = split[split["split"] == "test"]
        assert set(test["path"]) <= {str(p) for files in made["train"].values() for p in files}
        assert test.groupby("class_name").size().to_dict() == {"cat": round(6 * 0.2), "dog": round(5 * 0.2)}


def test_a_class_missing_from_a_split_folder_is_named_with_the_folder_it_lacks(tmp_path):
    """A class only under test/, or missing from test/: the message said 'official' splits (Fashion-MNIST's word) and
    asked for 0 test + 0 val images."""
    data, out = tmp_path / "data", tmp_path / "out"
    make_images(data / "train", {"cat": 6, "dog": 5}, seed=0)
    make_images(data / "test", {"cat": 3, "dog": 3, "owl": 4}, seed=1)
    result = run_split(imagefolder(data, val_fraction=0.2), out)
    assert result.returncode == 1 and ("class 'owl' has no training images: all of its 4 image(s) are in the dataset's "
                                       f"own test split ({data}: its test/ folder holds the class and train/ does not)") \
        in result.stdout, result.stdout
    make_images(data / "train", {"owl": 5}, seed=2)
    (data / "test" / "dog").rename(tmp_path / "dog_test")
    result = run_split(imagefolder(data, val_fraction=0.2), out)
    assert result.returncode == 1 and ("class 'dog' has no test image, though the dataset gives a test split of its own "
                                       f"({data}: its test folder has no folder of this class)") in result.stdout, \
        result.stdout
    # A CSV manifest's split column, named as the file it is
    manifest = tmp_path / "manifest.csv"
    rows = [f"{p},{p.parent.name},{'val' if p.parent.name == 'cat' and p.stem < '002' else ''}"
            for p in sorted((data / "train").glob("*/*.png"))]
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    result = run_split({"format": "csv", "path": str(manifest)}, out)
    assert result.returncode == 1 and ("class 'dog' has no val image, though the dataset gives a val split of its own "
                                       f"(CSV manifest {manifest} marks val rows of other classes but none of this one)") \
        in result.stdout, result.stdout


def test_split_folders_of_other_names_and_images_outside_class_folders_are_said(tmp_path):
    """seg_train/<class>/ and seg_test/<class>/ (Intel's scene dataset): read as classes seg_test and seg_train,
    as laid out, but the log says what to rename. Images in the root itself have no class: counted, not silent."""
    data, out = tmp_path / "data", tmp_path / "out"
    for i, name in enumerate(("seg_train", "seg_test")):
        make_images(data / name, {"cat": 4, "dog": 4}, seed=i)
    loose = make_images(tmp_path / "loose", {"x": 2}, seed=9)["x"]
    for path in loose:
        path.rename(data / path.name)
    result = run_split(imagefolder(data), out)
    assert result.returncode == 0, result.stdout
    assert (f"note: the class folders of {data} (seg_test, seg_train) hold no images of their own, only the same "
            "subfolders (cat, dog): if those are your classes and seg_test, seg_train your splits, rename the split "
            "folders train, val and test") in result.stdout, result.stdout
    report = json.loads((out / "split.report.json").read_text())
    assert report["images_outside_class_folders"] == sorted(str(data / p.name) for p in loose)
    assert "ignored 2 image(s) outside any class folder" in result.stdout
    assert sorted(pd.read_csv(out / "split.csv")["class_name"].unique()) == ["seg_test", "seg_train"]
    # said at the start of a run too, not only in the split job's log; and each time, until the folders are renamed,
    # the first start's too (no split yet); and so are the images in no class folder
    config = tiny_config(tmp_path / "run", replace={"dataset": {"format": "imagefolder", "path": str(data)}})
    for _ in range(2):
        started = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
        assert (f"note: dataset.path: the class folders of {data} (seg_test, seg_train) hold no images of their own"
                in started), started[-3000:]
        assert (f"note: dataset: 2 image(s) are in no class folder, and the split leaves them out ({data / loose[0].name}, "
                f"{data / loose[1].name}; the split reads none of them, and its report "
                "resources/splits/target.report.json lists those there when it ran, images_outside_class_folders)"
                in started), started[-3000:]
    assert json.loads((tmp_path / "run/resources/splits/target.report.json").read_text())[
        "images_outside_class_folders"] == sorted(str(data / p.name) for p in loose)  # as the note says
    # The split reads no image of the root, so one removed there, or another saved there, splits nothing again (it
    # reran the split and so every job after it, for the same split); the note counts them at each start
    (data / loose[0].name).unlink()
    started = run_snakemake(tmp_path / "run", config, "-n", "--until", "split").stdout
    assert f"note: dataset: 1 image(s) are in no class folder, and the split leaves them out ({data / loose[1].name};" \
        in started, started[-3000:]
    assert jobs_run(started) == [] and re.search(r"total +0\n", started), started[-3000:]
    make_images(tmp_path / "more", {"x": 1}, seed=11)["x"][0].rename(data / "stray.png")
    started = run_snakemake(tmp_path / "run", config, "-n", "--until", "split").stdout
    assert "note: dataset: 2 image(s) are in no class folder" in started and jobs_run(started) == [], started[-3000:]
    (data / "stray.png").rename(data / "seg_test" / "cat" / "stray.png")  # moved into a class folder: split again
    started = run_snakemake(tmp_path / "run", config, "-n", "--until", "split").stdout
    assert jobs_run(started) == ["split"] and "1 image(s) are in no class folder" in started, started[-3000:]
    plain = tmp_path / "plain"
    make_images(plain, {"cat": 4, "dog": 4})
    result = run_split(imagefolder(plain), tmp_path / "plain_out")
    assert result.returncode == 0 and "note:" not in result.stdout and "outside any class" not in result.stdout, result.stdout
    assert json.loads((tmp_path / "plain_out" / "split.report.json").read_text())["layout_note"] is None


def test_photos_of_a_format_not_read_are_said_at_each_start_with_their_count(tmp_path):
    """An ImageFolder of PNGs beside a phone's .HEIC photos and a camera's .dng: the split reads the PNGs alone,
    which its log said; the start says it too, counting each format (a .txt is no photo: not counted), every run,
    and a photo added later counts where its folder is looked at again (the watch cache kept the others)."""
    data = tmp_path / "data"
    make_images(data, {"cat": 4, "dog": 4})
    (data / "cat" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (data / "dog" / "deep").mkdir()
    (data / "dog" / "deep" / "raw.dng").write_bytes(b"II*\0")
    (data / "dog" / "notes.txt").write_text("taken in May")
    (data / "cat" / ".hidden.heic").write_bytes(b"")
    (data / "IMG_0000.heic").write_bytes(b"")  # in the root: in no class, converted or not; not counted
    config = tiny_config(tmp_path / "run", replace={"dataset": {"format": "imagefolder", "path": str(data),
                                                                "val_fraction": 0.25, "test_fraction": 0.25}})
    expected = ("note: dataset.path: 2 file(s) of an image format not read here (1 .dng, 1 .heic) are left out of "
                "the dataset: to train on them, convert them to one read here (.png, .jpg")
    for _ in range(2):
        started = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
        assert expected in started, started[-3000:]
    split = pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv")
    assert len(split) == 8 and not split["path"].str.lower().str.endswith((".heic", ".dng")).any()
    (data / "cat" / "IMG_0002.heic").write_bytes(b"\0\0\0\x18ftypheic")
    started = run_snakemake(tmp_path / "run", config, "-n").stdout
    assert "3 file(s) of an image format not read here (1 .dng, 2 .heic)" in started, started[-3000:]
    for photo in [*data.rglob("*.heic"), *data.rglob("*.HEIC"), *data.rglob("*.dng")]:
        photo.unlink()
    assert "not read here" not in run_snakemake(tmp_path / "run", config, "-n").stdout


def test_split_folders_mixed_with_class_folders_are_refused(tmp_path):
    data = tmp_path / "data"
    make_images(data / "train", {"cat": 4, "dog": 4})
    make_images(data, {"bird": 4})
    result = run_split(imagefolder(data), tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: {data} mixes split folders holding class folders (train) with other folders (bird)" in result.stdout


def test_the_source_dataset_s_split_names_its_keys_under_pretrain_dataset(tmp_path):
    """The split of pretrain's source dataset told the user to change `dataset.classes` (the target's key, which
    changes nothing there) and said `dataset.val_fraction` did not apply to its val folder: its messages name
    `pretrain.dataset.<key>`, the target's still `dataset.<key>`."""
    data = tmp_path / "source"
    make_images(data / "train", {"cat": 6, "dog": 6})
    make_images(data / "val", {"cat": 2, "dog": 2}, seed=1)
    shutil.copytree(data, tmp_path / "target")
    folder = {"format": "imagefolder", "path": str(data), "test_fraction": 0.2}
    config = tiny_config(tmp_path / "run", replace={"dataset": {**folder, "path": str(tmp_path / "target")},
                                                    "pretrain": {**TINY_CONFIG["pretrain"], "dataset": folder}})
    # val_fraction not written above: one written is refused at start
    run_snakemake(tmp_path / "run", config, "--until", "split")
    source = (tmp_path / "run" / "results/logs/split/source.log").read_text()
    target = (tmp_path / "run" / "results/logs/split/target.log").read_text()
    assert "val: the dataset's own val split (its val folder, or the rows marked val); pretrain.dataset.val_fraction does not apply to it" in source
    assert "val: the dataset's own val split (its val folder, or the rows marked val); dataset.val_fraction does not apply to it" in target

    (data / "train" / "dog" / "000.png").unlink()
    for name in ("001", "002", "003", "004"):
        (data / "train" / "dog" / f"{name}.png").unlink()
    result = run_snakemake(tmp_path / "run", config, "--until", "split", check=False)
    assert result.returncode != 0  # refused at start (the split made before kept), as the split job would refuse it
    error = result.stdout[result.stdout.find("class 'dog'"):result.stdout.find("nothing ran")]
    assert "class 'dog' has 1 image(s) outside the official val split: too few to stratify" in error, \
        result.stdout[-3000:]
    assert error.endswith("or leave the class out with pretrain.dataset.classes: ") and " dataset.classes" not in error
    alone = run_script("split", "--dataset", json.dumps(folder), "--out", str(tmp_path / "alone.csv"), "--report",
                       str(tmp_path / "alone.report.json"), "--threads", "1", "--key", "pretrain.dataset")
    assert alone.stdout.strip().removeprefix("error: ").rstrip(".") in result.stdout, (alone.stdout, result.stdout[-3000:])


def test_a_misspelt_class_folder_stops_the_run_at_start_keeping_the_split_made_before(tmp_path):
    """A class misspelt in `dataset.classes` of an ImageFolder failed the split job, and Snakemake removed the split
    it had made before: with the name put right, the split, the source model and every run were made again. The
    folder names are checked at start now, naming the key (`pretrain.dataset.classes` for the source)."""
    data = tmp_path / "images"
    make_images(data, {"cat": 6, "dog": 6, "owl": 6})
    folder = {"format": "imagefolder", "path": str(data), "val_fraction": 0.2, "test_fraction": 0.2}
    good = tiny_config(tmp_path / "run", replace={"dataset": {**folder, "classes": ["cat", "dog"]}, "pretrain": {
        **TINY_CONFIG["pretrain"], "dataset": {**folder, "classes": ["dog", "owl"]}}})
    run_snakemake(tmp_path / "run", good, "--until", "split")
    before = snapshot(tmp_path / "run" / "resources" / "splits")
    for name, key, dataset, pretrain in (
            ("target", "dataset", {**folder, "classes": ["cat", "dgo"]}, {**folder, "classes": ["dog", "owl"]}),
            ("source", "pretrain.dataset", {**folder, "classes": ["cat", "dog"]}, {**folder, "classes": ["dog", "oww"]})):
        bad = tiny_config(tmp_path / "run", f"{name}.yaml",
                          replace={"dataset": dataset, "pretrain": {**TINY_CONFIG["pretrain"], "dataset": pretrain}})
        result = run_snakemake(tmp_path / "run", bad, "--until", "split", check=False)
        assert result.returncode != 0
        wrong = "dgo" if name == "target" else "oww"
        assert (f"{key}.classes: '{wrong}' is not a class of {data}; its classes are ['cat', 'dog', 'owl']: nothing ran, "
                "and the split made before is kept") in result.stdout, result.stdout[-3000:]
        assert snapshot(tmp_path / "run" / "resources" / "splits") == before
    again = run_snakemake(tmp_path / "run", good, "--until", "split").stdout
    assert jobs_run(again) == [], again


def test_class_indices_that_a_new_class_folder_moves_stop_the_run_at_start(tmp_path):
    """`dataset.classes: [1, 2]` of an ImageFolder, then a folder `aardvark/` added: the indices named other classes,
    and the run split and trained those with nothing said but Snakemake's "Params have changed". It stops at start
    naming the classes before and now; written by name, the classes of before are kept and nothing reruns but the
    split (its params changed), which draws the same images."""
    data = tmp_path / "images"
    make_images(data, {"bag": 6, "cat": 6, "dog": 6})
    folder = {"format": "imagefolder", "path": str(data), "val_fraction": 0.2, "test_fraction": 0.2}
    by_index = tiny_config(tmp_path / "run", replace={"dataset": {**folder, "classes": [1, 2]}})
    run_snakemake(tmp_path / "run", by_index, "--until", "split")
    before = snapshot(tmp_path / "run" / "resources" / "splits")
    split = pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv")
    assert sorted(split["class_name"].unique()) == ["cat", "dog"]
    make_images(data, {"aardvark": 5}, seed=3)
    result = run_snakemake(tmp_path / "run", by_index, "--until", "split", check=False)
    assert result.returncode != 0
    assert (f"dataset.classes [1, 2]: its indices now name ['bag', 'cat'], and named ['cat', 'dog'] when the split "
            f"was made: a class folder added or removed under {data} moves what an index names") in result.stdout \
        and "nothing ran, and the split made before is kept" in result.stdout, result.stdout[-3000:]
    assert snapshot(tmp_path / "run" / "resources" / "splits") == before
    by_name = tiny_config(tmp_path / "run", "names.yaml", replace={"dataset": {**folder, "classes": ["cat", "dog"]}})
    run_snakemake(tmp_path / "run", by_name, "--until", "split")
    after = pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv")
    pd.testing.assert_frame_equal(after, split)


def test_an_image_folder_changed_into_a_bad_one_stops_the_run_at_start_and_put_right_reruns_nothing(tmp_path):
    """An empty class folder added, a class folder written two ways (`Cat` beside `cat`, or one name composed two
    ways), split folders added beside the class folders, or a macOS zip's __MACOSX folder (said to be one): each failed
    the split job, and Snakemake removed the split made before, so that with the folder put right the split and every
    run after it were made again. They are checked at start where the folder changed, the split kept, and with the folder as it was nothing reruns."""
    import unicodedata

    data = tmp_path / "images"
    make_images(data, {"cat": 6, "dog": 6, "cr\u00eape": 6})
    config = tiny_config(tmp_path / "run", replace={"dataset": {
        "format": "imagefolder", "path": str(data), "val_fraction": 0.2, "test_fraction": 0.2}})
    run_snakemake(tmp_path / "run", config, "--until", "split")
    before = snapshot(tmp_path / "run" / "resources" / "splits")
    for name, message in (
            ("owl", f"class folder(s) with no images in {data}: owl"),
            (unicodedata.normalize("NFD", "cr\u00eape"), f"{data}: class folders whose names differ only in their "
                                                         "Unicode form (a letter with an accent as one character, or "
                                                         "as the letter and a combining accent), shown with the "
                                                         "characters' codes: 'cre\\u0302pe' and 'cr\\xeape'"),
            ("train", f"{data} mixes split folders holding class folders (train) with other folders"),
            # a zip made on macOS, unzipped: __MACOSX/<class>/._<image> (AppleDouble files, hidden), no images
            ("__MACOSX", f"{data}: __MACOSX (extensions read: .png, .jpg, .jpeg, .jfif, .jpe, .bmp, .gif, .tif, .tiff, "
                         ".webp, .ppm, .pgm); add images, or remove the folder(s) or leave the class out with "
                         f"dataset.classes; {data / '__MACOSX'} is no class but the metadata a zip made on macOS "
                         "carries (delete it, or unzip with -x '__MACOSX/*')")):
        if name == "__MACOSX":
            (data / name / "cat").mkdir(parents=True)
            made = (data / name / "cat" / "._000.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
        else:
            made = make_images(data / name / "cat", {"": 1}) if name == "train" else (
                (data / name).mkdir() if name == "owl" else make_images(data, {name: 3}, seed=2))
        result = run_snakemake(tmp_path / "run", config, "--until", "split", check=False)
        assert result.returncode != 0
        assert message in result.stdout and "nothing ran, and the split made before is kept" in result.stdout, \
            result.stdout[-3000:]
        assert "rule split:" not in result.stdout
        assert snapshot(tmp_path / "run" / "resources" / "splits") == before
        shutil.rmtree(data / name)
        again = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
        assert jobs_run(again) == [], (made, again[-3000:])
    # `Cat` beside `cat`: two classes on Linux (letters of two cases may be meant), one folder on macOS or Windows;
    # said at the start of each run, not refused
    make_images(data, {"Cat": 3}, seed=2)
    started = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
    assert ("note: dataset.path: classes whose names differ only in letter case: 'Cat' and 'cat': two classes each"
            in started), started[-3000:]
    assert "Cat" in set(pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv")["class_name"])
    # `dog ` (a trailing space, from a copy or an archive): a class name no one sees, kept in every output: said too
    make_images(data, {"dog ": 3}, seed=3)
    started = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
    assert ("note: dataset.path: class folder name(s) beginning or ending with white space: 'dog ': the class names "
            "keep it") in started, started[-3000:]
    split = pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv", keep_default_na=False)
    assert "dog " in set(split["class_name"]) and "dog" in set(split["class_name"])


def split_of_cats_and_dogs(tmp_path: Path, fmt: str):
    """An ImageFolder of 6 cats and 6 dogs (``fmt`` csv: its CSV manifest), split by a run of the workflow in
    ``tmp_path / "run"``: (its folder, {class: image paths}, the manifest, its rows, the dataset config, the config
    file, a snapshot of the splits made)."""
    data = tmp_path / "images"
    made = make_images(data, {"cat": 6, "dog": 6})
    manifest = data / "manifest.csv"
    rows = [f"{name}/{i:03d}.png,{name}" for name in ("cat", "dog") for i in range(6)]
    manifest.write_text("\n".join(["path,label", *rows]) + "\n")
    dataset = {"format": fmt, "path": str(manifest if fmt == "csv" else data), "val_fraction": 0.2, "test_fraction": 0.2}
    config = tiny_config(tmp_path / "run", replace={"dataset": dataset})
    run_snakemake(tmp_path / "run", config, "--until", "split")
    return data, made, manifest, rows, dataset, config, snapshot(tmp_path / "run" / "resources" / "splits")


@pytest.mark.parametrize("fmt", ["imagefolder", "csv"])
def test_images_added_since_the_split_that_do_not_decode_stop_the_run_at_start_keeping_the_split(tmp_path, fmt):
    """A broken file dropped into a dataset after a run (a copy cut short, a file that is no image) failed the split
    job, and Snakemake removed the split made before: with the file deleted, the same images made the same split
    again, and every job after it ran again. The images new since the split are opened at start (one copied with its
    old time stamp too), the split is kept, and with them deleted nothing reruns; with on_bad_image: skip they are
    left to the split, which leaves them out."""
    data, _, manifest, rows, dataset, config, before = split_of_cats_and_dogs(tmp_path, fmt)

    bad = make_bad_images(tmp_path / "bad")
    added = {"cat": bad["truncated_png"], "dog": bad["not_an_image"]}
    for name, file in added.items():
        shutil.copy2(file, data / name / file.name)
        os.utime(data / name / file.name, (946684800, 946684800))  # copied keeping its time stamp (2000-01-01)
    if fmt == "csv":
        manifest.write_text("\n".join(["path,label", *rows, *(f"{n}/{f.name},{n}" for n, f in added.items())]) + "\n")
    result = run_snakemake(tmp_path / "run", config, "--until", "split", check=False)
    assert result.returncode != 0
    assert ("images new since the split was made do not decode (nothing ran, and the split made before is kept): "
            f"2 unreadable image(s) in {dataset['path']}: fix or delete them") in result.stdout, result.stdout[-3000:]
    named = re.findall(r"^  (\S+?)(?: \(line (\d+)\))?: (?:cannot decode|empty)", result.stdout, re.M)
    assert sorted(Path(path).name for path, _ in named) == sorted(f.name for f in added.values()), result.stdout[-3000:]
    if fmt == "csv":
        assert sorted(line for _, line in named) == ["14", "15"]
    assert "rule split:" not in result.stdout
    assert snapshot(tmp_path / "run" / "resources" / "splits") == before

    skip = tiny_config(tmp_path / "run", "skip.yaml", replace={"dataset": {**dataset, "on_bad_image": "skip"}})
    assert jobs_run(run_snakemake(tmp_path / "run", skip, "--until", "split", "--dry-run").stdout) == ["split"]
    for name, file in added.items():
        (data / name / file.name).unlink()
    if fmt == "csv":
        manifest.write_text("\n".join(["path,label", *rows]) + "\n")
    again = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
    assert jobs_run(again) == [], again[-3000:]

    # with on_bad_image: skip the split leaves them out, and each start says so (the split's log alone said so)
    for name, file in added.items():
        shutil.copy2(file, data / name / file.name)
    if fmt == "csv":
        manifest.write_text("\n".join(["path,label", *rows, *(f"{n}/{f.name},{n}" for n, f in added.items())]) + "\n")
    assert jobs_run(run_snakemake(tmp_path / "run", skip, "--until", "split").stdout) == ["split"]
    started = run_snakemake(tmp_path / "run", skip, "-n").stdout
    said = re.search(r"note: dataset\.on_bad_image: skip left 2 image\(s\) out of the split \(2 that do not decode: "
                     r"(.*?)\); each is listed with why in resources/splits/target\.report\.json", started)
    assert said and sorted(Path(p).name for p in said.group(1).split(", ")) == sorted(f.name for f in added.values()), \
        started[-3000:]
    # One put right in place, its name kept: the split does not see a file overwritten (dataset.watch: folders), so
    # the note names it and how to split again, which takes it in.
    repaired = data / "cat" / added["cat"].name
    shutil.copyfile(make_images(tmp_path / "fresh", {"cat": 1}, seed=9)["cat"][0], repaired)
    started = run_snakemake(tmp_path / "run", skip, "-n").stdout
    said = re.search(r"1 of them changed since \((.*?)\), but a file overwritten in place is not seen \(dataset\.watch: "
                     r"folders\) and the split leaves them out still: split again with --forcerun "
                     r"resources/splits/target\.csv \(the runs train again\), or set dataset\.watch: files", started)
    assert said and Path(said.group(1)).name == repaired.name, started[-3000:]
    assert jobs_run(run_snakemake(tmp_path / "run", skip, "--until", "split", "--forcerun",
                                  "resources/splits/target.csv").stdout) == ["split"]
    split = pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv")
    assert [row.class_name for row in split.itertuples() if Path(row.path).name == repaired.name
            and Path(row.path).parent.name == "cat"] == ["cat"]
    report = json.loads((tmp_path / "run" / "resources" / "splits" / "target.report.json").read_text())
    assert [Path(item["path"]).name for item in report["skipped_images"]] == [added["dog"].name]
    started = run_snakemake(tmp_path / "run", skip, "-n").stdout
    assert "skip left 1 image(s) out of the split" in started and "changed since" not in started, started[-3000:]


@pytest.mark.parametrize("fmt", ["imagefolder", "csv"])
def test_a_class_too_small_or_a_photo_copied_under_another_label_stops_the_run_at_start(tmp_path, fmt):
    """A class folder of one photo added (or a manifest's row of a new label), or a photo copied into a second class,
    failed the split job, and Snakemake removed the split made before: with the fault put right, the split and every
    job after it ran again. Both are found at start now, with the message the split job run alone on the same
    dataset gives, the split is kept, and with the fault put right nothing reruns."""
    data, made, manifest, rows, dataset, config, before = split_of_cats_and_dogs(tmp_path, fmt)

    def add_owl():
        make_images(data, {"owl": 1}, seed=5)
        return data / "owl"

    def copy_a_cat_into_dog():
        shutil.copy(made["cat"][1], data / "dog" / "copy of 001.png")
        return data / "dog" / "copy of 001.png"

    for add, row, expected in ((add_owl, "owl/000.png,owl", "class 'owl' has 1 image(s): too few to stratify"),
                               (copy_a_cat_into_dog, "dog/copy of 001.png,dog",
                                "images new since the split was made are the same file as an image of another class")):
        added = add()
        if fmt == "csv":
            manifest.write_text("\n".join(["path,label", *rows, row]) + "\n")
        alone = run_split(dataset, tmp_path / "alone")
        assert alone.returncode != 0
        split_job_says = alone.stdout.strip().removeprefix("error: ")
        result = run_snakemake(tmp_path / "run", config, "--until", "split", check=False)
        assert result.returncode != 0
        assert expected in result.stdout and split_job_says.rstrip(".") in result.stdout, (split_job_says, result.stdout[-3000:])
        assert "nothing ran, and the split made before is kept" in result.stdout, result.stdout[-3000:]
        assert ".: nothing ran" not in result.stdout, result.stdout[-3000:]  # the split job's full stop not kept
        assert "rule split:" not in result.stdout
        assert snapshot(tmp_path / "run" / "resources" / "splits") == before
        shutil.rmtree(added) if added.is_dir() else added.unlink()
        if fmt == "csv":
            manifest.write_text("\n".join(["path,label", *rows]) + "\n")
        again = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
        assert jobs_run(again) == [], again[-3000:]


def test_a_dataset_other_than_the_split_s_refused_at_start_says_the_split_kept_is_of_the_other(tmp_path):
    """A run's config pointed at another image folder, with an unreadable image or a dataset.classes it lacks: the
    refusal said "images new since the split was made" and "the split made before is kept", as if the split were of
    these images. It names the dataset the split was drawn from (its report's), the file that sets the key where
    several give the config, and the split is kept byte for byte."""
    data, _, _, _, dataset, config, before = split_of_cats_and_dogs(tmp_path, "imagefolder")
    other = tmp_path / "other"
    make_images(other, {"owl": 6, "fox": 6}, seed=3)
    shutil.copy(make_bad_images(tmp_path / "bad")["not_an_image"], other / "owl")
    mine = tmp_path / "run" / "other.yaml"
    mine.write_text(yaml.safe_dump({"dataset": {**dataset, "path": str(other)}}))
    result = run_snakemake(tmp_path / "run", config, mine, "--until", "split", check=False)
    assert result.returncode != 0 and "rule split:" not in result.stdout
    assert (f"images of this dataset do not decode (nothing ran, and the split made before, of another dataset "
            f"({data}), is kept): 1 unreadable image(s) in {other}") in result.stdout, result.stdout[-3000:]
    assert "new since the split" not in result.stdout
    assert snapshot(tmp_path / "run" / "resources" / "splits") == before

    mine.write_text(yaml.safe_dump({"dataset": {**dataset, "path": str(other), "classes": ["owl", "cat"]}}))
    result = run_snakemake(tmp_path / "run", config, mine, "--until", "split", check=False)
    assert result.returncode != 0 and "rule split:" not in result.stdout
    said = next(line for line in result.stdout.splitlines() if line.startswith("dataset.classes"))
    assert "'cat'" in said and said.endswith(f"(set in {mine}): nothing ran, and the split made before, of another "
                                             f"dataset ({data}), is kept"), said
    assert snapshot(tmp_path / "run" / "resources" / "splits") == before


@pytest.mark.parametrize("fmt", ["imagefolder", "csv"])
def test_the_images_opened_at_start_are_those_the_split_did_not_open(tmp_path, fmt):
    """finetune.startchecks.new_dataset_images against the split job's own files: none right after the split (with a
    cap, whose images the split opened and left out, neither); then exactly those added since: a file, a folder of
    old files moved in, a new link to an old file (with a cap, every image of a folder changed since counts)."""
    from finetune.startchecks import new_dataset_images

    data = tmp_path / "images"
    made = make_images(data, {"cat": 8, "dog": 8})
    old = 946684800  # 2000-01-01: files copied keeping their time stamps
    for files in made.values():
        for file in files:
            os.utime(file, (old, old))
    batch = tmp_path / "batch"  # made before the split, moved in after it: its file's times stay old
    make_images(batch, {"": 1}, seed=4)
    os.utime(batch / "000.png", (old, old))
    manifest = data / "manifest.csv"
    rows = [f"{name}/{i:03d}.png,{name}" for name in ("cat", "dog") for i in range(8)]
    manifest.write_text("\n".join(["path,label", *rows]) + "\n")
    for capped in (False, True):
        dataset = {"format": fmt, "path": str(manifest if fmt == "csv" else data), "val_fraction": 0.25,
                   "test_fraction": 0.25, "max_train_per_class": 2 if capped else None}
        out = tmp_path / f"out{capped}"
        assert run_split(dataset, out).returncode == 0
        time.sleep(0.05)
        assert new_dataset_images(dataset, out / "split.csv") == [], capped
    added = [data / "dog" / "later.png", data / "cat" / "batch" / "000.png", data / "dog" / "link.png"]
    shutil.copy2(made["cat"][0], added[0])
    os.utime(added[0], (old, old))
    batch.rename(data / "cat" / "batch")
    added[2].symlink_to(made["cat"][1])
    if fmt == "csv":
        manifest.write_text("\n".join(["path,label", *rows, "dog/later.png,dog", "cat/batch/000.png,cat",
                                       "dog/link.png,dog"]) + "\n")
    for capped in (False, True):
        dataset = {"format": fmt, "path": str(manifest if fmt == "csv" else data), "val_fraction": 0.25,
                   "test_fraction": 0.25, "max_train_per_class": 2 if capped else None}
        new = {Path(p).absolute() for p in new_dataset_images(dataset, tmp_path / f"out{capped}" / "split.csv")}
        expected = {p.absolute() for p in added}
        if capped:  # cat/ and dog/ changed (entries added): their images left out by the cap count too
            split = pd.read_csv(tmp_path / "outTrue" / "split.csv")
            opened = {Path(p).absolute() for p in split["path"]}
            expected |= {p.absolute() for files in made.values() for p in files} - opened
        assert new == expected, (capped, sorted(map(str, new)))


def test_with_a_cap_an_image_left_out_and_overwritten_in_place_with_an_old_time_is_opened_at_start(tmp_path):
    """With a cap, the split opened images it then left out, which the check at start does not open again unless
    changed since. One overwritten in place by a copy that keeps an older time stamp (cp -p, rsync -t) changes
    neither its modification time nor its folder's: its status change time says it changed, and it is opened."""
    from finetune.startchecks import new_dataset_images

    data = tmp_path / "images"
    made = make_images(data, {"cat": 8, "dog": 8})
    old = 946684800  # 2000-01-01
    for path in [*(p for files in made.values() for p in files), data / "cat", data / "dog", data]:
        os.utime(path, (old, old))
    dataset = imagefolder(data, val_fraction=0.25, test_fraction=0.25, max_train_per_class=2)
    assert run_split(dataset, tmp_path / "out").returncode == 0
    time.sleep(0.05)
    assert new_dataset_images(dataset, tmp_path / "out" / "split.csv") == []
    opened = {Path(p).absolute() for p in pd.read_csv(tmp_path / "out" / "split.csv")["path"]}
    left_out = next(p for p in made["cat"] if p.absolute() not in opened)
    replacement = make_images(tmp_path / "elsewhere", {"x": 1}, seed=7)["x"][0]
    os.utime(replacement, (old, old))
    shutil.copy2(replacement, left_out)  # into the file itself: the folder's entries do not change
    assert os.stat(left_out).st_mtime == old and os.stat(data / "cat").st_mtime == old
    assert {Path(p).absolute() for p in new_dataset_images(dataset, tmp_path / "out" / "split.csv")} == {left_out.absolute()}


def test_images_skipped_as_unreadable_or_under_two_labels_are_counted_apart_at_start(tmp_path):
    """on_bad_image: skip left out a file that does not decode and both copies of a photo under two labels: the note
    at start counts each kind, from the split's own report."""
    from finetune.startchecks import skipped_images_note

    data = tmp_path / "images"
    made = make_images(data, {"cat": 6, "dog": 6})
    shutil.copy(made["cat"][0], data / "dog" / "same_photo.png")
    shutil.copy(make_bad_images(tmp_path / "bad")["not_an_image"], data / "cat" / "notes.png")
    assert run_split(imagefolder(data, on_bad_image="skip"), tmp_path / "out").returncode == 0
    report_path = tmp_path / "out" / "split.report.json"
    note = skipped_images_note(json.loads(report_path.read_text()), str(report_path))
    assert note.startswith("on_bad_image: skip left 3 image(s) out of the split (1 that do not decode and 2 under two "
                           "labels (identical files): "), note


def test_a_class_name_beginning_or_ending_with_white_space_is_said_and_no_other():
    from finetune.startchecks import spacing_note

    note = spacing_note([" cat", "dog", "eel ", "f o x"])
    assert note.startswith("class folder name(s) beginning or ending with white space: ' cat', 'eel ': "), note
    assert spacing_note(["cat", "f o x"]) is None


@pytest.mark.parametrize("key, hinted", [("train", True), ("experiments.mine", True), ("experiments.mine.sweep", True),
                                         ("pretrain.train", False)])
def test_a_seed_written_in_a_section_is_pointed_to_the_top_level_seeds_except_pretraining_s(key, hinted):
    """A training seed in train, an experiment or its sweep: the runs' seeds are the top-level list. Pretraining trains
    one source model, so its seed gets no such hint."""
    from finetune.startchecks import seed_hint

    problem = f"{key}.seed: unknown key (did you mean sweep?); allowed keys: a, b"
    said = seed_hint(problem)
    assert ("the training seeds are the config's top-level seeds" in said) == hinted, said
    assert said.endswith("; allowed keys: a, b") and said.startswith(f"{key}.seed: unknown key")


def test_a_fraction_written_for_a_split_the_dataset_gives_is_refused_at_start(tmp_path):
    """`dataset.test_fraction` written for an ImageFolder with a test/ folder (or a manifest whose split column marks
    test rows) was ignored, said only in the split job's log; and editing it reran the split and everything after
    it. It is refused at start, naming the key and why; the fraction of a split the dataset lacks (val here) is
    taken, and the split made before is kept."""
    data = tmp_path / "images"
    make_images(data / "train", {"cat": 6, "dog": 6})
    make_images(data / "test", {"cat": 2, "dog": 2}, seed=1)
    folder = {"format": "imagefolder", "path": str(data)}
    config = tiny_config(tmp_path / "run", replace={"dataset": {**folder, "val_fraction": 0.34}})
    run_snakemake(tmp_path / "run", config, "--until", "split")
    split = pd.read_csv(tmp_path / "run" / "resources" / "splits" / "target.csv")
    assert split.groupby("split").size().to_dict() == {"test": 4, "train": 8, "val": 4}  # val drawn: 2 of 6 per class
    before = snapshot(tmp_path / "run" / "resources" / "splits")
    bad = tiny_config(tmp_path / "run", "bad.yaml", replace={"dataset": {**folder, "val_fraction": 0.34,
                                                                         "test_fraction": 0.1}})
    result = run_snakemake(tmp_path / "run", bad, "--until", "split", check=False)
    assert result.returncode != 0
    assert (f"dataset.test_fraction 0.1: {data} gives its own test images (its folder test/), so the fraction does "
            "not apply to them") in result.stdout and "remove dataset.test_fraction from your config: nothing ran" \
        in result.stdout, result.stdout[-3000:]
    assert "val_fraction" not in result.stdout.split("dataset.test_fraction 0.1")[1].split("\n")[0]
    assert snapshot(tmp_path / "run" / "resources" / "splits") == before
    # 0, the value that says the dataset gives that split (the schema's "0 only there"), is taken: nothing to redo
    zero = tiny_config(tmp_path / "run", "zero.yaml", replace={"dataset": {**folder, "val_fraction": 0.34,
                                                                           "test_fraction": 0}})
    result = run_snakemake(tmp_path / "run", zero, "--until", "split")
    assert "gives its own test images" not in result.stdout, result.stdout[-3000:]

    # A manifest's split column, as its last split found it (the manifest unchanged: not read again)
    manifest = write_manifest_csv(tmp_path / "csv", [f"{r},{'test' if r.startswith(('cat/000', 'dog/000')) else ''}"
                                                     for r in good_rows()], header="path,label,split")
    dataset = {"format": "csv", "path": str(manifest), "val_fraction": 0.34}
    config = tiny_config(tmp_path / "csvrun", replace={"dataset": dataset})
    run_snakemake(tmp_path / "csvrun", config, "--until", "split")
    bad = tiny_config(tmp_path / "csvrun", "bad.yaml", replace={"dataset": {**dataset, "test_fraction": 0.25}})
    before = snapshot(tmp_path / "csvrun" / "resources" / "splits")
    result = run_snakemake(tmp_path / "csvrun", bad, "--until", "split", check=False)
    assert result.returncode != 0
    assert (f"dataset.test_fraction 0.25: {manifest} gives its own test images (the rows its split column marks "
            "test)") in result.stdout, result.stdout[-3000:]
    assert snapshot(tmp_path / "csvrun" / "resources" / "splits") == before


def test_a_manifest_that_does_not_parse_says_which_line_and_how_to_write_it(tmp_path):
    """A path holding a comma, unquoted, and a line saved in Latin-1 (a spreadsheet's default): the start said pandas'
    "Error tokenizing data. C error: Expected 2 fields in line 10, saw 3" with a line break inside, or "'utf-8' codec
    can't decode byte 0xe0 in position 1", a place in a block of the file, not its line. The line is named now, with
    how to write it; the split made before is kept."""
    manifest = write_manifest_csv(tmp_path, good_rows())
    good = manifest.read_bytes()
    config = tiny_config(tmp_path / "run", replace={"dataset": {"format": "csv", "path": str(manifest),
                                                                "val_fraction": 0.25, "test_fraction": 0.25}})
    run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/target.csv")
    before = snapshot(tmp_path / "run" / "resources" / "splits")
    for edit, said in ((good + b"cat/a,b.png,cat\n", "line 10 has 3 fields, and the lines before it 2: a path or label "
                                                     'that holds a comma is written in double quotes ("cats/a,b.png")'),
                       (good.replace(b"dog/001.png,dog", "dog/001.png,dög".encode("latin-1")),
                        "line 7 is not UTF-8 text (the encoding it is read in): save the file as UTF-8")):
        manifest.write_bytes(edit)
        result = run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/target.csv", check=False)
        assert result.returncode != 0 and f"cannot parse CSV manifest {manifest}: {said}" in result.stdout, \
            result.stdout[-3000:]
        assert "nothing ran, and the split made before is kept" in result.stdout and "C error" not in result.stdout
        assert snapshot(tmp_path / "run" / "resources" / "splits") == before


@pytest.mark.parametrize("edit", ["comma", "latin-1", "twice"])
def test_the_split_script_run_alone_says_a_manifest_s_line_as_the_start_does(tmp_path, edit):
    """split.py run by hand on a manifest that does not parse, or lists an image twice under two labels: the line and
    how to write it, as the start check says it (pandas' "C error: Expected 2 fields" and the codec's byte position
    were said before), exit status 1 and no split written."""
    manifest = write_manifest_csv(tmp_path, good_rows())
    good = manifest.read_bytes()
    manifest.write_bytes({"comma": good + b"cat/a,b.png,cat\n",
                          "latin-1": good.replace(b"dog/001.png,dog", "dog/001.png,dög".encode("latin-1")),
                          "twice": good + b"cat/001.png,dog\n"}[edit])
    lines = manifest.read_bytes().split(b"\n")
    bad_line = next(i for i, line in enumerate(lines, 1) if line.count(b",") > 1 or b"\xf6" in line
                    or (edit == "twice" and i == len(lines) - 1))
    said = {"comma": f"cannot parse CSV manifest {manifest}: line {bad_line} has 3 fields, and the lines before it 2: "
                     'a path or label that holds a comma is written in double quotes ("cats/a,b.png")',
            "latin-1": f"cannot parse CSV manifest {manifest}: line {bad_line} is not UTF-8 text (the encoding it is "
                       "read in): save the file as UTF-8",
            "twice": f"CSV manifest {manifest} lists the same image more than once: {manifest.parent / 'cat/001.png'} "
                     f"(lines 3, {bad_line}: labelled 'cat' and 'dog')"}[edit]
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1 and f"error: {said}" in result.stdout, result.stdout
    assert "C error" not in result.stdout and not (tmp_path / "out" / "split.csv").exists()


def test_a_csv_manifest_edited_into_a_bad_one_stops_the_run_at_start_keeping_the_split_made_before(tmp_path):
    """A row added for a file that is not there (or a row twice, a label differing only in case, a class of
    dataset.classes the manifest lost) failed the split job, and Snakemake removed the split it had made before:
    with the manifest put right, the split and every run after it were made again."""
    manifest = write_manifest_csv(tmp_path, [f"{r},{'test' if r.endswith(('000.png,cat', '000.png,dog')) else ''}"
                                             for r in good_rows()], header="path,label,split")
    good_text = manifest.read_text()
    dataset = {"format": "csv", "path": str(manifest), "classes": ["cat", "dog"], "val_fraction": 0.25}
    config = tiny_config(tmp_path / "run", replace={"dataset": dataset})
    run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/target.csv")
    before = snapshot(tmp_path / "run" / "resources" / "splits")
    for edit, message in (
            (good_text + "cat/lost.png,cat,\n", f"names 1 image(s) that do not exist: {manifest.parent / 'cat/lost.png'} (line 10)"),
            (good_text + "cat/001.png,cat,\n", f"lists the same image more than once: {manifest.parent / 'cat/001.png'} (lines 3, 10)"),
            (good_text + "cat/001.png,dog,\n", f"lists the same image more than once: {manifest.parent / 'cat/001.png'} "
                                               "(lines 3, 10: labelled 'cat' and 'dog')"),
            (good_text.replace("dog/003.png,dog", "dog/003.png,Dog"), "label(s) that differ only in case"),
            (good_text.replace(",cat,", ",kat,"), f"dataset.classes: 'cat' is not a class of {manifest}")):
        manifest.write_text(edit)
        result = run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/target.csv", check=False)
        assert result.returncode != 0
        assert message in result.stdout and "nothing ran, and the split made before is kept" in result.stdout, result.stdout[-3000:]
        assert snapshot(tmp_path / "run" / "resources" / "splits") == before
    manifest.write_text(good_text)  # put right: newer than the split, checked, and the same split made again
    run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/target.csv")
    assert snapshot(tmp_path / "run" / "resources" / "splits") == before
    # dataset.classes misspelt, the manifest as it was: checked too (the split job refused it, and the split was gone),
    # for the source's manifest naming pretrain.dataset.classes
    for key, replace in (("dataset", {"dataset": {**dataset, "classes": ["cat", "dgo"]}}),
                         ("pretrain.dataset", {"pretrain": {**TINY_CONFIG["pretrain"], "dataset": {**dataset, "classes": ["cat", "dgo"]}}})):
        bad = tiny_config(tmp_path / "run", "bad.yaml", replace={"dataset": dataset, **replace})
        result = run_snakemake(tmp_path / "run", bad, "--printshellcmds", "resources/splits/target.csv", check=False)
        assert result.returncode != 0
        assert (f"{key}.classes: 'dgo' is not a class of {manifest}; its classes are ['cat', 'dog']: nothing ran, and "
                f"{'the split made before is kept' if key == 'dataset' else 'no split was made from it'}") in result.stdout, \
            result.stdout[-3000:]
        assert snapshot(tmp_path / "run" / "resources" / "splits") == before
    # the same text touched, an image it names gone since the split (decoded already): nothing to check at start, as
    # before the check (the manifest's time alone had it read, and the run stopped)
    (manifest.parent / "cat" / "003.png").unlink()
    os.utime(manifest)
    result = run_snakemake(tmp_path / "run", config, "-n", "resources/splits/target.csv", check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_pretraining_on_the_target_s_own_classes_of_one_dataset_is_said_at_start(tmp_path):
    """A config of its own that names Fashion-MNIST's classes 6-9 and `weights: {source: pretrain}`, pretrain.dataset
    left to the schema (all ten classes): the source model was trained on the target's classes without a word, and
    the transfer runs beat scratch by having seen them. A note names the shared classes; none where they differ, or
    where the datasets are two."""
    from finetune.data import FASHION_MNIST_CLASSES

    def notes(config: dict) -> list[str]:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        out = run_snakemake(tmp_path / "run", tmp_path / "config.yaml", "-n").stdout
        return [line for line in out.splitlines() if line.startswith("note: pretrain.dataset.path and dataset.path")]

    pretrain = {**TINY_CONFIG["pretrain"], "dataset": {"format": "fashion-mnist", "path": TINY_CONFIG["dataset"]["path"]}}
    shared = ", ".join(repr(FASHION_MNIST_CLASSES[i]) for i in TINY_CONFIG["dataset"]["classes"])
    (note,) = notes({**TINY_CONFIG, "pretrain": pretrain})
    assert note.startswith(f"note: pretrain.dataset.path and dataset.path are one dataset and share the class(es) {shared}: the "
                           "source model is pretrained on the target's classes, its train and val images likely among them")
    assert notes({**TINY_CONFIG, "pretrain": {**pretrain, "dataset": {**pretrain["dataset"], "classes": [0, 6]}}}) == [
        note.replace(shared, repr(FASHION_MNIST_CLASSES[6]))]
    assert notes(TINY_CONFIG) == []  # classes 0-5 and 6-9, as the demo
    data = tmp_path / "images"
    make_images(data, {"cat": 4, "dog": 4, "owl": 4})
    folder = {"format": "imagefolder", "path": str(data)}
    (note,) = notes({**TINY_CONFIG, "dataset": {**folder, "classes": ["cat", "dog"]},
                     "pretrain": {**pretrain, "dataset": {**folder, "classes": ["dog", "owl"]}}})
    assert "share the class(es) 'dog': the source model is pretrained on the target's classes, its test images possibly" in note
    make_images(tmp_path / "copy", {"dog": 4, "owl": 4})
    assert notes({**TINY_CONFIG, "dataset": {**folder, "classes": ["cat", "dog"]},
                  "pretrain": {**pretrain, "dataset": {"format": "imagefolder", "path": str(tmp_path / "copy")}}}) == []


def test_csv_manifest_written_with_spaces_after_the_commas_or_by_excel_reads_as_meant(tmp_path):
    """`path, label, split` and `cat/000.png, cat, test`, as a hand-written manifest often is, and Excel's "CSV UTF-8"
    (a byte-order mark, Windows line ends): the same split as the plain manifest (not a refusal for want of a
    `label` column, nor classes named ' cat')."""
    marks = {"cat": ["test", "", "", "", "val", ""], "dog": ["", "test", "", "", "", "val"]}
    plain = marked_manifest(tmp_path, marks)
    plain.with_name("spaced.csv").write_text(plain.read_text().replace(",", ", "))
    plain.with_name("excel.csv").write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    spec = {"format": "csv", "val_fraction": 0.25, "test_fraction": 0.25}
    for name in ("manifest", "spaced", "excel"):
        result = run_split({**spec, "path": str(plain.with_name(f"{name}.csv"))}, tmp_path / name)
        assert result.returncode == 0, result.stdout
    for name in ("spaced", "excel"):
        assert (tmp_path / name / "split.csv").read_bytes() == (tmp_path / "manifest" / "split.csv").read_bytes(), name
    split = pd.read_csv(tmp_path / "spaced" / "split.csv")
    assert set(split.loc[split["split"] == "test", "path"]) == rows_marked(plain, "test")
    assert sorted(split["class_name"].unique()) == ["cat", "dog"]


def test_csv_split_column_with_test_only_draws_val_from_the_rest(tmp_path):
    """Only test given: val is val_fraction of each class's other rows, never a test row."""
    marks = {"cat": ["test"] * 3 + ["train"] * 5 + [""] * 5, "dog": ["test"] * 2 + [""] * 10}
    manifest = marked_manifest(tmp_path, marks)
    result = run_split({"format": "csv", "path": str(manifest), "val_fraction": 0.2, "test_fraction": 0.5}, tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    assert set(split.loc[split["split"] == "test", "path"]) == rows_marked(manifest, "test")
    pool = rows_marked(manifest, "train", "")
    val = split[split["split"] == "val"]
    assert set(val["path"]) <= pool
    assert val.groupby("class_name").size().to_dict() == {"cat": round(10 * 0.2), "dog": round(10 * 0.2)}
    assert set(split.loc[split["split"] == "train", "path"]) == pool - set(val["path"])


@pytest.mark.parametrize("value", ["tests", "holdout", "Tests"])  # not lower case: its lines were left out
def test_csv_split_value_that_names_no_split_is_refused(tmp_path, value):
    """A misspelt mark would put those images in the pool (test images into training): refused, naming it."""
    marks = {"cat": ["test", "train", "train", value, "train"], "dog": ["test", "train", "train", "train", value]}
    manifest = marked_manifest(tmp_path, marks)
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"error: CSV manifest {manifest}: column split holds value(s) that name no split: '{value}' (line(s) 5, 11)" \
        in result.stdout
    assert "Use test, val, train (or testing, valid, validation, training), or leave it empty" in result.stdout
    assert not (tmp_path / "out" / "split.csv").exists()


# --------------------------------------------------------------------------- image modes and sizes

def write_png16_rgb(path: Path, pixels: np.ndarray, transparent: tuple[int, ...] | None = None) -> None:
    """A 16-bit PNG, RGB (H, W, 3) or gray (H, W), written by hand (PIL cannot write one); ``transparent``: the
    colour key of its tRNS chunk (one value per channel)."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    key = chunk(b"tRNS", struct.pack(f">{len(transparent)}H", *transparent)) if transparent else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + key + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def write_mode_variants(folder: Path, rgb: np.ndarray, huge: bool = False) -> dict[str, Path]:
    """The same picture in every mode a real dataset mixes: {mode label: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    gray = np.asarray(img.convert("L"))
    out = {}

    def save(label, image, name, **kwargs):
        out[label] = folder / name
        image.save(out[label], **kwargs)

    save("L", img.convert("L"), "gray.png")
    save("RGBA", img.convert("RGBA"), "rgba.png")
    save("P", img.convert("P"), "palette.png")
    save("P+transparency", img.convert("P"), "palette_transparent.png", transparency=0)
    save("LA", img.convert("LA"), "gray_alpha.png")
    save("1", img.convert("1"), "bilevel.png")
    save("CMYK", img.convert("CMYK"), "cmyk.jpg", quality=95)
    save("I;16", Image.fromarray(gray.astype(np.uint16) * 257), "gray16.png")
    save("I;16 tiff", Image.fromarray(gray.astype(np.uint16) * 257), "gray16.tif")
    save("F", Image.fromarray(gray.astype(np.float32) / 255.0), "float.tif")
    out["RGB 16-bit"] = folder / "rgb16.png"
    write_png16_rgb(out["RGB 16-bit"], rgb.astype(np.uint16) * 257)
    save("RGB", img, "rgb.bmp")
    if huge:
        big = Image.fromarray(rgb).resize((5000, 4000), Image.Resampling.NEAREST)
        save("5000x4000", big, "huge.jpg", quality=85)
    return out


def test_every_image_mode_decodes_to_8bit_rgb_consistently(tmp_path):
    from finetune.images import load_image, preprocess

    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    variants = write_mode_variants(tmp_path, rgb, huge=True)
    for label, path in variants.items():
        pixels = np.asarray(load_image(str(path)))
        expected_shape = (4000, 5000, 3) if label == "5000x4000" else (24, 40, 3)
        assert pixels.shape == expected_shape and pixels.dtype == np.uint8, (label, pixels.shape, pixels.dtype)
        assert preprocess(load_image(str(path)), 32, 32).shape == (32, 32, 3), label
    gray8 = np.asarray(load_image(str(variants["L"])))
    # 16-bit and float files carry the same picture: they must give the same 8-bit pixels ...
    for label in ("I;16", "I;16 tiff", "F"):
        assert np.array_equal(np.asarray(load_image(str(variants[label]))), gray8), label
    assert np.array_equal(np.asarray(load_image(str(variants["RGB 16-bit"]))), rgb)
    assert np.array_equal(np.asarray(load_image(str(variants["RGBA"]))), rgb)
    # ... and a 16-bit value maps to one 8-bit value whatever else is in the image: a dark image stays dark.
    dark = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 2570, dtype=np.uint16)).save(dark)
    assert np.unique(np.asarray(load_image(str(dark)))).tolist() == [10]


def test_a_16bit_png_s_colour_key_is_transparent_as_an_8bit_one_s(tmp_path):
    """PNG's tRNS chunk names one colour as transparent, in the file's own bit depth; transparent pixels are
    composited over black (black here), whatever the depth."""
    from finetune.images import load_image

    values = np.array([[0, 255, 256, 1000, 32768, 60000, 60159, 65535]], dtype=np.uint16)
    write_png16_rgb(tmp_path / "gray16.png", values, transparent=(60000,))
    gray = np.asarray(load_image(str(tmp_path / "gray16.png")))[0, :, 0]
    expected = np.where(values[0] == 60000, 0, np.rint(values[0] / 257)).astype(int)
    assert gray.tolist() == expected.tolist()
    write_png16_rgb(tmp_path / "rgb16.png", np.stack([values, values, values], -1), transparent=(60000,) * 3)
    rgb = np.asarray(load_image(str(tmp_path / "rgb16.png")))[0]
    # PIL keeps the 8 high bits of a 16-bit RGB value: the key matches on them (60159 >> 8 == 60000 >> 8).
    expected = np.where(values[0] >> 8 == 60000 >> 8, 0, values[0] >> 8).astype(int)
    assert rgb[:, 0].tolist() == expected.tolist() and (rgb == rgb[:, :1]).all()
    # 8-bit, the control: PIL's own colour key handling.
    Image.fromarray((values[0:1] >> 8).astype(np.uint8), mode="L").save(tmp_path / "gray8.png", transparency=234)
    assert np.asarray(load_image(str(tmp_path / "gray8.png")))[0, :, 0].tolist() == expected.tolist()


@pytest.mark.slow
def test_mixed_modes_and_sizes_split_and_train(tmp_path, tiny_manifest):
    data, out = tmp_path / "data", tmp_path / "out"
    rng = np.random.default_rng(1)
    cat = write_mode_variants(data / "cat", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), huge=True)
    dog = write_mode_variants(data / "dog", rng.integers(0, 256, (40, 32, 3), dtype=np.uint8))
    result = run_split(imagefolder(data), out)
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(out / "split.csv")
    assert len(split) == len(cat) + len(dog), "no image may be dropped"
    assert json.loads((out / "split.report.json").read_text())["skipped_images"] == []
    trained = run_script("train", *train_args(out / "split.csv", tiny_manifest, tmp_path / "run", TRAIN_OPTIONS))
    assert trained.returncode == 0, trained.stdout
    info = json.loads((tmp_path / "run" / "train_info.json").read_text())
    assert info["n_train"] == (split["split"] == "train").sum()


# --------------------------------------------------------------------------- Fashion-MNIST absent, no network

def test_fashion_mnist_missing_and_network_silent_fails_fast(tmp_path):
    """No IDX files in dataset.path and a network that accepts connections but never answers (all
    traffic goes through a silent proxy): one message saying how to get the files, after the
    download timeout, not after a hang."""
    empty = tmp_path / "empty"
    empty.mkdir()
    dataset = {"format": "fashion-mnist", "path": str(empty), "download_dir": str(tmp_path / "downloads"),
               "download_timeout_s": 2}
    with silent_server() as proxy:
        env = {"http_proxy": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy,
               "no_proxy": "", "NO_PROXY": ""}
        started = time.monotonic()
        result = run_split(dataset, tmp_path / "out", env=env, timeout=120)
        seconds = time.monotonic() - started
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    message = result.stdout
    assert f"Fashion-MNIST files missing in {empty}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "no answer within 2 s (dataset.download_timeout_s)" in message
    assert seconds < 60, f"took {seconds:.0f} s"
    assert not (tmp_path / "out" / "split.csv").exists()


@pytest.mark.parametrize("split, fraction, name, key", [
    ("test", "test_fraction", "target.csv", "dataset.test_fraction"),
    ("val", "val_fraction", "source.csv", "pretrain.dataset.val_fraction"),
])
def test_a_split_drawn_without_val_or_test_images_stops_at_decode_naming_the_key(tmp_path, split, fraction, name, key):
    """A fraction of 0 (the dataset giving no such split of its own) leaves the split file without val or
    test images: decode, the job after the split, stops there, naming the key, instead of a train or evaluate
    job failing after the training on a message about a decoded file; no decoded file is written."""
    data, out = tmp_path / "data", tmp_path / "out"
    make_images(data, {"cat": 6, "dog": 6})
    assert run_split(imagefolder(data, **{fraction: 0}), out).returncode == 0
    (out / "split.csv").rename(out / name)
    counts = pd.read_csv(out / name)["split"].value_counts()
    assert split not in counts and counts["train"] > 0, counts  # independently: the split file has none
    result = run_script("decode", "--split", str(out / name), "--image-size", "32", "--splits", "train", "val", "test",
                        "--out-images", str(out / "d.npy"), "--out-info", str(out / "d.json"))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    assert f"error: {out / name} has no {split} images" in result.stdout, result.stdout
    assert f"{key} is 0 and the dataset gives no {split} split of its own" in result.stdout, result.stdout
    assert f"set {key} above 0" in result.stdout
    assert not (out / "d.npy").exists() and not (out / "d.json").exists()


@pytest.mark.parametrize("sizes", [
    {"weights": "url", "sizes": {"resize_size": 36}},  # no crop_size
    {"weights": "url", "sizes": {"crop_size": 32}},  # no resize_size
    {"weights": "huggingface", "sizes": {"resize_size": 36, "crop_size": 32}},  # no source the workflow writes
])
def test_decode_run_alone_with_weights_sizes_that_give_no_sizes_stops_naming_them(tmp_path, sizes):
    """--weights-sizes is what the workflow writes from weights.source and its preprocessing; a script run alone
    with one that cannot give both the resize and the crop stops with one line quoting it, before decoding,
    rather than a KeyError's traceback or images decoded at sizes nobody asked for."""
    data, out = tmp_path / "data", tmp_path / "out"
    make_images(data, {"cat": 6, "dog": 6})
    assert run_split(imagefolder(data), out).returncode == 0
    result = run_script("decode", "--split", str(out / "split.csv"), "--weights-sizes", json.dumps(sizes),
                        "--out-images", str(out / "d.npy"), "--out-info", str(out / "d.json"))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    assert f"error: decode: cannot tell the image sizes from {sizes!r}" in result.stdout, result.stdout
    assert not (out / "d.npy").exists() and not (out / "d.json").exists()


# --------------------------------------------------------------------------- config, rejected at start

PRE = {"resize_size": 32, "crop_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

BAD_CONFIGS = {
    "unknown_top_level_key": ({"foo": 1}, "foo: unknown key; allowed keys: dataset, evaluate,"),
    "unknown_nested_key": ({"train": {"lrr": 0.1}}, "train.lrr: unknown key (did you mean lr?); allowed keys:"),
    "train_key_at_the_top_level": ({"epochs": 3}, "epochs: unknown key (epochs is a key of train: write it under "
                                                  "train:, or on the command line --config 'train={epochs: 3}')"),
    "unknown_key_in_experiment": ({"experiments": {"finetune": {"epoch": 3}}},
                                  "experiments.finetune.epoch: unknown key (did you mean epochs?)"),
    "text_in_a_swept_lr": ({"experiments": {"finetune": {"sweep": {"lr": ["fast", 0.01]}}}},
                           "experiments.finetune.sweep.lr.0: 'fast' is not a number\n"),
    "no_space_after_a_colon": ({"experiments": {"finetune": {"epochs:6": None}}},
                               "experiments.finetune.epochs:6: unknown key (YAML reads 'epochs:6' as one key: write a "
                               "space after the colon, 'epochs: 6')"),
    # a key of another section: where it goes (no close key of its own section to guess)
    "key_of_another_section": ({"evaluate": {"opset": 17}}, "evaluate.opset: unknown key (opset is a key of export: "
                                                             "export.opset); allowed keys:"),
    "evaluate_key_in_an_experiment": ({"experiments": {"finetune": {"top_k": 3}}},
                                      "experiments.finetune.top_k: unknown key (top_k is a key of evaluate, predict: "
                                      "evaluate.top_k); allowed keys:"),
    "top_level_key_in_an_experiment": ({"experiments": {"finetune": {"seeds": [0, 1]}}},
                                       "experiments.finetune.seeds: unknown key (seeds is a key of the config's top "
                                       "level, not of experiments.finetune); allowed keys:"),
    # a training seed in a section: not the closest key's `sweep`, but the top-level list
    "seed_in_a_sweep": ({"experiments": {"finetune": {"sweep": {"seed": [0, 1]}}}},
                        "experiments.finetune.sweep.seed: unknown key (the training seeds are the config's top-level "
                        "seeds, a list every experiment runs once per seed, as in seeds: [0, 1, 2]; dataset.seed draws the "
                        "split); allowed keys:"),
    # a sweep outside an experiment: where it goes, not only the list of train's keys
    "sweep_in_train": ({"train": {"sweep": {"lr": [0.1, 0.01]}}},
                       "train.sweep: unknown key (sweep is a key of an experiment, experiments.<name>.sweep: it trains "
                       "that experiment once per value)"),
    "seed_in_train": ({"train": {"seed": 1}}, "train.seed: unknown key (the training seeds are the config's top-level "
                                              "seeds"),
    "fashion_mnist_class_out_of_range": ({"dataset": {"classes": [6, 12]}},
                                         "dataset.classes: index 12 is out of range (Fashion-MNIST has 10 classes)"),
    "fashion_mnist_class_twice": ({"pretrain": {"dataset": {"classes": [0, 6, "Shirt"]}}},
                                  "pretrain.dataset.classes names 'Shirt' twice"),
    "crop_larger_than_resize": ({"weights": {"source": "url", "url": "http://127.0.0.1:9/w.pth", "sha256": "ab" * 32,
                                             "preprocessing": {**PRE, "resize_size": 24, "crop_size": 32}}},
                                "weights.preprocessing: crop_size 32 is larger than resize_size 24"),
    "wrong_type": ({"train": {"epochs": "ten"}}, "train.epochs: 'ten' is not an integer"),
    # a typo of a few zeros: the decode job would fill the disk or the memory before any message
    "image_size_far_too_large": ({"experiments": {"finetune": {"image_size": 100000}}},
                                 "experiments.finetune.image_size: 100000 is too large: it must be <= 2048"),
    "empty_section": ({"experiments": {"finetune": None}},
                      "experiments.finetune: empty (YAML reads a key with nothing after it as null), and it must be a "
                      "mapping (key: value): write `finetune: {}` for none of its keys"),
    "number_yaml_reads_as_text": ({"train": {"lr": "1e-3"}},
                                  "train.lr: '1e-3' is not a number (YAML reads 1e-3 as text: write it with a decimal point"),
    "number_quoted": ({"train": {"lr": "0.01"}},
                      "train.lr: '0.01' is not a number (it is quoted, so YAML reads it as text: write 0.01 without quotes)"),
    "number_with_a_point_but_no_exponent_sign": ({"train": {"weight_decay": "1.0e4"}},
                                                 "train.weight_decay: '1.0e4' is not a number (YAML reads 1.0e4 as text: "
                                                 "write it with a decimal point and a signed exponent, e.g. 1.0e+04)"),
    "whole_number_written_with_a_point": ({"experiments": {"finetune": {"epochs": 2.0}}},
                                          "experiments.finetune.epochs: 2.0 is not an integer: write it without the "
                                          "decimal point, 2"),
    "path_read_as_a_date": ({"dataset": {"path": datetime.date(2024, 5, 1)}},
                            "dataset.path: YAML reads 2024-05-01 as a date, not as text: put it in quotes, '2024-05-01'"),
    "seeds_empty": ({"seeds": None}, "seeds: empty (YAML reads a key with nothing after it as null), and it must be a "
                                     "list: leave `seeds:` out for the default, [0]"),
    "seed_read_as_a_boolean": ({"seeds": [True]}, "seeds.0: true is not an integer"),
    "seed_written_with_a_point": ({"seeds": [1.0]}, "seeds.0: 1.0 is not an integer: write it without the decimal point, 1"),
    "experiment_named_by_a_number": ({"experiments": {2024: {"strategy": "finetune"}}},
                                     "experiments.2024: YAML reads this name as a number or a date, not as text: put "
                                     "it in quotes as you wrote it"),
    "off_unquoted": ({"train": {"amp": False}}, "train.amp: False is not allowed; use one of off, bf16, fp16 (YAML reads "
                                                "an unquoted off, no or false as false: write 'off', quoted)"),
    "negative_lr": ({"train": {"lr": -0.1}}, "train.lr: -0.1 is too small: it must be > 0"),
    "zero_epochs": ({"train": {"epochs": 0}}, "train.epochs: 0 is too small: it must be >= 1"),
    "test_fraction_one": ({"dataset": {"test_fraction": 1.0}}, "dataset.test_fraction: 1.0 is too large: it must be < 1"),
    "unknown_enum_value": ({"train": {"optimizer": "adam"}}, "train.optimizer: 'adam' is not allowed; use one of adamw, sgd, "
                                                             "lbfgs (did you mean adamw?)"),
    "enum_value_in_capitals": ({"train": {"amp": "BF16"}}, "train.amp: 'BF16' is not allowed; use one of off, bf16, fp16 "
                                                          "(write bf16, in lower case)"),
    "auto_in_capitals": ({"train": {"lr": "Auto"}}, "train.lr: 'Auto' is not a number or auto (write auto, in lower case)"),
    "integer_quoted": ({"train": {"epochs": "3"}},
                       "train.epochs: '3' is not an integer (it is quoted, so YAML reads it as text: write 3 without quotes)"),
    "boolean_quoted": ({"train": {"deterministic": "false"}}, "train.deterministic: 'false' is not true or false (it is "
                                                              "quoted, so YAML reads it as text: write false without quotes)"),
    "no_experiments": ({"replace": {"experiments": {}}},
                       "experiments: needs at least 1 entry(ies): write one, or leave the key out for the default, "
                       "{finetune: {}}"),
    "lbfgs_without_cached_features": (
        {"experiments": {"finetune": {"strategy": "finetune", "optimizer": "lbfgs"}}},
        "experiments.finetune: optimizer lbfgs (set here or in train) solves the new head on cached backbone features; "
        "it needs strategy: feature_extract, cache_features: true and augment: false (here strategy: finetune"),
    "fractions_leave_no_training_images": (
        {"dataset": {"format": "imagefolder", "path": "data", "val_fraction": 0.5, "test_fraction": 0.5}},
        "dataset.val_fraction + dataset.test_fraction is 1: it must be < 1"),
    "fashion_mnist_without_validation_images": (
        {"pretrain": {"dataset": {"val_fraction": 0}}},
        "pretrain.dataset.val_fraction is 0: Fashion-MNIST gives no val split, so there would be no validation images"),
    "url_weights_without_sha256": ({"weights": {"source": "url", "url": "http://example.org/w.pth", "preprocessing": PRE}},
                                   "weights.sha256: required with weights.source: url"),
    "sha256_not_hex": ({"weights": {"sha256": "abc"}}, "weights.sha256: 'abc' must be 64 hex digits (a sha256)"),
}


# One snakemake start-up per case (~3 s each, ~45 s for the table): slow. The quick tests keep one real
# snakemake rejection, test_every_config_problem_reported_at_once.
@pytest.mark.slow
def test_the_keys_pretrain_train_is_said_to_allow_are_those_it_does_not_refuse(tmp_path):
    """An unknown key of pretrain.train listed every train key as allowed, those refused there too (image_size,
    pretrained, devices, nodes, sync_batchnorm: test_config_reaches_jobs refuses each): the list is the schema's train
    keys less those."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    refused = {"pretrained", "image_size", "devices", "nodes", "sync_batchnorm"}
    expected = sorted(set(schema["$defs"]["train"]["properties"]) - refused)
    config = tiny_config(tmp_path, pretrain={"train": {"epoch": 2}})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    line = next((line for line in result.stdout.splitlines() if "pretrain.train.epoch: unknown key" in line), "")
    assert line.strip().endswith(f"(did you mean epochs?); allowed keys: {', '.join(expected)}"), result.stdout[-3000:]


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_rejected_at_start_naming_the_key(tmp_path, case):
    overrides, expected = BAD_CONFIGS[case]
    result = run_snakemake(tmp_path, tiny_config(tmp_path, **overrides), "-n", check=False, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "invalid configuration" in result.stdout, result.stdout
    assert expected in result.stdout, result.stdout
    assert "Failed validating" not in result.stdout, "Snakemake's schema dump instead of the one-line message"
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_every_config_problem_reported_at_once(tmp_path):
    config = tiny_config(tmp_path, train={"lr": -1, "epochs": 0}, dataset={"test_fraction": 2})
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0
    # one config file: named once, in the first line (with several, each line names its own)
    assert f"invalid configuration in {config} (3 problem(s)" in result.stdout, result.stdout
    for key in ("train.lr:", "train.epochs:", "dataset.test_fraction:"):
        assert key in result.stdout
    # The schema it points to is a path that opens from where the user is (was workflow/schemas/... relative to this
    # repository, which is not the working directory of a run elsewhere, nor of a host using it as a module).
    named = re.search(r"every key, its type and default: (\S+)\):", result.stdout).group(1)
    assert (tmp_path / named).resolve() == REPO / "workflow/schemas/config.schema.yaml", named


def test_a_key_written_twice_in_a_config_file_is_refused_naming_the_file_key_and_lines(tmp_path):
    """YAML keeps the last of two equal keys without a word: a second `evaluate:` section would drop the
    first's settings. Refused at start, at any depth, with the lines (counted here from the text); nothing
    runs. YAML merge keys (`<<`) and equal keys in different mappings are not duplicates."""
    text = tiny_config(tmp_path).read_text()
    text += "evaluate:\n  top_k: 3\nexperiments:\n  a: &base\n    strategy: finetune\n    lr: 0.03\n    lr: 0.04\n"
    text += "  b:\n    <<: *base\n    epochs: 2\n"
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    lines = text.splitlines()
    evaluate = [i + 1 for i, line in enumerate(lines) if line == "evaluate:"]
    experiments = [i + 1 for i, line in enumerate(lines) if line == "experiments:"]
    lr = [i + 1 for i, line in enumerate(lines) if line in ("    lr: 0.03", "    lr: 0.04")]
    assert len(evaluate) == len(experiments) == len(lr) == 2
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "a key is written twice in a config or profile file, or in --config" in result.stdout, result.stdout
    for key, (first, second) in (("evaluate", evaluate), ("experiments", experiments), ("experiments.a.lr", lr)):
        assert f"{config}: {key} is written twice (lines {first} and {second})" in result.stdout, result.stdout
    assert "experiments.b" not in result.stdout and "strategy" not in result.stdout
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
    # the same file read twice (at the demo's path, config/config.yaml, and given as --configfile): each line once
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(text)
    result = run_snakemake(tmp_path, tmp_path / "config" / "config.yaml", "-n", check=False, timeout=120)
    assert result.returncode != 0 and result.stdout.count(": evaluate is written twice") == 1, result.stdout


def test_a_number_yaml_reads_otherwise_than_written_is_refused_naming_the_file_key_and_line(tmp_path):
    """YAML 1.1 (Snakemake's reader) reads `epochs: 010` as 8 (octal) and `2:00:00` as 7200 (base 60): the train job
    got 8 epochs without a word, and a sweep over [010, 8] was refused as non-unique, values never written. Refused
    at start, in a file (with its line) and in --config; a leading zero that changes nothing (07) and a quoted time
    are read as written."""
    lines = tiny_config(tmp_path, train={"epochs": 1}).read_text().splitlines()
    lines[lines.index("  epochs: 1")] = "  epochs: 010"  # train's (pretrain.train's is indented further)
    text = "\n".join(lines) + "\n"
    config = tmp_path / "octal.yaml"
    config.write_text(text)
    line = text.splitlines().index("  epochs: 010") + 1
    assert yaml.safe_load(text)["train"]["epochs"] == 8  # what YAML makes of it, for the reader
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0 and (
        "a number in a config or profile file, or in --config, that YAML reads otherwise than written (nothing ran):\n"
        f"{config}: train.epochs: YAML reads 010 as 8, an octal number (its leading zero) (line {line}): write 10, "
        "without the zero") in result.stdout, result.stdout[-3000:]
    result = run_snakemake(tmp_path, tiny_config(tmp_path), "--config", "experiments={finetune: {epochs: 012}}",
                           "seeds=[07]", "-n", check=False, timeout=120)
    assert result.returncode != 0 and ("--config: experiments.finetune.epochs: YAML reads 012 as 10, an octal number "
                                       "(its leading zero): write 12, without the zero") in result.stdout \
        and "seeds" not in result.stdout.split("nothing ran")[-1], result.stdout[-3000:]
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
    # a class index written so, over Fashion-MNIST (whose names are words): YAML's 8 would train Bag, not class 10
    result = run_snakemake(tmp_path, tiny_config(tmp_path), "--config", "dataset={classes: [6, 7, 010, 9]}", "-n",
                           check=False, timeout=120)
    assert result.returncode != 0 and ("--config: dataset.classes[2]: YAML reads 010 as 8, an octal number (its leading "
                                       "zero), the class at index 8: write 10 for the class at index 10, or a class's "
                                       "name in quotes ('010')") in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()
    from finetune.userconfig import misread_numbers

    (tmp_path / "profile.yaml").write_text("set-resources:\n  train:\n    runtime: 2:00:00\n    slurm_extra: '1:30'\n")
    assert misread_numbers(tmp_path / "profile.yaml") == [
        "set-resources.train.runtime: YAML reads 2:00:00 as 7200, a number in base 60 (line 3), which Snakemake would "
        "take as 7200 minutes; '2:00:00' is Slurm's time format, which Snakemake does not take as a walltime (it reads "
        "minutes, or a duration such as 2h or 90m): write the minutes, 120"]
    (tmp_path / "other.yaml").write_text("evaluate:\n  x: 1:30\n")  # not a walltime: the general advice
    assert misread_numbers(tmp_path / "other.yaml") == [
        "evaluate.x: YAML reads 1:30 as 90, a number in base 60 (line 2): write the number meant (90, if so), or put it "
        "in quotes for text ('1:30')"]


def test_a_key_written_twice_on_the_command_line_is_refused_and_a_nan_or_infinity_anywhere(tmp_path):
    """--config 'train={epochs: 1, epochs: 2}' kept the last without a word, as a file did before it was refused;
    `.nan` passed every range check (a comparison with NaN is false) and reached the jobs, after Snakemake had
    deleted the outputs they were to replace. Both are refused at start; nothing runs."""
    config = tiny_config(tmp_path)
    result = run_snakemake(tmp_path, config, "--config", "train={epochs: 1, epochs: 2}", "seeds=[0]", "seeds=[1]",
                           "-n", check=False, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "--config: train.epochs is written twice: only the last is read" in result.stdout, result.stdout
    assert "--config: seeds is given twice: only the last is read" in result.stdout, result.stdout
    result = run_snakemake(tmp_path, config, "--config", "experiments={finetune: {lr: .nan}}",
                           "export={tolerance: .nan, rtol: .inf}", "dataset={val_fraction: -.inf}", "-n",
                           check=False, timeout=120)
    assert result.returncode != 0, result.stdout
    for key, text in (("experiments.finetune.lr", ".nan"), ("export.tolerance", ".nan"), ("export.rtol", ".inf"),
                      ("dataset.val_fraction", "-.inf")):
        assert f"{key}: {text} is not a finite number; write a number" in result.stdout, result.stdout
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_nan_and_infinity_are_found_at_any_depth_of_a_config():
    nan, inf = float("nan"), float("inf")
    config = {"train": {"label_smoothing": nan}, "experiments": {"a": {"sweep": {"lr": [0.1, inf]}}},
              "pretrain": {"train": {"weight_decay": -inf}}}
    assert config_problems(config, SCHEMA)[:3] == [
        "train.label_smoothing: .nan is not a finite number; write a number",
        "experiments.a.sweep.lr.1: .inf is not a finite number; write a number",
        "pretrain.train.weight_decay: -.inf is not a finite number; write a number"]
    assert config_problems({"train": {"lr": 1e308}}, SCHEMA) == []
    # torch's generators take 64 bits: a larger seed failed in the train job (Overflow when unpacking long long)
    assert config_problems({"seeds": [0, 2**64]}, SCHEMA) == ["seeds.1: 18446744073709551616 is too large: it must be "
                                                              "<= 18446744073709551615"]
    assert config_problems({"seeds": [2**64 - 1]}, SCHEMA) == []


def test_an_integer_key_takes_whole_numbers_only_and_the_decimal_point_hint_is_for_whole_ones():
    """YAML's `true` is no count of epochs (Python's bool is an int: the integer check must not take it), and 1.5
    epochs is not 1 written with a point: only a whole number written with a point gets the hint to drop it."""
    assert config_problems({"train": {"epochs": 1.5}, "seeds": [True, 2.0]}, SCHEMA) == [
        "seeds.0: true is not an integer",
        "seeds.1: 2.0 is not an integer: write it without the decimal point, 2",
        "train.epochs: 1.5 is not an integer"]
    assert config_problems({"train": {"epochs": True}}, SCHEMA) == ["train.epochs: true is not an integer"]


def test_lr_0_an_empty_range_test_and_false_where_off_is_no_choice_are_refused_as_such():
    """lr 0 trains nothing (the schema's bound is exclusive, and the message says > 0, not >= 0); a range test from
    one lr to the same lr has no range; `bn: false` is told its choices, and only a key that takes 'off' is told that
    YAML read the off the user wrote unquoted as false."""
    assert config_problems({"train": {"lr": 0}}, SCHEMA) == ["train.lr: 0 is too small: it must be > 0"]
    assert config_problems({"lr_find": {"min_lr": 0.01, "max_lr": 0.01}}, SCHEMA) == [
        "lr_find.min_lr: 0.01 must be below lr_find.max_lr (0.01): the range test raises the lr from one to the other"]
    assert config_problems({"train": {"bn": False, "amp": False}}, SCHEMA) == [
        "train.amp: False is not allowed; use one of off, bf16, fp16 (YAML reads an unquoted off, no or false as "
        "false: write 'off', quoted)",
        "train.bn: False is not allowed; use one of auto, frozen, train"]


def test_a_key_some_runs_act_on_is_accepted_where_it_is_written_and_where_it_is_inherited():
    """Refused only where no run acts on it: unfreeze_epoch in an experiment whose sweep trains a gradual run beside a
    finetune one, and train.momentum that one experiment's SGD takes (another's AdamW not)."""
    swept = {"g": {"unfreeze_epoch": 1, "epochs": 3, "sweep": {"strategy": ["finetune", "gradual"]}}}
    assert config_problems({"experiments": swept}, SCHEMA) == []
    inherited = {"train": {"momentum": 0.5}, "experiments": {"a": {"optimizer": "sgd"}, "b": {"optimizer": "adamw"}}}
    assert config_problems(inherited, SCHEMA) == []


def test_a_crop_as_large_as_the_resize_an_unknown_architecture_and_a_name_yaml_read_as_true():
    """A centre crop the size of the resized image is allowed (no crop); an unknown weights.arch beside torchvision
    weights is said once, as unknown, not also as not theirs; an experiment named `true:` unquoted is said to be YAML's
    true."""
    prep = {"resize_size": 32, "crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    weights = {"source": "path", "path": "w.pth", "arch": "resnet18", "preprocessing": prep}
    assert config_problems({"weights": weights}, SCHEMA) == []
    unknown = config_problems({"weights": {"source": "torchvision", "torchvision": "ResNet18_Weights.DEFAULT",
                                           "arch": "resnet19"}}, SCHEMA)
    assert len(unknown) == 1 and unknown[0].startswith("weights.arch: unknown architecture 'resnet19' (did you mean "
                                                       "resnet18"), unknown
    assert config_problems({"experiments": {True: {}}}, SCHEMA) == [
        "experiments.True: YAML reads this name as true or false, not as text: put it in quotes as you wrote it"]


def test_duplicate_keys_of_a_json_config_and_of_lists_of_mappings(tmp_path):
    from finetune.userconfig import duplicate_keys

    config = tmp_path / "c.json"
    config.write_text('{"seeds": [0, 1],\n "train": {"lr": 0.1},\n "train": {"epochs": 2},\n'
                      ' "sweep": [{"lr": 1, "lr": 2}, {"lr": 3}]}\n')
    assert duplicate_keys(config) == [
        "train is written twice (lines 2 and 3): only the last is read, so what the first sets would be ignored",
        "sweep[0].lr is written twice (both on line 4): only the last is read, so what the first sets would be ignored"]
    config.write_text('{"train": {"lr": 0.1}, "evaluate": {"lr": 0.1}}')
    assert duplicate_keys(config) == []


@pytest.mark.slow
def test_image_size_the_architecture_cannot_take_stops_train_naming_the_key(tmp_path):
    """AlexNet needs at least 63 px: at image_size 16 the train job stops before training, naming the
    setting and sizes that do work, and writes no model; the source model (64 px) is kept."""
    import torch
    import torchvision

    config = tiny_config(tmp_path, weights={"arch": "alexnet"}, pretrain={"image_size": 64},
                         replace={"experiments": {"small": {"strategy": "finetune", "image_size": 16}}})
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0, result.stdout
    message = next(line for line in result.stdout.splitlines() if line.startswith("error: alexnet cannot take"))
    assert message.startswith("error: alexnet cannot take 16x16 images (image_size: 16): "), message
    assert "set image_size (train's or the experiment's) to one of them" in message, message
    offered = [int(s) for s in message.split("; it takes e.g. ")[1].split(":")[0].split(", ")]
    # Independently: torchvision's AlexNet refuses 16 px and takes every size offered.
    alexnet = torchvision.models.alexnet(num_classes=4).eval()
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            alexnet(torch.zeros(1, 3, 16, 16))
        for size in offered:
            assert alexnet(torch.zeros(1, 3, size, size)).shape == (1, 4), size

        def takes(size):
            try:
                alexnet(torch.zeros(1, 3, size, size))
                return True
            except RuntimeError:
                return False

        # the first three of the sizes it tries (32, 64, 96, ...) that AlexNet takes
        from finetune.models import PROBE_SIZES
        assert offered == [size for size in PROBE_SIZES if takes(size)][:3], offered
    assert (tmp_path / "resources" / "weights" / "weights.pth").exists()
    assert not (tmp_path / "results" / "small" / "seed0" / "model.pt").exists()


def test_a_file_where_the_workflow_makes_a_folder_stops_it_at_start_naming_the_file(tmp_path):
    """results/ft2 written by hand, then ft2 made an experiment: Snakemake stopped on a traceback of its own
    (NotADirectoryError, removing the job's old outputs) before any job could name the path."""
    config = tiny_config(tmp_path, replace={"experiments": {"ft2": {"strategy": "finetune"}}})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "ft2").write_text("notes\n")
    (tmp_path / "resources").write_text("not a folder\n")
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stdout, result.stdout[-3000:]
    for folder in ("resources", "results/ft2"):
        assert (f"{folder}: a file, not a folder, where the workflow writes its outputs (relative to the working "
                f"directory {tmp_path}): nothing ran; move it away") in result.stdout, result.stdout[-3000:]
    assert (tmp_path / "results" / "ft2").read_text() == "notes\n"
    # a link to a scratch disk not mounted: said so, not "a file"
    (tmp_path / "resources").unlink()
    (tmp_path / "resources").symlink_to(tmp_path / "scratch" / "resources")
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert (f"resources: a symbolic link to {tmp_path / 'scratch' / 'resources'}, which does not exist (a file system not "
            "mounted?)") in result.stdout, result.stdout[-3000:]


def as_a_user(tmp_path: Path) -> str:
    """A python that runs as a user does, without root's right to write any file: under root (as CI runs), its
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from the bounding set (setpriv), so a folder's permissions hold
    for it and its jobs; another user's python as it is."""
    if os.geteuid() != 0:
        return sys.executable
    wrapper = tmp_path / "python-as-a-user"
    wrapper.write_text(f'#!/bin/sh\nexec setpriv --bounding-set -dac_override,-dac_read_search {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_a_folder_the_run_cannot_write_stops_it_at_start_naming_the_folder_and_its_rules(tiny_run_copy, tmp_path):
    """A run's folder not writable (permissions, or a read-only file system): Snakemake removed the outputs the job was
    to replace, then stopped on a traceback of its own (PermissionError) or "Failed to create output directory" for a
    new run, after the jobs before it had run. The start says which folder, why, and which rules write below it; nothing
    runs, every file is kept, and with the permissions put back the run goes on."""
    from faults import snapshot

    workdir, python = tiny_run_copy, as_a_user(tmp_path)
    config = workdir / "config.yaml"
    before = snapshot(workdir / "results")
    (workdir / "results" / "finetune" / "seed0").chmod(0o555)
    try:
        result = run_snakemake(workdir, config, "--forcerun", "results/finetune/seed0/metrics.json", python=python,
                               check=False)
        assert result.returncode != 0 and "Traceback" not in result.stdout, result.stdout[-3000:]
        assert ("results/finetune/seed0: not writable by this user (its permissions) (relative to the working directory "
                f"{workdir}), and rule evaluate writes below it: make it writable, or run in a folder you can write "
                "(--directory)") in result.stdout, result.stdout[-3000:]
        assert "nothing ran, and every earlier result is kept" in result.stdout, result.stdout[-3000:]
        assert snapshot(workdir / "results") == before
        # a new run's folder, made below a results/ that cannot be written
        (workdir / "results").chmod(0o555)
        more = tiny_config(workdir, name="more.yaml", experiments={"another": {"strategy": "finetune"}})
        result = run_snakemake(workdir, more, python=python, check=False)
        line = next((line for line in result.stdout.splitlines() if line.startswith("results: not writable")), "")
        assert all(f" {rule}," in line or f" {rule} write" in line for rule in ("train", "evaluate", "export_onnx")), \
            result.stdout[-3000:]
        assert snapshot(workdir / "results") == before
    finally:
        (workdir / "results").chmod(0o755)
        (workdir / "results" / "finetune" / "seed0").chmod(0o755)
    result = run_snakemake(workdir, config, "--forcerun", "results/finetune/seed0/metrics.json", python=python)
    assert "evaluate" in jobs_run(result.stdout), result.stdout[-3000:]
    # The resume folder, which train writes every epoch and which is none of its outputs: the job failed at its first
    # epoch, after Snakemake had removed the run's model.pt. Found at start too.
    resume = workdir / "resources" / "resume"
    resume.mkdir(exist_ok=True)
    before = snapshot(workdir / "results")
    resume.chmod(0o555)
    try:
        result = run_snakemake(workdir, config, "--forcerun", "results/finetune/seed0/model.pt", python=python,
                               check=False)
    finally:
        resume.chmod(0o755)
    assert result.returncode != 0 and jobs_run(result.stdout) == [], result.stdout[-3000:]
    assert ("resources/resume: not writable by this user (its permissions) (relative to the working directory "
            f"{workdir}), and rule train writes below it") in result.stdout, result.stdout[-3000:]
    assert snapshot(workdir / "results") == before
    # The feature cache is not: where it cannot be written the job warns and trains on, so it is no reason to refuse.
    features = workdir / "resources" / "features"
    features.mkdir(exist_ok=True)
    features.chmod(0o555)
    try:
        result = run_snakemake(workdir, config, "--forcerun", "results/feature_extract/seed0/model.pt", python=python)
    finally:
        features.chmod(0o755)
    assert "train" in jobs_run(result.stdout) and "not writable" not in result.stdout, result.stdout[-3000:]


def test_with_several_config_files_each_problem_names_the_file_its_value_comes_from(tmp_path):
    """--configfile a.yaml b.yaml --config ...: Snakemake merges them, the last that writes a key winning; a
    problem says which source that is (a key no source writes, a default, is named as before)."""
    base = tiny_config(tmp_path)
    second = tmp_path / "more.yaml"
    second.write_text("train:\n  lr: -1.0\nexperiments:\n  finetune:\n    epoch: 3\n")
    (tmp_path / "sub").mkdir()  # the file given as sub/../more.yaml is named as more.yaml
    result = run_snakemake(tmp_path, base, str(tmp_path / "sub" / ".." / "more.yaml"), "--config", "seeds=[0, 0]", "-n",
                           check=False, timeout=120)
    assert result.returncode != 0
    assert f"train.lr: -1.0 is too small: it must be > 0 (set in {second})" in result.stdout, result.stdout[-3000:]
    assert f"experiments.finetune.epoch: unknown key (did you mean epochs?) (set in {second}); allowed keys:" in result.stdout
    assert "seeds: [0, 0] has non-unique elements (set in --config)" in result.stdout
    assert not (tmp_path / "results").exists()
    # A key with a colon in it (no space after `quantize:` on the command line) is named as --config's, not as the
    # file's that writes export.quantize
    second.write_text("export:\n  quantize: false\n  tta: false\n")
    result = run_snakemake(tmp_path, base, str(second), "--config", "export={quantize:true,tta:true}", "-n", check=False,
                           timeout=120)
    assert result.returncode != 0
    for key in ("quantize", "tta"):
        assert f"export.{key}:true: unknown key" in result.stdout and f"(set in {second})" not in result.stdout, result.stdout[-3000:]
        assert re.search(rf"export\.{key}:true: unknown key.*\(set in --config\)", result.stdout), result.stdout[-3000:]
    # A problem of one experiment that names a value it takes from train names where that value is written too
    second.write_text("experiments:\n  fe:\n    strategy: feature_extract\n    optimizer: lbfgs\n    lr: 1.0\n")
    result = run_snakemake(tmp_path, base, str(second), "--config", "train={augment: true}", "-n", check=False,
                           timeout=120)
    line = next((line.strip() for line in result.stdout.splitlines() if line.strip().startswith("experiments.fe:")), "")
    assert "augment: true" in line and line.endswith(f"(set in {second}; train.augment in --config)"), result.stdout[-3000:]


def test_a_target_written_after_configfile_is_named_as_read_for_a_config_file(tmp_path):
    """`--configfile my.yaml results/.../metrics.json`: Snakemake reads the target as a second config file, and its keys
    as unknown config keys; the message says why, and how to write the command, without a line for each of the
    target's keys (they buried it); a problem of the config itself is still listed."""
    config = tiny_config(tmp_path)
    target = tmp_path / "results/finetune/seed0/metrics.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"accuracy": 0.5, "n_test": 40}))
    result = run_snakemake(tmp_path, config, str(target), "-n", check=False, timeout=120)
    assert result.returncode != 0
    assert (f"{target}: read as a config file but sets none of the config's keys. `--configfile` takes every word "
            "after it as a config file: name targets before it") in result.stdout, result.stdout[-3000:]
    assert "unknown key" not in result.stdout and "invalid configuration" not in result.stdout, result.stdout[-3000:]
    wrong = tiny_config(tmp_path, "wrong.yaml", train={"lr": -0.1})
    result = run_snakemake(tmp_path, wrong, str(target), "-n", check=False, timeout=120)
    assert result.returncode != 0 and f"{target}: read as a config file" in result.stdout
    assert "train.lr: -0.1" in result.stdout and "n_test" not in result.stdout, result.stdout[-3000:]
    # A config file that sets a key of the config is not taken for a target, nor one of unknown keys only (`lr` not
    # under `train:`): that is a config's mistake, said as one.
    assert f"{config}: read as a config file" not in result.stdout
    mistake = tmp_path / "lr.yaml"
    mistake.write_text("lr: 0.01\n")
    result = run_snakemake(tmp_path, config, str(mistake), "-n", check=False, timeout=120)
    assert result.returncode != 0 and (f"lr: unknown key (lr is a key of train: write it under train:, or on the "
                                       f"command line --config 'train={{lr: 0.01}}') (set in {mistake})") \
        in result.stdout, result.stdout[-3000:]
    assert "read as a config file" not in result.stdout


def test_a_csv_row_naming_a_folder_is_refused_as_a_folder(tmp_path):
    manifest = write_manifest_csv(tmp_path, good_rows() + ["cat,cat"])
    result = run_split({"format": "csv", "path": str(manifest)}, tmp_path / "out")
    assert result.returncode == 1, result.stdout
    assert f"{manifest.parent / 'cat'} (line 10): is a folder, not an image file" in result.stdout


def test_image_file_names_that_are_not_utf8_are_refused_naming_them(tmp_path):
    """A name from an old archive in Latin-1 (`caf\\xe9.png`): the split file (UTF-8 text) cannot hold it. Refused,
    naming it, instead of a traceback; watching the folder for changes reads it as it is."""
    import os

    from finetune.watch import tree_state

    data = tmp_path / "data"
    make_images(data, {"cat": 6, "dog": 6})
    odd = data / "cat" / os.fsdecode(b"caf\xe9.png")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(odd)
    result = run_split(imagefolder(data), tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    assert f"1 image file name(s) under {data} are not valid UTF-8" in result.stdout
    assert ascii(str(odd)) in result.stdout
    before = tree_state(data, "folders")
    odd.rename(data / "cat" / "cafe.png")
    assert tree_state(data, "folders") != before
    # in a class dataset.classes leaves out: not read (nor watched), so no reason to stop the split
    (data / "bird").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(data / "bird" / os.fsdecode(b"caf\xe9.png"))
    result = run_split({**imagefolder(data), "classes": ["cat", "dog"]}, tmp_path / "chosen")
    assert result.returncode == 0, result.stdout
    assert set(pd.read_csv(tmp_path / "chosen" / "split.csv")["class_name"]) == {"cat", "dog"}


@pytest.mark.parametrize("mine, message", [
    ({"seeds": [1]}, "predict.seed: 0 is not in seeds [1] (set in config/config.yaml, the demo's; set predict.seed in "
                     "your config: null for the selected run and its best seed)"),
    ({"experiments": {"mine": {"strategy": "finetune"}}},
     "predict.experiment: 'finetune' is not an experiment or run of this config (mine) (set in config/config.yaml, the "
     "demo's; set predict.experiment in your config: null for the selected run)"),
    ({"seeds": [1], "predict": {"seed": 0}}, "predict.seed: 0 is not in seeds [1]"),  # written: no word of the demo's
])
def test_a_predict_key_taken_from_the_demo_s_config_says_so(tmp_path, mine, message):
    """Merged over config/config.yaml, a config that sets predict.images alone takes the demo's run to classify with,
    which its own seeds or experiments may not have: the message said the key was wrong, not that the user never
    wrote it. A key the user wrote is theirs: nothing is said of the demo's config."""
    import yaml

    snakefile = copy_of_the_workflow(tmp_path / "project", with_config=True)
    images = tmp_path / "new"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({**mine, "predict": {**mine.get("predict", {}), "images": str(images)}}))
    result = run_snakemake(tmp_path / "project", config, "-n", snakefile=snakefile, check=False, timeout=120)
    assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]
    assert ("set in config/config.yaml, the demo's" in result.stdout) == ("predict" not in mine), result.stdout[-3000:]


def test_a_train_key_every_experiment_sets_for_itself_is_said_not_used(tmp_path):
    """train.lr under experiments that all set their own lr (here, or in a sweep) reaches no job: said at start."""
    config = tiny_config(tmp_path, experiments={"finetune": {"lr": 0.1}, "scratch": {"sweep": {"lr": [0.1, 0.2]}}})
    result = run_snakemake(tmp_path, config, "-n")
    assert "note: train.lr: not used: every experiment sets its own lr (finetune, feature_extract, scratch)" in result.stdout
    assert "note: train.epochs" not in result.stdout
    # One experiment that takes it from train is enough for it to be used.
    from finetune.configcheck import overridden_train_notes

    own = {"train": {"lr": 0.01}, "experiments": {"own": {"lr": 0.1}, "inherits": {"strategy": "finetune"}}}
    assert overridden_train_notes(own, own["train"]) == []
    own["experiments"]["inherits"]["lr"] = 0.2
    assert overridden_train_notes(own, own["train"]) == ["note: train.lr: not used: every experiment sets its own lr "
                                                         "(own, inherits)"]


def test_a_file_whose_name_ends_in_a_hash_and_digits_is_read_as_the_file_it_is(tmp_path):
    """`cat/scan#000` (a file's own name, in a CSV manifest): read as image 0 inside a file `cat/scan`, the form of
    Fashion-MNIST's references (`<IDX file>#<index>`), so every such image was "unreadable: cannot read IDX file".
    A reference is an image inside a file only where no file has its whole name."""
    make_images(tmp_path / "images", {"cat": 4, "dog": 4})
    rows = []
    for png in sorted((tmp_path / "images").glob("*/*.png")):
        named = png.rename(png.with_name(f"scan#{png.stem}"))
        rows.append((f"{png.parent.name}/{named.name}", png.parent.name))
    manifest = tmp_path / "images" / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{path},{label}\n" for path, label in rows))
    result = run_split({"format": "csv", "path": str(manifest), "val_fraction": 0.25, "test_fraction": 0.25},
                       tmp_path / "out")
    assert result.returncode == 0, result.stdout
    split = pd.read_csv(tmp_path / "out" / "split.csv")
    assert sorted(map(os.path.normpath, split["path"])) == sorted(str(tmp_path / "images" / path) for path, _ in rows)
    from finetune.images import load_image

    for path in split["path"]:  # the pixels are the file's own, as PIL reads it
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(Image.open(path).convert("RGB")))


def _number_classes_note(as_text: list[str], by_number: list[str], key: str = "dataset") -> str:
    """The note at start on classes named by numbers, as docs/data-and-weights.md words it, from the classes as text."""
    first = next(i for i, (a, b) in enumerate(zip(as_text, by_number)) if a != b)
    return (f"note: {key}: the classes are numbers, in their order as text ({', '.join(as_text)}): the model's output "
            f"{first} is class '{as_text[first]}', not '{by_number[first]}' (the ONNX model's metadata lists them in that "
            f"order); for the numbers' order, write {key}.classes: {by_number} (quoted: a bare number is an index), which "
            "splits and trains again")


def test_unquoted_numbers_naming_classes_written_with_leading_zeros_are_refused_at_start(tmp_path):
    """Folders (or labels) 001 to 010: YAML reads an unquoted 001 as 1 and 010 as 8 (octal), which the split took as
    indices, training classes 002 and 009 without a word (and folders 000 to 029 with [010, 020]: 008 and 016). Refused at start, each number with the class at its index
    and the class it names; the split made before from the names quoted is kept, byte for byte."""
    data = tmp_path / "data"
    make_images(data, {f"{n:03d}": 6 for n in range(1, 11)})
    manifest = data / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{png.relative_to(data)},{png.parent.name}\n"
                                                 for png in sorted(data.glob("*/*.png"))))
    run = tmp_path / "run"
    quoted = {"format": "csv", "path": str(manifest), "val_fraction": 0.2, "test_fraction": 0.2, "classes": ["001", "010"]}
    config = tiny_config(run, replace={"dataset": quoted})
    run_snakemake(run, config, "--until", "split")
    split = run / "resources" / "splits" / "target.csv"
    assert sorted(set(pd.read_csv(split, dtype={"class_name": str})["class_name"])) == ["001", "010"]
    before = {folder: snapshot(run / folder) for folder in ("resources", "results")}
    expected = ("dataset.classes: a bare number is an index into the sorted classes, and these may stand for classes "
                "named with leading zeros: 001 (YAML reads it as 1, octal: the class at index 1 is '002'; it may stand "
                "for '001'); 010 (YAML reads it as 8, octal: the class at index 8 is '009'; it may stand for '010'). "
                "YAML reads an unquoted number with a leading 0 as octal (010 as 8, 012 as 10): quote each class's name "
                "as its folder or label writes it ('001'), which names that class whatever its index: nothing ran")
    for dataset in (quoted, {**quoted, "format": "imagefolder", "path": str(data)}):
        text = yaml.safe_dump({**yaml.safe_load(config.read_text()), "dataset": {**dataset, "classes": None}})
        config.write_text(text.replace("classes: null", "classes: [001, 010]"))  # as a user writes them
        assert yaml.safe_load(config.read_text())["dataset"]["classes"] == [1, 8]
        result = run_snakemake(run, config, check=False)
        assert result.returncode != 0 and expected in " ".join(result.stdout.split()), result.stdout[-3000:]
        assert {folder: snapshot(run / folder) for folder in ("resources", "results")} == before
    # folders 000 to 029: 010 read as 8 is also index 8's name, 008, but not the class written (the octal reading)
    from finetune.startchecks import ambiguous_class_numbers_problem

    from finetune.userconfig import written_texts

    thirty = [f"{n:03d}" for n in range(30)]
    (tmp_path / "octal.yaml").write_text("dataset: {classes: [010, 020]}\n")
    texts = written_texts([tmp_path / "octal.yaml"], ["snakemake"], ("dataset", "classes"))
    problem = ambiguous_class_numbers_problem(thirty, yaml.safe_load("[010, 020]"), texts=texts)
    assert texts == ["010", "020"] and problem and ("010 (YAML reads it as 8, octal: the class at index 8 is '008'; it may "
                                                    "stand for '010'); 020 (YAML reads it as 16") in problem, problem
    assert ambiguous_class_numbers_problem(thirty, ["010", "020"]) is None  # quoted
    # indices written as such (8, 9: index 8 is class 008) pass; the command line's --config is read as written too
    texts = written_texts([tmp_path / "octal.yaml"], ["snakemake", "--config", "dataset={classes: [8, 9]}"],
                          ("dataset", "classes"))
    assert texts == ["8", "9"] and ambiguous_class_numbers_problem(thirty, [8, 9], texts=texts) is None
    assert ambiguous_class_numbers_problem(["1", "2", "\u00b2"], [1]) is None  # a digit int() does not read: no crash


def test_classes_named_by_numbers_in_their_order_as_text_are_said_with_the_classes_that_order_them(tmp_path):
    """Class folders 1, 2 and 10: sorted as text, the model's output 1 is class '10'. With dataset.classes not
    written, each start says so and how to write them in the numbers' order, the first too (no split made yet: the
    run about to train the model in that order); written so, the split orders them so and nothing more is said."""
    data = tmp_path / "data"
    make_images(data, {"1": 6, "2": 6, "10": 6})
    dataset = {"format": "imagefolder", "path": str(data), "val_fraction": 0.2, "test_fraction": 0.2}
    config = tiny_config(tmp_path / "run", replace={"dataset": dataset})
    as_text, note = sorted(["1", "2", "10"]), _number_classes_note(sorted(["1", "2", "10"]), ["1", "2", "10"])
    first = run_snakemake(tmp_path / "run", config, "--until", "split").stdout
    assert note in first, first[-3000:]
    report = tmp_path / "run" / "resources" / "splits" / "target.report.json"
    assert json.loads(report.read_text())["classes"] == as_text
    started = run_snakemake(tmp_path / "run", config, "-n").stdout
    assert note in started, started[-3000:]
    ordered = tiny_config(tmp_path / "run", "ordered.yaml", replace={"dataset": {**dataset, "classes": ["1", "2", "10"]}})
    started = run_snakemake(tmp_path / "run", ordered, "--until", "split").stdout
    assert json.loads(report.read_text())["classes"] == ["1", "2", "10"]
    assert "the classes are numbers" not in started + run_snakemake(tmp_path / "run", ordered, "-n").stdout


def test_labels_that_are_numbers_in_a_new_manifest_are_said_at_its_first_start(tmp_path):
    """A CSV manifest labelled 3, 9 and 12 (spaces around a label dropped, as the split reads it), no split made yet:
    the first start says the model's outputs will be in their order as text; a label added to the manifest since its
    split (20) is in the note of the next start, before the split is made again."""
    data = tmp_path / "data"
    make_images(data, {"3": 6, "9": 6, "12": 6})
    manifest = data / "manifest.csv"
    rows = [(png.relative_to(data), png.parent.name) for png in sorted(data.glob("*/*.png"))]
    manifest.write_text("path,label\n" + "".join(f"{path}, {label} \n" for path, label in rows))
    dataset = {"format": "csv", "path": str(manifest), "val_fraction": 0.2, "test_fraction": 0.2}
    config = tiny_config(tmp_path / "run", replace={"dataset": dataset})
    first = run_snakemake(tmp_path / "run", config, "-n").stdout
    assert _number_classes_note(sorted(["3", "9", "12"]), ["3", "9", "12"]) in first, first[-3000:]
    run_snakemake(tmp_path / "run", config, "--until", "split")
    make_images(data, {"20": 6}, seed=1)
    manifest.write_text(manifest.read_text() + "".join(f"20/{png.name},20\n" for png in sorted(data.glob("20/*.png"))))
    again = run_snakemake(tmp_path / "run", config, "-n").stdout
    assert _number_classes_note(sorted(["3", "9", "12", "20"]), ["3", "9", "12", "20"]) in again, again[-3000:]


def test_a_mistyped_fashion_mnist_path_is_refused_at_start_and_the_split_made_before_is_kept(tmp_path):
    """dataset.path changed to a folder that is not there (a typo): the split job would have tried torchvision's download
    after Snakemake removed the split made before, and without a network failed, the split gone and every run made from
    it to train again once the path was put right. Refused at start, naming the key; the split's bytes are kept, and with
    the path put right nothing of it runs again. The source dataset of pretrain is checked alike."""
    config = tiny_config(tmp_path)
    splits = ["resources/splits/target.csv", "resources/splits/source.csv"]  # targets before --configfile's files
    run_snakemake(tmp_path, None, *splits, "--configfile", str(config))
    made = {name: (tmp_path / "resources/splits" / name).read_bytes() for name in ("target.csv", "source.csv")}
    typo = TINY_CONFIG["dataset"]["path"].replace("fashion-mnist", "fashion_mnist")
    for key, changed in (("dataset", {"dataset": {"path": typo}}), ("pretrain.dataset", {"pretrain": {"dataset": {"path": typo}}})):
        result = run_snakemake(tmp_path, tiny_config(tmp_path, **changed), check=False)
        assert result.returncode != 0 and "Job stats" not in result.stdout, result.stdout[-3000:]
        assert (f"{key}.path: {typo} does not exist, and {key}.download_dir (resources/datasets/FashionMNIST/raw) holds "
                f"none of the files either; the split made before was made from {TINY_CONFIG['dataset']['path']}: "
                "nothing ran") in " ".join(result.stdout.split()), result.stdout[-3000:]
        assert {name: (tmp_path / "resources/splits" / name).read_bytes() for name in made} == made
    dry = run_snakemake(tmp_path, None, "-n", *splits, "--configfile", str(tiny_config(tmp_path)))
    assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
    # the files in dataset.download_dir (a download made before): the split job reads them there, so the path that
    # holds none is not refused, and the split (its dataset.path changed) is made again
    raw = tmp_path / "resources/datasets/FashionMNIST/raw"
    raw.mkdir(parents=True)
    for file in Path(TINY_CONFIG["dataset"]["path"]).glob("*-ubyte.gz"):
        (raw / file.name).symlink_to(file)
    dry = run_snakemake(tmp_path, None, "-n", splits[0], "--configfile", str(tiny_config(tmp_path, dataset={"path": typo})))
    assert "holds none of the files" not in dry.stdout and jobs_run(dry.stdout) == ["split"], dry.stdout[-3000:]


def test_a_dataset_path_of_the_wrong_kind_is_refused_at_start_saying_what_to_name(tmp_path):
    """dataset.path naming a folder where format csv reads a manifest file, or a file where imagefolder reads a folder
    of class folders: the split job would fail on it after Snakemake removed the split made before. Refused at start,
    saying which it is and what to name; nothing runs."""
    (tmp_path / "photos").mkdir()
    make_images(tmp_path / "photos", {"cat": 2})
    (tmp_path / "manifest.csv").write_text("path,label\nphotos/cat/000.png,cat\n")
    # (the path is the other format's: set that format, not "mount it or put it back")
    for fmt, path, what, other, name in (
            ("csv", "photos", "is a folder, not a CSV file", "imagefolder", "the CSV manifest"),
            ("imagefolder", "manifest.csv", "is a file, not a folder", "csv", "the folder of class folders")):
        config = tiny_config(tmp_path, replace={"dataset": {"format": fmt, "path": path}})
        result = run_snakemake(tmp_path, config, "-n", check=False)
        assert result.returncode != 0 and jobs_run(result.stdout) == [], result.stdout[-3000:]
        assert (f"dataset.path: {path} ({fmt}) {what} (relative to the working directory {tmp_path}): nothing ran, and "
                f"no split was made; set dataset.format: {other} for it, or name {name}") in result.stdout, \
            result.stdout[-3000:]


def test_replace_workflow_config_alone_keeps_the_demo_s_config_and_checks_it(tmp_path):
    """--replace-workflow-config without a config of the user's: Snakemake keeps config/config.yaml, the demo's, as the
    run's config (its own rule), so that file is checked as any config the run reads: a key written twice in it is
    refused, naming it."""
    snakefile = copy_of_the_workflow(tmp_path / "project", with_config=True)
    demo = tmp_path / "project" / "config" / "config.yaml"
    demo.write_text(demo.read_text() + "seeds: [0]\n")
    lines = [i + 1 for i, line in enumerate(demo.read_text().splitlines()) if line.startswith("seeds:")]
    assert len(lines) == 2
    result = run_snakemake(tmp_path / "project", None, "-n", "--replace-workflow-config", snakefile=snakefile,
                           check=False, timeout=120)
    assert result.returncode != 0 and (f"config/config.yaml: seeds is written twice (lines {lines[0]} and {lines[1]})"
                                       in result.stdout), result.stdout[-3000:]
