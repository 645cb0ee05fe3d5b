"""What the rows read: the demo's pretrained source model and target split, and the speed rows' PNG folder."""

from __future__ import annotations

import shutil
from pathlib import Path

# common first: it sets OMP_WAIT_POLICY before torch is imported.
from common import DEMO_CONFIG, REPO, run_checked, say, snakemake_cmd, timed, with_package_env

import pandas as pd

from finetune.data import read_split
from finetune.images import read_idx, split_ref
from finetune.weights import read_manifest

# The speed rows (train_img_per_s, feature_extract_25ep_s) read a fixed subset of the demo's target
# classes, whatever the demo's few-shot budget: with 10 images per class an epoch is 2 batches, and
# fixed costs would decide the ratio. Test: every official test image of those classes.
SPEED_SUBSET = {"max_train_per_class": 100, "max_val_per_class": 100, "max_test_per_class": None, "seed": 0}


# --------------------------------------------------------------------------- weights and the demo's split

def demo_weights(workdir: Path, threads: int) -> tuple[Path, Path, str]:
    """The demo's pretrained source model and target split: reused from the repository's resources/ when
    `make demo` made them and the demo's config would make nothing of them again (a run of another config there,
    another dataset.seed say, made others), otherwise made by the demo pipeline's own rules in ``workdir``."""
    targets = ["resources/weights/manifest.json", "resources/splits/target.csv"]
    manifest, split = REPO / targets[0], REPO / targets[1]
    if manifest.exists() and split.exists():
        try:
            read_manifest(manifest)
            stale = stale_for_the_demo(targets)
            if not stale:
                return manifest, split, f"reused {manifest.relative_to(REPO)}"
            say(f"  not reusing {manifest.parent.parent}: a dry run of the demo's config would make them again (another "
                f"config's run there, or a change of the data or code since: {stale})")
        except Exception as exc:  # a half-written or stale manifest: make our own
            say(f"  not reusing {manifest}: {exc}")
    cmd = snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                        "--configfile", str(DEMO_CONFIG), "--cores", str(max(threads, 1)), *targets)
    say(f"  running the demo's split, pretrain and weights rules in {workdir} ...")
    seconds, _ = timed(run_checked, cmd, "the demo's weights rule", 3600)
    return (workdir / targets[0], workdir / targets[1],
            f"the demo's rules in {workdir} ({seconds:.0f} s; Snakemake reran only what was missing or stale)")


def stale_for_the_demo(targets: list[str]) -> str:
    """What a dry run of the demo's config in the repository would make again of ``targets`` (its reasons, in
    short), or '' where nothing: they are what `make demo` made."""
    import subprocess

    cmd = snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO), "--configfile",
                        str(DEMO_CONFIG), "--cores", "1", "--dry-run", *targets)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                            env=with_package_env())
    if result.returncode == 0 and "Nothing to be done" in result.stdout:
        return ""
    reasons = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("reason:")]
    found = "; ".join(dict.fromkeys(reasons)) or f"its dry run ended with exit status {result.returncode}"
    return found if len(found) <= 300 else found[:300] + " ..."


# --------------------------------------------------------------------------- data: a folder of PNG files

def write_image_folder(split_csv: Path, root: Path) -> dict[str, list[tuple[str, int]]]:
    """Write the split's images as PNG files in ``root/<split>/<class>/``; return (path, label) per split.

    Labels follow ImageFolder's rule (sorted folder names), so both sides see the same labels.
    """
    frame, classes = read_split(split_csv)
    folders = {name: name.replace("/", "-") for name in classes}
    label_of = {name: i for i, name in enumerate(sorted(folders.values()))}
    listing: dict[str, list[tuple[str, int]]] = {}
    from PIL import Image

    for split in ("train", "val", "test"):
        rows = frame[frame["split"] == split]
        items = []
        for n, (ref, name) in enumerate(zip(rows["path"], rows["class_name"])):
            folder = root / split / folders[name]
            target = folder / f"{n:05d}.png"
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                path, index = split_ref(ref)
                if index is not None:
                    Image.fromarray(read_idx(path)[index], mode="L").save(target)
                else:
                    shutil.copyfile(path, target)
            items.append((str(target), label_of[folders[name]]))
        listing[split] = items
    return listing


def speed_split(config: dict, workdir: Path, threads: int) -> Path:
    """The split of SPEED_SUBSET over the demo's target dataset (the split rule's own code)."""
    from finetune.stages import split_stage

    out = workdir / "speed_split.csv"
    split_stage({**config["dataset"], **SPEED_SUBSET}, out, workdir / "speed_split.json", threads)
    return out


def folder_split_csv(listing: dict[str, list[tuple[str, int]]], out: Path) -> Path:
    """Our side reads the same PNG files through a split CSV (the format the split rule writes)."""
    names = {}
    rows = []
    for split, items in listing.items():
        for path, label in items:
            names[label] = Path(path).parent.name
            rows.append({"path": path, "label": label, "split": split})
    frame = pd.DataFrame(rows)
    frame["class_name"] = frame["label"].map(names)
    frame[["path", "label", "class_name", "split"]].to_csv(out, index=False)
    return out



def tiny_weights(workdir: Path, threads: int) -> tuple[Path, Path]:
    """The tests' tiny config's pretrained source model and target split (seconds): what ``--smoke --only``
    reads where the tiny DAG of ``noop_rerun_s`` is not run."""
    from helpers import tiny_config

    config = tiny_config(workdir)
    targets = ["resources/weights/manifest.json", "resources/splits/target.csv"]
    run_checked(snakemake_cmd("--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                              "--configfile", str(config), "--cores", str(max(threads, 1)), *targets),
                "the tiny config's weights rule", 900)
    return workdir / targets[0], workdir / targets[1]
