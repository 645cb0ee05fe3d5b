"""The learning-rate range test (finetune.lrfind) on a tiny synthetic problem, on train's own loop."""

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from finetune.configcheck import config_problems
from finetune.errors import ConfigError
from finetune.lrfind import find_lr
from finetune.options import name_keys
from finetune.stages import resolve_lr
from finetune.tensors import Data, Preprocessing
from finetune.training import TrainOptions
from helpers import REPO, TINY_CONFIG, deep_update, jobs_run, run_snakemake, tiny_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

PLAIN = Preprocessing(8, 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # normalised input = pixel / 255
BETA = 0.98
FACTOR = 4.0


class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Linear(3, 8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.features(x.mean(dim=(2, 3)))))


def synthetic(n=600, classes=3, seed=0):
    """Images whose colour channel says the label, with noise: learnable, not trivially."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.randint(0, 120, (n, 3, 8, 8), generator=g)
    images[torch.arange(n), labels] += 100
    return Data(images.to(torch.uint8), labels)


def run_range_test(max_lr, steps=150):
    torch.manual_seed(0)
    opts = TrainOptions.from_dict({"batch_size": 32, "device": "cpu", "optimizer": "sgd", "momentum": 0.9})
    return find_lr(TinyNet(), synthetic(), synthetic(90, seed=1), PLAIN, opts, num_classes=3, min_lr=1e-4,
                   max_lr=max_lr, steps=steps, smoothing=BETA, diverge_factor=FACTOR, log=lambda _: None)


def recompute_smoothing(losses):
    """Bias-corrected exponential moving average, written out again here from the recorded raw losses."""
    out, avg = [], 0.0
    for step, loss in enumerate(losses, start=1):
        avg = BETA * avg + (1 - BETA) * loss
        out.append(avg / (1 - BETA**step))
    return out


def test_suggested_lr_lies_where_the_smoothed_loss_falls_and_the_curve_stops_after_divergence():
    curve = run_range_test(max_lr=1e4)
    smoothed = recompute_smoothing(curve.loss)
    assert all(math.isclose(a, b, rel_tol=1e-9) or not math.isfinite(a) for a, b in zip(smoothed, curve.smoothed))
    falling = [curve.lr[i] for i in range(1, len(smoothed)) if smoothed[i] < smoothed[i - 1]]
    assert curve.method == "steepest" and curve.suggestion in falling
    assert curve.lr.index(curve.suggestion) <= min(range(len(smoothed)), key=smoothed.__getitem__)
    # it fell overall from the first step to the suggestion: the suggestion is not noise before a rise
    assert smoothed[curve.lr.index(curve.suggestion)] < smoothed[0]
    # divergence: the run ends at the first step whose smoothed loss passes FACTOR x the minimum so far
    passed = [i for i in range(len(smoothed))
              if not math.isfinite(smoothed[i]) or smoothed[i] > FACTOR * min(smoothed[: i + 1])]
    assert curve.diverged and passed and len(curve.loss) == passed[0] + 1 < 150


def test_lrs_rise_exponentially_from_min_lr():
    curve = run_range_test(max_lr=1e-1, steps=40)
    ratios = [b / a for a, b in zip(curve.lr, curve.lr[1:])]
    assert math.isclose(curve.lr[0], 1e-4) and all(math.isclose(r, ratios[0]) for r in ratios)
    assert not curve.diverged and len(curve.loss) == 40 and math.isclose(curve.lr[-1], 1e-1)


def test_a_range_that_starts_above_every_lr_that_trains_is_refused_not_suggested_below_it():
    """lr_find.min_lr 100: the loss is lowest at the first step and diverges. The suggestion was min_loss/10, an lr the
    test never tried (10), and train then ended at chance accuracy without a word: refused, naming the key."""
    torch.manual_seed(0)
    opts = TrainOptions.from_dict({"batch_size": 32, "device": "cpu", "optimizer": "sgd", "momentum": 0.9})
    with pytest.raises(ConfigError, match=r"lowest at the first lr tried, 100 \(lr_find.min_lr: 100\).*"
                                          r"Lower lr_find.min_lr \(to 0.1, say\)"):
        find_lr(TinyNet(), synthetic(), synthetic(90, seed=1), PLAIN, opts, num_classes=3, min_lr=100, max_lr=1e5,
                steps=5, smoothing=BETA, diverge_factor=FACTOR, log=lambda _: None)


def test_gradual_s_frozen_keys_reach_the_range_test_only_where_its_first_epoch_trains_them():
    """With gradual the range test trains what the first epoch trains: the head alone from unfreeze_epoch 1 on
    (backbone_lr_factor etc. then do not change it, and are given at their defaults), everything with 0."""
    from finetune.configcheck import range_test_options, train_defaults

    defaults = train_defaults(SCHEMA)
    run = {**defaults, "strategy": "gradual", "backbone_lr_factor": 0.3, "layer_decay": 0.7, "epochs": 5}
    later = range_test_options({**run, "unfreeze_epoch": 2}, defaults)
    assert (later["backbone_lr_factor"], later["layer_decay"], later["epochs"]) == (
        defaults["backbone_lr_factor"], defaults["layer_decay"], defaults["epochs"])
    at_once = range_test_options({**run, "unfreeze_epoch": 0}, defaults)
    assert (at_once["backbone_lr_factor"], at_once["layer_decay"], at_once["unfreeze_epoch"]) == (0.3, 0.7, 0)


def test_a_fall_among_the_first_steps_left_out_gives_an_lr_that_was_tried():
    """The first 10 steps are left out of the steepest-descent search. A loss that fell only in them (lowest at step
    5, rising after) was suggested a tenth of step 10's lr, below the range, and then refused as a range that never
    fell: the suggestion is the steepest fall among those steps instead."""
    from finetune.lrfind import range_lrs, suggest

    lrs = range_lrs(1e-7, 10, 200)
    smoothed = [5.0, 4.5, 4.0, 3.5, 3.2, 3.1] + [3.1 + 0.01 * i for i in range(1, 20)]
    lr, method = suggest(lrs[: len(smoothed)], smoothed)
    drops = [smoothed[i] - smoothed[i - 1] for i in range(1, 6)]
    assert method == "steepest" and lr == lrs[1 + drops.index(min(drops))] and lr >= lrs[0]
    # lowest at the very first step: the only case left below the range (find_lr refuses it, test above)
    assert suggest(lrs[:20], [3.0 + 0.01 * i for i in range(20)])[0] < lrs[0]


@pytest.mark.parametrize("steps, skipped", [(11, False), (12, False), (13, True), (20, True)])
def test_the_first_steps_are_left_out_only_where_three_steps_are_left_after_them(steps, skipped):
    """A falling curve whose steepest fall is at step 3 (of 0..): with 13 steps and more the first 10 are left out
    and the suggestion is the steepest fall after them; a curve too short to leave 3 after them (11 or 12 steps) is
    searched whole."""
    from finetune.lrfind import range_lrs, suggest

    lrs = range_lrs(1e-5, 1.0, steps)
    smoothed = [5.0 - 0.1 * i - (1.0 if i >= 3 else 0.0) for i in range(steps)]  # -0.1 a step, -1.1 into step 3
    drops = {i: smoothed[i] - smoothed[i - 1] for i in range(1, steps)}
    first = 11 if skipped else 1  # the first fall the search may take: into the step after the last one left out
    expected = min((drop, i) for i, drop in drops.items() if i >= first)[1]
    assert suggest(lrs, smoothed) == (lrs[expected], "steepest")
    assert (expected == 3) == (not skipped)


def test_the_range_test_stops_past_its_factor_times_the_lowest_smoothed_loss_so_far_not_the_first():
    from finetune.lrfind import _diverges

    assert _diverges([5.0, 1.0, 4.5], FACTOR)  # 4.5 > 4 x 1.0, though below 4 x 5.0
    assert not _diverges([5.0, 1.0, 3.9], FACTOR) and not _diverges([5.0, 6.0], FACTOR)
    assert _diverges([5.0, 1.0, math.nan], FACTOR) and _diverges([5.0, math.inf], FACTOR)


def test_each_parameter_group_steps_at_its_share_of_the_range_s_lr():
    """backbone_lr_factor 1e-9: the range test raises the head's lr and the backbone's at a billionth of it, as
    train would (each group at lr x lr_scale): over 20 steps the head moves, the backbone all but stays."""
    torch.manual_seed(0)
    model = TinyNet()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opts = TrainOptions.from_dict({"batch_size": 32, "device": "cpu", "optimizer": "sgd", "momentum": 0.0,
                                   "weight_decay": 0.0, "backbone_lr_factor": 1e-9})
    find_lr(model, synthetic(), synthetic(90, seed=1), PLAIN, opts, num_classes=3, min_lr=1e-3, max_lr=1.0, steps=20,
            smoothing=BETA, diverge_factor=1e9, log=lambda _: None)
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    assert moved["fc.weight"] > 1e-3 and moved["features.weight"] < 1e-6, moved


# --------------------------------------------------------------------------- lr: auto in the workflow

def config_with(**overrides):
    return deep_update(TINY_CONFIG, overrides)


AUTO_REFUSED = {
    "lbfgs_in_the_experiment": (
        {"experiments": {"probe": {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": "auto"}}},
        "experiments.probe.lr: auto needs a learning rate to find"),
    "lbfgs_with_lr_auto_in_train": (
        {"train": {"lr": "auto"}, "experiments": {"probe": {"strategy": "feature_extract", "optimizer": "lbfgs"}}},
        "train.lr: auto needs a learning rate to find"),
    "swept": ({"experiments": {"grid": {"sweep": {"lr": ["auto", 0.001]}}}},
              "experiments.grid.sweep.lr: auto cannot be swept"),
    "pretraining": ({"pretrain": {"train": {"lr": "auto"}}}, "pretrain.train.lr: auto is not available"),
    "other_text": ({"train": {"lr": "fast"}}, "train.lr: 'fast' is not a number or auto"),
}


@pytest.mark.parametrize("case", list(AUTO_REFUSED))
def test_lr_auto_is_refused_where_it_cannot_work_naming_the_key(case):
    overrides, expected = AUTO_REFUSED[case]
    problems = config_problems(config_with(**overrides), SCHEMA)
    assert any(p.startswith(expected) for p in problems), problems


def test_lr_auto_in_an_experiment_or_in_train_is_accepted():
    assert config_problems(config_with(experiments={"finetune": {"lr": "auto"}}), SCHEMA) == []
    assert config_problems(config_with(train={"lr": "auto"}), SCHEMA) == []


def shell_commands(output: str) -> list[list[str]]:
    """The words of every job's command a dry run printed (python, script, options...), up to the log redirect (and
    after the `exec` each rule runs its script with)."""
    prefix = "Shell command: "
    commands = [shlex.split(line[len(prefix):].split(" > ")[0]) for line in output.splitlines()
                if line.startswith(prefix) and line != prefix + "None"]
    return [words[1:] if words[0] == "exec" else words for words in commands]


def command_of(commands: list[list[str]], script: str, option: str, value: str) -> list[str]:
    found = [c for c in commands if Path(c[1]).name == script and value in c[c.index(option) + 1:c.index(option) + 2]]
    assert len(found) == 1, (script, option, value, commands)
    return found[0]


def test_a_dry_run_with_lr_auto_runs_lr_find_and_train_reads_its_suggestion(tmp_path):
    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto"}, "fixed": {"lr": 0.01}}})
    commands = shell_commands(run_snakemake(tmp_path, configfile, "-n", "--printshellcmds").stdout)
    suggestion = "results/lr_find/auto/suggestion.json"
    lr_find = command_of(commands, "lr_find.py", "--out-suggestion", suggestion)
    assert json.loads(lr_find[lr_find.index("--options") + 1])["lr"] == "auto"
    train = command_of(commands, "train.py", "--out-info", "results/auto/seed0/train_info.json")
    assert train[train.index("--lr-from") + 1] == suggestion
    assert json.loads(train[train.index("--options") + 1])["lr"] == "auto"
    fixed = command_of(commands, "train.py", "--out-info", "results/fixed/seed0/train_info.json")
    assert "--lr-from" not in fixed
    assert not [c for c in commands if "results/lr_find/fixed/suggestion.json" in c]


@pytest.mark.slow
def test_a_range_test_whose_loss_still_falls_at_its_top_is_said_at_the_end_of_the_run(tmp_path):
    """A range too low for the run (lr_find.max_lr 1e-3 here): the smoothed loss fell to the last lr tried, and the
    suggestion, the steepest fall within the range, was taken without a word (the low end of a range is refused).
    Said at the end of the run that made the curve, naming its folder and the key to raise, where the curve's own
    last row holds its lowest smoothed loss; a range that reached divergence says nothing."""
    import pandas as pd

    edge = {"min_lr": 1.0e-6, "max_lr": 1.0e-3, "steps": 6, "smoothing": 0.0}
    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto"}}}, lr_find=edge)
    ran = run_snakemake(tmp_path, configfile, "-p", "results/lr_find/auto/suggestion.json").stdout
    curve = pd.read_csv(tmp_path / "results/lr_find/auto/lr_find.csv")
    assert len(curve) == 6 and curve["smoothed_loss"].idxmin() == 5  # the curve the note speaks of, read here
    assert ("note: results/lr_find/auto: the smoothed loss was still falling at the last lr the range test tried, "
            "0.001 (lr_find.max_lr 0.001): its suggestion") in ran, ran[-3000:]
    assert "raise lr_find.max_lr" in ran
    # Said too where another job of the run fails (--keep-going): the next run, the curve made, would not say it.
    failing = tiny_config(tmp_path, "failing.yaml", lr_find=edge, replace={"experiments": {
        "auto": {"lr": "auto"}, "bad": {"strategy": "finetune", "optimizer": "sgd", "momentum": 0.0, "lr": 1.0e4}}})
    failed = run_snakemake(tmp_path, failing, "-p", "results/lr_find/auto/suggestion.json",
                           "results/bad/seed0/train_info.json", "--keep-going", "--forcerun", "lr_find", check=False)
    assert failed.returncode != 0 and "Error in rule train" in failed.stdout, failed.stdout[-3000:]
    assert "note: results/lr_find/auto: the smoothed loss was still falling" in failed.stdout, failed.stdout[-3000:]
    wide = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto"}}}, lr_find={"steps": 30})
    ran = run_snakemake(tmp_path, wide, "-p", "results/lr_find/auto/suggestion.json").stdout
    curve = pd.read_csv(tmp_path / "results/lr_find/auto/lr_find.csv")
    assert curve["smoothed_loss"].idxmin() < len(curve) - 1, curve
    assert "still falling at the last lr" not in ran, ran[-3000:]


def test_the_curve_of_an_lbfgs_run_asked_for_by_name_is_refused_at_start_naming_where_the_optimizer_is(tmp_path):
    """The dry run planned lr_find for an L-BFGS run asked for by name, and the job failed (`optimizer lbfgs chooses its
    own step`), naming no key. Refused at start now, naming the key where the optimizer is written (an experiment's,
    a sweep's, or train's); a run of another optimizer beside it is planned."""
    configfile = tiny_config(tmp_path, replace={"experiments": {
        "fe": {"strategy": "feature_extract", "optimizer": "lbfgs", "lr": 1.0},
        "sw": {"strategy": "feature_extract", "lr": 1.0, "sweep": {"optimizer": ["lbfgs", "adamw"]}}}})
    for run, key in (("fe", "experiments.fe.optimizer"), ("sw-optimizerlbfgs", "experiments.sw.sweep.optimizer")):
        target = f"results/lr_find/{run}/lr_find.png"
        refused = run_snakemake(tmp_path, configfile, "-n", target, check=False)
        assert refused.returncode != 0 and f"{target}: {key} is lbfgs, whose line search chooses each step: the run " \
            "has no lr to find" in refused.stdout and "lr_find.py" not in refused.stdout, refused.stdout[-3000:]
    planned = run_snakemake(tmp_path, configfile, "-n", "results/lr_find/sw-optimizeradamw/lr_find.png")
    assert jobs_run(planned.stdout).count("lr_find") == 1, planned.stdout[-3000:]
    train = tiny_config(tmp_path, "train.yaml", replace={
        "experiments": {"fe": {"strategy": "feature_extract"}},
        "train": {"epochs": 1, "lr": 1.0, "device": "cpu", "optimizer": "lbfgs"}})
    refused = run_snakemake(tmp_path, train, "-n", "results/lr_find/fe/lr_find.csv", check=False)
    assert refused.returncode != 0 and "results/lr_find/fe/lr_find.csv: train.optimizer is lbfgs" in refused.stdout, \
        refused.stdout[-3000:]


def test_the_range_test_s_seed_is_its_own_so_the_seeds_list_can_change_without_testing_again(tmp_path):
    """The range test was seeded by the first of `seeds`: reordering them (or removing the first) changed lr_find's
    params, so every `lr: auto` run was tested and trained again. Its seed is `lr_find.seed` (0 by default), read
    from each dry run's lr_find command."""
    def range_test_options(**replace):
        configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto"}}, **replace})
        commands = shell_commands(run_snakemake(tmp_path, configfile, "-n", "--printshellcmds").stdout)
        found = command_of(commands, "lr_find.py", "--out-suggestion", "results/lr_find/auto/suggestion.json")
        return json.loads(found[found.index("--options") + 1]), json.loads(found[found.index("--range-test") + 1])

    first = range_test_options(seeds=[3, 4])
    assert first[0]["seed"] == 0 and "seed" not in first[1]
    assert range_test_options(seeds=[4, 3]) == first and range_test_options(seeds=[4]) == first
    chosen = range_test_options(seeds=[3, 4], lr_find={"seed": 7})
    assert chosen[0] == {**first[0], "seed": 7} and chosen[1] == first[1]


