"""Sweeps (issue 16): an experiment's `sweep:` becomes one run per combination, each named stably,
and every wrong sweep is refused at start with its key path."""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from PIL import Image

from helpers import REPO, TINY_CONFIG, deep_update, jobs_run, run_snakemake, tiny_config

from finetune.configcheck import config_problems
from finetune.sweeps import expand, value_text

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SWEEP = {"lr": [1.0e-3, 3.0e-4], "backbone_lr_factor": [0.1, 0.3, 1.0]}


def with_experiments(experiments: dict) -> dict:
    return deep_update({k: v for k, v in TINY_CONFIG.items() if k != "experiments"}, {"experiments": experiments})


# --------------------------------------------------------------------------- names and expansion

@pytest.mark.parametrize("value, text", [(3.0e-4, "3e-4"), (1.0e-3, "1e-3"), (0.3, "0.3"), (1.0, "1"), (0.25, "0.25"),
                                         (1500.0, "1500"), (2.5e-5, "2.5e-5"), (7, "7"), (True, "true"), (None, "none"),
                                         ("feature_extract", "feature_extract"), (0.01, "0.01"), (1.0e5, "1e5")])
def test_a_value_reads_back_from_its_name(value, text):
    """A float is named by the shorter of its plain and scientific texts, the plain one where they are as long
    (0.01, not 1e-2): a run's name is its results folder, so this rule may never change under a user's runs."""
    assert value_text(value) == text
    if isinstance(value, float):
        assert float(text) == value


def test_a_sweep_expands_into_every_combination_with_stable_unique_names():
    experiments = {"finetune": {"strategy": "finetune", "sweep": SWEEP}, "scratch": {"pretrained": False}}
    runs, groups = expand(experiments)
    # Independently: the product of the lists, named key+value in the order written.
    expected = {}
    for lr, factor in itertools.product(SWEEP["lr"], SWEEP["backbone_lr_factor"]):
        name = f"finetune-lr{value_text(lr)}-backbone_lr_factor{value_text(factor)}"
        expected[name] = {"strategy": "finetune", "lr": lr, "backbone_lr_factor": factor}
    expected["scratch"] = {"pretrained": False}
    assert runs == expected
    assert "finetune-lr3e-4-backbone_lr_factor0.3" in runs
    assert groups == {name: ("scratch" if name == "scratch" else "finetune") for name in expected}
    assert expand(experiments) == (runs, groups)  # the same config, the same names
    assert all(re.fullmatch(r"[A-Za-z0-9_.+-]+", name) for name in runs)
    assert experiments["finetune"]["sweep"] == SWEEP  # the config as written is left as it was


# --------------------------------------------------------------------------- refused, naming the key path

BAD_SWEEPS = {
    "unknown_key": ({"lrr": [0.1]}, "experiments.finetune.sweep.lrr: unknown key (did you mean lr?)"),
    "empty_list": ({"lr": []}, "experiments.finetune.sweep.lr: needs at least 1 item(s), has 0"),
    "not_a_list": ({"lr": 0.1}, "experiments.finetune.sweep.lr: 0.1 is not a list"),
    "wrong_type": ({"lr": [0.1, "fast"]}, "experiments.finetune.sweep.lr.1: 'fast' is not a number"),
    "out_of_range": ({"epochs": [2, 0]}, "experiments.finetune.sweep.epochs.1: 0 is too small: it must be >= 1"),
    "bad_enum": ({"optimizer": ["adamw", "adam"]}, "experiments.finetune.sweep.optimizer.1: 'adam' is not allowed"),
    "set_twice": ({"strategy": ["finetune", "gradual"]},
                  "experiments.finetune.strategy: is also swept (experiments.finetune.sweep.strategy); set it in one place"),
    "metric": ({"metric": ["val_accuracy", "val_loss"]}, "experiments.finetune.sweep.metric: the runs of a sweep are compared"),
    "empty_sweep": ({}, "experiments.finetune.sweep: needs at least 1 entry(ies): write one, or leave the key out for "
                        "none (the experiment trains once)"),
    # `sweep:` with nothing after it: the advice was to write `sweep: {}`, which is refused in turn
    "null_sweep": (None, "experiments.finetune.sweep: empty (YAML reads a key with nothing after it as null), and it must "
                         "be a mapping (key: value): leave `sweep:` out for none (the experiment trains once)"),
    "lbfgs_in_a_run": ({"optimizer": ["adamw", "lbfgs"]},
                       "experiments.finetune (its sweep's run(s) finetune-optimizerlbfgs): optimizer lbfgs"),
}


