"""Plain PyTorch (CPU eager) references of genjax's GPT and diffusion U-Net, the map of genjax's weights
onto them, and genjax's update rule, for side-by-side benchmarks. Needs `pip install -e ".[torch]"`.

- `GPT`: nanoGPT's model in genjax's default transformer layout (pre-norm, learned positions, tanh-GELU
  MLP, bias-free LayerNorm and linears, tied embeddings, head-major qkv columns, GPT-2's init).
- `UNet`: `genjax.nn.unet.UNet` layer for layer, NCHW inside, with Flax's init.
- Both name their submodules after the Flax scopes, so `load` maps any genjax params tree onto them.
- `make_trainer`: `genjax.train.make_step` over `make_optimizer(TrainConfig)`; random draws are torch's.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from flax.traverse_util import flatten_dict

FLAX_WRAPPERS = {"GroupNorm_0", "block"}  # Flax scopes with no torch counterpart


def flax_state(params) -> dict[str, torch.Tensor]:
    """genjax params as a torch state dict: scopes joined by '.', kernel/scale -> weight (dense (in, out)
    -> (out, in), conv HWIO -> OIHW), embedding -> weight, a bare array `p` (GPT's tables) -> `p.weight`."""
    state = {}
    for path, value in flatten_dict(params).items():
        *scope, leaf = [p for p in path if p not in FLAX_WRAPPERS]
        a = np.asarray(value, np.float32)
        if leaf == "kernel":
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
        if leaf not in ("kernel", "scale", "bias", "embedding"):
            scope.append(leaf)
        state[".".join(scope + ["bias" if leaf == "bias" else "weight"])] = torch.from_numpy(np.array(a))
    return state


@torch.no_grad()
def load(model: nn.Module, params) -> nn.Module:
    model.load_state_dict(flax_state(params), strict=True)  # every name on both sides, same shapes
    return model


def max_param_diff(params, model: nn.Module) -> float:
    ours = model.state_dict()
    return max(float((ours[name] - value).abs().max()) for name, value in flax_state(params).items())


# ----------------------------------------------------------------------------- GPT


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, d_ff: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        linear = functools.partial(nn.Linear, bias=False)
        self.attn = nn.ModuleDict({"qkv": linear(d, 3 * d), "proj": linear(d, d)})
        self.mlp = nn.ModuleDict({"fc": linear(d, d_ff), "proj": linear(d_ff, d)})

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.attn["qkv"](self.ln1(x)).view(b, t, self.n_head, 3, d // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(*qkv.unbind(dim=3), is_causal=True)
        x = x + self.attn["proj"](y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp["proj"](F.gelu(self.mlp["fc"](self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int, d_ff: int):
        super().__init__()
        self.block_size = block_size
        self.wte, self.wpe = nn.Embedding(vocab_size, d_model), nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleDict({f"layer_{i}": Block(d_model, n_head, d_ff) for i in range(n_layer)})
        self.ln_f = nn.LayerNorm(d_model, bias=False)
        residual_std = 0.02 / math.sqrt(2 * n_layer)  # GPT-2's init
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, residual_std if name.endswith("proj.weight") else 0.02)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks.values():
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int):
        """nanoGPT's sampler: no KV cache, the cropped context runs again for every new token."""
        for _ in range(max_new_tokens):
            probs = F.softmax(self(idx[:, -self.block_size:])[:, -1], dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)
        return idx


def gpt(cfg) -> GPT:
    """The reference of a `transformer.Config` (its default layout only)."""
    default = dict(scan_layers=False, tie_embeddings=True, bias=False, pos="learned", norm="layernorm",
                   mlp="gelu", dtype="float32")
    other = {k: getattr(cfg, k) for k, v in default.items() if getattr(cfg, k) != v}
    if other:
        raise ValueError(f"the torch GPT mirrors the default transformer layout only, not {other}")
    return GPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model, cfg.ff_width)


def gpt_loss(model: GPT, tokens, reduction: str = "mean"):
    """Next-token cross entropy of int64 tokens (B, T + 1)."""
    return F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten(), reduction=reduction)


# ----------------------------------------------------------------------------- U-Net


def _init(layer, zero: bool = False):
    nn.init.zeros_(layer.weight) if zero else nn.init.xavier_uniform_(layer.weight)  # = fan-avg uniform
    nn.init.zeros_(layer.bias)
    return layer


def conv(cin: int, cout: int, k: int, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0), zero)


