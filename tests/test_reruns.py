"""Rerun only what changed (issue 12): each change checked by the exact jobs Snakemake runs, or
would run (`snakemake -n` on a copy of the finished tiny run).

Code is edited in a copy of the repo's workflow (Snakefile, workflow/, src/, config/, profiles/,
mtimes kept), never in the source tree itself.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faults import make_images
from helpers import REPO, TINY_CONFIG, copy_of_the_workflow, jobs_run, run_snakemake, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

EXPERIMENTS = 3  # the tiny config: finetune, feature_extract, scratch; one seed
AFTER_TRAIN = {"train": EXPERIMENTS, "evaluate": EXPERIMENTS, "export_onnx": EXPERIMENTS, "summary": 1, "all": 1}
AFTER_EVALUATE = {"evaluate": EXPERIMENTS, "summary": 1, "all": 1}
NOTHING = Counter()


def would_run(workdir: Path, snakefile: Path = REPO / "Snakefile", **kwargs) -> Counter:
    """How many jobs of each rule a dry run of the workdir's config.yaml lists."""
    result = run_snakemake(workdir, workdir / "config.yaml", "-n", snakefile=snakefile, **kwargs)
    return Counter(jobs_run(result.stdout))


# --------------------------------------------------------------------------- config changes

def test_reruns_only_what_went_stale(tiny_run_copy):
    workdir = tiny_run_copy
    config = workdir / "config.yaml"
    # A finished DAG: nothing to do.
    second = run_snakemake(workdir, config)
    assert jobs_run(second.stdout) == [], second.stdout[-3000:]
    assert "Nothing to be done" in second.stdout
    # One training parameter of one experiment changes: exactly its train, evaluate and export rerun
    # (and the summary table that collects every experiment), never weights or split.
    tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "lr": 0.0005}})
    third = run_snakemake(workdir, config)
    ran = sorted(jobs_run(third.stdout))
    assert ran == ["all", "evaluate", "export_onnx", "summary", "train"], third.stdout[-3000:]
    assert "results/finetune/seed0/model.pt" in third.stdout


def test_an_output_deleted_by_hand_is_made_again_by_the_next_run_and_nothing_else(tiny_run_copy):
    """A figure, metrics.html, the leaderboard's HTML or selected.json deleted by hand stayed missing: Snakemake runs
    a job again only for a missing output something asks for, so the next run said "Nothing to be done", and
    `--report` failed on the figure. Each is made again by its own job (and what reads that job's outputs), with the
    same content where it has no timings (selected.json; the confusion matrix's counts)."""
    workdir = tiny_run_copy
    deleted = ["results/finetune/seed0/reliability.png", "results/scratch/seed0/metrics.html",
               "results/scratch/seed0/confusion_matrix.csv", "results/summary.html", "results/selected.json"]
    before = {name: (workdir / name).read_bytes() for name in deleted}
    for name in deleted:
        (workdir / name).unlink()
    assert would_run(workdir) == Counter({"evaluate": 2, "summary": 1, "all": 1})
    run_snakemake(workdir, workdir / "config.yaml")
    assert all((workdir / name).stat().st_size > 0 for name in deleted)
    assert json.loads((workdir / "results/selected.json").read_text()) == json.loads(before["results/selected.json"])
    confusion = pd.read_csv(workdir / "results/scratch/seed0/confusion_matrix.csv", index_col=0)
    assert confusion.equals(pd.read_csv(io.BytesIO(before["results/scratch/seed0/confusion_matrix.csv"]), index_col=0))
    assert would_run(workdir) == NOTHING


def test_a_train_job_that_failed_runs_again_rather_than_leave_the_old_results_standing(tiny_run_copy):
    """New settings whose train job fails: Snakemake removes the job's outputs (model.pt, ...) but not the older
    results made from them (metrics.json, model.onnx). The next run must try the train job again and what
    follows, not end with "Nothing to be done" and the old settings' results as if current; the failed run says
    which runs lost their model.pt."""
    workdir = tiny_run_copy
    before = (workdir / "results/finetune/seed0/metrics.json").read_bytes()
    # An lr at which the loss overflows: the train job fails (training diverged), which no check at start can know
    tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "lr": 1.0e+30}})
    failed = run_snakemake(workdir, workdir / "config.yaml", check=False)
    log = (workdir / "results/logs/train/finetune/seed0.log").read_text()
    assert failed.returncode != 0 and "training diverged; lower experiments.finetune.lr" in log, failed.stdout[-3000:]
    assert not (workdir / "results/finetune/seed0/model.pt").exists()
    # The run says which results are still the old settings': those of the jobs after the failed one, still there.
    stale = sorted(f"results/finetune/seed0/{name}" for name in
                   ("confusion_matrix.csv", "confusion_matrix.png", "learning_curves.png", "metrics.html", "metrics.json",
                    "model.onnx", "onnx_parity.json", "reliability.png", "test_predictions.csv"))
    stale = sorted(stale + [f"results/summary.{ext}" for ext in ("csv", "html", "md")] + ["results/selected.json"])
    assert all((workdir / f).exists() for f in stale)
    assert (f"note: {len(stale)} file(s) under results/ were to be made again by this run and were not finished by it "
            f"(changed settings, code or data, or --forcerun): they are an earlier run's, or a job's that this run "
            f"stopped following ({', '.join(stale[:6])} and {len(stale) - 6} more)") in failed.stdout, failed.stdout[-3000:]
    assert ("note: the leaderboard (results/selected.json, results/summary.csv, results/summary.html, "
            "results/summary.md) is an earlier "
            "run's: it is made once every run has finished") in failed.stdout, failed.stdout[-3000:]
    # The good model.pt is gone (Snakemake removed it when the job started) while its model.onnx stays: said, with what
    # going back costs (only the README said so, under a heading that said nothing good is lost).
    assert ("note: 1 run(s) lost their model.pt (results/finetune/seed0/model.pt): Snakemake removes a job's outputs "
            "when it starts, and their train jobs, started for other settings, code or data (or by --forcerun), did "
            "not finish; the model.onnx and metrics.json beside them are of the model removed") in failed.stdout, \
        failed.stdout[-3000:]
    assert would_run(workdir) == Counter({rule: 1 for rule in AFTER_TRAIN})
    again = run_snakemake(workdir, workdir / "config.yaml", check=False)
    assert again.returncode != 0 and "Nothing to be done" not in again.stdout, again.stdout[-3000:]
    assert (workdir / "results/finetune/seed0/metrics.json").read_bytes() == before  # not overwritten, nor passed


def test_a_suggestion_or_weights_that_a_failed_job_left_missing_are_made_again_with_the_runs_after_them(tiny_run_copy):
    """A job that fails leaves no outputs: Snakemake removed them when it started. Where that job is lr_find (a run at
    lr: auto, new range-test settings) or the weights job (new weights whose download failed), the next run makes
    them again and trains the runs from them, rather than end with "Nothing to be done" and the runs of the old ones
    standing as if current."""
    workdir = tiny_run_copy
    for name in ("weights.pth", "manifest.json"):  # as a failed weights job leaves them
        (workdir / "resources/weights" / name).unlink()
    pretrained = EXPERIMENTS - 1  # the scratch run is built from the source's decoded record, not the weights
    assert would_run(workdir) == Counter({"weights": 1, "train": pretrained, "evaluate": pretrained,
                                          "export_onnx": pretrained, "summary": 1, "all": 1})
    tiny_config(workdir, experiments={"finetune": {"strategy": "finetune", "lr": "auto"}})
    assert "lr_find" in jobs_run(run_snakemake(workdir, workdir / "config.yaml").stdout)
    (workdir / "results/lr_find/finetune/suggestion.json").unlink()  # as a failed lr_find job leaves it
    assert would_run(workdir) == Counter({"lr_find": 1, **{rule: 1 for rule in AFTER_TRAIN}})


def test_an_export_that_fails_after_the_leaderboard_is_made_says_the_selected_models_are_not_there(tiny_run_copy):
    """The leaderboard does not wait for the exports: after an export that failed (here its parity check, at a
    tolerance no float rounding meets), results/selected.json named a model.onnx Snakemake had removed, and no note
    said so (the leaderboard itself was current)."""
    workdir = tiny_run_copy
    selected = json.loads((workdir / "results/selected.json").read_text())
    tiny_config(workdir, export={"tolerance": 1e-30, "rtol": 0})
    failed = run_snakemake(workdir, workdir / "config.yaml", "--keep-going", check=False)
    assert failed.returncode != 0, failed.stdout[-3000:]
    gone = sorted(entry["model"] for entry in selected.values() if not (workdir / entry["model"]).exists())
    assert gone, "the exports were to fail and their model.onnx be removed"
    assert json.loads((workdir / "results/selected.json").read_text()) == selected  # the leaderboard was not made again
    note = next(line for line in failed.stdout.splitlines() if line.startswith("note: results/selected.json names"))
    assert all(model in note for model in gone[:4]) and f"names {len(gone)} model(s) not there now" in note, note