def test_a_run_s_own_lr_does_not_reach_the_range_test(tmp_path):
    """The range test sets each step's lr itself, but a run's lr was in its options: a curve asked for by name ran
    again when the run's lr was set to auto (to use it), or to another number. lr_find's options are the same for
    each, and say lr auto."""
    def options_of(lr):
        configfile = tiny_config(tmp_path, replace={"experiments": {"run": {"lr": lr}}})
        commands = shell_commands(run_snakemake(tmp_path, configfile, "-n", "--printshellcmds",
                                                "results/lr_find/run/lr_find.png").stdout)
        found = command_of(commands, "lr_find.py", "--out-suggestion", "results/lr_find/run/suggestion.json")
        return json.loads(found[found.index("--options") + 1])

    first = options_of(0.01)
    assert first["lr"] == "auto" and options_of(0.05) == first and options_of("auto") == first


def test_the_suggestion_is_the_steepest_fall_up_to_and_into_the_minimum():
    """Smoothed losses 5.0, 4.9, 4.8, 4.0, 4.5 fall by 0.1, 0.1 and 0.8: the steepest fall is the one into the minimum
    (at the 4th lr), which the suggestion is."""
    from finetune.lrfind import suggest

    losses = [5.0, 4.9, 4.8, 4.0, 4.5]
    falls = [losses[i] - losses[i - 1] for i in range(1, losses.index(min(losses)) + 1)]
    steepest = 1 + falls.index(min(falls))
    assert suggest([1.0, 2.0, 3.0, 4.0, 5.0], losses, skip_start=0) == (float(steepest + 1), "steepest")


