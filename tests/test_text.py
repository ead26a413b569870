"""Text data: corpora, tokenizers (round trips, save/load), token files, seeded batches, tfds text."""

import os
import subprocess
import sys

import numpy as np
import pytest

from genjax.config import ConfigError
from genjax.data import text as T

SAMPLE = (
    "Plain ASCII, then accents: café, naïve, Zürich; Greek: λόγος; "
    "CJK: 漢字かな; emoji: 🙂🚀\n"
    "\ttabs,   runs of   spaces,\r\nWindows line ends, trailing space \n<|endoftext|> literally.\n"
)


@pytest.fixture(scope="module")
def corpus():
    return T.default_corpus()


def test_default_corpus(corpus):
    assert len(corpus) > 100_000
    assert "assert" in corpus and corpus == T.load_corpus("python-docs")


def test_char_tokenizer_round_trip_and_save(tmp_path):
    tok = T.train_tokenizer(SAMPLE, "char")
    ids = tok.encode(SAMPLE)
    assert ids.dtype == np.int32 and ids.size == len(SAMPLE) and tok.vocab_size == len(set(SAMPLE))
    assert tok.decode(ids) == SAMPLE
    T.save_tokenizer(tok, str(tmp_path))
    loaded = T.load_tokenizer(str(tmp_path))
    np.testing.assert_array_equal(loaded.encode(SAMPLE), ids)
    assert loaded.decode(ids) == SAMPLE
    with pytest.raises(ConfigError, match="outside the tokenizer's alphabet"):
        tok.encode("Ω is new")


def test_bpe_round_trips_any_text(tmp_path, corpus):
    tok = T.train_tokenizer(corpus[:60_000], "bpe", vocab_size=400)
    assert tok.vocab_size == 400 and tok.encode(T.EOT).tolist() == [0]
    for text in (SAMPLE, corpus[200_000:203_000], "", " ", "\n\n", "x" * 50, "\x00\x7f\u200b\U0010ffff"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    ids = tok.encode(corpus[:5_000])
    assert ids.size < 5_000 / 2  # merges learned from the corpus compress it
    T.save_tokenizer(tok, str(tmp_path))
    loaded = T.load_tokenizer(str(tmp_path / "tokenizer.json"))
    np.testing.assert_array_equal(loaded.encode(SAMPLE), tok.encode(SAMPLE))
    assert loaded.decode(tok.encode(SAMPLE)) == SAMPLE
    with pytest.raises(ConfigError, match="too small"):
        T.train_tokenizer("abc", "bpe", vocab_size=100)


def test_load_text_files_folders_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("zweite Datei ü\n", encoding="utf-8")
    (tmp_path / ".hidden").write_bytes(b"\xff\xfe ignored")
    assert T.load_text(str(tmp_path / "a.txt")) == "first file"
    assert T.load_text(str(tmp_path)) == "first file\nzweite Datei ü\n"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.load_text(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        T.load_text(str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.txt is not UTF-8 text \(invalid byte 0xe9 at offset 3\)"):
        T.load_text(str(tmp_path / "latin1.txt"))
    with pytest.raises(ConfigError, match="latin1.txt is not UTF-8"):
        T.load_text(str(tmp_path))
    (tmp_path / "none").mkdir()
    with pytest.raises(ConfigError, match="holds no files"):
        T.load_text(str(tmp_path / "none"))


def test_prepare_memmaps_and_reuses(tmp_path, corpus):
    text = corpus[:20_000]
    data = T.prepare(text, str(tmp_path), "char", val_fraction=0.1)
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert len(data.train) == 18_000 and len(data.val) == 2_000 and data.chars_per_token == 1.0
    assert data.tokenizer.decode(data.train) + data.tokenizer.decode(data.val) == text
    again = T.prepare(text, str(tmp_path), "char", val_fraction=0.1)
    np.testing.assert_array_equal(again.val, data.val)
    with pytest.raises(ConfigError, match="other text or tokenizer settings"):
        T.prepare(text + "!", str(tmp_path), "char", val_fraction=0.1)
    bpe = T.prepare(text, str(tmp_path / "bpe"), "bpe", vocab_size=300, val_fraction=0.1)
    assert bpe.chars_per_token > 1.2
    assert bpe.tokenizer.decode(bpe.val) == text[18_000:]


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a = T.block_batch(tokens, 7, 4, 16, seed=3)
    assert a.shape == (4, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(np.diff(a, axis=1), 1)  # contiguous blocks
    np.testing.assert_array_equal(a, T.block_batch(tokens, 7, 4, 16, seed=3))
    assert not np.array_equal(a, T.block_batch(tokens, 8, 4, 16, seed=3))
    assert not np.array_equal(a, T.block_batch(tokens, 7, 4, 16, seed=4))
    stream = T.text_batches(tokens, 4, 16, seed=3)
    first = [next(stream)["tokens"] for _ in range(10)]
    resumed = T.text_batches(tokens, 4, 16, seed=3, start_step=7)
    np.testing.assert_array_equal(next(resumed)["tokens"], first[7])
    assert T.block_batch(np.arange(17), 0, 2, 16, 0).tolist() == [list(range(17))] * 2  # the only block
    with pytest.raises(ConfigError, match="shorter than one block"):
        T.block_batch(np.arange(16), 0, 2, 16, 0)


def test_eval_blocks_cover_each_target_once():
    tokens = np.arange(100)
    blocks = T.eval_blocks(tokens, 16)
    assert blocks.shape == (6, 17)
    np.testing.assert_array_equal(blocks[:, 1:].reshape(-1), np.arange(1, 97))
    assert T.eval_blocks(tokens, 16, max_blocks=2).shape == (2, 17)


def test_tfds_text_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2):
        text = T.tfds_text("tiny_shakespeare", "train")
        assert isinstance(text, str) and text
        assert T.load_corpus("tfds:tiny_shakespeare:validation")


def test_importing_genjax_text_does_not_import_tfds():
    code = ("import sys, genjax, genjax.data.text, genjax.models.transformer; "
            "assert 'tensorflow_datasets' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
