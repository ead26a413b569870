"""Bring-your-own images: a folder of image files, .npz / .npy arrays, MNIST-format idx files.

`open_path(path, transform)` returns `{split: ImageSource}` for a source that comes with its own splits
(a folder with `train/` and `test/` sub-folders, idx files named `train-*` and `t10k-*`, an .npz with
`x_train`/`x_test`), or `{"all": ImageSource}` for one that does not; `genjax.data.load` then holds out
a seeded share of "all" as the test split.

- **Folder**: class sub-folders become labels 0..K-1 in sorted name order (torchvision's `ImageFolder`;
  files nested deeper belong to their top class folder); a folder of images without sub-folders is
  unlabelled. Files without an image extension and hidden files are skipped. Every file is checked
  before training (PNGs fully decoded, other formats by header): an unreadable file stops the load
  naming it. Images of different sizes need `image_size`; grey and colour files mixed become RGB unless
  `channels` says otherwise. Files are decoded on demand, in the loader's workers.
- **.npz / .npy**: uint8 pixels or floats in [0, 1], (N, H, W) or (N, H, W, C). An .npz holds `images`
  and optionally `labels`, or Keras's `x_train`, `y_train`, `x_test`, `y_test`. An .npy holds images only
  (unlabelled) and is memory-mapped, so it may be larger than memory.
- **idx** (MNIST, Fashion-MNIST, KMNIST): `*-idx3-ubyte[.gz]` images with the `*-idx1-ubyte[.gz]` labels
  of the same name (`images` -> `labels`); a folder holding such files pairs them up, and the names
  `train*` / `t10k*` or `test*` give the splits. Uncompressed files are memory-mapped.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zipfile

import numpy as np

from genjax.config import ConfigError
from genjax.data.source import ArrayReader, FileReader, ImageSource, check_images, check_labels
from genjax.data.transforms import IMAGE_EXTENSIONS, Transform, image_files, probe

IDX_IMAGES = re.compile(r"idx3-ubyte(\.gz)?$")


def open_path(path: str, transform: Transform) -> dict[str, ImageSource]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path!r}: no such file or folder (expected an image folder, an .npz "
                                "or .npy file, idx files, 'digits' or 'tfds:NAME[:SPLIT]')")
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        if any(IDX_IMAGES.search(n) for n in names):
            return open_idx_folder(path, transform)
        return open_folder(path, transform)
    lower = path.lower()
    if lower.endswith(".npz"):
        return _transformed(open_npz(path), transform)
    if lower.endswith(".npy"):
        return _transformed({"all": open_npy(path)}, transform)
    if IDX_IMAGES.search(lower) or re.search(r"idx1-ubyte(\.gz)?$", lower):
        return _transformed({"all": open_idx_pair(path)}, transform)
    raise ConfigError(f"--data {path!r}: unknown file type; use a folder of images, an .npz or .npy file, "
                      "or MNIST-format '*-idx3-ubyte[.gz]' files")


def _transformed(sources: dict[str, ImageSource], transform: Transform) -> dict[str, ImageSource]:
    return {k: s.transformed(transform) for k, s in sources.items()}


# ----------------------------------------------------------------------------- folders of image files


def open_folder(path: str, transform: Transform) -> dict[str, ImageSource]:
    subdirs = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d)) and d[0] != "."]
    if "train" in subdirs and "test" in subdirs:
        classes = _classes(os.path.join(path, "train"))
        train = _scan(os.path.join(path, "train"), classes)
        test = _scan(os.path.join(path, "test"), classes)
        shape = _common_shape(train[2] + test[2], transform, path)
        return {"train": _file_source(train, classes, shape, transform),
                "test": _file_source(test, classes, shape, transform)}
    classes = _classes(path)
    scan = _scan(path, classes)
    return {"all": _file_source(scan, classes, _common_shape(scan[2], transform, path), transform)}


def _classes(root: str) -> list[str]:
    return [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d)) and d[0] != "."]


def _scan(root: str, classes: list[str]):
    """(paths, labels or None, [(path, (h, w, c))]) of every image under `root`."""
    if classes:
        loose = [n for n in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, n))
                 and n[0] != "." and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if loose:
            raise ConfigError(f"{os.path.join(root, loose[0])}: the folder {root} holds class sub-folders "
                              f"{classes[:5]} and also loose images ({len(loose)}); put every image in a class "
                              "folder, or none (then the images are unlabelled)")
        paths, labels = [], []
        for k, name in enumerate(classes):
            files = image_files(os.path.join(root, name))
            paths += files
            labels += [k] * len(files)
        labels = np.asarray(labels, np.int32)
    else:
        paths, labels = image_files(root), None
    if not paths:
        raise ConfigError(f"--data {root!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, [(p, probe(p)) for p in paths]


def _common_shape(probes, transform: Transform, root: str) -> tuple[int, int, int]:
    sizes = {}
    for p, (h, w, _) in probes:
        sizes.setdefault((h, w), p)
    if len(sizes) > 1 and not transform.image_size:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise ConfigError(f"images under {root} differ in size: {pa} is {a[0]}x{a[1]}, {pb} is {b[0]}x{b[1]}; "
                          "set image_size (e.g. --image_size 64) to resize and centre-crop them all")
    (h, w), _ = next(iter(sizes.items()))
    channels = transform.channels or (3 if any(c == 3 for _, (_, _, c) in probes) else 1)
    return transform.shape((h, w, channels))


def _file_source(scan, classes, shape, transform: Transform) -> ImageSource:
    paths, labels, _ = scan
    per_file = Transform(transform.image_size, transform.center_crop, shape[-1])  # grey/RGB made uniform
    return ImageSource(FileReader(paths, labels, per_file), len(paths), shape, len(classes))


# ----------------------------------------------------------------------------- .npz / .npy


def open_npz(path: str) -> dict[str, ImageSource]:
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
        if "images" in keys:
            return {"all": _labelled(archive["images"], archive["labels"] if "labels" in keys else None, path)}
        if {"x_train", "x_test"} <= keys:
            n = _num_classes(archive, ("y_train", "y_test"))
            return {"train": _labelled(archive["x_train"], archive.get("y_train"), f"{path}[x_train]", n),
                    "test": _labelled(archive["x_test"], archive.get("y_test"), f"{path}[x_test]", n)}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ConfigError(f"{path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    except ValueError as e:  # object arrays need pickle, which np.load refuses here
        raise ConfigError(f"{path}: {e} (save plain numeric arrays, not Python objects)") from None
    raise ConfigError(f"{path} holds arrays {sorted(keys)}; genjax expects 'images' (and optionally "
                      "'labels'), or 'x_train', 'y_train', 'x_test', 'y_test'")


def _num_classes(archive, keys) -> int | None:
    present = [archive[k] for k in keys if k in archive.files]
    if not present:
        return None
    return int(max(int(np.max(y, initial=-1)) for y in present)) + 1


def _labelled(images, labels, what: str, num_classes: int | None = None) -> ImageSource:
    images = check_images(images, what)
    if labels is not None:
        labels = check_labels(labels, len(images), None, what)
        num_classes = num_classes or int(labels.max(initial=-1)) + 1
    return ImageSource(ArrayReader(images, labels), len(images), tuple(images.shape[1:]),
                       0 if labels is None else num_classes)


def open_npy(path: str) -> ImageSource:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ConfigError(f"{path} is not a readable .npy array ({type(e).__name__}: {e})") from None
    checked = check_images(images, path)
    if checked.dtype == images.dtype and isinstance(images, np.memmap) and images.flags.c_contiguous:
        reader = ArrayReader.mapped(images.filename, images.offset, images.dtype, checked.shape, None)
    else:  # converted (e.g. float64 -> float32): held in memory
        reader = ArrayReader(np.ascontiguousarray(checked), None)
    return ImageSource(reader, len(checked), tuple(checked.shape[1:]), 0)


# ----------------------------------------------------------------------------- idx (MNIST format)


def read_idx(path: str, mmap: bool = True) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """An idx file's uint8 array: memory-mapped when uncompressed, read whole when gzipped."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
            header = raw[:4]
        else:
            with open(path, "rb") as f:
                header = f.read(4)
        if len(header) < 4 or header[:2] != b"\0\0":
            raise ConfigError(f"{path} is not an idx file (its first bytes are {header!r}, expected 00 00 08 0N)")
        if header[2] != 0x08:
            raise ConfigError(f"{path}: idx element type 0x{header[2]:02x} is not supported (only 0x08, uint8)")
        ndim = header[3]
        if path.endswith(".gz"):
            dims = tuple(int(d) for d in np.frombuffer(raw[4:4 + 4 * ndim], ">u4"))
            body = raw[4 + 4 * ndim:]
        else:
            with open(path, "rb") as f:
                f.seek(4)
                dims = tuple(int(d) for d in np.frombuffer(f.read(4 * ndim), ">u4"))
            body = None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ConfigError(f"{path} could not be read as an idx file ({type(e).__name__}: {e})") from None
    want = int(np.prod(dims, dtype=np.int64))
    offset = 4 + 4 * ndim
    have = len(body) if body is not None else os.path.getsize(path) - offset
    if len(dims) != ndim or have != want:
        raise ConfigError(f"{path}: the idx header promises {'x'.join(map(str, dims))} = {want:,} bytes, the file "
                          f"holds {have:,}; it is truncated or damaged")
    if body is not None:
        return np.frombuffer(body, np.uint8).reshape(dims), None
    return np.memmap(path, np.uint8, "r", offset=offset, shape=dims), (offset,)


