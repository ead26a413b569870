"""Text data for the transformer family: corpora, tokenizers, memory-mapped token files, seeded batches.

    text = load_text(path)                         # a UTF-8 file or a folder of them; or default_corpus()
    data = prepare(text, workdir, tokenizer='char')  # tokenizer.json + train/val .npy in the workdir
    for batch in text_batches(data.train, batch_size, seq_len, seed, start_step): ...

Tokenizers are character-level (the corpus's own alphabet) or byte-level BPE trained locally with the
`tokenizers` package; both round-trip their text exactly (BPE: any text). The batch of step `s` is a pure
function of `(seed, s)`: `batch_size` random contiguous blocks of `seq_len + 1` tokens drawn by a numpy
generator seeded with `(seed, s)`, so a resumed run reads exactly the batches of an uninterrupted one.
tfds text datasets (`tiny_shakespeare`, `lm1b`) come through `tfds.data_source`, imported lazily.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Iterator, Literal

import numpy as np

from genjax.config import ConfigError
from genjax.data.batching import host_rows

TOKENIZER_FILE = "tokenizer.json"
EOT = "<|endoftext|>"


# ----------------------------------------------------------------------------- corpora


def default_corpus() -> str:
    """Python's own English documentation (pydoc_data.topics, ~465k characters), shipped with Python."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def _read_utf8(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}); convert it "
            "first (e.g. iconv -f latin1 -t utf-8) or leave it out of the data folder"
        ) from None


def load_text(path: str) -> str:
    """The text of a UTF-8 file, or of every non-hidden file under a folder (sorted, newline-joined)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"text data {path!r} does not exist; pass a UTF-8 text file or a folder of them")
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        if not files:
            raise ConfigError(f"text data folder {path!r} holds no files")
        parts = [_read_utf8(f) for f in files]
        text = "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)
    else:
        text = _read_utf8(path)
    if not text:
        raise ConfigError(f"text data {path!r} is empty")
    return text


def tfds_text(name: str = "tiny_shakespeare", split: str = "train", data_dir: str | None = None,
              field: str = "text", max_examples: int | None = None) -> str:
    """The examples of a tfds text dataset split, newline-joined (through `tfds.data_source`: no
    TensorFlow). tiny_shakespeare holds one example per split; for lm1b set `max_examples`."""
    from genjax.data import tfds_data  # lazy: `import genjax` must not import tensorflow_datasets

    source = tfds_data.data_source(name, split, data_dir)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    parts = []
    for lo in range(0, n, 4096):
        keys = list(range(lo, min(n, lo + 4096)))
        try:
            records = source.__getitems__(keys)
        except TypeError:  # tfds.testing.mock_data (4.9.10) breaks batched reads; read one by one
            records = [source[k] for k in keys]
        for record in records:
            value = record[field]
            parts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    text = "\n".join(parts)
    if not text:
        raise ConfigError(f"tfds {name}[{split}] gave no text in field {field!r}")
    return text


def load_corpus(data: str, data_dir: str | None = None) -> str:
    """'python-docs' (default corpus), 'tfds:NAME[:SPLIT]', or a path to a UTF-8 file or folder."""
    if data in ("", "python-docs"):
        return default_corpus()
    if data.startswith("tfds:"):
        _, name, *rest = data.split(":")
        return tfds_text(name, rest[0] if rest else "train", data_dir)
    return load_text(data)


# ----------------------------------------------------------------------------- tokenizers


class CharTokenizer:
    """One token per character of the training text's alphabet (sorted by code point). Id 0 (the smallest
    character, usually newline) starts unprompted samples."""

    kind = "char"
    bos_id = 0
    eos_id = None

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self._codes = np.asarray([ord(c) for c in self.chars], np.int64)
        if len(self.chars) != len(set(self.chars)) or np.any(np.diff(self._codes) <= 0):
            raise ValueError("CharTokenizer needs distinct characters sorted by code point")

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, len(self._codes) - 1)
        bad = self._codes[ids] != codes
        if bad.any():
            unknown = sorted({chr(c) for c in codes[bad]})[:10]
            raise ConfigError(
                f"text has {int(bad.sum())} character(s) outside the tokenizer's alphabet, e.g. {unknown}; "
                "use tokenizer='bpe' (byte-level, covers any text) or train on text containing them"
            )
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) from the `tokenizers` package: covers any text, round-trips exactly.
    Id 0 is `<|endoftext|>`: it starts unprompted samples and stops generation."""

    kind = "bpe"
    bos_id = 0
    eos_id = 0

    def __init__(self, tokenizer):
        self.tok = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 512, chunk: int = 1 << 16) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise ConfigError(f"data.vocab_size={vocab_size} is too small for byte-level BPE: use >= "
                              f"{len(alphabet) + 1} (256 bytes + end-of-text)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, np.int32)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def to_json(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self.tok.to_str())}


class PretrainedTokenizer:
    """A Hugging Face checkpoint's tokenizer (its tokenizer.json, through `tokenizers`; genjax.models.hf).
    encode adds the tokenizer's own special tokens as `transformers` does (e.g. Llama's <s>); decode keeps
    every token. bos_id starts unprompted samples, eos_id (None: none) stops generation."""

    kind = "hf"

    def __init__(self, tokenizer, bos_id: int | None = None, eos_id: int | None = None):
        tokenizer.no_truncation()  # a checkpoint's padding/truncation settings would change encode's ids
        tokenizer.no_padding()
        self.tok = tokenizer
        self.eos_id = eos_id
        self.bos_id = bos_id if bos_id is not None else (eos_id if eos_id is not None else 0)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, np.int32)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def to_json(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self.tok.to_str()), "bos_id": self.bos_id,
                "eos_id": self.eos_id}