def dense(cin: int, cout: int, zero: bool = False) -> nn.Linear:
    return _init(nn.Linear(cin, cout), zero)


def norm(channels: int, groups: int) -> nn.GroupNorm:  # genjax.nn.unet.GroupNorm
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1, self.emb_proj = norm(cin, groups), conv(cin, cout, 3), dense(emb_dim, cout)
        self.norm2, self.dropout = norm(cout, groups), nn.Dropout(dropout)
        self.conv2 = conv(cout, cout, 3, zero=True)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb_proj(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))


class AttnBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm, self.qkv = norm(channels, groups), dense(channels, 3 * channels)
        self.proj = dense(channels, channels, zero=True)

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).reshape(b, c, h * w).transpose(1, 2)).chunk(3, dim=-1)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v)).transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """The U-Net of a diffusion.Config (float32)."""

    def __init__(self, cfg):
        super().__init__()
        ch, mults, groups = cfg.channels, cfg.channel_mults, cfg.num_groups
        self.channels, self.levels, self.blocks = ch, len(mults), cfg.num_res_blocks
        attn = [self.padded(cfg.image_shape[0]) // 2**i in cfg.attn_resolutions for i in range(self.levels)]
        res = lambda cin, cout: ResBlock(cin, cout, 4 * ch, groups, cfg.dropout)  # noqa: E731
        self.time_dense0, self.time_dense1 = dense(ch, 4 * ch), dense(4 * ch, 4 * ch)
        if cfg.num_classes:  # Flax's Embed init: N(0, 1 / width) (truncated there)
            self.class_embed = nn.Embedding(cfg.num_classes + 1, 4 * ch)
            nn.init.normal_(self.class_embed.weight, 0.0, (4 * ch) ** -0.5)
        self.conv_in, width, skips = conv(cfg.image_shape[-1], ch, 3), ch, [ch]
        for i, mult in enumerate(mults):
            for j in range(self.blocks):
                self._add(f"down{i}_res{j}", res(width, ch * mult), attn[i] and AttnBlock(ch * mult, groups))
                width = ch * mult
                skips.append(width)
            if i != self.levels - 1:
                self.add_module(f"down{i}_downsample", conv(width, width, 3, stride=2))
                skips.append(width)
        self.mid_res0, self.mid_attn = res(width, width), AttnBlock(width, groups)
        self.mid_res1 = res(width, width)
        for i, mult in reversed(list(enumerate(mults))):
            for j in range(self.blocks + 1):
                self._add(f"up{i}_res{j}", res(width + skips.pop(), ch * mult),
                          attn[i] and AttnBlock(ch * mult, groups))
                width = ch * mult
            if i:
                self.add_module(f"up{i}_upsample", conv(width, width, 3))
        self.norm_out, self.conv_out = norm(width, groups), conv(width, cfg.image_shape[-1], 3, zero=True)

    def _add(self, name: str, block: nn.Module, attention: nn.Module | bool):
        self.add_module(name, block)
        if attention:
            self.add_module(name.replace("res", "attn"), attention)

    def padded(self, size: int) -> int:
        return -(-size // 2 ** (self.levels - 1)) * 2 ** (self.levels - 1)

    def _level_block(self, name: str, h, emb):  # a residual block, and its attention where there is one
        h = self._modules[name](h, emb)
        attn = name.replace("res", "attn")
        return self._modules[attn](h) if attn in self._modules else h

    def forward(self, x, t, labels=None):
        (B, _, H, W), half = x.shape, self.channels // 2
        ph, pw = self.padded(H) - H, self.padded(W) - W
        h = self.conv_in(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        args = (torch.broadcast_to(torch.as_tensor(t), (B,)).float() * 1000.0)[:, None] * freqs[None]
        emb = F.pad(torch.cat([torch.sin(args), torch.cos(args)], -1), (0, self.channels % 2))
        emb = self.time_dense1(F.silu(self.time_dense0(emb)))
        emb = emb if labels is None else emb + self.class_embed(labels)
        skips = [h]
        for i in range(self.levels):
            for j in range(self.blocks):
                skips.append(h := self._level_block(f"down{i}_res{j}", h, emb))
            if i != self.levels - 1:  # XLA's SAME padding for a stride-2 3x3 conv: 0 before, 1 after
                skips.append(h := self._modules[f"down{i}_downsample"](F.pad(h, (0, 1, 0, 1))))
        h = self.mid_res1(self.mid_attn(self.mid_res0(h, emb)), emb)
        for i in reversed(range(self.levels)):
            for j in range(self.blocks + 1):
                h = self._level_block(f"up{i}_res{j}", torch.cat([h, skips.pop()], dim=1), emb)
            if i:
                h = self._modules[f"up{i}_upsample"](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))[:, :, ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]


def log_snr(t, schedule: str):
    """genjax.models.diffusion's log-SNR schedules, clipped at -20."""
    if schedule == "linear":
        lam = -torch.log(torch.expm1(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
    else:
        s, u = 0.008, (t + 0.008) / 1.008 * (math.pi / 2)
        lam = torch.log(torch.cos(u) ** 2) - torch.log(torch.sin(t / (1 + s) * (math.pi / 2))
                                                       * torch.sin(u + s / (1 + s) * (math.pi / 2)))
    return torch.clamp(lam, min=-20.0)


def diffusion_loss(cfg):
    """`loss(model, images in [0, 1] NCHW)` of `diffusion.loss` for an unconditional float32 model without
    loss weighting: t = i / T, i ~ U{1..T} (U(1e-3, 1) for T = 0), x_t = alpha x0 + sigma eps, MSE."""
    if cfg.loss_weighting != "none" or cfg.num_classes or cfg.dtype != "float32":
        raise ValueError("the torch diffusion loss covers unconditional float32 models, no loss weighting")

    def loss(model, images):
        x0, T = images * 2.0 - 1.0, cfg.timesteps
        t = torch.randint(1, T + 1, (len(x0),)).float() / T if T else 1e-3 + (1 - 1e-3) * torch.rand(len(x0))
        lam = log_snr(t, cfg.schedule)[:, None, None, None]
        alpha, sigma, noise = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt(), torch.randn_like(x0)
        target = {"eps": noise, "x0": x0, "v": alpha * noise - sigma * x0}[cfg.prediction]
        return torch.mean(torch.square(model(alpha * x0 + sigma * noise, t) - target))

    return loss


# ----------------------------------------------------------------------------- genjax's update


def lr_at(step: int, peak: float, warmup: int, steps: int) -> float:
    """optax.warmup_cosine_decay_schedule(0, peak, max(warmup, 1), max(steps, warmup + 1), peak / 10) after
    `step` updates, as genjax.train.make_optimizer builds it."""
    warmup = max(warmup, 1)
    steps = max(steps, warmup + 1)
    if step < warmup:
        return peak * step / warmup
    progress, end = min((step - warmup) / (steps - warmup), 1.0), peak * 0.1
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_trainer(model: nn.Module, loss_fn, hp):
    """`step(batch) -> loss` training `model` on `loss_fn(model, batch)` with TrainConfig `hp`'s update."""
    if hp.schedule != "cosine" or hp.grad_accum != 1 or hp.ema_warmup:
        raise ValueError("the torch trainer covers the cosine schedule, no grad_accum or ema_warmup")
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=hp.lr, betas=(hp.b1, hp.b2), eps=1e-8, weight_decay=hp.weight_decay)
    ema, applied = [p.detach().clone() for p in params], [0]

    def step(batch) -> float:
        for group in opt.param_groups:
            group["lr"] = lr_at(applied[0], hp.lr, hp.warmup_steps, hp.steps)
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads)
        if 0 < hp.grad_clip <= norm:  # optax.clip_by_global_norm: (g / norm) * clip
            torch._foreach_div_(grads, norm)
            torch._foreach_mul_(grads, hp.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            opt.step()
            applied[0] += 1
            if hp.ema_decay:
                torch._foreach_lerp_(ema, params, 1.0 - hp.ema_decay)
        return loss.item()

    return step
