"""Hugging Face checkpoints in and out: GPT-2 and Llama-architecture models as genjax transformers.

    params, cfg, tok = load_pretrained("path/to/hf_dir")         # or a hub name (needs huggingface_hub)
    save_pretrained(params, cfg, tok, "out_dir", arch="gpt2")     # transformers.AutoModelForCausalLM loads it
    python -m genjax.sample HF_DIR --prompt "Hello" --greedy true    # samples straight from a checkpoint
    python -m genjax.models.hf import HF_DIR WORKDIR              # a genjax run (config.json + checkpoint)
    python -m genjax.models.hf export WORKDIR HF_DIR [--arch gpt2|llama]

A checkpoint directory holds config.json, the weights (model.safetensors, or pytorch_model.bin, which needs
torch; either may be sharded with a *.index.json) and optionally a tokenizer (tokenizer.json, or GPT-2's
vocab.json + merges.txt), returned as a `genjax.data.text.PretrainedTokenizer` (None when absent).
Weights arrive as float32 whatever their stored dtype, and are written as float32.

Layouts. HF's GPT-2 Conv1D weights are (in, out), torch Linear weights (out, in), genjax kernels (in, out).
genjax fuses q, k, v into one group-major kernel (each key/value head after the query heads that read it)
and interleaves SwiGLU's gate and up columns per hidden unit (genjax.nn.attention); Llama's RoPE is HF's
rotate_half layout, which genjax's `rope` computes as is. The correspondence is one table per
architecture (`_layer_table`, `_top_table`), read in both directions. Settings genjax does not compute
(another model_type, rope scaling, exact GELU, ...) are refused naming the file and the value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Literal

import jax
import numpy as np

from genjax.config import ConfigError
from genjax.models import transformer

Arch = Literal["gpt2", "llama"]
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first; "<name>.index.json": sharded
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "generation_config.json")
# Fields of a loaded model's Config that change no parameter shape (block_size: RoPE models only).
OVERRIDABLE = ("block_size", "dtype", "attention", "scan_layers", "remat", "dropout", "pad_vocab_to")
# Buffers some checkpoints store next to the weights: the causal mask and RoPE's inverse frequencies.
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclasses.dataclass(frozen=True)
class Imported:
    """The config.json record of a genjax workdir made by `import` (read by the sample CLI like a run)."""

    source: str = ""
    model: transformer.Config = transformer.Config()


# ----------------------------------------------------------------------------- config.json


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: not a Hugging Face checkpoint directory") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None


def config_from_hf(hf: dict, where: str = CONFIG_FILE) -> transformer.Config:
    """The genjax transformer Config of a Hugging Face config.json dict; refuses (ConfigError, naming
    `where` and the key) what genjax does not compute."""

    def need(key: str):
        if hf.get(key) is None:
            raise ConfigError(f"{where}: no {key!r} (needed by a {kind} model)")
        return hf[key]

    def refuse(key: str, value, why: str):
        raise ConfigError(f"{where}: {key}={value!r} is not supported ({why})")

    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            refuse("activation_function", act, "genjax's GPT-2 MLP is the tanh GELU, gelu_new")
        for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                               ("add_cross_attention", False)):
            if hf.get(key, supported) != supported:
                refuse(key, hf[key], f"genjax computes {key}={supported}")
        d = need("n_embd")
        cfg = transformer.Config(
            vocab_size=need("vocab_size"), block_size=hf.get("n_positions") or need("n_ctx"),
            n_layer=need("n_layer"), n_head=need("n_head"), d_model=d,
            d_ff=0 if hf.get("n_inner") in (None, 4 * d) else hf["n_inner"],  # 0: genjax's 4 * d_model
            norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), pos="learned", mlp="gelu",
            tie_embeddings=hf.get("tie_word_embeddings", True), bias=True)
    elif kind == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            refuse("hidden_act", hf["hidden_act"], "genjax's SwiGLU gates with silu")
        # transformers >= 5 writes rope_parameters, older versions rope_theta and rope_scaling.
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            refuse("rope_scaling" if "rope_scaling" in hf else "rope_parameters", rope,
                   "genjax implements plain RoPE, rope_type 'default'")
        d, h = need("hidden_size"), need("num_attention_heads")
        if hf.get("head_dim") not in (None, d // h):
            refuse("head_dim", hf["head_dim"], f"genjax's head size is hidden_size / num_attention_heads = {d // h}")
        cfg = transformer.Config(
            vocab_size=need("vocab_size"), block_size=hf.get("max_position_embeddings", 2048),
            n_layer=need("num_hidden_layers"), n_head=h, n_kv_head=hf.get("num_key_value_heads") or h,
            d_model=d, d_ff=need("intermediate_size"), norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
            pos="rope", rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), mlp="swiglu",
            tie_embeddings=hf.get("tie_word_embeddings", False),
            bias=bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False)))
    else:
        raise ConfigError(f"{where}: model_type={kind!r} is not supported (genjax reads 'gpt2' and 'llama' "
                          "checkpoints)")
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def is_checkpoint_dir(path: str) -> bool:
    """A directory whose config.json names a `model_type` (a Hugging Face checkpoint, not a genjax run)."""
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "model_type" in json.load(f)
    except ValueError:
        return False


def read_config(directory: str, **overrides) -> transformer.Config:
    """The genjax Config of a checkpoint directory, with `overrides` of OVERRIDABLE fields applied."""
    where = os.path.join(directory, CONFIG_FILE)
    hf = _read_json(where)
    cfg = config_from_hf(hf, where)
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"{unknown[0]} cannot be overridden for a pretrained model (it would change its "
                          f"weights' meaning); these can: {', '.join(OVERRIDABLE)}")
    if "block_size" in overrides and cfg.pos != "rope" and overrides["block_size"] != cfg.block_size:
        raise ConfigError(f"block_size={overrides['block_size']}: a {hf['model_type']} model's learned positions "
                          f"fix it at {cfg.block_size}")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg


def run_record(directory: str) -> dict:
    """A checkpoint directory as a genjax run's config.json record (the sample CLI reads it so)."""
    from genjax import config as config_lib

    cfg = read_config(directory)
    return {"experiment": "huggingface", "family": "transformer",
            "config": config_lib.to_dict(Imported(os.path.abspath(directory), cfg))}