def test_the_range_test_runs_in_one_process_so_devices_and_nodes_do_not_reach_it(tmp_path):
    """lr_find runs in one process at the run's global batch size: a run's `devices` changed its options, so that
    editing them tested again (the same curve) and its suggestion.json named processes it did not run. They are at
    their defaults in lr_find's command, and reach the train job's."""
    def options_of(script, out_flag, out, devices):
        configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto", "bn": "frozen",
                                                                             "devices": devices}}})
        commands = shell_commands(run_snakemake(tmp_path, configfile, "-n", "--printshellcmds").stdout)
        found = command_of(commands, script, out_flag, out)
        return json.loads(found[found.index("--options") + 1])

    one, two = (options_of("lr_find.py", "--out-suggestion", "results/lr_find/auto/suggestion.json", n) for n in (1, 2))
    assert one == two and one["devices"] == 1 and one["nodes"] == 1
    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto", "bn": "frozen", "devices": 2}}})
    commands = shell_commands(run_snakemake(tmp_path, configfile, "-n", "--printshellcmds").stdout)
    train = [c for c in commands if any(Path(word).name == "train.py" for word in c)]  # through finetune.launch
    assert len(train) == 1 and json.loads(train[0][train[0].index("--options") + 1])["devices"] == 2, train
    # sync_batchnorm (BatchNorm statistics shared among the processes) needs several: the range test's one process
    # refused it, so an lr: auto run with it could never start training
    synced = {"lr": "auto", "devices": 2, "sync_batchnorm": True, "device": "cuda"}
    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": synced}})
    commands = shell_commands(run_snakemake(tmp_path, configfile, "-n", "--printshellcmds").stdout)
    found = command_of(commands, "lr_find.py", "--out-suggestion", "results/lr_find/auto/suggestion.json")
    options = json.loads(found[found.index("--options") + 1])
    assert (options["devices"], options["nodes"], options["sync_batchnorm"]) == (1, 1, False), options
    TrainOptions.from_dict({**options, "lr": 0.1})  # the job's own reading of them accepts them


