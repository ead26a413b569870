"""LoRA (genjax.lora) on a tiny transformer, and experiments/gpt_finetune end to end from a gpt_text run."""

import dataclasses
import functools
import json
import os
import shutil
import signal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import gpt_finetune, gpt_text
from genjax import checkpoint, config as config_lib, log, lora, loop, parallel, sample as sample_cli
from genjax.config import ConfigError
from genjax.models import hf, transformer
from genjax.nn.attention import Dense
from tests.test_workdir import corpus, save_untrained_run, tiny_run

CFG = transformer.Config(n_layer=2, n_head=2, d_model=16, block_size=8, vocab_size=11)
ALL = lora.LoraConfig(rank=4, alpha=8.0, targets=("attn", "mlp"))


@functools.cache  # init compiles on each call: one tiny model per layout for the module
def _params(cfg=CFG):
    return transformer.init(jax.random.key(0), cfg)


def _tokens(seed=3, batch=4):
    return jax.random.randint(jax.random.key(seed), (batch, CFG.block_size + 1), 0, CFG.vocab_size)


def _random_b(adapters, seed=7):
    """Adapters with B drawn too (B = 0 at init would make every check below trivial)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(adapters)
    return jax.tree_util.tree_unflatten(tree, [
        x if p[-1].key == "a" else 0.1 * jax.random.normal(jax.random.key(seed + i), x.shape)
        for i, (p, x) in enumerate(leaves)])


def _stacked(tree):
    """An unrolled-layers pytree (blocks/layer_<i>/...) in scan_layers' layout (layer axis first)."""
    layers = [tree["blocks"][f"layer_{i}"] for i in range(CFG.n_layer)]
    return {**tree, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


@functools.partial(jax.jit, static_argnums=1)
def _logits(params, cfg=CFG):
    return transformer.forward(params, _tokens()[:, :-1], cfg)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_b_zero_at_init_merges_to_the_base_exactly(scan_layers):
    cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
    params = _params(cfg)
    adapters = lora.init_adapters(jax.random.key(1), params, ALL)
    a_leaves = jax.tree.leaves(adapters)[::2]
    assert a_leaves and all(np.any(a != 0) for a in a_leaves)  # A is random
    merged = lora.merge(params, adapters, ALL)
    chex.assert_trees_all_equal(merged, params)  # bitwise
    np.testing.assert_array_equal(_logits(merged, cfg), _logits(params, cfg))


def test_merged_logits_equal_the_base_forward_plus_the_adapter_branch():
    """The reference adds s * (x @ A) @ B to each adapted Dense layer's output inside the base model's own
    forward (flax method interception), never forming W + s * A @ B."""
    params = _params()
    adapters = _random_b(lora.init_adapters(jax.random.key(1), params, ALL))
    by_path = {tuple(name.split("/")[:-1]): pair for name, pair in _flat_pairs(adapters).items()}

    def branch(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        pair = by_path.get(tuple(context.module.path)) if isinstance(context.module, Dense) else None
        if pair is None or context.method_name != "__call__":
            return out
        return out + ALL.scale * (args[0] @ pair["a"]) @ pair["b"]

    with nn.intercept_methods(branch):  # a fresh trace: _logits' cache would not see the interception
        reference = jax.jit(lambda p: transformer.forward(p, _tokens()[:, :-1], CFG))(params)
    merged = _logits(lora.merge(params, adapters, ALL))
    assert len(by_path) == 8 and float(jnp.max(jnp.abs(merged - _logits(params)))) > 1e-2  # adapters matter
    np.testing.assert_allclose(merged, reference, rtol=1e-5, atol=1e-5)
    # scan_layers' stacked kernels (L, in, out) with stacked adapters give the same model
    stacked = lora.merge(_stacked(params), _stacked(adapters), ALL)
    np.testing.assert_allclose(_logits(stacked, dataclasses.replace(CFG, scan_layers=True)), reference,
                               rtol=1e-5, atol=1e-5)


def _flat_pairs(adapters):
    flat, _ = jax.tree_util.tree_flatten_with_path(adapters)
    out = {}
    for path, x in flat:
        out.setdefault("/".join(k.key for k in path[:-1]), {})[path[-1].key] = x
    return out


def test_merge_is_w_plus_alpha_over_rank_a_b_per_kernel():
    params = _params()
    cfg = lora.LoraConfig(rank=2, alpha=3.0, targets=("proj",))  # attn/proj and mlp/proj
    adapters = _random_b(lora.init_adapters(jax.random.key(1), params, cfg))
    merged = lora.kernels(lora.merge(params, adapters, cfg))
    for name, w in lora.kernels(params).items():
        pair = _flat_pairs(adapters).get(name)
        if pair is None:
            np.testing.assert_array_equal(merged[name], w)
            continue
        want = np.float64(w) + 1.5 * np.float64(pair["a"]) @ np.float64(pair["b"])
        np.testing.assert_allclose(merged[name], want, rtol=1e-6, atol=1e-7)
    assert sorted(_flat_pairs(adapters)) == [f"blocks/layer_{i}/block/{m}/proj/kernel" for i in (0, 1)
                                             for m in ("attn", "mlp")]


@pytest.fixture(scope="module")
def trained():
    """Ten LoRA steps on one batch of a tiny model: (base, a copy of it, state, losses)."""
    params = _params()
    copy = jax.tree.map(np.array, params)
    tx = optax.adam(1e-2)
    state = lora.init_state(jax.random.key(2), params, lora.init_adapters(jax.random.key(1), params, ALL), tx)
    step = jax.jit(lora.make_step(functools.partial(transformer.loss, cfg=CFG), tx, ALL))
    # a learnable batch: each row counts up from its own start
    batch, losses = {"tokens": (np.arange(4)[:, None] + np.arange(CFG.block_size + 1)) % CFG.vocab_size}, []
    for _ in range(10):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return params, copy, state, losses


def test_lora_lowers_the_loss_and_leaves_the_base_bit_identical(trained):
    _, copy, state, losses = trained
    assert losses[-1] < losses[0] - 0.1, losses
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.base), copy)
    assert any(float(jnp.max(jnp.abs(b))) > 0 for b in jax.tree.leaves(state.params)[1::2])  # B moved


