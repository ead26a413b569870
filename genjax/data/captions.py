"""Captions for labelled digit images: the digit's name plus attributes measured from the image itself,
so a prompt carries more than the class. Pure numpy functions.

    values = captions.measure(images)                         # {'thickness', 'slant', 'width'} (N,) each
    edges = captions.bucket_edges(values, labels, 10)         # per-class tertiles of the training set
    words = captions.buckets(values, labels, edges)           # 0, 1, 2 per attribute and image
    texts = captions.captions(labels, words, seed, step, indices)   # e.g. 'a thick, slanted seven'

Attributes (images (N, H, W, 1) in [0, 1], ink bright):
- thickness: the mean ink intensity (ink mass / H W). At 8x8 a skeleton length is not measurable, and
  within one digit class more ink means thicker strokes.
- slant: the second-moment shear -cov(row, col) / var(row) of the ink: how far the ink's column moves per
  row going up (> 0 leans right, like italics).
- width: 2 x the ink-weighted standard deviation of the column, a continuous bounding box. The digits'
  ink always spans the full height (scikit-learn normalized it), so the box's width is the size that
  varies, and a moment avoids the ties of an integer box.

Buckets are per-class tertiles of the training images, so "a thick one" means thicker than most ones
(an absolute scale would make "thick" mean "eight" and "thin" mean "one", carrying nothing beyond the
class). Each example's phrasing is chosen per training step by a seeded hash of (seed, step, index), so
the model sees every example under every phrasing: a bare name, a numeral, one, two or three attributes.
"""

from __future__ import annotations

import re

import numpy as np

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTES = {  # words of buckets 0, 1, 2 (low to high value)
    "thickness": ("thin", "medium", "thick"),
    "slant": ("backslanted", "upright", "slanted"),
    "width": ("narrow", "average", "wide"),
}
# {article} agrees with the word after it ("an eight", "an upright seven")
PHRASINGS = (
    "{name}",
    "{digit}",
    "{a} {thickness} {name}",
    "{a} {slant} {name}",
    "{a} {width} {name}",
    "{digit}, {thickness} stroke",
    "{a} {thickness}, {slant} {name}",
    "{digit}, {width}, {slant}",
    "{a} {width}, {thickness}, {slant} {name}",
)
SINGLE = {"thickness": 2, "slant": 3, "width": 4}  # the phrasing that names one attribute only


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """The attributes (float64 (N,) each) of images (N, H, W[, 1]) in [0, 1]."""
    x = np.asarray(images, np.float64).reshape(len(images), *np.shape(images)[1:3])
    _, h, w = x.shape
    mass = x.sum(axis=(1, 2)) + 1e-8
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    mean_r = (x * rows).sum(axis=(1, 2)) / mass
    mean_c = (x * cols).sum(axis=(1, 2)) / mass
    dr, dc = rows - mean_r[:, None, None], cols - mean_c[:, None, None]
    var_r = (x * dr * dr).sum(axis=(1, 2)) / mass + 1e-8
    var_c = (x * dc * dc).sum(axis=(1, 2)) / mass
    cov = (x * dr * dc).sum(axis=(1, 2)) / mass
    return {"thickness": mass / (h * w), "slant": -cov / var_r, "width": 2.0 * np.sqrt(var_c)}


def bucket_edges(values: dict[str, np.ndarray], labels: np.ndarray,
                 num_classes: int) -> dict[str, np.ndarray]:
    """Per attribute, (num_classes, 2) float64: each class's 1/3 and 2/3 quantiles of the values."""
    labels = np.asarray(labels)
    return {k: np.stack([np.quantile(v[labels == c], (1 / 3, 2 / 3)) if np.any(labels == c)
                         else np.zeros(2) for c in range(num_classes)]) for k, v in values.items()}


def buckets(values: dict[str, np.ndarray], labels: np.ndarray,
            edges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per attribute, int64 (N,) in {0, 1, 2}: the bucket of each value among its class's edges."""
    labels = np.asarray(labels)
    return {k: (v > edges[k][labels, 0]).astype(np.int64) + (v > edges[k][labels, 1])
            for k, v in values.items()}


def caption(label: int, words: dict[str, int], phrasing: int) -> str:
    """One caption: `words` the bucket of each attribute, `phrasing` an index into PHRASINGS."""
    fields = {k: ATTRIBUTES[k][int(b)] for k, b in words.items()}
    fields.update(name=NAMES[int(label)], digit=str(int(label)))
    template = PHRASINGS[phrasing]
    first = template.partition("{a} ")[2].partition("}")[0].lstrip("{")  # the field after the article
    if first:
        fields["a"] = "an" if fields[first][0] in "aeiou" else "a"
    return template.format(**fields)


def choose(seed: int, step: int, indices: np.ndarray) -> np.ndarray:
    """The phrasing (int64 (N,) in [0, len(PHRASINGS))) of examples `indices` at `step`: a splitmix64 hash
    of (seed, step, index), the same on every machine and independent of the batch's order."""
    with np.errstate(over="ignore"):
        z = (np.asarray(indices, np.uint64) + np.uint64(step) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(len(PHRASINGS))).astype(np.int64)


def captions(labels: np.ndarray, words: dict[str, np.ndarray], seed: int, step: int,
             indices: np.ndarray) -> list[str]:
    """The captions of examples `indices` (their `labels` and bucket `words` rows) at training `step`."""
    chosen = choose(seed, step, indices)
    return [caption(y, {k: v[i] for k, v in words.items()}, int(p))
            for i, (y, p) in enumerate(zip(labels, chosen))]


def all_phrasings(labels: np.ndarray, words: dict[str, np.ndarray]) -> list[list[str]]:
    """Every example's caption in every phrasing: [phrasing][example] (tokenized once, picked per step)."""
    return [[caption(y, {k: v[i] for k, v in words.items()}, p) for i, y in enumerate(labels)]
            for p in range(len(PHRASINGS))]


def vocabulary() -> tuple[tuple[str, ...], int]:
    """(every word a caption can contain, sorted, ',' one of them; the longest caption in words), from
    all captions."""
    import itertools

    texts = [caption(y, dict(zip(ATTRIBUTES, combo)), p) for y in range(len(NAMES))
             for combo in itertools.product(range(3), repeat=len(ATTRIBUTES)) for p in range(len(PHRASINGS))]
    words = [split_words(t) for t in texts]
    return tuple(sorted(set(w for ws in words for w in ws))), max(map(len, words))


def split_words(text: str) -> list[str]:
    """Lowercased words of `text`: runs of letters and digits, and every other visible character alone
    ('7, thin' -> ['7', ',', 'thin'], 'seven!' -> ['seven', '!'])."""
    return re.findall(r"[a-z0-9]+|\S", text.lower())
