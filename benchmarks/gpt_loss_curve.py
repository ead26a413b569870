"""GPT validation-loss curves of genjax and the PyTorch reference from the same weights on the same
batches with the same update (experiments/gpt_text.py's defaults: batches, validation blocks, init key,
optimizer; no dropout), in one process on one core, alternating in chunks, after checking that both score
the same at the start and that torch_ref's schedule is genjax's. --control adds genjax from seed 1: the
run-to-run spread. Writes results/gpt_loss_curve.{json,md}.

    python -m benchmarks.gpt_loss_curve --control   # 2000 iterations each: ~9 min on 1 idle core
    python -m benchmarks.gpt_loss_curve --steps 200 --out /tmp/smoke    # smoke run (~1 min)
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from benchmarks import cases, report, timing, torch_ref
from experiments import gpt_text
from genjax import metrics, train
from genjax.data import text as text_data
from genjax.models import transformer

INIT_LOSS_TOL, EVAL_EVERY, NAMES = 1e-5, 100, ("genjax", "torch", "control")


@dataclasses.dataclass
class Run:
    """One implementation trained on gpt_text's batches (`batch(step)`)."""

    batch: Callable  # step -> int tokens (B, T + 1)
    step: Callable  # int tokens (B, T + 1) -> the step's loss
    score: Callable  # int tokens (B, T + 1) -> summed next-token NLL
    weights: Callable  # -> genjax's params, or the torch model
    steps: int = 0

    def train(self, k: int) -> list[float]:
        losses = [self.step(self.batch(self.steps + i)) for i in range(k)]
        self.steps += k
        return [float(x) for x in jax.device_get(losses)]


def batches(tokens, cfg, tcfg) -> Callable:
    return lambda step: text_data.block_batch(tokens, step, tcfg.batch_size, cfg.block_size, tcfg.seed)


def genjax_run(cfg, tcfg, tokens) -> Run:
    """gpt_text's initial state for tcfg.seed (its init and state keys) and compiled step."""
    keys = tuple(jax.random.split(jax.random.key(tcfg.seed), 3)[:2])
    held = {"state": cases.init_state("transformer", cfg, tcfg, keys)}
    step = jax.jit(cases.train_step("transformer", cfg, tcfg), donate_argnums=0)
    nll = jax.jit(lambda params, tokens: transformer.evaluate(params, {"tokens": tokens}, None, cfg)["nll"])

    def train_step(batch):
        held["state"], metrics = step(held["state"], {"tokens": jnp.asarray(batch)})
        return metrics["loss"]

    return Run(batches(tokens, cfg, tcfg), train_step, lambda b: float(nll(held["state"].params, b)),
               lambda: held["state"].params)


def torch_run(params, cfg, tcfg, tokens) -> Run:
    """The torch GPT holding `params`, trained with genjax's update."""
    model = torch_ref.GPT(cfg, params)
    step = torch_ref.make_trainer(model, torch_ref.gpt_loss, tcfg)
    as_torch = lambda b: torch.from_numpy(b.astype(np.int64))  # noqa: E731
    score = torch.no_grad()(lambda b: float(torch_ref.gpt_loss(model, as_torch(b), reduction="sum")))
    return Run(batches(tokens, cfg, tcfg), lambda b: step(as_torch(b)), score, lambda: model)


