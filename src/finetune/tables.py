"""Small self-contained HTML pages of result tables (no torch).

Snakemake's report shows an HTML result inline and a CSV only as a download, so the tables a
reader should see in ``report.html`` (per-run metrics, the leaderboard) are also written as HTML.
"""

from __future__ import annotations

import html

import pandas as pd

STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 4px; }
"""


def page(title: str, sections: list[tuple[str, pd.DataFrame | str]]) -> str:
    """An HTML page: a title, then each section as a captioned table (DataFrame) or a paragraph (str)."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h2>{html.escape(title)}</h2>"]
    for heading, body in sections:
        if isinstance(body, pd.DataFrame):
            table = body.to_html(index=False, border=0, float_format=lambda v: f"{v:.4f}", na_rep="")
            # to_html escapes the cells; the caption goes right after the opening tag.
            opening_end = table.index(">") + 1
            parts.append(f"{table[:opening_end]}<caption>{html.escape(heading)}</caption>{table[opening_end:]}")
        else:
            parts.append(f"<h3>{html.escape(heading)}</h3><p>{html.escape(body)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def metrics_tables(report: dict) -> list[tuple[str, pd.DataFrame]]:
    """The tables of one evaluation (``metrics.json``): overall, per class, most confused pairs."""
    k = report.get("top_k")
    rows = [
        ("test images", report["n_test"]),
        ("test-time augmentation (evaluate.tta)", report.get("tta", "none")),
        ("top-1 accuracy", report["accuracy"]),
        *([("top-1 accuracy, 95% interval over test sets of this size (Wilson)",
            "{:.4f} to {:.4f}".format(*report["accuracy_ci95"]))] if report.get("accuracy_ci95") else []),
        *([(f"top-{k} accuracy", report.get(f"top{k}_accuracy"))] if k and k > 1 else []),  # top-1: the row above
        ("macro F1", report["macro_f1"]),
        ("weighted F1", report["weighted_f1"]),
        ("expected calibration error (ECE)", report["ece"]),
    ]
    if report.get("never_predicted"):
        rows.append(("classes the model never predicted: their precision is 0/0, shown and averaged as 0 "
                     "(scikit-learn's convention)", ", ".join(repr(name) for name in report["never_predicted"])))
    near = report.get("near_duplicates") or {}
    if near.get("test_images_with_copy"):
        rows.append((f"top-1 accuracy without the {near['test_images_with_copy']} test images with a near duplicate "
                     f"in train or val ({near['n_test_without']} images)", near["accuracy_without"]))
    onnx = report.get("onnx")
    if onnx:
        rows += [(f"exported model.onnx (onnxruntime, test-time augmentation {onnx['tta']}): top-1 accuracy",
                  onnx["accuracy"]),
                 (f"its top-1 agreement with PyTorch (with test-time augmentation {onnx['tta']})",
                  onnx["top1_agreement_with_pytorch"]),
                 ("its largest logit difference from PyTorch", f"{onnx['max_abs_logit_diff']:.2e}")]
    overall = pd.DataFrame([(name, f"{v:.4f}" if isinstance(v, float) else str(v)) for name, v in rows],
                           columns=["metric", "value"])
    per_class = pd.DataFrame([{"class": name, **scores} for name, scores in report["per_class"].items()])
    support = per_class["support"]
    averages = pd.DataFrame([
        {"class": "macro average", **{m: per_class[m].mean() for m in ("precision", "recall", "f1")},
         "support": int(support.sum())},
        {"class": "weighted average",
         **{m: float((per_class[m] * support).sum() / max(1, support.sum())) for m in ("precision", "recall", "f1")},
         "support": int(support.sum())},
    ])
    per_class = pd.concat([per_class, averages], ignore_index=True)
    confused = pd.DataFrame(report.get("most_confused") or [], columns=["true", "predicted", "count"])
    return [("Overall", overall), ("Per class", per_class), ("Most confused pairs (true -> predicted)", confused)]
