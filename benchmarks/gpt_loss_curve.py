"""GPT validation-loss curves, genjax vs the plain PyTorch reference, on the same data from the same weights.

    python benchmarks/gpt_loss_curve.py --control   # 2000 iterations each: ~9 min on 1 idle core
    python benchmarks/gpt_loss_curve.py             # without the control run: ~6 min
    python benchmarks/gpt_loss_curve.py --steps 200 --out /tmp/smoke    # smoke run (~1 min)

Result (2026-11-28, jax 0.10.2 / optax 0.2.8 vs torch 2.13.0 CPU, benchmarks/results/gpt_loss_curve.md):
the curves coincide. Validation losses at iterations 500..2000 differ by at most 1.2e-6 nats (float32
rounding), per-step training losses on the same batches by at most 5.2e-6 over all 2000 steps, and the
parameters by at most 1.1e-5 after the last step. Final validation loss: genjax 1.4878 nats/char
(2.146 bits/char), torch 1.4878. For scale, genjax from another seed (--control) ends at 1.5053 and
differs from the seed-0 run by up to 0.041 over the same iterations.

Setup: experiments/gpt_text.py's defaults. The default corpus (Python's docs) with the char tokenizer
and the 90/10 split of `text_data.prepare`; nanoGPT's CPU model (4 layers, 4 heads, 128 dims, context 64,
dropout 0, the gpt_text default); batch 12; AdamW (lr 1e-3, b1 0.9, b2 0.99, weight decay 0.1 on every
parameter), linear warmup over 100 steps then cosine to 1e-4 at the last step, global-norm clipping at 1.0.
  - the training batches are gpt_text's: `text_data.block_batch(train, step, 12, 64, seed=0)`, the same
    int arrays fed to both implementations;
  - genjax's params come from `transformer.init` with gpt_text's init key and are copied into
    `torch_gpt.GPT` (Dense kernels transposed into nn.Linear weights); the script asserts that the two
    give the same loss on the first batch (to 1e-5) and that torch_gpt's schedule matches the learning
    rate genjax's optimizer applies (probed through `train.make_optimizer`) at a few steps;
  - every 100 iterations both are scored on gpt_text's fixed validation set (its first 512 blocks of 64
    targets, 32,768 tokens) and the mean training loss of the last 100 iterations is recorded;
  - one process pinned to one core before JAX starts, torch.set_num_threads(1); the two alternate in
    chunks of 100 iterations.
`--control` adds a second genjax run from another seed (init and batch order): the run-to-run spread that
"within noise" is measured against. Writes benchmarks/results/gpt_loss_curve.{json,md} (and .png when
matplotlib is installed).
"""

from __future__ import annotations

import os
import sys


