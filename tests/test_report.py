"""`snakemake --report report.html` on a finished tiny run (issue 4): one self-contained HTML file with
the leaderboard, every run's metrics tables and plots, each with its caption."""

import base64
import json
import os
import re
import subprocess
import sys
import zipfile

import pandas as pd
import pytest
import yaml

from faults import make_images
from helpers import REPO, run_snakemake
from recompute import held_out

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]

RUNS = ["finetune/seed0", "feature_extract/seed0", "scratch/seed0"]
PLOTS = ["confusion_matrix.png", "reliability.png", "learning_curves.png"]


def embedded_results(html: str) -> dict:
    """The report's results table: path -> {mime_type, caption, data_uri (base64), ...}."""
    match = re.search(r"^\s*var results = (\{.*\});\s*$", html, flags=re.MULTILINE)
    assert match, "no results table in the report"
    return json.loads(match.group(1))


def test_report_holds_the_leaderboard_and_every_runs_plots(tiny_run_copy):
    workdir = tiny_run_copy
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "report.html")
    report = workdir / "report.html"
    assert "Report created" in result.stdout
    # Snakemake 9 writes one self-contained HTML file for a .html name (a .zip name gives a zip).
    assert not zipfile.is_zipfile(report)
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")

    results = embedded_results(html)
    expected = {f"results/{run}/{name}" for run in RUNS for name in PLOTS + ["metrics.html"]}
    expected.add("results/summary.html")
    assert expected <= set(results), sorted(expected - set(results))
    for path, entry in results.items():
        if path not in expected:
            continue
        assert entry["caption"].strip(), f"{path} has no caption"
        head, _, payload = entry["data_uri"].partition(";base64,")
        data = base64.b64decode(payload)
        if path.endswith(".png"):
            assert entry["mime_type"] == "image/png" and data.startswith(b"\x89PNG\r\n\x1a\n"), path
        else:
            assert entry["mime_type"] == "text/html" and b"<table" in data, path

    # Captions are rendered for their run, the leaderboard comes first, the workflow is described.
    assert "Confusion matrix of <strong>scratch</strong>" in results["results/scratch/seed0/confusion_matrix.png"]["caption"]
    assert "ECE" in results["results/finetune/seed0/reliability.png"]["caption"]
    leaderboard = base64.b64decode(results["results/summary.html"]["data_uri"].partition(";base64,")[2]).decode()
    # The leaderboard's accuracies, counted here from each run's predictions and the split's labels,
    # best first.
    header = re.findall(r"<th>(.*?)</th>", leaderboard)
    rows = [re.findall(r"<td>(.*?)</td>", row, flags=re.S) for row in re.findall(r"<tr>(.*?)</tr>", leaderboard, flags=re.S)]
    shown = {row[header.index("experiment")]: row[header.index("test accuracy")] for row in rows}
    truth = list(held_out(workdir)["class_name"])
    counted = {}
    for run in RUNS:
        predicted = list(pd.read_csv(workdir / "results" / run / "test_predictions.csv")["predicted"])
        counted[run.split("/")[0]] = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert shown == {experiment: f"{accuracy:.4f}" for experiment, accuracy in counted.items()}
    # Ranked by the validation accuracy of each run's best epoch (its history), not by test accuracy.
    best_val = {run.split("/")[0]: pd.read_csv(workdir / "results" / run / "history.csv")["val_accuracy"].max()
                for run in RUNS}
    validation = [row[header.index("validation")] for row in rows]
    assert validation == [f"val_accuracy {best_val[row[header.index('experiment')]]:.4f}" for row in rows]
    assert [best_val[row[header.index("experiment")]] for row in rows] == sorted(best_val.values(), reverse=True)
    assert "selected by val_accuracy" in leaderboard
    assert "1. Leaderboard" in html and "2. Evaluation" in html
    assert "Transfer learning with" in html  # workflow/report/workflow.rst
    # The description names this run's own experiments and embeds the configuration it was made with.
    description = json.loads(re.search(r"var workflow_desc = (\".*?\");\s*$", html, flags=re.MULTILINE).group(1))
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for name in config["experiments"]:
        assert f">{name}</tt> (" in description, name
    assert "no pretrained weights: the control" in description  # scratch: pretrained false
    text = re.sub(r"<[^>]+>", "", description)
    embedded = json.loads(text[text.index("(every key, defaults filled in):") + len("(every key, defaults filled in):"):]
                          .replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert embedded["dataset"]["max_train_per_class"] == config["dataset"]["max_train_per_class"]
    assert set(embedded["experiments"]) == set(config["experiments"]) and embedded["seeds"] == config["seeds"]


def test_a_report_made_with_another_config_than_the_runs_says_which_runs_and_settings_differ(tiny_run_copy):
    """`--report` renders the config given now as the report's configuration: with `train={epochs: 3}` beside runs
    trained for one epoch (their train_info.json), the report would have stood beside results it did not make."""
    workdir = tiny_run_copy
    trained = {run: json.loads((workdir / "results" / run / "train_info.json").read_text())["options"]["epochs"]
               for run in RUNS}
    assert set(trained.values()) == {1}
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "other.html", "--config", "train={epochs: 3}")
    note = next(line for line in result.stdout.splitlines() if line.startswith("note: the report's configuration"))
    for run in RUNS:
        assert f"results/{run}/train_info.json: epochs 1 (the config: 3)" in note, note
    # The report says so too, above its leaderboard, where its reader looks (the console's note is gone by then).
    caption = embedded_results((workdir / "other.html").read_text())["results/summary.html"]["caption"]
    assert "Note: these results may not be this configuration" in caption, caption
    assert (f"{len(RUNS)} run(s) were trained with settings other than the configuration shown with this report"
            in caption), caption
    for run in RUNS:
        assert f"results/{run}/train_info.json: epochs 1 (the config: 3)" in caption, caption
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "same.html")
    assert "note: the report's configuration" not in result.stdout
    assert "Note:" not in embedded_results((workdir / "same.html").read_text())["results/summary.html"]["caption"]


