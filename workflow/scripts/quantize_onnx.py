"""Dynamic INT8 quantization of an exported model, with its size, speed and accuracy report
(rule `quantize_onnx`, when `export.quantize: true`). Runs on onnxruntime and onnx, no torch."""

import argparse
from pathlib import Path

from finetune.cli import parse_args, positive_float, positive_int, run, usable_cpus
from finetune.deploy import quantize_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", type=Path, required=True, help="the fp32 model.onnx")
    parser.add_argument("--split", type=Path, required=True, help="accuracy is measured on its test split")
    parser.add_argument("--out-onnx", type=Path, required=True)
    parser.add_argument("--out-report", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="batch sizes to time")
    parser.add_argument("--min-seconds", type=positive_float, default=1.0, help="time each batch size at least this long")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser)
    if min(args.batches) < 1:
        parser.error(f"--batches {min(args.batches)}: each batch size must be at least 1")
    report = quantize_stage(args.onnx, args.split, args.out_onnx, args.out_report,
                            threads=max(1, min(args.threads, usable_cpus())), batches=tuple(args.batches),
                            min_seconds=args.min_seconds)
    size, acc = report["size_bytes"], report["test_accuracy"]
    print(f"int8: {size['int8'] / 1e6:.1f} MB ({size['ratio']:.2f} of fp32); test accuracy {acc['int8']:.4f} "
          f"(fp32 {acc['fp32']:.4f}, change {acc['change']:+.4f}) on {acc['n_images']} images")


if __name__ == "__main__":
    run(main)
