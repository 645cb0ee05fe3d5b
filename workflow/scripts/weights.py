"""Acquire pretrained weights (torchvision, URL, local path, or the pretrain rule) with a manifest (rule `weights`)."""

import argparse
from pathlib import Path

from finetune.cli import json_arg, parse_args, run
from finetune.stages import weights_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=json_arg, required=True, help="the weights config (JSON)")
    parser.add_argument("--fetch", type=json_arg, default={},
                        help="how to fetch them, merged into --weights (JSON: timeout_s, mirror, url; path, the file's "
                             "state pinning it; the workflow passes these apart: they do not rerun the job)")
    parser.add_argument("--out-weights", type=Path, required=True)
    parser.add_argument("--out-manifest", type=Path, required=True)
    parser.add_argument("--pretrained-weights", type=Path, help="with source pretrain: the pretrain rule's weights")
    parser.add_argument("--pretrained-info", type=Path, help="with source pretrain: the pretrain rule's info JSON")
    args = parse_args(parser, json_paths={"weights": "path"})
    if "source" not in args.weights:
        parser.error("--weights: no \"source\" (torchvision, url, path or pretrain)")
    unpaired = [option for option, value in (("--pretrained-weights", args.pretrained_weights),
                                              ("--pretrained-info", args.pretrained_info)) if value is None]
    if args.weights["source"] == "pretrain" and unpaired:
        parser.error(f"--weights' source is pretrain: give {' and '.join(unpaired)} (the pretrain rule's outputs)")
    manifest = weights_stage({**args.weights, **args.fetch}, args.out_weights, args.out_manifest,
                             pretrained_info=args.pretrained_info, pretrained_weights=args.pretrained_weights)
    print(f"{manifest['arch']} weights ({manifest['num_classes']} source classes) sha256 {manifest['sha256']}")


if __name__ == "__main__":
    run(main)
