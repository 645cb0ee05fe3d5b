"""`snakemake --lint` finds nothing but the one lint the project answers in README ("Development"):
rules carry no conda environment or container (one pinned venv runs every rule)."""

import re

from helpers import REPO, run_snakemake

ACCEPTED = "Specify a conda environment or container for each rule."
# Snakemake 9.27 prints lints as text even with `--lint json`: "Lints for <what>:" then "    * <title>:".
HEADER = re.compile(r"^Lints for (?P<what>.+):$")
TITLE = re.compile(r"^    \* (?P<title>.+):$")


def lints(output: str) -> list[tuple[str, str]]:
    """(what, lint title) for every lint in the output of `snakemake --lint`."""
    found, what = [], None
    for line in output.splitlines():
        if header := HEADER.match(line):
            what = header["what"]
        elif (title := TITLE.match(line)) and what is not None:
            found.append((what, title["title"]))
    return found


def test_lint_finds_nothing_but_the_missing_conda_environments(tmp_path):
    result = run_snakemake(tmp_path, REPO / "config" / "config.yaml", "--lint", check=False)
    found = lints(result.stdout)
    others = [f"{what}: {title}" for what, title in found if title != ACCEPTED]
    assert not others, "\n".join(others)
    rules_linted = {what.split(" (")[0] for what, _ in found}
    # The parse saw the lints Snakemake printed: one accepted lint per rule that runs a command.
    rules = ("split", "decode", "pretrain", "weights", "scratch_manifest", "lr_find", "train", "evaluate", "export_onnx", "quantize_onnx", "predict",
             "predict_selected", "summary")
    assert rules_linted == {f"rule {r}" for r in rules}, result.stdout[-3000:]
