"""Evaluation a user can act on (issue 4): metric functions against hand-computed cases, the plots
(real PNG files), the leaderboard over seeds, and the evaluate rule's outputs in a real tiny run."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from finetune.metrics import (classification_report, confusion_matrix, expected_calibration_error,
                              most_confused_pairs, per_class_scores, top_k_accuracy, wilson_interval)
from finetune.plots import (accuracy_columns, confusion_matrix_plot, learning_curves_plot, lr_find_plot,
                            reliability_plot)
from finetune.stages import summary_stage, write_evaluation_figures
from helpers import run_script
from recompute import calibration, class_metrics, held_out, probabilities, run_logits, wilson_bounds


def assert_png(path, min_size=(200, 200)):
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        img.verify()


# --------------------------------------------------------------------------- metrics, by hand

def test_confusion_matrix_rows_are_true_columns_predicted():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(labels, preds, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_top_k_accuracy_by_hand():
    probs = np.array([[0.5, 0.3, 0.2],   # label 1: 2nd
                      [0.1, 0.2, 0.7],   # label 0: 3rd
                      [0.6, 0.3, 0.1]])  # label 0: 1st
    labels = np.array([1, 0, 0])
    assert top_k_accuracy(labels, probs, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(labels, probs, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(labels, probs, 3) == 1.0
    assert top_k_accuracy(labels, probs, 10) == 1.0  # k above the class count is all classes


def test_top_k_is_ranked_by_logits_where_probabilities_far_below_the_top_are_all_zero():
    """A model gone far off (logits of thousands: a run with a huge lr) puts classes ~745 below its top logit at a
    probability of exactly 0 in float64; ranked by those, the tie went to the lowest class index, and an image whose
    label was second by logit counted as a miss. Against the ranks counted here one class at a time from the logits."""
    logits = np.array([[-12539.0, 5098.6, -858.1, 2992.5],   # label 3: 2nd by logit; probabilities 0, 1, 0, 0
                       [900.0, -900.0, 0.0, 10.0],             # label 2: 3rd
                       [1.0, 2.0, 3.0, 4.0]])                  # label 3: 1st
    labels = np.array([3, 2, 3])
    assert (np.exp(logits[0] - logits[0].max())[[0, 2, 3]] == 0).all()  # the tie the probabilities make
    rank = [sum(row[other] > row[label] for other in range(len(row))) for row, label in zip(logits, labels)]
    for k in (1, 2, 3):
        expected = sum(r < k for r in rank) / len(rank)
        assert top_k_accuracy(labels, logits, k) == pytest.approx(expected)
        assert classification_report(labels, logits, list("ABCD"), top_k=k)[f"top{k}_accuracy"] == pytest.approx(expected)
    assert top_k_accuracy(labels, logits, 2) == pytest.approx(2 / 3)


def test_per_class_precision_recall_f1_by_hand():
    cm = np.array([[3, 1, 0],
                   [2, 2, 0],
                   [0, 0, 0]])   # class 2 never occurs and is never predicted
    scores = per_class_scores(cm)
    # class 0: tp 3, predicted 5, actual 4 -> P 0.6, R 0.75, F1 2*.6*.75/1.35
    assert scores["precision"].tolist() == pytest.approx([0.6, 2 / 3, 0.0])
    assert scores["recall"].tolist() == pytest.approx([0.75, 0.5, 0.0])
    assert scores["f1"].tolist() == pytest.approx([0.9 / 1.35, 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 0.0])
    assert scores["support"].tolist() == [4, 4, 0]


def test_macro_and_weighted_f1_and_accuracy_by_hand():
    # 4 images of class A, 1 of class B; every image predicted A.
    labels = np.array([0, 0, 0, 0, 1])
    logits = np.array([[2.0, 0.0]] * 5)
    report = classification_report(labels, logits, ["A", "B"], top_k=2, n_bins=10)
    f1_a = 2 * 0.8 * 1.0 / 1.8  # precision 4/5, recall 1
    assert report["accuracy"] == pytest.approx(0.8)
    # Two classes: each image's class is among the top 2, so a top-2 accuracy (1.0) would say nothing.
    assert report["top_k"] is None and not any(key.startswith("top2") for key in report)
    three = classification_report(np.array([0, 1, 2]), np.array([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]),
                                  ["A", "B", "C"], top_k=2)
    assert three["top_k"] == 2 and three["top2_accuracy"] == pytest.approx(2 / 3)  # C is third for the last image
    assert report["macro_f1"] == pytest.approx(f1_a / 2)
    assert report["weighted_f1"] == pytest.approx(f1_a * 4 / 5)
    assert report["per_class"]["B"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["most_confused"] == [{"true": "B", "predicted": "A", "count": 1}]
    assert report["confusion_matrix"] == [[4, 0], [1, 0]]


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.90, 0.10],   # label 0, correct, confidence .90 -> bin (.8, 1]
                      [0.75, 0.25],   # label 1, wrong,   confidence .75 -> bin (.6, .8]
                      [0.45, 0.55],   # label 1, correct, confidence .55 -> bin (.4, .6]
                      [0.35, 0.65]])  # label 1, correct, confidence .65 -> bin (.6, .8]
    labels = np.array([0, 1, 1, 1])
    ece, bins = expected_calibration_error(labels, probs, n_bins=5)
    # (.4,.6]: 1 image, |1 - .55| = .45; (.6,.8]: 2 images, acc .5, conf .70 -> .20; (.8,1]: |1 - .9| = .1
    assert ece == pytest.approx(0.25 * 0.45 + 0.5 * 0.20 + 0.25 * 0.10)
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 1]
    assert bins[3]["accuracy"] == pytest.approx(0.5) and bins[3]["confidence"] == pytest.approx(0.70)
    # Empty bins carry None (valid JSON), not NaN.
    assert bins[0]["accuracy"] is None and bins[0]["confidence"] is None
    json.dumps(bins, allow_nan=False)


def test_softmax_of_large_logits_is_their_ratio_not_an_overflow():
    """Logits of a diverged run reach 1e3 and more: e^1000 overflows a float64. Softmax depends on the logits'
    differences alone: [1000, 1000 + ln 3] is 1 : 3, so [0.25, 0.75]."""
    from finetune.metrics import softmax

    probs = softmax(np.array([[1000.0, 1000.0 + math.log(3)], [-1000.0, -1000.0]]))
    assert probs.tolist() == [pytest.approx([0.25, 0.75]), pytest.approx([0.5, 0.5])]


def test_a_confidence_on_a_bin_edge_falls_in_the_bin_it_closes():
    """Bins are (low, high]: a confidence of exactly 1.0, 0.6 or 0.2 with 5 bins counts in the bin that ends there,
    bin ceil(confidence x 5) - 1 (computed here), not the one that starts there (and 1.0 in no bin at all)."""
    confidences = [1.0, 0.6, 0.2]
    probs = np.array([[c] + [(1 - c) / 4] * 4 for c in confidences])  # five classes; the rest shared by the other four
    assert (probs.max(axis=1) == confidences).all()  # the premise: each row's top probability is the confidence
    labels = np.zeros(len(confidences), dtype=int)
    _, bins = expected_calibration_error(labels, probs, n_bins=5)
    expected = [0] * 5
    for c in confidences:
        expected[math.ceil(c * 5) - 1] += 1
    assert [b["count"] for b in bins] == expected == [1, 0, 1, 0, 1]


def test_macro_f1_counts_a_class_without_test_images_as_zero():
    """Macro F1 is the mean over every class of the model (scikit-learn's average="macro" with labels= all of them):
    a class with no test image that is never predicted has F1 0 and still counts; the weighted F1 gives it no weight.
    The per-class F1s are computed here from the predictions."""
    labels = np.array([0, 0, 1, 1, 1])
    logits = np.array([[3.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 3.0, 1.0], [0.0, 3.0, 1.0], [3.0, 0.0, 1.0]])
    preds = logits.argmax(axis=1)
    f1 = []
    for c in range(3):
        tp = int(((preds == c) & (labels == c)).sum())
        predicted, actual = int((preds == c).sum()), int((labels == c).sum())
        f1.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    assert f1[2] == 0.0 and f1[0] > 0 and f1[1] > 0
    report = classification_report(labels, logits, ["A", "B", "C"], top_k=2)
    assert report["per_class"]["C"]["support"] == 0
    assert report["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert report["weighted_f1"] == pytest.approx((2 * f1[0] + 3 * f1[1]) / 5)


@pytest.mark.parametrize("correct, n", [(914, 1000), (3657, 4000), (0, 20), (20, 20), (1, 3), (50, 100)])
def test_accuracy_interval_is_the_wilson_interval_by_its_definition(correct, n):
    """Against the interval found by bisection on its defining equation (tests/recompute.py); at 0 and n
    correct it still has width, where p ± z·sqrt(p(1-p)/n) would be a single point."""
    low, high = wilson_interval(correct, n)
    assert (low, high) == pytest.approx(wilson_bounds(correct, n), abs=1e-9)
    assert 0 <= low <= correct / n <= high <= 1 and high - low > 0
    assert wilson_interval(0, 0) is None
    if correct == 0:  # the bounds themselves, not a rounding residue of centre - half (1.4e-17 at 0 of 25)
        assert low == 0.0 and wilson_interval(0, 25)[0] == 0.0
    if correct == n:
        assert high == 1.0 and wilson_interval(25, 25)[1] == 1.0


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    ece, _ = expected_calibration_error(np.array([0, 1]), probs, n_bins=10)
    assert ece == 0.0


def test_most_confused_pairs_are_ordered_and_skip_zero_cells():
    cm = np.array([[5, 3, 0],
                   [1, 4, 0],
                   [0, 7, 2]])
    pairs = most_confused_pairs(cm, ["a", "b", "c"], n=5)
    assert pairs == [{"true": "c", "predicted": "b", "count": 7},
                     {"true": "a", "predicted": "b", "count": 3},
                     {"true": "b", "predicted": "a", "count": 1}]


# --------------------------------------------------------------------------- plots

def test_every_plot_is_a_valid_png(tmp_path):
    names = [f"class {i}" for i in range(12)]
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 20, size=(12, 12))
    confusion_matrix_plot(cm, names, tmp_path / "cm.png")
    labels = rng.integers(0, 3, size=200)
    probs = rng.dirichlet([1, 1, 1], size=200)
    ece, bins = expected_calibration_error(labels, probs, n_bins=15)
    reliability_plot(bins, ece, tmp_path / "rel.png")
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.2, 0.8, 0.5], "val_loss": [1.1, 0.9, 1.0],
                            "train_accuracy": [0.4, 0.7, 0.9], "val_accuracy": [0.5, 0.6, 0.55]})
    history.to_csv(tmp_path / "history.csv", index=False)
    learning_curves_plot(tmp_path / "history.csv", tmp_path / "curves.png")
    for name in ("cm.png", "rel.png", "curves.png"):
        assert_png(tmp_path / name)
    # Nothing but the three files (atomic writes leave no temporary files behind).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "curves.png", "history.csv", "rel.png"]


def drawn_figures(monkeypatch) -> list:
    """The figures the plot functions draw, each recorded as it is saved (and saved as always)."""
    from finetune import plots

    figures, save = [], plots._save

    def recording(fig, out_path):
        figures.append(fig)
        save(fig, out_path)

    monkeypatch.setattr(plots, "_save", recording)
    return figures


def test_the_confusion_matrix_colours_each_cell_by_its_share_of_the_true_class(tmp_path, monkeypatch):
    """Rows are true classes: each cell's colour is its count over its row's (a row without images stays 0), its
    count is written in it, in white where the colour is dark (a share above one half), and the title counts the
    images."""
    cm = np.array([[8, 2, 0], [1, 1, 2], [0, 0, 0]])
    figures = drawn_figures(monkeypatch)
    confusion_matrix_plot(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert_png(tmp_path / "cm.png")
    [fig] = figures
    ax = fig.axes[0]
    shares = [[count / row.sum() if row.sum() else 0.0 for count in row] for row in cm]
    assert np.asarray(ax.images[0].get_array()) == pytest.approx(np.array(shares))
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): (t.get_text(), t.get_color()) for t in ax.texts}
    assert written == {(i, j): (str(cm[i, j]), "white" if shares[i][j] > 0.5 else "black")
                       for i in range(3) for j in range(3)}
    assert [cell for cell, (_, colour) in written.items() if colour == "white"] == [(0, 0)]  # 0.8; 0.5 is not above
    assert ax.get_title() == f"Confusion matrix ({cm.sum()} images)"


def test_the_learning_curves_mark_the_epoch_training_kept(tmp_path):
    """With metric val_loss the epoch kept is the lowest validation loss's (epoch 2 here), not the highest
    accuracy's (epoch 3): the curves mark the one train_info.json names."""
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [1.2, 0.8, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.9, 1.0],
                            "train_accuracy": [0.4, 0.7, 0.9, 0.95], "val_accuracy": [0.5, 0.6, 0.65, 0.55]})
    assert learning_curves_plot(history, tmp_path / "kept.png", best_epoch=2) == 2
    assert learning_curves_plot(history, tmp_path / "by_accuracy.png") == 3  # no train_info: the best accuracy
    assert_png(tmp_path / "kept.png")
    # Kept by val_balanced_accuracy (epoch 2 here, where val_accuracy dips): that curve is drawn beside the others,
    # so the mark does not fall on a dip of the only validation curve shown.
    history["val_balanced_accuracy"] = [0.5, 0.7, 0.6, 0.55]
    assert learning_curves_plot(history, tmp_path / "balanced.png", metric="val_balanced_accuracy") == 2
    assert accuracy_columns(history.columns, "val_balanced_accuracy") == ["train_accuracy", "val_accuracy",
                                                                           "val_balanced_accuracy"]
    assert accuracy_columns(history.columns, "val_loss") == ["train_accuracy", "val_accuracy"]
    assert accuracy_columns(history.columns, "val_accuracy") == ["train_accuracy", "val_accuracy"]  # drawn once
    assert_png(tmp_path / "balanced.png")
    # an epoch the history does not hold (train_info.json of another run, say) is not marked
    assert learning_curves_plot(history, tmp_path / "outside.png", best_epoch=7) is None


