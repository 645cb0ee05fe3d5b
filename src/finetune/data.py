"""Datasets and splits: list a dataset's images, then cut a seeded, stratified train/val/test split.

A dataset listing is a DataFrame with the columns ``path`` (an image reference, see
:mod:`finetune.images`), ``class_name`` and ``official_split`` ("train", "test" or "" when the
dataset has no official split). A split is the same rows with ``label`` (the index of the class in
the target's class list) and ``split``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .fileio import read_text_table, sha256_of, table_lines
from .jobclock import lap
from .images import IMAGE_EXTENSIONS, SPLIT_NAMES, extension_counts, files_below, idx_thumbnails, inspect_image, read_idx, split_ref

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SPLIT_COLUMNS = ["path", "label", "class_name", "split"]
SPLITS = ("train", "val", "test")
# A dataset's own split (a manifest's split column, split folders, Fashion-MNIST's files): images marked
# val or test are kept as that split; train and unmarked ones are the pool the splits it does not give are
# drawn from (as Fashion-MNIST's official train set is). The names a split is given (lower-cased), and
# the split each means: images.SPLIT_NAMES.
GIVEN_SPLITS = ("val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """What the split rule reads from config (``dataset:``)."""

    format: str
    path: str
    classes: list | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_train_per_class: int | None = None
    max_val_per_class: int | None = None
    max_test_per_class: int | None = None
    seed: int = 0
    on_bad_image: str = "fail"
    near_duplicates: str | bool = "report"  # or leave_out, or false
    download_dir: str = "resources/datasets"
    download_timeout_s: float = 30.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict) -> "SplitSpec":
        known = [f for f in cls.__dataclass_fields__ if f != "extra"]
        cfg = {k: v for k, v in cfg.items() if k != "watch"}  # Snakemake's (the rules' inputs), not the split's
        unknown = [str(k) for k in cfg if k not in known]
        if unknown:  # the workflow's schema refuses them at start; a split run alone must not drop them unsaid
            import difflib

            close = [difflib.get_close_matches(k, known, n=1) for k in unknown]
            raise DataError("; ".join(f"dataset.{k}: unknown key{f' (did you mean dataset.{c[0]}?)' if c else ''}"
                                      for k, c in zip(unknown, close)) + f"; allowed keys: {', '.join(known)}")
        missing = [f"dataset.{k}" for k in ("format", "path") if k not in cfg]
        if missing:
            raise DataError(f"{' and '.join(missing)} not given: a dataset needs its format and path")
        wrong = _value_problems(cfg)
        if wrong:  # the schema's bounds, as the workflow's start checks them: run alone, a text fraction met a TypeError
            raise DataError("; ".join(wrong))
        return cls(**cfg)


def _value_problems(cfg: dict) -> list[str]:
    """The numbers and choices of a dataset config outside the schema's bounds (workflow/schemas/config.schema.yaml),
    each naming its key: the split script run alone checks them itself."""
    from .cli import is_number as number, is_whole as whole

    bounds = {"val_fraction": (lambda v: number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
              "test_fraction": (lambda v: number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
              **{f"max_{split}_per_class": (lambda v: v is None or (whole(v) and v >= 1), "null or a whole number, at least 1")
                 for split in ("train", "val", "test")},
              "seed": (lambda v: whole(v) and v >= 0, "a whole number, at least 0"),
              "on_bad_image": (lambda v: v in ("fail", "skip"), "fail or skip"),
              "near_duplicates": (lambda v: v in ("report", "leave_out") or v is False, "report, leave_out or false"),
              "download_timeout_s": (lambda v: number(v) and v > 0, "a number above 0")}
    return [f"dataset.{key}: must be {what}, not {cfg[key]!r}" for key, (ok, what) in bounds.items()
            if key in cfg and not ok(cfg[key])]


# --------------------------------------------------------------------------- listing datasets

def _find_fashion_mnist_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _how_to_get_fashion_mnist(directory: Path, missing: str) -> str:
    return (
        f"Fashion-MNIST files missing in {directory} ({missing}). Get them with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu: /usr/share/datasets/fashion-mnist), or run once "
        "with a network so torchvision can download them into dataset.download_dir, or point dataset.path at a "
        "folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz"
    )


def _download_fashion_mnist(download_dir: Path, timeout_s: float, how_to: str) -> Path:
    """Fall back to torchvision's downloader (needs a network).

    torchvision's downloader has no timeout of its own: a socket timeout makes an unreachable or
    silent server fail the download after ``timeout_s`` instead of hanging the job.
    """
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(download_dir), train=True, download=True)
        FashionMNIST(str(download_dir), train=False, download=True)
    except Exception as exc:  # any network or archive failure
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (TimeoutError, socket.timeout)):
            reason = f"no answer within {timeout_s:g} s (dataset.download_timeout_s)"
        raise DataError(f"{how_to}. The download failed: {reason}") from exc
    finally:
        socket.setdefaulttimeout(previous)
    return download_dir / "FashionMNIST" / "raw"


def fashion_mnist_files(path: str, download_dir: str = "resources/datasets", allow_download: bool = True,
                        timeout_s: float = 30.0) -> dict:
    directory = Path(path)
    found = {key: _find_fashion_mnist_file(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    if all(found.values()):
        return found
    missing = ", ".join(FASHION_MNIST_FILES[k] for k, v in found.items() if v is None)
    how_to = _how_to_get_fashion_mnist(directory, missing)
    if not allow_download:
        raise DataError(how_to)
    raw = _download_fashion_mnist(Path(download_dir), timeout_s, how_to)
    return {key: _find_fashion_mnist_file(raw, stem) for key, stem in FASHION_MNIST_FILES.items()}


def list_fashion_mnist(path: str, download_dir: str = "resources/datasets", timeout_s: float = 30.0) -> pd.DataFrame:
    files = fashion_mnist_files(path, download_dir, timeout_s=timeout_s)
    frames = []
    for split in ("train", "test"):
        images_file, labels_file = files[(split, "images")], files[(split, "labels")]
        labels = read_idx(str(labels_file))
        images = read_idx(str(images_file))
        if labels.ndim != 1 or images.ndim != 3 or len(labels) != len(images):
            raise DataError(f"{images_file} and {labels_file} disagree: {images.shape} images, {labels.shape} labels")
        if labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{labels_file} holds label {labels.max()}, Fashion-MNIST has 10 classes")
        frames.append(pd.DataFrame({
            "path": [f"{images_file}#{i}" for i in range(len(labels))],
            "class_name": np.asarray(FASHION_MNIST_CLASSES, dtype=object)[labels],
            "official_split": split,
        }))
    return pd.concat(frames, ignore_index=True)


def _subfolders(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(directory: Path) -> dict[Path, str]:
    """``{folder: split}`` where the root is already split, ``<root>/<split>/<class>/<image>`` (torchvision's
    references and many published datasets: train/ and val/, or train/, valid/ and test/): every folder
    of the root is named as a split (:data:`SPLIT_NAMES`) and holds class folders. Else ``{}``."""
    tops = _subfolders(directory)
    named = [p for p in tops if p.name.lower() in SPLIT_NAMES and _subfolders(p)]
    if named and len(named) < len(tops):
        others = ", ".join(p.name for p in tops if p not in named)
        raise DataError(
            f"{directory} mixes split folders holding class folders ({', '.join(p.name for p in named)}) with other "
            f"folders ({others}): lay it out as {directory}/<class>/<image>, or as {directory}/<split>/<class>/<image> "
            "with splits train, val and test only (or training, valid, validation, testing). A class named like a "
            f"split ({', '.join(p.name for p in named)}) whose images are in sub-folders is read as a split folder: "
            "rename it, or move its images up into it"
        )
    return {p: SPLIT_NAMES[p.name.lower()] for p in named}


def _class_folders(directory: Path) -> dict[str, list[tuple[Path, str]]]:
    """``{class: [(folder, official split), ...]}`` of an ImageFolder root, either layout."""
    classes: dict[str, list[tuple[Path, str]]] = {}
    for top, split in (split_folders(directory) or {directory: ""}).items():
        folders = _subfolders(top)
        _refuse_folders_written_two_ways(top, folders)
        for folder in folders:
            classes.setdefault(folder.name, []).append((folder, split))
    return dict(sorted(classes.items()))


def _refuse_folders_written_two_ways(where: Path, folders: list[Path]) -> None:
    """Class folders of one parent whose names differ only in how Unicode composes them (``chemisé`` typed, and
    copied from a Mac): two folders that look alike and were one class of both folders' images, with nothing said.
    (The same name composed two ways in two split folders, train/ copied from a Mac and test/ not, is one class.)"""
    ways: dict[str, set[str]] = {}
    for folder in folders:
        ways.setdefault(nfc(folder.name), set()).add(folder.name)
    twice = sorted(sorted(found) for found in ways.values() if len(found) > 1)
    if not twice:
        return
    listed = "; ".join(" and ".join(ascii(name) for name in found) for found in twice[:10])
    raise DataError(f"{where}: class folders whose names differ only in their Unicode form (a letter with an accent "
                    f"as one character, or as the letter and a combining accent), shown with the characters' codes: "
                    f"{listed}. They look alike and would be one class: merge each pair into one folder, or rename one")


def case_note(classes: list[str]) -> str | None:
    """Classes whose names differ only in letter case (``Bag`` beside ``bag``): two classes here, where a file system
    that ignores case (macOS's, Windows') has one folder; likely one class written two ways, unless meant (letters)."""
    ways: dict[str, list[str]] = {}
    for name in classes:
        ways.setdefault(name.casefold(), []).append(name)
    twice = [found for found in ways.values() if len(found) > 1]
    if not twice:
        return None
    listed = "; ".join(" and ".join(repr(name) for name in found) for found in twice[:10])
    return (f"classes whose names differ only in letter case: {listed}: two classes each (on macOS or Windows the "
            "folders would be one); if each is one class written two ways, merge the folders")


def _image_folder(root: str) -> dict[str, list[tuple[Path, str]]]:
    """:func:`_class_folders` of a root that must exist and hold class folders."""
    directory = Path(root)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise DataError(f"dataset folder {directory} {what}: check dataset.path (an ImageFolder root: <path>/<class>/<image>)")
    classes = _class_folders(directory)
    if not classes:
        raise DataError(f"{directory} holds no class folders: expected {directory}/<class>/<image> (check dataset.path)")
    return classes


def image_folder_classes(root: str) -> list[str]:
    """The classes of an ImageFolder root, empty folders included: their folder names in Unicode's composed form
    (:func:`nfc`), sorted, as the split names them and ``dataset.classes`` indexes them."""
    return sorted({nfc(name) for name in _image_folder(root)})


def shared_classes(target: dict, source: dict) -> list[str]:
    """The classes the target dataset (``dataset``) and pretrain's source dataset (``pretrain.dataset``) share, where
    both are the same dataset (Fashion-MNIST, wherever its files are, or one ImageFolder) and their classes are known
    without reading the images; [] otherwise."""
    def chosen(cfg: dict) -> list[str]:
        if cfg.get("format", "fashion-mnist") == "fashion-mnist":
            return select_classes(FASHION_MNIST_CLASSES, cfg.get("classes"), where="Fashion-MNIST")
        return select_classes(image_folder_classes(cfg["path"]), cfg.get("classes"), where=cfg["path"])

    formats = {cfg.get("format", "fashion-mnist") for cfg in (target, source)}
    if len(formats) > 1 or formats == {"csv"}:
        return []
    if formats == {"imagefolder"} and os.path.realpath(target["path"]) != os.path.realpath(source["path"]):
        return []
    try:
        in_source = set(chosen(source))
        return [name for name in chosen(target) if name in in_source]
    except (DataError, OSError):
        return []  # told by the checks of each dataset


def list_image_folder(root: str) -> pd.DataFrame:
    """Every image of every class folder; a folder with none simply adds no rows (see
    :func:`check_classes_have_images`, which looks only at the chosen classes). In a root already split
    (:func:`split_folders`), each image's ``official_split`` is its split folder's.

    ``frame.attrs``: ``ignored_files``, how many other files (not hidden) each extension had, so that
    images in a format not read (``.heic``, ``.avif``) are reported rather than silently left out;
    ``outside_class_folders``, the images in the root (or a split folder) itself, which have no class;
    ``layout_note``, where the class folders look like split folders of other names (:func:`layout_note`).
    """
    rows, ignored = [], []
    classes = _image_folder(root)
    for name, folders in classes.items():
        for folder, split in folders:
            for p in files_below(folder):
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    rows.append((str(p), name, split))
                else:
                    ignored.append(p)
    tops = [Path(root), *split_folders(Path(root))]
    frame = pd.DataFrame(rows, columns=["path", "class_name", "official_split"])
    frame.attrs["ignored_files"] = extension_counts(ignored)
    frame.attrs["outside_class_folders"] = sorted(str(p) for top in tops for p in _images_in(top))
    frame.attrs["layout_note"] = layout_note(Path(root), classes)
    return frame


def check_names_are_utf8(listing: pd.DataFrame, root: str) -> None:
    """Refuse image file names that are not UTF-8 (the split file, UTF-8 text, cannot hold them), naming them: of the
    chosen classes only (a class left out is not read, nor watched)."""
    not_utf8 = [ascii(path) for path in listing["path"] if not _utf8(path)]
    if not_utf8:
        raise DataError(f"{len(not_utf8)} image file name(s) under {root} are not valid UTF-8 (an old archive's "
                        f"encoding, e.g. Latin-1), which the split file cannot hold: {', '.join(not_utf8[:5])}"
                        f"{' ...' if len(not_utf8) > 5 else ''}; rename them (e.g. `convmv -f latin1 -t utf8 -r "
                        f"--notest {root}`)")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name's bytes that are not UTF-8, kept by Python as surrogates
        return False
    return True


def _holds_an_image(folder: Path) -> bool:
    """Whether ``folder`` itself holds an image file (not hidden): stops at the first, so a class folder of 100,000
    images costs one entry at the start of each run, not a listing."""
    try:
        with os.scandir(folder) as entries:
            return any(not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                       and entry.is_file() for entry in entries)
    except OSError:
        return True  # not known: no note


def _images_in(folder: Path) -> list[Path]:
    """The image files in ``folder`` itself (not below it), hidden ones left out."""
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]


def image_folder_notes(root: str) -> list[str]:
    """:func:`layout_note` and :func:`case_note` of an ImageFolder root, for the start of each run (from the folder
    names, and whether the first class folder holds an image of its own); none where the folder is at fault (the
    checks of the folder say how)."""
    try:
        classes = _class_folders(Path(root))
    except (DataError, OSError):
        return []
    return [note for note in (layout_note(Path(root), classes), case_note(sorted({nfc(name) for name in classes})))
            if note]


def layout_note(root: Path, classes: dict[str, list[tuple[Path, str]]]) -> str | None:
    """Where every class folder holds no image of its own but the same subfolders (``seg_train/<class>/``,
    ``seg_test/<class>/``), the "classes" are most likely split folders named otherwise: what to rename.
    Images below a class folder count for that class, so such a root trains a classifier of split names."""
    folders = [folder for entries in classes.values() for folder, _ in entries]
    if len(folders) < 2 or any(_holds_an_image(folder) for folder in folders):
        return None
    inner = [{p.name for p in _subfolders(folder)} for folder in folders]
    if len(inner[0]) < 2 or any(names != inner[0] for names in inner):
        return None
    return (f"the class folders of {root} ({', '.join(classes)}) hold no images of their own, only the same "
            f"subfolders ({', '.join(sorted(inner[0]))}): if those are your classes and {', '.join(classes)} your "
            "splits, rename the split folders train, val and test; as laid out, each of "
            f"{', '.join(classes)} is a class")


def unparsed_why(exc: Exception, manifest: Path) -> str:
    """Why a CSV manifest did not parse, said for a person: the line with too many fields and how to write a comma in
    a path (pandas' "Error tokenizing data. C error: ..." held a line break), or the first line that is not UTF-8 and
    how to save it (the codec named a byte's place in a block of the file, not a line); else pandas' words."""
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if fields:
        return (f"line {fields[2]} has {fields[3]} fields, and the lines before it {fields[1]}: a path or label "
                'that holds a comma is written in double quotes ("cats/a,b.png"), a double quote in it twice')
    line = first_line_not_utf8(manifest) if "codec can't decode" in str(exc) else None
    if line is not None:
        return (f"line {line} is not UTF-8 text (the encoding it is read in): save the file as UTF-8 "
                '(a spreadsheet\'s "CSV UTF-8"; iconv -f latin1 -t utf-8 converts a Latin-1 one)')
    return str(exc)


def first_line_not_utf8(path: str | Path) -> int | None:
    """The number of the first line of the file that is not UTF-8 text, or None (all of it is, or it does not read)."""
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return number
    except OSError:
        return None
    return None


def _lines_and_labels(frame: pd.DataFrame, line: list[int], rows: list[int]) -> str:
    """``lines 7, 38`` of the rows that name one image, and where they give it different labels, those too
    (``lines 7, 38: labelled 'Bag' and 'Shoe'``: a file under two labels, one of them likely wrong)."""
    labels = list(dict.fromkeys(frame["label"].iloc[i].strip() for i in rows))
    said = f"lines {', '.join(str(line[i]) for i in rows)}"
    return said if len(labels) < 2 else f"{said}: labelled {' and '.join(map(repr, labels))}"


def list_csv_manifest(manifest: str) -> pd.DataFrame:
    file = Path(manifest)
    if not file.is_file():
        what = "is a folder, not a file" if file.exists() else "does not exist"
        raise DataError(f"CSV manifest {file} {what}: check dataset.path (a CSV file with a header line path,label)")
    try:
        frame = read_text_table(file)  # `path, label` and `cat/1.jpg, cat`, as written by hand, read as meant
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"CSV manifest {file} is empty: check dataset.path (a CSV file with a header line path,label, "
                        "then one line per image)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse CSV manifest {file}: {unparsed_why(exc, file)}") from exc
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise DataError(
            f"CSV manifest {file} lacks column(s) {', '.join(missing)}; it has {', '.join(frame.columns) or 'none'} "
            "(expected a header line `path,label`)"
        )
    if frame.empty:
        raise DataError(f"CSV manifest {file} lists no images")
    blank = frame.index[(frame["path"].str.strip() == "") | (frame["label"].str.strip() == "")]
    if len(blank):
        line = table_lines(file, len(frame))
        raise DataError(f"CSV manifest {file}: empty path or label on line(s) {', '.join(str(line[i]) for i in blank[:10])}")
    base = file.parent
    paths = _manifest_paths(frame, file)
    rows: dict[str, list[int]] = {}
    for row, p in enumerate(paths):  # absolute: a row written relative and one written absolute are one file
        rows.setdefault(os.path.abspath(p), []).append(row)
    duplicated = [(p, where) for p, where in rows.items() if len(where) > 1]
    if duplicated:
        line = table_lines(file, len(frame))
        listed = "; ".join(f"{p} ({_lines_and_labels(frame, line, where)})" for p, where in duplicated[:10])
        more = f" and {len(duplicated) - 10} more" if len(duplicated) > 10 else ""
        raise DataError(f"CSV manifest {file} lists the same image more than once: {listed}{more}. Keep one line per image")
    missing_files = [row for row, p in enumerate(paths) if not os.path.exists(p)]
    if missing_files:
        line = table_lines(file, len(frame))
        listed = "; ".join(f"{paths[row]} (line {line[row]})" for row in missing_files[:10])
        more = f" and {len(missing_files) - 10} more" if len(missing_files) > 10 else ""
        raise DataError(
            f"CSV manifest {file} names {len(missing_files)} image(s) that do not exist: {listed}{more} "
            f"(relative paths are read from the manifest's folder {base})"
        )
    official = _official_splits(frame["split"], file).to_numpy() if "split" in frame.columns else ""
    labels = frame["label"].str.strip().map(nfc)
    _refuse_labels_differing_in_case(labels, file)
    listing = pd.DataFrame({"path": paths, "class_name": labels.to_numpy(), "official_split": official})
    # In the order of the images' paths, not of the lines: the split is drawn from the listing, and a manifest
    # exported again in another order (a database's, a spreadsheet sorted) must not move images between splits.
    order = sorted(range(len(paths)), key=lambda row: os.path.normpath(paths[row]))
    return listing.iloc[order].reset_index(drop=True)


def _manifest_paths(frame: pd.DataFrame, manifest: Path) -> list[str]:
    """The images a manifest's rows name, in its rows' order: relative paths are relative to the manifest, so a
    dataset folder can be moved as a whole; spaces around a path are not part of it (`cat/1.jpg , cat`)."""
    return [p if os.path.isabs(p) else str(manifest.parent / p) for p in frame["path"].str.strip()]


def manifest_lines(manifest: str) -> dict[str, int]:
    """{image path, as the listing gives it: the line of the manifest that names it}, for a message on images: the
    manifest is read again, only then."""
    frame = read_text_table(Path(manifest))
    return dict(zip(_manifest_paths(frame, Path(manifest)), table_lines(manifest, len(frame))))


def _refuse_labels_differing_in_case(labels: pd.Series, file: Path) -> None:
    """Labels that differ only in case (``Bag`` beside ``bag``) are one class misspelt: as two classes, the rarer
    one failed for want of test images, or was left out of ``dataset.classes`` without a word."""
    spellings = labels.groupby(labels.str.casefold()).unique()
    twice = [sorted(found, key=lambda label: (-(labels == label).sum(), label)) for found in spellings if len(found) > 1]
    if not twice:
        return
    line = table_lines(file, len(labels))

    def rows(label: str) -> str:
        where = labels.index[labels == label]
        shown = ", ".join(str(line[i]) for i in where[:5]) + (" ..." if len(where) > 5 else "")
        return f"{label!r} ({len(where)} row(s): line(s) {shown})"

    listed = "; ".join(" and ".join(rows(label) for label in found) for found in twice[:10])
    raise DataError(f"CSV manifest {file}: label(s) that differ only in case, one class written two ways: {listed}. "
                    "Write each class one way (labels are class names, read case-sensitively)")


def _official_splits(column: pd.Series, file: Path) -> pd.Series:
    """A manifest's ``split`` column, read case-insensitively; a value that names no split is refused,
    since a misspelt ``test`` would otherwise put test images into training."""
    values = column.str.strip().str.lower()
    unknown = values[~values.isin(list(SPLIT_NAMES))]
    if len(unknown):
        written = column[unknown.index].str.strip()  # as written: 'Tests' is named with its own lines
        line = table_lines(file, len(column))
        listed = "; ".join(
            f"{value!r} (line(s) {', '.join(str(line[i]) for i in written.index[written == value][:5])})"
            for value in written.unique()[:10]
        )
        raise DataError(
            f"CSV manifest {file}: column split holds value(s) that name no split: {listed}. Use test, val, train (or "
            "testing, valid, validation, training), or leave it empty (train and empty rows are the pool the splits the manifest does not "
            "give are drawn from)"
        )
    return values.map(SPLIT_NAMES)


def list_dataset(spec: SplitSpec) -> pd.DataFrame:
    """The dataset's images and their class names, in Unicode's composed form (:func:`nfc`): a folder copied from a
    Mac (decomposed) is the class typed on a keyboard."""
    if spec.format == "fashion-mnist":
        return list_fashion_mnist(spec.path, spec.download_dir, spec.download_timeout_s)
    if spec.format not in ("imagefolder", "csv"):
        raise DataError(f"unknown dataset format {spec.format!r}: use fashion-mnist, imagefolder or csv")
    listing = list_image_folder(spec.path) if spec.format == "imagefolder" else list_csv_manifest(spec.path)
    listing["class_name"] = listing["class_name"].map(nfc)
    return listing


# --------------------------------------------------------------------------- splitting

def dataset_classes(spec: SplitSpec, listing: pd.DataFrame) -> list[str]:
    """Every class of the dataset, in label order: what indices in ``dataset.classes`` count in."""
    if spec.format == "fashion-mnist":
        return list(FASHION_MNIST_CLASSES)
    if spec.format == "imagefolder":  # empty folders count too, so indices do not shift; sorted as composed
        return image_folder_classes(spec.path)
    return sorted(listing["class_name"].unique())


def check_classes_have_images(listing: pd.DataFrame, class_names: list[str], spec: SplitSpec) -> None:
    """Fail, naming them, if any of the chosen classes has no image (classes left out may be empty)."""
    empty = [name for name in class_names if not (listing["class_name"] == name).any()]
    if not empty:
        return
    if spec.format == "imagefolder":
        raise DataError(
            f"class folder(s) with no images in {spec.path}: {', '.join(empty)} "
            f"(extensions read: {', '.join(IMAGE_EXTENSIONS)}); add images, or remove the folder(s) or leave the "
            "class out with dataset.classes"
        )
    raise DataError(f"class(es) with no images in {spec.path}: {', '.join(empty)}; leave them out with dataset.classes")


def nfc(name: str) -> str:
    """A class name in Unicode's composed form: 'ü' as one character, as typed, not as 'u' and a combining mark."""
    return unicodedata.normalize("NFC", name)


def select_classes(all_classes: list[str], wanted: list | None, where: str = "the dataset") -> list[str]:
    """Resolve ``dataset.classes`` (names or indices into the sorted class list) to names, in order."""
    if not wanted:
        return list(all_classes)
    chosen = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool):
            _check_index_is_no_other_name(item, all_classes, where)
            if not 0 <= item < len(all_classes):
                raise DataError(f"dataset.classes: index {item} is out of range ({where} has {len(all_classes)} "
                               f"class{'es' if len(all_classes) != 1 else ''})")
            name = all_classes[item]
        else:
            name = nfc(str(item))
            if name not in all_classes:
                raise DataError(f"dataset.classes: {name!r} is not a class of {where}; its classes are {all_classes}")
        if name in chosen:
            raise DataError(f"dataset.classes names {name!r} twice")
        chosen.append(name)
    return chosen


def _check_index_is_no_other_name(item: int, all_classes: list[str], where: str) -> None:
    """Where classes are named by numbers (folders 1, 2, 3), an unquoted number in ``dataset.classes``
    could mean the class of that name or the class at that index: refuse it where the two differ."""
    in_range = 0 <= item < len(all_classes)
    if str(item) not in all_classes or (in_range and all_classes[item] == str(item)):
        return  # no class of that name, or the name and the index agree
    at_index = f"the class at index {item} is {all_classes[item]!r}" if in_range else \
        f"there is no index {item} ({where} has {len(all_classes)} class{'es' if len(all_classes) != 1 else ''})"
    raise DataError(f"dataset.classes: {item} is ambiguous: {where} has a class named '{item}', and {at_index}. "
                    f"Quote it ('{item}') to choose the class named {item}; a number is an index into the sorted classes")


def _cap(n: int | None, cap: int | None) -> int:
    return n if cap is None else min(n, cap)


def _drawn_count(n: int, fraction: float) -> int:
    """Images of a pool of ``n`` a split drawn with ``fraction`` gets: rounded, at least one where it is asked for."""
    return max(int(round(n * fraction)), 1) if fraction > 0 else 0


def named_under(text: str, key: str) -> str:
    """``text`` (a message of the split) with the dataset's keys, written ``dataset.<key>``, named where the config
    holds that dataset (``pretrain.dataset.classes`` for the source dataset of ``pretrain``)."""
    if key == "dataset":
        return text
    fields = "|".join(sorted({*SplitSpec.__dataclass_fields__, "watch"} - {"extra"}, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])dataset\.(?=(?:{fields})\b|\w+: unknown key)", f"{key}.", text)


def draw_keys(paths, spec: SplitSpec) -> list[str]:
    """What places each image in the draw, beside the seed: its path below the dataset's folder (the manifest's
    folder for a CSV manifest; that folder as written or with its links resolved), ``/``-separated and in
    Unicode's composed form (NFC: a folder copied from a Mac names ``é`` in two code points), so that the dataset
    can move as a whole; a path outside that folder (a manifest's absolute row elsewhere) is its absolute path. For
    Fashion-MNIST the image's file name and index (``train-images-idx3-ubyte#12``, with or without ``.gz``)."""
    if spec.format == "fashion-mnist":
        return [os.path.basename(path).replace(".gz#", "#") for path in paths]
    folder = os.path.abspath(spec.path)
    folder = os.path.dirname(folder) if spec.format == "csv" else folder
    bases = [base + os.sep for base in dict.fromkeys([folder, os.path.realpath(folder)]) if base != os.sep]
    keys = []
    for path in paths:
        full = os.path.abspath(path)
        below = next((full[len(base):] for base in bases if full.startswith(base)), full)
        keys.append(unicodedata.normalize("NFC", below.replace(os.sep, "/")))
    return keys


def draw_rank(key: str, seed: int) -> int:
    """An image's place in the draw: BLAKE2b with an 8-byte digest (``b2sum -l 64``) of ``<seed>/<key>`` in UTF-8,
    read as a big-endian integer.
    Each image's place depends on its own path and the seed alone: adding or removing an image leaves the
    others in the order they had."""
    text = f"{seed}/{key}".encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _in_draw_order(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values("draw_rank", kind="stable")  # equal ranks (a 2^-64 chance) keep the listing's path order


def _split_class(rows: pd.DataFrame, name: str, given: tuple[str, ...], spec: SplitSpec,
                 left_out: list[str] = ()) -> dict[str, pd.DataFrame]:
    """One class's rows (with ``draw_rank`` and ``draw_key``) -> its train/val/test rows (uncapped), in draw order
    but a given split without a cap (in listing order). The splits in ``given`` are the rows the dataset marks so; the others are cut from the rest (the
    pool) in draw order: test first, then val, then train. ``left_out``: the class's files the check left
    out, ``path (why)``, for the message."""
    pool = _in_draw_order(rows[~rows["official_split"].isin(given)])
    n = len(pool)
    n_test = 0 if "test" in given else _drawn_count(n, spec.test_fraction)
    n_val = 0 if "val" in given else _drawn_count(n, spec.val_fraction)
    own = sorted(set(rows["official_split"]) & set(given))
    if n == 0 and own and not left_out:
        where = (f"CSV manifest {spec.path} marks none of its rows train or leaves none empty" if spec.format == "csv" else
                 f"{spec.path}: its {' and '.join(f'{g}/' for g in own)} folder holds the class and train/ does not")
        raise DataError(
            f"class {name!r} has no training images: all of its {len(rows)} image(s) are in the dataset's own "
            f"{' and '.join(own)} split ({where}): give it training images, or leave the class out with dataset.classes")
    if n - n_test - n_val < 1:
        # the fewest images that can do: one for each split drawn (a fraction above 0 draws at least one), one to train
        fewest = 1 + sum(split not in given and fraction > 0
                         for split, fraction in (("test", spec.test_fraction), ("val", spec.val_fraction)))
        raise DataError(
            f"class {name!r} has {n} image(s){' outside the official ' + ' and '.join(given) + ' split' if given else ''}: "
            f"too few to stratify into train/val/test (needs {n_test} test + {n_val} val + at least 1 train)"
            + (f"; {len(left_out)} more of its files were left out: {'; '.join(left_out[:5])}"
               + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "") if left_out else "")
            + (". Add images or lower dataset.val_fraction / dataset.test_fraction" if n >= fewest else
               f". Give the class at least {fewest} images (one for each split drawn from them)")
            + ", or leave the class out with dataset.classes."
        )
    parts = {"test": pool.iloc[:n_test], "val": pool.iloc[n_test : n_test + n_val], "train": pool.iloc[n_test + n_val :]}
    for split in ("test", "val"):
        if split in given:
            official = rows[rows["official_split"] == split]
            if len(official) == 0:
                where = (f"CSV manifest {spec.path} marks {split} rows of other classes but none of this one"
                         if spec.format == "csv" else f"{spec.path}: its {split} folder has no folder of this class")
                raise DataError(
                    f"class {name!r} has no {split} image, though the dataset gives a {split} split of its own "
                    f"({where}): give it {split} images there, or leave the class out with dataset.classes")
            capped = spec.max_test_per_class if split == "test" else spec.max_val_per_class
            parts[split] = _in_draw_order(official) if capped else official  # a cap keeps the first in draw order
    return parts


def stratified_split(listing: pd.DataFrame, class_names: list[str], spec: SplitSpec,
                     left_out: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Seeded, stratified split. Rows marked val or test (a dataset's official split) keep it; the rest
    of each class is cut by the fractions into the splits the dataset does not give, in the order of
    :func:`draw_rank` (a cap, ``max_<split>_per_class``, keeps the first in that order). An image's split thus
    depends on its own path, the other paths of its class and the seed, never on the other classes or the
    listing's order. ``left_out``: per class, the files the check left out (named when a class is left with too few)."""
    if "draw_key" not in listing:  # as make_split gives it
        listing = listing.assign(draw_key=draw_keys(listing["path"], spec))
    listing = listing.assign(draw_rank=[draw_rank(key, spec.seed) for key in listing["draw_key"]])
    by_class = dict(tuple(listing.groupby("class_name", sort=False)))  # once: not a scan of every row per class
    given = official_splits(listing)
    caps = {"train": spec.max_train_per_class, "val": spec.max_val_per_class, "test": spec.max_test_per_class}
    parts, too_few = [], []
    for label, name in enumerate(class_names):
        try:
            rows = _split_class(by_class.get(name, listing.iloc[:0]), name, given, spec, (left_out or {}).get(name, []))
        except DataError as exc:  # every class too small, in one message: not one class per run
            too_few.append(str(exc))
            continue
        for split in SPLITS:
            chosen = rows[split].iloc[: _cap(len(rows[split]), caps[split])]
            parts.append(pd.DataFrame({"path": chosen["path"].values, "label": label, "class_name": name, "split": split}))
    if too_few:
        raise DataError("\n".join(too_few))
    out = pd.concat(parts, ignore_index=True)
    out["split"] = pd.Categorical(out["split"], categories=list(SPLITS), ordered=True)
    out = out.sort_values(["split", "label"], kind="stable").reset_index(drop=True)
    out["split"] = out["split"].astype(str)
    return out[SPLIT_COLUMNS]


def official_splits(listing: pd.DataFrame) -> tuple[str, ...]:
    """The splits a dataset listing gives itself (some of val, test)."""
    return tuple(s for s in GIVEN_SPLITS if (listing["official_split"] == s).any())


def _inspect(path: str) -> tuple[str | None, str | None, np.ndarray | None]:
    """(why the image does not decode, or None; the sha256 of its file's bytes, or None; its thumbnail, or
    None). The file is read once: its bytes are hashed and decoded (a dataset on network storage is read
    once here, not twice)."""
    if split_ref(path)[1] is not None:  # an image inside a file (Fashion-MNIST's IDX): no file of its own
        return *inspect_image(path), None
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return "is a folder, not an image file", None, None
        if not stat.S_ISREG(mode):  # opening a named pipe waits for a writer, forever
            return "not a regular file (a named pipe, socket or device)", None, None
        data = Path(path).read_bytes()
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a symbolic link to {os.readlink(path)}, which does not exist", None, None
        return "file does not exist", None, None
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", None, None
    reason, thumb = inspect_image(path, data)
    return reason, None if reason is not None else hashlib.sha256(data).hexdigest(), thumb


def inspect_images(paths: list[str], threads: int = 1) -> list[tuple[str | None, str | None, np.ndarray | None]]:
    """Decode every image once and hash its file: :func:`_inspect` of each path, in order."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    try:
        return list(pool.map(_inspect, paths))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a SIGTERM stops the check now, not after every image


# Which copy of an image found more than once in a class is kept: the official test copy, then val, then
# the pool's; among those, the shortest path below the dataset's folder (``IMG_1.jpg`` rather than ``IMG_1 (1).jpg``),
# then the first of those paths in text order.
KEEP_ORDER = {"test": 0, "val": 1}


def find_duplicates(listing: pd.DataFrame, digests: list[str | None],
                    keys) -> tuple[list[dict], list[tuple[str, str]]]:
    """Files with the same bytes. Within a class, every copy but one (:data:`KEEP_ORDER`) is redundant and
    could put one image in two splits: ``[{path, same_as}]``. Across classes, the image is labelled two
    ways: ``(path, reason)`` of every copy. ``keys``: each path as :func:`draw_keys` gives it, whose length and
    order choose the copy kept (not the path as listed, whose length depends on how ``dataset.path`` is written)."""
    frame = listing.assign(digest=digests, key=pd.Series(list(keys), index=listing.index, dtype=object))
    frame = frame[frame["digest"].notna() & frame["digest"].duplicated(keep=False)]
    frame = frame.assign(rank=frame["official_split"].map(KEEP_ORDER).fillna(len(KEEP_ORDER)),
                         length=[len(key) for key in frame["key"]])  # not .str: an empty column has no strings
    redundant, conflicting = [], []
    for _, group in frame.sort_values(["rank", "length", "key"], kind="stable").groupby("digest", sort=False):
        if group["class_name"].nunique() > 1:
            for path, name in zip(group["path"], group["class_name"]):
                others = "; ".join(f"{p} ({c})" for p, c in zip(group["path"], group["class_name"]) if p != path)
                conflicting.append((path, f"labelled {name!r}, but the same image (identical bytes) is {others}"))
            continue
        kept = group["path"].iloc[0]
        redundant.extend({"path": p, "same_as": kept} for p in group["path"].iloc[1:])
    return redundant, conflicting


def _refuse_bad(kinds: dict[str, list[tuple[str, str]]], spec: SplitSpec) -> None:
    """Unless ``on_bad_image: skip``, stop with every bad file of every kind (``{what: [(path, reason)]}``) in
    one message, so that one round of fixes is enough."""
    found = {what: bad for what, bad in kinds.items() if bad}
    if found and spec.on_bad_image != "skip":
        line = manifest_lines(spec.path) if spec.format == "csv" else {}
        lines = "\n".join(f"  {p}{f' (line {line[p]})' if p in line else ''}: {r}" for bad in found.values() for p, r in bad)
        raise DataError(
            f"{' and '.join(f'{len(bad)} {what}' for what, bad in found.items())} in {spec.path}: fix or delete them, "
            f"or set dataset.on_bad_image: skip to leave them out (they are then listed in the split report):\n{lines}"
        )


def checked_listing(listing: pd.DataFrame, spec: SplitSpec, threads: int = 1) -> tuple[pd.DataFrame, list, list[dict], dict]:
    """The listing without unreadable images, images labelled two ways (both refused unless
    ``on_bad_image: skip``) and redundant copies; the images skipped, ``(path, reason)``; the copies left
    out; the thumbnail of each image that decodes, by path."""
    inspected = inspect_images(listing["path"].tolist(), threads)
    unreadable = [(p, reason) for p, (reason, _, _) in zip(listing["path"], inspected) if reason is not None]
    thumbnails = {p: thumb for p, (reason, _, thumb) in zip(listing["path"], inspected) if reason is None}
    listing = listing[~listing["path"].isin({p for p, _ in unreadable})].reset_index(drop=True)
    digests = [digest for reason, digest, _ in inspected if reason is None]
    redundant, conflicting = find_duplicates(listing, digests, listing["draw_key"])
    _refuse_bad({"unreadable image(s)": unreadable, "image(s) found under two labels (identical files)": conflicting}, spec)
    left_out = {p for p, _ in conflicting} | {item["path"] for item in redundant}
    return listing[~listing["path"].isin(left_out)].reset_index(drop=True), unreadable + conflicting, redundant, thumbnails


def _left_out_by_class(listed: pd.DataFrame, bad: list[tuple[str, str]], duplicates: list[dict]) -> dict[str, list[str]]:
    """Per class, the files the check left out, ``path (why)``: named where a class is left with too few."""
    why = {**{path: reason for path, reason in bad}, **{d["path"]: f"a copy of {d['same_as']}" for d in duplicates}}
    if not why:
        return {}
    left_out: dict[str, list[str]] = {}
    for path, name in zip(listed["path"], listed["class_name"]):
        if path in why:
            left_out.setdefault(name, []).append(f"{path} ({why[path]})")
    return left_out


def chosen_classes(spec: SplitSpec, listing: pd.DataFrame) -> list[str]:
    """``dataset.classes`` resolved against the listing (every class where null): at least two, each with an image."""
    class_names = select_classes(dataset_classes(spec, listing), spec.classes, where=spec.path)
    if len(class_names) < 2:
        layout = f"one folder per class, {spec.path}/<class>/<image>" if spec.format == "imagefolder" else "a second label"
        raise DataError(f"{spec.path} has one class only ({class_names[0]!r}): a classifier needs at least two ({layout})")
    check_classes_have_images(listing, class_names, spec)
    return class_names


def check_csv_manifest(manifest: str, classes: list | None) -> tuple[str, ...]:
    """What the split job checks of a CSV manifest's rows without opening an image (each file there, no row twice,
    the split marks, the labels, ``dataset.classes`` against them), for the check at start: DataError as it would.
    Returns the splits its rows of the chosen classes give themselves (:func:`official_splits`)."""
    spec = SplitSpec(format="csv", path=manifest, classes=classes)
    listing = list_dataset(spec)
    names = chosen_classes(spec, listing)
    return official_splits(listing[listing["class_name"].isin(names)])


def moved_indices_line(key: str, dataset: dict, report: dict) -> str | None:
    """Where an ImageFolder's ``dataset.classes`` holds indices, is as written when its split was made (``report``,
    the split's report) and now names other classes (a class folder added or removed: an index counts in the sorted
    folder names), what happened; None otherwise. Read from the folder names alone."""
    written = dataset.get("classes")
    if (dataset["format"] != "imagefolder" or not written or report.get("classes_written") != written
            or not any(isinstance(c, int) and not isinstance(c, bool) for c in written)
            or os.path.realpath(str((report.get("dataset") or {}).get("path"))) != os.path.realpath(dataset["path"])):
        return None
    try:
        now = select_classes(image_folder_classes(dataset["path"]), written, where=dataset["path"])
    except (DataError, OSError):
        return None  # said by the checks of the folder
    before = report.get("classes")
    if now == before:
        return None
    return (f"{key}.classes {written}: its indices now name {now}, and named {before} when the split was made: a class "
            f"folder added or removed under {dataset['path']} moves what an index names (indices count in the sorted "
            f"folder names). Write the classes by name ({before} to keep them), so that a folder added later changes "
            "nothing")


def given_splits_line(key: str, dataset: dict, written: list[str], given: tuple[str, ...]) -> str | None:
    """Where ``written`` (the fraction keys the user wrote of the dataset config at ``key``) names a split the
    dataset gives itself (``given``: its val/ or test/ folder, or its manifest's split column), why that fraction
    cannot apply; None where none does."""
    # 0 is the value that says so (the schema's "0 only there"): not refused
    applies_not = [name for name in written if name.removesuffix("_fraction") in given and dataset[name] != 0]
    if not applies_not:
        return None
    if dataset["format"] == "imagefolder":
        try:
            folders = {split: folder.name for folder, split in split_folders(Path(dataset["path"])).items()}
        except (DataError, OSError):
            folders = {}

        def where(split: str) -> str:
            return f"its folder {folders.get(split, split)}/"
    else:
        def where(split: str) -> str:
            return f"the rows its split column marks {split}"
    listed = "; ".join(f"{key}.{name} {dataset[name]}: {dataset['path']} gives its own {name.removesuffix('_fraction')} "
                       f"images ({where(name.removesuffix('_fraction'))})" for name in applies_not)
    return (f"{listed}, so the fraction does not apply to them (the split keeps them as given, and draws only the "
            f"splits the dataset does not give): remove {' and '.join(f'{key}.{name}' for name in applies_not)} "
            "from your config")


def check_image_folder(root: str, classes: list | None) -> None:
    """What the split job checks of an ImageFolder without opening an image (its layout, class folders written two
    ways, ``dataset.classes`` against the folders, a chosen class with no image, file names that are not UTF-8), for
    the check at start: DataError as it would."""
    spec = SplitSpec(format="imagefolder", path=root, classes=classes)
    listing = list_dataset(spec)
    names = chosen_classes(spec, listing)
    check_names_are_utf8(listing[listing["class_name"].isin(names)], root)


def other_labels_line(counts: dict[str, int], manifest: str) -> str:
    """The split report's ``rows_of_other_labels`` as the log and the summary say it."""
    listed = ", ".join(f"{label!r} {n}" for label, n in list(counts.items())[:20]) + (" ..." if len(counts) > 20 else "")
    return (f"left out {sum(counts.values())} row(s) of CSV manifest {manifest} whose label is not in dataset.classes "
            f"(label and rows: {listed}): a row whose label is misspelt is left out so too")


def make_split(spec: SplitSpec, threads: int = 1) -> tuple[pd.DataFrame, dict]:
    """List, check, select and split a dataset. Returns the split and a report dict. Each part ends a lap
    of the job's time line (:mod:`finetune.jobclock`): listing, checking images, split, near duplicates."""
    listing = list_dataset(spec)
    manifest_sha256 = sha256_of(spec.path) if spec.format == "csv" else None  # read as listed (it exists)
    lap("listing")
    ignored_files = dict(listing.attrs.get("ignored_files", {}))
    outside = list(listing.attrs.get("outside_class_folders", []))
    note = listing.attrs.get("layout_note")
    class_names = chosen_classes(spec, listing)
    chosen = listing["class_name"].isin(class_names)
    # A manifest's rows of other labels: a label misspelt in a row (`bga`) leaves its image out, as a class not chosen
    other_labels = listing[~chosen]["class_name"].value_counts().sort_index().to_dict() if spec.format == "csv" else {}
    listing = listing[chosen].reset_index(drop=True)
    listing = listing.assign(draw_key=draw_keys(listing["path"], spec))  # for the copies kept and for the draw
    if spec.format == "imagefolder":
        check_names_are_utf8(listing, spec.path)
    bad: list[tuple[str, str]] = []
    duplicates: list[dict] = []
    thumbnails: dict = {}
    listed = listing
    if spec.format != "fashion-mnist":  # IDX files were validated as a whole when read, and are used as published
        listing, bad, duplicates, thumbnails = checked_listing(listing, spec, threads)
        lap("checking images")
    left_out = _left_out_by_class(listed, bad, duplicates)
    split = stratified_split(listing, class_names, spec, left_out)
    lap("split")
    near: dict = {"checked": False, "pairs": []}
    if spec.near_duplicates:  # false: not checked
        split, near = split_without_near_duplicates(split, class_names, spec, thumbnails, left_out)
        lap("near duplicates")
    counts = split.groupby(["class_name", "split"]).size().unstack(fill_value=0)
    report = {
        "dataset": {"format": spec.format, "path": spec.path},
        "seed": spec.seed,
        "official_splits": list(official_splits(listing)),
        "classes": class_names,
        "classes_written": spec.classes,  # dataset.classes as written: the check at start sees indices that moved
        "counts": {name: {s: int(counts.loc[name].get(s, 0)) for s in SPLITS} for name in class_names},
        "skipped_images": [{"path": p, "reason": r} for p, r in bad],
        "duplicate_images": duplicates,
        "near_duplicates": near,
        "ignored_files": ignored_files,
        "images_outside_class_folders": outside,
        "layout_note": note,
        "rows_of_other_labels": {str(label): int(n) for label, n in other_labels.items()},
    }
    if spec.format == "csv":  # what the check at start compares: the manifest and classes this split was made from
        report["manifest"] = {"sha256": manifest_sha256, "classes": spec.classes}
    return split, report


def split_without_near_duplicates(split: pd.DataFrame, class_names: list[str], spec: SplitSpec,
                                  thumbnails: dict, left_out: dict[str, list[str]]) -> tuple[pd.DataFrame, dict]:
    """Near duplicates across the splits of ``split`` (finetune.nearduplicates), as the split report's
    ``near_duplicates``: ``checked`` (false where there were more than MAX_PAIRS pairs to compare, ``why``
    then says so), ``pairs`` found and ``left_out``. With ``near_duplicates: leave_out``, the copy in the
    earlier split of each pair (train before val) is left out, and nothing else moves: the test images and
    every other image keep the split ``report`` gives them (drawing the split again drew another test split,
    and new pairs with it), so the two modes' figures are on the same test images. One pass leaves no pair:
    every pair loses its earlier copy. A class left without a training image is refused, naming the files
    left out; ``left_out`` (per class, for the split's messages) gets each of them."""
    from .nearduplicates import MAX_PAIRS, find_near_duplicates, pairs_to_compare  # the split's own module

    near = {"checked": True, "pairs": [], "left_out": spec.near_duplicates == "leave_out"}
    pairs = pairs_to_compare(split["split"])
    if pairs > MAX_PAIRS:
        return split, {**near, "checked": False, "why": f"{pairs:,} pairs of images to compare, more than {MAX_PAIRS:,}"}
    near["pairs"] = find_near_duplicates(split, _thumbnails(split["path"].tolist(), thumbnails))
    if not near["pairs"] or spec.near_duplicates != "leave_out":
        return split, near
    nearest: dict[str, dict] = {}  # an image with copies in val and test is one file left out: named once
    for item in sorted(near["pairs"], key=lambda item: item["rms"]):
        nearest.setdefault(item["path"], item)
    near_left: dict[str, list[str]] = {}  # this check's, for its own message (left_out also holds unreadable files)
    for item in nearest.values():
        named = f"{item['path']} (a near duplicate of {item['copy_of']}, {item['copy_split']})"
        left_out.setdefault(item["class_name"], []).append(named)
        near_left.setdefault(item["class_name"], []).append(named)
    kept = split[~split["path"].isin(nearest)].reset_index(drop=True)
    # A split the class had an image in before and has none in now (train; val where it was drawn or given).
    emptied = [(name, which) for name in class_names for which in ("train", "val")
               if ((split["class_name"] == name) & (split["split"] == which)).any()
               and not ((kept["class_name"] == name) & (kept["split"] == which)).any()]
    if emptied:
        raise DataError("\n".join(
            f"class {name!r} has no {which} image left once its near duplicates of later splits' images are left out "
            f"(dataset.near_duplicates: leave_out): {len(near_left[name])} of its files were left out: "
            f"{'; '.join(near_left[name][:5])}{f' and {len(near_left[name]) - 5} more' if len(near_left[name]) > 5 else ''}. "
            f"Add images (or raise dataset.max_{which}_per_class, where it caps the split), set "
            "dataset.near_duplicates: report (the copies are kept, and the figures say how many test images have one), "
            "or leave the class out with dataset.classes." for name, which in emptied))
    return kept, near


def _thumbnails(paths: list[str], known: dict) -> np.ndarray:
    """The (N, 256) thumbnails of ``paths``: those the check made (``known``: every image file it decoded),
    and Fashion-MNIST's, which the check does not decode, made here a whole IDX file at once and added to
    ``known``."""
    by_file: dict[str, list[tuple[str, int]]] = {}
    for ref in paths:
        if ref not in known:
            file, index = split_ref(ref)
            by_file.setdefault(file, []).append((ref, index))
    for file, refs in by_file.items():
        known.update(zip((ref for ref, _ in refs), idx_thumbnails(file, [index for _, index in refs])))
    return np.stack([known[p] for p in paths]) if paths else np.empty((0, 256), dtype=np.uint8)


def read_split(path: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Read a split CSV written by the split rule; return it and the class names in label order."""
    file = Path(path)
    try:
        frame = pd.read_csv(file, dtype={"path": str, "label": int, "class_name": str, "split": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read split file {file}: {exc}") from exc
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"split file {file} lacks column(s) {', '.join(missing)}")
    pairs = frame[["label", "class_name"]].drop_duplicates().sort_values("label")
    if list(pairs["label"]) != list(range(len(pairs))) or pairs["class_name"].duplicated().any():
        raise DataError(f"split file {file}: labels must be 0..n-1 with one class name each")
    return frame, pairs["class_name"].tolist()