@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_a_bad_sweep_is_refused_naming_its_key_path(case):
    sweep, expected = BAD_SWEEPS[case]
    problems = config_problems(with_experiments({"finetune": {"strategy": "finetune", "sweep": sweep}}), SCHEMA)
    assert any(p.startswith(expected) for p in problems), problems


def test_an_unknown_sweep_key_lists_as_allowed_only_the_keys_a_sweep_may_vary():
    """`sweep: {lrr: [0.1]}` listed `metric` among the allowed keys, which a sweep then refuses (NOT_SWEPT); every
    other train key of the schema is listed."""
    from finetune.sweeps import NOT_SWEPT

    problems = config_problems(with_experiments({"finetune": {"sweep": {"lrr": [0.1]}}}), SCHEMA)
    line = next(p for p in problems if p.startswith("experiments.finetune.sweep.lrr: unknown key"))
    listed = line.split("; allowed keys: ")[1].split(", ")
    schema = yaml.safe_load(SCHEMA.read_text())
    train = schema["properties"]["train"]
    train = schema["$defs"][train["$ref"].split("/")[-1]] if "$ref" in train else train
    train_keys = set(train["properties"])
    assert set(NOT_SWEPT) == {"metric"} and set(listed) == train_keys - {"metric"}, (line, train_keys)


def test_a_problem_every_run_of_a_sweep_shares_is_said_once_under_the_experiment_s_key_path():
    """`devices: 3` with a global batch of 16 in a sweep of 2 x 2 runs: the problem was said four times, each under a
    generated run name (experiments.ft-lr1e-3-strategyfinetune), which is no key of the config."""
    config = with_experiments({"ft": {"device": "cpu", "devices": 3, "batch_size": 16,
                                      "sweep": {"lr": [1e-3, 3e-3], "bn": ["frozen", "auto"]}}})
    problems = config_problems(config, SCHEMA)
    divide = [p for p in problems if "does not divide among 3 processes" in p]
    assert len(divide) == 1 and divide[0].startswith("experiments.ft (every run of its sweep): batch_size 16 "), problems
    assert not any(p.startswith("experiments.ft-") for p in problems), problems


def test_values_that_all_train_the_same_run_are_said_once():
    """`warmup_epochs: [0, 1, 2]` with schedule onecycle (which warms up itself): three names for one run, said once,
    by its first two runs, not once for each pair; and `bn: [frozen, train]` beside `lr: [0.1, 0.01]` (two pairs of
    runs, one at each lr, differing in bn alone) once, by the first pair."""
    config = with_experiments({"w": {"schedule": "onecycle", "sweep": {"warmup_epochs": [0, 1, 2]}}})
    assert config_problems(config, SCHEMA) == [
        "experiments.w.sweep.warmup_epochs: runs w-warmup_epochs0 and w-warmup_epochs1 would train the same run "
        "(warmup_epochs: schedule onecycle warms up over its first 30% of steps itself); sweep only values that change "
        "the run"]
    config = with_experiments({"w": {"strategy": "feature_extract", "sweep": {"bn": ["frozen", "train"], "lr": [0.1, 0.01]}}})
    assert config_problems(config, SCHEMA) == [
        "experiments.w.sweep.bn: runs w-bnfrozen-lr0.1 and w-bntrain-lr0.1 would train the same run (bn: strategy "
        "feature_extract keeps the whole backbone in eval mode: its BatchNorm layers never train); sweep only values "
        "that change the run"]


