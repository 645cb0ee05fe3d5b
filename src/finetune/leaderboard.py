"""The leaderboard (rule `summary`): one row per run name, mean and std over its seeds, ranked by the
validation metric; per experiment (a sweep's runs together) the run selection chooses is marked
(``finetune.selection``). Test figures are reported, never used to rank or choose.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .selection import exact, oriented, select_run, validation_record

FIGURES = ("val", "test_accuracy", "test_accuracy_no_near_duplicates", "macro_f1", "epochs", "train_seconds")
KEYS = ["experiment", "sweep", "strategy", "pretrained", "weights_source", "trainable_params", "val_metric"]


def run_row(run: dict, info: dict, metrics: dict) -> dict:
    """One run's line: ``run`` has experiment (the run's name), sweep (the experiment as written), seed,
    weights_source; ``info`` is its train_info.json, ``metrics`` its metrics.json."""
    record = validation_record(info, Path(run["info"]).parent)
    return {
        "experiment": run["experiment"], "sweep": run.get("sweep") or run["experiment"], "seed": run["seed"],
        "strategy": info["strategy"], "pretrained": info["pretrained"],
        "weights_source": run["weights_source"] if info["pretrained"] else "none",
        "trainable_params": info["trainable_params"], "val_metric": record["metric"], "val": record["value"],
        "tie_break": record["tie_break"],
        "epochs": info["epochs_run"], "train_seconds": info["train_seconds"],
        "test_accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n_test": _or_nan(metrics.get("n_test")),
        "n_val": _or_nan(info.get("n_val")),
        # On the test images without a near copy in train or val; NaN where not looked for (or none is left).
        "test_accuracy_no_near_duplicates": _or_nan((metrics.get("near_duplicates") or {}).get("accuracy_without")),
        "diverged": bool(info.get("diverged")),  # on_divergence stop: the run ended at a non-finite loss
        "tta": metrics.get("tta") or "none",  # evaluate.tta: the test figures with test-time augmentation
        "never_predicted": list(metrics.get("never_predicted") or []),  # classes it gave no test image
        "class_weighting": (info.get("options") or {}).get("class_weighting") or "none",
        "options": swept_options(info),  # the run's training options: a sweep's values (swept_values)
        "folder": str(Path(run["info"]).parent),
    }


def swept_options(info: dict) -> dict:
    """The keys a sweep may vary, as a run's train_info.json holds them: its training options, and the two train keys
    recorded beside them, pretrained and image_size (its crop): a sweep of them had no swept_ column."""
    crop = (info.get("preprocessing") or {}).get("crop_size")
    return {**(info.get("options") or {}), "pretrained": info.get("pretrained"),
            **({"image_size": crop} if crop is not None else {})}


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def aggregate(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (n - 1) over seeds of every figure, one row per run name."""
    spec = {"seeds": ("seed", "count"), "seed_list": ("seed", seed_list),
            "diverged_seeds": ("diverged", "sum"), "diverged_seed_list": ("diverged_seed", seed_list),
            "tie_break": ("tie_break", "mean")}
    for figure in FIGURES:
        spec[figure], spec[f"{figure}_std"] = (figure, "mean"), (figure, "std")
    # Seeds as Python integers: a seed may be any of the 64 bits torch takes, which int64 does not hold above 2**63 - 1,
    # nor float64 (where NaN would put them) exactly above 2**53.
    seeds = per_run["seed"].astype(object)
    per_run = per_run.assign(seed=seeds, diverged_seed=seeds.where(per_run["diverged"]))
    table = per_run.groupby(KEYS, sort=False).agg(**spec).reset_index()
    swept = swept_values(per_run)
    if swept.empty:
        return table
    after = table.columns.get_loc("sweep") + 1  # beside the experiment as written
    columns = [*table.columns[:after], *swept.columns, *table.columns[after:]]
    return table.join(swept, on="experiment")[columns]


