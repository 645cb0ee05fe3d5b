"""Classify new images with an exported ONNX model (rule `predict`).

Runs on onnxruntime, Pillow and numpy only (no torch): a deployment needs nothing else. The
preprocessing (resize, crop, mean/std, channel order) is read from the model's own metadata.
Images that cannot be read are listed on stderr and in the CSV's `error` column; the rest are
classified regardless.
"""

import argparse
import sys
from pathlib import Path

from finetune.cli import run, usable_cpus
from finetune.deploy import predict_images
from finetune.errors import DataError


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model.onnx (or model.int8.onnx) from export_onnx")
    parser.add_argument("--images", type=Path, required=True,
                        help="a folder of images (searched recursively) or a CSV file with a `path` column")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1")
    counts = predict_images(args.model, args.images, args.out, top_k=args.top_k, batch_size=args.batch_size,
                            threads=max(1, min(args.threads, usable_cpus())))
    print(f"classified {counts['classified']} of {counts['images']} image(s) -> {args.out}"
          + (f"; {counts['failed']} unreadable (see the error column)" if counts["failed"] else ""),
          file=sys.stderr)
    if counts["classified"] == 0:
        raise DataError(f"none of the {counts['images']} image(s) could be read (reasons in {args.out})")


if __name__ == "__main__":
    run(main)
