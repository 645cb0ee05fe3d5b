"""One function per workflow stage. Scripts in ``workflow/scripts/`` parse arguments and call these."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from . import __version__
from .data import SPLITS, SplitSpec, make_split, read_split
from .errors import ConfigError, DataError, WeightsError
from .fileio import (atomic_path, ensure_writable, read_json, read_json_object, sha256_of, torch_save, write_json,
                     write_text)
from .jobclock import lap
from .weights import (DEFAULT_TIMEOUT_S, WEIGHTS_KEYS, WEIGHTS_REQUIRED, copy_local, download, fetch_torchvision,
                      infer_num_classes, library_versions, load_state_dict, not_a_torch_file, read_manifest, torchvision_arch,
                      torchvision_weights, write_manifest)

CHECKPOINT_FORMAT = "finetune-checkpoint/1"
TTA_MODES = ("none", "hflip")  # evaluate.tta
PARITY_SAMPLE = 256  # test images on which export checks onnxruntime against PyTorch (top-1 agreement)


def imports_done() -> None:
    """End the job's ``imports`` (:mod:`finetune.jobclock`): torchvision too, which each torch stage loads to build
    its model, so that the time the imports take is told apart from reading the inputs."""
    from .importing import import_torchvision

    import_torchvision()
    lap("imports")


# --------------------------------------------------------------------------- split

def split_stage(dataset_cfg: dict, out_csv: Path, out_report: Path, threads: int = 1) -> dict:
    split, report = make_split(SplitSpec.from_config(dataset_cfg), threads=threads)
    with atomic_path(out_csv) as tmp:
        split.to_csv(tmp, index=False, lineterminator="\n")
    write_json(out_report, report)
    lap("outputs")
    return report


def decode_stage(split_csv: Path, out_npy: Path, out_info: Path, threads: int, image_size: int | None = None,
                 manifest_path: Path | None = None, splits=SPLITS, log: Callable = print,
                 weights_sizes: dict | None = None, channel_stats_of: str | None = None) -> dict:
    """Decode the images of a split file once, at the size the jobs that read them need.

    The target dataset: the weights' preprocessing, its crop overridden by ``image_size``, read from the
    config's own ``weights_sizes`` (:func:`weights_preprocessing`; the workflow's way, so decoding needs
    no weights file) or from a weights manifest (``manifest_path``). The source dataset of ``pretrain``
    (neither given): resized and cropped to ``image_size``; its record keeps the mean and standard deviation of
    the ``channel_stats_of`` images (``train``), with which pretrain and the scratch control normalise them.
    """
    from .images import Preprocessing
    from .store import write_decoded

    if image_size is not None and image_size < 8:  # the schema's image_size minimum (weights' own crop: 1 and up)
        raise ConfigError(f"decode: --image-size {image_size}: at least 8 pixels")
    if weights_sizes is not None:
        named = weights_sizes.get("image_size", "native" if not image_size else image_size)
        if str(named) != (str(image_size) if image_size else "native"):  # the workflow's key names the size decoded
            given = image_size or "not given (the weights' own: native)"
            raise ConfigError(f"decode: --weights-sizes names image_size {named!r}, and --image-size is {given}: the "
                              "size decoded is --image-size's")
        prep = Preprocessing.from_dict(weights_preprocessing(weights_sizes), image_size)
    elif manifest_path is not None:
        prep = Preprocessing.from_dict(read_manifest(manifest_path, verify_file=False)["preprocessing"], image_size)
    elif image_size:
        prep = Preprocessing.raw(image_size)
    else:
        raise ConfigError("decode: the sizes to decode at are not given: --manifest or --weights-sizes (the target "
                          "dataset: the weights' preprocessing), or --image-size (the source: pretrain.image_size)")
    return write_decoded(split_csv, prep.resize_size, prep.crop_size, out_npy, out_info, splits=splits, threads=threads,
                         log=log, interpolation=prep.interpolation, require_every_split=True,
                         channel_stats_of=channel_stats_of)


def weights_preprocessing(weights_sizes: dict) -> dict:
    """The resize, crop and filter the weights job writes in its manifest, from the config alone.

    ``weights_sizes`` is the workflow's ``{"weights": <what gives the sizes>, "sizes": ...}``: for ``pretrain``
    ``pretrain.image_size`` (the source model's resize and crop), for ``torchvision`` the weights enum's
    name (its transforms), for ``preprocessing`` (sources ``url`` and ``path``) ``weights.preprocessing``.
    Mean and std do not matter to decoding (images are stored as uint8) and are left neutral.
    """
    from .images import Preprocessing
    from .weights import preprocessing_from_torchvision

    unknown = sorted(map(str, set(weights_sizes) - {"weights", "sizes", "image_size"}))
    if unknown:  # a script run alone: a key one letter off decoded at another size without a word
        raise ConfigError(f"decode: --weights-sizes: unknown key(s) {', '.join(unknown)} (known: weights, sizes, image_size)")
    source, sizes = weights_sizes.get("weights"), weights_sizes.get("sizes")
    if source == "pretrain":
        if not (isinstance(sizes, int) and not isinstance(sizes, bool) and sizes >= 8):
            raise ConfigError(f"decode: --weights-sizes: with weights pretrain, sizes is pretrain.image_size, a whole "
                              f"number, at least 8, not {sizes!r}")
        return Preprocessing.raw(sizes).to_dict()
    if source == "torchvision":
        return preprocessing_from_torchvision(torchvision_weights(str(sizes)))
    given = isinstance(sizes, dict) and sizes.get("resize_size") and sizes.get("crop_size")
    if source in ("preprocessing", "url", "path") and given:
        neutral = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
        return {**neutral, **{k: v for k, v in sizes.items() if v is not None}}
    raise ConfigError(f"decode: cannot tell the image sizes from {weights_sizes!r} (weights.source and its preprocessing)")


def load_split_tensors(split_csv: Path, prep, threads: int, splits=SPLITS, decoded: tuple[Path, Path] | None = None,
                       stream: bool = False, uncropped=()):
    """The chosen splits of a split CSV as tensors: {split: Data}, plus the class names and the CSV.

    ``decoded``: the decode rule's ``(images.npy, info.json)``, read (and checked to hold ``split_csv``
    at ``prep``'s sizes) instead of decoding the images again; without it (a script run alone) the
    images are decoded here. ``stream`` (with ``decoded``): the images stay in the file and are read
    batch by batch (:class:`finetune.store.StoredImages`), so memory does not grow with their number.
    Images are centre crops, except in the ``uncropped`` splits (with ``decoded``): there they are the
    stored squares at the resize size, for random resized crops (``augment``).
    """
    import torch

    from .tensors import Data, decode_images

    frame, classes = read_split(split_csv)
    store = None
    if decoded is not None:
        from .store import open_decoded

        store = open_decoded(*decoded, split_csv=split_csv, sizes=(prep.resize_size, prep.crop_size),
                             interpolation=prep.interpolation)
    data = {}
    for name in splits:
        if store is not None:
            crop = None if name in uncropped else prep.crop_size
            data[name] = _stored_split(store, name, crop, stream)
        else:
            part = frame[frame["split"] == name]
            images = decode_images(part["path"].tolist(), prep, threads)
            print(f"decoded {len(part)} images of {split_csv} ({name}) here: no decoded file given", flush=True)
            data[name] = Data(images, torch.tensor(part["label"].to_numpy(), dtype=torch.long))
    return data, classes, frame


def _stored_split(store, name: str, crop: int | None, stream: bool):
    """One split of a decoded file as Data: read batch by batch (``stream``) or all at once."""
    import torch

    from .store import StoredImages
    from .tensors import Data

    rows = store.rows(name)
    if stream:
        images = StoredImages(store, rows, crop)
    else:
        images = torch.from_numpy(store.read(rows, crop)).permute(0, 3, 1, 2).contiguous()
    return Data(images, torch.from_numpy(store.labels[rows]))


# --------------------------------------------------------------------------- pretrain (recipe step 1)

def channel_stats(images, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (sample) standard deviation of uint8 images (N, 3, H, W) scaled to 0..1, read
    ``chunk`` images at a time: :class:`finetune.store.ChannelStats`, as the decode job records them."""
    import torch

    from .store import ChannelStats

    stats = ChannelStats()
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.int64)
        stats.add_sums(x.numel() // x.shape[1], x.sum(dim=(0, 2, 3)).tolist(), (x * x).sum(dim=(0, 2, 3)).tolist())
    return stats.result()


def run_weights(manifest: Path | None, source_info: Path | None, arch: str | None, pretrained: bool) -> Path | dict:
    """What a train or lr_find job builds its model from: the weights manifest (``--manifest``), or for a scratch
    run with weights from pretrain the source's decoded images' record and the architecture (``--source-info``,
    ``--arch``: :func:`scratch_manifest`)."""
    if source_info is None:
        if manifest is None:
            raise ConfigError("give the weights manifest (--manifest), or for a scratch run --source-info and --arch")
        return manifest
    if pretrained or manifest is not None or not arch:
        raise ConfigError("--source-info (instead of a weights manifest) is for a scratch run: give it with --scratch "
                          "and --arch, and without --manifest")
    return scratch_manifest(source_info, arch)


def source_channel_stats(decoded: tuple[Path, Path] | None, images) -> tuple[list[float], list[float]]:
    """The source's train images' mean and std per channel: as the decode job recorded them (the scratch
    control reads the same record), or, without a decoded file (a script run alone), taken from ``images``."""
    if decoded is not None:
        stats = read_json(decoded[1]).get("channel_stats")
        if isinstance(stats, dict) and stats.get("split") == "train":
            return stats["mean"], stats["std"]
    return channel_stats(images)


def scratch_manifest(source_info: Path, arch: str) -> dict:
    """What a scratch run (the control, no pretrained weights) needs of weights from ``pretrain``, without them:
    ``arch`` and the preprocessing pretrain publishes, made from the source's decoded images' record
    (``source_info``, the decode job's info.json). So a change of pretrain's training reruns no scratch run."""
    from .images import Preprocessing

    info = read_json(source_info)
    stats = info.get("channel_stats") if isinstance(info, dict) else None
    if not isinstance(stats, dict) or stats.get("split") != "train":
        raise DataError(f"{source_info} records no mean and standard deviation of the source's train images (written "
                        f"by an earlier version): decode them again with `snakemake --forcerun {source_info}`")
    size = int(stats["crop_size"])
    prep = Preprocessing(size, size, tuple(stats["mean"]), tuple(stats["std"])).to_dict()
    return {"arch": arch, "num_classes": None, "sha256": None, "path": None, "preprocessing": prep,
            "crop_from": f"pretrain.image_size: {size} (the preprocessing pretrain publishes, from {source_info})"}


def pretrain_stage(split_csv: Path, arch: str, image_size: int, options: dict, out_weights: Path, out_info: Path,
                   out_history: Path, threads: int, resume_dir: Path | None = None, log: Callable = print,
                   decoded: tuple[Path, Path] | None = None) -> dict:
    """Train ``arch`` from scratch on the source split and publish it like downloaded weights."""

    from .models import build_architecture, check_input_size
    from .tensors import Preprocessing, start_cuda
    from .training import TrainOptions, fit, options_key, seed_everything

    imports_done()
    opts = TrainOptions.from_dict(options)
    ensure_writable(out_weights, out_info, out_history)
    seed_everything(opts.seed, opts.deterministic)
    data, classes, _ = load_split_tensors(split_csv, Preprocessing.raw(image_size), threads, splits=("train", "val"),
                                          decoded=decoded, stream=True)
    model = build_architecture(arch, len(classes))
    # Before any pass over the images (channel_stats, without a decoded file): a size the model cannot take fails at once.
    check_input_size(model, arch, image_size, f"pretrain.image_size: {image_size}", "pretrain.image_size")
    mean, std = source_channel_stats(decoded, data["train"].images)
    prep = Preprocessing(image_size, image_size, tuple(mean), tuple(std))
    pixels = decoded_identity(decoded)
    resume = _resume_file(resume_dir, options_key("pretrain", arch, image_size, options, sha256_of(split_csv),
                                                  code_digest(), *([pixels] if pixels else [])), log)
    _reopen_finished(resume, log)
    lap("inputs")
    if start_cuda(opts.device):
        lap("CUDA start")
    result = fit(model, data["train"], data["val"], prep, opts, num_classes=len(classes), threads=threads,
                 resume_path=resume, log=log)
    lap("fit")
    torch_save(result.best_state, out_weights)
    with atomic_path(out_history) as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    kept = next(row for row in result.history if row["epoch"] == result.best_epoch)
    info = {
        "arch": arch, "classes": classes, "preprocessing": prep.to_dict(),
        # the kept epoch's figures (not the best accuracy of any epoch: with metric val_loss it may be another's)
        "best_epoch": result.best_epoch, **{f"best_{m}": kept[m] for m in dict.fromkeys(("val_accuracy", opts.metric))},
        "train_seconds": round(result.train_seconds, 2), "diverged": result.diverged,
        "split": str(split_csv), "split_sha256": sha256_of(split_csv),
        "options": options, **library_versions(),
    }
    write_json(out_info, info)
    _finish_resume(resume)
    lap("outputs")
    return info


# --------------------------------------------------------------------------- weights (acquire)

def weights_stage(cfg: dict, out_weights: Path, out_manifest: Path, pretrained_info: Path | None = None,
                  pretrained_weights: Path | None = None) -> dict:
    """Fetch or copy weights from the configured source; write them with their manifest.

    The new file is fetched, verified (hash) and loaded into the architecture beside
    ``out_weights``, and replaces it only when all of that succeeded: a failed or refused download,
    or weights of another architecture, leave an earlier ``out_weights`` and its manifest as they were.
    Weights from ``pretrain`` are copied as pretrain saved them, without importing torch (that stage built
    the architecture with these classes).
    """
    from .images import Preprocessing

    source = cfg["source"]
    timeout = float(cfg.get("timeout_s", DEFAULT_TIMEOUT_S))
    if source not in WEIGHTS_KEYS:
        raise ConfigError(f"unknown weights.source {source!r}: use {', '.join(WEIGHTS_KEYS)}")
    missing = [f"weights.{key}" for key in (*WEIGHTS_REQUIRED.get(source, ()), "arch") if not cfg.get(key)]
    if source in WEIGHTS_REQUIRED and missing:
        raise ConfigError(f"weights.source is {source}: set {', '.join(missing)}")

    if source == "torchvision" and cfg.get("arch"):  # checked before the download
        arch = torchvision_arch(torchvision_weights(cfg["torchvision"]))
        if cfg["arch"] != arch:
            raise ConfigError(f"weights.arch is {cfg['arch']!r} but {cfg['torchvision']} belongs to {arch!r}: "
                              "leave weights.arch out (torchvision weights name their architecture) or fix it")
    with atomic_path(out_weights) as staged:
        if source == "torchvision":
            meta = fetch_torchvision(cfg["torchvision"], staged, mirror=cfg.get("mirror"), sha256=cfg.get("sha256"),
                                     timeout_s=timeout)
            arch, classes, prep, digest, origin = meta["arch"], meta["classes"], meta["preprocessing"], meta["sha256"], meta["source"]
            where = origin.get("cache", origin["url"])  # the file read: torch.hub's cached copy, where taken from it
        elif source in ("url", "path"):
            if source == "url":
                digest = download(cfg["url"], staged, sha256=cfg["sha256"], timeout_s=timeout)
                origin, where = {"kind": "url", "url": cfg["url"]}, cfg["url"]
            else:
                digest = copy_local(cfg["path"], staged, sha256=cfg.get("sha256"))
                origin, where = {"kind": "path", "path": str(cfg["path"])}, str(cfg["path"])
            arch, prep = cfg["arch"], cfg["preprocessing"]
            classes = list(cfg.get("classes") or [])
        else:  # pretrain
            info = read_json(pretrained_info)
            other = not_a_torch_file(pretrained_weights)
            if other:  # copied as it is (no torch here): run alone, a CSV was published as the weights
                raise WeightsError(f"{pretrained_weights} is not a PyTorch file ({other}): give the weights the pretrain "
                                   "rule saved (resources/pretrain/model.pth)")
            if cfg.get("arch", info["arch"]) != info["arch"]:
                raise WeightsError(f"weights.arch is {cfg['arch']!r}, but {pretrained_weights} holds a {info['arch']} "
                                   f"({pretrained_info})")
            digest = copy_local(str(pretrained_weights), staged)
            arch, classes, prep = info["arch"], info["classes"], info["preprocessing"]
            origin = {"kind": "pretrain", "path": str(pretrained_weights), "split": info["split"],
                      "split_sha256": info["split_sha256"], "best_val_accuracy": info["best_val_accuracy"]}
            where = str(pretrained_weights)

        # Every filter and size the jobs will use, written out (and checked) in the manifest.
        prep = Preprocessing.from_dict(prep).to_dict()
        if source == "pretrain":
            # pretrain_stage saved this architecture's state with these classes: loading it again would check
            # nothing new and import torch, the largest part of this job's time (~10 s on the GPU machine).
            num_classes = len(classes)
        else:
            named_by = (f"weights.torchvision {cfg['torchvision']} (its categories, which a file of another head, a "
                        "mirror's own fine-tuned weights, does not match: use weights.source url or path with "
                        "weights.classes for such a file)") if source == "torchvision" else "weights.classes"
            num_classes = _checked_num_classes(staged, arch, classes, where, named_by)
    return write_manifest(out_manifest, weights_file=out_weights, arch=arch, num_classes=num_classes,
                          classes=classes, preprocessing=prep, sha256=digest, source=origin)


def _checked_num_classes(weights_file: Path, arch: str, classes: list, where: str,
                         named_by: str = "weights.classes") -> int:
    """The output layer's size of the state in ``weights_file``, loaded once into ``arch`` so that a mismatched
    file fails here, not in every experiment. ``named_by``: what lists ``classes``, for the message."""
    from .models import build_architecture, load_source_state

    state = load_state_dict(weights_file, origin=where)
    num_classes = infer_num_classes(arch, state, where)
    if classes and len(classes) != num_classes:
        raise WeightsError(f"{where}: the output layer has {num_classes} classes but {named_by} names {len(classes)}")
    load_source_state(build_architecture(arch, num_classes), state, where, arch=arch)
    return num_classes


# --------------------------------------------------------------------------- train

def _resume_file(resume_dir: Path | None, key: str, log: Callable = print) -> Path | None:
    """The run's resume state in ``resume_dir``, whose folder is checked writable now, not after the first epoch.
    The states of other settings (or code) stopped there stay until deleted: the log names them and their size."""
    if resume_dir is None:
        return None
    path = Path(resume_dir) / f"{key}.pt"
    ensure_writable(path)
    others = sorted(p for p in Path(resume_dir).glob("*.pt")
                    if p not in (path, finished_file(path)) and not p.name.startswith("."))
    if others:
        sizes = [p.stat().st_size for p in others if p.exists()]
        log(f"note: {len(others)} resume state(s) of other settings or code of this run are kept in {resume_dir} "
            f"({sum(sizes) / 1e6:,.0f} MB: {', '.join(p.name for p in others[:3])}{' ...' if len(others) > 3 else ''}); "
            "a run with those settings would continue from its own, but only under the code that saved it (a state "
            "saved before the code changed, an upgrade say, is never resumed): delete them if you will not go back")
    return path


def finished_file(resume: Path) -> Path:
    """Where a run's resume state goes once its outputs are written: ``<key>.done.pt``, beside it."""
    return resume.with_name(f"{resume.stem}{FINISHED_SUFFIX}")


FINISHED_SUFFIX = ".done.pt"  # removed when the run of Snakemake succeeds (onsuccess: common.smk) if outputs are there


def remove_finished_states(resume_folder: Path | None = None, pretrain_output: str | None = None,
                           train_output: str | None = None) -> list[Path]:
    """A train or pretrain job keeps its finished resume state (``<key>.done.pt``, :func:`finished_file`) after it
    writes its outputs, for a retry of a job Snakemake failed after it had ended (README "Walltime, failures and
    resuming"). Once a run of Snakemake succeeds (the workflow's onsuccess), those whose outputs are there are
    removed, with the folders they leave empty; a state whose outputs are missing stays, to write them again from.
    ``pretrain_output`` and ``train_output``: the rules' outputs (the workflow's where not given: a module's
    `prefix:` moves them); ``resume_folder`` (the rules' resume_dir, holding ``pretrain/`` and
    ``<experiment>/seed<seed>/``): where not given, ``resume/`` beside pretrain's output folder. Returns the states
    removed."""
    pretrain_output = pretrain_output or "resources/pretrain/model.pth"
    train_output = train_output or "results/{experiment}/seed{seed}/model.pt"
    resume_folder = Path(resume_folder or Path(pretrain_output).parent.parent / "resume")
    removed = []
    for state in sorted(resume_folder.glob(f"**/*{FINISHED_SUFFIX}")):
        run = state.parent.relative_to(resume_folder)
        output = Path(pretrain_output if run == Path("pretrain") else
                      train_output.format(experiment=run.parent.name, seed=run.name[len("seed"):]))
        if not output.exists():
            continue
        state.unlink(missing_ok=True)
        removed.append(state)
        for folder in (state.parent, *state.parent.parents):
            if folder == resume_folder or resume_folder not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:
                break
    return removed


def _finish_resume(resume: Path | None) -> None:
    """The outputs are written: the resume state (by now the finished state fit left) is renamed the run's
    finished state. It is kept until a run of Snakemake succeeds (common.smk's onsuccess removes it where the
    outputs are there): Snakemake may still remove the outputs of a job that has ended (Slurm marks a job TIMEOUT
    that ends in the last seconds of its walltime), or mark them incomplete (Snakemake interrupted while the job
    ran on), and its retry then ends at once from the finished state instead of training again from epoch 1."""
    if resume is not None and resume.exists():
        os.replace(resume, finished_file(resume))


def _reopen_finished(resume: Path | None, log: Callable) -> None:
    """A finished state of this very run (same options, inputs and code: the key) is resumed from: its outputs
    were removed after it ended. Rank 0 alone renames it (the others wait: train_stage)."""
    if resume is None:
        return
    try:
        os.replace(finished_file(resume), resume)
    except FileNotFoundError:
        return
    log(f"{resume.name}: this run had ended, and the run of Snakemake that ran it did not succeed (its outputs may "
        "have been removed after the job ended: Slurm marks a job TIMEOUT that ends in the last seconds of its "
        f"walltime); its outputs are written again from its finished state (delete {finished_file(resume)} to train "
        "it again)")


def _all_here(ranks) -> None:
    """Wait until every training process gets here (several processes; nothing for one)."""
    if ranks.active:
        import torch

        from .distributed import all_sum

        all_sum(torch.zeros(1), ranks, control=True)


def code_digest() -> str:
    """The source of the finetune package (every module, whichever a job loads): part of a resume state's key,
    so that a run stopped (or finished) under other code starts afresh rather than continue what that code did."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(f"{file.name}\0".encode() + file.read_bytes())
    return digest.hexdigest()[:16]


def train_stage(split_csv: Path, manifest_path: Path | dict, options: dict, out_checkpoint: Path, out_history: Path,
                out_info: Path, threads: int, pretrained: bool = True, image_size: int | None = None,
                resume_dir: Path | None = None, feature_cache_dir: Path | None = None, log: Callable = print,
                decoded: tuple[Path, Path] | None = None, lr_from: Path | None = None, ranks=None) -> dict:
    """Steps 2-4 of the recipe. ``pretrained=False`` is the control: the same architecture and
    preprocessing as the weights, randomly initialised. With ``lr: auto`` in ``options``, ``lr_from``
    (rule lr_find's suggestion.json) gives the learning rate. ``ranks``: this process's place among
    several training processes (:func:`finetune.distributed.start`); only rank 0 writes the outputs."""
    import torch

    from .distributed import SINGLE
    from .tensors import start_cuda
    from .training import fit, options_key

    imports_done()
    ranks = ranks or SINGLE

    ensure_writable(out_checkpoint, out_history, out_info)
    loop_options, lr_used = resolve_lr(options, lr_from)
    if lr_from is not None and ranks.main:  # the epochs' lines give the schedule's lr, which starts from this one
        log(f"lr {lr_used:.4g} (lr: auto): the suggestion of the learning-rate finder, {lr_from}")
    opts, arch, prep, data, classes, model, weights_sha = _training_inputs(
        split_csv, manifest_path, loop_options, threads, pretrained, image_size, decoded)
    split_sha = sha256_of(split_csv)
    # The pixels are part of the run: a decode run again since the state was saved starts the run afresh. So is
    # the preprocessing: a scratch run (no weights sha256) normalised with another mean and std starts afresh too.
    pixels = decoded_identity(decoded)
    key = options_key(arch, loop_options, image_size, split_sha, weights_sha, code_digest(), prep.to_dict(),
                      *([pixels] if pixels else []))
    feature_cache = _feature_cache_file(feature_cache_dir, weights_sha, split_sha, prep, decoded)
    resume = _resume_file(resume_dir, key, log)
    if ranks.main:
        _reopen_finished(resume, log)
    _all_here(ranks)  # no rank looks for the resume state before rank 0 has reopened a finished one
    lap("inputs")
    if start_cuda(loop_options.get("device", "auto")):
        lap("CUDA start")
    fit_started_at = time.time()
    result = fit(model, data["train"], data["val"], prep, opts, num_classes=len(classes), threads=threads,
                 resume_path=resume, feature_cache=feature_cache, log=log if ranks.main else _quiet, ranks=ranks)
    fit_window = [round(fit_started_at, 3), round(time.time(), 3)]
    lap("fit")
    _all_here(ranks)  # every rank has read the resume state before rank 0 makes it the finished one
    if not ranks.main:
        return {}
    if result.compile_seconds is not None:
        from .options import key_name
        log(f"torch.compile ({key_name('compile')} {opts.compile}): the first training step took {result.compile_seconds:.1f} s, "
            "compilation included (counted in train_seconds)")
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": len(classes), "classes": classes,
        "preprocessing": prep.to_dict(), "weights_sha256": weights_sha, "state_dict": result.best_state,
        "ema_decay": opts.ema_decay,  # not None: state_dict holds the moving average of the weights
    }
    torch_save(checkpoint, out_checkpoint)
    with atomic_path(out_history) as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    info = {
        "arch": arch, "strategy": opts.strategy, "pretrained": pretrained, "classes": classes,
        "best_epoch": result.best_epoch, f"best_{opts.metric}": result.best_metric,
        "epochs_run": len(result.history), "stopped_early": result.stopped_early, "diverged": result.diverged,
        "trainable_params": result.trainable_params, "total_params": result.total_params,
        "train_seconds": round(result.train_seconds, 2), "fit_window_unix_s": fit_window,
        "epochs_window_unix_s": [round(t, 3) for t in result.epochs_window_unix_s],
        "cached_features": result.used_cached_features, "ema_decay": opts.ema_decay,
        "compile_seconds": None if result.compile_seconds is None else round(result.compile_seconds, 2),
        "n_train": len(data["train"].labels), "n_val": len(data["val"].labels),
        "seed": opts.seed, "threads": threads, "processes": ranks.world, "device": str(torch.device("cuda" if torch.cuda.is_available() and opts.device != "cpu" else "cpu")),
        "weights_sha256": weights_sha, "split_sha256": split_sha, "preprocessing": prep.to_dict(),
        "options": options, "lr_used": lr_used, "lr_from": None if lr_from is None else str(lr_from),
        "finetune": __version__, "python": platform.python_version(), **library_versions(),
    }
    write_json(out_info, info)
    _finish_resume(resume)
    lap("outputs")
    return info


def decoded_identity(decoded: tuple[Path, Path] | None) -> list | None:
    """The decoded images file as written: its record's sha256, its size and modification time; None without one.

    The split file alone does not say what the pixels are: a decode run again gives them anew (an image edited in
    place and ``--forcerun split``, or a new version of the decoder), and then neither cached features nor a
    resume state of the old pixels may be used. A copy that keeps modification times (``cp -a``, rsync) keeps it."""
    if decoded is None:
        return None
    images, record = decoded
    written = os.stat(images)
    return [sha256_of(record), written.st_size, written.st_mtime_ns]


def _feature_cache_file(feature_cache_dir: Path | None, weights_sha: str | None, split_sha: str, prep,
                        decoded: tuple[Path, Path] | None) -> Path | None:
    """Where the backbone features of a split's images under some weights are kept for other jobs (the seeds of
    a feature_extract run, lr_find), or None: nothing is kept without pretrained weights or a decoded file.
    Keyed by the weights, the split file, the preprocessing, the decoded file as written and the package's code
    (:func:`code_digest`: features computed by other code, before an upgrade say, are not read)."""
    from .training import options_key

    if feature_cache_dir is None or weights_sha is None or decoded is None:
        return None
    key = options_key(weights_sha, split_sha, prep.to_dict(), decoded_identity(decoded), code_digest())
    return Path(feature_cache_dir) / f"{key}.pt"


def _quiet(message: str) -> None:
    """The log of ranks other than 0: their lines would repeat rank 0's."""


def _training_inputs(split_csv: Path, manifest_path: Path | dict, options: dict, threads: int, pretrained: bool,
                     image_size: int | None, decoded: tuple[Path, Path] | None):
    """What train and lr_find set up alike: (opts, arch, prep, train/val data, classes, new model, weights sha256).
    ``manifest_path``: the weights manifest, or (a scratch run) what :func:`scratch_manifest` gives in its stead."""
    from .models import build_target_model, check_input_size
    from .tensors import Preprocessing
    from .training import TrainOptions, seed_everything

    opts = TrainOptions.from_dict(options)
    seed_everything(opts.seed, opts.deterministic)
    if isinstance(manifest_path, dict):
        if pretrained:
            raise ConfigError("a run with pretrained weights needs the weights manifest (--manifest)")
        manifest, weights_crop = manifest_path, manifest_path["crop_from"]
    else:
        manifest = read_manifest(manifest_path, verify_file=pretrained)
        weights_crop = f"the crop size of the weights' preprocessing in {manifest_path}"
    if pretrained:
        source_state, source_classes, weights_sha = load_state_dict(manifest["path"]), manifest["num_classes"], manifest["sha256"]
    else:
        source_state, source_classes, weights_sha = None, None, None
    prep = Preprocessing.from_dict(manifest["preprocessing"], image_size)
    # With augment, training images are the stored squares: random resized crops draw from the resize size.
    data, classes, _ = load_split_tensors(split_csv, prep, threads, splits=("train", "val"), decoded=decoded, stream=True,
                                          uncropped=("train",) if opts.augment else ())
    model = build_target_model(manifest["arch"], len(classes), source_state, source_classes, origin=manifest["path"])
    setting = f"image_size: {image_size}" if image_size else weights_crop
    check_input_size(model, manifest["arch"], prep.crop_size, setting, "image_size (train's or the experiment's)")
    return opts, manifest["arch"], prep, data, classes, model, weights_sha


def resolve_lr(options: dict, lr_from: Path | None) -> tuple[dict, float]:
    """(the loop's options with a numeric lr, that lr): ``lr: auto`` takes lr_find's suggestion from ``lr_from``."""
    if options.get("lr") != "auto":
        if lr_from is not None:
            raise ConfigError(f"--lr-from {lr_from} is given, but the options' lr is {options.get('lr')!r}, not auto")
        return options, options.get("lr")
    if lr_from is None:
        from .options import key_name
        raise ConfigError(f"{key_name('lr')} is auto: give lr_find's suggestion with --lr-from (the workflow does)")
    suggestion = read_json(lr_from)
    if not isinstance(suggestion, dict) or not isinstance(suggestion.get("lr"), (int, float)) or suggestion["lr"] <= 0:
        raise ConfigError(f"{lr_from} holds no positive 'lr' (is it lr_find's suggestion.json?)")
    return {**options, "lr": suggestion["lr"]}, suggestion["lr"]


def lr_find_stage(split_csv: Path, manifest_path: Path | dict, options: dict, out_csv: Path, out_png: Path, out_json: Path,
                  threads: int, pretrained: bool = True, image_size: int | None = None,
                  feature_cache_dir: Path | None = None, decoded: tuple[Path, Path] | None = None,
                  range_test: dict | None = None, log: Callable = print) -> dict:
    """The learning-rate range test of one experiment run (rule lr_find): the curve (CSV, PNG) and suggested lr."""
    from .lrfind import DEFAULT_RANGE, find_lr, range_test_problems
    from .plots import lr_find_plot

    ensure_writable(out_csv, out_png, out_json)
    range_test = dict(range_test or {})
    unknown = sorted(set(range_test) - set(DEFAULT_RANGE))
    if unknown:
        raise ConfigError(f"lr_find: unknown range-test setting(s) {', '.join(unknown)} (known: {', '.join(sorted(DEFAULT_RANGE))}"
                          f"{'; lr_find.seed is the run options seed' if 'seed' in unknown else ''})")
    wrong = range_test_problems(range_test)
    if wrong:
        raise ConfigError(f"lr_find: {'; '.join(wrong)}")
    # lr auto (or any lr): the finder sets every step's lr itself, from min_lr up.
    opts, arch, prep, data, classes, model, weights_sha = _training_inputs(
        split_csv, manifest_path, {**options, "lr": range_test.get("min_lr", DEFAULT_RANGE["min_lr"])}, threads, pretrained, image_size, decoded)
    feature_cache = _feature_cache_file(feature_cache_dir, weights_sha, sha256_of(split_csv), prep, decoded)
    curve = find_lr(model, data["train"], data["val"], prep, opts, num_classes=len(classes), feature_cache=feature_cache,
                    log=log, **range_test)
    with atomic_path(out_csv) as tmp:
        pd.DataFrame(curve.rows()).to_csv(tmp, index=False)
    lr_find_plot(curve.lr, curve.loss, curve.smoothed, curve.suggestion, curve.method, out_png)
    suggestion = {"lr": curve.suggestion, "method": curve.method, "steps": len(curve.loss), "diverged": curve.diverged,
                  "lr_range": [curve.lr[0], curve.lr[-1]], "options": options, "range_test": range_test,
                  "arch": arch, "split_sha256": sha256_of(split_csv), "weights_sha256": weights_sha,
                  "finetune": __version__}
    write_json(out_json, suggestion)
    return suggestion


def load_checkpoint(path: Path):
    """Rebuild the trained model from a train checkpoint: (model in eval mode, checkpoint dict)."""
    import torch

    from .models import build_architecture

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        other = not_a_torch_file(path)
        if other:  # given another file (a model.onnx, a JSON), not one cut short: nothing to train again
            raise WeightsError(f"{path} is not a checkpoint the train job writes: {other}; give the run's model.pt") from exc
        raise WeightsError(f"cannot read checkpoint {path}: {exc}. Cut short or damaged? The train job writes it "
                           f"again (training the run again): `snakemake --forcerun {path}`") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not a checkpoint written by the train rule")
    model = _model_from_state(build_architecture, checkpoint["arch"], checkpoint["num_classes"], checkpoint["state_dict"])
    return model.eval(), checkpoint


# Building on the meta device skips initialising the weights a state dict replaces, but there torch's init
# functions run through torch._refs, which imports torch._dynamo: 2.5 s on 2 CPU cores in a job that has not
# loaded it otherwise (evaluate), where initialising costs about 0.03 s per million parameters (resnet18: 0.3 s).
META_BUILD_MIN_PARAMETERS = 80_000_000


def _meta_build_pays(state_dict: dict) -> bool:
    """Whether building on the meta device saves time: dynamo is loaded already, or the model is large."""
    if "torch._dynamo" in sys.modules:
        return True
    return sum(t.numel() for t in state_dict.values() if hasattr(t, "numel")) >= META_BUILD_MIN_PARAMETERS


def _model_from_state(build: Callable, arch: str, num_classes: int, state_dict: dict):
    """``build(arch, num_classes)`` holding ``state_dict``'s tensors. Where that saves time
    (:func:`_meta_build_pays`), without first initialising weights the state dict replaces: built on the meta
    device and given the tensors themselves (``assign``). An architecture that cannot be built so, or that keeps
    a tensor outside its state dict (a non-persistent buffer), is built and initialised as usual and the state
    dict copied in."""
    import torch

    model = None
    if _meta_build_pays(state_dict):
        try:
            with torch.device("meta"):
                model = build(arch, num_classes)
        except Exception:  # a builder that computes on its tensors; the usual way below says what is wrong, if anything
            model = None
    if model is not None:
        model.load_state_dict(state_dict, assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model
    model = build(arch, num_classes)
    model.load_state_dict(state_dict)
    return model


# --------------------------------------------------------------------------- evaluate

def evaluate_stage(checkpoint_path: Path, split_csv: Path, out_metrics: Path, out_confusion: Path,
                   out_predictions: Path, threads: int, batch_size: int = 256, device: str = "cpu", top_k: int = 2,
                   calibration_bins: int = 15, history: Path | None = None, plots: dict | None = None,
                   out_html: Path | None = None, title: str | None = None,
                   decoded: tuple[Path, Path] | None = None, onnx_model: Path | None = None, tta: str = "none",
                   split_report: Path | None = None, train_info: Path | None = None) -> dict:
    """Test-set metrics of one run, and (optionally) its plots and an HTML page of its tables.

    ``tta``: ``none``, or ``hflip``: the logits are the mean of the model's on each image and on its
    mirror image (:class:`finetune.models.HflipAverage`); metrics.json records it as ``tta``.

    ``plots``: any of ``{"confusion": png, "reliability": png, "learning_curves": png}``; the learning
    curves need ``history`` (the run's history.csv), and mark the epoch kept from ``train_info`` (its
    train_info.json; without it, the best by validation accuracy). ``onnx_model``: also score the exported model
    on the same images with onnxruntime (the report's ``onnx`` section). ``split_report``: the split's
    report, whose near duplicates give ``near_duplicates`` (:func:`without_near_duplicates`) and
    test_predictions.csv's ``near_duplicate_of``.
    """
    import torch

    from .metrics import classification_report
    from .models import HflipAverage
    from .tensors import Preprocessing, batched_forward, choose_device, start_cuda

    imports_done()
    if tta not in TTA_MODES:
        raise ConfigError(f"evaluate.tta must be one of {TTA_MODES}, not {tta!r}")
    model, checkpoint = load_checkpoint(checkpoint_path)
    frame, classes = read_split(split_csv)
    if classes != checkpoint["classes"]:
        raise ConfigError(f"{checkpoint_path} was trained on classes {checkpoint['classes']}, {split_csv} has {classes}")
    # the optional inputs read before any image is scored or file written: one that is not what the workflow writes
    # there is named now, not in a traceback after the first outputs were written
    kept = read_json_object(train_info, "the run's train_info.json") if train_info else {}
    history = history_frame(history) if history is not None and (plots or {}).get("learning_curves") else history
    near = read_json_object(split_report, "the split's report (split.report.json)") if split_report else None
    prep = Preprocessing.from_dict(checkpoint["preprocessing"])
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    started = time.perf_counter()
    images = load_split_tensors(split_csv, prep, threads, splits=("test",), decoded=decoded, stream=True)[0]["test"].images
    lap("inputs")
    # Channels-last: ResNet18 inference on these CPUs ran ~1.7x faster in NHWC (oneDNN); see batched_forward.
    on = choose_device(device, key="evaluate.device")
    if start_cuda(on.type):
        lap("CUDA start")
    model = model.to(on, memory_format=torch.channels_last)

    def forward(with_tta: bool):
        wrapped = HflipAverage(model) if with_tta else model
        return batched_forward(wrapped, images, prep, on, batch_size=batch_size, channels_last=True).numpy()

    logits = forward(tta == "hflip")
    lap("forward")
    labels = test["label"].to_numpy()
    report = classification_report(labels, logits, classes, top_k=top_k, n_bins=calibration_bins)
    report["classes"], report["tta"] = classes, tta
    copies = _test_copies(near)
    report["near_duplicates"] = without_near_duplicates(test["path"], labels, logits.argmax(1), copies)
    if onnx_model is not None:
        # Compared with PyTorch doing what the exported model does (its metadata says whether it flips).
        onnx_tta = _onnx_tta(onnx_model)
        reference = logits if onnx_tta == (tta == "hflip") else forward(onnx_tta)
        report["onnx"] = score_onnx(onnx_model, images, prep, reference, labels, report["top_k"], batch_size, threads)
        report["onnx"]["tta"] = "hflip" if onnx_tta else "none"
        lap("ONNX scoring")
    report["eval_seconds"] = round(time.perf_counter() - started, 2)
    _write_test_tables(report["confusion_matrix"], logits, test, classes, out_confusion, out_predictions, copies or {})
    write_evaluation_figures(report, plots or {}, history=history, out_html=out_html,
                             title=title or Path(checkpoint_path).parent.as_posix(), best_epoch=kept.get("best_epoch"),
                             metric=kept.get("options", {}).get("metric", "val_accuracy"))
    write_json(out_metrics, report)
    lap("outputs")
    return report


def _test_copies(split_report: dict | None) -> dict[str, dict] | None:
    """The test images with a near copy in train or val, from the split's report
    (:func:`finetune.nearduplicates.copies_learnt_from`); None where they were not looked for."""
    if split_report is None:
        return None
    from .nearduplicates import copies_learnt_from

    return copies_learnt_from(split_report.get("near_duplicates"), "test")


def history_frame(path: Path) -> pd.DataFrame:
    """A run's history.csv, one row per epoch; one without (empty, another table) named for what it is."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} does not read as a CSV table ({type(exc).__name__}: {exc}): is it the run's "
                        "history.csv?") from exc
    if frame.empty or "epoch" not in frame.columns:
        raise DataError(f"{path} has no epochs (columns: {', '.join(map(str, frame.columns)) or 'none'}, "
                        f"{len(frame)} rows): is it the run's history.csv, written by its train job?")
    return frame


def without_near_duplicates(paths: pd.Series, labels, predicted, copies: dict[str, dict] | None) -> dict:
    """metrics.json's ``near_duplicates``: how many test images have a near copy in a split the model learnt
    from (``copies``), and the top-1 accuracy on the others (null where every test image has one, or where
    near duplicates were not looked for: ``checked`` false)."""
    if copies is None:
        return {"checked": False, "test_images_with_copy": None, "n_test_without": None, "accuracy_without": None}
    kept = ~paths.isin(copies.keys()).to_numpy()
    correct = (predicted == labels)[kept]
    return {"checked": True, "test_images_with_copy": int((~kept).sum()), "n_test_without": int(kept.sum()),
            "accuracy_without": float(correct.mean()) if kept.any() else None}


def _write_test_tables(confusion, logits, test: pd.DataFrame, classes: list[str], out_confusion: Path,
                       out_predictions: Path, copies: dict[str, dict]) -> None:
    """confusion_matrix.csv (rows true, columns predicted) and test_predictions.csv (each image's top class,
    its probability, and its nearest near copy in train or val, if any)."""
    import numpy as np

    from .metrics import softmax

    cm = pd.DataFrame(confusion, index=classes, columns=classes)
    cm.index.name = "true\\predicted"
    with atomic_path(out_confusion) as tmp:
        cm.to_csv(tmp)
    probs = softmax(logits.astype(np.float64))
    predictions = pd.DataFrame({
        "path": test["path"], "label": test["class_name"],
        "predicted": [classes[i] for i in probs.argmax(1)], "probability": probs.max(1).round(6),
        "near_duplicate_of": [copies[p]["path"] if p in copies else "" for p in test["path"]],
    })
    with atomic_path(out_predictions) as tmp:
        predictions.to_csv(tmp, index=False)


def _onnx_tta(onnx_model: Path) -> bool:
    """Whether an exported model averages over the horizontal flip itself (its metadata's ``tta``)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf for a file that is no ONNX model) are Exceptions
        reason = " ".join(str(exc).split())[:300]
        raise DataError(f"{onnx_model}: onnxruntime cannot load it as an ONNX model ({reason}): give the run's "
                        "model.onnx, as rule export_onnx writes it") from exc
    return session.get_modelmeta().custom_metadata_map.get("tta") == "hflip"


def score_onnx(onnx_model: Path, images, prep, torch_logits, labels, top_k: int | None, batch_size: int, threads: int) -> dict:
    """The exported model's test metrics with onnxruntime (CPU) on the images PyTorch was scored on,
    and how far it is from PyTorch's: top-1 agreement and the largest logit difference."""
    import numpy as np
    import onnxruntime as ort

    from .images import normalize
    from .metrics import top_k_accuracy

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    session = ort.InferenceSession(str(onnx_model), options, providers=["CPUExecutionProvider"])  # loaded: _onnx_tta
    name = session.get_inputs()[0].name
    batches = (images[start : start + batch_size].permute(0, 2, 3, 1).numpy() for start in range(0, len(images), batch_size))
    logits = np.concatenate([session.run(None, {name: normalize(x, prep.mean, prep.std)})[0] for x in batches])
    return {
        "model": str(onnx_model), "accuracy": float((logits.argmax(1) == labels).mean()),
        **({f"top{top_k}_accuracy": top_k_accuracy(labels, logits, top_k)} if top_k else {}),
        "top1_agreement_with_pytorch": float((logits.argmax(1) == torch_logits.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(logits - torch_logits).max()) if len(logits) else 0.0,
    }


def write_evaluation_figures(report: dict, plots: dict, history: Path | None = None, out_html: Path | None = None,
                             title: str = "", best_epoch: int | None = None, metric: str = "val_accuracy") -> None:
    """The plots and the HTML tables of one evaluation (a ``metrics.json`` dict); ``best_epoch``: the epoch
    whose weights training kept by ``metric``, marked on the learning curves."""
    from . import plots as plotting
    from .tables import metrics_tables, page

    unknown = set(plots) - {"confusion", "reliability", "learning_curves"}
    if unknown:
        raise ValueError(f"unknown plot(s): {', '.join(sorted(unknown))}")
    if plots.get("confusion"):
        plotting.confusion_matrix_plot(report["confusion_matrix"], report["classes"], plots["confusion"],
                                       title=f"{title}: confusion matrix")
    if plots.get("reliability"):
        plotting.reliability_plot(report["calibration_bins"], report["ece"], plots["reliability"],
                                  title=f"{title}: reliability")
    if plots.get("learning_curves"):
        if history is None:
            raise ValueError("the learning curves plot needs the run's history.csv")
        plotting.learning_curves_plot(history if isinstance(history, pd.DataFrame) else history_frame(history),
                                      plots["learning_curves"], title=f"{title}: learning curves",
                                      best_epoch=best_epoch, metric=metric)
    if out_html is not None:
        write_text(out_html, page(f"{title}: test-set metrics", metrics_tables(report)))


# --------------------------------------------------------------------------- export

def parity_images(split_csv: Path, prep, threads: int, decoded: tuple[Path, Path] | None = None):
    """uint8 (n, H, W, 3): at most PARITY_SAMPLE test images, spread evenly over the test split
    (never a second full pass over a large test set)."""
    import numpy as np

    from .tensors import decode_images

    frame, _ = read_split(split_csv)
    test_rows = np.flatnonzero((frame["split"] == "test").to_numpy())
    picked = test_rows[np.unique(np.linspace(0, len(test_rows) - 1, min(len(test_rows), PARITY_SAMPLE)).round().astype(int))]
    if decoded is None:
        print(f"decoded {len(picked)} images of {split_csv} (test) here: no decoded file given", flush=True)
        return decode_images(frame["path"].iloc[picked].tolist(), prep, threads).permute(0, 2, 3, 1).numpy()
    from .store import open_decoded

    store = open_decoded(*decoded, split_csv=split_csv, sizes=(prep.resize_size, prep.crop_size),
                         interpolation=prep.interpolation)
    return store.read(store.rows("test")[np.searchsorted(test_rows, picked)], prep.crop_size)


def export_stage(checkpoint_path: Path, split_csv: Path, out_onnx: Path, out_parity: Path, tolerance: float,
                 parity_batch: int, threads: int, dynamo: bool = True, opset: int = 18, log: Callable = print,
                 decoded: tuple[Path, Path] | None = None, tta: bool = False, rtol: float | None = None) -> dict:
    """``tta``: the exported graph itself averages the logits over the image and its mirror image
    (:class:`finetune.models.HflipAverage`), its metadata says ``tta: hflip``, and parity is checked
    against the same wrapped model in PyTorch."""
    import numpy as np

    from .export import DEFAULT_RTOL, ParityError, export_onnx, parity_check
    from .images import normalize
    from .models import HflipAverage
    from .tensors import Preprocessing

    imports_done()
    model, checkpoint = load_checkpoint(checkpoint_path)
    if tta:
        # One call for the torchscript exporter, which shared the weights of two calls through Identity nodes (the
        # int8 quantizer refused them); dynamo's graph holds them once either way, and keeps its batch axis dynamic
        # only with two (one call's split of the doubled batch fixed it at export time).
        model = HflipAverage(model, one_call=not dynamo).eval()
    prep = Preprocessing.from_dict(checkpoint["preprocessing"])
    pixels = parity_images(split_csv, prep, threads, decoded)
    inputs = normalize(pixels, prep.mean, prep.std)
    if parity_batch > len(inputs):
        log(f"note: export.parity_batch {parity_batch} is more than the {len(inputs)} test images of the parity check: "
            f"checked at batch {max(2, len(inputs))}")
    lap("inputs")
    # The model is exported to a temporary file beside ``out_onnx`` and checked there; it is moved
    # into place only when parity passed. A failed check leaves no model.onnx, and an earlier one
    # (from a previous good run) as it was.
    with atomic_path(out_onnx) as staged:
        export_onnx(model, checkpoint, staged, opset=opset, dynamo=dynamo, tta=tta)
        export_seconds = lap("export")
        rtol = DEFAULT_RTOL if rtol is None else rtol
        report = parity_check(model, staged, inputs.astype(np.float32), parity_batch, tolerance, rtol)
        lap("parity")
        report["export_seconds"] = round(export_seconds, 2)
        report["exporter"] = "dynamo" if dynamo else "torchscript"
        report["opset"] = opset
        report["tta"] = "hflip" if tta else "none"
        log(json.dumps(report, indent=2))
        if not report["passed"]:
            kept = f"{out_onnx} was not written" + (", the earlier one is unchanged" if Path(out_onnx).exists() else
                                                    " (an earlier one, if any, is gone: Snakemake removes a job's "
                                                    "outputs when it starts)")
            raise ParityError(
                f"ONNX parity failed for {out_onnx}: max |onnxruntime - PyTorch| = {report['max_abs_diff']:.3g} "
                f"> tolerance {tolerance:g} + rtol {rtol:g} x the image's largest |logit| (export.tolerance, "
                f"export.rtol; figures above); {kept}"
            )
    write_json(out_parity, report)
    _remove_made_from_the_earlier_model(Path(out_onnx), log)
    lap("outputs")
    return report


def _remove_made_from_the_earlier_model(out_onnx: Path, log: Callable) -> None:
    """The int8 model and its report beside a model.onnx just written (rule quantize_onnx's outputs) were made from
    the earlier model.onnx: with export.quantize turned off since, nothing would make them again, and a folder
    shipped as it is would hold two models that disagree. Removed; quantize_onnx writes them anew where it runs."""
    stale = [p for p in (out_onnx.with_name(f"{out_onnx.stem}.int8.onnx"), out_onnx.with_name("quantization.json"))
             if p.exists()]
    for path in stale:
        path.unlink()
    if stale:
        log(f"removed {', '.join(map(str, stale))}: made from the earlier {out_onnx.name} (quantize_onnx makes them "
            "again from this one where export.quantize is on)")


# --------------------------------------------------------------------------- summary

# A label of a CSV manifest not in dataset.classes on at most this many rows is noted under the leaderboard (a typo?).
FEW_ROWS = 5


def summary_stage(runs: list[dict], out_csv: Path, out_md: Path, out_html: Path | None = None,
                  out_selected: Path | None = None, split_report: Path | None = None,
                  exported_tta: bool = False) -> pd.DataFrame:
    """The leaderboard: one row per run name, mean and std over its seeds, ranked by the validation metric
    (``train.metric``); the run selected per experiment (a sweep's runs together) is marked, and written
    to ``out_selected`` with its best seed and model. Test figures are reported, never used to choose.

    ``runs``: dicts with keys experiment (the run's name), sweep (the experiment as written; default the
    run's name), seed, info (path), metrics (path), weights_source, and optionally predictions (its
    test_predictions.csv: the selected runs are then compared with the first, paired per test image). The std is the sample standard
    deviation (n - 1) over seeds; with a single seed it is undefined, left empty in the CSV and left out
    of the Markdown. ``split_report``: the target split's report, whose near duplicates across splits are
    noted under the table (:func:`finetune.leaderboard.near_duplicate_notes`). ``exported_tta``: export.tta, for
    the note on test-time augmentation.
    """
    from .leaderboard import (SPREAD_NOTE, aggregate, chance_notes, chosen_by, markdown, near_duplicate_notes,
                              never_predicted_notes, paired_notes, ranked, run_row, selections, shown, tta_notes)

    if not runs:
        raise ConfigError("summary: no runs to summarise")
    report = read_json_object(split_report, "the split's report (split.report.json)") if split_report is not None else None
    per_run = pd.DataFrame([run_row(run, read_json(run["info"]), read_json(run["metrics"])) for run in runs])
    chosen = selections(per_run)
    table = ranked(aggregate(per_run), chosen)
    with atomic_path(out_csv) as tmp:
        table.assign(selected_by=table["val_metric"]).round(4).to_csv(tmp, index=False)
    notes = tta_notes(per_run, exported_tta) + chance_notes(per_run, table) + paired_notes(runs, table)
    train_counts = [counts.get("train", 0) for counts in report["counts"].values()] if report and "counts" in report else None
    notes += never_predicted_notes(per_run, chosen, train_counts)
    if report is not None:
        notes += near_duplicate_notes(report, str(split_report), table)
        few = {label: n for label, n in (report.get("rows_of_other_labels") or {}).items() if n <= FEW_ROWS}
        if few:  # a label misspelt on a row or two leaves those images out without a failure; a class not chosen is not news
            notes.append(f"{sum(few.values())} row(s) of the CSV manifest {report['dataset']['path']} have a label not in "
                         f"dataset.classes and found on at most {FEW_ROWS} rows, so they were left out: "
                         f"{', '.join(f'{label!r} {n}' for label, n in list(few.items())[:20])}. A misspelt label? "
                         f"Every label left out is in {split_report} (rows_of_other_labels).")
    write_text(out_md, markdown(table) + "".join(f"\n{note}\n" for note in notes))
    if out_selected is not None:
        write_json(out_selected, chosen)
    if out_html is not None:
        from .tables import page

        note = " ".join([f"{SPREAD_NOTE}, shown when there are two or more. Every experiment is evaluated on the "
                         "same test images.", *notes])
        write_text(out_html, page("Leaderboard", [("Runs, best validation figure first", shown(table)),
                                                  ("How runs are chosen", chosen_by(table)), ("Note", note)]))
    return table
