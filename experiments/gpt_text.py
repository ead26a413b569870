"""GPT on text: nanoGPT's CPU character model trained on Python's own documentation (or any text).

    python experiments/gpt_text.py --workdir runs/gpt_text
    python experiments/gpt_text.py --workdir runs/shakespeare --data input.txt
    python -m genjax.sample runs/gpt_text --prompt "The return statement" --length 300

Default: 4 layers, 4 heads, 128 dims, context 64 (0.8M params), batch 12, AdamW (beta2 0.99, weight decay
0.1) with 100 warmup steps and cosine decay to 1e-4, global-norm clipping at 1.0, 2000 steps. The corpus
is pydoc_data's English docs (~465k characters, shipped with Python), split 90/10 into
train/validation by position. Logs validation loss, perplexity and bits per character, and a text
sample every train.sample_every steps (also written to samples/). --data takes a UTF-8 file or folder,
or tfds:tiny_shakespeare; --tokenizer bpe trains a byte-level BPE instead. Measured results: README.md.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import ClassVar, Literal

import jax
import numpy as np

from genjax import data as data_lib
from genjax import experiment, log, loop, metrics, train
from genjax.config import ConfigError
from genjax.data import text as text_data
from genjax.models import transformer


@dataclasses.dataclass(frozen=True)
class Config:
    DERIVED: ClassVar[tuple[str, ...]] = ("model.vocab_size",)
    RESUMABLE: ClassVar[tuple[str, ...]] = ("eval_blocks", "eval_batch", "prompt", "sample")

    data: str = "python-docs"  # 'python-docs', a UTF-8 file or folder, or 'tfds:NAME[:SPLIT]'
    data_dir: str = ""  # tfds data_dir ('' = tfds default)
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = 1024  # BPE only; the char tokenizer takes the corpus's alphabet
    val_fraction: float = 0.1
    eval_blocks: int = 512  # validation blocks of block_size tokens scored at each eval (0 = all)
    eval_batch: int = 128
    prompt: str = ""  # sample prompt ('' = the tokenizer's first symbol)
    sample: transformer.SampleOptions = transformer.SampleOptions(length=256, temperature=0.8)
    train: train.TrainConfig = train.TrainConfig(
        steps=2000, batch_size=12, lr=1e-3, schedule="cosine", warmup_steps=100, weight_decay=0.1,
        b2=0.99, grad_clip=1.0, log_every=100, eval_every=500, sample_every=500, ckpt_every=1000,
    )
    model: transformer.Config = transformer.SIZES["nanogpt-cpu"]


def train_and_evaluate(config: Config, workdir: str) -> dict:
    timer = experiment.Timer()
    experiment.check_workdir(config, workdir, experiment="gpt_text")  # before the data touches the workdir
    corpus = text_data.load_corpus(config.data, config.data_dir or None)
    fresh = not os.path.exists(os.path.join(workdir, "data"))
    data = text_data.prepare(corpus, workdir, config.tokenizer, config.vocab_size, config.val_fraction)
    tok = data.tokenizer
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=tok.vocab_size))
    seq_len = config.model.block_size
    try:  # checks that need the tokens: a refused fresh run takes its prepared data away again
        data_lib.check_batch_fits(config.train.batch_size, len(data.train) - seq_len, "training windows")
        sample_options = dataclasses.replace(config.sample, prompt=text_data.encode_prompt(tok, config.prompt),
                                             stop_token=-1 if tok.eos_id is None else tok.eos_id)
        sample_options.validate(config.model)
        run = experiment.setup(config, workdir, experiment="gpt_text", family="transformer",
                               keys=("init", "state", "sample"))
    except ConfigError:
        if fresh:
            text_data.remove_prepared(workdir)
        raise
    model_cfg, keys = config.model, run.keys
    log.note(f"{len(corpus):,} characters -> {len(data.train):,} train / {len(data.val):,} val tokens "
             f"({config.tokenizer}, vocab {tok.vocab_size})")

    # ---- state and step
    tx = train.make_optimizer(config.train)
    state = train.init_state(keys["state"], transformer.init(keys["init"], model_cfg), tx,
                             ema=config.train.ema_decay > 0)
    step = train.step_for(functools.partial(transformer.loss, cfg=model_cfg), config.train, tx)

    # ---- evaluation: summed NLL over fixed validation blocks, in batches of eval_batch rows
    blocks = text_data.eval_blocks(data.val, seq_len, config.eval_blocks or None)
    held_out = {"tokens": blocks}
    score = jax.jit(functools.partial(transformer.evaluate, cfg=model_cfg))

    @experiment.per_step
    def eval_hook(state):
        means = experiment.evaluate_batches(score, state.eval_params,
                                            experiment.chunks(held_out, config.eval_batch), keys["sample"])
        return {"loss": means["nll"], "perplexity": metrics.perplexity(means["nll"]), "accuracy": means["correct"],
                "bits_per_char": metrics.bits_per_char(means["nll"], data.chars_per_token)}

    def sample_text(state, seed: int) -> str:
        new = np.asarray(transformer.sample(state.eval_params, jax.random.fold_in(keys["sample"], seed), 1, model_cfg,
                                            sample_options))[0]
        return config.prompt + tok.decode(new[(new >= 0) & (new != sample_options.stop_token)])

    def write_sample(state, name: str | None = None, seed: int | None = None) -> None:
        step_no = int(jax.device_get(state.step))
        text = sample_text(state, seed=step_no if seed is None else seed)
        if jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
            with open(os.path.join(workdir, "samples", name or f"text_{step_no:06d}.txt"), "w", encoding="utf-8") as f:
                f.write(text)
            print(f"\n---- sample at step {step_no} ----\n{text}\n----", flush=True)

    hooks = (loop.Hook(config.train.eval_every, eval_hook),
             loop.Hook(config.train.sample_every, write_sample, split="samples"))

    def batches_from(start):
        return text_data.text_batches(data.train, config.train.batch_size, seq_len, config.train.seed, start)

    # ---- train
    train_start = experiment.Timer()
    state = loop.run(state=state, step_fn=step, batches_from=batches_from, mesh=run.mesh, cfg=config.train,
                     workdir=workdir, hooks=hooks, model_rules=transformer.MODEL_RULES)
    train_seconds = train_start.seconds()

    # ---- final evaluation and a sample
    log.note("final evaluation")
    summary = {
        **{f"val_{k}": v for k, v in eval_hook(state).items()},
        "params": transformer.num_params(state.params), "vocab_size": tok.vocab_size,
        "wall_seconds": timer.seconds(), "train_seconds": train_seconds,
        "steps": int(state.step), "devices": int(run.mesh.devices.size),
    }
    write_sample(state, "final.txt", seed=config.train.steps + 1)  # another draw than the last hook's
    experiment.write_summary(workdir, summary)
    return summary


if __name__ == "__main__":
    experiment.main(Config(), train_and_evaluate, __doc__)