def _pin_before_jax(argv):
    """Pin this process to one core (before JAX and torch size their thread pools)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--core", type=int, default=-1)
    args, _ = parser.parse_known_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[args.core]})
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _pin_before_jax(sys.argv[1:])

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import torch_gpt  # noqa: E402
from experiments import gpt_text  # noqa: E402
from genjax import metrics, train  # noqa: E402
from genjax.data import text as text_data  # noqa: E402
from genjax.models import transformer as T  # noqa: E402

INIT_LOSS_TOL = 1e-5


# ----------------------------------------------------------------------------- weights


def torch_names(params, cfg: T.Config) -> dict:
    """torch_gpt.GPT parameter name -> (genjax array, transpose?) for the unrolled, tied, bias-free,
    learned-position, LayerNorm/GELU model that torch_gpt mirrors."""
    if (cfg.scan_layers or not cfg.tie_embeddings or cfg.bias or cfg.pos != "learned"
            or cfg.norm != "layernorm" or cfg.mlp != "gelu" or cfg.dtype != "float32"):
        raise ValueError(f"torch_gpt mirrors only the default transformer layout, not {cfg}")
    out = {"wte.weight": (params["wte"], False), "wpe.weight": (params["wpe"], False),
           "ln_f.weight": (params["ln_f"]["scale"], False)}
    for i in range(cfg.n_layer):
        b = params["blocks"][f"layer_{i}"]["block"]
        out.update({
            f"blocks.{i}.ln1.weight": (b["ln1"]["scale"], False),
            f"blocks.{i}.qkv.weight": (b["attn"]["qkv"]["kernel"], True),  # (in, 3d) -> (3d, in)
            f"blocks.{i}.attn_proj.weight": (b["attn"]["proj"]["kernel"], True),
            f"blocks.{i}.ln2.weight": (b["ln2"]["scale"], False),
            f"blocks.{i}.fc.weight": (b["mlp"]["fc"]["kernel"], True),
            f"blocks.{i}.mlp_proj.weight": (b["mlp"]["proj"]["kernel"], True),
        })
    return out


def torch_model_from(params, cfg: T.Config) -> torch_gpt.GPT:
    """A torch_gpt.GPT holding exactly genjax's `params` (float32 copies)."""
    model = torch_gpt.GPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.ff_width)
    mapping = torch_names(params, cfg)
    named = dict(model.named_parameters())
    if set(named) != set(mapping):
        raise AssertionError(f"parameter names differ: torch only {sorted(set(named) - set(mapping))}, "
                             f"genjax only {sorted(set(mapping) - set(named))}")
    if len(mapping) != len(jax.tree.leaves(params)):
        raise AssertionError("some genjax parameters have no torch counterpart")
    with torch.no_grad():
        for name, (value, transpose) in mapping.items():
            value = np.asarray(jax.device_get(value), np.float32)
            value = value.T if transpose else value
            if tuple(named[name].shape) != value.shape:
                raise AssertionError(f"{name}: torch {tuple(named[name].shape)} vs genjax {value.shape}")
            named[name].copy_(torch.from_numpy(np.array(value, np.float32)))
    return model


def max_param_diff(params, model: torch_gpt.GPT, cfg: T.Config) -> float:
    named = dict(model.named_parameters())
    diff = 0.0
    for name, (value, transpose) in torch_names(params, cfg).items():
        value = np.asarray(jax.device_get(value))
        value = value.T if transpose else value
        diff = max(diff, float(np.max(np.abs(named[name].detach().numpy() - value))))
    return diff


# ----------------------------------------------------------------------------- optimizer


def genjax_lrs(tcfg: train.TrainConfig, steps) -> list:
    """The learning rates `train.make_optimizer(tcfg)` applies at updates `steps` (0-based), read off the
    optimizer itself: with zero gradients the AdamW update of a parameter p = 1 is -lr * weight_decay."""
    if tcfg.weight_decay <= 0:
        raise ValueError("genjax_lrs probes the rate through the weight decay; it needs weight_decay > 0")
    tx = train.make_optimizer(tcfg)
    p = {"w": jnp.ones((), jnp.float32)}

    @jax.jit
    def lr(step):
        state = optax.tree_utils.tree_set(tx.init(p), count=step)
        updates, _ = tx.update({"w": jnp.zeros((), jnp.float32)}, state, p)
        return -updates["w"] / tcfg.weight_decay

    return [float(lr(jnp.asarray(s, jnp.int32))) for s in steps]


