# finetune: transfer learning as a Snakemake workflow.
#
#   split(source) -> decode -> pretrain -> weights --+
#                                                    +--> train{experiment,seed} -> evaluate -> summary
#   split(target) -> decode{size} -------------------+                           -> export_onnx -> (quantize_onnx)
#                                                                                                -> (predict)
#
# `decode` turns each split file's images into one file-backed uint8 array, once per image size;
# every later job reads its images from there.
# `weights` acquires pretrained weights (torchvision, a URL, a local file, or `pretrain`: recipe step 1
# done here, offline) and publishes them with a sha256 manifest. `train` copies every layer of the
# source model but its output layer, puts a new one sized to the target classes, and trains it.
# `lr_find` runs the learning-rate range test of an experiment run; a run with `lr: auto` trains at its
# suggestion. `snakemake --report report.html` then gathers the leaderboard and every run's plots in one file.

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/module_config.smk"  # as a module, the config its module block gives: checked first


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/lr_find.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/summary.smk"


rule all:
    input:
        expand(
            "results/{run}/{file}",
            run=RUNS,
            file=["metrics.json", "model.onnx", "onnx_parity.json"],
        ),
        expand("results/{run}/quantization.json", run=RUNS) if config["export"]["quantize"] else [],
        [PREDICT_TARGET] if PREDICT_TARGET else [],
        "results/summary.csv",
        "results/summary.md",
        intermediate_outputs(),
        side_outputs(),


note_resources_under_unprefixed_names()
refuse_unknown_rule_settings()
