"""What a scratch run (the control, pretrained: false) builds its model from where the weights come from a url or a
file (rule `scratch_manifest`): the architecture and preprocessing the config gives those weights, in a manifest of
no weights file. The weights job writes them alike in its own manifest, with the file's sha256, so a scratch run that
read that one trained again for other weights at weights.path (or another weights.sha256), which it never loads."""

import argparse
from pathlib import Path

from finetune.cli import json_arg, parse_args, run
from finetune.fileio import write_json
from finetune.images import Preprocessing
from finetune.weights import MANIFEST_FORMAT


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=json_arg, required=True,
                        help="the weights config's arch and preprocessing (JSON)")
    parser.add_argument("--out-manifest", type=Path, required=True)
    args = parse_args(parser)
    weights = args.weights
    missing = [key for key in ("arch", "preprocessing") if not weights.get(key)]
    if missing:
        parser.error(f"--weights: no {' and no '.join(missing)} (the weights config's, as the workflow gives them)")
    try:
        prep = Preprocessing.from_dict(weights["preprocessing"]).to_dict()  # as the weights job writes it
    except (KeyError, TypeError, ValueError) as exc:
        parser.error(f"--weights' preprocessing {weights['preprocessing']!r}: {type(exc).__name__}: {exc} (the "
                     "weights.preprocessing of the config, with its defaults, as the workflow gives it)")
    write_json(args.out_manifest, {"format": MANIFEST_FORMAT, "file": "", "sha256": None, "arch": weights["arch"],
                                   "num_classes": None, "classes": [], "preprocessing": prep,
                                   "source": {"kind": "scratch"}})
    print(f"{weights['arch']}, no weights (a scratch run), preprocessing {prep}")


if __name__ == "__main__":
    run(main)
