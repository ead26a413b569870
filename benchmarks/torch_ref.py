"""Plain PyTorch (CPU eager) references of genjax's GPT and diffusion U-Net, built from genjax's params
(`Twin`: a torch layer per Flax scope, same name, same values), and genjax's update rule (`make_trainer`:
`genjax.train.make_step` over `make_optimizer(TrainConfig)`). Needs `pip install -e ".[torch]"`."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from flax.traverse_util import flatten_dict

WRAPPERS = {"GroupNorm_0", "block"}  # Flax scopes with no torch counterpart


def torch_leaves(params):
    """(torch scope, Flax leaf, array in torch's layout) per leaf of genjax params: dense kernels (in, out)
    -> (out, in), conv HWIO -> OIHW; a bare array `p` (GPT's tables) is the embedding of scope `p`."""
    for path, value in flatten_dict(params).items():
        *scope, leaf = [p for p in path if p not in WRAPPERS]
        a = np.asarray(value, np.float32)
        if leaf == "kernel":
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
        elif leaf not in ("scale", "bias", "embedding"):
            scope, leaf = scope + [leaf], "embedding"
        yield ".".join(scope), leaf, np.array(a)


def flax_state(params) -> dict[str, torch.Tensor]:  # genjax params as the state dict of their Twin
    return {f"{scope}.{'bias' if leaf == 'bias' else 'weight'}": torch.from_numpy(a)
            for scope, leaf, a in torch_leaves(params)}


def max_param_diff(params, model: nn.Module) -> float:
    ours = model.state_dict()
    return max(float((ours[name] - value).abs().max()) for name, value in flax_state(params).items())


def layer(name: str, shapes: dict, groups: int) -> nn.Module:
    """The torch layer of a Flax scope's leaf shapes (kernel, scale, bias, embedding) in torch's layout."""
    if "embedding" in shapes:
        return nn.Embedding(*shapes["embedding"])
    if "scale" in shapes:  # genjax.nn.unet.GroupNorm, or GPT's bias-free LayerNorm
        c = shapes["scale"][0]
        return nn.GroupNorm(math.gcd(groups, c), c, 1e-6) if "bias" in shapes else nn.LayerNorm(c, bias=False)
    if len(shapes["kernel"]) == 2:
        return nn.Linear(*shapes["kernel"][::-1], bias="bias" in shapes)
    cout, cin, k, _ = shapes["kernel"]  # XLA's SAME padding of a stride-2 conv (0 before, 1 after): forward
    down = name.endswith("downsample")
    return nn.Conv2d(cin, cout, k, stride=2 if down else 1, padding=0 if down else k // 2)


class Twin(nn.Module):
    """Torch layers named and shaped after the Flax scopes of genjax `params`, holding their values."""

    def __init__(self, params, groups: int = 1):
        super().__init__()
        shapes = {}
        for scope, leaf, a in torch_leaves(params):
            shapes.setdefault(scope, {})[leaf] = a.shape
        for scope, leaves in shapes.items():
            *parents, name = scope.split(".")
            parent = self
            for p in parents:
                parent = parent._modules.setdefault(p, nn.ModuleDict())
            parent.add_module(name, layer(name, leaves, groups))
        load(self, params)


@torch.no_grad()
def load(model: nn.Module, params) -> nn.Module:
    model.load_state_dict(flax_state(params), strict=True)  # every name on both sides, same shapes
    return model


class GPT(Twin):
    """nanoGPT's model in genjax's default transformer layout (pre-norm, learned positions, tanh-GELU MLP,
    bias-free LayerNorm and linears, tied embeddings, head-major qkv columns)."""

    def __init__(self, cfg, params):
        default = dict(scan_layers=False, tie_embeddings=True, bias=False, pos="learned", norm="layernorm",
                       mlp="gelu", dtype="float32", n_kv_head=0, norm_eps=1e-5)
        other = {k: getattr(cfg, k) for k, v in default.items() if getattr(cfg, k) != v}
        if other:
            raise ValueError(f"the torch GPT mirrors the default transformer layout only, not {other}")
        super().__init__(params)
        self.n_head, self.block_size = cfg.n_head, cfg.block_size

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        (b, t, d), h = x.shape, self.n_head
        for m in self.blocks.values():
            q, k, v = m.attn.qkv(m.ln1(x)).view(b, t, h, 3, d // h).transpose(1, 2).unbind(dim=3)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + m.attn.proj(y.transpose(1, 2).reshape(b, t, d))
            x = x + m.mlp.proj(F.gelu(m.mlp.fc(m.ln2(x)), approximate="tanh"))
        return self.ln_f(x) @ self.wte.weight.T

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int):
        """nanoGPT's sampler: no KV cache, the cropped context runs again for every new token."""
        for _ in range(max_new_tokens):
            probs = F.softmax(self(idx[:, -self.block_size:])[:, -1], dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)
        return idx


def gpt_loss(model: GPT, tokens, reduction: str = "mean"):
    """Next-token cross entropy of int64 tokens (B, T + 1)."""
    return F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten(), reduction=reduction)


class UNet(Twin):
    """`genjax.nn.unet.UNet` of a diffusion.Config (float32), NCHW inside."""

    def __init__(self, cfg, params):
        super().__init__(params, cfg.num_groups)
        self.cfg, self.levels = cfg, len(cfg.channel_mults)

    def attention(self, m, x):
        b, c, h, w = x.shape
        q, k, v = m.qkv(m.norm(x).reshape(b, c, h * w).transpose(1, 2)).chunk(3, dim=-1)
        return x + m.proj(F.scaled_dot_product_attention(q, k, v)).transpose(1, 2).reshape(b, c, h, w)

    def block(self, name: str, x, emb):  # a residual block, and its attention where there is one
        m, attn = self._modules[name], self._modules.get(name.replace("res", "attn"))
        h = m.conv1(F.silu(m.norm1(x))) + m.emb_proj(F.silu(emb))[:, :, None, None]
        h = m.conv2(F.dropout(F.silu(m.norm2(h)), self.cfg.dropout, self.training))
        h = h + (m.skip(x) if "skip" in m else x)
        return self.attention(attn, h) if attn is not None else h

    def forward(self, x, t, labels=None):
        (B, _, H, W), half, mod = x.shape, self.cfg.channels // 2, self._modules
        ph, pw = -H % 2 ** (self.levels - 1), -W % 2 ** (self.levels - 1)  # padded to a multiple of this
        h = self.conv_in(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        args = (torch.broadcast_to(torch.as_tensor(t), (B,)).float() * 1000.0)[:, None] * freqs[None]
        emb = F.pad(torch.cat([torch.sin(args), torch.cos(args)], -1), (0, self.cfg.channels % 2))
        emb = self.time_dense1(F.silu(self.time_dense0(emb)))
        emb = emb if labels is None else emb + self.class_embed(labels)
        skips, blocks = [h], self.cfg.num_res_blocks
        for i in range(self.levels):
            for j in range(blocks):
                skips.append(h := self.block(f"down{i}_res{j}", h, emb))
            if i != self.levels - 1:
                skips.append(h := mod[f"down{i}_downsample"](F.pad(h, (0, 1, 0, 1))))
        h = self.block("mid_res1", self.attention(self.mid_attn, self.block("mid_res0", h, emb)), emb)
        for i in reversed(range(self.levels)):
            for j in range(blocks + 1):
                h = self.block(f"up{i}_res{j}", torch.cat([h, skips.pop()], dim=1), emb)
            if i:
                h = mod[f"up{i}_upsample"](F.interpolate(h, scale_factor=2, mode="nearest"))
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


def at_threads(n: int) -> None:
    """torch at `n` intra-op threads, seed 0: a pinned worker's setting (benchmarks.timing.worker)."""
    torch.set_num_threads(n)
    torch.manual_seed(0)


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
    params = list(model.parameters())  # decayed: matrices, kernels, embeddings (genjax.train.decay_mask)
    groups = [{"params": [p for p in params if p.dim() >= 2]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.b1, hp.b2), eps=1e-8, weight_decay=hp.weight_decay)
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
