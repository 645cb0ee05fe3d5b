"""Checks and notes that only the Snakemake process makes, at the start and at the end of a run.

No job loads this module (it is in no rule's list of modules, workflow/rules/common.smk's RULE_MODULES): a job's
code is an input of the job, so a check kept here can be added or edited without making every earlier result
stale, as one added to a module the jobs load would (optionrules, data, deploy: the update would rerun pretraining
and every run).
"""

from __future__ import annotations

import csv
import json
import os
import re
import unicodedata
from pathlib import Path

from .configcheck import _by_experiment, model_arch

# torchvision's families of classifiers built with BatchNorm layers (the others, as vit, swin, convnext, alexnet, vgg
# without _bn, have none, or are not known here: their train job checks, once the model is built).
BATCHNORM_ARCHS = re.compile(r"^(resnet|resnext|wide_resnet|densenet|mobilenet|efficientnet|regnet|mnasnet|shufflenet|"
                             r"googlenet|inception|maxvit|vgg\d+_bn)")


def batchnorm_batch_problems(options: dict, arch: str | None) -> list[str]:
    """A batch_size that gives BatchNorm layers training on batches of one image (batch_size 1, or 1 a process
    without sync_batchnorm), which torch cannot train ("Expected more than 1 value per channel"), for an architecture
    known to have BatchNorm; the train job checks the same (finetune.training), after Snakemake removed the outputs
    it would replace. ``options``: a run's training options, defaults filled in."""
    batch, devices, nodes = options.get("batch_size"), options.get("devices", 1), options.get("nodes", 1)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (batch, devices, nodes)):
        return []
    strategy, bn = options.get("strategy", "finetune"), options.get("bn", "auto")
    if (bn == "frozen" or (bn == "auto" and strategy == "feature_extract") or options.get("optimizer") == "lbfgs"
            or not arch or not BATCHNORM_ARCHS.match(arch)):
        return []
    world = devices * nodes
    per_process = batch if options.get("sync_batchnorm") or world == 1 else batch // world
    if per_process >= 2:
        return []
    where = "" if per_process == batch else f" per process ({world} processes, sync_batchnorm off)"
    sync = ", or sync_batchnorm: true" if options.get("device", "auto") != "cpu" else ""  # it runs on GPUs only
    return [f"batch_size: {batch} gives BatchNorm batches of {per_process} image{where}, and BatchNorm cannot train on "
            f"one image (a {arch}, strategy {strategy}, bn {bn}): use a batch_size of 2 or more"
            f"{f' per process{sync}' if where else ''}"
            + ("" if options.get("pretrained") is False else  # from scratch there are no statistics to keep
               ", or bn: frozen (BatchNorm then keeps the source model's statistics)")]


def batchnorm_problems(config: dict, runs: dict, experiment_of: dict) -> list[str]:
    """:func:`batchnorm_batch_problems` of every run (``runs``: run name -> its experiment's overrides, over
    ``config["train"]``; ``experiment_of``: run name -> its experiment, a sweep's runs under theirs) and of
    pretraining, where weights.source is pretrain (one process: the keys of several are refused there)."""
    arch = model_arch(config["weights"])
    found = {run: batchnorm_batch_problems({**config["train"], **own}, arch) for run, own in runs.items()}
    problems = _by_experiment({run: why for run, why in found.items() if why},
                              {run: experiment_of.get(run, run) for run in runs})
    if config["weights"]["source"] == "pretrain":
        problems += [f"pretrain.train: {why}"  # from random weights: no statistics for bn frozen to keep
                     for why in batchnorm_batch_problems({**config["pretrain"]["train"], "pretrained": False}, arch)]
    return problems


def spacing_note(classes: list[str]) -> str | None:
    """Class folder names that begin or end with white space (``'cat '``, from a copy or an archive): a class name
    the user cannot see, kept in every output (metrics, predictions, the ONNX model's class names)."""
    spaced = [name for name in classes if name != name.strip()]
    if not spaced:
        return None
    return (f"class folder name(s) beginning or ending with white space: {', '.join(map(repr, spaced[:10]))}"
            f"{' ...' if len(spaced) > 10 else ''}: the class names keep it, in the metrics, the predictions and the "
            "ONNX model's metadata (and dataset.classes must write it so); rename the folders if it is not meant")