def test_a_dataset_change_reruns_the_target_split_and_all_after_it_not_pretraining(tiny_run_copy):
    tiny_config(tiny_run_copy, dataset={"seed": 1})
    result = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml", "-n")
    # and the target's decode job: its images are decoded again, once, for every experiment
    assert Counter(jobs_run(result.stdout)) == Counter({"split": 1, "decode": 1, **AFTER_TRAIN}), result.stdout[-3000:]
    assert "output: resources/splits/target.csv" in result.stdout
    assert "output: resources/splits/source.csv" not in result.stdout
    # A key of the test set alone retrains too (docs/reruns.md): every job after a job that reruns reruns.
    tiny_config(tiny_run_copy, dataset={"max_test_per_class": 5})
    result = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml", "-n")
    assert Counter(jobs_run(result.stdout)) == Counter({"split": 1, "decode": 1, **AFTER_TRAIN}), result.stdout[-3000:]
    split = tiny_run_copy / "resources/splits/target.csv"
    before = pd.read_csv(split)
    run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml", "--printshellcmds", "resources/splits/target.csv")
    after = pd.read_csv(split)
    def learnt(rows):
        return rows[rows["split"] != "test"].reset_index(drop=True)

    def tests_per_class(rows):
        return set(rows[rows["split"] == "test"].groupby("class_name").size())

    assert learnt(after).equals(learnt(before)) and tests_per_class(before) == {6} and tests_per_class(after) == {5}


def test_a_shared_key_reruns_only_the_runs_that_act_on_it(tiny_run_copy):
    """train.backbone_lr_factor: finetune and scratch train the backbone at lr x it; feature_extract trains the head
    alone and its job gets the key's default, so it does not rerun."""
    tiny_config(tiny_run_copy, train={"backbone_lr_factor": 0.5})
    ran = would_run(tiny_run_copy)
    assert ran == Counter({"train": 2, "evaluate": 2, "export_onnx": 2, "summary": 1, "all": 1}), ran
    info = json.loads((tiny_run_copy / "results/feature_extract/seed0/train_info.json").read_text())
    assert info["options"]["backbone_lr_factor"] == 1.0


def test_a_number_written_at_its_default_another_way_reruns_nothing(tiny_run_copy):
    """`label_smoothing: 0` where the schema's default is 0.0 (and `backbone_lr_factor: 1`, `lr_find.max_lr: 10`,
    `warmup_epochs: 0.0` where it is 0): the jobs' params, compared as text, differed from the run's with the key left
    out, so writing a default trained every run again. They are the default's now; a value other than the default
    still reruns the runs that act on it."""
    import yaml

    written = {"label_smoothing": 0, "mixup_alpha": 0, "cutmix_alpha": 0, "warmup_epochs": 0.0}
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    defaults = {key: rule.get("default") for key, rule in schema["$defs"]["train"]["properties"].items()}
    lr_find = {key: rule.get("default") for key, rule in schema["properties"]["lr_find"]["properties"].items()}
    for key, value in [*written.items(), ("backbone_lr_factor", 1)]:  # the same number, another type
        assert value == defaults[key] and type(value) is not type(defaults[key]), (key, defaults[key])
    assert type(lr_find["max_lr"]) is float and lr_find["max_lr"] == 10
    tiny_config(tiny_run_copy, train=written, lr_find={"max_lr": 10, "diverge_factor": int(lr_find["diverge_factor"])},
                experiments={"finetune": {"strategy": "finetune", "backbone_lr_factor": 1}},
                pretrain={"train": {"label_smoothing": 0}})
    assert would_run(tiny_run_copy) == NOTHING
    tiny_config(tiny_run_copy, train={"label_smoothing": 0.1})
    assert would_run(tiny_run_copy) == Counter(AFTER_TRAIN)