def test_plots_refuse_inconsistent_data(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        confusion_matrix_plot([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="no epochs"):
        learning_curves_plot(pd.DataFrame({"epoch": []}), tmp_path / "curves.png")
    with pytest.raises(ValueError, match="no epochs"):
        learning_curves_plot(pd.DataFrame({"train_loss": [0.5, 0.4]}), tmp_path / "curves.png")
    with pytest.raises(ValueError, match="recorded no steps"):
        lr_find_plot([], [], [], 1e-3, "steepest", tmp_path / "lr_find.png")
    report = {**classification_report(np.array([0, 1]), np.eye(2), ["a", "b"]), "classes": ["a", "b"]}
    with pytest.raises(ValueError, match=r"^unknown plot\(s\): confusoin, roc$"):  # before any is drawn
        write_evaluation_figures(report, {"confusion": tmp_path / "cm.png", "confusoin": tmp_path / "x.png",
                                          "roc": tmp_path / "roc.png"})
    assert not list(tmp_path.iterdir())


def test_evaluation_figures_and_tables_from_a_report(tmp_path):
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 3.0
    report = classification_report(labels, logits, ["Shirt", "Bag", "Ankle <boot>"], top_k=2)
    report["classes"] = ["Shirt", "Bag", "Ankle <boot>"]
    pd.DataFrame({"epoch": [1], "train_loss": [1.0], "val_loss": [1.1], "train_accuracy": [0.5],
                  "val_accuracy": [0.4]}).to_csv(tmp_path / "history.csv", index=False)
    plots = {name: tmp_path / f"{name}.png" for name in ("confusion", "reliability", "learning_curves")}
    write_evaluation_figures(report, plots, history=tmp_path / "history.csv", out_html=tmp_path / "metrics.html",
                             title="demo seed 0")
    for path in plots.values():
        assert_png(path)
    page = (tmp_path / "metrics.html").read_text()
    assert "Ankle &lt;boot&gt;" in page and "<boot>" not in page  # class names are escaped
    assert "macro average" in page and "weighted average" in page and "top-2 accuracy" in page
    assert report["never_predicted"] == [] and "never predicted" not in page
    # Bag never predicted (every image called Shirt or Ankle boot): its precision is 0/0, and the page says so
    never = classification_report(labels, np.eye(3)[[0, 0, 0, 2, 2, 2]] * 3.0, ["Shirt", "Bag", "Ankle boot"], top_k=2)
    assert never["never_predicted"] == ["Bag"] and never["per_class"]["Bag"]["precision"] == 0.0
    write_evaluation_figures(never, {}, out_html=tmp_path / "never.html", title="t")
    assert "classes the model never predicted" in (tmp_path / "never.html").read_text()


def test_the_metrics_page_s_averages_and_interval_are_those_of_the_images(tmp_path):
    """metrics.html's per-class table: the macro average is each figure's plain mean over the classes, the weighted
    average weighs each class by its test images (6, 2, 2 here, so the two differ), and the overall table's 95%
    interval is the Wilson interval of the top-1 accuracy, low to high: all counted here one image at a time."""
    from finetune.tables import metrics_tables

    classes = ["Shirt", "Bag", "Boot"]
    true = [0] * 6 + [1] * 2 + [2] * 2
    predicted = [0, 0, 0, 0, 1, 2, 1, 1, 0, 2]
    report = classification_report(np.array(true), np.eye(3)[predicted] * 3.0, classes, top_k=2)
    expected = class_metrics([classes[i] for i in true], [classes[i] for i in predicted], classes)
    tables = dict(metrics_tables(report))
    rows = tables["Per class"].set_index("class")
    support = {c: expected["per_class"][c]["support"] for c in classes}
    assert support == {"Shirt": 6, "Bag": 2, "Boot": 2}
    for figure in ("precision", "recall", "f1"):
        each = {c: expected["per_class"][c][figure] for c in classes}
        macro, weighted = sum(each.values()) / 3, sum(each[c] * support[c] for c in classes) / 10
        assert abs(macro - weighted) > 0.01, figure  # the two would not tell a weighting wrong apart
        assert rows.loc["macro average", figure] == pytest.approx(macro)
        assert rows.loc["weighted average", figure] == pytest.approx(weighted)
    assert rows.loc["weighted average", "support"] == 10
    overall = dict(tables["Overall"].itertuples(index=False))
    low, high = wilson_bounds(7, 10)
    assert overall["top-1 accuracy"] == "0.7000"
    assert overall["top-1 accuracy, 95% interval over test sets of this size (Wilson)"] == f"{low:.4f} to {high:.4f}"
    # evaluate.top_k: 1 scores the top-1 accuracy again: its row is there once, not twice
    labels = [name for name, _ in metrics_tables(classification_report(np.array(true), np.eye(3)[predicted] * 3.0,
                                                                       classes, top_k=1))[0][1].itertuples(index=False)]
    assert labels.count("top-1 accuracy") == 1 and len(labels) == len(set(labels)), labels


# --------------------------------------------------------------------------- leaderboard over seeds

def write_run(tmp_path, experiment, seed, accuracy, macro_f1, train_seconds, strategy="finetune", pretrained=True,
              trainable=1000, epochs=3, val=None, metric="val_accuracy", sweep=None, val_loss=0.5,
              class_weighting="none", diverged=None, options=None):
    """A run's outputs as train and evaluate write them; its validation figure is the test accuracy unless given.
    Its history: a first epoch worse on every figure, then the best epoch (``val_loss`` the loss there, or the
    figure itself with metric val_loss)."""
    folder = tmp_path / experiment / f"seed{seed}"
    folder.mkdir(parents=True)
    best = accuracy if val is None else val
    (folder / "train_info.json").write_text(json.dumps({
        "strategy": strategy, "pretrained": pretrained, "trainable_params": trainable, "epochs_run": epochs,
        "train_seconds": train_seconds, "options": {"metric": metric, "class_weighting": class_weighting, **(options or {})},
        f"best_{metric}": best, **({"diverged": diverged} if diverged else {})}))
    rows = ([(1, best + 1, 0.0), (2, best, 1.0)] if metric == "val_loss" else
            [(1, val_loss + 1, best - 0.1), (2, val_loss, best)])
    share = "val_accuracy" if metric == "val_loss" else metric
    (folder / "history.csv").write_text(f"epoch,val_loss,{share}\n" + "".join(f"{e},{l},{a}\n" for e, l, a in rows))
    (folder / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "macro_f1": macro_f1}))
    return {"experiment": experiment, "sweep": sweep, "seed": seed, "info": folder / "train_info.json",
            "metrics": folder / "metrics.json", "weights_source": "torchvision:ResNet18_Weights.IMAGENET1K_V1"}


