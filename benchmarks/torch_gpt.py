"""Plain PyTorch reference of genjax's GPT (nanoGPT's model, CPU eager), for side-by-side benchmarks.

Same shapes and init as `genjax.models.transformer` with its defaults (pre-norm, learned positions,
GELU(tanh) MLP of 4 * d_model, LayerNorm without bias, no linear biases, tied embeddings, N(0, 0.02)
weights with residual projections at 0.02 / sqrt(2 * n_layer)), the same optimizer (AdamW applied to
every parameter, global-norm clipping) and the same schedule (linear warmup from 0, cosine to 10% of
the peak at `steps`). Generation is nanoGPT's loop: no KV cache, the whole cropped context is run again
for every new token. Optional dependency: `pip install torch==2.13.0`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, d_ff: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, d_ff, bias=False)
        self.mlp_proj = nn.Linear(d_ff, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        # genjax's head-major qkv columns: (head, q/k/v, head_dim)
        qkv = self.qkv(self.ln1(x)).view(b, t, self.n_head, 3, d // self.n_head).transpose(1, 2)
        q, k, v = qkv.unbind(dim=3)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int,
                 d_ff: int = 0):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, d_ff or 4 * d_model) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=False)
        residual_std = 0.02 / math.sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, residual_std if name.endswith("proj.weight") else 0.02)

    def forward(self, idx, targets=None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied embeddings
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0):
        """nanoGPT's sampler: recompute the (cropped) context for every token."""
        for _ in range(max_new_tokens):
            ctx = idx if idx.shape[1] <= self.block_size else idx[:, -self.block_size:]
            logits, _ = self(ctx)
            logits = logits[:, -1, :] / temperature
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        return idx


def lr_at(step: int, peak: float, warmup: int, steps: int, end_fraction: float = 0.1) -> float:
    """genjax.train.make_optimizer's cosine schedule: optax.warmup_cosine_decay_schedule(0, peak,
    max(warmup, 1), max(steps, warmup + 1), peak * end_fraction). `step` counts the updates already
    applied (0 for the first update, whose rate is 0)."""
    warmup = max(warmup, 1)
    steps = max(steps, warmup + 1)
    if step < warmup:
        return peak * step / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    end = peak * end_fraction
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_by_global_norm_(params, max_norm: float) -> torch.Tensor:
    """optax.clip_by_global_norm in place: gradients scaled by max_norm / norm when norm >= max_norm.
    (torch.nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6) whenever that is < 1.)"""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if norm >= max_norm:
        for g in grads:
            g.div_(norm).mul_(max_norm)
    return norm


def make_trainer(model: GPT, lr: float = 1e-3, warmup: int = 100, steps: int = 2000,
                 weight_decay: float = 0.1, b2: float = 0.99, grad_clip: float = 1.0, b1: float = 0.9):
    """A train step (tokens (B, T + 1) int64 -> loss float) over AdamW + clipping + warmup/cosine: the
    update of genjax.train.make_optimizer(TrainConfig(lr=lr, warmup_steps=warmup, steps=steps,
    schedule='cosine', weight_decay=weight_decay, b1=b1, b2=b2, grad_clip=grad_clip)). torch's AdamW
    (p -= lr * wd * p, then the Adam step) is optax.adamw's decoupled, lr-scaled decay."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=1e-8, weight_decay=weight_decay)
    state = {"step": 0}

    def step(tokens):
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], lr, warmup, steps)
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            clip_by_global_norm_(params, grad_clip)
        opt.step()
        state["step"] += 1
        return loss.item()

    return step