def _hf_config(cfg: transformer.Config, arch: Arch, bos: int | None, eos: int | None) -> dict:
    common = {"model_type": arch, "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float32", "use_cache": True}
    if arch == "gpt2":
        return {**common, "architectures": ["GPT2LMHeadModel"], "n_positions": cfg.block_size,
                "n_ctx": cfg.block_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": cfg.ff_width, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "initializer_range": 0.02}
    return {**common, "architectures": ["LlamaForCausalLM"], "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ff_width, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.d_model // cfg.n_head, "max_position_embeddings": cfg.block_size,
            "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu", "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout, "initializer_range": 0.02,
            # both spellings: transformers >= 5 reads rope_parameters, older versions rope_theta
            "rope_theta": cfg.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base}}


def _check_arch(cfg: transformer.Config, arch: str) -> None:
    wanted = {"gpt2": {"pos": "learned", "norm": "layernorm", "mlp": "gelu"},
              "llama": {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu"}}
    if arch not in wanted:
        raise ConfigError(f"arch={arch!r} is not one of ['gpt2', 'llama']")
    for field, value in wanted[arch].items():
        if getattr(cfg, field) != value:
            raise ConfigError(f"arch={arch!r} needs model.{field}={value!r}, this model has {getattr(cfg, field)!r}"
                              f"{'; try arch=llama' if arch == 'gpt2' and cfg.pos == 'rope' else ''}")
    if arch == "gpt2" and cfg.kv_heads != cfg.n_head:
        raise ConfigError(f"arch='gpt2' has no grouped-query attention (model.n_kv_head={cfg.n_kv_head}); "
                          "use arch='llama'")


# ----------------------------------------------------------------------------- the layout tables


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One genjax leaf (`path`) made of the HF tensors `names` (with their `shapes`): `join` maps HF arrays to
    the genjax array, `split` back. `absent_zero`: the checkpoint may lack them (biases a config leaves
    out): zeros on import; on export they are written only if `write_absent`."""

    path: tuple[str, ...]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    join: Callable[..., np.ndarray] = lambda x: x
    split: Callable[[np.ndarray], tuple] = lambda x: (x,)
    absent_zero: bool = False


def _qkv(cfg: transformer.Config):
    """(join, split) between q, k, v (..., heads * dh) and genjax's group-major (..., kv * (g + 2) * dh)."""
    kv, dh = cfg.kv_heads, cfg.d_model // cfg.n_head
    g = cfg.n_head // kv

    def join(q, k, v):
        lead = q.shape[:-1]
        parts = [q.reshape(*lead, kv, g, dh), k.reshape(*lead, kv, 1, dh), v.reshape(*lead, kv, 1, dh)]
        return np.concatenate(parts, axis=-2).reshape(*lead, -1)

    def split(x):
        lead = x.shape[:-1]
        x = x.reshape(*lead, kv, g + 2, dh)
        return tuple(a.reshape(*lead, -1) for a in (x[..., :g, :], x[..., g, :], x[..., g + 1, :]))

    return join, split


def _gate_up_join(gate, up):  # (..., F) twice -> (..., 2F), (gate_i, up_i) adjacent per hidden unit
    return np.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], -1)