Tokenizer = CharTokenizer | BPETokenizer | PretrainedTokenizer


def train_tokenizer(text: str, kind: Literal["char", "bpe"] = "char", vocab_size: int = 512) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise ConfigError(f"data.tokenizer={kind!r} is not one of ['char', 'bpe']")


def save_tokenizer(tok: Tokenizer, workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, TOKENIZER_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"  # processes sharing a workdir each write whole files, then rename
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tok.to_json(), f, ensure_ascii=False)
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str) -> Tokenizer:
    """From a workdir (its tokenizer.json) or a tokenizer.json path."""
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: train a text experiment in this workdir first")
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("kind") == "char":
        return CharTokenizer(record["chars"])
    if record.get("kind") == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(record["tokenizer"])))
    if record.get("kind") == "hf":
        from tokenizers import Tokenizer as HFTokenizerModel

        return PretrainedTokenizer(HFTokenizerModel.from_str(json.dumps(record["tokenizer"])), record["bos_id"],
                                   record["eos_id"])
    raise ConfigError(f"{path}: unknown tokenizer kind {record.get('kind')!r}")


def encode_prompt(tok: Tokenizer, prompt: str) -> tuple[int, ...]:
    """A sample prompt's token ids (the tokenizer's start token for an empty prompt); a character the
    tokenizer cannot encode is a one-line ConfigError naming it."""
    if not prompt:
        return (tok.bos_id,)
    try:
        ids = tok.encode(prompt)
    except ConfigError as e:
        raise ConfigError(f"prompt {prompt[:40]!r}: {str(e).split(';')[0]}; this run's tokenizer "
                          "knows only its training text's characters") from None
    return tuple(int(i) for i in ids) or (tok.bos_id,)


# ----------------------------------------------------------------------------- token files


@dataclasses.dataclass(frozen=True)
class TextData:
    train: np.ndarray  # memory-mapped token ids
    val: np.ndarray
    tokenizer: Tokenizer
    chars_per_token: float  # of the validation split: converts nats per token to bits per character


