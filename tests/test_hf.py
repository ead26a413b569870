"""genjax.models.hf: Hugging Face GPT-2 and Llama checkpoints in and out, checked against transformers.

Small random-init transformers models (2 layers; Llama with grouped-query attention, tied and untied)
are saved with a byte-level BPE tokenizer trained here, imported, and must give transformers' logits
(float32, 1e-4) and its greedy generation token for token; exports must load in transformers with the
same logits, genjax-made models (char tokenizer) included. Bad input is a one-line ConfigError.
"""

import dataclasses
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from genjax import sample as sample_cli  # noqa: E402
from genjax.config import ConfigError  # noqa: E402
from genjax.data import text as text_data  # noqa: E402
from genjax.models import hf  # noqa: E402
from genjax.models import transformer as T  # noqa: E402

VOCAB = 310  # the models' embedding rows: more than the tokenizer's 300 tokens, not a multiple of 64
PROMPT_LEN, NEW = 8, 64
HF_MODELS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=5000.0,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    "llama-tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=0)),
}


@pytest.fixture(scope="module", autouse=True)
def _without_torchvision():
    """transformers' model modules import torchvision when it is installed, and a torchvision wheel built
    for another torch (a CUDA one beside CPU torch, as on the dev VM) fails that import. The text models
    need none of it: hidden while this module runs (None in sys.modules reads as not installed; transformers
    caches the answer it gave at import)."""
    from transformers.utils import import_utils

    def forget():
        for name in ("is_torchvision_available", "is_torchvision_v2_available"):
            getattr(getattr(import_utils, name, None), "cache_clear", lambda: None)()

    saved = sys.modules.get("torchvision")
    sys.modules["torchvision"] = None
    forget()
    yield
    if saved is None:
        del sys.modules["torchvision"]
    else:
        sys.modules["torchvision"] = saved
    forget()


@pytest.fixture(scope="module")
def bpe():
    return text_data.BPETokenizer.train(text_data.default_corpus()[:30_000], vocab_size=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, bpe):
    """name -> (checkpoint directory, the transformers model), each saved with the BPE tokenizer."""
    out = {}
    for i, (name, make) in enumerate(HF_MODELS.items()):
        torch.manual_seed(i)
        model = make().eval()
        path = str(tmp_path_factory.mktemp(name))
        model.save_pretrained(path)
        bpe.tok.save(os.path.join(path, "tokenizer.json"))
        out[name] = (path, model)
    return out


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def prompts(seed: int, shape=(3, PROMPT_LEN)) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 300, shape).astype(np.int32)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_import_matches_transformers_logits_and_greedy_generation(name, saved):
    path, model = saved[name]
    params, cfg, tok = hf.load_pretrained(path)
    assert cfg.vocab_size == VOCAB and cfg.n_layer == 2 and tok.vocab_size == 300
    if name.startswith("llama"):
        assert cfg.kv_heads == 2 and cfg.pos == "rope" and cfg.tie_embeddings == (name == "llama-tied")
        assert cfg.rope_base == (5000.0 if name == "llama" else 10000.0)
        cache = T.init_cache(cfg, 1)[0]["k"]
        assert cache.shape[1] == 2  # the KV cache holds the key/value heads only
    ids = prompts(0, (4, 20))
    np.testing.assert_allclose(T.forward(params, jnp.asarray(ids), cfg), hf_logits(model, ids), atol=1e-4, rtol=0)

    start = prompts(1)
    model.generation_config.eos_token_id = None  # draw all 64 tokens, as genjax does without a stop token
    with torch.no_grad():
        ref = model.generate(torch.as_tensor(start, dtype=torch.long), attention_mask=torch.ones(start.shape),
                             do_sample=False, max_new_tokens=NEW, pad_token_id=0).numpy()[:, PROMPT_LEN:]
    out, counts = T.generate(params, jax.random.key(0), start, None, NEW, cfg, greedy=True)
    np.testing.assert_array_equal(np.asarray(out), ref)
    assert np.all(np.asarray(counts) == NEW)