def test_leaderboard_keeps_seeds_of_all_64_bits_exact(tmp_path):
    """The schema takes seeds up to 2**64 - 1 (torch's generators take 64 bits): int64 holds none above 2**63 - 1 (the
    summary job stopped at pandas' "cannot safely cast non-equivalent uint64 to int64") and float64 none odd above
    2**53. Each seed is written back as it was given: the seed list, the diverged seeds, the selected run's seed."""
    top, half, odd = 2**64 - 1, 2**63, 2**53 + 1
    runs = [write_run(tmp_path, "finetune", top, 0.9, 0.9, 1.0),
            write_run(tmp_path, "finetune", half, 0.8, 0.8, 1.0),
            write_run(tmp_path, "finetune", odd, 0.7, 0.7, 1.0, diverged=True),
            write_run(tmp_path, "scratch", 0, 0.5, 0.5, 1.0, pretrained=False)]
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html",
                  tmp_path / "selected.json")
    csv = pd.read_csv(tmp_path / "summary.csv", dtype=str).set_index("experiment")
    assert csv.loc["finetune", "seed_list"] == f"{odd} {half} {top}"
    assert csv.loc["finetune", "diverged_seed_list"] == str(odd)
    assert (csv.loc["finetune", "selected_seed"], csv.loc["scratch", "selected_seed"]) == (str(top), "0")
    assert json.loads((tmp_path / "selected.json").read_text())["finetune"]["seed"] == top
    assert f"✓ finetune (seed {top}: test 0.9000)" in (tmp_path / "summary.md").read_text()


def test_leaderboard_with_two_seeds_has_mean_and_sample_std(tmp_path):
    runs = [
        write_run(tmp_path, "finetune", 0, 0.80, 0.70, 10.0),
        write_run(tmp_path, "finetune", 1, 0.90, 0.80, 12.0),
        write_run(tmp_path, "feature_extract", 0, 0.85, 0.84, 2.0, strategy="feature_extract", trainable=10),
        write_run(tmp_path, "feature_extract", 1, 0.87, 0.86, 4.0, strategy="feature_extract", trainable=10),
        write_run(tmp_path, "scratch", 0, 0.50, 0.40, 11.0, pretrained=False),
        write_run(tmp_path, "scratch", 1, 0.60, 0.50, 13.0, pretrained=False),
    ]
    table = summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html",
                          tmp_path / "selected.json")
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv["experiment"]) == ["feature_extract", "finetune", "scratch"]  # best mean accuracy first
    assert list(csv["rank"]) == [1, 2, 3]
    assert list(csv["seeds"]) == [2, 2, 2]
    finetune = csv.set_index("experiment").loc["finetune"]
    assert finetune["test_accuracy"] == pytest.approx(0.85)
    assert finetune["test_accuracy_std"] == pytest.approx(round(math.sqrt(0.005), 4))  # sample std, n - 1
    assert finetune["macro_f1"] == pytest.approx(0.75)
    assert finetune["train_seconds"] == pytest.approx(11.0)
    assert finetune["train_seconds_std"] == pytest.approx(round(math.sqrt(2.0), 4))
    assert finetune["weights_source"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert csv.set_index("experiment").loc["scratch", "weights_source"] == "none"
    assert csv.set_index("experiment").loc["feature_extract", "trainable_params"] == 10
    md = (tmp_path / "summary.md").read_text().splitlines()
    # The table, a blank line, what ± is, the sentence saying how runs are chosen (no n_test: no note).
    assert len(md) == 2 + 3 + 3
    # The selected run's mark names the seed selection chose (the best validation figure: seed 1's 0.90) and that
    # seed's own test accuracy, the figure of the model shipped; the row's is the mean over seeds.
    assert ("| 2 | finetune | ✓ finetune (seed 1: test 0.9000) | finetune | torchvision:ResNet18_Weights.IMAGENET1K_V1 "
            "| 1,000 | 2 | 3 |") in md[3]
    assert (finetune["selected_seed"], finetune["selected_test_accuracy"]) == (1, 0.9)
    scratch = csv.set_index("experiment").loc["scratch"]
    assert (scratch["selected_seed"], scratch["selected_test_accuracy"]) == (1, 0.6)
    assert {name: (c["seed"], c["test_accuracy"]) for name, c in json.loads((tmp_path / "selected.json").read_text()).items()} \
        == {"feature_extract": (1, 0.87), "finetune": (1, 0.9), "scratch": (1, 0.6)}
    # the mean of the validation figures as a decimal, not its float sum's 0.8500000000000001
    assert {name: c["mean_over_seeds"] for name, c in json.loads((tmp_path / "selected.json").read_text()).items()} \
        == {"feature_extract": 0.86, "finetune": 0.85, "scratch": 0.55}
    assert md[-2] == "Mean over seeds; ± is the sample standard deviation (n - 1) over seeds."
    assert "selected by val_accuracy on the validation images" in md[-1]
    assert "0.8500 ± 0.0707" in md[3] and "0.7500 ± 0.0707" in md[3]
    html = (tmp_path / "summary.html").read_text()
    header = re.findall(r"<th>(.*?)</th>", html.split("<tbody>")[0])
    row = next(re.findall(r"<td>(.*?)</td>", r) for r in html.split("<tr") if "<td>finetune</td>" in r)
    cells = dict(zip(header[-len(row):], row))
    assert cells["test accuracy"] == "0.8500 ± 0.0707"
    assert cells["seeds"] == "2" and cells["seed list"] == "0 1"  # as in summary.md, a count
    assert len(table) == 3


def test_selection_takes_the_run_with_the_best_mean_over_seeds_not_the_best_single_seed(tmp_path):
    """A sweep's run a scores 0.9 and 0.5 on its two seeds, run b 0.82 and 0.78: b's mean (0.8, computed here) beats
    a's (0.7) though a's best seed beats b's. The leaderboard and predict's choice (selection.choose_model, over the
    run folders) both select b, then b's better seed; the leaderboard marks b's row alone."""
    from finetune.selection import choose_model

    figures = {"s-a": (0.9, 0.5), "s-b": (0.82, 0.78)}
    runs = [write_run(tmp_path, name, seed, value, 0.5, 1.0, sweep="s")
            for name, values in figures.items() for seed, value in enumerate(values)]
    means = {name: sum(values) / len(values) for name, values in figures.items()}
    best_mean, best_seed = max(means, key=means.get), max(figures, key=lambda name: max(figures[name]))
    assert (best_mean, best_seed) == ("s-b", "s-a")  # the premise: the two rules disagree
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html",
                  tmp_path / "selected.json")
    selected = json.loads((tmp_path / "selected.json").read_text())["s"]
    shipped_seed = figures[best_mean].index(max(figures[best_mean]))
    assert (selected["run"], selected["seed"], selected["mean_over_seeds"]) == (best_mean, shipped_seed, means[best_mean])
    rows = {line.split(" | ")[1]: line for line in (tmp_path / "summary.md").read_text().splitlines()
            if line.startswith("| ") and " | s-" in line}
    assert f"✓ s (seed {shipped_seed}: test {figures[best_mean][shipped_seed]:.4f})" in rows[best_mean]
    assert "✓" not in rows[best_seed]
    chosen = choose_model([tmp_path / name / f"seed{seed}" for name, values in figures.items()
                           for seed in range(len(values))], "model.onnx")
    assert (chosen["experiment"], chosen["seed"]) == (best_mean, shipped_seed)
    assert chosen["model"] == str(tmp_path / best_mean / f"seed{shipped_seed}" / "model.onnx")


def test_the_leaderboard_names_the_seeds_that_diverged_and_marks_a_selected_one(tmp_path):
    """Runs stopped at a non-finite loss (on_divergence: stop) keep their best epoch. Where such a seed ties the
    others on the metric and wins the tie on val_loss, selection ships it: the mark says so, and the epochs cell
    and summary.csv name the seeds that diverged (not their count alone)."""
    losses = {0: 0.6, 1: 0.9, 2: 0.8}  # seed 0's loss the lowest of the three at one val_accuracy
    diverged = {0: "loss became nan at epoch 2, step 7", 2: "loss became inf at epoch 2, step 3"}
    runs = [write_run(tmp_path, "ds", seed, 0.25, 0.1, 1.0, val=0.25, val_loss=loss, epochs=2 if seed in diverged else 3,
                      diverged=diverged.get(seed)) for seed, loss in losses.items()]
    runs.append(write_run(tmp_path, "calm", 0, 0.2, 0.1, 1.0, val=0.2))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html",
                  tmp_path / "selected.json")
    selected = json.loads((tmp_path / "selected.json").read_text())
    shipped = min(losses, key=losses.get)
    assert (selected["ds"]["seed"], selected["ds"]["diverged"]) == (shipped, shipped in diverged)
    assert selected["calm"]["diverged"] is False
    csv = pd.read_csv(tmp_path / "summary.csv", dtype={"diverged_seed_list": str}).set_index("experiment")
    assert csv.loc["ds", "diverged_seeds"] == len(diverged)
    assert csv.loc["ds", "diverged_seed_list"] == " ".join(map(str, sorted(diverged)))
    assert pd.isna(csv.loc["calm", "diverged_seed_list"])  # none: an empty cell
    row = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| 1 | ds |"))
    assert f"✓ ds (seed {shipped}: test 0.2500, diverged)" in row
    assert f" (diverged: 2 of 3 seeds: {', '.join(map(str, sorted(diverged)))}) |" in row
    calm = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if "| calm |" in line)
    assert "diverged" not in calm and "✓ calm (seed 0: test 0.2000) |" in calm
    assert f"(seed {shipped}: test 0.2500, diverged)" in (tmp_path / "summary.html").read_text()


def test_summary_csv_has_a_column_per_swept_key_with_each_run_s_value(tmp_path):
    """A sweep's runs differ in the keys swept: summary.csv gives each its own column (`swept_lr`), the values as the
    runs' train_info.json options hold them (not rounded as the figures are: an lr of 1e-5 stays 1e-5); keys the
    runs share, the seed, and experiments of one run get none."""
    swept = {"finetune-lr1e-5": 1e-5, "finetune-lr0.03": 0.03}
    runs = [write_run(tmp_path, name, seed, 0.5 + lr + seed / 100, 0.4, 1.0, sweep="finetune",
                      options={"lr": lr, "epochs": 3, "seed": seed})
            for name, lr in swept.items() for seed in (0, 1)]
    runs.append(write_run(tmp_path, "scratch", 0, 0.3, 0.2, 1.0, pretrained=False, options={"lr": 0.5, "seed": 0}))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    csv = pd.read_csv(tmp_path / "summary.csv").set_index("experiment")
    assert [c for c in csv.columns if c.startswith("swept_")] == ["swept_lr"]
    assert list(csv.columns).index("swept_lr") == list(csv.columns).index("sweep") + 1
    assert csv.loc[list(swept), "swept_lr"].to_dict() == swept
    assert pd.isna(csv.loc["scratch", "swept_lr"])