def test_train_takes_the_lr_from_the_suggestion_only_with_lr_auto(tmp_path):
    suggestion = tmp_path / "suggestion.json"
    suggestion.write_text(json.dumps({"lr": 0.0123, "method": "steepest"}))
    options, lr = resolve_lr({"lr": "auto", "epochs": 1}, suggestion)
    assert options == {"lr": 0.0123, "epochs": 1} and lr == 0.0123
    assert resolve_lr({"lr": 0.5}, None) == ({"lr": 0.5}, 0.5)
    with pytest.raises(ConfigError, match=r"^train\.lr is auto: give lr_find's suggestion with --lr-from"):
        resolve_lr({"lr": "auto"}, None)
    name_keys({"lr": "experiments.a.lr"})  # what the train job is given (--key-names) where an experiment wrote lr
    try:
        with pytest.raises(ConfigError, match=r"^experiments\.a\.lr is auto: give lr_find's suggestion"):
            resolve_lr({"lr": "auto"}, None)
    finally:
        name_keys()
    with pytest.raises(ConfigError, match="not auto"):
        resolve_lr({"lr": 0.5}, suggestion)
    # A suggestion no training can use (damaged, or not lr_find's) is refused naming the file, not trained with.
    for held in ({"lr": 0}, {"lr": -0.01}, {"lr": "0.01"}, {"lr": None}, {"method": "steepest"}, [0.01]):
        suggestion.write_text(json.dumps(held))
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(suggestion))} holds no positive 'lr'"):
            resolve_lr({"lr": "auto"}, suggestion)


