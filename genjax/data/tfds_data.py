"""Opening a tfds dataset split without TensorFlow, with one clear error per way it can fail.

`tfds.data_source` reads a prepared dataset (array_record files) by index and needs no TensorFlow. Preparing
it (download + conversion) is another matter: it needs the internet, and most tfds builders read their
downloads with `tf.io.gfile`, i.e. TensorFlow. Each failure becomes a one-line `ConfigError` naming the
dataset, the folder and the fix, instead of a long traceback from inside tfds or a minutes-long retry loop.
"""

from __future__ import annotations

import difflib
import socket
import threading

from genjax.config import ConfigError

# Any host tfds downloads from would do: if this name cannot be resolved, nothing can be downloaded.
_PROBE_HOST = "storage.googleapis.com"


class MissingSplit(ConfigError):
    """The dataset is prepared but has no such split."""


def import_tfds():
    try:
        import tensorflow_datasets as tfds  # lazy: `import genjax` must not import it (GPU images lack it)
    except ImportError as e:
        raise ConfigError("tfds datasets need tensorflow-datasets: pip install tensorflow-datasets "
                          "(or use --data digits, a folder of images, an .npz file or idx files)") from e
    return tfds


def online(timeout: float = 3.0) -> bool:
    """Whether this machine resolves a download host (in a thread: a firewalled resolver can hang)."""
    result = []

    def probe():
        try:
            socket.getaddrinfo(_PROBE_HOST, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def builder(name: str, data_dir: str | None):
    tfds = import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        try:  # tfds.list_builders() itself needs TensorFlow for its community part
            known = tfds.core.registered.list_imported_builders()
        except Exception:
            known = []
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"tfds has no dataset {name!r}; {hint}(the catalog: "
                          "https://www.tensorflow.org/datasets/catalog)") from None


def prepare(b, name: str) -> None:
    """Downloads and converts dataset `name` into array_record files, or says clearly why it cannot."""
    where = str(b.data_dir)
    if not online():
        raise ConfigError(
            f"tfds dataset {name!r} is not prepared in {where} and this machine cannot reach the internet to "
            f"download it: prepare it where there is internet (python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{name}').download_and_prepare(file_format='array_record')\"; most builders need "
            f"tensorflow-cpu for this step) and copy the result to {where} (or point --data_dir at its parent), "
            "or give your own files: --data PATH (an image folder, .npz/.npy, idx files)")
    try:
        b.download_and_prepare(file_format="array_record")
    except ModuleNotFoundError as e:
        fix = ("pip install tensorflow-cpu for this one-time step (reading the prepared dataset afterwards "
               "does not need TensorFlow)" if e.name == "tensorflow" else f"pip install {e.name}")
        raise ConfigError(f"preparing tfds dataset {name!r} needs the module {e.name!r} (tfds imports it "
                          f"inside its builder): {fix}") from None
    except OSError as e:  # requests' ConnectionError is an OSError
        raise ConfigError(f"downloading tfds dataset {name!r} into {where} failed ({type(e).__name__}: "
                          f"{str(e)[:200]}); retry, or prepare it elsewhere and copy the folder here") from None


def data_source(name: str, split: str, data_dir: str | None = None):
    """`tfds.data_source(name, split)` (random access), preparing the dataset first if needed and possible."""
    tfds = import_tfds()
    b = builder(name, data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception:  # not prepared (tfds raises KeyError/AssertionError here), or a bad split name
        if b.is_prepared():
            return _open_prepared(tfds, b, name, split, data_dir)
    prepare(b, name)
    return _open_prepared(tfds, b, name, split, data_dir)


def _open_prepared(tfds, b, name: str, split: str, data_dir: str | None):
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (KeyError, ValueError) as e:
        raise MissingSplit(f"tfds dataset {name!r} has no split {split!r} ({e}); its splits are "
                           f"{sorted(b.info.splits)}") from None
