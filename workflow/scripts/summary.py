"""One table comparing every experiment (mean and std over seeds) (rule `summary`)."""

import argparse
import re
from pathlib import Path

from finetune.cli import run
from finetune.stages import summary_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="results/<experiment>/seed<seed> folders, each holding train_info.json and metrics.json")
    parser.add_argument("--weights-source", required=True)
    parser.add_argument("--out-csv", type=Path, required=True)
    parser.add_argument("--out-md", type=Path, required=True)
    args = parser.parse_args()
    runs = []
    for folder in map(Path, args.runs):
        seed = re.fullmatch(r"seed(\d+)", folder.name)
        runs.append({"experiment": folder.parent.name, "seed": int(seed.group(1)) if seed else folder.name,
                     "info": folder / "train_info.json", "metrics": folder / "metrics.json",
                     "weights_source": args.weights_source})
    table = summary_stage(runs, args.out_csv, args.out_md)
    print(args.out_md.read_text())
    return 0 if len(table) else 1


if __name__ == "__main__":
    run(main)