def test_lr_find_run_alone_refuses_a_range_test_setting_it_does_not_know_naming_the_known_ones(tmp_path):
    """--range-test is what the workflow writes from lr_find's keys; run alone with a misspelt one, the script
    stops on one line naming it and the settings it knows, before any step, and writes nothing."""
    from faults import split_and_weights, train_args
    from helpers import run_script

    inputs = split_and_weights(tmp_path / "inputs", 4)
    out = tmp_path / "out"
    args = train_args(inputs.split, inputs.manifest, out, {"epochs": 1, "batch_size": 4, "lr": "auto", "seed": 0})[:6]
    result = run_script("lr_find", *args, "--range-test", json.dumps({"steps": 30, "max_rl": 1.0}),
                        "--out-csv", str(out / "curve.csv"), "--out-png", str(out / "curve.png"),
                        "--out-suggestion", str(out / "suggestion.json"))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    known = ", ".join(sorted(["min_lr", "max_lr", "steps", "smoothing", "diverge_factor"]))
    assert f"error: lr_find: unknown range-test setting(s) max_rl (known: {known})" in result.stdout, result.stdout
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- the rule, run for real

RANGE_TEST = {"min_lr": 1e-5, "max_lr": 1.0, "steps": 24, "smoothing": 0.9, "diverge_factor": 4.0}