def test_only_the_adapters_are_in_the_optimizer_state(trained):
    _, _, state, _ = trained
    adam = state.opt_state[0]
    shapes = functools.partial(jax.tree.map, jnp.shape)
    assert shapes(adam.mu) == shapes(adam.nu) == shapes(state.params)
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_opt == 2 * lora.num_params(state.params) + 1  # two moments per adapter weight + Adam's count
    assert lora.num_params(state.params) < transformer.num_params(state.base) / 2


def test_lora_step_on_a_data_fsdp_model_mesh_matches_one_device(devices8, monkeypatch):
    """The loop's placement and compiled step with lora.model_rules: base, adapters and moments split over
    fsdp and model (heads), the same three steps as on one device."""
    monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 64)  # so that the tiny model is really split
    params, tx = _params(), optax.adam(1e-2)
    step = lora.make_step(functools.partial(transformer.loss, cfg=CFG), tx, ALL)
    batch = {"tokens": np.asarray(_tokens(batch=8))}
    out = []
    for mesh in (parallel.make_mesh(devices=devices8[:1]), parallel.make_mesh(2, devices=devices8, model=2)):
        adapters = lora.init_adapters(jax.random.key(1), params, ALL)
        state, shardings = loop.place_state(lora.init_state(jax.random.key(2), params, adapters, tx), mesh,
                                            lora.model_rules(transformer.MODEL_RULES))
        compiled = loop.compile_step(step, shardings, mesh)
        for _ in range(3):
            state, _ = compiled(state, parallel.global_batch(batch, mesh))
        out.append((state, shardings))
    (one, _), (split, shardings) = out
    b = shardings.params["blocks"]["layer_0"]["block"]["attn"]["qkv"]["kernel"]["b"]
    assert b.spec[-1] == "model" and "fsdp" in shardings.base["wte"].spec
    chex.assert_trees_all_close(*jax.device_get((split.params, one.params)), rtol=1e-4, atol=2e-5)
    chex.assert_trees_all_equal(jax.device_get(split.base), jax.tree.map(np.asarray, params))


def test_lora_config_errors_are_one_line():
    params = _params()
    cases = {
        lora.LoraConfig(rank=-1): "lora.rank=-1 must be >= 1",
        lora.LoraConfig(rank=0): "lora.rank=0 makes no adapters",
        lora.LoraConfig(alpha=0.0): "lora.alpha=0.0 must be > 0",
        lora.LoraConfig(targets=()): "lora.targets='' needs non-empty kernel patterns",
        lora.LoraConfig(rank=4, targets=("attn/q",)):
            "'attn/q' matches no kernel; available: blocks/layer_*/block/attn/proj, "
            "blocks/layer_*/block/attn/qkv, blocks/layer_*/block/mlp/fc, blocks/layer_*/block/mlp/proj",
        lora.LoraConfig(rank=32): "lora.rank=32 exceeds the smaller side of blocks/layer_0/block/attn/proj",
    }
    for cfg, message in cases.items():
        with pytest.raises(ConfigError) as e:
            lora.init_adapters(jax.random.key(0), params, cfg)
        assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="adapters for blocks/layer_0/block/attn/proj/kernel, which these"):
        lora.merge(_params(dataclasses.replace(CFG, scan_layers=True)),
                   lora.init_adapters(jax.random.key(0), params, ALL), ALL)