def _gate_up_split(x):
    x = x.reshape(*x.shape[:-1], -1, 2)
    return x[..., 0], x[..., 1]


def _t(x):
    return x.T


def _layer_table(cfg: transformer.Config, arch: Arch, hf: dict | None = None) -> list[_Entry]:
    """The entries of one layer, HF names relative to the layer's prefix. `hf`: the imported config.json
    (Llama: which bias groups it stores), None on export."""
    d, f, dh = cfg.d_model, cfg.ff_width, cfg.d_model // cfg.n_head
    qkv_join, qkv_split = _qkv(cfg)
    if arch == "gpt2":
        qkv = dict(join=lambda w: qkv_join(*np.split(w, 3, axis=-1)),
                   split=lambda x: (np.concatenate(qkv_split(x), axis=-1),))
        return [
            _Entry(("ln1", "scale"), ("ln_1.weight",), ((d,),)),
            _Entry(("ln1", "bias"), ("ln_1.bias",), ((d,),)),
            _Entry(("attn", "qkv", "kernel"), ("attn.c_attn.weight",), ((d, 3 * d),), **qkv),
            _Entry(("attn", "qkv", "bias"), ("attn.c_attn.bias",), ((3 * d,),), **qkv),
            _Entry(("attn", "proj", "kernel"), ("attn.c_proj.weight",), ((d, d),)),
            _Entry(("attn", "proj", "bias"), ("attn.c_proj.bias",), ((d,),)),
            _Entry(("ln2", "scale"), ("ln_2.weight",), ((d,),)),
            _Entry(("ln2", "bias"), ("ln_2.bias",), ((d,),)),
            _Entry(("mlp", "fc", "kernel"), ("mlp.c_fc.weight",), ((d, f),)),
            _Entry(("mlp", "fc", "bias"), ("mlp.c_fc.bias",), ((f,),)),
            _Entry(("mlp", "proj", "kernel"), ("mlp.c_proj.weight",), ((f, d),)),
            _Entry(("mlp", "proj", "bias"), ("mlp.c_proj.bias",), ((d,),)),
        ]
    hq, hkv = cfg.n_head * dh, cfg.kv_heads * dh
    no_attn_bias = hf is not None and not hf.get("attention_bias", False)
    no_mlp_bias = hf is not None and not hf.get("mlp_bias", False)
    qkv_names = tuple(f"self_attn.{p}_proj" for p in "qkv")
    return [
        _Entry(("ln1", "scale"), ("input_layernorm.weight",), ((d,),)),
        _Entry(("attn", "qkv", "kernel"), tuple(n + ".weight" for n in qkv_names), ((hq, d), (hkv, d), (hkv, d)),
               join=lambda q, k, v: qkv_join(q.T, k.T, v.T), split=lambda x: tuple(a.T for a in qkv_split(x))),
        _Entry(("attn", "qkv", "bias"), tuple(n + ".bias" for n in qkv_names), ((hq,), (hkv,), (hkv,)),
               join=qkv_join, split=qkv_split, absent_zero=no_attn_bias),
        _Entry(("attn", "proj", "kernel"), ("self_attn.o_proj.weight",), ((d, hq),), join=_t, split=lambda x: (x.T,)),
        _Entry(("attn", "proj", "bias"), ("self_attn.o_proj.bias",), ((d,),), absent_zero=no_attn_bias),
        _Entry(("ln2", "scale"), ("post_attention_layernorm.weight",), ((d,),)),
        _Entry(("mlp", "fc", "kernel"), ("mlp.gate_proj.weight", "mlp.up_proj.weight"), ((f, d), (f, d)),
               join=lambda g, u: _gate_up_join(g.T, u.T), split=lambda x: tuple(a.T for a in _gate_up_split(x))),
        _Entry(("mlp", "fc", "bias"), ("mlp.gate_proj.bias", "mlp.up_proj.bias"), ((f,), (f,)),
               join=_gate_up_join, split=_gate_up_split, absent_zero=no_mlp_bias),
        _Entry(("mlp", "proj", "kernel"), ("mlp.down_proj.weight",), ((d, f),), join=_t, split=lambda x: (x.T,)),
        _Entry(("mlp", "proj", "bias"), ("mlp.down_proj.bias",), ((d,),), absent_zero=no_mlp_bias),
    ]


