"""Classify new images with an exported ONNX model (rule `predict`).

Runs on onnxruntime, Pillow and numpy only (no torch): a deployment needs nothing else. The
preprocessing (resize, crop, mean/std, channel order) is read from the model's own metadata.
Images that cannot be read are listed on stderr and in the CSV's `error` column; the rest are
classified regardless.
"""

import argparse
import sys
from pathlib import Path

from finetune.cli import parse_args, positive_int, run, usable_cpus
from finetune.deploy import predict_images


def chosen_model(args) -> Path:
    """The model of the run selected among --choose-from, recorded in --out-selection."""
    from finetune.errors import ConfigError, DamagedFile
    from finetune.fileio import write_json
    from finetune.selection import choose_model, folder_record

    for folder in args.choose_from:  # a key removed or a value changed by hand: a KeyError naming no file
        try:
            folder_record(folder)
        except DamagedFile:  # no JSON at all: its own message names the file
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ConfigError(f"{folder}: its train_info.json and history.csv do not hold what its train job writes "
                              f"({type(exc).__name__}: {exc}). Edited by hand or cut short? `snakemake --forcerun "
                              f"{folder}/model.pt` trains it again") from exc
    chosen = choose_model(args.choose_from, args.model_name, args.seed)
    print(f"selected {chosen['folder']} by {chosen['metric']} {chosen['value']:.4f}: {chosen['model']}", file=sys.stderr)
    if args.out_selection is not None:
        write_json(args.out_selection, {**chosen, "candidates": [str(f) for f in args.choose_from]})
    return Path(chosen["model"])


def overwrite_problem(args) -> str | None:
    """Why --out (or --out-selection) would be read as an image or a model later: a name of theirs. Said before any
    image is read, so a slip of the shell's history costs nothing (an output over an input or a folder:
    finetune.cli.parse_args)."""
    from finetune.images import IMAGE_EXTENSIONS

    for out, option in ((args.out, "--out"), (args.out_selection, "--out-selection")):
        if out is not None and out.suffix.lower() in (*IMAGE_EXTENSIONS, ".onnx"):
            kind = "a model's" if out.suffix.lower() == ".onnx" else "an image's"
            return f"{option} {out} has {kind} name ({out.suffix}): name a .csv file (a .json for --out-selection)"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="model.onnx (or model.int8.onnx) from export_onnx")
    which.add_argument("--choose-from", nargs="+", type=Path, metavar="RUN_FOLDER",
                       help="results/<run>/seed<n> folders: the model of the run selected by validation metric "
                            "(finetune.selection: best mean over seeds, then its best seed)")
    parser.add_argument("--model-name", help="with --choose-from: the model file in the run folder (default: model.onnx)")
    parser.add_argument("--seed", type=int, help="with --choose-from: take the selected run's model of this seed")
    parser.add_argument("--out-selection", type=Path, help="with --choose-from: JSON naming the chosen run and why")
    parser.add_argument("--images", type=Path, required=True,
                        help="a folder of images (searched recursively), one image file, or a CSV file with a `path` column")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser, folders=("images",), inside=("choose_from",))
    for option, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"{option} {value}: must be at least 1")
    problem = overwrite_problem(args)
    if problem:
        parser.error(f"{problem}; nothing was written")
    unused = [option for option, value in (("--model-name", args.model_name), ("--seed", args.seed),
                                           ("--out-selection", args.out_selection)) if value is not None]
    if args.model is not None and unused:
        parser.error(f"{', '.join(unused)}: only with --choose-from (--model names the model itself)")
    args.model_name = args.model_name or "model.onnx"
    model = args.model if args.model is not None else chosen_model(args)
    counts = predict_images(model, args.images, args.out, top_k=args.top_k, batch_size=args.batch_size,
                            threads=max(1, min(args.threads, usable_cpus())))
    print(f"classified {counts['classified']} of {counts['images']} image(s) with {model} -> {args.out}"
          + (f"; {counts['failed']} unreadable (see the error column)" if counts["failed"] else ""),
          file=sys.stderr)


if __name__ == "__main__":
    run(main)
