"""Decode every image of a split file once into a file-backed uint8 array (rule `decode`)."""

import argparse
from pathlib import Path

from finetune.cli import json_arg, parse_args, positive_int, run
from finetune.stages import decode_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, help="weights manifest: its preprocessing gives the sizes (target dataset)")
    parser.add_argument("--weights-sizes", type=json_arg,
                        help="what fixes the weights' preprocessing, from the config (JSON; the workflow's way): "
                             '{"weights": <weights.source>, "sizes": <pretrain.image_size, the torchvision enum, or '
                             "weights.preprocessing>}")
    parser.add_argument("--image-size", type=positive_int, help="the crop; with --manifest or --weights-sizes it overrides the weights' crop")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=["train", "val", "test"],
                        help="which of the split file's images are read later (default: all)")
    parser.add_argument("--channel-stats", choices=["train"],
                        help="record the mean and std per channel of these images (the source's: pretrain and the scratch "
                             "control normalise with them)")
    parser.add_argument("--out-images", type=Path, required=True)
    parser.add_argument("--out-info", type=Path, required=True)
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parse_args(parser)
    info = decode_stage(args.split, args.out_images, args.out_info, args.threads, image_size=args.image_size,
                        manifest_path=args.manifest, splits=args.splits, weights_sizes=args.weights_sizes,
                        channel_stats_of=args.channel_stats)
    print(f"{info['images_decoded']} images decoded in {info['decode_seconds']} s")


if __name__ == "__main__":
    run(main)