def test_a_sweep_run_s_problem_names_the_config_file_that_writes_its_experiment(tmp_path):
    """With several config files each problem names the file its key comes from; a sweep run's problem
    (`experiments.fx (its sweep's run(s) fx-mixup_alpha0.2): ...`) was left without it: the run name's dot was read
    as a key path."""
    base = tiny_config(tmp_path)
    mine = tmp_path / "sweep.yaml"
    mine.write_text("experiments:\n  fx: {strategy: feature_extract, optimizer: adamw, sweep: {mixup_alpha: [0, 0.2]}}\n")
    result = run_snakemake(tmp_path, base, str(mine), "-n", check=False, timeout=120)
    assert result.returncode != 0
    line = next(line for line in result.stdout.splitlines() if "experiments.fx (its sweep's run(s) fx-mixup_alpha0.2)" in line)
    assert line.rstrip().endswith(f"(set in {mine})"), line
    assert not (tmp_path / "results").exists()


def test_duplicate_values_and_colliding_names_are_refused():
    twice = config_problems(with_experiments({"finetune": {"sweep": {"lr": [0.1, 0.1]}}}), SCHEMA)
    assert any(p.startswith("experiments.finetune.sweep.lr: ") and "non-unique" in p for p in twice), twice
    clash = {"finetune": {"sweep": {"epochs": [2, 3]}}, "finetune-epochs2": {"lr": 0.01}}
    problems = config_problems(with_experiments(clash), SCHEMA)
    assert problems == ["experiments.finetune-epochs2: run name 'finetune-epochs2' is also a run of experiments.finetune"]


def test_run_names_the_file_system_or_snakemake_cannot_take_are_refused_at_start(tmp_path):
    """Names that passed the schema's pattern and then failed: `a` beside `A` (one folder where the file system
    ignores case, macOS's and Windows'), a 230-character name or a sweep's run name grown past what a file name may
    hold (an OSError traceback: File name too long), and 20 x's (Snakemake's PeriodicWildcardError). Each is
    refused before any job, naming the experiment (once, where a sweep's two runs are cut short alike); a name of 100
    characters and the sweep's other runs pass."""
    long = "n" + "0123456789" * 23
    experiments = {"a": {}, "A": {}, long: {}, "x" * 20: {}, ("ok-" + "0123456789" * 10)[:100]: {},
                   "sweep" + "s" * 80: {"sweep": {"lr": [0.1, 0.2], "backbone_lr_factor": [0.5]}}}
    config = tiny_config(tmp_path, replace={"experiments": experiments})
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0
    problems = [line.strip() for line in result.stdout.splitlines() if line.startswith("  experiments.")]
    assert problems == [
        "experiments.A: run name 'A' differs only in letter case from 'a', and a file system that ignores case "
        "(macOS's, Windows') holds both in one folder: name the experiment otherwise",
        f"experiments.{long}: run name {long[:40]}... is 231 characters long, at most 100: it names folders and "
        "files, whose names the file system limits; shorten the experiment's name",
        f"experiments.{'x' * 20}: run name '{'x' * 20}' ends in 'x' repeated 20 times, which Snakemake refuses "
        "(PeriodicWildcardError: it takes such a name for a rule that makes its own input): name it otherwise",
        f"experiments.sweep{'s' * 80}.sweep: run name sweep{'s' * 35}... is 113 characters long, at most 100: it "
        "names folders and files, whose names the file system limits; shorten the experiment's name (a sweep adds "
        "its keys and values)"], result.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_a_good_sweep_passes():
    assert config_problems(with_experiments({"finetune": {"strategy": "finetune", "sweep": SWEEP}}), SCHEMA) == []


def test_snakemake_refuses_a_bad_sweep_at_start(tmp_path):
    config = tiny_config(tmp_path, replace={"experiments": {"finetune": {"lr": 0.1, "sweep": {"lr": [0.2], "epoch": [1]}}}})
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0
    assert "experiments.finetune.sweep.epoch: unknown key (did you mean epochs?)" in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_a_dry_run_has_train_evaluate_export_per_combination_and_seed(tmp_path):
    config = tiny_config(tmp_path, replace={"experiments": {"finetune": {"sweep": SWEEP}}, "seeds": [0, 1]})
    result = run_snakemake(tmp_path, config, "-n")
    runs = [f"finetune-lr{value_text(a)}-backbone_lr_factor{value_text(b)}/seed{s}"
            for a, b, s in itertools.product(SWEEP["lr"], SWEEP["backbone_lr_factor"], (0, 1))]
    jobs = jobs_run(result.stdout)
    for rule in ("train", "evaluate", "export_onnx"):
        assert jobs.count(rule) == len(runs), rule
    for run in runs:
        assert f"results/{run}/model.pt" in result.stdout, run