def test_the_lr_find_rule_runs_the_configured_range_test_and_train_uses_its_suggestion(tmp_path):
    import pandas as pd

    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto"}}, "lr_find": RANGE_TEST})
    run_snakemake(tmp_path, configfile, "--printshellcmds", "results/auto/seed0/train_info.json")
    curve = pd.read_csv(tmp_path / "results/lr_find/auto/lr_find.csv")
    # the configured range: lr from min_lr, each step the same factor (max/min)^(1/(steps-1)), at most `steps` steps
    factor = (RANGE_TEST["max_lr"] / RANGE_TEST["min_lr"]) ** (1 / (RANGE_TEST["steps"] - 1))
    lrs = list(curve["lr"])
    assert 2 <= len(lrs) <= RANGE_TEST["steps"] and math.isclose(lrs[0], RANGE_TEST["min_lr"])
    assert all(math.isclose(b / a, factor, rel_tol=1e-9) for a, b in zip(lrs, lrs[1:]))
    # the configured smoothing, recomputed from the recorded raw losses
    avg, smoothed = 0.0, []
    for step, loss in enumerate(curve["loss"], start=1):
        avg = RANGE_TEST["smoothing"] * avg + (1 - RANGE_TEST["smoothing"]) * loss
        smoothed.append(avg / (1 - RANGE_TEST["smoothing"] ** step))
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(smoothed, curve["smoothed_loss"]))
    # it stopped early only where the configured divergence rule says so
    if len(lrs) < RANGE_TEST["steps"]:
        assert smoothed[-1] > RANGE_TEST["diverge_factor"] * min(smoothed) or not math.isfinite(smoothed[-1])
    suggestion = json.loads((tmp_path / "results/lr_find/auto/suggestion.json").read_text())
    assert suggestion["range_test"] == RANGE_TEST
    assert any(math.isclose(suggestion["lr"], lr) or math.isclose(suggestion["lr"], lr / 10) for lr in lrs)
    info = json.loads((tmp_path / "results/auto/seed0/train_info.json").read_text())
    assert info["lr_used"] == suggestion["lr"] and info["options"]["lr"] == "auto"
    log = (tmp_path / "results/logs/train/auto/seed0.log").read_text()  # its epochs' lines give the schedule's lr
    assert f"lr {suggestion['lr']:.4g} (lr: auto): the suggestion of the learning-rate finder, " \
           f"results/lr_find/auto/suggestion.json" in log, log
    # another range-test setting reruns the range test and the train job that read it, nothing upstream
    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto"}},
                                                "lr_find": {**RANGE_TEST, "steps": 30}})
    again = run_snakemake(tmp_path, configfile, "-n", "results/auto/seed0/train_info.json").stdout
    assert sorted(jobs_run(again)) == ["lr_find", "train"], again
    # what the range test does not read (how long the run trains, when it stops) reruns the train job alone
    configfile = tiny_config(tmp_path, replace={"experiments": {"auto": {"lr": "auto", "epochs": 3, "warmup_epochs": 1,
                                                                         "early_stopping_patience": 1}},
                                                "lr_find": RANGE_TEST})
    again = run_snakemake(tmp_path, configfile, "-n", "results/auto/seed0/train_info.json").stdout
    assert sorted(jobs_run(again)) == ["train"], again


