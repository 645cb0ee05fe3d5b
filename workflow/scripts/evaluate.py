"""Test-set metrics of a trained model: accuracy, per-class P/R/F1, confusion matrix (rule `evaluate`)."""

import argparse
from pathlib import Path

from finetune.cli import run, set_torch_threads
from finetune.stages import evaluate_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--out-metrics", type=Path, required=True)
    parser.add_argument("--out-confusion", type=Path, required=True)
    parser.add_argument("--out-predictions", type=Path, required=True)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    threads = set_torch_threads(args.threads)
    report = evaluate_stage(args.checkpoint, args.split, args.out_metrics, args.out_confusion, args.out_predictions,
                            threads, top_k=args.top_k)
    print(f"test accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} on {report['n_test']} images")


if __name__ == "__main__":
    run(main)