def _top_table(cfg: transformer.Config, arch: Arch) -> list[_Entry]:
    v, d = cfg.vocab_size, cfg.d_model
    head = [] if cfg.tie_embeddings else [_Entry(("lm_head",), ("lm_head.weight",), ((v, d),), join=_t,
                                                 split=lambda x: (x.T,))]
    if arch == "gpt2":
        return [_Entry(("wte",), ("wte.weight",), ((v, d),)), _Entry(("wpe",), ("wpe.weight",), ((cfg.block_size, d),)),
                _Entry(("ln_f", "scale"), ("ln_f.weight",), ((d,),)), _Entry(("ln_f", "bias"), ("ln_f.bias",), ((d,),)),
                *head]
    return [_Entry(("wte",), ("model.embed_tokens.weight",), ((v, d),)),
            _Entry(("ln_f", "scale"), ("model.norm.weight",), ((d,),)), *head]


def _layer_prefix(arch: Arch, i: int) -> str:
    return f"h.{i}." if arch == "gpt2" else f"model.layers.{i}."


def _canonical(name: str, arch: Arch) -> str:
    """GPT-2 checkpoints name the body `transformer.h.0...` (GPT2LMHeadModel) or `h.0...` (GPT2Model)."""
    return name[len("transformer."):] if arch == "gpt2" and name.startswith("transformer.") else name


# ----------------------------------------------------------------------------- reading tensors


