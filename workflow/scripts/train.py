"""Fine-tune: copy the source model, put a new output layer for the target classes, train (rule `train`)."""

import argparse
import os
from pathlib import Path

from finetune.cli import json_arg, parse_args, positive_int, run, set_torch_threads, weights_file_named
from finetune.options import name_keys
from finetune.stages import train_stage, run_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, help="weights manifest (architecture, preprocessing)")
    parser.add_argument("--source-info", type=Path,
                        help="instead of --manifest, for --scratch with weights from pretrain: the source's decoded images' "
                             "record (rule decode's info.json), whose train images' mean and std pretrain normalises with")
    parser.add_argument("--arch", help="with --source-info: the architecture (weights.arch)")
    parser.add_argument("--options", type=json_arg, required=True, help="training options (JSON)")
    parser.add_argument("--scratch", action="store_true", help="no pretrained weights: the control experiment")
    parser.add_argument("--image-size", type=positive_int)
    parser.add_argument("--out-checkpoint", type=Path, required=True)
    parser.add_argument("--out-history", type=Path, required=True)
    parser.add_argument("--out-info", type=Path, required=True)
    parser.add_argument("--resume-dir", type=Path, help="resume state lives here, outside the rule's outputs")
    parser.add_argument("--feature-cache-dir", type=Path)
    parser.add_argument("--decoded", type=Path, nargs=2, metavar=("NPY", "JSON"),
                        help="the split's decoded images and their record (rule `decode`); without it the images are decoded here")
    parser.add_argument("--lr-from", type=Path, help="lr: auto takes the lr from this file (rule lr_find's suggestion.json)")
    parser.add_argument("--key-names", type=json_arg, default={},
                        help="where the run's own keys are written, for messages (JSON: {lr: experiments.<name>.lr}); "
                             "the others are train.<key>")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser, also_reads=weights_file_named)
    from finetune import distributed  # imports torch: inside main, so that the time line counts it under `imports`

    name_keys(args.key_names)
    # Several training processes on a node (torchrun) share the job's threads.
    threads = set_torch_threads(distributed.ddp_threads(args.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    ranks = distributed.start(args.options)
    try:
        info = train_stage(args.split, run_weights(args.manifest, args.source_info, args.arch, not args.scratch), args.options, args.out_checkpoint, args.out_history,
                           args.out_info, threads, pretrained=not args.scratch, image_size=args.image_size,
                           resume_dir=args.resume_dir, feature_cache_dir=args.feature_cache_dir,
                           decoded=tuple(args.decoded) if args.decoded else None, lr_from=args.lr_from, ranks=ranks)
    finally:
        distributed.stop(ranks)
    distributed.remove_launcher_folders(ranks)
    if ranks.main:
        print(f"best epoch {info['best_epoch']} of {info['epochs_run']}; {info['train_seconds']} s")


if __name__ == "__main__":
    run(main, fast_exit=True)