def test_the_keys_the_range_test_is_not_given_do_not_change_its_curve():
    """configcheck.range_test_options sets these keys to their defaults for lr_find (so that editing them does not
    run the test again): the curve must indeed be the same whatever they are."""
    from finetune.configcheck import RANGE_TEST_UNREAD

    def curve(**options):
        torch.manual_seed(0)
        opts = TrainOptions.from_dict({"batch_size": 32, "device": "cpu", "optimizer": "sgd", "momentum": 0.9, **options})
        return find_lr(TinyNet(), synthetic(), synthetic(90, seed=1), PLAIN, opts, num_classes=3, min_lr=1e-4,
                       max_lr=10, steps=60, smoothing=BETA, diverge_factor=FACTOR, log=lambda _: None)

    changed = {"epochs": 7, "early_stopping_patience": 2, "metric": "val_loss", "on_divergence": "stop",
               "schedule": "onecycle", "warmup_epochs": 2, "ema_decay": 0.9, "ema_warmup": False}
    assert set(changed) == set(RANGE_TEST_UNREAD)
    plain, other = curve(), curve(**changed)
    assert plain.loss == other.loss and plain.suggestion == other.suggestion
    assert curve(lr=0.5).loss == plain.loss  # nor does the run's own lr (lr_find's options say auto)
    assert curve(weight_decay=0.5).loss != plain.loss  # and a key it reads does change it