def test_leaderboard_with_one_seed_claims_no_spread(tmp_path):
    runs = [write_run(tmp_path, "finetune", 0, 0.8, 0.7, 10.0)]
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert csv["test_accuracy_std"].isna().all()
    assert "±" not in (tmp_path / "summary.md").read_text()


def test_the_leaderboard_names_the_classes_a_selected_run_never_predicted(tmp_path):
    """On imbalanced test images a run that never predicts the rare class can rank first by accuracy: the note
    names the class and the run's macro_f1; a run that predicts every class gets none."""
    runs = [write_run(tmp_path, "plain", 0, 0.90, 0.55, 10.0), write_run(tmp_path, "plain", 1, 0.88, 0.50, 10.0),
            write_run(tmp_path, "weighted", 0, 0.85, 0.80, 10.0)]
    for run, never in zip(runs, (["ankle boot"], [], [])):
        run["metrics"].write_text(json.dumps({**json.loads(run["metrics"].read_text()), "never_predicted": never}))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html")
    csv = pd.read_csv(tmp_path / "summary.csv").set_index("experiment")
    assert bool(csv.loc["plain", "selected"]) and csv.loc["plain", "rank"] == 1
    note = ("The selected run plain (seed 0) predicted no test image as `ankle boot`: its test accuracy comes from the "
            "other classes alone (its macro_f1, which counts such a class as 0, is 0.5500)")
    for page in ("summary.md", "summary.html"):
        assert note in (tmp_path / page).read_text(), page
    assert "The selected run weighted (seed" not in (tmp_path / "summary.md").read_text()
    assert "compare the runs' macro_f1, or try class_weighting: loss." in (tmp_path / "summary.md").read_text()
    # A run that weights its classes already is not told to: more images of the classes it never predicts.
    (tmp_path / "weighted_only").mkdir()
    run = write_run(tmp_path / "weighted_only", "weighted", 0, 0.85, 0.60, 10.0, class_weighting="loss")
    run["metrics"].write_text(json.dumps({**json.loads(run["metrics"].read_text()), "never_predicted": ["bag"]}))
    summary_stage([run], tmp_path / "summary.csv", tmp_path / "summary.md")
    text = (tmp_path / "summary.md").read_text()
    assert "compare the runs' macro_f1, or give those classes more training images." in text and "try class_weighting" not in text
    # As many training images per class (the split report's counts): class_weighting: loss would weigh each 1, so it
    # is not suggested (it was, to a run of 30 images per class); unequal counts still get the suggestion.
    for train, suggested in (([30, 30, 30], False), ([30, 12, 30], True)):
        report = {"counts": {name: {"train": n, "val": 5, "test": 10} for name, n in zip(("bag", "coat", "shirt"), train)}}
        (tmp_path / "report.json").write_text(json.dumps(report))
        summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", split_report=tmp_path / "report.json")
        text = (tmp_path / "summary.md").read_text()
        assert ("try class_weighting: loss" in text) is suggested, text
        assert ("every class has as many training images, so class weighting would change nothing" in text) is not suggested


def test_the_leaderboard_says_how_far_chance_moves_the_test_figures(tmp_path):
    """With n_test in metrics.json, a note gives the first-ranked run's 95% interval on a test set of that
    size; runs scored on test sets of other sizes get none."""
    runs = [write_run(tmp_path, "finetune", 0, 0.90, 0.8, 10.0), write_run(tmp_path, "finetune", 1, 0.92, 0.8, 10.0),
            write_run(tmp_path, "scratch", 0, 0.70, 0.6, 10.0)]
    for run in runs:
        run["metrics"].write_text(json.dumps({**json.loads(run["metrics"].read_text()), "n_test": 500}))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html")
    low, high = wilson_bounds(455, 500)  # finetune ranks first: 0.91 over its seeds, 455 of 500
    note = (f"The test figures are over 500 test images: a test accuracy of 0.9100 (finetune) has a 95% interval of "
            f"{low:.4f} to {high:.4f} (Wilson) over test sets of that size")
    assert note in (tmp_path / "summary.md").read_text() and note in (tmp_path / "summary.html").read_text()
    # A mean over seeds that is no whole count (0.9015 of 500: 450.75 images): the interval is the figure printed's.
    (tmp_path / "halves").mkdir()
    halves = [write_run(tmp_path / "halves", "finetune", seed, accuracy, 0.8, 10.0) for seed, accuracy in ((0, 0.901), (1, 0.902))]
    for run in halves:
        run["metrics"].write_text(json.dumps({**json.loads(run["metrics"].read_text()), "n_test": 500}))
    summary_stage(halves, tmp_path / "summary.csv", tmp_path / "summary.md")
    low, high = wilson_bounds(450.75, 500)
    assert f"a test accuracy of 0.9015 (finetune) has a 95% interval of {low:.4f} to {high:.4f}" in (
        tmp_path / "summary.md").read_text()
    runs[2]["metrics"].write_text(json.dumps({**json.loads(runs[2]["metrics"].read_text()), "n_test": 400}))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    assert "95% interval" not in (tmp_path / "summary.md").read_text()
    # The ranking's figure likewise, on the validation images (train_info.json's n_val): 0.91 of 40 there.
    for run in runs:
        run["info"].write_text(json.dumps({**json.loads(run["info"].read_text()), "n_val": 40}))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    low, high = wilson_bounds(0.91 * 40, 40)
    assert (f"The runs are ranked and selected on 40 validation images: a val_accuracy of 0.9100 (finetune) has a 95% "
            f"interval of {low:.4f} to {high:.4f} (Wilson)") in (tmp_path / "summary.md").read_text()


def exact_sign_flip_p(d) -> float:
    """The sign-flip test's p-value by enumerating every sign vector (small n only)."""
    from itertools import product

    d = [x for x in d if x != 0]
    observed = abs(sum(d))
    flips = list(product((-1, 1), repeat=len(d)))
    return sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-9 for signs in flips) / len(flips)


@pytest.mark.parametrize("d", [[1] * 9 + [-1] * 3, [1, 1, 1, -1, 0, 0, 1, -1, 0.5, -0.5, 1, 1, 1, 0], [0.5] * 4 + [-1] * 2,
                               [2 / 3, -1 / 3, 1, 1 / 3, 1 / 3, -2 / 3, 1, 1, 0, 1 / 3, 2 / 3, -1, 1 / 3, 1]])
def test_paired_p_value_against_every_sign_vector(d):
    """Shares of seeds (multiples of 1/k): exact, as enumerating every sign vector; other differences by random ones."""
    from finetune.leaderboard import paired_p_value

    a = np.array(d, dtype=float)
    p, exact = paired_p_value(a, np.zeros_like(a))
    assert exact and p == pytest.approx(exact_sign_flip_p(d), abs=1e-9)
    irrational = a * np.sqrt(2) + np.where(a > 0, 1e-3, 0)  # no common step: random sign vectors
    p, exact = paired_p_value(irrational, np.zeros_like(a), draws=40_000)
    assert not exact and p == pytest.approx(exact_sign_flip_p(list(irrational)), abs=0.01)  # standard error <= 0.0025
    assert paired_p_value(a, a) == (1.0, True)


def test_paired_p_value_from_random_sign_vectors_counts_the_observed_one_and_is_never_0():
    """40 differences, all positive, with no common step (random sign vectors): only the all-plus and all-minus
    vectors reach the observed sum, 2 in 2^40, so no draw of 10,000 does. The estimate is then
    (1 + 0) / (1 + 10,000), the observed vector counted among the draws (Phipson and Smyth), never a p of 0."""
    from finetune.leaderboard import SIGN_FLIPS, p_text, paired_p_value

    d = np.sqrt(2) * np.arange(1, 41) + 1e-3
    assert all(d > 0) and 2 / 2 ** 40 * SIGN_FLIPS < 1e-7  # the chance that any draw is as extreme
    p, exact = paired_p_value(d, np.zeros_like(d))
    assert not exact and p == 1 / (1 + SIGN_FLIPS)
    assert p_text(p, exact) == "p < 0.001"


def test_paired_p_value_of_one_seed_is_the_binomial_sign_test_on_the_images_that_differ():
    """One seed: each image right or wrong, so the test is the exact binomial sign test over the images the two runs
    disagree on (29 one way, 9 the other: p = 0.00166), also at sizes no enumeration reaches."""
    from math import comb

    from finetune.leaderboard import paired_p_value

    for wins, losses, same in ((29, 9, 100), (2_600, 2_480, 4_000)):
        a = np.array([1] * wins + [0] * losses + [1] * same)
        b = np.array([0] * wins + [1] * losses + [1] * same)
        n, low = wins + losses, min(wins, losses)
        binomial = min(1.0, 2 * sum(comb(n, k) for k in range(low + 1)) / 2 ** n)
        assert paired_p_value(a, b) == (pytest.approx(binomial, rel=1e-6), True)


def permutation_p(a, b):
    """The permutation test's p-value by relabelling the pooled figures every way, as bit masks (small n only)."""
    pooled, n = [*a, *b], len(a) + len(b)
    observed = abs(np.mean(a) - np.mean(b))
    masks = [m for m in range(1 << n) if bin(m).count("1") == len(a)]
    gaps = [abs(np.mean([pooled[i] for i in range(n) if m >> i & 1]) - np.mean([pooled[i] for i in range(n) if not m >> i & 1]))
            for m in masks]
    return sum(gap >= observed - 1e-12 for gap in gaps) / len(masks)


@pytest.mark.parametrize("a, b", [([0.799, 0.889], [0.901, 0.898]), ([0.9, 0.91, 0.93], [0.8, 0.85, 0.79, 0.9]),
                                  ([0.5, 0.5, 0.5], [0.5, 0.5]), ([0.91, 0.92, 0.95, 0.93], [0.81, 0.8, 0.83, 0.85])])
def test_seed_p_value_against_every_relabelling(a, b):
    """The seed-level test (each seed's test accuracy) against every way of dealing the figures into two groups;
    the random draws past PERMUTATIONS_EXACT within their error of it."""
    from finetune.leaderboard import seed_p_value

    assert seed_p_value(a, b) == (pytest.approx(permutation_p(a, b), abs=1e-12), True)
    assert seed_p_value(a, b, draws=1)[0] >= 0.5  # fewer draws than ways: (1 + extreme) / (1 + draws), never 0


