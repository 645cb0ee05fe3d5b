"""Near duplicates across splits: the same picture in two splits under other bytes (saved again as JPEG,
resized, converted to PNG), so that the model would be scored on, or chosen by, an image it trained on.
Identical files are found by their sha256 before the split (finetune.data.find_duplicates); this finds
the rest after it, on the images' 16x16 thumbnails (finetune.images.thumbnail).

Two images are near duplicates where their thumbnails differ by at most :data:`MAX_RMS` gray levels
(root mean square over the 256 cells). A copy saved again as a JPEG at quality 70 differs by about 1; at
half the size, as PNG, by up to 3.5 (pictures of sharp-edged shapes: the check decodes a JPEG at 1/8
scale, whose 8x8 blocks straddle the thumbnail's cells); two different pictures by tens. On the whole of
Fashion-MNIST (70,000 images, the default split) 27 images have a copy within 5 in another split, every
one in its own class and, looked at, the same garment; at 8 there are about 150, some of them two
different items.
Every image of a split is compared with every image of the splits it must not share with: test with val
and train, val with train (one matrix product per chunk of rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_RMS = 5.0
# Pairs compared at most (about 13 s on 2 cores, at 150 million pairs a second); a larger split is left
# unchecked, and the log says so.
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
    share with, ``thumbnails`` being its rows' (N, 256) uint8 thumbnails: ``{path, split, class_name,
    copy_of, copy_split, copy_class, rms}``, where ``path`` is in the earlier split (train before val
    before test) and ``copy_of`` is its nearest copy in the later one. An image is listed once per split
    pair, with its nearest copy only, so the list never outgrows the split (a dataset of near-blank
    images would otherwise pair everything with everything)."""
    values = thumbnails.astype(np.float32) - 128.0  # centred: the squared norms stay exact in float32
    norms = np.einsum("ij,ij->i", values, values)
    found = []
    for kept_split, other_split in PAIRS:
        kept = np.flatnonzero(split["split"].to_numpy() == kept_split)
        other = np.flatnonzero(split["split"].to_numpy() == other_split)
        if not len(kept) or not len(other):
            continue
        chunk = max(1, CHUNK_CELLS // len(kept))
        for start in range(0, len(other), chunk):
            rows = other[start:start + chunk]
            squared = norms[rows, None] + norms[None, kept] - 2.0 * (values[rows] @ values[kept].T)
            rms = np.sqrt(np.maximum(squared, 0.0) / values.shape[1])
            nearest = rms.argmin(axis=1)
            for row in np.flatnonzero(rms[np.arange(len(rows)), nearest] <= max_rms):
                found.append((rows[row], kept[nearest[row]], float(rms[row, nearest[row]])))
    return [_pair(split, other, kept, rms) for other, kept, rms in sorted(found, key=lambda f: (f[0], f[2]))]


def _pair(split: pd.DataFrame, other: int, kept: int, rms: float) -> dict:
    a, b = split.iloc[other], split.iloc[kept]
    return {"path": a["path"], "split": a["split"], "class_name": a["class_name"],
            "copy_of": b["path"], "copy_split": b["split"], "copy_class": b["class_name"], "rms": round(rms, 2)}