def test_pretraining_anew_reruns_the_runs_from_its_weights_not_the_scratch_control(tiny_run_copy):
    """The scratch control uses none of pretrain's weights, only the preprocessing pretrain publishes: the source's
    train images' mean and std, which the source's decode job records. Pretraining for longer reruns pretrain, the
    weights and the two runs made from them; the scratch run stays done, and its checkpoint's preprocessing is still
    what the new weights' manifest says."""
    tiny_config(tiny_run_copy, pretrain={"train": {"epochs": 2}})
    scratch = (tiny_run_copy / "results/scratch/seed0/model.pt").read_bytes()
    ran = Counter(jobs_run(run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml").stdout))
    assert ran == Counter({"pretrain": 1, "weights": 1, "train": 2, "evaluate": 2, "export_onnx": 2, "summary": 1,
                           "all": 1}), ran
    assert (tiny_run_copy / "results/scratch/seed0/model.pt").read_bytes() == scratch
    manifest = json.loads((tiny_run_copy / "resources/weights/manifest.json").read_text())
    import torch
    checkpoint = torch.load(tiny_run_copy / "results/scratch/seed0/model.pt", weights_only=False)
    assert checkpoint["preprocessing"] == manifest["preprocessing"]
    assert json.loads((tiny_run_copy / "resources/pretrain/info.json").read_text())["options"]["epochs"] == 2


def test_a_value_that_pretrains_as_the_default_does_reruns_nothing(tiny_run_copy):
    """`layer_decay: 1` (no decay) and `bn: train` (what auto does when the whole network trains) written in
    pretrain.train train the very source model of the default (tests/test_training.py shows each in a run): written in
    an experiment they reran nothing, in pretrain.train they reran pretraining and every run from its weights. Now
    neither; a value that pretrains otherwise still does."""
    tiny_config(tiny_run_copy, pretrain={"train": {"layer_decay": 1, "bn": "train"}})
    assert would_run(tiny_run_copy) == NOTHING
    # a patience no run of one epoch can reach (said at start) stops nothing either, there or in `train`
    tiny_config(tiny_run_copy, pretrain={"train": {"early_stopping_patience": 3}}, train={"early_stopping_patience": 3})
    assert would_run(tiny_run_copy) == NOTHING
    tiny_config(tiny_run_copy, pretrain={"train": {"layer_decay": 0.5, "bn": "train"}})
    assert would_run(tiny_run_copy)["pretrain"] == 1


def test_a_config_of_scratch_runs_alone_neither_pretrains_nor_fetches_weights(tmp_path, tiny_run_copy):
    """No run starts from the weights (every experiment pretrained: false): nothing asks for them, so neither
    pretrain (minutes to hours on the source) nor the weights job runs, in a new folder or after a pretrain setting
    changes; the scratch runs still take the source's preprocessing from its decoded record. With a run that starts
    from them again, they are made."""
    scratch_only = {"scratch": {"strategy": "finetune", "pretrained": False}}
    tiny_config(tmp_path, replace={"experiments": scratch_only})
    planned = would_run(tmp_path)
    assert planned["pretrain"] == planned["weights"] == 0, planned
    assert planned["split"] == planned["decode"] == 2 and planned["train"] == 1, planned
    tiny_config(tiny_run_copy, replace={"experiments": scratch_only}, pretrain={"train": {"epochs": 2}})
    assert would_run(tiny_run_copy) == Counter({"summary": 1, "all": 1})
    tiny_config(tiny_run_copy, pretrain={"train": {"epochs": 2}})
    assert would_run(tiny_run_copy) == Counter({"pretrain": 1, "weights": 1, "train": 2, "evaluate": 2,
                                                "export_onnx": 2, "summary": 1, "all": 1})


def test_another_architecture_reruns_the_scratch_control_too(tiny_run_copy):
    """A scratch run from pretrain's source record gets the architecture from weights.arch alone (`--arch` in its
    command, and whether it is pretrained, `--scratch`): a param Snakemake compares. Made from the job's input, it
    was left out of that comparison, and the scratch run stayed a ResNet18 beside ResNet34 transfer runs."""
    tiny_config(tiny_run_copy, weights={"arch": "resnet34"})
    assert would_run(tiny_run_copy) == Counter({"pretrain": 1, "weights": 1, **AFTER_TRAIN})


def test_export_tolerance_reruns_only_the_exports(tiny_run_copy):
    tiny_config(tiny_run_copy, export={"tolerance": 1e-3})
    assert would_run(tiny_run_copy) == Counter({"export_onnx": EXPERIMENTS, "all": 1})


def test_the_same_dataset_folder_written_another_way_reruns_nothing(tiny_run_copy):
    """dataset.path with a trailing slash, `./` or a doubled slash names the folder the split was made from:
    nothing reruns (it retrained every run, though the split came out byte for byte the same). Another folder
    of the same images (a copy) is another dataset: its split reruns."""
    from helpers import TINY_CONFIG

    path = TINY_CONFIG["dataset"]["path"]
    source = TINY_CONFIG["pretrain"]["dataset"]["path"]
    tiny_config(tiny_run_copy, dataset={"path": path.rstrip("/") + "/"},
                pretrain={"dataset": {"path": str(Path(source).parent) + "//./" + Path(source).name}})
    assert would_run(tiny_run_copy) == NOTHING
    assert os.path.isabs(path) and os.path.samefile(path, "/" + path)  # two leading slashes: the same folder on Linux
    tiny_config(tiny_run_copy, dataset={"path": "/" + path}, pretrain={"dataset": {"path": "///" + source.lstrip("/")}})
    assert would_run(tiny_run_copy) == NOTHING  # (Python's paths keep two: the split and all after it reran)
    copy = tiny_run_copy / "fashion-mnist copy"
    shutil.copytree(path, copy)
    tiny_config(tiny_run_copy, dataset={"path": str(copy)})
    assert would_run(tiny_run_copy)["split"] == 1


def test_how_fast_evaluate_runs_reruns_nothing_what_it_computes_reruns_it(tiny_run_copy):
    """evaluate.batch_size and evaluate.device say how fast the test images are scored, not what is scored (as
    threads): editing them reruns nothing. evaluate.top_k changes the metrics: the evaluate jobs and what follows."""
    tiny_config(tiny_run_copy, evaluate={"batch_size": 7, "device": "auto"})
    assert would_run(tiny_run_copy) == NOTHING
    forced = run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml", "-n", "--printshellcmds", "--forcerun",
                           "evaluate")
    assert "--device auto --batch-size 7 " in forced.stdout, forced.stdout[-3000:]  # the jobs get the values
    tiny_config(tiny_run_copy, evaluate={"batch_size": 7, "device": "auto", "top_k": 3})
    assert would_run(tiny_run_copy) == AFTER_EVALUATE


def test_where_fashion_mnist_would_be_downloaded_reruns_nothing(tiny_run_copy):
    """dataset.download_dir and download_timeout_s say how a missing Fashion-MNIST is fetched, not which: the same
    files either way (weights.timeout_s and mirror alike)."""
    tiny_config(tiny_run_copy, dataset={"download_dir": "elsewhere", "download_timeout_s": 5})
    assert would_run(tiny_run_copy) == NOTHING


def test_the_same_python_by_another_name_reruns_nothing(tiny_run_copy):
    other = Path(sys.executable).with_name("python3" if Path(sys.executable).name != "python3" else "python")
    if not other.exists():
        pytest.skip(f"no {other} beside {sys.executable}")
    assert would_run(tiny_run_copy, python=str(other)) == NOTHING


def mark_done(workdir: Path, config: Path) -> None:
    """Every output of the DAG created empty, then `--touch`: each output newer than its inputs, so a dry run lists
    only what changed since by its files' times or the DAG's shape. Snakemake 9.27 records no params or code
    this way (.snakemake/metadata stays empty): a test of a param's change runs the job for real (``settle``)."""
    dry = run_snakemake(workdir, config, "-n")
    for line in dry.stdout.splitlines():
        if line.strip().startswith("output: "):
            for name in line.strip()[len("output: "):].split(", "):
                (workdir / name).parent.mkdir(parents=True, exist_ok=True)
                (workdir / name).touch()
    run_snakemake(workdir, config, "--touch")


def test_editing_one_swept_value_reruns_only_that_run(tmp_path):
    """A sweep's runs are ordinary runs: a changed value is a new run (its name carries the value), trained
    alone; the other runs of the sweep stay as they are. The DAG is marked done by `--touch` (the new runs are new
    outputs, which needs no record of params), so no training is needed to see the job lists."""
    sweep = {"lr": [0.001, 0.0003], "backbone_lr_factor": [0.1, 1.0]}
    config = tiny_config(tmp_path, replace={"experiments": {"finetune": {"strategy": "finetune", "sweep": sweep}}})
    mark_done(tmp_path, config)
    assert would_run(tmp_path) == NOTHING
    tiny_config(tmp_path, replace={"experiments": {"finetune": {"strategy": "finetune",
                                                                "sweep": {**sweep, "lr": [0.001, 0.0005]}}}})
    result = run_snakemake(tmp_path, config, "-n")
    assert Counter(jobs_run(result.stdout)) == Counter({"train": 2, "evaluate": 2, "export_onnx": 2, "summary": 1, "all": 1})
    trained = {line.split("results/")[1].split("/seed")[0] for line in result.stdout.splitlines()
               if "output: results/" in line and "model.pt" in line}
    assert trained == {"finetune-lr5e-4-backbone_lr_factor0.1", "finetune-lr5e-4-backbone_lr_factor1"}


# --------------------------------------------------------------------------- the weights

PREPROCESSING = {"resize_size": 32, "crop_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def done_with_weights_at_path(tmp_path, data: bytes) -> Path:
    """The tiny DAG in tmp_path/run with weights.path a file of ``data`` (returned), marked done (nothing to run), and
    a moment passed, so that a file written next is newer than every output."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(data)
    config = tiny_config(tmp_path / "run", replace={"weights": {"source": "path", "path": str(weights), "arch": "resnet18",
                                                                "preprocessing": PREPROCESSING}})
    mark_done(tmp_path / "run", config)
    assert would_run(tmp_path / "run") == NOTHING
    time.sleep(0.05)
    return weights


def test_a_weights_file_of_the_user_s_named_model_pt_is_not_taken_for_a_run_s_checkpoint(tmp_path):
    """The check as a run starts reads every run's model.pt (a zip archive of CRCs) that a job reads and none makes:
    weights.path a file of the user's named model.pt, saved in torch's older (pickle, not zip) format, is no run's
    checkpoint and must not be refused as one; the weights job publishes it, and the runs train from it."""
    import torch
    import torchvision

    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18(num_classes=6).state_dict(), weights, _use_new_zipfile_serialization=False)
    assert weights.read_bytes()[:1] == b"\x80"  # a pickle: no zip archive
    config = tiny_config(tmp_path / "run", replace={"weights": {"source": "path", "path": str(weights), "arch": "resnet18",
                                                                "preprocessing": PREPROCESSING}})
    ran = run_snakemake(tmp_path / "run", config, "-p", "results/finetune/seed0/model.pt").stdout
    assert "train" in jobs_run(ran) and "no longer reads as the checkpoint" not in ran, ran[-3000:]


def test_a_weights_file_replaced_at_weights_path_reruns_the_weights_and_all_after_it(tmp_path):
    """weights.path is an input of the weights rule: another file at that path (a newer download, say) reruns
    the weights and every run trained from them; before, nothing reran and every result stayed stale. Not the
    scratch control, which loads no weights (it read the weights' manifest, and so trained again for other weights):
    it reads the architecture and preprocessing the config gives them."""
    weights = done_with_weights_at_path(tmp_path, b"first weights")
    (tmp_path / "newer.pth").write_bytes(b"other weights")
    os.replace(tmp_path / "newer.pth", weights)
    dry = run_snakemake(tmp_path / "run", tmp_path / "run/config.yaml", "-n").stdout
    ran = Counter(jobs_run(dry))
    assert ran["weights"] == 1 and ran["train"] == ran["evaluate"] == EXPERIMENTS - 1, ran
    trained = {line.split("results/")[1].split("/seed")[0] for line in dry.splitlines()
               if "output: results/" in line and "model.pt" in line}
    assert trained == {"finetune", "feature_extract"} and "scratch_manifest" not in ran, dry[-3000:]


def test_a_scratch_run_with_weights_from_a_file_is_built_from_the_config_not_the_weights(tmp_path):
    """A scratch run (pretrained: false) with weights.source path trains from the architecture and preprocessing
    the config gives the weights (rule scratch_manifest), as the weights job would write them; with scratch runs
    alone the weights job does not run, and the file is never read. Another preprocessing trains it again."""
    import torch

    from faults import save_state_dict

    weights = tmp_path / "weights.pth"
    save_state_dict(weights, num_classes=6)
    prep = {"resize_size": 36, "crop_size": 32, "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}
    run = tmp_path / "run"
    scratch_only = {"scratch": {"strategy": "finetune", "pretrained": False}}
    config = tiny_config(run, replace={
        "weights": {"source": "path", "path": str(weights), "arch": "resnet18", "preprocessing": prep},
        "experiments": scratch_only})
    records = tmp_path / "modules"
    done = run_snakemake(run, config, "--printshellcmds", "results/scratch/seed0/train_info.json",
                         env={"FINETUNE_RECORD_MODULES": str(records)})
    assert Counter(jobs_run(done.stdout)) == Counter({"split": 1, "decode": 1, "scratch_manifest": 1, "train": 1})
    assert not (run / "resources/weights/weights.pth").exists() and not (run / "resources/weights/manifest.json").exists()
    checkpoint = torch.load(run / "results/scratch/seed0/model.pt", map_location="cpu", weights_only=False)
    expected = {**prep, "interpolation": "bilinear", "channels": "RGB"}  # the schema's defaults of the two left out
    assert {k: checkpoint["preprocessing"].get(k) for k in expected} == expected, checkpoint["preprocessing"]
    assert json.loads((run / "results/scratch/seed0/train_info.json").read_text())["pretrained"] is False
    loaded = loaded_modules(records)["scratch_manifest"]
    dry = run_snakemake(run, config, "--forcerun", "scratch_manifest", "-n", "results/scratch/seed0/train_info.json")
    assert declared_modules(dry.stdout)["scratch_manifest"] == loaded  # RULE_MODULES lists what it loads
    tiny_config(run, replace={"weights": {"source": "path", "path": str(weights), "arch": "resnet18",
                                          "preprocessing": {**prep, "mean": [0.5, 0.5, 0.5]}},
                              "experiments": scratch_only})
    again = run_snakemake(run, config, "-n", "results/scratch/seed0/train_info.json")
    assert Counter(jobs_run(again.stdout)) == Counter({"scratch_manifest": 1, "train": 1}), again.stdout[-3000:]


def test_the_weights_file_rewritten_reruns_the_runs_from_it_not_the_scratch_control(tmp_path):
    """resources/weights/weights.pth written again (a `cp` back from a backup, the weights job run alone): too large for
    Snakemake's checksums, it counts by its time, and the runs trained from it rerun. The scratch control reads the
    manifest (architecture, preprocessing) and never the file: it stays done."""
    import hashlib

    done_with_weights_at_path(tmp_path, b"weights")
    published = tmp_path / "run/resources/weights/weights.pth"
    # The DAG marked done holds empty outputs: the manifest gives the published file's sha256, as the weights job
    # writes it (its time kept), so that the check at start finds the file copied back the same (as a real one is).
    manifest = published.with_name("manifest.json")
    times = manifest.stat()
    manifest.write_text(json.dumps({"sha256": hashlib.sha256(published.read_bytes()).hexdigest()}))
    os.utime(manifest, ns=(times.st_atime_ns, times.st_mtime_ns))
    shutil.copyfile(published, tmp_path / "copy.pth")
    os.replace(tmp_path / "copy.pth", published)
    pretrained = EXPERIMENTS - 1  # finetune and feature_extract; not scratch
    assert would_run(tmp_path / "run") == Counter({"train": pretrained, "evaluate": pretrained, "export_onnx": pretrained,
                                                   "summary": 1, "all": 1})


def test_an_older_weights_file_switched_in_at_weights_path_reruns_the_weights(tmp_path):
    """An earlier checkpoint moved back to the path (`mv`, which keeps its time): the file there is older than the
    weights job's outputs, so its time alone says nothing changed; its state (a param) does, though the two
    checkpoints are of one size (the same architecture, saved under names of one length): only its inode and time
    tell it from the file it replaced. The job runs for real first (Snakemake records the params it compares)."""
    import torch

    from finetune.models import build_architecture

    run = tmp_path / "run"
    for name, seed in (("older.pth", 0), ("newer.pth", 1)):
        torch.manual_seed(seed)
        torch.save(build_architecture("resnet18", 10).state_dict(), tmp_path / name)
    assert os.path.getsize(tmp_path / "older.pth") == os.path.getsize(tmp_path / "newer.pth")
    os.utime(tmp_path / "older.pth", (1_000_000_000, 1_000_000_000))  # 2001
    shutil.copy2(tmp_path / "newer.pth", tmp_path / "weights.pth")
    config = tiny_config(run, replace={"weights": {"source": "path", "path": str(tmp_path / "weights.pth"),
                                                   "arch": "resnet18", "preprocessing": PREPROCESSING}})
    target = ("--printshellcmds", "resources/weights/manifest.json")
    assert jobs_run(run_snakemake(run, config, *target).stdout) == ["weights"]
    assert jobs_run(run_snakemake(run, config, "-n", *target).stdout) == []
    os.replace(tmp_path / "older.pth", tmp_path / "weights.pth")
    assert os.stat(tmp_path / "weights.pth").st_mtime < os.stat(run / "resources/weights/weights.pth").st_mtime
    assert jobs_run(run_snakemake(run, config, "-n", *target).stdout) == ["weights"]


def test_the_same_weights_file_named_by_another_path_or_a_link_reruns_nothing(tmp_path):
    """weights.path written relative instead of absolute, or as a symbolic link to the same file: the weights job ran
    again (its params held the path as written, its input was the link), rewrote the same weights, and every run
    was trained again from them."""
    import torch

    from finetune.models import build_architecture

    run = tmp_path / "run"
    (tmp_path / "w").mkdir()
    torch.save(build_architecture("resnet18", 10).state_dict(), tmp_path / "w" / "weights.pth")
    weights = {"source": "path", "path": str(tmp_path / "w" / "weights.pth"), "arch": "resnet18", "preprocessing": PREPROCESSING}
    config = tiny_config(run, replace={"weights": weights})
    target = ("--printshellcmds", "resources/weights/manifest.json")
    assert jobs_run(run_snakemake(run, config, *target).stdout) == ["weights"]
    time.sleep(0.05)
    os.symlink(tmp_path / "w" / "weights.pth", tmp_path / "link.pth")  # newer than the weights job's outputs
    for path in ("../w/weights.pth", str(tmp_path / "link.pth")):
        tiny_config(run, replace={"weights": {**weights, "path": path}})
        assert jobs_run(run_snakemake(run, config, "-n", *target).stdout) == [], path
    # the control: another file at the path the link leads to reruns the weights
    torch.save(build_architecture("resnet18", 10).state_dict(), tmp_path / "w" / "other.pth")
    os.replace(tmp_path / "w" / "other.pth", tmp_path / "w" / "weights.pth")
    assert jobs_run(run_snakemake(run, config, "-n", *target).stdout) == ["weights"]


def test_the_leaderboard_names_a_weights_file_written_another_way_by_its_plain_path(tmp_path):
    """weights.path with a doubled slash or `./` names the same file: the leaderboard's weights column (the summary
    job's --weights-source, a param) names it in its plain form, so that the path written another way does not make
    the leaderboard again; relative stays relative (two checkpoints of one name in two folders are two weights)."""
    import torch

    from finetune.models import build_architecture

    (tmp_path / "w").mkdir()
    torch.save(build_architecture("resnet18", 10).state_dict(), tmp_path / "w" / "weights.pth")
    for written, plain in ((f"{tmp_path}//w/./weights.pth", f"{tmp_path}/w/weights.pth"),
                           ("./w//weights.pth", "w/weights.pth")):
        config = tiny_config(tmp_path, replace={"weights": {"source": "path", "path": written, "arch": "resnet18",
                                                            "preprocessing": PREPROCESSING}})
        result = run_snakemake(tmp_path, config, "-n", "--printshellcmds", "results/summary.csv")
        assert re.search(rf"--weights-source path:{re.escape(plain)} ", result.stdout), (written, result.stdout[-3000:])


def test_how_the_weights_are_fetched_reruns_nothing_which_weights_does(tmp_path):
    """The file is pinned by its sha256: a longer timeout_s or another url (a mirror of the same file) reruns
    nothing (before, a longer timeout retrained every run); another sha256 reruns the weights. The weights job
    runs for real (Snakemake records the params it compares), downloading from a server on 127.0.0.1."""
    import hashlib

    import torch

    from finetune.models import build_architecture
    from weight_server import serve_folder

    served = tmp_path / "served"
    (served / "mirror").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_architecture("resnet18", 1000).state_dict(), served / "w.pth")
    shutil.copy(served / "w.pth", served / "mirror" / "w.pth")
    digest = hashlib.sha256((served / "w.pth").read_bytes()).hexdigest()
    run = tmp_path / "run"
    target = ("--printshellcmds", "resources/weights/manifest.json")
    with serve_folder(served) as base:
        weights = {"source": "url", "url": f"{base}/w.pth", "sha256": digest, "arch": "resnet18",
                   "preprocessing": PREPROCESSING, "timeout_s": 60}
        config = tiny_config(run, replace={"weights": weights})
        decoded = ("resources/decoded/target/native/info.json",)
        assert sorted(jobs_run(run_snakemake(run, config, *target, *decoded).stdout)) == ["decode", "split", "weights"]
        # another url and timeout, the same sha256 written in capitals (one hash in either case)
        tiny_config(run, replace={"weights": {**weights, "timeout_s": 600, "url": f"{base}/mirror/w.pth",
                                              "sha256": digest.upper()}})
        moved = run_snakemake(run, config, "-n", *target).stdout
        assert jobs_run(moved) == []
        # said, for a user who meant other weights (the leaderboard names them by their sha256, not the url)
        assert (f"note: weights.url is {base}/mirror/w.pth, but weights.sha256 is that of the weights fetched from "
                f"{base}/w.pth: it pins the same file, so a change of url alone fetches nothing") in moved, moved[-3000:]
        summary = [line for line in run_snakemake(run, config, "-n", "--printshellcmds", "--forcerun", "summary",
                                                  "results/summary.csv").stdout.splitlines() if "--weights-source" in line]
        assert summary and f"url:sha256:{digest[:12]}" in summary[0] and "w.pth" not in summary[0], summary
        # the preprocessing's defaults written out: the same weights (it retrained every run, and decoded again)
        written = {**PREPROCESSING, "interpolation": "bilinear", "channels": "RGB"}
        tiny_config(run, replace={"weights": {**weights, "preprocessing": written}})
        assert jobs_run(run_snakemake(run, config, "-n", *target, *decoded).stdout) == []
        tiny_config(run, replace={"weights": {**weights, "sha256": "cd" * 32}})
        assert jobs_run(run_snakemake(run, config, "-n", *target).stdout) == ["weights"]
        # the same preprocessing from a file at weights.path: the weights job runs, the images are not decoded again
        # (their sizes are the preprocessing's, whichever source gives it; they were decoded again)
        tiny_config(run, replace={"weights": {"source": "path", "path": str(served / "w.pth"), "arch": "resnet18",
                                              "preprocessing": PREPROCESSING}})
        assert jobs_run(run_snakemake(run, config, "-n", *target, *decoded).stdout) == ["weights"]
        # named on the leaderboard by the path as written: another folder's w.pth is other weights
        summary = [line for line in run_snakemake(run, config, "-n", "--printshellcmds", "--forcerun", "summary",
                                                  "results/summary.csv").stdout.splitlines() if "--weights-source" in line]
        assert summary and f"path:{served / 'w.pth'}" in summary[0], summary


# --------------------------------------------------------------------------- data changes

AFTER_SPLIT = Counter({"split": 1, "decode": 1, **AFTER_TRAIN})


def own_images_config(workdir: Path, dataset: dict) -> Path:
    return tiny_config(workdir, dataset={"classes": None, "val_fraction": 0.25, "test_fraction": 0.25,
                                         "max_train_per_class": None, "max_val_per_class": None,
                                         "max_test_per_class": None, **dataset})


def settle(workdir: Path, config: Path) -> None:
    """The target's split run for real (Snakemake records its params: `--touch` records none), the rest
    of the DAG marked done."""
    run_snakemake(workdir, config, "--printshellcmds", "resources/splits/target.csv")
    mark_done(workdir, config)


def test_adding_removing_or_renaming_an_image_reruns_the_split_and_what_follows(tmp_path):
    """An ImageFolder, nested folders included: each change to its images reruns the target's split and
    everything after it (never the source's split or pretraining); reading or rewriting the same files
    in place, or files that are no images, rerun nothing."""
    images = tmp_path / "images"
    made = make_images(images, {"circle": 8, "square": 8})
    (images / "square" / "more").mkdir()
    make_images(tmp_path / "spare", {"square": 3}, seed=5)
    config = own_images_config(tmp_path / "run", {"format": "imagefolder", "path": str(images)})
    settle(tmp_path / "run", config)
    assert would_run(tmp_path / "run") == NOTHING
    # Files no job reads (a Finder's .DS_Store, notes), or an image added and deleted again, change the
    # folders' modification times but not the split: nothing retrains.
    (images / "circle" / ".DS_Store").write_bytes(b"finder")
    (images / "square" / "more" / "notes.txt").write_text("shot on tuesday")
    shutil.copy(tmp_path / "spare/square/002.png", images / "square" / "gone.png")
    (images / "square" / "gone.png").unlink()
    assert would_run(tmp_path / "run") == NOTHING
    os.utime(made["circle"][0])  # read or touched, not changed: its folder is as it was
    assert would_run(tmp_path / "run") == NOTHING
    changes = [
        lambda: shutil.copy(tmp_path / "spare/square/000.png", images / "square" / "new.png"),
        lambda: shutil.copy(tmp_path / "spare/square/001.png", images / "square" / "more" / "new.png"),
        lambda: made["circle"][1].unlink(),
        lambda: made["circle"][2].rename(made["circle"][2].with_name("renamed.png")),
    ]
    for change in changes:
        time.sleep(0.05)
        change()
        result = run_snakemake(tmp_path / "run", config, "-n")
        assert Counter(jobs_run(result.stdout)) == AFTER_SPLIT, result.stdout[-3000:]
        assert "output: resources/splits/source.csv" not in result.stdout
        settle(tmp_path / "run", config)


def test_an_imagefolder_missing_for_one_run_stops_it_at_start_and_keeps_what_was_made(tmp_path):
    """A folder moved away (or a file system not mounted) for one run: refused at start naming dataset.path, with
    nothing removed, so that with the folder back nothing reruns (the split job failing on it would have had
    Snakemake remove the split file, and everything been retrained from the same split)."""
    images = tmp_path / "images"
    make_images(images, {"circle": 8, "square": 8})
    config = own_images_config(tmp_path / "run", {"format": "imagefolder", "path": str(images)})
    settle(tmp_path / "run", config)
    split = tmp_path / "run/resources/splits/target.csv"
    before = split.read_bytes()
    images.rename(tmp_path / "away")
    refused = run_snakemake(tmp_path / "run", config, check=False)
    assert refused.returncode != 0 and f"dataset.path: {images} (imagefolder) does not exist" in refused.stdout, \
        refused.stdout[-2000:]
    assert "nothing ran, and what was made from it is kept" in refused.stdout, refused.stdout[-2000:]
    assert jobs_run(refused.stdout) == [] and split.read_bytes() == before
    # A file system not mounted leaves its mount point, an empty folder: the same.
    images.mkdir()
    refused = run_snakemake(tmp_path / "run", config, check=False)
    assert refused.returncode != 0 and f"dataset.path: {images} (imagefolder) is empty" in refused.stdout, \
        refused.stdout[-2000:]
    assert jobs_run(refused.stdout) == [] and split.read_bytes() == before
    images.rmdir()
    (tmp_path / "away").rename(images)
    assert would_run(tmp_path / "run") == NOTHING
    # Snakemake killed (kill -9, a closed terminal) leaves its lock; `--unlock` must work while the data is away (the
    # file system not mounted yet after the crash), and so must the other commands that run no job.
    locks = tmp_path / "run/.snakemake/locks"
    killed = subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                               str(tmp_path / "run"), "--cores", "2", "--configfile", str(config), "--forcerun", "summary"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert any(locks.iterdir()), "the run was to be killed while it held its lock"
    images.rename(tmp_path / "away")
    for command in (["--list-rules"], ["--lint"], ["--unlock"]):
        result = run_snakemake(tmp_path / "run", config, *command, check=False)
        assert "dataset.path" not in result.stdout, (command, result.stdout[-2000:])
    assert result.returncode == 0 and not (locks.is_dir() and any(locks.iterdir())), result.stdout[-2000:]
    (tmp_path / "away").rename(images)
    # A run checks the lock before it finds nothing to do: no LockException now.
    assert jobs_run(run_snakemake(tmp_path / "run", config, "--printshellcmds", "resources/splits/target.csv").stdout) == []


def test_a_split_file_cut_short_or_edited_since_its_job_is_refused_at_start_until_made_again(tmp_path):
    """A split file cut short after its job wrote it (a full disk while copying results, an editor): decode, train
    and evaluate reran on it without a word, evaluating on the test rows left. Refused at start, naming the file and
    what differs from the counts its report recorded (counted again here from the file as it is); nothing runs and
    nothing is removed. A split value misspelt in an edit likewise. --forcerun of the file makes it again, as it was."""
    import csv

    workdir = tmp_path / "run"
    config = tiny_config(workdir)
    run_snakemake(workdir, config, "--printshellcmds", "resources/splits/target.csv")
    split = workdir / "resources/splits/target.csv"
    whole = split.read_bytes()
    counts = json.loads(split.with_suffix(".report.json").read_text())["counts"]
    cut = whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 6]  # the last row cut after 5 of its characters
    edited = whole.replace(b",test\n", b",tset\n", 1)
    for damaged, odd in ((cut, "none (a row cut short)"), (edited, "'tset'")):
        split.write_bytes(damaged)
        rows = list(csv.DictReader(io.StringIO(damaged.decode())))
        found = Counter((row["class_name"], row["split"]) for row in rows)
        differ = [f"{name} {s}: {found[(name, s)]} rows, its report {n}" for name, by_split in counts.items()
                  for s, n in by_split.items() if found[(name, s)] != n]
        assert len(differ) == 1 and sum(n for c in counts.values() for n in c.values()) == len(rows)
        refused = run_snakemake(workdir, config, check=False)
        assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
        assert "a file made before was cut short or changed since its job wrote it: nothing ran" in refused.stdout
        assert (f"resources/splits/target.csv no longer holds the split its job wrote ({len(rows)} rows, {len(rows)} "
                f"in its report target.report.json: split value(s) {odd}, not train, val or test; {differ[0]}): make "
                "it again with --forcerun resources/splits/target.csv") in refused.stdout, refused.stdout[-3000:]
        # a split edited by hand, on purpose: where such a split goes instead
        assert ("(every job after it reruns; if you edited a split on purpose, give your split as the split column of "
                "a CSV manifest, dataset.format: csv)") in refused.stdout, refused.stdout[-3000:]
        assert split.read_bytes() == damaged and not (workdir / "resources/decoded").exists()
    # Two classes' labels swapped in one row (the row counts stay those of the report): its class is two labels now.
    rows = whole.decode().splitlines(keepends=True)
    labels = {row["class_name"]: row["label"] for row in csv.DictReader(io.StringIO(whole.decode()))}
    (first, first_label), (second, second_label) = sorted(labels.items())[:2]
    at = next(i for i, row in enumerate(rows) if f",{first_label},{first}," in row)
    rows[at] = rows[at].replace(f",{first_label},{first},", f",{second_label},{first},")
    split.write_bytes("".join(rows).encode())
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
    assert (f"class {first} has rows labelled {', '.join(sorted([first_label, second_label]))}; label {second_label} is "
            f"given to classes {', '.join(sorted([first, second]))})") in refused.stdout, refused.stdout[-3000:]
    split.write_bytes(whole)
    report = split.with_suffix(".report.json")
    report_bytes = report.read_bytes()
    report.write_bytes(report_bytes[: len(report_bytes) // 2])  # its report cut short: the split is not vouched for
    refused = run_snakemake(workdir, config, check=False)
    assert refused.returncode != 0 and jobs_run(refused.stdout) == [], refused.stdout[-3000:]
    assert (f"its report {Path('resources/splits/target.report.json')} does not read (JSONDecodeError: "
            in refused.stdout), refused.stdout[-3000:]
    report.write_bytes(report_bytes)
    split.write_bytes(whole)  # put back: nothing to say
    assert "no longer holds" not in run_snakemake(workdir, config, "-n").stdout
    split.write_bytes(cut)
    # What makes the split again, or only shows or marks files, is not refused: -f with it a target, --forcerun of its
    # rule as Snakemake's parser reads it (clustered with -n), a summary.
    assert "output: resources/splits/target.csv" in run_snakemake(workdir, config, "-n", "-f", "./resources/splits/target.csv").stdout
    assert "output: resources/splits/target.csv" in run_snakemake(workdir, config, "-nRsplit").stdout
    summary = run_snakemake(workdir, config, "--summary")
    assert "resources/splits/target.csv" in summary.stdout and "no longer holds" not in summary.stdout
    # Another dataset.seed: the split is made again whatever it holds.
    tiny_config(workdir, dataset={"seed": 1})
    assert "output: resources/splits/target.csv" in run_snakemake(workdir, config, "-n").stdout
    config = tiny_config(workdir)
    ran = run_snakemake(workdir, config, "--forcerun", "resources/splits/target.csv", "--printshellcmds",
                        "resources/splits/target.csv")
    assert jobs_run(ran.stdout) == ["split"] and split.read_bytes() == whole, ran.stdout[-3000:]


def test_a_damaged_split_is_found_whatever_the_path_is_written_and_said_not_refused_from_python(tmp_path):
    """Found by review: `dataset.path` written with a trailing slash (the split's report records it plain) counted as
    another path, so the check was skipped and the run trained on the damaged split; `--touch -n` recorded the damaged
    file as sound, so a dry run turned the check off for good; and Snakemake started from Python (its API, a wrapper
    script) had the checks read the wrapper's own command line: the --forcerun the message asks for was refused, and
    the wrapper's argument `config.yaml` was refused as a target. From Python the run's options are not known, so a
    damaged file is said, not refused."""
    workdir = tmp_path / "run"
    config = tiny_config(workdir)
    run_snakemake(workdir, config, "--printshellcmds", "resources/splits/target.csv")
    split = workdir / "resources/splits/target.csv"
    whole = split.read_bytes()
    split.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 6])  # the last row cut short
    damaged = "resources/splits/target.csv no longer holds the split its job wrote"
    slash = tiny_config(workdir, "slash.yaml", dataset={"path": TINY_CONFIG["dataset"]["path"] + "/"})
    for configfile in (config, slash):
        refused = run_snakemake(workdir, configfile, "-n", check=False)
        assert refused.returncode != 0 and damaged in refused.stdout, refused.stdout[-3000:]
    assert run_snakemake(workdir, config, "-n", "--touch").returncode == 0  # a dry run marks nothing
    refused = run_snakemake(workdir, config, "-n", check=False)
    assert refused.returncode != 0 and damaged in refused.stdout, refused.stdout[-3000:]

    def from_python(*args):  # a wrapper script's own command line (`wrapper.py config.yaml`), Snakemake's given apart
        code = "import sys; from snakemake.cli import main; main(sys.argv[2:])"
        return subprocess.run([sys.executable, "-c", code, str(config), "--snakefile", str(REPO / "Snakefile"),
                               "--directory", str(workdir), "--cores", "1", "--configfile", str(config), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)

    planned = from_python("-n")
    assert planned.returncode == 0 and f"note: {damaged}" in planned.stdout, planned.stdout[-3000:]
    assert "started from Python" in planned.stdout and "output: resources/splits/target.csv" not in planned.stdout
    forced = from_python("-n", "--forcerun", "resources/splits/target.csv")
    assert forced.returncode == 0 and "output: resources/splits/target.csv" in forced.stdout, forced.stdout[-3000:]
    # A profile's forcerun (its settings are Snakemake's defaults) counts as the command line's; a listing of what
    # changed runs no job, and is not refused; a report's dry run that is refused says why in the report's note.
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text("forcerun: [split]\n")
    forced = run_snakemake(workdir, config, "-n", "--profile", str(profile))
    assert "output: resources/splits/target.csv" in forced.stdout, forced.stdout[-3000:]
    listed = run_snakemake(workdir, config, "--list-params-changes")
    assert damaged not in listed.stdout, listed.stdout[-3000:]
    report = run_snakemake(workdir, config, "--report", str(tmp_path / "report.html"), check=False)
    assert ("its dry run failed: a file made before was cut short or changed since its job wrote it: nothing ran"
            in report.stdout), report.stdout[-3000:]
    assert split.read_bytes() != whole  # nothing ran


def test_editing_a_csv_manifest_reruns_the_split_and_what_follows(tmp_path):
    made = make_images(tmp_path / "images", {"circle": 8, "square": 8})
    manifest = tmp_path / "images" / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p.parent.name}/{p.name},{name}\n"
                                                  for name, paths in made.items() for p in paths[:7]))
    config = own_images_config(tmp_path / "run", {"format": "csv", "path": str(manifest)})
    settle(tmp_path / "run", config)
    assert would_run(tmp_path / "run") == NOTHING
    time.sleep(0.05)
    with manifest.open("a") as handle:
        handle.write(f"circle/{made['circle'][7].name},circle\n")
    assert would_run(tmp_path / "run") == AFTER_SPLIT


def overwrite_in_place(image: Path, seed: int) -> None:
    """Other pixels under the same name: the file's size and modification time change, its folder's do not."""
    folder_mtime = image.parent.stat().st_mtime_ns
    time.sleep(0.05)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with image.open("r+b") as handle:  # the same file (inode) written again, as an editor saving in place
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        handle.write(buffer.getvalue())
        handle.truncate()
    assert image.parent.stat().st_mtime_ns == folder_mtime


@pytest.mark.parametrize("fmt", ["imagefolder", "csv"])
def test_an_image_overwritten_in_place_reruns_the_split_where_files_are_watched(tmp_path, fmt):
    """Overwritten under the same name, an image changes no folder: `dataset.watch: folders` (the default)
    sees nothing, as the README says; with `watch: files` the split and all after it rerun."""
    images = tmp_path / "images"
    made = make_images(images, {"circle": 8, "square": 8})
    path = images
    if fmt == "csv":
        path = images / "manifest.csv"
        path.write_text("path,label\n" + "".join(f"{p.parent.name}/{p.name},{name}\n"
                                                  for name, paths in made.items() for p in paths))
    workdir = tmp_path / "run"
    config = own_images_config(workdir, {"format": fmt, "path": str(path)})
    settle(workdir, config)
    overwrite_in_place(made["circle"][0], seed=11)
    assert would_run(workdir) == NOTHING
    own_images_config(workdir, {"format": fmt, "path": str(path), "watch": "files"})
    assert would_run(workdir) == AFTER_SPLIT  # a new digest: that image did change
    settle(workdir, config)
    assert would_run(workdir) == NOTHING
    overwrite_in_place(made["square"][3], seed=12)
    result = run_snakemake(workdir, config, "-n")
    assert Counter(jobs_run(result.stdout)) == AFTER_SPLIT, result.stdout[-3000:]
    assert "output: resources/splits/source.csv" not in result.stdout


@pytest.mark.parametrize("fmt, watch", [("imagefolder", "files"), ("csv", "files"), ("imagefolder", "folders")])
def test_an_image_overwritten_in_place_decodes_again_after_a_split_made_alone(tmp_path, fmt, watch):
    """The split made again alone (`snakemake resources/splits/target.csv`, as docs/reruns.md suggests) comes out the
    same file where an image was overwritten in place under its name: with `watch: files` the decode runs again all the
    same, and its row of that image holds the new pixels (read here with PIL); with `watch: folders` too, once a file
    made in its folder has the folder's files looked at (a Finder's .DS_Store). Turning `files` on or off for an
    ImageFolder decodes nothing again; the images of a CSV manifest listed in another order decode nothing again."""
    images = tmp_path / "images"
    made = make_images(images, {"circle": 6, "square": 6})
    path = images
    if fmt == "csv":
        path = images / "manifest.csv"
        rows = [f"{p.parent.name}/{p.name},{name}\n" for name, paths in made.items() for p in paths]
        path.write_text("path,label\n" + "".join(rows))
    workdir = tmp_path / "run"
    config = own_images_config(workdir, {"format": fmt, "path": str(path), "watch": watch})
    decoded = "resources/decoded/target/native/images.npy"
    run_snakemake(workdir, config, "-p", decoded)
    split = (workdir / "resources/splits/target.csv").read_bytes()
    edited = made["square"][2]
    overwrite_in_place(edited, seed=13)
    if watch == "folders":
        assert Counter(jobs_run(run_snakemake(workdir, config, "-n", decoded).stdout)) == NOTHING  # not seen yet
        (edited.parent / ".DS_Store").write_bytes(b"\0")
    run_snakemake(workdir, config, "-p", "resources/splits/target.csv")
    assert (workdir / "resources/splits/target.csv").read_bytes() == split  # the same paths and labels
    assert Counter(jobs_run(run_snakemake(workdir, config, "-n", decoded).stdout)) == Counter({"decode": 1})
    run_snakemake(workdir, config, "-p", decoded)
    table = pd.read_csv(workdir / "resources/splits/target.csv")
    row = [i for i, ref in enumerate(table["path"]) if Path(ref).resolve() == edited.resolve()]
    stored = np.load(workdir / decoded, mmap_mode="r")
    assert stored.shape[1:] == (32, 32, 3)  # stored at the images' own size: their very pixels
    assert len(row) == 1 and np.array_equal(stored[row[0]], np.asarray(Image.open(edited).convert("RGB")))
    if fmt == "imagefolder":  # the same digest either way
        other = own_images_config(workdir, {"format": fmt, "path": str(path),
                                            "watch": "folders" if watch == "files" else "files"})
        assert Counter(jobs_run(run_snakemake(workdir, other, "-n", decoded).stdout)) == NOTHING
    if fmt == "csv":
        path.write_text("path,label\n" + "".join(reversed(rows)))
        run_snakemake(workdir, config, "-p", "resources/splits/target.csv")
        assert Counter(jobs_run(run_snakemake(workdir, config, "-n", decoded).stdout)) == NOTHING


@pytest.mark.parametrize("listed", [False, True], ids=["folder", "csv list"])
def test_an_image_to_classify_overwritten_in_place_reruns_predict_where_files_are_watched(tiny_run_copy, listed):
    workdir, config = tiny_run_copy, tiny_run_copy / "config.yaml"
    made = make_images(workdir / "new_images" / "any", {"a": 2, "b": 2})
    images = "new_images"
    if listed:
        images = "new_images/list.csv"
        (workdir / images).write_text("path\n" + "".join(f"any/{p.parent.name}/{p.name}\n"
                                                         for paths in made.values() for p in paths))
    predict = {"images": images, "experiment": "finetune", "seed": 0}
    tiny_config(workdir, predict=predict)
    run_snakemake(workdir, config)
    assert would_run(workdir) == NOTHING
    overwrite_in_place(made["a"][1], seed=13)
    assert would_run(workdir) == NOTHING
    tiny_config(workdir, predict={**predict, "watch": "files"})
    run_snakemake(workdir, config)
    assert would_run(workdir) == NOTHING
    overwrite_in_place(made["b"][0], seed=14)
    assert would_run(workdir) == Counter({"predict": 1, "all": 1})


# --------------------------------------------------------------------------- code changes

@pytest.fixture
def code_copy(tiny_run_copy, tmp_path) -> Path:
    """A copy of the workflow's code that the copy of the tiny run counts as up to date.

    The copy's files have other paths, which Snakemake reads as a new set of inputs: `--touch`
    records them as the inputs the results were made with (it runs no job).
    """
    repo = tmp_path / "repo"
    copy_of_the_workflow(repo, with_config=True)
    run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml", "--touch", snakefile=repo / "Snakefile")
    assert would_run(tiny_run_copy, snakefile=repo / "Snakefile") == NOTHING
    return repo


def test_a_project_folder_moved_or_renamed_reruns_nothing(tiny_run_copy, tmp_path):
    """The workflow's code inside the folder it runs in, as a user's clone: renaming that folder is no change to any
    job (Snakemake records each job's set of input paths, and the scripts and modules are inputs)."""
    project = tiny_run_copy
    copy_of_the_workflow(project)  # not config/: the tiny run's config stands alone
    run_snakemake(project, project / "config.yaml", "--touch", snakefile=project / "Snakefile")
    assert would_run(project, snakefile=project / "Snakefile") == NOTHING
    moved = project.rename(tmp_path / "renamed")
    assert would_run(moved, snakefile=moved / "Snakefile") == NOTHING


def test_the_workflow_in_a_folder_whose_path_has_spaces_and_shell_characters_runs_its_jobs(tmp_path):
    """`~/My Projects/finetune`, run with --snakefile from another working directory: the rules' commands name the
    scripts (and the venv's python) by paths the shell must be given quoted."""
    snakefile = copy_of_the_workflow(tmp_path / "My Projects" / "fïne tune's ($HOME) & co")
    workdir = tmp_path / "run dir #1"
    ran = run_snakemake(workdir, tiny_config(workdir), "--printshellcmds", "resources/splits/target.csv",
                        snakefile=snakefile, check=False)
    assert ran.returncode == 0 and jobs_run(ran.stdout) == ["split"], ran.stdout[-3000:]
    assert (workdir / "resources/splits/target.csv").read_text().startswith("path,")


def test_the_workflow_in_a_folder_whose_path_has_a_colon_is_refused_at_start(tmp_path):
    """PYTHONPATH, how the jobs find this workflow's code, splits its entries at ':': the jobs would import another
    copy of the package, or none. Refused at start, naming the folder."""
    snakefile = copy_of_the_workflow(tmp_path / "runs:2026" / "finetune")
    refused = run_snakemake(tmp_path / "run", tiny_config(tmp_path / "run"), "-n", snakefile=snakefile, check=False)
    assert refused.returncode != 0
    assert f"this workflow's folder {snakefile.parent} has a ':' in its path" in refused.stdout, refused.stdout[-3000:]


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


@pytest.mark.parametrize("changed, reruns", [
    ("workflow/scripts/evaluate.py", AFTER_EVALUATE),
    ("src/finetune/metrics.py", AFTER_EVALUATE),
    ("src/finetune/training.py", {"pretrain": 1, "weights": 1, **AFTER_TRAIN}),
    ("src/finetune/configcheck.py", {}),  # the start checks and their messages: no job loads them
])
def test_editing_code_reruns_exactly_the_jobs_that_run_it_and_what_follows(tiny_run_copy, code_copy, changed, reruns):
    edit(code_copy / changed)
    assert would_run(tiny_run_copy, snakefile=code_copy / "Snakefile") == Counter(reruns)


def test_touching_code_without_changing_it_reruns_nothing(tiny_run_copy, code_copy):
    later = time.time() + 60
    for changed in ("workflow/scripts/evaluate.py", "src/finetune/metrics.py", "src/finetune/training.py"):
        os.utime(code_copy / changed, (later, later))
    assert would_run(tiny_run_copy, snakefile=code_copy / "Snakefile") == NOTHING


# --------------------------------------------------------------------------- the modules each rule declares

def module_name(name: str) -> str:
    """finetune -> __init__, finetune.metrics -> metrics: as the source files are named."""
    return "__init__" if name == "finetune" else name.removeprefix("finetune.")


def loaded_modules(folder: Path) -> dict[str, set[str]]:
    """{rule: finetune modules its jobs loaded}, from the <script>.<pid>.txt files jobs wrote there."""
    loaded: dict[str, set[str]] = {}
    for record in folder.glob("*.txt"):
        rule = record.name.split(".")[0]
        loaded.setdefault(rule, set()).update(module_name(n) for n in record.read_text().split())
    return loaded


def declared_modules(dry_run_output: str) -> dict[str, set[str]]:
    """{rule: finetune modules among its inputs}, from the `input:` lines of a dry run."""
    declared: dict[str, set[str]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            rule = stripped.split(" ", 1)[1][:-1]
        elif stripped.startswith("input: ") and rule is not None:
            files = [Path(f) for f in stripped[len("input: "):].split(", ")]
            declared.setdefault(rule, set()).update(f.stem for f in files if f.parent.name == "finetune")
    return declared


def test_each_rule_declares_exactly_the_modules_its_jobs_load(tiny_run_copy, tiny_run_modules, tmp_path):
    # The tiny run ran every rule but quantize_onnx and predict: run those two here.
    workdir, records = tiny_run_copy, tmp_path / "modules"
    make_images(workdir / "new_images", {"any": 2})
    tiny_config(workdir, predict={"images": "new_images"})
    targets = ["results/finetune/seed0/quantization.json", "results/predictions/finetune/seed0/predictions.csv"]
    # (A flag first: --configfile would take the targets for more config files.)
    ran = run_snakemake(workdir, workdir / "config.yaml", "--printshellcmds", *targets,
                        env={"FINETUNE_RECORD_MODULES": str(records)})
    assert Counter(jobs_run(ran.stdout)) == Counter({"quantize_onnx": 1, "predict": 1}), ran.stdout[-3000:]
    loaded = loaded_modules(tiny_run_modules) | loaded_modules(records)

    dry = run_snakemake(workdir, workdir / "config.yaml", "-n", "--forceall", "all", *targets)
    declared = declared_modules(dry.stdout)
    rules = {"split", "decode", "pretrain", "weights", "train", "evaluate", "export_onnx", "quantize_onnx", "predict",
             "summary"}
    assert set(loaded) == rules, f"jobs recorded for {sorted(loaded)}"
    for rule in sorted(rules):
        missing, extra = loaded[rule] - declared.get(rule, set()), declared.get(rule, set()) - loaded[rule]
        assert not missing, f"rule {rule} loads {sorted(missing)} but does not list them (RULE_MODULES, common.smk)"
        assert not extra, f"rule {rule} lists {sorted(extra)} but its jobs do not load them"


# --------------------------------------------------------------------------- the other keys' rows in docs/reruns.md

def test_a_seed_added_runs_that_seed_of_every_experiment_alone(tiny_run_copy):
    tiny_config(tiny_run_copy, seeds=[0, 1])
    assert would_run(tiny_run_copy) == AFTER_TRAIN


def test_a_run_at_another_image_size_decodes_the_target_at_it_and_reruns_that_run_alone(tiny_run_copy):
    """The other size's decoded file stays, read by the runs still at it: no decode reruns, one is added."""
    tiny_config(tiny_run_copy, experiments={"finetune": {"image_size": 40}})
    assert would_run(tiny_run_copy) == Counter({"decode": 1, "train": 1, "evaluate": 1, "export_onnx": 1,
                                                "summary": 1, "all": 1})


def test_the_source_image_size_reruns_pretraining_and_every_run_the_scratch_control_included(tiny_run_copy):
    """The runs with no image_size of their own take the weights' (pretrain.image_size): the target is decoded at the
    new size too, and the scratch control reruns (its preprocessing is the source's, at that size)."""
    tiny_config(tiny_run_copy, pretrain={"image_size": 28})
    assert would_run(tiny_run_copy) == Counter({"decode": 2, "pretrain": 1, "weights": 1, **AFTER_TRAIN})


def test_what_evaluate_computes_reruns_the_evaluate_jobs_alone(tiny_run_copy):
    for evaluate in ({"calibration_bins": 5}, {"tta": "hflip"}, {"onnx": True}):
        tiny_config(tiny_run_copy, evaluate=evaluate)
        assert would_run(tiny_run_copy) == AFTER_EVALUATE, evaluate


def test_where_and_how_deterministically_the_runs_train_reruns_every_run(tiny_run_copy):
    for train in ({"device": "auto"}, {"deterministic": True}):
        tiny_config(tiny_run_copy, train=train)
        assert would_run(tiny_run_copy) == AFTER_TRAIN, train


def test_the_lr_finder_settings_rerun_nothing_where_no_run_has_lr_auto(tiny_run_copy):
    tiny_config(tiny_run_copy, lr_find={"steps": 20, "max_lr": 1.0})
    assert would_run(tiny_run_copy) == NOTHING


def test_what_predict_writes_reruns_the_predict_job_alone(tiny_run_copy):
    """top_k and the run predicted with rerun predict and no training; int8 (with export.quantize, which quantizes
    every run's model) adds the quantize_onnx jobs.
    predict.images written another way reruns predict too (unlike dataset.path): predictions.csv records the images'
    paths as written."""
    make_images(tiny_run_copy / "inbox" / "any", {"a": 2})
    predict = {"images": "inbox", "experiment": "finetune", "seed": 0}
    tiny_config(tiny_run_copy, predict=predict)
    run_snakemake(tiny_run_copy, tiny_run_copy / "config.yaml")
    for change in ({"top_k": 1}, {"experiment": "scratch"}, {"images": "./inbox/"}):
        tiny_config(tiny_run_copy, predict={**predict, **change})
        assert would_run(tiny_run_copy) == Counter({"predict": 1, "all": 1}), change
    tiny_config(tiny_run_copy, predict={**predict, "model": "int8"}, export={"quantize": True})
    assert would_run(tiny_run_copy) == Counter({"quantize_onnx": EXPERIMENTS, "predict": 1, "all": 1})
