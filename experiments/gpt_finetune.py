"""Fine-tuning a trained GPT on text: LoRA adapters (default) or every weight (--lora.rank 0).

    python experiments/gpt_text.py --workdir runs/gpt_text                  # a base model to start from
    python experiments/gpt_finetune.py --workdir runs/ft --init runs/gpt_text --data notes.txt
    python experiments/gpt_finetune.py --workdir runs/ft0 --init runs/gpt_text --lora.rank 0 --train.lr 3e-4
    python experiments/gpt_finetune.py --workdir runs/ft_gpt2 --init hf/gpt2 --seq_len 128 --data notes.txt
    python -m genjax.sample runs/ft/merged --prompt "The return statement" --length 300

--init is a genjax transformer run (its config.json, tokenizer.json and newest checkpoint, EMA weights
where it kept them) or a Hugging Face GPT-2 / Llama folder (read by genjax.models.hf). --data (a UTF-8
file or folder, 'python-docs' or 'tfds:NAME[:SPLIT]') is tokenized with the init's tokenizer and split
90/10 into train/validation by position. The architecture is the init's: model.* keys other than the
compute settings (dropout, dtype, attention, remat, pad_vocab_to) are refused; --seq_len trains and
evaluates on windows shorter than the model's context.

LoRA: rank 8, alpha 16, on the attention projections (--lora.targets attn/qkv,attn/proj,mlp/fc,mlp/proj
adapts every kernel); only the adapters are trained and in the optimizer state. The frozen base's
SHA-256 (weights and architecture) and the text's are recorded in config.json; resuming with another
--init or other text is refused. Logs held-out loss and bits per character every train.eval_every steps;
at the end writes the loss before vs after, a sample, and the merged model as a genjax run in
WORKDIR/merged (sample it, or --init a further fine-tune from it); --hf_out DIR also exports it as a
Hugging Face folder (genjax.models.hf.save_pretrained).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import ClassVar

import jax
import numpy as np

from genjax import checkpoint, experiment, log, lora, loop, metrics, sample as sample_lib, train
from genjax import config as config_lib
from genjax import data as data_lib
from genjax.config import ConfigError
from genjax.data import text as text_data
from genjax.models import hf, transformer

# Compute settings a fine-tune may choose; every other model.* key is the init's architecture.
TUNABLE = tuple(k for k in ("dropout", "dtype", "attention", "remat", "pad_vocab_to")
                if k in {f.name for f in dataclasses.fields(transformer.Config)})
MERGED = "merged"  # WORKDIR/merged: the fine-tuned model as a plain transformer run


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = ("init_sha256", "data_sha256", *(
        f"model.{f.name}" for f in dataclasses.fields(transformer.Config) if f.name not in TUNABLE))
    RESUMABLE: ClassVar[tuple[str, ...]] = ("init", "eval_blocks", "eval_batch", "prompt", "hf_out", *(
        f"sample.{f.name}" for f in dataclasses.fields(transformer.SampleOptions)))

    init: str = ""  # a genjax transformer workdir or a Hugging Face model folder (required)
    data: str = "python-docs"  # 'python-docs', a UTF-8 file or folder, or 'tfds:NAME[:SPLIT]'
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    val_fraction: float = 0.1
    seq_len: int = 0  # training and evaluation window in tokens (0: the model's block_size)
    eval_blocks: int = 256  # validation blocks scored at each eval (0 = all)
    eval_batch: int = 64
    prompt: str = ""  # sample prompt ('' = the tokenizer's first symbol)
    hf_out: str = ""  # also export the merged model to this folder as a Hugging Face checkpoint
    init_sha256: str = ""  # set from --init: its weights and architecture
    data_sha256: str = ""  # set from --data: its text
    sample: transformer.SampleOptions = transformer.SampleOptions(length=256, temperature=0.8)
    lora: lora.LoraConfig = lora.LoraConfig()
    train: train.TrainConfig = train.TrainConfig(
        steps=500, batch_size=12, lr=1e-3, schedule="cosine", warmup_steps=50, b2=0.99, grad_clip=1.0,
        log_every=50, eval_every=250, sample_every=250, ckpt_every=500,
    )
    model: transformer.Config = transformer.Config()  # the architecture comes from --init (see TUNABLE)


# ----------------------------------------------------------------------------- the init and the data


def load_init(path: str):
    """(params, model config, tokenizer) of a genjax transformer workdir or a Hugging Face folder."""
    if not os.path.isdir(path):
        raise ConfigError(f"--init {path} is not a folder: give a genjax transformer workdir (e.g. "
                          "runs/gpt_text) or a Hugging Face model folder")
    if hf.is_checkpoint_dir(path):
        params, cfg, tok = hf.load_pretrained(path)
        if tok is None:
            raise ConfigError(f"--init {path} has no tokenizer (tokenizer.json, or vocab.json + merges.txt); "
                              "fine-tuning on text needs the model's own")
        return params, cfg, tok
    record = config_lib.load(path) if os.path.exists(os.path.join(path, "config.json")) else {}
    if "experiment" not in record:
        raise ConfigError(f"--init {path} is neither a genjax workdir nor a Hugging Face checkpoint (no "
                          "config.json naming an experiment or a model_type)")
    if record.get("family") != "transformer":
        raise ConfigError(f"--init {path} is a {record['experiment']} run of the {record.get('family')} "
                          "family; fine-tuning needs a transformer run (gpt_text, gpt_finetune)")
    if record["experiment"] == "gpt_finetune" and record["config"]["lora"]["rank"] > 0:
        raise ConfigError(f"--init {path} holds LoRA adapters, not a model: use --init "
                          f"{os.path.join(path, MERGED)} (its merged model)")
    _, model_cfg, params, _ = sample_lib.load_run(path)  # the EMA weights where the run kept them
    return params, model_cfg, text_data.load_tokenizer(path)


def fingerprint(params, cfg: transformer.Config) -> str:
    """SHA-256 of the architecture (the config without its compute settings) and every weight's bytes."""
    arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in TUNABLE}
    return checkpoint.fingerprint(params, arch)