def test_a_range_test_that_cannot_rise_is_refused_naming_the_keys():
    problems = config_problems(config_with(lr_find={"min_lr": 1.0, "max_lr": 0.1}), SCHEMA)
    assert any(p.startswith("lr_find.min_lr: 1 must be below lr_find.max_lr (0.1)") for p in problems), problems
    problems = config_problems(config_with(lr_find={"stepz": 10}), SCHEMA)
    assert any("stepz" in p for p in problems), problems


def test_range_test_settings_given_alone_hold_the_schema_s_bounds():
    """lr_find.py --range-test run alone checks its settings itself: just outside each bound of the schema's `lr_find`
    keys (read from workflow/schemas/config.schema.yaml) is refused naming the key, a text where a number goes too
    (a TypeError's traceback before), and each bound itself, or a value just inside an open one, passes."""
    import yaml

    from finetune.lrfind import DEFAULT_RANGE, range_test_problems

    keys = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]["lr_find"]["properties"]
    assert set(keys) - {"seed"} == set(DEFAULT_RANGE)
    for key in DEFAULT_RANGE:
        spec = keys[key]
        outside = [spec[bound] for bound in ("exclusiveMinimum", "exclusiveMaximum") if bound in spec]
        outside += [spec["minimum"] - 1] if "minimum" in spec else []
        inside = [spec["minimum"]] if "minimum" in spec else []
        inside += [spec["exclusiveMinimum"] + 0.5] if "exclusiveMinimum" in spec else []
        inside += [spec["exclusiveMaximum"] - 0.01] if "exclusiveMaximum" in spec else []
        for value in [*outside, str(spec["default"]), True]:
            problems = range_test_problems({key: value})
            assert len(problems) == 1 and problems[0].startswith(f"{key} must be"), (key, value, problems)
        for value in inside:
            assert range_test_problems({key: value}) == [], (key, value)
        assert range_test_problems({key: spec["default"]}) == []