def test_a_target_under_no_experiment_of_the_config_says_which_there_are(tmp_path):
    """Snakemake says only "No rule to produce" a target under results/<name>/ (or results/lr_find/<name>/) whose name
    is no run of the config: a note at start names the experiments (the closest one first, one written in another case
    before any), or a sweep's runs where <name> is a sweep."""
    experiments = {"finetune": {"sweep": {"lr": SWEEP["lr"]}}, "scratch": {"pretrained": False}}
    config = tiny_config(tmp_path, replace={"experiments": experiments})
    result = run_snakemake(tmp_path, config, "-n", "results/scrach/seed0/metrics.json", check=False, timeout=120)
    assert result.returncode != 0
    runs = [f"finetune-lr{value_text(lr)}" for lr in SWEEP["lr"]]
    assert ("note: results/scrach/seed0/metrics.json: no experiment named 'scrach' in this config (experiments: "
            f"{', '.join(runs)}, scratch); did you mean results/scratch/...?") in result.stdout, result.stdout[-3000:]
    result = run_snakemake(tmp_path, config, "-n", "results/finetune/seed0/model.pt", check=False, timeout=120)
    assert result.returncode != 0
    assert (f"note: results/finetune/seed0/model.pt: finetune is a sweep; its runs are results/<run>/ for the runs "
            f"{', '.join(runs)}") in result.stdout, result.stdout[-3000:]
    # the same mistakes in the run's folder of the learning-rate finder's curves; a name written in another case
    for target, line in (
            ("results/lr_find/finetune/lr_find.png", "finetune is a sweep; its runs are results/lr_find/<run>/ for the "
                                                     f"runs {', '.join(runs)}"),
            ("results/lr_find/Scratch/lr_find.png", "no experiment named 'Scratch' in this config (experiments: "
                                                    f"{', '.join(runs)}, scratch); did you mean results/lr_find/scratch/...?"),
            ("results/SCRATCH/seed0/metrics.json", "no experiment named 'SCRATCH' in this config (experiments: "
                                                   f"{', '.join(runs)}, scratch); did you mean results/scratch/...?")):
        result = run_snakemake(tmp_path, config, "-n", target, check=False, timeout=120)
        assert result.returncode != 0 and f"note: {target}: {line}" in result.stdout, result.stdout[-3000:]
    for target in (f"results/{runs[1]}/seed0/model.pt", f"results/lr_find/{runs[1]}/lr_find.png"):
        result = run_snakemake(tmp_path, config, "-n", target, timeout=120)
        assert "note: results/" not in result.stdout and target in result.stdout, result.stdout[-3000:]
    # the selected run's predictions: results/predictions/selected/ is the workflow's own folder, not a run's
    (tmp_path / "new").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "new" / "photo.png")
    predicting = tiny_config(tmp_path, "predicting.yaml", predict={"images": "new", "experiment": None, "seed": None},
                             replace={"experiments": experiments})
    target = "results/predictions/selected/predictions.csv"
    result = run_snakemake(tmp_path, predicting, "-n", target, timeout=120)
    assert "note: results/" not in result.stdout and "rule predict_selected" in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "results").exists()