def tokenize(text: str, tok, config: Config) -> tuple[np.ndarray, np.ndarray, float]:
    """(train ids, validation ids, validation characters per token): the last val_fraction is validation."""
    if not 0.0 < config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction={config.val_fraction} must be in (0, 1)")
    cut = int(len(text) * (1.0 - config.val_fraction))
    try:
        ids = [np.asarray(tok.encode(part), np.int32) for part in (text[:cut], text[cut:])]
    except ConfigError as e:
        raise ConfigError(f"--data {config.data}: {str(e).split(';')[0]}; fine-tuning keeps the tokenizer of "
                          f"--init {config.init}, so use text it can encode") from None
    return ids[0], ids[1], (len(text) - cut) / max(len(ids[1]), 1)


def check_same_base(config: Config, workdir: str) -> None:
    """Refuses resuming a run with another base model or other text (their fingerprints differ)."""
    path = os.path.join(workdir, "config.json")
    ckpts = os.path.join(workdir, "checkpoints")
    if not (os.path.exists(path) and os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))):
        return
    record = config_lib.load(workdir)
    if record.get("experiment") != "gpt_finetune":
        return  # experiment.setup refuses it, naming the experiment
    for key, what in (("init_sha256", f"--init {config.init}"), ("data_sha256", f"--data {config.data}")):
        saved = record["config"].get(key)
        if saved != getattr(config, key):
            other = "weights" if key == "init_sha256" else "text"
            raise ConfigError(f"--workdir {workdir} was fine-tuned from other {other} (sha256 "
                              f"{str(saved)[:12]}) than {what} (sha256 {getattr(config, key)[:12]}); pass "
                              "the same one or use a fresh --workdir (nothing was changed)")