def test_seed_p_value_draws_at_random_within_its_error_where_the_ways_are_too_many():
    """7 seeds against 7 (3,432 ways) with 2,000 random draws: within 3 standard errors of the exact p."""
    from finetune.leaderboard import seed_p_value

    rng = np.random.default_rng(5)
    a, b = list(0.9 + 0.02 * rng.standard_normal(7)), list(0.89 + 0.02 * rng.standard_normal(7))
    exact = permutation_p(a, b)
    estimate, is_exact = seed_p_value(a, b, draws=2_000)
    assert not is_exact and 0.05 < exact < 0.95
    assert abs(estimate - exact) <= 3 * math.sqrt(exact * (1 - exact) / 2_000)


def test_the_leaderboard_compares_the_selected_runs_with_the_first_paired_per_test_image(tmp_path):
    """Each run's test_predictions.csv per seed: the note gives each other selected run's test accuracy
    difference from the first-ranked one and the sign-flip p-value, both recomputed here from the rows."""
    import re

    paths = [f"img{i}.png" for i in range(14)]
    right = {("finetune", 0): [1] * 12 + [0, 0], ("finetune", 1): [1] * 11 + [0, 0, 1],
             ("scratch", 0): [1, 0] * 7, ("scratch", 1): [0, 1] * 7}
    runs = []
    for (experiment, seed), correct in right.items():
        val = 0.9 if experiment == "finetune" else 0.5
        run = write_run(tmp_path, experiment, seed, val, sum(correct) / 14, 10.0)
        labels = ["cat" if i % 2 else "dog" for i in range(14)]
        predicted = [label if ok else ("dog" if label == "cat" else "cat") for label, ok in zip(labels, correct)]
        run["predictions"] = run["info"].parent / "test_predictions.csv"
        pd.DataFrame({"path": paths, "label": labels, "predicted": predicted, "probability": 0.9}).to_csv(run["predictions"], index=False)
        runs.append(run)
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    note = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if "paired on the same" in line)
    assert note.startswith("Test accuracy of the selected runs against finetune (first), paired on the same 14 test images")
    first = np.mean([right[("finetune", 0)], right[("finetune", 1)]], axis=0)
    other = np.mean([right[("scratch", 0)], right[("scratch", 1)]], axis=0)
    difference, p = re.search(r"scratch ([+-]\d\.\d{4}) \(p = ([\d.]+)\)", note).groups()
    assert float(difference) == pytest.approx(other.mean() - first.mean(), abs=5e-5)
    assert float(p) == pytest.approx(exact_sign_flip_p(list(first - other)), abs=0.0005)  # exact, to 3 decimals
    assert "two-sided sign-flip test, exact)" in note
    # the verdict follows the p-value (the sentence "above 0.05 ... does not show" followed every p, 0.006 included)
    assert exact_sign_flip_p(list(first - other)) <= 0.05
    assert "Each differs from finetune at the 5% level on this test set (p at most 0.05). That p is about these trained " \
           "models" in note, note
    # Over seeds: 12/14 twice against 7/14 twice; of the 6 ways to deal the four figures in two pairs, the 2 that keep
    # the pairs apart differ as much: p = 2/6, the least two and two seeds can give.
    assert note.endswith("Over seeds (each seed's test accuracy; two-sided permutation test of the means): scratch "
                         "p = 0.333 (2 and 2 seeds give no p below 0.333)."), note
    for run in runs[2:]:  # scratch right on the images finetune's seeds get right: nothing to tell them apart
        frame = pd.read_csv(runs[0]["predictions"] if run["seed"] == 0 else runs[1]["predictions"])
        frame.to_csv(run["predictions"], index=False)
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    note = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if "paired on the same" in line)
    assert "With p above 0.05 (scratch), this test set does not show the run differs from finetune (at the 5% level). " \
           "That p is about these trained models" in note, note
    assert note.endswith("scratch p = 1.000 (2 and 2 seeds give no p below 0.333)."), note
    runs[-1]["predictions"].unlink()  # a seed without its predictions: no comparison
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    assert "paired on the same" not in (tmp_path / "summary.md").read_text()


def test_near_duplicates_of_test_and_val_images_are_noted_under_the_leaderboard(tmp_path):
    """Kept (near_duplicates: report), they make the figures optimistic: the note counts the distinct test
    (and val) images with a copy in a split the model learnt from; left out or absent, no note."""
    runs = [write_run(tmp_path, "finetune", 0, 0.8, 0.7, 10.0), write_run(tmp_path, "finetune", 1, 0.8, 0.8, 10.0)]
    for run, without in zip(runs, (0.65, 0.75)):  # evaluate's figure without the test images with a copy
        metrics = json.loads(run["metrics"].read_text())
        run["metrics"].write_text(json.dumps({**metrics, "near_duplicates": {"accuracy_without": without}}))
    pairs = [("train/a.png", "test/x.png", "test"), ("val/b.png", "test/x.png", "test"), ("train/c.png", "test/y.png", "test"),
             ("train/d.png", "val/z.png", "val")]
    report = {"counts": {"cat": {"train": 10, "val": 4, "test": 30}, "dog": {"train": 10, "val": 4, "test": 20}},
              "near_duplicates": {"checked": True, "left_out": False, "pairs": [
                  {"path": p, "split": p.split("/")[0], "class_name": "cat", "copy_of": c, "copy_split": cs,
                   "copy_class": "cat", "rms": 1.0} for p, c, cs in pairs]}}
    notes, pages = {}, {}
    for case, near in (("kept", report["near_duplicates"]), ("left out", {**report["near_duplicates"], "left_out": True}),
                       ("none", {"checked": True, "left_out": False, "pairs": []})):
        (tmp_path / "report.json").write_text(json.dumps({**report, "near_duplicates": near}))
        summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", tmp_path / "summary.html",
                      split_report=tmp_path / "report.json")
        notes[case] = [line for line in (tmp_path / "summary.md").read_text().splitlines() if "near duplicate" in line]
        pages[case] = (tmp_path / "summary.html").read_text()
    assert len(notes["kept"]) == 2
    assert notes["kept"][0].startswith("2 of the 50 test images have a near duplicate in train or val")
    assert notes["kept"][1].startswith("1 of the 8 val images has a near duplicate in train")
    assert "(test accuracy without them, mean over seeds, selected runs: finetune 0.7000 (with them 0.8000));" in notes["kept"][0]
    assert "2 of the 50 test images have a near duplicate" in pages["kept"]
    assert pd.read_csv(tmp_path / "summary.csv")["test_accuracy_no_near_duplicates"].tolist() == [pytest.approx(0.70)]
    assert notes["left out"] == [] and notes["none"] == [] and "near duplicate" not in pages["none"]
    assert "the test figures may be optimistic" in notes["kept"][0]
    # Without the copies the selected run scores higher (0.85 against 0.8): the note does not call the figure optimistic
    for run in runs:
        metrics = json.loads(run["metrics"].read_text())
        run["metrics"].write_text(json.dumps({**metrics, "near_duplicates": {"accuracy_without": 0.85}}))
    (tmp_path / "report.json").write_text(json.dumps(report))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", split_report=tmp_path / "report.json")
    note = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if "test images have a near" in line)
    assert ("the test figures could be optimistic, though no selected run scores lower without those images (test "
            "accuracy without them, mean over seeds, selected runs: finetune 0.8500 (with them 0.8000))") in note, note


def test_manifest_rows_of_labels_not_chosen_are_noted_under_the_leaderboard(tmp_path):
    """A label misspelt in a CSV manifest (`bga`) left its image out of the split without a failure: the split's log
    counts it, and nobody reads that log after a run that succeeded; the leaderboard's notes name the labels of few
    rows."""
    runs = [write_run(tmp_path, "finetune", 0, 0.8, 0.7, 10.0)]
    report = {"dataset": {"format": "csv", "path": "data/manifest.csv"}, "counts": {"bag": {"train": 3, "val": 1, "test": 1}},
              "rows_of_other_labels": {"bga": 1, "coat": 12}}
    notes = {}
    for case, other in (("other labels", {"bga": 1, "coat": 12, "bgas": 5, "shirt": 6}), ("none", {})):
        (tmp_path / "report.json").write_text(json.dumps({**report, "rows_of_other_labels": other}))
        summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", split_report=tmp_path / "report.json")
        notes[case] = [line for line in (tmp_path / "summary.md").read_text().splitlines() if "dataset.classes" in line]
    # a class left out on purpose (coat, 12 rows; shirt, 6) is no news; a label on a row or two (up to 5) is a likely typo
    assert notes["other labels"] == [f"6 row(s) of the CSV manifest data/manifest.csv have a label not in dataset.classes "
                                     "and found on at most 5 rows, so they were left out: 'bga' 1, 'bgas' 5. A misspelt label? Every "
                                     f"label left out is in {tmp_path / 'report.json'} (rows_of_other_labels)."]
    assert notes["none"] == []


# A sweep of three lr and a plain experiment, two seeds each: (validation, test accuracy) per seed. The
# validation figures and the test figures order the sweep's runs differently.
DISAGREE = {
    ("finetune-lr1e-3", "finetune"): [(0.70, 0.93), (0.72, 0.91)],  # best test accuracy, worst validation
    ("finetune-lr3e-4", "finetune"): [(0.90, 0.80), (0.86, 0.82)],  # best validation
    ("finetune-lr1e-4", "finetune"): [(0.80, 0.88), (0.82, 0.86)],
    ("scratch", "scratch"): [(0.60, 0.95), (0.62, 0.94)],
}


def disagreeing_runs(tmp_path, metric="val_accuracy"):
    runs = []
    for (name, sweep), seeds in DISAGREE.items():
        for seed, (val, test) in enumerate(seeds):
            shown_val = 1 - val if metric == "val_loss" else val  # a loss: lower is better, same order
            runs.append(write_run(tmp_path, name, seed, test, test, 1.0, val=shown_val, metric=metric, sweep=sweep))
    return runs


def argmax_by(sweep: str, index: int) -> str:
    """Independently: the run of ``sweep`` whose mean over seeds of figure ``index`` (0 val, 1 test) is largest."""
    means = {name: sum(s[index] for s in seeds) / len(seeds) for (name, of), seeds in DISAGREE.items() if of == sweep}
    return max(means, key=means.get)