def open_idx_pair(path: str) -> ImageSource:
    """idx images and their labels, given either file of the pair."""
    if re.search(r"idx1-ubyte(\.gz)?$", path):
        candidates = [_swap(path, "labels", "images"), _swap(path, "labels", "imgs")]
        image_path = next((p for p in candidates if os.path.exists(p)), None)
        if image_path is None:
            raise ConfigError(f"{path} holds idx labels; its images file {candidates[0]} does not exist")
        path = image_path
    images, mapped = read_idx(path)
    if images.ndim != 3:
        raise ConfigError(f"{path}: idx images must be 3-d (N, H, W), found shape {images.shape}")
    label_path = next((p for p in (_swap(path, "images", "labels"), _swap(path, "imgs", "labels"))
                       if p != path and os.path.exists(p)), None)
    labels = None
    if label_path is not None:
        labels, _ = read_idx(label_path)
        labels = check_labels(np.asarray(labels), len(images), None, label_path)
    if mapped:
        reader = ArrayReader.mapped(path, mapped[0], np.uint8, (*images.shape, 1), labels)
    else:
        reader = ArrayReader(images[..., None], labels)
    num_classes = 0 if labels is None else int(labels.max(initial=-1)) + 1
    return ImageSource(reader, len(images), (*images.shape[1:], 1), num_classes)