def test_predictions_not_made_yet_are_no_reason_to_call_the_report_out_of_date(tiny_run_copy):
    """Predictions are not in the report, and nothing it shows is made from them: with predict.images set (a dry run
    would make them), the report gets no note that its results may be out of date."""
    workdir = tiny_run_copy
    make_images(workdir / "new_images", {"any": 3})
    images = ["--config", "predict={images: new_images}"]
    planned = run_snakemake(workdir, workdir / "config.yaml", "-n", *images).stdout
    assert re.findall(r"^(?:local)?rule (\S+):", planned, re.M) == ["predict_selected", "all"], planned[-3000:]
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "new.html", *images)
    assert "would run" not in result.stdout and "Report created" in result.stdout, result.stdout[-3000:]
    assert "Note:" not in embedded_results((workdir / "new.html").read_text())["results/summary.html"]["caption"]


def test_a_report_of_results_older_than_the_config_or_data_says_what_would_run_again(tiny_run_copy):
    """`--report` after a change not yet run (another dataset.seed: another split, so other runs) built the report
    from the old results without a word. A dry run of the same command line is what would run; the note names it."""
    workdir = tiny_run_copy
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "same.html")
    assert "would run" not in result.stdout and "Report created" in result.stdout
    changed = run_snakemake(workdir, workdir / "config.yaml", "--config", "dataset={seed: 7}", "-n").stdout
    expected = {rule: changed.count(f"rule {rule}:") + changed.count(f"localrule {rule}:")
                for rule in ("split", "decode", "train", "evaluate", "summary")}
    assert all(expected.values()), changed
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "old.html", "--config", "dataset={seed: 7}")
    note = next(line for line in result.stdout.splitlines() if "would run" in line)
    assert note.startswith("note: `snakemake -n` with this command line would run "), note
    for rule, count in expected.items():
        assert f"{rule} {count}" in note, (rule, count, note)
    assert "Report created" in result.stdout and (workdir / "old.html").is_file()
    caption = embedded_results((workdir / "old.html").read_text())["results/summary.html"]["caption"]
    assert "Note: these results may not be this configuration" in caption, caption
    for rule, count in expected.items():
        assert f"{rule} {count}" in caption, (rule, count, caption)
    # started from the folder above, the working folder and config file given relative to it (Snakemake changes into
    # --directory before it reads the workflow: the dry run is run where the command was)
    relative = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                               workdir.name, "--cores", "1", "--configfile", f"{workdir.name}/config.yaml", "--report",
                               "rel.html", "--config", "dataset={seed: 7}"], cwd=workdir.parent, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "PWD": str(workdir.parent)})
    assert note in relative.stdout.splitlines() and "could not check" not in relative.stdout, relative.stdout[-3000:]
    # with --report-after-run the workflow runs first: nothing to say (only its dry run here)
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "after.html", "--report-after-run",
                           "--config", "dataset={seed: 7}", "-n")
    assert "would run" not in result.stdout