def check_schedule(tcfg: train.TrainConfig, steps=None) -> list:
    """Asserts torch_gpt.lr_at == genjax's applied rate at a few steps; returns [(step, genjax, torch)]."""
    if tcfg.schedule != "cosine":
        raise ValueError("torch_gpt implements only the warmup + cosine schedule")
    w, n = tcfg.warmup_steps, tcfg.steps
    steps = steps or sorted({0, 1, w // 2, max(w - 1, 0), w, w + 1, (w + n) // 2, n - 1, n, n + 100})
    rows = []
    for s, g in zip(steps, genjax_lrs(tcfg, steps)):
        t = torch_gpt.lr_at(s, tcfg.lr, w, n)
        if abs(g - t) > 1e-6 * tcfg.lr + 1e-5 * abs(t):
            raise AssertionError(f"learning rate at step {s}: genjax {g:.9g} vs torch_gpt {t:.9g}")
        rows.append((s, g, t))
    return rows


def torch_trainer(model, tcfg: train.TrainConfig):
    """torch_gpt.make_trainer with the TrainConfig's hyperparameters (checked to be the ones it supports)."""
    if tcfg.grad_accum != 1 or tcfg.ema_decay:
        raise ValueError("torch_gpt's trainer has no gradient accumulation or EMA")
    return torch_gpt.make_trainer(model, lr=tcfg.lr, warmup=tcfg.warmup_steps, steps=tcfg.steps,
                                  weight_decay=tcfg.weight_decay, b1=tcfg.b1, b2=tcfg.b2,
                                  grad_clip=tcfg.grad_clip)


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Pair:
    """genjax and torch, same weights, same optimizer; `train(k)` advances one of them k steps."""

    cfg: T.Config
    tcfg: train.TrainConfig
    train_tokens: np.ndarray
    state: train.TrainState
    gstep: object
    model: torch_gpt.GPT
    tstep: object
    step: dict  # {'genjax': n, 'torch': n}: updates applied

    def batch(self, step: int) -> np.ndarray:
        return text_data.block_batch(self.train_tokens, step, self.tcfg.batch_size, self.cfg.block_size,
                                     self.tcfg.seed)

    def train_genjax(self, k: int) -> list:
        losses = []
        for _ in range(k):
            self.state, m = self.gstep(self.state, {"tokens": jnp.asarray(self.batch(self.step["genjax"]))})
            losses.append(m["loss"])
            self.step["genjax"] += 1
        return [float(x) for x in jax.device_get(losses)]

    def train_torch(self, k: int) -> list:
        losses = []
        for _ in range(k):
            losses.append(self.tstep(torch.from_numpy(self.batch(self.step["torch"]).astype(np.int64))))
            self.step["torch"] += 1
        return losses


def genjax_state(model_cfg: T.Config, tcfg: train.TrainConfig, tx) -> train.TrainState:
    """gpt_text's initial state for tcfg.seed (its init and state keys)."""
    init_key, state_key, _ = jax.random.split(jax.random.key(tcfg.seed), 3)
    return train.init_state(state_key, T.init(init_key, model_cfg), tx)


def make_pair(data, model_cfg: T.Config, tcfg: train.TrainConfig) -> Pair:
    tx = train.make_optimizer(tcfg)
    state = genjax_state(model_cfg, tcfg, tx)
    params = state.params
    gstep = jax.jit(train.make_step(functools.partial(T.loss, cfg=model_cfg), tx), donate_argnums=0)
    model = torch_model_from(params, model_cfg)
    return Pair(model_cfg, tcfg, data.train, state, gstep, model, torch_trainer(model, tcfg),
                {"genjax": 0, "torch": 0})


def initial_losses(pair: Pair, tokens: np.ndarray) -> tuple:
    loss = jax.jit(functools.partial(T.loss, key=None, cfg=pair.cfg))
    g = float(loss(pair.state.params, {"tokens": jnp.asarray(tokens)})[0])
    with torch.no_grad():
        t = torch.from_numpy(tokens.astype(np.int64))
        _, loss = pair.model(t[:, :-1], t[:, 1:])
    return g, float(loss)


class Scorer:
    """Mean NLL per token over fixed validation blocks, for a genjax params tree or a torch model."""

    def __init__(self, val_tokens, cfg: T.Config, n_blocks: int, eval_batch: int):
        self.blocks = text_data.eval_blocks(val_tokens, cfg.block_size, n_blocks or None)
        self.eval_batch = eval_batch
        self.count = self.blocks.shape[0] * cfg.block_size
        self.score = jax.jit(functools.partial(T.evaluate, cfg=cfg))

    def batches(self):
        for lo in range(0, len(self.blocks), self.eval_batch):
            yield self.blocks[lo:lo + self.eval_batch]

    def genjax(self, params) -> float:
        sums = [self.score(params, {"tokens": jnp.asarray(b)})["nll_sum"] for b in self.batches()]
        return float(sum(float(s) for s in jax.device_get(sums))) / self.count

    def torch(self, model) -> float:
        total = 0.0
        with torch.no_grad():
            for b in self.batches():
                t = torch.from_numpy(b.astype(np.int64))
                logits, _ = model(t[:, :-1])
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1),
                                               reduction="sum"))
        return total / self.count


def load_data(workdir: str, exp: gpt_text.Config):
    """Exactly gpt_text's data: corpus, tokenizer, split (token files prepared in `workdir`)."""
    corpus = text_data.load_corpus(exp.data, exp.data_dir or None)
    data = text_data.prepare(corpus, workdir, exp.tokenizer, exp.vocab_size, exp.val_fraction)
    return corpus, data