@pytest.mark.parametrize("metric", ["val_accuracy", "val_balanced_accuracy", "val_loss"])
def test_the_leaderboard_selects_by_validation_even_where_test_accuracy_would_pick_another(tmp_path, metric):
    from helpers import run_script

    runs = disagreeing_runs(tmp_path, metric)
    by_val, by_test = argmax_by("finetune", 0), argmax_by("finetune", 1)
    assert by_val != by_test  # the case is built so that the choice matters
    out = tmp_path / "out"
    sweep_of = {name: sweep for name, sweep in DISAGREE}
    result = run_script("summary", "--runs", *(str(r["info"].parent) for r in runs), "--weights-source", "w",
                        "--sweep-of", json.dumps(sweep_of), "--out-csv", str(out / "summary.csv"),
                        "--out-md", str(out / "summary.md"), "--out-html", str(out / "summary.html"),
                        "--out-selected", str(out / "selected.json"))
    assert result.returncode == 0, result.stdout
    csv = pd.read_csv(out / "summary.csv")
    assert set(csv.loc[csv["selected"], "experiment"]) == {by_val, "scratch"}
    assert list(csv["experiment"])[0] == max(DISAGREE, key=lambda k: sum(v for v, _ in DISAGREE[k]))[0]
    assert set(csv["selected_by"]) == {metric}
    chosen = csv.set_index("experiment").loc[by_val]
    assert chosen["test_accuracy"] == pytest.approx(sum(t for _, t in DISAGREE[(by_val, "finetune")]) / 2)
    selected = json.loads((out / "selected.json").read_text())
    best_seed = max(range(2), key=lambda s: DISAGREE[(by_val, "finetune")][s][0])
    assert selected["finetune"]["run"] == by_val and selected["finetune"]["seed"] == best_seed
    assert selected["finetune"]["model"] == f"{out.parent}/{by_val}/seed{best_seed}/model.onnx"
    assert f"selected by {metric} on the validation images" in (out / "summary.md").read_text()
    assert f"selected by {metric}" in (out / "summary.html").read_text()


@pytest.mark.parametrize("metric", ["val_accuracy", "val_balanced_accuracy"])
def test_ties_on_val_accuracy_go_to_the_lower_val_loss_for_seeds_and_runs(tmp_path, metric):
    """As between epochs: a seed tied with another on val_accuracy (or val_balanced_accuracy) loses to the one of
    lower val_loss at its best epoch, whichever was written first; runs tied on their mean, to the lower mean val_loss."""
    from finetune.selection import choose_model
    from helpers import run_script

    figures = {("first", 0): (0.5, 0.9), ("first", 1): (0.5, 0.7),  # (val_accuracy, val_loss): tied means
               ("second", 0): (0.5, 0.6), ("second", 1): (0.5, 0.8)}
    runs = [write_run(tmp_path, name, seed, 0.8, 0.8, 1.0, val=acc, val_loss=loss, sweep="sweep", metric=metric)
            for (name, seed), (acc, loss) in figures.items()]
    mean_loss = {name: (figures[(name, 0)][1] + figures[(name, 1)][1]) / 2 for name in ("first", "second")}
    run = min(mean_loss, key=mean_loss.get)  # 0.7 against 0.8
    seed = min((0, 1), key=lambda s: figures[(run, s)][1])
    assert (run, seed) == ("second", 0) and figures[("first", 1)][1] > figures[(run, seed)][1]
    out = tmp_path / "out"
    result = run_script("summary", "--runs", *(str(r["info"].parent) for r in runs), "--weights-source", "w",
                        "--sweep-of", json.dumps({"first": "sweep", "second": "sweep"}),
                        "--out-csv", str(out / "summary.csv"), "--out-md", str(out / "summary.md"),
                        "--out-selected", str(out / "selected.json"))
    assert result.returncode == 0, result.stdout
    selected = json.loads((out / "selected.json").read_text())["sweep"]
    assert (selected["run"], selected["seed"]) == (run, seed), selected
    # predict's choice among run folders (rule predict_selected), the same way
    chosen = choose_model([r["info"].parent for r in runs], "model.onnx")
    assert (chosen["experiment"], chosen["seed"]) == (run, seed), chosen
    # within the chosen run alone, the seed tied on val_accuracy goes the same way
    assert choose_model([tmp_path / "first" / "seed0", tmp_path / "first" / "seed1"], "m")["seed"] == 1
    # one share written an ulp apart by the float sums of other recalls (11/18 as (1, 5, 5)/6 and (4, 4, 3)/6): a tie
    (tmp_path / "ulp").mkdir()
    ulp = [write_run(tmp_path / "ulp", "one", seed, 0.8, 0.8, 1.0, val=val, val_loss=loss, metric=metric)
           for seed, (val, loss) in enumerate(((0.6111111111111112, 1.05), (0.611111111111111, 0.30)))]
    assert choose_model([r["info"].parent for r in ulp], "m")["seed"] == 1


def test_runs_with_as_many_validation_images_right_tie_whatever_the_float_sums_and_rank_by_val_loss(tmp_path):
    """3 of 20 images right over two seeds, as 0 + 3 or 1 + 2 of 10: the means are 0.15 and 0.15000000000000002 in
    floats, which picked the second run over the first's lower val_loss. The leaderboard ranks such ties the same
    way, across experiments too, by the lower mean val_loss."""
    from finetune.selection import choose_model

    figures = {("first", 0): (0.0, 0.5), ("first", 1): (0.3, 0.5), ("second", 0): (0.1, 1.5), ("second", 1): (0.2, 1.5),
               ("other", 0): (0.15, 0.2)}
    assert (0.0 + 0.3) / 2 != (0.1 + 0.2) / 2  # the case is built so that float sums differ
    runs = [write_run(tmp_path, name, seed, 0.8, 0.8, 1.0, val=acc, val_loss=loss, sweep="other" if name == "other" else "sweep")
            for (name, seed), (acc, loss) in figures.items()]
    table = summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", out_selected=tmp_path / "selected.json")
    assert json.loads((tmp_path / "selected.json").read_text())["sweep"]["run"] == "first"
    assert choose_model([r["info"].parent for r in runs if r["info"].parent.parent.name != "other"], "m")["experiment"] == "first"
    assert list(zip(table["experiment"], table["rank"])) == [("other", 1), ("first", 2), ("second", 3)]
    # Rounding the means to digits still parted such ties at its cut points: 36,001 of 2 x 20,480 images right both.
    n = 20480
    figures = {("first", 0): (17950 / n, 0.5), ("first", 1): (18051 / n, 0.5), ("second", 0): (17952 / n, 1.5),
               ("second", 1): (18049 / n, 1.5)}
    assert round((17950 / n + 18051 / n) / 2, 12) != round((17952 / n + 18049 / n) / 2, 12)
    (tmp_path / "large").mkdir()
    runs = [write_run(tmp_path / "large", name, seed, 0.8, 0.8, 1.0, val=acc, val_loss=loss, sweep="sweep")
            for (name, seed), (acc, loss) in figures.items()]
    table = summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", out_selected=tmp_path / "selected.json")
    assert json.loads((tmp_path / "selected.json").read_text())["sweep"]["run"] == "first"
    assert list(table["experiment"]) == ["first", "second"]
    # A full tie (the same figure and val_loss), listed either way round: the run selection chose ranks first.
    for order in (("b", "a"), ("a", "b")):
        folder = tmp_path / f"tie_{''.join(order)}"
        folder.mkdir()
        runs = [write_run(folder, name, 0, 0.8, 0.8, 1.0, val=0.5, val_loss=0.5, sweep="sweep") for name in order]
        table = summary_stage(runs, folder / "summary.csv", folder / "summary.md", out_selected=folder / "selected.json")
        chosen = json.loads((folder / "selected.json").read_text())["sweep"]["run"]
        assert list(zip(table["experiment"], table["rank"]))[0] == (chosen, 1), (order, chosen)


def test_a_damaged_results_file_stops_the_summary_naming_it_and_keeps_the_earlier_leaderboard(tmp_path):
    """A metrics.json cut short (a disk error, a hand edit) gave json's traceback without the file's name."""
    from helpers import run_script

    runs = [write_run(tmp_path, "finetune", 0, 0.9, 0.9, 1.0), write_run(tmp_path, "scratch", 0, 0.8, 0.8, 1.0)]
    out = tmp_path / "out"
    args = ["--runs", *(str(r["info"].parent) for r in runs), "--weights-source", "w", "--out-csv",
            str(out / "summary.csv"), "--out-md", str(out / "summary.md")]
    assert run_script("summary", *args).returncode == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    metrics = runs[1]["metrics"]
    metrics.write_text('{"accuracy": 0.5,')
    result = run_script("summary", *args)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stdout
    assert (f"error: {metrics} is not valid JSON (Expecting property name enclosed in double quotes at line 1, column "
            f"18): cut short or edited by hand? A file the workflow wrote is written again by `snakemake --forcerun "
            f"{metrics}`") in result.stdout, result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier
    # the experiment's folder for a run's (results/<run>, not .../seed<n>): named, not a FileNotFoundError traceback
    wrong = args.copy()
    wrong[1] = str(runs[0]["info"].parent.parent)
    result = run_script("summary", *wrong)
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert f"these lack files: {wrong[1]} (train_info.json, metrics.json, history.csv)" in result.stdout, result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier
    # one run given twice (written another way): not two seeds of 0 spread
    twice = args.copy()
    twice[2:2] = [str(runs[0]["info"].parent / ".." / "seed0")]
    result = run_script("summary", *twice)
    assert result.returncode == 2 and "Traceback" not in result.stdout, result.stdout
    assert (f"--runs: each run once; {twice[1]} and {twice[2]} are both run finetune seed0") in result.stdout, result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


def test_experiments_with_different_metrics_are_ranked_within_each(tmp_path):
    runs = [write_run(tmp_path, "a", 0, 0.9, 0.9, 1.0, val=0.5), write_run(tmp_path, "b", 0, 0.8, 0.8, 1.0, val=0.2, metric="val_loss"),
            write_run(tmp_path, "c", 0, 0.7, 0.7, 1.0, val=0.1, metric="val_loss", sweep="b")]
    for run in runs:
        run["metrics"].write_text(json.dumps({**json.loads(run["metrics"].read_text()), "n_test": 500}))
    table = summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    assert list(zip(table["experiment"], table["rank"], table["selected"])) == [
        ("a", 1, True), ("c", 1, True), ("b", 2, False)]  # lower loss first within b's sweep
    text = (tmp_path / "summary.md").read_text()
    assert ("by train.metric among the experiments that share it (val_accuracy: a; val_loss: b; experiments of "
            "different metrics are not ranked against each other)") in text, text
    # The notes that take the first row do not call it the first-ranked run: no run is.
    assert "a test accuracy of 0.9000 (a, listed first: the experiments use different metrics and are not ranked " \
           "against each other)" in text, text