class _Tensors:
    """A checkpoint's tensors by (canonical) name across its weight files, read one at a time as float32."""

    def __init__(self, directory: str, arch: Arch):
        self.directory, self.files, self._open = directory, {}, {}
        for weights in WEIGHT_FILES:
            index = os.path.join(directory, weights + ".index.json")
            if os.path.exists(index):
                weight_map = _read_json(index).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ConfigError(f"{index} has no 'weight_map' of tensor names to files")
                self.files = {_canonical(k, arch): (os.path.join(directory, v), k) for k, v in weight_map.items()}
                break
            if os.path.exists(os.path.join(directory, weights)):
                self.files = {_canonical(k, arch): (os.path.join(directory, weights), k)
                              for k in self._keys(os.path.join(directory, weights))}
                break
        else:
            raise ConfigError(f"{directory} holds no weights: expected {' or '.join(WEIGHT_FILES)} (or their "
                              "sharded *.index.json)")
        self.used: set[str] = set()

    def _file(self, path: str):
        if path not in self._open:
            if not os.path.exists(path):
                raise ConfigError(f"{path} does not exist (named by the checkpoint's index.json)")
            if path.endswith(".safetensors"):
                from safetensors import safe_open

                try:
                    self._open[path] = safe_open(path, "np")
                except Exception as e:
                    raise ConfigError(f"{path} cannot be read as safetensors ({str(e).splitlines()[0]})") from None
            else:
                try:
                    import torch
                except ImportError:
                    raise ConfigError(f"{path} is a PyTorch pickle: reading it needs torch (pip install torch), "
                                      "or convert the checkpoint to model.safetensors") from None
                try:
                    try:  # memory-mapped: tensors are read as they are converted
                        self._open[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                    except RuntimeError:  # files from before torch's zipfile format cannot be mapped
                        self._open[path] = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as e:
                    raise ConfigError(f"{path} cannot be read by torch.load ({str(e).splitlines()[0]})") from None
        return self._open[path]

    def _keys(self, path: str) -> list[str]:
        f = self._file(path)
        return list(f.keys())

    def has(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.files:
            raise ConfigError(f"{self.directory}: the checkpoint has no tensor {name!r}, which its config.json's "
                              "model needs")
        path, stored = self.files[name]
        f = self._file(path)
        x = f.get_tensor(stored) if path.endswith(".safetensors") else f[stored].float().numpy()
        if tuple(x.shape) != tuple(shape):
            raise ConfigError(f"{path}: tensor {stored!r} has shape {tuple(x.shape)}, but config.json implies "
                              f"{tuple(shape)}")
        self.used.add(name)
        return np.asarray(x, np.float32)

    def unused(self, tied: bool) -> list[str]:
        # A tied head may still be stored (a torch state_dict holds it under both names): the embedding.
        skip = {"lm_head.weight"} if tied else set()
        return sorted(n for n in set(self.files) - self.used - skip if not n.endswith(BUFFERS))


# ----------------------------------------------------------------------------- tokenizer


def _token_id(tok, value) -> int | None:
    """An id from a config's token (an int, a list of ints: the first, a string, or {'content': ...})."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("content")
    if isinstance(value, str):
        return tok.token_to_id(value)
    return value if isinstance(value, int) else None


def load_tokenizer(directory: str, vocab_size: int | None = None):
    """The directory's tokenizer as a genjax PretrainedTokenizer (None without tokenizer files). Refuses
    (ConfigError) a vocabulary larger than `vocab_size`, the model's embedding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from genjax.data.text import PretrainedTokenizer

    path = os.path.join(directory, "tokenizer.json")
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    try:
        if os.path.exists(path):
            tok = Tokenizer.from_file(path)
        elif os.path.exists(vocab) and os.path.exists(merges):  # GPT-2's byte-level BPE files
            path = vocab
            tok = Tokenizer(models.BPE.from_file(vocab, merges))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
        else:
            return None
    except Exception as e:
        raise ConfigError(f"{path} cannot be read by tokenizers ({str(e).splitlines()[0]})") from None
    settings = {}
    for name in ("tokenizer_config.json", "config.json", "generation_config.json"):  # later files win
        if os.path.exists(os.path.join(directory, name)):
            settings.update({k: v for k, v in _read_json(os.path.join(directory, name)).items() if v is not None})
    bos = _token_id(tok, settings.get("bos_token_id", settings.get("bos_token")))
    eos = _token_id(tok, settings.get("eos_token_id", settings.get("eos_token")))
    out = PretrainedTokenizer(tok, bos, eos)
    if vocab_size is not None and out.vocab_size > vocab_size:
        raise ConfigError(f"{path}: the tokenizer has {out.vocab_size} tokens but the model's embedding only "
                          f"{vocab_size} rows (config.json vocab_size)")
    return out


def _as_hf_tokenizer(tok):
    """A `tokenizers.Tokenizer` for any genjax tokenizer (char-level: one vocabulary entry per character,
    a BPE model without merges, so every character stays its own token)."""
    from tokenizers import Tokenizer, decoders, models

    if tok.kind == "char":
        out = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
        out.decoder = decoders.Fuse()
        return out
    return tok.tok


def save_tokenizer(tok, directory: str, cfg: transformer.Config) -> tuple[int | None, int | None]:
    """Writes tokenizer.json + tokenizer_config.json (a PreTrainedTokenizerFast) and returns (bos, eos) ids."""
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model's embedding only "
                          f"{cfg.vocab_size} rows (model.vocab_size)")
    hf_tok = _as_hf_tokenizer(tok)
    hf_tok.save(os.path.join(directory, "tokenizer.json"))
    bos = None if tok.kind == "char" else tok.bos_id  # a char model's id 0 is its first character
    eos = tok.eos_id
    text = lambda i: None if i is None else hf_tok.id_to_token(i)  # noqa: E731
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.block_size,
                "bos_token": text(bos), "eos_token": text(eos), "clean_up_tokenization_spaces": False}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in settings.items() if v is not None}, f, indent=2, ensure_ascii=False)
    return bos, eos


# ----------------------------------------------------------------------------- import / export


def _resolve(path_or_name: str) -> str:
    """A local checkpoint directory, or a hub name downloaded with huggingface_hub."""
    if os.path.isdir(path_or_name):
        return path_or_name
    if os.path.exists(path_or_name) or path_or_name.startswith((".", "/", "~")) or path_or_name.count("/") > 1:
        raise ConfigError(f"{path_or_name} is not a directory: pass a Hugging Face checkpoint directory "
                          "(config.json + weights) or a hub model name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"{path_or_name!r} is not a local directory, and downloading it needs huggingface_hub "
                          "(pip install huggingface_hub); or pass a downloaded checkpoint directory") from None
    files = [CONFIG_FILE, *TOKENIZER_FILES]
    try:  # safetensors where the repository has them; else the PyTorch pickles
        path = snapshot_download(path_or_name, allow_patterns=files + ["model*.safetensors*"])
        if not any(os.path.exists(os.path.join(path, w + s)) for w in WEIGHT_FILES for s in ("", ".index.json")):
            path = snapshot_download(path_or_name, allow_patterns=files + ["pytorch_model*.bin*"])
    except Exception as e:
        raise ConfigError(f"cannot download {path_or_name!r} from the Hugging Face hub ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no details'}); pass a local "
                          "checkpoint directory instead") from None
    return path