# ----------------------------------------------------------------------------- the comparison


def run(steps: int, eval_every: int, workdir: str, control: bool) -> dict:
    exp = gpt_text.Config()
    tcfg = dataclasses.replace(exp.train, steps=steps)
    corpus, data = load_data(workdir, exp)
    model_cfg = dataclasses.replace(exp.model, vocab_size=data.tokenizer.vocab_size)
    model_cfg.validate()
    if model_cfg.dropout != 0.0:
        raise ValueError("the curves can match step for step only without dropout")
    pair = make_pair(data, model_cfg, tcfg)
    scorer = Scorer(data.val, model_cfg, exp.eval_blocks, exp.eval_batch)
    print(f"{len(corpus):,} chars -> {len(data.train):,} train / {len(data.val):,} val tokens, vocab "
          f"{data.tokenizer.vocab_size}; {T.num_params(pair.state.params):,} params; val set "
          f"{scorer.count:,} tokens; {steps} steps, eval every {eval_every}", flush=True)

    schedule = check_schedule(tcfg)
    g0, t0 = initial_losses(pair, pair.batch(0))
    print(f"initial loss on batch 0: genjax {g0:.7f} torch {t0:.7f} |diff| {abs(g0 - t0):.2e}", flush=True)
    assert abs(g0 - t0) < INIT_LOSS_TOL, (g0, t0)
    gv, tv = scorer.genjax(pair.state.params), scorer.torch(pair.model)
    assert abs(gv - tv) < INIT_LOSS_TOL, (gv, tv)

    ctrl = None
    if control:
        ctrl_cfg = dataclasses.replace(tcfg, seed=tcfg.seed + 1)
        ctrl = {"state": genjax_state(model_cfg, ctrl_cfg, train.make_optimizer(ctrl_cfg)), "step": 0,
                "cfg": ctrl_cfg}

    rows = [{"iter": 0, "genjax_val": gv, "torch_val": tv,
             "control_val": scorer.genjax(ctrl["state"].params) if control else None,
             "genjax_train": None, "torch_train": None, "max_abs_train_diff": 0.0}]
    train_losses = {"genjax": [], "torch": [], "control": []}
    seconds = {"genjax": 0.0, "torch": 0.0, "control": 0.0, "eval": 0.0}
    done = 0
    while done < steps:
        k = min(eval_every, steps - done)
        t = time.perf_counter()
        gl = pair.train_genjax(k)
        seconds["genjax"] += time.perf_counter() - t
        t = time.perf_counter()
        tl = pair.train_torch(k)
        seconds["torch"] += time.perf_counter() - t
        if ctrl is not None:
            t = time.perf_counter()
            cl = []
            for _ in range(k):
                batch = text_data.block_batch(data.train, ctrl["step"], tcfg.batch_size, model_cfg.block_size,
                                              ctrl["cfg"].seed)
                ctrl["state"], m = pair.gstep(ctrl["state"], {"tokens": jnp.asarray(batch)})
                cl.append(m["loss"])
                ctrl["step"] += 1
            train_losses["control"] += [float(x) for x in jax.device_get(cl)]
            seconds["control"] += time.perf_counter() - t
        done += k
        train_losses["genjax"] += gl
        train_losses["torch"] += tl
        t = time.perf_counter()
        gv, tv = scorer.genjax(pair.state.params), scorer.torch(pair.model)
        cv = scorer.genjax(ctrl["state"].params) if ctrl is not None else None
        seconds["eval"] += time.perf_counter() - t
        row = {"iter": done, "genjax_val": gv, "torch_val": tv, "control_val": cv,
               "genjax_train": float(np.mean(gl)), "torch_train": float(np.mean(tl)),
               "max_abs_train_diff": float(np.max(np.abs(np.subtract(gl, tl))))}
        rows.append(row)
        print(f"iter {done:5d}  val genjax {gv:.4f} torch {tv:.4f} diff {gv - tv:+.4f}"
              + (f" control {cv:.4f}" if cv is not None else "")
              + f"  train genjax {row['genjax_train']:.4f} torch {row['torch_train']:.4f}"
              f"  (genjax {seconds['genjax']:.0f}s torch {seconds['torch']:.0f}s)", flush=True)

    late = [r for r in rows if r["iter"] >= min(500, steps)]
    summary = {
        "max_abs_val_diff_from_500": max(abs(r["genjax_val"] - r["torch_val"]) for r in late),
        "mean_val_diff_from_500": float(np.mean([r["genjax_val"] - r["torch_val"] for r in late])),
        "final": {name: {"val_loss": rows[-1][f"{name}_val"],
                         "bits_per_char": metrics.bits_per_char(rows[-1][f"{name}_val"],
                                                                data.chars_per_token),
                         "perplexity": metrics.perplexity(rows[-1][f"{name}_val"])}
                  for name in (("genjax", "torch", "control") if control else ("genjax", "torch"))},
        "first_step_losses": {"genjax": train_losses["genjax"][:5], "torch": train_losses["torch"][:5]},
        "max_param_diff_final": max_param_diff(pair.state.params, pair.model, model_cfg),
    }
    if control:
        summary["max_abs_control_val_diff_from_500"] = max(abs(r["genjax_val"] - r["control_val"])
                                                           for r in late)
    return {
        "environment": {"python": platform.python_version(), "jax": jax.__version__,
                        "torch": torch.__version__,
                        "optax": optax.__version__, "machine": platform.processor() or platform.machine(),
                        "cores_used": 1, "torch_threads": torch.get_num_threads(),
                        "date": time.strftime("%Y-%m-%d")},
        "setup": {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(tcfg),
                  "params": T.num_params(pair.state.params), "vocab_size": data.tokenizer.vocab_size,
                  "train_tokens": int(len(data.train)), "val_tokens_scored": scorer.count,
                  "eval_every": eval_every, "batches": "text_data.block_batch(train, step, batch, 64, seed)",
                  "control": "genjax from seed 1 (other init and batches)" if control else None},
        "checks": {"initial_loss_batch0": {"genjax": g0, "torch": t0, "abs_diff": abs(g0 - t0)},
                   "initial_val_loss": {"genjax": rows[0]["genjax_val"], "torch": rows[0]["torch_val"]},
                   "schedule": [{"step": s, "genjax": g, "torch": t} for s, g, t in schedule]},
        "rows": rows,
        "summary": summary,
        "seconds": seconds,
        "train_losses": train_losses,
    }


