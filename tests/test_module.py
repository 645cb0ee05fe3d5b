"""The workflow as a module of another workflow (README "As a module of your own workflow"): the README's own
snippet, run for real on the tiny config, trains the same model as the workflow run directly."""

import json
import re

import pytest

from helpers import REPO, TINY_CONFIG, copy_of_the_workflow, run_snakemake, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.fashion_mnist]


def readme_module_snippet() -> str:
    """The python block under the README's "As a module of your own workflow"."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## As a module of your own workflow", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_s_module_snippet_runs_the_workflow_as_a_module(tiny_run, tmp_path):
    host = tmp_path / "host"
    snippet = readme_module_snippet().replace("/path/to/finetune", str(REPO))
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


def test_a_module_with_a_prefix_and_this_repository_inside_the_host_finds_its_own_files(tmp_path):
    """The repository vendored inside the host's folder (a git submodule) and the module given a `prefix:`: the rules'
    own scripts and modules are this repository's files, not paths under the prefix (which would be missing)."""
    host = tmp_path / "host"
    copy_of_the_workflow(host / "finetune")
    snippet = readme_module_snippet().replace("/path/to/finetune", "finetune")
    (host / "Snakefile").write_text(snippet.replace("    config: config\n", '    config: config\n    prefix: "runs/a"\n', 1))
    (host / "config").mkdir()
    tiny_config(host / "config", name="finetune.yaml", replace={"experiments": {"finetune": TINY_CONFIG["experiments"]["finetune"]}})
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    assert result.returncode == 0 and "Missing input files" not in result.stdout, result.stdout[-3000:]
    assert "runs/a/results/finetune/seed0/model.pt" in result.stdout, result.stdout[-3000:]
    assert re.search(r"input: .*(?<!runs/a/)finetune/workflow/scripts/train\.py", result.stdout), result.stdout[-3000:]


def test_the_host_s_config_file_is_checked_as_a_config_file_given_here(tmp_path):
    """A key written twice in the host's `configfile:` (two `train:` sections): YAML keeps the last, so the first's
    epochs were lost without a word where the workflow is a module (only --configfile's files were checked). Refused,
    naming the host's file and both lines."""
    host = tmp_path / "host"
    (host / "config").mkdir(parents=True)
    (host / "Snakefile").write_text(readme_module_snippet().replace("/path/to/finetune", str(REPO)))
    config = tiny_config(host / "config", name="finetune.yaml")
    text = config.read_text()
    first = text.splitlines().index("train:") + 1
    config.write_text(text + "train:\n  lr: 0.002\n")
    result = run_snakemake(host, None, "-n", snakefile=host / "Snakefile", check=False)
    second = len(text.splitlines()) + 1
    assert result.returncode != 0, result.stdout[-3000:]
    assert f"config/finetune.yaml: train is written twice (lines {first} and {second})" in result.stdout, result.stdout[-3000:]