def test_experiments_that_share_a_metric_are_ranked_together_beside_one_of_another(tmp_path):
    """One experiment on val_loss among several on val_accuracy: those several are still ranked against each other
    (each was ranked 1, alone), the val_loss one by itself, each metric's rows in the order the experiments are
    listed; the selection within each experiment is unchanged."""
    runs = [write_run(tmp_path, "a", 0, 0.7, 0.7, 1.0, val=0.6), write_run(tmp_path, "b", 0, 0.8, 0.8, 1.0, val=0.2,
                                                                           metric="val_loss"),
            write_run(tmp_path, "d", 0, 0.9, 0.9, 1.0, val=0.8), write_run(tmp_path, "e", 0, 0.6, 0.6, 1.0, val=0.7)]
    table = summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    expected = sorted([("d", 0.8), ("e", 0.7), ("a", 0.6)], key=lambda row: -row[1])  # higher accuracy first
    assert list(zip(table["experiment"], table["rank"], table["val_metric"])) == [
        *((name, rank, "val_accuracy") for rank, (name, _) in enumerate(expected, 1)), ("b", 1, "val_loss")]
    assert table["selected"].all()  # one run per experiment: each is its experiment's selection
    assert "(val_accuracy: d, e, a; val_loss: b;" in (tmp_path / "summary.md").read_text()  # in rank order


# --------------------------------------------------------------------------- the evaluate rule, for real

@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_evaluate_rule_writes_metrics_plots_and_tables(tiny_run):
    results = tiny_run / "results"
    for run in ("finetune/seed0", "feature_extract/seed0", "scratch/seed0"):
        folder = results / run
        # Strict JSON (no NaN) so any consumer can read it.
        metrics = json.loads((folder / "metrics.json").read_text(),
                             parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
        for key in ("accuracy", "top2_accuracy", "macro_f1", "weighted_f1", "ece", "per_class", "most_confused",
                    "calibration_bins", "confusion_matrix"):
            assert key in metrics, key
        assert len(metrics["calibration_bins"]) == 15
        # Every figure against the test's own count from the split's labels and the model run here.
        test = held_out(tiny_run)
        classes = ["Shirt", "Sneaker", "Bag", "Ankle boot"]
        truth = [classes.index(c) for c in test["class_name"]]
        probs = probabilities(run_logits(folder, test["path"]))
        ranked = [sorted(range(4), key=lambda c: -row[c]) for row in probs]
        expected = class_metrics(list(test["class_name"]), [classes[r[0]] for r in ranked], classes)
        assert metrics["n_test"] == expected["n"]
        assert metrics["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        correct = round(expected["accuracy"] * expected["n"])
        assert metrics["accuracy_ci95"] == pytest.approx(list(wilson_bounds(correct, expected["n"])), abs=1e-9)
        assert metrics["top2_accuracy"] == pytest.approx(
            sum(t in r[:2] for t, r in zip(truth, ranked)) / len(truth), abs=1e-12)
        assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-12)
        assert metrics["weighted_f1"] == pytest.approx(expected["weighted_f1"], abs=1e-12)
        assert metrics["confusion_matrix"] == expected["confusion"]
        for name in classes:
            assert metrics["per_class"][name] == pytest.approx(expected["per_class"][name], abs=1e-12), name
        ece, counts = calibration(truth, probs, 15)
        assert [b["count"] for b in metrics["calibration_bins"]] == counts
        assert metrics["ece"] == pytest.approx(ece, abs=1e-6)
        for name in ("confusion_matrix.png", "reliability.png", "learning_curves.png"):
            assert_png(folder / name)
        # The split's report (rule evaluate reads it) has no near duplicate of a test image in this split.
        report = json.loads((tiny_run / "resources/splits/target.report.json").read_text())["near_duplicates"]
        assert report["checked"] and not [p for p in report["pairs"] if p["copy_split"] == "test"]
        assert metrics["near_duplicates"] == {"checked": True, "test_images_with_copy": 0, "n_test_without": expected["n"],
                                              "accuracy_without": pytest.approx(expected["accuracy"], abs=1e-12)}
        page = (folder / "metrics.html").read_text()
        for class_name in ("Shirt", "Sneaker", "Bag", "Ankle boot"):
            assert class_name in page
    summary = pd.read_csv(results / "summary.csv")
    for column in ("strategy", "weights_source", "trainable_params", "epochs", "train_seconds", "test_accuracy",
                   "test_accuracy_std", "macro_f1", "macro_f1_std"):
        assert column in summary.columns, column
    assert "Leaderboard" in (results / "summary.html").read_text()
    assert f"The test figures are over {metrics['n_test']:,} test images: " in (results / "summary.md").read_text()
    # The runs against the first-ranked one, paired per image: with one seed, the difference of accuracies.
    note = next(line for line in (results / "summary.md").read_text().splitlines() if "paired on the same" in line)
    first = summary["experiment"].iloc[0]
    accuracy = {r: json.loads((results / r / "seed0/metrics.json").read_text())["accuracy"] for r in ("finetune", "feature_extract", "scratch")}
    for run in set(accuracy) - {first}:
        assert f"{run} {accuracy[run] - accuracy[first]:+.4f} (p " in note, note


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("bad", ["history empty", "history of another table", "train_info a list",
                                 "split report a list"])
def test_evaluate_run_alone_names_an_optional_input_that_is_not_what_the_workflow_writes_before_writing(tiny_run,
                                                                                                        tmp_path, bad):
    """evaluate.py run by hand with --history an empty file or another table, --train-info or --split-report a JSON
    list: a traceback (EmptyDataError, AttributeError) after the test predictions and confusion matrix were written.
    Now one line naming the file, exit status 1, before any output is written."""
    folder = tiny_run / "results/finetune/seed0"
    given = tmp_path / "given"
    given.write_text({"history empty": "", "history of another table": "a,b\n1,2\n", "train_info a list": "[1, 2]",
                      "split report a list": "[]"}[bad])
    option = {"history empty": "--history", "history of another table": "--history",
              "train_info a list": "--train-info", "split report a list": "--split-report"}[bad]
    out = tmp_path / "out"
    result = run_script("evaluate", "--checkpoint", str(folder / "model.pt"), "--split",
                        str(tiny_run / "resources/splits/target.csv"), "--out-metrics", str(out / "m.json"),
                        "--out-confusion", str(out / "c.csv"), "--out-predictions", str(out / "p.csv"),
                        "--out-learning-curves-png", str(out / "l.png"), "--device", "cpu",
                        *(["--history", str(folder / "history.csv")] if option != "--history" else []), option, str(given))
    said = {"history empty": f"{given} does not read as a CSV table (EmptyDataError: No columns to parse from file): "
                             "is it the run's history.csv?",
            "history of another table": f"{given} has no epochs (columns: a, b, 1 rows): is it the run's history.csv, "
                                        "written by its train job?",
            "train_info a list": f"{given} holds a list, not a JSON object: is it the run's train_info.json?",
            "split report a list": f"{given} holds a list, not a JSON object: is it the split's report "
                                   "(split.report.json)?"}[bad]
    assert result.returncode == 1 and result.stdout.splitlines()[-1] == f"error: {said}", result.stdout[-3000:]
    assert "Traceback" not in result.stdout and not out.exists()


def test_evaluate_given_a_file_that_is_no_onnx_model_says_so_naming_it(tiny_run, tmp_path):
    """evaluate.py --onnx run alone with the split file (or the checkpoint) for the model: onnxruntime's traceback
    (INVALID_PROTOBUF) before; one line naming the file now, and no output written."""
    folder = tiny_run / "results/finetune/seed0"
    split = tiny_run / "resources/splits/target.csv"
    for given in (split, folder / "model.pt"):
        out = tmp_path / given.name
        result = run_script("evaluate", "--checkpoint", str(folder / "model.pt"), "--split", str(split), "--out-metrics",
                            str(out / "m.json"), "--out-confusion", str(out / "c.csv"), "--out-predictions",
                            str(out / "p.csv"), "--device", "cpu", "--onnx", str(given))
        last = result.stdout.splitlines()[-1]
        assert result.returncode == 1 and last.startswith(f"error: {given}: onnxruntime cannot load it as an ONNX "
                                                          "model ("), result.stdout[-3000:]
        assert last.endswith("): give the run's model.onnx, as rule export_onnx writes it"), last
        assert "Traceback" not in result.stdout and not any(out.glob("*")), result.stdout[-3000:]


def test_evaluate_scores_the_exported_onnx_model_when_asked(tiny_run, tmp_path):
    """evaluate.onnx: the script scores model.onnx too; its accuracy and agreement are recomputed here from a
    fresh onnxruntime session on images decoded as the README documents, and the PyTorch side from torchvision."""
    from helpers import run_script
    from recompute import model_inputs, onnx_logits, onnx_preprocessing

    folder = tiny_run / "results/finetune/seed0"
    decoded = tiny_run / "resources/decoded/target/native"

    def evaluate(*tta: str):
        out = run_script("evaluate", "--checkpoint", str(folder / "model.pt"), "--split", str(tiny_run / "resources/splits/target.csv"),
                         "--decoded", str(decoded / "images.npy"), str(decoded / "info.json"), "--onnx", str(folder / "model.onnx"),
                         "--out-metrics", str(tmp_path / "m.json"), "--out-confusion", str(tmp_path / "c.csv"),
                         "--out-predictions", str(tmp_path / "p.csv"), "--device", "cpu", *tta)
        assert out.returncode == 0, out.stdout[-3000:]
        return out, json.loads((tmp_path / "m.json").read_text())

    out, metrics = evaluate()
    onnx = metrics["onnx"]
    test = held_out(tiny_run)
    prep = onnx_preprocessing(folder / "model.onnx")
    ours = onnx_logits(folder / "model.onnx", model_inputs(test["path"], prep)).argmax(1)
    theirs = run_logits(folder, test["path"]).argmax(1)
    truth = np.array([prep["classes"].index(c) for c in test["class_name"]])
    assert onnx["model"] == str(folder / "model.onnx")
    assert onnx["accuracy"] == pytest.approx(float((ours == truth).mean()), abs=1e-12)
    assert onnx["top1_agreement_with_pytorch"] == pytest.approx(float((ours == theirs).mean()), abs=1e-12)
    assert 0 <= onnx["max_abs_logit_diff"] < 1e-3
    assert f"ONNX model {folder / 'model.onnx'}: test accuracy {onnx['accuracy']:.4f}" in out.stdout
    # evaluate.tta hflip beside a plain model.onnx: the export is compared with PyTorch doing what it does
    # (no flip), and said to run without test-time augmentation; the PyTorch figures are the flipped ones.
    _, flipped = evaluate("--tta", "hflip")
    assert flipped["tta"] == "hflip" and flipped["onnx"]["tta"] == "none"
    assert flipped["onnx"]["accuracy"] == onnx["accuracy"]
    assert flipped["onnx"]["top1_agreement_with_pytorch"] == pytest.approx(float((ours == theirs).mean()), abs=1e-12)
    assert 0 <= flipped["onnx"]["max_abs_logit_diff"] < 1e-3


def test_evaluate_refuses_a_split_of_other_classes_than_the_model_was_trained_on(tiny_run, tmp_path):
    """A split file whose classes are not the checkpoint's (here one renamed; the label numbers alike) would
    be scored under the wrong names: refused on one line naming both files and both lists, nothing written."""
    from helpers import run_script

    folder = tiny_run / "results/finetune/seed0"
    split = pd.read_csv(tiny_run / "resources/splits/target.csv")
    trained = json.loads((folder / "train_info.json").read_text())["classes"]
    renamed = split.assign(class_name=split["class_name"].replace({trained[-1]: "Handbag"}))
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    out = tmp_path / "out"
    result = run_script("evaluate", "--checkpoint", str(folder / "model.pt"), "--split", str(tmp_path / "renamed.csv"),
                        "--out-metrics", str(out / "m.json"), "--out-confusion", str(out / "c.csv"),
                        "--out-predictions", str(out / "p.csv"), "--device", "cpu")
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout
    other = [*trained[:-1], "Handbag"]
    assert (f"error: {folder / 'model.pt'} was trained on classes {trained}, {tmp_path / 'renamed.csv'} has {other}"
            in result.stdout), result.stdout
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_evaluate_scores_the_test_images_without_a_near_duplicate_apart(tiny_run, tmp_path):
    """With the split's report (rule evaluate passes it), the test images with a near copy in train or val
    are named in test_predictions.csv and left out of a second accuracy, recomputed here from torchvision;
    a val image's copy in train does not count, left-out copies count none, and an unchecked split none."""
    from helpers import run_script

    folder = tiny_run / "results/finetune/seed0"
    split = pd.read_csv(tiny_run / "resources/splits/target.csv")
    test = held_out(tiny_run)
    train, val = split[split["split"] == "train"]["path"].tolist(), split[split["split"] == "val"]["path"].tolist()
    pairs = [(train[0], "train", test["path"][0], "test", 2.0), (val[0], "val", test["path"][0], "test", 1.0),
             (train[1], "train", test["path"][3], "test", 4.0), (val[1], "val", test["path"][5], "test", 0.5),
             (train[2], "train", val[2], "val", 0.1)]
    near = {"checked": True, "left_out": False, "pairs": [
        {"path": a, "split": sa, "class_name": "x", "copy_of": b, "copy_split": sb, "copy_class": "x", "rms": rms}
        for a, sa, b, sb, rms in pairs]}
    truth = np.array([["Shirt", "Sneaker", "Bag", "Ankle boot"].index(c) for c in test["class_name"]])
    correct = run_logits(folder, test["path"]).argmax(1) == truth
    decoded = tiny_run / "resources/decoded/target/native"
    results = {}
    every = {**near, "pairs": [{"path": train[i % len(train)], "split": "train", "class_name": "x", "copy_of": p,
                                "copy_split": "test", "copy_class": "x", "rms": 1.0} for i, p in enumerate(test["path"])]}
    for case, report in (("kept", near), ("left out", {**near, "left_out": True}), ("unchecked", {**near, "checked": False}),
                         ("every", every)):
        (tmp_path / "report.json").write_text(json.dumps({"near_duplicates": report}))
        out = run_script("evaluate", "--checkpoint", str(folder / "model.pt"), "--split", str(tiny_run / "resources/splits/target.csv"),
                         "--split-report", str(tmp_path / "report.json"),
                         "--decoded", str(decoded / "images.npy"), str(decoded / "info.json"),
                         "--out-metrics", str(tmp_path / "m.json"), "--out-confusion", str(tmp_path / "c.csv"),
                         "--out-predictions", str(tmp_path / "p.csv"), "--out-html", str(tmp_path / "m.html"), "--device", "cpu")
        assert out.returncode == 0, out.stdout[-3000:]
        results[case] = (json.loads((tmp_path / "m.json").read_text()), pd.read_csv(tmp_path / "p.csv", keep_default_na=False),
                         (tmp_path / "m.html").read_text(), out.stdout)

    metrics, predictions, page, log = results["kept"]
    kept = np.ones(len(test), dtype=bool)
    kept[[0, 3, 5]] = False
    assert metrics["near_duplicates"] == {"checked": True, "test_images_with_copy": 3, "n_test_without": len(test) - 3,
                                          "accuracy_without": pytest.approx(float(correct[kept].mean()), abs=1e-12)}
    assert metrics["accuracy"] == pytest.approx(float(correct.mean()), abs=1e-12)
    expected = [""] * len(test)
    expected[0], expected[3], expected[5] = val[0], train[1], val[1]  # the nearest copy of each
    assert predictions["near_duplicate_of"].tolist() == expected
    assert f"without the 3 test images with a near duplicate in train or val ({len(test) - 3} images)" in page
    assert "3 test image(s) have a near duplicate in train or val" in log
    for case in ("left out", "unchecked"):
        metrics, predictions, page, log = results[case]
        assert set(predictions["near_duplicate_of"]) == {""}
        assert "near duplicate" not in page and "near duplicate" not in log
    assert results["left out"][0]["near_duplicates"] == {"checked": True, "test_images_with_copy": 0, "n_test_without": len(test),
                                                         "accuracy_without": pytest.approx(float(correct.mean()), abs=1e-12)}
    assert results["unchecked"][0]["near_duplicates"] == {"checked": False, "test_images_with_copy": None,
                                                          "n_test_without": None, "accuracy_without": None}
    # Every test image with a copy: no accuracy is left to give without them (null, not NaN, in metrics.json).
    assert results["every"][0]["near_duplicates"] == {"checked": True, "test_images_with_copy": len(test),
                                                      "n_test_without": 0, "accuracy_without": None}


def test_test_figures_with_test_time_augmentation_say_so_in_the_leaderboard_and_the_tables(tmp_path):
    """evaluate.tta: hflip scores another forward pass than a plain model.onnx runs: the leaderboard names the runs
    scored so, and metrics.html says the augmentation and, with evaluate.onnx, the exported model's own figures."""
    from finetune.tables import metrics_tables

    runs = [write_run(tmp_path, "finetune", 0, 0.90, 0.8, 10.0), write_run(tmp_path, "scratch", 0, 0.70, 0.6, 10.0)]
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    assert "test-time augmentation" not in (tmp_path / "summary.md").read_text()
    runs[0]["metrics"].write_text(json.dumps({**json.loads(runs[0]["metrics"].read_text()), "tta": "hflip"}))
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md")
    text = (tmp_path / "summary.md").read_text()
    assert "The test figures of finetune are with test-time augmentation (evaluate.tta: hflip" in text
    assert "scratch" not in text.split("test-time augmentation")[0].split("\n")[-1]
    assert "each model.onnx was exported without it (export.tta: false)" in text
    # export.tta: true, the shipped models do the same: said so, not that they score without it.
    summary_stage(runs, tmp_path / "summary.csv", tmp_path / "summary.md", exported_tta=True)
    text = (tmp_path / "summary.md").read_text()
    assert "each model.onnx does the same itself (export.tta: true)" in text and "export.tta: false" not in text

    report = {**classification_report(np.array([0, 1, 1]), np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), ["A", "B"]),
              "tta": "hflip", "onnx": {"accuracy": 0.875, "tta": "none", "top1_agreement_with_pytorch": 1.0, "max_abs_logit_diff": 2e-6}}
    overall = dict(metrics_tables(report)[0][1].itertuples(index=False))
    assert overall["test-time augmentation (evaluate.tta)"] == "hflip"
    assert overall["exported model.onnx (onnxruntime, test-time augmentation none): top-1 accuracy"] == "0.8750"
    assert overall["its top-1 agreement with PyTorch (with test-time augmentation none)"] == "1.0000"


