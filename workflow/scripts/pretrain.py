"""Recipe step 1 offline: pretrain the source architecture from scratch on the source split (rule `pretrain`)."""

import argparse
from pathlib import Path

from finetune.cli import json_arg, parse_args, positive_int, run, set_torch_threads
from finetune.options import name_keys
from finetune.stages import pretrain_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--image-size", type=positive_int, required=True)
    parser.add_argument("--options", type=json_arg, required=True, help="training options (JSON)")
    parser.add_argument("--out-weights", type=Path, required=True)
    parser.add_argument("--out-info", type=Path, required=True)
    parser.add_argument("--out-history", type=Path, required=True)
    parser.add_argument("--resume-dir", type=Path)
    parser.add_argument("--decoded", type=Path, nargs=2, metavar=("NPY", "JSON"),
                        help="the split's decoded images and their record (rule `decode`); without it the images are decoded here")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser)
    name_keys(prefix="pretrain.train")  # the messages name the keys the user wrote there
    threads = set_torch_threads(args.threads)
    info = pretrain_stage(args.split, args.arch, args.image_size, args.options, args.out_weights, args.out_info,
                          args.out_history, threads, resume_dir=args.resume_dir,
                          decoded=tuple(args.decoded) if args.decoded else None)
    print(f"source model {info['arch']} on {len(info['classes'])} classes: kept epoch {info['best_epoch']}, val accuracy "
          f"{info['best_val_accuracy']:.4f}")


if __name__ == "__main__":
    run(main, fast_exit=True)
