"""Write a seeded, stratified train/val/test split of a dataset as CSV (rule `split`)."""

import argparse
from pathlib import Path

from finetune.cli import json_arg, parse_args, positive_int, run
from finetune.data import named_under, other_labels_line
from finetune.errors import FinetuneError
from finetune.images import not_read_line
from finetune.stages import split_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset config (JSON)")
    parser.add_argument("--out", type=Path, required=True, help="split CSV: path,label,class_name,split")
    parser.add_argument("--report", type=Path, required=True, help="JSON: counts per class and split, skipped images")
    parser.add_argument("--fetch", type=json_arg, default={},
                        help="the dataset config's keys of a download (JSON: download_dir, download_timeout_s)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--key", default="dataset",
                        help="where the config holds the dataset (pretrain.dataset for the source): its messages name its keys so")
    args = parse_args(parser, outputs=("report",), json_paths={"dataset": "path"})
    try:
        report = split_stage({**args.dataset, **args.fetch}, args.out, args.report, threads=args.threads)
    except FinetuneError as exc:
        exc.args = (named_under(str(exc), args.key),)  # the same error, its keys named where the config holds them
        raise exc from None
    say_report(report, args.report, lambda line: print(named_under(line, args.key)))


def say_report(report: dict, path: Path, say) -> None:
    """The split's log: its counts and what it left out or found, each line through ``say``."""
    for name, counts in report["counts"].items():
        say(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report["dataset"]["format"] != "fashion-mnist":  # whose official test split is documented as the test set
        for split in report["official_splits"]:
            say(f"{split}: the dataset's own {split} split (its {split} folder, or the rows marked {split}); "
                f"dataset.{split}_fraction does not apply to it")
    if report["skipped_images"]:
        say(f"skipped {len(report['skipped_images'])} image(s) (dataset.on_bad_image: skip), "
            f"listed in {path}:")
        for item in report["skipped_images"]:
            say(f"  {item['path']}: {item['reason']}")
    if report["ignored_files"]:
        say(not_read_line(report["ignored_files"]))
    outside = report["images_outside_class_folders"]
    if outside:
        say(f"ignored {len(outside)} image(s) outside any class folder (an image's class is the folder it is in), "
            f"listed in {path}: {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''}")
    other = report.get("rows_of_other_labels")
    if other:
        say(other_labels_line(other, report["dataset"]["path"]))
    if report["layout_note"]:
        say(f"note: {report['layout_note']}")
    if report["duplicate_images"]:
        say(f"left out {len(report['duplicate_images'])} copy(ies) of images found more than once in a class "
            f"(identical files; one copy kept, so no image is in two splits), listed in {path}:")
        for item in report["duplicate_images"]:
            say(f"  {item['path']}: same as {item['same_as']}")
    say(near_duplicates_lines(report["near_duplicates"], path))


def near_duplicates_lines(near: dict, report: Path) -> str:
    if not near["checked"]:
        return (f"near duplicates across splits: not checked ({near['why']}; dataset.near_duplicates: false "
                "skips the check)" if "why" in near else "near duplicates across splits: not checked (dataset.near_duplicates: false)")
    pairs = near["pairs"]
    done = "left out of the earlier split" if near["left_out"] else "kept (dataset.near_duplicates: leave_out leaves them out)"
    earlier = {p["path"] for p in pairs}  # the train or val images, each with a copy in a later split
    lines = [f"near duplicates across splits: {len(earlier)} image(s) with a near copy in a later split"
             + (f" ({len(pairs)} pair(s)), {done}, listed in {report}:" if pairs else "")]
    lines += [f"  {p['path']} ({p['split']}, {p['class_name']}): near {p['copy_of']} ({p['copy_split']}, "
              f"{p['copy_class']}), {p['rms']} levels apart (RMS)" for p in pairs[:20]]
    if len(pairs) > 20:
        lines.append(f"  and {len(pairs) - 20} more")
    labels = [p for p in pairs if p["class_name"] != p["copy_class"]]
    if labels:  # a picture under two labels: one of the two is likely mislabelled (identical files so stop the split)
        lines.append(f"of them, {len(labels)} pair(s) under two labels, one of each likely mislabelled (identical files "
                     "under two labels stop the split; near copies may be two pictures alike): "
                     + "; ".join(f"{p['path']} ({p['class_name']}) and {p['copy_of']} ({p['copy_class']})"
                                 for p in labels[:10]) + (" ..." if len(labels) > 10 else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
