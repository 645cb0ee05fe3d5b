"""The leaderboard (rule `summary`): every run (mean and std over seeds), ranked and selected by the
validation metric; the selected run of each experiment also goes to --out-selected."""

import argparse
import csv
import re
from pathlib import Path

from finetune.cli import json_arg, parse_args, run
from finetune.errors import ConfigError, DamagedFile
from finetune.stages import summary_stage


RUN_FILES = ("train_info.json", "metrics.json", "history.csv")  # what the table reads of each run, at the least


def unreadable_run(run: dict) -> str | None:
    """Why a run's files do not hold what its train and evaluate jobs write (a key removed or a value changed by hand,
    a history without epochs: the leaderboard stopped on a KeyError naming no file, or ranked such a run first among
    equals); None where they do."""
    from finetune.fileio import read_json
    from finetune.leaderboard import run_row

    folder = Path(run["info"]).parent
    with open(folder / "history.csv", newline="") as handle:
        if not any(True for _ in csv.DictReader(handle)):
            return f"{folder / 'history.csv'} holds no epoch"
    try:
        run_row(run, read_json(run["info"]), read_json(run["metrics"]))
    except DamagedFile:  # no JSON at all: its own message names the file
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        return f"{folder}: train_info.json, metrics.json and history.csv do not hold what the run's jobs write ({type(exc).__name__}: {exc})"
    return None


def _runs_given_twice(folders: list[str]) -> str:
    """The folders of ``folders`` that are one run (one experiment and seed: `results/<run>/seed<n>`, the same folder
    written another way, or the same run's folder of two projects), said as a message; "" where each is one run."""
    seen: dict[tuple[str, str], str] = {}
    twice = []
    for folder in folders:
        resolved = Path(folder).resolve()
        run = (resolved.parent.name, resolved.name)
        if run in seen:
            twice.append(f"{seen[run]} and {folder} are both run {run[0]} {run[1]}")
        else:
            seen[run] = folder
    return "; ".join(twice)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="results/<experiment>/seed<seed> folders, each holding train_info.json, metrics.json and test_predictions.csv")
    parser.add_argument("--weights-source", required=True, help="names the pretrained weights in the table")
    parser.add_argument("--sweep-of", type=json_arg, default={},
                        help='JSON {run name: experiment as written}: the runs of a sweep are selected among together')
    parser.add_argument("--export-tta", action="store_true",
                        help="export.tta: the exported models average over the mirror image themselves (a note says so)")
    parser.add_argument("--out-csv", type=Path, required=True)
    parser.add_argument("--out-md", type=Path, required=True)
    parser.add_argument("--out-html", type=Path, help="the table as an HTML page (for the report)")
    parser.add_argument("--out-selected", type=Path, help="JSON: per experiment, the selected run, seed and model")
    parser.add_argument("--split-report", type=Path,
                        help="the target split's report: its near duplicates across splits are noted under the table")
    args = parse_args(parser, inside=("runs",))
    lacking = [f"{folder} ({', '.join(name for name in RUN_FILES if not (Path(folder) / name).is_file())})"
               for folder in args.runs if not all((Path(folder) / name).is_file() for name in RUN_FILES)]
    if lacking:  # a traceback (FileNotFoundError) named the first file only
        parser.error(f"--runs: each is a run's results/<run>/seed<n> folder, as its train and evaluate jobs leave it; "
                     f"these lack files: {'; '.join(lacking)}")
    twice = _runs_given_twice(args.runs)
    if twice:  # counted as two seeds: a spread over seeds of 0, "seed_list 0 0"
        parser.error(f"--runs: each run once; {twice}")
    runs = []
    for folder in map(Path, args.runs):
        seed = re.fullmatch(r"seed(\d+)", folder.name)
        runs.append({"experiment": folder.parent.name, "sweep": args.sweep_of.get(folder.parent.name), "seed": int(seed.group(1)) if seed else folder.name,
                     "info": folder / "train_info.json", "metrics": folder / "metrics.json",
                     "predictions": folder / "test_predictions.csv",
                     "weights_source": args.weights_source})
    problems = [problem for problem in map(unreadable_run, runs) if problem]
    if problems:
        raise ConfigError("; ".join(problems) + ". Edited by hand or cut short? `snakemake --forcerun <run folder>/model.pt` "
                          "trains and evaluates a run again (`--forcerun <run folder>/metrics.json` evaluates it again)")
    table = summary_stage(runs, args.out_csv, args.out_md, args.out_html, args.out_selected, args.split_report,
                          exported_tta=args.export_tta)
    print(args.out_md.read_text())
    return 0 if len(table) else 1


if __name__ == "__main__":
    run(main)