def test_model_rules_split_each_adapter_like_its_kernel():
    rules = lora.model_rules(transformer.MODEL_RULES)
    assert rules["attn/qkv/kernel/b"] == -1 and rules["attn/proj/kernel/a"] == -2
    assert "attn/qkv/kernel/a" not in rules and rules["attn/qkv/kernel"] == -1


# ----------------------------------------------------------------------------- the experiment

FT = {"train.steps": "6", "train.batch_size": "8", "train.lr": "1e-2", "train.warmup_steps": "0",
      "train.log_every": "1", "train.eval_every": "3", "train.sample_every": "100", "train.ckpt_every": "2",
      "train.num_devices": "1", "eval_blocks": "8", "sample.length": "4", "lora.rank": "4",
      "lora.targets": "attn,mlp"}


def _finetune(workdir, init, tmp_path_factory, **overrides):
    cfg = config_lib.override(gpt_finetune.Config(), {**FT, "init": init, "data": corpus(tmp_path_factory),
                                                      **overrides})
    return gpt_finetune.train_and_evaluate(cfg, str(workdir))


def _stop_at(step):
    """loop.run with a hook that sends this process SIGINT after `step`: the loop's preemption path."""
    real = loop.run

    def run(**kw):
        def stop(state):
            if int(state.step) == step:
                os.kill(os.getpid(), signal.SIGINT)

        return real(**{**kw, "hooks": (*kw["hooks"], loop.Hook(1, stop))})

    return run


def test_finetune_interrupted_and_resumed_equals_an_uninterrupted_run(tmp_path, tmp_path_factory):
    base, _ = tiny_run("gpt", tmp_path_factory)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "run", _stop_at(3))
        with pytest.raises(loop.Preempted) as stopped:
            _finetune(tmp_path / "resumed", base, tmp_path_factory)
    assert stopped.value.step == 4  # the signal is acted on after the next step, which is saved
    resumed = _finetune(tmp_path / "resumed", base, tmp_path_factory)
    straight = _finetune(tmp_path / "straight", base, tmp_path_factory)
    assert [r["step"] for r in log.read_metrics(str(tmp_path / "resumed"), "train")] == [1, 2, 3, 4, 5, 6]

    raw = {k: checkpoint.restore_raw(str(tmp_path / k / "checkpoints"))[1] for k in ("resumed", "straight")}
    chex.assert_trees_all_equal(raw["resumed"]["params"], raw["straight"]["params"])  # bitwise, on CPU
    chex.assert_trees_all_equal(raw["resumed"]["opt_state"], raw["straight"]["opt_state"])
    merged = {k: checkpoint.restore_raw(str(tmp_path / k / "merged/checkpoints"))[1]["params"] for k in raw}
    chex.assert_trees_all_equal(merged["resumed"], merged["straight"])
    assert resumed["val_loss"] == straight["val_loss"] < straight["val_loss_before"]

    # the base stays bit-identical; the checkpoint trains adapters only (one Adam moment pair each)
    _, _, init_params, _ = sample_cli.load_run(base)
    chex.assert_trees_all_equal(raw["straight"]["base"], jax.tree.map(np.asarray, init_params))
    moments = [x for x in jax.tree.leaves(raw["straight"]["opt_state"]) if x.ndim]  # past Adam's step counts
    assert sum(x.size for x in moments) == 2 * lora.num_params(raw["straight"]["params"])
    assert straight["trained_params"] == lora.num_params(raw["straight"]["params"]) < straight["params"] / 4


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """(base workdir, a 2-step LoRA fine-tune of it) shared by the tests that only read the run."""
    base, _ = tiny_run("gpt", tmp_path_factory)
    run = tmp_path_factory.mktemp("finetune") / "lora"
    _finetune(run, base, tmp_path_factory, **{"train.steps": "2"})
    return base, run


