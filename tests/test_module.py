"""The workflow as a module of another workflow (docs/module.md, "As a module of your own workflow"): its own
snippet, run for real on the tiny config, trains the same model as the workflow run directly."""

import json
import os
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import REPO, TINY_CONFIG, copy_of_the_workflow, run_snakemake, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]


def docs_module_snippet() -> str:
    """The first python block of docs/module.md ("As a module of your own workflow")."""
    return re.search(r"```python\n(.*?)```", (REPO / "docs" / "module.md").read_text(), re.S).group(1)


def test_the_docs_module_snippet_runs_the_workflow_as_a_module(tiny_run, tmp_path):
    host = tmp_path / "host"
    snippet = docs_module_snippet().replace("/path/to/finetune", str(REPO))
    (host / "config").mkdir(parents=True)
    (host / "Snakefile").write_text(snippet)
    tiny_config(host / "config", name="finetune.yaml", replace={"experiments": {"finetune": TINY_CONFIG["experiments"]["finetune"]}})

    result = run_snakemake(host, None, snakefile=host / "Snakefile")

    out = result.stdout
    assert "localrules directive specifies rules that are not present" not in out, out[-3000:]
    # the config is the host's alone: one experiment, not merged over the demo's three
    assert re.search(r"^finetune_train\s+1$", out, re.M) and "results/scratch" not in out, out[-3000:]
    run = "results/finetune/seed0"
    # The same run as the workflow's own (the tiny run's finetune: same config, same pretraining): same figures.
    ours, direct = (json.loads((folder / run / "metrics.json").read_text()) for folder in (host, tiny_run))
    assert ours["accuracy"] == direct["accuracy"] and ours["confusion_matrix"] == direct["confusion_matrix"]
    assert (host / "results/summary.md").exists()
    # The snippet's onsuccess removed the finished resume states (a module's own handlers do not run).
    assert not list((host / "resources/resume").glob("**/*.done.pt"))
    assert list((host / "resources/resume").glob("**/*")) == [] or not (host / "resources/resume").exists()