def prepare(text: str, workdir: str, tokenizer: Literal["char", "bpe"] = "char", vocab_size: int = 512,
            val_fraction: float = 0.1) -> TextData:
    """Tokenizes `text` once into workdir/data/{train,val}.npy (memory-mapped) with a tokenizer trained on
    the whole text and saved as workdir/tokenizer.json. The last `val_fraction` of the text (cut at a
    character) is validation. A workdir prepared from the same text and settings is reused as is."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction} must be in (0, 1)")
    settings = {"tokenizer": tokenizer, "vocab_size": vocab_size if tokenizer == "bpe" else 0,
                "val_fraction": val_fraction,
                "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "version": 1}
    folder = os.path.join(workdir, "data")
    meta_path = os.path.join(folder, "meta.json")
    if os.path.exists(meta_path) and os.path.exists(os.path.join(workdir, TOKENIZER_FILE)):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("settings") == settings:
            return _open(workdir, meta)
        raise ConfigError(
            f"{workdir} holds tokens of other text or tokenizer settings ({meta.get('settings')}); "
            "use a fresh --workdir"
        )
    cut = int(len(text) * (1.0 - val_fraction))
    train_text, val_text = text[:cut], text[cut:]
    if len(val_text) < 2 or len(train_text) < 2:
        raise ConfigError(
            f"text of {len(text)} characters is too short to split with val_fraction={val_fraction}")
    tok = train_tokenizer(text, tokenizer, vocab_size)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    os.makedirs(folder, exist_ok=True)
    counts = {}
    for name, part in (("train", train_text), ("val", val_text)):
        ids = tok.encode(part).astype(dtype)
        counts[name] = int(ids.size)
        tmp = os.path.join(folder, f"{name}.{os.getpid()}.tmp.npy")  # hosts sharing a disk write alike
        np.save(tmp, ids)
        os.replace(tmp, os.path.join(folder, f"{name}.npy"))
    save_tokenizer(tok, workdir)
    meta = {"settings": settings, "tokens": counts, "vocab_size": tok.vocab_size,
            "chars": {"train": len(train_text), "val": len(val_text)}}
    tmp = f"{meta_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, meta_path)
    return _open(workdir, meta)


def remove_prepared(workdir: str) -> None:
    """Removes what `prepare` wrote (data/, tokenizer.json) and the workdir itself if that leaves it empty."""
    shutil.rmtree(os.path.join(workdir, "data"), ignore_errors=True)
    if os.path.exists(os.path.join(workdir, TOKENIZER_FILE)):
        os.remove(os.path.join(workdir, TOKENIZER_FILE))
    if os.path.isdir(workdir) and not os.listdir(workdir):
        os.rmdir(workdir)


def _open(workdir: str, meta: dict) -> TextData:
    folder = os.path.join(workdir, "data")
    train = np.load(os.path.join(folder, "train.npy"), mmap_mode="r")
    val = np.load(os.path.join(folder, "val.npy"), mmap_mode="r")
    return TextData(train, val, load_tokenizer(workdir), meta["chars"]["val"] / max(meta["tokens"]["val"], 1))


# ----------------------------------------------------------------------------- batches


def _check_length(tokens: np.ndarray, seq_len: int) -> None:
    if len(tokens) < seq_len + 1:
        raise ConfigError(
            f"a split of {len(tokens)} tokens is shorter than one block of seq_len + 1 = {seq_len + 1}; "
            "use more text, a smaller model.block_size or a smaller data.val_fraction"
        )


def block_batch(tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    """The global batch of `step`: int32 (batch_size, seq_len + 1) contiguous blocks at offsets drawn by
    numpy's generator seeded with (seed, step)."""
    _check_length(tokens, seq_len)
    starts = np.random.default_rng([seed, step]).integers(0, len(tokens) - seq_len, size=batch_size)
    return np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], np.int32)


def text_batches(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 start_step: int = 0) -> Iterator[dict]:
    """Endless host-local batches {'tokens': int32 (B / hosts, seq_len + 1)} from step `start_step` on."""
    rows = host_rows(batch_size)
    step = start_step
    while True:
        yield {"tokens": block_batch(tokens, step, batch_size, seq_len, seed)[rows]}
        step += 1


def eval_blocks(tokens: np.ndarray, seq_len: int, max_blocks: int | None = None) -> np.ndarray:
    """Non-overlapping (seq_len + 1)-token blocks covering the split in order (sharing one boundary token
    between neighbours, so every token after the first is a target exactly once): int32 (N, seq_len + 1)."""
    _check_length(tokens, seq_len)
    n = (len(tokens) - 1) // seq_len
    if max_blocks is not None:
        n = min(n, max_blocks)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return np.asarray(tokens[idx], np.int32)