def save_merged(params, state, config: Config, tok, workdir: str) -> str:
    """WORKDIR/merged: config.json, tokenizer.json and one checkpoint of the merged weights, a transformer
    run that `python -m genjax.sample` samples and --init reads."""
    out = os.path.join(workdir, MERGED)
    experiment.claim(config, out, experiment="gpt_finetune.merged", family="transformer")
    if jax.process_index() == 0:
        text_data.save_tokenizer(tok, out)
    saver = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), keep=1)
    try:
        saver.save(train.TrainState(step=state.step, params=params, opt_state=(), key=state.key), wait=True)
    finally:
        saver.close()
    return out


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    config.lora.validate()
    if not config.init:
        raise ConfigError("--init is required: a genjax transformer workdir (e.g. runs/gpt_text) or a "
                          "Hugging Face model folder")
    if os.path.abspath(config.init) == os.path.abspath(workdir):
        raise ConfigError(f"--init and --workdir are both {workdir}: fine-tune into a fresh --workdir")
    base, init_cfg, tok = load_init(config.init)
    model_cfg = dataclasses.replace(init_cfg, **{k: getattr(config.model, k) for k in TUNABLE})
    model_cfg.validate()
    seq_len = config.seq_len or model_cfg.block_size
    if not 1 <= seq_len <= model_cfg.block_size:
        raise ConfigError(f"seq_len={config.seq_len} must be in [1, {model_cfg.block_size}] (the model's "
                          "context; 0: all of it)")
    if config.lora.rank:
        config.lora.validate_for(base)  # the targets against the init's kernels
    corpus = text_data.load_corpus(config.data, config.data_dir or None)
    train_ids, val_ids, chars_per_token = tokenize(corpus, tok, config)
    config = dataclasses.replace(config, model=model_cfg, init_sha256=fingerprint(base, init_cfg),
                                 data_sha256=hashlib.sha256(corpus.encode("utf-8")).hexdigest())
    check_same_base(config, workdir)
    data_lib.check_batch_fits(config.train.batch_size, len(train_ids) - seq_len, "training windows")
    blocks = text_data.eval_blocks(val_ids, seq_len, config.eval_blocks or None)
    sample_options = dataclasses.replace(config.sample, prompt=text_data.encode_prompt(tok, config.prompt),
                                         stop_token=-1 if tok.eos_id is None else tok.eos_id)
    sample_options.validate(model_cfg)
    run = experiment.setup(config, workdir, experiment="gpt_finetune", family="transformer",
                           keys=("lora", "state", "sample"))
    if jax.process_index() == 0:
        text_data.save_tokenizer(tok, workdir)
    keys, rank = run.keys, config.lora.rank
    kernels = len(lora.select(base, config.lora.targets)) if rank else 0
    how = f"rank-{rank} LoRA of {kernels} kernels" if rank else "every weight"
    log.note(f"--init {config.init}: {transformer.num_params(base):,} params; {len(corpus):,} characters -> "
             f"{len(train_ids):,} train / {len(val_ids):,} val tokens; training {how}")

    # ---- state and step: adapters over a frozen base (LoRA), or every weight
    tx = train.make_optimizer(config.train)
    ema = config.train.ema_decay > 0
    loss_fn = functools.partial(transformer.loss, cfg=model_cfg)
    if rank:
        adapters = lora.init_adapters(keys["lora"], base, config.lora)
        state = lora.init_state(keys["state"], base, adapters, tx, ema)
        step = lora.step_for(loss_fn, config.lora, config.train, tx)
        rules = lora.model_rules(transformer.MODEL_RULES)
        merge = jax.jit(functools.partial(lora.merge, cfg=config.lora))
        full = lambda s: merge(s.base, s.eval_params)  # noqa: E731
    else:
        state = train.init_state(keys["state"], base, tx, ema)
        step = train.step_for(loss_fn, config.train, tx)
        rules, full = transformer.MODEL_RULES, lambda s: s.eval_params  # noqa: E731

    # ---- evaluation: summed NLL over fixed validation blocks, in batches of eval_batch rows
    score = jax.jit(functools.partial(transformer.evaluate, cfg=model_cfg))

    def evaluate(params) -> dict:
        batches = experiment.chunks({"tokens": blocks}, config.eval_batch)
        means = experiment.evaluate_batches(score, params, batches, keys["sample"])
        nll = means["nll"]
        return {"loss": nll, "perplexity": metrics.perplexity(nll), "accuracy": means["correct"],
                "bits_per_char": metrics.bits_per_char(nll, chars_per_token)}

    def write_sample(state, name: str | None = None, seed: int | None = None) -> None:
        step_no = int(jax.device_get(state.step))
        key = jax.random.fold_in(keys["sample"], step_no if seed is None else seed)
        new = np.asarray(transformer.sample(full(state), key, 1, model_cfg, sample_options))[0]
        text = config.prompt + tok.decode(new[(new >= 0) & (new != sample_options.stop_token)])
        if jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
            path = os.path.join(workdir, "samples", name or f"text_{step_no:06d}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"\n---- sample at step {step_no} ----\n{text}\n----", flush=True)

    before = evaluate(base)  # the init itself on this text
    log.note(f"held-out loss of --init: {before['loss']:.4f} ({before['bits_per_char']:.3f} bits/char)")
    hooks = (loop.Hook(config.train.eval_every, lambda s: evaluate(full(s))),
             loop.Hook(config.train.sample_every, write_sample, split="samples"))

    def batches_from(start):
        return text_data.text_batches(train_ids, config.train.batch_size, seq_len, config.train.seed, start)

    # ---- train
    train_start = experiment.Timer()
    state = loop.run(state=state, step_fn=step, batches_from=batches_from, mesh=run.mesh, cfg=config.train,
                     workdir=workdir, hooks=hooks, model_rules=rules)
    train_seconds = train_start.seconds()

    # ---- final evaluation, a sample, the merged model
    log.note("final evaluation")
    merged = full(state)
    after = evaluate(merged)
    write_sample(state, "final.txt", seed=config.train.steps + 1)
    out = save_merged(merged, state, config, tok, workdir)
    if config.hf_out:
        from genjax.models import hf

        hf.save_pretrained(jax.device_get(merged), model_cfg, tok, config.hf_out)
    summary = {
        **{f"val_{k}_before": v for k, v in before.items()}, **{f"val_{k}": v for k, v in after.items()},
        "params": transformer.num_params(merged), "trained_params": transformer.num_params(state.params),
        "lora_rank": rank, "merged": out, "wall_seconds": timer.seconds(), "train_seconds": train_seconds,
        "steps": int(state.step), "devices": int(run.mesh.devices.size),
    }
    experiment.write_summary(workdir, summary)
    return summary


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
