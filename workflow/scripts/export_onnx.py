"""Export the fine-tuned model to ONNX and check onnxruntime against PyTorch (rule `export_onnx`)."""

import argparse
from pathlib import Path

from finetune.cli import parse_args, positive_int, run, set_torch_threads
from finetune.export import DEFAULT_RTOL
from finetune.stages import export_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="parity is checked on the test split's images")
    parser.add_argument("--out-onnx", type=Path, required=True)
    parser.add_argument("--out-parity", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="absolute part of the allowed logit difference")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help="the part that grows with each image's largest |logit|: tolerance + rtol x that")
    parser.add_argument("--parity-batch", type=int, default=16)
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--decoded", type=Path, nargs=2, metavar=("NPY", "JSON"),
                        help="the split's decoded images and their record (rule `decode`); without it the images are decoded here")
    parser.add_argument("--tta", choices=["none", "hflip"], default="none",
                        help="hflip: the exported graph averages the logits of each image and its mirror image")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser)
    checks = ((args.tolerance > 0, f"--tolerance {args.tolerance:g}: must be above 0"),
              (args.rtol >= 0, f"--rtol {args.rtol:g}: must be at least 0"),
              (2 <= args.parity_batch <= 256, f"--parity-batch {args.parity_batch}: must be 2 to 256"))
    for ok, message in checks:  # the schema's bounds: refused before the export's seconds, not after
        if not ok:
            parser.error(message)
    threads = set_torch_threads(args.threads)
    report = export_stage(args.checkpoint, args.split, args.out_onnx, args.out_parity, args.tolerance,
                          args.parity_batch, threads, dynamo=args.exporter == "dynamo", opset=args.opset,
                          decoded=tuple(args.decoded) if args.decoded else None, tta=args.tta == "hflip",
                          rtol=args.rtol)
    print(f"parity passed: max |diff| {report['max_abs_diff']:.2e} within {args.tolerance:g} + {args.rtol:g} x "
          f"the largest |logit| (at most {report['max_logit']:.3g}); "
          f"top-1 agreement {report['top1_agreement']:.4f} on {report['n_images']} images")


if __name__ == "__main__":
    # Every output is closed when main returns: skip the interpreter's seconds-long teardown.
    run(main, fast_exit=True)