def _swap(path: str, old: str, new: str) -> str:
    folder, name = os.path.split(path)
    name = name.replace(old, new).replace("idx3" if new == "labels" else "idx1",
                                          "idx1" if new == "labels" else "idx3")
    return os.path.join(folder, name)


def open_idx_folder(path: str, transform: Transform) -> dict[str, ImageSource]:
    files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if IDX_IMAGES.search(n)]
    by_split: dict[str, str] = {}
    for f in files:
        name = os.path.basename(f).lower()
        split = "train" if name.startswith("train") else "test" if name.startswith(("t10k", "test")) else "all"
        if split in by_split:
            raise ConfigError(f"{path} holds several idx image files for split {split!r} ({by_split[split]}, {f}); "
                              "keep one per split (train-*, t10k-*), or point --data at one file")
        by_split[split] = f
    if "all" in by_split and len(by_split) > 1:
        raise ConfigError(f"{path} mixes idx files named by split (train-*, t10k-*) with {by_split['all']}; "
                          "keep one kind")
    sources = {split: open_idx_pair(f) for split, f in by_split.items()}
    if set(sources) == {"train"}:  # train-* alone: nothing held out by the files, so the seeded rule applies
        sources = {"all": sources["train"]}
    if set(sources) == {"test"}:
        sources = {"all": sources["test"]}
    classes = max(s.num_classes for s in sources.values())
    sources = {k: dataclasses.replace(s, num_classes=classes if s.num_classes else 0) for k, s in sources.items()}
    return _transformed(sources, transform)