def test_a_report_whose_leaderboard_ranks_runs_the_config_lacks_names_them(tiny_run_copy):
    """An experiment removed from the config, and `--report` made before the workflow has run with it: the report
    shows the leaderboard as it is, ranking a run the configuration shown beside it does not have. The note and the
    report's caption name that run (the leaderboard's own rows, read here, less the config's experiments)."""
    workdir = tiny_run_copy
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    del config["experiments"]["feature_extract"]
    (workdir / "fewer.yaml").write_text(yaml.safe_dump(config))
    ranked = list(pd.read_csv(workdir / "results" / "summary.csv")["experiment"])
    gone = [run for run in ranked if run not in config["experiments"]]
    assert gone == ["feature_extract"], ranked
    result = run_snakemake(workdir, None, "--report", "fewer.html", "--configfile", str(workdir / "fewer.yaml"))
    note = next(line for line in result.stdout.splitlines() if "ranks" in line and line.startswith("note:"))
    assert f"ranks {len(gone)} run(s) the config given now does not have ({', '.join(gone)})" in note, note
    caption = embedded_results((workdir / "fewer.html").read_text())["results/summary.html"]["caption"]
    assert f"The leaderboard shows {len(gone)} run(s) this configuration does not have ({', '.join(gone)})" in caption
    result = run_snakemake(workdir, workdir / "config.yaml", "--report", "same.html")
    assert "does not have" not in result.stdout, result.stdout[-3000:]


def test_a_report_before_new_runs_are_made_says_it_cannot_be_made_yet(tiny_run_copy):
    """An experiment added and `--report` made before running it: the note said "the report shows the results as they
    are", then Snakemake stopped on the new run's files, marked for the report, that do not exist. It says that the
    report cannot be made before they have run, counting the jobs whose files are missing."""
    workdir = tiny_run_copy
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["experiments"]["wider"] = {"strategy": "feature_extract", "lr": 0.03}
    (workdir / "added.yaml").write_text(yaml.safe_dump(config))
    missing = [run for run in config["experiments"] for seed in config["seeds"]
               if not (workdir / f"results/{run}/seed{seed}/metrics.html").exists()]
    assert missing == ["wider"]
    result = run_snakemake(workdir, workdir / "added.yaml", "--report", "new.html", check=False)
    note = next(line for line in result.stdout.splitlines() if "would run" in line)
    assert f"{len(missing)} of them make files that do not exist yet (evaluate {len(missing)})" in note, note
    assert "the report cannot be made before they have run" in note and "shows the results as they are" not in note
    assert result.returncode != 0 and not (workdir / "new.html").exists()


def test_the_rules_named_as_making_report_files_are_those_that_do():
    """common.smk's REPORT_RULES (a missing file of theirs stops `--report`) against the rule files' `report(...)`."""
    marked = set()
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^(?=(?:local)?rule )", rules.read_text(), flags=re.M)[1:]:
            if re.search(r"^\s+\w+=report\(", block, re.M):
                marked.add(re.match(r"(?:local)?rule (\w+):", block).group(1))
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    named = re.search(r"^REPORT_RULES = \((.*)\)$", common, re.M).group(1)
    assert marked and {name.strip().strip('"') for name in named.split(",") if name.strip()} == marked


def test_the_report_s_description_mentions_the_learning_rate_finder_only_where_a_run_uses_it():
    """The description said "Runs with lr: auto ... shown under 3. Learning-rate finder" for every report, though a
    report has that section only where a run trains at lr: auto."""
    import jinja2

    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as Snakemake renders it
    template = environment.from_string((REPO / "workflow" / "report" / "workflow.rst").read_text())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"].setdefault("lr", 0.001)

    def described(experiments):
        return template.render(snakemake=type("S", (), {"config": {**config, "experiments": experiments}}))

    assert "Learning-rate finder" not in described({"finetune": {"strategy": "finetune"}, "fast": {"lr": 0.1}})
    assert "Learning-rate finder" in described({"finetune": {"strategy": "finetune"}, "probe": {"lr": "auto"}})
    config["train"]["lr"] = "auto"  # every experiment that sets no lr of its own trains at the suggestion
    assert "Learning-rate finder" in described({"finetune": {"strategy": "finetune"}, "fast": {"lr": 0.1}})
    assert "Learning-rate finder" not in described({"fast": {"lr": 0.1}})


def test_the_range_test_s_caption_gives_the_divergence_factor_the_config_sets():
    """lr_find.rst said the test stops at 4x the minimum, whatever lr_find.diverge_factor was: rendered as Snakemake
    renders a caption (its config and the run's wildcards), it gives the factor set."""
    import jinja2

    template = jinja2.Environment().from_string((REPO / "workflow" / "report" / "lr_find.rst").read_text())
    for factor in (4.0, 2.5):
        snakemake = type("S", (), {"config": {"lr_find": {"diverge_factor": factor}},
                                   "wildcards": type("W", (), {"experiment": "probe"})})
        caption = " ".join(template.render(snakemake=snakemake).split())
        assert f"stops once the smoothed loss passes ``lr_find.diverge_factor`` ({factor}) times its minimum" in caption
        assert "**probe**" in caption