def check_schedule(tcfg, steps=None) -> list[tuple]:
    """[(step, genjax's rate, torch_ref.lr_at)] at a few steps; raises where they differ. genjax's rate is
    read off its optimizer: with zero gradients, AdamW moves a (decayed, 2-d) parameter p = 1 by
    -lr * weight_decay."""
    if tcfg.weight_decay <= 0:
        raise ValueError("check_schedule probes the rate through the weight decay; it needs weight_decay > 0")
    w, n, tx, p = tcfg.warmup_steps, tcfg.steps, train.make_optimizer(tcfg), {"w": jnp.ones((1, 1))}
    update = lambda s: tx.update({"w": jnp.zeros((1, 1))}, optax.tree_utils.tree_set(tx.init(p), count=s), p)  # noqa
    rate = jax.jit(lambda s: -update(s)[0]["w"][0, 0] / tcfg.weight_decay)
    rows = []
    for s in steps or sorted({0, 1, w // 2, max(w - 1, 0), w, w + 1, (w + n) // 2, n - 1, n, n + 100}):
        g, t = float(rate(jnp.int32(s))), torch_ref.lr_at(s, tcfg.lr, w, n)
        if abs(g - t) > 1e-6 * tcfg.lr + 1e-5 * abs(t):
            raise AssertionError(f"learning rate at step {s}: genjax {g:.9g} vs torch_ref {t:.9g}")
        rows.append((s, g, t))
    return rows


def curves(runs: dict[str, Run], val: Callable, vals: dict, steps: int) -> tuple:
    """Trains every run to `steps` in chunks of EVAL_EVERY, scoring all after each chunk (`vals`: the
    initial scores): (rows of the table, each step's training loss per run, wall seconds per run and eval)."""
    rows = [{"iter": 0, **{f"{n}_val": vals.get(n) for n in NAMES}, "genjax_train": None, "torch_train": None,
             "max_abs_train_diff": 0.0}]
    losses, seconds = {name: [] for name in runs}, {"genjax": 0.0, "torch": 0.0, "control": 0.0, "eval": 0.0}
    while runs["genjax"].steps < steps:
        k = min(EVAL_EVERY, steps - runs["genjax"].steps)
        for name, r in runs.items():
            chunk, s = timing.once(lambda: r.train(k))
            losses[name], seconds[name] = losses[name] + chunk, seconds[name] + s
        vals, s = timing.once(lambda: {name: val(r) for name, r in runs.items()})
        seconds["eval"] += s
        gl, tl = losses["genjax"][-k:], losses["torch"][-k:]
        rows.append(r := {"iter": runs["genjax"].steps, **{f"{n}_val": vals.get(n) for n in NAMES},
                          "genjax_train": float(np.mean(gl)), "torch_train": float(np.mean(tl)),
                          "max_abs_train_diff": float(np.max(np.abs(np.subtract(gl, tl))))})
        print(f"iter {r['iter']:5d}  val genjax {r['genjax_val']:.4f} torch {r['torch_val']:.4f}  train "
              f"genjax {r['genjax_train']:.4f} torch {r['torch_train']:.4f}", flush=True)
    return rows, losses, seconds


def run(steps: int, workdir: str, control: bool) -> dict:
    exp = gpt_text.Config()
    tcfg = dataclasses.replace(exp.train, steps=steps)
    corpus = text_data.load_corpus(exp.data, exp.data_dir or None)
    data = text_data.prepare(corpus, workdir, exp.tokenizer, exp.vocab_size, exp.val_fraction)
    cfg = dataclasses.replace(exp.model, vocab_size=data.tokenizer.vocab_size)
    if cfg.dropout != 0.0:
        raise ValueError("the curves can match step for step only without dropout")
    runs = {"genjax": genjax_run(cfg, tcfg, data.train)}
    runs["torch"] = torch_run(runs["genjax"].weights(), cfg, tcfg, data.train)
    if control:
        runs["control"] = genjax_run(cfg, dataclasses.replace(tcfg, seed=tcfg.seed + 1), data.train)
    blocks = text_data.eval_blocks(data.val, cfg.block_size, exp.eval_blocks or None)
    count, n_params = blocks.shape[0] * cfg.block_size, transformer.num_params(runs["genjax"].weights())
    chunks = [blocks[i:i + exp.eval_batch] for i in range(0, len(blocks), exp.eval_batch)]
    val = lambda r: sum(r.score(chunk) for chunk in chunks) / count  # noqa: E731
    print(f"{len(corpus):,} chars -> {len(data.train):,} train / {len(data.val):,} val tokens, vocab "
          f"{data.tokenizer.vocab_size}; {n_params:,} params; val set {count:,} tokens", flush=True)
    schedule, first = check_schedule(tcfg), runs["genjax"].batch(0)
    g0, t0 = (runs[name].score(first) / first[:, 1:].size for name in ("genjax", "torch"))
    vals = {name: val(r) for name, r in runs.items()}
    if abs(g0 - t0) > INIT_LOSS_TOL or abs(vals["genjax"] - vals["torch"]) > INIT_LOSS_TOL:
        raise AssertionError(f"the torch copy scores differently: batch 0 {g0} vs {t0}, validation {vals}")
    rows, losses, seconds = curves(runs, val, vals, steps)
    late, last = [r for r in rows if r["iter"] >= min(500, steps)], rows[-1]
    summary = {
        "max_abs_val_diff_from_500": max(abs(r["genjax_val"] - r["torch_val"]) for r in late),
        "mean_val_diff_from_500": float(np.mean([r["genjax_val"] - r["torch_val"] for r in late])),
        "final": {n: {"val_loss": v, "bits_per_char": metrics.bits_per_char(v, data.chars_per_token),
                      "perplexity": metrics.perplexity(v)} for n in runs for v in [last[f"{n}_val"]]},
        "first_step_losses": {"genjax": losses["genjax"][:5], "torch": losses["torch"][:5]},
        "max_param_diff_final": torch_ref.max_param_diff(runs["genjax"].weights(), runs["torch"].weights()),
    }
    if control:
        spread = max(abs(r["genjax_val"] - r["control_val"]) for r in late)
        summary["max_abs_control_val_diff_from_500"] = spread
    return {
        "environment": {"python": platform.python_version(), **report.versions(("jax", "torch", "optax")),
                        "machine": platform.processor() or platform.machine(), "cores_used": 1,
                        "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
        "setup": {"model": dataclasses.asdict(cfg), "train": dataclasses.asdict(tcfg), "params": n_params,
                  "vocab_size": data.tokenizer.vocab_size, "train_tokens": int(len(data.train)),
                  "val_tokens_scored": count, "eval_every": EVAL_EVERY,
                  "batches": "text_data.block_batch(train, step, batch, 64, seed)",
                  "control": "genjax from seed 1 (other init and batches)" if control else None},
        "checks": {"initial_loss_batch0": {"genjax": g0, "torch": t0, "abs_diff": abs(g0 - t0)},
                   "initial_val_loss": {"genjax": rows[0]["genjax_val"], "torch": rows[0]["torch_val"]},
                   "schedule": [{"step": s, "genjax": g, "torch": t} for s, g, t in schedule]},
        "rows": rows, "summary": summary, "seconds": seconds, "train_losses": losses,
    }


def markdown(res: dict) -> str:
    s, env, setup, ck, sec = res["summary"], res["environment"], res["setup"], res["checks"], res["seconds"]
    tc, control, b0 = setup["train"], setup["control"] is not None, res["checks"]["initial_loss_batch0"]
    f = lambda key, spec=".4f": lambda r: "" if r[key] is None else format(r[key], spec)  # noqa: E731
    columns = {"iteration": "{iter}", "genjax val": f("genjax_val"), "torch val": f("torch_val"),
               "difference": lambda r: format(r["genjax_val"] - r["torch_val"], "+.1e"),
               **({"control val": f("control_val")} if control else {}), "genjax train": f("genjax_train"),
               "torch train": f("torch_train"), "max per-step train diff": f("max_abs_train_diff", ".1e")}
    finals = "; ".join(f"{name} {v['val_loss']:.4f} nats/char ({v['bits_per_char']:.3f} bits/char, "
                       f"perplexity {v['perplexity']:.2f})" for name, v in s["final"].items())
    spread = (" Run-to-run spread for scale: max |genjax seed 0 - genjax seed 1| over the same iterations "
              f"{s['max_abs_control_val_diff_from_500']:.4f}." if control else "")
    return "\n".join([
        "# GPT loss curves: genjax vs PyTorch (nanoGPT CPU config)", "",
        f"jax {env['jax']}, torch {env['torch']}, optax {env['optax']}; {env['date']}; one process on 1 core "
        f"(torch {env['torch_threads']} thread). `python -m benchmarks.gpt_loss_curve"
        + (" --control`." if control else "`."), "",
        "experiments/gpt_text.py defaults: python-docs corpus, char tokenizer (vocab "
        f"{setup['vocab_size']}), 4 layers, 4 heads, 128 dims, context 64, dropout 0, {setup['params']:,} "
        f"params; batch {tc['batch_size']}, AdamW lr {tc['lr']:g} (b1 {tc['b1']}, b2 {tc['b2']}, weight "
        f"decay {tc['weight_decay']}), warmup {tc['warmup_steps']} + cosine to {tc['lr'] * 0.1:g} at step "
        f"{tc['steps']}, clip {tc['grad_clip']}. Same initial weights (genjax init copied into torch), the "
        "same training batches (gpt_text's seeded block sampler), validation on gpt_text's fixed "
        f"{setup['val_tokens_scored']:,} validation tokens. Train = mean training loss of the preceding "
        f"{setup['eval_every']} iterations.", "",
        *report.table(res["rows"], columns), "",
        f"Max |genjax val - torch val| over iterations >= 500: **{s['max_abs_val_diff_from_500']:.1e}** nats "
        f"(mean signed difference {s['mean_val_diff_from_500']:+.1e}).{spread}", "",
        f"Final validation loss: {finals}.", "",
        f"Checks: initial loss on batch 0 genjax {b0['genjax']:.7f} vs torch {b0['torch']:.7f} (|diff| "
        f"{b0['abs_diff']:.1e}); learning rate of genjax's optimizer vs torch_ref.lr_at equal at steps "
        f"{', '.join(str(x['step']) for x in ck['schedule'])}. Per-step training losses on the same batches: "
        f"max |genjax - torch| over all {len(res['train_losses']['genjax'])} steps "
        f"{max(r['max_abs_train_diff'] for r in res['rows']):.1e}; max |genjax param - torch param| after "
        f"the last step {s['max_param_diff_final']:.1e} (float32 rounding: different summation orders in the "
        "two libraries' kernels).", "",
        f"Wall time: genjax {sec['genjax']:.0f} s, torch {sec['torch']:.0f} s"
        + (f", control {sec['control']:.0f} s" if control else "")
        + f", evaluation {sec['eval']:.0f} s.", ""])


def json_text(res: dict) -> str:
    """Indented, except the per-step training losses: one line per run, rounded to 1e-6."""
    body = json.dumps({k: v for k, v in res.items() if k != "train_losses"}, indent=1)
    losses = ",\n".join(f"  {json.dumps(k)}: {json.dumps([round(x, 6) for x in v])}"
                        for k, v in res["train_losses"].items())
    return body[:-2] + ',\n "train_losses": {\n' + losses + "\n }\n}\n"


def main(argv=None) -> None:
    p = report.parser("benchmarks.gpt_loss_curve", __doc__)
    p.add_argument("--steps", type=int, default=2000, help="iterations (also the schedule's length)")
    p.add_argument("--control", action="store_true", help="also train genjax from seed 1 (noise scale)")
    args = p.parse_args(argv)
    # One core, before JAX's CPU client and torch's pools start (they size themselves from the affinity).
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    jax.config.update("jax_platforms", "cpu")  # a CPU comparison, also on a machine with an accelerator
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.steps, tmp, args.control)
    base = report.write(args.out, "gpt_loss_curve", res, markdown(res), json_text=json_text(res))
    print(f"max |val diff| from iteration 500: {res['summary']['max_abs_val_diff_from_500']:.2e}; {base}")


if __name__ == "__main__":
    main()