# ----------------------------------------------------------------------------- reports


def markdown(res: dict) -> str:
    s, env, setup = res["summary"], res["environment"], res["setup"]
    control = setup["control"] is not None
    tc = setup["train"]
    lines = [
        "# GPT loss curves: genjax vs PyTorch (nanoGPT CPU config)",
        "",
        f"jax {env['jax']}, torch {env['torch']}, optax {env['optax']}; {env['date']}; one process on 1 core "
        f"(torch {env['torch_threads']} thread). `python benchmarks/gpt_loss_curve.py"
        + (" --control`." if control else "`."),
        "",
        f"experiments/gpt_text.py defaults: python-docs corpus, char tokenizer "
        f"(vocab {setup['vocab_size']}), "
        f"4 layers, 4 heads, 128 dims, context 64, dropout 0, {setup['params']:,} params; batch "
        f"{tc['batch_size']}, AdamW lr {tc['lr']:g} (b1 {tc['b1']}, b2 {tc['b2']}, weight decay "
        f"{tc['weight_decay']}), warmup {tc['warmup_steps']} + cosine to {tc['lr'] * 0.1:g} at step "
        f"{tc['steps']}, clip {tc['grad_clip']}. Same initial weights (genjax init copied into torch), the "
        f"same training batches (gpt_text's seeded block sampler), validation on gpt_text's fixed "
        f"{setup['val_tokens_scored']:,} validation tokens. Train = mean training loss of the preceding "
        f"{setup['eval_every']} iterations.",
        "",
        "| iteration | genjax val | torch val | difference | "
        + ("control val | " if control else "") + "genjax train | torch train | max per-step train diff |",
        "| --- | --- | --- | --- | " + ("--- | " if control else "") + "--- | --- | --- |",
    ]
    for r in res["rows"]:
        def f(x, fmt="{:.4f}"):
            return "" if x is None else fmt.format(x)
        lines.append(f"| {r['iter']} | {f(r['genjax_val'])} | {f(r['torch_val'])} | "
                     f"{f(r['genjax_val'] - r['torch_val'], '{:+.1e}')} | "
                     + (f"{f(r['control_val'])} | " if control else "")
                     + f"{f(r['genjax_train'])} | {f(r['torch_train'])} | "
                       f"{f(r['max_abs_train_diff'], '{:.1e}')} |")
    fin = s["final"]
    ck = res["checks"]
    lines += [
        "",
        f"Max |genjax val - torch val| over iterations >= 500: **{s['max_abs_val_diff_from_500']:.1e}** nats "
        f"(mean signed difference {s['mean_val_diff_from_500']:+.1e})."
        + (f" Run-to-run spread for scale: max |genjax seed 0 - genjax seed 1| over the same iterations "
           f"{s['max_abs_control_val_diff_from_500']:.4f}." if control else ""),
        "",
        "Final validation loss: "
        + "; ".join(f"{name} {v['val_loss']:.4f} nats/char ({v['bits_per_char']:.3f} bits/char, perplexity "
                    f"{v['perplexity']:.2f})" for name, v in fin.items()) + ".",
        "",
        f"Checks: initial loss on batch 0 genjax {ck['initial_loss_batch0']['genjax']:.7f} vs torch "
        f"{ck['initial_loss_batch0']['torch']:.7f} (|diff| {ck['initial_loss_batch0']['abs_diff']:.1e}); "
        f"learning rate of genjax's optimizer vs torch_gpt.lr_at equal at steps "
        f"{', '.join(str(x['step']) for x in ck['schedule'])}. Per-step training losses on the same batches: "
        f"max |genjax - torch| over all {len(res['train_losses']['genjax'])} steps "
        f"{max(r['max_abs_train_diff'] for r in res['rows']):.1e}; max |genjax param - torch param| "
        f"after the "
        f"last step {s['max_param_diff_final']:.1e} (float32 rounding: different summation orders in the "
        f"two libraries' kernels).",
        "",
        f"Wall time: genjax {res['seconds']['genjax']:.0f} s, torch {res['seconds']['torch']:.0f} s"
        + (f", control {res['seconds']['control']:.0f} s" if control else "")
        + f", evaluation {res['seconds']['eval']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def write_json(res: dict, path: str):
    """Indented, except the per-step training losses: one line per run, rounded to 1e-6."""
    body = json.dumps({k: v for k, v in res.items() if k != "train_losses"}, indent=1)
    losses = ",\n".join(f"  {json.dumps(k)}: {json.dumps([round(x, 6) for x in v])}"
                        for k, v in res["train_losses"].items())
    with open(path, "w") as f:
        f.write(body[:-2] + ',\n "train_losses": {\n' + losses + "\n }\n}\n")


def plot(res: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    it = [r["iter"] for r in rows]
    ax.plot(it, [r["genjax_val"] for r in rows], "o-", label="genjax val")
    ax.plot(it, [r["torch_val"] for r in rows], "s--", label="torch val")
    if res["setup"]["control"]:
        ax.plot(it, [r["control_val"] for r in rows], ":", label="genjax val, seed 1")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(4.5, max(r["genjax_val"] for r in rows) + 0.1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="iterations (also the schedule's length)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--control", action="store_true", help="also train genjax from seed 1 (noise scale)")
    parser.add_argument("--core", type=int, default=-1, help="index of the core to pin to (default: last)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="gpt_loss_curve")
    parser.add_argument("--workdir", default="", help="token files (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.steps, args.eval_every, args.workdir or tmp, args.control)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, args.name)
    write_json(res, base + ".json")
    with open(base + ".md", "w") as f:
        f.write(markdown(res))
    made_plot = plot(res, base + ".png")
    s = res["summary"]
    print(f"\nmax |val diff| over iterations >= 500: {s['max_abs_val_diff_from_500']:.2e}")
    for name, v in s["final"].items():
        print(f"final {name}: val {v['val_loss']:.4f} nats/char, {v['bits_per_char']:.3f} bits/char")
    print(f"wrote {base}.json, {base}.md" + (f", {base}.png" if made_plot else " (no matplotlib: no plot)"))


if __name__ == "__main__":
    main()