def test_a_module_with_a_prefix_runs_below_it_and_reads_the_config_s_paths_where_written(tmp_path):
    """The repository vendored inside the host's folder (a git submodule) and the module given a `prefix:`: the rules'
    own scripts and modules are this repository's files, not paths under the prefix (which would be missing); every
    file the run makes is below the prefix (the resume states and feature cache too, which are params); the config's
    relative paths (a CSV manifest, a weights file) are read where written, not below the prefix, where the manifest
    was not found and its split was not made again when it changed; the summary reads the runs below the prefix (it
    failed on results/<run>/train_info.json); the snippet's onsuccess removes the finished states below the prefix,
    a rule of the module given other threads by a `use rule ... with:` statement."""
    from faults import PREPROCESSING_32, make_images, save_state_dict

    host = tmp_path / "host"
    copy_of_the_workflow(host / "finetune")
    snippet = docs_module_snippet().replace("/path/to/finetune", "finetune").replace(
        'FINETUNE_FILES = "."', 'FINETUNE_FILES = "runs/a"', 1)
    assert 'FINETUNE_FILES = "runs/a"' in snippet
    # A rule of the module given other threads (docs/module.md): under a prefix its rules.<name>.output is then empty, which
    # the snippet's onsuccess read (AttributeError after every run that succeeded, and the states stayed).
    snippet = snippet.replace("use rule * from finetune as finetune_*\n", "use rule * from finetune as finetune_*\n"
                              "use rule train from finetune as finetune_train with:\n    threads: 1\n", 1)
    (host / "Snakefile").write_text(snippet.replace("    config: config\n", '    config: config\n    prefix: "runs/a"\n', 1))
    make_images(host / "data", {"cat": 6, "dog": 6})
    rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted((host / "data").glob("*/*.png"))]
    (host / "data" / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    save_state_dict(host / "weights" / "r18.pth")
    config = {"dataset": {"format": "csv", "path": "data/manifest.csv", "val_fraction": 0.34, "test_fraction": 0.34},
              "weights": {"source": "path", "arch": "resnet18", "path": "weights/r18.pth", "preprocessing": PREPROCESSING_32},
              "experiments": {"head": {"strategy": "feature_extract", "lr": 0.01}}}
    config = {**{k: v for k, v in TINY_CONFIG.items() if k != "pretrain"}, **config}
    (host / "config").mkdir()
    (host / "config" / "finetune.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(host, None, snakefile=host / "Snakefile", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"input: .*(?<!runs/a/)finetune/workflow/scripts/train\.py", result.stdout), result.stdout[-3000:]
    made = sorted(p.name for p in host.iterdir() if p.name != ".snakemake")
    assert made == ["Snakefile", "config", "data", "finetune", "runs", "weights"], made  # no results/, resources/
    run = host / "runs/a/results/head/seed0"
    assert (run / "model.onnx").exists() and json.loads((run / "train_info.json").read_text())["cached_features"]
    assert list((host / "runs/a/resources/features").iterdir()), "the feature cache is below the prefix"
    assert "head" in (host / "runs/a/results/summary.md").read_text()
    assert not list((host / "runs/a/resources").glob("resume/**/*.done.pt"))
    split = (host / "runs/a/resources/splits/target.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in split[1:]) == sorted(f"data/{row.split(',')[0]}" for row in rows)
    # The manifest edited: its split is made again (and what follows), not the earlier one kept.
    (host / "data" / "manifest.csv").write_text("path,label\n" + "\n".join(rows[1:]) + "\n")
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile")
    assert re.search(r"^finetune_split\s+1$", result.stdout, re.M), result.stdout[-3000:]


def test_a_module_with_a_prefix_gives_a_scratch_run_the_source_record_below_it(tmp_path):
    """A scratch run with weights from pretrain reads the source's decoded images' record, a param (Snakemake moves
    inputs and outputs below a prefix, not params): it named resources/decoded/source/... outside the prefix, where no
    job writes it (or an earlier run without the prefix did)."""
    host = tmp_path / "host"
    snippet = docs_module_snippet().replace("/path/to/finetune", str(REPO))
    (host / "config").mkdir(parents=True)
    (host / "Snakefile").write_text(snippet.replace("    config: config\n", '    config: config\n    prefix: "runs/a"\n', 1))
    tiny_config(host / "config", name="finetune.yaml", replace={"experiments": {"scratch": TINY_CONFIG["experiments"]["scratch"]}})
    result = run_snakemake(host, None, "-n", "--printshellcmds", snakefile=host / "Snakefile")
    command = next(line for line in result.stdout.splitlines() if "--source-info" in line)
    record = command.split("--source-info ", 1)[1].split()[0]
    assert record == "runs/a/resources/decoded/source/32/info.json", command
    assert re.search(rf"output: [^\n]*{re.escape(record)}", result.stdout), "the decode job writes it"


def test_the_host_s_config_file_is_checked_as_a_config_file_given_here(tmp_path):
    """A key written twice in the host's `configfile:` (two `train:` sections): YAML keeps the last, so the first's
    epochs were lost without a word where the workflow is a module (only --configfile's files were checked). Refused,
    naming the host's file and both lines."""
    host = tmp_path / "host"
    (host / "config").mkdir(parents=True)
    (host / "Snakefile").write_text(docs_module_snippet().replace("/path/to/finetune", str(REPO)))
    config = tiny_config(host / "config", name="finetune.yaml")
    text = config.read_text()
    first = text.splitlines().index("train:") + 1
    config.write_text(text + "train:\n  lr: 0.002\n")
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    second = len(text.splitlines()) + 1
    assert result.returncode != 0, result.stdout[-3000:]
    assert f"config/finetune.yaml: train is written twice (lines {first} and {second})" in result.stdout, result.stdout[-3000:]


def test_a_module_given_a_part_of_the_host_s_config_takes_its_command_line_values_typed(tmp_path):
    """The usual Snakemake pattern, `config: config["finetune"]` with keys of the host's own beside it: --config
    'finetune={train: {epochs: 2}}' merged the host's key `finetune` into the module's config (refused as unknown) and
    left its values as Snakemake's text ('2' is not an integer). The module's part is read as a config file reads it;
    the host's own keys are the host's; a wrong value is still named."""
    host = tmp_path / "host"
    snippet = docs_module_snippet().replace("/path/to/finetune", str(REPO))
    (host / "config").mkdir(parents=True)
    (host / "Snakefile").write_text(snippet.replace("    config: config\n", '    config: config["finetune"]\n', 1))
    config = {"threshold": 0.5, "finetune": {k: v for k, v in TINY_CONFIG.items()}}
    config["finetune"]["experiments"] = {"finetune": TINY_CONFIG["experiments"]["finetune"]}
    (host / "config" / "finetune.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(host, None, "-n", "--printshellcmds", "--config", "threshold=0.7",
                           "finetune={train: {lr: 0.01, epochs: 2}}", snakefile=host / "Snakefile", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    options = [json.loads(shlex.split(line.split(" > ")[0])[shlex.split(line.split(" > ")[0]).index("--options") + 1])
               for line in result.stdout.splitlines() if "scripts/train.py" in line and "--options" in line]
    assert options and all(o["lr"] == 0.01 and o["epochs"] == 2 for o in options), options
    assert all(o["batch_size"] == TINY_CONFIG["train"]["batch_size"] for o in options), "the file's other keys stay"
    result = run_snakemake(host, None, "-n", "--config", "finetune={train: {epochs: two}}", snakefile=host / "Snakefile",
                           check=False)
    # named under the host's key, as written there, and traced to where it is written
    assert result.returncode != 0 and "finetune.train.epochs: 'two' is not an integer (set in --config)" in \
        result.stdout, result.stdout[-3000:]
    result = run_snakemake(host, None, "-n", "--config", "finetune={train: {epochz: 2}}", snakefile=host / "Snakefile",
                           check=False)
    assert result.returncode != 0 and "finetune.train.epochz: unknown key (did you mean epochs?) (set in --config)" in \
        result.stdout, result.stdout[-3000:]
    # a module given a copy of that part (no key of the host's config): --config is not traced to it, and says so
    (host / "Snakefile").write_text(snippet.replace("    config: config\n", '    config: dict(config["finetune"])\n', 1))
    result = run_snakemake(host, None, "-n", "--config", "threshold=0.7", snakefile=host / "Snakefile", check=False)
    assert ("--config sets the host's config, and this module's config (its module block's `config:`) is neither the "
            "host's config nor one of its keys") in " ".join(result.stdout.split()), result.stdout[-3000:]


def test_the_report_of_two_instances_given_parts_of_the_host_s_config_describes_and_checks_each(tiny_run, tmp_path):
    """`--report` where the workflow is two modules given parts of the host's config (`config: config["a"]`, the usual
    Snakemake pattern): the report's description read the host's config as the workflow's and the report stopped
    (UndefinedError: 'dict object' has no attribute 'experiments'); and only the first instance's runs were checked
    against the config given (a change to the second's said nothing). Each instance here holds a copy of the tiny
    run's files (the same config, mtimes kept): up to date without training again."""
    import shutil

    host = tmp_path / "host"
    (host / "config").mkdir(parents=True)
    keys = {"a": "first", "b": "second"}  # module: its part of the host's config (Snakemake's --config takes 2+ letters)
    modules = "".join(f'module f{x}:\n    snakefile: "{REPO / "Snakefile"}"\n    config: config["{key}"]\n    prefix: "runs/{x}"\n'
                      f"use rule * from f{x} as f{x}_*\n" for x, key in keys.items())
    (host / "Snakefile").write_text('configfile: "config/host.yaml"\n' + modules
                                    + "rule all:\n    input: rules.fa_all.input, rules.fb_all.input\n    default_target: True\n")
    tiny = yaml.safe_load((tiny_run / "config.yaml").read_text())
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({"first": tiny, "second": tiny, "threshold": 0.5}))
    for x in "ab":
        for folder in ("results", "resources"):
            shutil.copytree(tiny_run / folder, host / "runs" / x / folder, symlinks=True)
    assert "Nothing to be done" in run_snakemake(host, None, "-n", snakefile=host / "Snakefile").stdout

    result = run_snakemake(host, None, "--report", "report.html", snakefile=host / "Snakefile", check=False)
    assert result.returncode == 0 and "Report created" in result.stdout, result.stdout[-3000:]
    assert "note:" not in result.stdout, result.stdout[-3000:]
    page = (host / "report.html").read_text()
    for key in keys.values():  # the page holds the description as a JavaScript string: its quotes escaped
        assert re.search(rf'Instance configured by <tt class=\\?"docutils literal\\?">{key}</tt>: trained per experiment', page)

    result = run_snakemake(host, None, "--report", "other.html", "--config", "second={train: {epochs: 3}}",
                           snakefile=host / "Snakefile", check=False)
    notes = [line for line in result.stdout.splitlines() if "the report's configuration" in line]
    assert len(notes) == 1 and notes[0].startswith("note: module fb: the report's configuration"), result.stdout[-3000:]
    for run in tiny["experiments"]:
        assert f"runs/b/results/{run}/seed0/train_info.json: epochs 1 (the config: 3)" in notes[0], notes[0]
    assert "runs/a/" not in notes[0]
    # The note the report holds above each leaderboard is that instance's: its jobs the dry run lists (`fb_train 2`:
    # its weights newer than its runs; the copies have no Snakemake metadata, so the epochs above rerun nothing),
    # none above the first's, which is up to date (the dry run's count went to the leaderboard read first, fa's).
    (host / "runs/b/resources/weights/weights.pth").touch()
    result = run_snakemake(host, None, "--report", "other.html", snakefile=host / "Snakefile", check=False)
    assert result.returncode == 0 and "Report created" in result.stdout, result.stdout[-3000:]
    page = (host / "other.html").read_text()
    captions = {x: re.search(rf'"runs/{x}/results/summary\.html": {{.*?"caption": "((?:[^"\\]|\\.)*)"', page).group(1)
                for x in "ab"}
    assert "may not be this configuration" not in captions["a"], captions["a"]
    pretrained = sum(spec.get("pretrained", True) for spec in tiny["experiments"].values())  # scratch reads no weights
    assert f"fb_train {pretrained}," in captions["b"] and "fa_" not in captions["b"], captions["b"]


def two_instance_host(host, config_a: dict, config_b: dict):
    """A host workflow of two instances, `fa_*` below runs/a given config["aa"] and `fb_*` below runs/b given
    config["bb"] (config/host.yaml)."""
    (host / "config").mkdir(parents=True)
    modules = "".join(f'module f{x}:\n    snakefile: "{REPO / "Snakefile"}"\n    config: config["{x}{x}"]\n'
                      f'    prefix: "runs/{x}"\nuse rule * from f{x} as f{x}_*\n' for x in "ab")
    (host / "Snakefile").write_text('configfile: "config/host.yaml"\n' + modules
                                    + "rule all:\n    input: rules.fa_all.input, rules.fb_all.input\n    default_target: True\n")
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({"aa": config_a, "bb": config_b}))
    return host


def one_instance_host(host, extra: str = "", *, above: str = "", config: dict = TINY_CONFIG,
                      config_in_snakefile: bool = False):
    """A host workflow of one instance, `finetune_*`, given ``config``: as the host's config (config/finetune.yaml,
    `config: config`), or, with config_in_snakefile, as a dict its Snakefile writes (`config: FT`). ``above`` and
    ``extra`` are written before and after the module (rules, `use rule ... with:` statements)."""
    host.mkdir(parents=True, exist_ok=True)
    if config_in_snakefile:
        head, module_config = f"FT = {config!r}\n", "FT"
    else:
        (host / "config").mkdir(exist_ok=True)
        (host / "config" / "finetune.yaml").write_text(yaml.safe_dump(config))
        head, module_config = 'configfile: "config/finetune.yaml"\n', "config"
    (host / "Snakefile").write_text(head + above + f'module finetune:\n    snakefile: "{REPO / "Snakefile"}"\n'
                                    f"    config: {module_config}\nuse rule * from finetune as finetune_*\n" + extra)
    return host


def test_an_image_folder_and_images_to_classify_made_by_rules_of_the_host_are_made_first_in_the_same_run(tmp_path):
    """A dataset.path and a predict.images that rules of the host (declared above the module) make were refused at start
    as missing, on every command, their own targets too. From an empty folder, one run now makes them, splits every
    image the host's rule put there (Snakemake's timestamp file in a directory output is none of them) and classifies
    every image it copied; the next run has nothing to do, nor the one after the host's rule made the folder again:
    the split records the folder's state when its job starts, not as it was when the run began."""
    from faults import make_images

    host = tmp_path / "host"
    made = make_images(host / "source", {"cat": 6, "dog": 6})
    incoming = make_images(host / "incoming", {"x": 3}, seed=2)["x"]
    config = {**TINY_CONFIG, "experiments": {"finetune": {"strategy": "finetune"}},
              "dataset": {"format": "imagefolder", "path": "data", "val_fraction": 0.2, "test_fraction": 0.2},
              "predict": {"images": "inbox", "experiment": "finetune", "seed": 0}}
    above = ('rule images:\n    input: "source"\n    output: directory("data")\n    shell: "cp -r {input} {output}"\n'
             'rule inbox:\n    input: "incoming/x"\n    output: directory("inbox")\n    shell: "cp -r {input} {output}"\n')
    one_instance_host(host, above, config=config)  # declared below the module: not seen, refused as missing
    refused = run_snakemake(host, None, "-n", "finetune_all", snakefile=host / "Snakefile", check=False)
    assert refused.returncode != 0 and ("dataset.path: data (imagefolder) does not exist" in refused.stdout) and (
        "or make it with a rule of your workflow declared above this module" in refused.stdout), refused.stdout[-3000:]
    one_instance_host(host, above=above, config=config)
    result = run_snakemake(host, None, "--printshellcmds", "finetune_all", snakefile=host / "Snakefile")
    assert "note: module finetune: data is made in this run by images, a rule of your workflow" in result.stdout, \
        result.stdout[-3000:]
    split = pd.read_csv(host / "resources/splits/target.csv")
    assert sorted(os.path.relpath(host / path, host / "data") for path in split["path"]) == sorted(
        os.path.relpath(path, host / "source") for paths in made.values() for path in paths)
    predictions = pd.read_csv(host / "results/predictions/finetune/seed0/predictions.csv")
    assert sorted(Path(path).name for path in predictions["path"]) == sorted(path.name for path in incoming)
    assert "Nothing to be done" in run_snakemake(host, None, "-n", "finetune_all", snakefile=host / "Snakefile").stdout
    run_snakemake(host, None, "--forcerun", "images", "inbox", "--", "finetune_all", snakefile=host / "Snakefile")
    planned = run_snakemake(host, None, "-n", "finetune_all", snakefile=host / "Snakefile")
    assert "Nothing to be done" in planned.stdout, planned.stdout[-3000:]


def test_an_image_folder_a_rule_of_the_host_made_wrong_is_made_again_from_its_fixed_source(tmp_path):
    """A host's rule made the image folder (written as an absolute path: the rule matched it, and the split's input,
    written another way, did not: Snakemake's MissingInputException) from a source with an empty class folder: the
    split job failed. With the source fixed, every command was then refused at start on the folder the failed run left,
    the host's own rule too: the start does not check a folder the host makes; the rule makes it again, and the split
    draws from the images of the fixed source."""
    from faults import make_images

    host = tmp_path / "host"
    made = make_images(host / "source", {"cat": 6, "dog": 6})
    (host / "source" / "bird").mkdir()
    config = {**TINY_CONFIG, "dataset": {"format": "imagefolder", "path": str(host / "data"), "val_fraction": 0.2,
                                         "test_fraction": 0.2}}
    one_instance_host(host, above='rule images:\n    input: "source"\n    output: directory("data")\n'
                                  '    shell: "rm -rf {output} && cp -r {input} {output}"\n', config=config)
    split = host / "resources/splits/target.csv"
    failed = run_snakemake(host, None, "--printshellcmds", "resources/splits/target.csv", snakefile=host / "Snakefile",
                           check=False)
    assert failed.returncode != 0 and "rule finetune_split:" in failed.stdout, failed.stdout[-3000:]
    assert "bird" in (host / "results/logs/split/target.log").read_text() and not split.exists()
    (host / "source" / "bird").rmdir()  # the source's own time changes: the rule makes the folder again
    run_snakemake(host, None, "--printshellcmds", "resources/splits/target.csv", snakefile=host / "Snakefile")
    assert sorted(os.path.relpath(host / path, host / "data") for path in pd.read_csv(split)["path"]) == sorted(
        os.path.relpath(path, host / "source") for paths in made.values() for path in paths)


def test_a_host_rule_of_wildcards_whose_pattern_matches_the_images_to_classify_does_not_skip_their_check(tmp_path):
    """A host rule `{name}.csv` from `{name}.tsv` matched the user's own list of images to classify: taken as made by
    the host, the list was not checked at start, and a list of which no image decodes failed the predict job, which
    removed the earlier predictions. A rule of wildcards makes nothing taken so: the start refuses it, as without it."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "bad.png").write_text("not an image")
    (host / "list.csv").write_text("path\nbad.png\n")
    config = {**TINY_CONFIG, "predict": {"images": "list.csv", "experiment": "finetune", "seed": 0}}
    one_instance_host(host, above='rule conv:\n    input: "{name}.tsv"\n    output: "{name}.csv"\n'
                                  '    shell: "tr \'\\\\t\' , < {input} > {output}"\n', config=config)
    refused = run_snakemake(host, None, "-n", "finetune_all", snakefile=host / "Snakefile", check=False)
    assert refused.returncode != 0 and ("predict.images: none of the 1 image file(s) of list.csv can be read as an "
                                        "image") in refused.stdout, refused.stdout[-3000:]
    assert "is made in this run by" not in refused.stdout


def test_two_instances_on_one_image_folder_each_check_it_at_start_and_name_themselves(tmp_path):
    """Two instances on one ImageFolder, the first with no split yet: its check at start passed the folder and recorded
    it as checked (in the host's .snakemake/, which both share), so that the second, with a split, skipped its check
    of the images new since; a broken one then failed its split job, which removed its split, and the run after the
    fix trained everything again. Each instance's check is its own now: the second refuses at start, naming its
    module and its keys as the host's config holds them, and keeps its split."""
    from faults import make_images, snapshot

    host = tmp_path / "host"
    make_images(host / "data", {"cat": 6, "dog": 6})
    folder = {"format": "imagefolder", "path": "data", "val_fraction": 0.2, "test_fraction": 0.2}
    tiny = {**TINY_CONFIG, "dataset": folder}
    two_instance_host(host, tiny, tiny)
    run_snakemake(host, None, "runs/b/resources/splits/target.csv", snakefile=host / "Snakefile")
    before = snapshot(host / "runs/b/resources/splits")
    (host / "data" / "cat" / "96.png").write_bytes(b"not an image")
    result = run_snakemake(host, None, "runs/b/resources/splits/target.csv", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0 and "rule fb_split:" not in result.stdout, result.stdout[-3000:]
    assert ("module fb: images new since the split was made do not decode (nothing ran, and the split made before is "
            "kept): 1 unreadable image(s) in data") in result.stdout, result.stdout[-3000:]
    assert "set bb.dataset.on_bad_image: skip" in result.stdout, result.stdout[-3000:]
    assert snapshot(host / "runs/b/resources/splits") == before
    (host / "data" / "cat" / "96.png").unlink()
    (host / "data" / "bird").mkdir()  # an empty class folder: each instance refuses it, the first read naming itself
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0 and "module fa: class folder(s) with no images in data: bird" in result.stdout, \
        result.stdout[-3000:]


def test_a_note_at_start_names_the_module_it_is_about_and_its_files_below_the_prefix(tmp_path):
    """Two instances, the second with an `lr_find` setting no run of its uses: the note said neither which module
    it was about nor where its curves go (results/lr_find/..., not below the module's prefix runs/b), nor its keys as the
    host's config holds them (bb.lr_find)."""
    tiny = {key: value for key, value in TINY_CONFIG.items()}
    host = two_instance_host(tmp_path / "host", tiny, {**tiny, "lr_find": {"steps": 20}})
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile")
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:") and "lr_find" in line]
    assert notes == ["note: module fb: bb.lr_find: no experiment run has lr: auto, so bb.lr_find.steps set only the curves "
                     "asked for by name (snakemake runs/b/results/lr_find/<run>/lr_find.png)"], result.stdout[-3000:]


def test_set_resources_naming_a_rule_without_the_module_s_prefix_is_said_to_reach_no_rule(tmp_path):
    """A profile's `set-resources: train:` reaches no rule of a module renamed `fa_*` (the rule is `fa_train`):
    Snakemake said nothing, and the jobs ran with the rule's own resources. A note names each such key, once
    per instance; a key given the new name reaches its rule and is not named."""
    host = two_instance_host(tmp_path / "host", TINY_CONFIG, TINY_CONFIG)
    (host / "profile").mkdir()
    (host / "profile" / "config.yaml").write_text(yaml.safe_dump(
        {"set-resources": {"train": {"mem_mb": 9111}, "fa_evaluate": {"runtime": 77}}}))
    result = run_snakemake(host, None, "-n", "--workflow-profile", str(host / "profile"), "--set-threads", "evaluate=2",
                           snakefile=host / "Snakefile")
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:") and "set-resources" in line]
    assert notes == [f"note: module f{x}: set-resources names train, which this module calls f{x}_train; its settings "
                     f"(mem_mb) apply to nothing. Name it f{x}_train in your profile or command line" for x in "ab"], notes
    assert "mem_mb=9111" not in result.stdout and "runtime=77" in result.stdout  # what the note says, as Snakemake plans
    # --set-threads likewise: `evaluate=2` reached no rule, without a word
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:") and "set-threads" in line]
    assert notes == [f"note: module f{x}: set-threads names evaluate, which this module calls f{x}_evaluate: its threads "
                     f"apply to nothing. Name it f{x}_evaluate in your profile or command line" for x in "ab"], notes
    # a rule of the host's own of that name (defined before the modules' rules) is what the key reaches: not said
    text = (host / "Snakefile").read_text()
    own = 'rule train:\n    output: "trained.txt"\n    shell: "touch {output}"\n'
    (host / "Snakefile").write_text(text.replace("module fa:", own + "module fa:", 1))
    result = run_snakemake(host, None, "-n", "--workflow-profile", str(host / "profile"), snakefile=host / "Snakefile")
    assert "set-resources names train" not in result.stdout, result.stdout[-3000:]


def test_a_use_rule_with_statement_leaves_the_notes_on_unprefixed_names_to_the_rules_it_takes(tmp_path):
    """docs/module.md's `use rule train from finetune as finetune_train with:` read the module again, and there every
    name mapped to finetune_train: `--set-threads mine=1 evaluate=2` was said to name finetune_train twice, `mine` (the
    host's own rule, which the setting does reach) among them. Each key is said once, under the name its rule has, and
    a host rule's key not at all: its job runs with the threads given."""
    host = one_instance_host(tmp_path / "host", "use rule train from finetune as finetune_train with:\n    threads: 1\n"
                             'rule mine:\n    output: "mine.txt"\n    threads: 2\n    shell: "echo {threads} > {output}"\n')
    result = run_snakemake(host, None, "--set-threads", "mine=1", "evaluate=2", "--printshellcmds", "mine.txt",
                           snakefile=host / "Snakefile", cores=2)
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:") and "set-threads" in line]
    assert notes == ["note: module finetune: set-threads names evaluate, which this module calls finetune_evaluate: its "
                     "threads apply to nothing. Name it finetune_evaluate in your profile or command line"], notes
    assert (host / "mine.txt").read_text().split() == ["1"]  # the job ran with the threads the key gave it


def test_config_values_given_to_a_host_whose_module_config_is_its_own_dict_are_said_not_to_reach_it(tmp_path):
    """A module given a dict the host's Snakefile writes (`config: FT`) takes nothing from `--config`: the note said the
    values reached it, as text. It says they reach it only where the Snakefile builds its config from them; the train
    job is planned with the dict's epochs, not --config's."""
    host = one_instance_host(tmp_path / "host", config_in_snakefile=True)
    result = run_snakemake(host, None, "-n", "--printshellcmds", "--config", "train={epochs: 2}",
                           snakefile=host / "Snakefile")
    assert ("the values given there reach the module only where your Snakefile builds its config from them"
            in result.stdout), result.stdout[-3000:]
    epochs = {int(value) for value in re.findall(r'\\?"epochs\\?": (\d+)', result.stdout.split("rule finetune_train", 1)[1])}
    assert epochs == {TINY_CONFIG["train"]["epochs"]}, epochs


def test_replace_workflow_config_submitted_from_a_host_is_said_not_to_reach_the_jobs(tmp_path):
    """As a module, `--replace-workflow-config` under Slurm: each job's Snakemake merged the host's configfile again
    under the user's file (Snakemake 9.27 does not pass the flag on), and trained with keys only the host's file
    wrote, planned as without them, without a word. A note at start says so, where jobs are submitted (not locally)."""
    host = one_instance_host(tmp_path / "host")
    (host / "mine.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    args = ("--configfile", str(host / "mine.yaml"), "--replace-workflow-config", "-n")
    submitted = run_snakemake(host, None, *args, "--executor", "slurm", "--jobs", "1", snakefile=host / "Snakefile")
    local = run_snakemake(host, None, *args, snakefile=host / "Snakefile")
    note = "note: module finetune: --replace-workflow-config does not reach the jobs Snakemake submits"
    assert note in submitted.stdout, submitted.stdout[-3000:]
    assert note not in local.stdout, local.stdout[-3000:]


def test_a_host_reading_the_module_twice_is_checked_as_written_and_an_empty_inbox_is_refused(tmp_path):
    """A host with a second `use rule ... from finetune` statement reads the workflow twice with one config dict,
    which the first reading filled with the schema's defaults: the fractions were then taken as written, and an
    ImageFolder of split folders refused for a `dataset.test_fraction` nobody wrote. And a module's `onstart` does
    not run: an empty `predict.images` is refused as the module is read, keeping the earlier predictions."""
    from faults import make_images

    host = tmp_path / "host"
    snippet = docs_module_snippet().replace("/path/to/finetune", str(REPO))
    snippet = snippet.replace("use rule * from finetune as finetune_*\n", "use rule * from finetune as finetune_*\n"
                              "use rule train from finetune as finetune_train with:\n    threads: 1\n", 1)
    (host / "config").mkdir(parents=True)
    (host / "Snakefile").write_text(snippet)
    make_images(host / "data" / "train", {"cat": 6, "dog": 6})
    make_images(host / "data" / "test", {"cat": 2, "dog": 2}, seed=1)
    dataset = {"format": "imagefolder", "path": "data"}
    tiny_config(host / "config", name="finetune.yaml", replace={"dataset": dataset}, predict={"top_k": 2})
    # The host's own config/config.yaml, which the module never reads: a key written twice there is none of its business.
    (host / "config" / "config.yaml").write_text("other: 1\nother: 2\n")
    planned = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert planned.returncode == 0 and "finetune_split" in planned.stdout, planned.stdout[-3000:]
    # Each note once, though the module is read twice.
    notes = [line for line in planned.stdout.splitlines() if line.startswith("note: module finetune: predict: ")]
    assert len(notes) == 1, planned.stdout[-3000:]
    tiny_config(host / "config", name="finetune.yaml", replace={"dataset": dataset})
    (host / "inbox").mkdir()
    tiny_config(host / "config", name="finetune.yaml", replace={"dataset": dataset}, predict={"images": "inbox"})
    refused = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert refused.returncode != 0 and "predict.images: no image files in inbox" in refused.stdout, refused.stdout[-3000:]


def test_a_refusal_at_start_names_the_instance_and_its_keys_as_the_host_s_config_holds_them(tmp_path):
    """Two instances given parts of the host's config: a refusal at start of one's predict.images or weights.path said
    `predict.images: inbox_b does not exist`, naming neither the instance nor the host's key (both read the same key
    names); and a key written at the wrong level was told to be given as `--config 'train={epochs: 3}'`, which sets the
    host's `train`, read by no instance, and changed nothing without a word. Each names the module and the key under the
    host's (bb.predict.images), and the hint is the host's --config; a part deeper in the host's config is named so."""
    host = tmp_path / "host"
    two_instance_host(host, TINY_CONFIG, {**TINY_CONFIG, "predict": {"images": "inbox_b"}})
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0, result.stdout[-3000:]
    assert (f"module fb: bb.predict.images: inbox_b does not exist (relative to the working directory {host}): name a "
            "folder of images") in result.stdout, result.stdout[-3000:]
    from faults import PREPROCESSING_32

    weights = {"source": "path", "arch": "resnet18", "path": "weights/nope.pth", "preprocessing": PREPROCESSING_32}
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({
        "aa": {k: v for k, v in TINY_CONFIG.items() if k != "pretrain"} | {"weights": weights}, "bb": TINY_CONFIG}))
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0 and "module fa: aa.weights.path: weights/nope.pth does not exist" in result.stdout, \
        result.stdout[-3000:]
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({"aa": {**TINY_CONFIG, "epochs": 3}, "bb": TINY_CONFIG}))
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0, result.stdout[-3000:]
    assert ("aa.epochs: unknown key (epochs is a key of train: write it under train:, or on the command line --config "
            "'aa={train: {epochs: 3}}')") in result.stdout, result.stdout[-3000:]
    # The host's hint, followed, sets that instance's train.epochs: its train jobs get 3.
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({"aa": TINY_CONFIG, "bb": TINY_CONFIG}))
    result = run_snakemake(host, None, "-n", "--printshellcmds", "--config", "aa={train: {epochs: 3}}",
                           snakefile=host / "Snakefile")
    epochs = {line.split("--out-checkpoint ")[1].split("/results/")[0]: json.loads(shlex.split(line.split(" > ")[0])[
        shlex.split(line.split(" > ")[0]).index("--options") + 1])["epochs"]
        for line in result.stdout.splitlines() if "scripts/train.py" in line and "--options" in line}
    assert epochs == {"runs/a": 3, "runs/b": TINY_CONFIG["train"]["epochs"]}, epochs
    # A part two keys deep in the host's config: its keys named by both.
    (host / "Snakefile").write_text((host / "Snakefile").read_text().replace('config["aa"]', 'config["parts"]["aa"]'))
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({
        "parts": {"aa": {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochz": 2}}}, "bb": TINY_CONFIG}))
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0 and "parts.aa.train.epochz: unknown key (did you mean epochs?)" in result.stdout, \
        result.stdout[-3000:]
    # The schema's pretrain note, said of a module's config: why it is used alone (no --replace-workflow-config there).
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({
        "parts": {"aa": {k: v for k, v in TINY_CONFIG.items() if k != "pretrain"}}, "bb": TINY_CONFIG}))
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile")
    assert ("note: module fa: parts.aa.pretrain: not in your config, which is used alone (the module's config is the "
            "host's alone), so the schema's defaults pretrain") in result.stdout, result.stdout[-3000:]


def test_a_module_given_no_config_or_one_not_a_mapping_is_refused_at_start_naming_it(tmp_path):
    """`config: config["aa"]` with `aa: 3` (or a list) failed with Python's TypeError naming a line of common.smk; `aa:`
    left empty, or no `config:` at all, gave the module no config, and Snakemake read the host's config files as the
    module's: the host's own keys (`aa`, `bb`) were refused as unknown, which pointed away from the mistake. Each is
    one line naming the module; nothing is written."""
    host = two_instance_host(tmp_path / "host", TINY_CONFIG, TINY_CONFIG)
    for value, said in ((3, "module fa: its config (the module block's `config:`) is 3, not a mapping of this "
                            "workflow's keys"),
                        ([1, 2], "module fa: its config (the module block's `config:`) is [1, 2], not a mapping"),
                        (None, "module fa: its module block gives no config (its `config:` is left out, or is a key "
                               "of your config left empty")):
        (host / "config" / "host.yaml").write_text(yaml.safe_dump({"aa": value, "bb": TINY_CONFIG}))
        result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
        assert result.returncode != 0 and said in result.stdout, result.stdout[-3000:]
        assert "TypeError" not in result.stdout and "unknown key" not in result.stdout, result.stdout[-3000:]
    (host / "config" / "host.yaml").write_text(yaml.safe_dump({"aa": TINY_CONFIG, "bb": TINY_CONFIG}))
    (host / "Snakefile").write_text((host / "Snakefile").read_text().replace('    config: config["bb"]\n', "", 1))
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0 and "module fb: its module block gives no config" in result.stdout, result.stdout[-3000:]
    assert not (host / "runs").exists()


def test_two_instances_read_from_two_checkouts_are_refused_at_start_naming_both(tmp_path):
    """module fa from one checkout, fb from another: Python holds one `finetune` package, the first read, and every job
    ran it (fb's jobs ran fa's checkout's code, and an edit of fb's own reran them without changing what they ran).
    Refused at start, naming the module and both checkouts; nothing is written."""
    host = two_instance_host(tmp_path / "host", TINY_CONFIG, TINY_CONFIG)
    other = copy_of_the_workflow(tmp_path / "other checkout").parent
    snakefile = (host / "Snakefile").read_text()
    (host / "Snakefile").write_text(snakefile.replace(f'module fb:\n    snakefile: "{REPO / "Snakefile"}"',
                                                      f'module fb:\n    snakefile: "{other / "Snakefile"}"', 1))
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode != 0 and (f"module fb: read from {other}, while the finetune package this run holds already "
                                       f"comes from {REPO.resolve()} (another instance of this workflow, or an import "
                                       "of your Snakefile's): one of them would run the other checkout's code. Load "
                                       "every instance from one checkout") in result.stdout, result.stdout[-3000:]
    assert not (host / "runs").exists()


def test_a_module_s_train_jobs_name_its_keys_as_the_host_s_config_holds_them(tmp_path):
    """The train and lr_find jobs' messages name the keys they stop on (`train.device is cuda, but no CUDA device is
    available`): as a module given config["aa"], the split job's said aa.dataset..., the train job's train.device.
    Their --key-names name every key under the host's: aa.train.<key>, or where the run's experiment writes it."""
    config = {**TINY_CONFIG, "experiments": {"ft": {"strategy": "feature_extract", "lr": 0.01}}}
    host = two_instance_host(tmp_path / "host", config, config)
    result = run_snakemake(host, None, "-n", "--printshellcmds", "runs/a/results/ft/seed0/model.pt",
                           snakefile=host / "Snakefile")
    command = next(line for line in result.stdout.splitlines() if "--key-names" in line and "train.py" in line)
    names = json.loads(shlex.split(command)[shlex.split(command).index("--key-names") + 1])
    assert names["lr"] == "aa.experiments.ft.lr" and names["strategy"] == "aa.experiments.ft.strategy", names
    assert names["device"] == "aa.train.device" and names["epochs"] == "aa.train.epochs", names


def test_predictions_asked_of_an_instance_without_predict_images_are_refused_at_start_naming_it(tmp_path):
    """A target of an instance's predictions (below its prefix, or its predict_selected rule by its name in the host)
    with predict.images null: the workflow run directly refuses it at start, but as a module the check was skipped and
    Snakemake stopped on an InputFunctionException with a traceback. Refused alike now, naming the instance's key."""
    host = two_instance_host(tmp_path / "host", TINY_CONFIG, TINY_CONFIG)
    for target, module, key in (("runs/b/results/predictions/finetune/seed0/predictions.csv", "fb", "bb"),
                                ("runs/a/results/predictions/selected/predictions.csv", "fa", "aa"),
                                ("fb_predict_selected", "fb", "bb")):
        result = run_snakemake(host, None, "-n", target, snakefile=host / "Snakefile", check=False)
        assert result.returncode != 0, result.stdout[-3000:]
        assert (f"module {module}: {target}: predictions need {key}.predict.images (a folder of images or a CSV with a "
                f"`path` column), which is null: nothing ran") in result.stdout, result.stdout[-3000:]
        assert f"--config '{key}={{predict: {{images: my_images}}}}'" in result.stdout, result.stdout[-3000:]
        assert "InputFunctionException" not in result.stdout, result.stdout[-3000:]


def test_keys_under_the_host_s_key_rename_keys_and_hints_but_not_files_or_paths():
    """The renaming each message of a module given a part of the host's config goes through, against the schema's own
    sections: a key (section and one of its keys, or any name under experiments), a message's leading key and a
    --config hint are the host's; a file named like a section (weights.pth, train.py), a path (results/train.log) and a
    key named so already are left as they are."""
    from finetune.userconfig import keys_under, schema_sections

    sections = schema_sections(yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    text = ("seeds: train.lr and pretrain.dataset.classes, experiments.mine.lr; weights.pth, workflow/scripts/train.py, "
            "results/train.log, fa.export.opset; --config 'predict={images: null}'")
    assert keys_under(text, ["fa"], sections) == (
        "fa.seeds: fa.train.lr and fa.pretrain.dataset.classes, fa.experiments.mine.lr; weights.pth, "
        "workflow/scripts/train.py, results/train.log, fa.export.opset; --config 'fa={predict: {images: null}}'")
    assert keys_under(text, ["parts", "fa"], sections).endswith("--config 'parts={fa: {predict: {images: null}}}'")
    assert keys_under(text, [], sections) == keys_under(text, None, sections) == text


def test_one_instance_s_weights_are_another_s_in_one_run_from_an_empty_folder(tmp_path):
    """docs/module.md's case of one instance's source model as another's weights.path: the second instance's check at
    start refused the file as missing on every command, so the run that was to make it could not start. A file a
    module declared above makes is not refused now: one run from an empty folder makes the first instance's weights
    and publishes them as the second's, the same tensors, and the next run has nothing to do."""
    import torch

    from faults import PREPROCESSING_32

    weights_b = {"source": "path", "path": "runs/a/resources/weights/weights.pth", "arch": "resnet18",
                 "preprocessing": PREPROCESSING_32}
    host = two_instance_host(tmp_path / "host", dict(TINY_CONFIG), {**TINY_CONFIG, "weights": weights_b})
    target = "runs/b/resources/weights/weights.pth"
    result = run_snakemake(host, None, "--printshellcmds", target, snakefile=host / "Snakefile", check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    made_a, made_b = (torch.load(host / f"runs/{x}/resources/weights/weights.pth", map_location="cpu") for x in "ab")
    made_a, made_b = (state.get("state_dict", state) for state in (made_a, made_b))
    assert made_a.keys() == made_b.keys() and all(torch.equal(made_a[key], made_b[key]) for key in made_a)
    again = run_snakemake(host, None, "-n", target, snakefile=host / "Snakefile")
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]
    (host / "runs/a/resources/weights/weights.pth").unlink()  # made by fa, not refused: fa makes it again
    again = run_snakemake(host, None, "-n", target, snakefile=host / "Snakefile")
    assert "fa_weights" in again.stdout, again.stdout[-3000:]