def test_tokenizer_files_and_token_ids(saved, bpe, tmp_path):
    path, _ = saved["gpt2"]
    tok = hf.load_tokenizer(path, VOCAB)
    text = "Return the value of x, or None.\n"
    assert tok.encode(text).tolist() == bpe.encode(text).tolist() and tok.decode(tok.encode(text)) == text
    assert (tok.bos_id, tok.eos_id) == (0, 0)  # config.json's ids
    # GPT-2's older files: vocab.json + merges.txt
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(os.path.join(path, "config.json"), legacy)
    bpe.tok.model.save(str(legacy))
    assert hf.load_tokenizer(str(legacy), VOCAB).encode(text).tolist() == bpe.encode(text).tolist()
    assert hf.load_tokenizer(str(tmp_path), VOCAB) is None  # no tokenizer files


def test_pytorch_bin_and_sharded_safetensors_give_the_same_params(saved, tmp_path):
    path, model = saved["llama"]
    params, cfg, _ = hf.load_pretrained(path)
    pickled = tmp_path / "bin"
    pickled.mkdir()
    shutil.copy(os.path.join(path, "config.json"), pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    assert os.path.exists(sharded / "model.safetensors.index.json")
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 1
    for variant in (pickled, sharded):
        other, other_cfg, tok = hf.load_pretrained(str(variant))
        assert other_cfg == cfg and tok is None
        jax.tree.map(np.testing.assert_array_equal, other, params)


def test_gpt2_hub_names_and_mask_buffers(saved, tmp_path):
    """The hub's gpt2 files name the body without `transformer.` and store each layer's causal mask."""
    from safetensors.numpy import load_file, save_file

    path = copy_checkpoint(saved, "gpt2", tmp_path / "hub")
    state = {k.removeprefix("transformer."): v for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    state.update({f"h.{i}.attn.bias": np.tril(np.ones((1, 1, 128, 128), np.float32)) for i in range(2)})
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    jax.tree.map(np.testing.assert_array_equal, hf.load_pretrained(path)[0], hf.load_pretrained(saved["gpt2"][0])[0])


def test_overrides_and_scan_layers(saved):
    path, model = saved["llama"]
    params, cfg, _ = hf.load_pretrained(path, scan_layers=True, block_size=64)
    assert cfg.scan_layers and cfg.block_size == 64
    ids = prompts(2, (2, 12))
    np.testing.assert_allclose(T.forward(params, jnp.asarray(ids), cfg), hf_logits(model, ids), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="n_head cannot be overridden"):
        hf.load_pretrained(path, n_head=2)
    with pytest.raises(ConfigError, match="learned positions"):
        hf.load_pretrained(saved["gpt2"][0], block_size=64)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_export_loads_in_transformers_with_the_same_logits(name, saved, bpe, tmp_path):
    path, model = saved[name]
    params, cfg, tok = hf.load_pretrained(path)
    hf.save_pretrained(params, cfg, tok, str(tmp_path))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = prompts(3, (2, 16))
    np.testing.assert_allclose(hf_logits(back, ids), hf_logits(model, ids), atol=1e-5, rtol=0)
    again, cfg_again, tok_again = hf.load_pretrained(str(tmp_path))
    assert cfg_again == cfg and tok_again.vocab_size == tok.vocab_size
    loaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded("def f(x):\n  return x")["input_ids"] == bpe.encode("def f(x):\n  return x").tolist()


def genjax_model(cfg: T.Config, tmp_path, tok):
    params = T.init(jax.random.key(0), cfg)
    hf.save_pretrained(params, cfg, tok, str(tmp_path))
    return params, transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()


def test_genjax_char_model_exports_as_gpt2_and_its_tokenizer_loads(tmp_path, capsys):
    """A gpt_text run (random init, char tokenizer, no biases, tied) through the export CLI: transformers
    loads weights and tokenizer alike; the import CLI and the sample CLI read the result back."""
    from experiments import gpt_text
    from tests.test_workdir import save_untrained_run

    text = "the quick brown fox jumps over the lazy dog.\n"
    tok = text_data.CharTokenizer.train(text)
    cfg = T.Config(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, d_model=32)
    run = str(tmp_path / "run")
    text_data.save_tokenizer(tok, run)
    save_untrained_run(run, gpt_text.Config(model=cfg), "gpt_text", T)
    out = str(tmp_path / "hf")
    assert hf.main(["export", run, out]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok.encode("the lazy fox")[None]
    params = T.init(jax.random.key(0), cfg)  # save_untrained_run's weights
    np.testing.assert_allclose(hf_logits(model, ids), T.forward(params, jnp.asarray(ids), cfg), atol=1e-4, rtol=0)
    loaded = transformers.AutoTokenizer.from_pretrained(out)
    assert loaded("the lazy fox")["input_ids"] == tok.encode("the lazy fox").tolist()
    assert loaded.decode(tok.encode(text)) == text

    # the sample CLI on the exported directory and on its import: the same greedy text
    capsys.readouterr()
    assert sample_cli.main([out, "--prompt", "the", "--length", "12", "--greedy", "true"]) == 0
    direct = capsys.readouterr().out
    imported = str(tmp_path / "imported")
    assert hf.main(["import", out, imported]) == 0
    assert sample_cli.main([imported, "--prompt", "the", "--length", "12", "--greedy", "true"]) == 0
    assert capsys.readouterr().out == direct
    params, cfg, _ = hf.load_pretrained(out)  # (with GPT-2's zero biases): the CLI's compiled sampler
    new = np.asarray(T.sample(params, jax.random.key(0), 1, cfg,
                              T.SampleOptions(prompt=tuple(tok.encode("the")), length=12, greedy=True)))[0]
    assert direct == "the" + tok.decode(new) + "\n"


def test_genjax_rope_gqa_model_with_biases_exports_as_llama(tmp_path, bpe):
    cfg = T.Config(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=32, pos="rope",
                   mlp="swiglu", norm="rmsnorm", tie_embeddings=False, bias=True, rope_base=500.0, norm_eps=1e-6)
    params, model = genjax_model(cfg, tmp_path, bpe)
    ids = prompts(4, (2, 16))
    np.testing.assert_allclose(hf_logits(model, ids), T.forward(params, jnp.asarray(ids), cfg), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="arch='gpt2' needs model.pos='learned'"):
        hf.save_pretrained(params, cfg, None, str(tmp_path / "x"), arch="gpt2")


# ----------------------------------------------------------------------------- bad input


def copy_checkpoint(saved, name, dest) -> str:
    shutil.copytree(saved[name][0], dest)
    return str(dest)


def edit_config(path: str, **changes) -> None:
    config = json.loads(open(os.path.join(path, "config.json")).read())
    config.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def test_unsupported_settings_are_refused_naming_file_and_value(saved, tmp_path):
    cases = [({"model_type": "mistral"}, "model_type='mistral' is not supported"),
             ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}, "rope_type"),
             ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
             ({"num_key_value_heads": 3}, "n_kv_head=3 must divide")]
    for i, (changes, needle) in enumerate(cases):
        path = copy_checkpoint(saved, "llama", tmp_path / str(i))
        edit_config(path, **changes)
        with pytest.raises(ConfigError, match=needle) as e:
            hf.load_pretrained(path)
        assert "config.json" in one_line(e)
    path = copy_checkpoint(saved, "gpt2", tmp_path / "gelu")
    edit_config(path, activation_function="gelu")
    with pytest.raises(ConfigError, match="activation_function='gelu'"):
        hf.load_pretrained(path)


def test_missing_misshapen_or_extra_tensors_are_refused(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = copy_checkpoint(saved, "gpt2", tmp_path / "none")
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(ConfigError, match="holds no weights: expected model.safetensors") as e:
        hf.load_pretrained(path)
    one_line(e)
    tensors = load_file(os.path.join(saved["gpt2"][0], "model.safetensors"))
    name = "transformer.h.1.attn.c_attn.weight"
    broken = {
        "shape": ({**tensors, name: tensors[name][:, :90]},
                  f"tensor '{name}' has shape \\(32, 90\\), but config.json implies \\(32, 96\\)"),
        "missing": ({k: v for k, v in tensors.items() if k != name}, "no tensor 'h.1.attn.c_attn.weight'"),
        "extra": ({**tensors, "transformer.h.2.ln_1.weight": tensors["transformer.h.1.ln_1.weight"]},
                  "tensor 'h.2.ln_1.weight' .* is not part of the gpt2 model"),
    }
    for case, (state, needle) in broken.items():
        path = copy_checkpoint(saved, "gpt2", tmp_path / case)
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ConfigError, match=needle) as e:
            hf.load_pretrained(path)
        one_line(e)


def test_tokenizer_larger_than_the_embedding_is_refused(saved, tmp_path, bpe):
    path = copy_checkpoint(saved, "gpt2", tmp_path / "small")
    with open(os.path.join(path, "config.json")) as f:
        config = transformers.GPT2Config(**{**json.load(f), "vocab_size": 200})
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    with pytest.raises(ConfigError, match="tokenizer has 300 tokens but the model's embedding only 200 rows") as e:
        hf.load_pretrained(path)
    assert "tokenizer.json" in one_line(e)
    params = T.init(jax.random.key(0), T.Config(vocab_size=200, n_layer=1, d_model=16, n_head=2))
    with pytest.raises(ConfigError, match="tokenizer has 300 tokens"):
        hf.save_pretrained(params, T.Config(vocab_size=200, n_layer=1, d_model=16, n_head=2), bpe, str(tmp_path / "x"))


def test_torch_pickle_without_torch_and_hub_names_offline(saved, tmp_path, monkeypatch):
    path = copy_checkpoint(saved, "gpt2", tmp_path / "bin")
    os.remove(os.path.join(path, "model.safetensors"))
    state = saved["gpt2"][1].state_dict()  # with the tied head under both names
    assert "lm_head.weight" in state
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    jax.tree.map(np.testing.assert_array_equal, hf.load_pretrained(path)[0], hf.load_pretrained(saved["gpt2"][0])[0])
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)
        with pytest.raises(ConfigError, match="pytorch_model.bin is a PyTorch pickle: reading it needs torch") as e:
            hf.load_pretrained(path)
        one_line(e)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "huggingface_hub", None)
        with pytest.raises(ConfigError, match="'gpt2' is not a local directory, and downloading it needs "
                                              "huggingface_hub") as e:
            hf.load_pretrained("gpt2")
        one_line(e)
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConfigError, match="cannot download 'gpt2' from the Hugging Face hub \\(OSError") as e:
        hf.load_pretrained("gpt2")
    one_line(e)
    with pytest.raises(ConfigError, match="is not a directory"):
        hf.load_pretrained(str(tmp_path / "nowhere"))


def test_import_refuses_a_used_workdir_and_export_a_mismatched_config(saved, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert hf.main(["import", saved["gpt2"][0], run]) == 0
    assert hf.main(["import", saved["gpt2"][0], run]) == 2
    assert "already holds a run" in capsys.readouterr().err
    params, cfg, _ = hf.load_pretrained(saved["gpt2"][0])
    with pytest.raises(ConfigError, match="do not have the shapes"):
        hf.save_pretrained(params, dataclasses.replace(cfg, vocab_size=VOCAB + 1), None, str(tmp_path / "x"))