def test_predict_left_to_selection_refuses_runs_with_different_metrics(tmp_path):
    (tmp_path / "new").mkdir()
    config = tiny_config(tmp_path, predict={"images": "new"},
                         replace={"experiments": {"a": {}, "b": {"metric": "val_loss"}}})
    result = run_snakemake(tmp_path, config, "-n", check=False, timeout=120)
    assert result.returncode != 0
    assert "predict.experiment: the runs to select among have different train.metric (a: val_accuracy, b: val_loss)" \
        in result.stdout, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_a_combination_that_diverges_with_on_divergence_stop_keeps_its_epochs_and_the_sweep_completes(tmp_path):
    """gradual: epoch 1 trains the head; epoch 2 unfreezes the backbone, at lr x 1e33 in one combination, which
    diverges. With on_divergence: stop the whole workflow completes: that run keeps its epoch-1 model, which
    evaluate scores as this test does from its model.pt, and the leaderboard says it diverged."""
    import json

    import pandas as pd

    from recompute import held_out, run_logits

    experiment = {"strategy": "gradual", "unfreeze_epoch": 1, "epochs": 2, "on_divergence": "stop",
                  "sweep": {"backbone_lr_factor": [1.0, 1.0e33]}}
    config = tiny_config(tmp_path, replace={"experiments": {"gradual": experiment}})
    run_snakemake(tmp_path, config)
    summary = pd.read_csv(tmp_path / "results" / "summary.csv").set_index("experiment")
    assert summary["diverged_seeds"].to_dict() == {"gradual-backbone_lr_factor1": 0, "gradual-backbone_lr_factor1e33": 1}
    assert summary["swept_backbone_lr_factor"].to_dict() == {  # the config's values, a column for the swept key
        f"gradual-backbone_lr_factor{name}": value for name, value in zip(("1", "1e33"), experiment["sweep"]["backbone_lr_factor"])}
    assert summary.loc["gradual-backbone_lr_factor1e33", "epochs"] == 1
    assert summary.loc["gradual-backbone_lr_factor1", "epochs"] == 2
    markdown = (tmp_path / "results" / "summary.md").read_text().splitlines()
    flagged = [line for line in markdown if "(diverged: 1 of 1 seeds: 0)" in line]
    assert len(flagged) == 1 and "gradual-backbone_lr_factor1e33" in flagged[0]
    run = tmp_path / "results" / "gradual-backbone_lr_factor1e33" / "seed0"
    info = json.loads((run / "train_info.json").read_text())
    assert re.fullmatch(r"loss became (nan|inf|-inf) at epoch 2, step \d+", info["diverged"]), info
    test = held_out(tmp_path)
    predicted = run_logits(run, test["path"]).argmax(1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float((predicted == test["label"].to_numpy()).mean()), abs=1e-12)
    assert json.loads((run / "onnx_parity.json").read_text())["passed"]


def test_a_sweep_of_image_size_has_its_column_and_a_run_file_edited_by_hand_is_named(tmp_path):
    """image_size (and pretrained) are train keys a sweep may vary that train_info.json records beside the options, not
    in them: summary.csv had no swept_image_size column (docs/outputs.md: one per key the runs differ in). A word is
    written as it is (device cpu, not "cpu"). Then a key removed from a run's train_info.json by hand: the summary
    stopped on a KeyError naming no file; now on a line naming the run folder and the key."""
    import json

    import pandas as pd

    experiment = {"strategy": "feature_extract", "sweep": {"image_size": [32, 28], "device": ["cpu", "auto"]}}
    config = tiny_config(tmp_path, replace={"experiments": {"x": experiment}})
    run_snakemake(tmp_path, config, "-p", "results/summary.csv")
    summary = pd.read_csv(tmp_path / "results" / "summary.csv", dtype={"swept_device": str}).set_index("experiment")
    runs = {f"x-image_size{size}-device{device}": (size, device)
            for size in experiment["sweep"]["image_size"] for device in experiment["sweep"]["device"]}
    assert summary["swept_image_size"].to_dict() == {run: size for run, (size, _) in runs.items()}
    assert summary["swept_device"].to_dict() == {run: device for run, (_, device) in runs.items()}
    info = tmp_path / "results" / "x-image_size28-devicecpu" / "seed0" / "train_info.json"
    written = json.loads(info.read_text())
    info.write_text(json.dumps({key: value for key, value in written.items() if key != "best_val_accuracy"}))
    result = run_snakemake(tmp_path, config, "--forcerun", "summary", "results/summary.csv", check=False)
    log = (tmp_path / "results" / "logs" / "summary.log").read_text()
    assert result.returncode != 0 and "Traceback" not in log, log[-3000:]
    assert ("error: results/x-image_size28-devicecpu/seed0: train_info.json, metrics.json and history.csv do not hold "
            "what the run's jobs write (KeyError: 'best_val_accuracy')") in log, log[-3000:]
