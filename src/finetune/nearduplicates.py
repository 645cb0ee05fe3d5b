"""Near duplicates across splits: the same picture in two splits under other bytes (saved again as JPEG,
resized, converted to PNG), so that the model would be scored on, or chosen by, an image it trained on.
Identical files are found by their sha256 before the split (finetune.data.find_duplicates); this finds
the rest after it, on the images' thumbnails (finetune.images.thumbnail: 16x16 luma, 8x8 colour).

Two images are near duplicates where their thumbnails differ by at most :data:`MAX_RMS` levels (root
mean square over the thumbnail's 256 luma cells, and its 128 colour cells where both images have colour).
A copy saved again as a JPEG at quality 70 differs by about 1; at half the size, as PNG, by up to 3.5
(pictures of sharp-edged shapes: the check decodes a JPEG at 1/8 scale, whose 8x8 blocks straddle the
thumbnail's cells); two different pictures by tens, and two pictures of the same gray levels but other
colours (a red and a green circle on other backgrounds) by 20 and more once colour counts. On the whole
of Fashion-MNIST (70,000 gray images, the default split) there are 30 pairs within 5 across splits (50
images; 10 test images with a copy in train or val), every one in its own class (the 29 of the split's
earlier draw were, looked at, the same garment); at 8 there are about 150, some of them two different items.
Every image of a split is compared with every image of the splits it must not share with: test with val
and train, val with train (one matrix product per chunk of rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .images import THUMBNAIL_SIDE

MAX_RMS = 5.0
# A thumbnail is gray where none of its colour cells is further than this from 128.
GRAY_LEVELS = 2.0
# Pairs compared at most (10-24 s on 2 cores: 200 million pairs a second for gray images, 85 million for
# colour ones); a larger split is left unchecked, and the log says so.
MAX_PAIRS = 2_000_000_000
# The split a copy is left out of, first: test is never changed (it may be an official test set).
PAIRS = (("test", "train"), ("test", "val"), ("val", "train"))
# Distances computed at once, at most (64 MB of float32 per temporary): the rows of a chunk times the
# images they are compared with.
CHUNK_CELLS = 16_000_000


def pairs_to_compare(splits: pd.Series) -> int:
    counts = splits.value_counts()
    return int(sum(counts.get(a, 0) * counts.get(b, 0) for a, b in PAIRS))


def find_near_duplicates(split: pd.DataFrame, thumbnails: np.ndarray, max_rms: float = MAX_RMS) -> list[dict]:
    """Each image of ``split`` (rows with path, class_name, split) with a near copy in a split it must not
    share with, ``thumbnails`` being its rows' (N, 384) uint8 thumbnails (finetune.images.thumbnail):
    ``{path, split, class_name, copy_of, copy_split, copy_class, rms}``, where ``path`` is in the earlier
    split (train before val before test) and ``copy_of`` in the later one (:meth:`Thumbnails.mean_squared`).
    Per pair of splits, every image of either split with a copy in the other is listed with its nearest
    copy there (so every test image with a copy in train is among the ``copy_of``, and every train image
    with one in test among the ``path``), and only with it, so that the list never outgrows the split (a
    dataset of near-blank images would otherwise pair everything with everything)."""
    found: dict[tuple[int, int], float] = {}
    compared = Thumbnails(thumbnails)
    for kept_split, other_split in PAIRS:
        kept = np.flatnonzero(split["split"].to_numpy() == kept_split)
        other = np.flatnonzero(split["split"].to_numpy() == other_split)
        if len(kept) and len(other):
            found.update(_nearest_copies(compared, kept, other, max_rms))
    ordered = sorted(found.items(), key=lambda item: (item[0][0], item[1], item[0][1]))
    return [_pair(split, other, kept, rms) for (other, kept), rms in ordered]


def _nearest_copies(compared: "Thumbnails", kept: np.ndarray, other: np.ndarray, max_rms: float) -> dict:
    """{(row in ``other``, row in ``kept``): rms} for each image of either with a copy within ``max_rms`` in
    the other, paired with its nearest copy."""
    pairs = {}
    best = np.full(len(kept), np.inf, dtype=np.float32)  # each kept image's nearest other image so far
    best_row = np.zeros(len(kept), dtype=np.int64)
    columns = np.arange(len(kept))
    chunk = max(1, CHUNK_CELLS // len(kept))
    for start in range(0, len(other), chunk):
        rows = other[start:start + chunk]
        mean_squared = compared.mean_squared(rows, kept)
        nearest = mean_squared.argmin(axis=1)
        closest = mean_squared[np.arange(len(rows)), nearest]
        hits = np.flatnonzero(closest <= max_rms ** 2)
        for row in hits:
            pairs[(int(rows[row]), int(kept[nearest[row]]))] = float(np.sqrt(closest[row]))
        if len(hits):  # a kept image's copies in this chunk are among the rows with a copy: look at those only
            nearest_hit = mean_squared[hits].argmin(axis=0)
            value = mean_squared[hits[nearest_hit], columns]
            nearer = value < best
            best[nearer], best_row[nearer] = value[nearer], rows[hits[nearest_hit[nearer]]]
    for column in np.flatnonzero(best <= max_rms ** 2):
        pairs[(int(best_row[column]), int(kept[column]))] = float(np.sqrt(best[column]))
    return pairs


class Thumbnails:
    """Thumbnails ready to compare: luma and colour centred on 128 (so that the squared norms stay exact in
    float32), their squared norms, and which images have colour (a Cb or Cr cell more than
    :data:`GRAY_LEVELS` from 128)."""

    def __init__(self, thumbnails: np.ndarray):
        values = thumbnails.astype(np.float32) - 128.0
        self.luma, self.chroma = values[:, :THUMBNAIL_SIDE ** 2], values[:, THUMBNAIL_SIDE ** 2:]
        self.luma_norms, self.chroma_norms = (np.einsum("ij,ij->i", v, v) for v in (self.luma, self.chroma))
        self.coloured = np.abs(self.chroma).max(axis=1) > GRAY_LEVELS

    def mean_squared(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Mean squared difference (the RMS squared), rows x columns: over luma and colour where both images
        have colour, over luma alone where either is gray, so that a gray copy of a colour picture is still
        its copy."""
        squared = _squared(self.luma, self.luma_norms, rows, columns)
        both = self.coloured[rows, None] & self.coloured[None, columns]
        if not both.any():
            return squared / self.luma.shape[1]
        squared += np.where(both, _squared(self.chroma, self.chroma_norms, rows, columns), 0.0)
        return squared / np.where(both, self.luma.shape[1] + self.chroma.shape[1], self.luma.shape[1])