@pytest.mark.parametrize("script, option, value, said", [
    ("evaluate", "--top-k", "-2", "--top-k -2: must be at least 1"),
    ("evaluate", "--calibration-bins", "0", "--calibration-bins 0: must be at least 1"),
    ("evaluate", "--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("export_onnx", "--tolerance", "-1", "--tolerance -1: must be above 0"),
    ("export_onnx", "--parity-batch", "0", "--parity-batch 0: must be 2 to 256"),
])
def test_a_script_run_alone_refuses_a_number_the_config_schema_would_refuse(tiny_run, tmp_path, script, option, value, said):
    """Run by hand, evaluate.py took --top-k -2 (metrics.json then held a "top-2_accuracy" of another k),
    --calibration-bins 0 (an ECE of 0.0) and --batch-size 0 (a traceback); export_onnx.py exported for seconds with
    --tolerance -1 before failing parity, and ran --parity-batch 0 as 2. Each is refused at once, naming the
    option and value, and writes nothing."""
    run = tiny_run / "results/finetune/seed0"
    out = tmp_path / "out"
    common = ["--checkpoint", str(run / "model.pt"), "--split", str(tiny_run / "resources/splits/target.csv")]
    outputs = (["--out-metrics", str(out / "m.json"), "--out-confusion", str(out / "c.csv"), "--out-predictions",
                str(out / "p.csv")] if script == "evaluate" else
               ["--out-onnx", str(out / "m.onnx"), "--out-parity", str(out / "p.json")])
    result = run_script(script, *common, *outputs, option, value)
    assert result.returncode == 2 and said in result.stdout, result.stdout[-2000:]
    assert not out.exists()


def test_confusion_matrix_plot_draws_class_names_as_written(tmp_path):
    """Names with two `$` are text, not TeX (one stopped the evaluate job with a mathtext ParseSyntaxException, another
    lost its dollars), and a very long name is shortened, not clipped off the figure."""
    from finetune.plots import _tick_label

    names = ["price $5^$", "$5-$10", "L" + "o" * 120 + "ng name"]
    confusion_matrix_plot(np.eye(3, dtype=int), names, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert _tick_label(names[2]).startswith("Looo") and _tick_label(names[2]).endswith("ng name")
    assert len(_tick_label(names[2])) == 40 and _tick_label("$5-$10") == "$5-$10"