def _shapes(tree) -> dict:
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _stack_layers(layers: list[dict], cfg: transformer.Config) -> dict:
    if cfg.scan_layers:  # nn.scan's params: one stacked block with a leading n_layer axis
        return {"block": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return {f"layer_{i}": {"block": layer} for i, layer in enumerate(layers)}


def _unstack_layers(blocks: dict, cfg: transformer.Config) -> list[dict]:
    if cfg.scan_layers:
        return [jax.tree.map(lambda x, i=i: x[i], blocks["block"]) for i in range(cfg.n_layer)]
    return [blocks[f"layer_{i}"]["block"] for i in range(cfg.n_layer)]


def load_pretrained(path_or_name: str, **overrides) -> tuple[dict, transformer.Config, Any]:
    """(params, cfg, tokenizer) of a Hugging Face GPT-2 or Llama checkpoint: a local directory, or a hub
    name downloaded with huggingface_hub when installed. params are float32 genjax transformer params,
    tokenizer a `PretrainedTokenizer` or None. `overrides` set OVERRIDABLE Config fields (e.g.
    dtype='bfloat16', scan_layers=True, or a smaller block_size for a RoPE model's KV cache).
    Unsupported settings, missing or misshapen tensors and a tokenizer larger than the embedding are
    one-line ConfigErrors naming the file."""
    directory = _resolve(path_or_name)
    hf = _read_json(os.path.join(directory, CONFIG_FILE))
    cfg = read_config(directory, **overrides)
    arch: Arch = hf["model_type"]
    tensors = _Tensors(directory, arch)

    def read(entry: _Entry, prefix: str = ""):
        names = [prefix + n for n in entry.names]
        if entry.absent_zero and not any(tensors.has(n) for n in names):
            return entry.join(*[np.zeros(s, np.float32) for s in entry.shapes])
        return entry.join(*[tensors.get(n, s) for n, s in zip(names, entry.shapes)])

    # The genjax leaves this config has (a model without biases has no bias leaves to fill).
    abstract = jax.eval_shape(lambda k: transformer.init(k, cfg), jax.random.key(0))
    abstract_layer = abstract["blocks"]["block" if cfg.scan_layers else "layer_0"]
    abstract_layer = abstract_layer if cfg.scan_layers else abstract_layer["block"]
    params: dict = {}
    for entry in _top_table(cfg, arch):
        _set(params, entry.path, read(entry))
    layers = []
    for i in range(cfg.n_layer):
        layer: dict = {}
        for entry in _layer_table(cfg, arch, hf):
            if _get(abstract_layer, entry.path) is not None:
                _set(layer, entry.path, read(entry, _layer_prefix(arch, i)))
        layers.append(layer)
    params["blocks"] = _stack_layers(layers, cfg)
    extra = tensors.unused(cfg.tie_embeddings)
    if extra:
        raise ConfigError(f"{directory}: tensor {extra[0]!r} (and {len(extra) - 1} more) is not part of the "
                          f"{arch} model its config.json describes")
    if _shapes(params) != _shapes(abstract):  # a table out of step with genjax's modules: a bug, not bad input
        raise AssertionError(f"hf: params {_shapes(params)} do not match transformer.init's {_shapes(abstract)}")
    tok = load_tokenizer(directory, cfg.vocab_size)
    return jax.tree.map(jax.numpy.asarray, params), cfg, tok


def save_pretrained(params, cfg: transformer.Config, tokenizer, path: str, arch: Arch | None = None) -> str:
    """Writes `path`/config.json + model.safetensors (float32), and the tokenizer's files when given, as
    a Hugging Face checkpoint that `transformers.AutoModelForCausalLM.from_pretrained` loads. arch:
    'gpt2' (learned positions, LayerNorm, GELU; a model without biases exports zero biases) or 'llama'
    (RoPE, RMSNorm, SwiGLU, grouped-query attention); default: 'llama' for RoPE models, else 'gpt2'."""
    from safetensors.numpy import save_file

    arch = arch or ("llama" if cfg.pos == "rope" else "gpt2")
    cfg.validate()
    _check_arch(cfg, arch)
    expected = _shapes(jax.eval_shape(lambda k: transformer.init(k, cfg), jax.random.key(0)))
    if _shapes(params) != expected:
        raise ConfigError(f"the params do not have the shapes of this config's model (e.g. another vocab_size "
                          f"or layout); got {len(_shapes(params))} leaves, expected {len(expected)}")
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    out: dict[str, np.ndarray] = {}

    def write(entry: _Entry, tree: dict, prefix: str = ""):
        value = _get(tree, entry.path)
        if value is None:  # a genjax model without biases: GPT-2 stores zeros, Llama leaves them out
            if arch == "llama":
                return
            arrays = [np.zeros(s, np.float32) for s in entry.shapes]
        else:
            arrays = entry.split(value)
        for name, shape, array in zip(entry.names, entry.shapes, arrays):
            assert array.shape == shape, (name, array.shape, shape)
            out[("transformer." if arch == "gpt2" and name != "lm_head.weight" else "") + prefix + name] = \
                np.ascontiguousarray(array, np.float32)

    for entry in _top_table(cfg, arch):
        write(entry, params)
    for i, layer in enumerate(_unstack_layers(params["blocks"], cfg)):
        for entry in _layer_table(cfg, arch):
            write(entry, layer, _layer_prefix(arch, i))
    os.makedirs(path, exist_ok=True)
    bos = eos = None
    if tokenizer is not None:
        bos, eos = save_tokenizer(tokenizer, path, cfg)
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(_hf_config(cfg, arch, bos, eos), f, indent=2, sort_keys=True)
    return path


# ----------------------------------------------------------------------------- command line


def import_run(source: str, workdir: str) -> str:
    """A genjax workdir (config.json, a step-0 checkpoint, tokenizer.json) of a Hugging Face checkpoint."""
    import optax

    from genjax import checkpoint, train
    from genjax import config as config_lib
    from genjax.data import text

    if os.path.exists(os.path.join(workdir, CONFIG_FILE)) or os.path.exists(os.path.join(workdir, "checkpoints")):
        raise ConfigError(f"{workdir} already holds a run (config.json or checkpoints/); use a fresh workdir")
    params, cfg, tok = load_pretrained(source)
    saver = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    saver.save(train.init_state(jax.random.key(0), params, optax.sgd(0.0)), wait=True)
    saver.close()
    if tok is not None:
        text.save_tokenizer(tok, workdir)
    config_lib.save(Imported(os.path.abspath(source) if os.path.isdir(source) else source, cfg), workdir,
                    experiment="hf_import", family="transformer")
    return workdir


def export_run(workdir: str, path: str, arch: Arch | None = None) -> str:
    """A genjax transformer run's newest checkpoint (its EMA weights where kept) as a Hugging Face checkpoint."""
    from genjax.data import text
    from genjax.sample import load_run

    family, cfg, params, _ = load_run(workdir)
    if family is not transformer:
        raise ConfigError(f"{workdir} holds a {family.__name__.split('.')[-1]} run; only transformer runs export")
    tok = text.load_tokenizer(workdir) if os.path.exists(os.path.join(workdir, text.TOKENIZER_FILE)) else None
    return save_pretrained(params, cfg, tok, path, arch)


def main(argv=None) -> int:
    from genjax import config as config_lib
    from genjax.checkpoint import CheckpointError

    parser = config_lib.ArgumentParser(prog="python -m genjax.models.hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="a Hugging Face checkpoint -> a genjax workdir")
    imp.add_argument("source", help="checkpoint directory (or hub name)")
    imp.add_argument("workdir", help="a fresh genjax workdir")
    exp = commands.add_parser("export", help="a genjax transformer workdir -> a Hugging Face checkpoint")
    exp.add_argument("workdir")
    exp.add_argument("path", help="output directory")
    exp.add_argument("--arch", choices=("gpt2", "llama"), default=None,
                     help="default: llama for RoPE models, else gpt2")
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            out = import_run(args.source, args.workdir)
        else:
            out = export_run(args.workdir, args.path, args.arch)
    except (FileNotFoundError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"genjax: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