def swept_values(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per run of a sweep (an experiment whose runs are several), the values of the options its runs differ in, as
    columns ``swept_<key>`` indexed by run name: what the run's name says (``finetune-lr1e-3``), for a table to sort
    or plot by. Read from each run's own train_info.json (its first seed's :func:`swept_options`; the seed left out)."""
    columns = {}
    for _, runs in per_run.groupby("sweep", sort=False):
        first = runs.drop_duplicates("experiment").set_index("experiment")["options"]
        if len(first) < 2:
            continue
        keys = sorted({key for options in first for key in options} - {"seed"})
        for key in keys:
            # numbers as JSON text: summary.csv rounds its numbers to 4 decimals, which would make an lr of 1e-5 a 0;
            # words as written (cpu, not "cpu")
            values = {run: _as_text(options.get(key)) for run, options in first.items()}
            if len(set(values.values())) > 1:
                columns.setdefault(f"swept_{key}", {}).update(values)
    return pd.DataFrame(columns)


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def seed_list(seeds: pd.Series) -> str:
    """Seeds as the CSV lists them: ``"0 1 2"``, sorted; NaN (no such seed) left out."""
    return " ".join(str(int(seed)) for seed in sorted(seeds.dropna()))


def selections(per_run: pd.DataFrame) -> dict:
    """{experiment as written: the selected run} (finetune.selection.select_run over its runs and seeds)."""
    chosen = {}
    for sweep, runs in per_run.groupby("sweep", sort=False):
        records = [{"experiment": r.experiment, "seed": r.seed, "metric": r.val_metric, "value": r.val,
                    "tie_break": r.tie_break, "folder": r.folder} for r in runs.itertuples()]
        run = select_run(records)
        mean = runs.loc[runs["experiment"] == run["experiment"], "val"].mean()
        own = runs[(runs["experiment"] == run["experiment"]) & (runs["seed"] == run["seed"])].iloc[0]
        chosen[sweep] = {"run": run["experiment"], "seed": int(run["seed"]), "metric": run["metric"],
                         "value": run["value"], "mean_over_seeds": round(float(mean), 12),  # not a float sum's 0.8500000000000001
                         "test_accuracy": float(own["test_accuracy"]), "model": f"{run['folder']}/model.onnx",
                         # its training ended at a non-finite loss (on_divergence: stop): the model is its best epoch
                         "diverged": bool(own["diverged"])}
    return chosen


def selected_cell(sweep: str, selected: bool, seed, test_accuracy, diverged: bool = False) -> str:
    """The leaderboard's mark of a selected run, with the seed whose model is shipped and that model's own test
    accuracy (the row's test figure is the mean over its seeds), and whether that seed's training diverged (its
    model is then its best epoch before the loss became non-finite, as selection may ship on a tie)."""
    if not selected:
        return ""
    return f"✓ {sweep}" + ("" if pd.isna(seed) else
                           f" (seed {int(seed)}: test {test_accuracy:.4f}{', diverged' if diverged else ''})")


def ranked(table: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    """Best validation figure first: over the rows that share a metric, the metrics in the order their experiments
    are listed (one experiment on val_loss among others on val_accuracy ranked them all 1, each alone). Equal
    figures (:func:`finetune.selection.exact`) rank as selection breaks their tie: by the best epochs' mean
    ``val_loss`` (``tie_break``), then the selected run first."""
    by_run = {c["run"]: c for c in chosen.values()}
    table = table.assign(selected=table["experiment"].isin(by_run),
                         selected_seed=pd.Series([by_run[name]["seed"] if name in by_run else None
                                                  for name in table["experiment"]], index=table.index, dtype=object),
                         selected_test_accuracy=[by_run[name]["test_accuracy"] if name in by_run else np.nan
                                                 for name in table["experiment"]],
                         selected_diverged=[name in by_run and by_run[name]["diverged"] for name in table["experiment"]],
                         score=[exact(oriented(m, v)) for m, v in zip(table["val_metric"], table["val"])],
                         tie=[exact(v) for v in table["tie_break"]])
    order = {metric: i for i, metric in enumerate(dict.fromkeys(table["val_metric"]))}
    table = table.assign(group=table["val_metric"].map(order))
    table = table.sort_values(["group", "score", "tie", "selected"], ascending=[True, False, False, False], kind="stable")
    table.insert(0, "rank", table.groupby("group").cumcount() + 1)
    return table.drop(columns=["score", "group", "tie", "tie_break"]).reset_index(drop=True)


def chosen_by(table: pd.DataFrame) -> str:
    """The sentence saying how the table ranks and chooses."""
    metrics = list(dict.fromkeys(table["val_metric"]))
    of = {m: ", ".join(dict.fromkeys(table.loc[table["val_metric"] == m, "sweep"])) for m in metrics}
    how = (f"by {metrics[0]}" if len(metrics) == 1 else
           f"by train.metric among the experiments that share it ({'; '.join(f'{m}: {of[m]}' for m in metrics)}; "
           "experiments of different metrics are not ranked against each other)")
    return (f"Ranked and selected {how} on the validation images (best epoch, mean over seeds); the selected run of each "
            "experiment is marked. Test figures are reported, never used to rank or choose.")


def mean_std(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def epochs_cell(epochs: float, diverged_seeds: str, seeds: int) -> str:
    """The epochs run (mean over seeds), and which seeds ended at a non-finite loss (on_divergence: stop):
    ``diverged_seeds`` as :func:`seed_list` writes them."""
    diverged = diverged_seeds.split()
    return f"{epochs:g}" + (f" (diverged: {len(diverged)} of {seeds} seeds: {', '.join(diverged)})" if diverged else "")


# What the tables' figures are (summary.md under its table where a run has two seeds or more; summary.html always).
SPREAD_NOTE = "Mean over seeds; ± is the sample standard deviation (n - 1) over seeds"


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "| rank | experiment | selected | strategy | weights | trainable params | seeds | epochs | train s | validation | "
        "test accuracy | macro F1 |",
        "|---:|---|:---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.rank} | {r.experiment} | "
            f"{selected_cell(r.sweep, r.selected, r.selected_seed, r.selected_test_accuracy, r.selected_diverged)} | "
            f"{r.strategy} | {r.weights_source} | "
            f"{r.trainable_params:,} | {r.seeds} | {epochs_cell(r.epochs, r.diverged_seed_list, r.seeds)} | "
            f"{mean_std(r.train_seconds, r.train_seconds_std, 1)} | "
            f"{r.val_metric} {mean_std(r.val, r.val_std, 4)} | {mean_std(r.test_accuracy, r.test_accuracy_std, 4)} | "
            f"{mean_std(r.macro_f1, r.macro_f1_std, 4)} |"
        )
    spread = [f"{SPREAD_NOTE}."] if (table["seeds"] > 1).any() else []
    return "\n".join([*lines, "", *spread, chosen_by(table)]) + "\n"


SIGN_FLIPS = 10_000  # random sign vectors where the exact test is out of reach: p known to about +-0.005 at p = 0.05
EXACT_GRID = 1 << 22  # the exact test's grid of sums (32 MB a float64 array): beyond it, random sign vectors
EXACT_WORK = 1 << 26  # grid points x distinct steps the exact test computes at most (about a second)


def paired_p_value(a: np.ndarray, b: np.ndarray, draws: int = SIGN_FLIPS, seed: int = 0) -> tuple[float, bool]:
    """(two-sided p-value, exact?) of the mean of ``a - b`` (paired per test image: each run's share of seeds that got
    the image right) being 0, by a sign-flip test: under no difference, each image's difference is as likely negative
    as positive. Exact where the differences are multiples of one step (shares of seeds are: 1/k) and their sum's
    range fits :data:`EXACT_GRID`; else (1 + draws at least as extreme) / (1 + draws) of ``draws`` random sign vectors."""
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    d = d[d != 0]
    if len(d) == 0:
        return 1.0, True
    steps = _integer_steps(d)
    if steps is not None:
        values, counts = np.unique(np.abs(steps), return_counts=True)
        size = _exact_size(steps)
        if size <= EXACT_GRID and size * len(values) <= EXACT_WORK:
            return _exact_sign_flip_p(values, counts, abs(int(steps.sum())), size), True
    observed = abs(d.sum())
    rng = np.random.default_rng(seed)
    extreme, rows = 0, max(1, min(1000, 4_000_000 // len(d)))  # at most 4 million signs at once (32 MB as float64)
    for start in range(0, draws, rows):
        signs = rng.integers(0, 2, size=(min(rows, draws - start), len(d)), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ d) >= observed - 1e-9).sum())
    return (1 + extreme) / (1 + draws), False


def _integer_steps(d: np.ndarray, most: int = 256) -> np.ndarray | None:
    """``d`` as whole multiples of its smallest step 1/q (q <= ``most``: seeds' shares are multiples of 1/k), or None."""
    for q in range(1, most + 1):
        scaled = d * q
        steps = np.rint(scaled)
        if np.all(np.abs(scaled - steps) < 1e-6):
            return steps.astype(np.int64)
    return None


def _exact_size(steps: np.ndarray) -> int:
    """The exact test's grid: a power of two above every sum's range, -reach..reach, so that none wraps onto another."""
    return 1 << (2 * int(np.abs(steps).sum())).bit_length()


def _exact_sign_flip_p(values: np.ndarray, counts: np.ndarray, observed: int, size: int) -> float:
    """P(|sum of s_i x steps_i| >= ``observed``) over all 2^n sign vectors s, exactly (to float rounding), the steps
    given as their distinct sizes ``values`` and how many images have each (``counts``). Each image adds +-v with
    probability 1/2: its Fourier transform is cos(2 pi v k / N), so the sum's is the product of cos(2 pi v k / N)^c
    over the values; inverted on a grid of N = ``size`` points that holds every sum (index: the sum mod N)."""
    reach = int((values * counts).sum())
    k = np.arange(size, dtype=np.int64)
    cosines = np.cos(2 * np.pi * k / size)
    transform = np.ones(size)
    for v, c in zip(values, counts):
        transform *= cosines[(int(v) * k) % size] ** int(c)
    pmf = np.clip(np.fft.irfft(transform[:size // 2 + 1], n=size), 0, None)
    sums = np.arange(-reach, reach + 1)
    return float(min(1.0, pmf[sums[np.abs(sums) >= observed] % size].sum()))


PERMUTATIONS_EXACT = 200_000  # the seed-level test deals every way up to this many, else this many at random


def seed_p_value(a, b, draws: int = PERMUTATIONS_EXACT, seed: int = 0) -> tuple[float, bool]:
    """(two-sided p-value, exact?) of two experiments' mean test accuracy over seeds being the same, from each seed's
    figure (``a``, ``b``): a permutation test, the share of the ways of dealing the pooled figures into groups of these
    sizes whose means differ at least as much (every way where there are at most ``draws``, else ``draws`` at random).
    It counts the spread of training seeds, which the paired test per image takes as it is."""
    pooled = np.asarray([*a, *b], dtype=np.float64)
    k, total = len(a), pooled.sum()
    observed = abs(np.mean(a) - np.mean(b)) - 1e-12

    def differs(group) -> bool:
        chosen = pooled[list(group)].sum()
        return abs(chosen / k - (total - chosen) / (len(pooled) - k)) >= observed

    if math.comb(len(pooled), k) <= draws:
        dealt = [differs(group) for group in itertools.combinations(range(len(pooled)), k)]
        return float(np.mean(dealt)), True
    rng = np.random.default_rng(seed)
    extreme = sum(differs(rng.permutation(len(pooled))[:k]) for _ in range(draws))
    return float((1 + extreme) / (1 + draws)), False


def per_seed_correct(runs: list[dict]) -> dict[str, list[pd.Series]] | None:
    """{run name: per seed, 1.0 or 0.0 for each test image classified right or not, by path}, from each seed's
    test_predictions.csv (``run["predictions"]``); None where a seed has none (made before it, or a test)."""
    seeds: dict[str, list[pd.Series]] = {}
    for run in runs:
        path = run.get("predictions")
        if path is None or not Path(path).is_file():
            return None
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        seeds.setdefault(run["experiment"], []).append(
            pd.Series((table["predicted"] == table["label"]).to_numpy(dtype=float), index=table["path"]))
    return seeds


def paired_notes(runs: list[dict], table: pd.DataFrame) -> list[str]:
    """The selected runs' test accuracy against the first-ranked run's, paired on the same test images
    (:func:`paired_p_value`), as a note; nothing with one selected run, or without every run's predictions."""
    selected = table.loc[table["selected"], "experiment"].tolist()
    first = table["experiment"].iloc[0]
    others = [name for name in selected if name != first]
    seeds = per_seed_correct(runs) if others else None
    correct = None if seeds is None else {name: pd.concat(each, axis=1).mean(axis=1) for name, each in seeds.items()}
    if correct is None or any(not correct[name].index.equals(correct[first].index) for name in others):
        return []
    a = correct[first].to_numpy()
    parts, tests, unshown = [], set(), []
    for name in others:
        b = correct[name].to_numpy()
        p, exact = paired_p_value(a, b)
        parts.append(f"{name} {b.mean() - a.mean():+.4f} ({p_text(p, exact)})")
        tests.add("exact" if exact else f"{SIGN_FLIPS:,} random sign vectors")
        unshown += [name] if p > 0.05 else []
    verdict = (f"With p above 0.05 ({', '.join(unshown)}), this test set does not show the run differs from {first} (at the "
               "5% level)." if unshown else f"Each differs from {first} at the 5% level on this test set (p at most 0.05).")
    return [f"Test accuracy of the selected runs against {first} ({_first(table)}), paired on the same {len(a):,} test images "
            f"(each image's share of seeds right; two-sided sign-flip test, {' or '.join(sorted(tests))}): {', '.join(parts)}. "
            + verdict + " " + seed_verdict(first, others, {name: [s.mean() for s in each] for name, each in seeds.items()})]


def seed_verdict(first: str, others: list[str], accuracy: dict[str, list[float]]) -> str:
    """What the paired test leaves out, said: it is about these trained models, its p counting the test images'
    sampling only; another set of seeds trains other models. Each run against ``first`` over its seeds' test accuracy
    (:func:`seed_p_value`), with the least p its numbers of seeds can give where that is above 0.05."""
    parts = []
    for name in others:
        ours, theirs = accuracy[name], accuracy[first]
        if min(len(ours), len(theirs)) < 2:
            parts.append(f"{name} not tested ({first if len(theirs) < 2 else name} has one seed)")
            continue
        p, exact = seed_p_value(ours, theirs)
        # the least p: each seed of one above each of the other, matched by that dealing alone (and its mirror, sizes equal)
        least = (2 if len(ours) == len(theirs) else 1) / math.comb(len(ours) + len(theirs), len(ours))
        parts.append(f"{name} {p_text(p, exact)}" + (f" ({len(ours)} and {len(theirs)} seeds give no p below "
                                                      f"{least:.3f})" if least > 0.05 else ""))
    return ("That p is about these trained models: it counts the sampling of test images, not the spread another set "
            "of training seeds gives. Over seeds (each seed's test accuracy; two-sided permutation test of the means): "
            f"{', '.join(parts)}.")


def p_text(p: float, exact: bool) -> str:
    """An exact p-value to 3 decimals ("p < 0.001" below); an estimate from random sign vectors as one (10,000 draws
    resolve about +-0.0004 near 0.001): "p < 0.001" only where no draw was as extreme (the 99.99% upper bound of
    0 in 10,000 is 0.0009)."""
    if exact:
        return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"
    if p <= 1 / (1 + SIGN_FLIPS):
        return "p < 0.001"
    return f"p ≈ {p:.1g}" if p < 0.001 else f"p ≈ {p:.3f}"


def _first(table: pd.DataFrame) -> str:
    """What the table's first row is: the first-ranked run, or only the first listed where experiments use different
    metrics (each ranked within itself)."""
    if table["val_metric"].nunique() == 1:
        return "first"
    return "listed first: the experiments use different metrics and are not ranked against each other"


def tta_notes(per_run: pd.DataFrame, exported_tta: bool = False) -> list[str]:
    """Test figures scored with test-time augmentation (evaluate.tta: hflip) are not a plain forward pass's: said,
    and whether the shipped model.onnx does the same (``exported_tta``: export.tta)."""
    flipped = sorted(set(per_run.loc[per_run["tta"] == "hflip", "experiment"]))
    if not flipped:
        return []
    shipped = ("each model.onnx does the same itself (export.tta: true)" if exported_tta else
               "each model.onnx was exported without it (export.tta: false) and scores as a plain forward pass does")
    return [f"The test figures of {', '.join(flipped)} are with test-time augmentation (evaluate.tta: hflip: each test "
            f"image scored by the mean of the model's logits on it and on its mirror image); {shipped}."]


def chance_notes(per_run: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """How far chance alone moves the test figures: the 95% Wilson interval of the first-ranked run's test
    accuracy (mean over seeds) on a test set of this size. Nothing where the runs' test sets differ in
    size or metrics.json does not say (made before ``n_test``)."""
    notes, top = validation_chance_notes(per_run, table), table.iloc[0]
    # The interval of the share printed (a mean over seeds need not be a whole count of images: 200.5 of 300)
    interval = _interval_of_share(per_run["n_test"], top.test_accuracy)
    if interval is None:
        return notes
    n, low, high = interval
    ranked = "" if table["val_metric"].nunique() == 1 else f", {_first(table)}"
    return [f"The test figures are over {n:,} test images: a test accuracy of {top.test_accuracy:.4f} ({top.experiment}{ranked}) "
            f"has a 95% interval of {low:.4f} to {high:.4f} (Wilson) over test sets of that size, so test figures "
            "closer than that may differ by chance.", *notes]


def validation_chance_notes(per_run: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """How far chance alone moves the figure that ranks and selects, where it is val_accuracy: the 95% Wilson interval
    of the first-ranked run's on a validation set of this size (a few-shot split ranks on a few dozen images).
    Nothing for other metrics, or where train_info.json does not say (made before ``n_val``)."""
    top = table.iloc[0]
    interval = _interval_of_share(per_run["n_val"], top.val) if set(table["val_metric"]) == {"val_accuracy"} else None
    if interval is None:
        return []
    n, low, high = interval
    return [f"The runs are ranked and selected on {n:,} validation images: a val_accuracy of {top.val:.4f} "
            f"({top.experiment}) has a 95% interval of {low:.4f} to {high:.4f} (Wilson) over validation sets of that "
            "size, so runs closer than that may be in their order by chance."]


def _interval_of_share(sizes: pd.Series, share: float) -> tuple[int, float, float] | None:
    """(n, low, high): the 95% Wilson interval of ``share`` of n images, where every run's set has the same size n;
    None where the sizes differ or a run's file does not say."""
    from .metrics import wilson_interval

    if sizes.isna().any() or sizes.nunique() != 1:
        return None
    n = int(sizes.iloc[0])
    return (n, *wilson_interval(share * n, n))


def never_predicted_notes(per_run: pd.DataFrame, chosen: dict, train_counts: list[int] | None = None) -> list[str]:
    """The selected runs (the seed that selected each) that predicted some class for no test image: accuracy on
    imbalanced classes can rank such a run high, and the note says to look at macro_f1. ``train_counts``: the training
    images per class (the split report's), where known: as many each, class weighting is not suggested (its weights
    are then all 1)."""
    balanced = bool(train_counts) and len(set(train_counts)) == 1
    notes = []
    for sweep, pick in chosen.items():
        row = per_run[(per_run["experiment"] == pick["run"]) & (per_run["seed"] == pick["seed"])].iloc[0]
        if row.never_predicted:
            names = ", ".join(f"`{name}`" for name in row.never_predicted)  # a code span each: `a, b` is one class
            notes.append(f"The selected run {pick['run']} (seed {pick['seed']}) predicted no test image as "
                         f"{names}: its test accuracy comes from the other classes alone (its "
                         f"macro_f1, which counts such a class as 0, is {row.macro_f1:.4f}); "
                         + ("every class has as many training images, so class weighting would change nothing: compare "
                            "the runs' macro_f1, or give those classes more training images." if balanced else
                            "with imbalanced classes, compare the runs' macro_f1"
                            + (", or try class_weighting: loss." if row.class_weighting == "none"
                               else ", or give those classes more training images.")))
    return notes


def near_duplicate_notes(split_report: dict, report_path: str = "resources/splits/target.report.json",
                         table: pd.DataFrame | None = None) -> list[str]:
    """What the target split's near duplicates (finetune.nearduplicates) mean for the figures: test (or val)
    images with a near copy in a split the model learnt from, kept where ``near_duplicates: report``; with
    ``table`` (the leaderboard), the selected runs' test accuracy without those test images."""
    from .nearduplicates import LEARNT_FROM, copies_learnt_from

    near = split_report.get("near_duplicates")
    if near is None:  # a split report from before the check
        return []
    if not near["checked"]:
        why = near.get("why", "dataset.near_duplicates: false")
        return [f"Near duplicates across the splits were not looked for ({why})."]
    notes = []
    for split, figures in (("test", "the test figures"), ("val", "the validation figures")):
        images = copies_learnt_from(near, split)
        if images:
            total = sum(counts.get(split, 0) for counts in split_report.get("counts", {}).values())
            without = _selected_without(table) if split == "test" and table is not None else ""
            have = "has" if len(images) == 1 else "have"
            verdict = ("could be optimistic, though no selected run scores lower without those images"
                       if split == "test" and table is not None and _no_higher_with_copies(table) else "may be optimistic")
            notes.append(f"{len(images)} of the {total:,} {split} images {have} a near duplicate in "
                         f"{' or '.join(LEARNT_FROM[split])} ({report_path}): {figures} {verdict}{without}; "
                         "dataset.near_duplicates: leave_out leaves the copies out.")
    return notes


def _no_higher_with_copies(table: pd.DataFrame) -> bool:
    """Whether every selected run's test accuracy (mean over seeds) without the test images that have a near duplicate
    is known and at least its accuracy with them."""
    selected = table[table["selected"]]
    without, within = selected["test_accuracy_no_near_duplicates"], selected["test_accuracy"]
    return len(selected) > 0 and not without.isna().any() and bool((without >= within).all())


def _selected_without(table: pd.DataFrame) -> str:
    """The selected runs' test accuracy without the test images that have a near duplicate, as a note's clause."""
    figures = [f"{r.experiment} {r.test_accuracy_no_near_duplicates:.4f} (with them {r.test_accuracy:.4f})"
               for r in table[table["selected"]].itertuples() if not pd.isna(r.test_accuracy_no_near_duplicates)]
    return f" (test accuracy without them, mean over seeds, selected runs: {', '.join(figures)})" if figures else ""


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the HTML page shows it."""
    return pd.DataFrame({
        "rank": table["rank"], "experiment": table["experiment"],
        "selected": [selected_cell(*cells) for cells in zip(table["sweep"], table["selected"], table["selected_seed"],
                                                            table["selected_test_accuracy"], table["selected_diverged"])],
        "strategy": table["strategy"], "weights": table["weights_source"],
        "trainable params": table["trainable_params"].map("{:,}".format), "seeds": table["seeds"],
        "seed list": table["seed_list"],
        "epochs": [epochs_cell(e, d, n) for e, d, n in zip(table["epochs"], table["diverged_seed_list"], table["seeds"])],
        "train s": [mean_std(m, s, 1) for m, s in zip(table["train_seconds"], table["train_seconds_std"])],
        "validation": [f"{n} {mean_std(m, s, 4)}" for n, m, s in zip(table["val_metric"], table["val"], table["val_std"])],
        "test accuracy": [mean_std(m, s, 4) for m, s in zip(table["test_accuracy"], table["test_accuracy_std"])],
        "macro F1": [mean_std(m, s, 4) for m, s in zip(table["macro_f1"], table["macro_f1_std"])],
    })