def _squared(values: np.ndarray, norms: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Sums of squared differences between ``values``' rows, rows x columns."""
    return np.maximum(norms[rows, None] + norms[None, columns] - 2.0 * (values[rows] @ values[columns].T), 0.0)


def _pair(split: pd.DataFrame, other: int, kept: int, rms: float) -> dict:
    a, b = split.iloc[other], split.iloc[kept]
    return {"path": a["path"], "split": a["split"], "class_name": a["class_name"],
            "copy_of": b["path"], "copy_split": b["split"], "copy_class": b["class_name"], "rms": round(rms, 2)}


# The splits a model learnt from, for the images of each split it is scored on: val chose the epoch (and the run).
LEARNT_FROM = {"test": ("train", "val"), "val": ("train",)}


def copies_learnt_from(near: dict | None, split: str = "test") -> dict[str, dict] | None:
    """Each image of ``split`` with a near copy in a split the model learnt from (:data:`LEARNT_FROM`), from a
    split report's ``near_duplicates``: {path: its nearest such copy, ``{path, split, rms}``}. None where they
    were not looked for (``near`` None, from a report made before the check, or not ``checked``); empty
    where they were left out (``leave_out``: the earlier copy of each pair is out of the split)."""
    if near is None or not near.get("checked"):
        return None
    if near.get("left_out"):
        return {}
    copies: dict[str, dict] = {}
    for pair in near["pairs"]:
        if pair["copy_split"] == split and pair["split"] in LEARNT_FROM[split]:
            known = copies.get(pair["copy_of"])
            if known is None or pair["rms"] < known["rms"]:
                copies[pair["copy_of"]] = {"path": pair["path"], "split": pair["split"], "rms": pair["rms"]}
    return copies
