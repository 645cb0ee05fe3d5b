"""Learning-rate range test of one experiment run on train's data path and device (rule `lr_find`)."""

import argparse
from pathlib import Path

from finetune.cli import json_arg, parse_args, positive_int, run, set_torch_threads, weights_file_named
from finetune.options import name_keys
from finetune.stages import lr_find_stage, run_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, help="weights manifest (architecture, preprocessing)")
    parser.add_argument("--source-info", type=Path,
                        help="instead of --manifest, for --scratch with weights from pretrain: the source's decoded images' "
                             "record (rule decode's info.json), whose train images' mean and std pretrain normalises with")
    parser.add_argument("--arch", help="with --source-info: the architecture (weights.arch)")
    parser.add_argument("--options", type=json_arg, required=True, help="the run's training options (JSON)")
    parser.add_argument("--range-test", type=json_arg, default={},
                        help="the range test's settings (JSON; config key lr_find): min_lr, max_lr, steps, smoothing, diverge_factor "
                             "(its seed is the seed of --options)")
    parser.add_argument("--scratch", action="store_true", help="no pretrained weights: the control experiment")
    parser.add_argument("--image-size", type=positive_int)
    parser.add_argument("--out-csv", type=Path, required=True)
    parser.add_argument("--out-png", type=Path, required=True)
    parser.add_argument("--out-suggestion", type=Path, required=True)
    parser.add_argument("--feature-cache-dir", type=Path)
    parser.add_argument("--decoded", type=Path, nargs=2, metavar=("NPY", "JSON"),
                        help="the split's decoded images and their record (rule `decode`); without it the images are decoded here")
    parser.add_argument("--key-names", type=json_arg, default={},
                        help="where the run's own keys are written, for messages (JSON, as train's)")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser, also_reads=weights_file_named)
    name_keys(args.key_names)
    threads = set_torch_threads(args.threads)
    suggestion = lr_find_stage(args.split, run_weights(args.manifest, args.source_info, args.arch, not args.scratch), args.options, args.out_csv, args.out_png, args.out_suggestion,
                               threads, pretrained=not args.scratch, image_size=args.image_size,
                               feature_cache_dir=args.feature_cache_dir,
                               decoded=tuple(args.decoded) if args.decoded else None, range_test=args.range_test)
    print(f"suggested lr {suggestion['lr']:.3g} ({suggestion['method']}, {suggestion['steps']} steps)")


if __name__ == "__main__":
    run(main, fast_exit=True)