def unreadable_line(predictions_csv: str | Path) -> str | None:
    """A line for the end of the run that made ``predictions_csv``, where some of its images could not be read
    (their rows' ``error``): how many, and the first; None where every image was classified (or the file does not
    read)."""
    try:
        with open(predictions_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    failed = [row for row in rows if row.get("error")]
    if not failed:
        return None
    return (f"{predictions_csv}: {len(failed)} of {len(rows)} image(s) could not be read and have no prediction (their "
            f"rows' error column says why; the first: {failed[0]['error']})")


def with_hints(problems: list[str]) -> list[str]:
    """Config problems whose cause the message alone does not show, with a hint: a sha256 written as digits alone,
    which YAML reads as a number (its leading zeros dropped), so that the schema sees no text; torchvision weights
    written in other letter cases (:func:`case_hint`); a training seed written in a section (:func:`seed_hint`)."""
    return [seed_hint(case_hint(f"{problem} (YAML reads a hash of digits alone as a number, dropping its leading zeros: "
                                "quote it, sha256: \"0123...\")"
                                if re.match(r"weights\.sha256: \d+ is not a string", problem) else problem))
            for problem in problems]


def leaderboard_runs_not_configured(summary_csv: str, runs) -> list[str]:
    """The runs ``summary_csv`` (results/summary.csv) ranks that ``runs`` (the config's, sweeps expanded) lack, in its
    order: a leaderboard of another config's runs, which a report made now would show. None where there is no
    readable leaderboard (not made yet: Snakemake names it)."""
    try:
        with open(summary_csv, newline="", encoding="utf-8") as table:
            shown = [row["experiment"] for row in csv.DictReader(table)]
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return []
    configured = set(runs)
    return [run for run in shown if run not in configured]


# `seed` in train, an experiment or its sweep (configcheck guesses `sweep` for it, as the closest key of the section)
_SECTION_SEED = re.compile(r"^((?:[\w.-]+\.)?(?:train|experiments\.[\w-]+(?:\.sweep)?)\.seed: unknown key)"
                           r"(?: \(did you mean [^)]*\))?")


def seed_hint(problem: str) -> str:
    """``experiments.finetune.sweep.seed: unknown key``: the training seeds are the config's top-level `seeds`, every
    experiment run once per seed (its own `seed` would be another key); `dataset.seed` draws the split."""
    found = _SECTION_SEED.match(problem)
    if not found or ".pretrain." in f".{found.group(1)}":  # pretrain trains one source model: no seeds
        return problem
    return (f"{found.group(1)} (the training seeds are the config's top-level seeds, a list every experiment runs "
            f"once per seed, as in seeds: [0, 1, 2]; dataset.seed draws the split){problem[found.end():]}")


_UNKNOWN_WEIGHTS = re.compile(r"^((?:[\w.-]+\.)?weights\.torchvision: unknown torchvision weights '([^']*)')(?: \(did you mean [^)]*\))?")


def case_hint(problem: str) -> str:
    """``weights.torchvision: unknown torchvision weights 'resnet18_weights.imagenet1k_v1'``: the did-you-mean names
    the member written in another letter case (configcheck's, matching the case too, found none, or others)."""
    found = _UNKNOWN_WEIGHTS.match(problem)
    if not found:
        return problem
    from .configcheck import torchvision_weights_names

    same = [name for name in (torchvision_weights_names() or {}) if name.lower() == found.group(2).lower()]
    return f"{found.group(1)} (did you mean {same[0]}?){problem[found.end():]}" if same else problem


# How many images new since the split was made the check at start opens (as the split job opens every image, in the
# same way; measured on one core: 2.4 ms for a 400x300 JPEG, 135 ms for a 12-megapixel one): enough for images added
# or uploaded between runs; more (a dataset copied anew) are left to the split job. From SAY_OPENING_FROM images on, a
# line says why the start takes a while.
NEW_IMAGES_OPENED_AT_START = 2000
SAY_OPENING_FROM = 100
CAPS = ("max_train_per_class", "max_val_per_class", "max_test_per_class")


def _chosen_listing(fmt: str, path: str, classes: list | None):
    """The listing (finetune.data.list_dataset) of an ImageFolder's or a CSV manifest's chosen classes: the images the
    split job opens (data.check_image_folder and data.check_csv_manifest, run before this, have checked the rest)."""
    from .data import SplitSpec, chosen_classes, list_dataset

    spec = SplitSpec(format=fmt, path=path, classes=classes)
    listing = list_dataset(spec)
    return listing[listing["class_name"].isin(chosen_classes(spec, listing))].reset_index(drop=True)


def chosen_listing(cfg: dict):
    """:func:`_chosen_listing` of a dataset's config: listed once for the checks at start below that take it (a
    folder of many images takes a while to list)."""
    return _chosen_listing(cfg["format"], cfg["path"], cfg.get("classes"))


def too_few_to_split_problem(cfg: dict, listing=None) -> str | None:
    """The split job's message (finetune.data.stratified_split) where a chosen class of an ImageFolder or a CSV manifest
    (``cfg``: the dataset's config) has too few images for the splits drawn from it (a folder of one photo dropped in),
    counted from the listing without opening an image; None where every class has enough. The split job counts the
    images that decode (and one copy of each): it can still find a class too small where some do not."""
    from .data import DataError, SplitSpec, stratified_split

    spec = SplitSpec.from_config(cfg)
    listing = chosen_listing(cfg) if listing is None else listing
    try:
        stratified_split(listing, list(dict.fromkeys(listing["class_name"])), spec)
    except DataError as exc:
        return str(exc)
    return None


def paths_known_to_split(split_file: str | Path) -> set[str]:
    """The images the split made before opened and kept or left out: those in its file, and those its report lists
    (unreadable with on_bad_image: skip, copies, near duplicates), as the listing names them; empty where either does
    not read."""
    try:
        with open(split_file, newline="", encoding="utf-8") as f:
            known = {row["path"] for row in csv.DictReader(f)}
        report = json.loads(Path(split_file).with_suffix(".report.json").read_text())
        for key in ("skipped_images", "duplicate_images"):
            known.update(item["path"] for item in report.get(key, []) if isinstance(item, dict) and "path" in item)
        known.update(item["path"] for item in (report.get("near_duplicates") or {}).get("pairs", [])
                     if isinstance(item, dict) and "path" in item)  # left out with near_duplicates: leave_out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, csv.Error):
        return set()
    return known


def _changed_since(path: str, root: str, when: float, folders: dict[str, bool]) -> bool:
    """Whether the file, the link naming it, or a folder between it and ``root`` was made, renamed or written at
    ``when`` or after (an image copied with its old modification time has a new status change time; a folder moved
    in, a new one; ``folders``: each folder's answer, looked up once). A path that cannot be looked at is one to open."""
    try:
        if any(max(info.st_mtime, info.st_ctime) >= when for info in (os.stat(path), os.lstat(path))):
            return True
    except OSError:
        return True
    top, folder = os.path.abspath(root), os.path.dirname(os.path.abspath(path))
    while folder.startswith(top + os.sep):
        if folder not in folders:
            try:
                folders[folder] = max(os.stat(folder).st_mtime, os.stat(folder).st_ctime) >= when
            except OSError:
                folders[folder] = True
        if folders[folder]:
            return True
        folder = os.path.dirname(folder)
    return False


def new_images(paths: list[str], split_file: str | Path, root: str, capped: bool) -> list[str]:
    """Of ``paths``, the images not in the split made before (``split_file``) nor in its report: those it did not
    open. With a cap (``capped``), the images it opened and left out are in neither: then only those of them changed
    since it was made count (:func:`_changed_since`; a folder below ``root`` changed since makes all its images count).
    Empty where there is no split, or more than NEW_IMAGES_OPENED_AT_START (the split job opens them)."""
    try:
        made = os.stat(split_file).st_mtime
    except OSError:
        return []
    known = paths_known_to_split(split_file)
    if not known:
        return []
    new, folders = [], {}
    for path in paths:
        if path not in known and (not capped or _changed_since(path, root, made, folders)):
            new.append(path)
            if len(new) > NEW_IMAGES_OPENED_AT_START:
                return []
    return new


def new_dataset_images(cfg: dict, split_file: str | Path, listing=None) -> list[str]:
    """The images of an ImageFolder's or a CSV manifest's (``cfg``: the dataset's config) chosen classes that the
    split made before did not open (:func:`new_images`)."""
    listing = chosen_listing(cfg) if listing is None else listing
    root = cfg["path"] if cfg["format"] == "imagefolder" else os.path.dirname(os.path.abspath(cfg["path"]))
    return new_images(listing["path"].tolist(), split_file, root, any(cfg.get(cap) for cap in CAPS))


def new_images_problem(cfg: dict, paths: list[str], threads: int, listing=None, other_dataset: str | None = None
                       ) -> str | None:
    """The split job's message (finetune.data._refuse_bad) for the images of ``paths`` (new since the split was made,
    of the dataset ``cfg`` configures) that do not decode, or that are the same file (identical bytes) as an image of
    another class (:func:`labelled_two_ways`), opened and hashed as the split job does (finetune.data.inspect_images),
    so that the run stops before Snakemake removes the split: the run after they are deleted, with the same images
    as before, would have made the same split again, and everything after it would have run again. None where none
    is. ``other_dataset``: the path the split made before was drawn from, where it is not this dataset's."""
    from .data import DataError, SplitSpec, _refuse_bad, inspect_images

    inspected = inspect_images(paths, threads)
    bad = [(p, reason) for p, (reason, _, _) in zip(paths, inspected) if reason is not None]
    digests = {p: digest for p, (reason, digest, _) in zip(paths, inspected) if reason is None}
    conflicting = labelled_two_ways(cfg, digests, threads, listing)
    try:
        _refuse_bad({"unreadable image(s)": bad, "image(s) found under two labels (identical files)": conflicting},
                    SplitSpec(format=cfg["format"], path=cfg["path"]))
    except DataError as exc:
        what = " or ".join([*(["do not decode"] if bad else []),
                            *(["are the same file as an image of another class"] if conflicting else [])])
        if other_dataset:  # the split made before was drawn from other images: every image here is new to it
            return (f"images of this dataset {what} (nothing ran, and the split made before, of another dataset "
                    f"({other_dataset}), is kept): {exc}")
        return f"images new since the split was made {what} (nothing ran, and the split made before is kept): {exc}"
    return None


# The most files of the same size as an image new since the split that the check at start reads to compare their
# bytes (files of one size: images of a camera's raw format, say); more are left to the split job, which reads all.
SAME_SIZE_READ_AT_START = 2000


def labelled_two_ways(cfg: dict, digests: dict[str, str], threads: int, listing=None) -> list[tuple[str, str]]:
    """``digests``: {path of an image new since the split: the sha256 of its bytes}. Each copy of an image found
    under two classes (finetune.data.find_duplicates) where one of them is new: a photo copied into a second class
    folder, or a manifest row giving a file of one label again under another. Only the files of the dataset of the
    same size as a new one are read."""
    from .data import SplitSpec, draw_keys, find_duplicates, inspect_images

    if not digests:
        return []
    listing = chosen_listing(cfg) if listing is None else listing
    sizes = {_size(path) for path in digests}
    same_size = [path for path in dict.fromkeys(listing["path"]) if path not in digests and _size(path) in sizes]
    if len(same_size) > SAME_SIZE_READ_AT_START:
        return []
    found = {**digests, **{path: digest for path, (_, digest, _) in zip(same_size, inspect_images(same_size, threads))}}
    compared = listing[listing["path"].isin(found)].reset_index(drop=True)
    spec = SplitSpec(format=cfg["format"], path=cfg["path"])
    return find_duplicates(compared, [found[p] for p in compared["path"]], draw_keys(compared["path"], spec))[1]


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def report_of_dataset(report: dict, dataset_path: str) -> dict:
    """``report``, the report of the split made before, where that split was made from the dataset at
    ``dataset_path``; else {} (another folder's split: nothing it says is of this dataset)."""
    made_from = str((report.get("dataset") or {}).get("path"))
    return report if os.path.realpath(made_from) == os.path.realpath(dataset_path) else {}


def skipped_images_note(report: dict, report_path: str, watch: str = "folders") -> str | None:
    """Where the split made before (``report``, its report: :func:`report_of_dataset`) left images out under
    ``on_bad_image: skip`` (they do not decode, or are one image under two labels), how many and where they are
    listed: said only in the split job's log otherwise, so that photos half uploaded left training without a word.
    Those changed since (written after the report, as a file put right in place is) are named apart: under ``watch:
    folders`` the split does not see a file overwritten, and left them out still. None where it left none out."""
    skipped = [item for item in report.get("skipped_images") or [] if isinstance(item, dict) and "path" in item]
    if not skipped:
        return None
    two_labels = sum(str(item.get("reason", "")).startswith("labelled ") for item in skipped)
    kinds = [f"{n} {what}" for n, what in ((len(skipped) - two_labels, "that do not decode"),
                                          (two_labels, "under two labels (identical files)")) if n]
    named = ", ".join(str(item["path"]) for item in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    note = (f"on_bad_image: skip left {len(skipped)} image(s) out of the split ({' and '.join(kinds)}: {named}); each "
            f"is listed with why in {report_path} (skipped_images)")
    changed = _changed_after([str(item["path"]) for item in skipped], report_path) if watch == "folders" else []
    if changed:
        split_file = report_path[:-len(".report.json")] + ".csv" if report_path.endswith(".report.json") else report_path
        note += (f". {len(changed)} of them changed since ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}),"
                 f" but a file overwritten in place is not seen (dataset.watch: folders) and the split leaves them out "
                 f"still: split again with --forcerun {split_file} (the runs train again), or set dataset.watch: files")
    return note


def _changed_after(paths: list[str], reference: str) -> list[str]:
    """The files of ``paths`` modified after ``reference`` was (none where it cannot be read)."""
    try:
        since = os.stat(reference).st_mtime_ns
    except OSError:
        return []
    changed = []
    for path in paths:
        try:
            if os.stat(path).st_mtime_ns > since:
                changed.append(path)
        except OSError:
            continue
    return changed


def outside_class_images_note(root: str, report_path: str) -> str | None:
    """Images of an ImageFolder ``root`` that are in no class folder (in the root itself, or in a split folder beside
    its class folders), which the split leaves out: how many, said only in the split job's log otherwise, so that
    photos dropped into the root stayed out of training without a word. Read from those folders' own entries at each
    start, the first too (no split made yet), until each is moved into its class folder (the split then runs again).
    None where there are none, or the folder does not read (the checks of the folder say why)."""
    from .data import DataError, _images_in, split_folders

    try:
        outside = sorted(str(path) for top in [Path(root), *split_folders(Path(root))] for path in _images_in(top))
    except (DataError, OSError):
        return None
    if not outside:
        return None
    return (f"{len(outside)} image(s) are in no class folder, and the split leaves them out "
            f"({', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}; the split reads none of them, and its "
            f"report {report_path} lists those there when it ran, images_outside_class_folders): an image's class is "
            "the folder it is in; move each into its class folder, and the split runs again")


def number_classes_note(names: list[str], classes_written: list | None, key: str = "dataset") -> str | None:
    """Where ``dataset.classes`` is not written and the dataset's classes (``names``: :func:`classes_at_start`) are
    named by numbers (labels 1 to 12, folders 0 to 10), in an order as text other than the numbers' own: the model's
    output i is the i-th name as text (output 2 is class '10'), which a deployer reading outputs as numbers gets wrong.
    Said with the ``<key>.classes`` that orders them by number (``key``: where the config holds the dataset). None
    otherwise."""
    if classes_written is not None or len(names) < 2 or not all(isinstance(n, str) and n.isdigit() for n in names):
        return None
    by_number = sorted(names, key=lambda name: (int(name), name))
    if by_number == names:
        return None
    first = next(i for i, (a, b) in enumerate(zip(names, by_number)) if a != b)
    return (f"the classes are numbers, in their order as text ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}):"
            f" the model's output {first} is class '{names[first]}', not '{by_number[first]}' (the ONNX model's metadata "
            f"lists them in that order); for the numbers' order, write {key}.classes: [{', '.join(repr(n) for n in by_number[:12])}"
            f"{', ...' if len(by_number) > 12 else ''}] (quoted: a bare number is an index), which splits and trains again")


# An integer as YAML 1.1 (Snakemake's PyYAML) reads it in octal: a leading 0 and digits below 8 (010 is 8).
YAML_OCTAL = re.compile(r"[-+]?0[0-7_]+")


def ambiguous_class_numbers_problem(names: list[str], classes_written: list | None, key: str = "dataset",
                                    texts: list | None = None) -> str | None:
    """Where ``<key>.classes`` holds a number that does not say which class it means: one YAML read from an unquoted
    name with a leading 0 (`010` is 8, octal; `001` is 1) other than the class at that index, which the split takes
    (`classes: [001, 010]` over folders 001 to 012 trained 002 and 009 without a word); or a bare number naming a class
    written with leading zeros other than the one at that index (`8` over folders 001 to 012: index 8 is 009, the number
    008). ``texts``: the items as written (finetune.userconfig.written_texts); without them (a module's config given as
    a dict), a number is taken as possibly written either way. (A class named as the number itself, folder 8, the split
    job refuses: finetune.data.select_classes.) ``names``: the dataset's classes in label order."""
    texts = texts if texts is not None and len(texts) == len(classes_written or []) else [None] * len(classes_written or [])
    ambiguous, example = [], None
    for item, text in zip(classes_written or [], texts):
        if not isinstance(item, int) or isinstance(item, bool):
            continue
        at_index = names[item] if 0 <= item < len(names) else None
        as_octal = text is not None and bool(YAML_OCTAL.fullmatch(str(text)))  # written so: read as octal
        meant = [name for name in names if name != at_index and name != str(item)
                 and _reads_as(name, item, octal=text is None or as_octal)]
        if as_octal and str(text).lstrip("+") in names:
            meant = [name for name in [str(text).lstrip("+")] if name != at_index]  # the class as written
        if meant:
            written = f"{text} (YAML reads it as {item}, octal: " if as_octal else f"{item} ("
            example = example or repr(meant[0])
            ambiguous.append(f"{written}the class at index {item} is {repr(at_index) if at_index is not None else 'none'}"
                             f"; it may stand for {' or '.join(repr(name) for name in meant)})")
    if not ambiguous:
        return None
    return (f"{key}.classes: a bare number is an index into the sorted classes, and these may stand for classes named "
            f"with leading zeros: {'; '.join(ambiguous)}. YAML reads an unquoted number with a leading 0 as octal (010 "
            f"as 8, 012 as 10): quote each class's name as its folder or label writes it ({example}), which names that "
            "class whatever its index")


def _reads_as(name: str, number: int, octal: bool = True) -> bool:
    """Whether a class ``name`` of ASCII digits with a leading zero is ``number`` written with leading zeros (008 for 8),
    or (``octal``) what YAML 1.1 reads the name as, unquoted: octal where every digit is below 8 (010 as 8)."""
    if not (name.isascii() and name.isdigit() and len(name) > 1 and name.startswith("0")):
        return False
    return int(name) == number or (octal and set(name) <= set("01234567") and int(name, 8) == number)


def classes_at_start(cfg: dict, report: dict, manifest_changed: bool) -> list[str]:
    """Every class of an ImageFolder or CSV dataset (``cfg``: its config section), in label order, as the split of
    this run has or will make them, before any image is read: the class folders' names (the first run's split is
    not made yet, and a folder added or renamed makes it again), or a manifest's labels where it changed since its
    split (``manifest_changed``; no split yet counts), else those of that split's ``report``. [] where they do not read
    (the checks at start say why)."""
    from .data import DataError, image_folder_classes, nfc
    from .fileio import read_text_table

    try:
        if cfg["format"] == "imagefolder":
            return image_folder_classes(cfg["path"])
        if manifest_changed:  # as data.list_csv_manifest reads a label: spaces around it dropped, composed
            labels = read_text_table(cfg["path"])["label"].str.strip().map(nfc)
            return sorted(set(labels) - {""})
    except (DataError, OSError, KeyError, ValueError):
        return []
    return list(report.get("classes") or [])


def unread_predict_images_note(images: str) -> str | None:
    """Where ``images`` (predict.images) is a folder holding files of a camera's or phone's image format that predict
    does not read (.heic, .dng: finetune.watch.UNREAD_IMAGE_FORMATS), how many of each: they get no row, said
    otherwise only in the predict job's log, and only once it reruns (adding them alone reruns nothing)."""
    from .images import IMAGE_EXTENSIONS, extension_counts, walk_folders
    from .watch import UNREAD_IMAGE_FORMATS

    if not os.path.isdir(images):
        return None
    counts = extension_counts(name for _, names in walk_folders(images) for name in names
                              if name.lower().endswith(UNREAD_IMAGE_FORMATS))
    if not counts:
        return None
    listed = ", ".join(f"{n} {extension}" for extension, n in counts.items())
    return (f"predict.images: {sum(counts.values())} file(s) of an image format not read here ({listed}) get no "
            f"prediction: convert them to one read here ({', '.join(IMAGE_EXTENSIONS)})")


def damaged_split_problem(split_file: str | Path) -> str | None:
    """Where the split file made before no longer holds what its split job wrote: its rows per class and split differ
    from the counts its report (``<split>.report.json``) recorded, a row's split is none of train, val, test, a class
    has rows of several labels or a label rows of several classes (a file cut short by a full disk or a copy, or
    edited), or its report no longer reads. Every job after it would read it without a word, and evaluate on fewer
    test images. None where it agrees, or where the split or its report is missing, or the report (of an earlier
    version) has no counts."""
    from collections import Counter, defaultdict

    split_file = Path(split_file)
    report = split_file.with_suffix(".report.json")
    try:
        counts = json.loads(report.read_text())["counts"]
    except (FileNotFoundError, KeyError, TypeError):
        return None
    except (OSError, ValueError) as exc:
        return f"its report {report} does not read ({type(exc).__name__}: {exc})"
    try:
        expected = Counter({(str(name), split): int(n) for name, by_split in counts.items()
                            for split, n in by_split.items() if int(n)})
    except (ValueError, TypeError, AttributeError):
        return f"its report {report} no longer holds counts of rows per class and split"
    found: Counter = Counter()
    labels: dict = defaultdict(set)
    try:
        with open(split_file, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                found[(row.get("class_name"), row.get("split"))] += 1
                labels[row.get("class_name")].add(row.get("label"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"{split_file} does not read ({exc})"
    mixed = label_mixups(labels)
    if found == expected and not mixed:
        return None
    odd = sorted({"none (a row cut short)" if split is None else repr(split) for _, split in found
                  if split not in ("train", "val", "test")})
    differ = [f"{name} {split}: {found[(name, split)]} rows, its report {expected[(name, split)]}"
              for name, split in sorted(set(found) | set(expected), key=str) if found[(name, split)] != expected[(name, split)]
              and split in ("train", "val", "test")]
    why = "; ".join([*([f"split value(s) {', '.join(odd)}, not train, val or test"] if odd else []),
                     *differ[:6], *(["..."] if len(differ) > 6 else []), *mixed[:3]])
    return (f"{split_file} no longer holds the split its job wrote ({sum(found.values())} rows, "
            f"{sum(expected.values())} in its report {report.name}: {why})")


def split_made_again(split_file: str | Path, dataset_cfg: dict) -> bool:
    """Whether the split job runs again whatever its file holds: the dataset's format, path, seed or classes as its
    report recorded them differ from the config's now (its params changed). False where the report does not say."""
    try:
        report = json.loads(Path(split_file).with_suffix(".report.json").read_text())
        recorded = (report["dataset"]["format"], report["dataset"]["path"], report["seed"], report["classes_written"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded != (dataset_cfg.get("format"), dataset_cfg.get("path"), dataset_cfg.get("seed"),
                        dataset_cfg.get("classes"))


def label_mixups(labels: dict) -> list[str]:
    """``labels``: {class name: the labels its rows give}. One line for a class whose rows give several labels, and for
    a label given to several classes: each class is one label in every file a split job writes."""
    lines = [f"class {name} has rows labelled {', '.join(sorted(map(str, given)))}"
             for name, given in sorted(labels.items(), key=str) if len(given) > 1]
    classes_of: dict = {}
    for name, given in labels.items():
        for label in given:
            classes_of.setdefault(label, set()).add(name)
    lines += [f"label {label} is given to classes {', '.join(sorted(map(str, names)))}"
              for label, names in sorted(classes_of.items(), key=str) if len(names) > 1]
    return lines


# The metadata every export has written since the first version, the last of them written last: a file cut inside its
# metadata lacks some (finetune.export.onnx_metadata).
ONNX_METADATA_KEPT = {"classes", "input_size", "mean", "std", "arch", "finetune_version"}


def damaged_onnx_problem(path: str | Path) -> str | None:
    """Where an ONNX model the export wrote (its parity checked then) no longer loads, or lacks what every export
    writes (outputs, opset, the metadata of :data:`ONNX_METADATA_KEPT`): a file cut short or overwritten since, which
    Snakemake would keep as done."""
    try:
        import onnx
    except ImportError:  # the check at start is then left out; the export itself needs onnx
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, and what else a damaged file raises
        return f"{path} no longer loads as an ONNX model ({type(exc).__name__}: {exc})"
    keys = {entry.key for entry in model.metadata_props}
    lacks = [what for what, has in (("outputs", len(model.graph.output)), ("opset", len(model.opset_import)),
                                    ("metadata", ONNX_METADATA_KEPT <= keys)) if not has]
    if lacks:
        return f"{path} lacks the {', '.join(lacks)} its export wrote"
    return None


def damaged_json_problem(path: str | Path) -> str | None:
    """Where a run's JSON record (metrics.json, train_info.json) no longer reads as the JSON object its job wrote: cut
    short or overwritten since, which Snakemake keeps as done; the summary job reading it would fail only once
    Snakemake had removed the earlier leaderboard (summary.md, summary.csv, selected.json)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path} no longer reads as the JSON its job wrote ({type(exc).__name__}: {exc})"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"{path} is no longer the JSON its job wrote ({exc})"
    return None if isinstance(value, dict) else f"{path} no longer holds the JSON object its job wrote"


def damaged_checkpoint_problem(path: str | Path) -> str | None:
    """Where a model.pt (torch.save's zip archive) no longer reads as one, or a member's bytes no longer match the
    CRC its writer stored: cut short or overwritten since its train job, which Snakemake keeps as done; the export and
    evaluate jobs after it would fail on it only once Snakemake had removed their outputs (the run's model.onnx,
    metrics.json)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"{path} no longer reads as the checkpoint its train job wrote ({type(exc).__name__}: {exc})"
    if bad is not None:
        return f"{path} no longer holds the bytes its train job wrote ({bad} fails its CRC)"
    return None


def damaged_weights_problem(weights_file: str | Path, manifest_file: str | Path) -> str | None:
    """Where the published weights no longer have the sha256 their manifest gives (cut short or replaced since the
    weights job): every train job would refuse them, each after Snakemake removed that run's model.pt."""
    from .fileio import sha256_of

    try:
        manifest = json.loads(Path(manifest_file).read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_file} no longer reads as the weights' manifest ({type(exc).__name__}: {exc})"
    try:
        actual = sha256_of(weights_file)
    except FileNotFoundError:
        return None
    if actual != expected:
        return f"{weights_file} does not match its manifest {manifest_file} (sha256 {actual}, the manifest says {expected})"
    return None


def damaged_decoded_problem(npy: str | Path, info_json: str | Path) -> str | None:
    """Where decoded images no longer hold what their record says (cut short, or written over since: the decode
    job's own check, finetune.store, whose bytes it reads only where the array changed after its record): every job
    reading them would stop on it, each after Snakemake removed its outputs (a run's model.pt)."""
    from .errors import DataError
    from .store import _damage  # the check open_decoded makes, without its removal of the pair

    try:
        with open(npy, "rb") as handle:
            why = _damage(handle, Path(npy), Path(info_json))[0]
    except FileNotFoundError:
        return None
    except (OSError, DataError) as exc:  # another version's record: the job says so, nothing is damaged
        return None if isinstance(exc, DataError) else f"{npy} cannot be read ({exc})"
    return f"decoded images {npy}: {why}" if why else None


def range_test_edge_line(curve_csv: str | Path, suggestion_json: str | Path) -> str | None:
    """Where a range test's smoothed loss was still falling at the last lr it tried (the top of its range: it did not
    diverge), a line saying so: its suggestion is the steepest fall within the range, and a larger lr, never tried,
    may train better (the low end is refused by the job, finetune.lrfind; the high end was taken without a word)."""
    import pandas as pd

    try:
        suggestion = json.loads(Path(suggestion_json).read_text())
        curve = pd.read_csv(curve_csv)
        smoothed, lrs = curve["smoothed_loss"].tolist(), curve["lr"].tolist()
        lr, diverged = float(suggestion["lr"]), bool(suggestion["diverged"])
        top = suggestion.get("range_test", {}).get("max_lr", lrs[-1])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    finite = [value for value in smoothed if value == value]  # NaN aside
    if diverged or len(finite) < 2 or finite != smoothed or min(smoothed) != smoothed[-1]:
        return None
    return (f"{Path(curve_csv).parent}: the smoothed loss was still falling at the last lr the range test tried, "
            f"{lrs[-1]:.3g} (lr_find.max_lr {top:g}): its suggestion, {lr:.3g}, is the steepest fall within that range, "
            "and a larger lr, never tried, may train better; raise lr_find.max_lr to see where the loss turns up")


def stored_as(path: str) -> str | None:
    """The file ``path`` names where it is not there as written but one of its names (the file's or a folder's above
    it) is stored in another Unicode form: 'é' as one character written, 'e' and a combining accent on disk (as macOS
    writes names), or the reverse. The path as stored, or None."""
    here = Path(path).parts[0] if os.path.isabs(path) else "."
    for part in Path(path).parts[1 if os.path.isabs(path) else 0:]:
        step = os.path.join(here, part)
        if not os.path.lexists(step):
            try:
                alike = sorted(name for name in os.listdir(here)
                               if unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", part))
            except OSError:
                return None
            if not alike:
                return None
            step = os.path.join(here, alike[0])
        here = step
    return os.path.normpath(here) if os.path.exists(here) else None


def other_unicode_form_hint(manifest: str | Path) -> str:
    """For a CSV manifest whose rows name files not found: those of them found with a name in another Unicode form
    (:func:`stored_as`), as a hint to end the message with ('' where none is)."""
    from .data import manifest_lines

    try:
        lines = manifest_lines(str(manifest))
    except Exception:  # the manifest's own problem is the message this would end
        return ""
    found = [(line, path, stored) for path, line in lines.items()
             if not os.path.exists(path) and (stored := stored_as(path)) is not None]
    if not found:
        return ""
    shown = "; ".join(f"line {line}: {ascii(written)} in the manifest, {ascii(stored)} on disk"
                      for line, written, stored in found[:3]) + (" ..." if len(found) > 3 else "")
    return (f". {len(found)} row(s) name a file that is there with a name in another Unicode form (an accented "
            f"letter as one character, or as a letter and a combining accent, as macOS writes names; shown with the "
            f"characters' codes): {shown}. Write those paths as the names are stored, or rename the files")


def nvidia_driver_loaded() -> bool:
    """Whether this machine has NVIDIA's driver loaded (a GPU may be there): asked of the file system, in no time,
    before torch is asked, which takes seconds."""
    return os.path.isdir("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


# The jobs that can run beside one another in a run, by rule, and the threads key each holds (lr_find, a short job
# before its run's train job, is left out).
SIDE_BY_SIDE_RULES = {"train": "train", "evaluate": "data", "export_onnx": "data"}


def _could_overlap(first: str, second: str, scheduled: dict) -> bool:
    """Whether a job of ``first`` and one of ``second`` can run at once in a run of ``scheduled`` {rule: jobs}: two
    runs' train jobs; a train job and another run's evaluate or export; a run's evaluate and export_onnx (they
    need only its model); two runs' evaluate or export jobs."""
    count = lambda rule: scheduled.get(rule, 0)  # noqa: E731
    if first == second:
        return count(first) >= 2
    if "train" in (first, second):
        return count("train") >= 2 and count(second if first == "train" else first) >= 1
    return count(first) >= 1 and count(second) >= 1


def side_by_side_note(cores: int | None, threads: dict, scheduled: dict, on_gpu: set, whole_gpu: set) -> str | None:
    """For a run on one machine: where two of its jobs that could run at once, one of them on the GPU, cannot for
    their threads (threads.train and threads.data add up to more than --cores), Snakemake runs them one at a time and
    the GPU waits while the other works on the CPU, starts or ends; with half the cores each they run side by side.
    Said, not changed: the threads are the user's. ``scheduled``: {rule: jobs} of the run; ``on_gpu``: the rules
    whose jobs use the GPU; ``whole_gpu``: those whose jobs each take every GPU the run has (the `gpu` resource),
    which run one at a time whatever their threads."""
    if not cores or cores < 2:
        return None
    rules = list(SIDE_BY_SIDE_RULES)
    blocked = [(first, second) for i, first in enumerate(rules) for second in rules[i:]
               if (first in on_gpu or second in on_gpu) and not (first in whole_gpu and second in whole_gpu)
               and _could_overlap(first, second, scheduled)
               and sum(min(threads[SIDE_BY_SIDE_RULES[rule]], cores) for rule in (first, second)) > cores]
    if not blocked:
        return None
    # the keys to halve: those of the blocked pairs above half the cores (two at half fit; one at most half leaves room)
    keys = [key for key in ("train", "data") if min(threads[key], cores) > cores // 2
            and any(SIDE_BY_SIDE_RULES[rule] == key for pair in blocked for rule in pair)]
    written = " and ".join(f"threads.{key} {threads[key]}" for key in keys)
    pairs = ", ".join(f"{first} and {second}" for first, second in blocked)
    return (f"{written} on --cores {cores}: jobs of this run that could run at once ({pairs}) run one at a time, the "
            "GPU waiting while the other works on the CPU, starts or ends; with "
            f"{' and '.join(f'threads.{key}' for key in keys)} {max(1, cores // 2)} (half the cores) they would run "
            "side by side (a 224-px DAG of two experiments on an H200: 108 s with 16 threads a job on 16 cores, 55 s "
            "with 8; docs/gpu.md, \"On a GPU\")")


def random_backbone_gradual_note(runs: dict[str, dict], keys: dict[str, dict]) -> str | None:
    """``runs``: {run: its options} of the train jobs a run starts; ``keys``: {run: where its own keys are written}.
    Where gradual starts from no pretrained weights, a line naming the runs: its first ``unfreeze_epoch`` epochs train
    the new head alone on a random backbone, held frozen (feature_extract is refused there, as its backbone would stay
    random; gradual's trains later, so it is said, not refused)."""
    named = sorted(run for run, options in runs.items()
                   if options.get("strategy") == "gradual" and options.get("pretrained") is False
                   and (options.get("unfreeze_epoch") or 0) > 0)
    if not named:
        return None
    epochs = {runs[run].get("unfreeze_epoch") for run in named}
    where = sorted({keys.get(run, {}).get("pretrained", "train.pretrained") for run in named})
    return (f"{', '.join(named)}: strategy gradual with {' and '.join(where)} false: the first "
            f"{' or '.join(map(str, sorted(epochs)))} epoch(s) train the new head alone on a random backbone, frozen, "
            "which has learnt nothing to build on; strategy finetune trains every layer from the first epoch")


def frozen_random_batchnorm_note(runs: dict[str, dict], keys: dict[str, dict]) -> str | None:
    """``runs``: {run: its options} of the train jobs a run starts; ``keys``: {run: where its own keys are written}.
    Where ``bn: frozen`` meets ``pretrained: false``, a line naming the runs: frozen BatchNorm keeps the statistics
    and scale of the weights it starts from, which here are the initial ones (mean 0, variance 1, scale 1, shift 0),
    so that its layers normalise nothing for the whole run; said, not refused (a network without normalisation may be
    what is meant)."""
    named = sorted(run for run, options in runs.items()
                   if options.get("bn") == "frozen" and options.get("pretrained") is False)
    if not named:
        return None
    written = sorted({keys.get(run, {}).get(key, f"train.{key}") for run in named for key in ("bn", "pretrained")})
    return (f"{', '.join(named)}: bn frozen with pretrained false ({', '.join(written)}): BatchNorm keeps the statistics "
            "of the weights it starts from, here its initial ones (mean 0, variance 1, scale 1, shift 0), so it "
            "normalises nothing for the whole run; bn: auto trains BatchNorm from scratch")


def frozen_batchnorm_pretraining_note(pretrain: dict) -> str | None:
    """``pretrain``: {"pretrain": its options} where the pretrain job starts (else {}). With ``bn: frozen`` a line: it
    starts from random weights, so BatchNorm keeps the initial statistics, as :func:`frozen_random_batchnorm_note`
    says of a run, and the source model every pretrained run starts from normalises nothing."""
    options = pretrain.get("pretrain") or {}
    if options.get("bn") != "frozen":
        return None
    return ("pretrain.train.bn frozen: pretraining starts from random weights, so BatchNorm keeps its initial "
            "statistics (mean 0, variance 1, scale 1, shift 0) and normalises nothing, in the source model every "
            "pretrained run then starts from; bn: auto trains BatchNorm")


def zero_backbone_lr_note(runs: dict[str, dict], keys: dict[str, dict]) -> str | None:
    """``runs``: {run: its options} of the train jobs a run starts; ``keys``: {run: where its own keys are written}.
    Where finetune or gradual has ``backbone_lr_factor: 0`` (the schema takes it), a line naming each such key: the
    backbone's weights then never change, as with feature_extract, yet every step computes their gradients, and
    under bn auto (or train) BatchNorm's running statistics follow the target's images; said, not refused (adapting
    those statistics alone may be what the user wants)."""
    named: dict[str, list[str]] = {}
    bn_moves = False
    for run, options in runs.items():
        if options.get("strategy", "finetune") in ("finetune", "gradual") and options.get("backbone_lr_factor") == 0:
            written = keys.get(run, {}).get("backbone_lr_factor", "train.backbone_lr_factor")
            named.setdefault(written, []).append(run)
            bn_moves = bn_moves or options.get("bn", "auto") != "frozen"
    if not named:
        return None
    listed = "; ".join(f"{key} 0 ({', '.join(sorted(which))})" for key, which in sorted(named.items()))
    stats = (", and its BatchNorm layers' running statistics still follow the target's images (bn: frozen keeps "
             "the source model's)") if bn_moves else ""
    return (f"{listed}: the backbone trains at lr 0, so its weights never change, yet each step computes their "
            f"gradients{stats}; strategy: feature_extract trains the new head alone on the frozen backbone, faster "
            "(without augment, its features computed once)")


# The rules whose jobs import torch (each pays its import again where bytecode is not cached).
TORCH_RULES = ("pretrain", "train", "lr_find", "evaluate", "export_onnx")


def cuda_only_options_note(runs: dict[str, dict], keys: dict[str, dict]) -> str | None:
    """``runs``: {run: its options} of the train jobs a run starts on a machine where no GPU is seen, their device
    ``auto``; ``keys``: {run: where its own keys are written (experiments.<name>.<key>)}. Where some set ``amp`` or
    ``channels_last``, which act on CUDA only, a line naming each key as written: those runs train as they would
    without them (the same history, to the last digit), which a comparison of the two would not show. (device: cpu
    with them is refused at start; on a cluster the jobs' nodes may have GPUs the submitting machine lacks.)"""
    named = {}
    for run, options in runs.items():
        asked = {"amp": options.get("amp", "off") != "off", "channels_last": bool(options.get("channels_last"))}
        for key, on in asked.items():
            if on and options.get("device", "auto") == "auto":
                written = keys.get(run, {}).get(key, f"train.{key}")
                named.setdefault(f"{written} {str(options[key]).lower()}", []).append(run)
    if not named:
        return None
    listed = "; ".join(f"{key} ({', '.join(sorted(which))})" for key, which in sorted(named.items()))
    return (f"{listed}: autocast and channels-last act on CUDA only, and this machine has no GPU that torch sees, so "
            "these runs train on the CPU (device auto) as they would without them (train_info.json, and pretraining's "
            "resources/pretrain/info.json, record the options as written)")


def sync_batchnorm_on_cpu_problems(runs: dict[str, dict], keys: dict[str, dict]) -> list[str]:
    """``runs``: {run: its options} of the train jobs a run starts on a machine where no GPU is seen; ``keys``: {run:
    where its own keys are written}. A run of ``sync_batchnorm: true`` on device ``auto`` would train on the CPU here,
    where torch's SyncBatchNorm does not run: its job failed after a torchrun start, and after Snakemake removed the
    model it was to replace. One line per key as written, naming the runs. (device: cpu with it is refused with the
    options; on a cluster the jobs' nodes may have GPUs the submitting machine lacks.)"""
    named = {}
    for run, options in runs.items():
        if options.get("sync_batchnorm") and options.get("device", "auto") == "auto":
            written = keys.get(run, {}).get("sync_batchnorm", "train.sync_batchnorm")
            named.setdefault(written, []).append(run)
    return [f"{key} true ({', '.join(sorted(which))}): SyncBatchNorm runs on GPUs only, and this machine has no GPU "
            "that torch sees, so these runs would train on the CPU (device auto): set sync_batchnorm false here, or run "
            "them where there are GPUs (the Slurm profile)" for key, which in sorted(named.items())]


def cuda_graphs_on_cpu_note(runs: dict[str, dict], keys: dict[str, dict], gpu_seen: bool = True) -> str | None:
    """``runs``: {run: its options} of the train jobs a run starts; ``keys``: {run: where its own keys are written}.
    Where some set ``compile: reduce-overhead`` (torch.compile's default mode with CUDA graphs) and train on the CPU
    (device cpu, or device auto where ``gpu_seen`` is false: no GPU that torch sees here), a line naming each key as
    written: the graphs act on CUDA only, so those runs compile as with ``compile: default``, which a sweep of the
    two would not show."""
    named = {}
    for run, options in runs.items():
        device = options.get("device", "auto")
        if options.get("compile") == "reduce-overhead" and (device == "cpu" or (device == "auto" and not gpu_seen)):
            named.setdefault(keys.get(run, {}).get("compile", "train.compile"), []).append(run)
    if not named:
        return None
    listed = "; ".join(f"{key} reduce-overhead ({', '.join(sorted(which))})" for key, which in sorted(named.items()))
    return (f"{listed}: reduce-overhead is torch.compile's default mode with CUDA graphs, which act on CUDA only, and "
            "these runs train on the CPU: they compile and train as with compile: default")


def uncached_bytecode_note(environ: dict, torch_folder: str | os.PathLike | None, torch_jobs: int) -> str | None:
    """Where the jobs' Python may not write bytecode (PYTHONDONTWRITEBYTECODE, set in many container images) and
    torch's package holds none (installed with --no-compile): every job compiles torch's Python again before its
    work, seconds each. ``torch_folder``: torch's package folder (None: not found); ``torch_jobs``: the run's jobs
    that import torch."""
    if torch_jobs < 1 or not environ.get("PYTHONDONTWRITEBYTECODE") or torch_folder is None:
        return None
    if environ.get("PYTHONPYCACHEPREFIX") or os.path.isdir(os.path.join(torch_folder, "__pycache__")):
        return None
    return (f"PYTHONDONTWRITEBYTECODE is set and torch ({torch_folder}) holds no compiled bytecode (__pycache__): each "
            f"of the {torch_jobs} job(s) of this run that import torch compiles its Python again first (import torch "
            "took 3.5-4.1 s that way on an H200 machine, 2.2 s with its bytecode kept); unset PYTHONDONTWRITEBYTECODE "
            "for the run, with PYTHONPYCACHEPREFIX=<a writable folder> where torch's folder is read-only")
