"""Test-set metrics of a trained model: accuracy, top-k, per-class P/R/F1, calibration, confusion matrix,
and their plots (rule `evaluate`)."""

import argparse
from pathlib import Path

from finetune.cli import parse_args, positive_int, run, set_torch_threads
from finetune.stages import evaluate_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--history", type=Path, help="the run's history.csv, for the learning curves")
    parser.add_argument("--train-info", type=Path, help="the run's train_info.json: the learning curves mark its best_epoch")
    parser.add_argument("--out-metrics", type=Path, required=True)
    parser.add_argument("--out-confusion", type=Path, required=True)
    parser.add_argument("--out-predictions", type=Path, required=True)
    parser.add_argument("--out-confusion-png", type=Path)
    parser.add_argument("--out-reliability-png", type=Path)
    parser.add_argument("--out-learning-curves-png", type=Path)
    parser.add_argument("--out-html", type=Path, help="the metrics tables as an HTML page (for the report)")
    parser.add_argument("--title", help="names the run in plot titles (default: the checkpoint's folder)")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--calibration-bins", type=int, default=15)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA where there is one")
    parser.add_argument("--batch-size", type=int, default=256, help="test images per forward pass")
    parser.add_argument("--decoded", type=Path, nargs=2, metavar=("NPY", "JSON"),
                        help="the split's decoded images and their record (rule `decode`); without it the images are decoded here")
    parser.add_argument("--onnx", type=Path, help="also score this exported model (onnxruntime) on the same images")
    parser.add_argument("--tta", choices=["none", "hflip"], default="none",
                        help="hflip: each image's logits are the mean over it and its mirror image")
    parser.add_argument("--split-report", type=Path,
                        help="the split's report: its near duplicates give the test accuracy without the test images that have one")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser)
    for option, value in (("--top-k", args.top_k), ("--calibration-bins", args.calibration_bins),
                          ("--batch-size", args.batch_size)):
        if value < 1:  # the schema's bounds: -2 wrote a "top--2" accuracy, 0 bins an ECE of 0.0, batch 0 a traceback
            parser.error(f"{option} {value}: must be at least 1")
    if args.out_learning_curves_png and not args.history:
        parser.error("--out-learning-curves-png: the learning curves are drawn from the run's history.csv: give --history")
    threads = set_torch_threads(args.threads)
    plots = {"confusion": args.out_confusion_png, "reliability": args.out_reliability_png,
             "learning_curves": args.out_learning_curves_png}
    report = evaluate_stage(args.checkpoint, args.split, args.out_metrics, args.out_confusion, args.out_predictions,
                            threads, batch_size=args.batch_size, device=args.device, top_k=args.top_k, calibration_bins=args.calibration_bins, history=args.history,
                            plots={k: v for k, v in plots.items() if v}, out_html=args.out_html, title=args.title,
                            decoded=tuple(args.decoded) if args.decoded else None, onnx_model=args.onnx,
                            tta=args.tta, split_report=args.split_report, train_info=args.train_info)
    k = report["top_k"]
    top_k = f"top-{k} {report[f'top{k}_accuracy']:.4f}, " if k else ""
    print(f"test accuracy {report['accuracy']:.4f}, {top_k}macro F1 {report['macro_f1']:.4f}, ECE {report['ece']:.4f} "
          f"on {report['n_test']} images")
    if not k:
        print(f"note: evaluate.top_k {args.top_k} is not below the {len(report['per_class'])} classes: every image's class "
              f"is among the top {args.top_k}, so top-k accuracy is left out (metrics.json top_k: null)")
    near = report["near_duplicates"]
    if near["test_images_with_copy"]:
        without = near["accuracy_without"]
        print(f"{near['test_images_with_copy']} test image(s) have a near duplicate in train or val "
              f"(test_predictions.csv, near_duplicate_of): test accuracy without them "
              f"{'n/a' if without is None else f'{without:.4f}'} on {near['n_test_without']} images")
    if "onnx" in report:
        onnx = report["onnx"]
        print(f"ONNX model {onnx['model']}: test accuracy {onnx['accuracy']:.4f}, top-1 agreement with PyTorch "
              f"{onnx['top1_agreement_with_pytorch']:.4f}, largest logit difference {onnx['max_abs_logit_diff']:.2e}")


if __name__ == "__main__":
    run(main, fast_exit=True)