def test_merged_model_samples_and_is_a_valid_init(lora_run, tmp_path, tmp_path_factory, capsys):
    _, run = lora_run
    capsys.readouterr()
    assert sample_cli.main([str(run / "merged"), "--prompt", "the", "--length", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the") and set(out) <= set(open(corpus(tmp_path_factory)).read()) | {"\n"}
    # the LoRA workdir itself holds adapters: the CLI points to its merged model in one line
    assert sample_cli.main([str(run), "--length", "4"]) == 2
    assert f"python -m genjax.sample {run / 'merged'}" in capsys.readouterr().err
    # full fine-tuning (rank 0) from the merged model: every weight trains; the workdir itself samples too
    full = _finetune(tmp_path / "full", str(run / "merged"), tmp_path_factory,
                     **{"train.steps": "2", "lora.rank": "0"})
    assert full["trained_params"] == full["params"] and full["lora_rank"] == 0
    assert sample_cli.main([str(tmp_path / "full"), "--prompt", "the", "--length", "4"]) == 0


def test_finetune_from_a_hugging_face_checkpoint_and_export(lora_run, tmp_path, tmp_path_factory):
    pytest.importorskip("safetensors")
    base, run = lora_run
    hf_base = hf.export_run(base, str(tmp_path / "hf_base"))  # the tiny gpt_text run as a GPT-2 checkpoint
    out = tmp_path / "hf_out"
    summary = _finetune(tmp_path / "ft", hf_base, tmp_path_factory,
                        **{"train.steps": "2", "hf_out": str(out)})
    # the same weights (GPT-2 adds zero biases) and the same tokens as the genjax init
    assert summary["val_loss_before"] == pytest.approx(json.loads((run / "summary.json").read_text())
                                                       ["val_loss_before"], abs=1e-5)
    assert summary["val_loss"] < summary["val_loss_before"]
    params, cfg, tok = hf.load_pretrained(str(out))
    merged = checkpoint.restore_raw(str(tmp_path / "ft/merged/checkpoints"))[1]["params"]
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, params), merged)
    assert tok.decode(tok.encode("the quick fox")) == "the quick fox"


def _error(tmp_path_factory, workdir, init, **overrides) -> str:
    with pytest.raises(ConfigError) as e:
        _finetune(workdir, init, tmp_path_factory, **overrides)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_finetune_inputs_are_refused_in_one_line_and_write_nothing(tmp_path, tmp_path_factory, capsys):
    base, _ = tiny_run("gpt", tmp_path_factory)
    fresh = tmp_path / "fresh"
    assert "--init is required" in _error(tmp_path_factory, fresh, init="")
    assert "is not a folder" in _error(tmp_path_factory, fresh, init=str(tmp_path / "nowhere"))
    assert "'attn/q' matches no kernel; available: blocks/layer_*/block/attn/proj" in _error(
        tmp_path_factory, fresh, init=base, **{"lora.targets": "attn/q"})
    text = tmp_path / "capitals.txt"
    text.write_text("THE QUICK BROWN FOX " * 200)
    assert "outside the tokenizer's alphabet" in _error(tmp_path_factory, fresh, init=base, data=str(text))
    assert "seq_len=99 must be in [1, 16]" in _error(tmp_path_factory, fresh, init=base, seq_len="99")
    assert not fresh.exists()
    # the architecture comes from --init: a model key on the command line is refused
    with pytest.raises(SystemExit) as e:
        config_lib.parse_args(gpt_finetune.Config(), ["--workdir", str(fresh), "--model.n_layer", "3"],
                              derived=gpt_finetune.Config.DERIVED)
    assert e.value.code == 2 and "model.n_layer is taken from the data" in capsys.readouterr().err


def test_resuming_from_other_weights_is_refused(lora_run, tmp_path, tmp_path_factory):
    base, run = lora_run
    before = {name: os.path.getmtime(run / name) for name in os.listdir(run)}
    record = json.loads((run / "config.json").read_text())
    # another base of the same architecture and tokenizer (fresh weights)
    base_cfg = config_lib.from_dict(gpt_text.Config, config_lib.load(base)["config"])
    other = save_untrained_run(str(tmp_path / "other"), base_cfg, "gpt_text", transformer)
    shutil.copy(os.path.join(base, "tokenizer.json"), other)
    with pytest.raises(ConfigError, match="fine-tuned from other weights") as e:
        _finetune(run, other, tmp_path_factory, **{"train.steps": "4"})
    assert "\n" not in str(e.value)
    assert {name: os.path.getmtime(run / name) for name in os.listdir(run)} == before
    assert json.loads((run / "config.json").read_text()) == record
    # a LoRA workdir is not an init, its merged model is
    with pytest.raises(ConfigError, match="holds LoRA adapters, not a model: use --init .*merged"):
        _finetune(tmp_path / "again", str(run), tmp_path_factory)


def test_memory_benchmark_on_a_tiny_model():
    from benchmarks import lora_memory

    cfg = dataclasses.replace(CFG, n_layer=1)
    full, small = (lora_memory.measure(name, cfg, c, 2, 8) for name, c in (("full", None), ("lora", ALL)))
    assert full["frozen_bytes"] == 0 and small["frozen_bytes"] == full["trained_bytes"]
    assert small["optimizer_bytes"] < full["optimizer_bytes"] / 2
    assert small["trained_params"] < full["trained_params"]
    assert full["argument_size_in_bytes"] >= full["trained_bytes"] + full["optimizer_bytes"]
